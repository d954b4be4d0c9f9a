//! The in-container `orchestrator` CLI: what an agent runs inside its worker
//! container to act on the platform through the daemon's tool gateway
//! (`POST {ORCHESTRATOR_API_URL}/v1/tools/{group}/{action}`).
//!
//! Generic: nothing about the tools is compiled in. The command groups,
//! their actions and arguments come at run time from the tool catalog file
//! (`ORCHESTRATOR_TOOLS_FILE`, default [`DEFAULT_TOOLS_FILE`]) that the
//! daemon writes for the worker, in the format of the shipped
//! `skills/<group>.json` (see [`catalog`]); adding a group is adding a
//! declaration.
//!
//! Pure, unit-tested modules: [`catalog`] (parsing the catalog file),
//! [`auth`] (the `ORCHESTRATOR_ALLOWED_TOOLS` check), [`args`] (the clap
//! command built from the usable catalog, and parsing), [`call`] (matches to
//! gateway call), [`outcome`] (gateway response to exit code and messages)
//! and [`mod@format`] (human-readable output). The I/O is in [`client`] (the
//! one blocking HTTP call) and [`mod@run`] (environment, the catalog file,
//! stdout and stderr); `src/main.rs` only hands `argv` to [`run()`].
//!
//! Synchronous and tokio-free for a fast start. The command syntax and exit
//! codes are the ones documented to the agent in `skills/*.md`; keep the two
//! in sync.

pub mod args;
pub mod auth;
pub mod call;
pub mod catalog;
pub mod client;
pub mod format;
pub mod outcome;
pub mod run;

pub use args::{build_command, parse_args, Invocation};
pub use auth::{
    allowed_tools, check, is_allowed, permission_denied_message, prescan, usable_actions,
    usable_catalog, Allowed, Denial, Prescan,
};
pub use call::{args_from_matches, call_from_matches, call_url, Call};
pub use catalog::{Action, ArgSpec, ArgType, Catalog, CatalogError, Group};
pub use format::{format_human, format_list, format_record};
pub use outcome::{classify_response, Outcome};
pub use run::run;

/// Environment variable holding the comma-separated allowed tools
/// (`group` or `group:action` entries).
pub const ALLOWED_TOOLS_ENV: &str = "ORCHESTRATOR_ALLOWED_TOOLS";
/// Environment variable naming the tool catalog file.
pub const TOOLS_FILE_ENV: &str = "ORCHESTRATOR_TOOLS_FILE";
/// The tool catalog file used when `ORCHESTRATOR_TOOLS_FILE` is not set.
pub const DEFAULT_TOOLS_FILE: &str = "/home/worker/.orchestrator/tools.json";
/// Base URL of the daemon's tool gateway, e.g. `http://172.30.0.1:9091`.
pub const API_URL_ENV: &str = "ORCHESTRATOR_API_URL";
/// Bearer token for the gateway.
pub const API_KEY_ENV: &str = "ORCHESTRATOR_API_KEY";
/// Optional user id, sent as `X-Orchestrator-User`.
pub const USER_ID_ENV: &str = "ORCHESTRATOR_USER_ID";
/// Optional request id, sent as `X-Orchestrator-Request`.
pub const REQUEST_ID_ENV: &str = "ORCHESTRATOR_REQUEST_ID";

/// Exit codes (sysexits-style, as documented in `skills/*.md`).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The backend refused or failed the call.
    pub const FAILED: i32 = 1;
    /// Usage error.
    pub const USAGE: i32 = 2;
    /// Backend unavailable or not configured (EX_UNAVAILABLE).
    pub const UNAVAILABLE: i32 = 69;
    /// Permission denied (EX_NOPERM).
    pub const PERMISSION: i32 = 77;
}

#[cfg(test)]
mod test_support {
    //! Helpers shared by the unit tests.

    use serde_json::{json, Value};

    use crate::{parse_args, Call, Catalog, Invocation};

    /// The six shipped declarations, `skills/*.json`, as one catalog.
    pub fn shipped() -> Catalog {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../skills/");
        let groups: Vec<Value> = [
            "project",
            "deploy",
            "engineering",
            "infra",
            "respond",
            "admin",
        ]
        .iter()
        .map(|g| {
            let path = format!("{dir}{g}.json");
            let text = std::fs::read_to_string(&path).expect(&path);
            serde_json::from_str(&text).expect(&path)
        })
        .collect();
        Catalog::from_value(&json!({ "groups": groups })).expect("shipped catalog")
    }

    /// A catalog of groups that are not shipped: `review submit <target>`
    /// with string, integer, boolean and enum flags, and `chat` whose
    /// default action `say` sits beside `history`.
    pub fn review() -> Catalog {
        Catalog::from_value(&json!({"groups": [
            {"name": "review", "description": "Reviews.", "actions": {"submit": {
                "help": "Submit a review.",
                "args": [
                    {"name": "target", "positional": true, "required": true},
                    {"name": "lines"},
                    {"name": "note", "flag": "--note"},
                    {"name": "max_score", "type": "integer"},
                    {"name": "draft", "type": "boolean"},
                    {"name": "mode", "type": "enum", "values": ["quick", "deep"], "default": "quick"}
                ]}}},
            {"name": "chat", "default_action": "say", "actions": {
                "say": {"args": [
                    {"name": "text", "positional": true, "required": true},
                    {"name": "loud", "type": "boolean"}]},
                "history": {"args": [{"name": "limit", "type": "integer"}]}}}
        ]}))
        .expect("review catalog")
    }

    fn argv<'a>(args: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
        std::iter::once("orchestrator").chain(args.iter().copied())
    }

    /// Parses `args` (without `argv[0]`) with every shipped group usable.
    pub fn parse(args: &[&str]) -> Result<Invocation, clap::Error> {
        parse_args(&shipped(), argv(args))
    }

    /// The gateway call of a command line that must parse.
    pub fn call(args: &[&str]) -> Call {
        parse(args).expect("parses").call
    }

    /// The gateway call of a command line of [`review`] that must parse.
    pub fn review_call(args: &[&str]) -> Call {
        parse_args(&review(), argv(args)).expect("parses").call
    }
}
