//! Delivery of a worker's files over its stdin: the container's main
//! process is a short POSIX `sh` script (the *shim*) that unpacks a tar
//! archive from stdin and then `exec`s the agent.
//!
//! Why: Docker's archive API (`PUT /containers/{id}/archive`) mounts the
//! container's root filesystem for every upload, which costs as much as a
//! third of a container start (64 ms of 165 ms on fuse-overlayfs here) and
//! serialises in dockerd under load. Writing to an attached stdin costs a
//! write on an open socket. A warm-pool container uses the same shim, idle
//! in `tar` until a request arrives, so claiming it costs no engine call.
//!
//! This module does no I/O. The shim never evaluates request data: the
//! prompt and env values are data for `tar`, `read` and `"$@"`, never shell
//! source, and the argv is the preset's.

#[cfg(test)]
use crate::render::PROMPT_FILE;
use std::collections::BTreeSet;

use crate::render::{RenderedFile, HOME, WORKSPACE};

/// Where a pooled worker's request env is unpacked (read, then deleted, by
/// the shim before the agent starts).
pub const ENV_FILE: &str = "/home/worker/.orchestrator/request.env";

/// Exit code of the shim when the files cannot be unpacked (EX_SOFTWARE).
pub const SHIM_FAILED: i64 = 70;

/// Exit code of the shim when its stdin closed before a single byte came:
/// the daemon stopped between the container's start and the delivery, so
/// the agent never ran and the request may be started afresh.
pub const SHIM_UNDELIVERED: i64 = 71;

/// The first line of every payload (the shim checks it before `tar`).
pub const PAYLOAD_HEADER: &[u8] = b"ws1\n";

/// The argv element standing for the prompt in a pooled worker's command.
pub const PROMPT_MARKER: &str = "{prompt}";

/// The shim. It first exports the env delivered in [`ENV_FILE`] (secrets,
/// and a pooled worker's request env), which it deletes. `$1` is the mode:
/// `run` execs the rest of the argv as it is; `pool` first puts the prompt
/// (the content of the prompt file) in place of the argv element equal to
/// [`PROMPT_MARKER`].
pub const SHIM: &str = r#"IFS= read -r h || { echo "workers-spawner: no files were delivered (the daemon stopped before delivering them)" >&2; exit 71; }
[ "$h" = ws1 ] || { echo "workers-spawner: unknown delivery format" >&2; exit 70; }
tar -x -o -f - -C / || { echo "workers-spawner: the worker's files could not be unpacked from stdin (the image needs sh and tar, and /workspace and /home/worker writable by uid 1000)" >&2; exit 70; }
if [ -f "$0" ]; then while IFS= read -r kv; do export "$kv"; done < "$0"; rm -f "$0"; fi
m=$1; shift
if [ "$m" = pool ]; then
  p=$(cat "$ORCHESTRATOR_PROMPT_FILE"; echo x); p=${p%x}
  for a do shift; if [ "$a" = "{prompt}" ]; then set -- "$@" "$p"; else set -- "$@" "$a"; fi; done
fi
exec "$@""#;

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
        "sh".to_string(),
        "-c".to_string(),
        SHIM.to_string(),
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
    fn the_shim_uses_the_exit_codes_and_marker_the_daemon_knows() {
        assert!(SHIM.contains(&format!("exit {SHIM_FAILED};")));
        assert!(SHIM.contains(&format!("exit {SHIM_UNDELIVERED};")));
        assert!(SHIM.contains(&format!("\"{PROMPT_MARKER}\"")));
        assert!(SHIM.contains(&format!(
            "[ \"$h\" = {} ]",
            std::str::from_utf8(PAYLOAD_HEADER).unwrap().trim_end()
        )));
    }

    #[test]
    fn the_shim_command_keeps_the_argv_as_separate_elements() {
        let argv = vec!["echo".to_string(), "a b; $(rm -rf /)".to_string()];
        let cmd = shim_command(&argv, ShimMode::Run);
        assert_eq!(&cmd[..2], ["sh", "-c"]);
        assert_eq!(cmd[3], ENV_FILE);
        assert_eq!(cmd[4], "run");
        assert_eq!(&cmd[5..], &argv[..]);
        assert_eq!(shim_command(&argv, ShimMode::Pool)[4], "pool");
    }
}
