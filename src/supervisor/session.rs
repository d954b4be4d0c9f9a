//! Sessions: requests with the same `task.session_id` run one after another
//! in one live container, each as a Docker exec under its own timeout.
//!
//! The session container's main process is an idle keeper (the daemon's
//! shim in its `keep` mode) under Docker's init; it carries the session
//! id, config hash and TTL deadline as labels, so a restarted daemon
//! adopts it. A task that runs past its timeout is stopped by an
//! in-container killer that signals every process except init and the
//! keeper (a session runs one task at a time, so everything else belongs
//! to that task), and the container stays usable. Each session's state is
//! this module's: the supervisor hands it entries and asks it to end or
//! adopt sessions, nothing else.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ctx::{running_of, Ctx};
use super::intake::{dry_run_result, Parsed};
use crate::adapters::bus::Entry;
use crate::adapters::engine::{ContainerFacts, EngineError};
use crate::model::container::{
    create_body, labels, session_container_name, session_labels, FileDelivery, LaunchContext,
};
use crate::model::outcome::{self, ErrorCode, Interruption};
use crate::model::protocol::{parse_spawn_request, ErrorInfo, EventType, ResultRecord, Status};
use crate::model::render::HOME;
use crate::model::spec::WorkerSpec;
use crate::model::triage::{Decision, Disposition, Facts, Inflight, Route};
use crate::model::worker_key::{new_key, KeyRecord};
use crate::worker::{self, unix_now, Exec, Job, Placement, Received, StopReason};

/// Sort key of a stream entry id (`<ms>-<seq>`).
pub fn entry_key(id: &str) -> (u64, u64) {
    let mut it = id.split('-');
    let ms = it.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    let seq = it.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    (ms, seq)
}

/// The live container of a session.
#[derive(Debug, Clone)]
pub struct SessionContainer {
    /// Container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// The config hash it runs.
    pub config_hash: String,
    /// The preset it runs.
    pub preset: String,
    /// Unix time its TTL ends.
    pub deadline_unix: u64,
}

/// The task a session runs now: request id, stop token, stop reason.
type CurrentTask = (String, CancellationToken, Arc<Mutex<Option<StopReason>>>);

/// What this instance knows of one session.
#[derive(Default)]
struct SessionState {
    /// Entries waiting, in stream order.
    queue: BTreeMap<(u64, u64), Parsed>,
    /// Whether a runner task is draining the queue.
    runner: bool,
    /// The session's container, once created or adopted.
    container: Option<SessionContainer>,
    /// The request running now and how to stop it.
    current: Option<CurrentTask>,
    /// Last time a task ended.
    last_used: Option<Instant>,
    /// Last request id seen (for session-wide events).
    last_request: String,
    /// Held while a task runs or the session is torn down.
    busy: Arc<tokio::sync::Mutex<()>>,
    /// Whether a reaper watches the container.
    reaper: bool,
}

/// The sessions of this instance.
pub struct Sessions {
    ctx: Arc<Ctx>,
    state: Mutex<HashMap<String, SessionState>>,
}

