//! Shared harness for integration tests that drive the REAL daemon binary
//! against the private redis-server and the real Docker engine set up by
//! `scripts/test-env.sh`.
//!
//! - [`Daemon`] starts `workers-spawner serve` as a child process with a
//!   stream prefix of its own (`wstest-<name>-<random>`), waits for
//!   `/healthz`, captures stderr to a file (its tail is printed when a test
//!   panics), and on drop kills it and force-removes its containers.
//! - Redis helpers publish spawn / control entries and read results,
//!   events and dead letters of a prefix.
//! - Docker helpers (bollard) list, count and remove the containers that
//!   carry a prefix's label.
//!
//! - [`git_server`]: bare repositories served by `git http-backend` (basic
//!   auth optional) and `git daemon` on 127.0.0.1.
//!
//! Nothing here skips: without `WS_TEST_REDIS_URL` or a reachable Docker
//! engine the tests fail with a message saying so.
#![allow(dead_code)]

pub mod git_server;
pub mod s3_server;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bollard::models::ContainerSummary;
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde_json::Value;

/// Label that carries the stream prefix of the setup owning a container.
pub const PREFIX_LABEL: &str = "io.workers-spawner.stream-prefix";
/// Label on every container the daemon manages.
pub const MANAGED_LABEL: &str = "io.workers-spawner.managed";

/// Repository root (where `tests/fixtures`, `skills`, `templates` live).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture presets directory.
pub fn fixture_presets() -> PathBuf {
    repo_root().join("tests/fixtures/presets")
}

/// `WS_TEST_REDIS_URL`; panics (the test FAILS) when it is unset.
pub fn redis_url() -> String {
    match std::env::var("WS_TEST_REDIS_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "WS_TEST_REDIS_URL is not set: source scripts/test-env.sh (or run scripts/test.sh) \
             to start the private redis-server these tests need"
        ),
    }
}

/// `WS_TEST_IMAGE`, default `ws-test-busybox:latest`.
pub fn test_image() -> String {
    std::env::var("WS_TEST_IMAGE").unwrap_or_else(|_| "ws-test-busybox:latest".into())
}

/// A short random hex string.
pub fn random_suffix() -> String {
    use rand::Rng;
    let n: u32 = rand::rng().random();
    format!("{n:08x}")
}

/// A fresh prefix `wstest-<name>-<random>` (valid as a stream prefix and
/// matched by scripts/test.sh's leftover cleanup).
pub fn unique_prefix(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("wstest-{clean}-{}", random_suffix())
}

/// A request id unique to this run, `<tag>-<random>`.
pub fn unique_request_id(tag: &str) -> String {
    format!("{tag}-{}", random_suffix())
}

