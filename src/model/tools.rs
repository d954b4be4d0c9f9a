//! The tool catalog: tool groups declared as data (`skills/<group>.json`
//! beside the group's `skills/<group>.md`), the grants of a worker
//! (`allowed_tools` entries `group` or `group:action`), and what a worker's
//! container receives of the catalog (`tools.json`, only what it may use).
//!
//! Nothing about tools is compiled in: the daemon, the gateway and the
//! in-container `orchestrator` CLI all read these declarations. This module
//! does no I/O.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Where a worker's container finds the tool catalog it may use.
pub const TOOLS_FILE: &str = "/home/worker/.orchestrator/tools.json";

/// A group or action name: `^[a-z][a-z0-9_-]{0,63}$`.
pub fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// One tool group, as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolGroup {
    /// The group's name (`orchestrator <name> ...`, the gateway path).
    pub name: String,
    /// One line for the instructions.
    pub description: String,
    /// Where the gateway forwards this group's calls (default: the
    /// daemon's `upstream_url`).
    pub upstream_url: Option<String>,
    /// Its actions: name → (help, read-only).
    pub actions: BTreeMap<String, Action>,
    /// The declaration as written (what the CLI reads).
    pub json: Value,
}

/// One action of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// One line of help.
    pub help: String,
    /// Whether it only reads.
    pub read_only: bool,
    /// Its command line after `orchestrator <group> <action>`, for people
    /// (`<deploy_id> [--tail <n>]`).
    pub usage: String,
}

/// Problems of a declaration: (field, message).
pub type Problems = Vec<(Option<String>, String)>;

fn problem(field: &str, message: impl Into<String>) -> Problems {
    vec![(Some(field.to_string()), message.into())]
}

/// Parses `skills/<stem>.json`.
pub fn parse_group(stem: &str, bytes: &[u8]) -> Result<ToolGroup, Problems> {
    let json: Value = serde_json::from_slice(bytes)
        .map_err(|e| vec![(None, crate::model::diagnose::json_error(bytes, &e))])?;
    let Some(obj) = json.as_object() else {
        return Err(vec![(None, "a tool declaration is a JSON object".into())]);
    };
    for k in obj.keys() {
        if ![
            "name",
            "description",
            "upstream_url",
            "default_action",
            "actions",
        ]
        .contains(&k.as_str())
        {
            return Err(problem(
                k,
                format!("{k:?} is not a field of a tool group (name, description, upstream_url, default_action, actions)"),
            ));
        }
    }
    let name = obj.get("name").and_then(Value::as_str).unwrap_or_default();
    if name != stem || !is_name(name) {
        return Err(problem(
            "name",
            format!("name {name:?} must equal the file name without .json ({stem:?}), lowercase letters, digits, _ and -"),
        ));
    }
    let description = obj
        .get("description")
        .and_then(Value::as_str)
        .filter(|d| !d.trim().is_empty() && d.len() <= 500)
        .ok_or_else(|| {
            problem(
                "description",
                "description: one line (at most 500 bytes) is required",
            )
        })?;
    let upstream_url = match obj.get("upstream_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if u.starts_with("http://") || u.starts_with("https://") => {
            Some(u.clone())
        }
        Some(_) => {
            return Err(problem(
                "upstream_url",
                "upstream_url must be an http:// or https:// URL",
            ))
        }
    };
    let Some(declared) = obj
        .get("actions")
        .and_then(Value::as_object)
        .filter(|a| !a.is_empty())
    else {
        return Err(problem(
            "actions",
            "actions: an object of at least one action is required",
        ));
    };
    let mut actions = BTreeMap::new();
    for (an, a) in declared {
        let at = format!("actions.{an}");
        if !is_name(an) {
            return Err(problem(
                &at,
                format!("action name {an:?}: lowercase letters, digits, _ and -"),
            ));
        }
        let help = a.get("help").and_then(Value::as_str).unwrap_or_default();
        if help.trim().is_empty() {
            return Err(problem(&format!("{at}.help"), "help: one line is required"));
        }
        let read_only = match a.get("read_only") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(problem(
                    &format!("{at}.read_only"),
                    "read_only is true or false",
                ))
            }
        };
        let args = match a.get("args") {
            None => Vec::new(),
            Some(Value::Array(v)) => v.clone(),
            Some(_) => return Err(problem(&format!("{at}.args"), "args is a list")),
        };
        let mut usage = Vec::new();
        let mut names = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            let f = format!("{at}.args.{i}");
            let u = arg_usage(arg).map_err(|m| problem(&f, m))?;
            let n = arg["name"].as_str().unwrap_or_default().to_string();
            if names.contains(&n) {
                return Err(problem(&f, format!("argument {n:?} is declared twice")));
            }
            names.push(n);
            usage.push(u);
        }
        actions.insert(
            an.clone(),
            Action {
                help: help.to_string(),
                read_only,
                usage: usage.join(" "),
            },
        );
    }
    if let Some(d) = obj.get("default_action") {
        if !d.as_str().is_some_and(|d| actions.contains_key(d)) {
            return Err(problem(
                "default_action",
                "default_action must name one of the group's actions",
            ));
        }
    }
    // What the in-container CLI could not turn into commands (reserved
    // names, defaults of the wrong type, positional order, ...) is refused
    // here, by the CLI's own parser, not at the worker's first call.
    if let Err(e) = orchestrator::Catalog::from_value(&json!({"groups": [json.clone()]})) {
        return Err(vec![(
            None,
            format!("the orchestrator CLI cannot use it: {e}"),
        )]);
    }
    Ok(ToolGroup {
        name: name.to_string(),
        description: description.to_string(),
        upstream_url,
        actions,
        json,
    })
}

