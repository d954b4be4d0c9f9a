//! Sessions end to end (PROTOCOL.md section 5): requests with the same
//! `task.session_id` run one after another in one live container. Real
//! `workers-spawner serve` child processes, the private redis-server and
//! the real Docker engine (scripts/test-env.sh); `shell_v1` runs its prompt
//! as a busybox `sh` script inside the session container.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const RESULT_TIMEOUT: Duration = Duration::from_secs(90);

/// A session request for `shell_v1` running `script`.
fn session_request(rid: &str, sid: &str, script: &str, ovr: Option<&Value>) -> Value {
    let mut v = json!({
        "request_id": rid,
        "worker_config_id": "shell_v1",
        "task": { "prompt": script, "user_id": "test-user", "session_id": sid },
    });
    if let Some(o) = ovr {
        v["worker_config_override"] = o.clone();
    }
    v
}

/// Publishes one session request and waits for its result.
async fn run(prefix: &str, rid: &str, sid: &str, script: &str, ovr: Option<&Value>) -> Value {
    publish_spawn(prefix, &session_request(rid, sid, script, ovr)).await;
    wait_result(prefix, rid, RESULT_TIMEOUT).await
}

fn output(r: &Value) -> String {
    r["output"].as_str().unwrap_or_default().to_string()
}

