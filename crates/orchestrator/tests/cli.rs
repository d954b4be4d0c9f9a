//! Runs the real `orchestrator` binary: permission checks, usage errors,
//! configuration errors, and round trips against a tiny real HTTP server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

/// Runs the binary with exactly the given environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run orchestrator")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A request as seen by the test server.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &mut TcpStream) -> Seen {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header line");
        let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse().unwrap();
        }
        headers.push((k, v));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    Seen {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

/// Serves exactly one request with the given status and body; returns the
/// base URL and a receiver for the request it saw.
fn serve_once(status: u16, body: &str) -> (String, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let body = body.to_owned();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let seen = read_request(&mut stream);
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(resp.as_bytes()).unwrap();
        stream.flush().unwrap();
        let _ = tx.send(seen);
    });
    (base, rx)
}

fn full_env<'a>(base: &'a str, allowed: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("ORCHESTRATOR_ALLOWED_TOOLS", allowed),
        ("ORCHESTRATOR_API_URL", base),
        ("ORCHESTRATOR_API_KEY", "sk-test-123"),
        ("ORCHESTRATOR_USER_ID", "user_1"),
        ("ORCHESTRATOR_REQUEST_ID", "req_123"),
    ]
}

const DENIED_ADMIN: &str = "Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS";

// --- local checks ---

#[test]
fn group_not_allowed_is_denied_with_77() {
    let o = run(
        &["admin", "workers"],
        &[
            ("ORCHESTRATOR_ALLOWED_TOOLS", "project,respond"),
            ("ORCHESTRATOR_API_URL", "http://127.0.0.1:9"),
            ("ORCHESTRATOR_API_KEY", "k"),
        ],
    );
    assert_eq!(o.status.code(), Some(77));
    assert_eq!(stderr(&o).trim_end(), DENIED_ADMIN);
    assert_eq!(stdout(&o), "");
}

#[test]
fn denied_even_with_bad_sub_arguments() {
    // the permission check comes before argument validation
    let o = run(
        &["admin", "nuke", "--everything"],
        &[("ORCHESTRATOR_ALLOWED_TOOLS", "project")],
    );
    assert_eq!(o.status.code(), Some(77));
    assert_eq!(stderr(&o).trim_end(), DENIED_ADMIN);
}

#[test]
fn empty_or_missing_list_allows_nothing() {
    for env in [
        &[][..],
        &[("ORCHESTRATOR_ALLOWED_TOOLS", "")][..],
        &[("ORCHESTRATOR_ALLOWED_TOOLS", " , ")][..],
    ] {
        let o = run(&["respond", "hello"], env);
        assert_eq!(o.status.code(), Some(77), "{env:?}");
        assert_eq!(
            stderr(&o).trim_end(),
            "Permission denied: respond is not in ORCHESTRATOR_ALLOWED_TOOLS"
        );
    }
}

#[test]
fn denied_with_json_prints_error_object() {
    let o = run(
        &["--json", "admin", "workers"],
        &[("ORCHESTRATOR_ALLOWED_TOOLS", "project, respond")],
    );
    assert_eq!(o.status.code(), Some(77));
    assert_eq!(stderr(&o).trim_end(), DENIED_ADMIN);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        v,
        json!({"ok": false, "error": {"code": "permission_denied", "message": DENIED_ADMIN}})
    );
}

