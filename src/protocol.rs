//! Wire types of `PROTOCOL.md`: spawn requests, control commands, results
//! and events, plus the bounded parser that turns a raw stream entry into a
//! request.
//!
//! This module does no I/O. Parsing never panics: every malformed entry
//! becomes a [`RequestError`] that names the offending field and, when the
//! entry carried a usable `request_id`, keeps it so a result can be sent.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
pub fn parse_spawn_request(
    data: &[u8],
    limits: &InputLimits,
) -> Result<SpawnRequest, RequestError> {
    if data.len() > limits.max_entry_bytes {
        return Err(RequestError::new(
            None,
            "too_large",
            "data",
            format!(
                "entry is {} bytes, the limit is {}",
                data.len(),
                limits.max_entry_bytes
            ),
        ));
    }
    let text = std::str::from_utf8(data).map_err(|e| {
        RequestError::new(
            None,
            "invalid_utf8",
            "data",
            format!("entry is not UTF-8: {e}"),
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        RequestError::new(
            None,
            "invalid_json",
            "data",
            format!("entry is not JSON: {e}"),
        )
    })?;
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
            if !crate::config::is_valid_slug(&s) {
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
        .find(|k| !["user_id", "prompt", "session_id"].contains(&k.as_str()))
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

    Ok(SpawnRequest {
        request_id,
        worker_config_id,
        worker_config_override,
        task: Task {
            user_id,
            prompt,
            session_id,
        },
        dry_run,
    })
}

/// A command from `workers:control` (PROTOCOL.md section 9).
#[derive(Debug, Clone, PartialEq)]
pub enum ControlCommand {
    /// Stop the worker running this request.
    CancelRequest {
        /// The request to cancel.
        request_id: String,
    },
    /// End this session and its container.
    CancelSession {
        /// The session to end.
        session_id: String,
    },
}

/// Parses a control entry; the error says why it is not a known command.
pub fn parse_control(data: &[u8]) -> Result<ControlCommand, String> {
    let v: Value = serde_json::from_slice(data).map_err(|e| format!("not JSON: {e}"))?;
    let command = v.get("command").and_then(Value::as_str);
    let id = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| is_valid_request_id(s))
            .map(str::to_string)
    };
    match command {
        Some("cancel") => match (id("request_id"), id("session_id")) {
            (Some(request_id), None) => Ok(ControlCommand::CancelRequest { request_id }),
            (None, Some(session_id)) => Ok(ControlCommand::CancelSession { session_id }),
            _ => Err("cancel needs exactly one valid request_id or session_id".into()),
        },
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("missing string field \"command\"".into()),
    }
}

/// Terminal status of a request (PROTOCOL.md section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The agent exited 0.
    Succeeded,
    /// The agent exited non-zero or was OOM-killed.
    Failed,
    /// The task ran past `timeout_sec` (or its session's TTL) and was stopped.
    TimedOut,
    /// A control command stopped the worker.
    Cancelled,
    /// The request was invalid; `error` names the field.
    Rejected,
    /// Infrastructure failure (image missing, Docker unreachable, ...).
    Error,
}

impl Status {
    /// The wire name, also used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
            Status::Rejected => "rejected",
            Status::Error => "error",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `error` object of a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorInfo {
    /// Machine-readable reason.
    pub code: String,
    /// The offending field, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Human-readable explanation (names the field).
    pub message: String,
}

/// `worker` object of a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct WorkerInfo {
    /// Container name.
    pub container: String,
    /// Image the container ran.
    pub image: String,
    /// Preset id, if the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Hash of the merged config.
    pub config_hash: String,
    /// Daemon instance that ran it.
    pub instance: String,
}

/// `timings` object of a result; instants are RFC 3339.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Timings {
    /// When the daemon read the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// When the agent process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the result was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Entry id time to reception, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    /// Reception to agent start, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
    /// Agent start to finish, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<u64>,
}

