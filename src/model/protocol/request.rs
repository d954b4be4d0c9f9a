//! Spawn requests (PROTOCOL.md section 2): their types, the input limits
//! and the bounded parser that turns a raw `workers:spawn` entry into a
//! [`SpawnRequest`] or a [`RequestError`] naming the offending field.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::scan::{scan_entry, PARSER_MAX_DEPTH};

/// Input limits applied to every entry before and while it is parsed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InputLimits {
    /// Largest accepted `data` field, in bytes.
    pub max_entry_bytes: usize,
    /// Largest accepted `task.prompt`, in bytes.
    pub max_prompt_bytes: usize,
    /// Largest accepted `worker_config_override`, in bytes of its JSON.
    pub max_override_bytes: usize,
    /// Deepest accepted nesting of `worker_config_override`.
    pub max_override_depth: usize,
    /// Most `env` entries a merged config may have.
    pub max_env_entries: usize,
    /// Longest accepted id (`user_id`, `session_id`, preset id).
    pub max_name_len: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_entry_bytes: 1024 * 1024,
            max_prompt_bytes: 256 * 1024,
            max_override_bytes: 64 * 1024,
            max_override_depth: 8,
            max_env_entries: 64,
            max_name_len: 128,
        }
    }
}

/// A spawn request from `workers:spawn` (PROTOCOL.md section 2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpawnRequest {
    /// Idempotency key of the request.
    pub request_id: String,
    /// Preset to start from; `None` means the override is an inline config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_config_id: Option<String>,
    /// RFC 7396 merge patch over the preset (or the whole inline config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_config_override: Option<Value>,
    /// What the worker is asked to do.
    pub task: Task,
    /// Resolve and render only; run nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The task part of a spawn request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    /// The end user on whose behalf the worker acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The prompt handed to the agent (data, never a template).
    pub prompt: String,
    /// Requests sharing a session id run in one live container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The repository the worker starts from, over the preset's
    /// `workspace.repo` (`model::workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<crate::model::workspace::RepoSpec>,
}

/// Why an entry could not become a [`SpawnRequest`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    /// The request id, when the entry carried a valid one.
    pub request_id: Option<String>,
    /// Machine-readable reason, e.g. `invalid_json`, `too_large`.
    pub code: &'static str,
    /// The offending field (`data`, `request_id`, `task.prompt`, ...).
    pub field: String,
    /// Human-readable explanation.
    pub message: String,
    /// The parser could not read the entry as JSON at all (too large, not
    /// UTF-8, not JSON, nested too deep): it belongs in the dead letters,
    /// and `request_id` is what [`scan_entry`] found, if anything.
    pub unreadable: bool,
}

impl RequestError {
    fn new(
        request_id: Option<String>,
        code: &'static str,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        RequestError {
            request_id,
            code,
            field: field.to_string(),
            message: message.into(),
            unreadable: false,
        }
    }

    fn unreadable(code: &'static str, message: impl Into<String>) -> Self {
        RequestError {
            unreadable: true,
            ..RequestError::new(None, code, "data", message)
        }
    }
}

/// Whether `id` is a valid request id: 1-128 chars of `[A-Za-z0-9._:-]`.
pub fn is_valid_request_id(id: &str) -> bool {
    is_valid_token(id, 128)
}

