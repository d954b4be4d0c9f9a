//! The command line of the `workers-spawner` binary (OPERATIONS.md) and the
//! implementations of its offline subcommands.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::adapters::loader::{self, CatalogDirs};
use crate::model::catalog::Catalog;
use crate::model::config::ConfigSchema;
use crate::model::spec::Resolver;
use crate::settings::{Origins, Settings, SettingsArgs};

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
    /// Read the artifact store (transcripts, patches, declared artifacts).
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
}

/// `artifacts` subcommands.
#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// List a request's artifacts: name, size, sha256, URI.
    Ls {
        /// The request id.
        request_id: String,
    },
    /// Write an artifact's content to stdout (or to --output).
    Get {
        /// The request id.
        request_id: String,
        /// The artifact's name (`transcript.log`, `patch.diff`, `reports/a.txt`).
        name: String,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// `presets` subcommands.
#[derive(Debug, Subcommand)]
pub enum PresetsCommand {
    /// Validate every preset in DIR (default: the presets dir setting).
    ///
    /// Skills and templates come from --skills-dir / --templates-dir, the
    /// environment or the config file; when none of those names them, from
    /// `skills/` and `templates/` next to DIR if they exist.
    Validate {
        /// Directory of preset files.
        dir: Option<PathBuf>,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        strict: bool,
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

/// The directories `presets validate` reads: the presets from `dir` (or
/// the setting); skills and templates from the settings when they were
/// given (flag, environment, config file), else from `skills/` and
/// `templates/` next to the presets directory when those exist, else the
/// defaults (`./skills`, `./templates`).
pub fn validate_dirs(
    settings: &Settings,
    origins: &Origins,
    dir: Option<PathBuf>,
    exists: &dyn Fn(&Path) -> bool,
) -> CatalogDirs {
    let mut dirs = catalog_dirs(settings);
    if let Some(d) = dir {
        dirs.presets = d;
    }
    let presets = dirs.presets.clone();
    let sibling = |name: &str| presets.parent().map(|p| p.join(name)).filter(|p| exists(p));
    if !origins.is_given("skills_dir") {
        if let Some(s) = sibling("skills") {
            dirs.skills = s;
        }
    }
    if !origins.is_given("templates_dir") {
        if let Some(t) = sibling("templates") {
            dirs.templates = t;
        }
    }
    dirs
}

/// `presets validate`: one line per problem on stderr (`<file>: <message>`,
/// warnings as `<file>: warning: <message>`), then a count; exit code 0
/// only when every preset file is valid (and, with `strict`, no warning).
pub fn presets_validate(
    settings: &Settings,
    origins: &Origins,
    dir: Option<PathBuf>,
    strict: bool,
) -> i32 {
    let dirs = validate_dirs(settings, origins, dir, &|p: &Path| p.is_dir());
    let schema = ConfigSchema::new();
    let (catalog, issues) = loader::load(&dirs, &schema, None);
    // (file, is a warning, message); a file's lines stay together.
    let mut lines: Vec<(String, bool, String)> = issues
        .into_iter()
        .map(|i| (i.file, false, i.message))
        .collect();
    // A preset is only usable if it renders too (agent type, skills,
    // templates). An unreadable directory is reported once above, not
    // again for every preset that needs it.
    let skills_read = std::fs::read_dir(&dirs.skills).is_ok();
    let templates_read = std::fs::read_dir(&dirs.templates).is_ok();
    let (skills_dir, templates_dir) = (
        dirs.skills.display().to_string(),
        dirs.templates.display().to_string(),
    );
    for (id, preset) in &catalog.presets {
        if let Err(e) = crate::model::render::render(&catalog, &preset.config) {
            use crate::model::render::RenderError;
            match e {
                RenderError::MissingSkill(_) if !skills_read => continue,
                RenderError::UnknownAgentType(_) if !templates_read => continue,
                _ => {}
            }
            let p = crate::model::diagnose::render_problem(
                &catalog,
                &preset.config,
                &e,
                &skills_dir,
                &templates_dir,
            );
            lines.push((
                dirs.path_of(&format!("presets/{id}.json")),
                false,
                p.message,
            ));
        }
    }
    let ctx = crate::model::diagnose::Context {
        max_concurrent: Some(settings.max_concurrent),
    };
    for w in dirs.with_paths(crate::model::diagnose::catalog_warnings(&catalog, &ctx)) {
        lines.push((w.file, true, w.message));
    }
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut bad, mut warned) = (0, 0);
    for (file, warning, message) in &lines {
        if *warning {
            warned += 1;
            eprintln!("{file}: warning: {message}");
        } else {
            bad += 1;
            eprintln!("{file}: {message}");
        }
    }
    let warnings = match warned {
        0 => String::new(),
        1 => ", 1 warning".to_string(),
        n => format!(", {n} warnings"),
    };
    if bad == 0 {
        println!(
            "{} presets valid in {} (skills: {skills_dir}, templates: {templates_dir}){warnings}",
            catalog.presets.len(),
            dirs.presets.display()
        );
        if strict && warned > 0 {
            eprintln!("--strict: warnings count as problems");
            return 1;
        }
        0
    } else {
        eprintln!("{bad} problem(s) found{warnings}");
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
    // Showing a preset must work where its secrets are not set.
    let env = |k: &str| Some(std::env::var(k).unwrap_or_else(|_| format!("<unset: {k}>")));
    let resolver = Resolver {
        catalog,
        schema,
        policy: &settings.policy,
        limits: &settings.limits,
        env: &env,
    };
    resolver.show(id, patch)
}

/// Sets up JSON logs on stderr, level from `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// `serve`: runs the daemon until SIGTERM or SIGINT.
pub async fn serve(settings: Settings) -> i32 {
    let daemon = match crate::supervisor::Supervisor::start(settings.clone()).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 1;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&settings.http_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "workers-spawner: cannot listen on {}: {e}",
                settings.http_addr
            );
            return 1;
        }
    };
    let shutdown = daemon.shutdown_token();
    let gateway = daemon.gateway();
    daemon.connect_gateway(gateway.clone());
    for addr in daemon.gateway_addrs() {
        match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => {
                tracing::info!(addr = %addr, "gateway listening");
                tokio::spawn(crate::http::gateway::serve(
                    l,
                    gateway.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                eprintln!("workers-spawner: cannot listen for the gateway on {addr}: {e}");
                return 1;
            }
        }
    }
    if !settings.api_addr.is_empty() {
        let api = match daemon.api() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("workers-spawner: {e}");
                return 1;
            }
        };
        let listener = match tokio::net::TcpListener::bind(&settings.api_addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "workers-spawner: cannot listen for the API on {}: {e}",
                    settings.api_addr
                );
                return 1;
            }
        };
        let api_shutdown = shutdown.clone();
        tracing::info!(addr = %settings.api_addr, "API listening");
        tokio::spawn(async move {
            let _ = axum::serve(listener, crate::http::api::router(api))
                .with_graceful_shutdown(async move { api_shutdown.cancelled().await })
                .await;
        });
    }
    let http_shutdown = shutdown.clone();
    let router = crate::http::health::router(daemon.health());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await;
    });
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; stopping intake");
        shutdown.cancel();
    });
    tracing::info!(instance = %settings.instance_id, prefix = %settings.stream_prefix, http = %settings.http_addr, "workers-spawner serving");
    daemon.run().await;
    0
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn spawn_request_json(
    request_id: &str,
    preset: &str,
    prompt: &str,
    session: Option<&str>,
    override_json: Option<&str>,
) -> Result<String, String> {
    let patch: Option<serde_json::Value> = override_json
        .map(|s| serde_json::from_str(s).map_err(|e| format!("--override: not JSON: {e}")))
        .transpose()?;
    let mut task = serde_json::json!({ "prompt": prompt });
    if let Some(s) = session {
        task["session_id"] = serde_json::json!(s);
    }
    let mut req =
        serde_json::json!({ "request_id": request_id, "worker_config_id": preset, "task": task });
    if let Some(p) = patch {
        req["worker_config_override"] = p;
    }
    Ok(req.to_string())
}

