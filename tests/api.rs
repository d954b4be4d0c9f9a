//! The HTTP API (docs/api.md) against the real daemon, Redis and engine:
//! every route; SSE that resumes with `Last-Event-ID` after a dropped
//! connection with no gap and no duplicate; an idempotent POST; 400 naming
//! the field a rejected result would; 401/403 per role and 429 past the
//! rate; no tokens means loopback only.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);

/// One HTTP/1.0 exchange (the server closes, no chunking): status, body.
fn call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let v = serde_json::from_slice(&buf[end + 4..]).unwrap_or(Value::Null);
    (status, v)
}

/// An SSE event as read off the wire.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: String,
}

/// Opens `/v1/requests/{rid}/events` and reads events until `stop` says so
/// (or the server ends the stream); drops the connection then.
fn follow(
    addr: &str,
    rid: &str,
    token: &str,
    last: Option<u64>,
    stop: impl Fn(&[Sse]) -> bool,
) -> Vec<Sse> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let resume = last
        .map(|l| format!("Last-Event-ID: {l}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /v1/requests/{rid}/events HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n{resume}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // Headers.
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut out = Vec::new();
    let mut cur = Sse {
        id: None,
        event: String::new(),
        data: String::new(),
    };
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if !cur.event.is_empty() || !cur.data.is_empty() {
                out.push(cur.clone());
                if stop(&out) {
                    break;
                }
            }
            cur = Sse {
                id: None,
                event: String::new(),
                data: String::new(),
            };
        } else if let Some(v) = l.strip_prefix("id:") {
            cur.id = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("event:") {
            cur.event = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            cur.data.push_str(v.trim_start());
        }
    }
    out
}

fn tokens() -> [(String, String); 3] {
    [
        (
            "WS_API_ADMIN".into(),
            format!("admin-token-{}", random_suffix()),
        ),
        (
            "WS_API_READ".into(),
            format!("read-token-{}-x", random_suffix()),
        ),
        (
            "WS_API_SUBMIT".into(),
            format!("submit-token-{}", random_suffix()),
        ),
    ]
}

