//! Sessions: requests with the same `task.session_id` run one after another
//! in one live container, each as a Docker exec under its own timeout.
//!
//! The session container's main process is an idle keeper (the daemon's
//! shim in its `keep` mode) under Docker's init; it carries the session
//! id, config hash and TTL deadline as labels, so a restarted daemon
//! adopts it. A task that runs past its timeout is stopped by an
//! in-container killer that signals every process except init and the
//! keeper (a session runs one task at a time, so everything else belongs
//! to that task), and the container stays usable.
//!
//! Each session is one task with a message queue (its main loop, below):
//! it alone holds the session's state (queued requests, its container, the
//! time of its last task), runs its requests one at a time in stream
//! order, ends itself at its TTL or idle timeout, and ends on a control
//! command once its running task has published its result. The rest of
//! the supervisor only sends it [`Message`]s.

mod task;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::ctx::Ctx;
use super::intake::Parsed;
use super::registry::Running;
use crate::adapters::engine::ContainerFacts;
use crate::model::container::{labels, session_container_name, session_volume_names};
use crate::model::protocol::EventType;
use crate::worker::{unix_now, StopReason};

use task::session_from_facts;

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
    /// The `task.user_id` it belongs to (`None`: made before sessions were
    /// bound to users).
    pub user: Option<String>,
    /// Whether its shim has the `turn` mode (made by this daemon version).
    pub turn: bool,
    /// Whether it reaches out through an egress socket (else a bridge: an
    /// older daemon's container, or the bridge path).
    pub egress: bool,
    /// Its repository and artifact globs (its first task's plan): every
    /// task of the session is collected with it.
    pub workspace: Option<crate::model::workspace::WorkspacePlan>,
}

/// Why a session ends (the `reason` of its `session_expired` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its TTL passed.
    Expired,
    /// No task for `session_idle_timeout`.
    Idle,
    /// A `cancel_session` control command.
    Cancelled,
    /// An `end_session` control command: the volumes go too.
    Ended,
}

impl End {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Expired => "expired",
            End::Idle => "idle",
            End::Cancelled => "cancelled",
            End::Ended => "ended",
        }
    }

    /// Why its running task is stopped.
    fn stop_reason(self) -> StopReason {
        match self {
            End::Cancelled | End::Ended => StopReason::Cancelled,
            End::Expired | End::Idle => StopReason::Expired,
        }
    }
}

/// What the supervisor tells a session.
pub enum Message {
    /// A request of the session (they are run in stream order).
    Request(Parsed),
    /// Its container, found on the engine (adoption).
    Adopted(SessionContainer, String),
    /// End it.
    End(End),
}

/// The supervisor's side of one session's loop.
struct Handle {
    tx: mpsc::UnboundedSender<Message>,
    /// Whether the session holds a container now (kept by its loop).
    has_container: Arc<AtomicBool>,
}

/// The sessions of this instance: a message queue per running session.
pub struct Sessions {
    ctx: Arc<Ctx>,
    handles: Mutex<HashMap<String, Handle>>,
}

