//! Benchmark driver for workers-spawner. Run it through `scripts/bench.sh`,
//! which starts redis-server, builds the test image, starts the daemon(s)
//! and passes the flags below; the results go to `docs/benchmarks.md`.
//!
//! Scenarios:
//!
//! - `latency`: per concurrency level, rounds of interleaved batches of
//!   (1) the floor: bare Engine API create + start + wait + remove,
//!   (2) the same on the daemon's internal bridge network (informative),
//!   (3) the shell baseline `docker run --rm`,
//!   (4) workers-spawner end to end: XADD to the result entry;
//!   all running the same image and command.
//! - `live`: N sleeping workers; the daemon's memory and idle CPU.
//! - `egress`: the proxy of a worker's egress socket: bytes/s through a
//!   `CONNECT` tunnel (100 MiB from a local server, from the host through
//!   the socket and from inside a worker through the forwarder), the latency
//!   a model route adds to a call to a local upstream, the daemon's CPU and
//!   RSS meanwhile. (The three kinds of worker, tool-less offline, offline
//!   with tools and internet with an allow-list, are methods of `latency`.)
//! - `output`: one worker printing many lines; forwarding rate and loss,
//!   unbounded (a daemon with a huge `output_lines_per_sec`) and bounded
//!   (a second daemon with the default bound), every line delivered or
//!   counted as dropped.
//!
//! Exits non-zero when something failed (a request without a result, a
//! result other than the expected one, output lines neither delivered nor
//! counted); missing a performance target is reported, not a failure.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StartContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use workers_spawner::adapters::bus::{Bus, StreamNames};

/// The command every method runs: `sh -c 'echo $0' ok`, like the preset.
const CMD: [&str; 4] = ["sh", "-c", "echo $0", "ok"];
const PREFIX_LABEL: &str = "io.workers-spawner.stream-prefix";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Latency,
    Live,
    Output,
    Pool,
    Fresh,
    Session,
    Egress,
    All,
}

/// Benchmark driver (see scripts/bench.sh).
#[derive(Debug, Clone, Parser)]
#[command(name = "bench")]
struct Args {
    /// Samples per method and concurrency level (default 200; smoke 5).
    #[arg(long)]
    samples: Option<usize>,
    /// Concurrency levels (default 1,8,32; smoke 1,4).
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Redis of the daemon(s).
    #[arg(long, env = "WS_TEST_REDIS_URL")]
    redis_url: String,
    /// Stream prefix of the main daemon.
    #[arg(long)]
    prefix: String,
    /// Image every method runs.
    #[arg(long, default_value = "ws-test-busybox:latest")]
    image: String,
    /// Pid of the main daemon (CPU and memory from /proc).
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// host:port of the main daemon's /metrics.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Which scenario(s) to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,
    /// Markdown file to write (overwritten; a hand-written analysis block
    /// between `<!-- analysis:begin -->` and `<!-- analysis:end -->` is kept).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Tiny sample counts (a CI-sized run).
    #[arg(long)]
    smoke: bool,
    /// Live sleeping workers (default 200; smoke 10).
    #[arg(long)]
    live_workers: Option<usize>,
    /// Seconds of idle sampling with the live workers (default 30; smoke 3).
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Lines the output worker prints (default 100000; smoke 10000).
    #[arg(long)]
    output_lines: Option<u64>,
    /// Stream prefix of the second daemon, started with the default output bound.
    #[arg(long)]
    bounded_prefix: Option<String>,
    /// Pid of the second daemon.
    #[arg(long)]
    bounded_daemon_pid: Option<u32>,
    /// The output bound of the second daemon (for the report).
    #[arg(long, default_value_t = 2000)]
    bounded_lines_per_sec: u64,
    /// Preset running `sh -c 'echo $0' {prompt}`.
    #[arg(long, default_value = "bench_v1")]
    preset: String,
    /// Preset like `--preset` with a warm pool.
    #[arg(long, default_value = "bench_pool_v1")]
    pool_preset: String,
    /// Preset of the session scenario: the test agent under the shipped
    /// claude-code layout (a conversation per session).
    #[arg(long, default_value = "bench_session_v1")]
    session_preset: String,
    /// The pool size of `--pool-preset`.
    #[arg(long, default_value_t = 4)]
    pool_size: u32,
    /// Sequential samples of the warm-pool scenario, each method (default 100; smoke 5).
    #[arg(long)]
    pool_samples: Option<usize>,
    /// Preset running `sh -c {prompt}`.
    #[arg(long, default_value = "bench_shell_v1")]
    shell_preset: String,
    /// Preset like `--preset` on `--fresh-image`, which the driver re-makes
    /// (a new image id) before each round of the fresh-image scenario.
    #[arg(long, default_value = "bench_fresh_v1")]
    fresh_preset: String,
    /// The image name `--fresh-preset` runs.
    #[arg(long, default_value = "ws-bench-fresh:latest")]
    fresh_image: String,
    /// The unprepared image each fresh image is made from.
    #[arg(long, default_value = "ws-test-stock:latest")]
    fresh_from: String,
    /// Rounds of the fresh-image scenario (default 5; smoke 1).
    #[arg(long)]
    fresh_rounds: Option<usize>,
    /// Preset like `--preset` with a tool (offline, the egress socket).
    #[arg(long, default_value = "bench_tools_v1")]
    tools_preset: String,
    /// Preset like `--preset` with internet through an allow-list.
    #[arg(long, default_value = "bench_net_v1")]
    net_preset: String,
    /// Preset running `sh -c {prompt}` with internet (`big.test`) and an
    /// `anthropic` model route to the local upstream.
    #[arg(long, default_value = "bench_proxy_v1")]
    proxy_preset: String,
    /// Port of the local upstream the driver serves (`big.test` and the
    /// model route point at it in the daemon's settings).
    #[arg(long, default_value_t = 0)]
    upstream_port: u16,
    /// The daemon's `egress_dir`.
    #[arg(long, default_value = "/run/workers-spawner/egress")]
    egress_dir: String,
    /// MiB per tunnel transfer of the egress scenario (default 100; smoke 8).
    #[arg(long)]
    transfer_mib: Option<u64>,
    /// The daemon's internal network, for the informative bridge floor.
    #[arg(long, default_value = "ws-workers-internal")]
    worker_network: String,
    /// The command line to record in the report.
    #[arg(long)]
    invocation: Option<String>,
}

struct Config {
    samples: usize,
    pool_samples: usize,
    levels: Vec<usize>,
    live: usize,
    idle: Duration,
    lines: u64,
    fresh_rounds: usize,
}

impl Args {
    fn config(&self) -> Config {
        let s = self.smoke;
        Config {
            samples: self.samples.unwrap_or(if s { 5 } else { 200 }),
            pool_samples: self.pool_samples.unwrap_or(if s { 5 } else { 100 }),
            levels: self.concurrency.clone().unwrap_or_else(|| {
                if s {
                    vec![1, 4]
                } else {
                    vec![1, 8, 32]
                }
            }),
            live: self.live_workers.unwrap_or(if s { 10 } else { 200 }),
            idle: Duration::from_secs(self.idle_secs.unwrap_or(if s { 3 } else { 30 })),
            lines: self
                .output_lines
                .unwrap_or(if s { 10_000 } else { 100_000 }),
            fresh_rounds: self.fresh_rounds.unwrap_or(if s { 1 } else { 5 }),
        }
    }
}

// ---------------------------------------------------------------- /proc

#[derive(Clone, Copy)]
struct Proc {
    pid: u32,
    tck: f64,
}

impl Proc {
    fn new(pid: u32) -> Proc {
        let tck = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .unwrap_or(100.0);
        Proc { pid, tck }
    }

    /// utime + stime, seconds.
    fn cpu_secs(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return 0.0;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return 0.0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the command: state is field 3, utime 14, stime 15.
        let t = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (t(14) + t(15)) as f64 / self.tck
    }

    /// A `/proc/PID/status` field in KiB (or a plain count).
    fn status(&self, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix(key)
                        .and_then(|r| r.strip_prefix(':'))
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|v| v.parse().ok())
                })
            })
            .unwrap_or(0)
    }

    fn alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// Samples VmRSS every 100 ms; keeps the maximum since the last reset.
struct RssSampler {
    max_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(p: Proc) -> RssSampler {
        let max_kib = Arc::new(AtomicU64::new(0));
        let m = max_kib.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                m.fetch_max(p.status("VmRSS"), Ordering::Relaxed);
            }
        });
        RssSampler { max_kib, task }
    }

    fn reset(&self, p: Proc) {
        self.max_kib.store(p.status("VmRSS"), Ordering::Relaxed);
    }

    fn max_mib(&self) -> f64 {
        self.max_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- stats

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Default, Clone)]
struct MethodStats {
    lat_ms: Vec<f64>,
    wall_s: f64,
    failures: usize,
}

impl MethodStats {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.lat_ms.clone();
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v
    }
    fn p50(&self) -> f64 {
        percentile(&self.sorted(), 50.0)
    }
    fn p99(&self) -> f64 {
        percentile(&self.sorted(), 99.0)
    }
    fn mean(&self) -> f64 {
        self.lat_ms.iter().sum::<f64>() / self.lat_ms.len().max(1) as f64
    }
    fn throughput(&self) -> f64 {
        self.lat_ms.len() as f64 / self.wall_s.max(1e-9)
    }
}

// ---------------------------------------------------------------- methods

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Method {
    Floor,
    FloorBridge,
    Replay,
    Shell,
    Spawner,
    SpawnerTools,
    SpawnerNet,
}

const METHODS: [Method; 7] = [
    Method::Floor,
    Method::FloorBridge,
    Method::Replay,
    Method::Shell,
    Method::Spawner,
    Method::SpawnerTools,
    Method::SpawnerNet,
];

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::Floor => "floor (Engine API, network none)",
            Method::FloorBridge => "floor on the internal bridge network",
            Method::Replay => "the daemon's Docker calls, replayed bare",
            Method::Shell => "shell `docker run --rm`",
            Method::Spawner => "workers-spawner end to end",
            Method::SpawnerTools => "workers-spawner, offline with tools (egress socket)",
            Method::SpawnerNet => "workers-spawner, internet with an allow-list (egress socket)",
        }
    }
}

/// Follows `stream` from its current end on a connection of its own (one
/// XREAD BLOCK loop, no polling), handing each entry's JSON and the instant
/// it was read to `on_entry`, until the task is aborted.
async fn follow_stream(
    bus: &Bus,
    stream: String,
    mut on_entry: impl FnMut(Instant, Value) + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut last = bus.tail_id(&stream).await?;
    let block = Duration::from_secs(1);
    let mut conn = bus.blocking_connection(block).await?;
    let b = bus.clone();
    Ok(tokio::spawn(async move {
        loop {
            let read = b
                .read_after(&mut conn, &[stream.as_str()], &[last.clone()], block)
                .await;
            let batches = match read {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("bench: reading {stream} failed: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Ok(c) = b.blocking_connection(block).await {
                        conn = c;
                    }
                    continue;
                }
            };
            let now = Instant::now();
            for (_, entries) in batches {
                for e in entries {
                    last = e.id.clone();
                    if let Some(v) = e
                        .data
                        .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
                    {
                        on_entry(now, v);
                    }
                }
            }
        }
    }))
}

