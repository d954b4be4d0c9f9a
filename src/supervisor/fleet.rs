//! The fleet: holds on the requests this instance runs (so that a peer can
//! answer for them when this host is lost), the answer for the requests of
//! lost instances (run again by their retry policy, else `error`/`lost`),
//! the sessions that ended with them, the retries released after their
//! backoff, and the fence that silences workers whose request is held
//! elsewhere now. The bookkeeping itself is `adapters::bus::fleet`.

use std::sync::Arc;

use serde_json::json;

use super::ctx::Ctx;
use super::intake::Parsed;
use super::Supervisor;
use crate::adapters::bus::{Held, HoldClaim, LostInstance};
use crate::model::container::{labels, session_volume_names};
use crate::model::outcome::ErrorCode;
use crate::model::protocol::{EventType, ResultRecord, Status, WorkerInfo};
use crate::model::retry::{self, Reason, RetryPolicy};
use crate::model::spec::WorkerSpec;
use crate::model::triage::Disposition;
use crate::model::worker_key::key_hash;

/// How often due retries are looked for.
const RETRY_TICK: std::time::Duration = std::time::Duration::from_millis(500);

impl Ctx {
    /// Takes this instance's hold on request `p` (attempt `spec.attempt`)
    /// before its worker exists; `Err` carries how to settle the entry
    /// instead (answered, stale, held by a live peer, or Redis trouble).
    pub async fn hold(
        &self,
        p: &Parsed,
        spec: &WorkerSpec,
        kind: &str,
        container: &str,
        api_key: &str,
    ) -> Result<(), Disposition> {
        let rid = &spec.request_id;
        let h = Held {
            request_id: rid.clone(),
            instance: self.settings.instance_id.clone(),
            attempt: spec.attempt,
            entry: p.entry.id.clone(),
            data: p
                .entry
                .data
                .as_deref()
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .unwrap_or_default(),
            kind: kind.to_string(),
            container: container.to_string(),
            preset: spec.preset_id.clone().unwrap_or_default(),
            key_hash: key_hash(api_key),
            retry: spec
                .config
                .retry
                .as_ref()
                .map(|r| serde_json::to_string(r).expect("retry policy serializes"))
                .unwrap_or_default(),
        };
        match self.bus.hold(&h, false).await {
            Ok(HoldClaim::Taken) => {
                self.env.sink.set_attempt(rid, spec.attempt);
                Ok(())
            }
            // The hold is the record of the work: its live holder answers,
            // or once that holder counts as lost, the lost handler does (by
            // the retry policy). This delivery is done.
            Ok(claim) => {
                tracing::info!(request_id = %rid, attempt = spec.attempt, ?claim, "not running this delivery of the request");
                Err(Disposition::Ack)
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(request_id = %rid, error = %e, "cannot take the request's hold");
                Err(Disposition::LeavePending("redis unavailable"))
            }
        }
    }

    /// Answers a request whose worker never started (`result`), or runs it
    /// again when its retry policy covers the failure; then settles `p`.
    pub async fn answer_or_retry(&self, p: &Parsed, spec: &WorkerSpec, result: ResultRecord) {
        let mut result = result;
        result.attempt = spec.attempt;
        let policy = spec.config.retry.as_ref();
        if let Some(why) = retry::reason_of(&result) {
            if let Some(next) = retry::next_attempt(policy, spec.attempt, why) {
                let policy = policy.expect("a next attempt has a policy");
                if self
                    .retry_later(&spec.request_id, spec.attempt, next, why, policy)
                    .await
                {
                    return self.settle(&p.entry, Disposition::Ack).await;
                }
            }
        }
        self.settle(&p.entry, Disposition::Answer(result)).await
    }

    /// Queues attempt `next` of `rid` (held here at `attempt`) after the
    /// policy's backoff; false when this instance holds no such attempt.
    async fn retry_later(
        &self,
        rid: &str,
        attempt: u32,
        next: u32,
        why: Reason,
        policy: &RetryPolicy,
    ) -> bool {
        self.env
            .sink
            .retry(
                rid,
                attempt,
                next,
                why,
                policy.backoff,
                &self.settings.instance_id,
            )
            .await
    }

    /// Whether session `sid`'s container or volumes are on this instance's
    /// engine (Docker trouble counts as yes: nothing is ended on a guess).
    async fn session_on_this_engine(&self, sid: &str) -> bool {
        let prefix = &self.settings.stream_prefix;
        let (workspace, _) = session_volume_names(prefix, sid);
        if !matches!(self.env.engine.volume(&workspace).await, Ok(None)) {
            return true;
        }
        !matches!(
            self.env
                .engine
                .list_labelled(prefix, &[(labels::SESSION_ID, sid)])
                .await,
            Ok(list) if list.is_empty()
        )
    }

    /// Answers for a request taken from instance `from` (lost, or this
    /// one when its worker vanished): runs it again when its policy retries
    /// `lost`, else publishes `error`/`lost` naming the instance.
    async fn answer_for_taken(&self, from: &str, h: Held, why: &str) {
        self.metrics.lost_requests.inc();
        if !h.key_hash.is_empty() {
            let _ = self.bus.delete_worker_key(&h.key_hash).await;
        }
        let policy: Option<RetryPolicy> = serde_json::from_str(&h.retry).ok();
        if let Some(next) = retry::next_attempt(policy.as_ref(), h.attempt, Reason::Lost) {
            let p = policy.as_ref().expect("a next attempt has a policy");
            if self
                .retry_later(&h.request_id, h.attempt, next, Reason::Lost, p)
                .await
            {
                return;
            }
        }
        let mut r = ResultRecord::bare(
            &h.request_id,
            Status::Error,
            Some(ErrorCode::Lost.info(None, format!("{why}; its preset does not retry `lost`"))),
        );
        r.attempt = h.attempt;
        r.worker = Some(WorkerInfo {
            container: h.container.clone(),
            image: String::new(),
            preset: (!h.preset.is_empty()).then(|| h.preset.clone()),
            config_hash: String::new(),
            instance: from.to_string(),
        });
        tracing::info!(request_id = %h.request_id, instance = %from, "answering for a request of a lost instance");
        self.env.sink.result(&r, &self.shutdown).await;
    }
}