fn with_tokens(opts: DaemonOpts, t: &[(String, String); 3]) -> DaemonOpts {
    opts.setting(
        "api_tokens",
        r#"[{name="admin",role="admin",token={from_env="WS_API_ADMIN"}},{name="reader",role="read",token={from_env="WS_API_READ"}},{name="submitter",role="submit",token={from_env="WS_API_SUBMIT"}}]"#,
    )
    .env(&t[0].0, &t[0].1)
    .env(&t[1].0, &t[1].1)
    .env(&t[2].0, &t[2].1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_with_roles_idempotence_and_the_rejections_fields() {
    let t = tokens();
    let d = Daemon::start(with_tokens(DaemonOpts::new("api-routes"), &t));
    let (admin, read, submit) = (t[0].1.as_str(), t[1].1.as_str(), t[2].1.as_str());
    let a = d.api_addr.clone();
    // Auth.
    assert_eq!(call(&a, "GET", "/v1/workers", None, None).0, 401);
    let (s, v) = call(&a, "GET", "/v1/workers", Some("wrong-token-xxxxxxxx"), None);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let rid = unique_request_id("api");
    let body = json!({"request_id": rid, "worker_config_id": "echo_v1", "task": {"prompt": "over http", "user_id": "u1"}}).to_string();
    let (s, v) = call(&a, "POST", "/v1/requests", Some(read), Some(&body));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    // Submit, twice: one publish.
    let (s, v) = call(&a, "POST", "/v1/requests", Some(submit), Some(&body));
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        (v["request_id"].as_str(), v["duplicate"].as_bool()),
        (Some(rid.as_str()), Some(false))
    );
    let (s, v) = call(&a, "POST", "/v1/requests", Some(submit), Some(&body));
    assert_eq!((s, v["duplicate"].as_bool()), (202, Some(true)));
    let r = wait_result(&d.prefix, &rid, LONG).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let spawned: Vec<Value> = stream_json(&streams(&d.prefix).spawn)
        .await
        .into_iter()
        .filter(|e| e["request_id"] == rid)
        .collect();
    assert_eq!(spawned.len(), 1, "published once");
    // State and result.
    let (s, v) = call(&a, "GET", &format!("/v1/requests/{rid}"), Some(read), None);
    assert_eq!((s, v["state"].as_str()), (200, Some("succeeded")), "{v}");
    assert_eq!(v["result"]["request_id"], rid.as_str());
    assert_eq!(
        call(&a, "GET", "/v1/requests/nope-unknown", Some(read), None).0,
        404
    );
    let (s, v) = call(&a, "GET", "/v1/requests?limit=5", Some(read), None);
    assert_eq!(s, 200);
    assert!(
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["request_id"] == rid.as_str()),
        "{v}"
    );
    // 400 with the field a rejected result carries.
    for (bad, code, field) in [
        (json!({"request_id": "x1", "worker_config_id": "nope", "task": {"prompt": "p"}}).to_string(), "unknown_preset", "worker_config_id"),
        (json!({"request_id": "x2", "worker_config_id": "echo_v1", "task": {}}).to_string(), "missing_field", "task.prompt"),
        ("{not json".to_string(), "invalid_json", "data"),
        (json!({"request_id": "x3", "worker_config_id": "echo_v1", "task": {"prompt": "p"}, "worker_config_override": {"limits": {"cpu": 64}}}).to_string(), "policy_violation", "limits.cpu"),
    ] {
        let (s, v) = call(&a, "POST", "/v1/requests", Some(submit), Some(&bad));
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], code, "{bad}: {v}");
        assert_eq!(v["error"]["field"], field, "{bad}: {v}");
    }
    // Presets, pools, workers, artifacts, the document and the page.
    let (s, v) = call(&a, "GET", "/v1/presets", Some(read), None);
    assert_eq!(s, 200);
    assert!(v["presets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == "echo_v1"));
    let (s, v) = call(&a, "GET", "/v1/presets/echo_v1", Some(read), None);
    assert_eq!(s, 200);
    assert_eq!(
        v["config"]["env"]["SECRET_TOKEN"]["from_env"],
        "WS_TEST_SECRET"
    );
    assert!(
        !v.to_string().contains("default-test-secret"),
        "no secret value"
    );
    assert_eq!(call(&a, "GET", "/v1/presets/nope", Some(read), None).0, 404);
    let (s, v) = call(&a, "GET", "/v1/pools", Some(read), None);
    assert_eq!((s, v["pools"].is_array()), (200, true));
    let (s, v) = call(&a, "GET", "/v1/workers", Some(read), None);
    assert_eq!((s, v["workers"].is_array()), (200, true));
    let (s, v) = call(&a, "GET", &format!("/v1/artifacts/{rid}"), Some(read), None);
    assert_eq!(s, 200, "{v}");
    assert!(v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == "transcript.log"));
    let (s, v) = call(&a, "GET", "/v1/openapi.json", None, None);
    assert_eq!(s, 200);
    assert_eq!(v["info"]["title"], "workers-spawner API");
    let mut page = TcpStream::connect(&a).unwrap();
    write!(page, "GET /ui HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut html = String::new();
    page.read_to_string(&mut html).unwrap();
    assert!(
        html.starts_with("HTTP/1.0 200") && html.contains("<html"),
        "{html}"
    );

    // Cancels: admin only. A sleeping worker, cancelled over HTTP.
    let rid = unique_request_id("apic");
    let body = json!({"request_id": rid, "worker_config_id": "shell_v1", "task": {"prompt": "sleep 60", "user_id": "u2"}}).to_string();
    assert_eq!(
        call(&a, "POST", "/v1/requests", Some(admin), Some(&body)).0,
        202
    );
    let deadline = Instant::now() + LONG;
    loop {
        let (_, v) = call(&a, "GET", "/v1/workers", Some(read), None);
        let mine = v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["request_id"] == rid.as_str())
            .cloned();
        if let Some(w) = mine.filter(|w| w["state"] == "running") {
            assert_eq!(w["user_id"], "u2", "{w}");
            assert_eq!(w["preset"], "shell_v1");
            assert!(w["created"].is_string() && w["deadline"].is_string(), "{w}");
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not show up: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, v) = call(&a, "GET", &format!("/v1/requests/{rid}"), Some(read), None);
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(
        call(
            &a,
            "POST",
            &format!("/v1/requests/{rid}/cancel"),
            Some(submit),
            None
        )
        .0,
        403
    );
    let (s, v) = call(
        &a,
        "POST",
        &format!("/v1/requests/{rid}/cancel"),
        Some(admin),
        None,
    );
    assert_eq!((s, v["cancel"].as_str()), (202, Some("published")));
    let r = wait_result(&d.prefix, &rid, LONG).await;
    assert_eq!(r["status"], "cancelled", "{r:#}");
    let (s, _) = call(&a, "POST", "/v1/sessions/s-none/cancel", Some(admin), None);
    assert_eq!(s, 202);
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_resumes_after_a_dropped_connection_with_no_gap_or_duplicate() {
    let t = tokens();
    let d = Daemon::start(with_tokens(DaemonOpts::new("api-sse"), &t));
    let read = t[1].1.clone();
    let a = d.api_addr.clone();
    let rid = unique_request_id("sse");
    // Output lines over a few seconds, so the drop falls mid-stream.
    let body = json!({"request_id": rid, "worker_config_id": "shell_v1", "task": {"prompt": "for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i; sleep 0.3; done"}}).to_string();
    assert_eq!(
        call(&a, "POST", "/v1/requests", Some(&t[2].1), Some(&body)).0,
        202
    );
    // First connection: until the third output line, then dropped.
    let (a2, rid2, read2) = (a.clone(), rid.clone(), read.clone());
    let first = tokio::task::spawn_blocking(move || {
        follow(&a2, &rid2, &read2, None, |evs| {
            evs.iter().filter(|e| e.event == "output").count() >= 3
        })
    })
    .await
    .unwrap();
    let last = first.last().and_then(|e| e.id).expect("ids on events");
    // Second: from Last-Event-ID to the end of the stream (the result).
    let (a2, rid2, read2) = (a.clone(), rid.clone(), read.clone());
    let second =
        tokio::task::spawn_blocking(move || follow(&a2, &rid2, &read2, Some(last), |_| false))
            .await
            .unwrap();
    assert_eq!(
        second.last().map(|e| e.event.as_str()),
        Some("result"),
        "{second:#?}"
    );
    let result: Value = serde_json::from_str(&second.last().unwrap().data).unwrap();
    assert_eq!(result["status"], "succeeded");
    let seqs: Vec<u64> = first.iter().chain(&second).filter_map(|e| e.id).collect();
    let all = events_for(&d.prefix, &rid).await;
    let want: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, want, "every event once, in order, across the drop");
    let lines: Vec<String> = first
        .iter()
        .chain(&second)
        .filter(|e| e.event == "output")
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["data"]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        lines,
        (1..=10).map(|i| format!("line-{i}")).collect::<Vec<_>>()
    );
    // A follower arriving after the end gets everything and the result.
    let (a2, rid2, read2) = (a.clone(), rid.clone(), read.clone());
    let late = tokio::task::spawn_blocking(move || follow(&a2, &rid2, &read2, None, |_| false))
        .await
        .unwrap();
    assert_eq!(late.iter().filter_map(|e| e.id).collect::<Vec<_>>(), want);
    assert_eq!(late.last().unwrap().event, "result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_past_its_rate_is_told_to_wait_and_an_open_api_stays_on_loopback() {
    let t = tokens();
    let d = Daemon::start(
        with_tokens(DaemonOpts::new("api-rate"), &t).setting("api_rate_per_minute", "5"),
    );
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(call(&d.api_addr, "GET", "/v1/pools", Some(&t[1].1), None).0);
    }
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert_eq!(statuses[6], 429, "{statuses:?}");
    // Another token has its own budget.
    assert_eq!(
        call(&d.api_addr, "GET", "/v1/pools", Some(&t[0].1), None).0,
        200
    );

    // No tokens and a non-loopback address: the daemon refuses to start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_workers-spawner"))
        .current_dir(repo_root())
        .args(["--redis-url", &redis_url(), "serve"])
        .env("WORKERS_SPAWNER_API_ADDR", "0.0.0.0:19092")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(said.contains("not a loopback address"), "{said}");
    // No tokens on loopback: open.
    let open = Daemon::start(DaemonOpts::new("api-open"));
    assert_eq!(
        call(&open.api_addr, "GET", "/v1/presets", None, None).0,
        200
    );
}
