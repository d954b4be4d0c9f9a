//! The daemon's settings (OPERATIONS.md): defaults, an optional TOML file,
//! `WORKERS_SPAWNER_*` environment variables and command-line flags, layered
//! with figment in that order (flags win).
//!
//! Reading the config file is the only I/O here, done by [`Settings::load`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::model::policy::Policy;
use crate::model::protocol::InputLimits;

/// Every setting of the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Redis to consume from and publish to.
    pub redis_url: String,
    /// Preset JSON files, watched for changes.
    pub presets_dir: PathBuf,
    /// `<tool>.md` skill files.
    pub skills_dir: PathBuf,
    /// Instruction templates.
    pub templates_dir: PathBuf,
    /// Consumer name and owner label.
    pub instance_id: String,
    /// Running workers per instance.
    pub max_concurrent: usize,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http_addr: String,
    /// Stream names are `<prefix>:spawn`, `<prefix>:result`, ...
    pub stream_prefix: String,
    /// Consumer group name.
    pub group: String,
    /// Approximate cap of the output streams (`XADD MAXLEN ~`).
    pub stream_maxlen: usize,
    /// How long one `XREADGROUP` blocks.
    #[serde(with = "humantime_serde")]
    pub block: Duration,
    /// Grace period between SIGTERM and SIGKILL on timeout.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// Entries pending longer than this on a dead consumer are reclaimed.
    #[serde(with = "humantime_serde")]
    pub reclaim_min_idle: Duration,
    /// Deliveries after which an entry is dead-lettered.
    pub max_deliveries: u64,
    /// Bytes of stdout kept for the result.
    pub output_tail_bytes: usize,
    /// Output lines per second forwarded as events per worker; the rest is counted.
    pub output_lines_per_sec: u32,
    /// Bytes of one output line forwarded as an event.
    pub output_line_bytes: usize,
    /// Base name of the workers' bridge networks: `<name>` (with a route
    /// out) and `<name>-internal` (no route out).
    pub worker_network: String,
    /// Port of the gateway the in-container `orchestrator` CLI calls.
    pub gateway_port: u16,
    /// Host the workers use to reach the gateway; empty means the bridge
    /// gateway address of their network (the daemon runs on the host).
    pub gateway_host: String,
    /// Address the gateway listens on; empty means each workers' network's
    /// gateway address (never all interfaces).
    pub gateway_bind: String,
    /// Orchestrator backend the gateway forwards tool calls to; empty means
    /// none (calls other than `respond` get a clear error).
    pub upstream_url: String,
    /// Time for a gateway request's headers to arrive (also ends an idle
    /// keep-alive connection).
    #[serde(with = "humantime_serde")]
    pub gateway_header_timeout: Duration,
    /// Time for a gateway request's body to arrive.
    #[serde(with = "humantime_serde")]
    pub gateway_body_timeout: Duration,
    /// Gateway requests in progress per worker key.
    pub gateway_max_inflight_per_key: usize,
    /// Open gateway connections per caller address.
    pub gateway_max_connections_per_caller: usize,
    /// `respond` messages per worker per minute (also the burst); more are
    /// refused with 429 and counted in `respond_dropped` events.
    pub respond_per_minute: u32,
    /// `respond` bytes per worker per minute (also the burst).
    pub respond_bytes_per_minute: u64,
    /// Add host firewall rules so workers reach only the gateway on the host.
    pub manage_firewall: bool,
    /// A session nobody used for this long ends (`0s` = never).
    #[serde(with = "humantime_serde")]
    pub session_idle_timeout: Duration,
    /// How long a session's volumes (its workspace and the agent's state)
    /// are kept after its last use; a later task of the session within it
    /// resumes on them.
    #[serde(with = "humantime_serde")]
    pub session_keep: Duration,
    /// Full re-scan of the catalog directories, the backup of the file watcher.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// How workers get out: `socket` (network `none`, the daemon's unix
    /// socket per worker, the default) or `bridge` (the workers' bridge
    /// networks, the slower path; for an engine on another host).
    pub worker_egress: crate::model::egress::Mode,
    /// Folder of the workers' egress sockets (one folder per worker,
    /// bind-mounted into its container: a path on the engine's host).
    pub egress_dir: PathBuf,
    /// The same folder as the engine's host sees it, when the daemon runs
    /// in a container (the mount source of each worker's folder); empty:
    /// `egress_dir`.
    pub egress_host_dir: PathBuf,
    /// Names the egress proxy resolves to fixed addresses (like curl's
    /// `--resolve`); such an address is dialled even when it is private or
    /// loopback, since the operator named it.
    pub egress_resolve: std::collections::BTreeMap<String, String>,
    /// Whether the proxy may dial private addresses (10/8, 172.16/12,
    /// 192.168/16, 100.64/10, fc00::/7) that a name resolves to.
    pub egress_allow_private: bool,
    /// Upstream base URL per model route (`anthropic`, `openai`, a preset's
    /// own route name), over the preset's and the public endpoint.
    pub model_upstreams: std::collections::BTreeMap<String, String>,
    /// Open connections per worker on its egress socket (more are refused
    /// and counted).
    pub egress_max_connections: usize,
    /// Bound of the proxy's connect to an allowed host.
    #[serde(with = "humantime_serde")]
    pub egress_connect_timeout: Duration,
    /// `egress` events per worker per minute (the rest are counted in the
    /// next one as `suppressed`).
    pub egress_events_per_minute: u32,
    /// The Docker engine this instance drives: `unix:///path`,
    /// `tcp://host:port` (TLS when `docker_tls_*` are set) or empty for
    /// `DOCKER_HOST`, else the local socket.
    pub docker_host: String,
    /// CA certificate (PEM) the engine's TLS certificate is checked against.
    pub docker_tls_ca: PathBuf,
    /// Client certificate (PEM) for a TLS engine.
    pub docker_tls_cert: PathBuf,
    /// Client key (PEM) for a TLS engine.
    pub docker_tls_key: PathBuf,
    /// How long an instance's heartbeat must be gone before a peer answers
    /// for what it held (its host counts as lost).
    #[serde(with = "humantime_serde")]
    pub instance_lost_after: Duration,
    /// Folder of the artifact store (transcripts, patches, declared
    /// artifacts) when `artifacts_url` is empty.
    pub artifacts_dir: PathBuf,
    /// `s3://bucket[/prefix]`: the artifact store is that bucket (the
    /// `AWS_*` variables configure the client: endpoint, region, keys);
    /// empty: `artifacts_dir`.
    pub artifacts_url: String,
    /// What the URIs of locally stored artifacts start with (the daemon
    /// serves them under `/v1/artifacts/`); empty: `http://<http_addr>`.
    pub artifacts_base_url: String,
    /// Artifacts older than this are deleted by the maintenance loop.
    #[serde(with = "humantime_serde")]
    pub artifact_retention: Duration,
    /// Largest declared artifact kept, in bytes (a bigger one is refused,
    /// named in the result).
    pub artifact_max_bytes: u64,
    /// Most bytes of declared artifacts kept per request.
    pub artifacts_max_total_bytes: u64,
    /// Most bytes of a transcript kept (the rest is cut, and says so).
    pub transcript_max_bytes: u64,
    /// Largest workspace read back from a worker (its tar), in bytes.
    pub workspace_max_bytes: u64,
    /// The bare mirrors of the repositories workers start from.
    pub repo_cache_dir: PathBuf,
    /// Bound of one git command (a clone, a fetch, a push).
    #[serde(with = "humantime_serde")]
    pub repo_timeout: Duration,
    /// Address of the HTTP API, its event streams and the dashboard
    /// (docs/api.md); empty: off. Without `api_tokens` only a loopback
    /// address is accepted.
    pub api_addr: String,
    /// The API's bearer tokens, each with a role (`read`, `submit`,
    /// `admin`) and its secret from the daemon's environment.
    pub api_tokens: Vec<ApiTokenSetting>,
    /// API requests per token per minute (also the burst).
    pub api_rate_per_minute: u32,
    /// Override policy.
    pub policy: Policy,
    /// Input limits.
    pub limits: InputLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            redis_url: "redis://127.0.0.1:6379".into(),
            presets_dir: "./presets".into(),
            skills_dir: "./skills".into(),
            templates_dir: "./templates".into(),
            instance_id: default_instance_id(),
            max_concurrent: 16,
            http_addr: "127.0.0.1:9090".into(),
            stream_prefix: "workers".into(),
            group: "workers-spawner".into(),
            stream_maxlen: 100_000,
            block: Duration::from_secs(5),
            stop_grace: Duration::from_secs(5),
            reclaim_min_idle: Duration::from_secs(60),
            max_deliveries: 5,
            output_tail_bytes: 64 * 1024,
            output_lines_per_sec: 2000,
            output_line_bytes: 16 * 1024,
            worker_network: "ws-workers".into(),
            gateway_port: 9091,
            gateway_host: String::new(),
            gateway_bind: String::new(),
            upstream_url: String::new(),
            session_idle_timeout: Duration::ZERO,
            session_keep: Duration::from_secs(24 * 3600),
            gateway_header_timeout: Duration::from_secs(10),
            gateway_body_timeout: Duration::from_secs(10),
            gateway_max_inflight_per_key: 8,
            gateway_max_connections_per_caller: 32,
            respond_per_minute: 30,
            respond_bytes_per_minute: 256 * 1024,
            manage_firewall: true,
            rescan_interval: Duration::from_secs(30),
            worker_egress: crate::model::egress::Mode::Socket,
            egress_dir: "/run/workers-spawner/egress".into(),
            egress_host_dir: PathBuf::new(),
            egress_resolve: Default::default(),
            egress_allow_private: false,
            model_upstreams: Default::default(),
            egress_max_connections: 64,
            egress_connect_timeout: Duration::from_secs(10),
            egress_events_per_minute: 120,
            docker_host: String::new(),
            docker_tls_ca: PathBuf::new(),
            docker_tls_cert: PathBuf::new(),
            docker_tls_key: PathBuf::new(),
            instance_lost_after: Duration::from_secs(60),
            artifacts_dir: "/var/lib/workers-spawner/artifacts".into(),
            artifacts_url: String::new(),
            artifacts_base_url: String::new(),
            artifact_retention: Duration::from_secs(7 * 24 * 3600),
            artifact_max_bytes: 64 << 20,
            artifacts_max_total_bytes: 256 << 20,
            transcript_max_bytes: 64 << 20,
            workspace_max_bytes: 2 << 30,
            repo_cache_dir: "/var/lib/workers-spawner/repos".into(),
            repo_timeout: Duration::from_secs(600),
            api_addr: "127.0.0.1:9092".into(),
            api_tokens: Vec::new(),
            api_rate_per_minute: 600,
            policy: Policy {
                allowed_images: vec!["universal-worker-base:*".into()],
                ..Policy::default()
            },
            limits: InputLimits::default(),
        }
    }
}

