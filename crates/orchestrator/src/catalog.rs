//! The tool catalog: the JSON file (`ORCHESTRATOR_TOOLS_FILE`) that declares
//! the command groups, their actions and their arguments, parsed and checked
//! by hand from a [`serde_json::Value`]. Pure.
//!
//! ```json
//! { "groups": [ { "name": "deploy", "description": "...", "default_action": "...",
//!                 "actions": { "logs": { "help": "...", "read_only": true,
//!                   "args": [ { "name": "deploy_id", "positional": true, "required": true },
//!                             { "name": "tail", "flag": "--tail", "type": "integer" } ] } } } ],
//!   "known": { "deploy": ["logs", "status", "trigger"] } }
//! ```
//!
//! A group has the format of the shipped `skills/<group>.json`. `groups` is
//! required; `known` (every group of the daemon's catalog with all its action
//! names) is optional and always merged with the groups' own actions. Unknown
//! fields are ignored; a field of the wrong type, a bad name or an argument
//! list the command line could not express is an error ([`CatalogError`]).
//!
//! The actions of a group come in name order (a JSON object's keys are not
//! kept in file order by `serde_json`); groups and arguments keep the file's
//! order.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// Why a tool catalog cannot be used: one line, naming the offending part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError(pub String);

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CatalogError {}

fn err<T>(msg: impl Into<String>) -> Result<T, CatalogError> {
    Err(CatalogError(msg.into()))
}

/// The type of an argument's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgType {
    /// Free text, sent as a JSON string; values may start with `-`.
    String,
    /// A whole number (`i64`), sent as a JSON number.
    Integer,
    /// A switch taking no value: sent as `true` when given, omitted otherwise.
    Boolean,
    /// One of the listed values, sent as a JSON string.
    Enum(Vec<String>),
}

/// One argument of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgSpec {
    /// Key in the call's JSON `args` (`^[a-z][a-z0-9_]*$`).
    pub name: String,
    /// Positional (in declared order) rather than a `--flag`.
    pub positional: bool,
    /// Long flag name without the leading `--` (non-positional only).
    pub long: Option<String>,
    /// Value type.
    pub ty: ArgType,
    /// Must be given (unless it has a default).
    pub required: bool,
    /// Sent when the argument is not given, in its command-line form
    /// (checked against the type).
    pub default: Option<String>,
    /// Help text.
    pub help: Option<String>,
    /// Placeholder in the usage text (the name when absent).
    pub value_name: Option<String>,
}

/// One action of a group: `orchestrator <group> <action> [args]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// Action name (the last path segment of the gateway call).
    pub name: String,
    /// One-line help.
    pub help: String,
    /// Declared as not changing anything (informational).
    pub read_only: bool,
    /// Arguments in declared order.
    pub args: Vec<ArgSpec>,
}

/// One command group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name (the first path segment of the gateway call).
    pub name: String,
    /// One-line description.
    pub description: String,
    /// The action run when the group is given no action word.
    pub default_action: Option<String>,
    /// Actions in name order.
    pub actions: Vec<Action>,
}

impl Group {
    /// The action called `name`, if the group declares it.
    pub fn action(&self, name: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.name == name)
    }

    /// The default action, if declared and present in the group.
    pub fn default(&self) -> Option<&Action> {
        self.default_action.as_deref().and_then(|d| self.action(d))
    }
}

/// A parsed tool catalog.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    /// The groups the worker may use, in file order.
    pub groups: Vec<Group>,
    /// `known` as given (group name to action names); see
    /// [`Catalog::known_actions`] for the merged view.
    pub known: BTreeMap<String, Vec<String>>,
}

/// Whether `s` is a group or action name: `^[a-z][a-z0-9_-]{0,63}$` (the
/// gateway's path segment rule).
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Whether `s` is an argument name: `^[a-z][a-z0-9_]*$`.
pub fn is_valid_arg_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

fn is_valid_long(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

fn opt_str<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'a str>, CatalogError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => err(format!("{at}: {key} must be a string")),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str, at: &str) -> Result<bool, CatalogError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => err(format!("{at}: {key} must be true or false")),
    }
}