/// A port free on every address, below the kernel's ephemeral range
/// (32768-60999): a port from that range can be taken meanwhile as the source
/// port of an outgoing connection (one from the workers' bridge address once
/// broke a daemon's gateway bind), one below it only by another listener.
pub fn free_port() -> u16 {
    use rand::Rng;
    loop {
        let port = rand::rng().random_range(20000..32000);
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    /// Test name, part of the prefix.
    pub name: String,
    /// Use exactly this prefix (e.g. to restart a daemon on the same setup).
    pub prefix: Option<String>,
    /// Presets directory (default: tests/fixtures/presets).
    pub presets_dir: Option<PathBuf>,
    /// Skills directory (default: <repo>/skills).
    pub skills_dir: Option<PathBuf>,
    /// Templates directory (default: <repo>/templates).
    pub templates_dir: Option<PathBuf>,
    /// `--instance-id` (default: derived from the prefix).
    pub instance_id: Option<String>,
    /// `--max-concurrent`.
    pub max_concurrent: usize,
    /// Extra command-line args after `serve`'s settings.
    pub args: Vec<String>,
    /// Extra environment (e.g. `WS_TEST_SECRET`, `WORKERS_SPAWNER_STOP_GRACE`).
    pub env: Vec<(String, String)>,
    /// How long to wait for `/healthz`.
    pub ready_timeout: Duration,
    /// Redis to use instead of `WS_TEST_REDIS_URL`.
    pub redis_url: Option<String>,
    /// A command the daemon runs under (e.g. `nsenter --net=... --`).
    pub wrapper: Vec<String>,
    /// Address its HTTP endpoints bind (default 127.0.0.1).
    pub http_host: Option<String>,
}

impl DaemonOpts {
    /// Defaults for a test called `name`.
    pub fn new(name: &str) -> Self {
        DaemonOpts {
            name: name.to_string(),
            prefix: None,
            presets_dir: None,
            skills_dir: None,
            templates_dir: None,
            instance_id: None,
            max_concurrent: 4,
            args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            redis_url: None,
            wrapper: Vec::new(),
            http_host: None,
        }
    }

    /// Runs the daemon in network namespace `netns` (a second host's),
    /// its HTTP endpoints on `addr` there.
    pub fn in_netns(mut self, netns: &str, addr: &str) -> Self {
        self.wrapper = vec!["nsenter".into(), format!("--net={netns}"), "--".into()];
        self.http_host = Some(addr.to_string());
        self
    }

    /// Sets an environment variable of the daemon.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Sets a `WORKERS_SPAWNER_<NAME>` setting through the environment.
    pub fn setting(self, name: &str, v: &str) -> Self {
        let key = format!("WORKERS_SPAWNER_{}", name.to_ascii_uppercase());
        self.env(&key, v)
    }

    /// Adds command-line args.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    /// `--max-concurrent`.
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    /// `--presets-dir`.
    pub fn presets_dir(mut self, p: impl Into<PathBuf>) -> Self {
        self.presets_dir = Some(p.into());
        self
    }

    /// Use this exact prefix.
    pub fn prefix(mut self, p: &str) -> Self {
        self.prefix = Some(p.to_string());
        self
    }

    /// `--instance-id`.
    pub fn redis_url(mut self, url: &str) -> Self {
        self.redis_url = Some(url.to_string());
        self
    }

    pub fn instance_id(mut self, id: &str) -> Self {
        self.instance_id = Some(id.to_string());
        self
    }
}

/// A running `workers-spawner serve` child process.
pub struct Daemon {
    child: Option<Child>,
    /// Its stream prefix.
    pub prefix: String,
    /// Its instance id.
    pub instance_id: String,
    /// `127.0.0.1:<port>` of its HTTP endpoints.
    pub http_addr: String,
    /// Port of its gateway (its own, so parallel daemons do not collide).
    pub gateway_port: u16,
    /// Its artifact store's folder.
    pub artifacts_dir: PathBuf,
    /// Address of its HTTP API (docs/api.md).
    pub api_addr: String,
    /// File holding its stderr.
    pub stderr_path: PathBuf,
    _logdir: tempfile::TempDir,
    /// Whether Drop should force-remove the prefix's containers.
    pub cleanup_on_drop: bool,
}

/// Path of the daemon binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_workers-spawner")
}

