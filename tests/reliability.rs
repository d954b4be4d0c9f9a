//! Delivery guarantees under failure (PROTOCOL.md section 10): crashes
//! (kill -9), restarts, two instances sharing a group, poison entries,
//! foreign containers, cancel, graceful shutdown. Real `workers-spawner
//! serve` child processes, the private redis-server and the real Docker
//! engine. The Redis restart test lives in tests/redis_restart.rs (it
//! needs a redis-server of its own).
//!
//! "Ran once" is checked against the engine itself: a Docker event watcher
//! (filtered by the prefix label) counts `create` and `start` events per
//! request-id label.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

const REQUEST_ID_LABEL: &str = "io.workers-spawner.request-id";

/// Docker container events of one prefix: (action, request-id label, time).
#[derive(Clone, Default)]
struct EngineEvents(Arc<Mutex<Vec<(String, String, Instant)>>>);

impl EngineEvents {
    async fn watch(prefix: &str) -> EngineEvents {
        let log = EngineEvents::default();
        let d = docker().await;
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert(
            "label".to_string(),
            vec![format!("{PREFIX_LABEL}={prefix}")],
        );
        let since = (chrono::Utc::now().timestamp() - 1).to_string();
        let opts = bollard::query_parameters::EventsOptions {
            since: Some(since),
            until: None,
            filters: Some(filters),
        };
        let l = log.clone();
        tokio::spawn(async move {
            let mut s = d.events(Some(opts));
            while let Some(Ok(m)) = s.next().await {
                let mut action = m.action.unwrap_or_default();
                let attrs = m.actor.and_then(|a| a.attributes).unwrap_or_default();
                let rid = attrs.get(REQUEST_ID_LABEL).cloned().unwrap_or_default();
                // A worker whose daemon died between its start and the
                // delivery of its files exits from the delivery shim with
                // 71 before the agent runs: that start is not a run.
                if action == "die" && attrs.get("exitCode").map(String::as_str) == Some("71") {
                    action = "die-undelivered".into();
                }
                l.0.lock().unwrap().push((action, rid, Instant::now()));
            }
        });
        // Let the subscription reach the engine.
        tokio::time::sleep(Duration::from_millis(300)).await;
        log
    }

    fn count(&self, action: &str) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for (a, rid, _) in self.0.lock().unwrap().iter() {
            if a == action {
                *m.entry(rid.clone()).or_default() += 1;
            }
        }
        m
    }

    /// Per request: the starts of containers in which the agent ran.
    fn runs(&self) -> HashMap<String, usize> {
        let mut runs = self.count("start");
        for (rid, n) in self.count("die-undelivered") {
            if let Some(s) = runs.get_mut(&rid) {
                *s -= n.min(*s);
            }
        }
        runs
    }

    fn first(&self, action: &str, rid: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(a, r, _)| a == action && r == rid)
            .map(|x| x.2)
    }
}

fn shell_request(rid: &str, script: &str) -> Value {
    spawn_request(rid, "shell_v1", script)
}