/// Whether `s` is 1..=`max` chars of `[A-Za-z0-9._:-]` and not `.`/`..`.
pub fn is_valid_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Depth of a JSON value: scalars are 0, `{}`/`[]` are 1.
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(json_depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses the `data` field of a `workers:spawn` entry under `limits`.
///
/// Size is checked before anything is parsed; the request id is extracted
/// first so that every later error can still be answered with a result.
/// An entry the parser cannot read at all (too large, not UTF-8, not JSON,
/// nested past [`PARSER_MAX_DEPTH`]) is looked at once more by the bounded
/// [`scan_entry`]: when that finds a valid top-level `request_id`, the error
/// carries it and names the field responsible.
///
/// Duplicate keys: the last one counts (serde_json's map keeps the last
/// value), in this parser and in the scan alike.
pub fn parse_spawn_request(
    data: &[u8],
    limits: &InputLimits,
) -> Result<SpawnRequest, RequestError> {
    parse_readable(data, limits).map_err(|e| {
        if e.unreadable {
            explain_unreadable(data, limits, e)
        } else {
            e
        }
    })
}

fn parse_readable(data: &[u8], limits: &InputLimits) -> Result<SpawnRequest, RequestError> {
    if data.len() > limits.max_entry_bytes {
        return Err(RequestError::unreadable(
            "too_large",
            format!(
                "entry is {} bytes, the limit is {}",
                data.len(),
                limits.max_entry_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(data).map_err(|e| {
        RequestError::unreadable("invalid_utf8", format!("entry is not UTF-8: {e}"))
    })?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| RequestError::unreadable("invalid_json", format!("entry is not JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(RequestError::new(
            None,
            "invalid_type",
            "data",
            "entry must be a JSON object",
        ));
    };

    let request_id = match obj.get("request_id") {
        None => {
            return Err(RequestError::new(
                None,
                "missing_field",
                "request_id",
                "request_id is required",
            ))
        }
        Some(Value::String(s)) if is_valid_request_id(s) => s.clone(),
        Some(Value::String(_)) => {
            return Err(RequestError::new(
                None,
                "invalid_field",
                "request_id",
                "request_id must be 1-128 chars of [A-Za-z0-9._:-]",
            ))
        }
        Some(_) => {
            return Err(RequestError::new(
                None,
                "invalid_type",
                "request_id",
                "request_id must be a string",
            ))
        }
    };
    let rid = Some(request_id.clone());
    let err = |code, field: &str, msg: String| RequestError::new(rid.clone(), code, field, msg);

    const KNOWN: [&str; 5] = [
        "request_id",
        "worker_config_id",
        "worker_config_override",
        "task",
        "dry_run",
    ];
    if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(err(
            "unknown_field",
            unknown,
            format!("unknown field {unknown:?}"),
        ));
    }

    let worker_config_id = match obj.remove("worker_config_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            if !crate::model::config::is_valid_slug(&s) {
                return Err(err(
                    "invalid_field",
                    "worker_config_id",
                    "worker_config_id must match ^[a-z0-9][a-z0-9_.-]{0,63}$".into(),
                ));
            }
            Some(s)
        }
        Some(_) => {
            return Err(err(
                "invalid_type",
                "worker_config_id",
                "worker_config_id must be a string".into(),
            ))
        }
    };

    let worker_config_override = match obj.remove("worker_config_override") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => {
            let depth = json_depth(&v);
            if depth > limits.max_override_depth {
                return Err(err(
                    "too_deep",
                    "worker_config_override",
                    format!(
                        "override is nested {depth} levels deep, the limit is {}",
                        limits.max_override_depth
                    ),
                ));
            }
            let size = serde_json::to_vec(&v)
                .map(|b| b.len())
                .unwrap_or(usize::MAX);
            if size > limits.max_override_bytes {
                return Err(err(
                    "too_large",
                    "worker_config_override",
                    format!(
                        "override is {size} bytes, the limit is {}",
                        limits.max_override_bytes
                    ),
                ));
            }
            Some(v)
        }
        Some(_) => {
            return Err(err(
                "invalid_type",
                "worker_config_override",
                "worker_config_override must be a JSON object (a merge patch)".into(),
            ))
        }
    };

    let dry_run = match obj.remove("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(err(
                "invalid_type",
                "dry_run",
                "dry_run must be a boolean".into(),
            ))
        }
    };

    let task = match obj.remove("task") {
        Some(Value::Object(t)) => t,
        None => return Err(err("missing_field", "task", "task is required".into())),
        Some(_) => return Err(err("invalid_type", "task", "task must be an object".into())),
    };
    if let Some(unknown) = task
        .keys()
        .find(|k| !["user_id", "prompt", "session_id", "repo"].contains(&k.as_str()))
    {
        return Err(err(
            "unknown_field",
            &format!("task.{unknown}"),
            format!("unknown field task.{unknown}"),
        ));
    }
    let prompt = match task.get("prompt") {
        None | Some(Value::Null) => {
            return Err(err(
                "missing_field",
                "task.prompt",
                "task.prompt is required".into(),
            ))
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(err(
                "invalid_field",
                "task.prompt",
                "task.prompt must not be empty".into(),
            ))
        }
        Some(Value::String(s)) if s.len() > limits.max_prompt_bytes => {
            return Err(err(
                "too_large",
                "task.prompt",
                format!(
                    "task.prompt is {} bytes, the limit is {}",
                    s.len(),
                    limits.max_prompt_bytes
                ),
            ))
        }
        Some(Value::String(s)) if s.contains('\0') => {
            return Err(err(
                "invalid_field",
                "task.prompt",
                "task.prompt must not contain NUL characters".into(),
            ))
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(err(
                "invalid_type",
                "task.prompt",
                "task.prompt must be a string".into(),
            ))
        }
    };
    let token = |name: &str| -> Result<Option<String>, RequestError> {
        match task.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if is_valid_token(s, limits.max_name_len) => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(err(
                "invalid_field",
                &format!("task.{name}"),
                format!(
                    "task.{name} must be 1-{} chars of [A-Za-z0-9._:-]",
                    limits.max_name_len
                ),
            )),
            Some(_) => Err(err(
                "invalid_type",
                &format!("task.{name}"),
                format!("task.{name} must be a string"),
            )),
        }
    };
    let user_id = token("user_id")?;
    let session_id = token("session_id")?;
    let repo = match task.get("repo") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => {
            let mut spec = crate::model::workspace::RepoSpec::default();
            for (k, v) in o {
                let field = format!("task.repo.{k}");
                let slot = match k.as_str() {
                    "url" => &mut spec.url,
                    "ref" => &mut spec.reference,
                    "branch" => &mut spec.branch,
                    _ => {
                        return Err(err(
                            "unknown_field",
                            &field,
                            format!("unknown field {field}; task.repo takes url, ref and branch"),
                        ))
                    }
                };
                match v {
                    Value::Null => {}
                    Value::String(s) if !s.is_empty() && s.len() <= 2048 => *slot = Some(s.clone()),
                    Value::String(_) => {
                        return Err(err(
                            "invalid_field",
                            &field,
                            format!("{field} must be 1-2048 characters"),
                        ))
                    }
                    _ => {
                        return Err(err(
                            "invalid_type",
                            &field,
                            format!("{field} must be a string"),
                        ))
                    }
                }
            }
            Some(spec)
        }
        Some(_) => {
            return Err(err(
                "invalid_type",
                "task.repo",
                "task.repo must be an object {\"url\", \"ref\", \"branch\"}".into(),
            ))
        }
    };

    Ok(SpawnRequest {
        request_id,
        worker_config_id,
        worker_config_override,
        task: Task {
            user_id,
            prompt,
            session_id,
            repo,
        },
        dry_run,
    })
}

