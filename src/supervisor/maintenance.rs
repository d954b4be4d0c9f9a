//! Maintenance: the periodic work of an instance (run marks and session
//! ownership kept fresh, the fleet pass, queue gauges, catalog re-scan,
//! pool refill, orphan adoption), the heartbeat in a loop of its own, the
//! catalog watcher, and the firewall rules kept alive.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::ctx::{catalog_dirs, Ctx};
use super::Supervisor;
use crate::adapters::{loader, watcher};
use crate::model::catalog::Catalog;
use crate::model::protocol::EventType;
use crate::settings::Settings;

/// Quiet time after a burst of catalog file changes before reloading.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(200);

/// How long an instance's heartbeat key lives (refreshed every 5 s).
pub(super) const HEARTBEAT_TTL_SECS: u64 = 30;

/// How often kept session volumes are looked at (more often when
/// `session_keep` is shorter).
const VOLUME_SWEEP: Duration = Duration::from_secs(30);

/// How often the gateway firewall rules are looked after.
const FIREWALL_REFRESH: Duration = Duration::from_secs(10);
/// How often the artifact store is swept (at most; sooner when the
/// retention is shorter).
const ARTIFACT_SWEEP: Duration = Duration::from_secs(600);
/// Egress folders younger than this are never swept: a folder is made just
/// before its container is created.
const EGRESS_FOLDER_MIN_AGE: Duration = Duration::from_secs(600);

impl Supervisor {
    pub(super) async fn maintenance_loop(self: Arc<Self>) {
        let ctx = &self.ctx;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut last_rescan = Instant::now();
        let mut last_adopt = Instant::now();
        let mut last_volumes = Instant::now();
        // The first sweep of the artifact store comes with the first tick.
        let mut last_artifacts: Option<Instant> = None;
        let mut artifact_sweep: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ctx.shutdown.cancelled() => return,
            }
            let _ = ctx.bus.refresh_runs(&ctx.registry.running_ids()).await;
            for sid in self.sessions.owned() {
                let _ = ctx.bus.claim_session(&sid, &ctx.settings.instance_id).await;
            }
            self.fleet_pass().await;
            if let Ok((len, pending)) = ctx.bus.queue_depth().await {
                ctx.metrics.queue_length.set(len as i64);
                ctx.metrics.queue_pending.set(pending as i64);
            }
            if last_rescan.elapsed() >= ctx.settings.rescan_interval {
                last_rescan = Instant::now();
                ctx.reload_catalog().await;
            }
            self.pools.refill().await;
            if last_volumes.elapsed() >= ctx.settings.session_keep.min(VOLUME_SWEEP) {
                last_volumes = Instant::now();
                self.sessions.expire_volumes().await;
            }
            let sweep_due = last_artifacts
                .is_none_or(|t| t.elapsed() >= ctx.settings.artifact_retention.min(ARTIFACT_SWEEP));
            if sweep_due && artifact_sweep.as_ref().is_none_or(|h| h.is_finished()) {
                last_artifacts = Some(Instant::now());
                // Listing a bucket may take a while: not on this loop.
                let store = ctx.env.workspaces.artifacts.clone();
                let retention = ctx.settings.artifact_retention;
                artifact_sweep = Some(tokio::spawn(async move {
                    match store.sweep(retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(objects = n, "old artifacts deleted"),
                        Err(e) => tracing::warn!(error = %e, "sweeping the artifact store failed"),
                    }
                }));
            }
            if last_adopt.elapsed() >= self.reclaim_interval() {
                last_adopt = Instant::now();
                self.adopt_orphans().await;
                self.answer_for_vanished().await;
                // Sockets whose containers are gone (removed by hand, or
                // by a path that did not close them) stop being served.
                if let Ok(live) = ctx.env.engine.egress_container_names().await {
                    ctx.env.egress.sweep(&live, EGRESS_FOLDER_MIN_AGE);
                }
            }
        }
    }

    /// Says this instance is alive every 5 s, whatever else it is doing.
    pub(super) async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.ctx.shutdown.cancelled() => return,
            }
            self.heartbeat().await;
        }
    }

    /// Says this instance is alive (its heartbeat key).
    pub(super) async fn heartbeat(&self) {
        let ctx = &self.ctx;
        if let Err(e) = ctx
            .bus
            .heartbeat(&ctx.settings.instance_id, HEARTBEAT_TTL_SECS)
            .await
        {
            ctx.metrics.redis_errors.inc();
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }

    /// Reloads the catalog whenever the catalog directories change; the
    /// periodic re-scan in `maintenance_loop` is the backup.
    pub(super) async fn watch_loop(self: Arc<Self>) {
        let ctx = &self.ctx;
        let mut changes = match watcher::spawn_watcher(&ctx.dirs(), WATCH_DEBOUNCE) {
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
                    ctx.reload_catalog().await;
                    self.pools.refill().await;
                }
                _ = ctx.shutdown.cancelled() => return,
            }
        }
    }

    /// Rewrites this instance's gateway rules before they expire and
    /// removes stale ones: expired, of a bridge that is gone, or of an
    /// instance of this setup whose heartbeat is gone.
    pub(super) async fn firewall_loop(self: Arc<Self>) {
        let ctx = &self.ctx;
        let Some(fw) = ctx.firewall.clone() else {
            return;
        };
        // Said once per distinct failure (no iptables, no permission, ...).
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FIREWALL_REFRESH) => {}
                _ = ctx.shutdown.cancelled() => return,
            }
            let f = fw.clone();
            let peers = tokio::task::spawn_blocking(move || f.peers())
                .await
                .unwrap_or_default();
            let mut dead = HashSet::new();
            for p in peers {
                // Unknown (Redis trouble) counts as alive.
                if matches!(ctx.bus.instance_alive(&p).await, Ok(false)) {
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
}

impl Ctx {
    /// Re-reads the catalog directories; a bad file keeps its last valid version.
    pub async fn reload_catalog(&self) {
        let prev = self.catalog();
        let (catalog, issues) = loader::load(&self.dirs(), &self.schema, Some(&prev));
        let changed = catalog.presets != prev.presets
            || catalog.skills != prev.skills
            || catalog.tools != prev.tools
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
}

/// Logs what `presets validate` would warn about; warnings do not stop a
/// preset from loading, so they are logged (when the catalog changes), not
/// published as `catalog_error` events.
pub(super) fn log_catalog_warnings(settings: &Settings, catalog: &Catalog) {
    let ctx = crate::model::diagnose::Context {
        max_concurrent: Some(settings.max_concurrent),
    };
    let warnings = crate::model::diagnose::catalog_warnings(catalog, &ctx);
    for w in catalog_dirs(settings).with_paths(warnings) {
        tracing::warn!(file = %w.file, field = w.field.as_deref().unwrap_or(""), "catalog warning: {}", w.message);
    }
}
