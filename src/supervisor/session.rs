//! Sessions: requests with the same `task.session_id` run one after another
//! in one live container, each as a Docker exec under its own timeout.
//!
//! The session container's main process is an idle keeper (the daemon's
//! shim in its `keep` mode) under Docker's init; it carries the session id, config hash and TTL deadline as labels,
//! so a restarted daemon adopts it. A task that runs past its timeout is
//! stopped by an in-container killer that signals every process except
//! init and the keeper (a session runs one task at a time, so everything
//! else belongs to that task), and the container stays usable.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::adapters::bus::Entry;
use crate::adapters::engine::{ContainerFacts, EngineError};
use crate::model::container::{container_name, create_body, labels, FileDelivery, LaunchContext};
use crate::model::protocol::{
    now_rfc3339, parse_spawn_request, ErrorInfo, EventType, ResultRecord, Status,
};
use crate::model::render::HOME;
use crate::model::spec::WorkerSpec;
use crate::supervisor::Daemon;
use crate::worker::{self, unix_now, StopReason};

/// Sort key of a stream entry id (`<ms>-<seq>`).
pub(crate) fn entry_key(id: &str) -> (u64, u64) {
    let mut it = id.split('-');
    let ms = it.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    let seq = it.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    (ms, seq)
}

/// The live container of a session.
#[derive(Debug, Clone)]
pub(crate) struct SessionContainer {
    pub id: String,
    pub name: String,
    pub config_hash: String,
    pub preset: String,
    pub deadline_unix: u64,
}

/// The task a session runs now: request id, stop token, stop reason.
pub(crate) type CurrentTask = (String, CancellationToken, Arc<Mutex<Option<StopReason>>>);

/// What this instance knows of one session.
#[derive(Default)]
pub(crate) struct SessionState {
    /// Entries waiting, in stream order.
    pub queue: BTreeMap<(u64, u64), Entry>,
    /// Whether a runner task is draining the queue.
    pub runner: bool,
    /// The session's container, once created or adopted.
    pub container: Option<SessionContainer>,
    /// The request running now and how to stop it.
    pub current: Option<CurrentTask>,
    /// Last time a task ended.
    pub last_used: Option<Instant>,
    /// Last request id seen (for session-wide events).
    pub last_request: String,
    /// Held while a task runs or the session is torn down.
    pub busy: Arc<tokio::sync::Mutex<()>>,
    /// Whether a reaper watches the container.
    pub reaper: bool,
}

impl Daemon {
    /// Queues a session request; order within the session is stream order.
    pub(crate) fn enqueue_session(self: &Arc<Self>, session_id: String, entry: Entry) {
        let start = {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let st = sessions.entry(session_id.clone()).or_default();
            st.queue.insert(entry_key(&entry.id), entry);
            !std::mem::replace(&mut st.runner, true)
        };
        if start {
            let d = self.clone();
            tokio::spawn(async move { d.session_runner(session_id).await });
        }
    }