/// Requests waiting for their result: the result and the instant it was read.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<(Instant, Value)>>>>;

/// Results of the daemon read on a connection of their own, matched to
/// waiting requests by request id (one XREAD BLOCK loop, no polling).
struct ResultWatcher {
    bus: Bus,
    waiters: Waiters,
    task: tokio::task::JoinHandle<()>,
}

impl ResultWatcher {
    async fn start(bus: Bus) -> anyhow::Result<ResultWatcher> {
        let waiters: Waiters = Arc::default();
        let stream = bus.names.result.clone();
        let w = waiters.clone();
        let task = follow_stream(&bus, stream, move |now, v| {
            let rid = v["request_id"].as_str().unwrap_or_default().to_string();
            if let Some(tx) = w.lock().expect("waiters").remove(&rid) {
                let _ = tx.send((now, v));
            }
        })
        .await?;
        Ok(ResultWatcher { bus, waiters, task })
    }

    /// Registers `rid`, then publishes the request; the receiver gets the
    /// result and the instant it was read.
    async fn publish(
        &self,
        rid: &str,
        preset: &str,
        prompt: &str,
    ) -> anyhow::Result<(Instant, oneshot::Receiver<(Instant, Value)>)> {
        let json =
            json!({"request_id": rid, "worker_config_id": preset, "task": {"prompt": prompt}});
        self.publish_json(rid, json).await
    }

    /// Like [`ResultWatcher::publish`], for a whole request body.
    async fn publish_json(
        &self,
        rid: &str,
        json: Value,
    ) -> anyhow::Result<(Instant, oneshot::Receiver<(Instant, Value)>)> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters")
            .insert(rid.to_string(), tx);
        let json = json.to_string();
        let t0 = Instant::now();
        self.bus.publish_spawn(&json).await?;
        Ok((t0, rx))
    }

    /// One request to its result: (milliseconds, result). Gives up early
    /// when `daemon` is gone.
    async fn request(
        &self,
        rid: &str,
        preset: &str,
        prompt: &str,
        timeout: Duration,
        daemon: Option<Proc>,
    ) -> anyhow::Result<(f64, Value)> {
        let (t0, mut rx) = self.publish(rid, preset, prompt).await?;
        let give_up = t0 + timeout;
        let outcome = loop {
            match tokio::time::timeout(Duration::from_secs(1), &mut rx).await {
                Ok(Ok((t1, v))) => break Ok(((t1 - t0).as_secs_f64() * 1000.0, v)),
                Ok(Err(_)) => break Err(anyhow::anyhow!("result watcher stopped")),
                Err(_) if daemon.is_some_and(|p| !p.alive()) => {
                    break Err(anyhow::anyhow!("no result for {rid}: the daemon is gone"))
                }
                Err(_) if Instant::now() > give_up => {
                    break Err(anyhow::anyhow!("no result for {rid} within {timeout:?}"))
                }
                Err(_) => {}
            }
        };
        if outcome.is_err() {
            self.waiters.lock().expect("waiters").remove(rid);
        }
        outcome
    }
}

impl Drop for ResultWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ctx {
    args: Args,
    docker: Docker,
    watcher: ResultWatcher,
    run_id: String,
    seq: AtomicU64,
    /// Timings reported in the spawner's results (queue, start, run, e2e).
    breakdown: Mutex<Vec<[f64; 4]>>,
    /// Phases of the floor (create, start, wait, remove), ms.
    floor_phases: Mutex<Vec<[f64; 4]>>,
    /// The daemon's own Docker wrapper, for the replay.
    engine: workers_spawner::adapters::engine::Engine,
    /// `--image` as the daemon prepares it (the replay runs the shim in it).
    prepared_image: String,
    /// The main daemon.
    daemon: Option<Proc>,
}

