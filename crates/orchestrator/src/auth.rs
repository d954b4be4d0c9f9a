//! The `ORCHESTRATOR_ALLOWED_TOOLS` check against the tool catalog, and the
//! cheap scan of the raw arguments that finds the group and action words
//! before full parsing, so that a command not allowed is refused (exit 77)
//! before its arguments are looked at. Pure.
//!
//! Rules:
//!
//! * `ORCHESTRATOR_ALLOWED_TOOLS` is comma-separated; an entry `group` allows
//!   every action of the group, `group:action` one action. Names match
//!   exactly (case-sensitive, whitespace around entries and around the `:`
//!   trimmed); malformed entries are ignored; missing or empty allows
//!   nothing.
//! * The usable actions of a group are the actions the catalog file
//!   declares for it that the environment also allows
//!   ([`usable_actions`]), in the order of the environment's entries (an
//!   entry `group` brings all of the group's actions at its position, in the
//!   file's action order); duplicates count once.
//! * A group known to the catalog (in `known` or `groups`) with no usable
//!   action is denied as a whole ([`Denial::Group`]).
//! * An action word known for the group but not usable is denied
//!   ([`Denial::Action`], listing the usable ones). In a group with a
//!   `default_action` that is not usable, a first word that is not an
//!   action name denies the default action.
//! * Unknown groups and actions are not decided here: they are usage errors
//!   from the parser.

use crate::catalog::{Catalog, Group};
use crate::ALLOWED_TOOLS_ENV;

/// One entry of `ORCHESTRATOR_ALLOWED_TOOLS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The group.
    pub group: String,
    /// The one action allowed, or `None` for every action of the group.
    pub action: Option<String>,
}

/// Parses the value of `ORCHESTRATOR_ALLOWED_TOOLS`: comma-separated
/// `group` or `group:action` entries, whitespace-trimmed, empty and
/// malformed entries (`:x`, `g:`, `g:a:b`) dropped. Missing means empty.
pub fn allowed_tools(raw: Option<&str>) -> Vec<Allowed> {
    raw.unwrap_or("")
        .split(',')
        .filter_map(|item| {
            let item = item.trim();
            let (group, action) = match item.split_once(':') {
                None => (item, None),
                Some((g, a)) => (g.trim(), Some(a.trim())),
            };
            let bad = |s: &str| s.is_empty() || s.contains(':') || s.contains(char::is_whitespace);
            if bad(group) || action.is_some_and(bad) {
                return None;
            }
            Some(Allowed {
                group: group.to_owned(),
                action: action.map(str::to_owned),
            })
        })
        .collect()
}

/// Whether the entries allow `action` of `group` (by a `group` or a
/// `group:action` entry).
pub fn is_allowed(allowed: &[Allowed], group: &str, action: &str) -> bool {
    allowed
        .iter()
        .any(|e| e.group == group && e.action.as_deref().is_none_or(|a| a == action))
}

/// The actions of `group` (as declared in the catalog file) that the
/// entries allow, in the order of the entries (a `group` entry brings every
/// declared action at its position, in the group's action order).
pub fn usable_actions<'a>(group: &'a Group, allowed: &[Allowed]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for e in allowed.iter().filter(|e| e.group == group.name) {
        for a in &group.actions {
            if e.action.as_deref().is_none_or(|x| x == a.name) && !out.contains(&a.name.as_str()) {
                out.push(&a.name);
            }
        }
    }
    out
}

/// The part of the catalog the worker may use: the groups with at least one
/// usable action, each with its usable actions only, in
/// [`usable_actions`] order.
pub fn usable_catalog(catalog: &Catalog, allowed: &[Allowed]) -> Catalog {
    let groups = catalog
        .groups
        .iter()
        .filter_map(|g| {
            let actions: Vec<_> = usable_actions(g, allowed)
                .into_iter()
                .filter_map(|name| g.action(name).cloned())
                .collect();
            (!actions.is_empty()).then(|| Group {
                actions,
                ..g.clone()
            })
        })
        .collect();
    Catalog {
        groups,
        known: catalog.known.clone(),
    }
}

/// Why a command is refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// A known group of which nothing is allowed.
    Group(String),
    /// A known action of a partly allowed group.
    Action {
        /// The group.
        group: String,
        /// The action refused.
        action: String,
        /// The group's usable actions.
        allowed: Vec<String>,
    },
}

impl Denial {
    /// The message printed on stderr.
    pub fn message(&self) -> String {
        match self {
            Denial::Group(group) => permission_denied_message(group),
            Denial::Action {
                group,
                action,
                allowed,
            } => {
                let list: Vec<String> = allowed.iter().map(|a| format!("{group} {a}")).collect();
                format!(
                    "Permission denied: {group} {action} is not allowed (allowed: {})",
                    list.join(", ")
                )
            }
        }
    }
}

