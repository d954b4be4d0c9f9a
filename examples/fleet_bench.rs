//! Fleet benchmark driver for workers-spawner (the "fleet" issue). Run it
//! through `scripts/bench-fleet.sh`, which sources scripts/test-env.sh (a
//! private Redis, engine B in a netns of its own), builds the daemon and
//! this driver and passes the flags below. The driver starts and kills the
//! daemons itself and talks to them only through Redis (the `P:spawn`,
//! `P:result` and `P:events` streams) and their `/healthz`.
//!
//! Benchmarks (the report is markdown on stdout, progress on stderr):
//!
//! - A. Throughput, interleaved rounds: one daemon on engine A
//!   (`--max-concurrent 8`); two daemons, one per engine, on one prefix
//!   (4 each); the bare engine (bollard create/start/wait/remove, 8 at a
//!   time on engine A); bare, 4 at a time on each engine. Throughput is N
//!   over first XADD to last result (bare: first create to last remove).
//! - B. Host loss: daemon B runs four `sleep 20` requests (two with a
//!   `lost` retry policy, two without), daemon A joins, B's host is lost
//!   (`kill -9` of daemon B and `second-engine.sh stop`); the time until
//!   each lost request is restarted (attempt 2 `started`) or answered
//!   (`error`/`lost`).
//! - C. Warm pool on a fleet: 24 requests two at a time on a preset with
//!   `pool.size` 2, on two daemons and on one; the share served pooled.
//!
//! Exits non-zero when a request got no result (or more than one), a
//! result was not the expected one, or a daemon did not come up.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, ContainerSummary, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StartContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use clap::Parser;
use futures_util::StreamExt;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

const PREFIX_LABEL: &str = "io.workers-spawner.stream-prefix";
const KIND_LABEL: &str = "io.workers-spawner.kind";
/// The daemons' `instance_lost_after` (its minimum).
const LOST_AFTER: Duration = Duration::from_secs(30);
/// How long a request of the throughput runs may take to be answered.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

macro_rules! log {
    ($($t:tt)*) => { eprintln!("[fleet-bench] {}", format_args!($($t)*)) };
}

/// Fleet benchmark driver (see scripts/bench-fleet.sh).
#[derive(Debug, Clone, Parser)]
#[command(name = "fleet_bench")]
struct Args {
    /// The workers-spawner binary.
    #[arg(long)]
    daemon: PathBuf,
    /// Redis, as the driver and the daemons of engine A reach it.
    #[arg(long, env = "WS_TEST_REDIS_URL")]
    redis_url: String,
    /// Redis' port (daemons of engine B reach it at the host side of the veth).
    #[arg(long, env = "WS_TEST_REDIS_PORT")]
    redis_port: u16,
    /// Engine B's socket (unix://...).
    #[arg(long, env = "WS_ENGINE_B_HOST")]
    engine_b_host: String,
    /// Engine B's network namespace (/run/netns/NAME).
    #[arg(long, env = "WS_ENGINE_B_NETNS")]
    engine_b_netns: String,
    /// The machine's side of engine B's veth (Redis listens there too).
    #[arg(long, env = "WS_ENGINE_B_HOST_ADDR")]
    engine_b_host_addr: String,
    /// The namespace's side of the veth (daemon B's HTTP binds there).
    #[arg(long, env = "WS_ENGINE_B_NS_ADDR")]
    engine_b_ns_addr: String,
    /// The repository (the daemons' working directory, skills, templates,
    /// scripts/second-engine.sh).
    #[arg(long, default_value = ".")]
    repo_root: PathBuf,
    /// A directory for presets, daemon logs and egress sockets.
    #[arg(long)]
    work_dir: PathBuf,
    /// Part of every stream prefix (`fb-<run-id>-...`) and instance id.
    #[arg(long)]
    run_id: String,
    /// The image every worker runs.
    #[arg(long, default_value = "ws-test-busybox:latest")]
    image: String,
    /// Small sizes (1 round, N=8; 1 loss round; 8 pool requests).
    #[arg(long)]
    smoke: bool,
    /// Throughput rounds (default 3; smoke 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Requests per throughput run (default 48; smoke 8).
    #[arg(long)]
    requests: Option<usize>,
    /// Host-loss rounds (default 2; smoke 1).
    #[arg(long)]
    loss_rounds: Option<usize>,
    /// Requests of the warm-pool benchmark, sent two at a time (default 24; smoke 8).
    #[arg(long)]
    pool_requests: Option<usize>,
    /// Which benchmarks to run (throughput, loss, pool).
    #[arg(long, value_delimiter = ',', default_value = "throughput,loss,pool")]
    only: Vec<String>,
    /// The command line to record in the report.
    #[arg(long)]
    invocation: Option<String>,
}

/// Which engine a daemon (or a bare run) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    A,
    B,
}

/// Shared state of the run.
struct Ctx {
    args: Args,
    redis: redis::Client,
    conn: redis::aio::MultiplexedConnection,
    engine_a: Docker,
    engine_b: Mutex<Docker>,
    presets: PathBuf,
    prefixes: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
    oddities: Mutex<Vec<String>>,
    seq: AtomicU64,
    engine_b_down: Mutex<bool>,
    /// Every daemon's instance id and log.
    logs: Mutex<Vec<(String, PathBuf)>>,
}

impl Ctx {
    fn fail(&self, msg: String) {
        log!("FAILURE: {msg}");
        self.failures.lock().expect("failures").push(msg);
    }

    fn odd(&self, msg: String) {
        log!("odd: {msg}");
        self.oddities.lock().expect("oddities").push(msg);
    }

    fn prefix(&self, what: &str) -> String {
        let p = format!("fb-{}-{what}", self.args.run_id);
        self.prefixes.lock().expect("prefixes").push(p.clone());
        p
    }

    fn engine_b(&self) -> Docker {
        self.engine_b.lock().expect("engine b").clone()
    }

    fn docker(&self, e: Engine) -> Docker {
        match e {
            Engine::A => self.engine_a.clone(),
            Engine::B => self.engine_b(),
        }
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
}

fn connect_b(host: &str) -> anyhow::Result<Docker> {
    let path = host
        .strip_prefix("unix://")
        .ok_or_else(|| anyhow::anyhow!("engine B's host is not unix://: {host}"))?;
    Ok(Docker::connect_with_unix(
        path,
        120,
        bollard::API_DEFAULT_VERSION,
    )?)
}

// ---------------------------------------------------------------- streams

/// What the result and event streams of one prefix said, per request,
/// with the moment each entry was read.
#[derive(Default)]
struct Seen {
    results: HashMap<String, Vec<(Instant, Value)>>,
    events: HashMap<String, Vec<(Instant, Value)>>,
}

impl Seen {
    fn first_result(&self, rid: &str) -> Option<&(Instant, Value)> {
        self.results.get(rid).and_then(|v| v.first())
    }

    fn result_count(&self, rid: &str) -> usize {
        self.results.get(rid).map_or(0, Vec::len)
    }

