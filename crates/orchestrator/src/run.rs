//! The process around the pure modules: reads the `ORCHESTRATOR_*`
//! environment and the tool catalog file, prints to stdout and stderr, and
//! returns the exit code.
//!
//! Order of checks: the tool catalog file (`ORCHESTRATOR_TOOLS_FILE`,
//! default [`DEFAULT_TOOLS_FILE`]) is read first (missing, unreadable or
//! invalid: exit 69); then the group and action words are checked against
//! `ORCHESTRATOR_ALLOWED_TOOLS` ([`crate::auth::check`], exit 77) before
//! their arguments are looked at; then the full command line is parsed
//! against the usable catalog (exit 2); then the gateway configuration is
//! read (exit 69), and only then is the gateway called:
//! `POST {ORCHESTRATOR_API_URL}/v1/tools/{group}/{action}` with
//! `{"args": {...}}`.

use std::ffi::OsString;

use clap::error::ErrorKind;

use crate::args::parse_args;
use crate::auth::{allowed_tools, check, prescan, usable_catalog};
use crate::catalog::Catalog;
use crate::client::{perform, Gateway};
use crate::exit;
use crate::format::format_human;
use crate::outcome::Outcome;
use crate::{
    ALLOWED_TOOLS_ENV, API_KEY_ENV, API_URL_ENV, DEFAULT_TOOLS_FILE, REQUEST_ID_ENV,
    TOOLS_FILE_ENV, USER_ID_ENV,
};

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The catalog of a worker whose daemon delivers none (a daemon before tool
/// catalogs, #17): the gateway's own group `respond` alone, whose meaning
/// (a `respond` event) the gateway keeps itself, so an older daemon's
/// worker on an image with this CLI can still answer its user.
const WITHOUT_A_CATALOG: &str = r#"{"groups": [{"name": "respond",
  "description": "Send a message to the user who asked for the current task.",
  "default_action": "send",
  "actions": {"send": {"help": "Send a message to the user.",
    "args": [{"name": "message", "positional": true, "required": true,
              "help": "The whole message, quoted as one argument."}]}}}]}"#;

/// Reads and parses the tool catalog file; the error is one line naming the
/// file. With no file at the default path and no `ORCHESTRATOR_TOOLS_FILE`,
/// `respond` still works ([`WITHOUT_A_CATALOG`]).
fn load_catalog(group: Option<&str>) -> Result<Catalog, String> {
    let given = env_nonempty(TOOLS_FILE_ENV);
    let path = given
        .clone()
        .unwrap_or_else(|| DEFAULT_TOOLS_FILE.to_owned());
    let text = match std::fs::read_to_string(&path) {
        Err(e)
            if given.is_none()
                && e.kind() == std::io::ErrorKind::NotFound
                && group == Some("respond") =>
        {
            WITHOUT_A_CATALOG.to_string()
        }
        r => r.map_err(|e| {
            format!(
                "orchestrator not configured: cannot read the tool catalog {path} \
                 ({TOOLS_FILE_ENV}): {e}"
            )
        })?,
    };
    Catalog::parse(&text)
        .map_err(|e| format!("orchestrator not configured: invalid tool catalog {path}: {e}"))
}

fn not_configured(json: bool, name: &str) -> i32 {
    emit_failure(
        json,
        &Outcome::not_configured(format!(
            "backend unavailable: {name} is not set (orchestrator gateway not configured)"
        )),
    )
}

/// Runs the CLI on `args` (including `argv[0]`) and returns the exit code.
pub fn run(args: Vec<OsString>) -> i32 {
    let rest: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let scan = prescan(&rest);

    // 1. The tool catalog.
    let catalog = match load_catalog(scan.group.as_deref()) {
        Ok(c) => c,
        Err(msg) => return emit_failure(scan.json, &Outcome::not_configured(msg)),
    };

    // 2. Authorization, before the arguments are parsed.
    let raw = std::env::var(ALLOWED_TOOLS_ENV).ok();
    let allowed = allowed_tools(raw.as_deref());
    if let Some(denial) = check(&catalog, &allowed, &scan) {
        return emit_failure(scan.json, &Outcome::denied(denial.message()));
    }

    // 3. Full parse against what may be used (unknown groups, actions and
    //    bad arguments are usage errors).
    let usable = usable_catalog(&catalog, &allowed);
    let inv = match parse_args(&usable, &args) {
        Ok(inv) => inv,
        Err(e) => return usage_error(scan.json, e),
    };
    let call = inv.call;

    // 4. Configuration.
    let Some(base) = env_nonempty(API_URL_ENV) else {
        return not_configured(inv.json, API_URL_ENV);
    };
    let Some(key) = env_nonempty(API_KEY_ENV) else {
        return not_configured(inv.json, API_KEY_ENV);
    };

    // 5. The call.
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
        return emit_failure(inv.json, &outcome);
    }
    if inv.json {
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
