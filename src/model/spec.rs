//! Resolution of a spawn request into a [`WorkerSpec`]: preset lookup,
//! merge, schema validation, override policy, rendering and env.
//!
//! This module does no I/O: the daemon's environment is handed in as a
//! lookup function. Every failure is a [`ResolveError`] that maps to a
//! `rejected` (the request's fault) or `error` (the daemon's) result.

use serde_json::Value;

use crate::model::catalog::Catalog;
use crate::model::config::{config_hash, merge, ConfigSchema, EnvValue, WorkerConfig};
use crate::model::policy::Policy;
use crate::model::protocol::{ErrorInfo, FileView, InputLimits, SpawnRequest, Status};
use crate::model::redact::Redactor;
use crate::model::render::{render, RenderError, RenderedFile, PROMPT_FILE};

/// An environment variable of the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
    /// Whether the value must be redacted everywhere.
    pub secret: bool,
}

/// Everything needed to run one request, decided before any container exists.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The request id.
    pub request_id: String,
    /// Preset id, when the request named one.
    pub preset_id: Option<String>,
    /// Session id, when set.
    pub session_id: Option<String>,
    /// `task.user_id`, when set.
    pub user_id: Option<String>,
    /// The merged, validated config.
    pub config: WorkerConfig,
    /// The merged config as JSON (what `config_hash` covers).
    pub config_json: Value,
    /// Hash of the merged config.
    pub config_hash: String,
    /// Request-independent files (instructions, skills, settings).
    pub files: Vec<RenderedFile>,
    /// Files that carry the request (the prompt).
    pub request_files: Vec<RenderedFile>,
    /// Environment from the config plus the daemon's `ORCHESTRATOR_*` values.
    pub env: Vec<EnvVar>,
    /// argv with `{prompt}` replaced by the prompt, as one element.
    pub command: Vec<String>,
    /// Where the prompt is in `command`.
    pub prompt_at: usize,
    /// How a session's tasks continue the agent's conversation: the
    /// preset's `agent.conversation`, else its agent layout's.
    pub conversation: Option<crate::model::conversation::Conversation>,
    /// The model API keys (`model_api`): the worker's key variable and the
    /// value. On the socket path they stay the daemon's (the redactor's);
    /// on the bridge path they become secret env ([`Self::with_model_keys_as_env`]).
    pub model_keys: Vec<(String, String)>,
    /// Which run of the request this is (1 = the first; `model::retry`).
    pub attempt: u32,
    /// The repository it starts from and the artifacts it keeps
    /// (`model::workspace`), when there are any.
    pub workspace: Option<crate::model::workspace::WorkspacePlan>,
}

impl WorkerSpec {
    /// A redactor that knows every secret of this spec.
    pub fn redactor(&self) -> Redactor {
        let mut r = Redactor::default();
        for v in self.env.iter().filter(|v| v.secret) {
            r.add(&v.value);
        }
        for (_, k) in &self.model_keys {
            r.add(k);
        }
        r
    }

    /// This spec with its model keys as secret env: for a worker on the
    /// bridge path, which has no socket to add them on the way out.
    pub fn with_model_keys_as_env(&self) -> WorkerSpec {
        let mut s = self.clone();
        for (name, value) in &self.model_keys {
            s.env.retain(|v| &v.name != name);
            s.env.push(EnvVar {
                name: name.clone(),
                value: value.clone(),
                secret: true,
            });
        }
        s
    }

    /// The merged config with secret env values replaced by `{"from_env": ..}`.
    pub fn config_view(&self) -> Value {
        // `config_json` never holds resolved secret values: from_env stays a reference.
        self.config_json.clone()
    }

    /// The rendered files as shown to people (`presets show`, dry runs).
    pub fn file_views(&self) -> Vec<FileView> {
        self.files
            .iter()
            .chain(&self.request_files)
            .map(|f| FileView {
                path: f.path.clone(),
                content: f.content.clone(),
            })
            .collect()
    }

    /// `ORCHESTRATOR_ALLOWED_TOOLS` value.
    pub fn allowed_tools_env(&self) -> String {
        self.config
            .allowed_tools
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Why a request could not be resolved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    /// The named preset does not exist.
    #[error("worker_config_id: unknown preset {0:?}")]
    UnknownPreset(String),
    /// The merged config fails the schema.
    #[error("{message}")]
    Invalid {
        /// Offending field.
        field: String,
        /// Why, in sentences that name their fields.
        message: String,
    },
    /// The override breaks the policy.
    #[error("{field}: {message}")]
    Policy {
        /// Offending field.
        field: String,
        /// Why.
        message: String,
    },
    /// Rendering failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The repository of `task.repo` / `workspace.repo` is refused.
    #[error("{message}")]
    Repo {
        /// Offending field (`task.repo.url`, `workspace.repo.branch`, ...).
        field: String,
        /// Why, naming the field.
        message: String,
    },
    /// A `from_env` variable is not set in the daemon's environment.
    #[error("{field}: the daemon's environment has no {from_env}")]
    MissingEnv {
        /// The config field (`env.NAME`, `model_api.NAME.key`).
        field: String,
        /// Daemon variable.
        from_env: String,
    },
}

impl ResolveError {
    /// The result status this error gives.
    pub fn status(&self) -> Status {
        match self {
            ResolveError::UnknownPreset(_)
            | ResolveError::Invalid { .. }
            | ResolveError::Policy { .. }
            | ResolveError::Repo { .. }
            | ResolveError::Render(RenderError::UnknownAgentType(_)) => Status::Rejected,
            ResolveError::Render(_) | ResolveError::MissingEnv { .. } => Status::Error,
        }
    }

