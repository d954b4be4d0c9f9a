//! Latency numbers, printed (run with `--nocapture`), never asserted:
//!
//! - end to end: XADD of a trivial request to its result on the result
//!   stream, through the real daemon (median of 20 sequential runs);
//! - the same image and command straight through bollard: create, start,
//!   wait, remove (median of 20), bare and with the daemon's hardened host
//!   config plus a file upload, to show what the daemon adds on top.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use common::*;
use futures_util::StreamExt;

const RUNS: usize = 20;

fn stats(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = v[v.len() / 2];
    eprintln!(
        "measure: {name:<44} median {:>7.1} ms   min {:>7.1}   p90 {:>7.1}   max {:>7.1}   (n={})",
        ms(median),
        ms(v[0]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1]),
        v.len()
    );
    median
}

/// The command of fixture preset echo_v1 with prompt "hi".
fn echo_cmd() -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        "echo \"prompt=$0\"; echo \"tools=$ORCHESTRATOR_ALLOWED_TOOLS\"; echo to-stderr >&2; exit ${FAKE_EXIT:-0}".into(),
        "hi".into(),
    ]
}

fn small_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let content = b"# instructions\n".repeat(200);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_size(content.len() as u64);
    b.append_data(&mut h, "workspace/CLAUDE.md", &content[..])
        .unwrap();
    b.into_inner().unwrap()
}

async fn bollard_run(
    d: &bollard::Docker,
    prefix: &str,
    i: usize,
    hardened: bool,
) -> (Duration, Duration) {
    let mut labels = HashMap::new();
    labels.insert(PREFIX_LABEL.to_string(), prefix.to_string());
    let host_config = if hardened {
        HostConfig {
            init: Some(true),
            nano_cpus: Some(1_000_000_000),
            memory: Some(256 << 20),
            memory_swap: Some(256 << 20),
            pids_limit: Some(64),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            network_mode: Some("none".into()),
            ipc_mode: Some("private".into()),
            ..Default::default()
        }
    } else {
        HostConfig::default()
    };
    let body = ContainerCreateBody {
        image: Some(test_image()),
        cmd: Some(echo_cmd()),
        user: Some("1000:1000".into()),
        labels: Some(labels),
        network_disabled: Some(hardened),
        host_config: Some(host_config),
        ..Default::default()
    };
    let name = format!("{prefix}-{}-{i}", if hardened { "h" } else { "b" });
    let t0 = Instant::now();
    let id = d
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name),
                ..Default::default()
            }),
            body,
        )
        .await
        .expect("create")
        .id;
    if hardened {
        d.upload_to_container(
            &id,
            Some(UploadToContainerOptions {
                path: "/".into(),
                ..Default::default()
            }),
            bollard::body_full(small_tar().into()),
        )
        .await
        .expect("upload");
    }
    d.start_container(
        &id,
        None::<bollard::query_parameters::StartContainerOptions>,
    )
    .await
    .expect("start");
    let mut w = d.wait_container(&id, None::<WaitContainerOptions>);
    while let Some(r) = w.next().await {
        r.expect("wait");
    }
    let exited = t0.elapsed();
    d.remove_container(
        &id,
        Some(RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        }),
    )
    .await
    .expect("remove");
    (exited, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_end_to_end_latency_against_bare_docker() {
    // End to end through the daemon.
    let d = Daemon::start(DaemonOpts::new("measure").max_concurrent(1));
    let mut e2e = Vec::new();
    let mut start_ms = Vec::new();
    let mut run_ms = Vec::new();
    for i in 0..RUNS + 1 {
        let rid = unique_request_id(&format!("m{i}"));
        let t0 = Instant::now();
        publish_spawn(&d.prefix, &spawn_request(&rid, "echo_v1", "hi")).await;
        let r = wait_result(&d.prefix, &rid, Duration::from_secs(60)).await;
        let took = t0.elapsed();
        assert_eq!(r["status"], "succeeded", "{r:#}");
        // The first run warms caches; leave it out.
        if i > 0 {
            e2e.push(took);
            start_ms.push(Duration::from_millis(
                r["timings"]["start_ms"].as_u64().unwrap(),
            ));
            run_ms.push(Duration::from_millis(
                r["timings"]["run_ms"].as_u64().unwrap(),
            ));
        }
        // Let the removal finish so runs do not overlap.
        let deadline = Instant::now() + Duration::from_secs(5);
        while container_count(&d.prefix).await > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stats("daemon e2e: XADD -> result", e2e);
    stats("daemon timings.start_ms (received->started)", start_ms);
    stats("daemon timings.run_ms (started->result)", run_ms);
    assert_no_containers(&d.prefix).await;
    drop(d);

    // The same image and command straight through bollard.
    let prefix = unique_prefix("measure-bollard");
    let docker = docker().await;
    bollard_run(&docker, &prefix, 999, false).await;
    for hardened in [false, true] {
        let (mut to_exit, mut total) = (Vec::new(), Vec::new());
        for i in 0..RUNS {
            let (e, t) = bollard_run(&docker, &prefix, i, hardened).await;
            to_exit.push(e);
            total.push(t);
        }
        let kind = if hardened { "hardened+upload" } else { "bare" };
        stats(&format!("bollard {kind}: create..wait (exited)"), to_exit);
        stats(&format!("bollard {kind}: create..wait..remove"), total);
    }
    assert!(cleanup_containers(&prefix).await.is_empty());
}
