//! The in-container `orchestrator` CLI: what an agent runs inside its worker
//! container to act on the platform through the daemon's tool gateway
//! (`POST {ORCHESTRATOR_API_URL}/v1/tools/{group}/{action}`).
//!
//! Pure, unit-tested modules: [`auth`] (the `ORCHESTRATOR_ALLOWED_TOOLS`
//! check), [`args`] (command-line parsing), [`call`] (command to gateway
//! call), [`outcome`] (gateway response to exit code and messages) and
//! [`mod@format`] (human-readable output). The I/O is in [`client`] (the one
//! blocking HTTP call) and [`mod@run`] (environment, stdout and stderr);
//! `src/main.rs` only hands `argv` to [`run()`].
//!
//! Synchronous and tokio-free for a fast start. The command syntax and exit
//! codes are the ones documented to the agent in `skills/*.md`; keep the two
//! in sync.

pub mod args;
pub mod auth;
pub mod call;
pub mod client;
pub mod format;
pub mod outcome;
pub mod run;

pub use args::{
    parse_args, AdminCmd, Cli, Command, DeployCmd, EngineeringCmd, InfraCmd, Kind, ProjectCmd,
    RespondArgs, Size,
};
pub use auth::{
    allowed_tools, is_allowed, is_known_group, permission_denied_message, prescan, Prescan,
};
pub use call::{call_url, Call};
pub use format::{format_human, format_list, format_record};
pub use outcome::{classify_response, Outcome};
pub use run::run;

/// Environment variable holding the comma-separated list of allowed groups.
pub const ALLOWED_TOOLS_ENV: &str = "ORCHESTRATOR_ALLOWED_TOOLS";
/// Base URL of the daemon's tool gateway, e.g. `http://172.30.0.1:9091`.
pub const API_URL_ENV: &str = "ORCHESTRATOR_API_URL";
/// Bearer token for the gateway.
pub const API_KEY_ENV: &str = "ORCHESTRATOR_API_KEY";
/// Optional user id, sent as `X-Orchestrator-User`.
pub const USER_ID_ENV: &str = "ORCHESTRATOR_USER_ID";
/// Optional request id, sent as `X-Orchestrator-Request`.
pub const REQUEST_ID_ENV: &str = "ORCHESTRATOR_REQUEST_ID";

/// Every command group the CLI knows.
pub const GROUPS: &[&str] = &[
    "project",
    "deploy",
    "engineering",
    "infra",
    "respond",
    "admin",
];

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

    use clap::Parser;

    use crate::{Call, Cli};

    /// Parses `args` (without `argv[0]`) with every group visible.
    pub fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("orchestrator").chain(args.iter().copied()))
    }

    /// The gateway call of a command line that must parse.
    pub fn call(args: &[&str]) -> Call {
        parse(args).expect("parses").command.to_call()
    }
}