    /// The `error` object of the result.
    pub fn info(&self) -> ErrorInfo {
        use crate::model::outcome::ErrorCode;
        let (code, field) = match self {
            ResolveError::UnknownPreset(_) => (
                ErrorCode::UnknownPreset,
                Some("worker_config_id".to_string()),
            ),
            ResolveError::Invalid { field, .. } => (ErrorCode::InvalidConfig, Some(field.clone())),
            ResolveError::Policy { field, .. } => (ErrorCode::PolicyViolation, Some(field.clone())),
            ResolveError::Repo { field, .. } => (ErrorCode::InvalidRepo, Some(field.clone())),
            ResolveError::Render(RenderError::UnknownAgentType(_)) => {
                (ErrorCode::UnknownAgentType, Some("agent.type".to_string()))
            }
            ResolveError::Render(_) => (ErrorCode::RenderFailed, None),
            ResolveError::MissingEnv { field, .. } => (ErrorCode::MissingEnv, Some(field.clone())),
        };
        code.info(field.as_deref(), self.to_string())
    }
}

/// What resolution needs besides the request.
pub struct Resolver<'a> {
    /// Presets, skills, templates.
    pub catalog: &'a Catalog,
    /// Schema for merged configs.
    pub schema: &'a ConfigSchema,
    /// Override policy.
    pub policy: &'a Policy,
    /// Input limits (env entry count).
    pub limits: &'a InputLimits,
    /// The daemon's environment.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Resolver<'_> {
    /// Resolves `req` into a spec; nothing runs.
    pub fn resolve(&self, req: &SpawnRequest) -> Result<WorkerSpec, ResolveError> {
        let empty = Value::Object(Default::default());
        let patch = req.worker_config_override.as_ref().unwrap_or(&empty);
        let (config_json, config) = match &req.worker_config_id {
            Some(id) => {
                let preset = self
                    .catalog
                    .presets
                    .get(id)
                    .ok_or_else(|| ResolveError::UnknownPreset(id.clone()))?;
                let merged = merge(&preset.json, patch);
                let config = self.validate(&merged)?;
                self.policy
                    .check_override(&preset.config, &config)
                    .map_err(|v| ResolveError::Policy {
                        field: v.field,
                        message: v.message,
                    })?;
                (merged, config)
            }
            None => {
                // Policy first: a disabled inline config needs no schema errors.
                if !self.policy.allow_inline_configs {
                    return Err(ResolveError::Policy {
                        field: "worker_config_id".into(),
                        message: "worker_config_id is required: inline configs are disabled on this daemon".into(),
                    });
                }
                let config = self.validate(patch)?;
                self.policy
                    .check_inline(&config)
                    .map_err(|v| ResolveError::Policy {
                        field: v.field,
                        message: v.message,
                    })?;
                (patch.clone(), config)
            }
        };
        let files = render(self.catalog, &config)?;

        let mut env = Vec::new();
        for (name, value) in &config.env {
            env.push(match value {
                EnvValue::Plain(v) => EnvVar {
                    name: name.clone(),
                    value: v.clone(),
                    secret: false,
                },
                EnvValue::FromEnv { from_env } => EnvVar {
                    name: name.clone(),
                    value: (self.env)(from_env).ok_or_else(|| ResolveError::MissingEnv {
                        field: format!("env.{name}"),
                        from_env: from_env.clone(),
                    })?,
                    secret: true,
                },
            });
        }
        let mut model_keys = Vec::new();
        for route in crate::model::egress::routes(&config.model_api) {
            let value = (self.env)(&route.from_env).ok_or_else(|| ResolveError::MissingEnv {
                field: format!("model_api.{}.key", route.name),
                from_env: route.from_env.clone(),
            })?;
            model_keys.push((route.key_env, value));
        }
        let command: Vec<String> = config
            .agent
            .command
            .iter()
            .map(|a| {
                if a == "{prompt}" {
                    req.task.prompt.clone()
                } else {
                    a.clone()
                }
            })
            .collect();
        let prompt_at = config
            .agent
            .command
            .iter()
            .position(|a| a == "{prompt}")
            .unwrap_or(command.len());
        let conversation = match &config.agent.conversation {
            Some(c) => c.declared().cloned(),
            None => self
                .catalog
                .layouts
                .get(&config.agent.kind)
                .and_then(|l| l.conversation.clone()),
        };
        let workspace = crate::model::workspace::plan(
            &req.request_id,
            config.workspace.as_ref(),
            &config.artifacts,
            req.task.repo.as_ref(),
            &self.policy.repo_local_roots,
        )
        .map_err(|(field, message)| ResolveError::Repo {
            message: format!("{field}: {message}"),
            field,
        })?;
        let workspace = workspace.map(|mut w| {
            w.note_rendered(
                files
                    .iter()
                    .map(|f| (f.path.as_str(), f.content.as_bytes())),
            );
            w
        });
        if let Some(c) = workspace
            .as_ref()
            .and_then(|w| w.repo.as_ref())
            .and_then(|r| r.credentials.as_ref())
        {
            if (self.env)(&c.from_env).is_none() {
                return Err(ResolveError::MissingEnv {
                    field: "workspace.credentials".into(),
                    from_env: c.from_env.clone(),
                });
            }
        }
        let config_hash = config_hash(&config_json);
        let spec = WorkerSpec {
            request_id: req.request_id.clone(),
            preset_id: req.worker_config_id.clone(),
            session_id: req.task.session_id.clone(),
            user_id: req.task.user_id.clone(),
            config_json,
            config_hash,
            files,
            request_files: vec![RenderedFile {
                path: PROMPT_FILE.to_string(),
                content: req.task.prompt.clone(),
                mode: 0o600,
            }],
            env,
            command,
            prompt_at,
            conversation,
            model_keys,
            config,
            attempt: 1,
            workspace,
        };
        let mut spec = spec;
        let mut orchestrator = vec![
            ("ORCHESTRATOR_REQUEST_ID", req.request_id.clone()),
            ("ORCHESTRATOR_ALLOWED_TOOLS", spec.allowed_tools_env()),
            ("ORCHESTRATOR_PROMPT_FILE", PROMPT_FILE.to_string()),
            (
                "ORCHESTRATOR_TOOLS_FILE",
                crate::model::tools::TOOLS_FILE.to_string(),
            ),
        ];
        if let Some(u) = &req.task.user_id {
            orchestrator.push(("ORCHESTRATOR_USER_ID", u.clone()));
        }
        if let Some(s) = &req.task.session_id {
            orchestrator.push(("ORCHESTRATOR_SESSION_ID", s.clone()));
        }
        spec.env
            .extend(orchestrator.into_iter().map(|(n, v)| EnvVar {
                name: n.to_string(),
                value: v,
                secret: false,
            }));
        Ok(spec)
    }

