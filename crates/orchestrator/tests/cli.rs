//! Runs the real `orchestrator` binary: permission checks, usage errors,
//! configuration errors, and round trips against a tiny real HTTP server.
//! The tool catalog (`ORCHESTRATOR_TOOLS_FILE`) is built from the shipped
//! `skills/*.json` unless a test writes its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");
const SKILLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../skills/");
const GROUPS: [&str; 6] = [
    "project",
    "deploy",
    "engineering",
    "infra",
    "respond",
    "admin",
];

/// Writes `text` to a new file in the test scratch directory.
fn temp_file(name: &str, text: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "orchestrator-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The tool catalog of the six shipped groups (`known` from them too).
fn shipped_catalog() -> Value {
    let groups: Vec<Value> = GROUPS
        .iter()
        .map(|g| {
            let path = format!("{SKILLS}{g}.json");
            let text = std::fs::read_to_string(&path).expect(&path);
            serde_json::from_str(&text).expect(&path)
        })
        .collect();
    let known: serde_json::Map<String, Value> = groups
        .iter()
        .map(|g| {
            let actions: Vec<Value> = g["actions"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| json!(k))
                .collect();
            (
                g["name"].as_str().unwrap().to_owned(),
                Value::Array(actions),
            )
        })
        .collect();
    json!({ "groups": groups, "known": known })
}

/// The path of the shipped tool catalog file (written once).
fn shipped_tools_file() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        temp_file("tools.json", &shipped_catalog().to_string())
            .to_string_lossy()
            .into_owned()
    })
}

/// Runs the binary with exactly the given environment.
fn run_raw(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run orchestrator")
}

/// Runs the binary with the given environment and the shipped tool catalog.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut env = env.to_vec();
    env.push(("ORCHESTRATOR_TOOLS_FILE", shipped_tools_file()));
    run_raw(args, &env)
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

// --- per-action permissions ---

const DENIED_TRIGGER: &str =
    "Permission denied: deploy trigger is not allowed (allowed: deploy status, deploy logs)";

