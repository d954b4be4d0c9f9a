//! A fleet (docs/reliability.md, "A fleet"): daemons on separate Docker
//! engines sharing one Redis. Engine B is a second dockerd in a network
//! namespace of its own (scripts/second-engine.sh, started by
//! scripts/test-env.sh); its daemon runs in that namespace and reaches
//! Redis across a veth, as a daemon on another host would. A host loss is
//! `kill -9` of daemon B plus `second-engine.sh stop` (its containers die
//! with it). What ran where is counted from each engine's own events.
//!
//! Also the retry policy on one host: an infrastructure error, and OOM
//! retries that keep the limits.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

const REQUEST_ID_LABEL: &str = "io.workers-spawner.request-id";
const LOST_AFTER: Duration = Duration::from_secs(30);

/// The tests that lose engine B's host take turns (the harness runs two
/// tests at a time).
static ENGINE_B: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_of(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: scripts/test-env.sh starts engine B and exports it")
    })
}

/// `scripts/second-engine.sh <cmd>`.
fn second_engine(cmd: &str) {
    let st = Command::new(repo_root().join("scripts/second-engine.sh"))
        .arg(cmd)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("scripts/second-engine.sh");
    assert!(st.success(), "second-engine.sh {cmd} failed");
}

async fn docker_b() -> Docker {
    let host = env_of("WS_ENGINE_B_HOST");
    let path = host.strip_prefix("unix://").expect("a unix socket");
    Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION).expect("engine B")
}

/// The `start` events of one engine's containers of `prefix`, per request.
#[derive(Clone, Default)]
struct Starts(Arc<Mutex<HashMap<String, usize>>>);

impl Starts {
    async fn watch(d: Docker, prefix: &str) -> Starts {
        let starts = Starts::default();
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert("event".to_string(), vec!["start".to_string()]);
        filters.insert(
            "label".to_string(),
            vec![format!("{PREFIX_LABEL}={prefix}")],
        );
        let opts = bollard::query_parameters::EventsOptions {
            since: Some((chrono::Utc::now().timestamp() - 1).to_string()),
            until: None,
            filters: Some(filters),
        };
        let s = starts.clone();
        tokio::spawn(async move {
            let mut events = d.events(Some(opts));
            while let Some(Ok(m)) = events.next().await {
                let attrs = m.actor.and_then(|a| a.attributes).unwrap_or_default();
                if let Some(rid) = attrs.get(REQUEST_ID_LABEL) {
                    *s.0.lock().unwrap().entry(rid.clone()).or_default() += 1;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        starts
    }

    fn get(&self) -> HashMap<String, usize> {
        self.0.lock().unwrap().clone()
    }
}

/// A preset as an admin writes it, on the stock image (no folders, no
/// user of ours), with `retry` when given.
fn preset(id: &str, image: &str, memory: &str, retry: Option<Value>) -> Value {
    let mut p = json!({
        "id": id,
        "name": format!("{id} (fleet)"),
        "image": image,
        "agent": {"type": "claude-code", "command": ["sh", "-c", "{prompt}"], "conversation": false},
        "allowed_tools": [],
        "has_internet": false,
        "limits": {"cpu": 0.5, "memory": memory, "timeout_sec": 120, "ttl_sec": 600, "pids": 64}
    });
    if let Some(r) = retry {
        p["retry"] = r;
    }
    p
}

fn request(rid: &str, preset: &str, prompt: &str) -> Value {
    json!({"request_id": rid, "worker_config_id": preset, "task": {"prompt": prompt, "user_id": "fleet-user"}})
}

/// Options shared by both instances of a fleet test.
fn fleet_opts(name: &str, prefix: &str, presets: &std::path::Path, instance: &str) -> DaemonOpts {
    DaemonOpts::new(name)
        .prefix(prefix)
        .presets_dir(presets)
        .instance_id(instance)
        .max_concurrent(4)
        .setting("instance_lost_after", "30s")
        .setting("reclaim_min_idle", "30s")
        .env("RUST_LOG", "info")
}

/// How daemon B reaches engine B.
#[derive(Clone, Copy)]
enum Link {
    /// Its unix socket.
    Unix,
    /// `tcp://` with mutual TLS (the engine's certificate checked against
    /// its CA, a client certificate of ours), as to another host.
    Tls,
}

/// Daemon B: in engine B's netns, driving engine B, Redis across the veth.
fn daemon_b(
    prefix: &str,
    presets: &std::path::Path,
    egress: &std::path::Path,
    link: Link,
) -> Daemon {
    let redis_port = env_of("WS_TEST_REDIS_PORT");
    let opts = fleet_opts("fleet", prefix, presets, "fleet-b")
        .in_netns(&env_of("WS_ENGINE_B_NETNS"), &env_of("WS_ENGINE_B_NS_ADDR"))
        .redis_url(&format!(
            "redis://{}:{redis_port}/",
            env_of("WS_ENGINE_B_HOST_ADDR")
        ))
        .setting("egress_dir", &egress.to_string_lossy());
    let opts = match link {
        Link::Unix => opts.setting("docker_host", &env_of("WS_ENGINE_B_HOST")),
        Link::Tls => opts
            .setting("docker_host", &env_of("WS_ENGINE_B_TCP"))
            .setting("docker_tls_ca", &env_of("WS_ENGINE_B_TLS_CA"))
            .setting("docker_tls_cert", &env_of("WS_ENGINE_B_TLS_CERT"))
            .setting("docker_tls_key", &env_of("WS_ENGINE_B_TLS_KEY")),
    };
    Daemon::start(opts)
}

async fn managed_on(d: &Docker, prefix: &str) -> Vec<String> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("{PREFIX_LABEL}={prefix}")],
    );
    d.list_containers(Some(bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    }))
    .await
    .unwrap_or_default()
    .into_iter()
    .filter_map(|c| c.id)
    .collect()
}

