//! The classification of a gateway response (HTTP status and body) into an
//! [`Outcome`]: exit code, the JSON object for `--json` and the message for
//! stderr. Pure.

use serde_json::{json, Value};

use crate::auth::permission_denied_message;
use crate::exit;

/// The result of a call, ready to be printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Process exit code.
    pub exit_code: i32,
    /// The JSON object printed on stdout with `--json`
    /// (`{"ok":true,"data":...}` or `{"ok":false,"error":{...}}`).
    pub json: Value,
    /// Message for stderr (failures only).
    pub error: Option<String>,
}

impl Outcome {
    /// A failure not coming from a gateway response body.
    pub fn failure(exit_code: i32, code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Outcome {
            exit_code,
            json: json!({ "ok": false, "error": { "code": code, "message": message } }),
            error: Some(message),
        }
    }

    /// The local permission check failed for `group` as a whole.
    pub fn permission_denied(group: &str) -> Self {
        Self::denied(permission_denied_message(group))
    }

    /// The local permission check failed with `message` (exit 77).
    pub fn denied(message: impl Into<String>) -> Self {
        Self::failure(exit::PERMISSION, "permission_denied", message)
    }

    /// The CLI cannot work: a configuration problem (exit 69).
    pub fn not_configured(message: impl Into<String>) -> Self {
        Self::failure(exit::UNAVAILABLE, "not_configured", message)
    }

    /// The gateway could not be reached (or is not configured).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::failure(exit::UNAVAILABLE, "backend_unavailable", message)
    }

    /// The `data` of a successful outcome.
    pub fn data(&self) -> Option<&Value> {
        if self.exit_code == exit::OK {
            self.json.get("data")
        } else {
            None
        }
    }
}

/// `(code, message)` of a `{"ok":false,"error":{...}}` body, if present.
fn error_fields(body: &Value) -> Option<(String, String)> {
    let err = body.get("error")?;
    match err {
        Value::Object(m) => {
            let code = m
                .get("code")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned();
            let message = m
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| code.clone());
            Some((code, message))
        }
        Value::String(s) => Some(("error".to_owned(), s.clone())),
        _ => None,
    }
}

fn snippet(body: &str) -> String {
    let t = body.trim();
    let mut s: String = t.chars().take(200).collect();
    if t.chars().count() > 200 {
        s.push_str("...");
    }
    s
}

