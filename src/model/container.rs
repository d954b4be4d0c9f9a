//! The container a worker runs in, described: its name, labels, launch
//! context and the hardened create body handed to the engine, and the
//! tars its files travel in. Pure: `adapters::engine` sends what this
//! module builds.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountTypeEnum, MountVolumeOptions};
use sha2::{Digest, Sha256};

use crate::model::render::RenderedFile;
use crate::model::spec::WorkerSpec;

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
    /// The `task.user_id` a session (container or volume) belongs to.
    pub const USER_ID: &str = "io.workers-spawner.user-id";
    /// What a session volume holds: `workspace` or `home`.
    pub const VOLUME: &str = "io.workers-spawner.volume";
    /// On a session container: its shim picks a task's turn (`turn` mode,
    /// #16); containers of older daemons lack it and run tasks plainly.
    pub const TURN: &str = "io.workers-spawner.turn";
    /// The request's attempt, from 2 on (a retry; `model::retry`).
    pub const ATTEMPT: &str = "io.workers-spawner.attempt";
    /// The config's retry policy (JSON), when it has one.
    pub const RETRY: &str = "io.workers-spawner.retry";
    /// The request's workspace plan (JSON, `model::workspace`): its
    /// repository, base commit and artifact globs, no secret.
    pub const WORKSPACE: &str = "io.workers-spawner.workspace";
}

/// Uid:gid the agent runs as.
pub const WORKER_USER: &str = "1000:1000";

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
    /// How the files reach the container (see [`crate::model::delivery`]).
    pub delivery: FileDelivery,
    /// Named volumes to mount, a session's.
    pub volumes: Vec<VolumeMount>,
    /// The worker's egress socket, on the socket path.
    pub egress: Option<EgressPlan>,
}

/// A worker's egress socket: what it serves and the folder (on the
/// engine's host) mounted at [`crate::model::egress::SOCKET_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPlan {
    /// What the socket serves.
    pub grant: crate::model::egress::Grant,
    /// The bind mount's source.
    pub folder: String,
}

/// A named volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's name.
    pub name: String,
    /// The folder it is mounted on.
    pub target: String,
    /// Its labels: given with the mount too, so a volume Docker makes for
    /// the mount (one removed in between) is still labelled, found by the
    /// sweep and bound to its user.
    pub labels: HashMap<String, String>,
}

/// How a container receives its files before the agent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileDelivery {
    /// Docker's archive API before the start (any image; one more mount of
    /// the root filesystem per container).
    Archive,
    /// A tar on the attached stdin, unpacked by the shim, which then runs
    /// the command (the image needs `sh` and `tar`).
    Stdin(crate::model::delivery::ShimMode),
}