/// The message printed (on stderr) when a group is not allowed at all.
pub fn permission_denied_message(group: &str) -> String {
    format!("Permission denied: {group} is not in {ALLOWED_TOOLS_ENV}")
}

/// What a cheap scan of the raw arguments (without `argv[0]`) finds before
/// full parsing: whether the global `--json` flag was given before the group,
/// the group candidate (the first argument that is not a flag) and the
/// action candidate (the argument right after the group, unless it starts
/// with `-`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prescan {
    /// `--json` appeared before the group.
    pub json: bool,
    /// First non-flag argument, if any.
    pub group: Option<String>,
    /// The argument after the group, if there is one and it is not a flag.
    pub action: Option<String>,
}

/// Scans the arguments (without `argv[0]`) for the group and action
/// candidates. Every argument starting with `-` before the group is treated
/// as a flag (the only global flags, `--json`, `--help` and `--version`, take
/// no value); `--` ends the flags and makes the next argument the group.
pub fn prescan<S: AsRef<str>>(args: &[S]) -> Prescan {
    let mut out = Prescan::default();
    let mut iter = args.iter().map(AsRef::as_ref);
    while let Some(arg) = iter.next() {
        if arg == "--" {
            out.group = iter.next().map(str::to_owned);
            break;
        }
        if arg == "--json" {
            out.json = true;
            continue;
        }
        if arg.starts_with('-') && arg.len() > 1 {
            continue;
        }
        out.group = Some(arg.to_owned());
        break;
    }
    if out.group.is_some() {
        out.action = iter
            .next()
            .filter(|a| !a.starts_with('-') || *a == "-")
            .map(str::to_owned);
    }
    out
}

