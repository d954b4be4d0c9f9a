//! `ws-shim`: the main process of every worker container, built as a static
//! binary (std only) by the daemon's build script and put into each image
//! once, when the daemon prepares it (`crate::images`). It needs nothing
//! from the image: no shell, no `tar`, no libc, no passwd entry.
//!
//! `ws-shim ENV_FILE MODE [ARGV...]`, MODE one of:
//! - `run`: reads the payload from stdin (a header line, then a tar
//!   archive), unpacks it as the calling user, exports the env file (which
//!   it deletes) and `exec`s ARGV;
//! - `pool`: like `run`, and first puts the prompt (the content of
//!   `$ORCHESTRATOR_PROMPT_FILE`) in place of every ARGV element `{prompt}`;
//! - `keep`: a session's idle keeper: records its pid, then waits forever;
//! - `kill SIG`: signals (`TERM`, `KILL`, or `0` to count) every process but
//!   init, the keeper, the keeper's children and itself; prints how many;
//! - `turn RECORD KIND N START_ARGV(N) AT LEN RESUME_ARGV`: a session task:
//!   when the file RECORD reads `KIND ID` (the same agent kind, an acceptable
//!   id), `exec`s RESUME_ARGV with `{agent_session}` replaced by ID in the LEN
//!   elements from index AT (the layout's resume pieces, never the prompt),
//!   else START_ARGV (the session's first turn, or its first under another
//!   agent). So the container decides from its own volume, and the daemon
//!   reads nothing before the task.
//!
//!
//! `run`, `pool` and `keep` first start the egress forwarder when
//! `WS_EGRESS_FORWARD` holds `LISTEN SOCKET`: they bind LISTEN (the
//! container's loopback) and fork a child that relays each connection, byte
//! for byte, to a new connection to the unix socket SOCKET (the daemon's,
//! one per worker); it needs no network interface but `lo`.
//!
//! Exit codes: 70 the payload cannot be unpacked, 71 stdin closed before a
//! single byte (nothing was delivered: the agent never ran), 126 the agent
//! cannot be executed, 127 the agent's command is not in the image. Every
//! failure prints one line starting with `workers-spawner: ` on stderr.
//!
//! Request data is never interpreted: the prompt and env values are data,
//! the argv is the preset's.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};

/// The first line of every payload.
pub const HEADER: &[u8] = b"ws1";
/// The argv element standing for the prompt in a pooled worker's command.
pub const PROMPT_MARKER: &str = "{prompt}";
/// Directories a payload may write below.
pub const ROOTS: [&str; 2] = ["/workspace", "/home/worker"];

/// Exit code: the payload cannot be unpacked (EX_SOFTWARE).
pub const FAILED: i32 = 70;
/// Exit code: nothing was delivered.
pub const UNDELIVERED: i32 = 71;

fn fail(code: i32, msg: &str) -> ! {
    let _ = writeln!(io::stderr(), "workers-spawner: {msg}");
    std::process::exit(code)
}

/// One entry of a payload archive.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory and its mode.
    Dir(PathBuf, u32),
    /// A regular file, its mode and content.
    File(PathBuf, u32, Vec<u8>),
}

fn octal(field: &[u8]) -> Result<u64, String> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // Base-256 (GNU) for large numbers.
        let mut n: u64 = (field[0] & 0x7f) as u64;
        for b in &field[1..] {
            n = n.checked_mul(256).ok_or("number too large")? + *b as u64;
        }
        return Ok(n);
    }
    let s: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| format!("bad octal field {s:?}"))
}

fn cstr(field: &[u8]) -> Vec<u8> {
    field.iter().take_while(|b| **b != 0).copied().collect()
}

/// A path from an archive, made absolute and checked to lie below one of
/// [`ROOTS`] with no `..`, `.` or empty components.
pub fn checked_path(raw: &[u8]) -> Result<PathBuf, String> {
    let s = String::from_utf8(raw.to_vec()).map_err(|_| "a path is not UTF-8".to_string())?;
    let trimmed = s.trim_end_matches('/');
    let abs = format!("/{}", trimmed.trim_start_matches('/'));
    let p = PathBuf::from(&abs);
    if p.components()
        .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        || abs[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("unsafe path {s:?} in the payload"));
    }
    if !ROOTS.iter().any(|r| p == Path::new(r) || p.starts_with(r)) {
        return Err(format!(
            "path {abs:?} is outside /workspace and /home/worker"
        ));
    }
    Ok(p)
}

