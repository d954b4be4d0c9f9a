//! HTTP API benchmark driver for workers-spawner (issue #21). Run it
//! through `scripts/bench-api.sh`, which sources scripts/test-env.sh (a
//! private Redis, the test images), builds the daemon and this driver and
//! passes the flags below. The driver starts the daemon itself.
//!
//! - A. Event delivery: `--followers` requests (default 100) run at once,
//!   each printing a line every 100 ms for 5 s, published with `POST
//!   /v1/requests`; each is followed by one SSE client of the API (from
//!   its first event) while one direct `XREAD` consumer of
//!   `<prefix>:events` reads them all. Delivery latency per event is the
//!   receipt time minus the event's `ts` (one host, one clock), SSE against
//!   XREAD; the daemon's CPU and RSS from /proc, in the same round and in a
//!   round of the same requests with no SSE follower.
//! - B. `POST /v1/requests` to result against `XADD` to result, c=1,
//!   interleaved.
//!
//! Exits non-zero when a request got no result or a follower lost an event.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use redis::AsyncCommands;
use serde_json::{json, Value};

macro_rules! log {
    ($($t:tt)*) => { eprintln!("[api-bench] {}", format_args!($($t)*)) };
}

/// API benchmark driver (see scripts/bench-api.sh).
#[derive(Debug, Clone, Parser)]
#[command(name = "api_bench")]
struct Args {
    /// Redis the daemon uses.
    #[arg(long, env = "WS_TEST_REDIS_URL")]
    redis_url: String,
    /// The daemon binary.
    #[arg(long)]
    daemon_bin: PathBuf,
    /// A scratch folder (presets, the daemon's log).
    #[arg(long)]
    work: PathBuf,
    /// Concurrent followed requests of A (default 100; smoke 5).
    #[arg(long)]
    followers: Option<usize>,
    /// Rounds of B, each method (default 30; smoke 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// Small sizes.
    #[arg(long)]
    smoke: bool,
}

