//! The life of one worker container: start, output to events, timeout and
//! cancel, evidence, result, removal. Used by the daemon (Redis sink) and
//! by `workers-spawner run` (terminal sink).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::adapters::engine::{ContainerFacts, Engine, EngineError, OutputStream};
use crate::adapters::sink::Sink;
use crate::metrics::Metrics;
use crate::model::container::FileDelivery;
use crate::model::delivery::SHIM_MESSAGE_PREFIX;
use crate::model::protocol::{
    normalize_rfc3339, now_rfc3339, ErrorInfo, EventType, ResultRecord, Status, Timings, WorkerInfo,
};
use crate::model::redact::Redactor;
use crate::model::render::RenderedFile;

/// Output handling limits.
#[derive(Debug, Clone)]
pub struct OutputLimits {
    /// Bytes of stdout kept for the result.
    pub tail_bytes: usize,
    /// Output lines per second forwarded as events.
    pub lines_per_sec: u32,
    /// Longest forwarded line, in bytes.
    pub line_bytes: usize,
}

/// Shared handles every worker needs.
#[derive(Clone)]
pub struct WorkerEnv {
    /// Docker.
    pub engine: Engine,
    /// Where events and results go.
    pub sink: Sink,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// SIGTERM to SIGKILL grace period.
    pub stop_grace: Duration,
    /// Output limits.
    pub output: OutputLimits,
    /// This daemon instance.
    pub instance: String,
}

/// Why a worker is being stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A control command asked for it.
    Cancelled,
    /// The session's TTL passed.
    Expired,
}

/// One request's worker being supervised.
pub struct Job {
    /// Request id.
    pub request_id: String,
    /// Session id, if any.
    pub session_id: Option<String>,
    /// Preset id, if any.
    pub preset: Option<String>,
    /// Config hash.
    pub config_hash: String,
    /// Image run.
    pub image: String,
    /// Container id.
    pub container_id: String,
    /// Container name.
    pub container_name: String,
    /// Secrets to mask in output.
    pub redactor: Redactor,
    /// Absolute deadline of the task (Unix seconds).
    pub deadline_unix: u64,
    /// When the request was received (RFC 3339) and how long it queued.
    pub received_at: Option<String>,
    /// Entry id time to reception, ms.
    pub queue_ms: Option<u64>,
    /// Reception instant, for start latency.
    pub received: Option<Instant>,
    /// Fires to stop the worker early.
    pub stop: CancellationToken,
    /// Why `stop` fired (set before cancelling).
    pub stop_reason: Arc<std::sync::Mutex<Option<StopReason>>>,
    /// The worker's gateway key, revoked when it ends.
    pub api_key: Option<String>,
    /// The container's output, attached before its start; `None` follows
    /// its logs instead (adopted containers, archive delivery). In a mutex
    /// only so that `&Job` is `Sync` across the supervisor's awaits.
    pub output: std::sync::Mutex<Option<crate::adapters::engine::ExecOutput>>,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The deadline (Unix seconds, as labelled) of a task of `timeout_sec`
/// starting now. Rounded up: the task gets at least `timeout_sec`, never
/// up to a second less as with a truncated "now".
pub fn deadline_after(timeout_sec: u64) -> u64 {
    unix_now_ms().div_ceil(1000) + timeout_sec
}

/// Time left until `deadline_unix`, to the millisecond.
pub fn time_left(deadline_unix: u64) -> Duration {
    Duration::from_millis((deadline_unix * 1000).saturating_sub(unix_now_ms()))
}

impl Job {
    fn worker_info(&self, instance: &str) -> WorkerInfo {
        WorkerInfo {
            container: self.container_name.clone(),
            image: self.image.clone(),
            preset: self.preset.clone(),
            config_hash: self.config_hash.clone(),
            instance: instance.to_string(),
        }
    }