impl Daemon {
    /// Starts the daemon and waits until `/healthz` answers; panics (with
    /// its stderr) when it exits or does not come up in time.
    pub fn start(opts: DaemonOpts) -> Daemon {
        let redis = opts.redis_url.clone().unwrap_or_else(redis_url);
        let prefix = opts
            .prefix
            .clone()
            .unwrap_or_else(|| unique_prefix(&opts.name));
        let instance_id = opts
            .instance_id
            .clone()
            .unwrap_or_else(|| format!("inst-{}", random_suffix()));
        let http_addr = format!(
            "{}:{}",
            opts.http_host.as_deref().unwrap_or("127.0.0.1"),
            free_port()
        );
        let logdir = tempfile::Builder::new()
            .prefix("ws-daemon-log.")
            .tempdir()
            .expect("log dir");
        let stderr_path = logdir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let root = repo_root();
        let mut cmd = match opts.wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.current_dir(&root)
            .arg("--redis-url")
            .arg(&redis)
            .arg("--stream-prefix")
            .arg(&prefix)
            .arg("--presets-dir")
            .arg(opts.presets_dir.clone().unwrap_or_else(fixture_presets))
            .arg("--skills-dir")
            .arg(
                opts.skills_dir
                    .clone()
                    .unwrap_or_else(|| root.join("skills")),
            )
            .arg("--templates-dir")
            .arg(
                opts.templates_dir
                    .clone()
                    .unwrap_or_else(|| root.join("templates")),
            )
            .arg("--http-addr")
            .arg(&http_addr)
            .arg("--instance-id")
            .arg(&instance_id)
            .arg("--max-concurrent")
            .arg(opts.max_concurrent.to_string())
            .args(&opts.args)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        // Hermetic: no setting leaks in from the developer's shell.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WORKERS_SPAWNER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("WORKERS_SPAWNER_BLOCK", "1s");
        // Its own artifact store and repository cache (the defaults are
        // system folders).
        let artifacts_dir = logdir.path().join("artifacts");
        cmd.env("WORKERS_SPAWNER_ARTIFACTS_DIR", &artifacts_dir);
        cmd.env(
            "WORKERS_SPAWNER_REPO_CACHE_DIR",
            logdir.path().join("repos"),
        );
        // Daemons of parallel tests share the workers' bridges: one gateway port each.
        let gateway_port = free_port();
        cmd.env("WORKERS_SPAWNER_GATEWAY_PORT", gateway_port.to_string());
        // Loopback (in a second host's netns, its own): no tokens needed.
        let api_addr = format!("127.0.0.1:{}", free_port());
        cmd.env("WORKERS_SPAWNER_API_ADDR", &api_addr);
        // The fixture presets read WS_TEST_SECRET; give every daemon one.
        cmd.env(
            "WS_TEST_SECRET",
            format!("default-test-secret-{}", random_suffix()),
        );
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut gateway_port = gateway_port;
        let mut artifacts_dir = artifacts_dir;
        let mut api_addr = api_addr;
        for (k, v) in &opts.env {
            if k == "WORKERS_SPAWNER_API_ADDR" {
                api_addr = v.clone();
            }
            cmd.env(k, v);
            if k == "WORKERS_SPAWNER_GATEWAY_PORT" {
                gateway_port = v.parse().unwrap_or(gateway_port);
            }
            if k == "WORKERS_SPAWNER_ARTIFACTS_DIR" {
                artifacts_dir = PathBuf::from(v);
            }
        }
        let child = cmd.spawn().expect("spawn the workers-spawner binary");
        let mut d = Daemon {
            child: Some(child),
            prefix,
            instance_id,
            http_addr,
            gateway_port,
            api_addr,
            artifacts_dir,
            stderr_path,
            _logdir: logdir,
            cleanup_on_drop: true,
        };
        d.wait_healthy(opts.ready_timeout);
        d
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the daemon exited during start-up with {status}; stderr:\n{}",
                    self.stderr_tail(60)
                );
            }
            if let Some((200, _)) = http_get(&self.http_addr, "/healthz") {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the daemon did not answer /healthz within {timeout:?}; stderr:\n{}",
                    self.stderr_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `GET path` on the daemon's HTTP address: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.http_addr, path)
    }

    /// The whole stderr captured so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last `n` lines of stderr.
    pub fn stderr_tail(&self, n: usize) -> String {
        let s = self.stderr();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to `timeout`, then SIGKILL); returns the exit
    /// status, `None` if it had to be killed.
    pub fn terminate_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait up to 15 s.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.terminate_within(Duration::from_secs(15))
    }

    /// Whether the child still runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- daemon {} stderr (last 80 lines) ----\n{}\n---- end of daemon stderr ----",
                self.prefix,
                self.stderr_tail(80)
            );
        }
        self.kill();
        // A killed daemon's gateway rules would stop matching within a
        // minute and be swept by the next daemon; the suite leaves the
        // firewall chain as it found it now (the daemon's own code).
        workers_spawner::adapters::firewall::remove_rules_of(&self.prefix, &self.instance_id);
        if self.cleanup_on_drop {
            let prefix = self.prefix.clone();
            // Drop may run inside a tokio runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(async {
                        tokio::time::timeout(Duration::from_secs(30), async {
                            cleanup_containers(&prefix).await;
                            cleanup_volumes(&prefix).await;
                        })
                        .await
                    });
                }
            })
            .join();
        }
    }
}

/// A minimal HTTP/1.0 GET (no client dependency needed): (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Some((status, body.to_string()))
}

