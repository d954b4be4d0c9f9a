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

/// Deepest nesting the parser reads (serde_json's recursion limit): an entry
/// with containers nested deeper, counting its own object, is not JSON to it.
pub const PARSER_MAX_DEPTH: usize = 127;

/// Longest `request_id` value the scan decodes (one more than valid, so a
/// longer one is known to be invalid).
const SCAN_ID_CAP: usize = 129;

/// Longest key the scan keeps for naming a field.
const SCAN_KEY_CAP: usize = 64;

/// What [`scan_entry`] found in an entry without parsing it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntryScan {
    /// The last top-level `request_id` (the parser keeps the last of
    /// duplicate keys too), when it is a string and a valid request id.
    pub request_id: Option<String>,
    /// Of the fields over their own limit (`task.prompt` over
    /// `max_prompt_bytes`, `worker_config_override` over
    /// `max_override_bytes`, any other over `max_entry_bytes`), the largest:
    /// field, bytes, limit.
    pub oversized: Option<(String, usize, usize)>,
    /// The largest field and its bytes (a string's decoded length, or the
    /// JSON text of any other value).
    pub largest: Option<(String, usize)>,
    /// The most deeply nested field, its depth as [`json_depth`] counts it
    /// and its nesting from the top of the entry.
    pub deepest: Option<(String, usize, usize)>,
    /// The field holding the entry's first byte that is not UTF-8.
    pub not_utf8: Option<String>,
    /// Whether the scan reached the entry's closing brace.
    pub complete: bool,
}

/// Looks through an entry the parser could not read for its `request_id`
/// and the field responsible, without parsing it.
///
/// One pass over the bytes with a constant amount of memory (a depth
/// counter, the id and one key, each capped): values are skipped, with
/// strings and their escapes read exactly as JSON reads them so that a
/// quoted `"request_id"` inside a prompt is never taken for the key. Only
/// the top-level object and `task` are walked member by member; below that
/// only brackets are counted (their kinds are not matched: a scan that
/// finds the id of a malformed entry is still right to refuse it). The
/// scan stops at the first thing that is not JSON; what it found up to
/// there stands.
pub fn scan_entry(data: &[u8], limits: &InputLimits) -> EntryScan {
    let bad_utf8_at = std::str::from_utf8(data).err().map(|e| e.valid_up_to());
    let mut scan = EntryScan::default();
    let mut id: Option<String> = None;
    let mut on_member = |m: Member| {
        let own_limit = match m.field.as_str() {
            "task.prompt" => limits.max_prompt_bytes,
            "worker_config_override" => limits.max_override_bytes,
            _ => limits.max_entry_bytes,
        };
        if m.bytes > own_limit && scan.oversized.as_ref().is_none_or(|o| m.bytes > o.1) {
            scan.oversized = Some((m.field.clone(), m.bytes, own_limit));
        }
        if scan.largest.as_ref().is_none_or(|l| m.bytes > l.1) {
            scan.largest = Some((m.field.clone(), m.bytes));
        }
        if m.depth > 0
            && scan
                .deepest
                .as_ref()
                .is_none_or(|d| m.level + m.depth > d.2)
        {
            scan.deepest = Some((m.field.clone(), m.depth, m.level + m.depth));
        }
        if scan.not_utf8.is_none() && bad_utf8_at.is_some_and(|at| (m.start..m.end).contains(&at)) {
            scan.not_utf8 = Some(m.field);
        }
    };
    let mut s = Scanner { b: data, i: 0 };
    s.ws();
    if s.peek() == Some(b'{') {
        scan.complete = s.object("", &mut on_member, &mut |v| id = v);
    }
    scan.request_id = id;
    scan
}

