//! The process around the pure modules: reads the `ORCHESTRATOR_*`
//! environment, prints to stdout and stderr, and returns the exit code.
//!
//! Order of checks: the command group is checked against
//! `ORCHESTRATOR_ALLOWED_TOOLS` first (exit 77), then the full command line is
//! parsed (exit 2), then the gateway configuration is read (exit 69), and only
//! then is the gateway called: `POST {ORCHESTRATOR_API_URL}/v1/tools/{group}/{action}`
//! with `{"args": {...}}`.

use std::ffi::OsString;

use clap::error::ErrorKind;

use crate::args::parse_args;
use crate::auth::{is_allowed, is_known_group, prescan};
use crate::client::{perform, Gateway};
use crate::exit;
use crate::format::format_human;
use crate::outcome::Outcome;
use crate::{ALLOWED_TOOLS_ENV, API_KEY_ENV, API_URL_ENV, REQUEST_ID_ENV, USER_ID_ENV};

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Runs the CLI on `args` (including `argv[0]`) and returns the exit code.
pub fn run(args: Vec<OsString>) -> i32 {
    // 1. Authorization, before anything else.
    let rest: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let scan = prescan(&rest);
    let raw = std::env::var(ALLOWED_TOOLS_ENV).ok();
    if let Some(group) = scan.group.as_deref() {
        if is_known_group(group) && !is_allowed(raw.as_deref(), group) {
            return emit_failure(scan.json, &Outcome::permission_denied(group));
        }
    }

    // 2. Full parse (unknown groups and bad arguments are usage errors).
    let cli = match parse_args(&args, raw.as_deref()) {
        Ok(cli) => cli,
        Err(e) => return usage_error(scan.json, e),
    };
    let call = cli.command.to_call();

    // 3. Configuration.
    let Some(base) = env_nonempty(API_URL_ENV) else {
        return emit_failure(
            cli.json,
            &Outcome::failure(
                exit::UNAVAILABLE,
                "not_configured",
                format!(
                    "backend unavailable: {} is not set (orchestrator gateway not configured)",
                    API_URL_ENV
                ),
            ),
        );
    };
    let Some(key) = env_nonempty(API_KEY_ENV) else {
        return emit_failure(
            cli.json,
            &Outcome::failure(
                exit::UNAVAILABLE,
                "not_configured",
                format!(
                    "backend unavailable: {} is not set (orchestrator gateway not configured)",
                    API_KEY_ENV
                ),
            ),
        );
    };

    // 4. The call.
    let user = env_nonempty(USER_ID_ENV);
    let request = env_nonempty(REQUEST_ID_ENV);
    let gateway = Gateway {
        base: &base,
        key: &key,
        user: user.as_deref(),
        request: request.as_deref(),
    };
    let outcome = perform(&gateway, &call);
    if outcome.exit_code != exit::OK {
        return emit_failure(cli.json, &outcome);
    }
    if cli.json {
        println!("{}", outcome.json);
    } else {
        let data = outcome.data().cloned().unwrap_or_default();
        let text = format_human(&call, &data);
        if !text.is_empty() {
            println!("{text}");
        }
    }
    exit::OK
}

fn usage_error(json: bool, e: clap::Error) -> i32 {
    let code = e.exit_code();
    let _ = e.print();
    if code != exit::OK && json && !matches!(e.kind(), ErrorKind::DisplayHelp) {
        let text = e.render().to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or("usage error")
            .trim_start_matches("error: ")
            .to_owned();
        let msg = if first.trim().is_empty() {
            "usage error".to_owned()
        } else {
            first
        };
        println!(
            "{}",
            serde_json::json!({"ok": false, "error": {"code": "usage_error", "message": msg}})
        );
    }
    code
}

fn emit_failure(json: bool, outcome: &Outcome) -> i32 {
    if json {
        println!("{}", outcome.json);
    }
    if let Some(msg) = &outcome.error {
        let prefixed = outcome.exit_code == exit::FAILED
            && !msg.starts_with("authentication failed")
            && !msg.starts_with("error");
        if prefixed {
            eprintln!("error: {msg}");
        } else {
            eprintln!("{msg}");
        }
    }
    outcome.exit_code
}
