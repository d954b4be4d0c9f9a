//! Tools as data (issue #17): a tool group is a file beside its skill
//! (`skills/<group>.json`), dropped into a running daemon; grants go down to
//! single actions (`deploy:status`), held by the in-container CLI and by the
//! gateway; a group may name its own upstream. Real daemon, real Redis, real
//! containers from the universal image (with the real `orchestrator` CLI),
//! real HTTP servers as the backends.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const UNIVERSAL: &str = "universal-worker-base:latest";
const TIMEOUT: Duration = Duration::from_secs(120);

/// The calls a backend received, bodies parsed.
fn calls_of(r: &Recorded) -> Vec<(String, Value)> {
    r.lock()
        .unwrap()
        .iter()
        .map(|(p, b)| (p.clone(), serde_json::from_str(b).unwrap_or(Value::Null)))
        .collect()
}

fn universal_preset(id: &str, tools: &[&str]) -> Value {
    json!({
        "id": id,
        "name": format!("{id} (tools as data)"),
        "image": UNIVERSAL,
        "agent": {"type": "claude-code", "command": ["bash", "-c", "{prompt}"]},
        "allowed_tools": tools,
        "has_internet": false,
        "limits": {"cpu": 1.0, "memory": "256m", "timeout_sec": 60, "ttl_sec": 600, "pids": 128}
    })
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A copy of the shipped skills directory to drop files into.
fn skills_copy() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ws-skills.")
        .tempdir()
        .unwrap();
    for e in std::fs::read_dir(repo_root().join("skills"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

/// The `catalog_error` events of `prefix` so far.
async fn catalog_errors(prefix: &str) -> Vec<Value> {
    stream_json(&streams(prefix).events)
        .await
        .into_iter()
        .filter(|e| e["type"] == "catalog_error")
        .collect()
}

/// Publishes `script` for `preset` until the daemon knows the preset (a
/// hot reload is asynchronous), then waits for the result.
async fn run_when_known(prefix: &str, preset: &str, script: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rid = unique_request_id("tool");
        publish_spawn(prefix, &spawn_request(&rid, preset, script)).await;
        let r = wait_result(prefix, &rid, TIMEOUT).await;
        if r["error"]["code"] != "unknown_preset" || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// An admin drops `skills/review.json` (a new group with its own upstream),
/// `skills/review.md` and a preset allowing it into a running daemon: a
/// worker's `orchestrator review submit ...` reaches the group's backend
/// with the declared argument forms, not the default backend; `presets
/// show` renders the group's skill; a preset naming a group that does not
/// exist is a `catalog_error` naming its file and field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_group_dropped_into_a_running_daemon_reaches_its_own_tool_backend() {
    let skills = skills_copy();
    let presets = presets_dir_with(&[]);
    let (default_url, default_seen) = tool_backend();
    let (review_url, review_seen) = tool_backend();
    let mut opts = DaemonOpts::new("tools-drop")
        .presets_dir(presets.path())
        .setting("UPSTREAM_URL", &default_url);
    opts.skills_dir = Some(skills.path().to_path_buf());
    let d = Daemon::start(opts);

    let review = json!({
        "name": "review",
        "description": "Submit changes for review and read the verdicts.",
        "upstream_url": review_url,
        "actions": {
            "submit": {"help": "Submit a change for review.", "args": [
                {"name": "change_id", "positional": true, "required": true},
                {"name": "lines", "flag": "--lines", "type": "integer", "help": "Lines changed."},
                {"name": "urgency", "flag": "--urgency", "type": "enum", "values": ["low", "high"], "default": "low"}
            ]},
            "verdict": {"help": "Show the verdict on a change.", "read_only": true, "args": [
                {"name": "change_id", "positional": true, "required": true}
            ]}
        }
    });
    write_atomically(
        &skills.path().join("review.json"),
        &serde_json::to_string_pretty(&review).unwrap(),
    );
    write_atomically(
        &skills.path().join("review.md"),
        "---\nname: review\ndescription: Submit changes for review and read the verdicts.\n---\n\n# `orchestrator review`\n\n`orchestrator review submit <change_id> [--lines <n>]`\n",
    );
    write_atomically(
        &presets.path().join("reviewer_v1.json"),
        &universal_preset("reviewer_v1", &["review", "respond"]).to_string(),
    );

    let r = run_when_known(
        &d.prefix,
        "reviewer_v1",
        "orchestrator --json review submit pr-7 --lines 12; echo submit_rc=$?; orchestrator review --help",
    )
    .await;
    let out = r["output"].as_str().unwrap_or_default().to_string();
    assert_eq!(r["status"], "succeeded", "{r:#}\n{}", d.stderr_tail(30));
    assert!(out.contains("submit_rc=0"), "{out}");
    assert!(
        out.contains("verdict"),
        "the help lists the group's actions: {out}"
    );
    let seen = calls_of(&review_seen);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].0, "/v1/tools/review/submit");
    assert_eq!(
        seen[0].1["args"],
        json!({"change_id": "pr-7", "lines": 12, "urgency": "low"})
    );
    assert_eq!(seen[0].1["request_id"], r["request_id"]);
    assert!(
        default_seen.lock().unwrap().is_empty(),
        "routed by the group's own upstream_url"
    );

    // `presets show` renders the new group's skill and its CLI catalog.
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_workers-spawner"))
        .env_clear()
        .arg("--skills-dir")
        .arg(skills.path())
        .arg("--presets-dir")
        .arg(presets.path())
        .arg("--templates-dir")
        .arg(repo_root().join("templates"))
        .args(["presets", "show", "reviewer_v1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(
        text.contains("/home/worker/.claude/skills/review/SKILL.md"),
        "{text}"
    );
    assert!(
        text.contains("orchestrator review submit <change_id>"),
        "{text}"
    );

    // A preset naming a group nobody declared.
    write_atomically(
        &presets.path().join("typo_v1.json"),
        &universal_preset("typo_v1", &["respond", "reveiw"]).to_string(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        let all = catalog_errors(&d.prefix).await;
        if let Some(e) = all.iter().find(|e| {
            e["data"]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("typo_v1.json"))
        }) {
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no catalog_error for typo_v1.json: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(e["data"]["field"], "allowed_tools.1", "{e:#}");
    let msg = e["data"]["message"].as_str().unwrap();
    assert!(msg.contains("\"reveiw\" is not a tool group"), "{msg}");
    assert!(msg.contains("did you mean \"review\""), "{msg}");
    assert_no_containers(&d.prefix).await;
}

/// A worker granted `deploy:status` (and `respond`) calls `deploy status`;
/// `deploy trigger` is refused by the CLI (exit 77, the exact message, no
/// call) and, called straight at the gateway with the worker's own key, by
/// the gateway (403). Only the allowed call reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_action_grant_holds_in_the_cli_and_in_the_gateway() {
    let presets = presets_dir_with(&[(
        "status_only_v1",
        universal_preset("status_only_v1", &["deploy:status", "respond"]),
    )]);
    let (url, seen) = tool_backend();
    let d = Daemon::start(
        DaemonOpts::new("tools-action")
            .presets_dir(presets.path())
            .setting("UPSTREAM_URL", &url),
    );
    let script = r#"
orchestrator --json deploy status dep_1; echo status_rc=$?
orchestrator deploy trigger proj_1; echo trigger_rc=$?
code=$(curl -s -o /tmp/body -w '%{http_code}' -X POST -H "Authorization: Bearer $ORCHESTRATOR_API_KEY" -H 'Content-Type: application/json' -d '{"args":{"project_id":"proj_1"}}' "$ORCHESTRATOR_API_URL/v1/tools/deploy/trigger")
echo "direct_trigger_http=$code $(cat /tmp/body)"
grep -c trigger /workspace/CLAUDE.md /home/worker/.claude/skills/deploy/SKILL.md || true
"#;
    let rid = unique_request_id("act");
    publish_spawn(&d.prefix, &spawn_request(&rid, "status_only_v1", script)).await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    let out = r["output"].as_str().unwrap_or_default().to_string();
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert!(out.contains("status_rc=0"), "{out}");
    assert!(out.contains("trigger_rc=77"), "{out}");
    assert!(out.contains("direct_trigger_http=403"), "{out}");
    assert!(
        out.contains("Permission denied: deploy trigger is not allowed (allowed: deploy status)"),
        "the gateway says the same: {out}"
    );
    assert!(out.contains("/workspace/CLAUDE.md:0"), "{out}");
    assert!(out.contains("deploy/SKILL.md:0"), "{out}");
    let events = events_for(&d.prefix, &rid).await;
    assert!(
        events.iter().any(|e| e["data"]["stream"] == "stderr"
            && e["data"]["text"]
                == "Permission denied: deploy trigger is not allowed (allowed: deploy status)"),
        "{events:?}"
    );
    let calls = calls_of(&seen);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0, "/v1/tools/deploy/status");
    assert_eq!(calls[0].1["args"], json!({"deploy_id": "dep_1"}));
    assert_no_containers(&d.prefix).await;
}
