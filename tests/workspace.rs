//! Git workspace in, reviewable change out (issue #20), against real git
//! servers (`git http-backend` with and without basic auth, `git daemon`,
//! `file://`), the real engine and the daemon's real HTTP port:
//!
//! - a worker's agent edits a file and commits, commits another, leaves a
//!   third uncommitted: the result has both commits, the patch applies on
//!   the base with `git apply`, `push: true` lands the branch with all three;
//! - a private repository: the clone uses the preset's credentials, which
//!   never reach the container (environment, files, `docker inspect`); a
//!   wrong credential is an `error` naming `workspace.repo`, not a hang;
//! - a stock image (no git, no user, no folders) still gets its checkout and
//!   its change read back;
//! - a 5 MiB transcript is complete in the store while `output` stays the
//!   tail; declared artifacts carry their sha256; links to `/etc` are
//!   refused by name; a glob escaping `/workspace` is refused at load;
//! - a daemon killed while the agent runs: the agent ends meanwhile, the
//!   restarted daemon reads the change from the stopped container and
//!   publishes one result with it;
//! - hostile URLs and branch names are refused, naming the field.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::git_server::{git_command, BareRepo, GitDaemon, GitHttpServer};
use common::*;
use serde_json::{json, Value};
use sha2::Digest;

const LONG: Duration = Duration::from_secs(120);

/// A preset an admin would write for a developer agent on a repository:
/// bash runs the prompt on the universal worker image (which has git).
fn dev_preset(id: &str, workspace: Value, artifacts: Value) -> Value {
    json!({
        "id": id,
        "name": "Developer on a repository",
        "image": "universal-worker-base:latest",
        "agent": { "type": "claude-code", "command": ["bash", "-c", "{prompt}"], "conversation": false },
        "allowed_tools": ["respond"],
        "has_internet": false,
        "workspace": workspace,
        "artifacts": artifacts,
        "limits": { "cpu": 1.0, "memory": "512m", "timeout_sec": 120, "ttl_sec": 600 }
    })
}

/// The agent of the main scenario: one edit committed, one new file
/// committed, one new file left uncommitted, and a report.
const AGENT: &str = r#"set -e
cd /workspace
test "$(git rev-parse --abbrev-ref HEAD)" = "ws/$ORCHESTRATOR_REQUEST_ID" || { echo "wrong branch: $(git rev-parse --abbrev-ref HEAD)"; exit 3; }
echo "edited by the agent" >> a.txt
git commit -qam "Edit a.txt"
echo "a new file" > b.txt
git add b.txt
git commit -qm "Add b.txt"
echo "left uncommitted" > c.txt
mkdir -p reports
echo "all good" > reports/summary.txt
git status --short
"#;

/// `GET url` on the daemon's HTTP port: status and body.
fn http_fetch(url: &str) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("an http URI");
    let (addr, path) = rest.split_once('/').expect("a path");
    http_get_bytes(addr, &format!("/{path}")).unwrap_or_else(|| panic!("GET {url} failed"))
}

fn http_get_bytes(addr: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf[head_end + 4..].to_vec()))
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn artifact<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no artifact {name} in {r:#}"))
}