impl Sessions {
    /// No session yet.
    pub fn new(ctx: Arc<Ctx>) -> Sessions {
        Sessions {
            ctx,
            handles: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `msg` to session `sid`, starting its loop when it has none.
    fn send(self: &Arc<Self>, sid: &str, msg: Message) {
        // Under the lock: a loop leaves only with an empty queue, checked
        // under the same lock, so no message is sent to a loop that left.
        let mut handles = self.handles.lock().expect("sessions lock");
        if let Some(h) = handles.get(sid) {
            // A send fails only once its loop ended with the shutdown: the
            // entry then stays pending for the next start.
            let _ = h.tx.send(msg);
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let has_container = Arc::new(AtomicBool::new(false));
        let _ = tx.send(msg);
        handles.insert(
            sid.to_string(),
            Handle {
                tx,
                has_container: has_container.clone(),
            },
        );
        let session = Session {
            ctx: self.ctx.clone(),
            sid: sid.to_string(),
            container: None,
            has_container,
            last_request: String::new(),
            last_used: None,
            current: Arc::default(),
            record: None,
            delivered: None,
            taken_from: None,
        };
        let sessions = self.clone();
        tokio::spawn(async move { session.main_loop(rx, sessions).await });
    }

    /// Queues a session request; order within the session is stream order.
    pub fn enqueue(self: &Arc<Self>, session_id: String, parsed: Parsed) {
        self.send(&session_id, Message::Request(parsed));
    }

    /// Whether this instance holds session `sid`'s container.
    pub fn has_container(&self, sid: &str) -> bool {
        self.handles
            .lock()
            .expect("sessions lock")
            .get(sid)
            .is_some_and(|h| h.has_container.load(Ordering::Relaxed))
    }

    /// The sessions whose container this instance holds.
    pub fn owned(&self) -> Vec<String> {
        self.handles
            .lock()
            .expect("sessions lock")
            .iter()
            .filter(|(_, h)| h.has_container.load(Ordering::Relaxed))
            .map(|(sid, _)| sid.clone())
            .collect()
    }

    /// Ends session `sid` (after its running task, which is stopped).
    pub fn end(self: &Arc<Self>, sid: &str, why: End) {
        if self
            .handles
            .lock()
            .expect("sessions lock")
            .contains_key(sid)
        {
            self.send(sid, Message::End(why));
        }
    }

    /// Ends session `sid` for good (`end_session`): the instance holding
    /// its container ends it there, volumes and all; a session no live
    /// instance holds loses its leftover container and its volumes here.
    pub async fn end_for_good(self: &Arc<Self>, sid: &str) {
        // A loop here (with its container, or making one) ends it itself.
        let here = self
            .handles
            .lock()
            .expect("sessions lock")
            .contains_key(sid);
        if here {
            self.send(sid, Message::End(End::Ended));
            return;
        }
        let ctx = &self.ctx;
        let Ok(found) = ctx
            .env
            .engine
            .list_labelled(
                &ctx.settings.stream_prefix,
                &[(labels::SESSION_ID, sid), (labels::KIND, "session")],
            )
            .await
        else {
            return;
        };
        for c in found {
            if !ctx.may_adopt(&c).await {
                // A live instance holds it and ends it on the same command.
                return;
            }
            let _ = ctx.env.engine.remove(&c.id).await;
        }
        remove_volumes(ctx, sid).await;
        tracing::info!(session_id = %sid, "session ended for good");
    }

    /// Removes the volumes of sessions unused for `session_keep` (no
    /// container mounts them, and their last use lies further back). The
    /// maintenance loop calls it; it and `end_session` are the only ways a
    /// session volume is ever removed.
    pub async fn expire_volumes(&self) {
        let ctx = &self.ctx;
        let Ok(volumes) = ctx
            .env
            .engine
            .list_volumes(&ctx.settings.stream_prefix, &[(labels::KIND, "session")])
            .await
        else {
            return;
        };
        let mut by_session: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, l) in volumes {
            if let Some(sid) = l.get(labels::SESSION_ID) {
                by_session.entry(sid.clone()).or_default().push(name);
            }
        }
        let keep = ctx.settings.session_keep.as_secs();
        for (sid, names) in by_session {
            if self
                .handles
                .lock()
                .expect("sessions lock")
                .contains_key(&sid)
            {
                continue;
            }
            let now = unix_now();
            let Ok(used) = ctx.bus.session_volumes_used(&sid, now).await else {
                continue;
            };
            if now.saturating_sub(used) < keep {
                continue;
            }
            let mut in_use = false;
            for n in &names {
                in_use |= ctx.env.engine.volume_in_use(n).await.unwrap_or(true);
            }
            if in_use {
                continue;
            }
            // A task may have come meanwhile (it records the use before it
            // makes its container): look once more, right before removing.
            match ctx.bus.session_volumes_used(&sid, now).await {
                Ok(again) if now.saturating_sub(again) >= keep => {}
                _ => continue,
            }
            tracing::info!(session_id = %sid, idle_secs = now - used, "removing the volumes of a session unused for session_keep");
            remove_volumes(ctx, &sid).await;
        }
    }

    /// Takes over a session container found on the engine (after a restart
    /// or from a dead instance): a running one goes to its session, so its
    /// TTL, a cancel and the next request find it; a stopped one is over
    /// and is removed.
    pub async fn adopt(self: &Arc<Self>, facts: ContainerFacts) {
        let ctx = &self.ctx;
        let Some(sid) = facts.labels.get(labels::SESSION_ID).cloned() else {
            return;
        };
        let facts = match ctx.env.engine.inspect(&facts.id).await {
            Ok(f) => f,
            Err(_) => return,
        };
        if !facts.running {
            let _ = ctx.env.engine.remove(&facts.id).await;
            return;
        }
        if self.has_container(&sid) {
            return;
        }
        ctx.metrics.adopted.inc();
        tracing::info!(session_id = %sid, container = %facts.name, "adopting session container");
        let first = facts
            .labels
            .get(labels::REQUEST_ID)
            .cloned()
            .unwrap_or_default();
        self.send(&sid, Message::Adopted(session_from_facts(&facts), first));
    }

    /// Forgets session `sid`'s loop if nothing waits for it; returns
    /// whether it did (the loop then ends).
    fn leave(&self, sid: &str, rx: &mpsc::UnboundedReceiver<Message>) -> bool {
        let mut handles = self.handles.lock().expect("sessions lock");
        if !rx.is_empty() {
            return false;
        }
        handles.remove(sid);
        true
    }
}

/// One session's state, held by its loop alone.
struct Session {
    ctx: Arc<Ctx>,
    sid: String,
    /// The session's container, once created or adopted.
    container: Option<SessionContainer>,
    /// Mirrors `container.is_some()` for the supervisor.
    has_container: Arc<AtomicBool>,
    /// Last request id seen (for session-wide events).
    last_request: String,
    /// When the last task ended.
    last_used: Option<Instant>,
    /// How to stop the task running now.
    current: Arc<Mutex<Option<Running>>>,
    /// The conversation record of the session's volume, once known (the
    /// inner `None`: no conversation yet); `None` until it is read from a
    /// container the session did not create on fresh volumes.
    record: Option<Option<String>>,
    /// The request whose prompt went into the container with its
    /// instructions (its task uploads nothing more).
    delivered: Option<String>,
    /// The dead instance this one took the session over from, until its
    /// container is found here (same engine) or the session is taken for
    /// lost with that instance's host.
    taken_from: Option<String>,
}

/// What woke a session's loop (moved once, so its size is no cost).
#[allow(clippy::large_enum_variant)]
enum Event {
    Message(Message),
    /// A timer: the TTL, the idle timeout, or a request to retry.
    Tick,
    /// The daemon stops.
    Shutdown,
}

impl Session {
    /// The session's main loop: takes messages, runs queued requests one at
    /// a time, ends the session at its TTL or idle timeout.
    async fn main_loop(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Message>,
        sessions: Arc<Sessions>,
    ) {
        let mut queue: BTreeMap<(u64, u64), Parsed> = BTreeMap::new();
        // When a queued request waits for an earlier one pending elsewhere.
        let mut retry_at: Option<Instant> = None;
        loop {
            let wake = self.next_timer(retry_at);
            let event = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => Event::Message(m),
                    None => Event::Shutdown,
                },
                _ = tokio::time::sleep(wake) => Event::Tick,
                _ = self.ctx.shutdown.cancelled() => Event::Shutdown,
            };
            match event {
                // Queued entries stay unacknowledged: the next start reads them.
                Event::Shutdown => return,
                Event::Message(Message::Request(p)) => {
                    queue.insert(entry_key(&p.entry.id), p);
                }
                Event::Message(Message::Adopted(c, first)) => {
                    if self.container.is_none() {
                        if self.last_request.is_empty() {
                            self.last_request = first;
                        }
                        self.set_container(Some(c));
                    }
                }
                Event::Message(Message::End(why)) => {
                    if self.container.is_some() {
                        self.end(why).await;
                    } else if why == End::Ended {
                        remove_volumes(&self.ctx, &self.sid).await;
                    }
                }
                Event::Tick => {
                    if retry_at.is_some_and(|t| t <= Instant::now()) {
                        retry_at = None;
                    }
                    self.expire().await;
                }
            }
            while retry_at.is_none() {
                match self.next_request(&mut queue).await {
                    Some(Next::Run(p)) => {
                        if !self.run(p, &mut queue, &mut rx).await {
                            return;
                        }
                    }
                    Some(Next::Wait) => {
                        retry_at = Some(Instant::now() + Duration::from_millis(200))
                    }
                    None => break,
                }
            }
            if queue.is_empty() && self.container.is_none() && sessions.leave(&self.sid, &rx) {
                return;
            }
        }
    }

