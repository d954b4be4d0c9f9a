//! Adoption: taking over managed containers found on the engine (at
//! start-up, from instances whose heartbeat is gone, or through a
//! redelivered entry). A running worker is followed, an ended one answered
//! for, one in which nothing ran hands its entry back to the intake; a
//! session container goes back to its session, an idle pool container is
//! removed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ctx::running_of;
use super::Supervisor;
use crate::adapters::bus::HoldClaim;
use crate::adapters::engine::ContainerFacts;
use crate::model::container::labels;
use crate::model::outcome::{self, Interruption};
use crate::model::protocol::Status;
use crate::worker::{self, Job};

impl Supervisor {
    /// Adopts every managed container of this setup that it may.
    pub(super) async fn adopt_all(self: &Arc<Self>) {
        let ctx = &self.ctx;
        match ctx
            .env
            .engine
            .list_managed(&ctx.settings.stream_prefix)
            .await
        {
            Ok(list) => {
                for c in list {
                    if ctx.may_adopt(&c).await {
                        self.adopt(c, None).await;
                    }
                }
            }
            Err(e) => {
                ctx.metrics.docker_errors.inc();
                tracing::warn!(error = %e, "listing managed containers failed");
            }
        }
    }

    /// Adopts containers whose owning instance is gone.
    pub(super) async fn adopt_orphans(self: &Arc<Self>) {
        let ctx = &self.ctx;
        let Ok(list) = ctx
            .env
            .engine
            .list_managed(&ctx.settings.stream_prefix)
            .await
        else {
            return;
        };
        for c in list {
            let owner = c.labels.get(labels::INSTANCE).cloned().unwrap_or_default();
            if owner == ctx.settings.instance_id {
                continue;
            }
            let Some(rid) = c.labels.get(labels::REQUEST_ID) else {
                continue;
            };
            if ctx.registry.is_running(rid) {
                continue;
            }
            if ctx.may_adopt(&c).await {
                self.adopt(c, None).await;
            }
        }
    }