// ---------------------------------------------------------------- Redis

/// Stream names of a prefix.
pub struct Streams {
    /// `<prefix>:spawn`
    pub spawn: String,
    /// `<prefix>:result`
    pub result: String,
    /// `<prefix>:events`
    pub events: String,
    /// `<prefix>:control`
    pub control: String,
    /// `<prefix>:spawn:dead`
    pub dead: String,
}

/// The stream names of `prefix` (PROTOCOL.md section 1).
pub fn streams(prefix: &str) -> Streams {
    Streams {
        spawn: format!("{prefix}:spawn"),
        result: format!("{prefix}:result"),
        events: format!("{prefix}:events"),
        control: format!("{prefix}:control"),
        dead: format!("{prefix}:spawn:dead"),
    }
}

/// A new connection to the test Redis.
pub async fn redis_conn() -> MultiplexedConnection {
    let client = redis::Client::open(redis_url()).expect("WS_TEST_REDIS_URL is a Redis URL");
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test Redis at {}: {e}", redis_url()))
}

/// XADD of a spawn request (`data` = `json`); returns the entry id.
pub async fn publish_spawn(prefix: &str, json: &Value) -> String {
    publish_raw(prefix, json.to_string().as_bytes()).await
}

/// XADD of arbitrary bytes as `data` (invalid UTF-8, huge payloads...).
pub async fn publish_raw(prefix: &str, data: &[u8]) -> String {
    publish_fields(prefix, &[("data", data)]).await
}

/// XADD of arbitrary fields to the spawn stream (e.g. no `data` at all).
pub async fn publish_fields(prefix: &str, fields: &[(&str, &[u8])]) -> String {
    let mut c = redis_conn().await;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(streams(prefix).spawn).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(&mut c).await.expect("XADD spawn")
}

/// XADD of a control command.
pub async fn publish_control(prefix: &str, json: &Value) -> String {
    let mut c = redis_conn().await;
    redis::cmd("XADD")
        .arg(streams(prefix).control)
        .arg("*")
        .arg("data")
        .arg(json.to_string())
        .query_async(&mut c)
        .await
        .expect("XADD control")
}

/// A spawn request for `preset` with `prompt`.
pub fn spawn_request(request_id: &str, preset: &str, prompt: &str) -> Value {
    serde_json::json!({
        "request_id": request_id,
        "worker_config_id": preset,
        "task": { "prompt": prompt, "user_id": "test-user" },
    })
}

fn entry_json(id: &redis::streams::StreamId) -> Option<Value> {
    let data: Vec<u8> = id.get("data")?;
    serde_json::from_slice(&data).ok()
}

/// Every entry of `stream` parsed as JSON (entries whose `data` is not
/// JSON are skipped), oldest first.
pub async fn stream_json(stream: &str) -> Vec<Value> {
    let mut c = redis_conn().await;
    let r: StreamRangeReply = c.xrange_all(stream).await.expect("XRANGE");
    r.ids.iter().filter_map(entry_json).collect()
}

/// Every result of the prefix, oldest first.
pub async fn all_results(prefix: &str) -> Vec<Value> {
    stream_json(&streams(prefix).result).await
}

/// Results of one request (there must be at most one).
pub async fn results_for(prefix: &str, request_id: &str) -> Vec<Value> {
    all_results(prefix)
        .await
        .into_iter()
        .filter(|v| v["request_id"] == request_id)
        .collect()
}

/// Events of one request, in stream order.
pub async fn events_for(prefix: &str, request_id: &str) -> Vec<Value> {
    stream_json(&streams(prefix).events)
        .await
        .into_iter()
        .filter(|v| v["request_id"] == request_id)
        .collect()
}

/// Every dead letter of the prefix, oldest first.
pub async fn dead_letters(prefix: &str) -> Vec<Value> {
    stream_json(&streams(prefix).dead).await
}

/// Waits (XREAD BLOCK) for the result of `request_id`; panics after `timeout`.
pub async fn wait_result(prefix: &str, request_id: &str, timeout: Duration) -> Value {
    match try_wait_result(prefix, request_id, timeout).await {
        Some(v) => v,
        None => panic!("no result for {request_id} on {prefix}:result within {timeout:?}"),
    }
}

