//! The steps every task goes through once its process exists: announce
//! the start, forward the output, watch for the end, the deadline or a
//! stop, stop it when needed, gather the evidence, classify, publish the
//! result. A container and an exec differ only in how they end, stop and
//! leave evidence; the rest is one path.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::output::{forward, forward_output, stdout_tail, OutputTail};
use super::{time_left, Job, StopReason, WorkerEnv};
use futures_util::StreamExt;

use crate::adapters::bus::Published;
use crate::adapters::engine::{ContainerFacts, Engine, EngineError, ExecOutput, OutputStream};
use crate::adapters::sink::Sink;
use crate::model::conversation::IdScanner;
use crate::model::outcome::{self, ErrorCode};
use crate::model::protocol::{
    normalize_rfc3339, now_rfc3339, rfc3339_millis, ErrorInfo, EventType, ResultRecord, Status,
};
use crate::model::retry;

/// How a task's watch ended.
enum End {
    /// Its process ended by itself.
    Exited,
    /// Its deadline passed.
    TimedOut,
    /// Its stop token fired.
    Stopped(StopReason),
    /// Its container vanished.
    Lost(String),
}

/// What a task left behind when it ended.
#[derive(Debug, Clone, Copy)]
struct Evidence {
    exit_code: Option<i64>,
    oom_killed: bool,
}

/// The status, error and closing event of a task.
struct Verdict {
    status: Status,
    error: Option<ErrorInfo>,
    event: EventType,
}

/// Counts the start and says so (`started` event with `data`).
async fn announce_start(env: &WorkerEnv, job: &Job, start_ms: Option<u64>, data: Value) {
    if let Some(ms) = start_ms {
        env.metrics.start_seconds.observe(ms as f64 / 1000.0);
    }
    env.sink
        .event(&job.request_id, EventType::Started, data)
        .await;
}

/// Waits for `ended`, the job's deadline or its stop, whichever comes first.
async fn watch(job: &Job, ended: impl Future<Output = Result<(), String>>) -> End {
    tokio::select! {
        r = ended => match r {
            Ok(()) => End::Exited,
            Err(e) => End::Lost(e),
        },
        _ = tokio::time::sleep(time_left(job.deadline_unix)) => End::TimedOut,
        _ = job.stop.cancelled() => End::Stopped(job.stop_reason()),
    }
}

/// How a task ended, from the watch and the evidence (`None`: the
/// container could not be inspected); `shim_message` is the delivery
/// shim's failure line, if it printed one.
fn classify(end: &End, evidence: Option<Evidence>, shim_message: Option<&str>) -> Verdict {
    let (status, error, event) = match (end, evidence) {
        (End::TimedOut, _) | (End::Stopped(StopReason::Expired), _) => (
            Status::TimedOut,
            Some(outcome::timed_out()),
            EventType::TimedOut,
        ),
        (End::Stopped(StopReason::Cancelled | StopReason::Fenced), _) => (
            Status::Cancelled,
            Some(outcome::cancelled()),
            EventType::Cancelled,
        ),
        (End::Lost(msg), None) => (
            Status::Error,
            Some(ErrorCode::ContainerLost.info(None, format!("the container disappeared: {msg}"))),
            EventType::Finished,
        ),
        (_, Some(e)) if e.oom_killed || e.exit_code != Some(0) => (
            Status::Failed,
            e.exit_code
                .and_then(|code| crate::model::delivery::shim_failure(code, shim_message)),
            EventType::Finished,
        ),
        (_, Some(_)) => (Status::Succeeded, None, EventType::Finished),
        (_, None) => (
            Status::Error,
            Some(
                ErrorCode::ContainerLost
                    .info(None, "the container could not be inspected after it ended"),
            ),
            EventType::Finished,
        ),
    };
    Verdict {
        status,
        error,
        event,
    }
}

/// The facts of a run the result carries.
struct RunFacts {
    evidence: Option<Evidence>,
    output: (String, bool),
    started_at: String,
    finished_at: String,
    start_ms: Option<u64>,
    run_ms: u64,
}