/// One `api_tokens` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenSetting {
    /// Its name (logs, rate limits).
    pub name: String,
    /// What it may do.
    pub role: crate::model::access::Role,
    /// Its secret, from the daemon's environment.
    pub token: crate::model::config::KeyRef,
}

/// The host name, or `workers-spawner` when it cannot be read.
pub fn default_instance_id() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| crate::model::protocol::is_valid_token(h, 64))
        .unwrap_or_else(|| "workers-spawner".into())
}

/// Command-line flags that override settings; every flag is optional.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct SettingsArgs {
    /// TOML file with settings (lowest precedence after defaults).
    #[arg(long, global = true)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Redis URL.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Presets directory.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presets_dir: Option<PathBuf>,
    /// Skills directory.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skills_dir: Option<PathBuf>,
    /// Templates directory.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub templates_dir: Option<PathBuf>,
    /// Consumer name and owner label.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Running workers per instance.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// Address of /healthz, /readyz, /metrics.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    /// Prefix of the stream names.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_prefix: Option<String>,
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(String);

/// Which settings were given (by a flag, the environment or the config
/// file) rather than left at their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    given: std::collections::BTreeSet<String>,
}

impl Origins {
    /// Whether the top-level setting `key` (`skills_dir`) was given.
    pub fn is_given(&self, key: &str) -> bool {
        self.given.contains(key)
    }