/// Waits (XREAD BLOCK) for the result of `request_id`; `None` after `timeout`.
pub async fn try_wait_result(prefix: &str, request_id: &str, timeout: Duration) -> Option<Value> {
    let stream = streams(prefix).result;
    let mut c = redis_conn().await;
    let deadline = Instant::now() + timeout;
    let mut last = "0-0".to_string();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let block = left.min(Duration::from_millis(500)).as_millis().max(1) as usize;
        let opts = StreamReadOptions::default().block(block).count(1000);
        let r: Option<StreamReadReply> = c
            .xread_options(&[&stream], &[&last], &opts)
            .await
            .expect("XREAD result");
        for key in r.map(|r| r.keys).unwrap_or_default() {
            for id in key.ids {
                last = id.id.clone();
                if let Some(v) = entry_json(&id) {
                    if v["request_id"] == request_id {
                        return Some(v);
                    }
                }
            }
        }
    }
}

/// Waits until `pred` holds for the dead letters of `prefix`; returns the
/// first matching one.
pub async fn wait_dead_letter(
    prefix: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = dead_letters(prefix).await.into_iter().find(|v| pred(v)) {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "no matching dead letter on {prefix}:spawn:dead within {timeout:?}; have: {:#?}",
                dead_letters(prefix).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pending entries of the spawn stream's consumer group.
pub async fn pending_count(prefix: &str) -> u64 {
    let mut c = redis_conn().await;
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(streams(prefix).spawn)
        .arg("workers-spawner")
        .query_async(&mut c)
        .await
        .unwrap_or(redis::Value::Nil);
    match v {
        redis::Value::Array(a) => match a.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    }
}

// ---------------------------------------------------------------- Docker

/// A bollard client; panics (the test FAILS) when Docker is unreachable.
pub async fn docker() -> Docker {
    let d = Docker::connect_with_local_defaults()
        .unwrap_or_else(|e| panic!("Docker is not reachable: {e}"));
    d.ping()
        .await
        .unwrap_or_else(|e| panic!("Docker is not reachable: {e}"));
    d
}

/// Every container (running or not) labelled with `prefix`.
pub async fn containers(prefix: &str) -> Vec<ContainerSummary> {
    let d = docker().await;
    list_prefix(&d, prefix).await
}

/// Like [`containers`] with a client at hand (for tight polling loops).
pub async fn list_prefix(d: &Docker, prefix: &str) -> Vec<ContainerSummary> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("{PREFIX_LABEL}={prefix}")],
    );
    let opts = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    d.list_containers(Some(opts))
        .await
        .expect("listing containers")
}

/// Names of a container summary, without the leading `/`.
pub fn summary_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default()
}

/// How many containers of `prefix` exist (any state).
pub async fn container_count(prefix: &str) -> usize {
    containers(prefix).await.len()
}

/// How many containers of `prefix` are running.
pub async fn running_count(prefix: &str) -> usize {
    containers(prefix)
        .await
        .iter()
        .filter(|c| c.state.as_ref().map(|s| s.to_string()).as_deref() == Some("running"))
        .count()
}

/// Whether a container with this name or id exists.
pub async fn container_exists(name: &str) -> bool {
    let d = docker().await;
    match d
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
    {
        Ok(_) => true,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => false,
        Err(e) => panic!("inspecting {name}: {e}"),
    }
}

/// Force-removes every container of `prefix`; returns the names it removed.
pub async fn cleanup_containers(prefix: &str) -> Vec<String> {
    let d = docker().await;
    let mut removed = Vec::new();
    for c in list_prefix(&d, prefix).await {
        let Some(id) = c.id.clone() else { continue };
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let _ = d.remove_container(&id, Some(opts)).await;
        removed.push(summary_name(&c));
    }
    removed
}

/// The managed volumes of `prefix` (session volumes): (name, labels).
pub async fn volumes(prefix: &str) -> Vec<(String, HashMap<String, String>)> {
    let d = docker().await;
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![
            "io.workers-spawner.managed=true".to_string(),
            format!("io.workers-spawner.stream-prefix={prefix}"),
        ],
    );
    let opts = bollard::query_parameters::ListVolumesOptions {
        filters: Some(filters),
    };
    d.list_volumes(Some(opts))
        .await
        .ok()
        .and_then(|r| r.volumes)
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.name, v.labels))
        .collect()
}

