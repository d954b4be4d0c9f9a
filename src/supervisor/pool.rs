//! Warm pools: a preset with `pool.size: N` keeps N containers created,
//! started with the preset's limits and the request-independent files in
//! place, their main process the delivery shim ([`crate::model::delivery`]) waiting
//! on an attached stdin. A request for that preset, with no override that
//! changes its config, claims one: the daemon writes the request's parts
//! (prompt, key, request id) to that stdin, the shim `exec`s the agent, and
//! the container is supervised like a one-shot worker to its result and
//! removal (one request per container, so isolation is unchanged). The pool
//! refills in the background. Claiming costs no engine call.
//!
//! Pooled containers count against `--max-concurrent`; idle ones of a
//! previous run are removed at start-up (their stdin went with the old
//! daemon), and a pool shrinks when its preset changes or goes away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::ctx::Ctx;
use super::intake::Parsed;
use crate::adapters::engine::{Engine, EngineError, ExecOutput, Stdin};
use crate::model::container::{
    container_name, create_body, pool_labels, FileDelivery, LaunchContext,
};
use crate::model::delivery::{self, ShimMode};
use crate::model::protocol::{EventType, SpawnRequest, Task};
use crate::model::spec::WorkerSpec;
use crate::model::triage::Disposition;
use crate::model::worker_key::new_key;
use crate::worker::{unix_now, Job, Placement};

/// A ready container of a pool.
pub struct PooledContainer {
    pub id: String,
    pub name: String,
    pub config_hash: String,
    pub preset: String,
    /// Unix time the container's TTL ends.
    pub deadline_unix: u64,
    /// The shim's stdin, attached before the start.
    pub stdin: Stdin,
    /// Its output, attached at the same time.
    pub output: ExecOutput,
}

/// Containers of one preset's pool.
#[derive(Default)]
struct PoolState {
    /// Ready containers.
    pub ready: Vec<PooledContainer>,
    /// Creations under way.
    pub creating: usize,
}

/// The env a pooled worker receives on its stdin: the request-dependent
/// `ORCHESTRATOR_*` variables (the pool container was created without
/// them), plus the gateway URL and key when it has one.
fn request_env(spec: &WorkerSpec, api_url: &str, api_key: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        // Secrets too: the pool container's config never holds them.
        .filter(|v| v.name.starts_with("ORCHESTRATOR_") || v.secret)
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    if !api_url.is_empty() {
        env.push(("ORCHESTRATOR_API_URL".into(), api_url.into()));
        env.push(("ORCHESTRATOR_API_KEY".into(), api_key.into()));
    }
    env
}

/// Whether a request claiming `c` now gets its whole `timeout_sec` before
/// the container's TTL ends.
fn serves_whole_timeout(c: &PooledContainer, timeout_sec: u64) -> bool {
    c.deadline_unix >= unix_now() + timeout_sec
}

/// The warm pools of this instance, one per preset with `pool.size > 0`.
pub struct Pools {
    ctx: Arc<Ctx>,
    pools: Mutex<HashMap<String, PoolState>>,
}

impl Pools {
    /// No pool yet: [`Pools::refill`] makes them.
    pub fn new(ctx: Arc<Ctx>) -> Pools {
        Pools {
            ctx,
            pools: Mutex::new(HashMap::new()),
        }
    }