    /// Origins in which exactly `keys` were given.
    pub fn of(keys: &[&str]) -> Origins {
        Origins {
            given: keys.iter().map(|k| k.to_string()).collect(),
        }
    }
}

impl Settings {
    /// Layers defaults, the config file, the environment and `args`.
    pub fn load(args: &SettingsArgs) -> Result<Settings, SettingsError> {
        Self::load_with_origins(args).map(|(s, _)| s)
    }

    /// [`Settings::load`], also telling which settings were given.
    pub fn load_with_origins(args: &SettingsArgs) -> Result<(Settings, Origins), SettingsError> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        let file = args
            .config
            .clone()
            .or_else(|| std::env::var_os("WORKERS_SPAWNER_CONFIG").map(PathBuf::from));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(SettingsError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig
            .merge(
                Env::prefixed("WORKERS_SPAWNER_")
                    .ignore(&["config"])
                    .split("__"),
            )
            .merge(Serialized::defaults(args));
        let s: Settings = fig.extract().map_err(|e| SettingsError(e.to_string()))?;
        s.check()?;
        let defaults = std::any::type_name::<Settings>();
        let keys = serde_json::to_value(Settings::default())
            .ok()
            .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()))
            .unwrap_or_default();
        let given = keys
            .into_iter()
            .filter(|k| fig.find_metadata(k).is_some_and(|m| m.name != defaults))
            .collect();
        Ok((s, Origins { given }))
    }

    /// The engine this instance drives (`docker_host`, else `DOCKER_HOST`).
    pub fn docker_target(&self) -> Result<crate::model::docker_host::DockerTarget, String> {
        let env = std::env::var("DOCKER_HOST").ok();
        crate::model::docker_host::parse(
            &self.docker_host,
            env.as_deref(),
            &crate::model::docker_host::TlsFiles {
                ca: self.docker_tls_ca.clone(),
                cert: self.docker_tls_cert.clone(),
                key: self.docker_tls_key.clone(),
            },
        )
    }

    fn check(&self) -> Result<(), SettingsError> {
        if self.max_concurrent == 0 {
            return Err(SettingsError("max_concurrent must be at least 1".into()));
        }
        if self.gateway_header_timeout.is_zero() || self.gateway_body_timeout.is_zero() {
            return Err(SettingsError(
                "gateway_header_timeout and gateway_body_timeout must be positive".into(),
            ));
        }
        if self.gateway_max_inflight_per_key == 0 || self.gateway_max_connections_per_caller == 0 {
            return Err(SettingsError(
                "gateway_max_inflight_per_key and gateway_max_connections_per_caller must be at least 1".into(),
            ));
        }
        if self.rescan_interval.is_zero() {
            return Err(SettingsError("rescan_interval must be positive".into()));
        }
        // Below the heartbeat's own life a live instance would count as lost.
        if self.instance_lost_after < Duration::from_secs(30) {
            return Err(SettingsError(
                "instance_lost_after must be at least 30s (the heartbeat key's life)".into(),
            ));
        }
        self.docker_target().map_err(SettingsError)?;
        if !self.artifacts_url.is_empty() && !self.artifacts_url.starts_with("s3://") {
            return Err(SettingsError(format!(
                "artifacts_url {:?} must be s3://bucket[/prefix] (or empty for artifacts_dir)",
                self.artifacts_url
            )));
        }
        if !self.api_addr.is_empty() {
            let addr: std::net::SocketAddr = self.api_addr.parse().map_err(|_| {
                SettingsError(format!(
                    "api_addr {:?} is not an address (e.g. 127.0.0.1:9092)",
                    self.api_addr
                ))
            })?;
            if self.api_tokens.is_empty() && !addr.ip().is_loopback() {
                return Err(SettingsError(format!(
                    "api_addr {} is not a loopback address and no api_tokens are set: the API would be open to the network",
                    self.api_addr
                )));
            }
        }
        if self.repo_timeout.is_zero() {
            return Err(SettingsError("repo_timeout must be positive".into()));
        }
        if !crate::model::protocol::is_valid_token(&self.instance_id, 64) {
            return Err(SettingsError(
                "instance_id must be 1-64 chars of [A-Za-z0-9._:-]".into(),
            ));
        }
        if !crate::model::protocol::is_valid_token(&self.stream_prefix, 64) {
            return Err(SettingsError(
                "stream_prefix must be 1-64 chars of [A-Za-z0-9._:-]".into(),
            ));
        }
        Ok(())
    }

    /// `<prefix>:<name>`.
    pub fn stream(&self, name: &str) -> String {
        format!("{}:{name}", self.stream_prefix)
    }
}

