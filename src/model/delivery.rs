//! Delivery of a worker's files over its stdin: the container's main
//! process is the daemon's static shim (`shim/ws-shim.rs`, put into every
//! image when it is prepared, see [`crate::model::prepare`]), which unpacks a tar
//! archive from stdin and then `exec`s the agent.
//!
//! Why: Docker's archive API (`PUT /containers/{id}/archive`) mounts the
//! container's root filesystem for every upload, which costs as much as a
//! third of a container start (64 ms of 165 ms on fuse-overlayfs here) and
//! serialises in dockerd under load. Writing to an attached stdin costs a
//! write on an open socket. A warm-pool container uses the same shim, idle
//! on its stdin until a request arrives, so claiming it costs no engine call.
//! The shim is the daemon's own static binary, so an image needs no shell,
//! no `tar` and no libc for it.
//!
//! This module does no I/O. The shim never evaluates request data: the
//! prompt and env values are data, and the argv is the preset's.

#[cfg(test)]
use crate::model::render::PROMPT_FILE;
use std::collections::BTreeSet;

use crate::model::protocol::ErrorInfo;
use crate::model::render::{RenderedFile, HOME, WORKSPACE};

/// Where a worker's request env is unpacked (read, then deleted, by the
/// shim before the agent starts).
pub const ENV_FILE: &str = "/home/worker/.orchestrator/request.env";

/// Where the shim lives in a prepared image (root-owned, mode 0755).
pub const SHIM_PATH: &str = "/.workers-spawner/ws-shim";

/// The static shim binary, built by `build.rs` from `shim/ws-shim.rs`.
pub const SHIM_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ws-shim"));

/// Exit code of the shim when the files cannot be unpacked (EX_SOFTWARE).
pub const SHIM_FAILED: i64 = 70;

/// Exit code of the shim when its stdin closed before a single byte came:
/// the daemon stopped between the container's start and the delivery, so
/// the agent never ran and the request may be started afresh.
pub const SHIM_UNDELIVERED: i64 = 71;

/// Exit code of the shim when the agent's command cannot be executed.
pub const SHIM_NOT_EXECUTABLE: i64 = 126;

/// Exit code of the shim when the agent's command is not in the image.
pub const SHIM_NOT_FOUND: i64 = 127;

/// What the shim's own failure lines start with.
pub const SHIM_MESSAGE_PREFIX: &str = "workers-spawner: ";

/// The first line of every payload (the shim checks it before the tar).
pub const PAYLOAD_HEADER: &[u8] = b"ws1\n";

/// The argv element standing for the prompt in a pooled worker's command.
pub const PROMPT_MARKER: &str = "{prompt}";

/// How the shim runs the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimMode {
    /// One-shot worker: the argv is final.
    Run,
    /// Pooled worker: the request's env and prompt arrive on stdin.
    Pool,
}

/// The container command that runs `argv` behind the shim.
pub fn shim_command(argv: &[String], mode: ShimMode) -> Vec<String> {
    let mut cmd = vec![
        SHIM_PATH.to_string(),
        ENV_FILE.to_string(),
        match mode {
            ShimMode::Run => "run",
            ShimMode::Pool => "pool",
        }
        .to_string(),
    ];
    cmd.extend(argv.iter().cloned());
    cmd
}

/// The result's error for a worker whose shim failed before the agent ran
/// (exit 70, 71, 126 or 127 together with the shim's own stderr line),
/// in the shim's words; `None` for any other exit.
pub fn shim_failure(exit_code: i64, shim_line: Option<&str>) -> Option<ErrorInfo> {
    let message = shim_line?.strip_prefix(SHIM_MESSAGE_PREFIX)?.trim();
    use crate::model::outcome::ErrorCode;
    let (code, field) = match exit_code {
        SHIM_NOT_FOUND => (ErrorCode::AgentNotFound, Some("agent.command")),
        SHIM_NOT_EXECUTABLE => (ErrorCode::AgentNotExecutable, Some("agent.command")),
        SHIM_FAILED | SHIM_UNDELIVERED => (ErrorCode::DeliveryFailed, None),
        _ => return None,
    };
    Some(code.info(field, message))
}

/// A session container's main process: the shim idling as the keeper.
pub fn keeper_command() -> Vec<String> {
    vec![SHIM_PATH.into(), ENV_FILE.into(), "keep".into()]
}

