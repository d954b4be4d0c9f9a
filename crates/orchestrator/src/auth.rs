//! The `ORCHESTRATOR_ALLOWED_TOOLS` check and the cheap scan of the raw
//! arguments that finds the command group before full parsing, so that a
//! group not allowed is refused (exit 77) before its arguments are looked at.
//! Pure.

use crate::{ALLOWED_TOOLS_ENV, GROUPS};

/// Parses the value of `ORCHESTRATOR_ALLOWED_TOOLS`: comma-separated,
/// whitespace-trimmed, empty items dropped. Missing means empty.
pub fn allowed_tools(raw: Option<&str>) -> Vec<&str> {
    raw.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `group` is allowed by the raw `ORCHESTRATOR_ALLOWED_TOOLS` value.
/// Names must match exactly (case-sensitive); an empty or missing list allows
/// nothing.
pub fn is_allowed(raw: Option<&str>, group: &str) -> bool {
    allowed_tools(raw).contains(&group)
}

/// The message printed (on stderr) when a group is not allowed.
pub fn permission_denied_message(group: &str) -> String {
    format!("Permission denied: {group} is not in {ALLOWED_TOOLS_ENV}")
}

/// What a cheap scan of the raw arguments (without `argv[0]`) finds before
/// full parsing: whether the global `--json` flag was given before the group,
/// and the group candidate (the first argument that is not a flag).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prescan {
    /// `--json` appeared before the group.
    pub json: bool,
    /// First non-flag argument, if any.
    pub group: Option<String>,
}

/// Scans the arguments (without `argv[0]`) for the group candidate. Every
/// argument starting with `-` before the group is treated as a flag (the only
/// global flags, `--json`, `--help` and `--version`, take no value); `--`
/// ends the flags and makes the next argument the candidate.
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
    out
}

/// Whether `name` is one of the known groups.
pub fn is_known_group(name: &str) -> bool {
    GROUPS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_allows_nothing() {
        for g in GROUPS {
            assert!(!is_allowed(None, g));
            assert!(!is_allowed(Some(""), g));
            assert!(!is_allowed(Some(" , ,"), g));
        }
        assert!(allowed_tools(None).is_empty());
    }

    #[test]
    fn whitespace_is_trimmed() {
        let raw = Some(" project ,\trespond\n, deploy");
        assert_eq!(allowed_tools(raw), vec!["project", "respond", "deploy"]);
        assert!(is_allowed(raw, "project"));
        assert!(is_allowed(raw, "respond"));
        assert!(is_allowed(raw, "deploy"));
        assert!(!is_allowed(raw, "infra"));
    }

    #[test]
    fn names_match_exactly() {
        let raw = Some("project,respond");
        assert!(!is_allowed(raw, "admin"));
        assert!(!is_allowed(raw, "proj"));
        assert!(!is_allowed(Some("projects"), "project"));
        assert!(!is_allowed(Some("Project"), "project"));
        assert!(!is_allowed(Some("project respond"), "project"));
        assert!(is_allowed(Some("admin"), "admin"));
    }

    #[test]
    fn permission_message_is_exact() {
        assert_eq!(
            permission_denied_message("admin"),
            "Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS"
        );
    }

    #[test]
    fn prescan_finds_group() {
        assert_eq!(prescan::<&str>(&[]), Prescan::default());
        assert_eq!(
            prescan(&["--json", "admin", "workers"]),
            Prescan {
                json: true,
                group: Some("admin".into())
            }
        );
        assert!(!prescan(&["admin", "--json"]).json);
        assert_eq!(
            prescan(&["--bogus", "deploy"]).group.as_deref(),
            Some("deploy")
        );
        assert_eq!(prescan(&["--help"]).group, None);
        assert_eq!(prescan(&["--", "admin"]).group.as_deref(), Some("admin"));
        assert_eq!(prescan(&["nuke"]).group.as_deref(), Some("nuke"));
        assert!(is_known_group("admin"));
        assert!(!is_known_group("nuke"));
    }
}