/// Runs the main scenario against `url` and checks the change, the push
/// and the patch.
async fn edit_commit_leave(d: &Daemon, repo: &BareRepo, url: &str) {
    let rid = unique_request_id("ws");
    let branch = format!("ws/{rid}");
    let base = repo.rev("main").expect("main");
    let mut req = spawn_request(&rid, "dev_repo", AGENT);
    req["task"]["repo"] = json!({"url": url, "ref": "main"});
    publish_spawn(&d.prefix, &req).await;
    let r = wait_result(&d.prefix, &rid, LONG).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let w = &r["workspace"];
    assert_eq!(w["base"], base.as_str(), "{w:#}");
    assert_eq!(w["branch"], branch.as_str());
    let subjects: Vec<&str> = w["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["Edit a.txt", "Add b.txt"], "{w:#}");
    assert_eq!(w["uncommitted"], true);
    // a.txt, b.txt, c.txt, reports/summary.txt; never the daemon's CLAUDE.md.
    assert_eq!(w["files_changed"], 4, "{w:#}");
    assert_eq!(w["pushed"], true, "{w:#}");
    // The branch landed with all three changes, and nothing of the daemon's.
    let head = repo
        .rev(&format!("refs/heads/{branch}"))
        .expect("the pushed branch");
    assert_eq!(w["head"], head.as_str());
    assert!(repo
        .show(&head, "a.txt")
        .unwrap()
        .ends_with("edited by the agent\n"));
    assert_eq!(repo.show(&head, "b.txt").as_deref(), Some("a new file\n"));
    assert_eq!(
        repo.show(&head, "c.txt").as_deref(),
        Some("left uncommitted\n")
    );
    assert_eq!(
        repo.show(&head, "CLAUDE.md"),
        None,
        "the instructions are not the agent's change"
    );
    let log = repo.log_subjects(&base, &head);
    assert_eq!(
        log.len(),
        3,
        "two commits of the agent and the daemon's: {log:?}"
    );

    // The patch, fetched from the daemon's HTTP port, applies on the base.
    let patch = &w["patch"];
    let (status, body) = http_fetch(patch["uri"].as_str().unwrap());
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(&body), patch["sha256"].as_str().unwrap());
    let home = tempfile::tempdir().unwrap();
    let clone = tempfile::tempdir().unwrap();
    let ok = git_command(home.path())
        .args(["clone", "-q", &repo.file_url()])
        .arg(clone.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let patch_file = clone.path().join("../agent.patch");
    std::fs::write(&patch_file, &body).unwrap();
    let applied = git_command(home.path())
        .current_dir(clone.path())
        .args(["apply", "--index"])
        .arg(&patch_file)
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "git apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(clone.path().join("c.txt")).unwrap(),
        "left uncommitted\n"
    );
    // The declared report and the transcript are artifacts too.
    let report = artifact(&r, "reports/summary.txt");
    assert_eq!(report["sha256"], sha256_hex(b"all good\n").as_str());
    let transcript = artifact(&r, "transcript.log");
    let (_, t) = http_fetch(transcript["uri"].as_str().unwrap());
    assert!(
        String::from_utf8_lossy(&t).contains("?? c.txt"),
        "{}",
        String::from_utf8_lossy(&t)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_commits_and_leftovers_come_back_as_a_patch_and_a_pushed_branch_over_http_git_and_file(
) {
    let repo = BareRepo::new(
        "app",
        &[("a.txt", "first line\n"), ("README.md", "# app\n")],
    );
    // The http server and git daemon serve the repository's folder.
    let http = GitHttpServer::start(repo.dir.path(), None);
    let daemon = GitDaemon::start(repo.dir.path());
    let presets = presets_dir_with(&[(
        "dev_repo",
        dev_preset(
            "dev_repo",
            json!({"push": true, "author": {"name": "Spawner Bot", "email": "bot@example.com"}}),
            json!(["reports/**"]),
        ),
    )]);
    let local_roots = format!("[\"{}\"]", repo.dir.path().display());
    let d = Daemon::start(
        DaemonOpts::new("ws-main")
            .presets_dir(presets.path())
            .setting("policy__repo_local_roots", &local_roots),
    );
    for (label, url) in [
        ("http", http.url("app.git")),
        ("git", daemon.url("app.git")),
        ("file", repo.file_url()),
    ] {
        eprintln!("---- {label}: {url}");
        edit_commit_leave(&d, &repo, &url).await;
    }
    assert!(http.requests() > 0, "the http server was used");
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repository_is_cloned_with_the_presets_credentials_which_never_reach_the_worker()
{
    let repo = BareRepo::new("private", &[("a.txt", "secret project\n")]);
    let token = format!("tok-{}", random_suffix());
    let http = GitHttpServer::start(repo.dir.path(), Some(("bot", &token)));
    let url = http.url("private.git");
    let workspace = |var: &str| {
        json!({
            "repo": {"url": url, "ref": "main"},
            "credentials": {"from_env": var, "username": "bot"},
            "push": true
        })
    };
    let presets = presets_dir_with(&[
        (
            "private",
            dev_preset("private", workspace("WS_TEST_GIT_TOKEN"), json!([])),
        ),
        (
            "private_bad",
            dev_preset("private_bad", workspace("WS_TEST_GIT_BAD"), json!([])),
        ),
    ]);
    let d = Daemon::start(
        DaemonOpts::new("ws-private")
            .presets_dir(presets.path())
            .env("WS_TEST_GIT_TOKEN", &token)
            .env("WS_TEST_GIT_BAD", "wrong-token"),
    );
    let rid = unique_request_id("priv");
    // The agent looks for the token wherever it could have landed, and
    // waits so that the test can inspect its container.
    // (The prompt carries the token encoded, so that the container's own
    // command line, which `docker inspect` shows, does not hold it.)
    let needle = common::git_server::base64_encode(token.as_bytes());
    let agent = format!(
        "cd /workspace && cat .git/config && env | sort && t=$(echo {needle} | base64 -d) && \
         (grep -rls -- \"$t\" /workspace /home /tmp /etc /run /var /opt /root /usr/local 2>/dev/null || echo no-token-found) && \
         echo change >> a.txt && sleep 4"
    );
    publish_spawn(&d.prefix, &spawn_request(&rid, "private", &agent)).await;
    let started = wait_event(&d.prefix, &rid, "started", LONG).await;
    let name = started["data"]["container"].as_str().unwrap().to_string();
    let inspect = docker_inspect_json(&name).await;
    let b64 = common::git_server::base64_encode(format!("bot:{token}").as_bytes());
    assert!(
        !inspect.contains(&token) && !inspect.contains(&b64),
        "docker inspect holds the credential"
    );
    let r = wait_result(&d.prefix, &rid, LONG).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let (_, transcript) = http_fetch(artifact(&r, "transcript.log")["uri"].as_str().unwrap());
    let transcript = String::from_utf8_lossy(&transcript).to_string();
    assert!(transcript.contains("no-token-found"), "{transcript}");
    assert!(
        transcript.contains(&format!("url = {url}")),
        "origin is the plain URL: {transcript}"
    );
    assert!(!transcript.contains(&token) && !transcript.contains(&b64));
    assert!(!transcript.to_ascii_lowercase().contains("extraheader"));
    assert!(!r.to_string().contains(&token));
    // The server saw the credentials: the clone and the push used them.
    let basic = common::git_server::basic_auth("bot", &token);
    assert!(http.seen_authorizations().iter().any(|a| a == &basic));
    assert_eq!(r["workspace"]["pushed"], true, "{r:#}");
    assert!(repo.rev(&format!("refs/heads/ws/{rid}")).is_some());

    // A wrong credential: an error naming workspace.repo, promptly.
    let bad = unique_request_id("bad");
    let t0 = Instant::now();
    publish_spawn(&d.prefix, &spawn_request(&bad, "private_bad", "echo never")).await;
    let r = wait_result(&d.prefix, &bad, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "error", "{r:#}");
    assert_eq!(r["error"]["code"], "repo_unavailable");
    assert_eq!(r["error"]["field"], "workspace.repo");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(!r.to_string().contains("wrong-token"), "{r:#}");
    assert!(http.auth_failures() > 0);
    assert_no_containers(&d.prefix).await;
}

/// `docker inspect` of a container, as the JSON text an operator sees.
async fn docker_inspect_json(name: &str) -> String {
    let d = docker().await;
    let c = d
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .expect("inspect");
    serde_json::to_string(&c).unwrap()
}

/// Waits for the first event of `kind` of `rid`.
async fn wait_event(prefix: &str, rid: &str, kind: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = events_for(prefix, rid)
            .await
            .into_iter()
            .find(|e| e["type"] == kind)
        {
            return e;
        }
        assert!(Instant::now() < deadline, "no {kind} event for {rid}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_image_without_git_gets_its_checkout_and_its_change_read_back() {
    let repo = BareRepo::new("stock", &[("a.txt", "one\n"), ("dir/b.txt", "two\n")]);
    let preset = json!({
        "id": "stock_repo",
        "name": "A stock image on a repository",
        "image": "ws-test-stock:latest",
        "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"], "conversation": false },
        "allowed_tools": [],
        "workspace": {"repo": {"url": repo.file_url()}},
        "limits": { "cpu": 0.5, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600 }
    });
    let presets = presets_dir_with(&[("stock_repo", preset)]);
    let roots = format!("[\"{}\"]", repo.dir.path().display());
    let d = Daemon::start(
        DaemonOpts::new("ws-stock")
            .presets_dir(presets.path())
            .setting("policy__repo_local_roots", &roots),
    );
    let rid = unique_request_id("stock");
    let agent = "cd /workspace && cat dir/b.txt && echo three >> a.txt && rm dir/b.txt && echo new > n.txt && ls -la";
    publish_spawn(&d.prefix, &spawn_request(&rid, "stock_repo", agent)).await;
    let r = wait_result(&d.prefix, &rid, LONG).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert!(r["output"].as_str().unwrap().contains("two"), "{r:#}");
    let w = &r["workspace"];
    assert_eq!(w["base"], repo.rev("main").unwrap().as_str());
    assert_eq!(w["commits"], json!([]));
    assert_eq!(w["uncommitted"], true);
    assert_eq!(w["files_changed"], 3, "{w:#}");
    assert_eq!(w["pushed"], false);
    assert!(
        w.get("push_error").is_none(),
        "no push was asked for: {w:#}"
    );
    let (_, patch) = http_fetch(w["patch"]["uri"].as_str().unwrap());
    let patch = String::from_utf8_lossy(&patch).to_string();
    assert!(
        patch.contains("+three") && patch.contains("deleted file mode"),
        "{patch}"
    );
    assert!(!patch.contains("CLAUDE.md"), "{patch}");
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_transcript_is_whole_in_the_store_and_declared_artifacts_keep_their_sha_and_links_are_refused(
) {
    let preset = json!({
        "id": "arts",
        "name": "Artifacts on a stock image",
        "image": "ws-test-stock:latest",
        "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"], "conversation": false },
        "allowed_tools": [],
        "artifacts": ["out/**", "coverage.xml"],
        "env": { "SECRET_TOKEN": { "from_env": "WS_TEST_SECRET" } },
        "limits": { "cpu": 0.5, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600 }
    });
    let presets = presets_dir_with(&[("arts", preset)]);
    let d = Daemon::start(DaemonOpts::new("ws-arts").presets_dir(presets.path()));
    let rid = unique_request_id("big");
    // 60000 lines of 100 bytes: 6 MB of stdout; a secret in the middle.
    let agent = "cd /workspace && mkdir -p out/sub && echo report > out/sub/r.txt && \
        printf '<cov/>' > coverage.xml && ln -s /etc out/etc && ln -s /etc/passwd out/passwd && \
        echo \"secret=$SECRET_TOKEN\" && \
        yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -n 60000 && \
        echo done >&2";
    publish_spawn(&d.prefix, &spawn_request(&rid, "arts", agent)).await;
    let r = wait_result(&d.prefix, &rid, LONG).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert_eq!(r["output_truncated"], true);
    assert!(r["output"].as_str().unwrap().len() <= 64 * 1024);
    let t = artifact(&r, "transcript.log");
    let (status, body) = http_fetch(t["uri"].as_str().unwrap());
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(&body), t["sha256"].as_str().unwrap());
    let text = String::from_utf8_lossy(&body);
    let lines = text.lines().filter(|l| l.starts_with("0123456789")).count();
    assert_eq!(lines, 60000, "the whole output is in the transcript");
    assert!(text.contains("done"), "stderr too");
    assert!(text.contains("secret=[REDACTED]"), "redacted");
    assert!(!text.contains("default-test-secret"), "redacted");
    assert!(t["size"].as_u64().unwrap() > 6_000_000);
    assert_eq!(
        artifact(&r, "out/sub/r.txt")["sha256"],
        sha256_hex(b"report\n").as_str()
    );
    assert_eq!(
        artifact(&r, "coverage.xml")["sha256"],
        sha256_hex(b"<cov/>").as_str()
    );
    let refused: Vec<(String, String)> = r["artifacts_refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_string(),
                x["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    for (name, reason) in &refused {
        assert!(name == "out/etc" || name == "out/passwd", "{name}");
        assert!(reason.starts_with("symlink"), "{reason}");
    }
    // Nothing of /etc made it into the store.
    let mut all = String::new();
    for e in walk_files(&d.artifacts_dir) {
        all.push_str(&std::fs::read_to_string(&e).unwrap_or_default());
    }
    assert!(!all.contains("root:x:0:0"), "a link was followed");
    // The admin side: ls and get.
    let bin = env!("CARGO_BIN_EXE_workers-spawner");
    let ls = Command::new(bin)
        .args(["artifacts", "ls", &rid])
        .env("WORKERS_SPAWNER_ARTIFACTS_DIR", &d.artifacts_dir)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.status.success(), "{listing}");
    for name in ["transcript.log", "out/sub/r.txt", "coverage.xml"] {
        assert!(listing.contains(name), "{listing}");
    }
    let get = Command::new(bin)
        .args(["artifacts", "get", &rid, "out/sub/r.txt"])
        .env("WORKERS_SPAWNER_ARTIFACTS_DIR", &d.artifacts_dir)
        .output()
        .unwrap();
    assert_eq!(get.stdout, b"report\n");
    let missing = Command::new(bin)
        .args(["artifacts", "get", &rid, "../../etc/passwd"])
        .env("WORKERS_SPAWNER_ARTIFACTS_DIR", &d.artifacts_dir)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    // The HTTP side refuses a path out of the store.
    let (status, _) = http_get_bytes(
        &d.api_addr,
        &format!("/v1/artifacts/{rid}/..%2F..%2Fetc%2Fpasswd"),
    )
    .unwrap();
    assert!(status == 400 || status == 404, "{status}");
    assert_no_containers(&d.prefix).await;
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_of_an_agent_that_ended_while_its_daemon_was_dead_is_collected_after_the_restart(
) {
    let repo = BareRepo::new("restart", &[("a.txt", "one\n")]);
    let presets = presets_dir_with(&[(
        "dev_repo",
        dev_preset(
            "dev_repo",
            json!({"repo": {"url": repo.file_url()}, "push": true}),
            json!([]),
        ),
    )]);
    let roots = format!("[\"{}\"]", repo.dir.path().display());
    let artifacts = tempfile::tempdir().unwrap();
    let opts = DaemonOpts::new("ws-restart")
        .presets_dir(presets.path())
        .setting("policy__repo_local_roots", &roots)
        .setting("artifacts_dir", artifacts.path().to_str().unwrap());
    let mut d = Daemon::start(opts.clone());
    let rid = unique_request_id("rs");
    let agent = "cd /workspace && sleep 3 && echo two >> a.txt && git commit -qam 'While the daemon was dead' && echo done";
    publish_spawn(&d.prefix, &spawn_request(&rid, "dev_repo", agent)).await;
    let started = wait_event(&d.prefix, &rid, "started", LONG).await;
    let name = started["data"]["container"].as_str().unwrap().to_string();
    d.cleanup_on_drop = false;
    d.kill();
    // The agent ends with nobody watching.
    let docker = docker().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = docker
            .inspect_container(
                &name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .expect("the container stays");
        if !c.state.and_then(|s| s.running).unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d2 = Daemon::start(opts.prefix(&d.prefix).instance_id(&d.instance_id));
    let r = wait_result(&d2.prefix, &rid, LONG).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let w = &r["workspace"];
    assert_eq!(
        w["commits"][0]["subject"], "While the daemon was dead",
        "{w:#}"
    );
    assert_eq!(w["pushed"], true);
    assert_eq!(
        repo.show(&format!("refs/heads/ws/{rid}"), "a.txt")
            .as_deref(),
        Some("one\ntwo\n")
    );
    assert!(artifact(&r, "patch.diff")["size"].as_u64().unwrap() > 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        results_for(&d2.prefix, &rid).await.len(),
        1,
        "exactly one result"
    );
    assert_no_containers(&d2.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_repositories_branches_and_globs_are_refused_naming_the_field() {
    let outside = BareRepo::new("outside", &[("a.txt", "x\n")]);
    let allowed = tempfile::tempdir().unwrap();
    let presets = presets_dir_with(&[("dev_repo", dev_preset("dev_repo", json!({}), json!([])))]);
    let roots = format!("[\"{}\"]", allowed.path().display());
    let d = Daemon::start(
        DaemonOpts::new("ws-hostile")
            .presets_dir(presets.path())
            .setting("policy__repo_local_roots", &roots),
    );
    let marker = std::env::temp_dir().join(format!("ws-pwned-{}", random_suffix()));
    let cases = [
        (
            json!({"url": format!("ext::sh -c touch% {}", marker.display())}),
            "task.repo.url",
            "helper",
        ),
        (
            json!({"url": outside.file_url()}),
            "task.repo.url",
            "outside",
        ),
        (
            json!({"url": format!("file://{}/../../etc", allowed.path().display())}),
            "task.repo.url",
            "'..'",
        ),
        (
            json!({"url": "https://user:pw@example.com/r.git"}),
            "task.repo.url",
            "credentials",
        ),
        (
            json!({"url": "https://example.com/r.git", "branch": "ws/../../x"}),
            "task.repo.branch",
            "..",
        ),
        (
            json!({"url": "https://example.com/r.git", "ref": "--upload-pack=touch"}),
            "task.repo.ref",
            "'-'",
        ),
        (json!({"url": "-u https://x"}), "task.repo.url", "'-'"),
        (
            json!({"url": "https://example.com/r.git", "token": "x"}),
            "task.repo.token",
            "unknown",
        ),
    ];
    for (repo, field, word) in cases {
        let rid = unique_request_id("h");
        let mut req = spawn_request(&rid, "dev_repo", "echo never");
        req["task"]["repo"] = repo.clone();
        publish_spawn(&d.prefix, &req).await;
        let r = wait_result(&d.prefix, &rid, Duration::from_secs(30)).await;
        assert_eq!(r["status"], "rejected", "{repo}: {r:#}");
        assert_eq!(r["error"]["field"], field, "{repo}: {r:#}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains(word),
            "{repo}: {r:#}"
        );
    }
    assert!(!marker.exists(), "a transport helper ran");
    // An override's glob out of /workspace, and credentials an override
    // would bring.
    for (ovr, field) in [
        (json!({"artifacts": ["../../etc/*"]}), "artifacts.0"),
        (
            json!({"workspace": {"credentials": {"from_env": "WS_TEST_SECRET", "origin": "https://evil.example"}}}),
            "workspace.credentials",
        ),
        // The preset's credentials would follow its repository's URL.
        (
            json!({"workspace": {"repo": {"url": "https://attacker.example/x.git"}, "push": true}}),
            "workspace",
        ),
    ] {
        let rid = unique_request_id("o");
        let mut req = spawn_request(&rid, "dev_repo", "echo never");
        req["worker_config_override"] = ovr.clone();
        publish_spawn(&d.prefix, &req).await;
        let r = wait_result(&d.prefix, &rid, Duration::from_secs(30)).await;
        assert_eq!(r["status"], "rejected", "{ovr}: {r:#}");
        assert_eq!(r["error"]["field"], field, "{ovr}: {r:#}");
    }
    assert_eq!(container_count(&d.prefix).await, 0);

    // At load: a preset whose glob escapes /workspace is refused by name.
    let dir = tempfile::tempdir().unwrap();
    write_preset(
        dir.path(),
        "escape",
        &dev_preset("escape", json!({}), json!(["reports/*", "../secrets/*"])),
    );
    let bin = env!("CARGO_BIN_EXE_workers-spawner");
    let out = Command::new(bin)
        .args(["presets", "validate"])
        .arg(dir.path())
        .current_dir(repo_root())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("artifacts.1"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_tasks_share_one_checkout_and_each_result_shows_the_change_so_far() {
    let repo = BareRepo::new("sess", &[("a.txt", "one\n")]);
    let presets = presets_dir_with(&[(
        "dev_repo",
        dev_preset(
            "dev_repo",
            json!({"repo": {"url": repo.file_url()}}),
            json!([]),
        ),
    )]);
    let roots = format!("[\"{}\"]", repo.dir.path().display());
    let d = Daemon::start(
        DaemonOpts::new("ws-sess")
            .presets_dir(presets.path())
            .setting("policy__repo_local_roots", &roots),
    );
    let sid = unique_request_id("s");
    let mut results = Vec::new();
    for (i, agent) in [
        "cd /workspace && echo two >> a.txt && git commit -qam 'First task'",
        "cd /workspace && grep -q two a.txt && echo three >> a.txt && git commit -qam 'Second task' && echo wip > w.txt",
    ]
    .into_iter()
    .enumerate()
    {
        let rid = unique_request_id(&format!("t{i}"));
        let mut req = spawn_request(&rid, "dev_repo", agent);
        req["task"]["session_id"] = json!(sid);
        publish_spawn(&d.prefix, &req).await;
        let r = wait_result(&d.prefix, &rid, LONG).await;
        assert_eq!(r["status"], "succeeded", "{r:#}");
        results.push(r);
    }
    let base = repo.rev("main").unwrap();
    let w1 = &results[0]["workspace"];
    let w2 = &results[1]["workspace"];
    assert_eq!(w1["base"], base.as_str(), "{w1:#}");
    assert_eq!(w2["base"], base.as_str(), "one checkout: {w2:#}");
    assert_eq!(w1["commits"].as_array().unwrap().len(), 1);
    let subjects: Vec<&str> = w2["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["First task", "Second task"]);
    assert_eq!(w2["uncommitted"], true);
    // Each task has its own transcript.
    artifact(&results[0], "transcript.log");
    artifact(&results[1], "transcript.log");
    publish_control(
        &d.prefix,
        &json!({"command": "cancel_session", "session_id": sid}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_go_to_an_s3_bucket_when_configured_and_are_served_from_it() {
    let s3 = common::s3_server::S3Server::start();
    s3.create_bucket("ws-artifacts");
    let preset = json!({
        "id": "arts_s3",
        "name": "Artifacts to a bucket",
        "image": "ws-test-stock:latest",
        "agent": { "type": "claude-code", "command": ["sh", "-c", "{prompt}"], "conversation": false },
        "allowed_tools": [],
        "artifacts": ["out/*"],
        "limits": { "cpu": 0.5, "memory": "64m", "timeout_sec": 60, "ttl_sec": 600 }
    });
    let presets = presets_dir_with(&[("arts_s3", preset)]);
    let mut opts = DaemonOpts::new("ws-s3")
        .presets_dir(presets.path())
        .setting("artifacts_url", "s3://ws-artifacts/runs");
    for (k, v) in s3.client_env() {
        opts = opts.env(&k, &v);
    }
    let d = Daemon::start(opts);
    let rid = unique_request_id("s3");
    let agent =
        "mkdir -p /workspace/out && echo to-the-bucket > /workspace/out/x.txt && echo hello";
    publish_spawn(&d.prefix, &spawn_request(&rid, "arts_s3", agent)).await;
    let r = wait_result(&d.prefix, &rid, LONG).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let x = artifact(&r, "out/x.txt");
    assert_eq!(
        x["uri"],
        format!("s3://ws-artifacts/runs/data/{rid}/out/x.txt").as_str(),
        "{r:#}"
    );
    // In the bucket itself, under the prefix (read with a client of our own).
    let bucket = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .with_bucket_name("ws-artifacts")
        .build()
        .unwrap();
    let key = object_store::path::Path::from(format!("runs/data/{rid}/out/x.txt"));
    let body = object_store::ObjectStore::get(&bucket, &key)
        .await
        .expect("the object is in the bucket")
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"to-the-bucket\n");
    // Nothing in the local folder.
    assert!(walk_files(&d.artifacts_dir).is_empty());
    // Served by the daemon from the bucket, and listed by the CLI.
    let (status, body) =
        http_get_bytes(&d.api_addr, &format!("/v1/artifacts/{rid}/out/x.txt")).unwrap();
    assert_eq!(
        (status, body.as_slice()),
        (200, b"to-the-bucket\n".as_slice())
    );
    let bin = env!("CARGO_BIN_EXE_workers-spawner");
    let mut ls = Command::new(bin);
    ls.args(["artifacts", "ls", &rid])
        .env("WORKERS_SPAWNER_ARTIFACTS_URL", "s3://ws-artifacts/runs");
    for (k, v) in s3.client_env() {
        ls.env(k, v);
    }
    let out = ls.output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{listing}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listing.contains("out/x.txt") && listing.contains("transcript.log"),
        "{listing}"
    );
    assert_no_containers(&d.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_past_their_retention_are_deleted_by_the_maintenance_loop() {
    let d = Daemon::start(DaemonOpts::new("ws-retain").setting("artifact_retention", "3s"));
    let rid = unique_request_id("ret");
    publish_spawn(
        &d.prefix,
        &spawn_request(&rid, "echo_v1", "keep me a while"),
    )
    .await;
    let r = wait_result(&d.prefix, &rid, LONG).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let uri = artifact(&r, "transcript.log")["uri"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = http_fetch(&uri);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("prompt=keep me a while"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = http_fetch(&uri);
        if status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the transcript outlived its retention"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        walk_files(&d.artifacts_dir).is_empty(),
        "the index went too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_is_reported_in_the_result_and_the_change_is_still_there() {
    let repo = BareRepo::new("moving", &[("a.txt", "one\n")]);
    let presets = presets_dir_with(&[(
        "dev_repo",
        dev_preset(
            "dev_repo",
            json!({"repo": {"url": repo.file_url()}, "push": true}),
            json!([]),
        ),
    )]);
    let roots = format!("[\"{}\"]", repo.dir.path().display());
    let d = Daemon::start(
        DaemonOpts::new("ws-push")
            .presets_dir(presets.path())
            .setting("policy__repo_local_roots", &roots),
    );
    // The agent works on main itself; meanwhile someone else pushes to it,
    // so the daemon's push would not be a fast-forward.
    let rid = unique_request_id("push");
    let mut req = spawn_request(
        &rid,
        "dev_repo",
        "cd /workspace && sleep 3 && echo mine >> a.txt && git commit -qam 'The agent on main'",
    );
    req["task"]["repo"] = json!({"branch": "main"});
    publish_spawn(&d.prefix, &req).await;
    wait_event(&d.prefix, &rid, "started", LONG).await;
    let home = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = git_command(home.path())
            .current_dir(other.path())
            .args([
                "-c",
                "user.name=other",
                "-c",
                "user.email=other@example.invalid",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["clone", "-q", &repo.file_url(), "."]);
    git(&["commit", "-q", "--allow-empty", "-m", "Someone else"]);
    git(&["push", "-q", "origin", "HEAD:main"]);
    let r = wait_result(&d.prefix, &rid, LONG).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    let w = &r["workspace"];
    assert_eq!(w["pushed"], false, "{w:#}");
    let why = w["push_error"].as_str().expect("a push error");
    assert!(
        why.contains("rejected") || why.contains("non-fast-forward") || why.contains("fetch first"),
        "{why}"
    );
    assert_eq!(w["commits"][0]["subject"], "The agent on main");
    assert_eq!(
        repo.log_subjects(w["base"].as_str().unwrap(), "main"),
        ["Someone else"]
    );
    // The change is still in the result: its patch.
    let (_, patch) = http_fetch(w["patch"]["uri"].as_str().unwrap());
    assert!(String::from_utf8_lossy(&patch).contains("+mine"));
}