    /// The first event of `rid` of type `ty` whose attempt is `attempt`
    /// (events of attempt 1 carry none).
    fn event(&self, rid: &str, ty: &str, attempt: Option<u64>) -> Option<&(Instant, Value)> {
        self.events.get(rid)?.iter().find(|(_, e)| {
            e["type"] == ty && (attempt.is_none() || e["attempt"].as_u64() == attempt)
        })
    }
}

/// One XREAD BLOCK loop over `P:result` and `P:events`.
struct Collector {
    seen: Arc<Mutex<Seen>>,
    tick: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    async fn start(client: &redis::Client, prefix: &str) -> anyhow::Result<Collector> {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tick, _) = watch::channel(0u64);
        let keys = [format!("{prefix}:result"), format!("{prefix}:events")];
        let (s, t, c) = (seen.clone(), tick.clone(), client.clone());
        let task = tokio::spawn(async move {
            let mut ids = ["0-0".to_string(), "0-0".to_string()];
            let opts = StreamReadOptions::default().block(1000).count(1000);
            loop {
                let reply: redis::RedisResult<Option<StreamReadReply>> =
                    conn.xread_options(&keys[..], &ids[..], &opts).await;
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) => {
                        log!("reading the streams failed: {e}; reconnecting");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if let Ok(n) = c.get_multiplexed_async_connection().await {
                            conn = n;
                        }
                        continue;
                    }
                };
                let Some(reply) = reply else { continue };
                let now = Instant::now();
                let mut n = 0;
                {
                    let mut seen = s.lock().expect("seen");
                    for k in reply.keys {
                        let which = usize::from(k.key != keys[0]);
                        for entry in k.ids {
                            ids[which] = entry.id.clone();
                            let Some(data) = entry.get::<String>("data") else {
                                continue;
                            };
                            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                                continue;
                            };
                            let rid = v["request_id"].as_str().unwrap_or("").to_string();
                            let map = if which == 0 {
                                &mut seen.results
                            } else {
                                &mut seen.events
                            };
                            map.entry(rid).or_default().push((now, v));
                            n += 1;
                        }
                    }
                }
                if n > 0 {
                    t.send_modify(|x| *x += 1);
                }
            }
        });
        Ok(Collector { seen, tick, task })
    }

    /// Waits until `f` holds (true) or `deadline` passes (false).
    async fn wait_until(&self, deadline: Instant, mut f: impl FnMut(&Seen) -> bool) -> bool {
        let mut rx = self.tick.subscribe();
        loop {
            rx.borrow_and_update();
            if f(&self.seen.lock().expect("seen")) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().expect("seen"))
    }
}

fn request(rid: &str, preset: &str, prompt: &str) -> Value {
    json!({"request_id": rid, "worker_config_id": preset,
           "task": {"prompt": prompt, "user_id": "bench"}})
}

/// XADDs all of `reqs` in one pipeline.
async fn publish(ctx: &Ctx, prefix: &str, reqs: &[Value]) -> anyhow::Result<()> {
    let mut p = redis::pipe();
    for r in reqs {
        p.cmd("XADD")
            .arg(format!("{prefix}:spawn"))
            .arg("*")
            .arg("data")
            .arg(r.to_string())
            .ignore();
    }
    let mut c = ctx.conn.clone();
    p.query_async::<()>(&mut c).await?;
    Ok(())
}

// ---------------------------------------------------------------- daemons

/// A `workers-spawner serve` child.
struct Daemon {
    child: tokio::process::Child,
    name: String,
    instance: String,
    log: PathBuf,
    killed: bool,
}

/// A port below the kernel's ephemeral range, free on every address (an
/// ephemeral one can be taken meanwhile as an outgoing connection's source).
fn free_port() -> u16 {
    use rand::Rng;
    loop {
        let port = rand::rng().random_range(20000..32000);
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// `GET path` on `addr`: the status code.
async fn http_status(addr: &str, path: &str) -> Option<u16> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(3), io)
        .await
        .ok()
        .flatten()
}

fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Daemon {
    /// Starts a daemon on `engine` for `prefix` and waits for `/healthz`.
    async fn start(
        ctx: &Ctx,
        name: &str,
        engine: Engine,
        prefix: &str,
        max: usize,
        presets: &str,
    ) -> anyhow::Result<Daemon> {
        let a = &ctx.args;
        let instance = format!("{name}-{}", ctx.next());
        let dir = ctx.args.work_dir.join(&instance);
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("daemon.log");
        let port = free_port();
        let (mut cmd, http, redis_url) = match engine {
            Engine::A => (
                tokio::process::Command::new(&a.daemon),
                format!("127.0.0.1:{port}"),
                a.redis_url.clone(),
            ),
            Engine::B => {
                let mut c = tokio::process::Command::new("nsenter");
                c.arg(format!("--net={}", a.engine_b_netns))
                    .arg("--")
                    .arg(&a.daemon);
                (
                    c,
                    format!("{}:{port}", a.engine_b_ns_addr),
                    format!("redis://{}:{}/", a.engine_b_host_addr, a.redis_port),
                )
            }
        };
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WORKERS_SPAWNER_") {
                cmd.env_remove(k);
            }
        }
        let root = &a.repo_root;
        cmd.current_dir(root)
            .arg("--redis-url")
            .arg(&redis_url)
            .arg("--stream-prefix")
            .arg(prefix)
            .arg("--presets-dir")
            .arg(ctx.presets.join(presets))
            .arg("--skills-dir")
            .arg(root.join("skills"))
            .arg("--templates-dir")
            .arg(root.join("templates"))
            .arg("--http-addr")
            .arg(&http)
            .arg("--instance-id")
            .arg(&instance)
            .arg("--max-concurrent")
            .arg(max.to_string())
            .arg("serve")
            .env("WORKERS_SPAWNER_INSTANCE_LOST_AFTER", "30s")
            .env("WORKERS_SPAWNER_RECLAIM_MIN_IDLE", "30s")
            .env("WORKERS_SPAWNER_BLOCK", "1s")
            .env("WORKERS_SPAWNER_GATEWAY_PORT", free_port().to_string())
            .env(
                "WORKERS_SPAWNER_API_ADDR",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("WORKERS_SPAWNER_EGRESS_DIR", dir.join("egress"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .kill_on_drop(true);
        if engine == Engine::B {
            cmd.env("WORKERS_SPAWNER_DOCKER_HOST", &a.engine_b_host);
        }
        let mut child = cmd.spawn()?;
        ctx.logs
            .lock()
            .expect("logs")
            .push((instance.clone(), log.clone()));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait()? {
                anyhow::bail!(
                    "daemon {instance} exited during start-up ({st}):\n{}",
                    tail(&log, 30)
                );
            }
            if http_status(&http, "/healthz").await == Some(200) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill().await;
                anyhow::bail!(
                    "daemon {instance} did not answer /healthz in 60 s:\n{}",
                    tail(&log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        log!("daemon {instance} up (engine {engine:?}, prefix {prefix}, max {max}, http {http})");
        Ok(Daemon {
            child,
            name: name.to_string(),
            instance,
            log,
            killed: false,
        })
    }

    /// kill -9 (a host loss), and reap it.
    async fn kill9(&mut self) {
        self.killed = true;
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, wait up to 30 s, then SIGKILL.
    async fn stop(&mut self, ctx: &Ctx) {
        if self.killed {
            return;
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            ctx.odd(format!(
                "daemon {} had exited before it was stopped:\n{}",
                self.instance,
                tail(&self.log, 10)
            ));
            return;
        }
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            ctx.odd(format!(
                "daemon {} did not stop within 30 s of SIGTERM",
                self.instance
            ));
            self.kill9().await;
        }
    }

    /// Whether it still runs (false: a failure is recorded).
    fn check_alive(&mut self, ctx: &Ctx) -> bool {
        match self.child.try_wait() {
            Ok(None) => true,
            _ => {
                ctx.fail(format!(
                    "daemon {} ({}) died:\n{}",
                    self.instance,
                    self.name,
                    tail(&self.log, 20)
                ));
                false
            }
        }
    }
}

// ---------------------------------------------------------------- engines

async fn containers_of(d: &Docker, prefix: &str) -> Vec<ContainerSummary> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("{PREFIX_LABEL}={prefix}")],
    );
    d.list_containers(Some(ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    }))
    .await
    .unwrap_or_default()
}

