//! Warm pools: a preset with `pool.size: N` keeps N containers created,
//! started (idle keeper under init, the preset's limits) and holding the
//! request-independent files. A request for that preset, with no override
//! that changes its config, claims one, receives its prompt, key and request
//! id, and runs the agent as an exec in it; the container then goes away
//! (one request per container, so isolation is unchanged) and the pool
//! refills in the background.
//!
//! Pooled containers count against `--max-concurrent`; idle ones of a
//! previous run are removed at start-up, and a pool shrinks when its preset
//! changes or goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::bus::Entry;
use crate::daemon::Daemon;
use crate::docker::{container_name, create_body, labels, LaunchContext};
use crate::protocol::{EventType, SpawnRequest, Task};
use crate::session::{SessionContainer, KEEPER};
use crate::spec::WorkerSpec;
use crate::worker::{self, unix_now};

/// Containers of one preset's pool.
#[derive(Default)]
pub(crate) struct PoolState {
    /// Ready containers.
    pub ready: Vec<SessionContainer>,
    /// Creations under way.
    pub creating: usize,
}

impl Daemon {
    /// The spec a pool of `preset` is built from (no request behind it).
    fn pool_spec(&self, preset: &str) -> Option<WorkerSpec> {
        let req = SpawnRequest {
            request_id: format!("pool-{preset}"),
            worker_config_id: Some(preset.to_string()),
            worker_config_override: None,
            task: Task {
                user_id: None,
                prompt: "(pool)".into(),
                session_id: None,
            },
            dry_run: false,
        };
        self.resolve(&req).ok()
    }

    /// Takes a ready container for `spec`, if its preset has a pool whose
    /// containers match the request's config exactly.
    pub(crate) fn claim_pooled(self: &Arc<Self>, spec: &WorkerSpec) -> Option<SessionContainer> {
        let preset = spec.preset_id.clone()?;
        if spec.config.pool.size == 0 {
            return None;
        }
        let claimed = {
            let mut pools = self.pools.lock().expect("pools lock");
            let pool = pools.get_mut(&preset)?;
            let i = pool
                .ready
                .iter()
                .position(|c| c.config_hash == spec.config_hash)?;
            Some(pool.ready.swap_remove(i))
        };
        let d = self.clone();
        tokio::spawn(async move { d.refill_pools().await });
        claimed
    }

    /// Runs a request in a claimed pool container, then discards it.
    pub(crate) async fn run_pooled(
        self: &Arc<Self>,
        entry: Entry,
        spec: WorkerSpec,
        container: SessionContainer,
        received: Instant,
        received_at: String,
        queue_ms: Option<u64>,
    ) {
        self.run_task(
            None,
            &entry,
            &spec,
            &container,
            received,
            received_at,
            queue_ms,
        )
        .await;
        if let Err(e) = self.env.engine.remove(&container.id).await {
            tracing::warn!(container = %container.name, error = %e, "removing a used pool container failed");
        } else {
            self.env
                .sink
                .event(
                    &spec.request_id,
                    EventType::Removed,
                    json!({"container": container.name}),
                )
                .await;
        }
    }