/// One entry of `workers:result`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRecord {
    /// The request this result answers.
    pub request_id: String,
    /// Terminal status.
    pub status: Status,
    /// Agent exit code, when it ran.
    pub exit_code: Option<i64>,
    /// Whether the kernel OOM killer stopped the container.
    pub oom_killed: bool,
    /// Why it was rejected or errored.
    pub error: Option<ErrorInfo>,
    /// Tail of stdout (redacted).
    pub output: String,
    /// Whether `output` lost its beginning.
    pub output_truncated: bool,
    /// Session of the request, if any.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Which container ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerInfo>,
    /// Timing breakdown.
    #[serde(default)]
    pub timings: Timings,
    /// Dry run only: the merged config (secrets redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// Dry run only: the rendered files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileView>>,
}

impl ResultRecord {
    /// A result with no run behind it (rejected, error, dry run).
    pub fn bare(request_id: &str, status: Status, error: Option<ErrorInfo>) -> Self {
        ResultRecord {
            request_id: request_id.to_string(),
            status,
            exit_code: None,
            oom_killed: false,
            error,
            output: String::new(),
            output_truncated: false,
            session_id: None,
            worker: None,
            timings: Timings::default(),
            config: None,
            files: None,
        }
    }
}

/// A rendered file as shown to people (`presets show`, dry runs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileView {
    /// Absolute path inside the container.
    pub path: String,
    /// File content.
    pub content: String,
}

/// Kinds of `workers:events` entries (PROTOCOL.md section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The request was read and will be worked on.
    Accepted,
    /// The request was refused (a `rejected` result follows).
    Rejected,
    /// A derived image is being built.
    ImageBuilding,
    /// The container exists.
    ContainerCreated,
    /// The agent process started.
    Started,
    /// A line of agent output.
    Output,
    /// Output lines were dropped by the rate bound.
    OutputDropped,
    /// The agent exited.
    Finished,
    /// The task was stopped at its timeout.
    TimedOut,
    /// The task was cancelled.
    Cancelled,
    /// The container was removed.
    Removed,
    /// A session container was created.
    SessionCreated,
    /// A session ended at its TTL, idle timeout or cancel.
    SessionExpired,
    /// A message the agent sent with `orchestrator respond`.
    Respond,
    /// `respond` messages over the per-worker rate bound were refused.
    RespondDropped,
    /// A preset, skill or template file was rejected on reload.
    CatalogError,
}

/// One entry of `workers:events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// The request the event belongs to (empty for daemon-wide events).
    pub request_id: String,
    /// Per-request sequence number, starting at 1.
    pub seq: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When, RFC 3339.
    pub ts: String,
    /// Event-specific payload.
    pub data: Value,
}

