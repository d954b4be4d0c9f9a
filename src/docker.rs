//! Docker: the container of a worker, from create to remove, through the
//! Engine API (bollard). This is the only module that talks to Docker.
//!
//! It never touches a container without the managed-by label, and every
//! container it creates carries the labels of PROTOCOL.md section 5, which
//! are the durable record of the work (see `ARCHITECTURE.md`).

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions, UploadToContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::render::RenderedFile;
use crate::spec::WorkerSpec;

/// Label keys (PROTOCOL.md section 5).
pub mod labels {
    /// `true` on every container the daemon manages.
    pub const MANAGED: &str = "io.workers-spawner.managed";
    /// The stream prefix of the setup that owns it.
    pub const PREFIX: &str = "io.workers-spawner.stream-prefix";
    /// Request id (one-shot) or first request id (session).
    pub const REQUEST_ID: &str = "io.workers-spawner.request-id";
    /// Preset id.
    pub const PRESET: &str = "io.workers-spawner.preset";
    /// Config hash.
    pub const CONFIG_HASH: &str = "io.workers-spawner.config-hash";
    /// Owning daemon instance.
    pub const INSTANCE: &str = "io.workers-spawner.instance";
    /// Unix time after which the container must not run.
    pub const DEADLINE: &str = "io.workers-spawner.deadline";
    /// Session id, when a session container.
    pub const SESSION_ID: &str = "io.workers-spawner.session-id";
    /// Stream entry id of the request.
    pub const ENTRY_ID: &str = "io.workers-spawner.entry-id";
    /// Unix time (ms) the request was received.
    pub const RECEIVED_MS: &str = "io.workers-spawner.received-ms";
    /// `oneshot`, `session` or `pool`.
    pub const KIND: &str = "io.workers-spawner.kind";
    /// `stdin` when the files come through the delivery shim.
    pub const DELIVERY: &str = "io.workers-spawner.delivery";
}

/// Uid:gid the agent runs as.
pub const WORKER_USER: &str = "1000:1000";

/// A Docker failure.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The image does not exist locally (nothing is pulled).
    #[error("image {0:?} does not exist on this engine")]
    ImageNotFound(String),
    /// A container of that name already exists.
    #[error("container {0} already exists")]
    Conflict(String),
    /// The container does not exist.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// Writing to the container's attached stdin failed.
    #[error("writing the worker's files to its stdin: {0}")]
    Stdin(#[from] std::io::Error),
    /// Anything else from the engine or the transport.
    #[error("docker: {0}")]
    Api(#[from] bollard::errors::Error),
}

/// The write side of a container's attached stdin.
pub type Stdin = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

impl EngineError {
    /// Whether retrying later may help (transport or server trouble).
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Api(bollard::errors::Error::DockerResponseServerError {
                status_code,
                ..
            }) => *status_code >= 500,
            EngineError::Api(_) | EngineError::Stdin(_) => true,
            _ => false,
        }
    }
}

fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The container name for `id`: `<kind>-<id made Docker-safe, at most 64
/// chars>-<32 hex digits of SHA-256(id)>`.
///
/// Injective in `id`: the hash covers the exact id (128 bits of it), so two
/// ids that read alike once `:` became `_` (`a:b`, `a_b`), or an id that
/// spells another's hashed name (`a_b-6783a31e`), still get different
/// names. The readable part is only for people. A container found under a
/// name is still taken as the request's only when its labels say so.
pub fn container_name(kind: &str, id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let h = hex::encode(&Sha256::digest(id.as_bytes())[..16]);
    format!("{kind}-{clean}-{h}")
}

/// The container name of request `request_id` of the setup with stream
/// prefix `prefix`. Setups sharing one engine must not share names: the
/// default prefix hashes the request id alone, any other hashes
/// `<prefix>/<request id>` (`/` occurs in neither part, so the pair is
/// unambiguous and never equals a bare id).
pub fn request_container_name(prefix: &str, request_id: &str) -> String {
    if prefix == "workers" {
        container_name("ws", request_id)
    } else {
        container_name("ws", &format!("{prefix}/{request_id}"))
    }
}

