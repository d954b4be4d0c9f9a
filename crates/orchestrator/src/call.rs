//! The mapping of a parsed command to its gateway call:
//! `POST /v1/tools/{group}/{action}` with `{"args": {...}}`. Pure.

use serde_json::{json, Map, Value};

use crate::args::{
    AdminCmd, Command, DeployCmd, EngineeringCmd, InfraCmd, ProjectCmd, RespondArgs,
};

/// One gateway call: `POST /v1/tools/{group}/{action}` with `{"args": args}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub group: &'static str,
    pub action: &'static str,
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

fn obj(pairs: Vec<(&str, Option<Value>)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    Value::Object(m)
}

impl Command {
    /// The group name of the command.
    pub fn group(&self) -> &'static str {
        match self {
            Command::Project(_) => "project",
            Command::Deploy(_) => "deploy",
            Command::Engineering(_) => "engineering",
            Command::Infra(_) => "infra",
            Command::Respond(_) => "respond",
            Command::Admin(_) => "admin",
        }
    }

    /// Maps the command to its gateway call.
    pub fn to_call(&self) -> Call {
        let s = |v: &str| Some(Value::String(v.to_owned()));
        let (action, args) = match self {
            Command::Project(ProjectCmd::List) => ("list", json!({})),
            Command::Project(ProjectCmd::Get { project_id }) => {
                ("get", obj(vec![("project_id", s(project_id))]))
            }
            Command::Project(ProjectCmd::Create { name, description }) => (
                "create",
                obj(vec![
                    ("name", s(name)),
                    ("description", description.as_deref().and_then(s)),
                ]),
            ),
            Command::Deploy(DeployCmd::Trigger { project_id, env }) => (
                "trigger",
                obj(vec![("project_id", s(project_id)), ("env", s(env))]),
            ),
            Command::Deploy(DeployCmd::Status { deploy_id }) => {
                ("status", obj(vec![("deploy_id", s(deploy_id))]))
            }
            Command::Deploy(DeployCmd::Logs { deploy_id, tail }) => (
                "logs",
                obj(vec![
                    ("deploy_id", s(deploy_id)),
                    ("tail", tail.map(Value::from)),
                ]),
            ),
            Command::Engineering(EngineeringCmd::Trigger { project_id, task }) => (
                "trigger",
                obj(vec![("project_id", s(project_id)), ("task", s(task))]),
            ),
            Command::Engineering(EngineeringCmd::Status { task_id }) => {
                ("status", obj(vec![("task_id", s(task_id))]))
            }
            Command::Infra(InfraCmd::Allocate {
                project_id,
                kind,
                size,
            }) => (
                "allocate",
                obj(vec![
                    ("project_id", s(project_id)),
                    ("kind", s(kind.as_str())),
                    ("size", size.and_then(|z| s(z.as_str()))),
                ]),
            ),
            Command::Infra(InfraCmd::List { project_id }) => (
                "list",
                obj(vec![("project_id", project_id.as_deref().and_then(s))]),
            ),
            Command::Respond(RespondArgs { message }) => {
                ("send", obj(vec![("message", s(message))]))
            }
            Command::Admin(AdminCmd::Workers) => ("workers", json!({})),
            Command::Admin(AdminCmd::Cancel { request_id }) => {
                ("cancel", obj(vec![("request_id", s(request_id))]))
            }
        };
        Call {
            group: self.group(),
            action,
            args,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{call, parse};

    #[test]
    fn project_commands() {
        let c = call(&["project", "list"]);
        assert_eq!((c.group, c.action, c.args), ("project", "list", json!({})));
        let c = call(&["project", "get", "proj_42"]);
        assert_eq!(
            (c.group, c.action, c.args),
            ("project", "get", json!({"project_id": "proj_42"}))
        );
        let c = call(&["project", "create", "--name", "billing-api"]);
        assert_eq!(
            (c.group, c.action, c.args),
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
            (c.group, c.action, c.args),
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
            (c.action, c.args),
            ("status", json!({"deploy_id": "dep_7f3a"}))
        );
        let c = call(&["deploy", "logs", "dep_7f3a"]);
        assert_eq!(
            (c.action, c.args),
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
            (c.group, c.action, c.args),
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
            (c.action, c.args),
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
            (c.group, c.action, c.args),
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
        assert_eq!((c.action, c.args), ("list", json!({})));
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
            (c.group, c.action, c.args.clone()),
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
        assert_eq!((c.group, c.action, c.args), ("admin", "workers", json!({})));
        let c = call(&["admin", "cancel", "req_123"]);
        assert_eq!(
            (c.action, c.args),
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
}
