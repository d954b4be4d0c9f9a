//! Sessions that remember (issue #16): a session's later tasks continue the
//! agent's own conversation, and the session's workspace and agent state
//! live on its volumes, so they outlive its container (TTL, a crash, a
//! removed container). Real `workers-spawner serve` child processes, the
//! private redis-server and the real Docker engine.
//!
//! The agent is `test-agent` (images/test-busybox/test-agent): like the
//! real CLIs it keeps a log per conversation under its state folder, refuses
//! to resume an id it does not know (or to start one it knows), and prints
//! how many earlier turns it sees; then it runs its prompt as a script. On
//! images that do not ship it, the same script runs inline through the
//! image's own `sh`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const RESULT_TIMEOUT: Duration = Duration::from_secs(90);
const TEST_AGENT: &str = include_str!("../images/test-busybox/test-agent");

/// A preset as an admin writes it for the test agent.
fn preset(id: &str, image: &str, command: Value, extra: Value) -> Value {
    let mut p = json!({
        "id": id,
        "name": format!("{id} (session memory)"),
        "image": image,
        "agent": {"type": "claude-code", "command": command},
        "allowed_tools": [],
        "has_internet": false,
        "limits": {"cpu": 0.5, "memory": "64m", "timeout_sec": 30, "ttl_sec": 600, "pids": 64}
    });
    for (k, v) in extra.as_object().unwrap() {
        if k == "conversation" {
            p["agent"]["conversation"] = v.clone();
        } else if k == "ttl_sec" {
            p["limits"]["ttl_sec"] = v.clone();
        } else {
            p[k] = v.clone();
        }
    }
    p
}

/// The installed test agent (test-busybox image).
fn installed() -> Value {
    json!(["test-agent", "{prompt}"])
}

/// The test agent run by the image's own `sh` (images without it).
fn inline() -> Value {
    json!(["sh", "-c", TEST_AGENT, "test-agent", "{prompt}"])
}

/// Droid-like: the agent makes its id and reports it; `--resume` continues.
fn reported() -> Value {
    json!({"state_dir": "/home/worker/.test-agent", "id": "reported",
           "report_field": "session_id", "resume": ["--resume", "{agent_session}"]})
}

/// Codex-like: no id; `--last` continues the newest conversation.
fn last() -> Value {
    json!({"state_dir": "/home/worker/.test-agent", "id": "none", "resume": ["--last"]})
}

fn request(rid: &str, preset: &str, sid: &str, user: &str, prompt: &str) -> Value {
    json!({
        "request_id": rid,
        "worker_config_id": preset,
        "task": {"prompt": prompt, "user_id": user, "session_id": sid}
    })
}

/// One task: publishes it and waits for its result.
async fn task(prefix: &str, preset: &str, sid: &str, user: &str, prompt: &str) -> (String, Value) {
    let rid = unique_request_id("mem");
    publish_spawn(prefix, &request(&rid, preset, sid, user, prompt)).await;
    (rid.clone(), wait_result(prefix, &rid, RESULT_TIMEOUT).await)
}

/// What the test agent said of the conversation: (mode, id, earlier turns).
fn seen(r: &Value) -> (String, String, u32) {
    let out = r["output"].as_str().unwrap_or_default();
    let line = out
        .lines()
        .find(|l| l.starts_with("test-agent: mode="))
        .unwrap_or_else(|| panic!("no test-agent line in {r:#}"));
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    (
        field("mode="),
        field("conversation="),
        field("earlier-turns=").parse().unwrap_or(u32::MAX),
    )
}

fn succeeded(r: &Value) {
    assert_eq!(r["status"], "succeeded", "{r:#}");
}

/// The `session_created` event of request `rid`, if it made a container.
async fn created(prefix: &str, rid: &str) -> Option<Value> {
    events_for(prefix, rid)
        .await
        .into_iter()
        .find(|e| e["type"] == "session_created")
}

