//! Intake: reads spawn entries (`XREADGROUP`, one read per free slot; its
//! own pending list after a restart and every 2 s; `XAUTOCLAIM` of entries
//! idle too long), parses each once, routes session requests to their
//! session and triages the rest: [`crate::model::triage`] decides, this
//! module makes the look-ups it asks for and acts on the decision.

use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::ctx::Ctx;
use super::Supervisor;
use crate::adapters::bus::{BusError, Entry};
use crate::adapters::engine::{ContainerFacts, EngineError};
use crate::model::container::{labels, request_container_name};
use crate::model::protocol::{parse_spawn_request, ResultRecord, SpawnRequest, Status};
use crate::model::spec::WorkerSpec;
use crate::model::triage::{self, Check, Decision, Disposition, Facts, Step, Unavailable};
use crate::worker::Received;
use std::sync::Arc;

/// A spawn entry parsed (once), with the time it was read.
pub struct Parsed {
    /// The stream entry.
    pub entry: Entry,
    /// Its request.
    pub request: SpawnRequest,
    /// When this instance read it.
    pub received: Received,
}

/// What triage found out on the way to its decision.
pub struct Triaged {
    /// The decision.
    pub decision: Decision,
    /// The resolved request, once resolution was asked for and succeeded.
    pub spec: Option<WorkerSpec>,
    /// The request's labelled container, when one was looked up.
    pub container: Option<ContainerFacts>,
}

impl Ctx {
    /// Makes the look-ups triage asks for until it decides.
    pub async fn triage(&self, mut facts: Facts, req: &SpawnRequest) -> Triaged {
        let rid = req.request_id.clone();
        let mut spec = None;
        let mut container = None;
        loop {
            let check = match triage::next(&facts) {
                Step::Decide(decision) => {
                    return Triaged {
                        decision,
                        spec,
                        container,
                    }
                }
                Step::Check(c) => c,
            };
            match check {
                Check::Answered => {
                    let answered = self.bus.has_result(&rid).await.map_err(|e| {
                        self.metrics.redis_errors.inc();
                        tracing::warn!(request_id = %rid, error = %e, "cannot check for an earlier result");
                        Unavailable
                    });
                    facts.answered = Some(answered);
                }
                Check::RunningHere => facts.running_here = Some(self.registry.is_running(&rid)),
                Check::EarlyCancel => {
                    facts.early_cancel = Some(self.registry.take_early_cancel(&rid))
                }
                Check::Container => {
                    facts.container = Some(match self.request_container(&rid).await {
                        Ok(f) => {
                            let seen = triage::SeenContainer {
                                started: f.started,
                                running: f.running,
                            };
                            container = Some(f);
                            Ok(Some(seen))
                        }
                        Err(EngineError::NotFound(_)) => Ok(None),
                        Err(e) => {
                            self.metrics.docker_errors.inc();
                            tracing::warn!(request_id = %rid, error = %e, "docker unavailable");
                            Err(Unavailable)
                        }
                    })
                }
                Check::Adoptable => {
                    let c = container.as_ref().expect("a container was seen");
                    facts.adoptable = Some(self.may_adopt(c).await);
                }
                Check::RemoveUnstarted => {
                    let c = container.take().expect("a container was seen");
                    tracing::info!(request_id = %rid, container = %c.name, "removing a container that never started; spawning again");
                    facts.removed_unstarted = Some(match self.env.engine.remove(&c.id).await {
                        Ok(()) => Ok(()),
                        Err(e) => {
                            self.metrics.docker_errors.inc();
                            tracing::warn!(request_id = %rid, error = %e, "docker unavailable");
                            Err(Unavailable)
                        }
                    });
                }
                Check::Resolve => {
                    facts.resolved = Some(match self.resolve(req) {
                        Ok(s) => {
                            // A pool container is made before its request, so it
                            // cannot hold the request's repository.
                            let pooled = s.config.pool.size > 0
                                && s.preset_id.is_some()
                                && s.workspace.as_ref().is_none_or(|w| w.repo.is_none());
                            spec = Some(s);
                            Ok(triage::Resolved { pooled })
                        }
                        Err(e) => {
                            tracing::info!(request_id = %rid, "request refused: {e}");
                            Err((e.status(), e.info()))
                        }
                    })
                }
                Check::RunMark => {
                    let claim = self
                        .bus
                        .claim_run(&rid, &self.settings.instance_id)
                        .await
                        .map_err(|e| {
                            self.metrics.redis_errors.inc();
                            tracing::warn!(request_id = %rid, error = %e, "cannot take the run mark");
                            Unavailable
                        });
                    facts.run_claim = Some(claim);
                }
            }
        }
    }

    /// The one-shot container of request `rid`, found by its labels.
    pub async fn request_container(&self, rid: &str) -> Result<ContainerFacts, EngineError> {
        let found = self
            .env
            .engine
            .list_labelled(&self.settings.stream_prefix, &[(labels::REQUEST_ID, rid)])
            .await?;
        // A session container carries its first request's id too.
        let mut mine: Vec<ContainerFacts> = found
            .into_iter()
            .filter(|c| self.holds_request(c, rid))
            .collect();
        mine.sort_by_key(|c| !c.running);
        let first = mine
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::NotFound(rid.to_string()))?;
        // The listing holds no state details (exit code): inspect it.
        self.env.engine.inspect(&first.id).await
    }
}