/// Reads the entries of a tar archive (ustar or GNU, with GNU long names)
/// up to its end marker. Only directories and regular files are kept.
pub fn read_tar(r: &mut impl Read) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    loop {
        let mut h = [0u8; 512];
        r.read_exact(&mut h)
            .map_err(|e| format!("the archive ended early: {e}"))?;
        if h.iter().all(|b| *b == 0) {
            return Ok(out);
        }
        let size = octal(&h[124..136])?;
        if size > 1 << 34 {
            return Err("an archive entry is too large".into());
        }
        let mode = (octal(&h[100..108])? & 0o7777) as u32;
        let kind = h[156];
        let mut data = vec![0u8; size as usize];
        r.read_exact(&mut data)
            .map_err(|e| format!("the archive ended early: {e}"))?;
        let pad = (512 - (size % 512) as usize) % 512;
        let mut skip = vec![0u8; pad];
        r.read_exact(&mut skip)
            .map_err(|e| format!("the archive ended early: {e}"))?;
        if kind == b'L' {
            long_name = Some(cstr(&data));
            continue;
        }
        let name = match long_name.take() {
            Some(n) => n,
            None => {
                let mut n = Vec::new();
                let prefix = cstr(&h[345..500]);
                if &h[257..262] == b"ustar" && h[263] == b'0' && !prefix.is_empty() {
                    n.extend_from_slice(&prefix);
                    n.push(b'/');
                }
                n.extend_from_slice(&cstr(&h[0..100]));
                n
            }
        };
        match kind {
            b'5' => out.push(Entry::Dir(checked_path(&name)?, mode)),
            b'0' | 0 | b'7' => out.push(Entry::File(checked_path(&name)?, mode, data)),
            // Anything else (links, devices, pax headers) is not ours: skipped.
            _ => {}
        }
    }
}

/// Writes `entries` below `/` (or below `root` in tests) as the calling user.
pub fn unpack(entries: &[Entry], root: &Path) -> io::Result<()> {
    let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    for e in entries {
        match e {
            Entry::Dir(p, mode) => {
                let d = at(p);
                fs::create_dir_all(&d)?;
                // A folder the image owns (e.g. /home/worker itself) may
                // refuse a chmod; its mode is the image's business.
                let _ = fs::set_permissions(&d, fs::Permissions::from_mode(*mode));
            }
            Entry::File(p, mode, data) => {
                let f = at(p);
                if let Some(parent) = f.parent() {
                    fs::create_dir_all(parent)?;
                }
                let _ = fs::remove_file(&f);
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(*mode)
                    .open(&f)?;
                file.write_all(data)?;
                fs::set_permissions(&f, fs::Permissions::from_mode(*mode))?;
            }
        }
    }
    Ok(())
}

/// `NAME=value` lines of an env file.
pub fn parse_env(text: &[u8]) -> Vec<(OsString, OsString)> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let eq = line.iter().position(|b| *b == b'=')?;
            if eq == 0 {
                return None;
            }
            Some((
                OsString::from_vec(line[..eq].to_vec()),
                OsString::from_vec(line[eq + 1..].to_vec()),
            ))
        })
        .collect()
}

/// The argv with every element equal to [`PROMPT_MARKER`] replaced.
pub fn with_prompt(argv: &[OsString], prompt: &[u8]) -> Vec<OsString> {
    argv.iter()
        .map(|a| {
            if a.as_os_str() == PROMPT_MARKER {
                OsString::from_vec(prompt.to_vec())
            } else {
                a.clone()
            }
        })
        .collect()
}

fn deliver_and_exec(env_file: &Path, pool: bool, argv: Vec<OsString>) -> ! {
    let stdin = io::stdin();
    let mut r = BufReader::with_capacity(64 * 1024, stdin.lock());
    let mut header = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) if header.is_empty() => fail(
                UNDELIVERED,
                "no files were delivered (the daemon stopped before delivering them)",
            ),
            Ok(0) => fail(FAILED, "the delivery ended inside its header"),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if header.len() < 16 => header.push(byte[0]),
            Ok(_) => fail(FAILED, "unknown delivery format"),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => fail(FAILED, &format!("reading the delivery failed: {e}")),
        }
    }
    if header != HEADER {
        fail(FAILED, "unknown delivery format");
    }
    let entries = read_tar(&mut r).unwrap_or_else(|e| {
        fail(
            FAILED,
            &format!("the worker's files could not be unpacked: {e}"),
        )
    });
    if let Err(e) = unpack(&entries, Path::new("/")) {
        fail(
            FAILED,
            &format!(
                "the worker's files could not be written ({e}); /workspace and /home/worker must be writable by uid {}",
                uid()
            ),
        );
    }
    if let Ok(text) = fs::read(env_file) {
        for (k, v) in parse_env(&text) {
            std::env::set_var(k, v);
        }
        let _ = fs::remove_file(env_file);
    }
    let argv = if pool {
        let prompt = std::env::var_os("ORCHESTRATOR_PROMPT_FILE")
            .and_then(|p| fs::read(p).ok())
            .unwrap_or_else(|| fail(FAILED, "the pooled request's prompt file is missing"));
        with_prompt(&argv, &prompt)
    } else {
        argv
    };
    exec(argv)
}