fn generated_request_id() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("cli-{}-{n:016x}", chrono::Utc::now().format("%Y%m%d%H%M%S"))
}

async fn connect_bus(settings: &Settings) -> Result<crate::adapters::bus::Bus, String> {
    let names = crate::adapters::bus::StreamNames::new(&settings.stream_prefix, &settings.group);
    crate::adapters::bus::Bus::connect(&settings.redis_url, names, settings.stream_maxlen)
        .await
        .map_err(|e| format!("cannot reach Redis: {e}"))
}

/// What `spawn` was asked to publish.
pub struct SpawnArgs<'a> {
    /// Preset id.
    pub preset: &'a str,
    /// Prompt.
    pub prompt: &'a str,
    /// Session id.
    pub session: Option<&'a str>,
    /// Override JSON.
    pub override_json: Option<&'a str>,
    /// Request id.
    pub request_id: Option<&'a str>,
    /// Wait for the result.
    pub follow: bool,
}

/// `spawn`: publishes a request; with `follow`, prints its events and
/// exits 0 only when the result is `succeeded`.
pub async fn spawn(settings: &Settings, args: SpawnArgs<'_>) -> i32 {
    use std::io::IsTerminal;
    let rid = args
        .request_id
        .map(str::to_string)
        .unwrap_or_else(generated_request_id);
    let json = match spawn_request_json(
        &rid,
        args.preset,
        args.prompt,
        args.session,
        args.override_json,
    ) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 2;
        }
    };
    let bus = match connect_bus(settings).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 1;
        }
    };
    // Start reading before publishing so no event is missed.
    let (events, results) = (bus.names.events.clone(), bus.names.result.clone());
    let mut last = vec![
        bus.tail_id(&events).await.unwrap_or_else(|_| "0-0".into()),
        bus.tail_id(&results).await.unwrap_or_else(|_| "0-0".into()),
    ];
    if let Err(e) = bus.publish_spawn(&json).await {
        eprintln!("workers-spawner: publishing failed: {e}");
        return 1;
    }
    eprintln!("published request {rid}");
    if !args.follow {
        println!("{rid}");
        return 0;
    }
    let block = std::time::Duration::from_secs(1);
    let mut conn = match bus.blocking_connection(block).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 1;
        }
    };
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    loop {
        let read = bus
            .read_after(&mut conn, &[&events, &results], &last, block)
            .await;
        let batches = match read {
            Ok(b) => b,
            Err(e) => {
                eprintln!("workers-spawner: reading failed: {e}; retrying");
                tokio::time::sleep(block).await;
                if let Ok(c) = bus.blocking_connection(block).await {
                    conn = c;
                }
                continue;
            }
        };
        if batches.is_empty() && tty {
            eprint!("\r… waiting ({}s)", started.elapsed().as_secs());
        }
        for (stream, entries) in batches {
            for e in entries {
                let idx = if stream == events { 0 } else { 1 };
                last[idx] = e.id.clone();
                let Some(data) = e.data else { continue };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else {
                    continue;
                };
                if v.get("request_id").and_then(|r| r.as_str()) != Some(rid.as_str()) {
                    continue;
                }
                if idx == 0 {
                    if tty {
                        eprint!("\r");
                    }
                    println!("{}", v);
                } else {
                    println!("{}", v);
                    let ok = v.get("status").and_then(|s| s.as_str()) == Some("succeeded");
                    return if ok { 0 } else { 1 };
                }
            }
        }
    }
}

