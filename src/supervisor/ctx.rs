//! The supervisor's context: the handles every task of the daemon shares
//! (settings, Redis, Docker, the sink, metrics, the catalog, the slots,
//! the shutdown token, the registry of what runs here) and the few
//! questions answered from them alone. Tasks capture an `Arc<Ctx>`, never
//! the whole supervisor: pools and sessions hold their own state beside it.

use std::sync::{Arc, RwLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::registry::{Registry, Running};
use crate::adapters::bus::Bus;
use crate::adapters::engine::ContainerFacts;
use crate::adapters::firewall::GatewayRules;
use crate::adapters::images::ImageBuilder;
use crate::adapters::loader::CatalogDirs;
use crate::metrics::Metrics;
use crate::model::catalog::Catalog;
use crate::model::config::{ConfigSchema, EnvValue, WorkerConfig};
use crate::model::container::{labels, Owner, WorkerNet};
use crate::model::protocol::SpawnRequest;
use crate::model::redact::Redactor;
use crate::model::spec::{ResolveError, Resolver, WorkerSpec};
use crate::model::worker_key::KeyRecord;
use crate::settings::Settings;
use crate::worker::{self, Job, WorkerEnv};

/// The handles shared by every task of the daemon.
pub struct Ctx {
    /// The daemon's settings.
    pub settings: Arc<Settings>,
    /// Redis.
    pub bus: Bus,
    /// Docker, the sink, metrics and output limits, as workers need them.
    pub env: WorkerEnv,
    /// The catalog in force (replaced whole on reload).
    pub catalog: RwLock<Arc<Catalog>>,
    /// The merged-config schema.
    pub schema: ConfigSchema,
    /// One permit per worker this instance may run.
    pub slots: Arc<Semaphore>,
    /// Fires once, to stop intake.
    pub shutdown: CancellationToken,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The workers' networks.
    pub networks: Networks,
    /// Prepared images.
    pub images: ImageBuilder,
    /// This instance's gateway holes in the host firewall, when it manages it.
    pub firewall: Option<Arc<GatewayRules>>,
    /// What runs here.
    pub registry: Registry,
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

impl Ctx {
    /// The catalog in force.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// Who launches containers: this setup and instance.
    pub fn owner(&self) -> Owner<'_> {
        Owner {
            prefix: &self.settings.stream_prefix,
            instance: &self.settings.instance_id,
        }
    }

    /// The catalog directories.
    pub fn dirs(&self) -> CatalogDirs {
        catalog_dirs(&self.settings)
    }

    /// Resolves a request against the current catalog.
    pub fn resolve(&self, req: &SpawnRequest) -> Result<WorkerSpec, ResolveError> {
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

    /// The network and gateway URL of a new worker in container `name`:
    /// on the socket path (the default) network `none` and an egress socket
    /// when the worker may reach anything; on the bridge path (the setting,
    /// an archive delivery with no shim to forward, an extra `network`) a
    /// workers' bridge.
    pub fn worker_net(&self, config: &WorkerConfig, api_key: &str, name: &str) -> WorkerNet {
        use crate::model::egress::{placeholder, Grant, Mode, LISTEN};
        let socket_path = self.settings.worker_egress == Mode::Socket
            && config.network.is_none()
            && config.agent.delivery == crate::model::config::Delivery::Stdin;
        let grant = Grant::of(
            config,
            &placeholder(&crate::model::worker_key::new_key()[4..28]),
        );
        // A worker with nothing to reach gets no network at all (and skips
        // a bridge attachment, the costliest part of a container start).
        if !grant.serves_anything() && config.network.is_none() {
            return WorkerNet {
                network: "none".to_string(),
                api_url: String::new(),
                api_key: String::new(),
                egress: None,
            };
        }
        if socket_path {
            return WorkerNet {
                network: "none".to_string(),
                api_url: if grant.tools {
                    format!("http://{LISTEN}")
                } else {
                    String::new()
                },
                api_key: api_key.to_string(),
                egress: Some(crate::model::container::EgressPlan {
                    folder: self.env.egress.folder(name),
                    grant,
                }),
            };
        }
        self.bridge_net(config, api_key)
    }

    /// The bridge path: a workers' bridge and the gateway on it.
    pub fn bridge_net(&self, config: &WorkerConfig, api_key: &str) -> WorkerNet {
        if config.allowed_tools.is_empty() && !config.has_internet && config.network.is_none() {
            return WorkerNet {
                network: "none".to_string(),
                api_url: String::new(),
                api_key: String::new(),
                egress: None,
            };
        }
        if !config.model_api.is_empty() {
            tracing::warn!(preset = %config.id, "model_api routes need the socket path (network none, stdin delivery, no extra network): this worker gets its keys as env");
        }
        // A bridge has no allow-list: a worker that should reach only some
        // hosts gets none (fail closed) rather than all.
        let allow_listed = config.egress.allow.is_some();
        if config.has_internet && allow_listed {
            tracing::warn!(preset = %config.id, "egress.allow needs the socket path (network none, stdin delivery, no extra network): this worker gets no internet");
        }
        let (network, ip) = if config.has_internet && !allow_listed {
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
            egress: None,
        }
    }

    /// Serves the egress socket of a container found on the engine (an
    /// adopted one) again, with the grant its label records, in the folder
    /// it has mounted; events go to `request_id`.
    pub async fn reopen_egress(
        &self,
        facts: &crate::adapters::engine::ContainerFacts,
        request_id: Option<&str>,
    ) {
        let Some(label) = facts.labels.get(crate::model::egress::LABEL) else {
            return;
        };
        if self.env.egress.is_open(&facts.name) {
            self.env
                .egress
                .assign(&facts.name, request_id.map(str::to_string));
            return;
        }
        let folder = match &facts.egress_folder {
            Some(f) => Some(f.clone()),
            None => self
                .env
                .engine
                .inspect(&facts.id)
                .await
                .ok()
                .and_then(|f| f.egress_folder),
        };
        // Served where this daemon's own sockets are: the container must
        // have mounted that very folder.
        let (Some(_), Ok(grant)) = (
            folder.filter(|f| *f == self.env.egress.folder(&facts.name)),
            serde_json::from_str::<crate::model::egress::Grant>(label),
        ) else {
            tracing::warn!(container = %facts.name, "an adopted container's egress socket cannot be served here (its folder is another daemon's, or it has no grant)");
            return;
        };
        if let Err(e) = self
            .env
            .egress
            .open(&facts.name, grant, request_id.map(str::to_string))
        {
            tracing::warn!(container = %facts.name, error = %e, "cannot serve an adopted container's egress socket");
        }
    }

    /// Opens the egress socket `launch` plans (before its container is
    /// created: the bind mount's folder must exist), telling its events to
    /// `request_id`. `false` when it cannot be opened.
    pub fn open_egress(
        &self,
        launch: &crate::model::container::LaunchContext,
        request_id: Option<&str>,
    ) -> bool {
        let Some(plan) = &launch.egress else {
            return true;
        };
        match self.env.egress.open(
            &launch.name,
            plan.grant.clone(),
            request_id.map(str::to_string),
        ) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(container = %launch.name, folder = %plan.folder, error = %e, "cannot open the worker's egress socket");
                false
            }
        }
    }

    /// Registers `key` for the worker of `spec` in container `container`,
    /// valid for its timeout; returns whether Redis took it.
    pub async fn register_key(&self, spec: &WorkerSpec, container: &str, key: &str) -> bool {
        let record = KeyRecord::for_worker(spec, container);
        let ttl = std::time::Duration::from_secs(spec.config.limits.timeout_sec);
        match self.bus.register_worker_key(key, &record, ttl).await {
            Ok(()) => true,
            Err(e) => {
                self.metrics.redis_errors.inc();
                tracing::warn!(request_id = %spec.request_id, error = %e, "registering the worker key failed");
                false
            }
        }
    }

    /// A redactor with the secrets a preset's env would carry.
    pub fn redactor_for(&self, preset: Option<&str>) -> Redactor {
        let mut r = Redactor::default();
        if let Some(p) = preset.and_then(|id| self.catalog().presets.get(id).cloned()) {
            for v in p.config.env.values() {
                if let EnvValue::FromEnv { from_env } = v {
                    if let Ok(val) = std::env::var(from_env) {
                        r.add(&val);
                    }
                }
            }
        }
        r
    }

    /// A redactor with the secrets of every preset (for entries that
    /// belong to no known worker: dead letters).
    pub fn all_secrets(&self) -> Redactor {
        let mut r = Redactor::default();
        for id in self.catalog().presets.keys() {
            r.extend(&self.redactor_for(Some(id)));
        }
        r
    }

    /// Whether `c` carries this setup's managed-by labels.
    pub fn is_ours(&self, c: &ContainerFacts) -> bool {
        c.labels.get(labels::MANAGED).map(String::as_str) == Some("true")
            && c.labels.get(labels::PREFIX) == Some(&self.settings.stream_prefix)
    }

    /// Whether `c` is request `rid`'s one-shot container by its labels (a
    /// container found by name may hold another request's work).
    pub fn holds_request(&self, c: &ContainerFacts, rid: &str) -> bool {
        self.is_ours(c)
            && c.labels.get(labels::REQUEST_ID).map(String::as_str) == Some(rid)
            && !matches!(
                c.labels.get(labels::KIND).map(String::as_str),
                Some("session" | "pool")
            )
    }

    /// Whether `c` is session `sid`'s container by its labels.
    pub fn holds_session(&self, c: &ContainerFacts, sid: &str) -> bool {
        self.is_ours(c)
            && c.labels.get(labels::SESSION_ID).map(String::as_str) == Some(sid)
            && c.labels.get(labels::KIND).map(String::as_str) == Some("session")
    }

    /// Whether `instance` is alive (unknown, on Redis trouble, counts as alive).
    pub async fn instance_alive(&self, instance: &str) -> bool {
        self.bus.instance_alive(instance).await.unwrap_or(true)
    }

    /// Whether this instance may supervise `c`: it is managed by this setup,
    /// its owner is this instance or a dead one, and no other live instance
    /// adopted it already (the adoption claim is taken here).
    pub async fn may_adopt(&self, c: &ContainerFacts) -> bool {
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

    /// Supervises a started worker container to its result and removal,
    /// registered as running here meanwhile; the slot is freed at the end.
    pub async fn supervise(&self, job: Job, fresh: bool, permit: OwnedSemaphorePermit) {
        let rid = job.request_id.clone();
        // A cancel that arrived while it was being created takes effect now.
        self.registry.track(&rid, running_of(&job));
        let span = tracing::info_span!(
            "worker",
            request_id = %rid,
            preset = job.preset.as_deref().unwrap_or("(inline)"),
            container = %job.container_name,
        );
        let _ = worker::supervise(&self.env, job, fresh)
            .instrument(span)
            .await;
        self.registry.untrack(&rid);
        drop(permit);
    }
}

/// How the registry stops `job`.
pub fn running_of(job: &Job) -> Running {
    Running {
        attempt: job.attempt,
        stop: job.stop.clone(),
        reason: job.stop_reason.clone(),
    }
}

/// The catalog directories of `settings`.
pub fn catalog_dirs(settings: &Settings) -> CatalogDirs {
    CatalogDirs {
        presets: settings.presets_dir.clone(),
        skills: settings.skills_dir.clone(),
        templates: settings.templates_dir.clone(),
    }
}