#[test]
fn allowed_action_of_a_partly_allowed_group_is_called() {
    let (base, rx) = serve_once(200, r#"{"ok":true,"data":{"deploy":{"id":"x"}}}"#);
    let o = run(
        &["deploy", "status", "x"],
        &full_env(&base, "deploy:status,deploy:logs"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "id: x\n");
    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seen.path, "/v1/tools/deploy/status");
    assert_eq!(seen.body, json!({"args": {"deploy_id": "x"}}));
}

#[test]
fn action_not_allowed_is_denied_without_a_call() {
    let (base, rx) = serve_once(200, r#"{"ok":true,"data":{}}"#);
    for args in [
        &["deploy", "trigger", "x"][..],
        &["deploy", "trigger", "--bogus"],
        &["deploy", "trigger"],
    ] {
        let o = run(args, &full_env(&base, "deploy:status,deploy:logs"));
        assert_eq!(o.status.code(), Some(77), "{args:?}");
        assert_eq!(stderr(&o).trim_end(), DENIED_TRIGGER);
        assert_eq!(stdout(&o), "");
    }
    let o = run(
        &["--json", "deploy", "trigger", "x"],
        &full_env(&base, "deploy:status,deploy:logs"),
    );
    assert_eq!(o.status.code(), Some(77));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        v,
        json!({"ok": false, "error": {"code": "permission_denied", "message": DENIED_TRIGGER}})
    );
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    // an action the catalog does not know is a usage error
    let o = run(&["deploy", "nuke"], &full_env(&base, "deploy:status"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn help_of_a_partly_allowed_group_lists_its_allowed_actions() {
    let o = run(
        &["deploy", "--help"],
        &[("ORCHESTRATOR_ALLOWED_TOOLS", "deploy:status,deploy:logs")],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let h = stdout(&o);
    assert!(h.contains("status") && h.contains("logs"), "{h}");
    assert!(!h.contains("trigger"), "{h}");
    let o = run(
        &["--help"],
        &[("ORCHESTRATOR_ALLOWED_TOOLS", "deploy:logs")],
    );
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("deploy"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("project"), "{}", stdout(&o));
}

// --- groups from the catalog file ---

#[test]
fn a_new_group_from_the_tools_file_reaches_the_gateway() {
    let catalog = json!({"groups": [{
        "name": "review",
        "description": "Code reviews.",
        "upstream_url": "http://ignored",
        "actions": {"submit": {
            "help": "Submit a change for review.",
            "args": [
                {"name": "change_id", "positional": true, "required": true},
                {"name": "max_comments", "type": "integer", "value_name": "n"},
                {"name": "urgent", "type": "boolean"},
                {"name": "level", "type": "enum", "values": ["light", "deep"], "default": "light"}
            ]
        }}
    }], "known": {"review": ["submit", "approve"]}});
    let file = temp_file("tools.json", &catalog.to_string());
    let file = file.to_str().unwrap();
    let (base, rx) = serve_once(200, r#"{"ok":true,"data":{"review":{"id":"rv_1"}}}"#);
    let mut env = full_env(&base, "review");
    env.push(("ORCHESTRATOR_TOOLS_FILE", file));
    let o = run_raw(
        &[
            "--json",
            "review",
            "submit",
            "chg_9",
            "--max-comments",
            "12",
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seen.path, "/v1/tools/review/submit");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(
        seen.body,
        json!({"args": {"change_id": "chg_9", "max_comments": 12, "level": "light"}})
    );
    let o = run_raw(
        &["review", "submit", "chg_9", "--max-comments", "many"],
        &env,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // known to the daemon, not written to the file
    let o = run_raw(&["review", "approve", "chg_9"], &env);
    assert_eq!(o.status.code(), Some(77), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        "Permission denied: review approve is not allowed (allowed: review submit)"
    );
    // the shipped groups are not compiled in
    let o = run_raw(&["project", "list"], &env);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn missing_or_invalid_tools_file_is_69() {
    let missing = temp_file("unused", "")
        .with_file_name("missing.json")
        .to_string_lossy()
        .into_owned();
    let not_json = temp_file("tools.json", "{ not json");
    let no_groups = temp_file("tools.json", r#"{"known": {}}"#);
    for (path, what) in [
        (missing.as_str(), "cannot read"),
        (not_json.to_str().unwrap(), "not valid JSON"),
        (no_groups.to_str().unwrap(), "no groups list"),
    ] {
        let env = [
            ("ORCHESTRATOR_ALLOWED_TOOLS", "project"),
            ("ORCHESTRATOR_TOOLS_FILE", path),
        ];
        let o = run_raw(&["project", "list"], &env);
        assert_eq!(o.status.code(), Some(69), "{path}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(path) && err.contains(what), "{err}");
        assert_eq!(stdout(&o), "");
        let o = run_raw(&["--json", "project", "list"], &env);
        assert_eq!(o.status.code(), Some(69));
        let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(v["error"]["code"], "not_configured");
    }
    // the default path is used without ORCHESTRATOR_TOOLS_FILE
    let o = run_raw(
        &["project", "list"],
        &[("ORCHESTRATOR_ALLOWED_TOOLS", "project")],
    );
    assert_eq!(o.status.code(), Some(69));
    assert!(
        stderr(&o).contains("/home/worker/.orchestrator/tools.json"),
        "{}",
        stderr(&o)
    );
}

/// A worker of a daemon that delivers no tool catalog (before #17) on an
/// image with this CLI: `respond`, the gateway's own group, still works;
/// every other group says the catalog is missing.
#[test]
fn without_a_catalog_only_respond_works() {
    let (base, rx) = serve_once(200, r#"{"ok":true,"data":{"delivered":true}}"#);
    let env = full_env(&base, "project,respond");
    let o = run_raw(&["respond", "done, see the branch"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(seen.path, "/v1/tools/respond/send");
    assert_eq!(
        seen.body,
        json!({"args": {"message": "done, see the branch"}})
    );
    let o = run_raw(&["project", "list"], &env);
    assert_eq!(o.status.code(), Some(69));
    assert!(stderr(&o).contains("tool catalog"), "{}", stderr(&o));
    // A catalog named but missing is an error for respond too.
    let mut named = env.clone();
    named.push(("ORCHESTRATOR_TOOLS_FILE", "/nonexistent/tools.json"));
    assert_eq!(run_raw(&["respond", "x"], &named).status.code(), Some(69));
}