/// The job's result from its verdict and run facts.
fn result_of(env: &WorkerEnv, job: &Job, v: Verdict, run: RunFacts) -> ResultRecord {
    let mut result = job.result(v.status, v.error, &env.instance);
    result.exit_code = run.evidence.and_then(|e| e.exit_code);
    result.oom_killed = run.evidence.is_some_and(|e| e.oom_killed);
    (result.output, result.output_truncated) = run.output;
    result.timings.started_at = Some(run.started_at);
    result.timings.finished_at = Some(run.finished_at);
    result.timings.start_ms = run.start_ms;
    result.timings.run_ms = Some(run.run_ms);
    result
}

/// Revokes the job's gateway key (it expires on its own otherwise).
async fn revoke_key(env: &WorkerEnv, job: &Job) {
    if let (Some(key), Sink::Redis(bus, _, _)) = (&job.api_key, &env.sink) {
        if let Err(e) = bus.revoke_worker_key(key).await {
            tracing::warn!(request_id = %job.request_id, error = %e, "revoking the worker key failed; it expires on its own");
        }
    }
}

/// Supervises a started container to its end: output, deadline, stop,
/// evidence, result, removal. `fresh` is false for adopted containers.
pub async fn supervise(env: &WorkerEnv, job: Job, fresh: bool) -> Status {
    let started = Instant::now();
    let started_at = now_rfc3339();
    let start_ms = job
        .received
        .map(|r| started.duration_since(r).as_millis() as u64);
    if fresh {
        let data = json!({"container": job.container_name});
        announce_start(env, &job, start_ms, data).await;
    }
    env.metrics.running_workers.inc();
    let mut job = job;
    let attached = job.output.get_mut().expect("output lock").take();
    // The attached stream holds all the output; a followed log may miss an
    // unterminated last line (the engine flushes it when the log closes,
    // which can be after the follow ended), so the tail is read again then.
    let whole_output = attached.is_some();
    let output = match attached {
        Some(attached) => {
            let (env, rid, red) = (env.clone(), job.request_id.clone(), job.redactor.clone());
            tokio::spawn(async move { forward(&env, &rid, &red, attached).await })
        }
        None => tokio::spawn(forward_output(
            env.clone(),
            job.request_id.clone(),
            job.container_id.clone(),
            job.redactor.clone(),
            !fresh,
        )),
    };

    let end = watch(&job, wait_exit(&env.engine, &job.container_id)).await;
    // An adopted container may have ended by itself while no daemon watched
    // it: when the deadline "fires" at once, it ended within its time unless
    // it finished after the deadline.
    let end = match end {
        End::TimedOut => match env.engine.inspect(&job.container_id).await {
            Ok(f) if !f.running && f.started && !finished_after(&f, job.deadline_unix) => {
                End::Exited
            }
            _ => End::TimedOut,
        },
        other => other,
    };
    if matches!(end, End::TimedOut | End::Stopped(_)) {
        // SIGTERM, grace, SIGKILL; then make sure it is really dead.
        if let Err(e) = env.engine.stop(&job.container_id, env.stop_grace).await {
            tracing::warn!(request_id = %job.request_id, error = %e, "stop failed; killing");
            let _ = env.engine.kill(&job.container_id, "SIGKILL").await;
        }
        let _ = tokio::time::timeout(
            env.stop_grace + Duration::from_secs(10),
            wait_exit(&env.engine, &job.container_id),
        )
        .await;
    }
    // Let the output follower drain what the container printed last: the
    // log stream ends on its own once the engine has sent everything, so
    // this waits for the data, not for a guess. The bound is only for a
    // wedged engine; then the unread rest is reported as dropped.
    let followed = tokio::time::timeout(Duration::from_secs(60), output).await;
    if followed.is_err() {
        tracing::warn!("output follower did not finish; the rest of the output is not forwarded");
        env.metrics.output_dropped.inc();
        env.sink
            .event(
                &job.request_id,
                EventType::OutputDropped,
                json!({"lines": null, "reason": "output not read within 60 s of the exit"}),
            )
            .await;
    }
    env.metrics.running_workers.dec();

    let mut facts = inspect_retrying(&env.engine, &job.container_id).await;
    // The engine may record the OOM kill a moment after the exit (its exit
    // and OOM events race): a SIGKILL exit is looked at again briefly.
    for _ in 0..5 {
        match &facts {
            Some(f) if f.exit_code == Some(137) && !f.oom_killed && matches!(end, End::Exited) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(again) = inspect_retrying(&env.engine, &job.container_id).await {
                    facts = Some(again);
                }
            }
            _ => break,
        }
    }
    // A follower of the attached output already holds the tail; one that
    // followed the logs (adopted containers, archive delivery) may not, so
    // the logs are read again.
    let mut followed = match followed {
        Ok(Ok(tail)) => tail,
        _ => OutputTail::default(),
    };
    let shim_message = followed.shim_message.clone();
    // The attached stream was read from its first byte: it is the
    // transcript; a followed log (adopted, archive delivery) is read again.
    let transcript = if whole_output {
        super::workspace::Transcript::Captured(std::mem::take(&mut followed.whole))
    } else {
        super::workspace::Transcript::Logs
    };
    let output = if whole_output {
        (followed.text, followed.truncated)
    } else {
        stdout_tail(
            &env.engine,
            &job.container_id,
            env.output.tail_bytes,
            &job.redactor,
        )
        .await
    };
    let finished_at = now_rfc3339();
    let run_ms = started.elapsed().as_millis() as u64;
    env.metrics.run_seconds.observe(run_ms as f64 / 1000.0);

    let evidence = facts.as_ref().map(|f| Evidence {
        exit_code: f.exit_code,
        oom_killed: f.oom_killed,
    });
    let verdict = classify(&end, evidence, shim_message.as_deref());
    let status = verdict.status;
    // A worker whose request another attempt or instance holds now (this
    // host was taken for lost) says nothing more: no `finished`, no result.
    if !env.sink.may_speak(&job.request_id, job.attempt).await {
        env.metrics.fenced.inc();
        tracing::info!(request_id = %job.request_id, attempt = job.attempt, "the request is held elsewhere now; removing its worker quietly");
        revoke_key(env, &job).await;
        remove_quietly(env, &job).await;
        env.sink.forget_attempt(&job.request_id);
        return status;
    }
    let exit_code = evidence.and_then(|e| e.exit_code);
    let oom_killed = evidence.is_some_and(|e| e.oom_killed);
    tracing::info!(status = %status, exit_code = ?exit_code, "worker finished");
    env.sink
        .event(
            &job.request_id,
            verdict.event,
            json!({"exit_code": exit_code, "oom_killed": oom_killed, "status": status.as_str()}),
        )
        .await;
    let run = RunFacts {
        evidence,
        output,
        started_at: facts
            .as_ref()
            .and_then(|f| f.started_at.as_deref())
            .and_then(normalize_rfc3339)
            .unwrap_or(started_at),
        finished_at,
        start_ms,
        run_ms,
    };
    let mut result = result_of(env, &job, verdict, run);
    super::workspace::collect(
        env,
        &job.request_id,
        &job.container_id,
        job.workspace.as_ref(),
        &job.redactor,
        transcript,
        &mut result,
    )
    .await;
    finish(env, &job, &result).await;
    status
}

