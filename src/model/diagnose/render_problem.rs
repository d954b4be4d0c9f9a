//! A render failure of a preset in words, naming the file looked for.

use super::words::did_you_mean;
use crate::model::catalog::Catalog;
use crate::model::config::{FieldError, WorkerConfig};

/// A render failure of a preset, in words (`agent.type` with the known
/// types, `allowed_tools` with the skill file looked for).
pub fn render_problem(
    catalog: &Catalog,
    config: &WorkerConfig,
    e: &crate::model::render::RenderError,
    skills_dir: &str,
    templates_dir: &str,
) -> FieldError {
    use crate::model::render::RenderError;
    match e {
        RenderError::UnknownAgentType(t) => {
            let known: Vec<&str> = catalog.layouts.keys().map(String::as_str).collect();
            let list = if known.is_empty() {
                " (the templates directory has no agent layouts at all)".to_string()
            } else {
                format!(
                    " (known agent types: {}{})",
                    known.join(", "),
                    did_you_mean(t, &known)
                )
            };
            FieldError {
                field: "agent.type".into(),
                message: format!(
                    "agent.type {t:?} is not an agent type: there is no {}{list}",
                    join_path(templates_dir, &format!("{t}/agent.json"))
                ),
            }
        }
        RenderError::MissingSkill(tool) => FieldError {
            field: "allowed_tools".into(),
            message: format!(
                "allowed_tools: tool \"{tool}\" has no skill file {} (every allowed tool needs one)",
                join_path(skills_dir, &format!("{tool}.md"))
            ),
        },
        RenderError::UnknownTool(tool) => FieldError {
            field: "allowed_tools".into(),
            message: format!(
                "allowed_tools: tool group \"{tool}\" is not declared: there is no {}",
                join_path(skills_dir, &format!("{tool}.json"))
            ),
        },
        other => FieldError {
            field: match other {
                RenderError::Template { .. } => "agent.type".into(),
                _ => "(root)".into(),
            },
            message: format!(
                "{} (agent type {:?}, tools {})",
                other,
                config.agent.kind,
                config.allowed_tools.join(", ")
            ),
        },
    }
}

fn join_path(dir: &str, rest: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{rest}")
    } else {
        format!("{dir}/{rest}")
    }
}
