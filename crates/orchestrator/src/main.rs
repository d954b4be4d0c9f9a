//! `orchestrator`: the CLI an agent uses inside its worker container to act on
//! the platform (see `skills/*.md` for the documented syntax and exit codes).
//!
//! Order of checks: the command group is checked against
//! `ORCHESTRATOR_ALLOWED_TOOLS` first (exit 77), then the full command line is
//! parsed (exit 2), then the gateway configuration is read (exit 69), and only
//! then is the gateway called: `POST {ORCHESTRATOR_API_URL}/v1/tools/{group}/{action}`
//! with `{"args": {...}}`. Synchronous and tokio-free for a fast start.

use std::ffi::OsString;
use std::time::Duration;

use clap::error::ErrorKind;
use orchestrator::{
    self as oc, call_url, exit, format_human, is_allowed, is_known_group, parse_args, prescan,
    Call, Outcome,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const GLOBAL_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    std::process::exit(run(args));
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn run(args: Vec<OsString>) -> i32 {
    // 1. Authorization, before anything else.
    let rest: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let scan = prescan(&rest);
    let raw = std::env::var(oc::ALLOWED_TOOLS_ENV).ok();
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
    let Some(base) = env_nonempty(oc::API_URL_ENV) else {
        return emit_failure(
            cli.json,
            &Outcome::failure(
                exit::UNAVAILABLE,
                "not_configured",
                format!(
                    "backend unavailable: {} is not set (orchestrator gateway not configured)",
                    oc::API_URL_ENV
                ),
            ),
        );
    };
    let Some(key) = env_nonempty(oc::API_KEY_ENV) else {
        return emit_failure(
            cli.json,
            &Outcome::failure(
                exit::UNAVAILABLE,
                "not_configured",
                format!(
                    "backend unavailable: {} is not set (orchestrator gateway not configured)",
                    oc::API_KEY_ENV
                ),
            ),
        );
    };

    // 4. The call.
    let outcome = perform(&base, &key, &call);
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

fn perform(base: &str, key: &str, call: &Call) -> Outcome {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(GLOBAL_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(concat!("orchestrator-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();

    let url = call_url(base, call);
    let mut req = agent
        .post(&url)
        .header("Authorization", format!("Bearer {key}"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json");
    if let Some(user) = env_nonempty(oc::USER_ID_ENV) {
        req = req.header("X-Orchestrator-User", user);
    }
    if let Some(request) = env_nonempty(oc::REQUEST_ID_ENV) {
        req = req.header("X-Orchestrator-Request", request);
    }

    let body = call.body().to_string();
    let mut resp = match req.send(body.as_bytes()) {
        Ok(r) => r,
        Err(e) => return transport_failure(base, e),
    };
    let status = resp.status().as_u16();
    let text = match resp.body_mut().read_to_string() {
        Ok(t) => t,
        Err(e) => return transport_failure(base, e),
    };
    oc::classify_response(call.group, status, &text)
}

fn transport_failure(base: &str, e: ureq::Error) -> Outcome {
    let what = match &e {
        ureq::Error::Timeout(_) => "timed out".to_owned(),
        ureq::Error::ConnectionFailed => "connection failed".to_owned(),
        ureq::Error::HostNotFound => "host not found".to_owned(),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
            format!("invalid {} or request: {e}", oc::API_URL_ENV)
        }
        other => other.to_string(),
    };
    Outcome::unavailable(format!(
        "backend unavailable: cannot reach the orchestrator gateway at {base}: {what}"
    ))
}