fn parse_arg(v: &Value, at: &str) -> Result<ArgSpec, CatalogError> {
    let Value::Object(m) = v else {
        return err(format!("{at}: an argument must be an object"));
    };
    let name = match opt_str(m, "name", at)? {
        Some(n) if is_valid_arg_name(n) => n.to_owned(),
        Some(n) => {
            return err(format!(
                "{at}: argument name {n:?} does not match ^[a-z][a-z0-9_]*$"
            ))
        }
        None => return err(format!("{at}: an argument needs a name")),
    };
    let at = format!("{at} ({name})");
    if name == "help" {
        return err(format!("{at}: the name help is reserved"));
    }
    let positional = opt_bool(m, "positional", &at)?;
    let ty = match opt_str(m, "type", &at)?.unwrap_or("string") {
        "string" => ArgType::String,
        "integer" => ArgType::Integer,
        "boolean" => ArgType::Boolean,
        "enum" => {
            let values: Vec<String> = match m.get("values") {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| i.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        CatalogError(format!("{at}: values must be non-empty strings"))
                    })?,
                _ => return err(format!("{at}: an enum needs a values list")),
            };
            if values.is_empty() {
                return err(format!("{at}: an enum needs at least one value"));
            }
            ArgType::Enum(values)
        }
        other => {
            return err(format!(
                "{at}: type {other:?} is not one of string, integer, boolean, enum"
            ))
        }
    };
    let long = if positional {
        if ty == ArgType::Boolean {
            return err(format!("{at}: a boolean cannot be positional"));
        }
        None
    } else {
        let flag = match opt_str(m, "flag", &at)? {
            Some(f) => f.to_owned(),
            None => format!("--{}", name.replace('_', "-")),
        };
        match flag.strip_prefix("--") {
            Some(l) if is_valid_long(l) && l != "help" && l != "version" => Some(l.to_owned()),
            _ => {
                return err(format!(
                    "{at}: flag {flag:?} is not a long flag like --name (or is reserved)"
                ))
            }
        }
    };
    let default = match m.get("default") {
        None | Some(Value::Null) => None,
        Some(_) if ty == ArgType::Boolean => {
            return err(format!("{at}: a boolean takes no default"))
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return err(format!("{at}: default must be a string or a number")),
    };
    if let Some(d) = &default {
        match &ty {
            ArgType::Integer if d.parse::<i64>().is_err() => {
                return err(format!("{at}: default {d:?} is not an integer"))
            }
            ArgType::Enum(values) if !values.contains(d) => {
                return err(format!(
                    "{at}: default {d:?} is not one of {}",
                    values.join(", ")
                ))
            }
            _ => {}
        }
    }
    Ok(ArgSpec {
        positional,
        long,
        ty,
        required: opt_bool(m, "required", &at)?,
        default,
        help: opt_str(m, "help", &at)?.map(str::to_owned),
        value_name: opt_str(m, "value_name", &at)?.map(str::to_owned),
        name,
    })
}

fn parse_action(name: &str, v: &Value, at: &str) -> Result<Action, CatalogError> {
    let at = format!("{at} action {name:?}");
    if !is_valid_name(name) {
        return err(format!(
            "{at}: the name does not match ^[a-z][a-z0-9_-]{{0,63}}$"
        ));
    }
    let Value::Object(m) = v else {
        return err(format!("{at}: an action must be an object"));
    };
    let args: Vec<ArgSpec> = match m.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, a)| parse_arg(a, &format!("{at} args[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return err(format!("{at}: args must be a list")),
    };
    let mut optional_positional = false;
    for (i, a) in args.iter().enumerate() {
        if args[..i].iter().any(|b| b.name == a.name) {
            return err(format!("{at}: argument {:?} is declared twice", a.name));
        }
        if a.long.is_some() && args[..i].iter().any(|b| b.long == a.long) {
            return err(format!(
                "{at}: flag --{} is declared twice",
                a.long.as_deref().unwrap_or("")
            ));
        }
        if a.positional {
            let needed = a.required && a.default.is_none();
            if needed && optional_positional {
                return err(format!(
                    "{at}: required positional {:?} comes after an optional one",
                    a.name
                ));
            }
            optional_positional |= !needed;
        }
    }
    Ok(Action {
        name: name.to_owned(),
        help: opt_str(m, "help", &at)?.unwrap_or_default().to_owned(),
        read_only: opt_bool(m, "read_only", &at)?,
        args,
    })
}