fn exec(argv: Vec<OsString>) -> ! {
    let Some((prog, args)) = argv.split_first() else {
        fail(FAILED, "the worker has no command")
    };
    let err = std::process::Command::new(prog).args(args).exec();
    let shown = prog.to_string_lossy();
    match err.kind() {
        io::ErrorKind::NotFound => fail(
            127,
            &format!(
                "the agent's command {shown:?} was not found in the image (PATH={})",
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
        io::ErrorKind::PermissionDenied => fail(
            126,
            &format!("the agent's command {shown:?} is not executable by uid {}", uid()),
        ),
        _ => fail(
            126,
            &format!(
                "the agent's command {shown:?} could not be started: {err} (an image built for another platform?)"
            ),
        ),
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
    fn getuid() -> u32;
    fn fork() -> i32;
    fn dup2(old: i32, new: i32) -> i32;
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { getuid() }
}

fn keeper_pid_file() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/home/worker".into());
    PathBuf::from(home).join(".orchestrator/keeper.pid")
}

fn keep() -> ! {
    let f = keeper_pid_file();
    if let Some(d) = f.parent() {
        let _ = fs::create_dir_all(d);
    }
    let _ = fs::write(&f, format!("{}\n", std::process::id()));
    // SIGTERM from docker-init (Docker's `init`) ends the keeper by its
    // default action, which is what stopping a session container means.
    loop {
        std::thread::park();
    }
}

/// The parent pid in a `/proc/<pid>/stat` line.
pub fn stat_ppid(stat: &str) -> Option<i32> {
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn kill_all(sig: &str) -> ! {
    let signo = match sig {
        "TERM" => 15,
        "KILL" => 9,
        "0" => 0,
        other => fail(2, &format!("unknown signal {other:?}")),
    };
    let keeper: i32 = fs::read_to_string(keeper_pid_file())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1);
    let me = std::process::id() as i32;
    let mut n = 0;
    if let Ok(dir) = fs::read_dir("/proc") {
        for d in dir.flatten() {
            let Some(pid) = d.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == 1 || pid == keeper || pid == me {
                continue;
            }
            let Ok(stat) = fs::read_to_string(d.path().join("stat")) else {
                continue;
            };
            if stat_ppid(&stat) == Some(keeper) {
                continue;
            }
            // SAFETY: kill takes plain integers; a vanished pid is an error
            // return, not undefined behaviour.
            if unsafe { kill(pid, signo) } == 0 {
                n += 1;
            }
        }
    }
    println!("{n}");
    std::process::exit(0)
}

/// The placeholder of a conversation id in a resume argv.
pub const AGENT_SESSION: &str = "{agent_session}";

/// The conversation id in a record's bytes (`KIND ID`), if the record is of
/// agent kind `kind` and the id is acceptable (at most 128 characters of
/// `[A-Za-z0-9._:-]`; `-` for an agent that needs none).
pub fn record_id(bytes: &[u8], kind: &str) -> Option<String> {
    let s = std::str::from_utf8(bytes).ok()?.trim();
    let (k, id) = s.split_once(' ')?;
    let ok = k == kind
        && !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| id.to_string())
}

/// The argv of a session task: `rest` is `RECORD KIND N START(N) AT LEN RESUME...`.
pub fn turn_argv(rest: &[OsString], record: Option<&[u8]>) -> Result<Vec<OsString>, String> {
    let usage = "turn needs RECORD KIND N START(N) AT LEN RESUME...";
    let num = |i: usize| -> Result<usize, String> {
        rest.get(i)
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| usage.to_string())
    };
    let kind = rest.get(1).and_then(|k| k.to_str()).ok_or(usage)?;
    let n = num(2)?;
    let start = rest.get(3..3 + n).ok_or(usage)?;
    let (at, len) = (num(3 + n)?, num(4 + n)?);
    let resume = rest.get(5 + n..).ok_or(usage)?;
    Ok(match record.and_then(|r| record_id(r, kind)) {
        Some(id) => resume
            .iter()
            .enumerate()
            .map(|(i, a)| match a.to_str() {
                Some(s) if (at..at + len).contains(&i) => s.replace(AGENT_SESSION, &id).into(),
                _ => a.clone(),
            })
            .collect(),
        None => start.to_vec(),
    })
}

