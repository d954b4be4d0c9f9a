//! The bounded scan of an entry the parser could not read (too large, not
//! UTF-8, not JSON, nested too deep): its `request_id` and the field
//! responsible, found in one pass without parsing it.

use super::request::{is_valid_request_id, InputLimits};

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
    /// The most deeply nested field, its depth as
    /// [`json_depth`](super::json_depth) counts it and its nesting from the
    /// top of the entry.
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
    /// [`json_depth`](super::json_depth) of the value.
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
    /// length, else its text length) and its
    /// [`json_depth`](super::json_depth), or `None` when it is not a value.
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