/// One member of the top-level object or of `task`, as the scan saw it.
struct Member {
    field: String,
    /// A string's decoded length, or the JSON text length of another value.
    bytes: usize,
    /// [`json_depth`] of the value.
    depth: usize,
    /// Nesting of the object holding the member (the entry's own is 1).
    level: usize,
    /// Byte range of the member, key included.
    start: usize,
    end: usize,
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Walks the object at `self.i` member by member (the top level when
    /// `prefix` is empty, else `task`). Returns whether it reached its end.
    fn object(
        &mut self,
        prefix: &str,
        on_member: &mut impl FnMut(Member),
        on_id: &mut impl FnMut(Option<String>),
    ) -> bool {
        let level = if prefix.is_empty() { 1 } else { 2 };
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return true;
        }
        loop {
            self.ws();
            let start = self.i;
            if self.peek() != Some(b'"') {
                return false;
            }
            let mut key = Vec::new();
            let Some(key_len) = self.string(Some(&mut key), SCAN_KEY_CAP) else {
                return false;
            };
            self.ws();
            if self.peek() != Some(b':') {
                return false;
            }
            self.i += 1;
            self.ws();
            let mut field = format!("{prefix}{}", String::from_utf8_lossy(&key));
            if key_len > SCAN_KEY_CAP {
                field.push_str("...");
            }
            let walk_task =
                level == 1 && key_len == 4 && key == b"task" && self.peek() == Some(b'{');
            let (bytes, depth) = if walk_task {
                if !self.object("task.", on_member, on_id) {
                    return false;
                }
                // `task`'s members were reported themselves.
                (0, 0)
            } else if level == 1 && key_len == 10 && key == b"request_id" {
                let mut v = Vec::new();
                let found = if self.peek() == Some(b'"') {
                    self.string(Some(&mut v), SCAN_ID_CAP).map(|n| (n, 0))
                } else {
                    self.value()
                };
                let Some(found) = found else {
                    return false;
                };
                // Every request_id key counts, valid or not: the last wins.
                on_id(
                    String::from_utf8(v)
                        .ok()
                        .filter(|s| s.len() == found.0 && is_valid_request_id(s)),
                );
                found
            } else {
                match self.value() {
                    Some(f) => f,
                    None => return false,
                }
            };
            if !walk_task {
                on_member(Member {
                    field,
                    bytes,
                    depth,
                    level,
                    start,
                    end: self.i,
                });
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// Skips the value at `self.i`; returns its size (a string's decoded
    /// length, else its text length) and its [`json_depth`], or `None` when
    /// it is not a value.
    fn value(&mut self) -> Option<(usize, usize)> {
        let start = self.i;
        match self.peek()? {
            b'"' => self.string(None, 0).map(|n| (n, 0)),
            b'{' | b'[' => {
                let (mut cur, mut max) = (0usize, 0usize);
                loop {
                    match self.peek()? {
                        b'{' | b'[' => {
                            cur += 1;
                            max = max.max(cur);
                            self.i += 1;
                        }
                        b'}' | b']' => {
                            cur -= 1;
                            self.i += 1;
                            if cur == 0 {
                                return Some((self.i - start, max));
                            }
                        }
                        b'"' => {
                            self.string(None, 0)?;
                        }
                        _ => {
                            let rest = &self.b[self.i..];
                            self.i += rest
                                .iter()
                                .position(|&c| matches!(c, b'{' | b'[' | b'}' | b']' | b'"'))
                                .unwrap_or(rest.len());
                        }
                    }
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                (self.i > start).then_some((self.i - start, 0))
            }
        }
    }

    /// Skips the string at `self.i` (its opening quote), decoding escapes
    /// as JSON does; pushes up to `cap` decoded bytes to `out`. Returns the
    /// decoded length, or `None` when the string is malformed.
    fn string(&mut self, mut out: Option<&mut Vec<u8>>, cap: usize) -> Option<usize> {
        self.i += 1;
        let mut len = 0usize;
        let mut utf8 = [0u8; 4];
        // Once a character does not fit, nothing more is kept: `out` is
        // always a true prefix of the string.
        let push = |o: &mut Option<&mut Vec<u8>>, bytes: &[u8]| {
            if let Some(v) = o.as_deref_mut() {
                if v.len() + bytes.len() <= cap {
                    v.extend_from_slice(bytes);
                } else {
                    *o = None;
                }
            }
        };
        loop {
            if out.is_none() {
                // Nothing to keep: jump over the plain bytes at once.
                let rest = &self.b[self.i..];
                let n = rest
                    .iter()
                    .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                    .unwrap_or(rest.len());
                len += n;
                self.i += n;
            }
            let c = self.peek()?;
            self.i += 1;
            let decoded: &[u8] = match c {
                b'"' => return Some(len),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    let byte = match e {
                        b'"' | b'\\' | b'/' => e,
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            let ch = self.unicode_escape()?;
                            let n = ch.encode_utf8(&mut utf8).len();
                            len += n;
                            push(&mut out, &utf8[..n]);
                            continue;
                        }
                        _ => return None,
                    };
                    utf8[0] = byte;
                    &utf8[..1]
                }
                0..=0x1f => return None,
                _ => {
                    utf8[0] = c;
                    &utf8[..1]
                }
            };
            len += 1;
            push(&mut out, decoded);
        }
    }

    /// Reads the `XXXX` of a `\uXXXX` escape (and its low surrogate, if it
    /// is a high one). A lone surrogate, which the parser refuses, reads as
    /// U+FFFD: it never makes a valid id.
    fn unicode_escape(&mut self) -> Option<char> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) && self.b.get(self.i..self.i + 2) == Some(b"\\u") {
            let save = self.i;
            self.i += 2;
            let lo = self.hex4()?;
            if (0xDC00..0xE000).contains(&lo) {
                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                return Some(char::from_u32(c).unwrap_or('\u{FFFD}'));
            }
            self.i = save;
        }
        Some(char::from_u32(hi).unwrap_or('\u{FFFD}'))
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        if !h.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let v = u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
        self.i += 4;
        Some(v)
    }
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

/// An instant in the one format of every timestamp in results and events:
/// RFC 3339, UTC, milliseconds (`2024-05-01T10:00:00.123Z`).
pub fn rfc3339_millis(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Current time as [`rfc3339_millis`] writes it.
pub fn now_rfc3339() -> String {
    rfc3339_millis(chrono::Utc::now())
}

/// An RFC 3339 instant from elsewhere (Docker's carry nanoseconds, maybe an
/// offset) as [`rfc3339_millis`] writes it; `None` when it is not RFC 3339.
pub fn normalize_rfc3339(s: &str) -> Option<String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| rfc3339_millis(t.with_timezone(&chrono::Utc)))
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

