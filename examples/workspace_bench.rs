//! Workspace benchmark driver for workers-spawner (issue #20). Run it
//! through `scripts/bench-workspace.sh`, which sources scripts/test-env.sh
//! (a private Redis, the test images), builds the daemon and this driver
//! and passes the flags below. The driver makes a repository of
//! `--repo-mib` MiB of incompressible files, serves it with a real `git
//! daemon`, starts the daemon itself and talks to it only through Redis.
//!
//! Benchmarks (markdown on stdout, progress on stderr), each interleaved
//! round by round so that drift hits every method alike:
//!
//! - A. Time to first agent output (the entry's id time to the first
//!   `output` event) of a request without a repository, with one on a cold
//!   mirror cache (the cache folder emptied before the request) and with
//!   one on a warm cache; and the time and bytes of reading the change back
//!   (the `workspace_collected` event's `ms` and `bytes`).
//! - B. Delivering the checkout: the same tar through the archive API into
//!   a created container, and through an attached stdin into `tar -x` in
//!   the container (what a stdin delivery of the tree would cost), on the
//!   bare engine.
//! - C. Reading a change back: the archive API's tar of `/workspace` plus
//!   the host's `git diff` (the daemon's way, which works on a stopped
//!   container and an image without git) against `git diff` run by an exec
//!   in a running container of an image that has git.
//!
//! Exits non-zero when a request got no result or an unexpected one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions,
    UploadToContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use clap::Parser;
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

macro_rules! log {
    ($($t:tt)*) => { eprintln!("[workspace-bench] {}", format_args!($($t)*)) };
}

/// Workspace benchmark driver (see scripts/bench-workspace.sh).
#[derive(Debug, Clone, Parser)]
#[command(name = "workspace_bench")]
struct Args {
    /// Redis the daemon uses.
    #[arg(long, env = "WS_TEST_REDIS_URL")]
    redis_url: String,
    /// The daemon binary.
    #[arg(long)]
    daemon_bin: PathBuf,
    /// A scratch folder (repositories, caches, presets, logs).
    #[arg(long)]
    work: PathBuf,
    /// Rounds of each benchmark (default 10; smoke 2).
    #[arg(long)]
    rounds: Option<usize>,
    /// Size of the repository's files, MiB (default 50; smoke 4).
    #[arg(long)]
    repo_mib: Option<usize>,
    /// Small sizes.
    #[arg(long)]
    smoke: bool,
    /// The image of A and B (prepared by the daemon; busybox).
    #[arg(long, default_value = "ws-test-busybox:latest")]
    image: String,
    /// An image with git, for C's in-container diff.
    #[arg(long, default_value = "universal-worker-base:latest")]
    git_image: String,
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

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
        ])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A bare repository of `mib` MiB of random files (1 MiB each) and a few
