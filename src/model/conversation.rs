//! Conversation continuity of a session's agent: how its first task starts
//! a conversation and how later tasks continue it, declared per agent type
//! (`templates/<type>/agent.json`, `conversation`) or by a preset
//! (`agent.conversation`), and the record of it kept on the session's
//! volume.
//!
//! Each agent CLI has its own way: Claude Code takes an id chosen by the
//! caller (`--session-id <uuid>`, later `--resume <uuid>`); Factory Droid
//! makes its own id and reports it (`-o json` prints `session_id`), later
//! `-s <id>`; Codex continues the newest conversation of its state folder
//! (`codex exec resume --last`), which on a session's own volume is this
//! session's. [`IdSource`] names the three. The pieces are inserted into
//! `agent.command` just before its `{prompt}` element.
//!
//! This module does no I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The placeholder replaced by the agent's conversation id.
pub const AGENT_SESSION: &str = "{agent_session}";

/// Where the daemon keeps the record of a session's conversation
/// (`<kind> <id>`: the agent kind, see [`Conversation::kind`], and its id,
/// `-` when the agent needs none), on the session's home volume.
pub const RECORD_PATH: &str = "/home/worker/.workers-spawner/conversation";

/// Longest conversation id the daemon accepts from an agent's output.
pub const MAX_ID_LEN: usize = 128;

/// How an agent type keeps one conversation across a session's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversation {
    /// The agent's state folder (`/home/worker/.claude`); it lives on the
    /// session's home volume, so it must be under `/home/worker/`.
    pub state_dir: String,
    /// Where the conversation id comes from.
    pub id: IdSource,
    /// argv pieces of a session's first task.
    #[serde(default)]
    pub start: Vec<String>,
    /// argv pieces of every later task; `{agent_session}` is the id.
    pub resume: Vec<String>,
    /// With `id: "reported"`: the JSON field of the agent's stdout that
    /// carries its id (`session_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_field: Option<String>,
}

/// Where a conversation's id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdSource {
    /// A UUID the daemon derives from the session id (the CLI takes it at
    /// the start: Claude Code's `--session-id`).
    Derived,
    /// The agent prints its id on stdout (a JSON field, `report_field`).
    Reported,
    /// No id: the agent continues the newest conversation of its state
    /// folder (Codex's `resume --last`).
    None,
}

impl Conversation {
    /// What is wrong with this declaration, as (field, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let home = format!("{}/", crate::model::render::HOME);
        if !self.state_dir.starts_with(&home)
            || !crate::model::catalog::is_safe_container_path(&self.state_dir)
        {
            return Some((
                "conversation.state_dir",
                format!(
                    "{:?} must be a clean path under {home} (the session's home volume keeps it)",
                    self.state_dir
                ),
            ));
        }
        let uses_id = |v: &[String]| v.iter().any(|a| a.contains(AGENT_SESSION));
        match self.id {
            IdSource::Derived | IdSource::Reported if !uses_id(&self.resume) => {
                return Some((
                    "conversation.resume",
                    format!("resume must contain {AGENT_SESSION} to name the conversation"),
                ))
            }
            IdSource::None if uses_id(&self.resume) => {
                return Some((
                    "conversation.resume",
                    format!("with id \"none\" there is no {AGENT_SESSION} to put in resume"),
                ))
            }
            _ => {}
        }
        if self.id != IdSource::Derived && uses_id(&self.start) {
            return Some((
                "conversation.start",
                format!("{AGENT_SESSION} is known at the start only with id \"derived\""),
            ));
        }
        match (&self.id, &self.report_field) {
            (IdSource::Reported, None) => Some((
                "conversation.report_field",
                "id \"reported\" needs report_field: the JSON field of the agent's output that carries its id".into(),
            )),
            (IdSource::Reported, Some(f)) if !is_field_name(f) => Some((
                "conversation.report_field",
                format!("{f:?} is not a JSON field name (letters, digits, _ and -, at most 64)"),
            )),
            (IdSource::Derived | IdSource::None, Some(_)) => Some((
                "conversation.report_field",
                "report_field is read only with id \"reported\"".into(),
            )),
            _ => None,
        }
    }

    /// What a record is of: the agent type and where its id comes from
    /// (`claude-code:derived`); a record of another kind starts afresh.
    pub fn kind(&self, agent_type: &str) -> String {
        let id = match self.id {
            IdSource::Derived => "derived",
            IdSource::Reported => "reported",
            IdSource::None => "none",
        };
        format!("{agent_type}:{id}")
    }

    /// The id a session's first task starts with, when it is known before.
    pub fn known_id(&self, stream_prefix: &str, session_id: &str) -> Option<String> {
        (self.id == IdSource::Derived).then(|| derived_uuid(stream_prefix, session_id))
    }
}