fn turn(rest: Vec<OsString>) -> ! {
    let record = rest.first().and_then(|p| fs::read(p).ok());
    match turn_argv(&rest, record.as_deref()) {
        Ok(argv) => exec(argv),
        Err(e) => fail(2, &e),
    }
}

/// The variable naming the forwarder's listen address and socket.
pub const EGRESS_ENV: &str = "WS_EGRESS_FORWARD";

/// Starts the egress forwarder when the container asks for one: binds its
/// listener here (so it listens before the agent starts), then forks; the
/// child serves it, the parent goes on to the agent. A fork of this small
/// process is cheaper than starting another (and needs no second exec).
fn start_forwarder() {
    let Some(spec) = std::env::var_os(EGRESS_ENV) else {
        return;
    };
    let spec = spec.to_string_lossy().into_owned();
    let parts: Vec<&str> = spec.split(' ').collect();
    if parts.len() != 2 {
        fail(FAILED, &format!("{EGRESS_ENV} must be \"LISTEN SOCKET\""));
    }
    // Close-on-exec (std's default): the agent never holds it.
    let listener = std::net::TcpListener::bind(parts[0]).unwrap_or_else(|e| {
        fail(
            FAILED,
            &format!("the egress forwarder could not listen on {}: {e}", parts[0]),
        )
    });
    // SAFETY: the shim has started no thread yet, so the child is a whole
    // copy of a single-threaded process; it only runs the accept loop.
    match unsafe { fork() } {
        -1 => fail(FAILED, "the egress forwarder could not start (fork failed)"),
        0 => {
            // The child never reads the delivery or writes output: both
            // point at /dev/null, so no later descriptor takes their numbers.
            if let Ok(null) = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                use std::os::unix::io::AsRawFd;
                // SAFETY: dup2 onto descriptors this process owns.
                unsafe {
                    dup2(null.as_raw_fd(), 0);
                    dup2(null.as_raw_fd(), 1);
                }
            }
            serve_forwarder(listener, PathBuf::from(parts[1]))
        }
        _ => drop(listener),
    }
}

/// The forwarder's accept loop: a thread per connection.
fn serve_forwarder(listener: std::net::TcpListener, socket: PathBuf) -> ! {
    for conn in listener.incoming() {
        let Ok(conn) = conn else {
            // Out of descriptors or threads: wait, never spin.
            std::thread::sleep(std::time::Duration::from_millis(50));
            continue;
        };
        let socket = socket.clone();
        let _ = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || relay(conn, &socket));
    }
    std::process::exit(0)
}

/// Relays one accepted connection to a new connection to `socket`.
fn relay(tcp: std::net::TcpStream, socket: &Path) {
    let Ok(unix) = std::os::unix::net::UnixStream::connect(socket) else {
        // The daemon is away (restarting): the worker sees a closed
        // connection and may try again.
        return;
    };
    let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = io::copy(&mut tcp_r, &mut unix_w);
            let _ = unix_w.shutdown(std::net::Shutdown::Write);
        });
    let (mut unix_r, mut tcp_w) = (unix, tcp);
    let _ = io::copy(&mut unix_r, &mut tcp_w);
    // The daemon's side ended (its answer is complete, or the daemon
    // died): the worker reads the end; what it still sends goes on until
    // it closes (or, with the daemon gone, fails).
    let _ = tcp_w.shutdown(std::net::Shutdown::Write);
    if let Ok(up) = up {
        let _ = up.join();
    }
}

#[allow(dead_code)]
fn main() {
    let mut args = std::env::args_os().skip(1);
    let env_file = PathBuf::from(args.next().unwrap_or_default());
    let mode = args.next().unwrap_or_default();
    let rest: Vec<OsString> = args.collect();
    if matches!(mode.to_str(), Some("run" | "pool" | "keep")) {
        start_forwarder();
    }
    match mode.to_str() {
        Some("run") => deliver_and_exec(&env_file, false, rest),
        Some("pool") => deliver_and_exec(&env_file, true, rest),
        Some("keep") => keep(),
        Some("kill") => kill_all(
            &rest
                .first()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        Some("turn") => turn(rest),
        _ => fail(
            2,
            "usage: ws-shim ENV_FILE run|pool|keep|kill|turn [ARGV...]",
        ),
    }
}