/// small text files, in two commits.
fn make_repo(root: &Path, mib: usize) -> anyhow::Result<PathBuf> {
    use rand::RngCore;
    let scratch = root.join("scratch");
    std::fs::create_dir_all(scratch.join("data"))?;
    std::fs::create_dir_all(scratch.join("src"))?;
    git(&scratch, &["init", "-q"])?;
    let mut rng = rand::rng();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..mib {
        rng.fill_bytes(&mut buf);
        std::fs::write(scratch.join(format!("data/blob-{i:03}.bin")), &buf)?;
    }
    for i in 0..20 {
        std::fs::write(
            scratch.join(format!("src/file{i}.txt")),
            format!("line one of file {i}\nline two\n"),
        )?;
    }
    git(&scratch, &["add", "-A"])?;
    git(&scratch, &["commit", "-qm", "The data"])?;
    std::fs::write(scratch.join("src/main.txt"), "main\n")?;
    git(&scratch, &["add", "-A"])?;
    git(&scratch, &["commit", "-qm", "A second commit"])?;
    let bare = root.join("repos/big.git");
    std::fs::create_dir_all(root.join("repos"))?;
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            scratch.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    )?;
    Ok(bare)
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `git daemon` serving `root` on `port` (the binary itself: killing the
/// `git` wrapper would leave it running).
fn git_daemon(root: &Path, port: u16) -> anyhow::Result<Child> {
    let exec_path = git(root, &["--exec-path"])?;
    let child = Command::new(Path::new(&exec_path).join("git-daemon"))
        .args([
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", root.display()),
            &root.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "git daemon did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Child(child))
}

fn preset(id: &str, image: &str, workspace: Option<Value>) -> Value {
    let mut p = json!({
        "id": id,
        "name": "workspace bench",
        "image": image,
        "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"], "conversation": false },
        "allowed_tools": [],
        "has_internet": false,
        "limits": { "cpu": 1.0, "memory": "256m", "timeout_sec": 120, "ttl_sec": 600 }
    });
    if let Some(w) = workspace {
        p["workspace"] = w;
    }
    p
}

/// The daemon under test.
struct Daemon {
    _child: Child,
    prefix: String,
    cache: PathBuf,
}

async fn start_daemon(args: &Args, repo_url: &str) -> anyhow::Result<Daemon> {
    let w = &args.work;
    let presets = w.join("presets");
    std::fs::create_dir_all(&presets)?;
    for p in [
        preset("plain", &args.image, None),
        preset(
            "repo",
            &args.image,
            Some(json!({"repo": {"url": repo_url, "ref": "main"}})),
        ),
    ] {
        std::fs::write(
            presets.join(format!("{}.json", p["id"].as_str().unwrap())),
            p.to_string(),
        )?;
    }
    let prefix = format!("wsb-{}", std::process::id());
    let http = format!("127.0.0.1:{}", free_port());
    let cache = w.join("cache");
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let log = std::fs::File::create(w.join("daemon.log"))?;
    let mut cmd = Command::new(&args.daemon_bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WORKERS_SPAWNER_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .current_dir(repo_root)
        .args(["--redis-url", &args.redis_url, "--stream-prefix", &prefix])
        .arg("--presets-dir")
        .arg(&presets)
        .args([
            "--http-addr",
            &http,
            "--instance-id",
            &prefix,
            "--max-concurrent",
            "4",
            "serve",
        ])
        .env("WORKERS_SPAWNER_BLOCK", "1s")
        .env("WORKERS_SPAWNER_GATEWAY_PORT", free_port().to_string())
        .env(
            "WORKERS_SPAWNER_API_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("WORKERS_SPAWNER_REPO_CACHE_DIR", &cache)
        .env("WORKERS_SPAWNER_ARTIFACTS_DIR", w.join("artifacts"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let child = Child(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(&http) {
            use std::io::{Read, Write};
            let _ = write!(s, "GET /healthz HTTP/1.0\r\n\r\n");
            let mut b = String::new();
            let _ = s.read_to_string(&mut b);
            if b.contains(" 200 ") {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Daemon {
        _child: child,
        prefix,
        cache,
    })
}

/// One request's figures.
#[derive(Debug, Clone, Default)]
struct Sample {
    first_output_ms: f64,
    result_ms: f64,
    collect_ms: Option<f64>,
    collect_bytes: Option<f64>,
}

fn ts_ms(ts: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|t| t.timestamp_millis() as f64)
        .unwrap_or(f64::NAN)
}

async fn one_request(
    redis: &mut redis::aio::MultiplexedConnection,
    d: &Daemon,
    preset: &str,
    n: usize,
) -> anyhow::Result<Sample> {
    let rid = format!("{preset}-{n}-{}", std::process::id());
    let req = json!({
        "request_id": rid,
        "worker_config_id": preset,
        "task": {"prompt": "echo first-output; cd /workspace && echo edit >> src/main.txt; echo done"}
    });
    let id: String = redis
        .xadd(
            format!("{}:spawn", d.prefix),
            "*",
            &[("data", req.to_string())],
        )
        .await?;
    let entry_ms: f64 = id.split('-').next().unwrap_or("0").parse()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let result = loop {
        let results: redis::streams::StreamRangeReply =
            redis.xrange_all(format!("{}:result", d.prefix)).await?;
        let found = results.ids.iter().find_map(|e| {
            let data: Vec<u8> = e.get("data")?;
            let v: Value = serde_json::from_slice(&data).ok()?;
            (v["request_id"] == rid).then_some((v, e.id.clone()))
        });
        if let Some(f) = found {
            break f;
        }
        anyhow::ensure!(Instant::now() < deadline, "no result for {rid}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (r, result_id) = result;
    anyhow::ensure!(r["status"] == "succeeded", "{rid}: {r}");
    let result_ms: f64 = result_id.split('-').next().unwrap_or("0").parse()?;
    let events: redis::streams::StreamRangeReply =
        redis.xrange_all(format!("{}:events", d.prefix)).await?;
    let mut s = Sample {
        result_ms: result_ms - entry_ms,
        first_output_ms: f64::NAN,
        ..Default::default()
    };
    for e in &events.ids {
        let Some(data) = e.get::<Vec<u8>>("data") else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
            continue;
        };
        if v["request_id"] != rid {
            continue;
        }
        if v["type"] == "output" && s.first_output_ms.is_nan() {
            s.first_output_ms = ts_ms(v["ts"].as_str().unwrap_or_default()) - entry_ms;
        }
        if v["type"] == "workspace_collected" {
            s.collect_ms = v["data"]["ms"].as_f64();
            s.collect_bytes = v["data"]["bytes"].as_f64();
        }
    }
    if preset == "repo" {
        anyhow::ensure!(
            r["workspace"]["files_changed"] == 1,
            "{rid}: the change is not the agent's edit: {}",
            r["workspace"]
        );
    }
    Ok(s)
}

fn stats(v: &[f64]) -> String {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "| - | - | - | - |".into();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!(
        "| {:.0} | {:.0} | {:.0} | {:.0} |",
        v[0],
        q(0.5),
        q(0.9),
        v[v.len() - 1]
    )
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// B: the tar into a created container by the archive API, then start.
async fn deliver_archive(docker: &Docker, image: &str, tar: &[u8]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let body = ContainerCreateBody {
        image: Some(image.into()),
        cmd: Some(vec!["true".into()]),
        user: Some("1000:1000".into()),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await?
        .id;
    let opts = UploadToContainerOptions {
        path: "/workspace".into(),
        ..Default::default()
    };
    docker
        .upload_to_container(&id, Some(opts), bollard::body_full(tar.to_vec().into()))
        .await?;
    docker
        .start_container(&id, None::<StartContainerOptions>)
        .await?;
    let mut w = docker.wait_container(&id, None::<WaitContainerOptions>);
    while w.next().await.is_some() {}
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let _ = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    Ok(ms)
}

/// B: the tar through an attached stdin into `tar -x` in the container.
async fn deliver_stdin(docker: &Docker, image: &str, tar: &[u8]) -> anyhow::Result<f64> {
    let t = Instant::now();
    let body = ContainerCreateBody {
        image: Some(image.into()),
        cmd: Some(vec![
            "tar".into(),
            "-x".into(),
            "-C".into(),
            "/workspace".into(),
        ]),
        user: Some("1000:1000".into()),
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await?
        .id;
    let att = docker
        .attach_container(
            &id,
            Some(bollard::query_parameters::AttachContainerOptions {
                stdin: true,
                stream: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        )
        .await?;
    docker
        .start_container(&id, None::<StartContainerOptions>)
        .await?;
    let mut input = att.input;
    input.write_all(tar).await?;
    input.shutdown().await?;
    drop(input);
    let mut out = att.output;
    while out.next().await.is_some() {}
    let mut w = docker.wait_container(&id, None::<WaitContainerOptions>);
    let mut code = 0;
    while let Some(r) = w.next().await {
        if let Ok(r) = r {
            code = r.status_code;
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let _ = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    anyhow::ensure!(code == 0, "tar -x exited {code}");
    Ok(ms)
}

/// C: a running container of the git image holding the checkout with one
/// edit; returns its id.
async fn git_container(docker: &Docker, image: &str, tar: &[u8]) -> anyhow::Result<String> {
    let body = ContainerCreateBody {
        image: Some(image.into()),
        cmd: Some(vec!["sleep".into(), "3600".into()]),
        entrypoint: Some(vec![]),
        user: Some("1000:1000".into()),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await?
        .id;
    let opts = UploadToContainerOptions {
        path: "/workspace".into(),
        ..Default::default()
    };
    docker
        .upload_to_container(&id, Some(opts), bollard::body_full(tar.to_vec().into()))
        .await?;
    docker
        .start_container(&id, None::<StartContainerOptions>)
        .await?;
    exec(docker, &id, "cd /workspace && echo edit >> src/main.txt").await?;
    Ok(id)
}

async fn exec(docker: &Docker, id: &str, script: &str) -> anyhow::Result<usize> {
    let e = docker
        .create_exec(
            id,
            bollard::models::ExecConfig {
                cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut bytes = 0;
    if let bollard::exec::StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&e.id, None).await?
    {
        while let Some(Ok(chunk)) = output.next().await {
            bytes += chunk.into_bytes().len();
        }
    }
    Ok(bytes)
}

/// C, the daemon's way: the archive API's tar of `/workspace`, unpacked,
/// the host's `git add -A` and `git diff --cached --binary BASE`.
async fn collect_archive(docker: &Docker, id: &str, base: &str) -> anyhow::Result<(f64, usize)> {
    let t = Instant::now();
    let mut s = docker.download_from_container(
        id,
        Some(bollard::query_parameters::DownloadFromContainerOptions {
            path: "/workspace".into(),
        }),
    );
    let mut tar = Vec::new();
    while let Some(chunk) = s.next().await {
        tar.extend_from_slice(&chunk?);
    }
    let bytes = tar.len();
    let dir = tempfile::tempdir()?;
    tar::Archive::new(&tar[..]).unpack(dir.path())?;
    let wt = dir.path().join("workspace");
    git(&wt, &["-c", "safe.directory=*", "add", "-A"])?;
    let patch = git(
        &wt,
        &[
            "-c",
            "safe.directory=*",
            "diff",
            "--cached",
            "--binary",
            base,
        ],
    )?;
    anyhow::ensure!(patch.contains("+edit"), "no change read back");
    Ok((t.elapsed().as_secs_f64() * 1000.0, bytes))
}

/// C, in the container: `git diff` by an exec (needs a running container
/// and git in its image).
async fn collect_exec(docker: &Docker, id: &str, base: &str) -> anyhow::Result<(f64, usize)> {
    let t = Instant::now();
    let n = exec(
        docker,
        id,
        &format!("cd /workspace && git add -A && git diff --cached --binary {base}"),
    )
    .await?;
    anyhow::ensure!(n > 0, "no patch");
    Ok((t.elapsed().as_secs_f64() * 1000.0, n))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(&args).await {
        Ok(md) => println!("{md}"),
        Err(e) => {
            eprintln!("workspace-bench: FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<String> {
    let rounds = args.rounds.unwrap_or(if args.smoke { 2 } else { 10 });
    let mib = args.repo_mib.unwrap_or(if args.smoke { 4 } else { 50 });
    std::fs::create_dir_all(&args.work)?;
    log!("making a repository of {mib} MiB");
    let bare = make_repo(&args.work, mib)?;
    let pack_bytes: u64 = walk_size(&bare);
    let port = free_port();
    let _gitd = git_daemon(&args.work.join("repos"), port)?;
    let url = format!("git://127.0.0.1:{port}/big.git");
    let d = start_daemon(args, &url).await?;
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    log!("warming up (image preparation, first mirror)");
    one_request(&mut redis, &d, "plain", 0).await?;
    one_request(&mut redis, &d, "repo", 0).await?;

    // A.
    let methods = ["plain", "cold", "warm"];
    let mut a: Vec<Vec<Sample>> = vec![Vec::new(); 3];
    for r in 0..rounds {
        for k in 0..3 {
            let m = (r + k) % 3;
            let n = 1 + r * 3 + k;
            if methods[m] == "cold" {
                let _ = std::fs::remove_dir_all(&d.cache);
            }
            let preset = if methods[m] == "plain" {
                "plain"
            } else {
                "repo"
            };
            let s = one_request(&mut redis, &d, preset, n).await?;
            log!(
                "A round {r} {}: first output {:.0} ms",
                methods[m],
                s.first_output_ms
            );
            a[m].push(s);
        }
    }

    // B and C on the bare engine, with the checkout's tar.
    let docker = Docker::connect_with_local_defaults()?.with_timeout(Duration::from_secs(300));
    let engine = workers_spawner::adapters::engine::Engine::connect(
        &workers_spawner::model::docker_host::DockerTarget::Local,
    )
    .await?;
    let images = workers_spawner::adapters::images::ImageBuilder::new(
        engine,
        std::sync::Arc::new(workers_spawner::metrics::Metrics::new()),
    );
    let prepared = images.prepared_image(&args.image).await?;
    let prepared_git = images.prepared_image(&args.git_image).await?;
    let tree = args.work.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    git(
        &args.work,
        &[
            "clone",
            "-q",
            bare.to_str().unwrap(),
            tree.to_str().unwrap(),
        ],
    )?;
    let base = git(&tree, &["rev-parse", "HEAD"])?;
    let tar = workers_spawner::worker::workspace::tree_tar(&tree, "")?;
    let mut b = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        for k in 0..2 {
            let m = (r + k) % 2;
            let ms = if m == 0 {
                deliver_archive(&docker, &prepared, &tar).await?
            } else {
                deliver_stdin(&docker, &prepared, &tar).await?
            };
            b[m].push(ms);
        }
    }
    log!("B done");
    let id = git_container(&docker, &prepared_git, &tar).await?;
    let mut c: [Vec<(f64, usize)>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        for k in 0..2 {
            let m = (r + k) % 2;
            let x = if m == 0 {
                collect_archive(&docker, &id, &base).await?
            } else {
                collect_exec(&docker, &id, &base).await?
            };
            c[m].push(x);
        }
    }
    let _ = docker
        .remove_container(
            &id,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await;
    log!("C done");

    let mut md = String::new();
    use std::fmt::Write as _;
    writeln!(
        md,
        "### Workspaces (issue #20)\n\nA repository of {mib} MiB of random files (bare: {:.1} MiB) served by `git daemon` on 127.0.0.1; {rounds} interleaved rounds; tar of the checkout {:.1} MiB. Milliseconds.\n",
        pack_bytes as f64 / 1048576.0,
        tar.len() as f64 / 1048576.0
    )?;
    writeln!(
        md,
        "A. Time to first agent output (entry id time to the first `output` event):\n"
    )?;
    writeln!(
        md,
        "| request | min | median | p90 | max |\n|---|---|---|---|---|"
    )?;
    for (m, name) in [
        "no repository",
        "repository, cold mirror cache",
        "repository, warm cache",
    ]
    .iter()
    .enumerate()
    {
        let v: Vec<f64> = a[m].iter().map(|s| s.first_output_ms).collect();
        writeln!(md, "| {name} {}", stats(&v))?;
    }
    let coll: Vec<f64> = a[1..]
        .iter()
        .flatten()
        .filter_map(|s| s.collect_ms)
        .collect();
    let bytes: Vec<f64> = a[1..]
        .iter()
        .flatten()
        .filter_map(|s| s.collect_bytes)
        .collect();
    writeln!(
        md,
        "\nReading the change back (the daemon's `workspace_collected`: archive of `/workspace`, host git, patch stored): median {:.0} ms, {:.1} MiB read back per request.\n",
        median(&coll),
        median(&bytes) / 1048576.0
    )?;
    let res: Vec<f64> = a[0].iter().map(|s| s.result_ms).collect();
    let res_repo: Vec<f64> = a[2].iter().map(|s| s.result_ms).collect();
    writeln!(
        md,
        "Entry to result, median: no repository {:.0} ms, repository (warm) {:.0} ms.\n",
        median(&res),
        median(&res_repo)
    )?;
    writeln!(
        md,
        "B. Delivering the checkout's tar on the bare engine (create, deliver, start, exit):\n"
    )?;
    writeln!(
        md,
        "| way | min | median | p90 | max |\n|---|---|---|---|---|"
    )?;
    writeln!(
        md,
        "| archive API into the created container {}",
        stats(&b[0])
    )?;
    writeln!(md, "| attached stdin into `tar -x` {}", stats(&b[1]))?;
    writeln!(
        md,
        "\nC. Reading a one-line change back from a running container:\n"
    )?;
    writeln!(
        md,
        "| way | min | median | p90 | max | bytes moved |\n|---|---|---|---|---|---|"
    )?;
    for (m, name) in [
        "archive API + host git (the daemon's)",
        "exec `git diff` in the container",
    ]
    .iter()
    .enumerate()
    {
        let v: Vec<f64> = c[m].iter().map(|x| x.0).collect();
        let n = c[m].first().map(|x| x.1).unwrap_or(0);
        writeln!(md, "| {name} {} {n} |", stats(&v))?;
    }
    Ok(md)
}

fn walk_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    };
    rd.flatten().map(|e| walk_size(&e.path())).sum()
}