/// Checks one argument declaration; its usage text.
fn arg_usage(arg: &Value) -> Result<String, String> {
    let known = [
        "name",
        "positional",
        "flag",
        "type",
        "values",
        "required",
        "default",
        "help",
        "value_name",
    ];
    let Some(o) = arg.as_object() else {
        return Err("an argument is an object".into());
    };
    if let Some(k) = o.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!(
            "{k:?} is not a field of an argument ({})",
            known.join(", ")
        ));
    }
    let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
    let ok_name = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok_name {
        return Err(format!(
            "argument name {name:?}: lowercase letters, digits and _"
        ));
    }
    let ty = o.get("type").and_then(Value::as_str).unwrap_or("string");
    if !["string", "integer", "boolean", "enum"].contains(&ty) {
        return Err(format!(
            "type {ty:?} is not one of string, integer, boolean, enum"
        ));
    }
    let values: Vec<&str> = o
        .get("values")
        .and_then(Value::as_array)
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if (ty == "enum") == values.is_empty() {
        return Err("values (a list of strings) goes with type \"enum\", and only with it".into());
    }
    let positional = o
        .get("positional")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if positional && (o.contains_key("flag") || ty == "boolean") {
        return Err("a positional argument has no flag and is not a boolean".into());
    }
    let flag = o
        .get("flag")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("--{}", name.replace('_', "-")));
    let good_flag = flag.len() > 2
        && flag.starts_with("--")
        && flag[2..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !positional && !good_flag {
        return Err(format!("flag {flag:?} must be --lowercase-words"));
    }
    let required = o.get("required").and_then(Value::as_bool).unwrap_or(false);
    let shown = match (ty, positional) {
        ("boolean", _) => flag.clone(),
        ("enum", true) => format!("<{}>", values.join("|")),
        ("enum", false) => format!("{flag} <{}>", values.join("|")),
        (_, true) => format!(
            "<{}>",
            o.get("value_name").and_then(Value::as_str).unwrap_or(name)
        ),
        (_, false) => format!(
            "{flag} <{}>",
            o.get("value_name").and_then(Value::as_str).unwrap_or(name)
        ),
    };
    Ok(if required {
        shown
    } else {
        format!("[{shown}]")
    })
}

/// One `allowed_tools` entry: a whole group, or one action of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// The group.
    pub group: String,
    /// The action, when only one is granted.
    pub action: Option<String>,
}