    /// Takes over a managed container found on the engine: follows it if it
    /// runs, answers for it if it ended, stops it if past its deadline.
    pub(super) async fn adopt(
        self: &Arc<Self>,
        facts: ContainerFacts,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let ctx = &self.ctx;
        if !ctx.is_ours(&facts) {
            return;
        }
        match facts.labels.get(labels::KIND).map(String::as_str) {
            Some("pool") => {
                // An idle pool container of an earlier run: cheaper to make anew.
                // (One that was serving a request is answered through its run mark.)
                let _ = ctx.env.engine.remove(&facts.id).await;
                return;
            }
            Some("session") => {
                // A session that ended with its lost instance (this one,
                // back from the dead), or that a live peer runs now, is not
                // this container's any more: it goes quietly.
                let sid = facts
                    .labels
                    .get(labels::SESSION_ID)
                    .cloned()
                    .unwrap_or_default();
                let me = &ctx.settings.instance_id;
                let made_ms: i64 = facts
                    .labels
                    .get(labels::RECEIVED_MS)
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
                let lost_here = matches!(ctx.bus.session_loss(&sid).await, Ok(Some(l)) if &l.instance == me && made_ms < l.at_ms);
                let owned_elsewhere =
                    matches!(ctx.bus.claim_session(&sid, me).await, Ok(o) if &o != me);
                if lost_here || owned_elsewhere {
                    tracing::info!(session_id = %sid, container = %facts.name, "the session ended with this instance's loss; removing its container");
                    ctx.metrics.fenced.inc();
                    let _ = ctx.env.engine.remove(&facts.id).await;
                    let _ = ctx
                        .bus
                        .release_session(&sid, &ctx.settings.instance_id)
                        .await;
                    ctx.env.egress.close(&facts.name);
                    return;
                }
                // A session container runs an idle keeper, not a task: it goes
                // back to its session (TTL reaper, cancel, next request), never
                // to the one-shot supervisor.
                if facts.running {
                    ctx.reopen_egress(&facts, None).await;
                }
                self.sessions.adopt(facts).await;
                return;
            }
            _ => {}
        }
        let Some(rid) = facts.labels.get(labels::REQUEST_ID).cloned() else {
            return;
        };
        let facts = match ctx.env.engine.inspect(&facts.id).await {
            Ok(f) => f,
            Err(_) => return,
        };
        // The hold says whose the request is now: a request answered, or
        // run again elsewhere, while this container's host was taken for
        // lost is not this container's any more.
        let attempt = facts
            .labels
            .get(labels::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        if ctx.registry.is_running(&rid) {
            return;
        }
        let held = crate::adapters::bus::Held {
            request_id: rid.clone(),
            attempt,
            ..Default::default()
        };
        match ctx.bus.hold(&held, true).await {
            Ok(HoldClaim::Taken) => {}
            Ok(HoldClaim::Answered | HoldClaim::Stale) => {
                tracing::info!(request_id = %rid, container = %facts.name, attempt, "its request was answered or runs again elsewhere; removing the container quietly");
                ctx.metrics.fenced.inc();
                if let Some(k) = &facts.api_key {
                    let _ = ctx.bus.revoke_worker_key(k).await;
                }
                let _ = ctx.env.engine.remove(&facts.id).await;
                ctx.env.egress.close(&facts.name);
                return;
            }
            // A live peer holds it (its own container on this engine).
            Ok(HoldClaim::Elsewhere | HoldClaim::Orphaned) | Err(_) => return,
        }
        let mut redactor = ctx.redactor_for(facts.labels.get(labels::PRESET).map(String::as_str));
        if let Some(k) = &facts.api_key {
            redactor.add(k);
        }
        let job = Job::adopted(&rid, &facts, redactor);
        if !ctx.registry.claim(&rid, running_of(&job)) {
            return;
        }
        ctx.metrics.adopted.inc();
        tracing::info!(request_id = %rid, container = %facts.name, running = facts.running, "adopting container");
        if facts.running {
            ctx.reopen_egress(&facts, Some(&rid)).await;
        }
        let permit = match permit {
            Some(p) => p,
            None => match ctx.slots.clone().try_acquire_owned() {
                Ok(p) => p,
                // Adopted work runs even past the limit: it exists already.
                Err(_) => Arc::new(Semaphore::new(1))
                    .try_acquire_owned()
                    .expect("fresh semaphore"),
            },
        };
        let s = self.clone();
        tokio::spawn(async move { s.adopt_claimed(facts, job, permit).await });
    }

    /// The rest of an adoption, once the container is claimed: follows a
    /// running worker, answers for an ended one, and hands the entry of a
    /// worker in which nothing ran back to the intake.
    async fn adopt_claimed(
        self: Arc<Self>,
        facts: ContainerFacts,
        job: Job,
        permit: OwnedSemaphorePermit,
    ) {
        let ctx = &self.ctx;
        let mut facts = facts;
        let rid = job.request_id.clone();
        let l = facts.labels.clone();
        let stdin_oneshot = l.get(labels::KIND).map(String::as_str) == Some("oneshot")
            && l.get(labels::DELIVERY).map(String::as_str) == Some("stdin");
        if facts.running && stdin_oneshot {
            // A shim left waiting for its files by a daemon that died exits
            // within milliseconds of that death; give it the time to say so.
            let waited =
                tokio::time::timeout(Duration::from_secs(2), ctx.env.engine.wait(&facts.id)).await;
            if waited.is_ok() {
                if let Ok(f) = ctx.env.engine.inspect(&facts.id).await {
                    facts = f;
                }
            }
        }
        // Started, but its daemon died before delivering the files on stdin:
        // the shim exited without running the agent, so nothing ran either.
        let undelivered = stdin_oneshot
            && !facts.running
            && facts.exit_code == Some(crate::model::delivery::SHIM_UNDELIVERED);
        if !facts.started || undelivered {
            // Created but never started (crash between create and start),
            // or started without its files: nothing ran. With its request
            // entry still in the stream, the entry is handled again (the
            // container is replaced); without it, answer with an error.
            let entry = match l.get(labels::ENTRY_ID) {
                Some(id) => ctx.bus.entry_by_id(id).await.ok().flatten(),
                None => None,
            };
            if let Some(mut entry) = entry {
                ctx.registry.untrack(&rid);
                // The container gives way here, so the entry's next handling
                // creates afresh (a first delivery goes straight to create).
                if ctx.env.engine.remove(&facts.id).await.is_err() {
                    // Docker trouble: a later adoption pass tries again.
                    return;
                }
                entry.deliveries = ctx.bus.deliveries(&entry.id).await.unwrap_or(1);
                tracing::info!(request_id = %rid, entry_id = %entry.id, "nothing ran in the container; handling its entry again");
                self.dispatch(entry, permit);
                return;
            }
            let info = outcome::interrupted_info(Interruption::BeforeStart);
            let r = job.result(Status::Error, Some(info), &ctx.settings.instance_id);
            worker::finish(&ctx.env, &job, &r).await;
            ctx.registry.untrack(&rid);
            return;
        }
        // Running, or ended while nobody watched (supervise finds it exited
        // at once).
        ctx.supervise(job, false, permit).await;
    }
}