#[test]
fn unknown_group_is_usage_error() {
    let o = run(
        &["nuke", "everything"],
        &[("ORCHESTRATOR_ALLOWED_TOOLS", "project")],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).to_lowercase().contains("usage"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_sub_arguments_of_allowed_group_are_usage_errors() {
    let env = [("ORCHESTRATOR_ALLOWED_TOOLS", "infra,engineering,respond")];
    for args in [
        &["infra", "allocate", "--project", "p", "--kind", "gpu"][..],
        &["engineering", "trigger", "proj_42"],
        &["respond"],
        &["respond", "two", "words"],
    ] {
        let o = run(args, &env);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn no_args_and_help() {
    let o = run(&[], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Usage"), "{}", stderr(&o));
    let o = run(
        &["--help"],
        &[("ORCHESTRATOR_ALLOWED_TOOLS", "project,respond")],
    );
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("respond"));
    // groups that are not allowed are not advertised
    assert!(!stdout(&o).contains("admin"), "{}", stdout(&o));
}

#[test]
fn missing_url_or_key_is_69() {
    let o = run(
        &["project", "list"],
        &[
            ("ORCHESTRATOR_ALLOWED_TOOLS", "project"),
            ("ORCHESTRATOR_API_KEY", "k"),
        ],
    );
    assert_eq!(o.status.code(), Some(69));
    assert!(
        stderr(&o).contains("ORCHESTRATOR_API_URL"),
        "{}",
        stderr(&o)
    );

    let o = run(
        &["--json", "project", "list"],
        &[
            ("ORCHESTRATOR_ALLOWED_TOOLS", "project"),
            ("ORCHESTRATOR_API_URL", "http://127.0.0.1:9"),
        ],
    );
    assert_eq!(o.status.code(), Some(69));
    assert!(
        stderr(&o).contains("ORCHESTRATOR_API_KEY"),
        "{}",
        stderr(&o)
    );
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["ok"], false);
}

// --- round trips ---

#[test]
fn success_round_trip_json() {
    let reply = r#"{"ok":true,"data":{"deploy":{"id":"dep_7f3a","project_id":"proj_42","env":"production","status":"queued"}}}"#;
    let (base, rx) = serve_once(200, reply);
    let o = run(
        &[
            "--json",
            "deploy",
            "trigger",
            "proj_42",
            "--env",
            "production",
        ],
        &full_env(&base, "project, deploy"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v, serde_json::from_str::<Value>(reply).unwrap());

    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/v1/tools/deploy/trigger");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(seen.header("x-orchestrator-user"), Some("user_1"));
    assert_eq!(seen.header("x-orchestrator-request"), Some("req_123"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(
        seen.body,
        json!({"args": {"project_id": "proj_42", "env": "production"}})
    );
}

#[test]
fn success_round_trip_human_respond() {
    let (base, rx) = serve_once(
        200,
        r#"{"ok":true,"data":{"delivered":true,"message_id":"m1"}}"#,
    );
    let base = format!("{base}/");
    let env = [
        ("ORCHESTRATOR_ALLOWED_TOOLS", "respond"),
        ("ORCHESTRATOR_API_URL", base.as_str()),
        ("ORCHESTRATOR_API_KEY", "k"),
    ];
    let o = run(&["respond", "Done: all 3 items completed."], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "sent\n");
    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seen.path, "/v1/tools/respond/send");
    assert_eq!(seen.header("x-orchestrator-user"), None);
    assert_eq!(seen.header("x-orchestrator-request"), None);
    assert_eq!(
        seen.body,
        json!({"args": {"message": "Done: all 3 items completed."}})
    );
}

#[test]
fn human_list_output() {
    let (base, _rx) = serve_once(
        200,
        r#"{"ok":true,"data":{"projects":[{"id":"proj_42","name":"billing-api"},{"id":"proj_7","name":"landing"}]}}"#,
    );
    let o = run(&["project", "list"], &full_env(&base, "project"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "id       name\nproj_42  billing-api\nproj_7   landing\n"
    );
}

#[test]
fn gateway_403_is_77() {
    let (base, rx) = serve_once(
        403,
        r#"{"ok":false,"error":{"code":"permission_denied","message":"Permission denied: admin is not in ORCHESTRATOR_ALLOWED_TOOLS"}}"#,
    );
    // allowed locally, refused by the gateway
    let o = run(
        &["--json", "admin", "cancel", "req_9"],
        &full_env(&base, "admin"),
    );
    assert_eq!(o.status.code(), Some(77));
    assert_eq!(stderr(&o).trim_end(), DENIED_ADMIN);
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "permission_denied");
    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seen.path, "/v1/tools/admin/cancel");
    assert_eq!(seen.body, json!({"args": {"request_id": "req_9"}}));
}

#[test]
fn gateway_500_is_69() {
    let (base, _rx) = serve_once(
        500,
        r#"{"ok":false,"error":{"code":"internal","message":"boom"}}"#,
    );
    let o = run(&["project", "list"], &full_env(&base, "project"));
    assert_eq!(o.status.code(), Some(69));
    assert!(stderr(&o).contains("backend unavailable"), "{}", stderr(&o));
    assert!(stderr(&o).contains("boom"), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
}

#[test]
fn gateway_404_is_1() {
    let err = r#"{"ok":false,"error":{"code":"not_found","message":"project proj_404 not found"}}"#;
    let (base, rx) = serve_once(404, err);
    let o = run(
        &["--json", "project", "get", "proj_404"],
        &full_env(&base, "project"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("project proj_404 not found"),
        "{}",
        stderr(&o)
    );
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v, serde_json::from_str::<Value>(err).unwrap());
    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seen.body, json!({"args": {"project_id": "proj_404"}}));
}

#[test]
fn gateway_401_is_1() {
    let (base, _rx) = serve_once(
        401,
        r#"{"ok":false,"error":{"code":"unauthenticated","message":"invalid api key"}}"#,
    );
    let o = run(&["infra", "list"], &full_env(&base, "infra"));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim_end(),
        "authentication failed: invalid api key"
    );
}

#[test]
fn connection_refused_is_69() {
    // bind then drop to get a port nobody listens on
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let o = run(&["--json", "project", "list"], &full_env(&base, "project"));
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(stderr(&o).contains("backend unavailable"), "{}", stderr(&o));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "backend_unavailable");
}