    /// Brings every pool to its preset's size (within `--max-concurrent`)
    /// and drops containers whose preset changed or went away.
    pub(crate) async fn refill_pools(self: &Arc<Self>) {
        let wanted: HashMap<String, (u32, Option<WorkerSpec>)> = self
            .catalog()
            .presets
            .iter()
            .filter(|(_, p)| p.config.pool.size > 0)
            .map(|(id, p)| (id.clone(), (p.config.pool.size, self.pool_spec(id))))
            .collect();
        // Shrink: containers of removed or changed presets, or above the size.
        let mut stale = Vec::new();
        {
            let mut pools = self.pools.lock().expect("pools lock");
            for (preset, pool) in pools.iter_mut() {
                let (size, hash) = match wanted.get(preset) {
                    Some((size, Some(spec))) => (*size as usize, Some(spec.config_hash.clone())),
                    _ => (0, None),
                };
                let (keep, drop): (Vec<_>, Vec<_>) = pool
                    .ready
                    .drain(..)
                    .partition(|c| Some(&c.config_hash) == hash.as_ref());
                stale.extend(drop);
                let mut keep = keep;
                while keep.len() > size {
                    stale.extend(keep.pop());
                }
                pool.ready = keep;
            }
        }
        for c in stale {
            let _ = self.env.engine.remove(&c.id).await;
        }
        // Grow, leaving at least half the slots to cold starts.
        for (preset, (size, spec)) in wanted {
            let Some(spec) = spec else { continue };
            loop {
                let budget = self.settings.max_concurrent / 2;
                // The intake holds free permits while it waits for entries,
                // so count running workers rather than free permits.
                let running = self.running.lock().expect("running lock").len();
                let start = {
                    let mut pools = self.pools.lock().expect("pools lock");
                    let total: usize = pools.values().map(|p| p.ready.len() + p.creating).sum();
                    let pool = pools.entry(preset.clone()).or_default();
                    let have = pool.ready.len() + pool.creating;
                    if have >= size as usize
                        || total >= budget
                        || running + total >= self.settings.max_concurrent
                    {
                        false
                    } else {
                        pool.creating += 1;
                        true
                    }
                };
                if !start {
                    break;
                }
                let made = self.create_pooled(&preset, &spec).await;
                let mut pools = self.pools.lock().expect("pools lock");
                let pool = pools.entry(preset.clone()).or_default();
                pool.creating -= 1;
                match made {
                    Some(c) => pool.ready.push(c),
                    None => break,
                }
            }
        }
    }

    async fn create_pooled(&self, preset: &str, spec: &WorkerSpec) -> Option<SessionContainer> {
        let image = match self.images.image_for(&spec.config, |_| {}).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(preset, error = %e, "pool image unavailable");
                return None;
            }
        };
        let token = crate::gateway::new_key();
        let name = container_name(
            "wsp",
            &format!("{}/{preset}/{}", self.settings.stream_prefix, &token[4..16]),
        );
        let deadline = unix_now() + spec.config.limits.ttl_sec;
        let mut l = HashMap::new();
        l.insert(labels::MANAGED.to_string(), "true".to_string());
        l.insert(
            labels::PREFIX.to_string(),
            self.settings.stream_prefix.clone(),
        );
        l.insert(labels::REQUEST_ID.to_string(), String::new());
        l.insert(labels::PRESET.to_string(), preset.to_string());
        l.insert(labels::CONFIG_HASH.to_string(), spec.config_hash.clone());
        l.insert(
            labels::INSTANCE.to_string(),
            self.settings.instance_id.clone(),
        );
        l.insert(labels::DEADLINE.to_string(), deadline.to_string());
        l.insert(labels::KIND.to_string(), "pool".to_string());
        let net = self.worker_net(&spec.config, "");
        let ctx = LaunchContext {
            name: name.clone(),
            image,
            labels: l,
            extra_env: if net.api_url.is_empty() {
                Vec::new()
            } else {
                vec![("ORCHESTRATOR_API_URL".into(), net.api_url.clone())]
            },
            network_mode: net.network.clone(),
            cmd: Some(vec!["sh".into(), "-c".into(), KEEPER.into()]),
        };
        let mut base = spec.clone();
        base.env.retain(|v| !v.name.starts_with("ORCHESTRATOR_"));
        let id = match self
            .env
            .engine
            .create(&name, create_body(&base, &ctx))
            .await
        {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(preset, error = %e, "creating a pool container failed");
                return None;
            }
        };
        if let Some(extra) = &spec.config.network {
            if self.env.engine.connect_network(extra, &id).await.is_err() {
                let _ = self.env.engine.remove(&id).await;
                return None;
            }
        }
        if let Err(e) = worker::start_container(&self.env.engine, &id, &spec.files).await {
            tracing::warn!(preset, error = %e, "starting a pool container failed");
            let _ = self.env.engine.remove(&id).await;
            return None;
        }
        Some(SessionContainer {
            id,
            name,
            config_hash: spec.config_hash.clone(),
            preset: preset.to_string(),
            deadline_unix: deadline,
        })
    }
}