/// The answer to a dry run: the resolved config and files, secrets masked.
pub fn dry_run_result(req: &SpawnRequest, spec: &WorkerSpec) -> ResultRecord {
    let mut r = ResultRecord::bare(&req.request_id, Status::Succeeded, None);
    r.session_id = req.task.session_id.clone();
    let mut config = spec.config_view();
    let mut files = serde_json::to_value(spec.file_views()).expect("files serialize");
    let red = spec.redactor();
    red.redact_json(&mut config);
    red.redact_json(&mut files);
    r.config = Some(config);
    r.files = serde_json::from_value(files).ok();
    r
}

impl Supervisor {
    pub(super) async fn intake_loop(self: Arc<Self>) {
        let ctx = self.ctx.clone();
        let block = ctx.settings.block;
        let mut conn = None;
        let mut backoff = Duration::from_millis(100);
        // Entries this consumer read before a crash come first; later sweeps
        // of its own pending list pick up entries other instances hand over.
        let mut own_backlog = true;
        let mut own_cursor = "0".to_string();
        let mut last_sweep = Instant::now();
        // Reclaim runs here, not in a loop of its own: this loop holds every
        // free slot while it blocks on XREADGROUP, so another task would
        // (almost) never find a free slot to reclaim with.
        let reclaim_every = self.reclaim_interval();
        let mut last_reclaim = Instant::now();
        let mut cursor = "0-0".to_string();
        loop {
            // Backpressure: read only as many entries as there are free slots.
            let first = tokio::select! {
                p = ctx.slots.clone().acquire_owned() => p.expect("semaphore open"),
                _ = ctx.shutdown.cancelled() => return,
            };
            let mut permits = vec![first];
            while let Ok(p) = ctx.slots.clone().try_acquire_owned() {
                permits.push(p);
                if permits.len() >= 64 {
                    break;
                }
            }
            if conn.is_none() {
                match ctx.bus.blocking_connection(block).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        ctx.metrics.redis_errors.inc();
                        tracing::warn!(error = %e, "redis unreachable; retrying");
                        drop(permits);
                        self.sleep_or_shutdown(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            if !own_backlog && last_reclaim.elapsed() >= reclaim_every {
                last_reclaim = Instant::now();
                self.reclaim(&mut cursor, &mut permits).await;
                if permits.is_empty() {
                    continue;
                }
            }
            if !own_backlog && last_sweep.elapsed() >= Duration::from_secs(2) {
                last_sweep = Instant::now();
                own_backlog = true;
            }
            let c = conn.as_mut().expect("connected");
            let instance = &ctx.settings.instance_id;
            let read = if own_backlog {
                ctx.bus
                    .read_own_pending(c, instance, permits.len(), &own_cursor)
                    .await
            } else {
                tokio::select! {
                    r = ctx.bus.read_new(c, instance, permits.len(), block) => r,
                    _ = ctx.shutdown.cancelled() => return,
                }
            };
            match read {
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    if own_backlog {
                        match entries.last() {
                            Some(e) => own_cursor = e.id.clone(),
                            None => {
                                own_backlog = false;
                                own_cursor = "0".to_string();
                            }
                        }
                    }
                    for entry in entries {
                        let Some(permit) = permits.pop() else { break };
                        ctx.metrics.entries_read.inc();
                        self.dispatch(entry, permit);
                    }
                }
                Err(e) => {
                    ctx.metrics.redis_errors.inc();
                    let nogroup = matches!(&e, BusError::Redis(r) if r.code() == Some("NOGROUP"));
                    tracing::warn!(error = %e, "reading the spawn stream failed; retrying");
                    if nogroup {
                        let _ = ctx.bus.ensure_group().await;
                    }
                    conn = None;
                    drop(permits);
                    self.sleep_or_shutdown(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Claims entries idle for `reclaim_min_idle` (left pending by dead or
    /// stuck consumers), following the XAUTOCLAIM cursor across calls, and
    /// dispatches them with the slots in `permits`.
    async fn reclaim(
        self: &Arc<Self>,
        cursor: &mut String,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) {
        let ctx = &self.ctx;
        for _ in 0..10 {
            if permits.is_empty() {
                break;
            }
            let claimed = ctx
                .bus
                .autoclaim(
                    &ctx.settings.instance_id,
                    ctx.settings.reclaim_min_idle,
                    cursor,
                    permits.len().min(32),
                )
                .await;
            match claimed {
                Ok((entries, next)) => {
                    for e in entries {
                        let Some(permit) = permits.pop() else {
                            break;
                        };
                        ctx.metrics.reclaims.inc();
                        tracing::info!(entry_id = %e.id, deliveries = e.deliveries, "reclaimed a pending entry");
                        self.dispatch(e, permit);
                    }
                    *cursor = next;
                    if cursor == "0-0" {
                        break;
                    }
                }
                Err(e) => {
                    ctx.metrics.redis_errors.inc();
                    tracing::warn!(error = %e, "XAUTOCLAIM failed");
                    break;
                }
            }
        }
    }

    /// Parses an entry (once) and routes it: session requests queue per
    /// session, others are triaged now, unreadable ones are settled.
    pub(super) fn dispatch(self: &Arc<Self>, entry: Entry, permit: OwnedSemaphorePermit) {
        let received = Received::now(entry.timestamp_ms());
        let parsed = match entry.data.as_deref() {
            None => Err(Disposition::DeadLetter("entry has no data field".into())),
            Some(data) => parse_spawn_request(data, &self.ctx.settings.limits).map_err(|e| {
                if let Some(rid) = &e.request_id {
                    tracing::info!(request_id = %rid, field = %e.field, "request rejected: {}", e.message);
                }
                triage::unparsed(&e)
            }),
        };
        let request = match parsed {
            Ok(r) => r,
            Err(disposition) => {
                let ctx = self.ctx.clone();
                tokio::spawn(async move {
                    ctx.settle(&entry, disposition).await;
                    drop(permit);
                });
                return;
            }
        };
        let parsed = Parsed {
            entry,
            request,
            received,
        };
        match parsed.request.task.session_id.clone() {
            Some(sid) => {
                drop(permit);
                self.sessions.enqueue(sid, parsed);
            }
            None => {
                let s = self.clone();
                tokio::spawn(async move { s.handle(parsed, permit).await });
            }
        }
    }

    /// Triages a one-shot (or pooled) request and acts on the decision.
    async fn handle(self: Arc<Self>, p: Parsed, permit: OwnedSemaphorePermit) {
        let rid = p.request.request_id.clone();
        // Every log line of this request carries its id, preset and container.
        let span = tracing::info_span!(
            "request",
            request_id = %rid,
            preset = p.request.worker_config_id.as_deref().unwrap_or("(inline)"),
            container = %request_container_name(&self.ctx.settings.stream_prefix, &rid),
        );
        async move {
            let ctx = &self.ctx;
            let (inflight, _guard) = ctx.registry.enter(&rid, &p.entry.id);
            // A retry read while its older attempt still ends here (a 0 s
            // backoff, or a host taken for lost that came back): never taken
            // for a redelivery of the running one; the next sweep reads it.
            if p.entry.attempt > 1
                && (matches!(inflight, triage::Inflight::OtherEntry)
                    || ctx
                        .registry
                        .running_attempt(&rid)
                        .is_some_and(|a| a < p.entry.attempt))
            {
                return ctx
                    .settle(
                        &p.entry,
                        Disposition::LeavePending("an older attempt is still ending here"),
                    )
                    .await;
            }
            let facts = Facts::new(
                &rid,
                p.request.task.session_id.as_deref(),
                triage::Route::OneShot,
                p.entry.deliveries,
                ctx.settings.max_deliveries,
                inflight,
                p.request.dry_run,
            );
            let t = ctx.triage(facts, &p.request).await;
            let mut permit = permit;
            match t.decision {
                Decision::Settle(d) => ctx.settle(&p.entry, d).await,
                Decision::FollowContainer => {
                    // The labelled container is the record of the work: its
                    // supervisor (here, a live owner, or an adopter once the
                    // owner is gone) publishes the result.
                    ctx.settle(&p.entry, Disposition::Ack).await;
                    let facts = t.container.expect("a container was seen");
                    if ctx.may_adopt(&facts).await {
                        self.adopt(facts, Some(permit)).await;
                    }
                }
                Decision::DryRun => {
                    let spec = t.spec.expect("resolved");
                    let r = dry_run_result(&p.request, &spec);
                    ctx.settle(&p.entry, Disposition::Answer(r)).await;
                }
                Decision::Pooled => {
                    let mut spec = t.spec.expect("resolved");
                    spec.attempt = p.entry.attempt;
                    if let Some(container) = self.pools.claim(&spec) {
                        match self.pools.run(&p, &spec, container, permit).await {
                            Ok(()) => return,
                            // Nothing ran in the pool container: start cold.
                            Err(back) => permit = back,
                        }
                    }
                    self.launch(&p, spec, permit).await;
                }
                Decision::Cold => {
                    let mut spec = t.spec.expect("resolved");
                    spec.attempt = p.entry.attempt;
                    self.launch(&p, spec, permit).await;
                }
                Decision::SessionTask | Decision::InterruptedTask => {
                    tracing::error!(request_id = %rid, "a one-shot request was triaged as a session task");
                    ctx.settle(&p.entry, Disposition::LeavePending("triaged off its route"))
                        .await;
                }
            }
        }
        .instrument(span)
        .await;
    }

    pub(super) async fn sleep_or_shutdown(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.ctx.shutdown.cancelled() => {}
        }
    }

    /// How often pending entries are reclaimed and orphans looked for.
    pub(super) fn reclaim_interval(&self) -> Duration {
        self.ctx
            .settings
            .reclaim_min_idle
            .min(Duration::from_secs(30))
            .max(Duration::from_millis(500))
    }
}
