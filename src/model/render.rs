//! Rendering of the agent's files: the instruction file along the template
//! fallback chain, one skill per allowed tool, and the agent layout's extra
//! files (Claude Code's `settings.json`).
//!
//! This module does no I/O. Templates see only the context built here: no
//! prompt (a prompt is data, never template source) and no environment.

use serde::Serialize;
use serde_json::json;

use crate::model::catalog::{is_safe_container_path, tera_error_chain, Catalog, BUILTIN_TEMPLATE};
use crate::model::config::{Tool, WorkerConfig};

/// The agent's working directory in the container.
pub const WORKSPACE: &str = "/workspace";
/// The worker user's home in the container.
pub const HOME: &str = "/home/worker";
/// Where the request's prompt is written.
pub const PROMPT_FILE: &str = "/home/worker/.orchestrator/prompt.md";

/// A file to place in the container before the agent starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedFile {
    /// Absolute path in the container.
    pub path: String,
    /// Content.
    pub content: String,
    /// Unix mode.
    pub mode: u32,
}

/// Why rendering failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// No `templates/<type>/agent.json` for the config's agent type.
    #[error("agent.type: unknown agent type {0:?} (no templates/{0}/agent.json)")]
    UnknownAgentType(String),
    /// An allowed tool has no skill file.
    #[error("allowed_tools: no skill file skills/{0}.md for allowed tool {0}")]
    MissingSkill(Tool),
    /// A template failed to render.
    #[error("template {template}: {message}")]
    Template {
        /// Template name.
        template: String,
        /// Tera's message.
        message: String,
    },
    /// A rendered path is unsafe.
    #[error("path {0:?} escapes the allowed roots")]
    UnsafePath(String),
}

/// The instruction template names tried for `config`, most specific first.
pub fn template_chain(config: &WorkerConfig) -> Vec<String> {
    let t = &config.agent.kind;
    let mut chain = Vec::new();
    if let Some(role) = &config.role {
        if let Some(locale) = &config.locale {
            chain.push(format!("{t}/{role}.{locale}.md.tera"));
        }
        chain.push(format!("{t}/{role}.md.tera"));
    }
    if let Some(locale) = &config.locale {
        chain.push(format!("{t}/default.{locale}.md.tera"));
    }
    chain.push(format!("{t}/default.md.tera"));
    chain.push("default.md.tera".to_string());
    chain.push(BUILTIN_TEMPLATE.to_string());
    chain
}

/// The first template of the chain that exists in `catalog`.
pub fn pick_template(catalog: &Catalog, config: &WorkerConfig) -> String {
    template_chain(config)
        .into_iter()
        .find(|n| n == BUILTIN_TEMPLATE || catalog.has_template(n))
        .expect("the chain ends with the built-in template")
}

/// Renders every request-independent file for `config`.
pub fn render(catalog: &Catalog, config: &WorkerConfig) -> Result<Vec<RenderedFile>, RenderError> {
    let layout = catalog
        .layouts
        .get(&config.agent.kind)
        .ok_or_else(|| RenderError::UnknownAgentType(config.agent.kind.clone()))?;

    let mut allowed: Vec<Tool> = config.allowed_tools.clone();
    allowed.sort();
    let denied: Vec<&str> = Tool::ALL
        .iter()
        .filter(|t| !allowed.contains(t))
        .map(|t| t.as_str())
        .collect();

    let mut files = Vec::new();
    let mut tools = Vec::new();
    for tool in &allowed {
        let skill = catalog
            .skills
            .get(tool)
            .ok_or(RenderError::MissingSkill(*tool))?;
        let path = layout.skill_path.replace("{tool}", tool.as_str());
        tools.push(
            json!({"name": tool.as_str(), "description": skill.description, "skill_path": path}),
        );
        files.push(RenderedFile {
            path,
            content: skill.content.clone(),
            mode: 0o644,
        });
    }

    let context = json!({
        "worker": {
            "id": config.id,
            "name": config.name,
            "role": config.role.clone().unwrap_or_default(),
            "locale": config.locale.clone().unwrap_or_default(),
            "agent_type": config.agent.kind,
        },
        "tools": tools,
        "denied_tools": denied,
        "has_internet": config.has_internet,
        "limits": {
            "timeout_sec": config.limits.timeout_sec,
            "ttl_sec": config.limits.ttl_sec,
            "cpu": config.limits.cpu,
            "memory": config.limits.memory,
        },
        "paths": {"workspace": WORKSPACE, "prompt_file": PROMPT_FILE},
    });
    let context = tera::Context::from_value(context).expect("the context is an object");
    let render_one = |name: &str| {
        catalog
            .tera
            .render(name, &context)
            .map_err(|e| RenderError::Template {
                template: name.to_string(),
                message: tera_error_chain(&e),
            })
    };

    let instructions = pick_template(catalog, config);
    files.insert(
        0,
        RenderedFile {
            path: layout.instructions_path.clone(),
            content: render_one(&instructions)?,
            mode: 0o644,
        },
    );
    for extra in &layout.extra_files {
        files.push(RenderedFile {
            path: extra.path.clone(),
            content: render_one(&format!("{}/{}", config.agent.kind, extra.template))?,
            mode: 0o644,
        });
    }
    if let Some(bad) = files.iter().find(|f| !is_safe_container_path(&f.path)) {
        return Err(RenderError::UnsafePath(bad.path.clone()));
    }
    Ok(files)
}