    /// How long until the loop must look again (TTL, idle timeout, retry).
    fn next_timer(&self, retry_at: Option<Instant>) -> Duration {
        let mut wait = Duration::from_secs(3600);
        if let Some(c) = &self.container {
            let ms = (c.deadline_unix * 1000).saturating_sub(crate::worker::unix_now_ms());
            wait = wait.min(Duration::from_millis(ms));
            let idle = self.ctx.settings.session_idle_timeout;
            if let (false, Some(since)) = (idle.is_zero(), self.last_used) {
                wait = wait.min(idle.saturating_sub(since.elapsed()));
            }
        }
        if let Some(t) = retry_at {
            wait = wait.min(t.saturating_duration_since(Instant::now()));
        }
        wait
    }

    /// Ends the session if its TTL passed or it was idle too long.
    async fn expire(&mut self) {
        let Some(c) = &self.container else {
            return;
        };
        if unix_now() >= c.deadline_unix {
            return self.end(End::Expired).await;
        }
        let idle = self.ctx.settings.session_idle_timeout;
        if !idle.is_zero() && self.last_used.is_some_and(|since| since.elapsed() >= idle) {
            self.end(End::Idle).await;
        }
    }

    /// The first queued request, if this instance runs it now: one
    /// instance runs a session's requests, in order (an entry read by
    /// another instance is handed to the session's owner).
    async fn next_request(&mut self, queue: &mut BTreeMap<(u64, u64), Parsed>) -> Option<Next> {
        let ctx = self.ctx.clone();
        while let Some((key, p)) = queue.pop_first() {
            match ctx
                .bus
                .take_session(&self.sid, &ctx.settings.instance_id)
                .await
            {
                Ok((owner, from)) if owner == ctx.settings.instance_id => {
                    if from.is_some() {
                        self.taken_from = from;
                    }
                }
                Ok((owner, _)) => {
                    tracing::info!(session_id = %self.sid, owner = %owner, entry_id = %p.entry.id, "handing a session request to its owner");
                    if let Err(e) = ctx.bus.transfer(&p.entry.id, &owner).await {
                        tracing::warn!(session_id = %self.sid, error = %e, "handing over failed; the entry stays pending");
                    }
                    continue;
                }
                // Unacknowledged: read again by the next sweep or reclaim.
                Err(_) => continue,
            }
            // Stream order across instances: an earlier request of this
            // session still pending elsewhere (or on its way here) runs first.
            if self.earlier_request_pending(&p.entry, queue).await {
                queue.insert(key, p);
                return Some(Next::Wait);
            }
            return Some(Next::Run(p));
        }
        None
    }