impl Ctx {
    fn next_id(&self, what: &str) -> String {
        format!(
            "{}-{what}-{}",
            self.run_id,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Bare Engine API: create (the daemon's hardened HostConfig), start,
    /// wait, remove.
    async fn floor_one(&self, network: &str) -> anyhow::Result<f64> {
        let name = self.next_id("floor");
        let mut labels = HashMap::new();
        labels.insert(PREFIX_LABEL.to_string(), self.args.prefix.clone());
        let memory: i64 = 64 << 20;
        let body = ContainerCreateBody {
            image: Some(self.args.image.clone()),
            cmd: Some(CMD.iter().map(|s| s.to_string()).collect()),
            env: Some(vec!["HOME=/home/worker".to_string()]),
            user: Some("1000:1000".to_string()),
            working_dir: Some("/workspace".to_string()),
            labels: Some(labels),
            attach_stdin: Some(false),
            open_stdin: Some(false),
            tty: Some(false),
            network_disabled: Some(network == "none"),
            host_config: Some(HostConfig {
                init: Some(true),
                nano_cpus: Some(1_000_000_000),
                memory: Some(memory),
                memory_swap: Some(memory),
                pids_limit: Some(256),
                cap_drop: Some(vec!["ALL".to_string()]),
                security_opt: Some(vec!["no-new-privileges:true".to_string()]),
                privileged: Some(false),
                readonly_rootfs: Some(false),
                network_mode: Some(network.to_string()),
                ipc_mode: Some("private".to_string()),
                auto_remove: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t0 = Instant::now();
        let opts = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let id = self.docker.create_container(Some(opts), body).await?.id;
        let (mut t_start, mut t_wait) = (t0, t0);
        let t_create = Instant::now();
        let run = async {
            self.docker
                .start_container(&id, None::<StartContainerOptions>)
                .await?;
            t_start = Instant::now();
            let mut w = self
                .docker
                .wait_container(&id, None::<WaitContainerOptions>);
            let code = match w.next().await {
                Some(Ok(r)) => r.status_code,
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => -1,
            };
            t_wait = Instant::now();
            anyhow::ensure!(code == 0, "exit code {code}");
            Ok(())
        }
        .await;
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        self.docker.remove_container(&id, Some(opts)).await?;
        run?;
        let end = Instant::now();
        if network == "none" {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
            self.floor_phases.lock().expect("phases").push([
                ms(t0, t_create),
                ms(t_create, t_start),
                ms(t_start, t_wait),
                ms(t_wait, end),
            ]);
        }
        Ok((end - t0).as_secs_f64() * 1000.0)
    }

    /// The Docker calls the daemon makes for one worker, through the
    /// daemon's own `Engine`, without Redis or rendering: inspect by name
    /// (404), create (network none, behind the delivery shim), attach
    /// stdin and output, start, write the files, read the output, wait, inspect,
    /// remove.
    async fn replay_one(&self) -> anyhow::Result<f64> {
        use workers_spawner::model::render::RenderedFile;
        let name = self.next_id("replay");
        let t0 = Instant::now();
        anyhow::ensure!(self.engine.inspect(&name).await.is_err(), "{name} exists");
        let mut labels = HashMap::new();
        labels.insert(PREFIX_LABEL.to_string(), self.args.prefix.clone());
        let memory: i64 = 64 << 20;
        let body = ContainerCreateBody {
            image: Some(self.prepared_image.clone()),
            cmd: Some(workers_spawner::model::delivery::shim_command(
                &CMD.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                workers_spawner::model::delivery::ShimMode::Run,
            )),
            attach_stdin: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(true),
            network_disabled: Some(true),
            env: Some(vec!["HOME=/home/worker".to_string()]),
            user: Some("1000:1000".to_string()),
            working_dir: Some("/workspace".to_string()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                init: Some(true),
                nano_cpus: Some(1_000_000_000),
                memory: Some(memory),
                memory_swap: Some(memory),
                pids_limit: Some(256),
                cap_drop: Some(vec!["ALL".to_string()]),
                security_opt: Some(vec!["no-new-privileges:true".to_string()]),
                network_mode: Some("none".to_string()),
                ipc_mode: Some("private".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self.engine.create(&name, body).await?;
        let files = vec![
            RenderedFile {
                path: "/home/worker/.claude/CLAUDE.md".into(),
                content: "# Instructions\n".repeat(200),
                mode: 0o644,
            },
            RenderedFile {
                path: "/workspace/.task/prompt.md".into(),
                content: "ok".into(),
                mode: 0o644,
            },
        ];
        let run = async {
            let payload = workers_spawner::model::delivery::payload(&files, &[])?;
            let (stdin, mut output) = self.engine.attach(&id).await?;
            self.engine.start(&id).await?;
            workers_spawner::adapters::engine::Engine::deliver(stdin, &payload).await?;
            let follow = tokio::spawn(async move { while output.next().await.is_some() {} });
            let code = self.engine.wait(&id).await?;
            let _ = follow.await;
            let facts = self.engine.inspect(&id).await?;
            anyhow::ensure!(code == 0 && facts.exit_code == Some(0), "exit code {code}");
            Ok(())
        }
        .await;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.engine.remove(&id).await?;
        run?;
        // Like the spawner's figure: up to the result, before the removal.
        Ok(ms)
    }

    /// `docker run --rm` from the CLI.
    async fn shell_one(&self) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let out = tokio::process::Command::new("docker")
            .args([
                "run",
                "--rm",
                "--init",
                "--network",
                "none",
                "--user",
                "1000:1000",
            ])
            .arg("--label")
            .arg(format!("{PREFIX_LABEL}={}", self.args.prefix))
            .arg(&self.args.image)
            .args(CMD)
            .output()
            .await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            out.status.success() && out.stdout == b"ok\n",
            "docker run: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(ms)
    }

    /// XADD to the result entry, with `preset`; `main`: the spawner
    /// method whose breakdown is kept.
    async fn spawner_one(&self, preset: &str, main: bool) -> anyhow::Result<f64> {
        let rid = self.next_id("req");
        let (ms, v) = self
            .watcher
            .request(&rid, preset, "ok", Duration::from_secs(120), self.daemon)
            .await?;
        anyhow::ensure!(
            v["status"] == "succeeded" && v["output"] == "ok\n",
            "result of {rid}: {}",
            v
        );
        if !main {
            return Ok(ms);
        }
        let t = &v["timings"];
        let f = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
        self.breakdown.lock().expect("breakdown").push([
            f("queue_ms"),
            f("start_ms"),
            f("run_ms"),
            ms,
        ]);
        Ok(ms)
    }

    async fn one(&self, m: Method) -> anyhow::Result<f64> {
        match m {
            Method::Floor => self.floor_one("none").await,
            Method::FloorBridge => self.floor_one(&self.args.worker_network).await,
            Method::Replay => self.replay_one().await,
            Method::Shell => self.shell_one().await,
            Method::Spawner => self.spawner_one(&self.args.preset, true).await,
            Method::SpawnerTools => self.spawner_one(&self.args.tools_preset, false).await,
            Method::SpawnerNet => self.spawner_one(&self.args.net_preset, false).await,
        }
    }

    /// `n` samples of `m` with `c` in flight; returns latencies, wall time
    /// and failures.
    async fn batch(&self, m: Method, c: usize, n: usize) -> (Vec<f64>, f64, usize) {
        let next = AtomicUsize::new(0);
        let lat = Mutex::new(Vec::with_capacity(n));
        let failures = AtomicUsize::new(0);
        let t0 = Instant::now();
        let (next_r, lat_r, failures_r) = (&next, &lat, &failures);
        let lanes = (0..c).map(|_| async move {
            while next_r.fetch_add(1, Ordering::Relaxed) < n {
                match self.one(m).await {
                    Ok(ms) => lat_r.lock().expect("lat").push(ms),
                    Err(e) => {
                        eprintln!("bench: {m:?} failed: {e:#}");
                        failures_r.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        futures_util::future::join_all(lanes).await;
        let wall = t0.elapsed().as_secs_f64();
        (
            lat.into_inner().expect("lat"),
            wall,
            failures.load(Ordering::Relaxed),
        )
    }
}

// ---------------------------------------------------------------- latency

struct Level {
    c: usize,
    stats: HashMap<Method, MethodStats>,
    daemon_cpu_s: f64,
    daemon_rss_max_mib: f64,
    daemon_hwm_mib: f64,
    breakdown: Vec<[f64; 4]>,
    floor_phases: Vec<[f64; 4]>,
}

fn means(rows: &[[f64; 4]]) -> [f64; 4] {
    let mut out = [0.0; 4];
    for (i, o) in out.iter_mut().enumerate() {
        let v: Vec<f64> = rows
            .iter()
            .map(|b| b[i])
            .filter(|x| x.is_finite())
            .collect();
        *o = v.iter().sum::<f64>() / v.len().max(1) as f64;
    }
    out
}

async fn latency(ctx: &Ctx, cfg: &Config, daemon: Option<Proc>) -> Vec<Level> {
    let sampler = daemon.map(RssSampler::start);
    // Warm-up (not counted): first calls pay for connections and caches.
    for m in METHODS {
        let _ = ctx.batch(m, 1, 2).await;
    }
    ctx.breakdown.lock().expect("breakdown").clear();
    ctx.floor_phases.lock().expect("phases").clear();
    let mut levels = Vec::new();
    for &c in &cfg.levels {
        let batch = cfg
            .samples
            .div_ceil(10)
            .max(4 * c)
            .min(cfg.samples.max(c))
            .max(1);
        let rounds = cfg.samples.div_ceil(batch);
        eprintln!("bench: concurrency {c}: {rounds} round(s) of {batch} per method, interleaved");
        if let (Some(s), Some(p)) = (&sampler, daemon) {
            s.reset(p);
        }
        let mut stats: HashMap<Method, MethodStats> = HashMap::new();
        let mut cpu = 0.0;
        for r in 0..rounds {
            // Rotate the order each round so drift hits every method alike.
            if daemon.is_some_and(|p| !p.alive()) {
                eprintln!("bench: the daemon is gone; stopping the latency run");
                break;
            }
            for k in 0..METHODS.len() {
                let m = METHODS[(r + k) % METHODS.len()];
                let cpu0 = daemon.map(|p| p.cpu_secs()).unwrap_or(0.0);
                let (lat, wall, failures) = ctx.batch(m, c, batch).await;
                if m == Method::Spawner {
                    cpu += daemon.map(|p| p.cpu_secs()).unwrap_or(0.0) - cpu0;
                }
                let s = stats.entry(m).or_default();
                s.lat_ms.extend(lat);
                s.wall_s += wall;
                s.failures += failures;
            }
            eprintln!(
                "bench:   round {}/{rounds}: p50 floor {:.0} ms, spawner {:.0} ms",
                r + 1,
                stats[&Method::Floor].p50(),
                stats[&Method::Spawner].p50()
            );
        }
        let breakdown = std::mem::take(&mut *ctx.breakdown.lock().expect("breakdown"));
        let floor_phases = std::mem::take(&mut *ctx.floor_phases.lock().expect("phases"));
        levels.push(Level {
            c,
            stats,
            daemon_cpu_s: cpu,
            daemon_rss_max_mib: sampler.as_ref().map(|s| s.max_mib()).unwrap_or(0.0),
            daemon_hwm_mib: daemon
                .map(|p| p.status("VmHWM") as f64 / 1024.0)
                .unwrap_or(0.0),
            breakdown,
            floor_phases,
        });
    }
    levels
}

// ---------------------------------------------------------------- live

struct Live {
    n: usize,
    reached: usize,
    ramp_s: f64,
    ramp_cpu_s: f64,
    idle_s: f64,
    idle_cpu_pct: f64,
    idle_rss_mib: f64,
    idle_rss_max_mib: f64,
    threads: u64,
    rss_anon_mib: f64,
    rss_file_mib: f64,
    containers_running: usize,
    drain_s: f64,
    statuses: HashMap<String, usize>,
    missing: usize,
}

async fn metric(addr: &str, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

async fn running_containers(docker: &Docker, prefix: &str) -> usize {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![
            "io.workers-spawner.managed=true".to_string(),
            format!("{PREFIX_LABEL}={prefix}"),
            // Workers, not the warm pool's idle containers.
            "io.workers-spawner.kind=oneshot".to_string(),
        ],
    );
    filters.insert("status".to_string(), vec!["running".to_string()]);
    let opts = ListContainersOptions {
        all: false,
        filters: Some(filters),
        ..Default::default()
    };
    docker
        .list_containers(Some(opts))
        .await
        .map(|l| l.len())
        .unwrap_or(0)
}

async fn live(ctx: &Ctx, cfg: &Config, daemon: Option<Proc>) -> Live {
    let n = cfg.live;
    let running = move || async move {
        match &ctx.args.metrics_addr {
            Some(a) => metric(a, "workers_spawner_running_workers")
                .await
                .unwrap_or(0.0) as usize,
            None => running_containers(&ctx.docker, &ctx.args.prefix).await,
        }
    };
    let cpu = || daemon.map(|p| p.cpu_secs()).unwrap_or(0.0);
    eprintln!("bench: live: starting {n} sleeping workers");
    let t0 = Instant::now();
    let cpu0 = cpu();
    let mut pending = Vec::new();
    for _ in 0..n {
        let rid = ctx.next_id("live");
        match ctx
            .watcher
            .publish(&rid, &ctx.args.shell_preset, "sleep 900")
            .await
        {
            Ok((_, rx)) => pending.push((rid, rx)),
            Err(e) => eprintln!("bench: publishing {rid} failed: {e}"),
        }
    }
    let mut reached = 0;
    let give_up = Instant::now() + Duration::from_secs(if ctx.args.smoke { 60 } else { 600 });
    while Instant::now() < give_up {
        reached = running().await;
        if reached >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ramp_s = t0.elapsed().as_secs_f64();
    let ramp_cpu_s = cpu() - cpu0;
    eprintln!("bench: live: {reached}/{n} running after {ramp_s:.1} s; idle sampling");
    // Let the start-up work settle, then measure the idle daemon.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sampler = daemon.map(RssSampler::start);
    let (c0, i0) = (cpu(), Instant::now());
    let mut rss_sum = 0.0;
    let mut rss_n = 0.0;
    while i0.elapsed() < cfg.idle {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(p) = daemon {
            rss_sum += p.status("VmRSS") as f64 / 1024.0;
            rss_n += 1.0;
        }
    }
    let idle_s = i0.elapsed().as_secs_f64();
    let idle_cpu_pct = (cpu() - c0) / idle_s * 100.0;
    let containers_running = running_containers(&ctx.docker, &ctx.args.prefix).await;
    let idle_rss_max_mib = sampler.as_ref().map(|s| s.max_mib()).unwrap_or(0.0);
    drop(sampler);
    eprintln!("bench: live: cancelling");
    let t1 = Instant::now();
    for (rid, _) in &pending {
        let json = json!({"command": "cancel", "request_id": rid}).to_string();
        if let Err(e) = ctx.watcher.bus.publish_control(&json).await {
            eprintln!("bench: cancel of {rid} failed: {e}");
        }
    }
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let mut missing = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    for (rid, rx) in pending {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok((_, v))) => {
                *statuses
                    .entry(v["status"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            _ => {
                eprintln!("bench: live: no result for {rid}");
                missing += 1;
            }
        }
    }
    Live {
        n,
        reached,
        ramp_s,
        ramp_cpu_s,
        idle_s,
        idle_cpu_pct,
        idle_rss_mib: rss_sum / f64::max(rss_n, 1.0),
        idle_rss_max_mib,
        threads: daemon.map(|p| p.status("Threads")).unwrap_or(0),
        rss_anon_mib: daemon.map(|p| p.status("RssAnon")).unwrap_or(0) as f64 / 1024.0,
        rss_file_mib: daemon.map(|p| p.status("RssFile")).unwrap_or(0) as f64 / 1024.0,
        containers_running,
        drain_s: t1.elapsed().as_secs_f64(),
        statuses,
        missing,
    }
}

// ---------------------------------------------------------------- output

struct Output {
    bound: Option<u64>,
    lines: u64,
    delivered: u64,
    dropped: u64,
    out_of_order: u64,
    status: String,
    forward_s: f64,
    first_line_ms: f64,
    total_s: f64,
    rss_max_mib: f64,
    cpu_s: f64,
}

impl Output {
    fn lost(&self) -> i64 {
        self.lines as i64 - self.delivered as i64 - self.dropped as i64
    }
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.forward_s.max(1e-9)
    }
}

async fn output(
    redis_url: &str,
    prefix: &str,
    preset: &str,
    lines: u64,
    bound: Option<u64>,
    daemon: Option<Proc>,
) -> anyhow::Result<Output> {
    let names = StreamNames::new(prefix, "workers-spawner");
    let bus = Bus::connect(redis_url, names, 1_000_000).await?;
    let watcher = ResultWatcher::start(bus.clone()).await?;
    let events = bus.names.events.clone();
    let mut last = bus.tail_id(&events).await?;
    let block = Duration::from_millis(500);
    let mut conn = bus.blocking_connection(block).await?;
    let sampler = daemon.map(RssSampler::start);
    let cpu0 = daemon.map(|p| p.cpu_secs()).unwrap_or(0.0);
    let rid = format!("{prefix}-output-{}", std::process::id());
    eprintln!("bench: output: {lines} lines, bound {bound:?} (prefix {prefix})");
    let (t0, mut rx) = watcher
        .publish(&rid, preset, &format!("seq 1 {lines}"))
        .await?;
    let (mut delivered, mut dropped, mut out_of_order, mut prev) = (0u64, 0u64, 0u64, 0u64);
    let (mut first, mut lastl): (Option<Instant>, Option<Instant>) = (None, None);
    let mut result: Option<Value> = None;
    let mut quiet_since = Instant::now();
    let give_up = Instant::now() + Duration::from_secs(600);
    loop {
        if result.is_none() {
            if let Ok((_, v)) = rx.try_recv() {
                result = Some(v);
            }
        }
        let done = delivered + dropped >= lines;
        if (result.is_some() && (done || quiet_since.elapsed() > Duration::from_secs(10)))
            || Instant::now() > give_up
        {
            break;
        }
        let batches = bus
            .read_after(&mut conn, &[events.as_str()], &[last.clone()], block)
            .await?;
        let now = Instant::now();
        for (_, entries) in batches {
            for e in entries {
                last = e.id.clone();
                let Some(v) = e
                    .data
                    .and_then(|d| serde_json::from_slice::<Value>(&d).ok())
                else {
                    continue;
                };
                if v["request_id"] != rid.as_str() {
                    continue;
                }
                quiet_since = now;
                match v["type"].as_str() {
                    Some("output") => {
                        delivered += 1;
                        first.get_or_insert(now);
                        lastl = Some(now);
                        let n = v["data"]["text"]
                            .as_str()
                            .and_then(|t| t.parse::<u64>().ok())
                            .unwrap_or(0);
                        if n <= prev {
                            out_of_order += 1;
                        }
                        prev = n;
                    }
                    Some("output_dropped") => {
                        dropped += v["data"]["lines"].as_u64().unwrap_or(0);
                    }
                    _ => {}
                }
            }
        }
    }
    let status = match result {
        Some(v) => v["status"].as_str().unwrap_or("?").to_string(),
        None => "no result".to_string(),
    };
    Ok(Output {
        bound,
        lines,
        delivered,
        dropped,
        out_of_order,
        status,
        forward_s: match (first, lastl) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        },
        first_line_ms: first
            .map(|f| (f - t0).as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN),
        total_s: lastl.map(|l| (l - t0).as_secs_f64()).unwrap_or(f64::NAN),
        rss_max_mib: sampler.as_ref().map(|s| s.max_mib()).unwrap_or(0.0),
        cpu_s: daemon.map(|p| p.cpu_secs()).unwrap_or(0.0) - cpu0,
    })
}

// ---------------------------------------------------------------- warm pool

/// Warm-pool requests against cold ones on the same daemon, one at a time:
/// per sample, ms from the XADD to reading the `started` event, the first
/// `output` event (the agent's own first line) and the result.
struct PoolRun {
    size: u32,
    pooled: Vec<[f64; 3]>,
    cold: Vec<[f64; 3]>,
    failures: Vec<String>,
}

/// When the first `started` and `output` events of watched requests were read.
type EventTimes = Arc<Mutex<HashMap<String, [Option<Instant>; 2]>>>;

async fn pool(ctx: &Ctx, cfg: &Config) -> anyhow::Result<PoolRun> {
    let bus = ctx.watcher.bus.clone();
    let events = bus.names.events.clone();
    let times: EventTimes = Arc::default();
    let t = times.clone();
    let reader = follow_stream(&bus, events, move |now, v| {
        let k = match v["type"].as_str() {
            Some("started") => 0,
            Some("output") => 1,
            _ => return,
        };
        let rid = v["request_id"].as_str().unwrap_or_default();
        if let Some(slot) = t.lock().expect("times").get_mut(rid) {
            slot[k].get_or_insert(now);
        }
    })
    .await?;
    let size = ctx.args.pool_size;
    let mut run = PoolRun {
        size,
        pooled: Vec::new(),
        cold: Vec::new(),
        failures: Vec::new(),
    };
    eprintln!(
        "bench: warm pool: {} samples each of {} (pool {size}) and {}",
        cfg.pool_samples, ctx.args.pool_preset, ctx.args.preset
    );
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    for i in 0..cfg.pool_samples * 2 {
        // Every request, pooled or cold, starts with a full pool and no
        // refill under way, so neither pays for the other's clean-up.
        let full_by = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match &ctx.args.metrics_addr {
                Some(a) => metric(a, "workers_spawner_pool_ready").await.unwrap_or(0.0),
                None => f64::from(size),
            };
            if ready >= f64::from(size) || Instant::now() > full_by {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let pooled = (i % 2 == 0) == (i / 2 % 2 == 0);
        let preset = if pooled {
            &ctx.args.pool_preset
        } else {
            &ctx.args.preset
        };
        let rid = ctx.next_id(if pooled { "pooled" } else { "cold" });
        times
            .lock()
            .expect("times")
            .insert(rid.clone(), [None, None]);
        let (t0, rx) = ctx.watcher.publish(&rid, preset, "ok").await?;
        let got = tokio::time::timeout(Duration::from_secs(60), rx).await;
        let outcome = match got {
            Ok(Ok((t1, v))) if v["status"] == "succeeded" && v["output"] == "ok\n" => {
                let mut seen = [None, None];
                for _ in 0..100 {
                    seen = times.lock().expect("times")[&rid];
                    if seen.iter().all(Option::is_some) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                match seen {
                    [Some(s), Some(o)] => Ok([ms(t0, s), ms(t0, o), ms(t0, t1)]),
                    _ => Err(format!("{rid}: events missing ({seen:?})")),
                }
            }
            Ok(Ok((_, v))) => Err(format!("{rid}: result {v}")),
            _ => Err(format!("{rid}: no result within 60 s")),
        };
        times.lock().expect("times").remove(&rid);
        match outcome {
            Ok(x) if pooled => run.pooled.push(x),
            Ok(x) => run.cold.push(x),
            Err(e) => run.failures.push(e),
        }
    }
    reader.abort();
    Ok(run)
}

// ---------------------------------------------------------------- egress

struct EgressRun {
    mib: u64,
    tunnel_s: Vec<f64>,
    direct_s: Vec<f64>,
    inside_s: Vec<f64>,
    model_via: MethodStats,
    model_direct: MethodStats,
    cpu_s: f64,
    rss_max_mib: f64,
    rss_start_mib: f64,
    failures: Vec<String>,
}

/// The local upstream: `GET /big` is `mib` MiB, anything else a small JSON
/// reply; HTTP/1.1 keep-alive.
async fn upstream(listener: tokio::net::TcpListener, mib: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut c, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = c.set_nodelay(true);
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                // One request: its head, then its body by Content-Length.
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match c.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..head_end + len);
                if head.contains(" /big ") {
                    let total = mib << 20;
                    let _ = c
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                    let block = vec![b'x'; 1 << 20];
                    for _ in 0..mib {
                        if c.write_all(&block).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let body = "{\"id\":\"msg_bench\",\"type\":\"message\"}";
                    let _ = c
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                                .as_bytes(),
                        )
                        .await;
                }
            }
        });
    }
}

/// Reads an HTTP response head from `s`; returns the bytes read after it.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> anyhow::Result<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            return Ok((head, buf[i + 4..].to_vec()));
        }
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Downloads `/big` over `s` (after `preamble`, e.g. a CONNECT); seconds.
async fn download<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    connect: Option<&str>,
    want: u64,
) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t0 = Instant::now();
    if let Some(target) = connect {
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await?;
        let (head, _) = read_head(&mut s).await?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "CONNECT: {head}");
    }
    s.write_all(b"GET /big HTTP/1.1\r\nHost: big.test\r\nConnection: close\r\n\r\n")
        .await?;
    let (head, rest) = read_head(&mut s).await?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET: {head}");
    let mut got = rest.len() as u64;
    let mut buf = vec![0u8; 256 * 1024];
    while got < want {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed after {got} of {want} bytes");
        got += n as u64;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// `n` sequential POSTs on one kept-alive connection; ms each.
async fn posts<S>(s: S, path: &str, headers: &[(&str, &str)], n: usize) -> anyhow::Result<Vec<f64>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full};
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await?;
    tokio::spawn(conn);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = hyper::Request::post(path)
            .header("host", "bench.test")
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(bytes::Bytes::from_static(
            b"{\"model\":\"m\",\"max_tokens\":1}",
        )))?;
        // The connection takes the next request once the last is done.
        send.ready().await?;
        let t0 = Instant::now();
        let resp = send.send_request(req).await?;
        anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
        resp.into_body().collect().await?;
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

async fn egress(ctx: &Ctx, cfg: &Config, daemon: Option<Proc>) -> anyhow::Result<EgressRun> {
    let mib = ctx
        .args
        .transfer_mib
        .unwrap_or(if ctx.args.smoke { 8 } else { 100 });
    let port = ctx.args.upstream_port;
    anyhow::ensure!(
        port != 0,
        "--upstream-port is needed for the egress scenario"
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let server = tokio::spawn(upstream(listener, mib));
    let mut run = EgressRun {
        mib,
        tunnel_s: Vec::new(),
        direct_s: Vec::new(),
        inside_s: Vec::new(),
        model_via: MethodStats::default(),
        model_direct: MethodStats::default(),
        cpu_s: 0.0,
        rss_max_mib: 0.0,
        rss_start_mib: daemon
            .map(|p| p.status("VmRSS") as f64 / 1024.0)
            .unwrap_or(0.0),
        failures: Vec::new(),
    };
    // A worker that waits while the driver uses its socket.
    let rid = ctx.next_id("egress-holder");
    let (_, holder) = ctx
        .watcher
        .publish(&rid, &ctx.args.proxy_preset, "sleep 300")
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (name, placeholder) = loop {
        let found = ctx
            .docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![format!("io.workers-spawner.request-id={rid}")],
                )])),
                ..Default::default()
            }))
            .await?
            .into_iter()
            .next()
            .and_then(|c| c.names.and_then(|n| n.into_iter().next()));
        if let Some(n) = found {
            let n = n.trim_start_matches('/').to_string();
            let i = ctx
                .docker
                .inspect_container(
                    &n,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await?;
            let env = i.config.and_then(|c| c.env).unwrap_or_default();
            let ph = env
                .iter()
                .find_map(|e| e.strip_prefix("ANTHROPIC_API_KEY=").map(str::to_string))
                .unwrap_or_default();
            break (n, ph);
        }
        anyhow::ensure!(Instant::now() < deadline, "the egress holder did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sock = format!(
        "{}/sock",
        workers_spawner::model::egress::folder(&ctx.args.egress_dir, &name)
    );
    let rounds = if ctx.args.smoke { 2 } else { 5 };
    eprintln!("bench: egress: {rounds} tunnel rounds of {mib} MiB through {sock}");
    let sampler = daemon.map(RssSampler::start);
    let want = mib << 20;
    for _ in 0..rounds {
        let cpu0 = daemon.map(|p| p.cpu_secs()).unwrap_or(0.0);
        match tokio::net::UnixStream::connect(&sock).await {
            Ok(s) => match download(s, Some(&format!("big.test:{port}")), want).await {
                Ok(t) => run.tunnel_s.push(t),
                Err(e) => run.failures.push(format!("tunnel: {e:#}")),
            },
            Err(e) => run.failures.push(format!("socket {sock}: {e}")),
        }
        run.cpu_s += daemon.map(|p| p.cpu_secs()).unwrap_or(0.0) - cpu0;
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        match download(s, None, want).await {
            Ok(t) => run.direct_s.push(t),
            Err(e) => run.failures.push(format!("direct: {e:#}")),
        }
    }
    run.rss_max_mib = sampler.as_ref().map(|s| s.max_mib()).unwrap_or(0.0);
    drop(sampler);
    // Model calls, kept alive both ways.
    let n = cfg.samples.max(50) * 2;
    match tokio::net::UnixStream::connect(&sock).await {
        Ok(s) => match posts(
            s,
            "/model/anthropic/v1/messages",
            &[("x-api-key", &placeholder)],
            n,
        )
        .await
        {
            Ok(v) => run.model_via.lat_ms = v,
            Err(e) => run.failures.push(format!("model via the socket: {e:#}")),
        },
        Err(e) => run.failures.push(format!("socket {sock}: {e}")),
    }
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    match posts(s, "/v1/messages", &[("x-api-key", "sk-direct")], n).await {
        Ok(v) => run.model_direct.lat_ms = v,
        Err(e) => run.failures.push(format!("model direct: {e:#}")),
    }
    publish_cancel(ctx, &rid).await;
    let _ = tokio::time::timeout(Duration::from_secs(60), holder).await;
    // From inside a worker: plain HTTP through HTTP_PROXY, the forwarder
    // and the socket (busybox `time` prints seconds with two decimals).
    for _ in 0..rounds.min(3) {
        let rid = ctx.next_id("egress-inside");
        let script = format!("time wget -qO /dev/null http://big.test:{port}/big 2>&1");
        match ctx
            .watcher
            .request(
                &rid,
                &ctx.args.proxy_preset,
                &script,
                Duration::from_secs(120),
                None,
            )
            .await
        {
            Ok((_, v)) => {
                let out = v["output"].as_str().unwrap_or_default();
                let real = out
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("real"))
                    .and_then(|t| {
                        let t = t.trim().trim_end_matches('s');
                        let (m, s) = t.split_once('m').unwrap_or(("0", t));
                        Some(m.trim().parse::<f64>().ok()? * 60.0 + s.trim().parse::<f64>().ok()?)
                    });
                match real {
                    Some(t) if v["status"] == "succeeded" => run.inside_s.push(t),
                    _ => run.failures.push(format!("inside: {}", v)),
                }
            }
            Err(e) => run.failures.push(format!("inside: {e:#}")),
        }
    }
    server.abort();
    Ok(run)
}

/// Cancels `rid` through the control stream.
async fn publish_cancel(ctx: &Ctx, rid: &str) {
    let json = json!({"command": "cancel", "request_id": rid}).to_string();
    if let Err(e) = ctx.watcher.bus.publish_control(&json).await {
        eprintln!("bench: cancel of {rid} failed: {e}");
    }
}

// ---------------------------------------------------------------- sessions

/// Session follow-ups against a cold one-shot, one request at a time,
/// rotating: a follow-up task in a live session container (an exec), a
/// resumed one (the session's container ended by `cancel`, so the task gets
/// a new container on the kept volumes and reads the conversation record),
/// and a one-shot request of the same preset. Per request, ms from the XADD
/// to reading the `started` event (the agent runs) and the result.
struct SessionRun {
    live: Vec<[f64; 2]>,
    resumed: Vec<[f64; 2]>,
    cold: Vec<[f64; 2]>,
    failures: Vec<String>,
}

async fn sessions(ctx: &Ctx, cfg: &Config) -> anyhow::Result<SessionRun> {
    let bus = ctx.watcher.bus.clone();
    let times: EventTimes = Arc::default();
    let ended: Arc<Mutex<Vec<String>>> = Arc::default();
    let (t, e) = (times.clone(), ended.clone());
    let reader = follow_stream(&bus, bus.names.events.clone(), move |now, v| {
        match v["type"].as_str() {
            Some("started") => {
                let rid = v["request_id"].as_str().unwrap_or_default();
                if let Some(slot) = t.lock().expect("times").get_mut(rid) {
                    slot[0].get_or_insert(now);
                }
            }
            Some("session_expired") => {
                let sid = v["data"]["session_id"].as_str().unwrap_or_default();
                e.lock().expect("ended").push(sid.to_string());
            }
            _ => {}
        }
    })
    .await?;
    let mut run = SessionRun {
        live: Vec::new(),
        resumed: Vec::new(),
        cold: Vec::new(),
        failures: Vec::new(),
    };
    let preset = ctx.args.session_preset.clone();
    eprintln!(
        "bench: sessions: {} samples each of live, resumed and cold on {preset}",
        cfg.pool_samples
    );
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
    let tag = ctx.next_id("s");
    let live_sid = format!("{tag}-live");
    let resumed_sid = format!("{tag}-resumed");
    let body = |rid: &str, sid: Option<&str>| {
        let mut v = json!({"request_id": rid, "worker_config_id": preset,
                           "task": {"prompt": "true", "user_id": "bench"}});
        if let Some(s) = sid {
            v["task"]["session_id"] = json!(s);
        }
        v
    };
    // One request to its result: [XADD → started, XADD → result].
    let one = |rid: String, v: Value| {
        let times = times.clone();
        async move {
            times
                .lock()
                .expect("times")
                .insert(rid.clone(), [None, None]);
            let (t0, rx) = ctx
                .watcher
                .publish_json(&rid, v)
                .await
                .map_err(|e| e.to_string())?;
            let got = tokio::time::timeout(Duration::from_secs(60), rx).await;
            let out = match got {
                Ok(Ok((t1, v))) if v["status"] == "succeeded" => {
                    let mut started = None;
                    for _ in 0..100 {
                        started = times.lock().expect("times")[&rid][0];
                        if started.is_some() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    match started {
                        Some(s) => Ok([ms(t0, s), ms(t0, t1)]),
                        None => Err(format!("{rid}: no started event")),
                    }
                }
                Ok(Ok((_, v))) => Err(format!("{rid}: result {v}")),
                _ => Err(format!("{rid}: no result within 60 s")),
            };
            times.lock().expect("times").remove(&rid);
            out
        }
    };
    // Both sessions exist, with a conversation, before the first sample.
    for sid in [&live_sid, &resumed_sid] {
        let rid = ctx.next_id("s-first");
        if let Err(e) = one(rid.clone(), body(&rid, Some(sid))).await {
            run.failures.push(e);
        }
    }
    for i in 0..cfg.pool_samples * 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let kind = i % 3;
        if kind == 1 {
            // End the resumed session's container (its volumes stay), and
            // wait until it is gone: the next task gets a new container.
            ended.lock().expect("ended").clear();
            let cancel = json!({"command": "cancel", "session_id": resumed_sid}).to_string();
            bus.publish_control(&cancel).await?;
            let by = Instant::now() + Duration::from_secs(30);
            while !ended.lock().expect("ended").contains(&resumed_sid) && Instant::now() < by {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (label, v) = match kind {
            0 => ("live", body(&ctx.next_id("s-live"), Some(&live_sid))),
            1 => (
                "resumed",
                body(&ctx.next_id("s-resumed"), Some(&resumed_sid)),
            ),
            _ => ("cold", body(&ctx.next_id("s-cold"), None)),
        };
        let rid = v["request_id"].as_str().unwrap_or_default().to_string();
        match one(rid, v).await {
            Ok(x) if label == "live" => run.live.push(x),
            Ok(x) if label == "resumed" => run.resumed.push(x),
            Ok(x) => run.cold.push(x),
            Err(e) => run.failures.push(format!("{label}: {e}")),
        }
    }
    for sid in [&live_sid, &resumed_sid] {
        let end = json!({"command": "end_session", "session_id": sid}).to_string();
        let _ = bus.publish_control(&end).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    reader.abort();
    Ok(run)
}

// ---------------------------------------------------------------- fresh image

/// Requests on an image the daemon has never seen: per round a new image id
/// under the same name (a commit of `--fresh-from`), then its first request
/// (which prepares the image), then later ones, alternating with requests
/// on the project's test image. Milliseconds XADD → result.
struct FreshRun {
    first: Vec<f64>,
    later: Vec<f64>,
    project: Vec<f64>,
    failures: Vec<String>,
}

async fn fresh_image(ctx: &Ctx, cfg: &Config) -> anyhow::Result<FreshRun> {
    let args = &ctx.args;
    let mut run = FreshRun {
        first: Vec::new(),
        later: Vec::new(),
        project: Vec::new(),
        failures: Vec::new(),
    };
    let later_n = if args.smoke { 3 } else { 10 };
    eprintln!(
        "bench: fresh image: {} round(s) of {} on a new {} (from {}), {later_n} later requests each",
        cfg.fresh_rounds, args.fresh_preset, args.fresh_image, args.fresh_from
    );
    let (repo, tag) = args
        .fresh_image
        .split_once(':')
        .unwrap_or((args.fresh_image.as_str(), "latest"));
    let one = |rid: String, preset: String| async move {
        match ctx
            .watcher
            .request(&rid, &preset, "ok", Duration::from_secs(120), ctx.daemon)
            .await
        {
            Ok((ms, v)) if v["status"] == "succeeded" => Ok(ms),
            Ok((_, v)) => Err(format!("{rid}: result {v}")),
            Err(e) => Err(format!("{e:#}")),
        }
    };
    for round in 0..cfg.fresh_rounds {
        if round > 0 {
            // The daemon looks at a name again once its answer is older
            // than this: only then does it see the new image id.
            tokio::time::sleep(workers_spawner::adapters::images::RECHECK + Duration::from_secs(1))
                .await;
        }
        // A new image id: a commit of a container (never started) with a label of its own.
        let name = ctx.next_id("fresh-src");
        let mut labels = HashMap::new();
        labels.insert("io.workers-spawner.bench-fresh".to_string(), name.clone());
        let body = ContainerCreateBody {
            image: Some(args.fresh_from.clone()),
            labels: Some(labels),
            ..Default::default()
        };
        let c = ctx
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await?;
        let committed = ctx
            .docker
            .commit_container(
                bollard::query_parameters::CommitContainerOptions {
                    container: Some(c.id.clone()),
                    repo: Some(repo.to_string()),
                    tag: Some(tag.to_string()),
                    ..Default::default()
                },
                bollard::models::ContainerConfig::default(),
            )
            .await;
        let _ = ctx
            .docker
            .remove_container(
                &c.id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        committed?;
        match one(ctx.next_id("fresh-first"), args.fresh_preset.clone()).await {
            Ok(ms) => run.first.push(ms),
            Err(e) => run.failures.push(e),
        }
        for _ in 0..later_n {
            match one(ctx.next_id("fresh-later"), args.fresh_preset.clone()).await {
                Ok(ms) => run.later.push(ms),
                Err(e) => run.failures.push(e),
            }
            match one(ctx.next_id("fresh-project"), args.preset.clone()).await {
                Ok(ms) => run.project.push(ms),
                Err(e) => run.failures.push(e),
            }
        }
    }
    remove_fresh_images(&ctx.docker, &args.fresh_image).await;
    Ok(run)
}

/// Removes the fresh images and the images the daemon prepared from them.
async fn remove_fresh_images(docker: &Docker, fresh: &str) {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("io.workers-spawner.derived-from={fresh}")],
    );
    let prepared = docker
        .list_images(Some(bollard::query_parameters::ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec!["io.workers-spawner.bench-fresh".to_string()],
    );
    let sources = docker
        .list_images(Some(bollard::query_parameters::ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for img in prepared.iter().chain(sources.iter()) {
        let _ = docker
            .remove_image(
                &img.id,
                Some(bollard::query_parameters::RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await;
    }
}

// ---------------------------------------------------------------- report

/// The median of unsorted samples (NaN for none).
fn med(v: &[f64]) -> f64 {
    let mut x = v.to_vec();
    x.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    if x.is_empty() {
        f64::NAN
    } else {
        percentile(&x, 50.0)
    }
}

fn machine() -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    vec![
        ("CPU".into(), format!("{model}, {nproc} CPUs (nproc)")),
        ("Memory".into(), mem),
        (
            "Kernel".into(),
            read("/proc/sys/kernel/osrelease").trim().to_string(),
        ),
    ]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

struct Report<'a> {
    args: &'a Args,
    cfg: &'a Config,
    started: chrono::DateTime<chrono::Utc>,
    duration_s: f64,
    docker_version: String,
    load_start: String,
    load_end: String,
    levels: Vec<Level>,
    live: Option<Live>,
    outputs: Vec<Output>,
    pool: Option<PoolRun>,
    fresh: Option<FreshRun>,
    sessions: Option<SessionRun>,
    egress: Option<EgressRun>,
    failures: Vec<String>,
}

/// A table of sequential samples: per method and measure, n and the
/// percentiles (each sample holds one figure per measure), then failures.
fn sample_table<const N: usize>(
    w: &mut String,
    measures: &[&str; N],
    methods: &[(&str, &Vec<[f64; N]>)],
    failures: &[String],
) {
    let _ = writeln!(
        w,
        "| method | n | measure | p50 ms | p90 ms | p99 ms | max ms |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|");
    for (label, v) in methods {
        for (k, what) in measures.iter().enumerate() {
            let mut x: Vec<f64> = v.iter().map(|r| r[k]).collect();
            x.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
            let _ = writeln!(
                w,
                "| {label} | {} | {what} | {:.1} | {:.1} | {:.1} | {:.1} |",
                x.len(),
                percentile(&x, 50.0),
                percentile(&x, 90.0),
                percentile(&x, 99.0),
                x.last().copied().unwrap_or(f64::NAN)
            );
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(w, "\nFailures: {}", failures.join("; "));
    }
    let _ = writeln!(w);
}

impl Report<'_> {
    fn markdown(&self, analysis: &str) -> String {
        let mut o = String::new();
        let w = &mut o;
        let _ = writeln!(w, "# Benchmarks\n");
        let _ = writeln!(
            w,
            "Generated by `scripts/bench.sh` (driver: `examples/bench.rs`); rerun it to refresh \
             the figures. Each run regenerates everything except the analysis block.\n"
        );
        let _ = writeln!(
            w,
            "- Date: {} (run took {:.0} s)",
            self.started.format("%Y-%m-%d %H:%M UTC"),
            self.duration_s
        );
        let cmd = self
            .args
            .invocation
            .clone()
            .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
        let _ = writeln!(w, "- Command: `{cmd}`");
        for (k, v) in machine() {
            let _ = writeln!(w, "- {k}: {v}");
        }
        let _ = writeln!(w, "- Docker Engine: {}", self.docker_version);
        let _ = writeln!(
            w,
            "- Load average (1/5/15 min) at start: {}; at end: {}",
            self.load_start, self.load_end
        );
        let _ = writeln!(
            w,
            "- Samples: {} per method and level, concurrency {:?}; {} live workers, {} s idle; \
             {} output lines{}",
            self.cfg.samples,
            self.cfg.levels,
            self.cfg.live,
            self.cfg.idle.as_secs(),
            self.cfg.lines,
            if self.args.smoke { " (SMOKE run)" } else { "" }
        );
        if self.failures.is_empty() {
            let _ = writeln!(w, "- Failures: none\n");
        } else {
            let _ = writeln!(w, "- Failures: {}\n", self.failures.join("; "));
        }

        let _ = writeln!(w, "{analysis}\n");

        self.targets(w);
        self.latency_tables(w);
        self.live_table(w);
        self.output_table(w);
        self.pool_table(w);
        self.session_table(w);
        self.egress_table(w);
        self.fresh_table(w);
        self.method_notes(w);
        o
    }

    fn floor_and_spawner(&self, l: &Level) -> Option<(MethodStats, MethodStats, MethodStats)> {
        Some((
            l.stats.get(&Method::Floor)?.clone(),
            l.stats.get(&Method::Spawner)?.clone(),
            l.stats.get(&Method::Shell)?.clone(),
        ))
    }

    fn targets(&self, w: &mut String) {
        let _ = writeln!(w, "## Targets\n");
        let _ = writeln!(w, "| target | measured | verdict |");
        let _ = writeln!(w, "|---|---|---|");
        for l in &self.levels {
            let Some((f, s, sh)) = self.floor_and_spawner(l) else {
                continue;
            };
            let c = l.c;
            let d50 = s.p50() - f.p50();
            let _ = writeln!(
                w,
                "| c={c}: end-to-end p50 ≤ floor + 10 ms | {:.0} ms vs {:.0} ms: +{d50:.0} ms ({:.2}× floor) | {} |",
                s.p50(),
                f.p50(),
                s.p50() / f.p50(),
                verdict(d50 <= 10.0)
            );
            let d99 = s.p99() - f.p99();
            let _ = writeln!(
                w,
                "| c={c}: end-to-end p99 ≤ floor + 25 ms | {:.0} ms vs {:.0} ms: +{d99:.0} ms ({:.2}× floor) | {} |",
                s.p99(),
                f.p99(),
                s.p99() / f.p99(),
                verdict(d99 <= 25.0)
            );
            if c > 1 {
                let r = s.throughput() / f.throughput();
                let _ = writeln!(
                    w,
                    "| c={c}: throughput ≥ 90% of the floor's | {:.1} vs {:.1} req/s: {:.0}% | {} |",
                    s.throughput(),
                    f.throughput(),
                    r * 100.0,
                    verdict(r >= 0.9)
                );
            }
            let gain = sh.mean() - s.mean();
            let _ = writeln!(
                w,
                "| c={c}: ≥ 100 ms faster per request than `docker run --rm` (mean) | {:.0} ms vs {:.0} ms: {gain:+.0} ms | {} |",
                s.mean(),
                sh.mean(),
                verdict(gain >= 100.0)
            );
        }
        for l in &self.levels {
            let Some(f) = l.stats.get(&Method::Floor) else {
                continue;
            };
            for m in [Method::Spawner, Method::SpawnerTools, Method::SpawnerNet] {
                let Some(s) = l.stats.get(&m) else { continue };
                if l.c == 1 {
                    let d50 = s.p50() - f.p50();
                    let _ = writeln!(
                        w,
                        "| egress (#18): {}, c=1: p50 ≤ floor (network none) + 10 ms | {:.0} ms vs {:.0} ms: +{d50:.0} ms | {} |",
                        m.label(),
                        s.p50(),
                        f.p50(),
                        verdict(d50 <= 10.0)
                    );
                }
                if l.c == 8 {
                    let r = s.throughput() / f.throughput();
                    let _ = writeln!(
                        w,
                        "| egress (#18): {}, c=8: throughput ≥ 90% of the floor's | {:.1} vs {:.1} req/s: {:.0}% | {} |",
                        m.label(),
                        s.throughput(),
                        f.throughput(),
                        r * 100.0,
                        verdict(r >= 0.9)
                    );
                }
            }
        }
        if let Some(e) = &self.egress {
            let _ = writeln!(
                w,
                "| egress (#18): a model route adds < 1 ms per call (p50) | {:.2} ms via the socket vs {:.2} ms direct: +{:.2} ms | {} |",
                e.model_via.p50(),
                e.model_direct.p50(),
                e.model_via.p50() - e.model_direct.p50(),
                verdict(e.model_via.p50() - e.model_direct.p50() < 1.0)
            );
        }
        if let Some(l) = &self.live {
            let _ = writeln!(
                w,
                "| daemon memory < 50 MiB with {} live workers | {:.1} MiB RSS (max {:.1} MiB) | {} |",
                l.n,
                l.idle_rss_mib,
                l.idle_rss_max_mib,
                verdict(l.idle_rss_max_mib < 50.0 && l.reached >= l.n)
            );
            let _ = writeln!(
                w,
                "| daemon idle CPU < 1% of a core with {} live workers | {:.2}% over {:.0} s | {} |",
                l.n,
                l.idle_cpu_pct,
                l.idle_s,
                verdict(l.idle_cpu_pct < 1.0 && l.reached >= l.n)
            );
        }
        if let Some(o) = self.outputs.iter().find(|o| o.bound.is_none()) {
            let _ = writeln!(
                w,
                "| ≥ 10,000 output lines/s forwarded, nothing lost or the loss counted | {:.0} lines/s, {} delivered, {} dropped (counted), {} unaccounted | {} |",
                o.rate(),
                o.delivered,
                o.dropped,
                o.lost(),
                verdict(o.rate() >= 10_000.0 && o.lost() == 0)
            );
            let _ = writeln!(
                w,
                "| bounded memory while forwarding | daemon RSS max {:.1} MiB during the run | see below |",
                o.rss_max_mib
            );
        }
        if let Some(p) = &self.pool {
            let col = |v: &[[f64; 3]], k: usize| {
                let mut x: Vec<f64> = v.iter().map(|r| r[k]).collect();
                x.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
                percentile(&x, 50.0)
            };
            let _ = writeln!(
                w,
                "| warm pool: XADD → agent running p50 < 50 ms | {:.1} ms to the agent's first output line read from `<prefix>:events` ({:.1} ms to the `started` event; cold {:.1} ms, {:.1}× faster) | {} |",
                col(&p.pooled, 1),
                col(&p.pooled, 0),
                col(&p.cold, 1),
                col(&p.cold, 1) / col(&p.pooled, 1),
                verdict(!p.pooled.is_empty() && col(&p.pooled, 1) < 50.0)
            );
        }
        let _ = writeln!(w);
    }

    fn egress_table(&self, w: &mut String) {
        let Some(e) = &self.egress else { return };
        let _ = writeln!(w, "## Egress proxy\n");
        let _ = writeln!(
            w,
            "A worker of `{}` (network `none`) sleeps; the driver serves a local upstream on \
             127.0.0.1 (`big.test` is pinned to it by `egress_resolve`, the `anthropic` route's \
             upstream by `model_upstreams`). Tunnel: `CONNECT big.test` through the worker's \
             socket file, then `GET /big` ({} MiB), against the same download over TCP \
             directly, alternating; in the worker: `time wget` of the same file through \
             `HTTP_PROXY`, the forwarder and the socket. Model: {} sequential POSTs of a small \
             body on one kept-alive connection, through the socket (`/model/anthropic/...`, \
             the placeholder swapped for the key) against the same POSTs to the upstream \
             directly.\n",
            self.args.proxy_preset,
            e.mib,
            e.model_via.lat_ms.len()
        );
        let _ = writeln!(w, "| measure | through the daemon | direct | ratio |");
        let _ = writeln!(w, "|---|---|---|---|");
        let rate = |v: &[f64]| e.mib as f64 / med(v);
        let _ = writeln!(
            w,
            "| tunnel from the host, MiB/s (median of {}) | {:.0} | {:.0} | {:.2} |",
            e.tunnel_s.len(),
            rate(&e.tunnel_s),
            rate(&e.direct_s),
            rate(&e.tunnel_s) / rate(&e.direct_s)
        );
        if !e.inside_s.is_empty() {
            let _ = writeln!(
                w,
                "| plain HTTP from inside the worker (forwarder + socket), MiB/s (median of {}) | {:.0} | | |",
                e.inside_s.len(),
                rate(&e.inside_s)
            );
        }
        let _ = writeln!(
            w,
            "| model call p50 / p99 ms | {:.2} / {:.2} | {:.2} / {:.2} | +{:.2} ms p50 |",
            e.model_via.p50(),
            e.model_via.p99(),
            e.model_direct.p50(),
            e.model_direct.p99(),
            e.model_via.p50() - e.model_direct.p50()
        );
        let _ = writeln!(
            w,
            "\nDaemon during the tunnel transfers: {:.2} s CPU for {} MiB ({:.1} ms CPU per MiB), \
             RSS max {:.1} MiB (at the start {:.1} MiB).\n",
            e.cpu_s,
            e.mib * e.tunnel_s.len() as u64,
            e.cpu_s * 1000.0 / (e.mib * e.tunnel_s.len().max(1) as u64) as f64,
            e.rss_max_mib,
            e.rss_start_mib
        );
        if !e.failures.is_empty() {
            let _ = writeln!(w, "Failures: {}\n", e.failures.join("; "));
        }
    }

    fn fresh_table(&self, w: &mut String) {
        let Some(f) = &self.fresh else { return };
        let _ = writeln!(w, "## A new image\n");
        let _ = writeln!(
            w,
            "Preset `{}` runs `{}`, which the driver re-makes before each of {} round(s) \
             (a commit of `{}`, an image the project did not prepare: no `/workspace`, no \
             `/home/worker`, no user 1000), so its first request finds an image the daemon \
             has never seen and prepares it (the shim, the folders, a user: one container \
             create, three archive reads, one archive write, one commit). Later requests on \
             it alternate with requests of `{}` on the project's test image. One request at \
             a time, XADD → result read.\n",
            self.args.fresh_preset,
            self.args.fresh_image,
            f.first.len(),
            self.args.fresh_from,
            self.args.preset
        );
        let _ = writeln!(w, "| requests | n | p50 ms | min ms | max ms |");
        let _ = writeln!(w, "|---|---|---|---|---|");
        for (what, v) in [
            ("first request on a new image (prepares it)", &f.first),
            ("later requests on that image", &f.later),
            (
                "requests on the project's test image (same run)",
                &f.project,
            ),
        ] {
            let mut x = v.clone();
            x.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
            let _ = writeln!(
                w,
                "| {what} | {} | {:.1} | {:.1} | {:.1} |",
                x.len(),
                med(&x),
                x.first().copied().unwrap_or(f64::NAN),
                x.last().copied().unwrap_or(f64::NAN)
            );
        }
        let _ = writeln!(
            w,
            "\nThe first request pays {:.0} ms once; later requests cost {:.1} ms against {:.1} ms \
             on the project's image ({:+.1} ms).\n",
            med(&f.first) - med(&f.later),
            med(&f.later),
            med(&f.project),
            med(&f.later) - med(&f.project)
        );
    }

    fn session_table(&self, w: &mut String) {
        let Some(p) = &self.sessions else { return };
        let _ = writeln!(w, "## Session follow-ups\n");
        let _ = writeln!(
            w,
            "Preset `{}` (the test agent under the shipped claude-code layout: `--session-id`, \
             then `--resume`), one request at a time, rotating: a follow-up task in a live \
             session container (an exec), a resumed one (its container ended by `cancel` \
             before the XADD, so the task gets a new container on the session's kept volumes, \
             where the shim picks the turn from the volume's record) and a cold one-shot \
             request of the same preset. Per request, ms from the XADD to reading the `started` event (the \
             agent runs) and the result.\n",
            self.args.session_preset
        );
        sample_table(
            w,
            &["XADD → `started`", "XADD → result"],
            &[
                ("live session", &p.live),
                ("resumed session", &p.resumed),
                ("cold one-shot", &p.cold),
            ],
            &p.failures,
        );
    }

    fn pool_table(&self, w: &mut String) {
        let Some(p) = &self.pool else { return };
        let _ = writeln!(w, "## Warm pool\n");
        let _ = writeln!(
            w,
            "Preset `{}` (pool size {}) against `{}` (no pool) on the same daemon and image, \
             one request at a time, alternating, each starting with a full pool. Per request, \
             ms from the XADD to reading the `started` event (published once the request's \
             parts are written to the waiting container), the first `output` event (the \
             agent's own first line, the stricter measure) and the result.\n",
            self.args.pool_preset, p.size, self.args.preset
        );
        sample_table(
            w,
            &["XADD → `started`", "XADD → first output", "XADD → result"],
            &[("pooled", &p.pooled), ("cold", &p.cold)],
            &p.failures,
        );
    }

    fn latency_tables(&self, w: &mut String) {
        if self.levels.is_empty() {
            return;
        }
        let _ = writeln!(w, "## Latency and throughput\n");
        let _ = writeln!(
            w,
            "Per request: from the first API call (floor), the process start (shell) or the \
             XADD (spawner) until the container is removed (floor, shell) or the result entry \
             is read from `<prefix>:result` (spawner). Throughput: samples over the summed \
             wall time of the method's batches. Ratios are to the floor at the same \
             concurrency.\n"
        );
        for l in &self.levels {
            let f = l.stats.get(&Method::Floor).cloned().unwrap_or_default();
            let _ = writeln!(w, "### Concurrency {}\n", l.c);
            let _ = writeln!(
                w,
                "| method | n | fail | p50 ms | p99 ms | mean ms | req/s | p50 ×floor | p99 ×floor | req/s ×floor |"
            );
            let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
            for m in METHODS {
                let Some(s) = l.stats.get(&m) else { continue };
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    m.label(),
                    s.lat_ms.len(),
                    s.failures,
                    s.p50(),
                    s.p99(),
                    s.mean(),
                    s.throughput(),
                    s.p50() / f.p50(),
                    s.p99() / f.p99(),
                    s.throughput() / f.throughput()
                );
            }
            let n = l
                .stats
                .get(&Method::Spawner)
                .map(|s| s.lat_ms.len())
                .unwrap_or(0);
            let _ = writeln!(
                w,
                "\nDaemon during the spawner batches: {:.2} s CPU ({:.1} ms per request), \
                 RSS max {:.1} MiB, VmHWM since start {:.1} MiB.\n",
                l.daemon_cpu_s,
                l.daemon_cpu_s * 1000.0 / n.max(1) as f64,
                l.daemon_rss_max_mib,
                l.daemon_hwm_mib
            );
            if !l.floor_phases.is_empty() {
                let [c, s, wt, r] = means(&l.floor_phases);
                let _ = writeln!(
                    w,
                    "Floor phases (means): create {c:.1} ms, start {s:.1} ms, wait {wt:.1} ms, \
                     remove {r:.1} ms.\n"
                );
            }
            if !l.breakdown.is_empty() {
                let [q, st, run, e2e] = means(&l.breakdown);
                let _ = writeln!(
                    w,
                    "Where the spawner's time goes (means of the result's `timings`): \
                     queue {q:.1} ms (XADD to XREADGROUP), start {st:.1} ms (reception to \
                     container started: checks, render, create, attach, start, files on stdin), run {run:.1} ms \
                     (started to result: wait, output drain, inspect), rest \
                     {:.1} ms (result publish and read, clock granularity); end to end \
                     {e2e:.1} ms. The container's removal comes after the result and is not \
                     in the spawner's figure.\n",
                    e2e - q - st - run
                );
            }
        }
    }

    fn live_table(&self, w: &mut String) {
        let Some(l) = &self.live else { return };
        let _ = writeln!(w, "## {} live workers\n", l.n);
        let _ = writeln!(w, "| measure | value |");
        let _ = writeln!(w, "|---|---|");
        let _ = writeln!(
            w,
            "| workers running (daemon gauge) | {}/{} after {:.1} s |",
            l.reached, l.n, l.ramp_s
        );
        let _ = writeln!(
            w,
            "| daemon CPU while starting them | {:.2} s ({:.1} ms per worker) |",
            l.ramp_cpu_s,
            l.ramp_cpu_s * 1000.0 / l.n.max(1) as f64
        );
        let _ = writeln!(
            w,
            "| daemon RSS while idle (mean / max) | {:.1} / {:.1} MiB |",
            l.idle_rss_mib, l.idle_rss_max_mib
        );
        let _ = writeln!(
            w,
            "| daemon idle CPU | {:.2}% of a core over {:.0} s |",
            l.idle_cpu_pct, l.idle_s
        );
        let _ = writeln!(
            w,
            "| daemon RSS after the idle window: anonymous / file-backed | {:.1} / {:.1} MiB |",
            l.rss_anon_mib, l.rss_file_mib
        );
        let _ = writeln!(w, "| daemon threads | {} |", l.threads);
        let _ = writeln!(
            w,
            "| running containers (docker) at the end of the idle window | {} |",
            l.containers_running
        );
        let mut st: Vec<_> = l.statuses.iter().collect();
        st.sort();
        let _ = writeln!(
            w,
            "| cancel to the last result | {:.1} s; results {:?}, missing {} |\n",
            l.drain_s, st, l.missing
        );
    }

    fn output_table(&self, w: &mut String) {
        if self.outputs.is_empty() {
            return;
        }
        let _ = writeln!(w, "## Output forwarding\n");
        let _ = writeln!(
            w,
            "One worker runs `seq 1 N`; the driver counts its `output` events on \
             `<prefix>:events` and the lines `output_dropped` events report. Rate: delivered \
             lines over the time between the first and the last `output` event read.\n"
        );
        let _ = writeln!(
            w,
            "| daemon bound (lines/s per worker) | lines | delivered | dropped (counted) | unaccounted | out of order | rate lines/s | XADD to first line | XADD to last line | daemon CPU | daemon RSS max | result |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for o in &self.outputs {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} ms | {:.2} s | {:.2} s | {:.1} MiB | {} |",
                o.bound
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "1,000,000 (unbounded)".into()),
                o.lines,
                o.delivered,
                o.dropped,
                o.lost(),
                o.out_of_order,
                o.rate(),
                o.first_line_ms,
                o.total_s,
                o.cpu_s,
                o.rss_max_mib,
                o.status
            );
        }
        let _ = writeln!(w);
    }

    fn method_notes(&self, w: &mut String) {
        let _ = writeln!(w, "## How it is measured\n");
        let _ = writeln!(
            w,
            "- Every method runs image `{}` with the command `sh -c 'echo $0' ok`.",
            self.args.image
        );
        let _ = writeln!(
            w,
            "- Floor: a minimal bollard client doing create (the daemon's hardened HostConfig: \
             init, 1 CPU, 64 MiB, pids limit, cap_drop ALL, no-new-privileges, user 1000:1000, \
             network `none`), start, wait, remove. The bridge variant is the same on the \
             network the daemon attaches workers to (`{}`); it is informative, the floor is \
             the `none` one.",
            self.args.worker_network
        );
        let _ = writeln!(
            w,
            "- Replay (profiling aid): the Docker calls the daemon makes per worker, through \
             the crate's own `docker::Engine`, with no Redis and no rendering: inspect by \
             name, create (network none, behind the delivery shim), attach its stdin, start, \
             write a 3 KiB instruction tar to the stdin, read the attached output, wait, inspect; \
             timed up to before the \
             removal, like the spawner's figure. The spawner minus the replay is the daemon's \
             own overhead (Redis, rendering, scheduling)."
        );
        let _ = writeln!(
            w,
            "- Shell: `docker run --rm --init --network none --user 1000:1000 IMAGE sh -c 'echo $0' ok` \
             (plus a label for clean-up)."
        );
        let _ = writeln!(
            w,
            "- workers-spawner: XADD of `{{\"request_id\", \"worker_config_id\": \"{}\", \
             \"task\": {{\"prompt\": \"ok\"}}}}` to `<prefix>:spawn`, until the result entry is \
             read by one XREAD BLOCK loop on its own connection that matches request ids. \
             The result must be `succeeded` with output `ok`.",
            self.args.preset
        );
        let _ = writeln!(
            w,
            "- Interleaving: at each concurrency c, rounds of one batch per method, the order \
             rotated each round; c requests in flight within a batch. A warm-up of two \
             requests per method is not counted."
        );
        let _ = writeln!(
            w,
            "- Daemon CPU is utime+stime from `/proc/PID/stat`; memory VmRSS (sampled every \
             100 ms) and VmHWM from `/proc/PID/status`."
        );
        let _ = writeln!(
            w,
            "- Output: the main daemon runs with `output_lines_per_sec = 1000000` (forwarding \
             capacity); a second daemon with the default bound ({}) shows the drops are \
             counted. Both run with `stream_maxlen = 1000000` so trimming does not hide lines.",
            self.args.bounded_lines_per_sec
        );
        let _ = writeln!(
            w,
            "- Warm pool: the main daemon also has preset `{}` (same image and command, \
             `pool.size` {}); its idle containers exist during every scenario (a shim \
             blocked on its stdin, no CPU). Each pool sample waits until the \
             `workers_spawner_pool_ready` gauge shows a full pool, then 100 ms more, so \
             refills never overlap a measured request.",
            self.args.pool_preset, self.args.pool_size
        );
        let _ = writeln!(
            w,
            "- The machine is shared: other people's builds and tests may run at the same \
             time; the load averages above give an idea. Interleaving spreads that noise over \
             all methods alike."
        );
    }
}

const ANALYSIS_BEGIN: &str = "<!-- analysis:begin -->";
const ANALYSIS_END: &str = "<!-- analysis:end -->";

fn kept_analysis(path: &std::path::Path) -> String {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    if let (Some(a), Some(b)) = (old.find(ANALYSIS_BEGIN), old.find(ANALYSIS_END)) {
        if a < b {
            return old[a..b + ANALYSIS_END.len()].to_string();
        }
    }
    format!("{ANALYSIS_BEGIN}\n## Analysis\n\n(Not written yet for this run.)\n{ANALYSIS_END}")
}

// ---------------------------------------------------------------- main

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    let cfg = args.config();
    let started = chrono::Utc::now();
    let t0 = Instant::now();
    let load_start = loadavg();
    let docker = Docker::connect_with_local_defaults()?
        .with_timeout(Duration::from_secs(300))
        .negotiate_version()
        .await?;
    let docker_version = docker
        .version()
        .await
        .ok()
        .and_then(|v| v.version)
        .unwrap_or_else(|| "?".into());
    let names = StreamNames::new(&args.prefix, "workers-spawner");
    let bus = Bus::connect(&args.redis_url, names, 1_000_000).await?;
    let watcher = ResultWatcher::start(bus).await?;
    let daemon = args.daemon_pid.map(Proc::new);
    let engine = workers_spawner::adapters::engine::Engine::connect(
        &workers_spawner::model::docker_host::DockerTarget::Local,
    )
    .await?;
    let prepared_image = workers_spawner::adapters::images::ImageBuilder::new(
        engine.clone(),
        Arc::new(workers_spawner::metrics::Metrics::new()),
    )
    .prepared_image(&args.image)
    .await?;
    let ctx = Ctx {
        args: args.clone(),
        docker,
        watcher,
        run_id: format!("{}-{}", args.prefix, std::process::id()),
        seq: AtomicU64::new(0),
        breakdown: Mutex::new(Vec::new()),
        floor_phases: Mutex::new(Vec::new()),
        engine: engine.clone(),
        prepared_image,
        daemon,
    };
    let mut failures = Vec::new();
    let want = |s: Scenario| args.scenario == s || args.scenario == Scenario::All;

    let levels = if want(Scenario::Latency) {
        latency(&ctx, &cfg, daemon).await
    } else {
        Vec::new()
    };
    for l in &levels {
        for (m, s) in &l.stats {
            if s.failures > 0 {
                failures.push(format!("c={}: {} {m:?} request(s) failed", l.c, s.failures));
            }
        }
    }

    let dead = || daemon.is_some_and(|p| !p.alive());
    let live_r = if want(Scenario::Live) && !dead() {
        let l = live(&ctx, &cfg, daemon).await;
        if l.reached < l.n {
            failures.push(format!("live: only {}/{} workers ran", l.reached, l.n));
        }
        if l.missing > 0 || l.statuses.get("cancelled").copied().unwrap_or(0) != l.n {
            failures.push(format!(
                "live: results {:?}, {} missing (expected {} cancelled)",
                l.statuses, l.missing, l.n
            ));
        }
        Some(l)
    } else {
        None
    };

    let mut outputs = Vec::new();
    if want(Scenario::Output) && !dead() {
        let mut runs = vec![(args.prefix.clone(), None, daemon)];
        match &args.bounded_prefix {
            Some(p) => runs.push((
                p.clone(),
                Some(args.bounded_lines_per_sec),
                args.bounded_daemon_pid.map(Proc::new),
            )),
            None => eprintln!("bench: no --bounded-prefix; skipping the bounded output run"),
        }
        for (prefix, bound, proc_) in runs {
            match output(
                &args.redis_url,
                &prefix,
                &args.shell_preset,
                cfg.lines,
                bound,
                proc_,
            )
            .await
            {
                Ok(o) => {
                    if o.lost() != 0 {
                        failures.push(format!(
                            "output (bound {bound:?}): {} lines neither delivered nor counted",
                            o.lost()
                        ));
                    }
                    if o.status != "succeeded" {
                        failures.push(format!("output (bound {bound:?}): result {}", o.status));
                    }
                    if bound.is_some() && o.lines > 2 * args.bounded_lines_per_sec && o.dropped == 0
                    {
                        failures.push("output: the bounded daemon dropped nothing".into());
                    }
                    outputs.push(o);
                }
                Err(e) => failures.push(format!("output (bound {bound:?}): {e:#}")),
            }
        }
    }
    let pool_r = if want(Scenario::Pool) && !dead() {
        match pool(&ctx, &cfg).await {
            Ok(r) => {
                failures.extend(r.failures.iter().map(|f| format!("pool: {f}")));
                if r.pooled.is_empty() {
                    failures.push("pool: no pooled sample".into());
                }
                Some(r)
            }
            Err(e) => {
                failures.push(format!("pool: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let fresh_r = if want(Scenario::Fresh) && !dead() {
        match fresh_image(&ctx, &cfg).await {
            Ok(r) => {
                failures.extend(r.failures.iter().map(|f| format!("fresh image: {f}")));
                if r.first.is_empty() {
                    failures.push("fresh image: no first request succeeded".into());
                }
                Some(r)
            }
            Err(e) => {
                failures.push(format!("fresh image: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let session_r = if want(Scenario::Session) && !dead() {
        match sessions(&ctx, &cfg).await {
            Ok(r) => {
                failures.extend(r.failures.iter().map(|f| format!("sessions: {f}")));
                if r.resumed.is_empty() || r.live.is_empty() {
                    failures.push("sessions: no live or resumed sample".into());
                }
                Some(r)
            }
            Err(e) => {
                failures.push(format!("sessions: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let egress_r = if want(Scenario::Egress) && !dead() {
        match egress(&ctx, &cfg, daemon).await {
            Ok(r) => {
                failures.extend(r.failures.iter().map(|f| format!("egress: {f}")));
                Some(r)
            }
            Err(e) => {
                failures.push(format!("egress: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    for p in [daemon, args.bounded_daemon_pid.map(Proc::new)]
        .into_iter()
        .flatten()
    {
        if !p.alive() {
            failures.push(format!("daemon {} is not running any more", p.pid));
        }
    }

    let report = Report {
        args,
        cfg: &cfg,
        started,
        duration_s: t0.elapsed().as_secs_f64(),
        docker_version,
        load_start,
        load_end: loadavg(),
        levels,
        live: live_r,
        outputs,
        pool: pool_r,
        fresh: fresh_r,
        sessions: session_r,
        egress: egress_r,
        failures: failures.clone(),
    };
    let analysis = args
        .out
        .as_deref()
        .map(kept_analysis)
        .unwrap_or_else(|| kept_analysis(std::path::Path::new("/nonexistent")));
    let md = report.markdown(&analysis);
    match &args.out {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(p, &md)?;
            eprintln!("bench: wrote {}", p.display());
        }
        None => println!("{md}"),
    }
    if failures.is_empty() {
        eprintln!("bench: OK");
        Ok(true)
    } else {
        for f in &failures {
            eprintln!("bench: FAILED: {f}");
        }
        Ok(false)
    }
}
