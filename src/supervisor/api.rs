//! The supervisor's side of the HTTP API (`http::api::Backend`): a
//! request checked as the intake would check it, the presets in force, the
//! pools of this instance.

use std::sync::Arc;

use serde_json::{json, Value};

use super::pool::Pools;
use super::Ctx;
use crate::http::api::Backend;
use crate::model::protocol::{ErrorInfo, SpawnRequest, Status};
use crate::model::spec::Resolver;

/// The handles the API's backend reads.
pub struct ApiBackend {
    ctx: Arc<Ctx>,
    pools: Arc<Pools>,
}

impl ApiBackend {
    /// The backend over these handles.
    pub fn new(ctx: Arc<Ctx>, pools: Arc<Pools>) -> ApiBackend {
        ApiBackend { ctx, pools }
    }
}

impl Backend for ApiBackend {
    fn check(&self, req: &SpawnRequest) -> Result<(), ErrorInfo> {
        match self.ctx.resolve(req) {
            Err(e) if e.status() == Status::Rejected => Err(e.info()),
            // The daemon's own trouble (a variable not set) is its answer
            // to give, as an `error` result.
            _ => Ok(()),
        }
    }

    fn presets(&self) -> Vec<Value> {
        let catalog = self.ctx.catalog();
        let mut list: Vec<Value> = catalog
            .presets
            .iter()
            .map(|(id, p)| {
                let c = &p.config;
                json!({
                    "id": id,
                    "name": c.name,
                    "description": c.description,
                    "image": c.image,
                    "agent_type": c.agent.kind,
                    "allowed_tools": c.allowed_tools,
                    "pool_size": c.pool.size,
                })
            })
            .collect();
        list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        list
    }

    fn preset(&self, id: &str) -> Option<Result<Value, String>> {
        if !self.ctx.catalog().presets.contains_key(id) {
            return None;
        }
        // The API never reads a real variable of the daemon.
        let env = |k: &str| Some(format!("<from_env: {k}>"));
        let catalog = self.ctx.catalog();
        let resolver = Resolver {
            catalog: &catalog,
            schema: &self.ctx.schema,
            policy: &self.ctx.settings.policy,
            limits: &self.ctx.settings.limits,
            env: &env,
        };
        Some(resolver.show(id, None))
    }

    fn pools(&self) -> Vec<Value> {
        self.pools.snapshot()
    }
}