    /// Runs request `p` as the session's task, taking messages meanwhile: a
    /// request is queued, an end stops the task and ends the session once
    /// the task's result is out. Returns false when the daemon stops before
    /// the task could start.
    async fn run(
        &mut self,
        p: Parsed,
        queue: &mut BTreeMap<(u64, u64), Parsed>,
        rx: &mut mpsc::UnboundedReceiver<Message>,
    ) -> bool {
        let ctx = self.ctx.clone();
        let permit = tokio::select! {
            p = ctx.slots.clone().acquire_owned() => p.expect("semaphore open"),
            // Unacknowledged: the next start reads it again.
            _ = ctx.shutdown.cancelled() => return false,
        };
        let span = tracing::info_span!(
            "session",
            session_id = %self.sid,
            container = %session_container_name(&ctx.settings.stream_prefix, &self.sid),
        );
        let current = self.current.clone();
        let mut ending: Option<End> = None;
        let mut adopted = None;
        {
            let task = self.run_entry(p, permit).instrument(span);
            tokio::pin!(task);
            loop {
                tokio::select! {
                    _ = &mut task => break,
                    Some(m) = rx.recv() => match m {
                        Message::Request(p) => {
                            queue.insert(entry_key(&p.entry.id), p);
                        }
                        Message::Adopted(c, first) => adopted = Some((c, first)),
                        Message::End(why) => {
                            if let Some(r) = current.lock().expect("current lock").as_ref() {
                                *r.reason.lock().expect("reason lock") = Some(why.stop_reason());
                                r.stop.cancel();
                            }
                            ending = Some(why);
                        }
                    },
                }
            }
        }
        if let (None, Some((c, first))) = (&self.container, adopted) {
            if self.last_request.is_empty() {
                self.last_request = first;
            }
            self.set_container(Some(c));
        }
        if let Some(why) = ending {
            if self.container.is_some() {
                self.end(why).await;
            } else if why == End::Ended {
                remove_volumes(&self.ctx, &self.sid).await;
            }
        }
        true
    }