/// A session task's command: the shim picks `start` when the record file
/// at `record` holds no conversation of agent kind `kind`, else `resume`
/// with the recorded id in place of `{agent_session}` in its elements
/// `pieces` (the layout's resume pieces; never the prompt) (see the shim's
/// `turn` mode).
pub fn turn_command(
    record: &str,
    kind: &str,
    start: &[String],
    resume: &[String],
    pieces: std::ops::Range<usize>,
) -> Vec<String> {
    let mut v = vec![
        SHIM_PATH.into(),
        ENV_FILE.into(),
        "turn".into(),
        record.into(),
        kind.into(),
        start.len().to_string(),
    ];
    v.extend_from_slice(start);
    v.push(pieces.start.to_string());
    v.push(pieces.len().to_string());
    v.extend_from_slice(resume);
    v
}

/// The shim signalling every process of a session's task (`TERM`, `KILL`,
/// or `0` to count them); it prints how many it reached.
pub fn killer_command(signal: &str) -> Vec<String> {
    vec![
        SHIM_PATH.into(),
        ENV_FILE.into(),
        "kill".into(),
        signal.into(),
    ]
}

/// Why a payload cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// An env value holds a newline (the env file has one variable a line).
    #[error("env {0}: a value delivered on stdin may not contain a newline")]
    NewlineInEnv(String),
}

/// The tar archive written to the shim's stdin: `files` and, when `env` is
/// not empty, the env file (one `NAME=value` a line, mode 0600). Paths are
/// relative to `/`; only directories below the writable roots are entries,
/// so unpacking as the worker user touches nothing above them.
pub fn payload(files: &[RenderedFile], env: &[(String, String)]) -> Result<Vec<u8>, PayloadError> {
    let mut all: Vec<RenderedFile> = files.to_vec();
    if !env.is_empty() {
        let mut text = String::new();
        for (k, v) in env {
            if v.contains('\n') || v.contains('\r') || k.contains('\n') {
                return Err(PayloadError::NewlineInEnv(k.clone()));
            }
            text.push_str(k);
            text.push('=');
            text.push_str(v);
            text.push('\n');
        }
        all.push(RenderedFile {
            path: ENV_FILE.to_string(),
            content: text,
            mode: 0o600,
        });
    }
    let mut out = PAYLOAD_HEADER.to_vec();
    out.extend(tar_below_roots(&all));
    Ok(out)
}

/// Whether `env` can travel in the env file.
pub fn env_fits(env: &[(String, String)]) -> bool {
    env.iter()
        .all(|(k, v)| !k.contains('\n') && !v.contains('\n') && !v.contains('\r'))
}

fn tar_below_roots(files: &[RenderedFile]) -> Vec<u8> {
    let mut dirs = BTreeSet::new();
    for f in files {
        let root = [WORKSPACE, HOME]
            .into_iter()
            .find(|r| f.path.starts_with(&format!("{r}/")));
        let Some(root) = root else { continue };
        let rest = &f.path[root.len() + 1..];
        let parts: Vec<&str> = rest.split('/').collect();
        let mut acc = root.trim_start_matches('/').to_string();
        for p in &parts[..parts.len() - 1] {
            acc.push('/');
            acc.push_str(p);
            dirs.insert(acc.clone());
        }
    }
    let files: Vec<(String, &RenderedFile)> = files
        .iter()
        .map(|f| (f.path.trim_start_matches('/').to_string(), f))
        .collect();
    worker_tar(&dirs, &files)
}