/// `cancel`: publishes a cancel command for a request.
pub async fn cancel(settings: &Settings, request_id: &str) -> i32 {
    let bus = match connect_bus(settings).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 1;
        }
    };
    let json = serde_json::json!({"command": "cancel", "request_id": request_id}).to_string();
    match bus.publish_control(&json).await {
        Ok(()) => {
            println!("cancel published for {request_id}");
            0
        }
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            1
        }
    }
}

/// `artifacts ls` / `artifacts get`: reads the artifact store the
/// settings name (the daemon need not run).
pub async fn artifacts(settings: &Settings, command: ArtifactsCommand) -> i32 {
    let store = match crate::worker::workspace::from_settings(settings) {
        Ok(w) => w.artifacts.clone(),
        Err(e) => {
            eprintln!("workers-spawner: artifacts: {e}");
            return 1;
        }
    };
    match command {
        ArtifactsCommand::Ls { request_id } => match store.list(&request_id).await {
            Ok(list) => {
                println!("{:<40} {:>12}  {:<64}  URI", "NAME", "SIZE", "SHA256");
                for a in list {
                    println!("{:<40} {:>12}  {:<64}  {}", a.name, a.size, a.sha256, a.uri);
                }
                0
            }
            Err(e) => {
                eprintln!("workers-spawner: {e}");
                1
            }
        },
        ArtifactsCommand::Get {
            request_id,
            name,
            output,
        } => match store.get(&request_id, &name).await {
            Ok(bytes) => {
                let written = match output {
                    Some(path) => std::fs::write(&path, &bytes),
                    None => {
                        use std::io::Write;
                        std::io::stdout().write_all(&bytes)
                    }
                };
                match written {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("workers-spawner: {e}");
                        1
                    }
                }
            }
            Err(e) => {
                eprintln!("workers-spawner: {e}");
                1
            }
        },
    }
}

