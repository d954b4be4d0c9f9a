//! The worker's side, in real containers from the universal image
//! (`images/universal-worker/build.sh`, built by scripts/test.sh): the
//! `orchestrator` CLI against the daemon's gateway, and derived images that
//! bake `system_packages` and `bootstrap_commands` once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const UNIVERSAL: &str = "universal-worker-base:latest";
const TIMEOUT: Duration = Duration::from_secs(120);

fn universal_preset(id: &str, tools: &[&str]) -> Value {
    json!({
        "id": id,
        "name": "Universal worker (tests)",
        "image": UNIVERSAL,
        "agent": {"type": "claude-code", "command": ["bash", "-c", "{prompt}"]},
        "allowed_tools": tools,
        "has_internet": false,
        "limits": {"cpu": 1.0, "memory": "256m", "timeout_sec": 60, "ttl_sec": 600, "pids": 128}
    })
}

fn output_of(result: &Value) -> String {
    result["output"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_cli_reaches_the_gateway_and_both_enforce_allowed_tools() {
    let presets = presets_dir_with(&[(
        "uni_v1",
        universal_preset("uni_v1", &["project", "respond"]),
    )]);
    let (upstream_url, calls) = tool_backend();
    let d = Daemon::start(
        DaemonOpts::new("worker-side-cli")
            .presets_dir(presets.path())
            .setting("UPSTREAM_URL", &upstream_url),
    );
    let rid = unique_request_id("cli");
    let script = r#"
orchestrator --json project list; echo "list_rc=$?"
orchestrator respond "hi from the worker"; echo "respond_rc=$?"
orchestrator admin workers; echo "admin_rc=$?"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $ORCHESTRATOR_API_KEY" -H 'Content-Type: application/json' -d '{"args":{}}' "$ORCHESTRATOR_API_URL/v1/tools/admin/workers")
echo "direct_admin_http=$code"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer wsk_not_a_real_key" -d '{"args":{}}' "$ORCHESTRATOR_API_URL/v1/tools/project/list")
echo "bad_key_http=$code"
env | grep -ci redis || true
echo "user=$(id -u)"
"#;
    publish_spawn(&d.prefix, &spawn_request(&rid, "uni_v1", script)).await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    let out = output_of(&r);
    assert_eq!(r["status"], "succeeded", "{r}\n{}", d.stderr_tail(40));
    assert!(out.contains("list_rc=0"), "{out}");
    assert!(
        out.contains("/v1/tools/project/list"),
        "the call reached the upstream: {out}"
    );
    assert!(
        out.contains(&format!("\"request_id\":\"{rid}\"")),
        "the gateway names the request upstream: {out}"
    );
    assert!(out.contains("respond_rc=0"), "{out}");
    assert!(out.contains("admin_rc=77"), "{out}");
    assert!(
        out.contains("direct_admin_http=403"),
        "bypassing the CLI gains nothing: {out}"
    );
    assert!(out.contains("bad_key_http=401"), "{out}");
    assert!(
        out.lines().any(|l| l.trim() == "0"),
        "no Redis variable in the worker's env: {out}"
    );
    assert!(out.contains("user=1000"), "{out}");
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "only the allowed call went upstream"
    );
    let events = events_for(&d.prefix, &rid).await;
    let respond: Vec<&Value> = events.iter().filter(|e| e["type"] == "respond").collect();
    assert_eq!(respond.len(), 1, "{events:?}");
    assert_eq!(respond[0]["request_id"], rid.as_str());
    assert_eq!(respond[0]["data"]["message"], "hi from the worker");
    // The permission message is exact (stderr reaches the output events).
    assert!(
        events.iter().any(|e| e["data"]["stream"] == "stderr"
            && e["data"]["text"]
                == "Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS"),
        "{events:?}"
    );
    cleanup_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_key_is_refused_once_its_worker_has_ended() {
    let presets = presets_dir_with(&[("uni_v1", universal_preset("uni_v1", &["respond"]))]);
    let d = Daemon::start(DaemonOpts::new("worker-side-key").presets_dir(presets.path()));
    let rid = unique_request_id("key");
    // The key works from its own container (a key is bound to it).
    let script = r#"code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $ORCHESTRATOR_API_KEY" -d '{"args":{"message":"from the worker"}}' "$ORCHESTRATOR_API_URL/v1/tools/respond/send"); echo "live=$code"; sleep 3"#;
    publish_spawn(&d.prefix, &spawn_request(&rid, "uni_v1", script)).await;
    // Read the key (and the gateway URL) from the running container.
    let docker = docker().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (key, url) = loop {
        let list = containers(&d.prefix).await;
        // A listed container may be gone by the time it is inspected (one
        // that never started is replaced): look again.
        let inspected = match list.first() {
            Some(c) => docker
                .inspect_container(
                    c.id.as_deref().unwrap(),
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .ok(),
            None => None,
        };
        if let Some(i) = inspected {
            let env = i.config.unwrap().env.unwrap_or_default();
            let get = |k: &str| {
                env.iter()
                    .find_map(|e| e.strip_prefix(&format!("{k}=")).map(str::to_string))
            };
            if let (Some(k), Some(u)) = (get("ORCHESTRATOR_API_KEY"), get("ORCHESTRATOR_API_URL")) {
                break (k, u);
            }
        }
        assert!(Instant::now() < deadline, "no worker container appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let call = |key: String, url: String| {
        std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .args(["-H", &format!("Authorization: Bearer {key}")])
            .args(["-d", r#"{"args":{"message":"from the test"}}"#])
            .arg(format!("{url}/v1/tools/respond/send"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    // The worker reaches the gateway through its egress socket; the host
    // calls it where it listens, on the bridge.
    assert_eq!(url, "http://127.0.0.1:4750");
    let url = format!("http://{}:{}", internal_gateway_ip().await, d.gateway_port);
    assert_eq!(
        call(key.clone(), url.clone()),
        "403",
        "the live key is worth nothing outside its container"
    );
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded");
    assert!(
        r["output"]
            .as_str()
            .unwrap_or_default()
            .contains("live=200"),
        "the key works while its worker lives: {r}"
    );
    assert_eq!(call(key, url), "401", "the key dies with its worker");
    cleanup_containers(&d.prefix).await;
}

fn derived_preset(id: &str, token: &str, packages: &[&str], extra: &[&str]) -> Value {
    let mut commands = vec![format!("echo {token} > /opt/ws-test-marker")];
    commands.extend(extra.iter().map(|s| s.to_string()));
    let mut p = universal_preset(id, &[]);
    p["system_packages"] = json!(packages);
    p["bootstrap_commands"] = json!(commands);
    p
}

async fn remove_derived_images(token_marker: &str) {
    let d = docker().await;
    let mut filters = std::collections::HashMap::new();
    filters.insert("reference".to_string(), vec!["ws-derived".to_string()]);
    let list = d
        .list_images(Some(bollard::query_parameters::ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for img in list {
        for tag in img.repo_tags {
            // Prepared images (`ws-derived:p-…`) are shared with every
            // other test running now; only setup images are this test's.
            if tag.starts_with("ws-derived:p-") {
                continue;
            }
            if tag.contains(token_marker) || token_marker.is_empty() {
                let _ = d
                    .remove_image(
                        &tag,
                        None::<bollard::query_parameters::RemoveImageOptions>,
                        None,
                    )
                    .await;
            }
        }
    }
}

fn building_lines(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["type"] == "image_building")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_layers_are_built_once_and_reused_and_concurrent_first_spawns_share_one_build() {
    let token = format!("tok{}", random_suffix());
    let presets = presets_dir_with(&[
        (
            "derived_v1",
            derived_preset("derived_v1", &token, &["hello"], &[]),
        ),
        (
            "derived_v2",
            derived_preset("derived_v2", &format!("{token}b"), &[], &[]),
        ),
    ]);
    let d = Daemon::start(DaemonOpts::new("worker-side-derived").presets_dir(presets.path()));

    // First spawn builds (apt-get install of a package from Debian's mirror).
    let first = unique_request_id("derived-first");
    let t0 = Instant::now();
    publish_spawn(
        &d.prefix,
        &spawn_request(&first, "derived_v1", "cat /opt/ws-test-marker; hello"),
    )
    .await;
    let r1 = wait_result(&d.prefix, &first, Duration::from_secs(300)).await;
    let first_time = t0.elapsed();
    assert_eq!(r1["status"], "succeeded", "{r1}\n{}", d.stderr_tail(40));
    assert!(output_of(&r1).contains(&token), "{r1}");
    assert!(output_of(&r1).contains("Hello, world!"), "{r1}");
    assert!(building_lines(&events_for(&d.prefix, &first).await) > 0);

    // The second spawn reuses the image: no build, far quicker.
    let second = unique_request_id("derived-second");
    let t1 = Instant::now();
    publish_spawn(
        &d.prefix,
        &spawn_request(&second, "derived_v1", "cat /opt/ws-test-marker"),
    )
    .await;
    let r2 = wait_result(&d.prefix, &second, TIMEOUT).await;
    let second_time = t1.elapsed();
    assert_eq!(r2["status"], "succeeded", "{r2}");
    assert_eq!(building_lines(&events_for(&d.prefix, &second).await), 0);
    println!("derived image: first spawn {first_time:?} (built), second spawn {second_time:?} (cached); start_ms {} vs {}", r1["timings"]["start_ms"], r2["timings"]["start_ms"]);
    assert!(
        second_time * 3 < first_time,
        "first {first_time:?}, second {second_time:?}"
    );

    // Two first spawns at once of another setup: one build between them.
    let (a, b) = (
        unique_request_id("derived-a"),
        unique_request_id("derived-b"),
    );
    publish_spawn(
        &d.prefix,
        &spawn_request(&a, "derived_v2", "cat /opt/ws-test-marker"),
    )
    .await;
    publish_spawn(
        &d.prefix,
        &spawn_request(&b, "derived_v2", "cat /opt/ws-test-marker"),
    )
    .await;
    let (ra, rb) = (
        wait_result(&d.prefix, &a, TIMEOUT).await,
        wait_result(&d.prefix, &b, TIMEOUT).await,
    );
    assert_eq!(
        (ra["status"].as_str(), rb["status"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    let builds = [a.as_str(), b.as_str()];
    let mut with_build = 0;
    for rid in builds {
        if building_lines(&events_for(&d.prefix, rid).await) > 0 {
            with_build += 1;
        }
    }
    assert_eq!(
        with_build, 1,
        "exactly one of the two concurrent spawns built the image"
    );
    let metrics = d.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        metrics.contains("workers_spawner_image_builds_total 2"),
        "{metrics}"
    );
    cleanup_containers(&d.prefix).await;
    remove_derived_images("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_setup_build_answers_error_with_its_last_lines_and_leaves_no_dangling_image() {
    let token = format!("tok{}", random_suffix());
    let presets = presets_dir_with(&[(
        "broken_v1",
        derived_preset(
            "broken_v1",
            &token,
            &[],
            &["echo about-to-fail-{token}; exit 3"],
        ),
    )]);
    let d = Daemon::start(DaemonOpts::new("worker-side-broken").presets_dir(presets.path()));
    let rid = unique_request_id("broken");
    publish_spawn(&d.prefix, &spawn_request(&rid, "broken_v1", "true")).await;
    let r = wait_result(&d.prefix, &rid, Duration::from_secs(180)).await;
    assert_eq!(r["status"], "error", "{r}");
    assert_eq!(r["error"]["code"], "image_build_failed", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("about-to-fail"),
        "{r}"
    );
    let docker = docker().await;
    let mut filters = std::collections::HashMap::new();
    filters.insert("dangling".to_string(), vec!["true".to_string()]);
    let dangling = docker
        .list_images(Some(bollard::query_parameters::ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .unwrap();
    // Only this build's images count: other tests may be building meanwhile.
    let events = events_for(&d.prefix, &rid).await;
    let build_id = events
        .iter()
        .find_map(|e| {
            e["data"]["text"]
                .as_str()
                .and_then(|t| t.strip_prefix("building ws-derived:"))
                .map(|t| t.split_whitespace().next().unwrap_or_default().to_string())
        })
        .expect("an image_building event names the build");
    let ours: Vec<_> = dangling
        .iter()
        .filter(|i| i.labels.get("io.workers-spawner.build") == Some(&build_id))
        .collect();
    assert!(
        ours.is_empty(),
        "dangling images from the failed build: {ours:?}"
    );
    assert_eq!(container_count(&d.prefix).await, 0);
}