    /// A result for this job with `status` and no run facts.
    pub fn result(&self, status: Status, error: Option<ErrorInfo>, instance: &str) -> ResultRecord {
        let mut r = ResultRecord::bare(&self.request_id, status, error);
        r.session_id = self.session_id.clone();
        r.worker = Some(self.worker_info(instance));
        r.timings = Timings {
            received_at: self.received_at.clone(),
            queue_ms: self.queue_ms,
            ..Default::default()
        };
        r
    }
}

/// Delivers `files` the way the container was created for and starts it;
/// returns its attached output when the delivery attached to it.
pub async fn start_container(
    engine: &Engine,
    id: &str,
    files: &[RenderedFile],
    env: &[(String, String)],
    delivery: FileDelivery,
) -> Result<Option<crate::adapters::engine::ExecOutput>, EngineError> {
    match delivery {
        FileDelivery::Archive => {
            engine.upload(id, files).await?;
            engine.start(id).await?;
            Ok(None)
        }
        FileDelivery::Stdin(_) => {
            // Attached before the start, as `docker run -i` does: the shim's
            // stdin is ours from its first read, and no line of output is
            // missed (nor read back from the log file later).
            let payload = crate::model::delivery::payload(files, env)
                .map_err(|e| EngineError::Stdin(std::io::Error::other(e.to_string())))?;
            let (stdin, output) = engine.attach(id).await?;
            engine.start(id).await?;
            Engine::deliver(stdin, &payload).await?;
            Ok(Some(output))
        }
    }
}

/// The delivery a one-shot worker of `spec` uses.
pub fn oneshot_delivery(spec: &crate::model::spec::WorkerSpec) -> FileDelivery {
    match spec.config.agent.delivery {
        crate::model::config::Delivery::Stdin => {
            FileDelivery::Stdin(crate::model::delivery::ShimMode::Run)
        }
        crate::model::config::Delivery::Archive => FileDelivery::Archive,
    }
}

/// Splits output chunks into lines, masks secrets, bounds the rate and
/// publishes them in batches.
struct OutputForwarder {
    request_id: String,
    sink: Sink,
    redactor: Redactor,
    limits: OutputLimits,
    partial: [Vec<u8>; 2],
    batch: Vec<(EventType, serde_json::Value)>,
    window_start: Instant,
    window_lines: u32,
    dropped: u64,
    shim_message: Option<String>,
    metrics: Arc<Metrics>,
    last_flush: Instant,
}

const BATCH_LINES: usize = 256;
const BATCH_DELAY: Duration = Duration::from_millis(20);

impl OutputForwarder {
    fn push_chunk(&mut self, stream: OutputStream, chunk: &[u8]) {
        let i = stream as usize;
        self.partial[i].extend_from_slice(chunk);
        while let Some(pos) = self.partial[i].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial[i].drain(..=pos).collect();
            self.push_line(stream, &line[..line.len() - 1]);
        }
        // A line with no newline in sight is cut at the limit.
        if self.partial[i].len() > self.limits.line_bytes {
            let line: Vec<u8> = std::mem::take(&mut self.partial[i]);
            self.push_line(stream, &line);
        }
    }

    fn push_line(&mut self, stream: OutputStream, line: &[u8]) {
        if stream == OutputStream::Stderr && line.starts_with(SHIM_MESSAGE_PREFIX.as_bytes()) {
            self.shim_message = Some(self.redactor.redact(&String::from_utf8_lossy(line)));
        }
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_lines = 0;
        }
        if self.window_lines >= self.limits.lines_per_sec {
            self.dropped += 1;
            return;
        }
        self.window_lines += 1;
        let mut text = String::from_utf8_lossy(line).into_owned();
        if text.ends_with('\r') {
            text.pop();
        }
        if text.len() > self.limits.line_bytes {
            let mut cut = self.limits.line_bytes;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let text = self.redactor.redact(&text);
        self.batch.push((
            EventType::Output,
            json!({"stream": stream.as_str(), "text": text}),
        ));
    }

    async fn flush(&mut self) {
        if self.dropped > 0 {
            self.metrics.output_dropped.inc_by(self.dropped);
            self.batch
                .push((EventType::OutputDropped, json!({"lines": self.dropped})));
            self.dropped = 0;
        }
        let batch = std::mem::take(&mut self.batch);
        self.last_flush = Instant::now();
        self.sink.events(&self.request_id, &batch).await;
    }

    async fn finish(&mut self) {
        for (i, stream) in [OutputStream::Stdout, OutputStream::Stderr]
            .into_iter()
            .enumerate()
        {
            if !self.partial[i].is_empty() {
                let line = std::mem::take(&mut self.partial[i]);
                self.push_line(stream, &line);
            }
        }
        self.flush().await;
    }
}