    // ------------------------------------------- entries the parser cannot read

    const MIB: usize = 1024 * 1024;

    fn parse_raw(data: &[u8]) -> RequestError {
        parse_spawn_request(data, &InputLimits::default()).unwrap_err()
    }

    fn nested(n: usize) -> String {
        format!("{}1{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn the_parser_reads_exactly_parser_max_depth_levels() {
        // The scan's too_deep verdict relies on serde_json's recursion limit.
        assert!(serde_json::from_str::<Value>(&nested(PARSER_MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(PARSER_MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn an_id_after_a_4_mib_prompt_is_found_and_the_prompt_named() {
        let prompt = "x".repeat(4 * MIB);
        let data = format!(
            r#"{{"task": {{"prompt": "{prompt}"}}, "worker_config_id": "shell_v1", "request_id": "late-id"}}"#
        );
        let e = parse_raw(data.as_bytes());
        assert_eq!(e.request_id.as_deref(), Some("late-id"));
        assert_eq!((e.code, e.field.as_str()), ("too_large", "task.prompt"));
        assert!(e.unreadable);
        assert!(
            e.message.contains(&format!("{} bytes", 4 * MIB)) && e.message.contains("262144"),
            "{}",
            e.message
        );
        assert!(e.message.contains("1048576"), "names the entry limit: {e}");
    }

    #[test]
    fn an_oversized_override_or_other_field_is_named() {
        let blob = "y".repeat(2 * MIB);
        let data = json!({"request_id": "r1", "worker_config_override": {"env": {"A": blob}}, "task": {"prompt": "x"}}).to_string();
        let e = parse_raw(data.as_bytes());
        assert_eq!(
            (e.request_id.as_deref(), e.code, e.field.as_str()),
            (Some("r1"), "too_large", "worker_config_override")
        );
        assert!(e.message.contains("65536"), "{e}");
        let data = json!({"request_id": "r1", "blob": blob, "task": {"prompt": "x"}}).to_string();
        let e = parse_raw(data.as_bytes());
        assert_eq!((e.code, e.field.as_str()), ("too_large", "blob"));
    }

    #[test]
    fn an_entry_large_only_as_a_whole_is_named_data_with_its_largest_field() {
        // Each field is under its own limit; together they are over.
        let limits = InputLimits {
            max_entry_bytes: 1000,
            max_prompt_bytes: 600,
            ..Default::default()
        };
        let data = json!({"request_id": "r1", "task": {"prompt": "p".repeat(500), "user_id": "u".repeat(100)}, "dry_run": true, "worker_config_override": {"name": "n".repeat(450)}}).to_string();
        let e = parse_spawn_request(data.as_bytes(), &limits).unwrap_err();
        assert_eq!(
            (e.request_id.as_deref(), e.code, e.field.as_str()),
            (Some("r1"), "too_large", "data")
        );
        assert!(e.message.contains("task.prompt (500 bytes)"), "{e}");
    }

    #[test]
    fn quoted_keys_inside_strings_are_not_taken_for_the_id() {
        let data = format!(
            r#"{{"task": {{"prompt": "say \"request_id\": \"evil\" and \\\"request_id\\\":\"evil2\" {}\\"}}, "request_id": "good"}}"#,
            "z".repeat(2 * MIB)
        );
        // The prompt really ends where JSON says it does.
        let v: Value = serde_json::from_str(&data).unwrap();
        assert!(v["task"]["prompt"].as_str().unwrap().ends_with('\\'));
        let e = parse_raw(data.as_bytes());
        assert_eq!(e.request_id.as_deref(), Some("good"));
        assert_eq!(e.field, "task.prompt");
        // Only a top-level key counts: one inside an object does not.
        let data = format!(
            r#"{{"worker_config_override": {{"request_id": "inner"}}, "task": {{"prompt": "{}", "request_id": "task-level"}}}}"#,
            "z".repeat(2 * MIB)
        );
        assert_eq!(parse_raw(data.as_bytes()).request_id, None);
    }

    #[test]
    fn escaped_keys_and_ids_read_as_the_parser_reads_them() {
        let big = "q".repeat(2 * MIB);
        let data =
            format!(r#"{{"request\u005fid": "r\u002d1", "task": {{"pro\u006dpt": "{big}"}}}}"#);
        let e = parse_raw(data.as_bytes());
        assert_eq!(e.request_id.as_deref(), Some("r-1"));
        assert_eq!(e.field, "task.prompt");
        // The same entry under the limit: the parser agrees on both names.
        let small = data.replace(&big, "x");
        let r = parse_spawn_request(small.as_bytes(), &InputLimits::default()).unwrap();
        assert_eq!(r.request_id, "r-1");
    }

    #[test]
    fn a_10k_deep_override_is_too_deep_with_its_id() {
        let data = format!(
            r#"{{"request_id": "deep-1", "worker_config_override": {{"env": {}}}, "task": {{"prompt": "x"}}}}"#,
            nested(10_000)
        );
        let e = parse_raw(data.as_bytes());
        assert_eq!(
            (e.request_id.as_deref(), e.code, e.field.as_str()),
            (Some("deep-1"), "too_deep", "worker_config_override")
        );
        assert!(
            e.message.contains("10001 levels") && e.message.contains("limit is 8"),
            "{e}"
        );
        // Deep anywhere else: that field is named with the parser's limit.
        let data = format!(
            r#"{{"task": {{"prompt": "x", "extra": {}}}, "request_id": "deep-2"}}"#,
            nested(200)
        );
        let e = parse_raw(data.as_bytes());
        assert_eq!(
            (e.request_id.as_deref(), e.code, e.field.as_str()),
            (Some("deep-2"), "too_deep", "task.extra")
        );
        assert!(e.message.contains("127"), "{e}");
    }

    #[test]
    fn an_entry_nested_both_too_deep_and_too_large_is_refused_for_its_size() {
        let data = format!(
            r#"{{"request_id": "r1", "worker_config_override": {}}}"#,
            nested(MIB)
        );
        let e = parse_raw(data.as_bytes());
        assert_eq!(
            (e.request_id.as_deref(), e.code, e.field.as_str()),
            (Some("r1"), "too_large", "worker_config_override")
        );
    }

    #[test]
    fn non_utf8_bytes_are_located_and_never_make_an_id() {
        let mut data = br#"{"request_id": "r1", "task": {"prompt": "ab"#.to_vec();
        data.extend_from_slice(b"\xff\xfe");
        data.extend_from_slice(br#""}}"#);
        let e = parse_raw(&data);
        assert_eq!(
            (e.request_id.as_deref(), e.code, e.field.as_str()),
            (Some("r1"), "invalid_utf8", "task.prompt")
        );
        let e = parse_raw(b"{\"request_id\": \"r\xff1\", \"task\": {\"prompt\": \"x\"}}");
        assert_eq!((e.request_id, e.code), (None, "invalid_utf8"));
        // Not UTF-8 before the object even starts: nothing to read.
        assert_eq!(parse_raw(b"\xff{\"request_id\": \"r1\"}").request_id, None);
    }

    #[test]
    fn of_duplicate_request_ids_the_last_wins_in_parser_and_scan_alike() {
        let r = parse_spawn_request(
            br#"{"request_id": "first", "request_id": "last", "task": {"prompt": "x"}}"#,
            &InputLimits::default(),
        )
        .unwrap();
        assert_eq!(r.request_id, "last");
        let big = "x".repeat(2 * MIB);
        let data = format!(
            r#"{{"request_id": "first", "task": {{"prompt": "{big}"}}, "request_id": "last"}}"#
        );
        assert_eq!(
            parse_raw(data.as_bytes()).request_id.as_deref(),
            Some("last")
        );
        // A last one that is invalid wins too: no id, as the parser says.
        let data = format!(
            r#"{{"request_id": "first", "task": {{"prompt": "{big}"}}, "request_id": "../x"}}"#
        );
        assert_eq!(parse_raw(data.as_bytes()).request_id, None);
        let e =
            parse_raw(br#"{"request_id": "first", "request_id": "../x", "task": {"prompt": "x"}}"#);
        assert_eq!((e.request_id, e.field.as_str()), (None, "request_id"));
    }

    #[test]
    fn ids_the_parser_would_refuse_are_not_found() {
        let big = "x".repeat(2 * MIB);
        let long = "a".repeat(128);
        let ok = parse_raw(format!(r#"{{"request_id": "{long}", "blob": "{big}"}}"#).as_bytes());
        assert_eq!(ok.request_id.as_deref(), Some(long.as_str()));
        for bad in [
            json!("a".repeat(129)),
            json!("../etc"),
            json!(""),
            json!("a b"),
            json!(".."),
            json!("caf\u{e9}"),
            json!(5),
            json!(["r1"]),
            json!(null),
        ] {
            let data = format!(r#"{{"request_id": {bad}, "blob": "{big}"}}"#);
            assert_eq!(parse_raw(data.as_bytes()).request_id, None, "{bad}");
        }
        // An id of 127 chars and one 4-byte character is 131 bytes: the cap
        // must not keep a valid-looking prefix.
        let data = format!(
            r#"{{"request_id": "{}\ud83d\ude00ab", "blob": "{big}"}}"#,
            "a".repeat(126)
        );
        assert_eq!(parse_raw(data.as_bytes()).request_id, None);
    }

    #[test]
    fn entries_without_an_object_or_an_id_stay_without_one() {
        let big = "x".repeat(2 * MIB);
        for data in [
            format!(r#"["request_id", "r1", "{big}"]"#),
            format!(r#""{{\"request_id\": \"r1\"}}{big}""#),
            format!(r#"{{"task": {{"prompt": "{big}"}}}}"#),
            " ".repeat(2 * MIB),
            "[".repeat(100_000),
        ] {
            let e = parse_raw(data.as_bytes());
            assert_eq!(e.request_id, None, "{}", &data[..40]);
            assert!(e.unreadable);
        }
    }

    #[test]
    fn a_truncated_entry_keeps_an_id_it_had_read_and_never_invents_one() {
        let full = json!({"worker_config_id": "shell_v1", "request_id": "r-1", "task": {"prompt": "say \"request_id\": \"no\"", "session_id": "s"}, "dry_run": false}).to_string();
        // The id counts once its closing quote is read.
        let id_end = full.find("\"r-1\"").unwrap() + 5;
        for cut in 0..full.len() {
            let e = parse_raw(&full.as_bytes()[..cut]);
            assert_eq!(e.code, "invalid_json", "cut {cut}");
            let want = (cut >= id_end).then_some("r-1");
            assert_eq!(
                e.request_id.as_deref(),
                want,
                "cut at {cut}: {}",
                &full[..cut]
            );
        }
    }

    #[test]
    fn garbage_never_panics_the_scan() {
        let samples: [&[u8]; 12] = [
            b"{",
            b"{\"",
            b"{\"request_id\"",
            b"{\"request_id\":",
            b"{\"request_id\":\"r1",
            b"{\"request_id\":\"\\u12",
            b"{\"request_id\":\"\\ud800\"}",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{\"a\":]]]]}",
            b"{\"task\":{\"prompt\":\"\\q\"}}",
            b"{\"request_id\":\"r1\"\x00}",
        ];
        for s in samples {
            let _ = scan_entry(s, &InputLimits::default());
            let _ = parse_spawn_request(s, &InputLimits::default());
        }
        // Lone surrogates never make a valid id.
        let scan = scan_entry(br#"{"request_id":"\ud800"}"#, &InputLimits::default());
        assert_eq!(scan.request_id, None);
        assert!(scan.complete);
    }

    #[test]
    fn a_long_key_is_named_shortened() {
        let key = "k".repeat(500);
        let data = format!(
            r#"{{"request_id": "r1", "{key}": "{}"}}"#,
            "v".repeat(2 * MIB)
        );
        let e = parse_raw(data.as_bytes());
        assert_eq!(e.field, format!("{}...", &key[..64]));
    }

    #[test]
    fn readable_errors_are_not_marked_unreadable() {
        let e = parse(json!({"request_id": "r1", "task": {}})).unwrap_err();
        assert!(!e.unreadable);
        let e = parse(json!({"task": {"prompt": "x"}})).unwrap_err();
        assert!(!e.unreadable);
    }

    #[test]
    fn every_timestamp_has_one_format() {
        let shape = |s: &str| {
            let b = s.as_bytes();
            s.len() == 24
                && s.ends_with('Z')
                && b[10] == b'T'
                && b[19] == b'.'
                && chrono::DateTime::parse_from_rfc3339(s).is_ok()
        };
        assert!(shape(&now_rfc3339()), "{}", now_rfc3339());
        // Docker's instants: nanoseconds, UTC or an offset.
        assert_eq!(
            normalize_rfc3339("2026-05-01T10:00:00.123456789Z").as_deref(),
            Some("2026-05-01T10:00:00.123Z")
        );
        assert_eq!(
            normalize_rfc3339("2026-05-01T12:00:00.5+02:00").as_deref(),
            Some("2026-05-01T10:00:00.500Z")
        );
        assert_eq!(
            normalize_rfc3339("2026-05-01T10:00:00Z").as_deref(),
            Some("2026-05-01T10:00:00.000Z")
        );
        assert_eq!(normalize_rfc3339("0001-01-01 garbage"), None);
    }

    #[test]
    fn results_serialize_with_the_wire_status_names() {
        let r = ResultRecord::bare("r1", Status::TimedOut, None);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "timed_out");
        assert_eq!(v["error"], Value::Null);
    }
}