impl Grant {
    /// `group` or `group:action`.
    pub fn parse(s: &str) -> Option<Grant> {
        let (g, a) = match s.split_once(':') {
            Some((g, a)) => (g, Some(a)),
            None => (s, None),
        };
        (is_name(g) && a.is_none_or(is_name)).then(|| Grant {
            group: g.to_string(),
            action: a.map(str::to_string),
        })
    }

    /// Whether this grant covers `group action`.
    pub fn covers(&self, group: &str, action: &str) -> bool {
        self.group == group && self.action.as_deref().is_none_or(|a| a == action)
    }
}

/// The grants of `allowed_tools` (entries that do not parse are left out;
/// the schema refuses them first).
pub fn grants(allowed: &[String]) -> Vec<Grant> {
    allowed.iter().filter_map(|s| Grant::parse(s)).collect()
}

/// Whether `allowed` lets a worker call `group action`.
pub fn allows(allowed: &[String], group: &str, action: &str) -> bool {
    grants(allowed).iter().any(|g| g.covers(group, action))
}

/// The groups `allowed` touches, each once, in the order it names them.
pub fn allowed_groups(allowed: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for g in grants(allowed) {
        if !out.contains(&g.group) {
            out.push(g.group);
        }
    }
    out
}

/// The actions of `group` that `allowed` grants, in the group's order.
pub fn allowed_actions(allowed: &[String], group: &ToolGroup) -> Vec<String> {
    group
        .actions
        .keys()
        .filter(|a| allows(allowed, &group.name, a))
        .cloned()
        .collect()
}

/// What is wrong with `allowed` against the catalog's groups: (index of
/// the entry, message naming the known groups or actions).
pub fn check_grants(
    allowed: &[String],
    tools: &BTreeMap<String, ToolGroup>,
) -> Option<(usize, String)> {
    let known: Vec<&str> = tools.keys().map(String::as_str).collect();
    for (i, s) in allowed.iter().enumerate() {
        let Some(g) = Grant::parse(s) else {
            return Some((i, format!("{s:?} is not a tool group or group:action")));
        };
        let Some(group) = tools.get(&g.group) else {
            let guess = crate::model::diagnose::near_miss(&g.group, &known)
                .map(|k| format!("; did you mean {k:?}?"))
                .unwrap_or_default();
            return Some((
                i,
                format!(
                    "{:?} is not a tool group (known: {}{guess})",
                    g.group,
                    known.join(", ")
                ),
            ));
        };
        if let Some(a) = &g.action {
            if !group.actions.contains_key(a) {
                let acts: Vec<&str> = group.actions.keys().map(String::as_str).collect();
                return Some((
                    i,
                    format!(
                        "{a:?} is not an action of tool group {:?} (its actions: {})",
                        g.group,
                        acts.join(", ")
                    ),
                ));
            }
        }
    }
    None
}

/// The first grant of `merged` that `preset` does not cover (an override
/// only narrows: it may drop groups or actions, never add them).
pub fn widening(preset: &[String], merged: &[String]) -> Option<String> {
    let p = grants(preset);
    grants(merged).into_iter().find_map(|m| {
        let covered = p.iter().any(|g| {
            g.group == m.group
                && match (&g.action, &m.action) {
                    (None, _) => true,
                    (Some(a), Some(b)) => a == b,
                    (Some(_), None) => false,
                }
        });
        (!covered).then(|| match &m.action {
            Some(a) => format!("{}:{a}", m.group),
            None => m.group.clone(),
        })
    })
}

