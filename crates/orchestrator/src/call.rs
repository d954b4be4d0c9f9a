//! The mapping of parsed command-line matches to their gateway call:
//! `POST /v1/tools/{group}/{action}` with `{"args": {...}}`, where `args`
//! holds the given arguments and the defaults of those not given, keyed by
//! their catalog names. Pure.

use clap::ArgMatches;
use serde_json::{json, Map, Value};

use crate::catalog::{Action, ArgType, Catalog};

/// One gateway call: `POST /v1/tools/{group}/{action}` with `{"args": args}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Tool group.
    pub group: String,
    /// Action of the group.
    pub action: String,
    /// The JSON object of arguments.
    pub args: Value,
}

impl Call {
    /// Path of the call, relative to the gateway base URL.
    pub fn path(&self) -> String {
        format!("/v1/tools/{}/{}", self.group, self.action)
    }

    /// Request body.
    pub fn body(&self) -> Value {
        json!({ "args": self.args })
    }
}

/// Joins the base URL (trailing slashes ignored) and the call path.
pub fn call_url(base: &str, call: &Call) -> String {
    format!("{}{}", base.trim_end_matches('/'), call.path())
}

/// The `args` object of `action` from its matches: strings and enums as
/// JSON strings, integers as numbers, booleans as `true` when given (omitted
/// otherwise); arguments neither given nor defaulted are omitted.
pub fn args_from_matches(action: &Action, m: &ArgMatches) -> Value {
    let mut out = Map::new();
    for spec in &action.args {
        let id = spec.name.as_str();
        let value = match spec.ty {
            ArgType::Boolean => m
                .try_get_one::<bool>(id)
                .ok()
                .flatten()
                .filter(|b| **b)
                .map(|_| Value::Bool(true)),
            ArgType::Integer => m
                .try_get_one::<i64>(id)
                .ok()
                .flatten()
                .map(|n| Value::from(*n)),
            ArgType::String | ArgType::Enum(_) => m
                .try_get_one::<String>(id)
                .ok()
                .flatten()
                .map(|s| Value::String(s.clone())),
        };
        if let Some(v) = value {
            out.insert(spec.name.clone(), v);
        }
    }
    Value::Object(out)
}

