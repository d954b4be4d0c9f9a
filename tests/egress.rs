//! Egress through the daemon (docs/security.md, "Egress"): workers on the
//! socket path have network `none`, and their only way out is their own
//! unix socket, reached through the shim's forwarder on their loopback.
//! Real engine, real sockets, local servers only: names like
//! `allowed.test` are pinned to 127.0.0.1 by `egress_resolve`.
//!
//! The workers run the images' own busybox (`wget`, `nc`), and the presets
//! are written as an admin would write them.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A preset as an admin writes it.
fn preset(id: &str, image: &str, extra: Value) -> Value {
    let mut p = json!({
        "id": id,
        "name": format!("{id} (egress)"),
        "image": image,
        "agent": {"type": "claude-code", "command": ["sh", "-c", "{prompt}"], "conversation": false},
        "allowed_tools": ["respond"],
        "has_internet": false,
        "limits": {"cpu": 1.0, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600, "pids": 256}
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

fn request(rid: &str, preset: &str, script: &str) -> Value {
    json!({"request_id": rid, "worker_config_id": preset, "task": {"prompt": script, "user_id": "egress-user"}})
}

/// A daemon with `presets` and the TOML settings `toml` (a config file,
/// as an operator writes it).
fn daemon(name: &str, presets: &[(&str, Value)], toml: &str) -> (Daemon, tempfile::TempDir) {
    let (opts, dir) = opts(name, presets, toml);
    (Daemon::start(opts), dir)
}

/// The options of [`daemon`]; the folder holds `presets/` and the settings.
fn opts(name: &str, presets: &[(&str, Value)], toml: &str) -> (DaemonOpts, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("settings.toml");
    std::fs::write(&cfg, toml).unwrap();
    let presets_dir = dir.path().join("presets");
    std::fs::create_dir_all(&presets_dir).unwrap();
    for (id, v) in presets {
        write_preset(&presets_dir, id, v);
    }
    let o = DaemonOpts::new(name)
        .presets_dir(&presets_dir)
        .env("WORKERS_SPAWNER_CONFIG", cfg.to_str().unwrap())
        .env("WS_TEST_MODEL_KEY", MODEL_KEY);
    (o, dir)
}

const MODEL_KEY: &str = "sk-ant-REAL-model-key-5f3c9e1d7b";

/// A plain HTTP server on 127.0.0.1 answering every request with `body`;
/// records each request's head.
fn http_server(body: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || {
                let head = read_head(&mut c);
                s.lock().unwrap().push(head);
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (port, seen)
}

fn read_head(c: &mut std::net::TcpStream) -> String {
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(1) => buf.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A server on 127.0.0.1 that writes `greeting` to each connection and then
/// holds it open, whatever the client does; its port.
fn holding_server(greeting: &'static [u8]) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = c.write_all(greeting);
                std::thread::sleep(Duration::from_secs(120));
            });
        }
    });
    port
}

/// A model API stand-in: records each request's head and answers with an
/// event stream of two chunks, `gap` apart.
fn model_upstream(gap: Duration) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || {
                let head = read_head(&mut c);
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                let _ = c.read_exact(&mut body);
                s.lock()
                    .unwrap()
                    .push(format!("{head}{}", String::from_utf8_lossy(&body)));
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                for (i, chunk) in ["data: first-chunk\n\n", "data: second-chunk\n\n"]
                    .iter()
                    .enumerate()
                {
                    if i > 0 {
                        std::thread::sleep(gap);
                    }
                    let _ = write!(c, "{:x}\r\n{chunk}\r\n", chunk.len());
                    let _ = c.flush();
                }
                let _ = write!(c, "0\r\n\r\n");
            });
        }
    });
    (port, seen)
}

async fn output_of(prefix: &str, rid: &str) -> String {
    output_lines(&events_for(prefix, rid).await, "stdout").join("\n")
}

