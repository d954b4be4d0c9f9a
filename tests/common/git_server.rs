//! Real git servers for the tests: bare repositories made with `git init --bare`,
//! served by `git http-backend` (CGI, optional basic auth) or `git daemon` on 127.0.0.1.
//!
//! - [`BareRepo`] makes `NAME.git` in a temp dir with a first commit on `main`
//!   and reads refs, files and subjects back out of it.
//! - [`GitHttpServer`] is a small HTTP/1.1 server (a thread per connection,
//!   `Connection: close` after every response) that runs `git http-backend`
//!   for each request, with optional basic auth, and counts what it saw.
//! - [`GitDaemon`] runs `git daemon` as a child process, killed on drop.
//!
//! Every git run here has `GIT_CONFIG_NOSYSTEM=1` and a `HOME` of its own, so
//! the developer's configuration does not leak in. Setup failures panic with
//! a message; nothing waits without a timeout.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The git binary the tests run.
pub const GIT: &str = "/usr/local/bin/git";

/// How long a read from (or write to) a client socket may block.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest request line or header line accepted.
const MAX_LINE: usize = 64 * 1024;
/// Largest request body accepted (after de-chunking).
const MAX_BODY: usize = 512 * 1024 * 1024;

/// A `git` command with a clean configuration: `GIT_CONFIG_NOSYSTEM=1`,
/// `HOME` and `XDG_CONFIG_HOME` under `home`, no terminal prompts, and none
/// of the repository-selecting variables of the calling process.
#[allow(dead_code)]
pub fn git_command(home: &Path) -> Command {
    clean_command(Path::new(GIT), home)
}