/// What the container needs beyond the spec: names, labels, network.
#[derive(Debug, Clone)]
pub struct LaunchContext {
    /// Container name.
    pub name: String,
    /// Image actually run (a derived image when the preset has setup).
    pub image: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Extra env (`ORCHESTRATOR_API_URL`, key).
    pub extra_env: Vec<(String, String)>,
    /// Network mode (`none`, `bridge`, a network name).
    pub network_mode: String,
    /// Main process; `None` runs the spec's command.
    pub cmd: Option<Vec<String>>,
    /// How the files reach the container (see [`crate::delivery`]).
    pub delivery: FileDelivery,
}

/// How a container receives its files before the agent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileDelivery {
    /// Docker's archive API before the start (any image; one more mount of
    /// the root filesystem per container).
    Archive,
    /// A tar on the attached stdin, unpacked by the shim, which then runs
    /// the command (the image needs `sh` and `tar`).
    Stdin(crate::delivery::ShimMode),
}

/// Directories the agent writes to (volumes under a read-only root); the
/// rendered files go under them.
pub const WRITABLE_ROOTS: [&str; 2] = [crate::render::WORKSPACE, crate::render::HOME];

/// The secret env vars of `spec` that reach the container through the
/// delivery shim's env file instead of its config, so that `docker inspect`
/// never shows them: all of them with stdin delivery (unless one holds a
/// newline, which the env file cannot carry; then none), else none.
pub fn withheld_env(spec: &WorkerSpec, ctx: &LaunchContext) -> Vec<(String, String)> {
    if ctx.delivery == FileDelivery::Archive {
        return Vec::new();
    }
    let secrets: Vec<(String, String)> = spec
        .env
        .iter()
        .filter(|v| v.secret)
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    if crate::delivery::env_fits(&secrets) {
        secrets
    } else {
        Vec::new()
    }
}

/// The resource limits as the engine takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// `NanoCpus`.
    pub nano_cpus: i64,
    /// `Memory` and `MemorySwap`, bytes.
    pub memory: i64,
    /// `PidsLimit`.
    pub pids: i64,
}

/// `limits` in the engine's units, each clamped into the range the engine
/// enforces. To the engine 0 (or -1) means "no limit", so no value here is
/// ever 0, whatever reached this point: the schema and the policy refuse
/// such configs, and this is the last line.
pub fn engine_limits(limits: &crate::config::Limits) -> EngineLimits {
    use crate::config::{MAX_CPU, MAX_MEMORY_BYTES, MAX_PIDS, MIN_CPU, MIN_MEMORY_BYTES, MIN_PIDS};
    let cpu = if limits.cpu.is_finite() {
        limits.cpu.clamp(MIN_CPU, MAX_CPU)
    } else {
        MIN_CPU
    };
    let memory = limits
        .memory_bytes()
        .unwrap_or(MIN_MEMORY_BYTES)
        .clamp(MIN_MEMORY_BYTES, MAX_MEMORY_BYTES);
    EngineLimits {
        nano_cpus: (cpu * 1e9).round() as i64,
        memory: memory as i64,
        pids: limits.pids().clamp(MIN_PIDS, MAX_PIDS) as i64,
    }
}