impl Supervisor {
    /// Puts retries whose backoff is over back on the spawn stream (every
    /// instance looks; each retry is released once).
    pub(super) async fn retry_loop(self: Arc<Self>) {
        let ctx = &self.ctx;
        let mut tick = tokio::time::interval(RETRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ctx.shutdown.cancelled() => return,
            }
            match ctx.bus.release_due_retries().await {
                Ok(released) => {
                    for (rid, id) in released {
                        tracing::info!(request_id = %rid, entry_id = %id, "retry released to the spawn stream");
                    }
                }
                Err(e) => {
                    ctx.metrics.redis_errors.inc();
                    tracing::debug!(error = %e, "releasing due retries failed");
                }
            }
        }
    }

    /// One pass over the fleet (each maintenance tick): the requests and
    /// sessions of lost instances are answered for, and this instance's
    /// workers whose request is held elsewhere are stopped.
    pub(super) async fn fleet_pass(self: &Arc<Self>) {
        let ctx = &self.ctx;
        let lost_after = ctx.settings.instance_lost_after.as_millis() as i64;
        if let Ok(lost) = ctx.bus.lost_instances(lost_after).await {
            for l in lost {
                self.answer_for_lost(&l).await;
            }
        }
        for (rid, attempt) in ctx.registry.running_attempts() {
            // Redis trouble counts as "still mine": a worker is never stopped
            // on a guess (nor one whose result just went out).
            if matches!(ctx.bus.held_elsewhere(&rid, attempt).await, Ok(true))
                && ctx.registry.fence(&rid)
            {
                tracing::warn!(request_id = %rid, "this instance was taken for lost; stopping its worker quietly");
            }
        }
    }

    /// Answers for what lost instance `l` held: each request once (across
    /// the fleet), each of its sessions ended with `session_expired`.
    async fn answer_for_lost(self: &Arc<Self>, l: &LostInstance) {
        let ctx = &self.ctx;
        let gone_for = chrono::Utc::now().timestamp_millis() - l.last_seen_ms;
        let why = format!(
            "instance {} was lost (no heartbeat for {} s) while it ran this request",
            l.id,
            gone_for / 1000
        );
        let mut taken = 0u64;
        for rid in ctx.bus.holds_of(&l.id).await.unwrap_or_default() {
            match ctx.bus.take_lost(&l.id, &rid).await {
                Ok(Some(h)) => {
                    taken += 1;
                    ctx.answer_for_taken(&l.id, h, &why).await;
                }
                Ok(None) => {}
                Err(e) => {
                    ctx.metrics.redis_errors.inc();
                    tracing::warn!(request_id = %rid, error = %e, "taking a lost instance's request failed");
                }
            }
        }
        let mut sessions = 0u64;
        for sid in ctx.bus.sessions_of(&l.id).await.unwrap_or_default() {
            // Its container or volumes on this engine: not lost with a host,
            // this instance's orphan adoption takes it over.
            if ctx.session_on_this_engine(&sid).await {
                continue;
            }
            if let Ok(true) = ctx.bus.lose_session(&sid, &l.id, false).await {
                sessions += 1;
                ctx.env
                    .sink
                    .event(
                        "",
                        EventType::SessionExpired,
                        json!({"session_id": sid, "reason": "lost", "instance": l.id, "volumes_kept": false}),
                    )
                    .await;
            }
        }
        if taken + sessions > 0 {
            tracing::warn!(instance = %l.id, requests = taken, sessions, "instance lost; its work was answered for");
            ctx.env
                .sink
                .event(
                    "",
                    EventType::InstanceLost,
                    json!({"instance": l.id, "last_seen_ms_ago": gone_for, "requests": taken, "sessions": sessions}),
                )
                .await;
        }
        let _ = ctx.bus.forget_instance(&l.id).await;
    }

    /// After start-up adoption and with every orphan pass: holds of this
    /// instance whose worker is gone from its engine (removed by hand, or
    /// while no daemon ran) are answered for like a lost instance's.
    pub(super) async fn answer_for_vanished(self: &Arc<Self>) {
        let ctx = &self.ctx;
        let me = ctx.settings.instance_id.clone();
        for rid in ctx.bus.holds_of(&me).await.unwrap_or_default() {
            // Running, adopted, or on its way (between its hold and its
            // container, or between its removal and its retry).
            if ctx.registry.is_busy(&rid) {
                continue;
            }
            match ctx.request_container(&rid).await {
                Err(crate::adapters::engine::EngineError::NotFound(_)) => {}
                // Found (adopted or left for the intake), or Docker trouble.
                _ => continue,
            }
            // (A pending entry is left to this instance's own backlog.)
            if let Ok(Some(h)) = ctx.bus.take_own(&rid).await {
                let why = format!("its worker on instance {me} is gone (the container vanished while no daemon ran)");
                ctx.answer_for_taken(&me, h, &why).await;
            }
        }
    }
}