fn is_field_name(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 64
        && f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Which task of a conversation this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// No conversation yet: start one (with this id when it is known).
    Start(Option<String>),
    /// Continue the conversation recorded with this id (`-` for none).
    Resume(String),
}

/// The record's content for an agent that needs no id.
pub const NO_ID: &str = "-";

/// `command` (its `{prompt}` element at `prompt_at`, already replaced)
/// with the turn's pieces inserted just before the prompt.
pub fn argv(command: &[String], prompt_at: usize, conv: &Conversation, turn: &Turn) -> Vec<String> {
    let (pieces, id) = match turn {
        Turn::Start(id) => (&conv.start, id.clone().unwrap_or_default()),
        Turn::Resume(id) => (&conv.resume, id.clone()),
    };
    let at = prompt_at.min(command.len());
    let mut out = Vec::with_capacity(command.len() + pieces.len());
    out.extend_from_slice(&command[..at]);
    out.extend(pieces.iter().map(|p| p.replace(AGENT_SESSION, &id)));
    out.extend_from_slice(&command[at..]);
    out
}

/// A stable UUID for a session: the first 16 bytes of
/// SHA-256(`<prefix>/<session_id>`) with the version nibble 4 and the RFC
/// 4122 variant, as CLIs that validate a v4 shape expect.
pub fn derived_uuid(stream_prefix: &str, session_id: &str) -> String {
    let h = Sha256::digest(format!("{stream_prefix}/{session_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// Whether `id` may be put into an argv and a record: printable ASCII
/// without spaces or quotes, at most [`MAX_ID_LEN`].
pub fn is_acceptable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Finds `"<field>": "<value>"` in an agent's stdout as it streams by, in
/// chunks of any size (a JSON line may be longer than what the output
/// events keep of it). The last acceptable value wins.
#[derive(Debug, Clone)]
pub struct IdScanner {
    needle: Vec<u8>,
    carry: Vec<u8>,
    found: Option<String>,
}

impl IdScanner {
    /// A scanner for `field`.
    pub fn new(field: &str) -> IdScanner {
        IdScanner {
            needle: format!("\"{field}\"").into_bytes(),
            carry: Vec::new(),
            found: None,
        }
    }

    /// Feeds the next bytes of stdout.
    pub fn push(&mut self, chunk: &[u8]) {
        self.carry.extend_from_slice(chunk);
        let mut from = 0;
        let mut keep_from = self.carry.len().saturating_sub(self.tail_len());
        while let Some(pos) = find(&self.carry[from..], &self.needle) {
            let start = from + pos;
            match value_after(&self.carry[start + self.needle.len()..]) {
                Scan::Value(v) => {
                    if is_acceptable_id(&v) {
                        self.found = Some(v);
                    }
                    from = start + self.needle.len();
                }
                Scan::NotAValue => from = start + self.needle.len(),
                Scan::Incomplete => {
                    keep_from = keep_from.min(start);
                    break;
                }
            }
        }
        self.carry.drain(..keep_from.min(self.carry.len()));
    }

    /// How much of the stream must be kept for a match cut by a chunk end.
    fn tail_len(&self) -> usize {
        self.needle.len() + MAX_ID_LEN + 16
    }

    /// The id seen last, if any.
    pub fn found(&self) -> Option<&str> {
        self.found.as_deref()
    }
}

enum Scan {
    Value(String),
    NotAValue,
    Incomplete,
}

/// After `"field"`: optional spaces, `:`, optional spaces, a string.
fn value_after(rest: &[u8]) -> Scan {
    let mut i = 0;
    // JSON writers put a space or two here; endless whitespace is not a
    // value (and must not make the scanner keep the stream).
    let skip = |i: &mut usize| {
        let from = *i;
        while rest.get(*i).is_some_and(|b| b.is_ascii_whitespace()) && *i - from < 16 {
            *i += 1;
        }
    };
    skip(&mut i);
    match rest.get(i) {
        None if i < 16 => return Scan::Incomplete,
        Some(b':') => i += 1,
        _ => return Scan::NotAValue,
    }
    let colon = i;
    skip(&mut i);
    match rest.get(i) {
        None if i - colon < 16 => return Scan::Incomplete,
        Some(b'"') => i += 1,
        _ => return Scan::NotAValue,
    }
    let start = i;
    while let Some(&b) = rest.get(i) {
        if b == b'"' {
            return Scan::Value(String::from_utf8_lossy(&rest[start..i]).into_owned());
        }
        if b == b'\\' || i - start > MAX_ID_LEN {
            return Scan::NotAValue;
        }
        i += 1;
    }
    Scan::Incomplete
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    /// The shipped files, compiled in (the model reads no file).
    fn shipped(name: &str) -> &'static str {
        match name {
            "claude-code" => include_str!("../../templates/claude-code/agent.json"),
            "codex" => include_str!("../../templates/codex/agent.json"),
            "factory-droid" => include_str!("../../templates/factory-droid/agent.json"),
            "developer_claude_v1" => include_str!("../../presets/developer_claude_v1.json"),
            "developer_codex_v1" => include_str!("../../presets/developer_codex_v1.json"),
            "developer_droid_v1" => include_str!("../../presets/developer_droid_v1.json"),
            other => panic!("no shipped file {other}"),
        }
    }

    fn layout(name: &str) -> Conversation {
        let json: serde_json::Value = serde_json::from_str(shipped(name)).expect("json");
        serde_json::from_value(json["conversation"].clone()).expect("conversation")
    }

    fn preset_command(name: &str) -> Vec<String> {
        let json: serde_json::Value = serde_json::from_str(shipped(name)).expect("json");
        serde_json::from_value(json["agent"]["command"].clone()).expect("command")
    }

    /// The shipped preset's command with the prompt in, and where it is.
    fn with_prompt(name: &str) -> (Vec<String>, usize) {
        let c = preset_command(name);
        let at = c.iter().position(|a| a == "{prompt}").expect("{prompt}");
        let c = c
            .into_iter()
            .map(|a| if a == "{prompt}" { "PROMPT".into() } else { a })
            .collect();
        (c, at)
    }

    // Claude Code 2.1 (`claude --help`, docs.anthropic.com cli-reference):
    // `--session-id <uuid>` starts a conversation under a chosen UUID,
    // `-r, --resume <id>` continues one; both go with `-p` / `--print`.
    #[test]
    fn claude_code_starts_under_a_derived_uuid_and_resumes_it() {
        let conv = layout("claude-code");
        assert_eq!(conv.problem(), None);
        let (cmd, at) = with_prompt("developer_claude_v1");
        let id = conv.known_id("workers", "s-1").expect("derived");
        assert_eq!(
            argv(&cmd, at, &conv, &Turn::Start(Some(id.clone()))),
            v(&[
                "claude",
                "--dangerously-skip-permissions",
                "-p",
                "--session-id",
                &id,
                "PROMPT"
            ])
        );
        assert_eq!(
            argv(&cmd, at, &conv, &Turn::Resume(id.clone())),
            v(&[
                "claude",
                "--dangerously-skip-permissions",
                "-p",
                "--resume",
                &id,
                "PROMPT"
            ])
        );
        assert_eq!(conv.state_dir, "/home/worker/.claude");
    }

    // Codex CLI 0.77 (`codex exec --help`, openai/codex docs/exec.md):
    // `codex exec [OPTIONS] [PROMPT]` starts; `codex exec resume --last
    // [PROMPT]` continues the newest conversation under CODEX_HOME
    // (`~/.codex`), which on a session's volume is that session's.
    #[test]
    fn codex_resumes_the_last_conversation_of_its_state_folder() {
        let conv = layout("codex");
        assert_eq!(conv.problem(), None);
        assert_eq!(conv.id, IdSource::None);
        let (cmd, at) = with_prompt("developer_codex_v1");
        assert_eq!(
            argv(&cmd, at, &conv, &Turn::Start(None)),
            v(&["codex", "exec", "--full-auto", "PROMPT"])
        );
        assert_eq!(
            argv(&cmd, at, &conv, &Turn::Resume(NO_ID.into())),
            v(&["codex", "exec", "--full-auto", "resume", "--last", "PROMPT"])
        );
        assert_eq!(conv.state_dir, "/home/worker/.codex");
    }

    // Factory Droid 0.174 (docs.factory.ai droid-exec, cli-reference):
    // `droid exec -o json` prints one JSON object with `session_id`;
    // `-s, --session-id <id>` continues that existing session.
    #[test]
    fn factory_droid_reports_its_id_and_continues_it() {
        let conv = layout("factory-droid");
        assert_eq!(conv.problem(), None);
        assert_eq!(conv.report_field.as_deref(), Some("session_id"));
        let (cmd, at) = with_prompt("developer_droid_v1");
        assert_eq!(
            argv(&cmd, at, &conv, &Turn::Start(None)),
            v(&["droid", "exec", "--auto", "high", "-o", "json", "PROMPT"])
        );
        assert_eq!(
            argv(&cmd, at, &conv, &Turn::Resume("abc-123".into())),
            v(&[
                "droid",
                "exec",
                "--auto",
                "high",
                "-o",
                "json",
                "--session-id",
                "abc-123",
                "PROMPT"
            ])
        );
        assert_eq!(conv.state_dir, "/home/worker/.factory");
    }

    #[test]
    fn the_derived_uuid_is_stable_v4_shaped_and_per_prefix() {
        let a = derived_uuid("workers", "s-1");
        assert_eq!(a, derived_uuid("workers", "s-1"));
        assert_ne!(a, derived_uuid("workers", "s-2"));
        assert_ne!(a, derived_uuid("other", "s-1"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!("89ab".contains(&parts[3][..1]));
    }

    #[test]
    fn declarations_that_cannot_work_are_refused_by_field() {
        let ok = layout("claude-code");
        let bad = |f: &dyn Fn(&mut Conversation)| {
            let mut c = ok.clone();
            f(&mut c);
            c.problem().map(|(field, _)| field)
        };
        assert_eq!(
            bad(&|c| c.state_dir = "/etc/x".into()),
            Some("conversation.state_dir")
        );
        assert_eq!(
            bad(&|c| c.state_dir = "/workspace/.claude".into()),
            Some("conversation.state_dir")
        );
        assert_eq!(
            bad(&|c| c.state_dir = "/home/worker/../x".into()),
            Some("conversation.state_dir")
        );
        assert_eq!(
            bad(&|c| c.resume = v(&["--continue"])),
            Some("conversation.resume")
        );
        assert_eq!(
            bad(&|c| {
                c.id = IdSource::Reported;
                c.start = v(&["--id", AGENT_SESSION]);
            }),
            Some("conversation.start")
        );
        assert_eq!(
            bad(&|c| {
                c.id = IdSource::Reported;
                c.start.clear();
            }),
            Some("conversation.report_field")
        );
        assert_eq!(
            bad(&|c| c.report_field = Some("session_id".into())),
            Some("conversation.report_field")
        );
        assert_eq!(
            bad(&|c| {
                c.id = IdSource::None;
                c.start.clear();
            }),
            Some("conversation.resume")
        );
    }

    #[test]
    fn the_scanner_finds_the_id_across_chunks_and_long_lines() {
        let text = format!(
            "{{\"type\":\"result\",\"result\":\"{}\",\"session_id\" : \"ab-12_c\"}}\n",
            "x".repeat(100_000)
        );
        for size in [1, 3, 7, 64, 4096, text.len()] {
            let mut s = IdScanner::new("session_id");
            for c in text.as_bytes().chunks(size) {
                s.push(c);
            }
            assert_eq!(s.found(), Some("ab-12_c"), "chunks of {size}");
            assert!(s.carry.len() <= s.tail_len() + size, "bounded carry");
        }
    }

    #[test]
    fn endless_whitespace_after_the_field_is_no_value_and_keeps_nothing() {
        let mut s = IdScanner::new("session_id");
        s.push(b"{\"session_id\"");
        for _ in 0..1000 {
            s.push(&[b' '; 1024]);
        }
        assert!(s.carry.len() <= s.tail_len() + 1024, "{}", s.carry.len());
        assert_eq!(s.found(), None);
    }

    #[test]
    fn the_scanner_keeps_the_last_acceptable_id_only() {
        let mut s = IdScanner::new("session_id");
        s.push(b"{\"session_id\":\"first\"}\n{\"session_id\": 5}\n");
        s.push(b"{\"session_id\":\"has space\"}\n{\"session_id\":\"second\"}\n");
        s.push(b"{\"session_id\":\"a\\\"b\"}\n{\"other_session_id\":\"x\"}");
        // `"other_session_id"` does not contain `"session_id"` with its quotes.
        assert_eq!(s.found(), Some("second"));
        s.push(format!("{{\"session_id\":\"{}\"}}", "y".repeat(MAX_ID_LEN + 1)).as_bytes());
        assert_eq!(s.found(), Some("second"));
    }
}