    /// Records the session's container (or its end).
    fn set_container(&mut self, c: Option<SessionContainer>) {
        self.has_container.store(c.is_some(), Ordering::Relaxed);
        self.container = c;
    }

    /// Ends the session: removes its container, says so.
    async fn end(&mut self, why: End) {
        let ctx = self.ctx.clone();
        let sid = self.sid.clone();
        let container = self.container.take();
        self.set_container(None);
        // Without a known container, only one whose labels say it is this
        // session's is removed (never whatever holds the name).
        let (name, target) = match &container {
            Some(c) => (c.name.clone(), Some(c.id.clone())),
            None => match self.find_container().await {
                Ok(Some(f)) => (f.name, Some(f.id)),
                _ => (
                    session_container_name(&ctx.settings.stream_prefix, &sid),
                    None,
                ),
            },
        };
        if let Some(id) = &target {
            if let Err(e) = ctx.env.engine.remove(id).await {
                tracing::warn!(session_id = %sid, error = %e, "removing the session container failed");
            }
        }
        ctx.env.egress.close(&name);
        self.record = None;
        let kept = if why == End::Ended {
            remove_volumes(&ctx, &sid).await;
            false
        } else {
            let _ = ctx.bus.touch_session_volumes(&sid, unix_now()).await;
            true
        };
        let _ = ctx
            .bus
            .release_session(&sid, &ctx.settings.instance_id)
            .await;
        ctx.env
            .sink
            .event(
                &self.last_request,
                EventType::SessionExpired,
                json!({"session_id": sid, "container": name, "reason": why.as_str(), "volumes_kept": kept}),
            )
            .await;
        tracing::info!(session_id = %sid, reason = why.as_str(), "session ended");
    }
}

/// Removes session `sid`'s volumes and their use record (they are in use
/// only by a container being removed, which Docker finishes first).
pub(crate) async fn remove_volumes(ctx: &Ctx, sid: &str) {
    let (w, h) = session_volume_names(&ctx.settings.stream_prefix, sid);
    let mut gone = true;
    for v in [&w, &h] {
        if let Err(e) = ctx.env.engine.remove_volume(v).await {
            tracing::warn!(session_id = %sid, volume = %v, error = %e, "removing a session volume failed; the maintenance sweep removes it once session_keep has passed");
            gone = false;
        }
    }
    if gone {
        let _ = ctx.bus.forget_session_volumes(sid).await;
    }
}

/// What the queue holds next (moved once, so its size is no cost).
#[allow(clippy::large_enum_variant)]
enum Next {
    /// Run this request now.
    Run(Parsed),
    /// Wait: an earlier request of the session is pending elsewhere.
    Wait,
}
