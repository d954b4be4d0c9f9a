//! Hot reload of the catalog.
//!
//! The `watcher_*` tests drive `workers_spawner::adapters::watcher` directly in a temp
//! dir. The `daemon_*` tests run the real daemon binary against the private
//! redis of `scripts/test.sh` (`WS_TEST_REDIS_URL`) and the local Docker
//! engine; they fail, not skip, when `WS_TEST_REDIS_URL` is unset.

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use workers_spawner::adapters::loader::{self, CatalogDirs};
use workers_spawner::adapters::watcher::spawn_watcher;

const DEBOUNCE: Duration = Duration::from_millis(200);
const SIGNAL_WITHIN: Duration = Duration::from_secs(2);

fn dirs_in(root: &Path) -> CatalogDirs {
    let dirs = CatalogDirs {
        presets: root.join("presets"),
        skills: root.join("skills"),
        templates: root.join("templates"),
    };
    for d in [&dirs.presets, &dirs.skills, &dirs.templates] {
        std::fs::create_dir_all(d).unwrap();
    }
    dirs
}

/// Waits for the watcher to settle, then drops any signal pending from setup.
async fn settle(rx: &mut Receiver<()>) {
    tokio::time::sleep(DEBOUNCE * 3).await;
    while rx.try_recv().is_ok() {}
}

async fn expect_signal(rx: &mut Receiver<()>, what: &str) {
    match tokio::time::timeout(SIGNAL_WITHIN, rx.recv()).await {
        Ok(Some(())) => {}
        Ok(None) => panic!("watcher stopped while waiting for: {what}"),
        Err(_) => panic!("no change signal within {SIGNAL_WITHIN:?} for: {what}"),
    }
}

#[tokio::test]
async fn watcher_signals_a_new_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = dirs_in(tmp.path());
    let mut rx = spawn_watcher(&dirs, DEBOUNCE).unwrap();
    settle(&mut rx).await;
    std::fs::write(dirs.presets.join("new_v1.json"), b"{}").unwrap();
    expect_signal(&mut rx, "create presets/new_v1.json").await;

    // A burst is coalesced into (about) one signal.
    settle(&mut rx).await;
    for i in 0..20 {
        std::fs::write(dirs.skills.join(format!("t{i}.md")), b"x").unwrap();
    }
    expect_signal(&mut rx, "20 skill files").await;
    tokio::time::sleep(DEBOUNCE * 3).await;
    let mut extra = 0;
    while rx.try_recv().is_ok() {
        extra += 1;
    }
    assert!(extra <= 1, "a burst gave {extra} extra signals");

    // Templates are watched recursively.
    std::fs::create_dir(dirs.templates.join("codex")).unwrap();
    settle(&mut rx).await;
    std::fs::write(dirs.templates.join("codex/instructions.md.tera"), b"x").unwrap();
    expect_signal(&mut rx, "create templates/codex/instructions.md.tera").await;
}

#[tokio::test]
async fn watcher_ignores_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = dirs_in(tmp.path());
    std::fs::write(dirs.presets.join("p.json"), b"{}").unwrap();
    std::fs::write(dirs.skills.join("s.md"), b"x").unwrap();
    let mut rx = spawn_watcher(&dirs, DEBOUNCE).unwrap();
    settle(&mut rx).await;
    // A reload reads everything; that must not signal the next reload.
    for _ in 0..3 {
        let _ = loader::read_sources(&dirs);
    }
    let got = tokio::time::timeout(DEBOUNCE * 4, rx.recv()).await;
    assert!(got.is_err(), "reading the catalog signalled a change");
}

#[tokio::test]
async fn watcher_signals_an_editor_style_rename() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = dirs_in(tmp.path());
    std::fs::write(dirs.presets.join("p.json"), b"{\"v\":1}").unwrap();
    let mut rx = spawn_watcher(&dirs, DEBOUNCE).unwrap();
    settle(&mut rx).await;
    // Written elsewhere (another dir on the same filesystem): only the
    // rename happens inside the watched directory.
    let staging = tmp.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("p.json.tmp"), b"{\"v\":2}").unwrap();
    std::fs::rename(staging.join("p.json.tmp"), dirs.presets.join("p.json")).unwrap();
    expect_signal(&mut rx, "rename over presets/p.json").await;

    // A dot temp file in the directory itself, renamed over the target.
    settle(&mut rx).await;
    std::fs::write(dirs.presets.join(".p.json.swp"), b"{\"v\":3}").unwrap();
    settle(&mut rx).await;
    std::fs::rename(
        dirs.presets.join(".p.json.swp"),
        dirs.presets.join("p.json"),
    )
    .unwrap();
    expect_signal(&mut rx, "rename of a dot temp file over presets/p.json").await;
    let (sources, _) = loader::read_sources(&dirs);
    assert_eq!(
        sources.presets,
        vec![("p.json".to_string(), b"{\"v\":3}".to_vec())]
    );
}