/// Follows the container's output until it ends, forwarding it as events.
async fn forward_output(
    env: WorkerEnv,
    job_request_id: String,
    container: String,
    redactor: Redactor,
    from_now: bool,
) -> OutputTail {
    let logs = env
        .engine
        .logs(&container, true, if from_now { Some(0) } else { None });
    forward(&env, &job_request_id, &redactor, Box::pin(logs)).await
}

/// What a worker's output leaves for its result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputTail {
    /// The redacted tail of its stdout.
    pub text: String,
    /// Whether the tail lost its start.
    pub truncated: bool,
    /// The last line the delivery shim printed on stderr about its own
    /// failure (see [`crate::model::delivery::SHIM_MESSAGE_PREFIX`]), redacted.
    pub shim_message: Option<String>,
}

/// Forwards a process's output as events until the stream ends; returns
/// what the result keeps of it.
pub async fn forward(
    env: &WorkerEnv,
    request_id: &str,
    redactor: &Redactor,
    mut output: crate::adapters::engine::ExecOutput,
) -> OutputTail {
    let mut fwd = OutputForwarder {
        request_id: request_id.to_string(),
        sink: env.sink.clone(),
        redactor: redactor.clone(),
        limits: env.output.clone(),
        partial: [Vec::new(), Vec::new()],
        batch: Vec::new(),
        window_start: Instant::now(),
        window_lines: 0,
        dropped: 0,
        shim_message: None,
        metrics: env.metrics.clone(),
        // The first line goes out at once.
        last_flush: Instant::now()
            .checked_sub(BATCH_DELAY)
            .unwrap_or_else(Instant::now),
    };
    let mut tail: Vec<u8> = Vec::new();
    let mut truncated = false;
    loop {
        // Lines are batched for at most BATCH_DELAY after the last flush:
        // sparse output goes out line by line at once, a burst in batches.
        let next = if fwd.batch.is_empty() {
            output.next().await
        } else {
            let wait = BATCH_DELAY.saturating_sub(fwd.last_flush.elapsed());
            match tokio::time::timeout(wait, output.next()).await {
                Ok(n) => n,
                Err(_) => {
                    fwd.flush().await;
                    continue;
                }
            }
        };
        match next {
            Some(Ok((stream, chunk))) => {
                if stream == OutputStream::Stdout {
                    tail.extend_from_slice(&chunk);
                    if tail.len() > 2 * env.output.tail_bytes {
                        tail.drain(..tail.len() - env.output.tail_bytes);
                        truncated = true;
                    }
                }
                fwd.push_chunk(stream, &chunk);
                if fwd.batch.len() >= BATCH_LINES
                    || (!fwd.batch.is_empty() && fwd.last_flush.elapsed() >= BATCH_DELAY)
                {
                    fwd.flush().await;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(request_id, error = %e, "following output failed");
                break;
            }
            None => break,
        }
    }
    fwd.finish().await;
    if tail.len() > env.output.tail_bytes {
        tail.drain(..tail.len() - env.output.tail_bytes);
        truncated = true;
    }
    OutputTail {
        text: redactor.redact(&String::from_utf8_lossy(&tail)),
        truncated,
        shim_message: fwd.shim_message,
    }
}

/// The last `tail_bytes` of the container's stdout, redacted; and whether
/// the beginning was cut.
pub async fn stdout_tail(
    engine: &Engine,
    container: &str,
    tail_bytes: usize,
    redactor: &Redactor,
) -> (String, bool) {
    // Lines are at most a few KiB in practice; 4096 lines cover the tail.
    let logs = engine.logs(container, false, Some(4096));
    tokio::pin!(logs);
    let mut out: Vec<u8> = Vec::new();
    let mut any_before = false;
    while let Some(item) = logs.next().await {
        match item {
            Ok((OutputStream::Stdout, chunk)) => out.extend_from_slice(&chunk),
            Ok(_) => {}
            Err(_) => break,
        }
        if out.len() > tail_bytes * 2 {
            out.drain(..out.len() - tail_bytes);
            any_before = true;
        }
    }
    let mut truncated = any_before;
    if out.len() > tail_bytes {
        out.drain(..out.len() - tail_bytes);
        truncated = true;
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    (redactor.redact(&text), truncated)
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
        if let Some(ms) = start_ms {
            env.metrics.start_seconds.observe(ms as f64 / 1000.0);
        }
        env.sink
            .event(
                &job.request_id,
                EventType::Started,
                json!({"container": job.container_name}),
            )
            .await;
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

    let remaining = time_left(job.deadline_unix);
    enum End {
        Exited,
        TimedOut,
        Stopped(StopReason),
        Lost(String),
    }
    let end = tokio::select! {
        r = wait_exit(&env.engine, &job.container_id) => match r {
            Ok(()) => End::Exited,
            Err(e) => End::Lost(e),
        },
        _ = tokio::time::sleep(remaining) => End::TimedOut,
        _ = job.stop.cancelled() => End::Stopped(job.stop_reason.lock().expect("lock").unwrap_or(StopReason::Cancelled)),
    };
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
    let followed = match followed {
        Ok(Ok(tail)) => tail,
        _ => OutputTail::default(),
    };
    let (output_tail, truncated) = if whole_output {
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

    let (status, error, event) = match (&end, &facts) {
        (End::TimedOut, _) | (End::Stopped(StopReason::Expired), _) => (
            Status::TimedOut,
            Some(ErrorInfo {
                code: "timed_out".into(),
                field: Some("limits.timeout_sec".into()),
                message: "the task ran past its deadline and was stopped".into(),
            }),
            EventType::TimedOut,
        ),
        (End::Stopped(StopReason::Cancelled), _) => (
            Status::Cancelled,
            Some(ErrorInfo {
                code: "cancelled".into(),
                field: None,
                message: "cancelled by a control command".into(),
            }),
            EventType::Cancelled,
        ),
        (End::Lost(msg), None) => (
            Status::Error,
            Some(ErrorInfo {
                code: "container_lost".into(),
                field: None,
                message: format!("the container disappeared: {msg}"),
            }),
            EventType::Finished,
        ),
        (_, Some(f)) if f.oom_killed || f.exit_code != Some(0) => (
            Status::Failed,
            f.exit_code.and_then(|code| {
                crate::model::delivery::shim_failure(code, followed.shim_message.as_deref())
            }),
            EventType::Finished,
        ),
        (_, Some(_)) => (Status::Succeeded, None, EventType::Finished),
        (_, None) => (
            Status::Error,
            Some(ErrorInfo {
                code: "container_lost".into(),
                field: None,
                message: "the container could not be inspected after it ended".into(),
            }),
            EventType::Finished,
        ),
    };
    let exit_code = facts.as_ref().and_then(|f| f.exit_code);
    tracing::info!(status = %status, exit_code = ?exit_code, "worker finished");
    let oom_killed = facts.as_ref().map(|f| f.oom_killed).unwrap_or(false);
    env.sink
        .event(
            &job.request_id,
            event,
            json!({"exit_code": exit_code, "oom_killed": oom_killed, "status": status.as_str()}),
        )
        .await;

    let mut result = job.result(status, error, &env.instance);
    result.exit_code = exit_code;
    result.oom_killed = oom_killed;
    result.output = output_tail;
    result.output_truncated = truncated;
    result.timings.started_at = facts
        .as_ref()
        .and_then(|f| f.started_at.as_deref())
        .and_then(normalize_rfc3339)
        .or(Some(started_at));
    result.timings.finished_at = Some(finished_at);
    result.timings.start_ms = start_ms;
    result.timings.run_ms = Some(run_ms);
    finish(env, &job, &result).await;
    status
}

/// Publishes `result`, then removes the container (only once the result is
/// safe: a container left behind is adopted and its result republished).
pub async fn finish(env: &WorkerEnv, job: &Job, result: &ResultRecord) {
    let never = CancellationToken::new();
    if let (Some(key), Sink::Redis(bus, _)) = (&job.api_key, &env.sink) {
        if let Err(e) = bus.revoke_worker_key(key).await {
            tracing::warn!(request_id = %job.request_id, error = %e, "revoking the worker key failed; it expires on its own");
        }
    }
    if !env.sink.result(result, &never).await {
        return;
    }
    match env.engine.remove(&job.container_id).await {
        Ok(()) => {
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

    #[test]
    fn a_deadline_leaves_at_least_the_whole_timeout() {
        let before = unix_now_ms();
        let d = deadline_after(2);
        assert!(
            d * 1000 >= before + 2000,
            "deadline {d} cuts the timeout short"
        );
        let left = time_left(d);
        assert!(left > Duration::from_millis(1900), "{left:?}");
        assert!(left <= Duration::from_secs(3), "{left:?}");
        assert_eq!(time_left(0), Duration::ZERO);
    }
}