/// `ps`: lists managed containers.
pub async fn ps(settings: &Settings) -> i32 {
    use crate::model::container::labels;
    let engine = match crate::adapters::engine::Engine::connect(
        &settings
            .docker_target()
            .unwrap_or(crate::model::docker_host::DockerTarget::Local),
    )
    .await
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("workers-spawner: cannot reach the Docker engine: {e}");
            return 1;
        }
    };
    let list = match engine.list_managed(&settings.stream_prefix).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 1;
        }
    };
    let now = chrono::Utc::now().timestamp();
    println!(
        "{:<40} {:<24} {:<20} {:<8} {:<10} {:<10}",
        "CONTAINER", "REQUEST", "PRESET", "STATE", "AGE", "DEADLINE"
    );
    for c in list {
        let l = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
        let age = l(labels::RECEIVED_MS)
            .parse::<i64>()
            .map(|ms| format!("{}s", now - ms / 1000))
            .unwrap_or_default();
        let deadline = l(labels::DEADLINE)
            .parse::<i64>()
            .map(|d| format!("{:+}s", d - now))
            .unwrap_or_default();
        let state = if c.running {
            "running"
        } else if c.started {
            "exited"
        } else {
            "created"
        };
        println!(
            "{:<40} {:<24} {:<20} {:<8} {:<10} {:<10}",
            c.name,
            l(labels::REQUEST_ID),
            l(labels::PRESET),
            state,
            age,
            deadline
        );
    }
    0
}

