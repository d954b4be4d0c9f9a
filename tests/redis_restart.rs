//! A Redis restart (append-only file on) while workers run: every request
//! still gets exactly one result, published once Redis is back. This test
//! runs a redis-server of its own (free port, own temp dir) so stopping it
//! disturbs no other test.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn start_server(port: u16, root: &Path) {
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let st = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&data)
            .args(["--appendonly", "yes", "--save", "", "--daemonize", "yes"])
            .arg("--pidfile")
            .arg(root.join("redis.pid"))
            .arg("--logfile")
            .arg(root.join("redis.log"))
            .status()
            .expect("redis-server (scripts/test-env.sh installs it)");
        assert!(st.success(), "redis-server failed to start");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .expect("redis-cli");
            if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start() -> PrivateRedis {
        let dir = tempfile::Builder::new()
            .prefix("ws-test-redis-restart.")
            .tempdir()
            .unwrap();
        let port = free_port();
        Self::start_server(port, dir.path());
        PrivateRedis { port, dir }
    }

    /// `SHUTDOWN` (which writes the AOF) and wait until the port is closed.
    fn shutdown(&self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "redis-server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn restart(&self) {
        Self::start_server(self.port, self.dir.path());
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .output();
    }
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn publish(url: &str, prefix: &str, v: &Value) {
    let mut c = conn(url).await;
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}:spawn"))
        .arg("*")
        .arg("data")
        .arg(v.to_string())
        .query_async(&mut c)
        .await
        .unwrap();
}

async fn results(url: &str, prefix: &str) -> Vec<Value> {
    let mut c = conn(url).await;
    let r: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{prefix}:result"))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    r.ids
        .iter()
        .filter_map(|id| id.get::<Vec<u8>>("data"))
        .filter_map(|d| serde_json::from_slice(&d).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_result() {
    let redis = PrivateRedis::start();
    let url = redis.url();
    let mut opts = DaemonOpts::new("redis-restart").max_concurrent(8);
    opts.redis_url = Some(url.clone());
    let d = Daemon::start(opts);
    let prefix = d.prefix.clone();
    let t0 = Instant::now();
    let mut rids = Vec::new();
    for i in 0..6 {
        let rid = format!("before-{i}-{}", random_suffix());
        publish(
            &url,
            &prefix,
            &spawn_request(
                &rid,
                "shell_v1",
                &format!("sleep {}; echo out-{i}", 2 + i % 3),
            ),
        )
        .await;
        rids.push(rid);
    }
    // Wait until every worker runs, then take Redis away under them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_count(&prefix).await < 6 {
        assert!(Instant::now() < deadline, "workers did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.shutdown();
    let down_at = t0.elapsed();
    // Workers end while Redis is away (they sleep at most 4 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let exited_while_down = containers(&prefix)
        .await
        .iter()
        .filter(|c| c.state.as_ref().map(|s| s.to_string()).as_deref() == Some("exited"))
        .count();
    redis.restart();
    let up_at = t0.elapsed();
    // Requests that arrive after the restart are served too.
    for i in 0..4 {
        let rid = format!("after-{i}-{}", random_suffix());
        publish(
            &url,
            &prefix,
            &spawn_request(&rid, "shell_v1", &format!("echo out-{i}")),
        )
        .await;
        rids.push(rid);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let per = loop {
        let all = results(&url, &prefix).await;
        let mut per: HashMap<String, Vec<Value>> = HashMap::new();
        for r in all {
            per.entry(r["request_id"].as_str().unwrap_or("?").to_string())
                .or_default()
                .push(r);
        }
        if rids.iter().all(|r| per.contains_key(r)) {
            break per;
        }
        if Instant::now() > deadline {
            eprintln!("daemon stderr:\n{}", d.stderr_tail(400));
            panic!(
                "missing results after the Redis restart: {:?}",
                rids.iter()
                    .filter(|r| !per.contains_key(*r))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all_at = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for rid in &rids {
        let rs = &results(&url, &prefix)
            .await
            .into_iter()
            .filter(|r| r["request_id"] == rid.as_str())
            .collect::<Vec<_>>();
        assert_eq!(rs.len(), 1, "{rid}: {rs:#?}");
        assert_eq!(rs[0]["status"], "succeeded", "{:#}", rs[0]);
    }
    assert_no_containers(&prefix).await;
    eprintln!(
        "FIGURES redis-restart: requests={} results={} redis_down_at={down_at:?} up_at={up_at:?} \
         workers_exited_while_down={exited_while_down} all_results_at={all_at:?} leaks=0",
        rids.len(),
        per.len()
    );
    drop(d);
}