/// The call of the root matches of a command built by
/// [`crate::args::build_command`] from `catalog`: the group subcommand, then
/// its action subcommand or, without one, the group's default action.
/// `None` if the matches do not fit the catalog.
pub fn call_from_matches(catalog: &Catalog, m: &ArgMatches) -> Option<Call> {
    let (group_name, gm) = m.subcommand()?;
    let group = catalog.group(group_name)?;
    let (action, am) = match gm.subcommand() {
        Some((name, am)) => (group.action(name)?, am),
        None => (group.default()?, gm),
    };
    Some(Call {
        group: group.name.clone(),
        action: action.name.clone(),
        args: args_from_matches(action, am),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{call, parse, review, review_call};

    #[test]
    fn project_commands() {
        let c = call(&["project", "list"]);
        assert_eq!(
            (c.group.as_str(), c.action.as_str(), c.args),
            ("project", "list", json!({}))
        );
        let c = call(&["project", "get", "proj_42"]);
        assert_eq!(
            (c.group.as_str(), c.action.as_str(), c.args),
            ("project", "get", json!({"project_id": "proj_42"}))
        );
        let c = call(&["project", "create", "--name", "billing-api"]);
        assert_eq!(
            (c.group.as_str(), c.action.as_str(), c.args),
            ("project", "create", json!({"name": "billing-api"}))
        );
        let c = call(&[
            "project",
            "create",
            "--name",
            "billing-api",
            "--description",
            "Invoices and payments",
        ]);
        assert_eq!(
            c.args,
            json!({"name": "billing-api", "description": "Invoices and payments"})
        );
        assert_eq!(c.path(), "/v1/tools/project/create");
    }

    #[test]
    fn deploy_commands() {
        let c = call(&["deploy", "trigger", "proj_42"]);
        assert_eq!(
            (c.group.as_str(), c.action.as_str(), c.args),
            (
                "deploy",
                "trigger",
                json!({"project_id": "proj_42", "env": "staging"})
            )
        );
        let c = call(&["deploy", "trigger", "proj_42", "--env", "production"]);
        assert_eq!(
            c.args,
            json!({"project_id": "proj_42", "env": "production"})
        );
        let c = call(&["deploy", "status", "dep_7f3a"]);
        assert_eq!(
            (c.action.as_str(), c.args),
            ("status", json!({"deploy_id": "dep_7f3a"}))
        );
        let c = call(&["deploy", "logs", "dep_7f3a"]);
        assert_eq!(
            (c.action.as_str(), c.args),
            ("logs", json!({"deploy_id": "dep_7f3a"}))
        );
        let c = call(&["deploy", "logs", "dep_7f3a", "--tail", "50"]);
        assert_eq!(c.args, json!({"deploy_id": "dep_7f3a", "tail": 50}));
        assert!(parse(&["deploy", "logs", "dep_7f3a", "--tail", "x"]).is_err());
        assert!(parse(&["deploy", "logs", "dep_7f3a", "--tail", "-1"]).is_err());
    }

    #[test]
    fn engineering_commands() {
        let c = call(&[
            "engineering",
            "trigger",
            "proj_42",
            "--task",
            "Fix it; add a test",
        ]);
        assert_eq!(
            (c.group.as_str(), c.action.as_str(), c.args),
            (
                "engineering",
                "trigger",
                json!({"project_id": "proj_42", "task": "Fix it; add a test"})
            )
        );
        let c = call(&[
            "engineering",
            "trigger",
            "proj_42",
            "--task",
            "- leading dash",
        ]);
        assert_eq!(c.args["task"], "- leading dash");
        let c = call(&["engineering", "status", "task_81"]);
        assert_eq!(
            (c.action.as_str(), c.args),
            ("status", json!({"task_id": "task_81"}))
        );
        let e = parse(&["engineering", "trigger", "proj_42"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn infra_commands() {
        let c = call(&[
            "infra",
            "allocate",
            "--project",
            "proj_42",
            "--kind",
            "bucket",
        ]);
        assert_eq!(
            (c.group.as_str(), c.action.as_str(), c.args),
            (
                "infra",
                "allocate",
                json!({"project_id": "proj_42", "kind": "bucket"})
            )
        );
        let c = call(&[
            "infra",
            "allocate",
            "--project",
            "proj_42",
            "--kind",
            "db",
            "--size",
            "medium",
        ]);
        assert_eq!(
            c.args,
            json!({"project_id": "proj_42", "kind": "db", "size": "medium"})
        );
        let c = call(&["infra", "list"]);
        assert_eq!((c.action.as_str(), c.args), ("list", json!({})));
        let c = call(&["infra", "list", "--project", "proj_42"]);
        assert_eq!(c.args, json!({"project_id": "proj_42"}));
        for bad in [
            &["infra", "allocate", "--project", "p", "--kind", "gpu"][..],
            &[
                "infra",
                "allocate",
                "--project",
                "p",
                "--kind",
                "vm",
                "--size",
                "huge",
            ],
            &["infra", "allocate", "--kind", "vm"],
        ] {
            assert_eq!(parse(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn respond_command() {
        let c = call(&["respond", "Done: all 3 items completed."]);
        assert_eq!(
            (c.group.as_str(), c.action.as_str(), c.args.clone()),
            (
                "respond",
                "send",
                json!({"message": "Done: all 3 items completed."})
            )
        );
        assert_eq!(c.path(), "/v1/tools/respond/send");
        let c = call(&["respond", "- item one\n- item two"]);
        assert_eq!(c.args["message"], "- item one\n- item two");
        // an unquoted message split into several arguments is a usage error
        assert_eq!(
            parse(&["respond", "Done:", "all"]).unwrap_err().exit_code(),
            2
        );
        assert_eq!(parse(&["respond"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn admin_commands() {
        let c = call(&["admin", "workers"]);
        assert_eq!(
            (c.group.as_str(), c.action.as_str(), c.args),
            ("admin", "workers", json!({}))
        );
        let c = call(&["admin", "cancel", "req_123"]);
        assert_eq!(
            (c.action.as_str(), c.args),
            ("cancel", json!({"request_id": "req_123"}))
        );
        assert_eq!(parse(&["admin", "cancel"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["admin", "nuke"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn url_and_body() {
        let c = call(&["admin", "cancel", "req_1"]);
        assert_eq!(
            call_url("http://172.30.0.1:9091/", &c),
            "http://172.30.0.1:9091/v1/tools/admin/cancel"
        );
        assert_eq!(
            call_url("http://h:1", &c),
            "http://h:1/v1/tools/admin/cancel"
        );
        assert_eq!(c.body(), json!({"args": {"request_id": "req_1"}}));
    }

    #[test]
    fn a_group_from_the_catalog_only() {
        let c = review_call(&[
            "review",
            "submit",
            "pr_1",
            "--lines",
            "-",
            "--max-score",
            "7",
        ]);
        assert_eq!(c.path(), "/v1/tools/review/submit");
        assert_eq!(
            c.args,
            json!({"target": "pr_1", "lines": "-", "max_score": 7, "mode": "quick"})
        );
        let c = review_call(&["review", "submit", "pr_1", "--draft", "--mode", "deep"]);
        assert_eq!(
            c.args,
            json!({"target": "pr_1", "draft": true, "mode": "deep"})
        );
        let c = review_call(&["review", "submit", "pr_1", "--note", "--not-a-flag"]);
        assert_eq!(c.args["note"], "--not-a-flag");
        let bad = |args: &[&str]| {
            let argv = std::iter::once("orchestrator").chain(args.iter().copied());
            crate::args::parse_args(&review(), argv)
                .unwrap_err()
                .exit_code()
        };
        assert_eq!(bad(&["review", "submit"]), 2);
        assert_eq!(bad(&["review", "submit", "p", "--max-score", "1.5"]), 2);
        assert_eq!(bad(&["review", "submit", "p", "--mode", "slow"]), 2);
        assert_eq!(bad(&["review", "submit", "p", "--draft", "yes"]), 2);
        assert_eq!(bad(&["review", "submit", "p", "q"]), 2);
    }

    #[test]
    fn default_action_beside_other_actions() {
        let c = review_call(&["chat", "hello"]);
        assert_eq!(
            (c.group.as_str(), c.action.as_str(), c.args),
            ("chat", "say", json!({"text": "hello"}))
        );
        let c = review_call(&["chat", "--loud", "- hi"]);
        assert_eq!(c.args, json!({"text": "- hi", "loud": true}));
        let c = review_call(&["chat", "history", "--limit", "3"]);
        assert_eq!(
            (c.action.as_str(), c.args),
            ("history", json!({"limit": 3}))
        );
        // the default action's name is a value, not an action word
        let c = review_call(&["chat", "say"]);
        assert_eq!((c.action.as_str(), c.args), ("say", json!({"text": "say"})));
    }

    #[test]
    fn respond_send_is_a_message() {
        let c = call(&["respond", "send"]);
        assert_eq!(
            (c.action.as_str(), c.args),
            ("send", json!({"message": "send"}))
        );
    }
}
