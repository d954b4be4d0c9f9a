//! Warm pools against the real daemon and engine: a pooled request runs in
//! a ready container (and only once per container), the pool refills, a
//! request whose config differs starts cold, and a pool follows its preset.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(60);

fn pooled_preset(size: u32) -> Value {
    json!({
        "id": "pooled_v1",
        "name": "Pooled shell worker (tests)",
        "image": test_image(),
        "agent": {"type": "claude-code", "command": ["sh", "-c", "{prompt}"]},
        "allowed_tools": ["respond"],
        "has_internet": false,
        "limits": {"cpu": 1.0, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600, "pids": 64},
        "pool": {"size": size}
    })
}

async fn pool_containers(prefix: &str) -> Vec<String> {
    containers(prefix)
        .await
        .iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get("io.workers-spawner.kind"))
                .map(String::as_str)
                == Some("pool")
        })
        .map(summary_name)
        .collect()
}

async fn wait_pool(prefix: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = pool_containers(prefix).await;
        if p.len() == n {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "pool has {} containers, want {n}",
            p.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_request_runs_in_a_ready_container_which_is_then_discarded_and_replaced() {
    let presets = presets_dir_with(&[("pooled_v1", pooled_preset(2))]);
    let d = Daemon::start(
        DaemonOpts::new("pool-run")
            .presets_dir(presets.path())
            .max_concurrent(8),
    );
    let ready = wait_pool(&d.prefix, 2).await;
    let rid = unique_request_id("pooled");
    publish_spawn(
        &d.prefix,
        &spawn_request(
            &rid,
            "pooled_v1",
            "echo rid=$ORCHESTRATOR_REQUEST_ID; cat $ORCHESTRATOR_PROMPT_FILE; echo; ls /workspace",
        ),
    )
    .await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let out = r["output"].as_str().unwrap();
    assert!(out.contains(&format!("rid={rid}")), "{out}");
    assert!(
        out.contains("CLAUDE.md"),
        "request-independent files were in place: {out}"
    );
    let used = r["worker"]["container"].as_str().unwrap().to_string();
    assert!(ready.contains(&used), "{used} not in {ready:?}");
    let events = events_for(&d.prefix, &rid).await;
    assert!(
        !events.iter().any(|e| e["type"] == "container_created"),
        "no cold start"
    );
    println!("pooled start_ms = {}", r["timings"]["start_ms"]);
    // The used container goes away; the pool is back to two others.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = pool_containers(&d.prefix).await;
        if now.len() == 2 && !now.contains(&used) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pool not back to two fresh containers: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !container_exists(&used).await,
        "a pool container serves one request only"
    );
    cleanup_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_changes_the_config_starts_cold_and_a_removed_preset_empties_its_pool() {
    let presets = presets_dir_with(&[("pooled_v1", pooled_preset(1))]);
    let d = Daemon::start(
        DaemonOpts::new("pool-cold")
            .presets_dir(presets.path())
            .max_concurrent(8),
    );
    let ready = wait_pool(&d.prefix, 1).await;
    let rid = unique_request_id("cold");
    let mut req = spawn_request(&rid, "pooled_v1", "echo cold");
    req["worker_config_override"] = json!({"limits": {"timeout_sec": 30}});
    publish_spawn(&d.prefix, &req).await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let events = events_for(&d.prefix, &rid).await;
    assert!(
        events.iter().any(|e| e["type"] == "container_created"),
        "{events:?}"
    );
    assert_eq!(
        pool_containers(&d.prefix).await,
        ready,
        "the pool was not touched"
    );
    std::fs::remove_file(presets.path().join("pooled_v1.json")).unwrap();
    wait_pool(&d.prefix, 0).await;
    cleanup_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_containers_of_a_stopped_daemon_are_replaced_on_the_next_start() {
    let presets = presets_dir_with(&[("pooled_v1", pooled_preset(1))]);
    let mut d = Daemon::start(
        DaemonOpts::new("pool-restart")
            .presets_dir(presets.path())
            .max_concurrent(8),
    );
    let before = wait_pool(&d.prefix, 1).await;
    let prefix = d.prefix.clone();
    let instance = d.instance_id.clone();
    d.cleanup_on_drop = false;
    d.kill();
    let d2 = Daemon::start(
        DaemonOpts::new("pool-restart")
            .presets_dir(presets.path())
            .max_concurrent(8)
            .prefix(&prefix)
            .instance_id(&instance),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = pool_containers(&prefix).await;
        if now.len() == 1 && now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pool not renewed: {now:?} (before {before:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rid = unique_request_id("after-restart");
    publish_spawn(&d2.prefix, &spawn_request(&rid, "pooled_v1", "echo ok")).await;
    assert_eq!(
        wait_result(&d2.prefix, &rid, TIMEOUT).await["status"],
        "succeeded"
    );
    cleanup_containers(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_worker_gets_its_prompt_verbatim_and_its_key_only_through_stdin() {
    let mut preset = pooled_preset(1);
    // The prompt as the agent's argv element; the key's presence; what is
    // left of the delivery in the worker's home.
    preset["agent"]["command"] = json!([
        "sh",
        "-c",
        "printf '[%s]\\n' \"$1\"; echo key=${ORCHESTRATOR_API_KEY:+set} rid=$ORCHESTRATOR_REQUEST_ID; ls -a $HOME/.orchestrator",
        "sh",
        "{prompt}"
    ]);
    let presets = presets_dir_with(&[("pooled_v1", preset)]);
    let d = Daemon::start(
        DaemonOpts::new("pool-verbatim")
            .presets_dir(presets.path())
            .max_concurrent(8),
    );
    // An idle pool container holds no request's key in its config.
    let docker = docker().await;
    let idle = loop {
        let ready = wait_pool(&d.prefix, 1).await;
        if let Ok(c) = docker
            .inspect_container(
                &ready[0],
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            break c;
        }
    };
    let env = idle.config.unwrap().env.unwrap_or_default();
    assert!(
        !env.iter().any(|e| e.starts_with("ORCHESTRATOR_API_KEY=")),
        "{env:?}"
    );
    let prompt = "a  b\n$(id) `id` ${HOME}\n'\"\\ {prompt} {{ x }}\n\n";
    let rid = unique_request_id("pooled-verbatim");
    publish_spawn(&d.prefix, &spawn_request(&rid, "pooled_v1", prompt)).await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert!(
        r["worker"]["container"]
            .as_str()
            .unwrap()
            .starts_with("wsp-"),
        "ran in a pool container: {r}"
    );
    let out = r["output"].as_str().unwrap();
    assert!(
        out.starts_with(&format!("[{prompt}]\n")),
        "prompt not verbatim: {out:?}"
    );
    assert!(out.contains(&format!("key=set rid={rid}\n")), "{out}");
    assert!(out.contains("prompt.md"), "{out}");
    assert!(
        !out.contains("request.env"),
        "the env file is removed before the agent runs: {out}"
    );
    cleanup_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_request_whose_run_died_with_its_instance_is_answered_interrupted_not_rerun() {
    let presets = presets_dir_with(&[("pooled_v1", pooled_preset(1))]);
    let d = Daemon::start(
        DaemonOpts::new("pool-interrupted")
            .presets_dir(presets.path())
            .max_concurrent(8),
    );
    wait_pool(&d.prefix, 1).await;
    // A run mark held by an instance that is not alive: the request ran
    // there in a pool container (which carries no request label) and died.
    let rid = unique_request_id("pooled-dead");
    let mut c = redis_conn().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}:run:{rid}", d.prefix))
        .arg("some-dead-instance")
        .arg("EX")
        .arg(600)
        .query_async(&mut c)
        .await
        .unwrap();
    publish_spawn(&d.prefix, &spawn_request(&rid, "pooled_v1", "echo ran")).await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["code"], "interrupted", "{r}");
    let events = events_for(&d.prefix, &rid).await;
    assert!(
        !events.iter().any(|e| e["type"] == "started"),
        "it never runs a second time: {events:?}"
    );
    cleanup_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_container_near_the_end_of_its_ttl_is_renewed_and_never_cuts_a_request_short() {
    let mut preset = pooled_preset(1);
    // The container's TTL leaves a whole timeout for only two seconds.
    preset["limits"]["timeout_sec"] = json!(5);
    preset["limits"]["ttl_sec"] = json!(7);
    let presets = presets_dir_with(&[("pooled_v1", preset)]);
    let d = Daemon::start(
        DaemonOpts::new("pool-ttl")
            .presets_dir(presets.path())
            .max_concurrent(8),
    );
    let first = wait_pool(&d.prefix, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Too old for a 5 s task: the request does not claim it (it starts cold
    // or in a renewed container) and gets its whole timeout.
    let rid = unique_request_id("pooled-ttl");
    publish_spawn(
        &d.prefix,
        &spawn_request(&rid, "pooled_v1", "sleep 3; echo slept"),
    )
    .await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_ne!(r["worker"]["container"], first[0].as_str(), "{r}");
    // The maintenance pass (every 5 s) renews the pool.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = pool_containers(&d.prefix).await;
        if now.len() == 1 && now[0] != first[0] {
            break;
        }
        assert!(Instant::now() < deadline, "pool not renewed: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!container_exists(&first[0]).await);
    cleanup_containers(&d.prefix).await;
}