/// The content of [`TOOLS_FILE`]: the declarations of the groups `allowed`
/// grants, with only the granted actions, and `known`, the bare names of
/// every group and action, so the CLI refuses one it may not use with its
/// "permission denied" (exit 77) rather than a usage error. No description,
/// usage or help of anything not granted goes in.
pub fn delivered(tools: &BTreeMap<String, ToolGroup>, allowed: &[String]) -> Value {
    let mut groups = Vec::new();
    for name in allowed_groups(allowed) {
        let Some(g) = tools.get(&name) else { continue };
        let keep = allowed_actions(allowed, g);
        let mut json = g.json.clone();
        if let Some(acts) = json.get_mut("actions").and_then(Value::as_object_mut) {
            acts.retain(|a, _| keep.contains(a));
        }
        if let Some(obj) = json.as_object_mut() {
            obj.remove("upstream_url");
            if obj
                .get("default_action")
                .and_then(Value::as_str)
                .is_some_and(|d| !keep.iter().any(|k| k == d))
            {
                obj.remove("default_action");
            }
        }
        groups.push(json);
    }
    let known: BTreeMap<&String, Vec<&String>> = tools
        .iter()
        .map(|(n, g)| (n, g.actions.keys().collect()))
        .collect();
    json!({"groups": groups, "known": known})
}

/// The shipped declarations (`skills/*.json`), compiled in for unit tests.
#[cfg(test)]
pub(crate) fn shipped_sources() -> Vec<(String, Vec<u8>)> {
    [
        ("admin", include_str!("../../skills/admin.json")),
        ("deploy", include_str!("../../skills/deploy.json")),
        ("engineering", include_str!("../../skills/engineering.json")),
        ("infra", include_str!("../../skills/infra.json")),
        ("project", include_str!("../../skills/project.json")),
        ("respond", include_str!("../../skills/respond.json")),
    ]
    .iter()
    .map(|(n, t)| (format!("{n}.json"), t.as_bytes().to_vec()))
    .collect()
}