/// `program` with the clean git environment of [`git_command`].
fn clean_command(program: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_CONFIG",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
        "GIT_CONFIG_COUNT",
        "GIT_CONFIG_PARAMETERS",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd`, panicking with its stderr when it cannot start or fails.
fn run_ok(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {GIT}: {e}"));
    if !out.status.success() {
        panic!(
            "{what}: {:?} failed ({}):\n{}{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A bare repository in a temp dir, with a first commit on `main` (files given), and helpers.
#[allow(dead_code)]
pub struct BareRepo {
    /// The temp dir holding `NAME.git` (serve it as a server's root).
    pub dir: tempfile::TempDir,
    /// The bare repository itself, `<dir>/NAME.git`.
    pub path: PathBuf,
    /// `HOME` for the git commands run on it.
    home: tempfile::TempDir,
}

#[allow(dead_code)]
impl BareRepo {
    /// `git init --bare NAME.git` in a fresh temp dir, then push one commit on `main`
    /// holding `files` (relative path, content) made in a scratch clone.
    pub fn new(name: &str, files: &[(&str, &str)]) -> BareRepo {
        let dir = tempfile::Builder::new()
            .prefix("bare-repo-")
            .tempdir()
            .expect("BareRepo: cannot make a temp dir");
        let home = tempfile::Builder::new()
            .prefix("git-home-")
            .tempdir()
            .expect("BareRepo: cannot make a temp HOME");
        let path = dir.path().join(format!("{name}.git"));

        let mut init = git_command(home.path());
        init.args(["-c", "init.defaultBranch=main", "init", "--quiet", "--bare"])
            .arg(&path);
        run_ok(init, "BareRepo: git init --bare");
        // Pushes over http are allowed by the servers' environment too; this
        // keeps the repository pushable behind any other http-backend.
        let mut cfg = git_command(home.path());
        cfg.arg("-C")
            .arg(&path)
            .args(["config", "http.receivepack", "true"]);
        run_ok(cfg, "BareRepo: git config http.receivepack");

        let scratch = tempfile::Builder::new()
            .prefix("bare-repo-work-")
            .tempdir()
            .expect("BareRepo: cannot make a scratch dir");
        let work = scratch.path().join("work");
        let mut clone = git_command(home.path());
        clone
            .args(["-c", "init.defaultBranch=main", "clone", "--quiet"])
            .arg(&path)
            .arg(&work);
        run_ok(clone, "BareRepo: git clone (scratch)");
        for (rel, content) in files {
            let file = work.join(rel);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)
                    .unwrap_or_else(|e| panic!("BareRepo: mkdir {}: {e}", parent.display()));
            }
            std::fs::write(&file, content)
                .unwrap_or_else(|e| panic!("BareRepo: write {}: {e}", file.display()));
        }
        let in_work = |args: &[&str]| {
            let mut cmd = git_command(home.path());
            cmd.arg("-C").arg(&work).args([
                "-c",
                "user.name=test",
                "-c",
                "user.email=test@example.invalid",
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgSign=false",
            ]);
            cmd.args(args);
            cmd
        };
        run_ok(
            in_work(&["checkout", "--quiet", "-B", "main"]),
            "BareRepo: git checkout -B main",
        );
        run_ok(in_work(&["add", "--all"]), "BareRepo: git add");
        run_ok(
            in_work(&["commit", "--quiet", "--allow-empty", "-m", "initial commit"]),
            "BareRepo: git commit",
        );
        run_ok(
            in_work(&["push", "--quiet", "origin", "HEAD:refs/heads/main"]),
            "BareRepo: git push main",
        );
        BareRepo { dir, path, home }
    }

    /// `file://` URL of it.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// A clean `git -C <path>` command on the bare repository.
    fn git(&self) -> Command {
        let mut cmd = git_command(self.home.path());
        cmd.arg("-C").arg(&self.path);
        cmd
    }

    /// The sha of `refname` (e.g. "main", "refs/heads/ws/x"), None if it does not exist.
    pub fn rev(&self, refname: &str) -> Option<String> {
        let out = self
            .git()
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("{refname}^{{commit}}"))
            .output()
            .unwrap_or_else(|e| panic!("BareRepo::rev: cannot run {GIT}: {e}"));
        if !out.status.success() {
            return None;
        }
        let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!sha.is_empty()).then_some(sha)
    }

    /// The content of `path` at `refname` (git show), None if absent.
    pub fn show(&self, refname: &str, path: &str) -> Option<String> {
        let out = self
            .git()
            .arg("show")
            .arg(format!("{refname}:{path}"))
            .output()
            .unwrap_or_else(|e| panic!("BareRepo::show: cannot run {GIT}: {e}"));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Subjects of the commits reachable from `refname` but not from `base` (newest first).
    pub fn log_subjects(&self, base: &str, refname: &str) -> Vec<String> {
        let mut cmd = self.git();
        cmd.args(["log", "--format=%s"])
            .arg(format!("{base}..{refname}"))
            .arg("--");
        let out = run_ok(cmd, "BareRepo::log_subjects");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A pseudo-random number (std only: a randomly keyed hasher over time and a counter).
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A random port in 20000..32000 (below the kernel's ephemeral range) that
/// nothing holds on 0.0.0.0 right now.
fn pick_port() -> u16 {
    for _ in 0..500 {
        let port = 20000 + (random_u64() % 12000) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..32000 after 500 tries");
}

/// Standard base64 (with padding) of `data`.
#[allow(dead_code)]
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Decodes standard base64 (padding optional, surrounding whitespace
/// ignored); None on any other character or a bad length.
#[allow(dead_code)]
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let text = text.trim().trim_end_matches('=').as_bytes();
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// `Basic <base64(user:password)>`, the value of an `Authorization` header.
#[allow(dead_code)]
pub fn basic_auth(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{password}").as_bytes())
    )
}

/// What the HTTP server's connection threads share.
struct HttpShared {
    root: PathBuf,
    home: PathBuf,
    auth: Option<(String, String)>,
    requests: AtomicU64,
    auth_failures: AtomicU64,
    authorizations: Mutex<Vec<String>>,
}

/// `git http-backend` behind a tiny HTTP/1.1 server (one thread per connection) on 127.0.0.1:<free port>,
/// serving every bare repository under `root` (`GIT_PROJECT_ROOT`, `GIT_HTTP_EXPORT_ALL=1`, receive-pack
/// enabled through `GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_0=http.receivepack`/`GIT_CONFIG_VALUE_0=true`).
/// With `auth = Some((user, password))`, every request without the matching `Authorization: Basic ...`
/// gets `401` with `WWW-Authenticate: Basic realm="git"`; it counts requests and auth failures.
/// Drop stops accepting (connections already accepted finish on their own).
#[allow(dead_code)]
pub struct GitHttpServer {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    shared: Arc<HttpShared>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
    _home: tempfile::TempDir,
}

#[allow(dead_code)]
impl GitHttpServer {
    /// Starts serving the bare repositories under `root`, with basic auth when `auth` is given.
    pub fn start(root: &Path, auth: Option<(&str, &str)>) -> GitHttpServer {
        let root = root
            .canonicalize()
            .unwrap_or_else(|e| panic!("GitHttpServer: root {}: {e}", root.display()));
        let home = tempfile::Builder::new()
            .prefix("git-http-home-")
            .tempdir()
            .expect("GitHttpServer: cannot make a temp HOME");
        let listener = (0..50)
            .find_map(|_| TcpListener::bind(("127.0.0.1", pick_port())).ok())
            .expect("GitHttpServer: cannot bind 127.0.0.1 on a port in 20000..32000");
        let addr = listener
            .local_addr()
            .expect("GitHttpServer: listener has no address");
        let shared = Arc::new(HttpShared {
            root,
            home: home.path().to_path_buf(),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            requests: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            authorizations: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("git-http-{}", addr.port()))
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = conn else {
                            // E.g. out of file descriptors: do not spin.
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        };
                        let shared = Arc::clone(&shared);
                        let _ = std::thread::Builder::new()
                            .name("git-http-conn".into())
                            .spawn(move || serve_connection(stream, &shared));
                    }
                })
                .expect("GitHttpServer: cannot spawn the accept thread")
        };
        GitHttpServer {
            addr,
            shared,
            stop,
            accept_thread: Some(accept_thread),
            _home: home,
        }
    }

    /// `http://127.0.0.1:PORT/<name>.git` for a repository below root.
    pub fn url(&self, repo_file_name: &str) -> String {
        format!(
            "http://{}/{}",
            self.addr,
            repo_file_name.trim_start_matches('/')
        )
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// How many requests were refused for authentication.
    pub fn auth_failures(&self) -> u64 {
        self.shared.auth_failures.load(Ordering::SeqCst)
    }

    /// Every Authorization header value seen (to check what credentials arrived).
    pub fn seen_authorizations(&self) -> Vec<String> {
        self.shared
            .authorizations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept(); the loop sees the flag and ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
    }
}

/// One parsed request head.
struct RequestHead {
    method: String,
    target: String,
    /// Header names lower-cased, in order.
    headers: Vec<(String, String)>,
}

impl RequestHead {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one CRLF (or LF) terminated line, without the terminator; None at EOF.
fn read_line(reader: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if !buf.ends_with(b"\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "line too long or truncated",
        ));
    }
    buf.pop();
    if buf.ends_with(b"\r") {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn invalid(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn read_head(reader: &mut impl BufRead) -> std::io::Result<Option<RequestHead>> {
    let Some(line) = read_line(reader)? else {
        return Ok(None);
    };
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(invalid("bad request line"));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or_else(|| invalid("eof in headers"))?;
        if line.is_empty() {
            break;
        }
        if headers.len() > 200 {
            return Err(invalid("too many headers"));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| invalid("bad header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Some(RequestHead {
        method,
        target,
        headers,
    }))
}

/// Reads the request body: de-chunked for `Transfer-Encoding: chunked`,
/// exactly `Content-Length` bytes otherwise, None when there is neither.
fn read_body(reader: &mut impl BufRead, head: &RequestHead) -> std::io::Result<Option<Vec<u8>>> {
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let line = read_line(reader)?.ok_or_else(|| invalid("eof in chunk size"))?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size_hex, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                while !read_line(reader)?
                    .ok_or_else(|| invalid("eof in trailers"))?
                    .is_empty()
                {}
                return Ok(Some(body));
            }
            if body.len() + size > MAX_BODY {
                return Err(invalid("body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            if !read_line(reader)?
                .ok_or_else(|| invalid("eof after chunk"))?
                .is_empty()
            {
                return Err(invalid("no CRLF after chunk"));
            }
        }
    }
    match head.header("content-length") {
        None => Ok(None),
        Some(len) => {
            let len: usize = len.parse().map_err(|_| invalid("bad content-length"))?;
            if len > MAX_BODY {
                return Err(invalid("body too large"));
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body)?;
            Ok(Some(body))
        }
    }
}

/// Reads and discards what the client still sends (so closing does not
/// reset the connection before it read the response), briefly.
fn linger(stream: &mut TcpStream) {
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sink = [0u8; 8192];
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

fn simple_response(stream: &mut TcpStream, status: &str, extra_headers: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\n{extra_headers}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Serves one request on `stream`, then closes it.
fn serve_connection(mut stream: TcpStream, shared: &HttpShared) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let peer = stream
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into());
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let head = match read_head(&mut reader) {
        Ok(Some(head)) => head,
        // A connection with no request (e.g. Drop's wake-up connect).
        Ok(None) => return,
        Err(_) => {
            simple_response(&mut stream, "400 Bad Request", "", "bad request\n");
            linger(&mut stream);
            return;
        }
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);

    let authorization = head.header("authorization").map(str::to_string);
    if let Some(value) = &authorization {
        shared
            .authorizations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(value.clone());
    }
    let mut remote_user = None;
    if let Some((user, password)) = &shared.auth {
        let given = authorization.as_deref().and_then(|v| {
            let (scheme, creds) = v.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            String::from_utf8(base64_decode(creds)?).ok()
        });
        if given.as_deref() != Some(format!("{user}:{password}").as_str()) {
            shared.auth_failures.fetch_add(1, Ordering::SeqCst);
            simple_response(
                &mut stream,
                "401 Unauthorized",
                "WWW-Authenticate: Basic realm=\"git\"\r\n",
                "authentication required\n",
            );
            linger(&mut stream);
            return;
        }
        remote_user = Some(user.clone());
    }

    if head
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let body = match read_body(&mut reader, &head) {
        Ok(body) => body,
        Err(e) => {
            simple_response(&mut stream, "400 Bad Request", "", &format!("{e}\n"));
            linger(&mut stream);
            return;
        }
    };

    run_cgi(
        &mut stream,
        shared,
        &head,
        body,
        &peer,
        remote_user.as_deref(),
    );
    linger(&mut stream);
}

/// Runs `git http-backend` for one request and streams its answer to `stream`.
fn run_cgi(
    stream: &mut TcpStream,
    shared: &HttpShared,
    head: &RequestHead,
    body: Option<Vec<u8>>,
    peer: &str,
    remote_user: Option<&str>,
) {
    let (path, query) = head
        .target
        .split_once('?')
        .unwrap_or((head.target.as_str(), ""));
    let mut cmd = Command::new(GIT);
    cmd.arg("http-backend")
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("HOME", &shared.home)
        .env("XDG_CONFIG_HOME", shared.home.join(".config"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "http.receivepack")
        .env("GIT_CONFIG_VALUE_0", "true")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("SERVER_SOFTWARE", "git-server-test")
        .env("REQUEST_METHOD", &head.method)
        .env("REQUEST_URI", &head.target)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", peer)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ct) = head.header("content-type") {
        cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(body) = &body {
        cmd.env("CONTENT_LENGTH", body.len().to_string());
    }
    if let Some(user) = remote_user {
        cmd.env("REMOTE_USER", user).env("AUTH_TYPE", "Basic");
    }
    // The other request headers as HTTP_*: Content-Encoding (gzip, which
    // http-backend decodes itself), Git-Protocol (protocol v2), ...
    for (name, value) in &head.headers {
        if matches!(
            name.as_str(),
            "authorization" | "content-type" | "content-length" | "transfer-encoding" | "proxy"
        ) {
            continue;
        }
        let var: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        cmd.env(format!("HTTP_{var}"), value);
    }

    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            simple_response(
                stream,
                "500 Internal Server Error",
                "",
                &format!("cannot run git http-backend: {e}\n"),
            );
            return;
        }
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || {
        if let Some(body) = body {
            let _ = stdin.write_all(&body);
        }
        // Dropping stdin closes it: http-backend sees the end of the body.
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));

    // CGI headers up to the blank line.
    let mut status = "200 OK".to_string();
    let mut headers = String::new();
    let mut ok = true;
    loop {
        match read_line(&mut stdout) {
            Ok(Some(line)) if line.is_empty() => break,
            Ok(Some(line)) => match line.split_once(':') {
                Some((name, value)) if name.trim().eq_ignore_ascii_case("status") => {
                    status = value.trim().to_string();
                }
                Some((name, _)) if name.trim().eq_ignore_ascii_case("connection") => {}
                Some(_) => {
                    headers.push_str(&line);
                    headers.push_str("\r\n");
                }
                None => {}
            },
            Ok(None) | Err(_) => {
                ok = false;
                break;
            }
        }
    }
    if ok {
        if !status.contains(' ') {
            status.push_str(" Status");
        }
        let head_ok = write!(
            stream,
            "HTTP/1.1 {status}\r\n{headers}Connection: close\r\n\r\n"
        )
        .is_ok();
        if head_ok {
            let _ = std::io::copy(&mut stdout, stream);
        }
    } else {
        simple_response(
            stream,
            "502 Bad Gateway",
            "",
            "git http-backend gave no CGI header block\n",
        );
    }
    drop(stdout);
    let _ = writer.join();
    let status = child.wait();
    let err = err_reader.join().unwrap_or_default();
    let failed = !status.as_ref().is_ok_and(|s| s.success());
    if failed || !err.is_empty() {
        eprintln!(
            "git http-backend {} {} ({:?}): {}",
            head.method,
            head.target,
            status,
            String::from_utf8_lossy(&err).trim_end()
        );
    }
}

/// `git daemon --reuseaddr --base-path=ROOT --export-all --enable=receive-pack --listen=127.0.0.1 --port=P ROOT`
/// as a child process, killed on drop; start waits until the port accepts connections (up to 10 s).
#[allow(dead_code)]
pub struct GitDaemon {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    child: Child,
    _home: tempfile::TempDir,
}

#[allow(dead_code)]
impl GitDaemon {
    /// Starts `git daemon` serving the bare repositories under `root`.
    pub fn start(root: &Path) -> GitDaemon {
        let root = root
            .canonicalize()
            .unwrap_or_else(|e| panic!("GitDaemon: root {}: {e}", root.display()));
        let home = tempfile::Builder::new()
            .prefix("git-daemon-home-")
            .tempdir()
            .expect("GitDaemon: cannot make a temp HOME");
        let log = home.path().join("daemon.log");
        // `git daemon` is a dashed external: the `git` wrapper runs
        // `git-daemon` as its child and a SIGKILL to the wrapper (all that
        // Child::kill sends) would orphan it, still listening. So run
        // `git-daemon` itself, found with `git --exec-path`.
        let exec_path = {
            let mut cmd = git_command(home.path());
            cmd.arg("--exec-path");
            let out = run_ok(cmd, "GitDaemon: git --exec-path");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        };
        let daemon_bin = exec_path.join("git-daemon");
        assert!(
            daemon_bin.is_file(),
            "GitDaemon: {} does not exist",
            daemon_bin.display()
        );
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let port = pick_port();
            let log_file = std::fs::File::create(&log)
                .unwrap_or_else(|e| panic!("GitDaemon: create {}: {e}", log.display()));
            let mut cmd = clean_command(&daemon_bin, home.path());
            cmd.arg("--reuseaddr")
                .arg(format!("--base-path={}", root.display()))
                .arg("--export-all")
                .arg("--enable=receive-pack")
                .arg("--listen=127.0.0.1")
                .arg(format!("--port={port}"))
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(log_file);
            let mut child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("GitDaemon: cannot run {GIT} daemon: {e}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "git daemon on port {port} exited ({status}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default().trim_end()
                    );
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return GitDaemon {
                        port,
                        child,
                        _home: home,
                    };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "GitDaemon: port {port} did not accept connections within 10 s: {}",
                        std::fs::read_to_string(&log).unwrap_or_default().trim_end()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("GitDaemon: could not start: {last_error}");
    }

    /// `git://127.0.0.1:PORT/<name>.git`
    pub fn url(&self, repo_file_name: &str) -> String {
        format!(
            "git://127.0.0.1:{}/{}",
            self.port,
            repo_file_name.trim_start_matches('/')
        )
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
