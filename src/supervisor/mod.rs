//! The supervisor: reads spawn requests, turns them into workers, and owns
//! every worker until its result is published. It sits between the
//! adapters (Redis, Docker) and holds the delivery guarantees of
//! PROTOCOL.md section 10:
//!
//! - an entry is acknowledged only once its labelled container exists or
//!   its result is published (`settle` is the only code that acknowledges,
//!   answers or dead-letters an entry);
//! - the container name derives from the request id, so a redelivered
//!   request finds its worker instead of starting another;
//! - results go through `Bus::publish_result`, which publishes at most one
//!   result per request id.
//!
//! Its rooms: `setup` (start), `intake` (read, parse once, triage, act),
//! `launch` (a cold start), `adoption`, `control`, `maintenance`, `pool`
//! and `session` (each owning its own state), `settle`, and the shared
//! `ctx` of handles with the `registry` of what runs here.

mod adoption;
pub mod api;
mod control;
pub mod ctx;
mod fleet;
mod intake;
mod launch;
mod maintenance;
pub mod pool;
pub mod registry;
pub mod session;
mod settle;
mod setup;

pub use setup::egress_for;

use std::sync::Arc;
use std::time::Duration;

use ctx::Ctx;
use pool::Pools;
use session::Sessions;

use crate::adapters::bus::BusError;
use crate::adapters::engine::EngineError;

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
    /// `docker_host` (or `DOCKER_HOST`) does not name an engine.
    #[error("docker_host: {0}")]
    Settings(String),
    /// The egress sockets' folder cannot be made, or a setting of theirs
    /// is not valid.
    #[error("egress: {0}")]
    Egress(String),
    /// An API token's variable is not set.
    #[error("api_tokens: {0}")]
    Api(String),
    /// The artifact store cannot be opened.
    #[error("artifacts: {0}")]
    Artifacts(String),
    /// The HTTP address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A running instance: the shared handles, and the state of its pools and
/// sessions beside them.
pub struct Supervisor {
    ctx: Arc<Ctx>,
    pools: Arc<Pools>,
    sessions: Arc<Sessions>,
}

impl Supervisor {
    /// The token that stops intake.
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.ctx.shutdown.clone()
    }

    /// The HTTP API over this instance (docs/api.md); its event hub
    /// follows the streams until shutdown.
    pub fn api(&self) -> Result<Arc<crate::http::api::Api>, StartError> {
        let s = &self.ctx.settings;
        let mut tokens = Vec::new();
        for t in &s.api_tokens {
            let secret = std::env::var(&t.token.from_env).map_err(|_| {
                StartError::Api(format!(
                    "token {:?}: the daemon's environment has no {}",
                    t.name, t.token.from_env
                ))
            })?;
            if secret.len() < 16 {
                return Err(StartError::Api(format!(
                    "token {:?}: {} holds fewer than 16 characters",
                    t.name, t.token.from_env
                )));
            }
            tokens.push(crate::http::api::Token {
                name: t.name.clone(),
                role: t.role,
                secret,
            });
        }
        let hub = Arc::new(crate::http::api::EventHub::default());
        tokio::spawn(
            hub.clone()
                .run(self.ctx.bus.clone(), self.ctx.shutdown.clone()),
        );
        let backend = Arc::new(api::ApiBackend::new(self.ctx.clone(), self.pools.clone()));
        Ok(Arc::new(crate::http::api::Api::new(
            self.ctx.bus.clone(),
            self.ctx.env.engine.clone(),
            backend,
            tokens,
            s.api_rate_per_minute,
            &s.stream_prefix,
            s.limits.clone(),
            hub,
            self.ctx.env.workspaces.artifacts.clone(),
        )))
    }

    /// The handles of the operator endpoints.
    pub fn health(&self) -> crate::http::health::Health {
        crate::http::health::Health {
            bus: self.ctx.bus.clone(),
            engine: self.ctx.env.engine.clone(),
            metrics: self.ctx.metrics.clone(),
        }
    }

    /// Runs until `shutdown` fires: adoption, intake, control, reclaim,
    /// catalog reload. Running workers are left alone on the way out.
    pub async fn run(self: &Arc<Self>) {
        // Announce this instance before adopting: other instances must see
        // it alive before it takes over containers (and must not adopt the
        // containers it owns from an earlier life).
        self.heartbeat().await;
        let mut tasks = tokio::task::JoinSet::new();
        // Its own task: nothing slow (adoption, image builds) may delay it,
        // or peers would take this instance for lost.
        tasks.spawn(self.clone().heartbeat_loop());
        self.adopt_all().await;
        self.answer_for_vanished().await;
        self.pools.refill().await;
        tasks.spawn(self.clone().intake_loop());
        tasks.spawn(self.clone().control_loop());
        tasks.spawn(self.clone().maintenance_loop());
        tasks.spawn(self.clone().watch_loop());
        tasks.spawn(self.clone().firewall_loop());
        tasks.spawn(self.clone().retry_loop());
        self.ctx.shutdown.cancelled().await;
        // Give each loop a moment to leave its blocking read.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        if let Some(fw) = self.ctx.firewall.clone() {
            let _ = tokio::task::spawn_blocking(move || fw.release()).await;
        }
        tracing::info!("intake stopped; running workers are left to the next start");
    }

    /// Addresses the gateway listens on.
    pub fn gateway_addrs(&self) -> Vec<String> {
        if !self.ctx.settings.gateway_bind.is_empty() {
            return vec![self.ctx.settings.gateway_bind.clone()];
        }
        let mut ips = vec![
            self.ctx.networks.external.1.clone(),
            self.ctx.networks.internal.1.clone(),
        ];
        ips.retain(|ip| !ip.is_empty());
        ips.dedup();
        ips.into_iter()
            .map(|ip| format!("{ip}:{}", self.ctx.settings.gateway_port))
            .collect()
    }

    /// Hands the egress sockets' tool calls to `gateway`.
    pub fn connect_gateway(&self, gateway: Arc<crate::http::gateway::Gateway>) {
        self.ctx
            .env
            .egress
            .set_tools(crate::http::gateway::tool_call(gateway));
    }

    /// The gateway's shared state.
    pub fn gateway(&self) -> Arc<crate::http::gateway::Gateway> {
        let ctx = self.ctx.clone();
        let s = &self.ctx.settings;
        Arc::new(crate::http::gateway::Gateway::new(
            self.ctx.bus.clone(),
            self.ctx.env.sink.clone(),
            Some(s.upstream_url.clone()).filter(|u| !u.is_empty()),
            Box::new(move |preset| ctx.redactor_for(preset)),
            {
                let ctx = self.ctx.clone();
                Box::new(move |group| {
                    ctx.catalog()
                        .tools
                        .get(group)
                        .map(|g| g.upstream_url.clone())
                })
            },
            self.ctx.env.engine.clone(),
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
}
