//! The spawn pipeline end to end: real `workers-spawner serve` child
//! processes, the private redis-server and the real Docker engine
//! (scripts/test-env.sh). Every test publishes real stream entries, reads
//! real results and events, and leaves no container behind.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const RESULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until the events of `rid` include one of type `kind` (the
/// `removed` event follows the result).
async fn wait_event(prefix: &str, rid: &str, kind: &str, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let ev = events_for(prefix, rid).await;
        if ev.iter().any(|e| e["type"] == kind) {
            return ev;
        }
        if Instant::now() > deadline {
            panic!(
                "no {kind} event for {rid} within {timeout:?}; events: {:?}",
                event_types(&ev)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_seq_without_gaps(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let want: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, want, "event seq must be 1,2,3,... without gaps");
}

/// A good request succeeds: proves the daemon still serves.
async fn assert_still_serving(prefix: &str) {
    let rid = unique_request_id("alive");
    publish_spawn(prefix, &spawn_request(&rid, "echo_v1", "still alive")).await;
    let r = wait_result(prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert!(r["output"].as_str().unwrap().contains("prompt=still alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_worker_streams_its_output_and_publishes_a_complete_result() {
    let mut d = Daemon::start(DaemonOpts::new("success"));
    let rid = unique_request_id("ok");
    publish_spawn(
        &d.prefix,
        &spawn_request(&rid, "echo_v1", "hello from the pipeline"),
    )
    .await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["request_id"], rid.as_str());
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["oom_killed"], false);
    assert!(r["error"].is_null(), "{r:#}");
    let out = r["output"].as_str().unwrap();
    assert!(out.contains("prompt=hello from the pipeline"), "{out}");
    assert!(out.contains("tools=project,respond"), "{out}");
    assert!(
        !out.contains("to-stderr"),
        "the output tail is stdout only: {out}"
    );
    assert_eq!(r["output_truncated"], false);
    let container = r["worker"]["container"].as_str().unwrap();
    assert!(!container.is_empty());
    assert_eq!(r["worker"]["preset"], "echo_v1");
    assert_eq!(r["worker"]["image"], test_image());
    assert_eq!(r["worker"]["instance"], d.instance_id.as_str());
    assert!(r["worker"]["config_hash"]
        .as_str()
        .is_some_and(|h| !h.is_empty()));
    assert!(r["timings"]["start_ms"].is_u64(), "{r:#}");
    assert!(r["timings"]["run_ms"].is_u64(), "{r:#}");
    assert!(r["timings"]["received_at"].is_string(), "{r:#}");
    assert!(r["timings"]["finished_at"].is_string(), "{r:#}");

    let events = wait_event(&d.prefix, &rid, "removed", Duration::from_secs(10)).await;
    let types = event_types(&events);
    let n = types.len();
    assert!(n >= 6, "{types:?}");
    assert_eq!(
        types[..3],
        ["accepted", "container_created", "started"],
        "{types:?}"
    );
    assert_eq!(types[n - 2..], ["finished", "removed"], "{types:?}");
    assert!(
        types[3..n - 2].iter().all(|t| t == "output"),
        "only output between started and finished: {types:?}"
    );
    assert_seq_without_gaps(&events);
    assert_eq!(
        output_lines(&events, "stdout"),
        [
            "prompt=hello from the pipeline".to_string(),
            "tools=project,respond".to_string()
        ]
    );
    assert_eq!(output_lines(&events, "stderr"), ["to-stderr".to_string()]);
    let finished = &events[n - 2];
    assert_eq!(finished["data"]["exit_code"], 0);
    assert_eq!(finished["data"]["status"], "succeeded");
    for e in &events {
        assert!(e["ts"].is_string(), "{e}");
    }
    assert!(!container_exists(container).await);
    assert_eq!(results_for(&d.prefix, &rid).await.len(), 1);
    assert_no_containers(&d.prefix).await;
    // OPERATIONS.md: SIGTERM means exit 0 within a few seconds.
    let t0 = Instant::now();
    let status = d
        .terminate_within(Duration::from_secs(10))
        .expect("the daemon exits on SIGTERM");
    assert!(status.success(), "exit status on SIGTERM: {status}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_exit_is_a_failed_result_with_the_exit_code() {
    let d = Daemon::start(DaemonOpts::new("exit7"));
    let rid = unique_request_id("exit7");
    publish_spawn(
        &d.prefix,
        &spawn_request(&rid, "shell_v1", "echo before-exit; exit 7"),
    )
    .await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["exit_code"], 7);
    assert_eq!(r["oom_killed"], false);
    assert!(r["output"].as_str().unwrap().contains("before-exit"));
    let events = wait_event(&d.prefix, &rid, "removed", Duration::from_secs(10)).await;
    let fin = events.iter().find(|e| e["type"] == "finished").unwrap();
    assert_eq!(fin["data"]["exit_code"], 7);
    assert_eq!(fin["data"]["status"], "failed");
    assert_seq_without_gaps(&events);
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_past_its_timeout_is_stopped_and_reported_timed_out() {
    let d = Daemon::start(DaemonOpts::new("timeout").setting("STOP_GRACE", "1s"));
    let rid = unique_request_id("slow");
    let mut req = spawn_request(&rid, "shell_v1", "echo sleeping; sleep 60");
    req["worker_config_override"] = json!({"limits": {"timeout_sec": 2}});
    let t0 = Instant::now();
    publish_spawn(&d.prefix, &req).await;
    let r = wait_result(&d.prefix, &rid, Duration::from_secs(30)).await;
    let took = t0.elapsed();
    eprintln!("timeout 2 s + grace 1 s: timed_out result after {took:?}");
    assert_eq!(r["status"], "timed_out", "{r:#}");
    assert_eq!(r["error"]["code"], "timed_out");
    assert_eq!(r["error"]["field"], "limits.timeout_sec");
    assert!(r["output"].as_str().unwrap().contains("sleeping"));
    // timeout 2 s + grace 1 s + start-up and the whole-second deadline.
    assert!(
        took < Duration::from_secs(2 + 2 + 3),
        "timed_out result took {took:?}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "stopped before its 2 s timeout: {took:?}"
    );
    // The result is published first, then the container is removed.
    let container = r["worker"]["container"].as_str().unwrap().to_string();
    let gone_by = Instant::now() + Duration::from_secs(2);
    while container_exists(&container).await {
        assert!(
            Instant::now() < gone_by,
            "{container} still exists 2 s after its timed_out result"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let events = wait_event(&d.prefix, &rid, "removed", Duration::from_secs(5)).await;
    let types = event_types(&events);
    assert!(types.contains(&"timed_out".to_string()), "{types:?}");
    assert!(!types.contains(&"finished".to_string()), "{types:?}");
    assert_seq_without_gaps(&events);
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_for_memory_is_failed_with_oom_killed() {
    let d = Daemon::start(DaemonOpts::new("oom"));
    let rid = unique_request_id("oom");
    // shell_v1 has 64m (no swap); a 200 MB shell variable cannot fit.
    let prompt =
        "echo allocating; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}";
    publish_spawn(&d.prefix, &spawn_request(&rid, "shell_v1", prompt)).await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["oom_killed"], true, "{r:#}");
    assert_ne!(r["exit_code"], 0, "{r:#}");
    let out = r["output"].as_str().unwrap();
    assert!(out.contains("allocating"), "{out}");
    assert!(!out.contains("survived"), "{out}");
    let events = wait_event(&d.prefix, &rid, "removed", Duration::from_secs(10)).await;
    let fin = events.iter().find(|e| e["type"] == "finished").unwrap();
    assert_eq!(fin["data"]["oom_killed"], true);
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_sees_its_instructions_allowed_skills_prompt_and_environment() {
    let d = Daemon::start(DaemonOpts::new("files"));
    // What the daemon says it will write (dry run), to compare with what
    // the worker reads back.
    let dry = unique_request_id("files-dry");
    let mut req = spawn_request(&dry, "shell_v1", "placeholder");
    req["dry_run"] = json!(true);
    publish_spawn(&d.prefix, &req).await;
    let dr = wait_result(&d.prefix, &dry, RESULT_TIMEOUT).await;
    let files: HashMap<String, String> = dr["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["content"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let claude_md = files
        .get("/workspace/CLAUDE.md")
        .expect("CLAUDE.md rendered");

    let rid = unique_request_id("files");
    let prompt = "echo '==CLAUDE'; cat /workspace/CLAUDE.md; echo '==TREE'; \
                  find /home/worker/.claude | sort; echo '==SETTINGS'; \
                  test -s /home/worker/.claude/settings.json && echo settings-present; \
                  echo '==PROMPT'; cat /home/worker/.orchestrator/prompt.md; echo; \
                  echo '==ENV'; echo \"tools=$ORCHESTRATOR_ALLOWED_TOOLS\"; \
                  echo \"rid=$ORCHESTRATOR_REQUEST_ID\"; echo \"whoami=$(id -u)\"; echo '==END'";
    publish_spawn(&d.prefix, &spawn_request(&rid, "shell_v1", prompt)).await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = r["output"].as_str().unwrap();
    assert_eq!(r["output_truncated"], false);
    let section = |name: &str| -> String {
        let start = out
            .find(&format!("=={name}\n"))
            .unwrap_or_else(|| panic!("no {name} section in {out}"))
            + name.len()
            + 3;
        let end = out[start..].find("\n==").map(|i| start + i + 1).unwrap();
        out[start..end].to_string()
    };
    // The exact rendered instructions, with only the allowed tools.
    assert_eq!(section("CLAUDE").trim_end(), claude_md.trim_end());
    let tree = section("TREE");
    for tool in ["project", "deploy", "respond"] {
        assert!(
            tree.contains(&format!("/home/worker/.claude/skills/{tool}/SKILL.md")),
            "{tool} skill missing: {tree}"
        );
    }
    for tool in ["admin", "engineering", "infra"] {
        assert!(
            !tree.contains(&format!("skills/{tool}")),
            "disallowed skill {tool} reached the container: {tree}"
        );
        assert!(
            !section("CLAUDE").contains(&format!("`{tool}`")),
            "disallowed tool {tool} is listed in CLAUDE.md"
        );
    }
    assert!(
        tree.contains("/home/worker/.claude/settings.json"),
        "{tree}"
    );
    assert_eq!(section("SETTINGS").trim(), "settings-present");
    assert_eq!(section("PROMPT").trim_end(), prompt);
    let env = section("ENV");
    assert!(env.contains("tools=project,deploy,respond\n"), "{env}");
    assert!(env.contains(&format!("rid={rid}\n")), "{env}");
    assert!(env.contains("whoami=1000\n"), "{env}");
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_the_daemon_env_are_redacted_from_events_and_results() {
    let secret = format!("s3cr3t-{}-value", random_suffix());
    let d = Daemon::start(DaemonOpts::new("secrets").env("WS_TEST_SECRET", &secret));
    let rid = unique_request_id("secret");
    let prompt =
        "echo \"plain=$SECRET_TOKEN\"; echo \"b64=$(printf %s \"$SECRET_TOKEN\" | base64)\"; \
                  echo \"err=$SECRET_TOKEN\" >&2; test -n \"$SECRET_TOKEN\" && echo has-secret";
    publish_spawn(&d.prefix, &spawn_request(&rid, "shell_v1", prompt)).await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = r["output"].as_str().unwrap();
    assert!(
        out.contains("has-secret"),
        "the worker got the secret: {out}"
    );
    assert!(out.contains("plain=[REDACTED]"), "{out}");
    assert!(out.contains("b64=") && out.contains("[REDACTED]"), "{out}");
    let events = wait_event(&d.prefix, &rid, "removed", Duration::from_secs(10)).await;
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&secret)
    };
    let b64_core = b64.trim_end_matches('=');
    let everything = format!(
        "{}\n{}\n{}",
        serde_json::to_string(&r).unwrap(),
        serde_json::to_string(&events).unwrap(),
        d.stderr()
    );
    assert!(!everything.contains(&secret), "the secret leaked");
    assert!(
        !everything.contains(b64_core),
        "the base64 of the secret leaked"
    );
    let stdout = output_lines(&events, "stdout");
    assert!(
        stdout.contains(&"plain=[REDACTED]".to_string()),
        "{stdout:?}"
    );
    let b64_line = stdout.iter().find(|l| l.starts_with("b64=")).unwrap();
    assert!(b64_line.contains("[REDACTED]"), "{b64_line}");
    assert!(output_lines(&events, "stderr").contains(&"err=[REDACTED]".to_string()));
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_or_dead_lettered_and_the_daemon_keeps_serving() {
    let d = Daemon::start(DaemonOpts::new("badinput"));
    let p = d.prefix.clone();

    // Entries without a usable request id: dead letters naming the cause.
    publish_raw(&p, b"{not json").await;
    wait_dead_letter(&p, Duration::from_secs(10), |v| {
        v["data"] == "{not json" && v["reason"].as_str().unwrap().contains("not JSON")
    })
    .await;

    publish_raw(&p, b"{\"request_id\":\"utf8-\xff\xfe\"}").await;
    wait_dead_letter(&p, Duration::from_secs(10), |v| {
        v["reason"].as_str().unwrap().contains("UTF-8")
    })
    .await;

    publish_spawn(
        &p,
        &json!({"worker_config_id": "echo_v1", "task": {"prompt": "x"}}),
    )
    .await;
    wait_dead_letter(&p, Duration::from_secs(10), |v| {
        v["reason"].as_str().unwrap().contains("request_id")
            && v["data"].as_str().unwrap().contains("echo_v1")
    })
    .await;

    let bad_id = spawn_request("../x", "echo_v1", "hi");
    publish_spawn(&p, &bad_id).await;
    wait_dead_letter(&p, Duration::from_secs(10), |v| {
        v["reason"].as_str().unwrap().contains("request_id")
            && v["data"].as_str().unwrap().contains("../x")
    })
    .await;

    let no_data_id = publish_fields(&p, &[("payload", b"{}")]).await;
    wait_dead_letter(&p, Duration::from_secs(10), |v| {
        v["entry_id"] == no_data_id.as_str() && v["reason"].as_str().unwrap().contains("data")
    })
    .await;

    let huge_rid = unique_request_id("huge");
    let huge = spawn_request(&huge_rid, "echo_v1", &"x".repeat(1100 * 1024));
    let huge_entry = publish_spawn(&p, &huge).await;
    let dl = wait_dead_letter(&p, Duration::from_secs(10), |v| {
        v["entry_id"] == huge_entry.as_str()
    })
    .await;
    assert!(
        dl["reason"].as_str().unwrap().contains("limit"),
        "the reason names the size limit: {}",
        dl["reason"]
    );
    assert!(
        dl["data"].as_str().unwrap().len() <= 64 * 1024,
        "dead letters keep a bounded excerpt"
    );

    // Entries with a request id: a rejected/error result naming the field.
    let mut cases: Vec<(String, Value, &str, &str, &str)> = Vec::new();
    let mut add = |tag: &str, mutate: &dyn Fn(&mut Value), status, field, code| {
        let rid = unique_request_id(tag);
        let mut req = spawn_request(&rid, "echo_v1", "hi");
        mutate(&mut req);
        cases.push((rid, req, status, field, code));
    };
    add(
        "noprompt",
        &|r| {
            r["task"].as_object_mut().unwrap().remove("prompt");
        },
        "rejected",
        "task.prompt",
        "",
    );
    add(
        "emptyprompt",
        &|r| r["task"]["prompt"] = json!(""),
        "rejected",
        "task.prompt",
        "",
    );
    add(
        "bigprompt",
        &|r| r["task"]["prompt"] = json!("y".repeat(257 * 1024)),
        "rejected",
        "task.prompt",
        "",
    );
    add(
        "unknownpreset",
        &|r| r["worker_config_id"] = json!("no_such_preset_v9"),
        "rejected",
        "worker_config_id",
        "",
    );
    add(
        "schema",
        &|r| r["worker_config_override"] = json!({"limits": {"memory": "lots"}}),
        "rejected",
        "limits.memory",
        "",
    );
    add(
        "policy",
        &|r| r["worker_config_override"] = json!({"allowed_tools": ["admin"]}),
        "rejected",
        "allowed_tools",
        "",
    );
    for (_, req, ..) in &cases {
        publish_spawn(&p, req).await;
    }
    for (rid, _, status, field, _) in &cases {
        let r = wait_result(&p, rid, Duration::from_secs(15)).await;
        assert_eq!(r["status"], *status, "{rid}: {r:#}");
        let err = &r["error"];
        assert!(
            err["field"].as_str().is_some_and(|f| f.contains(field)),
            "{rid}: error.field should name {field}: {err:#}"
        );
        assert!(
            err["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{err:#}"
        );
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{err:#}"
        );
        let ev = events_for(&p, rid).await;
        assert_eq!(event_types(&ev), ["rejected"], "{rid}");
        assert_eq!(results_for(&p, rid).await.len(), 1);
    }

    // Nothing of the above created a container, and nothing is left pending.
    assert_eq!(container_count(&p).await, 0);
    assert_still_serving(&p).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while pending_count(&p).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending_count(&p).await, 0, "every entry is acknowledged");
    assert_no_containers(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_whose_image_does_not_exist_gives_an_error_result() {
    let presets = presets_dir_with(&[(
        "ghost_v1",
        json!({
            "id": "ghost_v1",
            "name": "Image that does not exist",
            "image": "ws-test-does-not-exist:1",
            "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"] },
            "allowed_tools": ["project"],
            "has_internet": false,
            "limits": { "cpu": 1.0, "memory": "64m", "timeout_sec": 30, "ttl_sec": 60 }
        }),
    )]);
    let d = Daemon::start(DaemonOpts::new("noimage").presets_dir(presets.path()));
    let rid = unique_request_id("ghost");
    publish_spawn(&d.prefix, &spawn_request(&rid, "ghost_v1", "echo hi")).await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "error", "{r:#}");
    assert_eq!(r["error"]["code"], "image_not_found", "{r:#}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ws-test-does-not-exist:1"),
        "{r:#}"
    );
    assert_eq!(container_count(&d.prefix).await, 0);
    assert_eq!(pending_count(&d.prefix).await, 0);
    assert_still_serving(&d.prefix).await;
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_publishes_config_and_files_and_creates_no_container() {
    let secret = format!("dry-secret-{}", random_suffix());
    let d = Daemon::start(DaemonOpts::new("dryrun").env("WS_TEST_SECRET", &secret));
    let docker = docker().await;
    let seen = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (seen, stop, prefix) = (seen.clone(), stop.clone(), d.prefix.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = list_prefix(&docker, &prefix).await.len();
                seen.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let rid = unique_request_id("dry");
    let mut req = spawn_request(&rid, "echo_v1", "just looking");
    req["dry_run"] = json!(true);
    req["worker_config_override"] = json!({"limits": {"timeout_sec": 30}});
    publish_spawn(&d.prefix, &req).await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    poller.await.unwrap();
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert_eq!(r["config"]["id"], "echo_v1");
    assert_eq!(r["config"]["limits"]["timeout_sec"], 30);
    let files = r["files"].as_array().expect("files");
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/workspace/CLAUDE.md"), "{paths:?}");
    assert!(paths.contains(&"/home/worker/.claude/skills/project/SKILL.md"));
    assert!(paths.contains(&"/home/worker/.orchestrator/prompt.md"));
    assert!(
        !paths.iter().any(|p| p.contains("skills/admin")),
        "{paths:?}"
    );
    assert!(!serde_json::to_string(&r).unwrap().contains(&secret));
    assert_eq!(
        seen.load(Ordering::Relaxed),
        0,
        "a dry run created a container"
    );
    let types = event_types(&events_for(&d.prefix, &rid).await);
    assert!(
        !types
            .iter()
            .any(|t| t == "container_created" || t == "started"),
        "{types:?}"
    );
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_published_twice_gets_exactly_one_result() {
    let d = Daemon::start(DaemonOpts::new("dup"));
    let rid = unique_request_id("dup");
    let req = spawn_request(&rid, "shell_v1", "echo run-marker");
    publish_spawn(&d.prefix, &req).await;
    let first = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(first["status"], "succeeded", "{first:#}");
    wait_event(&d.prefix, &rid, "removed", Duration::from_secs(10)).await;
    let events_before = events_for(&d.prefix, &rid).await.len();

    // The same request again, after the first finished; and a different
    // request right behind it to know when the duplicate was processed.
    publish_spawn(&d.prefix, &req).await;
    let marker = unique_request_id("after-dup");
    publish_spawn(&d.prefix, &spawn_request(&marker, "echo_v1", "marker")).await;
    wait_result(&d.prefix, &marker, RESULT_TIMEOUT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(results_for(&d.prefix, &rid).await.len(), 1);
    assert_eq!(
        events_for(&d.prefix, &rid).await.len(),
        events_before,
        "the duplicate ran nothing"
    );
    assert_eq!(pending_count(&d.prefix).await, 0);
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_requests_at_once_respect_max_concurrent_and_each_get_one_result() {
    const N: usize = 20;
    const MAX: usize = 4;
    let d = Daemon::start(DaemonOpts::new("concurrency").max_concurrent(MAX));
    let docker = docker().await;
    let max_alive = Arc::new(AtomicUsize::new(0));
    let polls = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (max_alive, polls, stop, prefix) = (
            max_alive.clone(),
            polls.clone(),
            stop.clone(),
            d.prefix.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let alive = list_prefix(&docker, &prefix).await.len();
                max_alive.fetch_max(alive, Ordering::Relaxed);
                polls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let rids: Vec<String> = (0..N)
        .map(|i| unique_request_id(&format!("c{i:02}")))
        .collect();
    let t0 = Instant::now();
    let mut c = redis_conn().await;
    let mut pipe = redis::pipe();
    for rid in &rids {
        pipe.cmd("XADD")
            .arg(streams(&d.prefix).spawn)
            .arg("*")
            .arg("data")
            .arg(spawn_request(rid, "shell_v1", "sleep 1").to_string());
    }
    let _: Vec<String> = pipe.query_async(&mut c).await.unwrap();
    let mut results = Vec::new();
    for rid in &rids {
        results.push(wait_result(&d.prefix, rid, Duration::from_secs(120)).await);
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    poller.await.unwrap();
    for r in &results {
        assert_eq!(r["status"], "succeeded", "{r:#}");
    }
    let all = all_results(&d.prefix).await;
    assert_eq!(all.len(), N, "exactly one result per request");
    let ids: HashSet<&str> = all
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), N);
    let max_seen = max_alive.load(Ordering::Relaxed);
    assert!(
        max_seen <= MAX,
        "{max_seen} containers alive at once with --max-concurrent {MAX}"
    );
    assert!(
        max_seen >= 2,
        "the workers did run in parallel ({max_seen})"
    );
    // 20 x 1 s in slots of 4 cannot take less than 5 s.
    assert!(took >= Duration::from_secs((N / MAX) as u64), "{took:?}");
    eprintln!(
        "concurrency: {N} requests in {took:?}, at most {max_seen} containers alive ({} polls)",
        polls.load(Ordering::Relaxed)
    );
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_setups_sharing_redis_and_docker_may_use_the_same_request_id() {
    // Stream prefixes exist "so that several independent setups share one
    // Redis" (OPERATIONS.md); they share the Docker engine too.
    let a = Daemon::start(DaemonOpts::new("share-a"));
    let b = Daemon::start(DaemonOpts::new("share-b"));
    let rid = unique_request_id("shared");
    let req = spawn_request(
        &rid,
        "shell_v1",
        "sleep 2; echo done-$ORCHESTRATOR_REQUEST_ID",
    );
    publish_spawn(&a.prefix, &req).await;
    publish_spawn(&b.prefix, &req).await;
    let ra = wait_result(&a.prefix, &rid, RESULT_TIMEOUT).await;
    let rb = wait_result(&b.prefix, &rid, Duration::from_secs(20)).await;
    assert_eq!(ra["status"], "succeeded", "{ra:#}");
    assert_eq!(rb["status"], "succeeded", "{rb:#}");
    assert_ne!(ra["worker"]["container"], rb["worker"]["container"]);
    assert_no_containers(&a.prefix).await;
    assert_no_containers(&b.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_may_deliver_files_through_the_archive_api_for_images_without_a_shell() {
    let preset = json!({
        "id": "archive_v1",
        "name": "Archive delivery (tests)",
        "image": test_image(),
        "agent": {
            "type": "claude-code",
            "command": ["sh", "-c", "echo \"prompt=$0\"; ls /workspace $HOME/.claude; cat /home/worker/.orchestrator/prompt.md", "{prompt}"],
            "delivery": "archive"
        },
        "allowed_tools": [],
        "has_internet": false,
        "limits": {"cpu": 1.0, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600, "pids": 64}
    });
    let presets = presets_dir_with(&[("archive_v1", preset)]);
    let d = Daemon::start(DaemonOpts::new("archive").presets_dir(presets.path()));
    let rid = unique_request_id("archive");
    publish_spawn(&d.prefix, &spawn_request(&rid, "archive_v1", "hello")).await;
    let r = wait_result(&d.prefix, &rid, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let out = r["output"].as_str().unwrap();
    assert!(out.starts_with("prompt=hello\n"), "{out}");
    assert!(out.contains("CLAUDE.md"), "{out}");
    assert!(out.contains("settings.json"), "{out}");
    // An unterminated last line is part of the output.
    assert!(out.ends_with("CLAUDE.md\nhello"), "{r}");
    // Its main process is the agent itself, not the delivery shim.
    let docker = docker().await;
    let name = r["worker"]["container"].as_str().unwrap().to_string();
    if let Ok(c) = docker
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        let cmd = c.config.unwrap().cmd.unwrap_or_default();
        assert_eq!(cmd.first().map(String::as_str), Some("sh"));
        assert!(!cmd.iter().any(|a| a.contains("tar -x")), "{cmd:?}");
    }
    cleanup_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_from_the_daemon_env_reaches_the_worker_but_not_its_container_config() {
    let secret = format!("s3cr3t-{}-inspect", random_suffix());
    let d = Daemon::start(DaemonOpts::new("secret-inspect").env("WS_TEST_SECRET", &secret));
    let rid = unique_request_id("secret-inspect");
    let prompt = "test -n \"$SECRET_TOKEN\" && echo has-secret; sleep 3";
    publish_spawn(&d.prefix, &spawn_request(&rid, "shell_v1", prompt)).await;
    let events = wait_event(&d.prefix, &rid, "started", Duration::from_secs(30)).await;
    let name = events
        .iter()
        .find(|e| e["type"] == "started")
        .and_then(|e| e["data"]["container"].as_str())
        .unwrap()
        .to_string();
    let c = docker()
        .await
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let inspected = serde_json::to_string(&c).unwrap();
    assert!(
        !inspected.contains(&secret),
        "docker inspect shows the secret"
    );
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert!(
        r["output"].as_str().unwrap().contains("has-secret"),
        "{r:#}"
    );
    cleanup_containers(&d.prefix).await;
}

/// Every timestamp in `v` (fields `ts` and `*_at`, and any string that reads
/// as RFC 3339): checks its format and counts it.
fn check_timestamps(v: &Value, key: &str, seen: &mut usize) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, x)| check_timestamps(x, k, seen)),
        Value::Array(a) => a.iter().for_each(|x| check_timestamps(x, key, seen)),
        Value::String(s) => {
            let named = key == "ts" || key.ends_with("_at");
            if named || chrono::DateTime::parse_from_rfc3339(s).is_ok() {
                // RFC 3339, UTC, exactly milliseconds: 2026-05-01T10:00:00.123Z
                let b = s.as_bytes();
                let ok = s.len() == 24
                    && b[10] == b'T'
                    && b[19] == b'.'
                    && b[20..23].iter().all(u8::is_ascii_digit)
                    && s.ends_with('Z')
                    && chrono::DateTime::parse_from_rfc3339(s).is_ok();
                assert!(ok, "{key}: {s:?} is not RFC 3339 UTC with milliseconds");
                *seen += 1;
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_timestamp_in_results_and_events_has_one_format() {
    let d = Daemon::start(DaemonOpts::new("timestamps"));
    let one = unique_request_id("ts");
    publish_spawn(&d.prefix, &spawn_request(&one, "echo_v1", "what time")).await;
    let sid = unique_request_id("ts-s");
    let in_session = unique_request_id("ts-sess");
    let mut req = spawn_request(&in_session, "echo_v1", "in a session");
    req["task"]["session_id"] = json!(sid);
    publish_spawn(&d.prefix, &req).await;
    let rejected = unique_request_id("ts-rej");
    publish_spawn(
        &d.prefix,
        &json!({"request_id": rejected, "worker_config_id": "echo_v1", "task": {}}),
    )
    .await;

    let mut seen = 0;
    for (rid, last_event) in [(&one, "removed"), (&in_session, "finished")] {
        let r = wait_result(&d.prefix, rid, RESULT_TIMEOUT).await;
        assert_eq!(r["status"], "succeeded", "{r:#}");
        for k in ["received_at", "started_at", "finished_at"] {
            assert!(r["timings"][k].is_string(), "{k} missing: {r:#}");
        }
        check_timestamps(&r, "", &mut seen);
        for e in wait_event(&d.prefix, rid, last_event, RESULT_TIMEOUT).await {
            check_timestamps(&e, "", &mut seen);
        }
    }
    let r = wait_result(&d.prefix, &rejected, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "rejected", "{r:#}");
    check_timestamps(&r, "", &mut seen);
    for e in events_for(&d.prefix, &rejected).await {
        check_timestamps(&e, "", &mut seen);
    }
    // 3 timings in each of 2 results, and a `ts` on every event.
    assert!(seen >= 6 + 8, "only {seen} timestamps checked");

    publish_control(&d.prefix, &json!({"command": "cancel", "session_id": sid})).await;
    let deadline = Instant::now() + RESULT_TIMEOUT;
    while container_count(&d.prefix).await > 0 {
        assert!(Instant::now() < deadline, "the session container stays");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
