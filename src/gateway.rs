//! The gateway: the HTTP API the in-container `orchestrator` CLI calls.
//!
//! Each worker gets its own key, valid only while the worker lives (its
//! record sits in Redis under the key's hash, so it survives a daemon
//! restart and is shared by every instance). The gateway checks the key,
//! enforces the worker's `allowed_tools` again (a worker that bypasses the
//! CLI gains nothing), turns `respond` into a `respond` event, and forwards
//! the other groups to the upstream orchestrator backend. Workers never see
//! Redis credentials.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawPathParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::bus::Bus;
use crate::config::Tool;
use crate::protocol::EventType;
use crate::redact::Redactor;
use crate::sink::Sink;

/// What a worker key stands for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    /// The request the worker serves.
    pub request_id: String,
    /// Allowed tool groups.
    pub tools: Vec<String>,
    /// End user, if any.
    pub user_id: Option<String>,
    /// Session, if any.
    pub session_id: Option<String>,
    /// Preset id, for redaction of its secrets.
    pub preset: Option<String>,
}

impl KeyRecord {
    /// The record of a worker running `spec` for `user_id`.
    pub fn for_spec(spec: &crate::spec::WorkerSpec, user_id: Option<String>) -> KeyRecord {
        KeyRecord {
            request_id: spec.request_id.clone(),
            tools: spec
                .config
                .allowed_tools
                .iter()
                .map(|t| t.to_string())
                .collect(),
            user_id,
            session_id: spec.session_id.clone(),
            preset: spec.preset_id.clone(),
        }
    }
}

/// A fresh random worker key.
pub fn new_key() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    format!("wsk_{}", hex::encode(b))
}

/// The hash under which a key's record is stored (the key itself never is).
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Registers `key` for a worker until `ttl`.
pub async fn register_key(
    bus: &Bus,
    key: &str,
    record: &KeyRecord,
    ttl: Duration,
) -> Result<(), crate::bus::BusError> {
    let json = serde_json::to_string(record).expect("key records serialize");
    bus.put_worker_key(&key_hash(key), &json, ttl.as_secs() + 60)
        .await
}

/// Revokes `key`.
pub async fn revoke_key(bus: &Bus, key: &str) -> Result<(), crate::bus::BusError> {
    bus.delete_worker_key(&key_hash(key)).await
}

/// Builds the redactor for a preset's secrets.
pub type RedactorFor = Box<dyn Fn(Option<&str>) -> Redactor + Send + Sync>;

/// Shared state of the gateway.
pub struct Gateway {
    /// Redis, for key records.
    pub bus: Bus,
    /// Where `respond` events go.
    pub sink: Sink,
    /// Upstream backend base URL, if configured.
    pub upstream: Option<String>,
    /// Secrets of a preset, to mask in `respond` messages.
    pub redactor_for: RedactorFor,
}

/// The gateway's router.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/tools/{group}/{action}", post(call))
        .with_state(gw)
}

/// Whether `s` may name a tool group or an action: `^[a-z][a-z0-9_-]{0,63}$`,
/// checked on the raw (still percent-encoded) path segment, so no `%`, `.`,
/// `/`, `?` or `#` ever reaches the upstream URL.
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

/// The upstream URL of a call: the configured base, then only the group's
/// own name and an action that passed [`is_valid_name`].
pub fn upstream_url(base: &str, group: Tool, action: &str) -> Option<String> {
    is_valid_name(action).then(|| {
        format!(
            "{}/v1/tools/{}/{action}",
            base.trim_end_matches('/'),
            group.as_str()
        )
    })
}