/// Force-removes every container of `prefix` on `d`; how many there were.
async fn remove_all(d: &Docker, prefix: &str) -> usize {
    let list = containers_of(d, prefix).await;
    for c in &list {
        if let Some(id) = &c.id {
            let _ = d
                .remove_container(
                    id,
                    Some(RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
        }
    }
    list.len()
}

/// Name, state, kind and request of each container of `prefix` on `d`.
async fn describe(d: &Docker, prefix: &str) -> Vec<String> {
    containers_of(d, prefix)
        .await
        .iter()
        .map(|c| {
            let label = |k: &str| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get(k))
                    .cloned()
                    .unwrap_or_default()
            };
            format!(
                "{} ({}, {}, kind {}, request {})",
                c.names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map_or("?", |n| n.trim_start_matches('/')),
                c.state.as_ref().map_or("?".to_string(), |s| s.to_string()),
                c.status.as_deref().unwrap_or("?"),
                label(KIND_LABEL),
                label("io.workers-spawner.request-id")
            )
        })
        .collect()
}

/// Running pool containers of `prefix` on `d`.
async fn pool_ready(d: &Docker, prefix: &str) -> usize {
    containers_of(d, prefix)
        .await
        .iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(KIND_LABEL))
                .map(String::as_str)
                == Some("pool")
                && c.state.as_ref().map(|s| s.to_string()).as_deref() == Some("running")
        })
        .count()
}

/// `scripts/second-engine.sh <cmd>` (its settings come from the environment).
async fn second_engine(ctx: &Ctx, cmd: &str) -> anyhow::Result<()> {
    let st = tokio::process::Command::new(ctx.args.repo_root.join("scripts/second-engine.sh"))
        .arg(cmd)
        .stdout(Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(st.success(), "second-engine.sh {cmd} failed ({st})");
    Ok(())
}

/// Boots engine B again after a loss and reconnects to it.
async fn engine_b_back(ctx: &Ctx) -> anyhow::Result<()> {
    second_engine(ctx, "start").await?;
    *ctx.engine_b.lock().expect("engine b") = connect_b(&ctx.args.engine_b_host)?;
    *ctx.engine_b_down.lock().expect("down") = false;
    // Answers the API (start waits for it), and lists.
    ctx.engine_b().ping().await?;
    Ok(())
}

/// One bare container: create, start, wait, remove (the daemon's shape:
/// no network, dropped capabilities, the preset's limits).
async fn bare_one(d: &Docker, image: &str, prefix: &str, name: String) -> anyhow::Result<()> {
    let mut labels = HashMap::new();
    labels.insert(PREFIX_LABEL.to_string(), prefix.to_string());
    let memory: i64 = 32 << 20;
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["true".to_string()]),
        user: Some("1000:1000".to_string()),
        labels: Some(labels),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            init: Some(true),
            nano_cpus: Some(500_000_000),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(64),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges:true".to_string()]),
            network_mode: Some("none".to_string()),
            ipc_mode: Some("private".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptions {
        name: Some(name),
        ..Default::default()
    };
    let id = d.create_container(Some(opts), body).await?.id;
    let run = async {
        d.start_container(&id, None::<StartContainerOptions>)
            .await?;
        let mut w = d.wait_container(&id, None::<WaitContainerOptions>);
        let code = match w.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(anyhow::Error::from(e)),
            None => -1,
        };
        anyhow::ensure!(code == 0, "exit code {code}");
        Ok(())
    }
    .await;
    d.remove_container(
        &id,
        Some(RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        }),
    )
    .await?;
    run
}

/// N bare containers spread over `engines` (engine, at a time): req/s.
async fn bare_run(
    ctx: &Arc<Ctx>,
    prefix: &str,
    engines: &[(Engine, usize)],
    n: usize,
) -> anyhow::Result<f64> {
    let sems: Vec<(Docker, Arc<Semaphore>)> = engines
        .iter()
        .map(|(e, c)| (ctx.docker(*e), Arc::new(Semaphore::new(*c))))
        .collect();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (d, sem) = sems[i % sems.len()].clone();
        let (image, prefix) = (ctx.args.image.clone(), prefix.to_string());
        let name = format!("{prefix}-{}", ctx.next());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            bare_one(&d, &image, &prefix, name).await
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let took = t0.elapsed();
    anyhow::ensure!(
        errors.is_empty(),
        "{} of {n} bare containers failed: {}",
        errors.len(),
        errors[0]
    );
    Ok(n as f64 / took.as_secs_f64())
}

// ---------------------------------------------------------------- helpers

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// Sends `reqs`, waits for a result of each; how long until the last one
/// (from the XADD), or `None` after a failure (recorded).
async fn send_and_wait(
    ctx: &Ctx,
    col: &Collector,
    prefix: &str,
    reqs: &[Value],
    timeout: Duration,
) -> Option<Duration> {
    let rids: Vec<String> = reqs
        .iter()
        .map(|r| r["request_id"].as_str().unwrap_or("").to_string())
        .collect();
    let t0 = Instant::now();
    if let Err(e) = publish(ctx, prefix, reqs).await {
        ctx.fail(format!("publishing to {prefix}: {e}"));
        return None;
    }
    let all = col
        .wait_until(t0 + timeout, |s| {
            rids.iter().all(|r| s.results.contains_key(r))
        })
        .await;
    col.with(|s| {
        let mut last = t0;
        let mut missing = 0;
        for r in &rids {
            match s.first_result(r) {
                Some((at, v)) => {
                    last = last.max(*at);
                    if v["status"] != "succeeded" {
                        ctx.fail(format!("{r}: result {v}"));
                    }
                }
                None => missing += 1,
            }
        }
        if !all {
            ctx.fail(format!(
                "{missing} of {} requests on {prefix} got no result within {timeout:?}",
                rids.len()
            ));
            return None;
        }
        Some(last - t0)
    })
}

