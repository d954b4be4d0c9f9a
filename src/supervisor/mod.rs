//! The supervisor: reads spawn requests, turns them into workers, and owns
//! every worker until its result is published. It sits between `bus`
//! (Redis) and `docker` (the engine) and holds the delivery guarantees of
//! PROTOCOL.md section 10:
//!
//! - an entry is acknowledged only once its labelled container exists or
//!   its result is published;
//! - the container name derives from the request id, so a redelivered
//!   request finds its worker instead of starting another;
//! - results go through `Bus::publish_result`, which publishes at most one
//!   result per request id.

pub mod pool;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::adapters::bus::{Bus, BusError, Entry, StreamNames};
use crate::adapters::engine::{ContainerFacts, Engine, EngineError};
use crate::adapters::loader::{self, CatalogDirs};
use crate::adapters::sink::Sink;
use crate::adapters::watcher;
use crate::metrics::Metrics;
use crate::model::catalog::Catalog;
use crate::model::config::ConfigSchema;
use crate::model::container::{create_body, labels, request_container_name, LaunchContext};
use crate::model::protocol::{
    now_rfc3339, parse_control, parse_spawn_request, ControlCommand, ErrorInfo, EventType,
    ResultRecord, SpawnRequest, Status,
};
use crate::model::spec::{Resolver, WorkerSpec};
use crate::settings::Settings;
use crate::worker::{self, Job, OutputLimits, StopReason, WorkerEnv};

/// Quiet time after a burst of catalog file changes before reloading.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Redis is missing or unreachable.
    #[error("cannot reach Redis at {url}: {source}")]
    Redis {
        /// The URL tried (without password).
        url: String,
        /// The cause.
        source: BusError,
    },
    /// Docker is missing or unreachable.
    #[error("cannot reach the Docker engine: {0}")]
    Docker(EngineError),
    /// The HTTP address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A worker this instance supervises.
pub(crate) struct Running {
    pub(crate) stop: CancellationToken,
    pub(crate) reason: Arc<Mutex<Option<StopReason>>>,
}

/// State shared by every task of the daemon.
pub struct Daemon {
    pub(crate) settings: Arc<Settings>,
    pub(crate) bus: Bus,
    pub(crate) env: WorkerEnv,
    pub(crate) catalog: RwLock<Arc<Catalog>>,
    pub(crate) schema: ConfigSchema,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) running: Mutex<HashMap<String, Running>>,
    /// Request ids whose entry is being handled here (parsed, not yet
    /// supervised or answered): a second delivery of the same request in
    /// this process (e.g. this instance's own XAUTOCLAIM of an entry it is
    /// still working on) must not race the first.
    pub(crate) inflight: Mutex<HashMap<String, String>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) networks: Networks,
    pub(crate) images: crate::adapters::images::ImageBuilder,
    pub(crate) sessions: Mutex<HashMap<String, crate::supervisor::session::SessionState>>,
    pub(crate) early_cancels: Mutex<HashMap<String, Instant>>,
    pub(crate) pools: Mutex<HashMap<String, crate::supervisor::pool::PoolState>>,
    /// This instance's gateway holes in the host firewall, when it manages it.
    pub(crate) firewall: Option<Arc<crate::adapters::firewall::GatewayRules>>,
}

fn redis_url_for_logs(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_user, host)) => {
            let scheme = scheme_user.split("://").next().unwrap_or("redis");
            format!("{scheme}://***@{host}")
        }
        None => url.to_string(),
    }
}

