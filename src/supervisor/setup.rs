//! Starting an instance: Redis and Docker reached, the consumer group
//! there, the workers' networks made (inter-container traffic off, the
//! gateway's holes in the host firewall owned by this instance), the
//! catalog loaded.

use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::ctx::{catalog_dirs, Ctx, Networks};
use super::maintenance;
use super::pool::Pools;
use super::registry::Registry;
use super::session::Sessions;
use super::{StartError, Supervisor};
use crate::adapters::bus::{Bus, StreamNames};
use crate::adapters::engine::Engine;
use crate::adapters::firewall;
use crate::adapters::images::ImageBuilder;
use crate::adapters::loader;
use crate::adapters::sink::Sink;
use crate::metrics::Metrics;
use crate::model::config::ConfigSchema;
use crate::settings::Settings;
use crate::worker::WorkerEnv;

fn redis_url_for_logs(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_user, host)) => {
            let scheme = scheme_user.split("://").next().unwrap_or("redis");
            format!("{scheme}://***@{host}")
        }
        None => url.to_string(),
    }
}

impl Supervisor {
    /// Connects to Redis and Docker, makes the workers' networks (and
    /// their firewall rules) and loads the catalog.
    pub async fn start(settings: Settings) -> Result<Arc<Supervisor>, StartError> {
        let settings = Arc::new(settings);
        let target = settings.docker_target().map_err(StartError::Settings)?;
        if matches!(
            target,
            crate::model::docker_host::DockerTarget::Http(_)
                | crate::model::docker_host::DockerTarget::Tls { .. }
        ) && settings.worker_egress == crate::model::egress::Mode::Socket
        {
            tracing::warn!(
                docker_host = %settings.docker_host,
                "workers on a tcp:// engine mount this daemon's egress sockets, which works only when the engine runs on this machine; for an engine on another host set worker_egress = \"bridge\""
            );
        }
        let engine = Engine::connect(&target).await.map_err(StartError::Docker)?;
        let names = StreamNames::new(&settings.stream_prefix, &settings.group);
        let bus = Bus::connect(&settings.redis_url, names, settings.stream_maxlen)
            .await
            .map_err(|source| StartError::Redis {
                url: redis_url_for_logs(&settings.redis_url),
                source,
            })?
            .for_instance(&settings.instance_id);
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
                && match firewall::block_intra_bridge(&net.bridge) {
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
            let owner = firewall::Owner::new(
                &redis_url_for_logs(&settings.redis_url),
                &settings.stream_prefix,
                &settings.instance_id,
            );
            let rules = firewall::GatewayRules::new(
                owner,
                vec![ext_bridge.clone(), int_bridge.clone()],
                settings.gateway_port,
            );
            match rules.install() {
                Ok(0) => {}
                Ok(legacy) => tracing::warn!(
                    chain = firewall::CHAIN,
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
        let (catalog, issues) = loader::load(&catalog_dirs(&settings), &schema, None);
        for i in &issues {
            tracing::warn!(file = %i.file, field = i.field.as_deref().unwrap_or(""), "catalog file rejected: {}", i.message);
        }
        maintenance::log_catalog_warnings(&settings, &catalog);
        tracing::info!(presets = catalog.presets.len(), "catalog loaded");
        let sink = Sink::Redis(bus.clone(), metrics.clone(), Default::default());
        let egress = egress_for(&settings, sink.clone(), metrics.clone())?;
        let workspaces =
            crate::worker::workspace::from_settings(&settings).map_err(StartError::Artifacts)?;
        let env = WorkerEnv::new(engine, sink, metrics.clone(), &settings, egress, workspaces);
        let images = ImageBuilder::new(env.engine.clone(), metrics.clone());
        let ctx = Arc::new(Ctx {
            slots: Arc::new(Semaphore::new(settings.max_concurrent)),
            settings,
            bus,
            env,
            catalog: RwLock::new(Arc::new(catalog)),
            schema,
            shutdown: CancellationToken::new(),
            metrics,
            networks,
            images,
            firewall,
            registry: Registry::default(),
        });
        Ok(Arc::new(Supervisor {
            pools: Arc::new(Pools::new(ctx.clone())),
            sessions: Arc::new(Sessions::new(ctx.clone())),
            ctx,
        }))
    }
}

/// The workers' egress sockets as `settings` describe them.
pub fn egress_for(
    settings: &Settings,
    sink: Sink,
    metrics: Arc<Metrics>,
) -> Result<crate::adapters::egress::Egress, StartError> {
    let mut resolve = std::collections::HashMap::new();
    for (name, addr) in &settings.egress_resolve {
        let ip = addr.parse().map_err(|_| {
            StartError::Egress(format!(
                "egress_resolve.{name}: {addr:?} is not an IP address"
            ))
        })?;
        resolve.insert(name.trim_end_matches('.').to_ascii_lowercase(), ip);
    }
    let cfg = crate::adapters::egress::EgressConfig {
        dir: settings.egress_dir.clone(),
        host_dir: if settings.egress_host_dir.as_os_str().is_empty() {
            settings.egress_dir.clone()
        } else {
            settings.egress_host_dir.clone()
        },
        resolve,
        allow_private: settings.egress_allow_private,
        upstreams: settings
            .model_upstreams
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        max_connections: settings.egress_max_connections.max(1),
        connect_timeout: settings.egress_connect_timeout,
        header_timeout: settings.gateway_header_timeout,
        events_per_minute: settings.egress_events_per_minute,
    };
    crate::adapters::egress::Egress::new(
        cfg,
        sink,
        metrics,
        std::sync::Arc::new(|name: &str| std::env::var(name).ok()),
    )
    .map_err(|e| {
        StartError::Egress(format!(
            "cannot make egress_dir {}: {e}",
            settings.egress_dir.display()
        ))
    })
}