/// `run`: one worker straight against Docker, no Redis; prints events on
/// stderr and the result on stdout; exit 0 only when it succeeded.
pub async fn run(
    settings: &Settings,
    preset: &str,
    prompt: &str,
    override_json: Option<&str>,
) -> i32 {
    use crate::model::container::{create_body, request_container_name};
    use crate::worker::{self, Job, WorkerEnv};
    let rid = generated_request_id();
    let json = match spawn_request_json(&rid, preset, prompt, None, override_json) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 2;
        }
    };
    let req = match crate::model::protocol::parse_spawn_request(json.as_bytes(), &settings.limits) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 2;
        }
    };
    let schema = ConfigSchema::new();
    let (catalog, _) = loader::load(&catalog_dirs(settings), &schema, None);
    let env_lookup = |k: &str| std::env::var(k).ok();
    let resolver = Resolver {
        catalog: &catalog,
        schema: &schema,
        policy: &settings.policy,
        limits: &settings.limits,
        env: &env_lookup,
    };
    let spec = match resolver.resolve(&req) {
        // A local run has no egress socket: the bridge path, keys as env.
        Ok(s) => s.with_model_keys_as_env(),
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 2;
        }
    };
    let engine = match crate::adapters::engine::Engine::connect(
        &settings
            .docker_target()
            .unwrap_or(crate::model::docker_host::DockerTarget::Local),
    )
    .await
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("workers-spawner: cannot reach the Docker engine: {e}");
            return 1;
        }
    };
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let sink = crate::adapters::sink::Sink::print();
    let egress = match crate::supervisor::egress_for(settings, sink.clone(), metrics.clone()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 1;
        }
    };
    // A one-off run by a user who may not write the system folder keeps
    // its artifacts in the temp folder instead (and says so).
    let workspaces = match crate::worker::workspace::from_settings(settings) {
        Ok(w) => w,
        Err(e) => {
            // A private folder of its own (0700, a fresh name): a shared
            // fixed one could be prepared by another user.
            let private = match tempfile::Builder::new()
                .prefix("workers-spawner-")
                .tempdir()
            {
                Ok(d) => d.keep(),
                Err(e2) => {
                    eprintln!("workers-spawner: artifacts: {e}; and no temp folder: {e2}");
                    return 1;
                }
            };
            let mut s = settings.clone();
            s.artifacts_dir = private.join("artifacts");
            s.repo_cache_dir = private.join("repos");
            match crate::worker::workspace::from_settings(&s) {
                Ok(w) => {
                    eprintln!(
                        "workers-spawner: {e}; keeping artifacts in {} instead",
                        s.artifacts_dir.display()
                    );
                    w
                }
                Err(e) => {
                    eprintln!("workers-spawner: artifacts: {e}");
                    return 1;
                }
            }
        }
    };
    let env = WorkerEnv::new(engine.clone(), sink, metrics, settings, egress, workspaces);
    let name = request_container_name(&settings.stream_prefix, &rid);
    let deadline = worker::deadline_after(spec.config.limits.timeout_sec);
    let owner = crate::model::container::Owner {
        prefix: &settings.stream_prefix,
        instance: &settings.instance_id,
    };
    let received_ms = chrono::Utc::now().timestamp_millis();
    let mut ctx = crate::model::container::launch_context(
        &spec,
        owner,
        &name,
        deadline,
        received_ms,
        None,
        None,
    );
    let images = crate::adapters::images::ImageBuilder::new(engine.clone(), env.metrics.clone());
    ctx.image = match images
        .image_for(&spec.config, |line| eprintln!("{line}"))
        .await
    {
        Ok(image) => image,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 1;
        }
    };
    let id = match engine.create(&name, create_body(&spec, &ctx)).await {
        Ok(id) => id,
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            return 1;
        }
    };
    let at = worker::Placement {
        container_id: id.clone(),
        container_name: name,
        image: ctx.image.clone(),
    };
    let received = worker::Received::now(None);
    let job = Job::new(&spec, at, deadline, Some(&received), spec.redactor(), None);
    let mut files = spec.files.clone();
    files.extend(spec.request_files.iter().cloned());
    let job = match worker::start_container(
        &engine,
        &id,
        &files,
        &crate::model::container::withheld_env(&spec, &ctx),
        ctx.delivery,
    )
    .await
    {
        Ok(output) => job.with_output(output),
        Err(e) => {
            eprintln!("workers-spawner: {e}");
            let _ = engine.remove(&id).await;
            return 1;
        }
    };
    // Ctrl-C stops the worker like a cancel.
    let stop = job.stop.clone();
    let reason = job.stop_reason.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        *reason.lock().expect("lock") = Some(crate::worker::StopReason::Cancelled);
        stop.cancel();
    });
    let status = worker::supervise(&env, job, true).await;
    if status == crate::model::protocol::Status::Succeeded {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs_for(given: &[&str], dir: Option<&str>, existing: &[&str]) -> CatalogDirs {
        let settings = Settings {
            skills_dir: "/etc/ws/skills".into(),
            templates_dir: "/etc/ws/templates".into(),
            ..Settings::default()
        };
        let settings = if given.is_empty() {
            Settings::default()
        } else {
            settings
        };
        let exists = |p: &Path| existing.iter().any(|e| Path::new(e) == p);
        validate_dirs(
            &settings,
            &Origins::of(given),
            dir.map(PathBuf::from),
            &exists,
        )
    }

    #[test]
    fn validate_takes_skills_and_templates_next_to_the_presets_dir() {
        let d = dirs_for(
            &[],
            Some("/srv/ws/presets"),
            &["/srv/ws/skills", "/srv/ws/templates"],
        );
        assert_eq!(d.presets, PathBuf::from("/srv/ws/presets"));
        assert_eq!(d.skills, PathBuf::from("/srv/ws/skills"));
        assert_eq!(d.templates, PathBuf::from("/srv/ws/templates"));
        // Relative as given, and with a trailing slash.
        let d = dirs_for(
            &[],
            Some("../ws/presets/"),
            &["../ws/skills", "../ws/templates"],
        );
        assert_eq!(d.skills, PathBuf::from("../ws/skills"));
    }

    #[test]
    fn validate_keeps_the_defaults_when_nothing_is_next_to_the_presets_dir() {
        let d = dirs_for(&[], Some("/tmp/copy"), &[]);
        assert_eq!(d.presets, PathBuf::from("/tmp/copy"));
        assert_eq!(d.skills, PathBuf::from("./skills"));
        assert_eq!(d.templates, PathBuf::from("./templates"));
    }

    #[test]
    fn validate_uses_skills_and_templates_that_were_given() {
        let d = dirs_for(
            &["skills_dir", "templates_dir"],
            Some("/srv/ws/presets"),
            &["/srv/ws/skills", "/srv/ws/templates"],
        );
        assert_eq!(d.skills, PathBuf::from("/etc/ws/skills"));
        assert_eq!(d.templates, PathBuf::from("/etc/ws/templates"));
        // Only one given: the other still comes from next door.
        let d = dirs_for(
            &["skills_dir"],
            Some("/srv/ws/presets"),
            &["/srv/ws/templates"],
        );
        assert_eq!(d.skills, PathBuf::from("/etc/ws/skills"));
        assert_eq!(d.templates, PathBuf::from("/srv/ws/templates"));
    }
}
