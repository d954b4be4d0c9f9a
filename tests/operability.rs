//! What operators rely on: metrics that move, readiness that follows Redis,
//! the admin CLI (`spawn --follow`, `run`, `ps`, `cancel`), against the real
//! daemon, a real redis-server and the real Docker engine.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .current_dir(repo_root())
        .args(["--redis-url", &redis_url(), "--stream-prefix", &d.prefix])
        .args(args)
        .env_remove("WORKERS_SPAWNER_STREAM_PREFIX")
        .output()
        .expect("run the CLI")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_counters_move_as_requests_are_processed() {
    let d = Daemon::start(DaemonOpts::new("ops-metrics"));
    let before = d.get("/metrics").expect("metrics").1;
    assert!(
        before.contains("workers_spawner_running_workers"),
        "{before}"
    );
    let ok = unique_request_id("m-ok");
    let bad = unique_request_id("m-bad");
    publish_spawn(&d.prefix, &spawn_request(&ok, "shell_v1", "echo hi")).await;
    publish_spawn(&d.prefix, &spawn_request(&bad, "nope_v1", "echo hi")).await;
    wait_result(&d.prefix, &ok, TIMEOUT).await;
    wait_result(&d.prefix, &bad, TIMEOUT).await;
    let after = d.get("/metrics").expect("metrics").1;
    assert_eq!(
        metric(
            &after,
            "workers_spawner_results_total{outcome=\"succeeded\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            "workers_spawner_results_total{outcome=\"rejected\"}"
        ),
        1.0,
        "{after}"
    );
    assert!(
        metric(&after, "workers_spawner_entries_read_total") >= 2.0,
        "{after}"
    );
    assert!(
        metric(&after, "workers_spawner_start_seconds_count") >= 1.0,
        "{after}"
    );
    assert!(
        metric(&after, "workers_spawner_run_seconds_count") >= 1.0,
        "{after}"
    );
    assert!(after.contains("workers_spawner_queue_length"), "{after}");
    assert!(
        after.contains("workers_spawner_dead_letters_total"),
        "{after}"
    );
    cleanup_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_when_redis_stops_and_200_when_it_is_back() {
    let mut redis = PrivateRedis::start();
    let d = Daemon::start(DaemonOpts::new("ops-readyz").redis_url(&redis.url()));
    assert_eq!(d.get("/readyz").map(|r| r.0), Some(200));
    assert_eq!(d.get("/healthz").map(|r| r.0), Some(200));
    redis.stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    while d.get("/readyz").map(|r| r.0) != Some(503) {
        assert!(
            Instant::now() < deadline,
            "readyz never said 503 with Redis down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        d.get("/healthz").map(|r| r.0),
        Some(200),
        "the process is alive"
    );
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.get("/readyz").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "readyz never came back\n{}",
            d.stderr_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_follow_prints_events_and_exits_by_the_result_status() {
    let d = Daemon::start(DaemonOpts::new("ops-follow"));
    let ok = cli(
        &d,
        &[
            "spawn",
            "--preset",
            "shell_v1",
            "--prompt",
            "echo followed-ok",
            "--follow",
        ],
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("\"type\":\"accepted\""), "{out}");
    assert!(out.contains("followed-ok"), "{out}");
    assert!(out.contains("\"status\":\"succeeded\""), "{out}");
    let bad = cli(
        &d,
        &[
            "spawn", "--preset", "shell_v1", "--prompt", "exit 9", "--follow",
        ],
    );
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    assert!(String::from_utf8_lossy(&bad.stdout).contains("\"status\":\"failed\""));
    // Without --follow it prints the request id at once.
    let quick = cli(
        &d,
        &[
            "spawn",
            "--preset",
            "shell_v1",
            "--prompt",
            "sleep 30",
            "--request-id",
            "ops-follow-cancel-me",
        ],
    );
    assert_eq!(quick.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&quick.stdout).trim(),
        "ops-follow-cancel-me"
    );
    // ps lists it while it runs; cancel stops it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ps = cli(&d, &["ps"]);
        if String::from_utf8_lossy(&ps.stdout).contains("ops-follow-cancel-me") {
            break;
        }
        assert!(Instant::now() < deadline, "ps never listed the worker");
        std::thread::sleep(Duration::from_millis(200));
    }
    let c = cli(&d, &["cancel", "ops-follow-cancel-me"]);
    assert_eq!(c.status.code(), Some(0));
    let r = wait_result(&d.prefix, "ops-follow-cancel-me", TIMEOUT).await;
    assert_eq!(r["status"], "cancelled", "{r}");
    cleanup_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_works_with_redis_stopped() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    redis.stop();
    let out = Command::new(binary())
        .current_dir(repo_root())
        .args(["--redis-url", &url, "--presets-dir"])
        .arg(fixture_presets())
        .args(["--stream-prefix", &unique_prefix("ops-run")])
        .args([
            "run",
            "--preset",
            "shell_v1",
            "--prompt",
            "echo ran-without-redis",
        ])
        .env("WS_TEST_SECRET", "run-secret-value")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(result["status"], "succeeded");
    assert!(result["output"]
        .as_str()
        .unwrap()
        .contains("ran-without-redis"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"type\":\"started\""));
}

#[test]
fn serve_says_one_clear_line_and_exits_non_zero_when_redis_is_unreachable() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    redis.stop();
    let started = Instant::now();
    let out = Command::new(binary())
        .current_dir(repo_root())
        .args([
            "--redis-url",
            &url,
            "--http-addr",
            "127.0.0.1:0",
            "--stream-prefix",
            &unique_prefix("ops-noredis"),
            "serve",
        ])
        .env("WORKERS_SPAWNER_GATEWAY_PORT", "0")
        .output()
        .expect("serve");
    assert_ne!(out.status.code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_of_a_request_is_json_with_its_request_id_preset_and_container() {
    let d = Daemon::start(DaemonOpts::new("ops-logs"));
    let rid = unique_request_id("logs");
    publish_spawn(&d.prefix, &spawn_request(&rid, "shell_v1", "exit 3")).await;
    wait_result(&d.prefix, &rid, TIMEOUT).await;
    let log = d.stderr();
    let mut of_request = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        if line.contains(&rid) {
            of_request += 1;
            let span = &v["span"];
            assert_eq!(span["request_id"], rid.as_str(), "{line}");
            assert_eq!(span["preset"], "shell_v1", "{line}");
            assert!(
                span["container"].as_str().is_some_and(|c| c.contains(&rid)),
                "{line}"
            );
        }
    }
    assert!(of_request >= 2, "the request's lines were found:\n{log}");
    cleanup_containers(&d.prefix).await;
}