/// Removes every managed volume of `prefix` (after its containers are
/// gone); returns the names it removed.
pub async fn cleanup_volumes(prefix: &str) -> Vec<String> {
    let d = docker().await;
    let mut removed = Vec::new();
    for (name, _) in volumes(prefix).await {
        let _ = d
            .remove_volume(
                &name,
                Some(bollard::query_parameters::RemoveVolumeOptions { force: true }),
            )
            .await;
        removed.push(name);
    }
    removed
}

/// Asserts that no container of `prefix` remains (removing any that do),
/// then removes the session volumes the test's sessions kept.
pub async fn assert_no_containers(prefix: &str) {
    // The daemon removes a container right after publishing its result;
    // allow that last step a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while container_count(prefix).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = cleanup_containers(prefix).await;
    cleanup_volumes(prefix).await;
    assert!(
        left.is_empty(),
        "containers of {prefix} were left behind: {left:?}"
    );
}

/// Writes `presets` (id -> JSON) plus copies of the fixture presets into a
/// fresh temp dir, for tests that need presets of their own.
pub fn presets_dir_with(extra: &[(&str, Value)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ws-presets.")
        .tempdir()
        .expect("temp presets dir");
    for e in std::fs::read_dir(fixture_presets()).expect("fixture presets") {
        let p = e.expect("dir entry").path();
        if p.extension().and_then(|x| x.to_str()) == Some("json") {
            std::fs::copy(&p, dir.path().join(p.file_name().expect("name"))).expect("copy preset");
        }
    }
    for (id, v) in extra {
        write_preset(dir.path(), id, v);
    }
    dir
}

/// Writes one preset file `<dir>/<id>.json`.
pub fn write_preset(dir: &Path, id: &str, v: &Value) {
    std::fs::write(
        dir.join(format!("{id}.json")),
        serde_json::to_string_pretty(v).expect("preset JSON"),
    )
    .expect("write preset");
}

/// Output lines (`data.text`) of the `output` events of `events`, of `stream`.
pub fn output_lines(events: &[Value], stream: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "output" && e["data"]["stream"] == stream)
        .filter_map(|e| e["data"]["text"].as_str().map(str::to_string))
        .collect()
}

/// Event types in order.
pub fn event_types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A redis-server of a test's own (on a free port, data in a temp dir,
/// append-only), for tests that stop and start Redis.
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts it and waits until it answers.
    pub fn start() -> PrivateRedis {
        let dir = tempfile::Builder::new()
            .prefix("ws-redis.")
            .tempdir()
            .expect("redis dir");
        let mut r = PrivateRedis {
            port: free_port(),
            dir,
            child: None,
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops it (SIGKILL; the append-only file keeps what was written).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The calls a [`tool_backend`] received: (raw request target, raw body).
pub type Recorded = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A stand-in orchestrator backend on loopback (a real HTTP server): it
/// records each call's raw request target and body and answers
/// `{"ok": true, "data": {"path": <target>, "call": <the body as JSON>}}`.
pub fn tool_backend() -> (String, Recorded) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let calls: Recorded = Default::default();
    let c = calls.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(h) = text.find("\r\n\r\n") {
                    let len = text[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= h + 4 + len {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&buf).to_string();
            let target = text.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            let call: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            c.lock().unwrap().push((target.clone(), body));
            let reply =
                serde_json::json!({"ok": true, "data": {"path": target, "call": call}}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (format!("http://{addr}"), calls)
}

/// Id of a container by name (`None` when it does not exist).
pub async fn container_id(name: &str) -> Option<String> {
    docker()
        .await
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .ok()
        .and_then(|c| c.id)
}

/// The gateway address of the workers' internal network.
pub async fn internal_gateway_ip() -> String {
    let net = docker()
        .await
        .inspect_network(
            "ws-workers-internal",
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .expect("the daemon made ws-workers-internal");
    net.ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().find_map(|c| c.gateway))
        .expect("a gateway address")
}