/// A session task's process: a Docker exec in the session's container.
pub struct Exec {
    /// The exec's id (for its exit code).
    pub exec_id: String,
    /// Its output, attached at its creation.
    pub output: ExecOutput,
    /// Stops every process of the task (the in-container killer).
    pub kill: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The session it belongs to (in its `started` event).
    pub session_id: Option<String>,
    /// A JSON field of stdout that carries the agent's conversation id
    /// (see [`crate::model::conversation::IdScanner`]).
    pub report_field: Option<String>,
}

/// How a session task ended, for its session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecEnd {
    /// Whether its result is out.
    pub published: bool,
    /// The agent's exit code, when it ran to an exit.
    pub exit_code: Option<i64>,
    /// The conversation id the agent printed (`report_field`), if any.
    pub reported_id: Option<String>,
}

/// Supervises a session task (an exec) to its result, which it publishes;
/// says whether the result is out (publishing stops trying once `give_up`
/// fires), the exit code and a reported conversation id. The session's
/// container stays.
pub async fn supervise_exec(
    env: &WorkerEnv,
    job: &Job,
    exec: Exec,
    give_up: &CancellationToken,
) -> ExecEnd {
    // The agent process runs from here on: that is the start.
    let started = Instant::now();
    let start_ms = job
        .received
        .map(|r| started.duration_since(r).as_millis() as u64);
    env.metrics.running_workers.inc();
    let data = json!({"container": job.container_name, "session_id": exec.session_id});
    announce_start(env, job, start_ms, data).await;

    let (env2, rid, red) = (env.clone(), job.request_id.clone(), job.redactor.clone());
    let scanner = exec
        .report_field
        .as_deref()
        .map(|f| Arc::new(std::sync::Mutex::new(IdScanner::new(f))));
    let output: ExecOutput = match scanner.clone() {
        None => exec.output,
        Some(scan) => Box::pin(exec.output.inspect(move |item| {
            if let Ok((OutputStream::Stdout, chunk)) = item {
                scan.lock().expect("scanner lock").push(chunk);
            }
        })),
    };
    let mut fwd = tokio::spawn(async move { forward(&env2, &rid, &red, output).await });
    // The exec ends when its output does.
    let mut tail = None;
    let end = watch(job, async {
        tail = Some((&mut fwd).await.unwrap_or_default());
        Ok(())
    })
    .await;
    if !matches!(end, End::Exited) {
        exec.kill.await;
        tail = tokio::time::timeout(Duration::from_secs(10), fwd)
            .await
            .ok()
            .and_then(Result::ok);
    }
    let mut tail = tail.unwrap_or_default();
    // An exec's output is in no log: the forwarder's copy is its transcript.
    let captured = std::mem::take(&mut tail.whole);
    env.metrics.running_workers.dec();
    let run_ms = started.elapsed().as_millis() as u64;
    env.metrics.run_seconds.observe(run_ms as f64 / 1000.0);
    let exit_code = env
        .engine
        .exec_exit_code(&exec.exec_id)
        .await
        .ok()
        .flatten();
    // An exec has no delivery shim: a failing exit code is only a failure.
    let evidence = Evidence {
        exit_code,
        oom_killed: false,
    };
    let verdict = classify(&end, Some(evidence), None);
    env.sink
        .event(
            &job.request_id,
            verdict.event,
            json!({"exit_code": exit_code, "status": verdict.status.as_str()}),
        )
        .await;
    let run = RunFacts {
        evidence: Some(evidence),
        output: (tail.text, tail.truncated),
        started_at: rfc3339_millis((std::time::SystemTime::now() - started.elapsed()).into()),
        finished_at: now_rfc3339(),
        start_ms,
        run_ms,
    };
    let mut result = result_of(env, job, verdict, run);
    revoke_key(env, job).await;
    super::workspace::collect(
        env,
        &job.request_id,
        &job.container_id,
        job.workspace.as_ref(),
        &job.redactor,
        super::workspace::Transcript::Captured(captured),
        &mut result,
    )
    .await;
    let reported_id =
        scanner.and_then(|s| s.lock().expect("scanner lock").found().map(str::to_string));
    ExecEnd {
        published: env.sink.result(&result, give_up).await,
        exit_code,
        reported_id,
    }
}