/// The shipped groups, parsed, for unit tests.
#[cfg(test)]
pub(crate) fn shipped() -> BTreeMap<String, ToolGroup> {
    shipped_sources()
        .into_iter()
        .map(|(f, b)| {
            let n = f.trim_end_matches(".json").to_string();
            let g = parse_group(&n, &b).expect("a shipped group parses");
            (n, g)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_shipped_groups_parse_with_their_usage() {
        let t = shipped();
        assert_eq!(t.len(), 6);
        let d = &t["deploy"];
        assert_eq!(
            d.actions.keys().collect::<Vec<_>>(),
            ["logs", "status", "trigger"]
        );
        assert_eq!(d.actions["logs"].usage, "<deploy_id> [--tail <n>]");
        assert!(d.actions["status"].read_only && !d.actions["trigger"].read_only);
        assert_eq!(
            t["infra"].actions["allocate"].usage,
            "--project <project_id> --kind <vm|db|bucket> [--size <small|medium|large>]"
        );
    }

    #[test]
    fn grants_cover_groups_or_single_actions() {
        let a = v(&["project", "deploy:status", "deploy:logs"]);
        assert!(allows(&a, "project", "create"));
        assert!(allows(&a, "deploy", "status"));
        assert!(!allows(&a, "deploy", "trigger"));
        assert!(!allows(&a, "infra", "list"));
        assert_eq!(allowed_groups(&a), ["project", "deploy"]);
        assert_eq!(
            allowed_actions(&a, &shipped()["deploy"]),
            ["logs", "status"]
        );
        assert_eq!(Grant::parse("Deploy"), None);
        assert_eq!(Grant::parse("deploy:"), None);
        assert_eq!(Grant::parse("a:b:c"), None);
    }

    #[test]
    fn unknown_groups_and_actions_are_named_with_the_known_ones() {
        let t = shipped();
        assert_eq!(check_grants(&v(&["project", "respond"]), &t), None);
        let (i, m) = check_grants(&v(&["respond", "deploi"]), &t).unwrap();
        assert_eq!(i, 1);
        assert!(m.contains("\"deploi\" is not a tool group"), "{m}");
        assert!(
            m.contains("admin, deploy, engineering, infra, project, respond"),
            "{m}"
        );
        assert!(m.contains("did you mean \"deploy\""), "{m}");
        let (_, m) = check_grants(&v(&["deploy:nuke"]), &t).unwrap();
        assert!(m.contains("logs, status, trigger"), "{m}");
    }

    #[test]
    fn an_override_only_narrows() {
        let preset = v(&["project", "deploy", "respond"]);
        assert_eq!(widening(&preset, &v(&["deploy:status"])), None);
        assert_eq!(widening(&preset, &v(&["project", "respond"])), None);
        assert_eq!(widening(&preset, &v(&["infra"])), Some("infra".into()));
        let narrow = v(&["deploy:status"]);
        assert_eq!(widening(&narrow, &v(&["deploy"])), Some("deploy".into()));
        assert_eq!(
            widening(&narrow, &v(&["deploy:trigger"])),
            Some("deploy:trigger".into())
        );
        assert_eq!(widening(&narrow, &v(&["deploy:status"])), None);
    }

    #[test]
    fn the_container_gets_only_what_it_may_use() {
        let t = shipped();
        let d = delivered(&t, &v(&["deploy:status", "deploy:logs", "respond"]));
        let groups = d["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2);
        let deploy = &groups[0];
        assert_eq!(deploy["name"], "deploy");
        let acts: Vec<&String> = deploy["actions"].as_object().unwrap().keys().collect();
        assert_eq!(acts, ["logs", "status"]);
        assert!(!d["groups"].to_string().contains("trigger"));
        assert_eq!(d["known"]["deploy"], json!(["logs", "status", "trigger"]));
        assert_eq!(d["known"]["admin"], json!(["cancel", "workers"]));
    }

    #[test]
    fn what_the_cli_could_not_build_is_refused_here() {
        for bad in [
            r#"{"name":"g","description":"d","actions":{"a":{"help":"h","args":[{"name":"x","type":"boolean","default":false}]}}}"#,
            r#"{"name":"g","description":"d","actions":{"a":{"help":"h","args":[{"name":"x","type":"integer","default":"abc"}]}}}"#,
            r#"{"name":"g","description":"d","actions":{"a":{"help":"h","args":[{"name":"help"}]}}}"#,
            r#"{"name":"g","description":"d","actions":{"a":{"help":"h","args":[{"name":"x","flag":"--y"},{"name":"z","flag":"--y"}]}}}"#,
        ] {
            let e = parse_group("g", bad.as_bytes()).unwrap_err();
            assert!(
                e[0].1.contains("orchestrator CLI cannot use it"),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn declarations_that_cannot_work_are_refused_by_field() {
        let bad = |s: &str| parse_group("g", s.as_bytes()).unwrap_err()[0].0.clone();
        let ok = r#"{"name":"g","description":"d","actions":{"a":{"help":"h"}}}"#;
        assert!(parse_group("g", ok.as_bytes()).is_ok());
        assert_eq!(
            parse_group("other", ok.as_bytes()).unwrap_err()[0]
                .0
                .as_deref(),
            Some("name")
        );
        assert_eq!(
            bad(r#"{"name":"g","actions":{"a":{"help":"h"}}}"#).as_deref(),
            Some("description")
        );
        assert_eq!(
            bad(r#"{"name":"g","description":"d","actions":{}}"#).as_deref(),
            Some("actions")
        );
        assert_eq!(
            bad(r#"{"name":"g","description":"d","actions":{"a":{"help":"h","args":[{"name":"x","type":"float"}]}}}"#).as_deref(),
            Some("actions.a.args.0")
        );
        assert_eq!(
            bad(r#"{"name":"g","description":"d","actions":{"a":{"help":"h","args":[{"name":"x"},{"name":"x"}]}}}"#).as_deref(),
            Some("actions.a.args.1")
        );
        assert_eq!(
            bad(r#"{"name":"g","description":"d","default_action":"b","actions":{"a":{"help":"h"}}}"#).as_deref(),
            Some("default_action")
        );
        assert_eq!(
            bad(r#"{"name":"g","description":"d","upstream_url":"ftp://x","actions":{"a":{"help":"h"}}}"#).as_deref(),
            Some("upstream_url")
        );
        assert_eq!(
            bad(r#"{"name":"g","description":"d","action":{}}"#).as_deref(),
            Some("action")
        );
    }
}