/// Turns an HTTP status and response body from the gateway into an outcome.
///
/// * 2xx with `{"ok":true,...}` → 0; 2xx with `{"ok":false,...}` → 1;
///   a 2xx body that is not such an object → 69 (broken backend).
/// * 401 → 1 (`authentication failed: ...`).
/// * 403 → 77 (the gateway's message, or the standard permission message).
/// * other 4xx → 1 with the gateway's message.
/// * 5xx and anything else → 69.
pub fn classify_response(group: &str, status: u16, body: &str) -> Outcome {
    let parsed: Option<Value> = serde_json::from_str::<Value>(body)
        .ok()
        .filter(Value::is_object);
    let fields = parsed.as_ref().and_then(error_fields);
    // Keep the gateway's own `{"ok":false,...}` object for --json when it sent one.
    let with_body = |mut o: Outcome| {
        if let (Some(p), Some(_)) = (&parsed, &fields) {
            if p.get("ok") == Some(&Value::Bool(false)) {
                o.json = p.clone();
            }
        }
        o
    };
    match status {
        200..=299 => match &parsed {
            Some(v) if v.get("ok") == Some(&Value::Bool(true)) => Outcome {
                exit_code: exit::OK,
                json: v.clone(),
                error: None,
            },
            Some(v) if v.get("ok") == Some(&Value::Bool(false)) => {
                let (code, message) = fields
                    .clone()
                    .unwrap_or(("error".into(), "call failed".into()));
                with_body(Outcome::failure(exit::FAILED, &code, message))
            }
            _ => Outcome::failure(
                exit::UNAVAILABLE,
                "invalid_response",
                format!(
                    "backend unavailable: invalid response from the gateway (HTTP {status}): {}",
                    snippet(body)
                ),
            ),
        },
        401 => {
            let detail = fields
                .as_ref()
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| "the gateway rejected ORCHESTRATOR_API_KEY".to_owned());
            with_body(Outcome::failure(
                exit::FAILED,
                "unauthenticated",
                format!("authentication failed: {detail}"),
            ))
        }
        403 => {
            let message = match &fields {
                Some((_, m)) if m.starts_with("Permission denied") => m.clone(),
                Some((_, m)) => format!("Permission denied: {m}"),
                None => permission_denied_message(group),
            };
            with_body(Outcome::failure(
                exit::PERMISSION,
                "permission_denied",
                message,
            ))
        }
        400..=499 => {
            let (code, message) = fields.clone().unwrap_or_else(|| {
                (
                    format!("http_{status}"),
                    format!("HTTP {status}: {}", snippet(body)),
                )
            });
            with_body(Outcome::failure(exit::FAILED, &code, message))
        }
        _ => {
            let detail = fields
                .as_ref()
                .map(|(_, m)| m.clone())
                .unwrap_or_else(|| snippet(body));
            let message = if detail.is_empty() {
                format!("backend unavailable: HTTP {status}")
            } else {
                format!("backend unavailable: HTTP {status}: {detail}")
            };
            with_body(Outcome::failure(
                exit::UNAVAILABLE,
                "backend_unavailable",
                message,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_success() {
        let o = classify_response("project", 200, r#"{"ok":true,"data":{"projects":[]}}"#);
        assert_eq!(o.exit_code, 0);
        assert_eq!(o.error, None);
        assert_eq!(o.data(), Some(&json!({"projects": []})));
    }

    #[test]
    fn classify_failures() {
        let nf =
            r#"{"ok":false,"error":{"code":"not_found","message":"project proj_404 not found"}}"#;
        let o = classify_response("project", 404, nf);
        assert_eq!(o.exit_code, 1);
        assert_eq!(o.error.as_deref(), Some("project proj_404 not found"));
        assert_eq!(o.json, serde_json::from_str::<Value>(nf).unwrap());
        assert_eq!(o.data(), None);

        let o = classify_response("project", 200, nf);
        assert_eq!(o.exit_code, 1);

        let o = classify_response(
            "project",
            401,
            r#"{"ok":false,"error":{"code":"unauthenticated","message":"bad key"}}"#,
        );
        assert_eq!(o.exit_code, 1);
        assert_eq!(o.error.as_deref(), Some("authentication failed: bad key"));
        let o = classify_response("project", 401, "");
        assert!(o.error.unwrap().starts_with("authentication failed: "));

        let o = classify_response("admin", 403, "");
        assert_eq!(o.exit_code, 77);
        assert_eq!(
            o.error.as_deref(),
            Some("Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS")
        );
        assert_eq!(o.json["error"]["code"], "permission_denied");
        let o = classify_response(
            "admin",
            403,
            r#"{"ok":false,"error":{"code":"forbidden","message":"Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS"}}"#,
        );
        assert_eq!(
            o.error.as_deref(),
            Some("Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS")
        );
        let o = classify_response(
            "admin",
            403,
            r#"{"ok":false,"error":{"code":"forbidden","message":"worker may not cancel"}}"#,
        );
        assert_eq!(
            o.error.as_deref(),
            Some("Permission denied: worker may not cancel")
        );

        let o = classify_response("deploy", 422, "not json");
        assert_eq!(o.exit_code, 1);
        assert_eq!(o.error.as_deref(), Some("HTTP 422: not json"));
        assert_eq!(o.json["ok"], false);

        for status in [500, 502, 503] {
            let o = classify_response("deploy", status, "upstream down");
            assert_eq!(o.exit_code, 69);
            assert_eq!(
                o.error.unwrap(),
                format!("backend unavailable: HTTP {status}: upstream down")
            );
        }
        let o = classify_response("deploy", 200, "<html>");
        assert_eq!(o.exit_code, 69);
        let o = classify_response("deploy", 302, "");
        assert_eq!(o.exit_code, 69);
    }

    #[test]
    fn local_failures() {
        let o = Outcome::permission_denied("infra");
        assert_eq!(o.exit_code, 77);
        assert_eq!(
            o.json,
            json!({"ok": false, "error": {"code": "permission_denied", "message": "Permission denied: infra is not in ORCHESTRATOR_ALLOWED_TOOLS"}})
        );
        let o = Outcome::unavailable("x");
        assert_eq!(o.exit_code, 69);
    }
}