/// Directories the agent writes to (volumes under a read-only root); the
/// rendered files go under them.
pub const WRITABLE_ROOTS: [&str; 2] = [crate::model::render::WORKSPACE, crate::model::render::HOME];

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
    if crate::model::delivery::env_fits(&secrets) {
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
pub fn engine_limits(limits: &crate::model::config::Limits) -> EngineLimits {
    use crate::model::config::{
        MAX_CPU, MAX_MEMORY_BYTES, MAX_PIDS, MIN_CPU, MIN_MEMORY_BYTES, MIN_PIDS,
    };
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
    env.push(format!("HOME={}", crate::model::render::HOME));
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
            if !ctx.volumes.iter().any(|v| v.target == dir) {
                volumes.insert(dir.to_string(), HashMap::new());
            }
        }
    }
    // A named volume mounted on a folder of the image starts as a copy of
    // it (owner included): the prepared image's `/workspace` and
    // `/home/worker` belong to the worker, so the volume does too.
    let mounts: Vec<Mount> = ctx
        .volumes
        .iter()
        .map(|v| Mount {
            target: Some(v.target.clone()),
            source: Some(v.name.clone()),
            typ: Some(MountTypeEnum::VOLUME),
            read_only: Some(false),
            volume_options: Some(MountVolumeOptions {
                labels: Some(v.labels.clone()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let mut mounts = mounts;
    if let Some(e) = &ctx.egress {
        // The folder, read-only: connecting to a socket needs no write
        // access to its file system, and a socket the daemon makes anew in
        // the folder is seen through the same mount.
        mounts.push(Mount {
            target: Some(crate::model::egress::SOCKET_DIR.to_string()),
            source: Some(e.folder.clone()),
            typ: Some(MountTypeEnum::BIND),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let cmd = ctx.cmd.clone().unwrap_or_else(|| spec.command.clone());
    let mut labels = ctx.labels.clone();
    if let Some(e) = &ctx.egress {
        labels.insert(
            crate::model::egress::LABEL.to_string(),
            serde_json::to_string(&e.grant).unwrap_or_default(),
        );
    }
    if let FileDelivery::Stdin(_) = ctx.delivery {
        labels.insert(labels::DELIVERY.to_string(), "stdin".to_string());
    }
    let (cmd, stdin) = match ctx.delivery {
        FileDelivery::Archive => (cmd, false),
        FileDelivery::Stdin(mode) => (crate::model::delivery::shim_command(&cmd, mode), true),
    };
    ContainerCreateBody {
        image: Some(ctx.image.clone()),
        cmd: Some(cmd),
        env: Some(env),
        user: Some(WORKER_USER.to_string()),
        working_dir: Some(crate::model::render::WORKSPACE.to_string()),
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
        // Disabled networking still has `lo` up (runc's), which is all the
        // egress forwarder needs, and skips the engine's network sandbox.
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
            mounts: if mounts.is_empty() {
                None
            } else {
                Some(mounts)
            },
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
    crate::model::delivery::worker_tar(&dirs, &files)
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

/// The network a worker joins and how it reaches the gateway.
#[derive(Debug, Clone)]
pub struct WorkerNet {
    /// Docker network name.
    pub network: String,
    /// `ORCHESTRATOR_API_URL`.
    pub api_url: String,
    /// `ORCHESTRATOR_API_KEY` (a secret).
    pub api_key: String,
    /// The egress socket, on the socket path (network `none`).
    pub egress: Option<EgressPlan>,
}

impl WorkerNet {
    /// The container's variables for reaching out: the egress socket's
    /// (gateway URL, model routes, proxy), else the gateway's URL; and the
    /// worker's key when `with_key`.
    pub fn env(&self, with_key: bool) -> Vec<(String, String)> {
        let mut env = match &self.egress {
            Some(e) => e.grant.container_env(),
            None if self.api_url.is_empty() => Vec::new(),
            None => vec![("ORCHESTRATOR_API_URL".to_string(), self.api_url.clone())],
        };
        if with_key && !self.api_key.is_empty() && !self.api_url.is_empty() {
            env.push(("ORCHESTRATOR_API_KEY".to_string(), self.api_key.clone()));
        }
        env
    }
}

/// Who launches a container: the setup's stream prefix and the instance.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    /// The stream prefix (`io.workers-spawner.stream-prefix`).
    pub prefix: &'a str,
    /// The daemon instance (`io.workers-spawner.instance`).
    pub instance: &'a str,
}

/// The labels every container of this setup carries.
fn base_labels(
    owner: Owner<'_>,
    kind: &str,
    request_id: &str,
    preset: &str,
    config_hash: &str,
    deadline: u64,
) -> HashMap<String, String> {
    HashMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::PREFIX.to_string(), owner.prefix.to_string()),
        (labels::REQUEST_ID.to_string(), request_id.to_string()),
        (labels::PRESET.to_string(), preset.to_string()),
        (labels::CONFIG_HASH.to_string(), config_hash.to_string()),
        (labels::INSTANCE.to_string(), owner.instance.to_string()),
        (labels::DEADLINE.to_string(), deadline.to_string()),
        (labels::KIND.to_string(), kind.to_string()),
    ])
}

/// The delivery a one-shot worker of `spec` uses.
pub fn oneshot_delivery(spec: &WorkerSpec) -> FileDelivery {
    match spec.config.agent.delivery {
        crate::model::config::Delivery::Stdin => {
            FileDelivery::Stdin(crate::model::delivery::ShimMode::Run)
        }
        crate::model::config::Delivery::Archive => FileDelivery::Archive,
    }
}

/// Names, labels and network of a one-shot worker's container, received
/// at `received_ms` (Unix ms).
pub fn launch_context(
    spec: &WorkerSpec,
    owner: Owner<'_>,
    name: &str,
    deadline: u64,
    received_ms: i64,
    entry_id: Option<&str>,
    net: Option<&WorkerNet>,
) -> LaunchContext {
    let preset = spec.preset_id.clone().unwrap_or_default();
    let mut l = base_labels(
        owner,
        "oneshot",
        &spec.request_id,
        &preset,
        &spec.config_hash,
        deadline,
    );
    l.insert(labels::RECEIVED_MS.to_string(), received_ms.to_string());
    if let Some(e) = entry_id {
        l.insert(labels::ENTRY_ID.to_string(), e.to_string());
    }
    if let Some(s) = &spec.session_id {
        l.insert(labels::SESSION_ID.to_string(), s.clone());
    }
    if let Some(u) = &spec.user_id {
        l.insert(labels::USER_ID.to_string(), u.clone());
    }
    if spec.attempt > 1 {
        l.insert(labels::ATTEMPT.to_string(), spec.attempt.to_string());
    }
    if let Some(r) = &spec.config.retry {
        l.insert(
            labels::RETRY.to_string(),
            serde_json::to_string(r).expect("retry policy serializes"),
        );
    }
    if let Some(w) = &spec.workspace {
        l.insert(
            labels::WORKSPACE.to_string(),
            serde_json::to_string(w).expect("workspace plan serializes"),
        );
    }
    let (network_mode, extra_env) = match net {
        Some(n) => (n.network.clone(), n.env(true)),
        None => {
            let mode = if spec.config.has_internet {
                "bridge"
            } else {
                "none"
            };
            (mode.to_string(), Vec::new())
        }
    };
    LaunchContext {
        name: name.to_string(),
        image: spec.config.image.clone(),
        labels: l,
        extra_env,
        network_mode,
        cmd: None,
        delivery: oneshot_delivery(spec),
        volumes: Vec::new(),
        egress: net.and_then(|n| n.egress.clone()),
    }
}

/// The labels of a session's container (first request `spec`, TTL end
/// `deadline`, Unix seconds).
pub fn session_labels(
    spec: &WorkerSpec,
    owner: Owner<'_>,
    session_id: &str,
    deadline: u64,
    received_ms: i64,
) -> HashMap<String, String> {
    let preset = spec.preset_id.clone().unwrap_or_default();
    let mut l = base_labels(
        owner,
        "session",
        &spec.request_id,
        &preset,
        &spec.config_hash,
        deadline,
    );
    l.insert(labels::SESSION_ID.to_string(), session_id.to_string());
    l.insert(labels::RECEIVED_MS.to_string(), received_ms.to_string());
    l.insert(
        labels::USER_ID.to_string(),
        spec.user_id.clone().unwrap_or_default(),
    );
    l.insert(labels::TURN.to_string(), "1".to_string());
    // The session's repository (its first task's): its later tasks
    // are collected with it.
    if let Some(w) = &spec.workspace {
        l.insert(
            labels::WORKSPACE.to_string(),
            serde_json::to_string(w).expect("workspace plan serializes"),
        );
    }
    l
}

/// The labels of a pool container of `preset` (no request yet: its
/// request-id label is empty), alive until `deadline` (Unix seconds).
pub fn pool_labels(
    owner: Owner<'_>,
    preset: &str,
    config_hash: &str,
    deadline: u64,
) -> HashMap<String, String> {
    base_labels(owner, "pool", "", preset, config_hash, deadline)
}

/// The container name of session `session_id` in the setup of `prefix`.
pub fn session_container_name(prefix: &str, session_id: &str) -> String {
    if prefix == "workers" {
        container_name("wss", session_id)
    } else {
        container_name("wss", &format!("{prefix}/{session_id}"))
    }
}

/// The volumes of session `session_id`: (workspace volume, home volume).
/// Named like its container (`wsv-...-w` / `wsv-...-h`), so every instance
/// of the setup finds them. Two volumes, not one with sub-paths: volume
/// sub-paths need Engine API 1.45, and a mount on a folder the image lacks
/// would belong to root.
pub fn session_volume_names(prefix: &str, session_id: &str) -> (String, String) {
    let base = if prefix == "workers" {
        container_name("wsv", session_id)
    } else {
        container_name("wsv", &format!("{prefix}/{session_id}"))
    };
    (format!("{base}-w"), format!("{base}-h"))
}

/// The labels of a session's volume (`what`: `workspace` or `home`): whose
/// setup, session and user it is. No instance: any instance may resume it.
pub fn volume_labels(
    prefix: &str,
    session_id: &str,
    user_id: &str,
    what: &str,
) -> HashMap<String, String> {
    HashMap::from([
        (labels::MANAGED.to_string(), "true".to_string()),
        (labels::PREFIX.to_string(), prefix.to_string()),
        (labels::KIND.to_string(), "session".to_string()),
        (labels::SESSION_ID.to_string(), session_id.to_string()),
        (labels::USER_ID.to_string(), user_id.to_string()),
        (labels::VOLUME.to_string(), what.to_string()),
    ])
}

/// The mounts of session `session_id`'s volumes (of `user_id`).
pub fn session_mounts(prefix: &str, session_id: &str, user_id: &str) -> Vec<VolumeMount> {
    let (w, h) = session_volume_names(prefix, session_id);
    vec![
        VolumeMount {
            name: w,
            target: crate::model::render::WORKSPACE.to_string(),
            labels: volume_labels(prefix, session_id, user_id, "workspace"),
        },
        VolumeMount {
            name: h,
            target: crate::model::render::HOME.to_string(),
            labels: volume_labels(prefix, session_id, user_id, "home"),
        },
    ]
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
        use crate::model::config::Limits;
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

    #[test]
    fn each_kind_of_container_carries_its_labels() {
        let owner = Owner {
            prefix: "workers",
            instance: "i1",
        };
        let pool = pool_labels(owner, "p", "h", 7);
        assert_eq!(pool[labels::KIND], "pool");
        assert_eq!(pool[labels::REQUEST_ID], "");
        assert_eq!(pool[labels::DEADLINE], "7");
        let got: std::collections::BTreeSet<&str> = pool.keys().map(String::as_str).collect();
        let want = std::collections::BTreeSet::from([
            labels::CONFIG_HASH,
            labels::DEADLINE,
            labels::INSTANCE,
            labels::KIND,
            labels::MANAGED,
            labels::PRESET,
            labels::REQUEST_ID,
            labels::PREFIX,
        ]);
        assert_eq!(got, want);
        assert_eq!(pool[labels::MANAGED], "true");
        assert_eq!(pool[labels::PREFIX], "workers");
        assert_eq!(pool[labels::INSTANCE], "i1");
    }
}