/// The permission decision for a prescanned command line (see the module
/// rules); `None` lets the parser go on.
pub fn check(catalog: &Catalog, allowed: &[Allowed], scan: &Prescan) -> Option<Denial> {
    let group = scan.group.as_deref()?;
    if !catalog.is_known_group(group) {
        return None;
    }
    let decl = catalog.group(group);
    let usable: Vec<&str> = decl.map(|g| usable_actions(g, allowed)).unwrap_or_default();
    if usable.is_empty() {
        return Some(Denial::Group(group.to_owned()));
    }
    let word = scan.action.as_deref()?;
    let known = catalog.known_actions(group);
    let refused = if known.contains(&word) {
        word
    } else {
        decl.and_then(|g| g.default_action.as_deref())
            .filter(|d| known.contains(d))?
    };
    (!usable.contains(&refused)).then(|| Denial::Action {
        group: group.to_owned(),
        action: refused.to_owned(),
        allowed: usable.iter().map(|s| (*s).to_owned()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::shipped;

    fn scan(args: &[&str]) -> Prescan {
        prescan(args)
    }

    #[test]
    fn missing_or_empty_allows_nothing() {
        for raw in [None, Some(""), Some(" , ,"), Some(":x, g:, a:b:c")] {
            assert!(allowed_tools(raw).is_empty(), "{raw:?}");
        }
        let c = shipped();
        for g in &c.groups {
            assert!(usable_actions(g, &[]).is_empty());
        }
        assert!(usable_catalog(&c, &[]).groups.is_empty());
    }

    #[test]
    fn entries_are_parsed_and_trimmed() {
        let a = allowed_tools(Some(" project ,\trespond\n, deploy : status,deploy:logs"));
        let names: Vec<(&str, Option<&str>)> = a
            .iter()
            .map(|e| (e.group.as_str(), e.action.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("project", None),
                ("respond", None),
                ("deploy", Some("status")),
                ("deploy", Some("logs"))
            ]
        );
        assert!(is_allowed(&a, "project", "list"));
        assert!(is_allowed(&a, "deploy", "logs"));
        assert!(!is_allowed(&a, "deploy", "trigger"));
        assert!(!is_allowed(&a, "infra", "list"));
    }

    #[test]
    fn names_match_exactly() {
        for raw in [
            "projects",
            "Project",
            "proj",
            "project respond",
            "project:List",
        ] {
            assert!(
                !is_allowed(&allowed_tools(Some(raw)), "project", "list"),
                "{raw}"
            );
        }
        assert!(is_allowed(
            &allowed_tools(Some("project:list")),
            "project",
            "list"
        ));
    }

    #[test]
    fn usable_actions_follow_the_entries() {
        let c = shipped();
        let deploy = c.group("deploy").unwrap();
        let u = |raw| usable_actions(deploy, &allowed_tools(Some(raw)));
        assert_eq!(u("deploy:status,deploy:logs"), ["status", "logs"]);
        assert_eq!(u("deploy:logs,deploy:status"), ["logs", "status"]);
        assert_eq!(u("deploy"), ["logs", "status", "trigger"]);
        assert_eq!(u("deploy:trigger,deploy"), ["trigger", "logs", "status"]);
        assert_eq!(u("deploy:status,deploy:status,deploy:nuke"), ["status"]);
        assert!(u("project").is_empty());
        let usable = usable_catalog(&c, &allowed_tools(Some("respond,deploy:status,project")));
        let names: Vec<&str> = usable.groups.iter().map(|g| g.name.as_str()).collect();
        // groups keep the file's order
        assert_eq!(names, ["project", "deploy", "respond"]);
        assert_eq!(usable.group("deploy").unwrap().actions.len(), 1);
        assert_eq!(usable.known, c.known);
    }

    #[test]
    fn permission_messages_are_exact() {
        assert_eq!(
            permission_denied_message("admin"),
            "Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS"
        );
        let d = Denial::Action {
            group: "deploy".into(),
            action: "trigger".into(),
            allowed: vec!["status".into(), "logs".into()],
        };
        assert_eq!(
            d.message(),
            "Permission denied: deploy trigger is not allowed (allowed: deploy status, deploy logs)"
        );
    }

    #[test]
    fn check_groups_and_actions() {
        let c = shipped();
        let chk = |raw: &str, args: &[&str]| check(&c, &allowed_tools(Some(raw)), &scan(args));
        assert_eq!(
            chk("project", &["admin", "nuke"]),
            Some(Denial::Group("admin".into()))
        );
        assert_eq!(
            chk("", &["--json", "respond", "hi"]),
            Some(Denial::Group("respond".into()))
        );
        assert_eq!(chk("project", &["nuke"]), None);
        assert_eq!(chk("project", &["--help"]), None);
        assert_eq!(chk("project", &["project", "list"]), None);
        assert_eq!(chk("project", &["project", "nuke"]), None);
        let partial = "deploy:status,deploy:logs";
        assert_eq!(chk(partial, &["deploy", "status", "x"]), None);
        assert_eq!(chk(partial, &["deploy", "--help"]), None);
        assert_eq!(chk(partial, &["deploy"]), None);
        assert_eq!(chk(partial, &["deploy", "nuke"]), None);
        let d = chk(partial, &["deploy", "trigger", "--bogus"]).unwrap();
        assert_eq!(
            d.message(),
            "Permission denied: deploy trigger is not allowed (allowed: deploy status, deploy logs)"
        );
    }

    #[test]
    fn check_uses_known_and_default_actions() {
        let c = Catalog::parse(
            r#"{"groups": [
                  {"name": "deploy", "actions": {"status": {}}},
                  {"name": "chat", "default_action": "say",
                   "actions": {"say": {}, "history": {}}}],
                "known": {"deploy": ["status", "trigger"], "chat": ["say", "history"],
                          "admin": ["workers"]}}"#,
        )
        .unwrap();
        let chk = |raw: &str, args: &[&str]| check(&c, &allowed_tools(Some(raw)), &scan(args));
        // known only through `known`
        assert_eq!(
            chk("deploy", &["admin", "workers"]),
            Some(Denial::Group("admin".into()))
        );
        // allowed by the environment but not written to the file
        assert_eq!(
            chk("admin", &["admin", "workers"]),
            Some(Denial::Group("admin".into()))
        );
        let d = chk("deploy", &["deploy", "trigger"]).unwrap();
        assert_eq!(
            d.message(),
            "Permission denied: deploy trigger is not allowed (allowed: deploy status)"
        );
        assert_eq!(chk("chat", &["chat", "hello"]), None);
        let d = chk("chat:history", &["chat", "hello"]).unwrap();
        assert_eq!(
            d.message(),
            "Permission denied: chat say is not allowed (allowed: chat history)"
        );
        assert_eq!(chk("chat:history", &["chat", "history"]), None);
        assert_eq!(chk("chat:say", &["chat", "hello"]), None);
        assert!(chk("chat:say", &["chat", "history"]).is_some());
    }

    #[test]
    fn prescan_finds_group_and_action() {
        assert_eq!(prescan::<&str>(&[]), Prescan::default());
        assert_eq!(
            scan(&["--json", "admin", "workers"]),
            Prescan {
                json: true,
                group: Some("admin".into()),
                action: Some("workers".into()),
            }
        );
        assert!(!scan(&["admin", "--json"]).json);
        assert_eq!(scan(&["admin", "--json"]).action, None);
        assert_eq!(
            scan(&["--bogus", "deploy"]).group.as_deref(),
            Some("deploy")
        );
        assert_eq!(scan(&["--help"]).group, None);
        assert_eq!(scan(&["--", "admin"]).group.as_deref(), Some("admin"));
        assert_eq!(scan(&["nuke"]).group.as_deref(), Some("nuke"));
        assert_eq!(scan(&["respond", "- a list"]).action, None);
        assert_eq!(
            scan(&["respond", "hi there"]).action.as_deref(),
            Some("hi there")
        );
    }
}