fn free_port() -> u16 {
    use rand::Rng;
    loop {
        let port = rand::rng().random_range(20000..32000);
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn ts_ms(ts: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|t| t.timestamp_millis() as f64)
        .unwrap_or(f64::NAN)
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Daemon {
    child: Child,
    prefix: String,
    api: String,
}

async fn start_daemon(args: &Args, max: usize) -> anyhow::Result<Daemon> {
    let presets = args.work.join("presets");
    std::fs::create_dir_all(&presets)?;
    let preset = json!({
        "id": "api_bench",
        "name": "api bench",
        "image": "ws-test-busybox:latest",
        "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"], "conversation": false },
        "allowed_tools": [],
        "has_internet": false,
        "limits": { "cpu": 0.5, "memory": "64m", "timeout_sec": 120, "ttl_sec": 600, "pids": 64 }
    });
    std::fs::write(presets.join("api_bench.json"), preset.to_string())?;
    let prefix = format!("wsapi-{}", std::process::id());
    let http = format!("127.0.0.1:{}", free_port());
    let api = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(args.work.join("daemon.log"))?;
    let mut cmd = Command::new(&args.daemon_bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WORKERS_SPAWNER_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--redis-url", &args.redis_url, "--stream-prefix", &prefix])
        .arg("--presets-dir")
        .arg(&presets)
        .args(["--http-addr", &http, "--instance-id", &prefix])
        .args(["--max-concurrent", &max.to_string(), "serve"])
        .env("WORKERS_SPAWNER_BLOCK", "1s")
        .env("WORKERS_SPAWNER_GATEWAY_PORT", free_port().to_string())
        .env("WORKERS_SPAWNER_API_ADDR", &api)
        .env("WORKERS_SPAWNER_STREAM_MAXLEN", "1000000")
        .env("WORKERS_SPAWNER_REPO_CACHE_DIR", args.work.join("repos"))
        .env("WORKERS_SPAWNER_ARTIFACTS_DIR", args.work.join("artifacts"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let child = Child(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_call(&api, "GET", "/v1/pools", None).map(|r| r.0) != Some(200) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the daemon's API did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Daemon { child, prefix, api })
}

fn http_call(addr: &str, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, rest) = buf.split_once("\r\n\r\n")?;
    Some((
        head.split_whitespace().nth(1)?.parse().ok()?,
        rest.to_string(),
    ))
}

/// /proc figures of a process: (utime + stime ticks, RSS KiB).
fn proc_stat(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

/// One SSE follower: (seq, receipt ms, event ts ms) per event, until the result.
fn sse_follow(api: &str, rid: &str) -> anyhow::Result<Vec<(u64, f64, f64)>> {
    let mut s = TcpStream::connect(api)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "GET /v1/requests/{rid}/events HTTP/1.0\r\nHost: {api}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut out = Vec::new();
    let (mut id, mut event, mut data) = (None::<u64>, String::new(), String::new());
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if event == "result" {
                break;
            }
            if let Some(seq) = id {
                let v: Value = serde_json::from_str(&data).unwrap_or_default();
                out.push((seq, now_ms(), ts_ms(v["ts"].as_str().unwrap_or_default())));
            }
            (id, event, data) = (None, String::new(), String::new());
        } else if let Some(v) = l.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    Ok(out)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Round A (with `sse` followers or none): latencies and the daemon's figures.
struct RoundA {
    sse: Vec<f64>,
    xread: Vec<f64>,
    cpu_s: f64,
    rss_max_kib: u64,
    wall_s: f64,
    lost: usize,
}

async fn round_a(
    d: &Daemon,
    args: &Args,
    n: usize,
    sse: bool,
    tag: &str,
) -> anyhow::Result<RoundA> {
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let events = format!("{}:events", d.prefix);
    let start_id: String = {
        let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(&events)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        v.first()
            .map(|e| e.0.clone())
            .unwrap_or_else(|| "0-0".into())
    };
    let rids: Vec<String> = (0..n)
        .map(|i| format!("{tag}-{i}-{}", std::process::id()))
        .collect();
    // The direct consumer: every event of these requests.
    let want: std::collections::HashSet<String> = rids.iter().cloned().collect();
    let seen: Arc<Mutex<Vec<f64>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (seen, done, events) = (seen.clone(), done.clone(), events.clone());
        let mut c = client.get_multiplexed_async_connection().await?;
        tokio::spawn(async move {
            let mut last = start_id;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let opts = redis::streams::StreamReadOptions::default()
                    .block(500)
                    .count(1000);
                let r: Option<redis::streams::StreamReadReply> = c
                    .xread_options(&[&events], &[&last], &opts)
                    .await
                    .ok()
                    .flatten();
                let at = now_ms();
                for k in r.map(|r| r.keys).unwrap_or_default() {
                    for e in k.ids {
                        last = e.id.clone();
                        let Some(data) = e.get::<Vec<u8>>("data") else {
                            continue;
                        };
                        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
                            continue;
                        };
                        if want.contains(v["request_id"].as_str().unwrap_or_default()) {
                            seen.lock()
                                .unwrap()
                                .push(at - ts_ms(v["ts"].as_str().unwrap_or_default()));
                        }
                    }
                }
            }
        })
    };
    let pid = d.child.0.id();
    let (t0, _) = proc_stat(pid);
    let started = Instant::now();
    // The requests through the API (so that a follower may start at once:
    // the API knows them from their POST), then one follower each.
    for rid in &rids {
        let req = json!({"request_id": rid, "worker_config_id": "api_bench",
            "task": {"prompt": "i=0; while [ $i -lt 50 ]; do echo tick-$i; i=$((i+1)); sleep 0.1; done"}});
        let (api, body) = (d.api.clone(), req.to_string());
        let s = tokio::task::spawn_blocking(move || {
            http_call(&api, "POST", "/v1/requests", Some(&body))
        })
        .await?
        .map(|r| r.0);
        anyhow::ensure!(s == Some(202), "POST answered {s:?}");
    }
    let mut followers = Vec::new();
    if sse {
        for rid in &rids {
            let (api, rid) = (d.api.clone(), rid.clone());
            followers.push(tokio::task::spawn_blocking(move || sse_follow(&api, &rid)));
        }
    }
    let rss_max = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (rss_max, done) = (rss_max.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let (_, rss) = proc_stat(pid);
                rss_max.fetch_max(rss, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    // Every result.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let results: redis::streams::StreamRangeReply =
            conn.xrange_all(format!("{}:result", d.prefix)).await?;
        let got = results
            .ids
            .iter()
            .filter_map(|e| e.get::<Vec<u8>>("data"))
            .filter_map(|d| serde_json::from_slice::<Value>(&d).ok())
            .filter(|v| want_has(&rids, v))
            .count();
        if got >= n {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{got}/{n} results");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut sse_lat = Vec::new();
    let mut lost = 0;
    for (f, rid) in followers.into_iter().zip(&rids) {
        let got = f.await??;
        let expect = {
            let r: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(format!("{}:events:{rid}", d.prefix))
                .arg("-")
                .arg("+")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            r.len()
        };
        if got.len() < expect {
            lost += expect - got.len();
        }
        sse_lat.extend(got.iter().map(|(_, at, ts)| at - ts));
    }
    let wall_s = started.elapsed().as_secs_f64();
    let (t1, _) = proc_stat(pid);
    tokio::time::sleep(Duration::from_millis(800)).await;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = reader.await;
    let _ = sampler.await;
    let xread = seen.lock().unwrap().clone();
    Ok(RoundA {
        sse: sse_lat,
        xread,
        cpu_s: (t1 - t0) as f64 / 100.0,
        rss_max_kib: rss_max.load(std::sync::atomic::Ordering::SeqCst),
        wall_s,
        lost,
    })
}

fn want_has(rids: &[String], v: &Value) -> bool {
    rids.iter().any(|r| v["request_id"] == r.as_str())
}

/// B: one request by POST or XADD, to its result (ms).
async fn one(
    d: &Daemon,
    conn: &mut redis::aio::MultiplexedConnection,
    rid: &str,
    post: bool,
) -> anyhow::Result<f64> {
    let req =
        json!({"request_id": rid, "worker_config_id": "api_bench", "task": {"prompt": "echo hi"}});
    let result_stream = format!("{}:result", d.prefix);
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(&result_stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .unwrap_or_default();
    let mut after = last
        .first()
        .map(|e| e.0.clone())
        .unwrap_or_else(|| "0-0".into());
    let t = Instant::now();
    if post {
        let (api, body) = (d.api.clone(), req.to_string());
        let s = tokio::task::spawn_blocking(move || {
            http_call(&api, "POST", "/v1/requests", Some(&body))
        })
        .await?
        .map(|r| r.0);
        anyhow::ensure!(s == Some(202), "POST answered {s:?}");
    } else {
        let _: String = conn
            .xadd(
                format!("{}:spawn", d.prefix),
                "*",
                &[("data", req.to_string())],
            )
            .await?;
    }
    loop {
        let opts = redis::streams::StreamReadOptions::default()
            .block(1000)
            .count(100);
        let r: Option<redis::streams::StreamReadReply> = conn
            .xread_options(&[&result_stream], &[&after], &opts)
            .await?;
        for k in r.map(|r| r.keys).unwrap_or_default() {
            for e in k.ids {
                after = e.id.clone();
                let v: Value = e
                    .get::<Vec<u8>>("data")
                    .and_then(|d| serde_json::from_slice(&d).ok())
                    .unwrap_or_default();
                if v["request_id"] == rid {
                    anyhow::ensure!(v["status"] == "succeeded", "{v}");
                    return Ok(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(120),
            "no result for {rid}"
        );
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(&args).await {
        Ok(md) => println!("{md}"),
        Err(e) => {
            eprintln!("api-bench: FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<String> {
    let n = args.followers.unwrap_or(if args.smoke { 5 } else { 100 });
    let rounds = args.rounds.unwrap_or(if args.smoke { 3 } else { 30 });
    std::fs::create_dir_all(&args.work)?;
    let d = start_daemon(args, n.max(8) + 4).await?;
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    log!("warming up");
    one(
        &d,
        &mut conn,
        &format!("warm-{}", std::process::id()),
        false,
    )
    .await?;
    log!("A: {n} requests without SSE followers");
    let plain = round_a(&d, args, n, false, "a0").await?;
    log!("A: {n} requests with one SSE follower each");
    let with = round_a(&d, args, n, true, "a1").await?;
    anyhow::ensure!(with.lost == 0, "SSE followers missed {} events", with.lost);
    log!("B: POST vs XADD, {rounds} rounds");
    let (mut post, mut xadd) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        for k in 0..2 {
            let by_post = (r + k) % 2 == 0;
            let rid = format!("b-{r}-{k}-{}", std::process::id());
            let ms = one(&d, &mut conn, &rid, by_post).await?;
            if by_post {
                post.push(ms)
            } else {
                xadd.push(ms)
            }
        }
    }
    let mut md = String::new();
    use std::fmt::Write as _;
    writeln!(md, "### HTTP API (issue #21)\n")?;
    writeln!(md, "A. {n} requests at once, each printing 50 lines over 5 s ({} events followed); delivery latency = receipt minus the event's `ts` (ms):\n", with.sse.len())?;
    writeln!(md, "| consumer | p50 | p99 | max |\n|---|---|---|---|")?;
    let (mut s, mut x, mut x0) = (with.sse.clone(), with.xread.clone(), plain.xread.clone());
    writeln!(
        md,
        "| SSE follower (API), {n} at once | {:.1} | {:.1} | {:.1} |",
        pct(&mut s, 0.5),
        pct(&mut s, 0.99),
        pct(&mut s, 1.0)
    )?;
    writeln!(
        md,
        "| direct `XREAD` consumer, same round | {:.1} | {:.1} | {:.1} |",
        pct(&mut x, 0.5),
        pct(&mut x, 0.99),
        pct(&mut x, 1.0)
    )?;
    writeln!(
        md,
        "| direct `XREAD` consumer, round without SSE | {:.1} | {:.1} | {:.1} |",
        pct(&mut x0, 0.5),
        pct(&mut x0, 0.99),
        pct(&mut x0, 1.0)
    )?;
    writeln!(md, "\nThe daemon in those rounds: without followers {:.2} s CPU over {:.1} s, RSS max {:.1} MiB; with {n} followers {:.2} s CPU over {:.1} s, RSS max {:.1} MiB. Events lost by followers: {}.\n",
        plain.cpu_s, plain.wall_s, plain.rss_max_kib as f64 / 1024.0, with.cpu_s, with.wall_s, with.rss_max_kib as f64 / 1024.0, with.lost)?;
    writeln!(
        md,
        "B. Publish to result, c=1, {rounds} interleaved rounds (ms):\n"
    )?;
    writeln!(md, "| way | p50 | p90 | max |\n|---|---|---|---|")?;
    writeln!(
        md,
        "| `POST /v1/requests` | {:.0} | {:.0} | {:.0} |",
        pct(&mut post, 0.5),
        pct(&mut post, 0.9),
        pct(&mut post, 1.0)
    )?;
    writeln!(
        md,
        "| `XADD` | {:.0} | {:.0} | {:.0} |",
        pct(&mut xadd, 0.5),
        pct(&mut xadd, 0.9),
        pct(&mut xadd, 1.0)
    )?;
    Ok(md)
}