fn reply(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"ok": false, "error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}

#[derive(Deserialize)]
struct CallBody {
    #[serde(default)]
    args: Value,
}

async fn call(
    State(gw): State<Arc<Gateway>>,
    params: RawPathParams,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // The raw segments: a decoded `%2e%2e%2f` or `%3f` must never become
    // part of the upstream path or its query.
    let raw = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    };
    let (group, action) = (raw("group"), raw("action"));
    if !is_valid_name(&group) || !is_valid_name(&action) {
        return reply(
            StatusCode::BAD_REQUEST,
            "invalid_action",
            "group and action must each match ^[a-z][a-z0-9_-]{0,63}$",
        );
    }
    let Some(key) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return reply(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer key",
        );
    };
    let record = match gw.bus.get_worker_key(&key_hash(key)).await {
        Ok(Some(r)) => match serde_json::from_str::<KeyRecord>(&r) {
            Ok(r) => r,
            Err(_) => return reply(StatusCode::UNAUTHORIZED, "unauthorized", "invalid key"),
        },
        Ok(None) => {
            return reply(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid or expired key (keys end with their worker)",
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "gateway cannot reach Redis");
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "gateway storage unavailable",
            );
        }
    };
    let Some(tool) = Tool::parse(&group) else {
        return reply(
            StatusCode::NOT_FOUND,
            "unknown_group",
            format!("unknown tool group {group:?}"),
        );
    };
    if !record.tools.iter().any(|t| t == &group) {
        tracing::warn!(request_id = %record.request_id, group, "gateway refused a tool outside allowed_tools");
        return reply(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("Permission denied: {group} is not in ORCHESTRATOR_ALLOWED_TOOLS"),
        );
    }
    let args = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice::<CallBody>(&body) {
            Ok(b) => b.args,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("body must be {{\"args\": ...}}: {e}"),
                )
            }
        }
    };
    if group == "respond" {
        let Some(message) = args.get("message").and_then(Value::as_str) else {
            return reply(
                StatusCode::BAD_REQUEST,
                "invalid_args",
                "respond needs args.message",
            );
        };
        if message.len() > 64 * 1024 {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "message over 64 KiB",
            );
        }
        // The preset's secrets and the worker's own key never reach an event.
        let mut redactor = (gw.redactor_for)(record.preset.as_deref());
        redactor.add(key);
        let message = redactor.redact(message);
        gw.sink
            .event(
                &record.request_id,
                EventType::Respond,
                json!({"message": message, "user_id": record.user_id, "session_id": record.session_id}),
            )
            .await;
        return (
            StatusCode::OK,
            Json(json!({"ok": true, "data": {"delivered": true}})),
        )
            .into_response();
    }
    let Some(upstream) = gw.upstream.clone() else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_upstream",
            "no orchestrator backend is configured (setting upstream_url)",
        );
    };
    let Some(url) = upstream_url(&upstream, tool, &action) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "invalid_action",
            "invalid action name",
        );
    };
    // Identity travels only here, set by the gateway from the key's record
    // (a worker's args cannot override it: they stay inside `args`).
    let payload = json!({
        "args": args,
        "request_id": record.request_id,
        "user_id": record.user_id,
        "session_id": record.session_id,
    });
    let forwarded = tokio::task::spawn_blocking(move || forward(&url, &payload)).await;
    match forwarded {
        Ok(Ok((status, body))) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, Json(body)).into_response()
        }
        Ok(Err(e)) => reply(StatusCode::BAD_GATEWAY, "upstream_unavailable", e),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "forwarding task failed",
        ),
    }
}

fn forward(url: &str, payload: &Value) -> Result<(u16, Value), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(url)
        .send_json(payload)
        .map_err(|e| format!("upstream unreachable: {e}"))?;
    let status = resp.status().as_u16();
    let body: Value = resp
        .body_mut()
        .read_json()
        .unwrap_or_else(|_| json!({"ok": status < 400, "data": null}));
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_pass_as_group_or_action() {
        for ok in ["list", "trigger", "get-status", "list_all", "a", "v2"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            "%2e%2e%2fdeploy%2ftrigger",
            "../deploy/trigger",
            "list%3fuser_id=victim%26request_id=other",
            "list?user_id=victim",
            "list#x",
            "List",
            "1list",
            "-list",
            "li st",
            "list\n",
            &"a".repeat(65),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_upstream_url_is_built_from_validated_parts_only() {
        assert_eq!(
            upstream_url("http://backend:8080/", Tool::Project, "list").as_deref(),
            Some("http://backend:8080/v1/tools/project/list")
        );
        assert_eq!(
            upstream_url("http://backend:8080", Tool::Project, "../deploy/trigger"),
            None
        );
        assert_eq!(
            upstream_url("http://b", Tool::Project, "list?user_id=victim"),
            None
        );
    }
}