/// Publishes `result`, then removes the container (only once the result is
/// safe: a container left behind is adopted and its result republished).
pub async fn finish(env: &WorkerEnv, job: &Job, result: &ResultRecord) {
    revoke_key(env, job).await;
    let next = retry::reason_of(result).and_then(|why| {
        Some((
            why,
            retry::next_attempt(job.retry.as_ref(), job.attempt, why)?,
        ))
    });
    let mut removed = false;
    if let Some((why, next)) = next {
        // The container gives way first: on this engine its name is the
        // next attempt's.
        removed = remove_quietly(env, job).await;
        if removed && schedule_retry(env, job, why, next).await {
            return;
        }
    }
    match env.sink.publish(result, &CancellationToken::new()).await {
        None => return,
        Some(Published::Fenced) => {
            if !removed {
                remove_quietly(env, job).await;
            }
            return;
        }
        Some(_) => {}
    }
    let gone = if removed {
        Ok(())
    } else {
        env.engine.remove(&job.container_id).await
    };
    match gone {
        Ok(()) => {
            env.egress.close(&job.container_name);
            env.sink
                .event(
                    &job.request_id,
                    EventType::Removed,
                    json!({"container": job.container_name}),
                )
                .await
        }
        Err(e) => {
            env.metrics.docker_errors.inc();
            tracing::warn!(request_id = %job.request_id, error = %e, "removing the container failed; adoption will retry");
        }
    }
}

