//! Images the project did not prepare, named by presets written the way an
//! admin would: a stock-like busybox (no `/workspace`, no `/home/worker`, no
//! user 1000), the same with a read-only root, an image with no shell at
//! all (one static binary `FROM scratch`), and a node-like image whose uid
//! 1000 is `node` with `/home/node` and which ships a root-owned
//! `/workspace`. On each, one-shot, session and pooled requests succeed:
//! the agent sees its instruction file and skill, writes `/workspace` and
//! `/tmp`, and nothing is left behind. The images are built by
//! `scripts/test-env.sh` (images/test-stock, test-noshell, test-node).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A preset as an admin writes it: an image, an agent command, a tool.
fn preset(id: &str, image: &str, command: Value, extra: Value) -> Value {
    let mut p = json!({
        "id": id,
        "name": format!("{id} (unprepared image)"),
        "image": image,
        // These agents take their prompt at a fixed place: no conversation
        // pieces (tests/session_memory.rs runs conversations on these images).
        "agent": {"type": "claude-code", "command": command, "conversation": false},
        "allowed_tools": ["respond"],
        "has_internet": false,
        "limits": {"cpu": 0.5, "memory": "64m", "timeout_sec": 6, "ttl_sec": 300, "pids": 64}
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

/// The agent on busybox-based images: the image's own `sh`, checking what
/// the worker must have.
fn sh_agent() -> Value {
    json!(["sh", "-c", concat!(
        "set -e; echo \"uid=$(id -u) user=$(id -un 2>/dev/null || echo none) HOME=$HOME prompt=$1\"; ",
        "case \"$1\" in sleep:*) sleep \"${1#sleep:}\";; esac; ",
        "head -n 1 /workspace/CLAUDE.md; test -s \"$HOME/.claude/skills/respond/SKILL.md\"; ",
        "echo w > \"/workspace/task-$1.txt\"; echo w > \"/tmp/task-$1.txt\"; ",
        "ls /workspace | sed 's/^/in-workspace: /'; echo agent-ok"
    ), "agent", "{prompt}"])
}

/// The static agent of the shell-less image (images/test-noshell/agent.c).
fn static_agent() -> Value {
    json!([
        "/ws-agent",
        "{prompt}",
        "/workspace/CLAUDE.md",
        "/home/worker/.claude/skills/respond/SKILL.md"
    ])
}

fn ok_marker(image_kind: &str) -> &'static str {
    if image_kind == "noshell" {
        "ws-agent: ok"
    } else {
        "agent-ok"
    }
}

fn session_request(rid: &str, preset: &str, prompt: &str, sid: &str) -> Value {
    json!({
        "request_id": rid,
        "worker_config_id": preset,
        "task": {"prompt": prompt, "user_id": "test-user", "session_id": sid}
    })
}

async fn assert_succeeded(prefix: &str, rid: &str, kind: &str) -> String {
    let r = wait_result(prefix, rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{kind}: {r:#}");
    let out = r["output"].as_str().unwrap_or_default().to_string();
    assert!(out.contains(ok_marker(kind)), "{kind}: {out}");
    assert!(
        out.contains("uid=1000"),
        "{kind}: the agent runs as uid 1000: {out}"
    );
    assert!(out.contains("HOME=/home/worker"), "{kind}: {out}");
    out
}

/// One-shot, session (two tasks sharing the workspace, then a task past
/// its timeout, then one more) and pooled requests on one image.
async fn every_kind_of_request_succeeds_on(kind: &str, image: &str, extra: Value) {
    let command = if kind == "noshell" {
        static_agent()
    } else {
        sh_agent()
    };
    let oneshot = format!("{kind}_v1");
    let pooled = format!("{kind}_pooled_v1");
    let mut pool_extra = extra.clone();
    pool_extra["pool"] = json!({"size": 1});
    let presets = tempfile::tempdir().unwrap();
    for (id, p) in [
        (
            &oneshot,
            preset(&oneshot, image, command.clone(), extra.clone()),
        ),
        (&pooled, preset(&pooled, image, command.clone(), pool_extra)),
    ] {
        std::fs::write(
            presets.path().join(format!("{id}.json")),
            serde_json::to_vec_pretty(&p).unwrap(),
        )
        .unwrap();
    }
    let d = Daemon::start(
        DaemonOpts::new(&format!("img-{kind}"))
            .presets_dir(presets.path())
            .max_concurrent(4),
    );

    // One-shot.
    let rid = unique_request_id("oneshot");
    publish_spawn(&d.prefix, &spawn_request(&rid, &oneshot, "one")).await;
    let out = assert_succeeded(&d.prefix, &rid, kind).await;
    assert!(out.contains("task-one.txt"), "{kind}: {out}");
    let events = events_for(&d.prefix, &rid).await;
    let created = events
        .iter()
        .find(|e| e["type"] == "container_created")
        .expect("container_created");
    assert_eq!(
        created["data"]["image"], image,
        "events name the preset's image"
    );

    // A session: task 2 sees task 1's file; a task past its timeout is
    // stopped inside the container; the session goes on.
    let sid = format!("sess-{}", random_suffix());
    let r1 = unique_request_id("s1");
    publish_spawn(&d.prefix, &session_request(&r1, &oneshot, "first", &sid)).await;
    assert_succeeded(&d.prefix, &r1, kind).await;
    let r2 = unique_request_id("s2");
    publish_spawn(&d.prefix, &session_request(&r2, &oneshot, "second", &sid)).await;
    let out = assert_succeeded(&d.prefix, &r2, kind).await;
    assert!(
        out.contains("task-first.txt") && out.contains("task-second.txt"),
        "{kind}: the session keeps its workspace: {out}"
    );
    let r3 = unique_request_id("s3");
    publish_spawn(&d.prefix, &session_request(&r3, &oneshot, "sleep:60", &sid)).await;
    let r = wait_result(&d.prefix, &r3, TIMEOUT).await;
    assert_eq!(r["status"], "timed_out", "{kind}: {r:#}");
    let r4 = unique_request_id("s4");
    publish_spawn(&d.prefix, &session_request(&r4, &oneshot, "fourth", &sid)).await;
    let out = assert_succeeded(&d.prefix, &r4, kind).await;
    assert!(out.contains("task-first.txt"), "{kind}: {out}");
    publish_control(&d.prefix, &json!({"command": "cancel", "session_id": sid})).await;

    // Pooled: the request runs in the ready container.
    let rid = unique_request_id("pooled");
    publish_spawn(&d.prefix, &spawn_request(&rid, &pooled, "pooled")).await;
    let out = assert_succeeded(&d.prefix, &rid, kind).await;
    assert!(out.contains("task-pooled.txt"), "{kind}: {out}");
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    let container = r["worker"]["container"].as_str().unwrap_or_default();
    assert!(
        container.starts_with("wsp-"),
        "{kind}: the request ran in a pool container: {r:#}"
    );
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_busybox_image_without_folders_or_user_runs_every_kind_of_request() {
    every_kind_of_request_succeeds_on("stock", "ws-test-stock:latest", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_busybox_image_with_a_read_only_root_runs_every_kind_of_request() {
    every_kind_of_request_succeeds_on(
        "stockro",
        "ws-test-stock:latest",
        json!({"security": {"read_only_root": true}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_with_no_shell_at_all_runs_every_kind_of_request() {
    every_kind_of_request_succeeds_on("noshell", "ws-test-noshell:latest", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_like_image_keeps_its_user_and_what_it_ships_and_runs_every_kind_of_request() {
    every_kind_of_request_succeeds_on("node", "ws-test-node:latest", json!({})).await;
    // What the image ships stays, and becomes the worker's.
    let presets = presets_dir_with(&[(
        "node_ship_v1",
        preset(
            "node_ship_v1",
            "ws-test-node:latest",
            json!(["sh", "-c", "set -e; cat /workspace/shipped.txt; echo more >> /workspace/shipped.txt; test -f /home/node/.profile; id -un; echo agent-ok", "{prompt}"]),
            json!({}),
        ),
    )]);
    let d = Daemon::start(DaemonOpts::new("img-node-ship").presets_dir(presets.path()));
    let rid = unique_request_id("ship");
    publish_spawn(&d.prefix, &spawn_request(&rid, "node_ship_v1", "x")).await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = r["output"].as_str().unwrap();
    assert!(out.contains("shipped-by-image"), "{out}");
    assert!(
        out.contains("\nnode\n"),
        "uid 1000 keeps the image's name: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_run_the_agent_is_answered_in_words() {
    let presets = presets_dir_with(&[
        (
            "no_agent_v1",
            preset(
                "no_agent_v1",
                "ws-test-noshell:latest",
                json!(["claude", "-p", "{prompt}"]),
                json!({}),
            ),
        ),
        (
            "no_image_v1",
            preset(
                "no_image_v1",
                "ws-test-no-such-image:1",
                json!(["claude", "-p", "{prompt}"]),
                json!({}),
            ),
        ),
    ]);
    let d = Daemon::start(DaemonOpts::new("img-cannot").presets_dir(presets.path()));
    let rid = unique_request_id("noagent");
    publish_spawn(&d.prefix, &spawn_request(&rid, "no_agent_v1", "x")).await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["exit_code"], 127, "{r:#}");
    assert_eq!(r["error"]["code"], "agent_not_found", "{r:#}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"claude\" was not found in the image"),
        "{msg}"
    );

    let rid = unique_request_id("noimage");
    publish_spawn(&d.prefix, &spawn_request(&rid, "no_image_v1", "x")).await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "error", "{r:#}");
    assert_eq!(r["error"]["code"], "image_not_found", "{r:#}");
    assert_eq!(r["error"]["field"], "image", "{r:#}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ws-test-no-such-image:1"),
        "{r:#}"
    );
}

/// A new image id (a commit of `from` with a label of its own) tagged `tag`.
async fn fresh_image(from: &str, tag: &str) {
    let d = docker().await;
    let body = bollard::models::ContainerCreateBody {
        image: Some(from.to_string()),
        labels: Some(
            [("io.workers-spawner.test-fresh".to_string(), random_suffix())]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
    let c = d
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await
        .expect("create");
    let (repo, t) = tag.split_once(':').unwrap();
    d.commit_container(
        bollard::query_parameters::CommitContainerOptions {
            container: Some(c.id.clone()),
            repo: Some(repo.into()),
            tag: Some(t.into()),
            ..Default::default()
        },
        bollard::models::ContainerConfig::default(),
    )
    .await
    .expect("commit");
    let _ = d
        .remove_container(
            &c.id,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
}

async fn remove_image_and_prepared(tag: &str) {
    let d = docker().await;
    let mut filters = std::collections::HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("io.workers-spawner.derived-from={tag}")],
    );
    let prepared = d
        .list_images(Some(bollard::query_parameters::ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    let force = Some(bollard::query_parameters::RemoveImageOptions {
        force: true,
        ..Default::default()
    });
    for i in prepared {
        let _ = d.remove_image(&i.id, force.clone(), None).await;
    }
    let _ = d.remove_image(tag, force, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_meeting_a_new_image_at_once_both_run_their_workers() {
    let tag = format!("ws-test-fresh-{}:1", random_suffix());
    fresh_image("ws-test-stock:latest", &tag).await;
    let presets =
        presets_dir_with(&[("fresh_v1", preset("fresh_v1", &tag, sh_agent(), json!({})))]);
    let a = Daemon::start(DaemonOpts::new("img-fresh-a").presets_dir(presets.path()));
    let b = Daemon::start(DaemonOpts::new("img-fresh-b").presets_dir(presets.path()));
    let (ra, rb) = (unique_request_id("fa"), unique_request_id("fb"));
    let (qa, qb) = (
        spawn_request(&ra, "fresh_v1", "a"),
        spawn_request(&rb, "fresh_v1", "b"),
    );
    tokio::join!(publish_spawn(&a.prefix, &qa), publish_spawn(&b.prefix, &qb));
    let (oa, ob) = tokio::join!(
        assert_succeeded(&a.prefix, &ra, "stock"),
        assert_succeeded(&b.prefix, &rb, "stock"),
    );
    assert!(oa.contains("task-a.txt") && ob.contains("task-b.txt"));
    drop((a, b));
    // No preparation container is left behind.
    let d = docker().await;
    let mut filters = std::collections::HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("io.workers-spawner.derived-from={tag}")],
    );
    let left = d
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap();
    remove_image_and_prepared(&tag).await;
    assert!(left.is_empty(), "preparation containers left: {left:?}");
}