async fn wait_output(prefix: &str, rid: &str, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let out = output_of(prefix, rid).await;
        if out.contains(needle) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the output:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn inspect(prefix: &str, rid: &str) -> bollard::models::ContainerInspectResponse {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let name = containers(prefix)
            .await
            .iter()
            .find(|c| {
                c.labels
                    .as_ref()
                    .and_then(|l| l.get("io.workers-spawner.request-id"))
                    .map(String::as_str)
                    == Some(rid)
            })
            .map(summary_name);
        if let Some(n) = name {
            if let Ok(c) = docker()
                .await
                .inspect_container(
                    &n,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "no container for {rid}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn egress_events(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"] == "egress")
        .map(|e| e["data"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_tools_and_no_internet_has_only_lo_and_reaches_only_the_gateway() {
    // The stock image: nothing of ours in it but what preparation adds.
    let p = preset("offline_tools_v1", "ws-test-stock:latest", json!({}));
    let (d, _dir) = daemon("egress-offline", &[("offline_tools_v1", p)], "");
    let rid = unique_request_id("offline");
    let script = r#"
echo "ifaces=$(ls /sys/class/net | tr '\n' ' ')"
echo "respond=$(wget -qO- --post-data '{"args":{"message":"hello through the socket"}}' --header "Authorization: Bearer $ORCHESTRATOR_API_KEY" "$ORCHESTRATOR_API_URL/v1/tools/respond/send")"
wget -qO- -T 3 http://172.17.0.1:80/ >/dev/null 2>&1; echo "bridge=$?"
wget -qO- -T 3 http://1.1.1.1/ >/dev/null 2>&1; echo "outside=$?"
nc -w 2 172.17.0.1 22 </dev/null >/dev/null 2>&1; echo "raw=$?"
echo "proxy=${HTTPS_PROXY:-none}"
echo "connect=$( (printf 'CONNECT allowed.test:443 HTTP/1.1\r\n\r\n'; sleep 1) | nc 127.0.0.1 4750 | head -n 1)"
echo probe-done
"#;
    publish_spawn(&d.prefix, &request(&rid, "offline_tools_v1", script)).await;
    let c = inspect(&d.prefix, &rid).await;
    let host = c.host_config.clone().unwrap();
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    let mounts = c.mounts.clone().unwrap_or_default();
    let m = mounts
        .iter()
        .find(|m| m.destination.as_deref() == Some("/.workers-spawner/egress"))
        .expect("the egress folder is mounted");
    assert_eq!(m.rw, Some(false), "{m:?}");
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = output_of(&d.prefix, &rid).await;
    assert!(out.contains("ifaces=lo "), "only lo: {out}");
    assert!(
        out.contains("respond={\"data\":{\"delivered\":true},\"ok\":true}"),
        "{out}"
    );
    for probe in ["bridge=0", "outside=0", "raw=0"] {
        assert!(!out.contains(probe), "{probe} reached: {out}");
    }
    assert!(out.contains("proxy=none"), "{out}");
    assert!(out.contains("connect=HTTP/1.1 403"), "{out}");
    let events = events_for(&d.prefix, &rid).await;
    assert!(events
        .iter()
        .any(|e| e["type"] == "respond" && e["data"]["message"] == "hello through the socket"));
    let egress = egress_events(&events);
    assert!(
        egress.iter().any(|e| e["allowed"] == false
            && e["host"] == "allowed.test"
            && e["reason"]
                .as_str()
                .unwrap_or("")
                .contains("no internet access")),
        "{egress:?}"
    );
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_route_gets_the_real_key_from_the_daemon_and_streams_back_chunk_by_chunk() {
    let (port, seen) = model_upstream(Duration::from_millis(1500));
    let p = preset(
        "model_v1",
        "ws-test-stock:latest",
        json!({"allowed_tools": [], "model_api": {"anthropic": {"key": {"from_env": "WS_TEST_MODEL_KEY"}}}}),
    );
    let toml = format!("[model_upstreams]\nanthropic = \"http://127.0.0.1:{port}\"\n");
    let (d, _dir) = daemon("egress-model", &[("model_v1", p)], &toml);
    let rid = unique_request_id("model");
    let script = r#"
echo "base=$ANTHROPIC_BASE_URL"
echo "placeholder=$ANTHROPIC_API_KEY"
wget -qO- --header "x-api-key: $ANTHROPIC_API_KEY" --header 'anthropic-version: 2023-06-01' --post-data '{"model":"m","stream":true}' "$ANTHROPIC_BASE_URL/v1/messages"
K=REAL-mod; K="${K}el-key"
echo "environ=$(cat /proc/*/environ 2>/dev/null | tr '\0' '\n' | grep -c "$K")"
echo "files=$(grep -rl "$K" /workspace /home /tmp /etc /.workers-spawner 2>/dev/null | wc -l)"
wget -qO- --header "x-api-key: not-my-placeholder" --post-data '{}' "$ANTHROPIC_BASE_URL/v1/messages" 2>&1; echo "wrongkey=$?"
wget -qO- --header "x-api-key: $ANTHROPIC_API_KEY" --post-data '{}' "http://127.0.0.1:4750/model/openai/v1/chat" 2>&1; echo "otherroute=$?"
echo probe-done
"#;
    publish_spawn(&d.prefix, &request(&rid, "model_v1", script)).await;
    let c = inspect(&d.prefix, &rid).await;
    let inspected = serde_json::to_string(&c).unwrap();
    assert!(
        !inspected.contains("REAL-model-key"),
        "docker inspect holds the key"
    );
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let events = events_for(&d.prefix, &rid).await;
    let out = output_of(&d.prefix, &rid).await;
    assert!(
        out.contains("base=http://127.0.0.1:4750/model/anthropic"),
        "{out}"
    );
    assert!(out.contains("placeholder=ws-placeholder-"), "{out}");
    assert!(out.contains("environ=0"), "{out}");
    assert!(out.contains("files=0"), "{out}");
    assert!(
        !out.contains("wrongkey=0") && !out.contains("otherroute=0"),
        "{out}"
    );
    // The upstream saw the real key, never the placeholder.
    let heads = seen.lock().unwrap().clone();
    assert_eq!(
        heads.len(),
        1,
        "only the worker's own call reached it: {heads:?}"
    );
    let h = heads[0].to_ascii_lowercase();
    assert!(h.starts_with("post /v1/messages "), "{h}");
    assert!(
        h.contains(&format!("x-api-key: {}", MODEL_KEY.to_ascii_lowercase())),
        "{h}"
    );
    assert!(!h.contains("ws-placeholder-"), "{h}");
    assert!(h.contains("anthropic-version: 2023-06-01"), "{h}");
    assert!(
        heads[0].ends_with("{\"model\":\"m\",\"stream\":true}"),
        "{h}"
    );
    // Chunk by chunk: the second arrives as an output line well after the
    // first (a buffered relay would deliver both at once).
    let at = |needle: &str| {
        events
            .iter()
            .find(|e| {
                e["type"] == "output"
                    && e["data"]["text"]
                        .as_str()
                        .is_some_and(|t| t.contains(needle))
            })
            .and_then(|e| e["ts"].as_str())
            .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
            .unwrap_or_else(|| panic!("no {needle} in {out}"))
    };
    let gap = at("second-chunk") - at("first-chunk");
    assert!(
        gap >= chrono::Duration::milliseconds(1000),
        "the stream was buffered: {gap:?}"
    );
    // Nothing the daemon published holds the key.
    let all = serde_json::to_string(&(events, r)).unwrap();
    assert!(!all.contains("REAL-model-key"));
    let model = egress_events(&events_for(&d.prefix, &rid).await);
    assert!(
        model
            .iter()
            .any(|e| e["kind"] == "model" && e["route"] == "anthropic" && e["status"] == 200),
        "{model:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_decides_by_name_and_refuses_the_daemons_host_and_metadata() {
    let (port, seen) = http_server("hello-through-proxy");
    let p = preset(
        "allowlist_v1",
        &test_image(),
        json!({"has_internet": true,
               "egress": {"allow": ["allowed.test", "*.wild.test", "localhost"]}}),
    );
    let toml = "[egress_resolve]\n\"allowed.test\" = \"127.0.0.1\"\n\"a.wild.test\" = \"127.0.0.1\"\n\"denied.test\" = \"127.0.0.1\"\n";
    let (d, _dir) = daemon("egress-allow", &[("allowlist_v1", p)], toml);
    let rid = unique_request_id("allow");
    let connect = |target: &str| {
        format!(
            "echo \"connect {target}=$( (printf 'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\nGET / HTTP/1.0\\r\\n\\r\\n'; sleep 1) | nc 127.0.0.1 4750 | tr -d '\\r' | tr '\\n' '|')\"\n"
        )
    };
    let mut script = String::new();
    script.push_str(&format!(
        "echo \"plain=$(wget -qO- http://allowed.test:{port}/x 2>&1)\"\n"
    ));
    script.push_str(&format!(
        "echo \"wild=$(wget -qO- http://a.wild.test:{port}/ 2>&1)\"\n"
    ));
    script.push_str(&format!(
        "echo \"denied=$(wget -qO- http://denied.test:{port}/ 2>&1)\"\n"
    ));
    // A Host header of the worker's own never picks another virtual host.
    script.push_str(&format!(
        "echo \"vhost=$( (printf 'GET http://allowed.test:{port}/vhost HTTP/1.1\\r\\nHost: internal.corp\\r\\nConnection: close\\r\\n\\r\\n'; sleep 1) | nc 127.0.0.1 4750 | tail -n 1)\"\n"
    ));
    for t in [
        format!("allowed.test:{port}"),
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "169.254.169.254:80".to_string(),
        format!("denied.test:{port}"),
    ] {
        script.push_str(&connect(&t));
    }
    script.push_str("echo probe-done\n");
    publish_spawn(&d.prefix, &request(&rid, "allowlist_v1", &script)).await;
    let c = inspect(&d.prefix, &rid).await;
    assert_eq!(
        c.host_config.unwrap().network_mode.as_deref(),
        Some("none"),
        "internet through the socket, not a bridge"
    );
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = output_of(&d.prefix, &rid).await;
    assert!(out.contains("plain=hello-through-proxy"), "{out}");
    assert!(out.contains("wild=hello-through-proxy"), "{out}");
    assert!(
        out.contains("denied=") && !out.contains("denied=hello"),
        "{out}"
    );
    let line = |t: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("connect {t}=")))
            .unwrap_or_else(|| panic!("no connect {t} in {out}"))
            .to_string()
    };
    let ok = line(&format!("allowed.test:{port}"));
    assert!(
        ok.contains("HTTP/1.1 200") && ok.contains("hello-through-proxy"),
        "{ok}"
    );
    for t in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "169.254.169.254:80".to_string(),
        format!("denied.test:{port}"),
    ] {
        let l = line(&t);
        assert!(l.contains("HTTP/1.1 403"), "{t}: {l}");
        assert!(!l.contains("hello-through-proxy"), "{t}: {l}");
    }
    assert!(
        line(&format!("localhost:{port}")).contains("loopback"),
        "{out}"
    );
    // The server saw the two plain requests (origin form, Host kept) and the tunnel.
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 4, "{heads:?}");
    let vhost = heads
        .iter()
        .find(|h| h.starts_with("GET /vhost "))
        .expect("the vhost request arrived")
        .to_ascii_lowercase();
    assert!(
        vhost.contains(&format!("host: allowed.test:{port}")),
        "{vhost}"
    );
    assert!(!vhost.contains("internal.corp"), "{vhost}");
    assert!(out.contains("vhost=hello-through-proxy"), "{out}");
    assert!(heads.iter().any(|h| h.starts_with("GET /x HTTP/1.1")
        && h.to_ascii_lowercase()
            .contains(&format!("host: allowed.test:{port}"))));
    let egress = egress_events(&events_for(&d.prefix, &rid).await);
    assert!(egress.iter().any(|e| e["kind"] == "tunnel"
        && e["allowed"] == true
        && e["bytes_down"].as_u64().unwrap_or(0) > 0));
    assert!(egress
        .iter()
        .any(|e| e["kind"] == "proxy" && e["host"] == "denied.test" && e["allowed"] == false));
    let metrics = http_get(&d.http_addr, "/metrics").unwrap().1;
    assert!(
        metrics.contains("workers_spawner_egress_total{decision=\"denied\",kind=\"tunnel\"}"),
        "{metrics}"
    );

    // An override only narrows the list.
    let wide = unique_request_id("widen");
    let mut req = request(&wide, "allowlist_v1", "true");
    req["worker_config_override"] = json!({"egress": {"allow": ["allowed.test", "evil.test"]}});
    publish_spawn(&d.prefix, &req).await;
    let r = wait_result(&d.prefix, &wide, TIMEOUT).await;
    assert_eq!(r["status"], "rejected", "{r:#}");
    assert_eq!(r["error"]["field"], "egress.allow", "{r:#}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("evil.test"),
        "{r:#}"
    );
    let narrow = unique_request_id("narrow");
    let mut req = request(
        &narrow,
        "allowlist_v1",
        &format!("wget -qO- http://a.wild.test:{port}/ 2>&1; echo \"narrow=$?\""),
    );
    req["worker_config_override"] = json!({"egress": {"allow": ["allowed.test"]}});
    publish_spawn(&d.prefix, &req).await;
    let r = wait_result(&d.prefix, &narrow, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = output_of(&d.prefix, &narrow).await;
    assert!(
        out.contains("narrow=") && !out.contains("narrow=0"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_serves_the_same_container_again_after_its_tunnel_closed() {
    // The tunnel stays up until the daemon goes.
    let port = holding_server(b"tunnel-greeting\n");
    let p = preset(
        "restart_v1",
        &test_image(),
        json!({"has_internet": true, "egress": {"allow": ["allowed.test"]}}),
    );
    let toml = "[egress_resolve]\n\"allowed.test\" = \"127.0.0.1\"\n";
    let (base, _dir) = opts("egress-restart", &[("restart_v1", p)], toml);
    let opts = |prefix: Option<&str>, instance: Option<&str>| {
        let mut o = base.clone();
        if let Some(p) = prefix {
            o = o.prefix(p);
        }
        if let Some(i) = instance {
            o = o.instance_id(i);
        }
        o
    };
    let mut d = Daemon::start(opts(None, None));
    let rid = unique_request_id("restart");
    let script = format!(
        r#"
printf 'CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n' | nc 127.0.0.1 4750 | while read -r line; do echo "tunnel: $line"; done
echo tunnel-closed
i=0
until [ "$(wget -Y off -qO- --post-data '{{"args":{{"message":"served again"}}}}' --header "Authorization: Bearer $ORCHESTRATOR_API_KEY" "$ORCHESTRATOR_API_URL/v1/tools/respond/send" 2>/dev/null)" ]; do
  i=$((i+1)); [ $i -gt 200 ] && exit 3; sleep 0.2
done
echo served-again
"#
    );
    publish_spawn(&d.prefix, &request(&rid, "restart_v1", &script)).await;
    wait_output(&d.prefix, &rid, "tunnel-greeting").await;
    let (prefix, instance) = (d.prefix.clone(), d.instance_id.clone());
    d.cleanup_on_drop = false;
    d.kill();
    let d2 = Daemon::start(opts(Some(&prefix), Some(&instance)));
    let r = wait_result(&d2.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    // The result's output: lines printed while no daemon ran reach it
    // through the tail the adopter reads at the end.
    let out = r["output"].as_str().unwrap_or_default().to_string();
    assert!(
        out.contains("tunnel-closed"),
        "the worker saw its tunnel close: {out}"
    );
    assert!(out.contains("served-again"), "{out}");
    let events = events_for(&d2.prefix, &rid).await;
    assert!(events
        .iter()
        .any(|e| e["type"] == "respond" && e["data"]["message"] == "served again"));
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_worker_is_capped_and_no_worker_uses_anothers_key_or_route() {
    let (port, _seen) = model_upstream(Duration::from_millis(1));
    let with_route = preset(
        "routed_v1",
        &test_image(),
        json!({"model_api": {"anthropic": {"key": {"from_env": "WS_TEST_MODEL_KEY"}}}}),
    );
    let plain = preset("plain_v1", &test_image(), json!({}));
    let toml = format!(
        "egress_max_connections = 8\n[model_upstreams]\nanthropic = \"http://127.0.0.1:{port}\"\n"
    );
    let (d, _dir) = daemon(
        "egress-hostile",
        &[("routed_v1", with_route), ("plain_v1", plain)],
        &toml,
    );
    // Worker A holds a route and a key, and waits.
    let a = unique_request_id("holder");
    publish_spawn(
        &d.prefix,
        &request(&a, "routed_v1", "echo holder-up; sleep 60"),
    )
    .await;
    wait_output(&d.prefix, &a, "holder-up").await;
    let ca = inspect(&d.prefix, &a).await;
    let env_of = |c: &bollard::models::ContainerInspectResponse, k: &str| {
        c.config
            .as_ref()
            .and_then(|c| c.env.clone())
            .unwrap_or_default()
            .iter()
            .find_map(|e| e.strip_prefix(&format!("{k}=")).map(str::to_string))
            .unwrap_or_default()
    };
    let (a_key, a_placeholder) = (
        env_of(&ca, "ORCHESTRATOR_API_KEY"),
        env_of(&ca, "ANTHROPIC_API_KEY"),
    );
    assert!(a_key.starts_with("wsk_") && a_placeholder.starts_with("ws-placeholder-"));
    // Worker B, knowing both, gets nothing with them; then floods.
    let b = unique_request_id("flood");
    let script = format!(
        r#"
echo "akey=$(wget -qO- --post-data '{{"args":{{"message":"stolen"}}}}' --header "Authorization: Bearer {a_key}" "$ORCHESTRATOR_API_URL/v1/tools/respond/send" 2>&1)"
echo "aroute=$(wget -qO- --header "x-api-key: {a_placeholder}" --post-data '{{}}' "http://127.0.0.1:4750/model/anthropic/v1/messages" 2>&1)"
for i in $(seq 1 40); do ( (printf 'GET / HTTP/1.1\r\nHost: x\r\n'; sleep 8) | nc 127.0.0.1 4750 >/dev/null 2>&1 & ); done
sleep 2
echo probe-done
"#
    );
    publish_spawn(&d.prefix, &request(&b, "plain_v1", &script)).await;
    let r = wait_result(&d.prefix, &b, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = output_of(&d.prefix, &b).await;
    assert!(out.contains("akey=") && out.contains("403"), "{out}");
    assert!(!out.contains("stolen"), "{out}");
    assert!(!out.contains("first-chunk"), "B used A's route: {out}");
    let events = events_for(&d.prefix, &b).await;
    assert!(!events
        .iter()
        .any(|e| e["type"] == "respond" && e["data"]["message"] == "stolen"));
    let capped = egress_events(&events);
    assert!(
        capped
            .iter()
            .any(|e| e["kind"] == "connection" && e["allowed"] == false),
        "{capped:?}"
    );
    let metrics = http_get(&d.http_addr, "/metrics").unwrap().1;
    assert!(
        metrics
            .contains("workers_spawner_egress_total{decision=\"over_limit\",kind=\"connection\"}"),
        "{metrics}"
    );
    publish_control(&d.prefix, &json!({"command": "cancel", "request_id": a})).await;
    wait_result(&d.prefix, &a, TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_count_against_the_connection_cap() {
    let port = holding_server(b"");
    let p = preset(
        "tunnels_v1",
        &test_image(),
        json!({"has_internet": true, "egress": {"allow": ["allowed.test"]}}),
    );
    let toml = "egress_max_connections = 4\n[egress_resolve]\n\"allowed.test\" = \"127.0.0.1\"\n";
    let (d, _dir) = daemon("egress-tunnels", &[("tunnels_v1", p)], toml);
    let rid = unique_request_id("tunnels");
    // Eight tunnels, one after the other, each kept open: once four hold
    // their slots, the rest are refused at the socket.
    let script = format!(
        r#"
for i in 1 2 3 4 5 6 7 8; do
  ( (printf 'CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n'; sleep 8) | nc 127.0.0.1 4750 | head -n 1 | sed "s/^/tunnel $i: /" ) &
  sleep 0.3
done
sleep 3
echo probe-done
"#
    );
    publish_spawn(&d.prefix, &request(&rid, "tunnels_v1", &script)).await;
    let r = wait_result(&d.prefix, &rid, TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = r["output"].as_str().unwrap_or_default().to_string();
    let opened = out.matches("HTTP/1.1 200").count();
    assert_eq!(opened, 4, "four tunnels, the cap: {out}");
    let events = egress_events(&events_for(&d.prefix, &rid).await);
    let refused = events
        .iter()
        .filter(|e| e["kind"] == "connection" && e["allowed"] == false)
        .count();
    assert_eq!(refused, 4, "{events:?}");
}