/// A tar archive of `dirs` (mode 0755) and `files` at their given relative
/// paths, everything owned by the worker user (1000:1000).
pub fn worker_tar(dirs: &BTreeSet<String>, files: &[(String, &RenderedFile)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_size(size);
        h.set_mtime(now);
        h
    };
    for d in dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        let _ = builder.append_data(&mut h, format!("{d}/"), std::io::empty());
    }
    for (path, f) in files {
        let mut h = header(tar::EntryType::Regular, f.mode, f.content.len() as u64);
        let _ = builder.append_data(&mut h, path, f.content.as_bytes());
    }
    builder.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str, c: &str) -> RenderedFile {
        RenderedFile {
            path: p.into(),
            content: c.into(),
            mode: 0o644,
        }
    }

    fn entries(payload: &[u8]) -> Vec<(String, String)> {
        let tar = payload
            .strip_prefix(PAYLOAD_HEADER)
            .expect("the payload starts with its header");
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).unwrap();
                (path, s)
            })
            .collect()
    }

    #[test]
    fn the_payload_holds_the_files_and_only_directories_below_the_writable_roots() {
        let tar = payload(
            &[
                file("/home/worker/.claude/skills/x/SKILL.md", "s"),
                file("/workspace/a.txt", "a"),
            ],
            &[],
        )
        .unwrap();
        let names: Vec<String> = entries(&tar).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            names,
            [
                "home/worker/.claude/",
                "home/worker/.claude/skills/",
                "home/worker/.claude/skills/x/",
                "home/worker/.claude/skills/x/SKILL.md",
                "workspace/a.txt"
            ]
        );
    }

    #[test]
    fn a_pooled_payload_carries_the_env_as_one_variable_a_line() {
        let env = vec![
            (
                "ORCHESTRATOR_REQUEST_ID".to_string(),
                "req 1 $(x)".to_string(),
            ),
            ("ORCHESTRATOR_API_KEY".to_string(), "k".to_string()),
        ];
        let tar = payload(&[file(PROMPT_FILE, "hi\nthere")], &env).unwrap();
        let e = entries(&tar);
        let envfile = e.iter().find(|(p, _)| p == &ENV_FILE[1..]).unwrap();
        assert_eq!(
            envfile.1,
            "ORCHESTRATOR_REQUEST_ID=req 1 $(x)\nORCHESTRATOR_API_KEY=k\n"
        );
        assert!(e
            .iter()
            .any(|(p, c)| p == &PROMPT_FILE[1..] && c == "hi\nthere"));
    }

    #[test]
    fn an_env_value_with_a_newline_is_refused_for_stdin_delivery() {
        let env = vec![("A".to_string(), "x\ny".to_string())];
        assert!(!env_fits(&env));
        assert_eq!(
            payload(&[], &env),
            Err(PayloadError::NewlineInEnv("A".into()))
        );
    }

    #[test]
    fn the_shim_uses_the_exit_codes_header_and_marker_the_daemon_knows() {
        assert_eq!(shim::FAILED as i64, SHIM_FAILED);
        assert_eq!(shim::UNDELIVERED as i64, SHIM_UNDELIVERED);
        assert_eq!(shim::PROMPT_MARKER, PROMPT_MARKER);
        assert_eq!(
            [shim::HEADER, b"\n"].concat(),
            PAYLOAD_HEADER,
            "the shim checks the header the payload starts with"
        );
        assert_eq!(shim::ROOTS, [WORKSPACE, HOME]);
        assert_eq!(
            shim::AGENT_SESSION,
            crate::model::conversation::AGENT_SESSION
        );
        assert!(ENV_FILE.starts_with(&format!("{HOME}/")));
        assert!(
            SHIM_BINARY.starts_with(b"\x7fELF"),
            "an ELF binary is embedded"
        );
    }

    #[test]
    fn the_shim_reads_back_exactly_the_payload_the_daemon_writes() {
        let long = format!("/workspace/{}/deep.txt", "d".repeat(150));
        let files = [
            file("/home/worker/.claude/skills/x/SKILL.md", "s"),
            file(&long, "l"),
            RenderedFile {
                path: "/home/worker/bin/run".into(),
                content: "#!/bin/sh\n".into(),
                mode: 0o755,
            },
        ];
        let p = payload(&files, &[("K".into(), "v w".into())]).unwrap();
        let mut r = &p[PAYLOAD_HEADER.len()..];
        let got = shim::read_tar(&mut r).unwrap();
        let file_entries: Vec<(String, u32, Vec<u8>)> = got
            .iter()
            .filter_map(|e| match e {
                shim::Entry::File(p, m, d) => Some((p.display().to_string(), *m, d.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            file_entries,
            [
                (
                    "/home/worker/.claude/skills/x/SKILL.md".to_string(),
                    0o644,
                    b"s".to_vec()
                ),
                (long.clone(), 0o644, b"l".to_vec()),
                (
                    "/home/worker/bin/run".to_string(),
                    0o755,
                    b"#!/bin/sh\n".to_vec()
                ),
                (ENV_FILE.to_string(), 0o600, b"K=v w\n".to_vec()),
            ]
        );
        assert!(got.contains(&shim::Entry::Dir(
            "/home/worker/.claude/skills/x".into(),
            0o755
        )));
        let dir = tempfile::tempdir().unwrap();
        shim::unpack(&got, dir.path()).unwrap();
        let run = dir.path().join("home/worker/bin/run");
        assert_eq!(std::fs::read(&run).unwrap(), b"#!/bin/sh\n");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn the_shim_refuses_paths_outside_the_writable_roots() {
        for bad in [
            "/etc/passwd",
            "/workspace/../etc/passwd",
            "workspace/./x",
            "/workspacex/a",
            "/home/worker2/a",
            "/",
        ] {
            assert!(shim::checked_path(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(shim::checked_path(b"workspace/a/b").is_ok());
        assert!(shim::checked_path(b"/home/worker/").is_ok());
    }

    #[test]
    fn the_shim_puts_the_prompt_in_place_of_the_marker_only() {
        let argv: Vec<std::ffi::OsString> = ["agent", "-p", "{prompt}", "x{prompt}"]
            .iter()
            .map(Into::into)
            .collect();
        let got = shim::with_prompt(&argv, b"a b\n$(c)");
        assert_eq!(got[2], "a b\n$(c)");
        assert_eq!(got[3], "x{prompt}");
        assert_eq!(
            shim::parse_env(b"A=1\nB=x=y\n=bad\nnovalue\n"),
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(shim::stat_ppid("12 (a b) c) S 7 12 12"), Some(7));
    }

    #[test]
    fn a_shim_failure_becomes_an_error_in_its_own_words() {
        let e = shim_failure(
            127,
            Some("workers-spawner: the agent's command \"claude\" was not found in the image (PATH=/bin)"),
        )
        .unwrap();
        assert_eq!(e.code, "agent_not_found");
        assert_eq!(e.field.as_deref(), Some("agent.command"));
        assert!(
            e.message.starts_with("the agent's command \"claude\""),
            "{}",
            e.message
        );
        assert_eq!(
            shim_failure(126, Some("workers-spawner: x")).unwrap().code,
            "agent_not_executable"
        );
        assert_eq!(
            shim_failure(70, Some("workers-spawner: x")).unwrap().code,
            "delivery_failed"
        );
        // The agent's own exit codes are the agent's business.
        assert!(shim_failure(1, Some("workers-spawner: x")).is_none());
        assert!(shim_failure(127, Some("sh: claude: not found")).is_none());
        assert!(shim_failure(127, None).is_none());
    }

    #[test]
    fn the_shim_command_keeps_the_argv_as_separate_elements() {
        let argv = vec!["echo".to_string(), "a b; $(rm -rf /)".to_string()];
        let cmd = shim_command(&argv, ShimMode::Run);
        assert_eq!(cmd[0], SHIM_PATH);
        assert_eq!(cmd[1], ENV_FILE);
        assert_eq!(cmd[2], "run");
        assert_eq!(&cmd[3..], &argv[..]);
        assert_eq!(shim_command(&argv, ShimMode::Pool)[2], "pool");
        assert_eq!(keeper_command(), [SHIM_PATH, ENV_FILE, "keep"]);
        assert_eq!(
            killer_command("TERM"),
            [SHIM_PATH, ENV_FILE, "kill", "TERM"]
        );
    }

    #[test]
    fn the_shim_takes_the_turn_the_record_says() {
        let start = vec![
            "agent".to_string(),
            "--session-id".into(),
            "u-1".into(),
            "P".into(),
        ];
        let resume = vec![
            "agent".to_string(),
            "--resume".into(),
            "{agent_session}".into(),
            "say {agent_session}".into(),
        ];
        let cmd = turn_command("/rec", "claude-code:derived", &start, &resume, 1..3);
        assert_eq!(
            &cmd[..6],
            [
                SHIM_PATH,
                ENV_FILE,
                "turn",
                "/rec",
                "claude-code:derived",
                "4"
            ]
        );
        let rest: Vec<std::ffi::OsString> = cmd[3..].iter().map(Into::into).collect();
        let got = |rec: Option<&[u8]>| -> Vec<String> {
            shim::turn_argv(&rest, rec)
                .unwrap()
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect()
        };
        assert_eq!(got(None), start);
        // The prompt (outside the pieces) is data: its text stays as it is.
        assert_eq!(
            got(Some(b"claude-code:derived u-1\n")),
            ["agent", "--resume", "u-1", "say {agent_session}"]
        );
        // Another agent's conversation, or none acceptable: a fresh start.
        assert_eq!(got(Some(b"codex:none -\n")), start);
        assert_eq!(got(Some(b"u-1\n")), start);
        assert_eq!(got(Some(b"")), start);
        assert_eq!(got(Some(b"claude-code:derived has space")), start);
        let long = format!("claude-code:derived {}", "x".repeat(129));
        assert_eq!(got(Some(long.as_bytes())), start);
        assert!(shim::turn_argv(&rest[..3], None).is_err());
    }
}

/// The shim's source, compiled into the tests so its pure parts are tested
/// against the daemon's payloads.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../shim/ws-shim.rs"]
mod shim;