fn parse_group(v: &Value, at: &str) -> Result<Group, CatalogError> {
    let Value::Object(m) = v else {
        return err(format!("{at}: a group must be an object"));
    };
    let name = match opt_str(m, "name", at)? {
        Some(n) if is_valid_name(n) => n.to_owned(),
        Some(n) => {
            return err(format!(
                "{at}: group name {n:?} does not match ^[a-z][a-z0-9_-]{{0,63}}$"
            ))
        }
        None => return err(format!("{at}: a group needs a name")),
    };
    let at = format!("group {name:?}");
    let actions = match m.get("actions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(acts)) => acts
            .iter()
            .map(|(k, a)| parse_action(k, a, &at))
            .collect::<Result<_, _>>()?,
        Some(_) => return err(format!("{at}: actions must be an object")),
    };
    Ok(Group {
        description: opt_str(m, "description", &at)?
            .unwrap_or_default()
            .to_owned(),
        default_action: opt_str(m, "default_action", &at)?.map(str::to_owned),
        actions,
        name,
    })
}

impl Catalog {
    /// Parses the text of a tool catalog file.
    pub fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| CatalogError(format!("not valid JSON: {e}")))?;
        Self::from_value(&v)
    }

    /// Reads a tool catalog from its JSON value.
    pub fn from_value(v: &Value) -> Result<Catalog, CatalogError> {
        let Value::Object(root) = v else {
            return err("not a JSON object with a groups list");
        };
        let groups: Vec<Group> = match root.get("groups") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, g)| parse_group(g, &format!("groups[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(_) => return err("groups must be a list"),
            None => return err("no groups list"),
        };
        for (i, g) in groups.iter().enumerate() {
            if groups[..i].iter().any(|h| h.name == g.name) {
                return err(format!("group {:?} is declared twice", g.name));
            }
        }
        let mut known = BTreeMap::new();
        match root.get("known") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (group, actions) in m {
                    let names: Option<Vec<String>> = actions.as_array().and_then(|items| {
                        items
                            .iter()
                            .map(|a| a.as_str().map(str::to_owned))
                            .collect()
                    });
                    let Some(names) = names else {
                        return err(format!("known.{group} must be a list of action names"));
                    };
                    known.insert(group.clone(), names);
                }
            }
            Some(_) => return err("known must be an object"),
        }
        Ok(Catalog { groups, known })
    }

    /// The group called `name`, if the file declares it.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Whether `name` is a group of the daemon's catalog (in `known` or in
    /// `groups`).
    pub fn is_known_group(&self, name: &str) -> bool {
        self.known.contains_key(name) || self.group(name).is_some()
    }

    /// Every action name known for `group`: its `known` list, then the
    /// group's own actions not in it.
    pub fn known_actions(&self, group: &str) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .known
            .get(group)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        for a in self.group(group).into_iter().flat_map(|g| &g.actions) {
            if !out.contains(&a.name.as_str()) {
                out.push(&a.name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::shipped;
    use serde_json::json;

    fn one_arg(arg: Value) -> Result<Catalog, CatalogError> {
        Catalog::from_value(&json!({"groups": [
            {"name": "g", "actions": {"a": {"args": [arg]}}}
        ]}))
    }

    #[test]
    fn shipped_skills_parse() {
        let c = shipped();
        let names: Vec<&str> = c.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "project",
                "deploy",
                "engineering",
                "infra",
                "respond",
                "admin"
            ]
        );
        let deploy = c.group("deploy").unwrap();
        let acts: Vec<&str> = deploy.actions.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(acts, ["logs", "status", "trigger"]);
        let trigger = deploy.action("trigger").unwrap();
        assert_eq!(trigger.args[1].default.as_deref(), Some("staging"));
        assert_eq!(trigger.args[1].long.as_deref(), Some("env"));
        assert!(trigger.args[0].positional && trigger.args[0].required);
        assert_eq!(deploy.action("logs").unwrap().args[1].ty, ArgType::Integer);
        assert!(deploy.action("logs").unwrap().read_only);
        let respond = c.group("respond").unwrap();
        assert_eq!(respond.default().unwrap().name, "send");
        assert!(c.is_known_group("admin"));
        assert!(!c.is_known_group("nuke"));
        assert_eq!(c.known_actions("deploy"), ["logs", "status", "trigger"]);
    }

    #[test]
    fn known_is_optional_and_merged() {
        let c = Catalog::parse(
            r#"{"groups": [{"name": "deploy", "actions": {"status": {}}}],
                "known": {"deploy": ["trigger", "status"], "admin": ["workers"]},
                "extra": 1}"#,
        )
        .unwrap();
        assert!(c.is_known_group("admin"));
        assert_eq!(c.known_actions("deploy"), ["trigger", "status"]);
        assert_eq!(c.known_actions("admin"), ["workers"]);
        assert!(c.known_actions("nuke").is_empty());
        let c = Catalog::parse(r#"{"groups": []}"#).unwrap();
        assert!(c.groups.is_empty() && c.known.is_empty());
    }

    #[test]
    fn defaults_of_args() {
        let c = one_arg(json!({"name": "project_id"})).unwrap();
        let a = &c.groups[0].actions[0].args[0];
        assert_eq!(a.long.as_deref(), Some("project-id"));
        assert_eq!(a.ty, ArgType::String);
        assert!(!a.positional && !a.required);
        let c = one_arg(json!({"name": "n", "type": "integer", "default": 5})).unwrap();
        assert_eq!(c.groups[0].actions[0].args[0].default.as_deref(), Some("5"));
        let c = one_arg(json!({"name": "n", "unknown_field": [1]})).unwrap();
        assert_eq!(c.groups[0].actions[0].args[0].name, "n");
    }

    #[test]
    fn bad_files_are_errors() {
        for (text, needle) in [
            ("", "not valid JSON"),
            ("{", "not valid JSON"),
            ("[]", "groups"),
            ("{}", "no groups list"),
            (r#"{"groups": {}}"#, "groups must be a list"),
            (r#"{"groups": [{}]}"#, "needs a name"),
            (r#"{"groups": [{"name": "Bad"}]}"#, "does not match"),
            (r#"{"groups": [{"name": "g"}, {"name": "g"}]}"#, "twice"),
            (r#"{"groups": [], "known": {"g": "a"}}"#, "known.g"),
            (
                r#"{"groups": [{"name": "g", "actions": {"A": {}}}]}"#,
                "does not match",
            ),
            (
                r#"{"groups": [{"name": "g", "actions": []}]}"#,
                "actions must be an object",
            ),
        ] {
            let e = Catalog::parse(text).unwrap_err();
            assert!(e.0.contains(needle), "{text}: {e}");
            assert!(!e.0.contains('\n'), "{e}");
        }
    }

    #[test]
    fn bad_args_are_errors() {
        for (arg, needle) in [
            (json!({"name": "x-y"}), "does not match"),
            (json!({"name": "help"}), "reserved"),
            (json!({"name": "x", "type": "float"}), "float"),
            (json!({"name": "x", "type": "enum"}), "values"),
            (
                json!({"name": "x", "type": "enum", "values": []}),
                "at least one",
            ),
            (
                json!({"name": "x", "type": "enum", "values": ["a"], "default": "b"}),
                "not one of",
            ),
            (
                json!({"name": "x", "type": "integer", "default": "z"}),
                "not an integer",
            ),
            (
                json!({"name": "x", "type": "boolean", "default": "z"}),
                "no default",
            ),
            (
                json!({"name": "x", "type": "boolean", "positional": true}),
                "positional",
            ),
            (json!({"name": "x", "flag": "-x"}), "long flag"),
            (json!({"name": "x", "flag": "--help"}), "reserved"),
            (json!({"name": "x", "required": "yes"}), "true or false"),
            (json!("x"), "object"),
        ] {
            let e = one_arg(arg.clone()).unwrap_err();
            assert!(e.0.contains(needle), "{arg}: {e}");
        }
        let two = |a: Value, b: Value| {
            Catalog::from_value(&json!({"groups": [
                {"name": "g", "actions": {"a": {"args": [a, b]}}}
            ]}))
        };
        assert!(two(json!({"name": "x"}), json!({"name": "x"})).is_err());
        assert!(two(json!({"name": "x"}), json!({"name": "y", "flag": "--x"})).is_err());
        assert!(two(
            json!({"name": "x", "positional": true}),
            json!({"name": "y", "positional": true, "required": true})
        )
        .unwrap_err()
        .0
        .contains("after an optional"));
        assert!(two(
            json!({"name": "x", "positional": true, "required": true}),
            json!({"name": "y", "positional": true})
        )
        .is_ok());
    }
}