async fn wait_event(prefix: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let all = stream_json(&streams(prefix).events).await;
        if let Some(e) = all.iter().find(|e| pred(e)) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no matching event within {timeout:?}; types: {:?}",
            event_types(&all)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ended<'a>(sid: &'a str, reason: &'static str) -> impl Fn(&Value) -> bool + 'a {
    move |e| {
        e["type"] == "session_expired"
            && e["data"]["session_id"] == sid
            && e["data"]["reason"] == reason
    }
}

/// The volumes of session `sid` (by their labels).
async fn session_volumes(prefix: &str, sid: &str) -> Vec<String> {
    volumes(prefix)
        .await
        .into_iter()
        .filter(|(_, l)| l.get("io.workers-spawner.session-id").map(String::as_str) == Some(sid))
        .map(|(n, _)| n)
        .collect()
}

async fn wait_volumes_gone(prefix: &str, sid: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = session_volumes(prefix, sid).await;
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "volumes of {sid} still there after {timeout:?}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn remove_container(name: &str) {
    let d = docker().await;
    let opts = bollard::query_parameters::RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    d.remove_container(name, Some(opts))
        .await
        .expect("remove the session container");
}

/// Three tasks of one session on each kind of image, with the shipped
/// claude-code layout (`--session-id <derived uuid>`, then `--resume`): the
/// agent sees 0, 1 and 2 earlier turns of one conversation, and task 3
/// reads what task 1 wrote. The images: the prepared test image, a stock
/// busybox with no folders and no passwd (also with a read-only root), and
/// a node-like image whose uid 1000 is `node` with a root-owned /workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tasks_of_a_session_continue_one_conversation_on_any_image() {
    let kinds = [
        (
            "mem_busybox_v1",
            preset("mem_busybox_v1", &test_image(), installed(), json!({})),
        ),
        (
            "mem_stock_v1",
            preset("mem_stock_v1", "ws-test-stock:latest", inline(), json!({})),
        ),
        (
            "mem_stock_ro_v1",
            preset(
                "mem_stock_ro_v1",
                "ws-test-stock:latest",
                inline(),
                json!({"security": {"read_only_root": true}}),
            ),
        ),
        (
            "mem_node_v1",
            preset("mem_node_v1", "ws-test-node:latest", inline(), json!({})),
        ),
    ];
    let dir = presets_dir_with(
        &kinds
            .iter()
            .map(|(k, p)| (*k, p.clone()))
            .collect::<Vec<_>>(),
    );
    let d = Daemon::start(DaemonOpts::new("mem-turns").presets_dir(dir.path()));
    for (kind, _) in &kinds {
        let sid = unique_request_id("s");
        let (rid1, r1) = task(&d.prefix, kind, &sid, "u1", "echo one > /workspace/one.txt").await;
        succeeded(&r1);
        let (mode1, id1, turns1) = seen(&r1);
        assert_eq!((mode1.as_str(), turns1), ("start", 0), "{kind}: {r1:#}");
        let uuid: Vec<usize> = id1.split('-').map(str::len).collect();
        assert_eq!(
            uuid,
            [8, 4, 4, 4, 12],
            "{kind}: a UUID for Claude Code: {id1}"
        );
        let c1 = created(&d.prefix, &rid1).await.expect("session_created");
        assert_eq!(c1["data"]["resumed"], false, "{kind}: {c1:#}");

        let (_, r2) = task(
            &d.prefix,
            kind,
            &sid,
            "u1",
            "echo two >> /workspace/one.txt",
        )
        .await;
        succeeded(&r2);
        assert_eq!(
            seen(&r2),
            ("resume".into(), id1.clone(), 1),
            "{kind}: {r2:#}"
        );
        let (_, r3) = task(&d.prefix, kind, &sid, "u1", "cat /workspace/one.txt").await;
        succeeded(&r3);
        assert_eq!(
            seen(&r3),
            ("resume".into(), id1.clone(), 2),
            "{kind}: {r3:#}"
        );
        assert!(
            r3["output"].as_str().unwrap().contains("one\ntwo"),
            "{kind}: {r3:#}"
        );
        assert_eq!(session_volumes(&d.prefix, &sid).await.len(), 2, "{kind}");
        publish_control(
            &d.prefix,
            &json!({"command": "end_session", "session_id": sid}),
        )
        .await;
        wait_volumes_gone(&d.prefix, &sid, Duration::from_secs(20)).await;
    }
    assert_no_containers(&d.prefix).await;
}

