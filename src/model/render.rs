//! Rendering of the agent's files: the instruction file along the template
//! fallback chain, one skill per allowed tool, and the agent layout's extra
//! files (Claude Code's `settings.json`).
//!
//! This module does no I/O. Templates see only the context built here: no
//! prompt (a prompt is data, never template source) and no environment.

use serde::Serialize;
use serde_json::{json, Value};

use crate::model::catalog::{is_safe_container_path, tera_error_chain, Catalog, BUILTIN_TEMPLATE};
use crate::model::config::WorkerConfig;
use crate::model::tools::{allowed_actions, allowed_groups, delivered, ToolGroup, TOOLS_FILE};

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
    MissingSkill(String),
    /// An allowed tool group is not declared (`skills/<group>.json`).
    #[error("allowed_tools: tool group {0:?} is not declared (no skills/{0}.json)")]
    UnknownTool(String),
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

/// The reference of a group granted only in part: its allowed commands
/// from its declaration, nothing of the others.
fn partial_skill(group: &ToolGroup, actions: &[String]) -> String {
    let name = &group.name;
    let mut out = format!(
        "---\nname: {name}\ndescription: {}\n---\n\n# `orchestrator {name}`\n\n{}\n\nThis worker may use these commands of the group, and no others:\n\n| Command | What it does |\n|---------|--------------|\n",
        group.description, group.description
    );
    for a in actions {
        let d = &group.actions[a];
        let usage = if d.usage.is_empty() {
            String::new()
        } else {
            format!(" {}", d.usage)
        };
        out.push_str(&format!(
            "| `orchestrator {name} {a}{usage}` | {}{} |\n",
            d.help,
            if d.read_only { " (read-only)" } else { "" }
        ));
    }
    out.push_str(
        "\nAdd the global flag `--json` **before** the group name for machine-readable output.\n\n\
         Exit codes: 0 success, 1 the backend refused or failed the call, 2 usage error, \
         69 backend unavailable (retry a few times), 77 permission denied (do not retry; \
         tell the user the action is not permitted for this worker).\n",
    );
    out
}

/// Renders every request-independent file for `config`.
pub fn render(catalog: &Catalog, config: &WorkerConfig) -> Result<Vec<RenderedFile>, RenderError> {
    let layout = catalog
        .layouts
        .get(&config.agent.kind)
        .ok_or_else(|| RenderError::UnknownAgentType(config.agent.kind.clone()))?;

    let allowed = allowed_groups(&config.allowed_tools);
    let denied: Vec<&str> = catalog
        .tools
        .keys()
        .filter(|t| !allowed.contains(t))
        .map(String::as_str)
        .collect();

    let mut files = Vec::new();
    let mut tools = Vec::new();
    // `group action` of the groups granted only in part: what Claude Code's
    // settings deny besides the groups not granted at all.
    let mut denied_actions: Vec<String> = Vec::new();
    for name in &allowed {
        let group = catalog
            .tools
            .get(name)
            .ok_or_else(|| RenderError::UnknownTool(name.clone()))?;
        let skill = catalog
            .skills
            .get(name)
            .ok_or_else(|| RenderError::MissingSkill(name.clone()))?;
        let actions = allowed_actions(&config.allowed_tools, group);
        let whole = actions.len() == group.actions.len();
        denied_actions.extend(
            group
                .actions
                .keys()
                .filter(|a| !actions.contains(a))
                .map(|a| format!("{name} {a}")),
        );
        let path = layout.skill_path.replace("{tool}", name);
        let listed: Vec<Value> = actions
            .iter()
            .map(|a| {
                let d = &group.actions[a];
                json!({"name": a, "help": d.help, "usage": d.usage, "read_only": d.read_only})
            })
            .collect();
        tools.push(json!({
            "name": name,
            "description": if whole { skill.description.clone() } else { group.description.clone() },
            "skill_path": path,
            "actions": listed,
            "whole": whole,
        }));
        files.push(RenderedFile {
            path,
            // A group granted only in part gets its reference made from its
            // declaration: the skill's prose would name the actions it may
            // not use.
            content: if whole {
                skill.content.clone()
            } else {
                partial_skill(group, &actions)
            },
            mode: 0o644,
        });
    }
    if !allowed.is_empty() {
        files.push(RenderedFile {
            path: TOOLS_FILE.to_string(),
            content: serde_json::to_string_pretty(&delivered(
                &catalog.tools,
                &config.allowed_tools,
            ))
            .expect("JSON values serialize"),
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
        "denied_actions": denied_actions,
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