#[cfg(test)]
// figment's Jail returns its own large error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_environment_and_the_environment_over_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("ws.toml", "max_concurrent = 3\nstream_prefix = \"file\"\nblock = \"90s\"\n[policy]\nallow_inline_configs = true\n")?;
            jail.set_env("WORKERS_SPAWNER_STREAM_PREFIX", "env");
            jail.set_env("WORKERS_SPAWNER_REDIS_URL", "redis://env:1");
            let args = SettingsArgs {
                config: Some("ws.toml".into()),
                redis_url: Some("redis://flag:2".into()),
                ..Default::default()
            };
            let s = Settings::load(&args).unwrap();
            assert_eq!(s.max_concurrent, 3);
            assert_eq!(s.stream_prefix, "env");
            assert_eq!(s.redis_url, "redis://flag:2");
            assert_eq!(s.block, Duration::from_secs(90));
            assert!(s.policy.allow_inline_configs);
            assert_eq!(s.stream("spawn"), "env:spawn");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn nested_and_duration_settings_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            assert_eq!(Settings::default().rescan_interval, Duration::from_secs(30));
            jail.set_env("WORKERS_SPAWNER_RESCAN_INTERVAL", "2m");
            jail.set_env(
                "WORKERS_SPAWNER_POLICY__ALLOWED_IMAGES",
                r#"["universal-worker-base:*", "ghcr.io/acme/worker:*"]"#,
            );
            let s = Settings::load(&SettingsArgs::default()).unwrap();
            assert_eq!(s.rescan_interval, Duration::from_secs(120));
            assert_eq!(
                s.policy.allowed_images,
                vec!["universal-worker-base:*", "ghcr.io/acme/worker:*"]
            );
            jail.set_env("WORKERS_SPAWNER_RESCAN_INTERVAL", "0s");
            assert!(Settings::load(&SettingsArgs::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn origins_tell_given_settings_from_defaults() {
        figment::Jail::expect_with(|jail| {
            let (_, o) = Settings::load_with_origins(&SettingsArgs::default()).unwrap();
            assert_eq!(o, Origins::default());
            jail.create_file("ws.toml", "templates_dir = \"/t\"\n")?;
            jail.set_env("WORKERS_SPAWNER_SKILLS_DIR", "/s");
            let args = SettingsArgs {
                config: Some("ws.toml".into()),
                max_concurrent: Some(4),
                ..Default::default()
            };
            let (s, o) = Settings::load_with_origins(&args).unwrap();
            assert_eq!(s.skills_dir, PathBuf::from("/s"));
            assert!(o.is_given("templates_dir"));
            assert!(o.is_given("skills_dir"));
            assert!(o.is_given("max_concurrent"));
            assert!(!o.is_given("presets_dir"));
            assert!(!o.is_given("redis_url"));
            Ok(())
        });
    }

    #[test]
    fn a_bad_setting_is_a_clear_error() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WORKERS_SPAWNER_MAX_CONCURRENT", "lots");
            let e = Settings::load(&SettingsArgs::default()).unwrap_err();
            assert!(
                e.to_string().to_lowercase().contains("max_concurrent"),
                "{e}"
            );
            Ok(())
        });
    }
}
