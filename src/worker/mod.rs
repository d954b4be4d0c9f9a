//! One task's life, from the moment its process exists to its result:
//! output to events, deadline and cancel, evidence, result, clean-up. A
//! one-shot or pooled worker is a container (`run::supervise`), a session
//! task a Docker exec in the session's container (`run::supervise_exec`);
//! both go through the same start, watch, classification and result
//! steps. Used by the supervisor (Redis sink) and by `workers-spawner run`
//! (terminal sink).

mod output;
mod run;
pub mod workspace;

pub use output::{forward, stdout_tail, OutputTail};
pub use run::{finish, supervise, supervise_exec, Exec, ExecEnd};

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::adapters::engine::{ContainerFacts, Engine, EngineError, ExecOutput};
use crate::adapters::sink::Sink;
use crate::metrics::Metrics;
use crate::model::container::{labels, FileDelivery};
use crate::model::protocol::{now_rfc3339, ErrorInfo, ResultRecord, Status, Timings, WorkerInfo};
use crate::model::redact::Redactor;
use crate::model::render::RenderedFile;
use crate::model::spec::WorkerSpec;

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
    /// The workers' egress sockets (closed with their containers).
    pub egress: crate::adapters::egress::Egress,
    /// Repositories in, changes, artifacts and transcripts out.
    pub workspaces: Arc<workspace::Workspaces>,
}

impl WorkerEnv {
    /// The handles workers need, with the daemon's stop grace and output
    /// limits.
    pub fn new(
        engine: Engine,
        sink: Sink,
        metrics: Arc<Metrics>,
        settings: &crate::settings::Settings,
        egress: crate::adapters::egress::Egress,
        workspaces: Arc<workspace::Workspaces>,
    ) -> WorkerEnv {
        WorkerEnv {
            egress,
            workspaces,
            engine,
            sink,
            metrics,
            stop_grace: settings.stop_grace,
            output: OutputLimits {
                tail_bytes: settings.output_tail_bytes,
                lines_per_sec: settings.output_lines_per_sec,
                line_bytes: settings.output_line_bytes,
            },
            instance: settings.instance_id.clone(),
        }
    }
}

/// Why a worker is being stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A control command asked for it.
    Cancelled,
    /// The session's TTL passed.
    Expired,
    /// Another attempt or instance holds its request now (this instance
    /// was taken for lost): it ends without a word.
    Fenced,
}

/// When and how a request reached this instance.
#[derive(Debug, Clone)]
pub struct Received {
    /// The instant it was read, for start latency.
    pub at: Instant,
    /// The same, as RFC 3339 for the result's timings.
    pub at_rfc3339: String,
    /// From the entry id's time to its reading, ms.
    pub queue_ms: Option<u64>,
}

impl Received {
    /// Now, for an entry appended at `entry_ms` (Unix ms, from its id).
    pub fn now(entry_ms: Option<u64>) -> Received {
        Received {
            at: Instant::now(),
            at_rfc3339: now_rfc3339(),
            queue_ms: entry_ms.map(|t| unix_now_ms().saturating_sub(t)),
        }
    }
}

/// Where a job runs: the container and the image named in its events.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Container id.
    pub container_id: String,
    /// Container name.
    pub container_name: String,
    /// The image shown in events and results (the preset's, never the
    /// prepared tag).
    pub image: String,
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
    pub output: std::sync::Mutex<Option<ExecOutput>>,
    /// Which run of the request this is (1 = the first).
    pub attempt: u32,
    /// Its config's retry policy; session tasks have none (a session's
    /// state is not run again elsewhere).
    pub retry: Option<crate::model::retry::RetryPolicy>,
    /// Its workspace plan (repository and base, artifact globs), read
    /// back when it ends.
    pub workspace: Option<crate::model::workspace::WorkspacePlan>,
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
    /// The job of a request of `spec` placed in `at`, due by `deadline_unix`.
    pub fn new(
        spec: &WorkerSpec,
        at: Placement,
        deadline_unix: u64,
        received: Option<&Received>,
        redactor: Redactor,
        api_key: Option<String>,
    ) -> Job {
        Job {
            request_id: spec.request_id.clone(),
            session_id: spec.session_id.clone(),
            preset: spec.preset_id.clone(),
            config_hash: spec.config_hash.clone(),
            image: at.image,
            container_id: at.container_id,
            container_name: at.container_name,
            redactor,
            deadline_unix,
            received_at: received.map(|r| r.at_rfc3339.clone()),
            queue_ms: received.and_then(|r| r.queue_ms),
            received: received.map(|r| r.at),
            stop: CancellationToken::new(),
            stop_reason: Arc::new(std::sync::Mutex::new(None)),
            api_key,
            output: Default::default(),
            attempt: spec.attempt,
            retry: spec
                .config
                .retry
                .clone()
                .filter(|_| spec.session_id.is_none()),
            workspace: spec.workspace.clone(),
        }
    }

    /// The job of a request of `spec` run in a live container (a pool's
    /// or a session's) that ends at `container_deadline`: the task gets its
    /// timeout, cut at the container's end; `api_key` is masked in its
    /// output and `gateway_key` revoked when it ends.
    pub fn in_live_container(
        spec: &WorkerSpec,
        at: Placement,
        container_deadline: u64,
        received: &Received,
        api_key: &str,
        gateway_key: Option<String>,
    ) -> Job {
        let mut redactor = spec.redactor();
        redactor.add(api_key);
        let deadline = deadline_after(spec.config.limits.timeout_sec).min(container_deadline);
        Job::new(spec, at, deadline, Some(received), redactor, gateway_key)
    }

    /// The job of an adopted container of request `request_id`, rebuilt
    /// from its labels (`redactor` masks its preset's secrets and its key).
    pub fn adopted(request_id: &str, facts: &ContainerFacts, redactor: Redactor) -> Job {
        let l = &facts.labels;
        Job {
            request_id: request_id.to_string(),
            session_id: l.get(labels::SESSION_ID).cloned(),
            preset: l.get(labels::PRESET).cloned().filter(|p| !p.is_empty()),
            config_hash: l.get(labels::CONFIG_HASH).cloned().unwrap_or_default(),
            image: facts.image.clone(),
            container_id: facts.id.clone(),
            container_name: facts.name.clone(),
            redactor,
            deadline_unix: l
                .get(labels::DEADLINE)
                .and_then(|d| d.parse().ok())
                .unwrap_or(0),
            received_at: None,
            queue_ms: None,
            received: None,
            stop: CancellationToken::new(),
            stop_reason: Arc::new(std::sync::Mutex::new(None)),
            api_key: facts.api_key.clone(),
            output: Default::default(),
            attempt: l
                .get(labels::ATTEMPT)
                .and_then(|a| a.parse().ok())
                .unwrap_or(1),
            retry: l
                .get(labels::RETRY)
                .and_then(|r| serde_json::from_str(r).ok()),
            workspace: l
                .get(labels::WORKSPACE)
                .and_then(|w| serde_json::from_str(w).ok()),
        }
    }

    /// Hands the attached output to the supervisor.
    pub fn with_output(mut self, output: Option<ExecOutput>) -> Job {
        *self.output.get_mut().expect("output lock") = output;
        self
    }

    /// Why `stop` fired (a cancel, when nobody said).
    pub fn stop_reason(&self) -> StopReason {
        self.stop_reason
            .lock()
            .expect("reason lock")
            .unwrap_or(StopReason::Cancelled)
    }

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
        r.attempt = self.attempt;
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
) -> Result<Option<ExecOutput>, EngineError> {
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