/// Current time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<SpawnRequest, RequestError> {
        parse_spawn_request(v.to_string().as_bytes(), &InputLimits::default())
    }

    #[test]
    fn a_full_request_parses() {
        let r = parse(json!({
            "request_id": "req_123",
            "worker_config_id": "po_claude_v1",
            "worker_config_override": {"limits": {"timeout_sec": 300}},
            "task": {"user_id": "user_1", "prompt": "Check project status", "session_id": "sess_abc"},
            "dry_run": true
        }))
        .unwrap();
        assert_eq!(r.request_id, "req_123");
        assert_eq!(r.task.session_id.as_deref(), Some("sess_abc"));
        assert!(r.dry_run);
    }

    #[test]
    fn invalid_json_is_rejected_without_a_request_id() {
        let e = parse_spawn_request(b"{not json", &InputLimits::default()).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str(), e.request_id),
            ("invalid_json", "data", None)
        );
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let e =
            parse_spawn_request(b"{\"request_id\":\"\xff\"}", &InputLimits::default()).unwrap_err();
        assert_eq!(e.code, "invalid_utf8");
    }

    #[test]
    fn a_missing_request_id_is_named() {
        let e = parse(json!({"task": {"prompt": "x"}})).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), ("missing_field", "request_id"));
    }

    #[test]
    fn request_ids_with_slashes_or_too_long_are_refused() {
        for bad in ["../etc", "a/b", "", "x".repeat(129).as_str(), "a b", ".."] {
            let e = parse(json!({"request_id": bad, "task": {"prompt": "x"}})).unwrap_err();
            assert_eq!(e.field, "request_id", "{bad:?}");
        }
    }

    #[test]
    fn errors_after_the_request_id_keep_it() {
        let e = parse(json!({"request_id": "r1", "task": {}})).unwrap_err();
        assert_eq!(e.request_id.as_deref(), Some("r1"));
        assert_eq!(e.field, "task.prompt");
    }

    #[test]
    fn an_empty_prompt_is_refused() {
        let e = parse(json!({"request_id": "r1", "task": {"prompt": "  "}})).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), ("invalid_field", "task.prompt"));
    }

    #[test]
    fn a_prompt_over_the_limit_is_refused() {
        let limits = InputLimits {
            max_prompt_bytes: 10,
            ..Default::default()
        };
        let body = json!({"request_id": "r1", "task": {"prompt": "x".repeat(11)}}).to_string();
        let e = parse_spawn_request(body.as_bytes(), &limits).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), ("too_large", "task.prompt"));
    }

    #[test]
    fn an_entry_over_the_size_limit_is_refused_before_parsing() {
        let limits = InputLimits {
            max_entry_bytes: 8,
            ..Default::default()
        };
        let e = parse_spawn_request(b"{\"request_id\": \"r1\"}", &limits).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), ("too_large", "data"));
    }

    #[test]
    fn a_deeply_nested_override_is_refused() {
        let mut v = json!(1);
        for _ in 0..20 {
            v = json!({ "a": v });
        }
        let e = parse(
            json!({"request_id": "r1", "worker_config_override": v, "task": {"prompt": "x"}}),
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            ("too_deep", "worker_config_override")
        );
    }

    #[test]
    fn json_nested_past_serde_limits_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        let e = parse_spawn_request(deep.as_bytes(), &InputLimits::default()).unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn wrong_types_are_named() {
        let cases = [
            (
                json!({"request_id": 5, "task": {"prompt": "x"}}),
                "request_id",
            ),
            (json!({"request_id": "r", "task": "x"}), "task"),
            (
                json!({"request_id": "r", "task": {"prompt": 1}}),
                "task.prompt",
            ),
            (
                json!({"request_id": "r", "task": {"prompt": "x"}, "dry_run": "yes"}),
                "dry_run",
            ),
            (
                json!({"request_id": "r", "worker_config_id": 3, "task": {"prompt": "x"}}),
                "worker_config_id",
            ),
            (
                json!({"request_id": "r", "worker_config_override": [1], "task": {"prompt": "x"}}),
                "worker_config_override",
            ),
            (
                json!({"request_id": "r", "task": {"prompt": "x", "session_id": "../x"}}),
                "task.session_id",
            ),
            (
                json!({"request_id": "r", "task": {"prompt": "x", "bogus": 1}}),
                "task.bogus",
            ),
            (
                json!({"request_id": "r", "task": {"prompt": "x"}, "bogus": 1}),
                "bogus",
            ),
        ];
        for (v, field) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v}");
        }
    }

    #[test]
    fn a_prompt_with_nul_is_refused() {
        let e = parse(json!({"request_id": "r", "task": {"prompt": "a\u{0}b"}})).unwrap_err();
        assert_eq!(e.field, "task.prompt");
    }

    #[test]
    fn control_commands_parse_and_unknown_ones_are_explained() {
        assert_eq!(
            parse_control(br#"{"command":"cancel","request_id":"r1"}"#),
            Ok(ControlCommand::CancelRequest {
                request_id: "r1".into()
            })
        );
        assert_eq!(
            parse_control(br#"{"command":"cancel","session_id":"s1"}"#),
            Ok(ControlCommand::CancelSession {
                session_id: "s1".into()
            })
        );
        assert!(parse_control(br#"{"command":"nuke"}"#)
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse_control(b"nope").is_err());
        assert!(parse_control(br#"{"command":"cancel"}"#).is_err());
    }

    #[test]
    fn results_serialize_with_the_wire_status_names() {
        let r = ResultRecord::bare("r1", Status::TimedOut, None);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "timed_out");
        assert_eq!(v["error"], Value::Null);
    }
}