#[cfg(unix)]
#[tokio::test]
async fn watcher_signals_a_configmap_symlink_swap() {
    use std::os::unix::fs::symlink;

    let tmp = tempfile::tempdir().unwrap();
    let dirs = dirs_in(tmp.path());
    let p = &dirs.presets;
    // What the kubelet lays out for a ConfigMap volume.
    std::fs::create_dir(p.join("..2024_01")).unwrap();
    std::fs::write(p.join("..2024_01/x.json"), b"{\"v\":1}").unwrap();
    symlink("..2024_01", p.join("..data")).unwrap();
    symlink("..data/x.json", p.join("x.json")).unwrap();
    let (sources, _) = loader::read_sources(&dirs);
    assert_eq!(
        sources.presets,
        vec![("x.json".to_string(), b"{\"v\":1}".to_vec())]
    );

    let mut rx = spawn_watcher(&dirs, DEBOUNCE).unwrap();
    settle(&mut rx).await;
    // The update: new timestamped dir, new symlink renamed over `..data`,
    // old dir removed. `x.json` itself is never touched.
    std::fs::create_dir(p.join("..2024_02")).unwrap();
    std::fs::write(p.join("..2024_02/x.json"), b"{\"v\":2}").unwrap();
    symlink("..2024_02", p.join("..data_tmp")).unwrap();
    std::fs::rename(p.join("..data_tmp"), p.join("..data")).unwrap();
    std::fs::remove_dir_all(p.join("..2024_01")).unwrap();
    expect_signal(&mut rx, "ConfigMap ..data swap").await;
    let (sources, _) = loader::read_sources(&dirs);
    assert_eq!(
        sources.presets,
        vec![("x.json".to_string(), b"{\"v\":2}".to_vec())]
    );
}

#[tokio::test]
async fn watcher_picks_up_a_directory_created_later() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = CatalogDirs {
        presets: tmp.path().join("presets"),
        skills: tmp.path().join("skills"),
        templates: tmp.path().join("templates"),
    };
    let mut rx = spawn_watcher(&dirs, DEBOUNCE).unwrap();
    settle(&mut rx).await;
    std::fs::create_dir(&dirs.presets).unwrap();
    // Noticed at the next one-second check.
    tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .expect("no signal for a created presets dir");
    settle(&mut rx).await;
    std::fs::write(dirs.presets.join("a.json"), b"{}").unwrap();
    expect_signal(&mut rx, "file in a directory created after start").await;
}

// ------------------------------------------------------------------ daemon

mod daemon {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    fn redis_url() -> String {
        std::env::var("WS_TEST_REDIS_URL").expect(
            "WS_TEST_REDIS_URL is not set: run the tests through scripts/test.sh \
             (it starts a private redis)",
        )
    }