/// Every request of `col` answered exactly once (else failures).
fn check_once(ctx: &Ctx, col: &Collector, prefix: &str, rids: &[String]) {
    col.with(|s| {
        for r in rids {
            let n = s.result_count(r);
            if n != 1 {
                ctx.fail(format!("{prefix}: {r} got {n} results"));
            }
        }
    });
}

/// Which instance answered, per instance.
fn by_instance(col: &Collector, rids: &[String]) -> HashMap<String, usize> {
    col.with(|s| {
        let mut m = HashMap::new();
        for r in rids {
            if let Some((_, v)) = s.first_result(r) {
                let i = v["worker"]["instance"].as_str().unwrap_or("?").to_string();
                *m.entry(i).or_default() += 1;
            }
        }
        m
    })
}

fn fmt_instances(m: &HashMap<String, usize>) -> String {
    let mut v: Vec<_> = m.iter().collect();
    v.sort();
    v.iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stops `daemons`, then removes what is left of `prefix` on both engines
/// (a leftover after the daemons answered everything is reported).
async fn wind_down(ctx: &Ctx, prefix: &str, daemons: &mut [Daemon], expect_empty: bool) {
    if expect_empty {
        // Workers are removed after their result: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = containers_of(&ctx.engine_a, prefix).await.len()
                + containers_of(&ctx.engine_b(), prefix).await.len();
            if left == 0 {
                break;
            }
            if Instant::now() > deadline {
                let mut what = describe(&ctx.engine_a, prefix).await;
                what.extend(describe(&ctx.engine_b(), prefix).await);
                ctx.odd(format!(
                    "{left} container(s) of {prefix} still there 15 s after the last result: {}",
                    what.join("; ")
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    for d in daemons.iter_mut() {
        d.stop(ctx).await;
    }
    remove_all(&ctx.engine_a, prefix).await;
    if !*ctx.engine_b_down.lock().expect("down") {
        remove_all(&ctx.engine_b(), prefix).await;
    }
}

// ---------------------------------------------------------------- A. throughput

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Thr {
    One,
    Fleet,
    BareOne,
    BareTwo,
}

impl Thr {
    fn label(self) -> &'static str {
        match self {
            Thr::One => "one daemon (engine A, max 8)",
            Thr::Fleet => "two daemons (A and B, max 4 each, one prefix)",
            Thr::BareOne => "bare engine A (8 at a time)",
            Thr::BareTwo => "bare engines A and B (4 at a time each)",
        }
    }
}

struct ThroughputReport {
    n: usize,
    rounds: usize,
    per: Vec<(Thr, Vec<f64>)>,
    fleet_split: HashMap<String, usize>,
}

async fn throughput(ctx: &Arc<Ctx>) -> anyhow::Result<ThroughputReport> {
    let smoke = ctx.args.smoke;
    let rounds = ctx.args.rounds.unwrap_or(if smoke { 1 } else { 3 });
    let n = ctx.args.requests.unwrap_or(if smoke { 8 } else { 48 });
    log!("A. throughput: {rounds} round(s) of N={n}");
    let p_one = ctx.prefix("thr-one");
    let p_fleet = ctx.prefix("thr-fleet");
    let p_bare = ctx.prefix("thr-bare");
    let col_one = Collector::start(&ctx.redis, &p_one).await?;
    let col_fleet = Collector::start(&ctx.redis, &p_fleet).await?;
    let mut daemons = Vec::new();
    let result = async {
        daemons.push(Daemon::start(ctx, "fb-one-a", Engine::A, &p_one, 8, "thr").await?);
        daemons.push(Daemon::start(ctx, "fb-fleet-b", Engine::B, &p_fleet, 4, "thr").await?);
        daemons.push(Daemon::start(ctx, "fb-fleet-a", Engine::A, &p_fleet, 4, "thr").await?);
        let fleet_instances = [daemons[1].instance.clone(), daemons[2].instance.clone()];
        // Warm-up: the first request of a preset prepares its image; both
        // fleet members answer some.
        let warm: Vec<Value> = (0..4)
            .map(|i| request(&format!("warm-one-{i}"), "fb_quick", "true"))
            .collect();
        send_and_wait(ctx, &col_one, &p_one, &warm, RUN_TIMEOUT).await;
        for attempt in 0..5 {
            let warm: Vec<Value> = (0..8)
                .map(|i| request(&format!("warm-fleet-{attempt}-{i}"), "fb_quick", "true"))
                .collect();
            send_and_wait(ctx, &col_fleet, &p_fleet, &warm, RUN_TIMEOUT).await;
            let rids: Vec<String> = (0..=attempt)
                .flat_map(|a| (0..8).map(move |i| format!("warm-fleet-{a}-{i}")))
                .collect();
            let m = by_instance(&col_fleet, &rids);
            if fleet_instances
                .iter()
                .all(|i| m.get(i).copied().unwrap_or(0) >= 2)
            {
                break;
            }
            if attempt == 4 {
                ctx.odd(format!(
                    "warm-up: not both fleet daemons answered twice in 40 requests ({})",
                    fmt_instances(&m)
                ));
            }
        }
        for (e, c) in [(Engine::A, 4), (Engine::B, 4)] {
            if let Err(err) = bare_run(ctx, &p_bare, &[(e, c)], 4).await {
                ctx.fail(format!("bare warm-up on engine {e:?}: {err}"));
            }
        }
        let order = [Thr::One, Thr::Fleet, Thr::BareOne, Thr::BareTwo];
        let mut per: Vec<(Thr, Vec<f64>)> = order.iter().map(|t| (*t, Vec::new())).collect();
        let mut fleet_rids = Vec::new();
        for round in 0..rounds {
            for k in 0..order.len() {
                let t = order[(round + k) % order.len()];
                let rate = match t {
                    Thr::One | Thr::Fleet => {
                        let (col, p) = if t == Thr::One {
                            (&col_one, &p_one)
                        } else {
                            (&col_fleet, &p_fleet)
                        };
                        let reqs: Vec<Value> = (0..n)
                            .map(|i| request(&format!("r{round}-{i}"), "fb_quick", "true"))
                            .collect();
                        if t == Thr::Fleet {
                            fleet_rids.extend((0..n).map(|i| format!("r{round}-{i}")));
                        }
                        send_and_wait(ctx, col, p, &reqs, RUN_TIMEOUT)
                            .await
                            .map(|d| n as f64 / d.as_secs_f64())
                    }
                    Thr::BareOne | Thr::BareTwo => {
                        let engines: &[(Engine, usize)] = if t == Thr::BareOne {
                            &[(Engine::A, 8)]
                        } else {
                            &[(Engine::A, 4), (Engine::B, 4)]
                        };
                        match bare_run(ctx, &p_bare, engines, n).await {
                            Ok(r) => Some(r),
                            Err(e) => {
                                ctx.fail(format!("bare run ({}): {e}", t.label()));
                                None
                            }
                        }
                    }
                };
                log!(
                    "round {}: {}: {}",
                    round + 1,
                    t.label(),
                    rate.map_or("failed".to_string(), |r| format!("{r:.2} req/s"))
                );
                if let Some(r) = rate {
                    per.iter_mut()
                        .find(|(x, _)| *x == t)
                        .expect("config")
                        .1
                        .push(r);
                }
            }
            for d in daemons.iter_mut() {
                d.check_alive(ctx);
            }
        }
        // Every request (warm-ups included) answered exactly once.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for col_p in [(&col_one, &p_one), (&col_fleet, &p_fleet)] {
            let rids: Vec<String> = col_p.0.with(|s| s.results.keys().cloned().collect());
            check_once(ctx, col_p.0, col_p.1, &rids);
            // Each answered worker's container is removed, with an event.
            let mut quiet: Vec<String> = col_p.0.with(|s| {
                rids.iter()
                    .filter(|r| s.event(r, "removed", None).is_none())
                    .cloned()
                    .collect()
            });
            if !quiet.is_empty() {
                quiet.sort();
                ctx.odd(format!(
                    "{}: {} of {} answered requests have no `removed` event: {}",
                    col_p.1,
                    quiet.len(),
                    rids.len(),
                    quiet.join(", ")
                ));
            }
        }
        let fleet_split = by_instance(&col_fleet, &fleet_rids);
        Ok::<_, anyhow::Error>(ThroughputReport {
            n,
            rounds,
            per,
            fleet_split,
        })
    }
    .await;
    let one = daemons.len().min(1);
    let (d_one, d_fleet) = daemons.split_at_mut(one);
    wind_down(ctx, &p_one, d_one, result.is_ok()).await;
    wind_down(ctx, &p_fleet, d_fleet, result.is_ok()).await;
    remove_all(&ctx.engine_a, &p_bare).await;
    remove_all(&ctx.engine_b(), &p_bare).await;
    result
}

// ---------------------------------------------------------------- B. host loss

struct LossRow {
    round: usize,
    rid: String,
    preset: &'static str,
    retrying: Option<Duration>,
    restarted: Option<Duration>,
    answered: Option<Duration>,
    fin: String,
}

struct LossRound {
    round: usize,
    /// How long after A was up B's host was lost (spreads the phase of
    /// the loss against both daemons' 5 s maintenance ticks).
    delay: Duration,
    /// How long before the loss B's last heartbeat was (its score in
    /// `P:instances`), if known.
    last_beat: Option<Duration>,
    figure: Option<Duration>,
    stop_took: Duration,
    stale_on_b: usize,
}

async fn loss_round(
    ctx: &Arc<Ctx>,
    round: usize,
    delay: Duration,
    rows: &mut Vec<LossRow>,
) -> anyhow::Result<LossRound> {
    let prefix = ctx.prefix(&format!("loss{round}"));
    let col = Collector::start(&ctx.redis, &prefix).await?;
    let mut daemons: Vec<Daemon> = Vec::new();
    let out = async {
        daemons.push(Daemon::start(ctx, "fb-loss-b", Engine::B, &prefix, 4, "loss").await?);
        let b_instance = daemons[0].instance.clone();
        let reqs: Vec<(String, &'static str)> = (0..4)
            .map(|i| {
                let p = if i % 2 == 0 { "fb_retry" } else { "fb_once" };
                (format!("lost{i}-{p}"), p)
            })
            .collect();
        let msgs: Vec<Value> = reqs
            .iter()
            .map(|(r, p)| request(r, p, "sleep 20"))
            .collect();
        publish(ctx, &prefix, &msgs).await?;
        let started = col
            .wait_until(Instant::now() + Duration::from_secs(120), |s| {
                reqs.iter()
                    .all(|(r, _)| s.event(r, "started", None).is_some())
            })
            .await;
        anyhow::ensure!(started, "the four requests did not all start on B");
        daemons.push(Daemon::start(ctx, "fb-loss-a", Engine::A, &prefix, 4, "loss").await?);
        let a_instance = daemons[1].instance.clone();
        let early = col.with(|s| {
            reqs.iter()
                .filter(|(r, _)| s.results.contains_key(r))
                .count()
        });
        if early > 0 {
            ctx.fail(format!(
                "round {round}: {early} request(s) finished before the host loss"
            ));
        }
        tokio::time::sleep(delay).await;
        // The host loss.
        let t0 = Instant::now();
        let t0_ms = chrono::Utc::now().timestamp_millis();
        daemons[0].kill9().await;
        *ctx.engine_b_down.lock().expect("down") = true;
        second_engine(ctx, "stop").await?;
        let stop_took = t0.elapsed();
        let mut c = ctx.conn.clone();
        let beat: Option<f64> = c
            .zscore(format!("{prefix}:instances"), &b_instance)
            .await
            .unwrap_or(None);
        let last_beat = beat.map(|ms| Duration::from_millis((t0_ms - ms as i64).max(0) as u64));
        log!(
            "round {round}: host B lost (engine stop took {:.1} s); waiting for A to answer",
            stop_took.as_secs_f64()
        );
        // Answered (once) or restarted (retry) ...
        let deadline = t0 + LOST_AFTER + Duration::from_secs(60);
        let detected = col
            .wait_until(deadline, |s| {
                reqs.iter().all(|(r, p)| {
                    if *p == "fb_retry" {
                        s.event(r, "started", Some(2)).is_some()
                    } else {
                        s.results.contains_key(r)
                    }
                })
            })
            .await;
        if !detected {
            ctx.fail(format!(
                "round {round}: not every lost request was restarted or answered within {:?}",
                deadline - t0
            ));
        }
        // ... and the retried ones finish (sleep 20 again).
        let finished = col
            .wait_until(Instant::now() + Duration::from_secs(60), |s| {
                reqs.iter().all(|(r, _)| s.results.contains_key(r))
            })
            .await;
        if !finished {
            ctx.fail(format!(
                "round {round}: a lost request never got its final result"
            ));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut figure: Option<Duration> = Some(Duration::ZERO);
        col.with(|s| {
            for (r, p) in &reqs {
                let since = |x: Option<&(Instant, Value)>| x.map(|(at, _)| *at - t0);
                let n = s.result_count(r);
                if n != 1 {
                    ctx.fail(format!("round {round}: {r} got {n} results"));
                }
                for attempt in [None, Some(2)] {
                    let starts = s.events.get(r).map_or(0, |v| {
                        v.iter()
                            .filter(|(_, e)| {
                                e["type"] == "started" && e["attempt"].as_u64() == attempt
                            })
                            .count()
                    });
                    if starts > 1 {
                        ctx.odd(format!(
                            "round {round}: {r} has {starts} started events for attempt {}",
                            attempt.unwrap_or(1)
                        ));
                    }
                }
                let res = s.first_result(r).map(|(_, v)| v.clone());
                let fin = match &res {
                    Some(v) => {
                        let mut f = v["status"].as_str().unwrap_or("?").to_string();
                        if let Some(c) = v["error"]["code"].as_str() {
                            let _ = write!(f, "/{c}");
                        }
                        if let Some(a) = v["attempt"].as_u64() {
                            let _ = write!(f, ", attempt {a}");
                        }
                        let inst = v["worker"]["instance"].as_str().unwrap_or("?");
                        let who = if inst == a_instance {
                            "A"
                        } else if inst == b_instance {
                            "B"
                        } else {
                            inst
                        };
                        let _ = write!(f, ", by {who}");
                        f
                    }
                    None => "no result".to_string(),
                };
                let row = if *p == "fb_retry" {
                    let ok = res.as_ref().is_some_and(|v| {
                        v["status"] == "succeeded"
                            && v["attempt"] == 2
                            && v["worker"]["instance"] == a_instance.as_str()
                    });
                    if !ok {
                        ctx.fail(format!("round {round}: {r} (retry): {fin}"));
                    }
                    let retrying = s.event(r, "retrying", None);
                    if let Some((_, e)) = retrying {
                        if e["data"]["reason"] != "lost" {
                            ctx.odd(format!("round {round}: {r}: retrying event {e}"));
                        }
                    }
                    LossRow {
                        round,
                        rid: r.clone(),
                        preset: p,
                        retrying: since(retrying),
                        restarted: since(s.event(r, "started", Some(2))),
                        answered: None,
                        fin,
                    }
                } else {
                    let ok = res
                        .as_ref()
                        .is_some_and(|v| v["status"] == "error" && v["error"]["code"] == "lost");
                    if !ok {
                        ctx.fail(format!("round {round}: {r} (no retry): {fin}"));
                    }
                    if s.event(r, "started", Some(2)).is_some() {
                        ctx.fail(format!("round {round}: {r} (no retry) ran again"));
                    }
                    LossRow {
                        round,
                        rid: r.clone(),
                        preset: p,
                        retrying: None,
                        restarted: None,
                        answered: since(s.first_result(r)),
                        fin,
                    }
                };
                let t = if *p == "fb_retry" {
                    row.restarted
                } else {
                    row.answered
                };
                figure = match (figure, t) {
                    (Some(f), Some(t)) => Some(f.max(t)),
                    _ => None,
                };
                rows.push(row);
            }
        });
        if let Some(d) = daemons.get_mut(1) {
            d.check_alive(ctx);
        }
        Ok::<_, anyhow::Error>((figure, stop_took, last_beat))
    }
    .await;
    // Engine A: nothing left once every result is in; engine B (back):
    // the dead containers of the lost host, removed here.
    if out.is_ok() {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !containers_of(&ctx.engine_a, &prefix).await.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let left = describe(&ctx.engine_a, &prefix).await;
        if !left.is_empty() {
            ctx.odd(format!(
                "round {round}: {} container(s) of {prefix} left on engine A 15 s after every result: {}",
                left.len(),
                left.join("; ")
            ));
        }
    }
    for d in daemons.iter_mut() {
        d.stop(ctx).await;
    }
    let mut stale_on_b = 0;
    if *ctx.engine_b_down.lock().expect("down") {
        engine_b_back(ctx).await?;
        stale_on_b = containers_of(&ctx.engine_b(), &prefix).await.len();
    }
    remove_all(&ctx.engine_b(), &prefix).await;
    remove_all(&ctx.engine_a, &prefix).await;
    let (figure, stop_took, last_beat) = out?;
    Ok(LossRound {
        round,
        delay,
        last_beat,
        figure,
        stop_took,
        stale_on_b,
    })
}

async fn host_loss(ctx: &Arc<Ctx>) -> (Vec<LossRound>, Vec<LossRow>) {
    let rounds = ctx
        .args
        .loss_rounds
        .unwrap_or(if ctx.args.smoke { 1 } else { 2 });
    log!("B. host loss: {rounds} round(s)");
    let mut out = Vec::new();
    let mut rows = Vec::new();
    for round in 1..=rounds {
        // Losses spread over one 5 s tick after A comes up.
        let delay = Duration::from_secs_f64(5.0 * (round as f64 - 0.5) / rounds as f64);
        match loss_round(ctx, round, delay, &mut rows).await {
            Ok(r) => out.push(r),
            Err(e) => ctx.fail(format!("host-loss round {round}: {e:#}")),
        }
    }
    (out, rows)
}

// ---------------------------------------------------------------- C. pool

struct PoolRow {
    label: &'static str,
    sent: usize,
    answered: usize,
    pooled: usize,
    split: String,
    per_pair: String,
    ready_after: Option<Duration>,
}

async fn pool_config(ctx: &Arc<Ctx>, fleet: bool, total: usize) -> anyhow::Result<PoolRow> {
    let prefix = ctx.prefix(if fleet { "pool-fleet" } else { "pool-one" });
    let col = Collector::start(&ctx.redis, &prefix).await?;
    let mut daemons: Vec<Daemon> = Vec::new();
    let out = async {
        let t_up = Instant::now();
        if fleet {
            daemons.push(Daemon::start(ctx, "fb-pool-a", Engine::A, &prefix, 4, "pool").await?);
            daemons.push(Daemon::start(ctx, "fb-pool-b", Engine::B, &prefix, 4, "pool").await?);
        } else {
            daemons.push(Daemon::start(ctx, "fb-pool1-a", Engine::A, &prefix, 8, "pool").await?);
        }
        // The pools fill before the first pair.
        let deadline = Instant::now() + Duration::from_secs(90);
        let ready_after = loop {
            let a = pool_ready(&ctx.engine_a, &prefix).await;
            let b = if fleet {
                pool_ready(&ctx.engine_b(), &prefix).await
            } else {
                2
            };
            if a >= 2 && b >= 2 {
                break Some(t_up.elapsed());
            }
            if Instant::now() > deadline {
                ctx.odd(format!(
                    "{prefix}: pools not full 90 s after start (A {a}, B {b})"
                ));
                break None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let mut rids = Vec::new();
        for pair in 0..total.div_ceil(2) {
            let reqs: Vec<Value> = (0..2)
                .map(|i| request(&format!("p{pair}-{i}"), "fb_pool", "true"))
                .collect();
            rids.extend((0..2).map(|i| format!("p{pair}-{i}")));
            send_and_wait(ctx, &col, &prefix, &reqs, Duration::from_secs(120)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        check_once(ctx, &col, &prefix, &rids);
        let (answered, pooled) = col.with(|s| {
            let answered = rids.iter().filter(|r| s.results.contains_key(*r)).count();
            let pooled = rids
                .iter()
                .filter(|r| {
                    s.event(r, "accepted", None)
                        .is_some_and(|(_, e)| e["data"]["pooled"] == true)
                })
                .count();
            (answered, pooled)
        });
        // Pooled requests per instance, and all requests per instance.
        let names: HashMap<String, &'static str> = daemons
            .iter()
            .zip(["A", "B"])
            .map(|(d, n)| (d.instance.clone(), n))
            .collect();
        let split = col.with(|s| {
            let mut m: HashMap<&str, (usize, usize)> = HashMap::new();
            for r in &rids {
                let Some((_, v)) = s.first_result(r) else {
                    continue;
                };
                let inst = v["worker"]["instance"].as_str().unwrap_or("?");
                let e = m
                    .entry(names.get(inst).copied().unwrap_or("?"))
                    .or_default();
                e.0 += 1;
                if s.event(r, "accepted", None)
                    .is_some_and(|(_, e)| e["data"]["pooled"] == true)
                {
                    e.1 += 1;
                }
            }
            let mut v: Vec<_> = m.into_iter().collect();
            v.sort();
            v.iter()
                .map(|(k, (n, p))| format!("{k}: {p}/{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let per_pair = col.with(|s| {
            rids.chunks(2)
                .map(|pair| {
                    pair.iter()
                        .filter(|r| {
                            s.event(r, "accepted", None)
                                .is_some_and(|(_, e)| e["data"]["pooled"] == true)
                        })
                        .count()
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
        for d in daemons.iter_mut() {
            d.check_alive(ctx);
        }
        Ok::<_, anyhow::Error>(PoolRow {
            label: if fleet {
                "two daemons (A and B, max 4 each)"
            } else {
                "one daemon (engine A, max 8)"
            },
            sent: rids.len(),
            answered,
            pooled,
            split,
            per_pair,
            ready_after,
        })
    }
    .await;
    // Pool containers stay until their daemon stops: no leftover check.
    wind_down(ctx, &prefix, &mut daemons, false).await;
    out
}

// ---------------------------------------------------------------- report

/// The presets, each with the set (presets dir) of the benchmark using it:
/// a daemon keeps warm pools of every pooled preset it has.
fn presets(image: &str) -> Vec<(&'static str, &'static str, Value)> {
    let base = |id: &str| {
        json!({
            "id": id,
            "name": format!("fleet bench {id}"),
            "image": image,
            "agent": {"type": "claude-code", "command": ["sh", "-c", "{prompt}"], "conversation": false},
            "allowed_tools": [],
            "has_internet": false,
            "limits": {"cpu": 0.5, "memory": "32m", "timeout_sec": 120, "ttl_sec": 600, "pids": 64}
        })
    };
    let quick = base("fb_quick");
    let mut retry = base("fb_retry");
    retry["retry"] = json!({"max": 1, "on": ["lost"], "backoff": "0s"});
    let once = base("fb_once");
    let mut pool = base("fb_pool");
    pool["pool"] = json!({"size": 2});
    vec![
        ("thr", "fb_quick", quick),
        ("loss", "fb_retry", retry),
        ("loss", "fb_once", once),
        ("pool", "fb_pool", pool),
    ]
}

fn report_throughput(out: &mut String, r: &ThroughputReport) {
    let _ = writeln!(out, "## A. Throughput: two engines vs one\n");
    let _ = writeln!(
        out,
        "N = {} requests of prompt `true` per run, all published at once; {} interleaved round(s) (order rotated); req/s = N / (first XADD to last result), bare: N / (first create to last remove).\n",
        r.n, r.rounds
    );
    let _ = writeln!(out, "| configuration | req/s per round | median req/s |");
    let _ = writeln!(out, "|---|---|---:|");
    let med = |t: Thr| {
        r.per
            .iter()
            .find(|(x, _)| *x == t)
            .map_or(f64::NAN, |(_, v)| median(v))
    };
    for (t, v) in &r.per {
        let rounds = v
            .iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(out, "| {} | {rounds} | {:.2} |", t.label(), median(v));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| ratio | value |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(
        out,
        "| fleet / one daemon | {:.2} |",
        med(Thr::Fleet) / med(Thr::One)
    );
    let _ = writeln!(
        out,
        "| one daemon / bare engine A | {:.2} |",
        med(Thr::One) / med(Thr::BareOne)
    );
    let _ = writeln!(
        out,
        "| fleet / bare engines A and B | {:.2} |",
        med(Thr::Fleet) / med(Thr::BareTwo)
    );
    let _ = writeln!(
        out,
        "| bare A and B / bare A | {:.2} |",
        med(Thr::BareTwo) / med(Thr::BareOne)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Fleet requests answered per instance (timed runs): {}.\n",
        if r.fleet_split.is_empty() {
            "-".to_string()
        } else {
            fmt_instances(&r.fleet_split)
        }
    );
    let _ = writeln!(
        out,
        "What it means: \"fleet / one daemon\" is what spreading one prefix over two daemons and two engines costs or gains at equal total concurrency (8); both engines share this machine's 2 cores, so it shows the fleet's overhead, not its scale-out.\n"
    );
}

fn report_loss(out: &mut String, rounds: &[LossRound], rows: &[LossRow]) {
    let _ = writeln!(
        out,
        "## B. Host loss: time to answer or restart the lost requests\n"
    );
    let _ = writeln!(
        out,
        "Daemon B (engine B, max 4) runs 2 `fb_retry` (retry on lost, backoff 0s) and 2 `fb_once` requests of `sleep 20`; daemon A (max 4) joins; t0 = `kill -9` of daemon B followed by `second-engine.sh stop`. instance_lost_after = {} s, maintenance tick 5 s, heartbeat every 5 s (key life 30 s).\n",
        LOST_AFTER.as_secs()
    );
    let _ = writeln!(
        out,
        "| round | request | preset | `retrying` after t0 | attempt 2 `started` after t0 | `error`/`lost` result after t0 | final result |"
    );
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.round,
            r.rid,
            r.preset,
            secs(r.retrying),
            secs(r.restarted),
            secs(r.answered),
            r.fin
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| round | loss after A up | B's last heartbeat before t0 | last lost request answered or restarted (the figure) | detection overhead (figure - instance_lost_after) | after the earliest moment possible (last heartbeat + instance_lost_after) | engine B stop took | dead containers of B found on its return |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rounds {
        let over = r.figure.map_or("-".to_string(), |f| {
            format!("{:+.1} s", f.as_secs_f64() - LOST_AFTER.as_secs_f64())
        });
        let beyond = match (r.figure, r.last_beat) {
            (Some(f), Some(b)) => format!(
                "{:+.1} s",
                f.as_secs_f64() - (LOST_AFTER.as_secs_f64() - b.as_secs_f64())
            ),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {} | {} | {} | {} | {:.1} s | {} |",
            r.round,
            r.delay.as_secs_f64(),
            secs(r.last_beat),
            secs(r.figure),
            over,
            beyond,
            r.stop_took.as_secs_f64(),
            r.stale_on_b
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "What it means: the figure is how long a host loss leaves its requests unanswered or not running: instance_lost_after after B's last heartbeat (0-5 s before the loss), plus up to one 5 s maintenance tick of A, plus the restart; so 25-35 s plus the restart, whatever the phase. Both engines share this machine's 2 cores.\n"
    );
}

fn report_pool(out: &mut String, rows: &[PoolRow]) {
    let _ = writeln!(out, "## C. Warm pool on a fleet\n");
    let _ = writeln!(
        out,
        "Preset `fb_pool` (`pool.size` 2 per instance), prompt `true`; requests sent two at a time, the next pair once both results are in; pooled = the `accepted` event says `pooled: true`.\n"
    );
    let _ = writeln!(
        out,
        "| configuration | requests | answered | pooled | hit ratio | pooled/served per instance | pooled per pair | pools full after start |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|---|---:|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} % | {} | {} | {} |",
            r.label,
            r.sent,
            r.answered,
            r.pooled,
            100.0 * r.pooled as f64 / r.sent.max(1) as f64,
            r.split,
            r.per_pair,
            secs(r.ready_after)
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "What it means: the hit ratio is the share of requests that skipped container creation; on a fleet a request goes to whichever daemon reads it first, so each instance's pool refills between the pairs it gets; both engines share this machine's 2 cores.\n"
    );
}

async fn run(ctx: Arc<Ctx>) -> String {
    let only = &ctx.args.only;
    let want = |s: &str| only.iter().any(|o| o == s);
    let started = Instant::now();
    let mut out = String::new();
    let _ = writeln!(out, "# Fleet benchmarks\n");
    let _ = writeln!(
        out,
        "{} on {} ({} CPU cores, both engines on this machine), image `{}`, `{}`{}.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        hostname(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        ctx.args.image,
        ctx.args
            .invocation
            .as_deref()
            .unwrap_or("examples/fleet_bench"),
        if ctx.args.smoke { " (smoke sizes)" } else { "" }
    );
    let mut sections = Vec::new();
    if want("throughput") {
        match throughput(&ctx).await {
            Ok(r) => {
                let mut s = String::new();
                report_throughput(&mut s, &r);
                sections.push(s);
            }
            Err(e) => ctx.fail(format!("throughput: {e:#}")),
        }
    }
    // The pool before the host loss, whose engine B restarts.
    let mut pool_section = None;
    if want("pool") {
        let total = ctx
            .args
            .pool_requests
            .unwrap_or(if ctx.args.smoke { 8 } else { 24 });
        log!("C. warm pool: {total} requests two at a time, fleet and one daemon");
        let mut rows = Vec::new();
        for fleet in [true, false] {
            match pool_config(&ctx, fleet, total).await {
                Ok(r) => rows.push(r),
                Err(e) => ctx.fail(format!(
                    "pool ({}): {e:#}",
                    if fleet { "fleet" } else { "one" }
                )),
            }
        }
        let mut s = String::new();
        report_pool(&mut s, &rows);
        pool_section = Some(s);
    }
    if want("loss") {
        let (rounds, rows) = host_loss(&ctx).await;
        let mut s = String::new();
        report_loss(&mut s, &rounds, &rows);
        sections.push(s);
    }
    sections.extend(pool_section);
    for s in sections {
        out.push_str(&s);
    }
    report_warnings(&mut out, &ctx.logs.lock().expect("logs"));
    let _ = writeln!(out, "## Checks\n");
    let failures = ctx.failures.lock().expect("failures").clone();
    let oddities = ctx.oddities.lock().expect("oddities").clone();
    if failures.is_empty() {
        let _ = writeln!(
            out,
            "- every request got exactly one result, of the expected kind"
        );
    }
    for f in &failures {
        let _ = writeln!(out, "- FAILED: {}", f.lines().next().unwrap_or(""));
    }
    for o in &oddities {
        let _ = writeln!(out, "- odd: {}", o.lines().next().unwrap_or(""));
    }
    let _ = writeln!(
        out,
        "- driver wall time {:.0} s",
        started.elapsed().as_secs_f64()
    );
    out
}

/// The daemons' WARN and ERROR lines (JSON logs), counted by message.
fn report_warnings(out: &mut String, logs: &[(String, PathBuf)]) {
    let mut rows: Vec<(String, String, String, usize)> = Vec::new();
    for (instance, path) in logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let level = v["level"].as_str().unwrap_or("");
            if level != "WARN" && level != "ERROR" {
                continue;
            }
            let msg = v["fields"]["message"].as_str().unwrap_or("?").to_string();
            *counts.entry((level.to_string(), msg)).or_default() += 1;
        }
        let mut c: Vec<_> = counts.into_iter().collect();
        c.sort();
        for ((level, msg), n) in c {
            rows.push((instance.clone(), level, msg, n));
        }
    }
    let _ = writeln!(out, "## Daemon warnings and errors\n");
    if rows.is_empty() {
        let _ = writeln!(out, "None in the {} daemons' logs.\n", logs.len());
        return;
    }
    let _ = writeln!(out, "| daemon | level | count | message |");
    let _ = writeln!(out, "|---|---|---:|---|");
    for (i, l, m, n) in rows {
        let _ = writeln!(out, "| {i} | {l} | {n} | {} |", m.replace('|', "\\|"));
    }
    let _ = writeln!(out);
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let code = match setup(args).await {
        Ok(ctx) => {
            let report = run(ctx.clone()).await;
            print!("{report}");
            // Whatever is left of this run's prefixes (a failed step).
            if *ctx.engine_b_down.lock().expect("down") {
                if let Err(e) = engine_b_back(&ctx).await {
                    log!("engine B did not come back: {e}");
                }
            }
            let prefixes = ctx.prefixes.lock().expect("prefixes").clone();
            for p in &prefixes {
                remove_all(&ctx.engine_a, p).await;
                remove_all(&ctx.engine_b(), p).await;
            }
            let failures = ctx.failures.lock().expect("failures").clone();
            for f in &failures {
                log!("FAILED: {f}");
            }
            i32::from(!failures.is_empty())
        }
        Err(e) => {
            log!("setup failed: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

async fn setup(args: Args) -> anyhow::Result<Arc<Ctx>> {
    let presets_dir = args.work_dir.join("presets");
    for (set, id, p) in presets(&args.image) {
        std::fs::create_dir_all(presets_dir.join(set))?;
        std::fs::write(
            presets_dir.join(set).join(format!("{id}.json")),
            serde_json::to_vec_pretty(&p)?,
        )?;
    }
    let redis = redis::Client::open(args.redis_url.as_str())?;
    let conn = redis.get_multiplexed_async_connection().await?;
    let engine_a = Docker::connect_with_local_defaults()?;
    engine_a.ping().await?;
    let engine_b = connect_b(&args.engine_b_host)?;
    engine_b.ping().await?;
    Ok(Arc::new(Ctx {
        args,
        redis,
        conn,
        engine_a,
        engine_b: Mutex::new(engine_b),
        presets: presets_dir,
        prefixes: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        oddities: Mutex::new(Vec::new()),
        seq: AtomicU64::new(0),
        engine_b_down: Mutex::new(false),
        logs: Mutex::new(Vec::new()),
    }))
}