/// Removes the job's container and closes its socket without a word: its
/// request is answered or run again by another attempt (or instance).
pub async fn remove_quietly(env: &WorkerEnv, job: &Job) -> bool {
    let gone = match env.engine.remove(&job.container_id).await {
        Ok(()) | Err(EngineError::NotFound(_)) => true,
        Err(e) => {
            env.metrics.docker_errors.inc();
            tracing::warn!(request_id = %job.request_id, error = %e, "removing the container failed; adoption will retry");
            false
        }
    };
    env.egress.close(&job.container_name);
    gone
}

/// Queues attempt `next` of the job's request after its policy's backoff;
/// false when this instance holds no such attempt (the result is
/// published instead).
async fn schedule_retry(env: &WorkerEnv, job: &Job, why: retry::Reason, next: u32) -> bool {
    let Some(policy) = &job.retry else {
        return false;
    };
    env.sink
        .retry(
            &job.request_id,
            job.attempt,
            next,
            why,
            policy.backoff,
            &env.instance,
        )
        .await
}

/// Whether the container's recorded finish time lies past `deadline_unix`.
fn finished_after(f: &ContainerFacts, deadline_unix: u64) -> bool {
    f.finished_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t.timestamp_millis() > (deadline_unix * 1000) as i64)
}

/// Waits until the container stops; survives transient Docker errors.
async fn wait_exit(engine: &Engine, id: &str) -> Result<(), String> {
    let mut delay = Duration::from_millis(200);
    loop {
        match engine.wait(id).await {
            Ok(_) => return Ok(()),
            Err(EngineError::NotFound(_)) => return Err("container not found".into()),
            Err(e) => {
                tracing::warn!(container = id, error = %e, "waiting failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                if let Ok(f) = engine.inspect(id).await {
                    if !f.running {
                        return Ok(());
                    }
                }
            }
        }
    }
}

async fn inspect_retrying(engine: &Engine, id: &str) -> Option<ContainerFacts> {
    for attempt in 0..10u32 {
        match engine.inspect(id).await {
            Ok(f) => return Some(f),
            Err(EngineError::NotFound(_)) => return None,
            Err(e) => {
                tracing::warn!(container = id, error = %e, attempt, "inspect failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(exit_code: i64, oom_killed: bool) -> Option<Evidence> {
        Some(Evidence {
            exit_code: Some(exit_code),
            oom_killed,
        })
    }

    #[test]
    fn the_verdict_follows_the_end_then_the_evidence() {
        let v = classify(&End::TimedOut, ev(137, false), None);
        assert_eq!((v.status, v.event), (Status::TimedOut, EventType::TimedOut));
        assert_eq!(v.error.unwrap().code, "timed_out");
        let v = classify(&End::Stopped(StopReason::Expired), ev(0, false), None);
        assert_eq!(v.status, Status::TimedOut);
        let v = classify(&End::Stopped(StopReason::Cancelled), ev(0, false), None);
        assert_eq!(
            (v.status, v.event),
            (Status::Cancelled, EventType::Cancelled)
        );
        let v = classify(&End::Exited, ev(0, false), None);
        assert_eq!((v.status, v.error), (Status::Succeeded, None));
        let v = classify(&End::Exited, ev(0, true), None);
        assert_eq!(v.status, Status::Failed);
        let v = classify(&End::Exited, ev(3, false), None);
        assert_eq!((v.status, v.error), (Status::Failed, None));
        let v = classify(&End::Exited, None, None);
        assert_eq!(v.error.unwrap().code, "container_lost");
        let v = classify(&End::Lost("gone".into()), None, None);
        assert!(v.error.unwrap().message.contains("gone"));
    }

    #[test]
    fn the_shims_own_failure_names_the_cause() {
        let line = format!(
            "{}cannot run claude: not found",
            crate::model::delivery::SHIM_MESSAGE_PREFIX
        );
        let v = classify(
            &End::Exited,
            ev(crate::model::delivery::SHIM_NOT_FOUND, false),
            Some(&line),
        );
        assert_eq!(v.status, Status::Failed);
        assert_eq!(v.error.unwrap().code, "agent_not_found");
    }
}