    /// A port below the kernel's ephemeral range, free on every address (an
    /// ephemeral one can be taken meanwhile as an outgoing connection's source).
    fn free_port() -> u16 {
        use rand::Rng;
        loop {
            let port = rand::rng().random_range(20000..32000);
            if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
                return port;
            }
        }
    }

    /// The daemon process; SIGTERM (then SIGKILL) on drop.
    struct DaemonProc {
        child: Child,
        prefix: String,
        redis: redis::Connection,
        results_seen: String,
    }

    impl Drop for DaemonProc {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut self.redis)
                .unwrap_or_default();
            for k in keys {
                let _: Result<(), _> = redis::cmd("DEL").arg(k).query(&mut self.redis);
            }
        }
    }

    fn http_ok(port: u16, path: &str) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200")
    }

    impl DaemonProc {
        fn start(root: &Path) -> DaemonProc {
            let url = redis_url();
            let prefix = format!("wstest-hotreload-{:016x}", rand::random::<u64>());
            let port = free_port();
            let child = Command::new(env!("CARGO_BIN_EXE_workers-spawner"))
                .arg("serve")
                .arg("--redis-url")
                .arg(&url)
                .arg("--presets-dir")
                .arg(root.join("presets"))
                .arg("--skills-dir")
                .arg(root.join("skills"))
                .arg("--templates-dir")
                .arg(root.join("templates"))
                .arg("--stream-prefix")
                .arg(&prefix)
                .arg("--instance-id")
                .arg(format!("{prefix}-1"))
                .arg("--http-addr")
                .arg(format!("127.0.0.1:{port}"))
                // Only the watcher can make the change visible in time.
                .env("WORKERS_SPAWNER_RESCAN_INTERVAL", "1h")
                // Daemons of parallel tests must not share the gateway port.
                .env("WORKERS_SPAWNER_GATEWAY_PORT", free_port().to_string())
                .env(
                    "WORKERS_SPAWNER_API_ADDR",
                    format!("127.0.0.1:{}", free_port()),
                )
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the daemon");
            let redis = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .expect("connect to WS_TEST_REDIS_URL");
            let mut d = DaemonProc {
                child,
                prefix,
                redis,
                results_seen: "0-0".into(),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while !http_ok(port, "/healthz") {
                if let Ok(Some(st)) = d.child.try_wait() {
                    panic!("daemon exited during start-up: {st}");
                }
                assert!(Instant::now() < deadline, "daemon did not come up");
                std::thread::sleep(Duration::from_millis(100));
            }
            d
        }

        /// Publishes a dry-run request and returns its result.
        fn dry_run(&mut self, request_id: &str, preset: &str) -> Value {
            let data = json!({
                "request_id": request_id,
                "worker_config_id": preset,
                "task": { "prompt": "x" },
                "dry_run": true,
            });
            let _: String = redis::cmd("XADD")
                .arg(format!("{}:spawn", self.prefix))
                .arg("*")
                .arg("data")
                .arg(data.to_string())
                .query(&mut self.redis)
                .unwrap();
            let stream = format!("{}:result", self.prefix);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(500)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&self.results_seen)
                    .query(&mut self.redis)
                    .unwrap_or_default();
                for key in reply.keys {
                    for entry in key.ids {
                        self.results_seen = entry.id.clone();
                        let Some(redis::Value::BulkString(b)) = entry.map.get("data") else {
                            continue;
                        };
                        let v: Value = serde_json::from_slice(b).unwrap();
                        if v["request_id"] == request_id {
                            return v;
                        }
                    }
                }
            }
            panic!("no result for {request_id}");
        }
    }

    impl DaemonProc {
        /// `catalog_error` events published so far (from the start of the
        /// stream), as (file, field, message), without repeats, waiting up
        /// to `within` for at least `want` of them.
        fn catalog_errors(
            &mut self,
            want: usize,
            within: Duration,
        ) -> Vec<(String, Value, String)> {
            let stream = format!("{}:events", self.prefix);
            let deadline = Instant::now() + within;
            let mut seen = Vec::new();
            let mut last = "0-0".to_string();
            while Instant::now() < deadline {
                let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(500)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&last)
                    .query(&mut self.redis)
                    .unwrap_or_default();
                for key in reply.keys {
                    for entry in key.ids {
                        last = entry.id.clone();
                        let Some(redis::Value::BulkString(b)) = entry.map.get("data") else {
                            continue;
                        };
                        let v: Value = serde_json::from_slice(b).unwrap();
                        if v["type"] != "catalog_error" {
                            continue;
                        }
                        let e = (
                            v["data"]["file"].as_str().unwrap_or_default().to_string(),
                            v["data"]["field"].clone(),
                            v["data"]["message"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        );
                        if !seen.contains(&e) {
                            seen.push(e);
                        }
                    }
                }
                if seen.len() >= want {
                    // Let a second reload (editor writes signal twice) land.
                    std::thread::sleep(Duration::from_millis(500));
                    if reply_is_quiet(&mut self.redis, &stream, &last) {
                        break;
                    }
                }
            }
            seen
        }
    }

    fn reply_is_quiet(redis: &mut redis::Connection, stream: &str, last: &str) -> bool {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
            .arg("STREAMS")
            .arg(stream)
            .arg(last)
            .query(redis)
            .unwrap_or_default();
        reply.keys.iter().all(|k| k.ids.is_empty())
    }

    fn preset(name: &str) -> String {
        json!({
            "id": "new_v1",
            "name": name,
            "image": "universal-worker-base:latest",
            "agent": { "type": "claude-code", "command": ["sh", "-c", "echo \"$0\"", "{prompt}"] },
            "allowed_tools": ["respond"],
            "has_internet": false,
            "limits": { "cpu": 1.0, "memory": "256m", "timeout_sec": 60, "ttl_sec": 600 }
        })
        .to_string()
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// Writes like an editor: temp file in the same directory, then rename.
    fn write_atomically(path: &Path, content: &str) {
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn daemon_picks_up_a_new_preset_and_keeps_the_last_good_version() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("presets")).unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        copy_dir(&repo.join("skills"), &root.join("skills"));
        copy_dir(&repo.join("templates"), &root.join("templates"));
        let mut d = DaemonProc::start(root);

        // Unknown before the file exists.
        let r = d.dry_run("r0", "new_v1");
        assert_eq!(r["status"], "rejected", "{r}");

        // Dropped in while running: usable without a restart (the re-scan
        // is set to 1h, so this is the watcher's doing).
        std::fs::write(root.join("presets/new_v1.json"), preset("New one")).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let r = d.dry_run("r1", "new_v1");
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["config"]["name"], "New one", "{r}");

        // Edited in place via rename: the new version is used.
        write_atomically(&root.join("presets/new_v1.json"), &preset("Edited"));
        std::thread::sleep(Duration::from_millis(1500));
        let r = d.dry_run("r2", "new_v1");
        assert_eq!(r["config"]["name"], "Edited", "{r}");

        // A broken version does not replace the good one.
        write_atomically(&root.join("presets/new_v1.json"), "{ not json");
        std::thread::sleep(Duration::from_millis(1500));
        let r = d.dry_run("r3", "new_v1");
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["config"]["name"], "Edited", "{r}");

        // Nor does a schema-invalid one.
        let mut bad: Value = serde_json::from_str(&preset("Bad")).unwrap();
        bad["limits"]["timeout_sec"] = json!("soon");
        write_atomically(&root.join("presets/new_v1.json"), &bad.to_string());
        std::thread::sleep(Duration::from_millis(1500));
        let r = d.dry_run("r4", "new_v1");
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["config"]["name"], "Edited", "{r}");
    }

    #[test]
    fn daemon_reports_a_broken_preset_with_its_path_and_the_message_validate_gives() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("presets")).unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        copy_dir(&repo.join("skills"), &root.join("skills"));
        copy_dir(&repo.join("templates"), &root.join("templates"));
        let mut d = DaemonProc::start(root);

        // An edit with two slips: a misspelt key and a size in words.
        let mut bad: Value = serde_json::from_str(&preset("Bad")).unwrap();
        let tools = bad
            .as_object_mut()
            .unwrap()
            .remove("allowed_tools")
            .unwrap();
        bad["alowed_tools"] = tools;
        bad["limits"]["memory"] = json!("4 gigs");
        let file = root.join("presets/new_v1.json");
        write_atomically(&file, &serde_json::to_string_pretty(&bad).unwrap());
        let events = d.catalog_errors(2, Duration::from_secs(10));

        let out = Command::new(env!("CARGO_BIN_EXE_workers-spawner"))
            .env_clear()
            .arg("--skills-dir")
            .arg(root.join("skills"))
            .arg("--templates-dir")
            .arg(root.join("templates"))
            .args(["presets", "validate"])
            .arg(root.join("presets"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut validate: Vec<&str> = stderr.lines().collect();
        assert_eq!(validate.pop(), Some("2 problem(s) found"), "{stderr}");

        let f = file.display().to_string();
        assert_eq!(
            validate,
            vec![
                format!(
                    r#"{f}: limits.memory "4 gigs" is not a size: write e.g. 512m or 4g (did you mean "4g"?)"#
                ),
                format!(
                    r#"{f}: alowed_tools is not a known field; did you mean "allowed_tools"? (allowed_tools is required and missing)"#
                ),
            ]
        );
        let published: Vec<String> = events
            .iter()
            .map(|(file, _, message)| format!("{file}: {message}"))
            .collect();
        assert_eq!(published, validate, "{events:#?}");
        let fields: Vec<&Value> = events.iter().map(|(_, field, _)| field).collect();
        assert_eq!(
            fields,
            vec![&json!("limits.memory"), &json!("alowed_tools")]
        );
    }
}