    /// Each pool of this instance: its preset, target size and ready
    /// containers (the API's `/v1/pools`).
    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        let catalog = self.ctx.catalog();
        let pools = self.pools.lock().expect("pools lock");
        let mut out: Vec<serde_json::Value> = catalog
            .presets
            .iter()
            .filter(|(_, p)| p.config.pool.size > 0)
            .map(|(id, p)| {
                serde_json::json!({
                    "preset": id,
                    "target": p.config.pool.size,
                    "ready": pools.get(id).map(|s| s.ready.len()).unwrap_or(0),
                })
            })
            .collect();
        out.sort_by(|a, b| a["preset"].as_str().cmp(&b["preset"].as_str()));
        out
    }

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
                repo: None,
            },
            dry_run: false,
        };
        self.ctx.resolve(&req).ok()
    }

    /// Takes a ready container for `spec`, if its preset has a pool whose
    /// containers match the request's config exactly and the request's env
    /// can travel on stdin.
    pub fn claim(self: &Arc<Self>, spec: &WorkerSpec) -> Option<PooledContainer> {
        let preset = spec.preset_id.clone()?;
        if spec.config.pool.size == 0 || !delivery::env_fits(&request_env(spec, "", "")) {
            return None;
        }
        let claimed = {
            let mut pools = self.pools.lock().expect("pools lock");
            let pool = pools.get_mut(&preset)?;
            let i = pool.ready.iter().position(|c| {
                c.config_hash == spec.config_hash
                    && serves_whole_timeout(c, spec.config.limits.timeout_sec)
            })?;
            let c = pool.ready.swap_remove(i);
            self.ctx.metrics.pool_ready.dec();
            Some(c)
        };
        let d = self.clone();
        tokio::spawn(async move { d.refill().await });
        claimed
    }

    /// Puts an unused claimed container back into its pool.
    fn return_pooled(&self, container: PooledContainer) {
        self.ctx.metrics.pool_ready.inc();
        self.pools
            .lock()
            .expect("pools lock")
            .entry(container.preset.clone())
            .or_default()
            .ready
            .push(container);
    }

    /// Runs request `p` in a claimed pool container: delivers the request's
    /// parts to the waiting shim, then supervises the container like a
    /// one-shot worker (result, removal). The entry is acknowledged once the
    /// result is out; the run mark (taken by triage) tells other instances
    /// it runs. Returns `Err(permit)` when the container turned out dead
    /// before the agent could start (nothing ran): the caller starts the
    /// request cold.
    pub async fn run(
        &self,
        p: &Parsed,
        spec: &WorkerSpec,
        container: PooledContainer,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), OwnedSemaphorePermit> {
        let ctx = &self.ctx;
        let rid = spec.request_id.clone();
        let api_key = new_key();
        let net = ctx.worker_net(&spec.config, &api_key, &container.name);
        let env = if net.egress.is_none() {
            request_env(&spec.with_model_keys_as_env(), &net.api_url, &api_key)
        } else {
            request_env(spec, &net.api_url, &api_key)
        };
        let payload = match delivery::payload(&spec.request_files, &env) {
            Ok(p) => p,
            Err(e) => {
                // claim checked the env; this is only belt and braces.
                tracing::warn!(request_id = %rid, error = %e, "request cannot run pooled");
                self.return_pooled(container);
                return Err(permit);
            }
        };
        if ctx
            .hold(p, spec, "pool", &container.name, &api_key)
            .await
            .is_err()
        {
            // The cold path takes the hold again and settles as it says.
            self.return_pooled(container);
            return Err(permit);
        }
        let gateway_key = (!net.api_url.is_empty()).then(|| api_key.clone());
        if gateway_key.is_some() && !ctx.register_key(spec, &container.name, &api_key).await {
            tracing::warn!(request_id = %rid, "starting cold");
            self.return_pooled(container);
            return Err(permit);
        }
        let at = Placement {
            container_id: container.id.clone(),
            container_name: container.name.clone(),
            image: spec.config.image.clone(),
        };
        let job = Job::in_live_container(
            spec,
            at,
            container.deadline_unix,
            &p.received,
            &api_key,
            gateway_key,
        )
        .with_output(Some(container.output));
        if let Err(e) = Engine::deliver(container.stdin, &payload).await {
            // The shim never received a whole archive, so the agent did not
            // start: this container is dead weight, the request starts cold.
            tracing::warn!(request_id = %rid, container = %container.name, error = %e, "pooled container did not take the request; starting cold");
            let _ = ctx.bus.revoke_worker_key(&api_key).await;
            let _ = ctx.env.engine.remove(&container.id).await;
            ctx.env.egress.close(&container.name);
            return Err(permit);
        }
        // Its socket's events are this request's from now on.
        ctx.env.egress.assign(&container.name, Some(rid.clone()));
        ctx.env
            .sink
            .event(
                &rid,
                EventType::Accepted,
                json!({"preset": spec.preset_id, "config_hash": spec.config_hash, "instance": ctx.settings.instance_id, "container": container.name, "pooled": true}),
            )
            .await;
        ctx.supervise(job, true, permit).await;
        ctx.settle(&p.entry, Disposition::Ack).await;
        Ok(())
    }

    /// Brings every pool to its preset's size (within `--max-concurrent`)
    /// and drops containers whose preset changed or went away.
    pub async fn refill(self: &Arc<Self>) {
        let wanted: HashMap<String, (u32, Option<WorkerSpec>)> = self
            .ctx
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
                let (size, hash, timeout) = match wanted.get(preset) {
                    Some((size, Some(spec))) => (
                        *size as usize,
                        Some(spec.config_hash.clone()),
                        spec.config.limits.timeout_sec,
                    ),
                    _ => (0, None, 0),
                };
                // A container too close to the end of its TTL to give a
                // request its whole timeout is renewed too.
                let (keep, drop): (Vec<_>, Vec<_>) = pool.ready.drain(..).partition(|c| {
                    Some(&c.config_hash) == hash.as_ref() && serves_whole_timeout(c, timeout)
                });
                stale.extend(drop);
                let mut keep = keep;
                while keep.len() > size {
                    stale.extend(keep.pop());
                }
                pool.ready = keep;
            }
        }
        self.ctx.metrics.pool_ready.dec_by(stale.len() as i64);
        for c in stale {
            let _ = self.ctx.env.engine.remove(&c.id).await;
            self.ctx.env.egress.close(&c.name);
        }
        // Grow, leaving at least half the slots to cold starts.
        for (preset, (size, spec)) in wanted {
            let Some(spec) = spec else { continue };
            loop {
                let budget = self.ctx.settings.max_concurrent / 2;
                // The intake holds free permits while it waits for entries,
                // so count running workers rather than free permits.
                let running = self.ctx.registry.running_count();
                let start = {
                    let mut pools = self.pools.lock().expect("pools lock");
                    let total: usize = pools.values().map(|p| p.ready.len() + p.creating).sum();
                    let pool = pools.entry(preset.clone()).or_default();
                    let have = pool.ready.len() + pool.creating;
                    if have >= size as usize
                        || total >= budget
                        || running + total >= self.ctx.settings.max_concurrent
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
                    Some(c) => {
                        pool.ready.push(c);
                        self.ctx.metrics.pool_ready.inc();
                    }
                    None => break,
                }
            }
        }
    }

    async fn create_pooled(&self, preset: &str, spec: &WorkerSpec) -> Option<PooledContainer> {
        let image = match self.ctx.images.image_for(&spec.config, |_| {}).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(preset, error = %e, "pool image unavailable");
                return None;
            }
        };
        let token = new_key();
        let name = container_name(
            "wsp",
            &format!(
                "{}/{preset}/{}",
                self.ctx.settings.stream_prefix,
                &token[4..16]
            ),
        );
        let deadline = unix_now() + spec.config.limits.ttl_sec;
        let l = pool_labels(self.ctx.owner(), preset, &spec.config_hash, deadline);
        let net = self.ctx.worker_net(&spec.config, "", &name);
        let ctx = LaunchContext {
            name: name.clone(),
            image,
            labels: l,
            // On the bridge path the gateway URL comes with the request's
            // key, on stdin; the egress socket's variables name no request.
            extra_env: if net.egress.is_some() {
                net.env(false)
            } else {
                Vec::new()
            },
            network_mode: net.network.clone(),
            // The preset's argv with its `{prompt}` element: the shim puts
            // the request's prompt there.
            cmd: Some(spec.config.agent.command.clone()),
            delivery: FileDelivery::Stdin(ShimMode::Pool),
            volumes: Vec::new(),
            egress: net.egress.clone(),
        };
        let mut base = spec.clone();
        base.env.retain(|v| !v.name.starts_with("ORCHESTRATOR_"));
        let engine = &self.ctx.env.engine;
        if !self.ctx.open_egress(&ctx, None) {
            return None;
        }
        let id = match engine.create(&name, create_body(&base, &ctx)).await {
            Ok(id) => id,
            Err(e) => {
                self.ctx.env.egress.release(&name);
                tracing::warn!(preset, error = %e, "creating a pool container failed");
                return None;
            }
        };
        let ready = async {
            if let Some(extra) = &spec.config.network {
                engine.connect_network(extra, &id).await?;
            }
            // The request-independent files go in now, through the archive
            // API: its cost is paid here, not by a request.
            engine.upload(&id, &spec.files).await?;
            let attached = engine.attach(&id).await?;
            engine.start(&id).await?;
            Ok::<_, EngineError>(attached)
        }
        .await;
        match ready {
            Ok((stdin, output)) => Some(PooledContainer {
                id,
                name,
                config_hash: spec.config_hash.clone(),
                preset: preset.to_string(),
                deadline_unix: deadline,
                stdin,
                output,
            }),
            Err(e) => {
                tracing::warn!(preset, error = %e, "starting a pool container failed");
                let _ = engine.remove(&id).await;
                self.ctx.env.egress.close(&name);
                None
            }
        }
    }
}