impl Sessions {
    /// No session yet.
    pub fn new(ctx: Arc<Ctx>) -> Sessions {
        Sessions {
            ctx,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Queues a session request; order within the session is stream order.
    pub fn enqueue(self: &Arc<Self>, session_id: String, parsed: Parsed) {
        let start = {
            let mut sessions = self.state.lock().expect("sessions lock");
            let st = sessions.entry(session_id.clone()).or_default();
            st.queue.insert(entry_key(&parsed.entry.id), parsed);
            !std::mem::replace(&mut st.runner, true)
        };
        if start {
            let s = self.clone();
            tokio::spawn(async move { s.runner(session_id).await });
        }
    }

    /// Whether this instance holds session `sid`'s container.
    pub fn has_container(&self, sid: &str) -> bool {
        self.state
            .lock()
            .expect("sessions lock")
            .get(sid)
            .is_some_and(|s| s.container.is_some())
    }

    /// The sessions whose container this instance holds.
    pub fn owned(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(_, st)| st.container.is_some())
            .map(|(sid, _)| sid.clone())
            .collect()
    }

    async fn runner(self: Arc<Self>, sid: String) {
        loop {
            let (parsed, busy) = {
                let mut sessions = self.state.lock().expect("sessions lock");
                let st = sessions.entry(sid.clone()).or_default();
                match st.queue.pop_first() {
                    Some((_, p)) => (p, st.busy.clone()),
                    None => {
                        st.runner = false;
                        return;
                    }
                }
            };
            // One instance runs a session's requests, in order: an entry
            // read by another instance is handed to the session's owner.
            match self
                .ctx
                .bus
                .claim_session(&sid, &self.ctx.settings.instance_id)
                .await
            {
                Ok(owner) if owner == self.ctx.settings.instance_id => {}
                Ok(owner) => {
                    tracing::info!(session_id = %sid, owner = %owner, entry_id = %parsed.entry.id, "handing a session request to its owner");
                    if let Err(e) = self.ctx.bus.transfer(&parsed.entry.id, &owner).await {
                        tracing::warn!(session_id = %sid, error = %e, "handing over failed; the entry stays pending");
                    }
                    continue;
                }
                // Unacknowledged: read again by the next sweep or reclaim.
                Err(_) => continue,
            }
            // Stream order across instances: an earlier request of this
            // session still pending elsewhere (or on its way here) runs first.
            if self.earlier_request_pending(&sid, &parsed.entry).await {
                self.state
                    .lock()
                    .expect("sessions lock")
                    .entry(sid.clone())
                    .or_default()
                    .queue
                    .insert(entry_key(&parsed.entry.id), parsed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let permit = tokio::select! {
                p = self.ctx.slots.clone().acquire_owned() => p.expect("semaphore open"),
                // Unacknowledged: the next start reads it again.
                _ = self.ctx.shutdown.cancelled() => return,
            };
            let _guard = busy.lock().await;
            let span = tracing::info_span!(
                "session",
                session_id = %sid,
                container = %session_container_name(&self.ctx.settings.stream_prefix, &sid),
            );
            self.run_entry(&sid, parsed, permit).instrument(span).await;
        }
    }

    async fn run_entry(self: &Arc<Self>, sid: &str, parsed: Parsed, permit: OwnedSemaphorePermit) {
        let ctx = &self.ctx;
        let Parsed {
            entry,
            request: req,
            ..
        } = parsed;
        // A session task's start is counted from its turn, not its reading.
        let received = Received::now(entry.timestamp_ms());
        let rid = req.request_id.clone();
        let facts = Facts::new(
            &rid,
            Some(sid),
            Route::Session,
            entry.deliveries,
            ctx.settings.max_deliveries,
            Inflight::Free,
            req.dry_run,
        );
        let t = ctx.triage(facts, &req).await;
        let spec = match t.decision {
            Decision::Settle(d) => return ctx.settle(&entry, d).await,
            Decision::InterruptedTask => {
                if let Ok(Some(f)) = self.find_session_container(sid).await {
                    self.kill_task(&f.id).await;
                }
                let r = outcome::interrupted(&rid, Some(sid), Interruption::Task);
                return ctx.settle(&entry, Disposition::Answer(r)).await;
            }
            Decision::DryRun => {
                let r = dry_run_result(&req, t.spec.as_ref().expect("resolved"));
                return ctx.settle(&entry, Disposition::Answer(r)).await;
            }
            Decision::SessionTask => t.spec.expect("resolved"),
            Decision::FollowContainer | Decision::Pooled | Decision::Cold => {
                tracing::error!(request_id = %rid, "a session entry was triaged as a one-shot request");
                return ctx
                    .settle(&entry, Disposition::LeavePending("triaged off its route"))
                    .await;
            }
        };
        self.state
            .lock()
            .expect("sessions lock")
            .entry(sid.to_string())
            .or_default()
            .last_request = rid.clone();
        let container = match self.ensure_session_container(sid, &spec).await {
            Ok(c) => c,
            Err(Some(info)) => {
                let status = if info.code == ErrorCode::SessionMismatch.as_str() {
                    Status::Rejected
                } else {
                    Status::Error
                };
                let mut r = ResultRecord::bare(&rid, status, Some(info));
                r.session_id = Some(sid.to_string());
                return ctx.settle(&entry, Disposition::Answer(r)).await;
            }
            Err(None) => {
                return ctx
                    .settle(&entry, Disposition::LeavePending("docker unavailable"))
                    .await
            }
        };
        self.run_task(sid, &entry, &received, &spec, &container)
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
            .state
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
                    let _ = self.ctx.env.engine.remove(&f.id).await;
                    None
                }
                Ok(None) => None,
                Err(Some(holder)) => {
                    return Err(Some(outcome::session_name_conflict(sid, &holder)))
                }
                Err(None) => return Err(None),
            },
        };
        if let Some(c) = existing {
            if c.deadline_unix > unix_now() {
                if c.config_hash != spec.config_hash
                    || c.preset != spec.preset_id.clone().unwrap_or_default()
                {
                    let field = if c.preset != spec.preset_id.clone().unwrap_or_default() {
                        "worker_config_id"
                    } else {
                        "worker_config_override"
                    };
                    return Err(Some(ErrorCode::SessionMismatch.info(
                        Some(field),
                        format!(
                            "session {sid} runs preset {:?} with config hash {}; this request resolves to preset {:?} with hash {}",
                            c.preset, c.config_hash, spec.preset_id.clone().unwrap_or_default(), spec.config_hash
                        ),
                    )));
                }
                self.register_session_container(sid, c.clone());
                return Ok(c);
            }
            // Called from the runner, which holds the session's lock itself.
            self.end_inner(sid, "expired", false).await;
        }
        // A new session.
        let deadline = unix_now() + spec.config.limits.ttl_sec;
        let received_ms = chrono::Utc::now().timestamp_millis();
        let l = session_labels(spec, self.ctx.owner(), sid, deadline, received_ms);
        let net = self.ctx.worker_net(&spec.config, "");
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
        match self.ctx.images.image_for(&spec.config, |_| {}).await {
            Ok(image) => ctx.image = image,
            Err(e) if e.is_transient() => return Err(None),
            Err(e) => return Err(Some(e.info())),
        }
        // The container env carries no request's values: each exec brings its own.
        let mut base = spec.clone();
        base.env.retain(|v| !v.name.starts_with("ORCHESTRATOR_"));
        let body = create_body(&base, &ctx);
        let id = match self.ctx.env.engine.create(&name, body).await {
            Ok(id) => id,
            Err(EngineError::ImageNotFound(i)) => {
                return Err(Some(ErrorCode::ImageNotFound.info(
                    Some("image"),
                    format!("image {i:?} does not exist on this engine"),
                )))
            }
            Err(e) => {
                tracing::warn!(session_id = sid, error = %e, "creating the session container failed");
                return Err(None);
            }
        };
        if let Some(extra) = &spec.config.network {
            if let Err(e) = self.ctx.env.engine.connect_network(extra, &id).await {
                let _ = self.ctx.env.engine.remove(&id).await;
                return Err(Some(
                    ErrorCode::NetworkNotFound.info(Some("network"), e.to_string()),
                ));
            }
        }
        if let Err(e) =
            worker::start_container(&self.ctx.env.engine, &id, &spec.files, &[], ctx.delivery).await
        {
            let _ = self.ctx.env.engine.remove(&id).await;
            return Err(Some(ErrorCode::StartFailed.info(None, e.to_string())));
        }
        let c = SessionContainer {
            id,
            name,
            config_hash: spec.config_hash.clone(),
            preset: spec.preset_id.clone().unwrap_or_default(),
            deadline_unix: deadline,
        };
        self.ctx.env
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
    pub async fn adopt(self: &Arc<Self>, facts: ContainerFacts) {
        let Some(sid) = facts.labels.get(labels::SESSION_ID).cloned() else {
            return;
        };
        let facts = match self.ctx.env.engine.inspect(&facts.id).await {
            Ok(f) => f,
            Err(_) => return,
        };
        if !facts.running {
            let _ = self.ctx.env.engine.remove(&facts.id).await;
            return;
        }
        let known = self
            .state
            .lock()
            .expect("sessions lock")
            .get(&sid)
            .is_some_and(|s| s.container.is_some());
        if known {
            return;
        }
        self.ctx.metrics.adopted.inc();
        tracing::info!(session_id = %sid, container = %facts.name, "adopting session container");
        {
            let mut sessions = self.state.lock().expect("sessions lock");
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
        let Ok(ids) = self.ctx.bus.pending_before(&entry.id, 200).await else {
            return false;
        };
        if entry.timestamp_ms().is_some_and(|t| {
            (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(t) > 30_000
        }) {
            return false;
        }
        for id in ids {
            let queued = self
                .state
                .lock()
                .expect("sessions lock")
                .get(sid)
                .is_some_and(|st| st.queue.contains_key(&entry_key(&id)));
            if queued {
                return true;
            }
            let Ok(Some(Entry {
                data: Some(data), ..
            })) = self.ctx.bus.entry_by_id(&id).await
            else {
                continue;
            };
            let Ok(other) = parse_spawn_request(&data, &self.ctx.settings.limits) else {
                continue;
            };
            if other.task.session_id.as_deref() == Some(sid) {
                // Already answered (only its acknowledgement is missing): not a blocker.
                if self
                    .ctx
                    .bus
                    .has_result(&other.request_id)
                    .await
                    .unwrap_or(false)
                {
                    continue;
                }
                return true;
            }
        }
        false
    }

    /// Records the container and makes sure a reaper watches its TTL.
    pub(super) fn register_session_container(self: &Arc<Self>, sid: &str, c: SessionContainer) {
        let start = {
            let mut sessions = self.state.lock().expect("sessions lock");
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
                let mut sessions = self.state.lock().expect("sessions lock");
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
                self.end(&sid, "expired").await;
                continue;
            }
            let idle = self.ctx.settings.session_idle_timeout;
            if !busy && !idle.is_zero() {
                if let Some(since) = idle_since {
                    if since.elapsed() >= idle {
                        self.end(&sid, "idle").await;
                        continue;
                    }
                }
            }
            let wait = Duration::from_secs(deadline - now).min(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.ctx.shutdown.cancelled() => return,
            }
        }
    }

    /// Runs one task of session `sid` as an exec in its container.
    async fn run_task(
        &self,
        sid: &str,
        entry: &Entry,
        received: &Received,
        spec: &WorkerSpec,
        container: &SessionContainer,
    ) {
        let ctx = &self.ctx;
        let rid = spec.request_id.clone();
        let api_key = new_key();
        let net = ctx.worker_net(&spec.config, &api_key);
        let user = spec
            .env
            .iter()
            .find(|v| v.name == "ORCHESTRATOR_USER_ID")
            .map(|v| v.value.clone());
        let record = KeyRecord::for_spec(spec, user).in_container(&container.name);
        let ttl = Duration::from_secs(spec.config.limits.timeout_sec);
        if ctx
            .bus
            .register_worker_key(&api_key, &record, ttl)
            .await
            .is_err()
        {
            ctx.metrics.redis_errors.inc();
            return ctx
                .settle(
                    entry,
                    Disposition::LeavePending("registering the worker key failed"),
                )
                .await;
        }
        let mut redactor = spec.redactor();
        redactor.add(&api_key);
        let at = Placement {
            container_id: container.id.clone(),
            container_name: container.name.clone(),
            image: spec.config.image.clone(),
        };
        let deadline =
            worker::deadline_after(spec.config.limits.timeout_sec).min(container.deadline_unix);
        let job = Job::new(
            spec,
            at,
            deadline,
            Some(received),
            redactor,
            Some(api_key.clone()),
        );
        ctx.env
            .sink
            .event(&rid, EventType::Accepted, json!({"preset": spec.preset_id, "config_hash": spec.config_hash, "instance": ctx.settings.instance_id, "session_id": sid, "container": container.name}))
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
        let engine = &ctx.env.engine;
        let exec = match engine.upload(&container.id, &spec.request_files).await {
            Ok(()) => engine.exec(&container.id, spec.command.clone(), env).await,
            Err(e) => Err(e),
        };
        let (exec_id, output) = match exec {
            Ok(x) => x,
            Err(e) => {
                let info = ErrorCode::StartFailed.info(None, e.to_string());
                let r = job.result(Status::Error, Some(info), &ctx.settings.instance_id);
                let _ = ctx.bus.revoke_worker_key(&api_key).await;
                return ctx.settle(entry, Disposition::Answer(r)).await;
            }
        };
        self.state
            .lock()
            .expect("sessions lock")
            .entry(sid.to_string())
            .or_default()
            .current = Some((rid.clone(), job.stop.clone(), job.stop_reason.clone()));
        ctx.registry.track(&rid, running_of(&job));
        let (kill_ctx, kill_id) = (ctx.clone(), container.id.clone());
        let exec = Exec {
            exec_id,
            output,
            kill: Box::pin(async move { kill_task(&kill_ctx, &kill_id).await }),
            session_id: Some(sid.to_string()),
        };
        let published = worker::supervise_exec(&ctx.env, &job, exec, &ctx.shutdown).await;
        if let Some(st) = self.state.lock().expect("sessions lock").get_mut(sid) {
            st.current = None;
            st.last_used = Some(Instant::now());
        }
        ctx.registry.untrack(&rid);
        if published {
            ctx.settle(entry, Disposition::Ack).await;
        }
    }

    /// Stops every process of the running task (SIGTERM, grace, SIGKILL).
    async fn kill_task(&self, container_id: &str) {
        kill_task(&self.ctx, container_id).await
    }
}

/// Stops every process of a session's running task (SIGTERM, grace,
/// SIGKILL) through the in-container killer.
async fn kill_task(ctx: &Ctx, container_id: &str) {
    let killer = crate::model::delivery::killer_command;
    let run = |argv: Vec<String>| async move {
        match ctx
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
    let deadline = Instant::now() + ctx.settings.stop_grace;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Signal 0 counts the survivors without hurting them.
        if run(killer("0")).await == 0 {
            return;
        }
    }
    run(killer("KILL")).await;
}

impl Sessions {
    /// Session `sid`'s container on the engine: the one under its name if
    /// its labels say it is this session's (`Err(Some(name))` when another
    /// container holds the name), else one labelled with the session under
    /// any name (an older daemon's naming). `Err(None)`: Docker trouble.
    pub(super) async fn find_session_container(
        &self,
        sid: &str,
    ) -> Result<Option<ContainerFacts>, Option<String>> {
        let name = self.session_container_name(sid);
        match self.ctx.env.engine.inspect(&name).await {
            Ok(f) if self.ctx.holds_session(&f, sid) => return Ok(Some(f)),
            Ok(_) => {
                tracing::warn!(session_id = sid, container = %name, "session container name held by another container");
                return Err(Some(name));
            }
            Err(EngineError::NotFound(_)) => {}
            Err(_) => return Err(None),
        }
        let found = self
            .ctx
            .env
            .engine
            .list_labelled(
                &self.ctx.settings.stream_prefix,
                &[(labels::SESSION_ID, sid), (labels::KIND, "session")],
            )
            .await
            .map_err(|_| None)?;
        match found.into_iter().max_by_key(|c| c.running) {
            Some(c) => self
                .ctx
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
    fn session_container_name(&self, sid: &str) -> String {
        session_container_name(&self.ctx.settings.stream_prefix, sid)
    }

    /// Ends a session: stops its task, removes its container, says so.
    pub async fn end(&self, sid: &str, why: &str) {
        self.end_inner(sid, why, true).await
    }

    async fn end_inner(&self, sid: &str, why: &str, wait_for_task: bool) {
        let (container, current, busy, last) = {
            let mut sessions = self.state.lock().expect("sessions lock");
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
                self.ctx.settings.stop_grace + Duration::from_secs(15),
                busy.lock(),
            )
            .await
            .ok()
        } else {
            None
        };
        if let Some(id) = &target {
            if let Err(e) = self.ctx.env.engine.remove(id).await {
                tracing::warn!(session_id = sid, error = %e, "removing the session container failed");
            }
        }
        let _ = self
            .ctx
            .bus
            .release_session(sid, &self.ctx.settings.instance_id)
            .await;
        self.ctx
            .env
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
pub(super) fn session_from_facts(f: &ContainerFacts) -> SessionContainer {
    let l = |k: &str| f.labels.get(k).cloned().unwrap_or_default();
    SessionContainer {
        id: f.id.clone(),
        name: f.name.clone(),
        config_hash: l(labels::CONFIG_HASH),
        preset: l(labels::PRESET),
        deadline_unix: l(labels::DEADLINE).parse().unwrap_or(0),
    }
}