    async fn session_runner(self: Arc<Self>, sid: String) {
        loop {
            let (entry, busy) = {
                let mut sessions = self.sessions.lock().expect("sessions lock");
                let st = sessions.entry(sid.clone()).or_default();
                match st.queue.pop_first() {
                    Some((_, e)) => (e, st.busy.clone()),
                    None => {
                        st.runner = false;
                        return;
                    }
                }
            };
            // One instance runs a session's requests, in order: an entry
            // read by another instance is handed to the session's owner.
            match self
                .bus
                .claim_session(&sid, &self.settings.instance_id)
                .await
            {
                Ok(owner) if owner == self.settings.instance_id => {}
                Ok(owner) => {
                    tracing::info!(session_id = %sid, owner = %owner, entry_id = %entry.id, "handing a session request to its owner");
                    if let Err(e) = self.bus.transfer(&entry.id, &owner).await {
                        tracing::warn!(session_id = %sid, error = %e, "handing over failed; the entry stays pending");
                    }
                    continue;
                }
                // Unacknowledged: read again by the next sweep or reclaim.
                Err(_) => continue,
            }
            // Stream order across instances: an earlier request of this
            // session still pending elsewhere (or on its way here) runs first.
            if self.earlier_request_pending(&sid, &entry).await {
                self.sessions
                    .lock()
                    .expect("sessions lock")
                    .entry(sid.clone())
                    .or_default()
                    .queue
                    .insert(entry_key(&entry.id), entry);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let permit = tokio::select! {
                p = self.slots.clone().acquire_owned() => p.expect("semaphore open"),
                // Unacknowledged: the next start reads it again.
                _ = self.shutdown.cancelled() => return,
            };
            let _guard = busy.lock().await;
            let span = tracing::info_span!(
                "session",
                session_id = %sid,
                container = %self.session_container_name(&sid),
            );
            self.run_session_entry(&sid, entry, permit)
                .instrument(span)
                .await;
        }
    }

    async fn run_session_entry(
        self: &Arc<Self>,
        sid: &str,
        entry: Entry,
        permit: OwnedSemaphorePermit,
    ) {
        let received = Instant::now();
        let received_at = now_rfc3339();
        let queue_ms = entry
            .timestamp_ms()
            .map(|t| (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(t));
        let Some(Ok(req)) = entry
            .data
            .as_deref()
            .map(|d| parse_spawn_request(d, &self.settings.limits))
        else {
            // Not a session request after all: the ordinary path answers it.
            self.clone().handle_entry(entry, permit).await;
            return;
        };
        let rid = req.request_id.clone();
        match self.bus.has_result(&rid).await {
            Ok(true) => {
                self.ack(&entry.id).await;
                return;
            }
            Ok(false) => {}
            Err(_) => return,
        }
        match self.bus.claim_run(&rid, &self.settings.instance_id).await {
            Ok(crate::adapters::bus::RunClaim::Taken) => {}
            // Running here or on a live instance: that run acknowledges it.
            Ok(
                crate::adapters::bus::RunClaim::Mine | crate::adapters::bus::RunClaim::Elsewhere,
            ) => return,
            Ok(crate::adapters::bus::RunClaim::Interrupted) => {
                // Its instance died mid-task: never run it a second time.
                if let Ok(Some(f)) = self.find_session_container(sid).await {
                    self.kill_task(&f.id).await;
                }
                let info = ErrorInfo { code: "interrupted".into(), field: None, message: "the daemon running this task stopped before it finished; publish the request again".into() };
                let mut r = ResultRecord::bare(&rid, Status::Error, Some(info));
                r.session_id = Some(sid.to_string());
                self.answer(&entry.id, r).await;
                return;
            }
            Err(_) => return,
        }
        if self.gave_up_after_deliveries(&entry, &rid).await {
            return;
        }
        let spec = match self.resolve(&req) {
            Ok(s) => s,
            Err(e) => {
                let mut r = ResultRecord::bare(&rid, e.status(), Some(e.info()));
                r.session_id = Some(sid.to_string());
                self.answer(&entry.id, r).await;
                return;
            }
        };
        if req.dry_run {
            self.answer_dry_run(&entry.id, &req, &spec).await;
            return;
        }
        self.sessions
            .lock()
            .expect("sessions lock")
            .entry(sid.to_string())
            .or_default()
            .last_request = rid.clone();
        let container = match self.ensure_session_container(sid, &spec).await {
            Ok(c) => c,
            Err(Some(info)) => {
                let status = if info.code == "session_mismatch" {
                    Status::Rejected
                } else {
                    Status::Error
                };
                let mut r = ResultRecord::bare(&rid, status, Some(info));
                r.session_id = Some(sid.to_string());
                self.answer(&entry.id, r).await;
                return;
            }
            // Docker trouble: leave the entry pending for a retry.
            Err(None) => return,
        };
        self.run_task(
            Some(sid),
            &entry,
            &spec,
            &container,
            received,
            received_at,
            queue_ms,
        )
        .await;
        drop(permit);
    }

    /// The session's container: the known one, an adopted one, or a new one.
    async fn ensure_session_container(
        self: &Arc<Self>,
        sid: &str,
        spec: &WorkerSpec,
    ) -> Result<SessionContainer, Option<ErrorInfo>> {
        let known = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get(sid)
            .and_then(|s| s.container.clone());
        let name = self.session_container_name(sid);
        let existing = match known {
            Some(c) => Some(c),
            None => match self.find_session_container(sid).await {
                Ok(Some(f)) if f.running => Some(session_from_facts(&f)),
                Ok(Some(f)) => {
                    // A stopped session container is over: clear it away.
                    let _ = self.env.engine.remove(&f.id).await;
                    None
                }
                Ok(None) => None,
                Err(Some(holder)) => {
                    return Err(Some(ErrorInfo {
                        code: "name_conflict".into(),
                        field: Some("task.session_id".into()),
                        message: format!(
                            "the container named {holder} is not session {sid}'s container"
                        ),
                    }))
                }
                Err(None) => return Err(None),
            },
        };
        if let Some(c) = existing {
            if c.deadline_unix > unix_now() {
                if c.config_hash != spec.config_hash
                    || c.preset != spec.preset_id.clone().unwrap_or_default()
                {
                    return Err(Some(ErrorInfo {
                        code: "session_mismatch".into(),
                        field: Some(if c.preset != spec.preset_id.clone().unwrap_or_default() { "worker_config_id" } else { "worker_config_override" }.into()),
                        message: format!(
                            "session {sid} runs preset {:?} with config hash {}; this request resolves to preset {:?} with hash {}",
                            c.preset, c.config_hash, spec.preset_id.clone().unwrap_or_default(), spec.config_hash
                        ),
                    }));
                }
                self.register_session_container(sid, c.clone());
                return Ok(c);
            }
            // Called from the runner, which holds the session's lock itself.
            self.end_session_inner(sid, "expired", false).await;
        }
        // A new session.
        let deadline = unix_now() + spec.config.limits.ttl_sec;
        let mut l = HashMap::new();
        l.insert(labels::MANAGED.to_string(), "true".to_string());
        l.insert(
            labels::PREFIX.to_string(),
            self.settings.stream_prefix.clone(),
        );
        l.insert(labels::REQUEST_ID.to_string(), spec.request_id.clone());
        l.insert(labels::SESSION_ID.to_string(), sid.to_string());
        l.insert(
            labels::PRESET.to_string(),
            spec.preset_id.clone().unwrap_or_default(),
        );
        l.insert(labels::CONFIG_HASH.to_string(), spec.config_hash.clone());
        l.insert(
            labels::INSTANCE.to_string(),
            self.settings.instance_id.clone(),
        );
        l.insert(labels::DEADLINE.to_string(), deadline.to_string());
        l.insert(
            labels::RECEIVED_MS.to_string(),
            chrono::Utc::now().timestamp_millis().to_string(),
        );
        l.insert(labels::KIND.to_string(), "session".to_string());
        let net = self.worker_net(&spec.config, "");
        let mut ctx = LaunchContext {
            name: name.clone(),
            image: spec.config.image.clone(),
            labels: l,
            extra_env: if net.api_url.is_empty() {
                Vec::new()
            } else {
                vec![("ORCHESTRATOR_API_URL".into(), net.api_url.clone())]
            },
            network_mode: net.network.clone(),
            cmd: Some(crate::model::delivery::keeper_command()),
            delivery: FileDelivery::Archive,
        };
        match self.images.image_for(&spec.config, |_| {}).await {
            Ok(image) => ctx.image = image,
            Err(e) if e.is_transient() => return Err(None),
            Err(e) => return Err(Some(e.info())),
        }
        // The container env carries no request's values: each exec brings its own.
        let mut base = spec.clone();
        base.env.retain(|v| !v.name.starts_with("ORCHESTRATOR_"));
        let body = create_body(&base, &ctx);
        let id = match self.env.engine.create(&name, body).await {
            Ok(id) => id,
            Err(EngineError::ImageNotFound(i)) => {
                return Err(Some(ErrorInfo {
                    code: "image_not_found".into(),
                    field: Some("image".into()),
                    message: format!("image {i:?} does not exist on this engine"),
                }))
            }
            Err(e) => {
                tracing::warn!(session_id = sid, error = %e, "creating the session container failed");
                return Err(None);
            }
        };
        if let Some(extra) = &spec.config.network {
            if let Err(e) = self.env.engine.connect_network(extra, &id).await {
                let _ = self.env.engine.remove(&id).await;
                return Err(Some(ErrorInfo {
                    code: "network_not_found".into(),
                    field: Some("network".into()),
                    message: e.to_string(),
                }));
            }
        }
        if let Err(e) =
            worker::start_container(&self.env.engine, &id, &spec.files, &[], ctx.delivery).await
        {
            let _ = self.env.engine.remove(&id).await;
            return Err(Some(ErrorInfo {
                code: "start_failed".into(),
                field: None,
                message: e.to_string(),
            }));
        }
        let c = SessionContainer {
            id,
            name,
            config_hash: spec.config_hash.clone(),
            preset: spec.preset_id.clone().unwrap_or_default(),
            deadline_unix: deadline,
        };
        self.env
            .sink
            .event(&spec.request_id, EventType::SessionCreated, json!({"session_id": sid, "container": c.name, "ttl_sec": spec.config.limits.ttl_sec}))
            .await;
        self.register_session_container(sid, c.clone());
        Ok(c)
    }

    /// Takes over a session container found on the engine (after a restart
    /// or from a dead instance): a running one is registered with its
    /// session, so its TTL, a cancel and the next request find it; a stopped
    /// one is over and is removed.
    pub(crate) async fn adopt_session(self: &Arc<Self>, facts: ContainerFacts) {
        let Some(sid) = facts.labels.get(labels::SESSION_ID).cloned() else {
            return;
        };
        let facts = match self.env.engine.inspect(&facts.id).await {
            Ok(f) => f,
            Err(_) => return,
        };
        if !facts.running {
            let _ = self.env.engine.remove(&facts.id).await;
            return;
        }
        let known = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get(&sid)
            .is_some_and(|s| s.container.is_some());
        if known {
            return;
        }
        self.metrics.adopted.inc();
        tracing::info!(session_id = %sid, container = %facts.name, "adopting session container");
        {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let st = sessions.entry(sid.clone()).or_default();
            if st.last_request.is_empty() {
                st.last_request = facts
                    .labels
                    .get(labels::REQUEST_ID)
                    .cloned()
                    .unwrap_or_default();
            }
        }
        self.register_session_container(&sid, session_from_facts(&facts));
    }

    /// Whether an entry of session `sid` older than `entry` is still pending
    /// in the group and not queued here (it will be handed over, or is being
    /// read by this instance's sweep). Gives up after a while, so an entry
    /// that never gets acknowledged cannot stall the session for good.
    async fn earlier_request_pending(&self, sid: &str, entry: &Entry) -> bool {
        let Ok(ids) = self.bus.pending_before(&entry.id, 200).await else {
            return false;
        };
        if entry.timestamp_ms().is_some_and(|t| {
            (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(t) > 30_000
        }) {
            return false;
        }
        for id in ids {
            let queued = self
                .sessions
                .lock()
                .expect("sessions lock")
                .get(sid)
                .is_some_and(|st| st.queue.contains_key(&entry_key(&id)));
            if queued {
                return true;
            }
            let Ok(Some(Entry {
                data: Some(data), ..
            })) = self.bus.entry_by_id(&id).await
            else {
                continue;
            };
            let same = parse_spawn_request(&data, &self.settings.limits)
                .ok()
                .and_then(|r| r.task.session_id)
                .is_some_and(|s| s == sid);
            if same {
                let rid_done = parse_spawn_request(&data, &self.settings.limits)
                    .ok()
                    .map(|r| r.request_id);
                // Already answered (only its acknowledgement is missing): not a blocker.
                if let Some(rid) = rid_done {
                    if self.bus.has_result(&rid).await.unwrap_or(false) {
                        continue;
                    }
                }
                return true;
            }
        }
        false
    }

    /// Records the container and makes sure a reaper watches its TTL.
    pub(crate) fn register_session_container(self: &Arc<Self>, sid: &str, c: SessionContainer) {
        let start = {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let st = sessions.entry(sid.to_string()).or_default();
            st.container = Some(c);
            !std::mem::replace(&mut st.reaper, true)
        };
        if start {
            let d = self.clone();
            let sid = sid.to_string();
            tokio::spawn(async move { d.session_reaper(sid).await });
        }
    }

    /// Ends the session at its TTL (or after the idle timeout).
    async fn session_reaper(self: Arc<Self>, sid: String) {
        loop {
            let (deadline, idle_since, busy) = {
                let mut sessions = self.sessions.lock().expect("sessions lock");
                let Some(st) = sessions.get_mut(&sid) else {
                    return;
                };
                let Some(c) = &st.container else {
                    st.reaper = false;
                    return;
                };
                (
                    c.deadline_unix,
                    if st.current.is_none() {
                        st.last_used
                    } else {
                        None
                    },
                    st.current.is_some(),
                )
            };
            let now = unix_now();
            if now >= deadline {
                self.end_session(&sid, "expired").await;
                continue;
            }
            let idle = self.settings.session_idle_timeout;
            if !busy && !idle.is_zero() {
                if let Some(since) = idle_since {
                    if since.elapsed() >= idle {
                        self.end_session(&sid, "idle").await;
                        continue;
                    }
                }
            }
            let wait = Duration::from_secs(deadline - now).min(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_task(
        self: &Arc<Self>,
        session: Option<&str>,
        entry: &Entry,
        spec: &WorkerSpec,
        container: &SessionContainer,
        received: Instant,
        received_at: String,
        queue_ms: Option<u64>,
    ) {
        let rid = spec.request_id.clone();
        let api_key = crate::model::worker_key::new_key();
        let net = self.worker_net(&spec.config, &api_key);
        let record = crate::model::worker_key::KeyRecord::for_spec(
            spec,
            spec.env
                .iter()
                .find(|v| v.name == "ORCHESTRATOR_USER_ID")
                .map(|v| v.value.clone()),
        )
        .in_container(&container.name);
        if self
            .bus
            .register_worker_key(
                &api_key,
                &record,
                Duration::from_secs(spec.config.limits.timeout_sec),
            )
            .await
            .is_err()
        {
            return;
        }
        let mut redactor = spec.redactor();
        redactor.add(&api_key);
        let stop = CancellationToken::new();
        let reason: Arc<Mutex<Option<StopReason>>> = Arc::default();
        let job = worker::Job {
            request_id: rid.clone(),
            session_id: session.map(str::to_string),
            preset: spec.preset_id.clone(),
            config_hash: spec.config_hash.clone(),
            image: spec.config.image.clone(),
            container_id: container.id.clone(),
            container_name: container.name.clone(),
            redactor: redactor.clone(),
            deadline_unix: worker::deadline_after(spec.config.limits.timeout_sec)
                .min(container.deadline_unix),
            received_at: Some(received_at),
            queue_ms,
            received: Some(received),
            stop: stop.clone(),
            stop_reason: reason.clone(),
            api_key: Some(api_key.clone()),
            output: Default::default(),
        };
        self.env
            .sink
            .event(&rid, EventType::Accepted, json!({"preset": spec.preset_id, "config_hash": spec.config_hash, "instance": self.settings.instance_id, "session_id": session, "container": container.name}))
            .await;
        let mut env: Vec<String> = spec
            .env
            .iter()
            .map(|v| format!("{}={}", v.name, v.value))
            .collect();
        if !net.api_url.is_empty() {
            env.push(format!("ORCHESTRATOR_API_URL={}", net.api_url));
            env.push(format!("ORCHESTRATOR_API_KEY={api_key}"));
        }
        env.push(format!("HOME={HOME}"));
        let exec = match self
            .env
            .engine
            .upload(&container.id, &spec.request_files)
            .await
        {
            Ok(()) => {
                self.env
                    .engine
                    .exec(&container.id, spec.command.clone(), env)
                    .await
            }
            Err(e) => Err(e),
        };
        let (exec_id, output) = match exec {
            Ok(x) => x,
            Err(e) => {
                let info = ErrorInfo {
                    code: "start_failed".into(),
                    field: None,
                    message: e.to_string(),
                };
                let r = job.result(Status::Error, Some(info), &self.settings.instance_id);
                let _ = self.bus.revoke_worker_key(&api_key).await;
                if self.env.sink.result(&r, &self.shutdown).await {
                    self.ack(&entry.id).await;
                }
                return;
            }
        };
        {
            if let Some(sid) = session {
                let mut sessions = self.sessions.lock().expect("sessions lock");
                sessions.entry(sid.to_string()).or_default().current =
                    Some((rid.clone(), stop.clone(), reason.clone()));
            }
        }
        self.track_running(&rid, &stop, &reason);
        // The agent process runs from here on: that is the start.
        let started = Instant::now();
        let start_ms = started.duration_since(received).as_millis() as u64;
        self.metrics.start_seconds.observe(start_ms as f64 / 1000.0);
        self.metrics.running_workers.inc();
        self.env
            .sink
            .event(
                &rid,
                EventType::Started,
                json!({"container": container.name, "session_id": session}),
            )
            .await;

        let env2 = self.env.clone();
        let rid2 = rid.clone();
        let red2 = redactor.clone();
        let mut fwd =
            tokio::spawn(async move { worker::forward(&env2, &rid2, &red2, output).await });
        let remaining = worker::time_left(job.deadline_unix);
        let mut stopped: Option<StopReason> = None;
        let mut tail = worker::OutputTail::default();
        tokio::select! {
            r = &mut fwd => { tail = r.unwrap_or_default(); }
            _ = tokio::time::sleep(remaining) => { stopped = Some(StopReason::Expired); }
            _ = stop.cancelled() => { stopped = Some(reason.lock().expect("lock").unwrap_or(StopReason::Cancelled)); }
        }
        if stopped.is_some() {
            self.kill_task(&container.id).await;
            tail = match tokio::time::timeout(Duration::from_secs(10), fwd).await {
                Ok(Ok(t)) => t,
                _ => worker::OutputTail::default(),
            };
        }
        self.metrics.running_workers.dec();
        let run_ms = started.elapsed().as_millis() as u64;
        self.metrics.run_seconds.observe(run_ms as f64 / 1000.0);
        let exit_code = self
            .env
            .engine
            .exec_exit_code(&exec_id)
            .await
            .ok()
            .flatten();
        let (status, error, event) = match stopped {
            Some(StopReason::Expired) => (
                Status::TimedOut,
                Some(ErrorInfo {
                    code: "timed_out".into(),
                    field: Some("limits.timeout_sec".into()),
                    message: "the task ran past its deadline and was stopped".into(),
                }),
                EventType::TimedOut,
            ),
            Some(StopReason::Cancelled) => (
                Status::Cancelled,
                Some(ErrorInfo {
                    code: "cancelled".into(),
                    field: None,
                    message: "cancelled by a control command".into(),
                }),
                EventType::Cancelled,
            ),
            None if exit_code == Some(0) => (Status::Succeeded, None, EventType::Finished),
            None => (Status::Failed, None, EventType::Finished),
        };
        self.env
            .sink
            .event(
                &rid,
                event,
                json!({"exit_code": exit_code, "status": status.as_str()}),
            )
            .await;
        let mut result = job.result(status, error, &self.settings.instance_id);
        result.exit_code = exit_code;
        result.output = tail.text;
        result.output_truncated = tail.truncated;
        result.timings.started_at = Some(crate::model::protocol::rfc3339_millis(
            (std::time::SystemTime::now() - started.elapsed()).into(),
        ));
        result.timings.finished_at = Some(now_rfc3339());
        result.timings.start_ms = Some(start_ms);
        result.timings.run_ms = Some(run_ms);
        let _ = self.bus.revoke_worker_key(&api_key).await;
        {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            if let Some(st) = session.and_then(|sid| sessions.get_mut(sid)) {
                st.current = None;
                st.last_used = Some(Instant::now());
            }
        }
        self.running.lock().expect("running lock").remove(&rid);
        if self.env.sink.result(&result, &self.shutdown).await {
            self.ack(&entry.id).await;
        }
    }

    /// Stops every process of the running task (SIGTERM, grace, SIGKILL).
    async fn kill_task(&self, container_id: &str) {
        let killer = crate::model::delivery::killer_command;
        let run = |argv: Vec<String>| async move {
            match self
                .env
                .engine
                .exec(container_id, argv, vec![format!("HOME={HOME}")])
                .await
            {
                Ok((_, mut out)) => {
                    use futures_util::StreamExt;
                    let mut text = Vec::new();
                    while let Some(Ok((_, b))) = out.next().await {
                        text.extend_from_slice(&b);
                    }
                    String::from_utf8_lossy(&text)
                        .trim()
                        .parse::<u32>()
                        .unwrap_or(0)
                }
                Err(_) => 0,
            }
        };
        if run(killer("TERM")).await == 0 {
            return;
        }
        let deadline = Instant::now() + self.settings.stop_grace;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Signal 0 counts the survivors without hurting them.
            if run(killer("0")).await == 0 {
                return;
            }
        }
        run(killer("KILL")).await;
    }

    /// Session `sid`'s container on the engine: the one under its name if
    /// its labels say it is this session's (`Err(Some(name))` when another
    /// container holds the name), else one labelled with the session under
    /// any name (an older daemon's naming). `Err(None)`: Docker trouble.
    pub(crate) async fn find_session_container(
        &self,
        sid: &str,
    ) -> Result<Option<ContainerFacts>, Option<String>> {
        let name = self.session_container_name(sid);
        match self.env.engine.inspect(&name).await {
            Ok(f) if self.holds_session(&f, sid) => return Ok(Some(f)),
            Ok(_) => {
                tracing::warn!(session_id = sid, container = %name, "session container name held by another container");
                return Err(Some(name));
            }
            Err(EngineError::NotFound(_)) => {}
            Err(_) => return Err(None),
        }
        let found = self
            .env
            .engine
            .list_labelled(
                &self.settings.stream_prefix,
                &[(labels::SESSION_ID, sid), (labels::KIND, "session")],
            )
            .await
            .map_err(|_| None)?;
        match found.into_iter().max_by_key(|c| c.running) {
            Some(c) => self
                .env
                .engine
                .inspect(&c.id)
                .await
                .map(Some)
                .map_err(|_| None),
            None => Ok(None),
        }
    }

    /// The container name of a session in this setup.
    pub(crate) fn session_container_name(&self, sid: &str) -> String {
        if self.settings.stream_prefix == "workers" {
            container_name("wss", sid)
        } else {
            container_name("wss", &format!("{}/{sid}", self.settings.stream_prefix))
        }
    }

    /// Ends a session: stops its task, removes its container, says so.
    pub(crate) async fn end_session(&self, sid: &str, why: &str) {
        self.end_session_inner(sid, why, true).await
    }

    async fn end_session_inner(&self, sid: &str, why: &str, wait_for_task: bool) {
        let (container, current, busy, last) = {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let Some(st) = sessions.get_mut(sid) else {
                return;
            };
            (
                st.container.take(),
                st.current.clone(),
                st.busy.clone(),
                st.last_request.clone(),
            )
        };
        if let Some((_, stop, reason)) = current {
            *reason.lock().expect("lock") = Some(if why == "cancelled" {
                StopReason::Cancelled
            } else {
                StopReason::Expired
            });
            stop.cancel();
        }
        // Without a known container, only one whose labels say it is this
        // session's is removed (never whatever holds the name).
        let (name, target) = match &container {
            Some(c) => (c.name.clone(), Some(c.id.clone())),
            None => match self.find_session_container(sid).await {
                Ok(Some(f)) => (f.name, Some(f.id)),
                _ => (self.session_container_name(sid), None),
            },
        };
        // Wait for the running task to publish its result first.
        let _guard = if wait_for_task {
            tokio::time::timeout(
                self.settings.stop_grace + Duration::from_secs(15),
                busy.lock(),
            )
            .await
            .ok()
        } else {
            None
        };
        if let Some(id) = &target {
            if let Err(e) = self.env.engine.remove(id).await {
                tracing::warn!(session_id = sid, error = %e, "removing the session container failed");
            }
        }
        let _ = self
            .bus
            .release_session(sid, &self.settings.instance_id)
            .await;
        self.env
            .sink
            .event(
                &last,
                EventType::SessionExpired,
                json!({"session_id": sid, "container": name, "reason": why}),
            )
            .await;
        tracing::info!(session_id = sid, reason = why, "session ended");
    }
}

/// Session facts from a container's labels.
pub(crate) fn session_from_facts(f: &ContainerFacts) -> SessionContainer {
    let l = |k: &str| f.labels.get(k).cloned().unwrap_or_default();
    SessionContainer {
        id: f.id.clone(),
        name: f.name.clone(),
        config_hash: l(labels::CONFIG_HASH),
        preset: l(labels::PRESET),
        deadline_unix: l(labels::DEADLINE).parse().unwrap_or(0),
    }
}