/// Re-explains an error of an entry the parser could not read, with the
/// request id and the field [`scan_entry`] found.
fn explain_unreadable(data: &[u8], limits: &InputLimits, e: RequestError) -> RequestError {
    let scan = scan_entry(data, limits);
    let Some(rid) = scan.request_id else {
        return e;
    };
    let (code, field, message) = match e.code {
        "too_large" => match (scan.oversized, scan.largest) {
            (Some((field, bytes, limit)), _) => {
                let message = format!(
                    "{field} is {bytes} bytes, the limit is {limit} ({})",
                    e.message
                );
                ("too_large", field, message)
            }
            (None, Some((field, bytes))) => (
                "too_large",
                "data".to_string(),
                format!(
                    "{}; its largest field is {field} ({bytes} bytes)",
                    e.message
                ),
            ),
            (None, None) => ("too_large", e.field, e.message),
        },
        "invalid_utf8" => match scan.not_utf8 {
            Some(field) => {
                let message = format!("{field} is not UTF-8 ({})", e.message);
                ("invalid_utf8", field, message)
            }
            None => ("invalid_utf8", e.field, e.message),
        },
        "invalid_json" => match scan.deepest {
            Some((field, depth, from_top)) if from_top > PARSER_MAX_DEPTH => {
                let message = if field == "worker_config_override" {
                    format!(
                        "override is nested {depth} levels deep, the limit is {}",
                        limits.max_override_depth
                    )
                } else {
                    format!(
                        "{field} is nested {depth} levels deep; an entry may nest at most {PARSER_MAX_DEPTH} levels"
                    )
                };
                ("too_deep", field, message)
            }
            _ => ("invalid_json", e.field, e.message),
        },
        _ => (e.code, e.field, e.message),
    };
    RequestError {
        request_id: Some(rid),
        code,
        field,
        message,
        unreadable: true,
    }
}
