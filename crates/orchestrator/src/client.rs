//! The one HTTP call to the gateway: blocking ureq with a connect and a
//! global timeout, no proxy, no redirects, HTTP statuses left to
//! [`classify_response`] and transport errors turned into exit 69.

use std::time::Duration;

use crate::call::{call_url, Call};
use crate::outcome::{classify_response, Outcome};
use crate::API_URL_ENV;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const GLOBAL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and as whom to call the gateway (from the `ORCHESTRATOR_*`
/// environment).
#[derive(Debug, Clone, Copy)]
pub struct Gateway<'a> {
    /// Base URL (`ORCHESTRATOR_API_URL`).
    pub base: &'a str,
    /// Bearer token (`ORCHESTRATOR_API_KEY`).
    pub key: &'a str,
    /// Sent as `X-Orchestrator-User` when present.
    pub user: Option<&'a str>,
    /// Sent as `X-Orchestrator-Request` when present.
    pub request: Option<&'a str>,
}

/// Performs `call` against the gateway and classifies the answer.
pub fn perform(gateway: &Gateway<'_>, call: &Call) -> Outcome {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(GLOBAL_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent(concat!("orchestrator-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();

    let base = gateway.base;
    let url = call_url(base, call);
    let mut req = agent
        .post(&url)
        .header("Authorization", format!("Bearer {}", gateway.key))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json");
    if let Some(user) = gateway.user {
        req = req.header("X-Orchestrator-User", user);
    }
    if let Some(request) = gateway.request {
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
    classify_response(&call.group, status, &text)
}

fn transport_failure(base: &str, e: ureq::Error) -> Outcome {
    let what = match &e {
        ureq::Error::Timeout(_) => "timed out".to_owned(),
        ureq::Error::ConnectionFailed => "connection failed".to_owned(),
        ureq::Error::HostNotFound => "host not found".to_owned(),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
            format!("invalid {API_URL_ENV} or request: {e}")
        }
        other => other.to_string(),
    };
    Outcome::unavailable(format!(
        "backend unavailable: cannot reach the orchestrator gateway at {base}: {what}"
    ))
}
