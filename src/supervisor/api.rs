//! The supervisor's side of the HTTP API (`http::api::Backend`): a
//! request checked as the intake would check it, the presets in force, the
//! pools of this instance.

use std::sync::Arc;

use serde_json::{json, Value};

use super::pool::Pools;
use super::Ctx;
use crate::http::api::Backend;
use crate::model::protocol::{ErrorInfo, SpawnRequest, Status, Task};
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

/// What `presets show ID` prints, resolved with `env` for the daemon's
/// variables (the API's never reads a real one), secrets masked.
pub fn preset_view(
    ctx: &Ctx,
    id: &str,
    patch: Option<Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, String> {
    let req = SpawnRequest {
        request_id: "presets-show".into(),
        worker_config_id: Some(id.to_string()),
        worker_config_override: patch,
        task: Task {
            user_id: None,
            prompt: "(prompt)".into(),
            session_id: None,
            repo: None,
        },
        dry_run: true,
    };
    let catalog = ctx.catalog();
    let resolver = Resolver {
        catalog: &catalog,
        schema: &ctx.schema,
        policy: &ctx.settings.policy,
        limits: &ctx.settings.limits,
        env,
    };
    let spec = resolver.resolve(&req).map_err(|e| e.to_string())?;
    let mut out = json!({ "config": spec.config_view(), "files": spec.file_views() });
    spec.redactor().redact_json(&mut out);
    Ok(out)
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
        let env = |k: &str| Some(format!("<from_env: {k}>"));
        Some(preset_view(&self.ctx, id, None, &env))
    }

    fn pools(&self) -> Vec<Value> {
        self.pools.snapshot()
    }
}