async fn remove_all_on(d: &Docker, prefix: &str) {
    for id in managed_on(d, prefix).await {
        let _ = d
            .remove_container(
                &id,
                Some(bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
}

async fn keys(pattern: &str) -> Vec<String> {
    let mut c = redis_conn().await;
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn stream_len(stream: &str) -> usize {
    let mut c = redis_conn().await;
    redis::cmd("XLEN")
        .arg(stream)
        .query_async::<usize>(&mut c)
        .await
        .unwrap()
}

/// Waits until `rid` has a `started` event.
async fn wait_started(prefix: &str, rid: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if events_for(prefix, rid)
            .await
            .iter()
            .any(|e| e["type"] == "started")
        {
            return;
        }
        assert!(Instant::now() < deadline, "{rid} did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_host_loses_no_request_and_runs_again_only_what_may() {
    let _turn = ENGINE_B.lock().await;
    let prefix = unique_prefix("fleet");
    let dir = tempfile::tempdir().unwrap();
    let presets = dir.path().join("presets");
    std::fs::create_dir_all(&presets).unwrap();
    let image = "ws-test-stock:latest";
    write_preset(
        &presets,
        "fleet_retry",
        &preset(
            "fleet_retry",
            image,
            "32m",
            Some(json!({"max": 1, "on": ["lost"], "backoff": "1s"})),
        ),
    );
    write_preset(
        &presets,
        "fleet_once",
        &preset("fleet_once", image, "32m", None),
    );
    let egress_b = dir.path().join("egress-b");
    let engine_a = docker().await;
    let engine_b = docker_b().await;
    let starts_a = Starts::watch(engine_a.clone(), &prefix).await;
    let starts_b = Starts::watch(engine_b.clone(), &prefix).await;

    // B alone first: it takes four long tasks (its four slots), two of each
    // preset, and reads nothing more.
    let mut b = daemon_b(&prefix, &presets, &egress_b, Link::Unix);
    let on_b: Vec<(String, &str)> = (0..4)
        .map(|i| {
            let p = if i % 2 == 0 {
                "fleet_retry"
            } else {
                "fleet_once"
            };
            (unique_request_id(&format!("onb{i}")), p)
        })
        .collect();
    for (rid, p) in &on_b {
        publish_spawn(&prefix, &request(rid, p, "echo begun; sleep 8; echo done")).await;
    }
    for (rid, _) in &on_b {
        wait_started(&prefix, rid, Duration::from_secs(60)).await;
    }
    // Then A, and the other 36 requests: B's slots are full, A takes them.
    let a = Daemon::start(fleet_opts("fleet", &prefix, &presets, "fleet-a"));
    let mut rest = Vec::new();
    for i in 0..36 {
        let p = if i % 2 == 0 {
            "fleet_retry"
        } else {
            "fleet_once"
        };
        let rid = unique_request_id(&format!("rest{i}"));
        publish_spawn(&prefix, &request(&rid, p, "echo begun; sleep 1; echo done")).await;
        rest.push((rid, p));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // B's host is lost: its daemon and its engine (with its containers).
    b.kill();
    second_engine("stop");
    let lost_at = Instant::now();

    let all: Vec<(String, &str)> = on_b.iter().cloned().chain(rest.iter().cloned()).collect();
    let bound = LOST_AFTER + Duration::from_secs(8) + Duration::from_secs(10);
    let mut results = HashMap::new();
    for (rid, _) in &all {
        let left = bound.saturating_sub(lost_at.elapsed()) + Duration::from_secs(15);
        let r = wait_result(&prefix, rid, left).await;
        results.insert(rid.clone(), r);
    }
    let answered_in = lost_at.elapsed();
    eprintln!("all 40 answered {answered_in:?} after the host loss");
    assert!(
        answered_in <= bound + Duration::from_secs(15),
        "answered only {answered_in:?} after the loss (bound {bound:?}); A's log:\n{}",
        a.stderr_tail(40)
    );
    for (rid, _) in &all {
        assert_eq!(
            results_for(&prefix, rid).await.len(),
            1,
            "{rid}: one result"
        );
    }
    let sa = starts_a.get();
    let sb = starts_b.get();
    for (rid, p) in &on_b {
        let r = &results[rid];
        assert_eq!(sb.get(rid), Some(&1), "{rid} ran on B");
        if *p == "fleet_retry" {
            assert_eq!(r["status"], "succeeded", "{r:#}");
            assert_eq!(r["attempt"], 2, "{r:#}");
            assert_eq!(r["worker"]["instance"], "fleet-a", "{r:#}");
            assert_eq!(sa.get(rid), Some(&1), "{rid} ran again on A, once");
            let ev = events_for(&prefix, rid).await;
            let retrying = ev
                .iter()
                .find(|e| e["type"] == "retrying")
                .expect("retrying event");
            assert_eq!(retrying["data"]["reason"], "lost", "{retrying}");
            assert!(
                ev.iter()
                    .any(|e| e["type"] == "finished" && e["attempt"] == 2),
                "the second attempt's events carry it: {ev:#?}"
            );
        } else {
            assert_eq!(r["status"], "error", "{r:#}");
            assert_eq!(r["error"]["code"], "lost", "{r:#}");
            assert_eq!(r["worker"]["instance"], "fleet-b", "{r:#}");
            assert!(
                r["error"]["message"].as_str().unwrap().contains("fleet-b"),
                "{r:#}"
            );
            assert_eq!(sa.get(rid), None, "{rid} never ran again");
        }
    }
    for (rid, _) in &rest {
        let r = &results[rid];
        assert_eq!(r["status"], "succeeded", "{r:#}");
        assert!(r.get("attempt").is_none(), "first attempts say none: {r:#}");
        assert_eq!(sb.get(rid), None, "{rid} ran on A only");
        assert_eq!(sa.get(rid), Some(&1), "{rid} ran once");
    }
    assert!(
        a.stderr().contains("instance lost"),
        "A says it answered for B"
    );

    // B's host comes back: its engine with the dead containers, its daemon
    // with the same id. It removes them and says nothing.
    let results_before = stream_len(&format!("{prefix}:result")).await;
    let events_before = stream_len(&format!("{prefix}:events")).await;
    second_engine("start");
    let stale = managed_on(&engine_b, &prefix).await;
    assert!(!stale.is_empty(), "engine B kept its dead containers");
    let mut b2 = daemon_b(&prefix, &presets, &egress_b, Link::Tls);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !managed_on(&engine_b, &prefix).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "B left its stale containers: {}",
            b2.stderr_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        stream_len(&format!("{prefix}:result")).await,
        results_before
    );
    assert_eq!(
        stream_len(&format!("{prefix}:events")).await,
        events_before,
        "B published nothing on its return"
    );
    assert!(
        keys(&format!("{prefix}:key:*")).await.is_empty(),
        "no worker key left valid"
    );
    assert!(
        keys(&format!("{prefix}:held:*")).await.is_empty(),
        "no hold left"
    );
    assert!(b2.stderr().contains("removing the container quietly"));
    b2.kill();
    remove_all_on(&engine_b, &prefix).await;
    drop(a);
    assert_no_containers(&prefix).await;
}

/// Every event of `prefix` (session-wide ones have no request id).
async fn all_events(prefix: &str) -> Vec<Value> {
    stream_json(&format!("{prefix}:events")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_hosts_session_ends_and_its_tasks_are_answered() {
    let _turn = ENGINE_B.lock().await;
    let prefix = unique_prefix("fleet-sess");
    let dir = tempfile::tempdir().unwrap();
    let presets = dir.path().join("presets");
    std::fs::create_dir_all(&presets).unwrap();
    // Sessions are never run again elsewhere: their state went with the host.
    write_preset(
        &presets,
        "fleet_session",
        &preset(
            "fleet_session",
            "ws-test-stock:latest",
            "32m",
            Some(json!({"max": 1, "on": ["lost"], "backoff": "1s"})),
        ),
    );
    let engine_b = docker_b().await;
    let egress_b = dir.path().join("egress-b");
    // This B reaches its engine over TCP with TLS, as a remote one.
    let mut b = daemon_b(&prefix, &presets, &egress_b, Link::Tls);
    let sid = format!("sess-{}", random_suffix());
    let task = |rid: &str, prompt: &str| {
        let mut r = request(rid, "fleet_session", prompt);
        r["task"]["session_id"] = json!(sid);
        r
    };
    let (t1, t2, t3) = (
        unique_request_id("t1"),
        unique_request_id("t2"),
        unique_request_id("t3"),
    );
    publish_spawn(&prefix, &task(&t1, "echo one; sleep 30")).await;
    publish_spawn(&prefix, &task(&t2, "echo two")).await;
    wait_started(&prefix, &t1, Duration::from_secs(60)).await;
    let a = Daemon::start(fleet_opts("fleet-sess", &prefix, &presets, "fleet-a"));
    b.kill();
    second_engine("stop");

    let bound = LOST_AFTER + Duration::from_secs(30);
    let r1 = wait_result(&prefix, &t1, bound).await;
    let r2 = wait_result(&prefix, &t2, bound).await;
    // The running task is never run twice; the queued one never ran.
    assert_eq!(r1["status"], "error", "{r1:#}");
    assert_eq!(r1["error"]["code"], "interrupted", "{r1:#}");
    assert_eq!(r2["status"], "error", "{r2:#}");
    assert_eq!(r2["error"]["code"], "lost", "{r2:#}");
    assert!(
        r2["error"]["message"].as_str().unwrap().contains("fleet-b"),
        "{r2:#}"
    );
    let expired: Vec<Value> = all_events(&prefix)
        .await
        .into_iter()
        .filter(|e| e["type"] == "session_expired" && e["data"]["session_id"] == json!(sid))
        .collect();
    assert_eq!(expired.len(), 1, "{expired:#?}");
    assert_eq!(expired[0]["data"]["reason"], "lost");
    assert_eq!(expired[0]["data"]["instance"], "fleet-b");

    // A task after the loss starts the session anew, on A.
    publish_spawn(&prefix, &task(&t3, "echo three")).await;
    let r3 = wait_result(&prefix, &t3, Duration::from_secs(60)).await;
    assert_eq!(r3["status"], "succeeded", "{r3:#}");
    assert_eq!(r3["worker"]["instance"], "fleet-a", "{r3:#}");

    // B comes back: its session container is not the session's any more.
    second_engine("start");
    let events_before = stream_len(&format!("{prefix}:events")).await;
    let mut b2 = daemon_b(&prefix, &presets, &egress_b, Link::Unix);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !managed_on(&engine_b, &prefix).await.is_empty() {
        assert!(Instant::now() < deadline, "{}", b2.stderr_tail(30));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(stream_len(&format!("{prefix}:events")).await, events_before);
    b2.kill();
    remove_all_on(&engine_b, &prefix).await;
    for v in engine_b
        .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
        .await
        .ok()
        .and_then(|l| l.volumes)
        .unwrap_or_default()
    {
        if v.labels.get(PREFIX_LABEL) == Some(&prefix) {
            let _ = engine_b
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
    }
    drop(a);
    cleanup_volumes(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_task_is_retried_with_the_same_timeout() {
    let mut p = preset(
        "slow_retry",
        "ws-test-stock:latest",
        "32m",
        Some(json!({"max": 1, "on": ["timed_out"], "backoff": "500ms"})),
    );
    p["limits"]["timeout_sec"] = json!(2);
    let dir = presets_dir_with(&[("slow_retry", p)]);
    let d = Daemon::start(DaemonOpts::new("retry-timeout").presets_dir(dir.path()));
    let rid = unique_request_id("slow");
    let t0 = Instant::now();
    publish_spawn(&d.prefix, &request(&rid, "slow_retry", "echo go; sleep 30")).await;
    let r = wait_result(&d.prefix, &rid, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "timed_out", "{r:#}");
    assert_eq!(r["attempt"], 2, "{r:#}");
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "both attempts were stopped at 2 s"
    );
    let ev = events_for(&d.prefix, &rid).await;
    let retrying: Vec<&Value> = ev.iter().filter(|e| e["type"] == "retrying").collect();
    assert_eq!(retrying.len(), 1, "{ev:#?}");
    assert_eq!(retrying[0]["data"]["reason"], "timed_out");
    assert_eq!(
        ev.iter().filter(|e| e["type"] == "timed_out").count(),
        2,
        "each attempt timed out once: {ev:#?}"
    );
    assert_eq!(results_for(&d.prefix, &rid).await.len(), 1);
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infrastructure_error_is_retried_and_the_next_attempt_succeeds() {
    // The preset's image does not exist yet: the first attempt fails with
    // `image_not_found`; the operator restores it during the backoff.
    let late = format!("ws-fleet-late-{}:latest", random_suffix());
    let p = preset(
        "late_image",
        &late,
        "32m",
        Some(json!({"max": 2, "on": ["error"], "backoff": "4s"})),
    );
    let dir = presets_dir_with(&[("late_image", p)]);
    let d = Daemon::start(DaemonOpts::new("retry-error").presets_dir(dir.path()));
    let rid = unique_request_id("late");
    publish_spawn(
        &d.prefix,
        &request(&rid, "late_image", "echo hello from attempt two"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let retrying = loop {
        let ev = events_for(&d.prefix, &rid).await;
        if let Some(e) = ev.iter().find(|e| e["type"] == "retrying") {
            break e.clone();
        }
        assert!(
            results_for(&d.prefix, &rid).await.is_empty(),
            "answered instead of retried: {:#?}",
            results_for(&d.prefix, &rid).await
        );
        assert!(Instant::now() < deadline, "no retry: {}", d.stderr_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(retrying["data"]["attempt"], 1, "{retrying}");
    assert_eq!(retrying["data"]["next_attempt"], 2, "{retrying}");
    assert_eq!(retrying["data"]["reason"], "error", "{retrying}");
    let st = Command::new("docker")
        .args(["tag", "ws-test-stock:latest", &late])
        .status()
        .unwrap();
    assert!(st.success());
    let r = wait_result(&d.prefix, &rid, Duration::from_secs(60)).await;
    let _ = Command::new("docker").args(["rmi", &late]).status();
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert_eq!(r["attempt"], 2, "{r:#}");
    assert!(r["output"]
        .as_str()
        .unwrap()
        .contains("hello from attempt two"));
    assert_eq!(results_for(&d.prefix, &rid).await.len(), 1);
    let ev = events_for(&d.prefix, &rid).await;
    assert!(
        ev.iter()
            .any(|e| e["type"] == "started" && e["attempt"] == 2),
        "{ev:#?}"
    );
    assert!(keys(&format!("{}:held:*", d.prefix)).await.is_empty());
    assert!(keys(&format!("{}:retry:*", d.prefix)).await.is_empty());
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_retry_keeps_the_limits_and_an_override_cannot_add_retries() {
    let p = preset(
        "oom_retry",
        "ws-test-stock:latest",
        "48m",
        Some(json!({"max": 1, "on": ["oom"], "backoff": "500ms"})),
    );
    let dir = presets_dir_with(&[("oom_retry", p)]);
    let d = Daemon::start(DaemonOpts::new("retry-oom").presets_dir(dir.path()));
    let rid = unique_request_id("oom");
    // Prints the memory limit it runs under, then outgrows it.
    let prompt = "echo limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max); x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    publish_spawn(&d.prefix, &request(&rid, "oom_retry", prompt)).await;
    let r = wait_result(&d.prefix, &rid, Duration::from_secs(90)).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["oom_killed"], true, "{r:#}");
    assert_eq!(r["attempt"], 2, "one retry, then the result: {r:#}");
    let ev = events_for(&d.prefix, &rid).await;
    let limits: Vec<(Value, String)> = ev
        .iter()
        .filter(|e| e["type"] == "output")
        .filter_map(|e| {
            let t = e["data"]["text"].as_str()?;
            t.strip_prefix("limit=")
                .map(|l| (e.get("attempt").cloned().unwrap_or(json!(1)), l.to_string()))
        })
        .collect();
    assert_eq!(limits.len(), 2, "{limits:?}");
    assert_eq!(limits[0].0, 1);
    assert_eq!(limits[1].0, 2);
    assert_eq!(
        limits[0].1, limits[1].1,
        "the retry ran under the same limit"
    );
    assert_eq!(limits[0].1, (48u64 << 20).to_string());
    assert_eq!(
        ev.iter().filter(|e| e["type"] == "retrying").count(),
        1,
        "max 1"
    );

    // An override may narrow the policy, never widen it.
    for (tag, patch, field) in [
        (
            "max",
            json!({"retry": {"max": 3, "on": ["oom"]}}),
            "retry.max",
        ),
        (
            "on",
            json!({"retry": {"max": 1, "on": ["oom", "lost"]}}),
            "retry.on",
        ),
        (
            "memory",
            json!({"retry": {"max": 1, "on": ["oom"], "memory": "1g"}}),
            "retry",
        ),
    ] {
        let rid = unique_request_id(&format!("widen-{tag}"));
        let mut req = request(&rid, "oom_retry", "true");
        req["worker_config_override"] = patch;
        publish_spawn(&d.prefix, &req).await;
        let r = wait_result(&d.prefix, &rid, Duration::from_secs(30)).await;
        assert_eq!(r["status"], "rejected", "{r:#}");
        assert!(
            r["error"]["field"]
                .as_str()
                .unwrap_or("")
                .starts_with(field),
            "{tag}: {r:#}"
        );
    }
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_vanished_while_no_daemon_ran_is_answered_for() {
    // Acknowledged, then its container removed by hand while its daemon was
    // down: no container to adopt, so only the hold says it ever ran.
    let dir = presets_dir_with(&[
        (
            "vanish_retry",
            preset(
                "vanish_retry",
                "ws-test-stock:latest",
                "32m",
                Some(json!({"max": 1, "on": ["lost"], "backoff": "0s"})),
            ),
        ),
        (
            "vanish_once",
            preset("vanish_once", "ws-test-stock:latest", "32m", None),
        ),
    ]);
    let prefix = unique_prefix("vanish");
    let opts = || {
        DaemonOpts::new("vanish")
            .prefix(&prefix)
            .presets_dir(dir.path())
            .instance_id("vanish-1")
    };
    let mut d = Daemon::start(opts());
    let (r1, r2) = (unique_request_id("v-retry"), unique_request_id("v-once"));
    publish_spawn(
        &prefix,
        &request(&r1, "vanish_retry", "sleep 6; echo again"),
    )
    .await;
    publish_spawn(&prefix, &request(&r2, "vanish_once", "sleep 6; echo again")).await;
    wait_started(&prefix, &r1, Duration::from_secs(60)).await;
    wait_started(&prefix, &r2, Duration::from_secs(60)).await;
    d.kill();
    d.cleanup_on_drop = false;
    assert_eq!(
        cleanup_containers(&prefix).await.len(),
        2,
        "both removed by hand"
    );
    let d2 = Daemon::start(opts());
    let a = wait_result(&prefix, &r1, Duration::from_secs(60)).await;
    let b = wait_result(&prefix, &r2, Duration::from_secs(30)).await;
    assert_eq!(a["status"], "succeeded", "{a:#}");
    assert_eq!(a["attempt"], 2, "{a:#}");
    assert_eq!(b["status"], "error", "{b:#}");
    assert_eq!(b["error"]["code"], "lost", "{b:#}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("vanished"),
        "{b:#}"
    );
    for rid in [&r1, &r2] {
        assert_eq!(results_for(&prefix, rid).await.len(), 1);
    }
    drop(d2);
    assert_no_containers(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_b_is_another_engine() {
    // The fleet tests mean something only if B is not A seen twice (and
    // engine B is up only between the other tests' host losses).
    let _turn = ENGINE_B.lock().await;
    let out = |host: Option<&str>| {
        let mut c = Command::new("docker");
        if let Some(h) = host {
            c.args(["-H", h]);
        }
        let o = c.args(["info", "--format", "{{.ID}}"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let a = out(None);
    let b = out(Some(&env_of("WS_ENGINE_B_HOST")));
    assert!(!a.is_empty() && !b.is_empty());
    assert_ne!(a, b);
}