/// Waits until every id in `rids` has a result; returns them by id.
async fn wait_all_results(
    prefix: &str,
    rids: &[String],
    timeout: Duration,
) -> HashMap<String, Value> {
    let deadline = Instant::now() + timeout;
    let want: HashSet<&String> = rids.iter().collect();
    loop {
        let all = all_results(prefix).await;
        let got: HashSet<String> = all
            .iter()
            .filter_map(|r| r["request_id"].as_str().map(str::to_string))
            .collect();
        if want.iter().all(|r| got.contains(*r)) {
            let mut m = HashMap::new();
            for r in all {
                let id = r["request_id"].as_str().unwrap_or_default().to_string();
                m.insert(id, r);
            }
            return m;
        }
        if Instant::now() > deadline {
            let missing: Vec<&&String> = want.iter().filter(|r| !got.contains(**r)).collect();
            panic!(
                "no result within {timeout:?} for {} requests: {missing:?}",
                missing.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every request id has exactly one result.
async fn assert_one_result_each(prefix: &str, rids: &[String]) {
    let mut per: HashMap<String, usize> = HashMap::new();
    for r in all_results(prefix).await {
        *per.entry(r["request_id"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    for rid in rids {
        assert_eq!(per.get(rid).copied(), Some(1), "results of {rid}: {per:?}");
    }
}

async fn wait_event(prefix: &str, rid: &str, kind: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let ev = events_for(prefix, rid).await;
        if ev.iter().any(|e| e["type"] == kind) {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "no {kind} event for {rid} within {timeout:?}: {:?}",
                event_types(&ev)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// kill -9 `d` and start its successor on the same prefix and instance id.
fn crash_and_restart(d: &mut Daemon, opts: DaemonOpts) -> Daemon {
    d.cleanup_on_drop = false;
    d.kill();
    Daemon::start(
        opts.prefix(&d.prefix.clone())
            .instance_id(&d.instance_id.clone()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_twice_loses_no_request_and_runs_none_twice() {
    let opts = DaemonOpts::new("crash").max_concurrent(8);
    let mut d = Daemon::start(opts.clone().instance_id("crash-inst"));
    let prefix = d.prefix.clone();
    let engine = EngineEvents::watch(&prefix).await;
    let t0 = Instant::now();
    let mut rids = Vec::new();
    for i in 0..40 {
        let rid = format!("crash-{i:02}-{}", random_suffix());
        let secs = 1 + i % 5;
        publish_spawn(
            &prefix,
            &shell_request(&rid, &format!("sleep {secs}; echo done-{i}")),
        )
        .await;
        rids.push(rid);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut d2 = crash_and_restart(&mut d, opts.clone());
    let first_restart = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let d3 = crash_and_restart(&mut d2, opts.clone());
    let second_restart = t0.elapsed();
    let results = wait_all_results(&prefix, &rids, Duration::from_secs(240)).await;
    let all_done = t0.elapsed();
    assert_one_result_each(&prefix, &rids).await;
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for rid in &rids {
        *statuses
            .entry(results[rid]["status"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let creates = engine.count("create");
    let starts = engine.runs();
    let recreated: Vec<(&String, usize)> = rids
        .iter()
        .filter_map(|r| creates.get(r).filter(|n| **n > 1).map(|n| (r, *n)))
        .collect();
    for rid in &rids {
        assert!(
            starts.get(rid).copied().unwrap_or(0) <= 1,
            "{rid} ran in {} containers",
            starts[rid]
        );
    }
    for rid in &rids {
        let r = &results[rid];
        assert_eq!(r["status"], "succeeded", "{r:#}");
        let i: usize = rid[6..8].parse().unwrap();
        assert!(
            r["output"].as_str().unwrap().contains(&format!("done-{i}")),
            "{r:#}"
        );
    }
    assert_no_containers(&prefix).await;
    wait_until("no pending entries", Duration::from_secs(10), async || {
        pending_count(&prefix).await == 0
    })
    .await;
    let adopted = d3.stderr().matches("adopting container").count()
        + d2.stderr().matches("adopting container").count();
    eprintln!(
        "FIGURES crash: requests=40 crashes=2 results={} statuses={statuses:?} \
         containers_created={} started={} recreated_never_started={recreated:?} \
         adoptions={adopted} leaks=0 restarts_at={first_restart:?},{second_restart:?} all_results_at={all_done:?}",
        results.len(),
        creates.values().sum::<usize>(),
        starts.values().sum::<usize>(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_keeps_the_deadline_of_an_adopted_worker() {
    let opts = DaemonOpts::new("deadline").setting("stop_grace", "1s");
    let mut d = Daemon::start(opts.clone());
    let prefix = d.prefix.clone();
    let engine = EngineEvents::watch(&prefix).await;
    let rid = unique_request_id("slow");
    let mut req = shell_request(&rid, "sleep 60");
    req["worker_config_override"] = json!({"limits": {"timeout_sec": 3}});
    publish_spawn(&prefix, &req).await;
    wait_event(&prefix, &rid, "started", Duration::from_secs(30)).await;
    let d2 = crash_and_restart(&mut d, opts);
    let r = wait_result(&prefix, &rid, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "timed_out", "{r:#}");
    let start = engine.first("start", &rid).expect("start event");
    let died = engine.first("die", &rid).expect("die event");
    let ran = died.duration_since(start);
    eprintln!("FIGURES deadline: timeout=3s container ran {ran:?} across a kill -9 + restart");
    assert!(
        ran <= Duration::from_secs(5),
        "stopped after {ran:?}, want <= timeout + 2 s"
    );
    assert!(d2.stderr().contains("adopting container"));
    assert_no_containers(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_the_work_and_the_survivor_finishes_it() {
    let opts = DaemonOpts::new("two")
        .max_concurrent(4)
        .setting("reclaim_min_idle", "3s");
    let mut a = Daemon::start(opts.clone().instance_id("inst-a"));
    let prefix = a.prefix.clone();
    let b = Daemon::start(opts.clone().prefix(&prefix).instance_id("inst-b"));
    let engine = EngineEvents::watch(&prefix).await;
    let t0 = Instant::now();
    let mut rids = Vec::new();
    for i in 0..30 {
        let rid = format!("two-{i:02}-{}", random_suffix());
        publish_spawn(
            &prefix,
            &shell_request(&rid, &format!("sleep {}; echo done", 1 + i % 3)),
        )
        .await;
        rids.push(rid);
    }
    // Let both instances take work, then kill A with work in hand.
    wait_until("6 results", Duration::from_secs(60), async || {
        all_results(&prefix).await.len() >= 6
    })
    .await;
    let a_running = running_count(&prefix).await;
    a.cleanup_on_drop = false;
    a.kill();
    let killed_at = t0.elapsed();
    let results = wait_all_results(&prefix, &rids, Duration::from_secs(180)).await;
    let done_at = t0.elapsed();
    assert_one_result_each(&prefix, &rids).await;
    let starts = engine.runs();
    for rid in &rids {
        assert_eq!(
            starts.get(rid).copied().unwrap_or(0),
            1,
            "{rid} starts: {starts:?}"
        );
        assert_eq!(results[rid]["status"], "succeeded", "{:#}", results[rid]);
    }
    let mut by_instance: HashMap<String, usize> = HashMap::new();
    for rid in &rids {
        *by_instance
            .entry(
                results[rid]["worker"]["instance"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            )
            .or_default() += 1;
    }
    let adopted = b.stderr().matches("adopting container").count();
    let reclaimed = b.stderr().matches("reclaimed a pending entry").count();
    assert_no_containers(&prefix).await;
    wait_until("no pending entries", Duration::from_secs(15), async || {
        pending_count(&prefix).await == 0
    })
    .await;
    eprintln!(
        "FIGURES two-instances: requests=30 results={} by_instance={by_instance:?} \
         running_at_kill={a_running} killed_at={killed_at:?} all_results_at={done_at:?} \
         b_adopted={adopted} b_reclaimed={reclaimed} starts={} leaks=0",
        results.len(),
        starts.values().sum::<usize>()
    );
    assert!(by_instance.contains_key("inst-b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_are_dead_lettered_and_do_not_block_the_others() {
    let prefix = unique_prefix("poison");
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
    // A request some consumer took and failed on, again and again.
    let poison = unique_request_id("poison");
    let poison_entry = publish_spawn(&prefix, &shell_request(&poison, "echo never")).await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers-spawner")
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&s.spawn)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    for _ in 0..2 {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&s.spawn)
            .arg("workers-spawner")
            .arg("ghost")
            .arg(0)
            .arg(&poison_entry)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // Unparseable, and parseable without a usable request id.
    let garbage = publish_raw(&prefix, b"{not json").await;
    let no_id = publish_spawn(&prefix, &json!({"task": {"prompt": "x"}})).await;
    let mut good = Vec::new();
    for i in 0..3 {
        let rid = unique_request_id(&format!("good{i}"));
        publish_spawn(&prefix, &shell_request(&rid, "echo fine")).await;
        good.push(rid);
    }
    let d = Daemon::start(
        DaemonOpts::new("poison")
            .prefix(&prefix)
            .setting("max_deliveries", "2")
            .setting("reclaim_min_idle", "1s"),
    );
    let r = wait_result(&prefix, &poison, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "error", "{r:#}");
    assert_eq!(r["error"]["code"], "too_many_deliveries", "{r:#}");
    let dl = wait_dead_letter(&prefix, Duration::from_secs(10), |v| {
        v["entry_id"] == poison_entry.as_str()
    })
    .await;
    assert!(dl["deliveries"].as_u64().unwrap() > 2, "{dl:#}");
    assert!(
        dl["reason"].as_str().unwrap().contains("deliveries"),
        "{dl:#}"
    );
    let g = wait_dead_letter(&prefix, Duration::from_secs(10), |v| {
        v["entry_id"] == garbage.as_str()
    })
    .await;
    assert!(!g["reason"].as_str().unwrap().is_empty());
    wait_dead_letter(&prefix, Duration::from_secs(10), |v| {
        v["entry_id"] == no_id.as_str()
    })
    .await;
    let results = wait_all_results(&prefix, &good, Duration::from_secs(60)).await;
    for rid in &good {
        assert_eq!(results[rid]["status"], "succeeded");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dls = dead_letters(&prefix).await;
    assert_eq!(
        dls.iter()
            .filter(|v| v["entry_id"] == poison_entry.as_str())
            .count(),
        1
    );
    assert_eq!(dls.len(), 3, "{dls:#?}");
    assert_eq!(results_for(&prefix, &poison).await.len(), 1);
    assert_eq!(pending_count(&prefix).await, 0);
    eprintln!(
        "FIGURES poison: deliveries_at_dead_letter={} dead_letters={} good={} pending=0",
        dl["deliveries"],
        dls.len(),
        good.len()
    );
    drop(d);
}

/// Creates a plain `sleep` container; `labels` may be empty.
async fn foreign_container(name: &str, labels: HashMap<String, String>) -> String {
    let d = docker().await;
    let body = bollard::models::ContainerCreateBody {
        image: Some(test_image()),
        cmd: Some(vec!["sleep".into(), "600".into()]),
        labels: Some(labels),
        ..Default::default()
    };
    let opts = bollard::query_parameters::CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    let id = d
        .create_container(Some(opts), body)
        .await
        .expect("create")
        .id;
    d.start_container(
        &id,
        None::<bollard::query_parameters::StartContainerOptions>,
    )
    .await
    .expect("start");
    id
}

async fn is_running(id: &str) -> bool {
    let d = docker().await;
    match d
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(i) => i.state.and_then(|s| s.running).unwrap_or(false),
        Err(_) => false,
    }
}

async fn force_remove(id: &str) {
    let d = docker().await;
    let _ = d
        .remove_container(
            id,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlabelled_containers_and_those_of_live_instances_survive_every_cleanup() {
    let prefix = unique_prefix("foreign");
    // An unlabelled container holding the very name a real request needs.
    let clash = unique_request_id("clash");
    let clash_name = workers_spawner::model::container::request_container_name(&prefix, &clash);
    let unlabelled = foreign_container(&clash_name, HashMap::new()).await;
    // A managed container of this prefix owned by another live instance,
    // already past its deadline (any adopter would stop and remove it).
    let other = "other-live-instance";
    let mut c = redis_conn().await;
    let hb_key = format!("{prefix}:instance:{other}");
    let _: () = redis::cmd("SET")
        .arg(&hb_key)
        .arg("alive")
        .arg("EX")
        .arg(6)
        .query_async(&mut c)
        .await
        .unwrap();
    let stop_hb = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop_hb.clone();
        let key = hb_key.clone();
        tokio::spawn(async move {
            let mut c = redis_conn().await;
            while !stop.is_cancelled() {
                let _: Result<(), _> = redis::cmd("SET")
                    .arg(&key)
                    .arg("alive")
                    .arg("EX")
                    .arg(6)
                    .query_async(&mut c)
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let theirs_rid = unique_request_id("theirs");
    let mut l = HashMap::new();
    l.insert(MANAGED_LABEL.to_string(), "true".to_string());
    l.insert(PREFIX_LABEL.to_string(), prefix.clone());
    l.insert(REQUEST_ID_LABEL.to_string(), theirs_rid.clone());
    l.insert("io.workers-spawner.instance".to_string(), other.to_string());
    l.insert("io.workers-spawner.deadline".to_string(), "1".to_string());
    l.insert("io.workers-spawner.kind".to_string(), "oneshot".to_string());
    let theirs_name =
        workers_spawner::model::container::request_container_name(&prefix, &theirs_rid);
    let theirs = foreign_container(&theirs_name, l).await;

    let opts = DaemonOpts::new("foreign")
        .prefix(&prefix)
        .setting("reclaim_min_idle", "1s");
    // Start-up adoption.
    let mut d = Daemon::start(opts.clone());
    d.cleanup_on_drop = false; // the prefix's cleanup would remove "theirs"
                               // The request whose name is taken gets an answer, not silence.
    publish_spawn(&prefix, &shell_request(&clash, "echo hi")).await;
    let r = wait_result(&prefix, &clash, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "error", "{r:#}");
    // A redelivered request of the live instance's worker is left to it.
    publish_spawn(&prefix, &shell_request(&theirs_rid, "echo hi")).await;
    let ok = unique_request_id("ok");
    publish_spawn(&prefix, &shell_request(&ok, "echo fine")).await;
    assert_eq!(
        wait_result(&prefix, &ok, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
    // Periodic orphan adoption runs every ~5 s here.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        is_running(&unlabelled).await,
        "the unlabelled container was touched"
    );
    assert!(
        is_running(&theirs).await,
        "the live instance's container was touched"
    );
    assert!(results_for(&prefix, &theirs_rid).await.is_empty());
    // Shutdown, and a second start-up.
    assert!(d.terminate_within(Duration::from_secs(10)).is_some());
    let mut d2 = Daemon::start(opts.clone());
    d2.cleanup_on_drop = false;
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(d2.terminate_within(Duration::from_secs(10)).is_some());
    assert!(
        is_running(&unlabelled).await,
        "the unlabelled container was touched"
    );
    assert!(
        is_running(&theirs).await,
        "the live instance's container was touched"
    );
    assert!(results_for(&prefix, &theirs_rid).await.is_empty());
    stop_hb.cancel();
    force_remove(&unlabelled).await;
    force_remove(&theirs).await;
    let _: () = redis::cmd("DEL")
        .arg(&hb_key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_no_containers(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_worker_wherever_it_runs_and_unknown_commands_are_dead_lettered_once() {
    let opts = DaemonOpts::new("cancel").setting("stop_grace", "1s");
    let a = Daemon::start(opts.clone().instance_id("cancel-a"));
    let prefix = a.prefix.clone();
    let b = Daemon::start(opts.clone().prefix(&prefix).instance_id("cancel-b"));
    let mut rids = Vec::new();
    for i in 0..2 {
        let rid = unique_request_id(&format!("cancel{i}"));
        publish_spawn(&prefix, &shell_request(&rid, "sleep 60")).await;
        rids.push(rid);
    }
    for rid in &rids {
        wait_event(&prefix, rid, "started", Duration::from_secs(30)).await;
    }
    let t = Instant::now();
    for rid in &rids {
        publish_control(&prefix, &json!({"command": "cancel", "request_id": rid})).await;
    }
    for rid in &rids {
        let r = wait_result(&prefix, rid, Duration::from_secs(20)).await;
        assert_eq!(r["status"], "cancelled", "{r:#}");
    }
    let took = t.elapsed();
    publish_control(&prefix, &json!({"command": "explode", "request_id": "x"})).await;
    wait_dead_letter(&prefix, Duration::from_secs(10), |v| {
        v["data"].as_str().is_some_and(|d| d.contains("explode"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = dead_letters(&prefix)
        .await
        .iter()
        .filter(|v| v["data"].as_str().is_some_and(|d| d.contains("explode")))
        .count();
    assert_eq!(
        n, 1,
        "the unknown command must be dead-lettered exactly once"
    );
    assert_no_containers(&prefix).await;
    let instances: HashSet<String> = {
        let mut s = HashSet::new();
        for rid in &rids {
            s.insert(results_for(&prefix, rid).await[0]["worker"]["instance"].to_string());
        }
        s
    };
    eprintln!("FIGURES cancel: 2 workers cancelled in {took:?} (instances {instances:?}); unknown command dead letters={n}");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_leaves_the_worker_and_the_next_start_adopts_it() {
    let opts = DaemonOpts::new("sigterm");
    let mut d = Daemon::start(opts.clone());
    let prefix = d.prefix.clone();
    let rid = unique_request_id("term");
    publish_spawn(&prefix, &shell_request(&rid, "sleep 5; echo survived")).await;
    wait_event(&prefix, &rid, "started", Duration::from_secs(30)).await;
    let t = Instant::now();
    d.cleanup_on_drop = false;
    let st = d.terminate_within(Duration::from_secs(10));
    let took = t.elapsed();
    assert_eq!(st.and_then(|s| s.code()), Some(0), "SIGTERM must exit 0");
    assert!(took < Duration::from_secs(4), "exit took {took:?}");
    assert_eq!(
        running_count(&prefix).await,
        1,
        "the worker must keep running"
    );
    assert!(results_for(&prefix, &rid).await.is_empty());
    let d2 = Daemon::start(opts.prefix(&prefix).instance_id(&d.instance_id.clone()));
    let r = wait_result(&prefix, &rid, Duration::from_secs(30)).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert!(r["output"].as_str().unwrap().contains("survived"), "{r:#}");
    assert!(d2.stderr().contains("adopting container"));
    assert_no_containers(&prefix).await;
    eprintln!("FIGURES sigterm: exit 0 after {took:?}; worker adopted and succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_its_dead_daemon_created_but_never_started_is_replaced_and_its_request_runs_once(
) {
    let prefix = unique_prefix("unstarted");
    let engine = EngineEvents::watch(&prefix).await;
    let rid = format!("unstarted-{}", random_suffix());
    let entry_id = publish_spawn(&prefix, &shell_request(&rid, "echo ran-once")).await;
    // What a daemon that died between create and start leaves behind.
    let mut labels = HashMap::new();
    for (k, v) in [
        ("io.workers-spawner.managed", "true"),
        ("io.workers-spawner.stream-prefix", prefix.as_str()),
        (REQUEST_ID_LABEL, rid.as_str()),
        ("io.workers-spawner.preset", "shell_v1"),
        ("io.workers-spawner.instance", "a-dead-instance"),
        ("io.workers-spawner.deadline", "4000000000"),
        ("io.workers-spawner.kind", "oneshot"),
        ("io.workers-spawner.entry-id", entry_id.as_str()),
    ] {
        labels.insert(k.to_string(), v.to_string());
    }
    let name = workers_spawner::model::container::request_container_name(&prefix, &rid);
    let body = bollard::models::ContainerCreateBody {
        image: Some(test_image()),
        cmd: Some(vec!["echo".into(), "never-runs".into()]),
        labels: Some(labels),
        ..Default::default()
    };
    let opts = bollard::query_parameters::CreateContainerOptions {
        name: Some(name.clone()),
        ..Default::default()
    };
    let left = docker()
        .await
        .create_container(Some(opts), body)
        .await
        .unwrap()
        .id;
    let d = Daemon::start(DaemonOpts::new("unstarted").prefix(&prefix));
    let r = wait_result(&d.prefix, &rid, Duration::from_secs(60)).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert!(r["output"].as_str().unwrap().contains("ran-once"), "{r:#}");
    assert_one_result_each(&prefix, std::slice::from_ref(&rid)).await;
    assert!(
        docker()
            .await
            .inspect_container(
                &left,
                None::<bollard::query_parameters::InspectContainerOptions>
            )
            .await
            .is_err(),
        "the unstarted container was replaced"
    );
    assert_eq!(engine.runs().get(&rid).copied(), Some(1), "ran once");
    cleanup_containers(&prefix).await;
}