    /// What `presets show ID` prints (and the API's `/v1/presets/{id}`):
    /// the merged config and the rendered files of a dry run of preset
    /// `id` with `patch`, secrets masked.
    pub fn show(&self, id: &str, patch: Option<Value>) -> Result<Value, String> {
        let req = SpawnRequest {
            request_id: "presets-show".into(),
            worker_config_id: Some(id.to_string()),
            worker_config_override: patch,
            task: crate::model::protocol::Task {
                user_id: None,
                prompt: "(prompt)".into(),
                session_id: None,
                repo: None,
            },
            dry_run: true,
        };
        let spec = self.resolve(&req).map_err(|e| e.to_string())?;
        let mut out =
            serde_json::json!({ "config": spec.config_view(), "files": spec.file_views() });
        spec.redactor().redact_json(&mut out);
        Ok(out)
    }

    /// The schema, then the input limit on env entries (before the policy:
    /// an input limit is checked before what the entries mean).
    fn validate(&self, v: &Value) -> Result<WorkerConfig, ResolveError> {
        let config = self.schema.validate(v).map_err(|e| ResolveError::Invalid {
            field: e.field().to_string(),
            message: e.messages(),
        })?;
        if config.env.len() > self.limits.max_env_entries {
            return Err(ResolveError::Invalid {
                field: "env".into(),
                message: format!(
                    "env has {} entries; at most {} are allowed",
                    config.env.len(),
                    self.limits.max_env_entries
                ),
            });
        }
        if let Some(list) = &config.egress.allow {
            for (i, p) in list.iter().enumerate() {
                if let Some(message) = crate::model::egress::pattern_problem(p) {
                    return Err(ResolveError::Invalid {
                        field: format!("egress.allow.{i}"),
                        message: format!("egress.allow.{i}: {message}"),
                    });
                }
            }
        }
        crate::model::workspace::check_config(config.workspace.as_ref(), &config.artifacts)
            .map_err(|(field, message)| ResolveError::Invalid {
                message: format!("{field}: {message}"),
                field,
            })?;
        // The tools must exist in the catalog in force (the schema knows
        // only their spelling).
        if let Some((i, message)) =
            crate::model::tools::check_grants(&config.allowed_tools, &self.catalog.tools)
        {
            return Err(ResolveError::Invalid {
                field: format!("allowed_tools.{i}"),
                message: format!("allowed_tools.{i}: {message}"),
            });
        }
        Ok(config)
    }
}