impl Daemon {
    /// Connects to Redis and Docker and loads the catalog.
    pub async fn start(settings: Settings) -> Result<Arc<Daemon>, StartError> {
        let settings = Arc::new(settings);
        let engine = Engine::connect().await.map_err(StartError::Docker)?;
        let names = StreamNames::new(&settings.stream_prefix, &settings.group);
        let bus = Bus::connect(&settings.redis_url, names, settings.stream_maxlen)
            .await
            .map_err(|source| StartError::Redis {
                url: redis_url_for_logs(&settings.redis_url),
                source,
            })?;
        bus.ensure_group()
            .await
            .map_err(|source| StartError::Redis {
                url: redis_url_for_logs(&settings.redis_url),
                source,
            })?;
        let ext = settings.worker_network.clone();
        let int = format!("{}-internal", settings.worker_network);
        let ext_net = engine
            .ensure_network(&ext, false)
            .await
            .map_err(StartError::Docker)?;
        let int_net = engine
            .ensure_network(&int, true)
            .await
            .map_err(StartError::Docker)?;
        for (name, net) in [(&ext, &ext_net), (&int, &int_net)] {
            if !net.icc {
                continue;
            }
            // Created by an older daemon (or outside it) with Docker's
            // default: its options cannot change while containers use it.
            let closed = settings.manage_firewall
                && match crate::adapters::firewall::block_intra_bridge(&net.bridge) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(network = %name, error = %e, "cannot turn inter-container communication off by firewall");
                        false
                    }
                };
            if closed {
                tracing::info!(network = %name, "network made without enable_icc=false: workers on it are kept apart by a firewall rule instead");
            } else if !settings.gateway_host.is_empty() {
                // The compose layout: the gateway is a container on these
                // networks, which must reach it.
                tracing::info!(network = %name, "network has inter-container communication on (the gateway is a container on it): workers on it can reach each other");
            } else {
                tracing::warn!(network = %name, "workers on this network can reach each other; remove the network while no container uses it and the daemon makes it again with com.docker.network.bridge.enable_icc=false");
            }
        }
        let (ext_ip, ext_bridge) = (ext_net.gateway, ext_net.bridge);
        let (int_ip, int_bridge) = (int_net.gateway, int_net.bridge);
        let firewall = settings.manage_firewall.then(|| {
            let owner = crate::adapters::firewall::Owner::new(
                &redis_url_for_logs(&settings.redis_url),
                &settings.stream_prefix,
                &settings.instance_id,
            );
            let rules = crate::adapters::firewall::GatewayRules::new(
                owner,
                vec![ext_bridge.clone(), int_bridge.clone()],
                settings.gateway_port,
            );
            match rules.install() {
                Ok(0) => {}
                Ok(legacy) => tracing::warn!(
                    chain = crate::adapters::firewall::CHAIN,
                    legacy,
                    "the firewall chain holds gateway rules of older daemon versions, which never expire; remove them once no older daemon runs on this host (docs/operations.md)"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot isolate the workers' bridges from the host; workers may reach host services"),
            }
            Arc::new(rules)
        });
        let networks = Networks {
            external: (ext.clone(), ext_ip),
            internal: (int.clone(), int_ip),
            bridges: vec![ext_bridge, int_bridge],
        };
        let metrics = Arc::new(Metrics::new());
        let schema = ConfigSchema::new();
        let (catalog, issues) = loader::load(&dirs(&settings), &schema, None);
        for i in &issues {
            tracing::warn!(file = %i.file, field = i.field.as_deref().unwrap_or(""), "catalog file rejected: {}", i.message);
        }
        log_catalog_warnings(&settings, &catalog);
        tracing::info!(presets = catalog.presets.len(), "catalog loaded");
        let env = WorkerEnv {
            engine,
            sink: Sink::Redis(bus.clone(), metrics.clone()),
            metrics: metrics.clone(),
            stop_grace: settings.stop_grace,
            output: OutputLimits {
                tail_bytes: settings.output_tail_bytes,
                lines_per_sec: settings.output_lines_per_sec,
                line_bytes: settings.output_line_bytes,
            },
            instance: settings.instance_id.clone(),
        };
        let images =
            crate::adapters::images::ImageBuilder::new(env.engine.clone(), metrics.clone());
        Ok(Arc::new(Daemon {
            slots: Arc::new(Semaphore::new(settings.max_concurrent)),
            settings,
            bus,
            env,
            catalog: RwLock::new(Arc::new(catalog)),
            schema,
            running: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            metrics,
            networks,
            images,
            sessions: Mutex::new(HashMap::new()),
            early_cancels: Mutex::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
            firewall,
        }))
    }

    /// Metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The handles of the operator endpoints.
    pub fn health(&self) -> crate::http::health::Health {
        crate::http::health::Health {
            bus: self.bus.clone(),
            engine: self.env.engine.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The token that stops intake.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until `shutdown` fires: adoption, intake, control, reclaim,
    /// catalog reload. Running workers are left alone on the way out.
    pub async fn run(self: &Arc<Self>) {
        // Announce this instance before adopting: other instances must see
        // it alive before it takes over containers (and must not adopt the
        // containers it owns from an earlier life).
        if let Err(e) = self
            .bus
            .heartbeat(&self.settings.instance_id, HEARTBEAT_TTL_SECS)
            .await
        {
            self.metrics.redis_errors.inc();
            tracing::warn!(error = %e, "heartbeat failed");
        }
        self.adopt_all().await;
        self.refill_pools().await;
        let mut tasks = tokio::task::JoinSet::new();
        let d = self.clone();
        tasks.spawn(async move { d.intake_loop().await });
        let d = self.clone();
        tasks.spawn(async move { d.control_loop().await });
        let d = self.clone();
        tasks.spawn(async move { d.maintenance_loop().await });
        let d = self.clone();
        tasks.spawn(async move { d.watch_loop().await });
        let d = self.clone();
        tasks.spawn(async move { d.firewall_loop().await });
        self.shutdown.cancelled().await;
        // Give each loop a moment to leave its blocking read.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        if let Some(fw) = self.firewall.clone() {
            let _ = tokio::task::spawn_blocking(move || fw.release()).await;
        }
        tracing::info!("intake stopped; running workers are left to the next start");
    }

    pub(crate) fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// Re-reads the catalog directories; a bad file keeps its last valid version.
    pub async fn reload_catalog(&self) {
        let prev = self.catalog();
        let (catalog, issues) = loader::load(&dirs(&self.settings), &self.schema, Some(&prev));
        let changed = catalog.presets != prev.presets
            || catalog.skills != prev.skills
            || catalog.layouts != prev.layouts
            || catalog.template_names != prev.template_names;
        if changed {
            tracing::info!("catalog reloaded");
            log_catalog_warnings(&self.settings, &catalog);
        }
        *self.catalog.write().expect("catalog lock") = Arc::new(catalog);
        for i in issues {
            tracing::warn!(file = %i.file, field = i.field.as_deref().unwrap_or(""), "catalog file rejected: {}", i.message);
            self.env
                .sink
                .event(
                    "",
                    EventType::CatalogError,
                    json!({"file": i.file, "field": i.field, "message": i.message}),
                )
                .await;
        }
    }

    /// Reloads the catalog whenever the catalog directories change; the
    /// periodic re-scan in `maintenance_loop` is the backup.
    async fn watch_loop(self: Arc<Self>) {
        let mut changes = match watcher::spawn_watcher(&dirs(&self.settings), WATCH_DEBOUNCE) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(error = %e, "catalog changes are picked up by the periodic re-scan only");
                return;
            }
        };
        loop {
            tokio::select! {
                got = changes.recv() => {
                    if got.is_none() {
                        tracing::warn!("catalog watcher stopped; relying on the periodic re-scan");
                        return;
                    }
                    self.reload_catalog().await;
            self.refill_pools().await;
                }
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Rewrites this instance's gateway rules before they expire and
    /// removes stale ones: expired, of a bridge that is gone, or of an
    /// instance of this setup whose heartbeat is gone.
    async fn firewall_loop(self: Arc<Self>) {
        let Some(fw) = self.firewall.clone() else {
            return;
        };
        // Said once per distinct failure (no iptables, no permission, ...).
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FIREWALL_REFRESH) => {}
                _ = self.shutdown.cancelled() => return,
            }
            let f = fw.clone();
            let peers = tokio::task::spawn_blocking(move || f.peers())
                .await
                .unwrap_or_default();
            let mut dead = std::collections::HashSet::new();
            for p in peers {
                // Unknown (Redis trouble) counts as alive.
                if matches!(self.bus.instance_alive(&p).await, Ok(false)) {
                    dead.insert(p);
                }
            }
            let f = fw.clone();
            match tokio::task::spawn_blocking(move || f.refresh(&dead)).await {
                Ok(Ok(())) => last_error = None,
                Ok(Err(e)) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "refreshing the gateway firewall rules failed");
                    }
                    last_error = Some(e);
                }
                Err(_) => {}
            }
        }
    }

    async fn intake_loop(self: Arc<Self>) {
        let block = self.settings.block;
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
                p = self.slots.clone().acquire_owned() => p.expect("semaphore open"),
                _ = self.shutdown.cancelled() => return,
            };
            let mut permits = vec![first];
            while let Ok(p) = self.slots.clone().try_acquire_owned() {
                permits.push(p);
                if permits.len() >= 64 {
                    break;
                }
            }
            if conn.is_none() {
                match self.bus.blocking_connection(block).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        self.metrics.redis_errors.inc();
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
            let read = if own_backlog {
                self.bus
                    .read_own_pending(c, &self.settings.instance_id, permits.len(), &own_cursor)
                    .await
            } else {
                tokio::select! {
                    r = self.bus.read_new(c, &self.settings.instance_id, permits.len(), block) => r,
                    _ = self.shutdown.cancelled() => return,
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
                        self.metrics.entries_read.inc();
                        self.dispatch(entry, permit);
                    }
                }
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    let nogroup = matches!(&e, BusError::Redis(r) if r.code() == Some("NOGROUP"));
                    tracing::warn!(error = %e, "reading the spawn stream failed; retrying");
                    if nogroup {
                        let _ = self.bus.ensure_group().await;
                    }
                    conn = None;
                    drop(permits);
                    self.sleep_or_shutdown(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn sleep_or_shutdown(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Publishes a result that has no container behind it, then acks.
    pub(crate) async fn answer(&self, entry_id: &str, result: ResultRecord) {
        let event = if result.status == Status::Rejected {
            Some(EventType::Rejected)
        } else {
            None
        };
        if let Some(kind) = event {
            let err = result.error.clone();
            self.env
                .sink
                .event(&result.request_id, kind, json!({"error": err}))
                .await;
        }
        if self.env.sink.result(&result, &self.shutdown).await {
            self.ack(entry_id).await;
        }
    }

    pub(crate) async fn ack(&self, entry_id: &str) {
        let mut delay = Duration::from_millis(100);
        for _ in 0..20 {
            match self.bus.ack(entry_id).await {
                Ok(()) => return,
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(entry_id, error = %e, "ack failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        // Left pending: a reclaim finds the finished work by its request id.
    }

    pub(crate) async fn dead_letter(&self, entry: &Entry, reason: &str) {
        // A poison entry may carry a secret (a producer pasted one into a
        // prompt): mask every secret the catalog's presets read.
        let redactor = self.all_secrets();
        let data = entry
            .data
            .as_ref()
            .map(|d| redactor.redact(&String::from_utf8_lossy(&d[..d.len().min(64 * 1024)])));
        let reason = redactor.redact(reason);
        let reason = reason.as_str();
        let json = json!({
            "entry_id": entry.id,
            "reason": reason,
            "deliveries": entry.deliveries,
            "data": data,
            "instance": self.settings.instance_id,
            "ts": now_rfc3339(),
        })
        .to_string();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.bus.dead_letter(&json).await {
                Ok(()) => break,
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(error = %e, "dead-lettering failed; retrying");
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.metrics.dead_letters.inc();
        tracing::warn!(entry_id = %entry.id, reason, "entry dead-lettered");
        self.ack(&entry.id).await;
    }

    pub(crate) async fn handle_entry(self: Arc<Self>, entry: Entry, permit: OwnedSemaphorePermit) {
        let received = Instant::now();
        let received_at = now_rfc3339();
        let queue_ms = entry
            .timestamp_ms()
            .map(|t| (chrono::Utc::now().timestamp_millis() as u64).saturating_sub(t));
        let Some(data) = entry.data.as_deref() else {
            self.dead_letter(&entry, "entry has no data field").await;
            return;
        };
        let req = match parse_spawn_request(data, &self.settings.limits) {
            Ok(r) => r,
            Err(e) => match &e.request_id {
                Some(rid) if e.unreadable => {
                    self.reject_unreadable(&entry, rid, &e).await;
                    return;
                }
                Some(rid) => {
                    tracing::info!(request_id = %rid, field = %e.field, "request rejected: {}", e.message);
                    let info = ErrorInfo {
                        code: e.code.to_string(),
                        field: Some(e.field.clone()),
                        message: e.to_string(),
                    };
                    self.answer(
                        &entry.id,
                        ResultRecord::bare(rid, Status::Rejected, Some(info)),
                    )
                    .await;
                    return;
                }
                None => {
                    self.dead_letter(&entry, &e.to_string()).await;
                    return;
                }
            },
        };
        let rid = req.request_id.clone();
        // Every log line of this request carries its id, preset and container.
        let span = tracing::info_span!(
            "request",
            request_id = %rid,
            preset = req.worker_config_id.as_deref().unwrap_or("(inline)"),
            container = %request_container_name(&self.settings.stream_prefix, &rid),
        );
        async move {

            // One handling per request id at a time in this process.
            let _inflight = match InflightGuard::enter(&self, &rid, &entry.id) {
                Ok(g) => g,
                Err(first) => {
                    tracing::info!(request_id = %rid, entry_id = %entry.id, "request already being handled here; this delivery follows that handling");
                    // Another entry of the same request (re-published): the first
                    // one's handling covers it. The same entry (our own reclaim of
                    // it): that handling acknowledges it.
                    if first != entry.id {
                        self.ack(&entry.id).await;
                    }
                    return;
                }
            };

            // Idempotency: a request that already has a result gets no second one.
            match self.bus.has_result(&rid).await {
                Ok(true) => {
                    tracing::info!(request_id = %rid, "request already answered; acknowledging the duplicate");
                    self.ack(&entry.id).await;
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(request_id = %rid, error = %e, "cannot check for an earlier result; leaving the entry pending");
                    return;
                }
            }
            if self
                .running
                .lock()
                .expect("running lock")
                .contains_key(&rid)
            {
                tracing::info!(request_id = %rid, "request already running here; acknowledging the duplicate");
                self.ack(&entry.id).await;
                return;
            }
            if self.take_early_cancel(&rid) {
                let info = ErrorInfo {
                    code: "cancelled".into(),
                    field: None,
                    message: "cancelled by a control command before it started".into(),
                };
                let mut r = ResultRecord::bare(&rid, Status::Cancelled, Some(info));
                r.session_id = req.task.session_id.clone();
                self.answer(&entry.id, r).await;
                return;
            }
            if self.gave_up_after_deliveries(&entry, &rid).await {
                return;
            }

            let name = request_container_name(&self.settings.stream_prefix, &rid);
            // A redelivered request whose container exists follows that
            // container, found by its labels (whatever scheme named it: an
            // older daemon's container is this request's too). A first
            // delivery skips the look-up (one engine call less per request):
            // the create conflict covers a name in use.
            let existing = if entry.deliveries > 1 {
                self.request_container(&rid).await
            } else {
                Err(EngineError::NotFound(name.clone()))
            };
            match existing {
                Ok(facts) => {
                    if !facts.started && !facts.running && self.may_adopt(&facts).await {
                        // Created but never started (its daemon died in between):
                        // nothing ran, and the entry is at hand: start afresh.
                        tracing::info!(request_id = %rid, container = %facts.name, "removing a container that never started; spawning again");
                        if let Err(e) = self.env.engine.remove(&facts.id).await {
                            self.metrics.docker_errors.inc();
                            tracing::warn!(request_id = %rid, error = %e, "docker unavailable; leaving the entry pending");
                            return;
                        }
                    } else {
                        // The labelled container is the record of the work: its
                        // supervisor (here, a live owner, or an adopter once the
                        // owner is gone) publishes the result.
                        self.ack(&entry.id).await;
                        if self.may_adopt(&facts).await {
                            self.adopt(facts, Some(permit)).await;
                        }
                        return;
                    }
                }
                Err(EngineError::NotFound(_)) => {}
                Err(e) => {
                    self.metrics.docker_errors.inc();
                    tracing::warn!(request_id = %rid, error = %e, "docker unavailable; leaving the entry pending");
                    return;
                }
            }

            let spec = match self.resolve(&req) {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(request_id = %rid, "request refused: {e}");
                    let mut r = ResultRecord::bare(&rid, e.status(), Some(e.info()));
                    r.session_id = req.task.session_id.clone();
                    self.answer(&entry.id, r).await;
                    return;
                }
            };
            if req.dry_run {
                self.answer_dry_run(&entry.id, &req, &spec).await;
                return;
            }
            let mut permit = permit;
            if spec.config.pool.size > 0 && spec.preset_id.is_some() {
                // A pooled preset's request may run in a pool container, which
                // carries no request label: the run mark is what tells a
                // redelivery that it ran, whether a pool container is ready
                // now or not.
                match self.bus.claim_run(&rid, &self.settings.instance_id).await {
                    Ok(crate::adapters::bus::RunClaim::Taken) => {
                        if let Some(container) = self.claim_pooled(&spec) {
                            match self
                                .run_pooled(&entry, &spec, container, permit, received, received_at.clone(), queue_ms)
                                .await
                            {
                                Ok(()) => return,
                                // Nothing ran in the pool container: start cold.
                                Err(p) => permit = p,
                            }
                        }
                    }
                    Ok(crate::adapters::bus::RunClaim::Interrupted) => {
                        // Its run died with its instance: never run it twice.
                        self.answer_interrupted(&entry, &rid).await;
                        return;
                    }
                    Ok(crate::adapters::bus::RunClaim::Mine)
                        if !self.running.lock().expect("running lock").contains_key(&rid) =>
                    {
                        // Marked by this instance id in an earlier life (a
                        // restart under the same id): that run died with it.
                        self.answer_interrupted(&entry, &rid).await;
                        return;
                    }
                    // Running here or on a live instance: that run acknowledges it.
                    Ok(_) => return,
                    Err(e) => {
                        self.metrics.redis_errors.inc();
                        tracing::warn!(request_id = %rid, error = %e, "cannot take the run mark; leaving the entry pending");
                        return;
                    }
                }
            }
            self.spawn_worker(
                entry,
                req,
                spec,
                name,
                permit,
                received,
                received_at,
                queue_ms,
            )
            .await;
        }
        .instrument(span)
        .await;
    }

    /// Answers an entry the parser could not read but whose request id the
    /// bounded scan found: one `rejected` result, then the dead letter
    /// (which acknowledges it). A redelivery after a crash in between finds
    /// the result and adds only the dead letter.
    async fn reject_unreadable(
        &self,
        entry: &Entry,
        rid: &str,
        e: &crate::model::protocol::RequestError,
    ) {
        tracing::info!(request_id = %rid, field = %e.field, "unreadable request rejected: {}", e.message);
        if !self.bus.has_result(rid).await.unwrap_or(false) {
            let info = ErrorInfo {
                code: e.code.to_string(),
                field: Some(e.field.clone()),
                message: e.to_string(),
            };
            self.env
                .sink
                .event(rid, EventType::Rejected, json!({"error": info}))
                .await;
            let result = ResultRecord::bare(rid, Status::Rejected, Some(info));
            if !self.env.sink.result(&result, &self.shutdown).await {
                return;
            }
        }
        self.dead_letter(entry, &e.to_string()).await;
    }

    /// Answers a request whose container name is held by a container that
    /// is not its own: one this daemon does not manage (which it never
    /// touches), or one whose labels name another request.
    async fn answer_name_conflict(&self, entry_id: &str, rid: &str, name: &str, foreign: bool) {
        let message = if foreign {
            format!("a container named {name} exists that this daemon does not manage")
        } else {
            format!("the container named {name} holds another request's work")
        };
        let info = ErrorInfo {
            code: "name_conflict".into(),
            field: Some("request_id".into()),
            message,
        };
        self.answer(entry_id, ResultRecord::bare(rid, Status::Error, Some(info)))
            .await;
    }

    /// The one-shot container of request `rid`, found by its labels.
    async fn request_container(&self, rid: &str) -> Result<ContainerFacts, EngineError> {
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

    /// Dead-letters an entry delivered more than `max_deliveries` times and
    /// answers its request with `error`; returns whether it did.
    pub(crate) async fn gave_up_after_deliveries(&self, entry: &Entry, rid: &str) -> bool {
        if entry.deliveries <= self.settings.max_deliveries {
            return false;
        }
        let reason = format!("failed {} deliveries", entry.deliveries - 1);
        self.dead_letter(entry, &reason).await;
        let info = ErrorInfo {
            code: "too_many_deliveries".into(),
            field: None,
            message: reason,
        };
        self.answer(
            &entry.id,
            ResultRecord::bare(rid, Status::Error, Some(info)),
        )
        .await;
        true
    }

    /// Resolves a request against the current catalog.
    pub(crate) fn resolve(
        &self,
        req: &SpawnRequest,
    ) -> Result<WorkerSpec, crate::model::spec::ResolveError> {
        let catalog = self.catalog();
        let env_lookup = |k: &str| std::env::var(k).ok();
        let resolver = Resolver {
            catalog: &catalog,
            schema: &self.schema,
            policy: &self.settings.policy,
            limits: &self.settings.limits,
            env: &env_lookup,
        };
        resolver.resolve(req)
    }

    /// Answers a dry run with the resolved config and files (secrets masked).
    pub(crate) async fn answer_dry_run(
        &self,
        entry_id: &str,
        req: &SpawnRequest,
        spec: &WorkerSpec,
    ) {
        let mut r = ResultRecord::bare(&req.request_id, Status::Succeeded, None);
        r.session_id = req.task.session_id.clone();
        let mut config = spec.config_view();
        let mut files = serde_json::to_value(spec.file_views()).expect("files serialize");
        let red = spec.redactor();
        red.redact_json(&mut config);
        red.redact_json(&mut files);
        r.config = Some(config);
        r.files = serde_json::from_value(files).ok();
        self.answer(entry_id, r).await;
    }

    /// Routes an entry: session requests queue per session, others run now.
    pub(crate) fn dispatch(self: &Arc<Self>, entry: Entry, permit: OwnedSemaphorePermit) {
        let session = entry
            .data
            .as_deref()
            .and_then(|d| parse_spawn_request(d, &self.settings.limits).ok())
            .and_then(|r| r.task.session_id);
        match session {
            Some(sid) => {
                drop(permit);
                self.enqueue_session(sid, entry);
            }
            None => {
                let d = self.clone();
                tokio::spawn(async move { d.handle_entry(entry, permit).await });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn spawn_worker(
        self: &Arc<Self>,
        entry: Entry,
        req: SpawnRequest,
        spec: WorkerSpec,
        name: String,
        permit: OwnedSemaphorePermit,
        received: Instant,
        received_at: String,
        queue_ms: Option<u64>,
    ) {
        let rid = req.request_id.clone();
        self.env
            .sink
            .event(&rid, EventType::Accepted, json!({"preset": spec.preset_id, "config_hash": spec.config_hash, "instance": self.settings.instance_id}))
            .await;
        // Setup layers are baked once per base image + setup, never per spawn.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let sink = self.env.sink.clone();
        let rid2 = rid.clone();
        let relay = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let mut batch = vec![(EventType::ImageBuilding, json!({"text": line}))];
                while let Ok(more) = rx.try_recv() {
                    batch.push((EventType::ImageBuilding, json!({"text": more})));
                }
                sink.events(&rid2, &batch).await;
            }
        });
        let built = self
            .images
            .worker_image(&spec.config, |line| {
                let _ = tx.send(line);
            })
            .await;
        drop(tx);
        let _ = relay.await;
        let image = match built {
            Ok(image) => image,
            Err(e) => {
                self.metrics.docker_errors.inc();
                if e.is_transient() {
                    tracing::warn!(request_id = %rid, error = %e, "docker unavailable; the entry stays pending");
                    return;
                }
                let info = e.info();
                self.answer(
                    &entry.id,
                    ResultRecord {
                        session_id: spec.session_id.clone(),
                        ..ResultRecord::bare(&rid, Status::Error, Some(info))
                    },
                )
                .await;
                return;
            }
        };
        let deadline = worker::deadline_after(spec.config.limits.timeout_sec);
        let api_key = crate::model::worker_key::new_key();
        let net = self.worker_net(&spec.config, &api_key);
        // A worker without a route to the gateway gets no key to register
        // (and revoke): two Redis round trips less on its way to start.
        let gateway_key = (!net.api_url.is_empty()).then(|| api_key.clone());
        if gateway_key.is_some() {
            let record =
                crate::model::worker_key::KeyRecord::for_spec(&spec, req.task.user_id.clone())
                    .in_container(&name);
            if let Err(e) = self
                .bus
                .register_worker_key(
                    &api_key,
                    &record,
                    Duration::from_secs(spec.config.limits.timeout_sec),
                )
                .await
            {
                self.metrics.redis_errors.inc();
                tracing::warn!(request_id = %rid, error = %e, "registering the worker key failed; the entry stays pending");
                return;
            }
        }
        let mut ctx = launch_context(
            &spec,
            &self.settings,
            &name,
            deadline,
            Some(&entry.id),
            Some(&net),
        );
        ctx.image = image.run;
        let shown_image = image.named;
        let mut created = self
            .env
            .engine
            .create(&name, create_body(&spec, &ctx))
            .await;
        if matches!(created, Err(EngineError::ImageNotFound(_))) {
            // The prepared image went away since it was last checked
            // (removed by hand): prepare it again, once.
            self.images.forget(&ctx.image);
            if let Ok(image) = self.images.image_for(&spec.config, |_| {}).await {
                ctx.image = image;
                created = self
                    .env
                    .engine
                    .create(&name, create_body(&spec, &ctx))
                    .await;
            }
        }
        let mut redactor = spec.redactor();
        redactor.add(&api_key);
        let job = |id: String| Job {
            request_id: rid.clone(),
            session_id: spec.session_id.clone(),
            preset: spec.preset_id.clone(),
            config_hash: spec.config_hash.clone(),
            image: shown_image.clone(),
            container_id: id,
            container_name: name.clone(),
            redactor: redactor.clone(),
            deadline_unix: deadline,
            received_at: Some(received_at.clone()),
            queue_ms,
            received: Some(received),
            stop: CancellationToken::new(),
            stop_reason: Arc::new(Mutex::new(None)),
            api_key: gateway_key.clone(),
            output: Default::default(),
        };
        let id = match created {
            Ok(id) => id,
            Err(EngineError::Conflict(_)) => {
                // Another delivery of this request won the race: its handler
                // (or, if that instance dies, an adopter) owns the container.
                let _ = self.bus.revoke_worker_key(&api_key).await;
                match self.env.engine.inspect(&name).await {
                    Ok(facts) if !self.is_ours(&facts) => {
                        self.answer_name_conflict(&entry.id, &rid, &name, true)
                            .await;
                    }
                    // The name is this request's, the container another's:
                    // never take it as a redelivery of this one.
                    Ok(facts) if !self.holds_request(&facts, &rid) => {
                        tracing::warn!(request_id = %rid, container = %name, holder = ?facts.labels.get(labels::REQUEST_ID), "container name held by another request");
                        self.answer_name_conflict(&entry.id, &rid, &name, false)
                            .await;
                    }
                    Ok(facts) => {
                        self.ack(&entry.id).await;
                        if facts.started && self.may_adopt(&facts).await {
                            self.adopt(facts, Some(permit)).await;
                        }
                    }
                    // Gone again or Docker trouble: the entry stays pending.
                    Err(_) => {}
                }
                return;
            }
            Err(e @ EngineError::ImageNotFound(_)) => {
                self.metrics.docker_errors.inc();
                let info = ErrorInfo {
                    code: "image_not_found".into(),
                    field: Some("image".into()),
                    message: e.to_string(),
                };
                let j = job(String::new());
                self.answer(
                    &entry.id,
                    j.result(Status::Error, Some(info), &self.settings.instance_id),
                )
                .await;
                return;
            }
            Err(e) => {
                self.metrics.docker_errors.inc();
                tracing::warn!(request_id = %rid, error = %e, "creating the container failed; the entry stays pending for a retry");
                return;
            }
        };
        tracing::info!(image = %ctx.image, "worker created");
        let job = job(id.clone());
        let mut files = spec.files.clone();
        files.extend(spec.request_files.iter().cloned());
        let withheld = crate::model::container::withheld_env(&spec, &ctx);
        let start = async {
            if let Some(extra) = &spec.config.network {
                self.env.engine.connect_network(extra, &id).await?;
            }
            worker::start_container(&self.env.engine, &id, &files, &withheld, ctx.delivery).await
        };
        // The labelled container is now the record of the work: the entry
        // is acknowledged, and the event published, while it starts (the
        // `started` event follows both).
        let (_, _, started) = tokio::join!(
            self.ack(&entry.id),
            self.env.sink.event(
                &rid,
                EventType::ContainerCreated,
                json!({"container": name, "image": shown_image}),
            ),
            start
        );
        let mut job = job;
        let started = started.map(|output| *job.output.get_mut().expect("output lock") = output);
        if let Err(e) = started {
            self.metrics.docker_errors.inc();
            let info = ErrorInfo {
                code: "start_failed".into(),
                field: None,
                message: job.redactor.redact(&e.to_string()),
            };
            let r = job.result(Status::Error, Some(info), &self.settings.instance_id);
            worker::finish(&self.env, &job, &r).await;
            return;
        }
        self.supervise(job, true, permit).await;
    }

    /// Supervises a started worker container to its result and removal.
    pub(crate) async fn supervise(
        self: &Arc<Self>,
        job: Job,
        fresh: bool,
        permit: OwnedSemaphorePermit,
    ) {
        let rid = job.request_id.clone();
        self.track_running(&rid, &job.stop, &job.stop_reason);
        let span = tracing::info_span!(
            "worker",
            request_id = %rid,
            preset = job.preset.as_deref().unwrap_or("(inline)"),
            container = %job.container_name,
        );
        let _ = worker::supervise(&self.env, job, fresh)
            .instrument(span)
            .await;
        self.running.lock().expect("running lock").remove(&rid);
        drop(permit);
    }

    /// Takes over a managed container found on the engine: follows it if it
    /// runs, answers for it if it ended, stops it if past its deadline.
    async fn adopt(self: &Arc<Self>, facts: ContainerFacts, permit: Option<OwnedSemaphorePermit>) {
        let l = &facts.labels;
        if l.get(labels::MANAGED).map(String::as_str) != Some("true")
            || l.get(labels::PREFIX) != Some(&self.settings.stream_prefix)
        {
            return;
        }
        match l.get(labels::KIND).map(String::as_str) {
            Some("pool") => {
                // An idle pool container of an earlier run: cheaper to make anew.
                // (One that was serving a request is answered through its run mark.)
                let _ = self.env.engine.remove(&facts.id).await;
                return;
            }
            Some("session") => {
                // A session container runs an idle keeper, not a task: it goes
                // back to its session (TTL reaper, cancel, next request), never
                // to the one-shot supervisor.
                self.adopt_session(facts).await;
                return;
            }
            _ => {}
        }
        let Some(rid) = l.get(labels::REQUEST_ID).cloned() else {
            return;
        };
        let facts = match self.env.engine.inspect(&facts.id).await {
            Ok(f) => f,
            Err(_) => return,
        };
        let deadline = l
            .get(labels::DEADLINE)
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        let job = Job {
            request_id: rid.clone(),
            session_id: l.get(labels::SESSION_ID).cloned(),
            preset: l.get(labels::PRESET).cloned().filter(|p| !p.is_empty()),
            config_hash: l.get(labels::CONFIG_HASH).cloned().unwrap_or_default(),
            image: facts.image.clone(),
            container_id: facts.id.clone(),
            container_name: facts.name.clone(),
            redactor: {
                let mut r = self.redactor_for(l.get(labels::PRESET).map(String::as_str));
                if let Some(k) = &facts.api_key {
                    r.add(k);
                }
                r
            },
            deadline_unix: deadline,
            received_at: None,
            queue_ms: None,
            received: None,
            stop: CancellationToken::new(),
            stop_reason: Arc::new(Mutex::new(None)),
            api_key: facts.api_key.clone(),
            output: Default::default(),
        };
        {
            // Check and mark in one step: two paths (start-up or orphan
            // adoption, a redelivered entry) may find the same container.
            let mut running = self.running.lock().expect("running lock");
            if running.contains_key(&rid) {
                return;
            }
            running.insert(
                rid.clone(),
                Running {
                    stop: job.stop.clone(),
                    reason: job.stop_reason.clone(),
                },
            );
        }
        self.metrics.adopted.inc();
        tracing::info!(request_id = %rid, container = %facts.name, running = facts.running, "adopting container");
        let permit = match permit {
            Some(p) => p,
            None => match self.slots.clone().try_acquire_owned() {
                Ok(p) => p,
                // Adopted work runs even past the limit: it exists already.
                Err(_) => Arc::new(Semaphore::new(1))
                    .try_acquire_owned()
                    .expect("fresh semaphore"),
            },
        };
        let d = self.clone();
        tokio::spawn(async move { d.adopt_claimed(facts, job, permit).await });
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
        let mut facts = facts;
        let rid = job.request_id.clone();
        let l = facts.labels.clone();
        let stdin_oneshot = l.get(labels::KIND).map(String::as_str) == Some("oneshot")
            && l.get(labels::DELIVERY).map(String::as_str) == Some("stdin");
        if facts.running && stdin_oneshot {
            // A shim left waiting for its files by a daemon that died exits
            // within milliseconds of that death; give it the time to say so.
            let waited =
                tokio::time::timeout(Duration::from_secs(2), self.env.engine.wait(&facts.id)).await;
            if waited.is_ok() {
                if let Ok(f) = self.env.engine.inspect(&facts.id).await {
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
                Some(id) => self.bus.entry_by_id(id).await.ok().flatten(),
                None => None,
            };
            if let Some(mut entry) = entry {
                self.running.lock().expect("running lock").remove(&rid);
                // The container gives way here, so the entry's next handling
                // creates afresh (a first delivery goes straight to create).
                if self.env.engine.remove(&facts.id).await.is_err() {
                    // Docker trouble: a later adoption pass tries again.
                    return;
                }
                entry.deliveries = self.bus.deliveries(&entry.id).await.unwrap_or(1);
                tracing::info!(request_id = %rid, entry_id = %entry.id, "nothing ran in the container; handling its entry again");
                self.dispatch(entry, permit);
                return;
            }
            let info = ErrorInfo {
                code: "interrupted".into(),
                field: None,
                message: "the daemon stopped before the worker started; publish the request again"
                    .into(),
            };
            let r = job.result(Status::Error, Some(info), &self.settings.instance_id);
            worker::finish(&self.env, &job, &r).await;
            self.running.lock().expect("running lock").remove(&rid);
            return;
        }
        // Running, or ended while nobody watched (supervise finds it exited
        // at once).
        self.supervise(job, false, permit).await;
    }

    /// The network and gateway URL of a new worker.
    pub(crate) fn worker_net(
        &self,
        config: &crate::model::config::WorkerConfig,
        api_key: &str,
    ) -> WorkerNet {
        // A worker with no tools, no internet and no extra network needs no
        // gateway: it gets no network at all (and skips a bridge attachment,
        // the costliest part of a container start).
        if config.allowed_tools.is_empty() && !config.has_internet && config.network.is_none() {
            return WorkerNet {
                network: "none".to_string(),
                api_url: String::new(),
                api_key: String::new(),
            };
        }
        let (network, ip) = if config.has_internet {
            &self.networks.external
        } else {
            &self.networks.internal
        };
        let host = if self.settings.gateway_host.is_empty() {
            ip.clone()
        } else {
            self.settings.gateway_host.clone()
        };
        WorkerNet {
            network: network.clone(),
            api_url: format!("http://{host}:{}", self.settings.gateway_port),
            api_key: api_key.to_string(),
        }
    }

    /// Addresses the gateway listens on.
    pub fn gateway_addrs(&self) -> Vec<String> {
        if !self.settings.gateway_bind.is_empty() {
            return vec![self.settings.gateway_bind.clone()];
        }
        let mut ips = vec![
            self.networks.external.1.clone(),
            self.networks.internal.1.clone(),
        ];
        ips.retain(|ip| !ip.is_empty());
        ips.dedup();
        ips.into_iter()
            .map(|ip| format!("{ip}:{}", self.settings.gateway_port))
            .collect()
    }

    /// The gateway's shared state.
    pub fn gateway(self: &Arc<Self>) -> Arc<crate::http::gateway::Gateway> {
        let d = self.clone();
        let s = &self.settings;
        Arc::new(crate::http::gateway::Gateway::new(
            self.bus.clone(),
            self.env.sink.clone(),
            Some(s.upstream_url.clone()).filter(|u| !u.is_empty()),
            Box::new(move |preset| d.redactor_for(preset)),
            self.env.engine.clone(),
            crate::http::gateway::GatewayLimits {
                header_timeout: s.gateway_header_timeout,
                body_timeout: s.gateway_body_timeout,
                max_inflight_per_key: s.gateway_max_inflight_per_key,
                max_connections_per_caller: s.gateway_max_connections_per_caller,
                respond_per_minute: s.respond_per_minute,
                respond_bytes_per_minute: s.respond_bytes_per_minute,
            },
        ))
    }

    /// A redactor with the secrets of every preset (for entries that
    /// belong to no known worker: dead letters).
    pub(crate) fn all_secrets(&self) -> crate::model::redact::Redactor {
        let mut r = crate::model::redact::Redactor::default();
        for id in self.catalog().presets.keys() {
            r.extend(&self.redactor_for(Some(id)));
        }
        r
    }

    /// A redactor with the secrets a preset's env would carry.
    fn redactor_for(&self, preset: Option<&str>) -> crate::model::redact::Redactor {
        let mut r = crate::model::redact::Redactor::default();
        if let Some(p) = preset.and_then(|id| self.catalog().presets.get(id).cloned()) {
            for v in p.config.env.values() {
                if let crate::model::config::EnvValue::FromEnv { from_env } = v {
                    if let Ok(val) = std::env::var(from_env) {
                        r.add(&val);
                    }
                }
            }
        }
        r
    }

    async fn adopt_all(self: &Arc<Self>) {
        match self
            .env
            .engine
            .list_managed(&self.settings.stream_prefix)
            .await
        {
            Ok(list) => {
                for c in list {
                    if self.may_adopt(&c).await {
                        self.adopt(c, None).await;
                    }
                }
            }
            Err(e) => {
                self.metrics.docker_errors.inc();
                tracing::warn!(error = %e, "listing managed containers failed");
            }
        }
    }

    async fn instance_alive(&self, instance: &str) -> bool {
        self.bus.instance_alive(instance).await.unwrap_or(true)
    }

    async fn control_loop(self: Arc<Self>) {
        let mut last = match self.bus.control_tail().await {
            Ok(id) => id,
            Err(_) => "$".to_string(),
        };
        let mut conn = None;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            if conn.is_none() {
                match self.bus.blocking_connection(self.settings.block).await {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        self.sleep_or_shutdown(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected");
            let read = tokio::select! {
                r = self.bus.read_control(c, &last, self.settings.block) => r,
                _ = self.shutdown.cancelled() => return,
            };
            match read {
                Ok(entries) => {
                    for e in entries {
                        last = e.id.clone();
                        self.handle_control(&e).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the control stream failed; retrying");
                    conn = None;
                    self.sleep_or_shutdown(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn handle_control(&self, entry: &Entry) {
        let data = entry.data.as_deref().unwrap_or_default();
        match parse_control(data) {
            Ok(ControlCommand::CancelRequest { request_id }) => {
                let found = self.stop_worker(|rid| rid == request_id);
                if found {
                    tracing::info!(request_id = %request_id, "cancelling on request");
                } else {
                    // Not running here (yet): remember it for a while, in case
                    // its worker is being created or its entry not read yet.
                    let mut early = self.early_cancels.lock().expect("cancels lock");
                    early.retain(|_, at| at.elapsed() < Duration::from_secs(600));
                    early.insert(request_id, Instant::now());
                }
            }
            Ok(ControlCommand::CancelSession { session_id }) => {
                let known = self
                    .sessions
                    .lock()
                    .expect("sessions lock")
                    .get(&session_id)
                    .is_some_and(|s| s.container.is_some());
                if known {
                    tracing::info!(session_id = %session_id, "ending session on request");
                    self.end_session(&session_id, "cancelled").await;
                }
            }
            Err(reason) => {
                // Every instance sees every control entry; only one reports it.
                if self
                    .bus
                    .claim_once(&format!("control-dead:{}", entry.id))
                    .await
                    .unwrap_or(false)
                {
                    let json = json!({
                        "entry_id": entry.id,
                        "stream": self.bus.names.control,
                        "reason": reason,
                        "data": self.all_secrets().redact(&String::from_utf8_lossy(data)),
                        "ts": now_rfc3339(),
                    });
                    let _ = self.bus.dead_letter(&json.to_string()).await;
                    self.metrics.dead_letters.inc();
                }
            }
        }
    }

    /// Registers a running worker; a cancel that arrived before it started
    /// (while it was being created) takes effect now.
    pub(crate) fn track_running(
        &self,
        rid: &str,
        stop: &CancellationToken,
        reason: &Arc<Mutex<Option<StopReason>>>,
    ) {
        self.running.lock().expect("running lock").insert(
            rid.to_string(),
            Running {
                stop: stop.clone(),
                reason: reason.clone(),
            },
        );
        if self
            .early_cancels
            .lock()
            .expect("cancels lock")
            .remove(rid)
            .is_some()
        {
            *reason.lock().expect("lock") = Some(StopReason::Cancelled);
            stop.cancel();
        }
    }

    /// Whether a cancel for `rid` arrived before its worker existed.
    pub(crate) fn take_early_cancel(&self, rid: &str) -> bool {
        self.early_cancels
            .lock()
            .expect("cancels lock")
            .remove(rid)
            .is_some()
    }

    fn stop_worker(&self, matches: impl Fn(&str) -> bool) -> bool {
        let running = self.running.lock().expect("running lock");
        let mut found = false;
        for (rid, r) in running.iter() {
            if matches(rid) {
                *r.reason.lock().expect("lock") = Some(StopReason::Cancelled);
                r.stop.cancel();
                found = true;
            }
        }
        found
    }

    async fn maintenance_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut last_rescan = Instant::now();
        let mut last_adopt = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let running: Vec<String> = self
                .running
                .lock()
                .expect("running lock")
                .keys()
                .cloned()
                .collect();
            let _ = self.bus.refresh_runs(&running).await;
            let owned: Vec<String> = self
                .sessions
                .lock()
                .expect("sessions lock")
                .iter()
                .filter(|(_, st)| st.container.is_some())
                .map(|(sid, _)| sid.clone())
                .collect();
            for sid in owned {
                let _ = self
                    .bus
                    .claim_session(&sid, &self.settings.instance_id)
                    .await;
            }
            if let Err(e) = self
                .bus
                .heartbeat(&self.settings.instance_id, HEARTBEAT_TTL_SECS)
                .await
            {
                self.metrics.redis_errors.inc();
                tracing::warn!(error = %e, "heartbeat failed");
            }
            if let Ok((len, pending)) = self.bus.queue_depth().await {
                self.metrics.queue_length.set(len as i64);
                self.metrics.queue_pending.set(pending as i64);
            }
            if last_rescan.elapsed() >= self.settings.rescan_interval {
                last_rescan = Instant::now();
                self.reload_catalog().await;
            }
            self.refill_pools().await;
            if last_adopt.elapsed() >= self.reclaim_interval() {
                last_adopt = Instant::now();
                self.adopt_orphans().await;
            }
        }
    }

    /// How often pending entries are reclaimed and orphans looked for.
    fn reclaim_interval(&self) -> Duration {
        self.settings
            .reclaim_min_idle
            .min(Duration::from_secs(30))
            .max(Duration::from_millis(500))
    }

    /// Claims entries idle for `reclaim_min_idle` (left pending by dead or
    /// stuck consumers), following the XAUTOCLAIM cursor across calls, and
    /// dispatches them with the slots in `permits`.
    async fn reclaim(
        self: &Arc<Self>,
        cursor: &mut String,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) {
        for _ in 0..10 {
            if permits.is_empty() {
                break;
            }
            match self
                .bus
                .autoclaim(
                    &self.settings.instance_id,
                    self.settings.reclaim_min_idle,
                    cursor,
                    permits.len().min(32),
                )
                .await
            {
                Ok((entries, next)) => {
                    for e in entries {
                        let Some(permit) = permits.pop() else {
                            break;
                        };
                        self.metrics.reclaims.inc();
                        tracing::info!(entry_id = %e.id, deliveries = e.deliveries, "reclaimed a pending entry");
                        self.dispatch(e, permit);
                    }
                    *cursor = next;
                    if cursor == "0-0" {
                        break;
                    }
                }
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(error = %e, "XAUTOCLAIM failed");
                    break;
                }
            }
        }
    }

    /// Adopts containers whose owning instance is gone.
    async fn adopt_orphans(self: &Arc<Self>) {
        let Ok(list) = self
            .env
            .engine
            .list_managed(&self.settings.stream_prefix)
            .await
        else {
            return;
        };
        for c in list {
            let owner = c.labels.get(labels::INSTANCE).cloned().unwrap_or_default();
            if owner == self.settings.instance_id {
                continue;
            }
            let Some(rid) = c.labels.get(labels::REQUEST_ID) else {
                continue;
            };
            if self.running.lock().expect("running lock").contains_key(rid) {
                continue;
            }
            if self.may_adopt(&c).await {
                self.adopt(c, None).await;
            }
        }
    }

    /// Whether `c` carries this setup's managed-by labels.
    pub(crate) fn is_ours(&self, c: &ContainerFacts) -> bool {
        c.labels.get(labels::MANAGED).map(String::as_str) == Some("true")
            && c.labels.get(labels::PREFIX) == Some(&self.settings.stream_prefix)
    }

    /// Whether `c` is request `rid`'s one-shot container by its labels (a
    /// container found by name may hold another request's work).
    fn holds_request(&self, c: &ContainerFacts, rid: &str) -> bool {
        self.is_ours(c)
            && c.labels.get(labels::REQUEST_ID).map(String::as_str) == Some(rid)
            && !matches!(
                c.labels.get(labels::KIND).map(String::as_str),
                Some("session" | "pool")
            )
    }

    /// Whether `c` is session `sid`'s container by its labels.
    pub(crate) fn holds_session(&self, c: &ContainerFacts, sid: &str) -> bool {
        self.is_ours(c)
            && c.labels.get(labels::SESSION_ID).map(String::as_str) == Some(sid)
            && c.labels.get(labels::KIND).map(String::as_str) == Some("session")
    }

    /// Whether this instance may supervise `c`: it is managed by this setup,
    /// its owner is this instance or a dead one, and no other live instance
    /// adopted it already (the adoption claim is taken here).
    async fn may_adopt(&self, c: &ContainerFacts) -> bool {
        if !self.is_ours(c) {
            return false;
        }
        let owner = c.labels.get(labels::INSTANCE).cloned().unwrap_or_default();
        if owner != self.settings.instance_id && self.instance_alive(&owner).await {
            return false;
        }
        self.bus
            .claim_adoption(&c.name, &self.settings.instance_id)
            .await
            .unwrap_or(false)
    }
}

/// How long an instance's heartbeat key lives (refreshed every 5 s).
const HEARTBEAT_TTL_SECS: u64 = 30;

/// How often the gateway firewall rules are looked after.
const FIREWALL_REFRESH: Duration = Duration::from_secs(10);

/// Marks a request id as being handled by this process until dropped.
struct InflightGuard<'a> {
    daemon: &'a Daemon,
    request_id: String,
}

impl<'a> InflightGuard<'a> {
    /// Enters `request_id`, or returns the entry id already handling it.
    fn enter(
        daemon: &'a Daemon,
        request_id: &str,
        entry_id: &str,
    ) -> Result<InflightGuard<'a>, String> {
        let mut m = daemon.inflight.lock().expect("inflight lock");
        if let Some(first) = m.get(request_id) {
            return Err(first.clone());
        }
        m.insert(request_id.to_string(), entry_id.to_string());
        Ok(InflightGuard {
            daemon,
            request_id: request_id.to_string(),
        })
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.daemon
            .inflight
            .lock()
            .expect("inflight lock")
            .remove(&self.request_id);
    }
}

/// Names, labels and network of a one-shot worker's container.
pub fn launch_context(
    spec: &WorkerSpec,
    settings: &Settings,
    name: &str,
    deadline: u64,
    entry_id: Option<&str>,
    net: Option<&WorkerNet>,
) -> LaunchContext {
    let mut l = HashMap::new();
    l.insert(labels::MANAGED.to_string(), "true".to_string());
    l.insert(labels::PREFIX.to_string(), settings.stream_prefix.clone());
    l.insert(labels::REQUEST_ID.to_string(), spec.request_id.clone());
    l.insert(
        labels::PRESET.to_string(),
        spec.preset_id.clone().unwrap_or_default(),
    );
    l.insert(labels::CONFIG_HASH.to_string(), spec.config_hash.clone());
    l.insert(labels::INSTANCE.to_string(), settings.instance_id.clone());
    l.insert(labels::DEADLINE.to_string(), deadline.to_string());
    l.insert(
        labels::RECEIVED_MS.to_string(),
        chrono::Utc::now().timestamp_millis().to_string(),
    );
    l.insert(labels::KIND.to_string(), "oneshot".to_string());
    if let Some(e) = entry_id {
        l.insert(labels::ENTRY_ID.to_string(), e.to_string());
    }
    if let Some(s) = &spec.session_id {
        l.insert(labels::SESSION_ID.to_string(), s.clone());
    }
    let (network_mode, extra_env) = match net {
        Some(n) if n.api_url.is_empty() => (n.network.clone(), Vec::new()),
        Some(n) => (
            n.network.clone(),
            vec![
                ("ORCHESTRATOR_API_URL".to_string(), n.api_url.clone()),
                ("ORCHESTRATOR_API_KEY".to_string(), n.api_key.clone()),
            ],
        ),
        None => {
            let mode = if spec.config.has_internet {
                "bridge"
            } else {
                "none"
            };
            (mode.to_string(), Vec::new())
        }
    };
    LaunchContext {
        name: name.to_string(),
        image: spec.config.image.clone(),
        labels: l,
        extra_env,
        network_mode,
        cmd: None,
        delivery: crate::worker::oneshot_delivery(spec),
    }
}

/// The network a worker joins and how it reaches the gateway.
#[derive(Debug, Clone)]
pub struct WorkerNet {
    /// Docker network name.
    pub network: String,
    /// `ORCHESTRATOR_API_URL`.
    pub api_url: String,
    /// `ORCHESTRATOR_API_KEY` (a secret).
    pub api_key: String,
}

/// The workers' networks and the gateway address on each.
#[derive(Debug, Clone, Default)]
pub struct Networks {
    /// (name, gateway ip) of the network with a route out.
    pub external: (String, String),
    /// (name, gateway ip) of the internal network (no route out).
    pub internal: (String, String),
    /// Bridge interfaces of both.
    pub bridges: Vec<String>,
}

/// Logs what `presets validate` would warn about; warnings do not stop a
/// preset from loading, so they are logged (when the catalog changes), not
/// published as `catalog_error` events.
fn log_catalog_warnings(settings: &Settings, catalog: &Catalog) {
    let ctx = crate::model::diagnose::Context {
        max_concurrent: Some(settings.max_concurrent),
    };
    let warnings = crate::model::diagnose::catalog_warnings(catalog, &ctx);
    for w in dirs(settings).with_paths(warnings) {
        tracing::warn!(file = %w.file, field = w.field.as_deref().unwrap_or(""), "catalog warning: {}", w.message);
    }
}

fn dirs(settings: &Settings) -> CatalogDirs {
    CatalogDirs {
        presets: settings.presets_dir.clone(),
        skills: settings.skills_dir.clone(),
        templates: settings.templates_dir.clone(),
    }
}
