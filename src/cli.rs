//! The command line of the `workers-spawner` binary (OPERATIONS.md) and the
//! implementations of its offline subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::catalog::Catalog;
use crate::config::ConfigSchema;
use crate::loader::{self, CatalogDirs};
use crate::protocol::{SpawnRequest, Task};
use crate::settings::{Settings, SettingsArgs};
use crate::spec::Resolver;

/// Runs CLI coding agents in isolated Docker containers, driven by Redis streams.
#[derive(Debug, Parser)]
#[command(name = "workers-spawner", version)]
pub struct Cli {
    /// Settings flags shared by every subcommand.
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: consume spawn requests, run workers, publish results and events.
    Serve,
    /// Preset tools.
    #[command(subcommand)]
    Presets(PresetsCommand),
    /// Publish a spawn request (and with --follow, print its events and wait).
    Spawn {
        /// Preset id.
        #[arg(long)]
        preset: String,
        /// Prompt text.
        #[arg(long)]
        prompt: String,
        /// Session id.
        #[arg(long)]
        session: Option<String>,
        /// JSON merge patch over the preset.
        #[arg(long = "override")]
        override_json: Option<String>,
        /// Request id (default: generated).
        #[arg(long)]
        request_id: Option<String>,
        /// Print events and wait for the result.
        #[arg(long)]
        follow: bool,
    },
    /// Run one worker straight against Docker, no Redis; prints the result.
    Run {
        /// Preset id.
        #[arg(long)]
        preset: String,
        /// Prompt text.
        #[arg(long)]
        prompt: String,
        /// JSON merge patch over the preset.
        #[arg(long = "override")]
        override_json: Option<String>,
    },
    /// List the containers this system manages.
    Ps,
    /// Publish a cancel for a request on the control stream.
    Cancel {
        /// Request id to cancel.
        request_id: String,
    },
}

/// `presets` subcommands.
#[derive(Debug, Subcommand)]
pub enum PresetsCommand {
    /// Validate every preset in DIR (default: the presets dir setting).
    Validate {
        /// Directory of preset files.
        dir: Option<PathBuf>,
    },
    /// Print the merged config and rendered files a spawn of ID would produce.
    Show {
        /// Preset id.
        id: String,
        /// JSON merge patch over the preset.
        #[arg(long = "override")]
        override_json: Option<String>,
    },
}

/// Catalog directories named by `settings`.
pub fn catalog_dirs(settings: &Settings) -> CatalogDirs {
    CatalogDirs {
        presets: settings.presets_dir.clone(),
        skills: settings.skills_dir.clone(),
        templates: settings.templates_dir.clone(),
    }
}

/// `presets validate`: exit code 0 only when every preset file is valid.
pub fn presets_validate(settings: &Settings, dir: Option<PathBuf>) -> i32 {
    let mut dirs = catalog_dirs(settings);
    if let Some(d) = dir {
        dirs.presets = d;
    }
    let schema = ConfigSchema::new();
    let (catalog, issues) = loader::load(&dirs, &schema, None);
    let mut bad = 0;
    for issue in &issues {
        bad += 1;
        match &issue.field {
            Some(f) => eprintln!("{}: field {f}: {}", issue.file, issue.message),
            None => eprintln!("{}: {}", issue.file, issue.message),
        }
    }
    // A preset is only usable if it renders too (agent type, skills, templates).
    for (id, preset) in &catalog.presets {
        if let Err(e) = crate::render::render(&catalog, &preset.config) {
            bad += 1;
            eprintln!("presets/{id}.json: {e}");
        }
    }
    if bad == 0 {
        println!(
            "{} presets valid in {}",
            catalog.presets.len(),
            dirs.presets.display()
        );
        0
    } else {
        eprintln!("{bad} problem(s) found");
        1
    }
}

/// `presets show`: prints `{ "config", "files" }`; exit code 1 on refusal.
pub fn presets_show(settings: &Settings, id: &str, override_json: Option<&str>) -> i32 {
    let schema = ConfigSchema::new();
    let (catalog, _) = loader::load(&catalog_dirs(settings), &schema, None);
    match show(settings, &catalog, &schema, id, override_json) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn show(
    settings: &Settings,
    catalog: &Catalog,
    schema: &ConfigSchema,
    id: &str,
    override_json: Option<&str>,
) -> Result<serde_json::Value, String> {
    let patch = override_json
        .map(|s| serde_json::from_str(s).map_err(|e| format!("--override: not JSON: {e}")))
        .transpose()?;
    if patch
        .as_ref()
        .is_some_and(|p: &serde_json::Value| !p.is_object())
    {
        return Err("--override: must be a JSON object".into());
    }
    let req = SpawnRequest {
        request_id: "presets-show".into(),
        worker_config_id: Some(id.to_string()),
        worker_config_override: patch,
        task: Task {
            user_id: None,
            prompt: "(prompt)".into(),
            session_id: None,
        },
        dry_run: true,
    };
    // Showing a preset must work where its secrets are not set.
    let env = |k: &str| Some(std::env::var(k).unwrap_or_else(|_| format!("<unset: {k}>")));
    let resolver = Resolver {
        catalog,
        schema,
        policy: &settings.policy,
        limits: &settings.limits,
        env: &env,
    };
    let spec = resolver.resolve(&req).map_err(|e| e.to_string())?;
    let mut out = serde_json::json!({ "config": spec.config_view(), "files": spec.file_views() });
    spec.redactor().redact_json(&mut out);
    Ok(out)
}