/// The TTL ends the container between task 2 and task 3; task 3 runs in a
/// new container on the kept volumes and continues the conversation.
/// Then a droid-like agent (its id reported on stdout, read back from the
/// volume's record): the daemon is killed with SIGKILL, the idle session
/// container removed by hand, and a new daemon's next task still resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_from_its_volumes_after_its_ttl_and_after_a_crash() {
    let dir = presets_dir_with(&[
        (
            "mem_ttl_v1",
            preset(
                "mem_ttl_v1",
                &test_image(),
                installed(),
                json!({"ttl_sec": 6}),
            ),
        ),
        (
            "mem_reported_v1",
            preset(
                "mem_reported_v1",
                &test_image(),
                installed(),
                json!({"conversation": reported()}),
            ),
        ),
    ]);
    let mut d = Daemon::start(DaemonOpts::new("mem-resume").presets_dir(dir.path()));
    let prefix = d.prefix.clone();

    let sid = unique_request_id("ttl");
    let (_, r1) = task(
        &prefix,
        "mem_ttl_v1",
        &sid,
        "u1",
        "echo kept > /workspace/f",
    )
    .await;
    succeeded(&r1);
    let name = r1["worker"]["container"].as_str().unwrap().to_string();
    let first = container_id(&name)
        .await
        .expect("the session container lives");
    let (_, r2) = task(&prefix, "mem_ttl_v1", &sid, "u1", "true").await;
    assert_eq!(seen(&r2).2, 1, "{r2:#}");
    let e = wait_event(&prefix, Duration::from_secs(30), ended(&sid, "expired")).await;
    assert_eq!(e["data"]["volumes_kept"], true, "{e:#}");
    assert_eq!(session_volumes(&prefix, &sid).await.len(), 2);
    let (rid3, r3) = task(&prefix, "mem_ttl_v1", &sid, "u1", "cat /workspace/f").await;
    succeeded(&r3);
    assert_eq!(seen(&r3).0, "resume", "{r3:#}");
    assert_eq!(seen(&r3).2, 2, "{r3:#}");
    assert!(r3["output"].as_str().unwrap().contains("kept"), "{r3:#}");
    let c3 = created(&prefix, &rid3).await.expect("a new container");
    assert_eq!(c3["data"]["resumed"], true, "{c3:#}");
    let now = container_id(&name)
        .await
        .expect("the new session container lives");
    assert_ne!(now, first, "a new container");

    let sid = unique_request_id("crash");
    let (_, r1) = task(
        &prefix,
        "mem_reported_v1",
        &sid,
        "u1",
        "echo before > /workspace/f",
    )
    .await;
    succeeded(&r1);
    let (mode, id, turns) = seen(&r1);
    assert_eq!((mode.as_str(), turns), ("new", 0), "{r1:#}");
    let (_, r2) = task(&prefix, "mem_reported_v1", &sid, "u1", "true").await;
    assert_eq!(seen(&r2), ("resume".into(), id.clone(), 1), "{r2:#}");
    let container = r2["worker"]["container"].as_str().unwrap().to_string();
    d.kill();
    remove_container(&container).await;
    let d2 = Daemon::start(
        DaemonOpts::new("mem-resume")
            .prefix(&prefix)
            .presets_dir(dir.path()),
    );
    let (rid3, r3) = task(&prefix, "mem_reported_v1", &sid, "u1", "cat /workspace/f").await;
    succeeded(&r3);
    assert_eq!(seen(&r3), ("resume".into(), id, 2), "{r3:#}");
    assert!(r3["output"].as_str().unwrap().contains("before"), "{r3:#}");
    assert_eq!(
        created(&prefix, &rid3).await.unwrap()["data"]["resumed"],
        true
    );
    publish_control(
        &prefix,
        &json!({"command": "end_session", "session_id": sid}),
    )
    .await;
    wait_volumes_gone(&prefix, &sid, Duration::from_secs(20)).await;
    drop(d2);
    assert_no_containers(&prefix).await;
}