/// Waits until some event of the prefix satisfies `pred`.
async fn wait_any_event(prefix: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let all = stream_json(&streams(prefix).events).await;
        if let Some(e) = all.iter().find(|e| pred(e)) {
            return e.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "no matching event on {prefix}:events within {timeout:?}; types: {:?}",
                event_types(&all)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_gone(name: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while container_exists(name).await {
        assert!(
            Instant::now() < deadline,
            "container {name} still exists after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn session_expired(e: &Value, sid: &str) -> bool {
    e["type"] == "session_expired" && e["data"]["session_id"] == sid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_requests_of_a_session_see_the_files_the_previous_ones_wrote() {
    let d = Daemon::start(DaemonOpts::new("sess-files"));
    let sid = unique_request_id("s");
    let r1 = run(
        &d.prefix,
        &unique_request_id("f1"),
        &sid,
        "echo one > /workspace/notes; echo first-done",
        None,
    )
    .await;
    assert_eq!(r1["status"], "succeeded", "{r1:#}");
    assert_eq!(r1["session_id"], sid.as_str());
    let name = r1["worker"]["container"].as_str().unwrap().to_string();
    let id = container_id(&name)
        .await
        .expect("session container lives on");

    let r2 = run(
        &d.prefix,
        &unique_request_id("f2"),
        &sid,
        "cat /workspace/notes; echo two >> /workspace/notes",
        None,
    )
    .await;
    assert_eq!(r2["status"], "succeeded", "{r2:#}");
    assert_eq!(output(&r2).trim(), "one");
    let r3 = run(
        &d.prefix,
        &unique_request_id("f3"),
        &sid,
        "cat /workspace/notes",
        None,
    )
    .await;
    assert_eq!(r3["status"], "succeeded", "{r3:#}");
    assert_eq!(output(&r3).trim(), "one\ntwo");
    for r in [&r2, &r3] {
        assert_eq!(r["worker"]["container"], name.as_str());
    }
    assert_eq!(container_id(&name).await.as_deref(), Some(id.as_str()));
    // One session_created for the whole session.
    let created: Vec<Value> = stream_json(&streams(&d.prefix).events)
        .await
        .into_iter()
        .filter(|e| e["type"] == "session_created")
        .collect();
    assert_eq!(created.len(), 1, "{created:#?}");
    assert_eq!(container_count(&d.prefix).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_requests_published_at_once_run_strictly_in_order() {
    let d = Daemon::start(DaemonOpts::new("sess-order").max_concurrent(8));
    let sid = unique_request_id("s");
    let rids: Vec<String> = (1..=5)
        .map(|i| unique_request_id(&format!("o{i}")))
        .collect();
    // Each task marks its start and end around a pause: any overlap or
    // reordering shows in the log.
    for (i, rid) in rids.iter().enumerate() {
        let n = i + 1;
        let script = format!(
            "echo start{n} >> /workspace/log; sleep 0.4; echo end{n} >> /workspace/log; cat /workspace/log"
        );
        publish_spawn(&d.prefix, &session_request(rid, &sid, &script, None)).await;
    }
    let mut results = Vec::new();
    for rid in &rids {
        results.push(wait_result(&d.prefix, rid, RESULT_TIMEOUT).await);
    }
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["status"], "succeeded", "{r:#}");
        let want: Vec<String> = (1..=i + 1)
            .flat_map(|n| [format!("start{n}"), format!("end{n}")])
            .collect();
        assert_eq!(output(r).trim(), want.join("\n"), "request {}", i + 1);
    }
    // Results were published in the same order.
    let order: Vec<String> = all_results(&d.prefix)
        .await
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, rids);
    assert_eq!(container_count(&d.prefix).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_run_concurrently() {
    let d = Daemon::start(DaemonOpts::new("sess-concurrent"));
    let (a, b) = (unique_request_id("sa"), unique_request_id("sb"));
    // Warm up: both containers exist before the timed tasks.
    for sid in [&a, &b] {
        let r = run(&d.prefix, &unique_request_id("w"), sid, "true", None).await;
        assert_eq!(r["status"], "succeeded", "{r:#}");
    }
    let script = "echo start=$(date +%s); sleep 6; echo end=$(date +%s)";
    let (ra, rb) = (unique_request_id("ta"), unique_request_id("tb"));
    publish_spawn(&d.prefix, &session_request(&ra, &a, script, None)).await;
    publish_spawn(&d.prefix, &session_request(&rb, &b, script, None)).await;
    let res_a = wait_result(&d.prefix, &ra, RESULT_TIMEOUT).await;
    let res_b = wait_result(&d.prefix, &rb, RESULT_TIMEOUT).await;
    let times = |r: &Value| -> (u64, u64) {
        let out = output(r);
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {k} in {out:?}"))
        };
        (get("start="), get("end="))
    };
    let ((sa, ea), (sb, eb)) = (times(&res_a), times(&res_b));
    assert!(
        sa < eb && sb < ea,
        "the two sessions' tasks did not overlap: a={sa}..{ea} b={sb}..{eb}"
    );
    assert_ne!(res_a["worker"]["container"], res_b["worker"]["container"]);
    assert_eq!(container_count(&d.prefix).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_past_its_timeout_is_killed_and_the_next_task_succeeds() {
    let d = Daemon::start(DaemonOpts::new("sess-timeout").setting("stop_grace", "1s"));
    let sid = unique_request_id("s");
    let ovr = json!({"limits": {"timeout_sec": 2, "ttl_sec": 120}});
    // Ignores SIGTERM (and so do its children), leaves a background
    // process and loops: only SIGKILL of every process ends it.
    let stubborn = "trap '' TERM; sleep 300 & echo started; while :; do sleep 1; done";
    let rid1 = unique_request_id("slow");
    let t0 = Instant::now();
    let r1 = run(&d.prefix, &rid1, &sid, stubborn, Some(&ovr)).await;
    assert_eq!(r1["status"], "timed_out", "{r1:#}");
    assert_eq!(r1["error"]["code"], "timed_out");
    assert!(output(&r1).contains("started"), "{r1:#}");
    assert!(t0.elapsed() < Duration::from_secs(40), "{:?}", t0.elapsed());
    let types = event_types(&events_for(&d.prefix, &rid1).await);
    assert!(types.contains(&"timed_out".to_string()), "{types:?}");

    let r2 = run(
        &d.prefix,
        &unique_request_id("next"),
        &sid,
        "ps; echo next-ok",
        Some(&ovr),
    )
    .await;
    assert_eq!(r2["status"], "succeeded", "{r2:#}");
    assert_eq!(r2["worker"]["container"], r1["worker"]["container"]);
    let ps = output(&r2);
    assert!(ps.contains("next-ok"), "{ps}");
    assert!(
        !ps.contains("sleep 300") && !ps.contains("sleep 1\n") && !ps.contains("trap '' TERM"),
        "processes of the timed-out task survived:\n{ps}"
    );
    // What is left: init, the keeper and its sleep, this task's shell and ps.
    let procs = ps
        .lines()
        .filter(|l| !l.contains("next-ok") || l.contains("ps;"))
        .count();
    assert!(
        procs <= 6,
        "unexpected processes (header + 5 expected):\n{ps}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_removes_the_container_and_emits_session_expired() {
    let d = Daemon::start(DaemonOpts::new("sess-ttl"));
    let sid = unique_request_id("s");
    let ovr = json!({"limits": {"timeout_sec": 2, "ttl_sec": 8}});
    let rid = unique_request_id("t1");
    let r = run(
        &d.prefix,
        &rid,
        &sid,
        "echo keep > /workspace/f; echo ok",
        Some(&ovr),
    )
    .await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let name = r["worker"]["container"].as_str().unwrap().to_string();
    let first_id = container_id(&name).await.expect("container");
    let ev = wait_any_event(&d.prefix, Duration::from_secs(30), |e| {
        session_expired(e, &sid)
    })
    .await;
    assert_eq!(ev["data"]["reason"], "expired", "{ev}");
    assert_eq!(ev["request_id"], rid.as_str(), "{ev}");
    wait_gone(&name, Duration::from_secs(10)).await;
    assert_eq!(container_count(&d.prefix).await, 0);

    // The session id may be used again: a fresh container, without the old files.
    let r2 = run(
        &d.prefix,
        &unique_request_id("t2"),
        &sid,
        "test -e /workspace/f && echo present || echo absent",
        Some(&ovr),
    )
    .await;
    assert_eq!(r2["status"], "succeeded", "{r2:#}");
    // A new container, on the session's kept volumes (issue #16).
    assert_eq!(output(&r2).trim(), "present");
    let second_id = container_id(&name).await.expect("new container");
    assert_ne!(first_id, second_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_session_keeps_it() {
    let mut d1 = Daemon::start(DaemonOpts::new("sess-restart"));
    let prefix = d1.prefix.clone();
    let instance = d1.instance_id.clone();
    let (s1, s2) = (unique_request_id("s1"), unique_request_id("s2"));
    let r1 = run(
        &prefix,
        &unique_request_id("a1"),
        &s1,
        "echo before-restart > /workspace/mark; echo ok",
        None,
    )
    .await;
    assert_eq!(r1["status"], "succeeded", "{r1:#}");
    let name1 = r1["worker"]["container"].as_str().unwrap().to_string();
    let id1 = container_id(&name1).await.expect("container");
    let r1b = run(&prefix, &unique_request_id("b1"), &s2, "echo ok", None).await;
    assert_eq!(r1b["status"], "succeeded", "{r1b:#}");
    let name2 = r1b["worker"]["container"].as_str().unwrap().to_string();

    // A deploy: SIGTERM, then a new process of the same instance.
    d1.cleanup_on_drop = false;
    assert!(
        d1.terminate().is_some(),
        "the daemon did not exit on SIGTERM"
    );
    drop(d1);
    assert!(container_exists(&name1).await && container_exists(&name2).await);
    let d2 = Daemon::start(
        DaemonOpts::new("sess-restart")
            .prefix(&prefix)
            .instance_id(&instance),
    );

    let r2 = run(
        &d2.prefix,
        &unique_request_id("a2"),
        &s1,
        "cat /workspace/mark",
        None,
    )
    .await;
    assert_eq!(r2["status"], "succeeded", "{r2:#}");
    assert_eq!(output(&r2).trim(), "before-restart");
    assert_eq!(r2["worker"]["container"], name1.as_str());
    assert_eq!(container_id(&name1).await.as_deref(), Some(id1.as_str()));

    // The other session, untouched since the restart, is known too: a
    // cancel ends it.
    publish_control(&d2.prefix, &json!({"command": "cancel", "session_id": s2})).await;
    let ev = wait_any_event(&d2.prefix, Duration::from_secs(30), |e| {
        session_expired(e, &s2)
    })
    .await;
    assert_eq!(ev["data"]["reason"], "cancelled", "{ev}");
    wait_gone(&name2, Duration::from_secs(10)).await;
    // The adopted session container is no one-shot worker: its first
    // request gets no second ending.
    let rid_a1 = r1["request_id"].as_str().unwrap();
    assert_eq!(results_for(&d2.prefix, rid_a1).await.len(), 1);
    let types = event_types(&events_for(&d2.prefix, rid_a1).await);
    assert!(
        !types.iter().any(|t| t == "timed_out" || t == "removed"),
        "{types:?}"
    );
    assert!(container_exists(&name1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_session() {
    let d = Daemon::start(DaemonOpts::new("sess-cancel").setting("stop_grace", "1s"));
    let sid = unique_request_id("s");
    let rid = unique_request_id("long");
    publish_spawn(
        &d.prefix,
        &session_request(&rid, &sid, "echo x > /workspace/x; sleep 60", None),
    )
    .await;
    wait_any_event(&d.prefix, Duration::from_secs(60), |e| {
        e["type"] == "started" && e["request_id"] == rid.as_str()
    })
    .await;
    publish_control(&d.prefix, &json!({"command": "cancel", "session_id": sid})).await;
    let r = wait_result(&d.prefix, &rid, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "cancelled", "{r:#}");
    let name = r["worker"]["container"].as_str().unwrap().to_string();
    let ev = wait_any_event(&d.prefix, Duration::from_secs(30), |e| {
        session_expired(e, &sid)
    })
    .await;
    assert_eq!(ev["data"]["reason"], "cancelled");
    wait_gone(&name, Duration::from_secs(10)).await;
    let types = event_types(&events_for(&d.prefix, &rid).await);
    assert!(types.contains(&"cancelled".to_string()), "{types:?}");

    // The next request of that session id starts afresh.
    let r2 = run(
        &d.prefix,
        &unique_request_id("after"),
        &sid,
        "test -e /workspace/x && echo present || echo absent",
        None,
    )
    .await;
    assert_eq!(r2["status"], "succeeded", "{r2:#}");
    // A new container, on the session's kept volumes (issue #16).
    assert_eq!(output(&r2).trim(), "present");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_changing_the_sessions_preset_or_config_is_rejected() {
    let d = Daemon::start(DaemonOpts::new("sess-mismatch"));
    let sid = unique_request_id("s");
    let ovr = json!({"limits": {"ttl_sec": 300}});
    let r1 = run(
        &d.prefix,
        &unique_request_id("m1"),
        &sid,
        "echo ok",
        Some(&ovr),
    )
    .await;
    assert_eq!(r1["status"], "succeeded", "{r1:#}");

    // Another override: another config hash.
    let rid2 = unique_request_id("m2");
    let r2 = run(&d.prefix, &rid2, &sid, "echo no", None).await;
    assert_eq!(r2["status"], "rejected", "{r2:#}");
    assert_eq!(r2["error"]["code"], "session_mismatch");
    assert_eq!(r2["error"]["field"], "worker_config_override");
    assert!(
        r2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("config hash"),
        "{r2:#}"
    );
    assert_eq!(r2["session_id"], sid.as_str());
    let types = event_types(&events_for(&d.prefix, &rid2).await);
    assert!(types.contains(&"rejected".to_string()), "{types:?}");

    // Another preset.
    let rid3 = unique_request_id("m3");
    publish_spawn(
        &d.prefix,
        &json!({
            "request_id": rid3, "worker_config_id": "echo_v1",
            "task": {"prompt": "x", "user_id": "test-user", "session_id": sid},
        }),
    )
    .await;
    let r3 = wait_result(&d.prefix, &rid3, RESULT_TIMEOUT).await;
    assert_eq!(r3["status"], "rejected", "{r3:#}");
    assert_eq!(r3["error"]["code"], "session_mismatch");
    assert_eq!(r3["error"]["field"], "worker_config_id");

    // The session itself is unharmed.
    let r4 = run(
        &d.prefix,
        &unique_request_id("m4"),
        &sid,
        "echo still-here",
        Some(&ovr),
    )
    .await;
    assert_eq!(r4["status"], "succeeded", "{r4:#}");
    assert_eq!(r4["worker"]["container"], r1["worker"]["container"]);
    assert_eq!(container_count(&d.prefix).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_ttl_passed_while_the_daemon_was_down_ends_at_start() {
    let mut d1 = Daemon::start(DaemonOpts::new("sess-down-ttl"));
    let prefix = d1.prefix.clone();
    let instance = d1.instance_id.clone();
    let sid = unique_request_id("s");
    let ovr = json!({"limits": {"timeout_sec": 2, "ttl_sec": 6}});
    let r1 = run(
        &prefix,
        &unique_request_id("d1"),
        &sid,
        "echo old > /workspace/f",
        Some(&ovr),
    )
    .await;
    assert_eq!(r1["status"], "succeeded", "{r1:#}");
    let name = r1["worker"]["container"].as_str().unwrap().to_string();
    let old_id = container_id(&name).await.expect("container");
    d1.cleanup_on_drop = false;
    assert!(d1.terminate().is_some());
    drop(d1);
    // The keeper outlives the daemon; its TTL passes meanwhile.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(container_exists(&name).await);
    let d2 = Daemon::start(
        DaemonOpts::new("sess-down-ttl")
            .prefix(&prefix)
            .instance_id(&instance),
    );
    let ev = wait_any_event(&d2.prefix, Duration::from_secs(30), |e| {
        session_expired(e, &sid)
    })
    .await;
    assert_eq!(ev["data"]["reason"], "expired", "{ev}");
    wait_gone(&name, Duration::from_secs(10)).await;
    // The session id starts afresh.
    let r2 = run(
        &d2.prefix,
        &unique_request_id("d2"),
        &sid,
        "test -e /workspace/f && echo present || echo absent",
        Some(&ovr),
    )
    .await;
    assert_eq!(r2["status"], "succeeded", "{r2:#}");
    // A new container, on the session's kept volumes (issue #16).
    assert_eq!(output(&r2).trim(), "present");
    assert_ne!(container_id(&name).await, Some(old_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_one_session_run_in_order_even_when_two_instances_consume_the_stream() {
    let a = Daemon::start(DaemonOpts::new("sess-two").max_concurrent(8));
    let b = Daemon::start(
        DaemonOpts::new("sess-two")
            .max_concurrent(8)
            .prefix(&a.prefix),
    );
    let sid = unique_request_id("s2");
    // The first request makes one instance the session's owner.
    let first = unique_request_id("t0");
    let r = run(
        &a.prefix,
        &first,
        &sid,
        "echo start0 >> /workspace/log; echo end0 >> /workspace/log",
        None,
    )
    .await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let rids: Vec<String> = (1..=6)
        .map(|i| unique_request_id(&format!("t{i}")))
        .collect();
    for (i, rid) in rids.iter().enumerate() {
        let n = i + 1;
        let script = format!("echo start{n} >> /workspace/log; sleep 0.3; echo end{n} >> /workspace/log; cat /workspace/log");
        publish_spawn(&a.prefix, &session_request(rid, &sid, &script, None)).await;
    }
    let mut last = Value::Null;
    for rid in &rids {
        last = wait_result(&a.prefix, rid, RESULT_TIMEOUT).await;
        assert_eq!(
            last["status"],
            "succeeded",
            "{last:#}\n{}\n{}",
            a.stderr_tail(20),
            b.stderr_tail(20)
        );
    }
    let want: Vec<String> = (0..=6)
        .flat_map(|n| [format!("start{n}"), format!("end{n}")])
        .collect();
    assert_eq!(
        output(&last).trim(),
        want.join("\n"),
        "one at a time, in stream order, in one container"
    );
    assert_eq!(container_count(&a.prefix).await, 1);
    let handed = format!("{}{}", a.stderr(), b.stderr())
        .matches("handing a session request to its owner")
        .count();
    println!("entries handed to the session's owner: {handed}");
    cleanup_containers(&a.prefix).await;
}