/// The create body for `spec` under `ctx`, with the hardened defaults.
pub fn create_body(spec: &WorkerSpec, ctx: &LaunchContext) -> ContainerCreateBody {
    let limits = engine_limits(&spec.config.limits);
    let withheld = withheld_env(spec, ctx);
    let mut env: Vec<String> = spec
        .env
        .iter()
        .filter(|v| !withheld.iter().any(|(k, _)| k == &v.name))
        .map(|v| format!("{}={}", v.name, v.value))
        .collect();
    env.extend(ctx.extra_env.iter().map(|(k, v)| format!("{k}={v}")));
    env.push(format!("HOME={}", crate::render::HOME));
    let read_only = spec.config.security.read_only_root;
    let mut tmpfs = HashMap::new();
    // A read-only root keeps the workspace and home writable as anonymous
    // volumes: Docker fills a new one with the image's content, the archive
    // API may extract into it before start (unlike into a read-only root,
    // and unlike a tmpfs, which would hide what was extracted), and the
    // container's removal (`v=true`) deletes it.
    let mut volumes = HashMap::new();
    if read_only {
        tmpfs.insert("/tmp".to_string(), "rw,noexec,nosuid,size=256m".to_string());
        for dir in WRITABLE_ROOTS {
            volumes.insert(dir.to_string(), HashMap::new());
        }
    }
    let cmd = ctx.cmd.clone().unwrap_or_else(|| spec.command.clone());
    let mut labels = ctx.labels.clone();
    if let FileDelivery::Stdin(_) = ctx.delivery {
        labels.insert(labels::DELIVERY.to_string(), "stdin".to_string());
    }
    let (cmd, stdin) = match ctx.delivery {
        FileDelivery::Archive => (cmd, false),
        FileDelivery::Stdin(mode) => (crate::delivery::shim_command(&cmd, mode), true),
    };
    ContainerCreateBody {
        image: Some(ctx.image.clone()),
        cmd: Some(cmd),
        env: Some(env),
        user: Some(WORKER_USER.to_string()),
        working_dir: Some(crate::render::WORKSPACE.to_string()),
        labels: Some(labels),
        attach_stdin: Some(stdin),
        open_stdin: Some(stdin),
        // Docker closes the process's stdin when the daemon's attachment
        // ends: the shim's tar sees the end of the archive.
        stdin_once: Some(stdin),
        tty: Some(false),
        volumes: if volumes.is_empty() {
            None
        } else {
            Some(volumes)
        },
        network_disabled: Some(ctx.network_mode == "none"),
        host_config: Some(HostConfig {
            init: Some(true),
            nano_cpus: Some(limits.nano_cpus),
            memory: Some(limits.memory),
            memory_swap: Some(limits.memory),
            pids_limit: Some(limits.pids),
            cap_drop: Some(vec!["ALL".to_string()]),
            cap_add: Some(spec.config.security.cap_add.clone()),
            security_opt: Some(vec!["no-new-privileges:true".to_string()]),
            privileged: Some(false),
            readonly_rootfs: Some(read_only),
            tmpfs: if tmpfs.is_empty() { None } else { Some(tmpfs) },
            network_mode: Some(ctx.network_mode.clone()),
            ipc_mode: Some("private".to_string()),
            auto_remove: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A tar archive holding `files` (with their parent directories), owned by
/// the worker user, to be extracted at `/`.
pub fn files_tar(files: &[RenderedFile]) -> Vec<u8> {
    files_tar_at("/", files)
}

/// Splits `files` by the directory to extract them at: the writable root
/// (see [`WRITABLE_ROOTS`]) holding each, else `/`.
pub fn upload_groups(files: &[RenderedFile]) -> Vec<(String, Vec<RenderedFile>)> {
    let mut groups: Vec<(String, Vec<RenderedFile>)> = Vec::new();
    for f in files {
        let root = WRITABLE_ROOTS
            .iter()
            .find(|r| f.path.starts_with(&format!("{r}/")))
            .copied()
            .unwrap_or("/");
        match groups.iter_mut().find(|(r, _)| r == root) {
            Some((_, g)) => g.push(f.clone()),
            None => groups.push((root.to_string(), vec![f.clone()])),
        }
    }
    groups
}

/// A tar archive of `files` (all under `root`) with paths relative to
/// `root`, to be extracted at `root`.
pub fn files_tar_at(root: &str, files: &[RenderedFile]) -> Vec<u8> {
    let root = root.trim_end_matches('/');
    let mut dirs = std::collections::BTreeSet::new();
    let rel_of = |p: &str| -> String {
        p.strip_prefix(root)
            .unwrap_or(p)
            .trim_start_matches('/')
            .to_string()
    };
    for f in files {
        let rel = rel_of(&f.path);
        let mut acc = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            dirs.insert(acc.clone());
        }
    }
    let files: Vec<(String, &RenderedFile)> = files.iter().map(|f| (rel_of(&f.path), f)).collect();
    crate::delivery::worker_tar(&dirs, &files)
}

/// Docker's bridge option that turns inter-container communication off.
pub const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";

/// Driver options of the workers' networks: containers on them reach the
/// gateway (on the host's side of the bridge) and, with `has_internet`,
/// the internet, but not each other.
pub fn worker_network_options() -> HashMap<String, String> {
    HashMap::from([(ICC_OPTION.to_string(), "false".to_string())])
}

/// Whether a bridge network with these driver options lets its containers
/// reach each other (Docker's default when the option is absent).
pub fn icc_enabled(options: &HashMap<String, String>) -> bool {
    options.get(ICC_OPTION).map(String::as_str) != Some("false")
}

/// A workers' network as the daemon uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerNetwork {
    /// The host's address on it (where the gateway listens).
    pub gateway: String,
    /// Its bridge interface.
    pub bridge: String,
    /// Whether its containers reach each other (a network created before
    /// the daemon turned that off keeps its options).
    pub icc: bool,
}

/// The facts of a container that matter to the supervisor.
#[derive(Debug, Clone, Default)]
pub struct ContainerFacts {
    /// Container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Whether it runs now.
    pub running: bool,
    /// Whether it was ever started.
    pub started: bool,
    /// Exit code, when it exited.
    pub exit_code: Option<i64>,
    /// Whether the OOM killer struck.
    pub oom_killed: bool,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// RFC 3339 start time.
    pub started_at: Option<String>,
    /// RFC 3339 finish time.
    pub finished_at: Option<String>,
    /// Image.
    pub image: String,
    /// The worker's gateway key, read back from its env (inspect only).
    pub api_key: Option<String>,
    /// Its addresses on the networks it is attached to (inspect only).
    pub ips: Vec<String>,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// stdout
    Stdout,
    /// stderr
    Stderr,
}

impl OutputStream {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// Output of a process: chunks tagged with their stream.
pub type ExecOutput =
    std::pin::Pin<Box<dyn Stream<Item = Result<(OutputStream, bytes::Bytes), EngineError>> + Send>>;

/// Chunks of a multiplexed Docker output stream, tagged with their stream.
fn output_chunks(
    s: impl Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send,
) -> impl Stream<Item = Result<(OutputStream, bytes::Bytes), EngineError>> + Send {
    s.filter_map(|r| async move {
        use bollard::container::LogOutput;
        match r {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                Some(Ok((OutputStream::Stdout, message)))
            }
            Ok(LogOutput::StdErr { message }) => Some(Ok((OutputStream::Stderr, message))),
            Ok(LogOutput::StdIn { .. }) => None,
            Err(e) => Some(Err(e.into())),
        }
    })
}

/// The Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// `NanoCpus` of every CPU the engine has (it refuses more).
    max_nano_cpus: Option<i64>,
}

impl Engine {
    /// Connects the usual way (`DOCKER_HOST`, else the local socket) and
    /// negotiates the API version; fails fast when the engine is unreachable.
    pub async fn connect() -> Result<Engine, EngineError> {
        let docker = Docker::connect_with_local_defaults()?
            .with_timeout(Duration::from_secs(120))
            .negotiate_version()
            .await?;
        docker.ping().await?;
        let max_nano_cpus = match docker.info().await {
            Ok(i) => i.ncpu.filter(|n| *n > 0).map(|n| n * 1_000_000_000),
            Err(_) => None,
        };
        Ok(Engine {
            docker,
            max_nano_cpus,
        })
    }

    /// `GET /_ping`.
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.docker.ping().await?;
        Ok(())
    }

    /// The bollard client, for the few callers (image builds) that need more.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Whether `image` exists locally.
    pub async fn image_exists(&self, image: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the container; returns its id. A CPU limit above what the
    /// engine has becomes all of its CPUs: the engine refuses more, and a
    /// preset written for a bigger machine should still run here.
    pub async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, EngineError> {
        let mut body = body;
        if let (Some(max), Some(hc)) = (self.max_nano_cpus, body.host_config.as_mut()) {
            if let Some(n) = hc.nano_cpus.as_mut() {
                *n = (*n).min(max);
            }
        }
        let image = body.image.clone().unwrap_or_default();
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        match self.docker.create_container(Some(opts), body).await {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(409) => Err(EngineError::Conflict(name.to_string())),
            Err(e) if status_of(&e) == Some(404) => Err(EngineError::ImageNotFound(image)),
            Err(e) => Err(e.into()),
        }
    }

    /// Extracts `files` into the container, each group at its writable
    /// root: Docker refuses an extraction at `/` of a read-only root even
    /// when every file lands in a volume.
    pub async fn upload(&self, id: &str, files: &[RenderedFile]) -> Result<(), EngineError> {
        for (root, group) in upload_groups(files) {
            let put = |at: &str| {
                let tar = files_tar_at(at, &group);
                let opts = UploadToContainerOptions {
                    path: at.to_string(),
                    ..Default::default()
                };
                self.docker
                    .upload_to_container(id, Some(opts), bollard::body_full(tar.into()))
            };
            match put(&root).await {
                Ok(()) => {}
                // An image without that directory: extract at `/`, which creates it.
                Err(e) if status_of(&e) == Some(404) && root != "/" => put("/").await?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Attaches to the container's stdin (created with `open_stdin`),
    /// stdout and stderr; the end of the stdin attachment closes the
    /// process's stdin, the output ends with the process.
    pub async fn attach(&self, id: &str) -> Result<(Stdin, ExecOutput), EngineError> {
        let opts = bollard::query_parameters::AttachContainerOptions {
            stdin: true,
            stdout: true,
            stderr: true,
            stream: true,
            logs: false,
            ..Default::default()
        };
        let r = self
            .docker
            .attach_container(id, Some(opts))
            .await
            .map_err(|e| self.not_found(e, id))?;
        Ok((r.input, Box::pin(output_chunks(r.output))))
    }

    /// Writes `payload` to an attached stdin and closes it.
    pub async fn deliver(mut stdin: Stdin, payload: &[u8]) -> Result<(), EngineError> {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(payload).await?;
        stdin.flush().await?;
        stdin.shutdown().await?;
        Ok(())
    }

    /// Starts the container.
    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| self.not_found(e, id))
    }

    fn not_found(&self, e: bollard::errors::Error, id: &str) -> EngineError {
        if status_of(&e) == Some(404) {
            EngineError::NotFound(id.to_string())
        } else {
            e.into()
        }
    }

    /// Follows the container's output (from the beginning, or the last
    /// `tail` lines) as chunks.
    pub fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> impl Stream<Item = Result<(OutputStream, bytes::Bytes), EngineError>> + Send + 'static
    {
        let opts = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map(|n| n.to_string()).unwrap_or_else(|| "all".into()),
            ..Default::default()
        };
        output_chunks(self.docker.logs(id, Some(opts)))
    }

    /// Waits until the container is not running; returns its exit code.
    pub async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        let mut s = self.docker.wait_container(id, None::<WaitContainerOptions>);
        match s.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(self.not_found(e, id)),
            None => Ok(self.inspect(id).await?.exit_code.unwrap_or(-1)),
        }
    }

    /// Inspects the container.
    pub async fn inspect(&self, id: &str) -> Result<ContainerFacts, EngineError> {
        let r = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.not_found(e, id))?;
        let state = r.state.unwrap_or_default();
        let config = r.config.unwrap_or_default();
        let ips = r
            .network_settings
            .and_then(|n| n.networks)
            .map(|nets| {
                nets.into_values()
                    .filter_map(|e| e.ip_address)
                    .filter(|ip| !ip.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let started_at = state.started_at.filter(|s| !s.starts_with("0001-"));
        Ok(ContainerFacts {
            id: r.id.unwrap_or_default(),
            name: r
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            running: state.running.unwrap_or(false),
            started: started_at.is_some(),
            exit_code: if state.running.unwrap_or(false) {
                None
            } else {
                state.exit_code
            },
            oom_killed: state.oom_killed.unwrap_or(false),
            labels: config.labels.unwrap_or_default(),
            started_at,
            finished_at: state.finished_at.filter(|s| !s.starts_with("0001-")),
            api_key: config
                .env
                .unwrap_or_default()
                .iter()
                .find_map(|e| e.strip_prefix("ORCHESTRATOR_API_KEY=").map(str::to_string)),
            image: config.image.unwrap_or_default(),
            ips,
        })
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it is stopped.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let opts = StopContainerOptions {
            t: Some(grace.as_secs().max(1) as i32),
            ..Default::default()
        };
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(self.not_found(e, id)),
        }
    }

    /// Sends `signal` to the container's main process.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        let opts = KillContainerOptions {
            signal: signal.to_string(),
        };
        match self.docker.kill_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(409) => Ok(()), // not running
            Err(e) => Err(self.not_found(e, id)),
        }
    }

    /// Removes the container (forcefully, with its anonymous volumes).
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) if status_of(&e) == Some(409) => Ok(()), // removal already in progress
            Err(e) => Err(e.into()),
        }
    }

    /// Starts `argv` inside a running container as the worker user; returns
    /// the exec id and its output stream (which ends when the process does).
    pub async fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        env: Vec<String>,
    ) -> Result<(String, ExecOutput), EngineError> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let opts = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv),
            env: Some(env),
            user: Some(WORKER_USER.to_string()),
            working_dir: Some(crate::render::WORKSPACE.to_string()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(id, opts)
            .await
            .map_err(|e| self.not_found(e, id))?;
        match self.docker.start_exec(&created.id, None).await? {
            StartExecResults::Attached { output, .. } => {
                Ok((created.id, Box::pin(output_chunks(output))))
            }
            StartExecResults::Detached => Ok((created.id, Box::pin(futures_util::stream::empty()))),
        }
    }

    /// Exit code of a finished exec (`None` while it runs).
    pub async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, EngineError> {
        let r = self.docker.inspect_exec(exec_id).await?;
        if r.running.unwrap_or(false) {
            return Ok(None);
        }
        Ok(r.exit_code)
    }

    /// Runs `argv` to completion and returns its exit code and stdout.
    pub async fn exec_output(&self, id: &str, argv: &[&str]) -> Result<(i64, String), EngineError> {
        let (exec_id, mut out) = self
            .exec(id, argv.iter().map(|s| s.to_string()).collect(), Vec::new())
            .await?;
        let mut text = Vec::new();
        while let Some(item) = out.next().await {
            if let Ok((OutputStream::Stdout, b)) = item {
                text.extend_from_slice(&b);
            }
        }
        let code = self.exec_exit_code(&exec_id).await?.unwrap_or(-1);
        Ok((code, String::from_utf8_lossy(&text).into_owned()))
    }

    /// Creates the bridge network `name` if missing (`internal` = no route
    /// out; inter-container communication off, see
    /// [`worker_network_options`]) and returns what the daemon needs of it.
    pub async fn ensure_network(
        &self,
        name: &str,
        internal: bool,
    ) -> Result<WorkerNetwork, EngineError> {
        use bollard::models::NetworkCreateRequest;
        let mut found = self.networks_named(name).await?;
        if found.is_empty() {
            let mut labels = HashMap::new();
            labels.insert(labels::MANAGED.to_string(), "true".to_string());
            let req = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".to_string()),
                internal: Some(internal),
                labels: Some(labels),
                options: Some(worker_network_options()),
                ..Default::default()
            };
            match self.docker.create_network(req).await {
                Ok(_) => {}
                Err(e) if status_of(&e) == Some(409) => {}
                Err(e) => return Err(e.into()),
            }
            found = self.networks_named(name).await?;
        }
        // Docker does not refuse a second network of the same name: daemons
        // starting at the same moment may each create one, after which the
        // name is ambiguous. Every daemon keeps the same one (the lowest id)
        // and removes the others while they are unused.
        found.sort();
        let Some(keep) = found.first().cloned() else {
            return Err(EngineError::NotFound(name.to_string()));
        };
        for extra in &found[1..] {
            if self.docker.remove_network(extra).await.is_ok() {
                tracing::info!(network = name, id = %extra, "removed a duplicate worker network");
            }
        }
        let net = self
            .docker
            .inspect_network(
                &keep,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await?;
        if net.internal.unwrap_or(false) != internal {
            tracing::warn!(
                network = name,
                internal,
                "existing network has the other internal setting"
            );
        }
        let bridge = net
            .options
            .as_ref()
            .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
            .unwrap_or_else(|| {
                format!(
                    "br-{}",
                    &net.id
                        .clone()
                        .unwrap_or_default()
                        .chars()
                        .take(12)
                        .collect::<String>()
                )
            });
        let icc = icc_enabled(&net.options.clone().unwrap_or_default());
        let gateway = net
            .ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.gateway))
            .unwrap_or_default();
        Ok(WorkerNetwork {
            gateway,
            bridge,
            icc,
        })
    }

    /// Ids of the networks named exactly `name`.
    async fn networks_named(&self, name: &str) -> Result<Vec<String>, EngineError> {
        let mut filters = HashMap::new();
        filters.insert("name".to_string(), vec![name.to_string()]);
        let opts = bollard::query_parameters::ListNetworksOptions {
            filters: Some(filters),
        };
        let list = self.docker.list_networks(Some(opts)).await?;
        // The name filter matches substrings.
        Ok(list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect())
    }

    /// Connects a (created) container to another network.
    pub async fn connect_network(&self, network: &str, container: &str) -> Result<(), EngineError> {
        let req = bollard::models::NetworkConnectRequest {
            container: Some(container.to_string()),
            ..Default::default()
        };
        self.docker
            .connect_network(network, req)
            .await
            .map_err(|e| {
                if status_of(&e) == Some(404) {
                    EngineError::NotFound(network.to_string())
                } else {
                    e.into()
                }
            })
    }

    /// Every container with the managed label of `prefix`, running or not.
    pub async fn list_managed(&self, prefix: &str) -> Result<Vec<ContainerFacts>, EngineError> {
        self.list_labelled(prefix, &[]).await
    }

    /// Every managed container of `prefix` that also carries each label of
    /// `with` (key, value), whatever its name: labels, not names, say whose
    /// work a container holds (containers of older daemons have names of
    /// an older scheme).
    pub async fn list_labelled(
        &self,
        prefix: &str,
        with: &[(&str, &str)],
    ) -> Result<Vec<ContainerFacts>, EngineError> {
        let mut wanted = vec![
            format!("{}=true", labels::MANAGED),
            format!("{}={prefix}", labels::PREFIX),
        ];
        wanted.extend(with.iter().map(|(k, v)| format!("{k}={v}")));
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), wanted);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self.docker.list_containers(Some(opts)).await?;
        Ok(list
            .into_iter()
            .map(|c| {
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                ContainerFacts {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    running: state == "running",
                    started: state != "created",
                    labels: c.labels.unwrap_or_default(),
                    image: c.image.unwrap_or_default(),
                    ..Default::default()
                }
            })
            // Belt and braces: never trust a filter with someone else's container.
            .filter(|c| c.labels.get(labels::MANAGED).map(String::as_str) == Some("true"))
            .filter(|c| {
                with.iter()
                    .all(|(k, v)| c.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name Docker accepts: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
    fn docker_safe(n: &str) -> bool {
        let b = n.as_bytes();
        b.len() > 1
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    }

    #[test]
    fn container_names_are_deterministic_and_docker_safe() {
        let a = container_name("ws", "req_123");
        assert!(a.starts_with("ws-req_123-"), "{a}");
        assert_eq!(a.len(), "ws-req_123-".len() + 32);
        assert_eq!(a, container_name("ws", "req_123"));
        let long = "x".repeat(128);
        for id in ["a:b", "req_123", long.as_str(), "a.b-c:d"] {
            assert!(docker_safe(&container_name("ws", id)), "{id}");
            assert!(
                docker_safe(&request_container_name("wstest-x:y", id)),
                "{id}"
            );
        }
        assert!(container_name("ws", &long).len() <= 3 + 64 + 1 + 32);
    }

    /// Issue #14, 4: pairs that collided under the old scheme (the id with
    /// `:` made `_` plus 4 bytes of hash) now get different names.
    #[test]
    fn container_names_are_injective_in_the_id() {
        let pairs = [
            ("a:b", "a_b-6783a31e"),
            ("a:b", "a_b"),
            ("col-__::___:___::__:__", "col-_:___::_:__:__:_:_"),
        ];
        for (x, y) in pairs {
            assert_ne!(container_name("ws", x), container_name("ws", y), "{x} {y}");
            assert_ne!(
                request_container_name("workers", x),
                request_container_name("workers", y)
            );
            assert_ne!(
                request_container_name("p", x),
                request_container_name("p", y)
            );
        }
        // An id can never spell another id's name: the suffix is the hash
        // of the whole id, which the readable part does not determine.
        let spelled = container_name("ws", "a:b");
        let as_id = spelled.strip_prefix("ws-").unwrap();
        assert_ne!(container_name("ws", as_id), spelled);
        // Every id of a large alphabet-alike family gets its own name.
        let mut seen = std::collections::HashSet::new();
        for i in 0..4096u32 {
            let id: String = (0..12)
                .map(|b| if i >> b & 1 == 1 { ':' } else { '_' })
                .collect();
            assert!(seen.insert(request_container_name("col", &id)), "{id}");
        }
    }

    #[test]
    fn setups_with_different_prefixes_get_different_container_names() {
        let a = request_container_name("a", "b.c");
        let b = request_container_name("a.b", "c");
        assert!(a.starts_with("ws-a_b.c-"), "{a}");
        assert_ne!(a, b);
        assert_ne!(
            request_container_name("workers", "req_1"),
            request_container_name("other", "req_1")
        );
        assert!(request_container_name("workers", "req_1").starts_with("ws-req_1-"));
    }

    #[test]
    fn no_limit_reaches_the_engine_as_zero_or_below_its_floor() {
        use crate::config::Limits;
        let l = |cpu: f64, memory: &str, pids: Option<u32>| Limits {
            cpu,
            memory: memory.into(),
            timeout_sec: 1,
            ttl_sec: 1,
            pids,
        };
        // Not a number at all: the floor, never "unlimited".
        for cpu in [
            1e-10,
            0.0,
            -0.0,
            5e-324,
            -1.0,
            0.001,
            f64::NAN,
            f64::INFINITY,
        ] {
            let e = engine_limits(&l(cpu, "64m", Some(64)));
            assert_eq!(e.nano_cpus, 10_000_000, "cpu {cpu}");
        }
        assert_eq!(
            engine_limits(&l(1e308, "64m", None)).nano_cpus,
            64_000_000_000
        );
        assert_eq!(engine_limits(&l(1.0, "64m", None)).nano_cpus, 1_000_000_000);
        assert_eq!(engine_limits(&l(0.5, "64m", None)).nano_cpus, 500_000_000);
        for memory in ["0", "1k", "nonsense", "-1g"] {
            let e = engine_limits(&l(1.0, memory, None));
            assert_eq!(e.memory, 6 << 20, "memory {memory}");
        }
        assert_eq!(engine_limits(&l(1.0, "64m", None)).memory, 64 << 20);
        for (pids, want) in [
            (Some(0), 16),
            (Some(1), 16),
            (None, 512),
            (Some(1 << 30), 65536),
        ] {
            assert_eq!(engine_limits(&l(1.0, "64m", pids)).pids, want, "{pids:?}");
        }
    }

    #[test]
    fn workers_networks_are_made_without_inter_container_communication() {
        assert!(!icc_enabled(&worker_network_options()));
        assert!(icc_enabled(&HashMap::new()), "Docker's default");
        let on = HashMap::from([(ICC_OPTION.to_string(), "true".to_string())]);
        assert!(icc_enabled(&on));
    }

    #[test]
    fn files_are_grouped_by_their_writable_root_with_relative_paths() {
        let f = |p: &str| RenderedFile {
            path: p.into(),
            content: "x".into(),
            mode: 0o644,
        };
        let files = vec![
            f("/home/worker/.claude/CLAUDE.md"),
            f("/workspace/a/b.txt"),
            f("/home/worker/.orchestrator/prompt.md"),
            f("/workspacex/c"),
        ];
        let groups = upload_groups(&files);
        let roots: Vec<&str> = groups.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(roots, ["/home/worker", "/workspace", "/"]);
        assert_eq!(groups[0].1.len(), 2);
        let tar = files_tar_at("/workspace", &groups[1].1);
        let mut a = tar::Archive::new(&tar[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a/", "a/b.txt"]);
    }

    #[test]
    fn the_files_tar_holds_parent_directories_and_modes() {
        let files = vec![RenderedFile {
            path: "/home/worker/.claude/skills/x/SKILL.md".into(),
            content: "hi".into(),
            mode: 0o600,
        }];
        let tar = files_tar(&files);
        let mut a = tar::Archive::new(&tar[..]);
        let names: Vec<(String, u32, u64)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.header().uid().unwrap(),
                )
            })
            .collect();
        assert!(names.contains(&("home/worker/.claude/skills/x/".into(), 0o755, 1000)));
        assert!(names.contains(&("home/worker/.claude/skills/x/SKILL.md".into(), 0o600, 1000)));
    }
}