/// `end_session` ends the container and removes the volumes; a later task
/// of the same id starts afresh (a codex-like agent: `--last`). A session
/// whose container already ended loses its kept volumes the same way. And
/// `session_keep` removes the volumes of a session nobody came back to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_session_and_session_keep_remove_volumes_and_the_next_task_starts_fresh() {
    let dir = presets_dir_with(&[
        (
            "mem_last_v1",
            preset(
                "mem_last_v1",
                &test_image(),
                installed(),
                json!({"conversation": last()}),
            ),
        ),
        (
            "mem_short_v1",
            preset(
                "mem_short_v1",
                &test_image(),
                installed(),
                json!({"ttl_sec": 4, "conversation": last()}),
            ),
        ),
    ]);
    let d = Daemon::start(DaemonOpts::new("mem-end").presets_dir(dir.path()));
    let prefix = d.prefix.clone();

    let sid = unique_request_id("end");
    let (_, r1) = task(&prefix, "mem_last_v1", &sid, "u1", "echo x > /workspace/f").await;
    assert_eq!(seen(&r1).0, "new", "{r1:#}");
    let (_, r2) = task(&prefix, "mem_last_v1", &sid, "u1", "true").await;
    assert_eq!(seen(&r2).0, "last", "{r2:#}");
    assert_eq!(seen(&r2).2, 1, "{r2:#}");
    publish_control(
        &prefix,
        &json!({"command": "end_session", "session_id": sid}),
    )
    .await;
    wait_event(&prefix, Duration::from_secs(20), ended(&sid, "ended")).await;
    wait_volumes_gone(&prefix, &sid, Duration::from_secs(10)).await;
    let (rid3, r3) = task(&prefix, "mem_last_v1", &sid, "u1", "ls /workspace").await;
    succeeded(&r3);
    assert_eq!(seen(&r3).0, "new", "a fresh start: {r3:#}");
    assert_eq!(seen(&r3).2, 0, "{r3:#}");
    assert!(!r3["output"].as_str().unwrap().contains('f'), "{r3:#}");
    assert_eq!(
        created(&prefix, &rid3).await.unwrap()["data"]["resumed"],
        false
    );

    // Its container gone (TTL), its volumes kept: end_session removes them.
    let sid = unique_request_id("end-idle");
    let (_, r) = task(&prefix, "mem_short_v1", &sid, "u1", "true").await;
    succeeded(&r);
    wait_event(&prefix, Duration::from_secs(30), ended(&sid, "expired")).await;
    assert_eq!(session_volumes(&prefix, &sid).await.len(), 2);
    publish_control(
        &prefix,
        &json!({"command": "end_session", "session_id": sid}),
    )
    .await;
    wait_volumes_gone(&prefix, &sid, Duration::from_secs(10)).await;
    drop(d);
    assert_no_containers(&prefix).await;

    // session_keep: a forgotten session's volumes go once it has passed.
    let d = Daemon::start(
        DaemonOpts::new("mem-keep")
            .presets_dir(dir.path())
            .setting("session_keep", "3s"),
    );
    let sid = unique_request_id("forgotten");
    let (_, r) = task(&d.prefix, "mem_short_v1", &sid, "u1", "true").await;
    succeeded(&r);
    wait_event(&d.prefix, Duration::from_secs(30), ended(&sid, "expired")).await;
    wait_volumes_gone(&d.prefix, &sid, Duration::from_secs(30)).await;
    assert_no_containers(&d.prefix).await;
}

/// A session's container and volumes are bound to its `user_id`: another
/// user naming the same `session_id` is rejected (field `task.session_id`)
/// while the container lives and after it ended; a crafted id that reads
/// alike once made Docker-safe (`a:b`, `a_b`) gets volumes of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_of_another_user_cannot_reach_its_volumes() {
    let dir = presets_dir_with(&[(
        "mem_users_v1",
        preset(
            "mem_users_v1",
            &test_image(),
            installed(),
            json!({"ttl_sec": 5}),
        ),
    )]);
    let d = Daemon::start(DaemonOpts::new("mem-users").presets_dir(dir.path()));
    let prefix = d.prefix.clone();
    let base = unique_request_id("u");
    let sid = format!("{base}:x");

    let (_, r) = task(
        &prefix,
        "mem_users_v1",
        &sid,
        "alice",
        "echo alice-secret > /workspace/s",
    )
    .await;
    succeeded(&r);
    let refused = |r: &Value| {
        assert_eq!(r["status"], "rejected", "{r:#}");
        assert_eq!(r["error"]["code"], "session_user_mismatch", "{r:#}");
        assert_eq!(r["error"]["field"], "task.session_id", "{r:#}");
        assert!(!r.to_string().contains("alice-secret"), "{r:#}");
    };
    let (_, r) = task(&prefix, "mem_users_v1", &sid, "mallory", "cat /workspace/s").await;
    refused(&r);
    wait_event(&prefix, Duration::from_secs(30), ended(&sid, "expired")).await;
    let (_, r) = task(&prefix, "mem_users_v1", &sid, "mallory", "cat /workspace/s").await;
    refused(&r);

    let crafted = format!("{base}_x");
    let (_, r) = task(
        &prefix,
        "mem_users_v1",
        &crafted,
        "mallory",
        "cat /workspace/s; true",
    )
    .await;
    succeeded(&r);
    assert_eq!(seen(&r).2, 0, "{r:#}");
    assert!(
        !r["output"].as_str().unwrap().contains("alice-secret"),
        "{r:#}"
    );
    let (a, m) = (
        session_volumes(&prefix, &sid).await,
        session_volumes(&prefix, &crafted).await,
    );
    assert_eq!((a.len(), m.len()), (2, 2));
    assert!(a.iter().all(|v| !m.contains(v)), "{a:?} {m:?}");

    let (_, r) = task(&prefix, "mem_users_v1", &sid, "alice", "cat /workspace/s").await;
    succeeded(&r);
    assert_eq!(seen(&r).2, 1, "{r:#}");
    assert!(
        r["output"].as_str().unwrap().contains("alice-secret"),
        "{r:#}"
    );
    for s in [&sid, &crafted] {
        publish_control(&prefix, &json!({"command": "end_session", "session_id": s})).await;
        wait_volumes_gone(&prefix, s, Duration::from_secs(20)).await;
    }
    assert_no_containers(&prefix).await;
}
