//! The typed model of a worker config (PROTOCOL.md section 3): the config
//! and its parts, the bounds of its limits and the forms of its values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A worker config: a preset, or a preset with an override merged in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Preset id (= file name without `.json`).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Free text for admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Role, for role-specific instruction templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Locale, for locale-specific instruction templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Base image reference.
    pub image: String,
    /// Debian packages baked into a derived image.
    #[serde(default)]
    pub system_packages: Vec<String>,
    /// Shell commands baked into a derived image.
    #[serde(default)]
    pub bootstrap_commands: Vec<String>,
    /// Which agent runs and how.
    pub agent: AgentSpec,
    /// What the worker may call: tool groups (`deploy`) or single actions
    /// (`deploy:status`), checked against the loaded tool catalog
    /// (`model::tools`).
    pub allowed_tools: Vec<String>,
    /// Extra Docker network to attach (infrastructure access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Whether the worker may reach the internet.
    #[serde(default)]
    pub has_internet: bool,
    /// Which hosts it may reach when it may (`model::egress`).
    #[serde(default, skip_serializing_if = "EgressRule::is_default")]
    pub egress: EgressRule,
    /// Model API routes whose keys the daemon adds on the way out, so that
    /// the keys never enter the container (`model::egress::Route`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_api: BTreeMap<String, ModelApi>,
    /// Environment of the agent.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Env names a request's override may set, change or remove: exact
    /// names, or prefixes ending in `*` (`APP_*`). A name that changes how
    /// a process starts ([`is_process_start_env`](super::is_process_start_env))
    /// matches an exact entry only. Nothing listed: an override may not
    /// touch `env` at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_overridable: Vec<String>,
    /// Resource and time limits.
    pub limits: Limits,
    /// Container hardening knobs a preset may set.
    #[serde(default, skip_serializing_if = "Security::is_default")]
    pub security: Security,
    /// Warm pool of ready containers.
    #[serde(default, skip_serializing_if = "Pool::is_default")]
    pub pool: Pool,
    /// Which failures run the request again (`model::retry`); none when
    /// absent. A retry keeps the request's config, limits included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::model::retry::RetryPolicy>,
    /// The repository the worker starts from and what becomes of its
    /// change (`model::workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::model::workspace::WorkspaceConfig>,
    /// Globs below `/workspace` kept as artifacts when the agent ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
}

/// `agent` of a worker config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Agent type; selects the instruction layout (`templates/<type>/`).
    #[serde(rename = "type")]
    pub kind: String,
    /// argv of the agent; exactly one element is `{prompt}`.
    pub command: Vec<String>,
    /// How a one-shot worker's files reach its container.
    #[serde(default, skip_serializing_if = "Delivery::is_default")]
    pub delivery: Delivery,
    /// Replaces the agent layout's `conversation` (how a session's tasks
    /// continue one conversation); `false`: every task starts afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<PresetConversation>,
}

/// `agent.conversation` of a preset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PresetConversation {
    /// Declared here, in place of the layout's.
    Declared(crate::model::conversation::Conversation),
    /// `false`: none (the schema allows no `true`).
    Off(bool),
}

impl PresetConversation {
    /// The declaration, when there is one.
    pub fn declared(&self) -> Option<&crate::model::conversation::Conversation> {
        match self {
            PresetConversation::Declared(c) => Some(c),
            PresetConversation::Off(_) => None,
        }
    }
}

/// `agent.delivery`: how a one-shot worker receives its files.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// A tar on the container's stdin, unpacked by a `sh` shim before the
    /// agent starts (fast; the image needs `sh` and `tar`).
    #[default]
    Stdin,
    /// Docker's archive API before the start (any image, slower).
    Archive,
}

impl Delivery {
    fn is_default(&self) -> bool {
        *self == Delivery::Stdin
    }
}

/// An env value: plain text, or a variable of the daemon's own environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum EnvValue {
    /// Literal value.
    Plain(String),
    /// Read from the daemon's environment at spawn time; a secret.
    FromEnv {
        /// Name of the daemon's variable.
        from_env: String,
    },
}

/// `limits` of a worker config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPUs (fractional).
    pub cpu: f64,
    /// Memory, `"4g"` style.
    pub memory: String,
    /// Bound of one task, seconds.
    pub timeout_sec: u64,
    /// Bound of a container's life, seconds.
    pub ttl_sec: u64,
    /// Max processes in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// Default `pids` limit when a preset sets none.
pub const DEFAULT_PIDS: u32 = 512;

/// Smallest `limits.cpu` the engine can enforce: runc refuses a CFS quota
/// under 1 ms per 100 ms period (0.001 fails at start), and a NanoCpus of 0
/// means no limit at all.
pub const MIN_CPU: f64 = 0.01;
/// Largest `limits.cpu` a config may ask for (the schema's maximum).
pub const MAX_CPU: f64 = 64.0;
/// Smallest memory limit Docker accepts (6 MiB); 0 would mean no limit.
pub const MIN_MEMORY_BYTES: u64 = 6 << 20;
/// Largest memory limit a config may ask for (1 PiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Smallest `limits.pids` (the schema's minimum); 0 or -1 would mean no limit.
pub const MIN_PIDS: u32 = 16;
/// Largest `limits.pids` (the schema's maximum).
pub const MAX_PIDS: u32 = 65536;

impl Limits {
    /// Effective pids limit.
    pub fn pids(&self) -> u32 {
        self.pids.unwrap_or(DEFAULT_PIDS)
    }

    /// Memory in bytes (the schema guarantees the format).
    pub fn memory_bytes(&self) -> Result<u64, String> {
        parse_memory(&self.memory)
    }
}

/// `security` of a worker config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Capabilities added back after dropping all (bounded by a setting).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Read-only root filesystem with writable workspace and tmpfs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root: bool,
}

impl Security {
    fn is_default(&self) -> bool {
        *self == Security::default()
    }
}

/// `egress` of a worker config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// Host names, `*.suffix` patterns and IP literals the worker may
    /// reach; absent: every public host (with `has_internet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
}

impl EgressRule {
    fn is_default(&self) -> bool {
        *self == EgressRule::default()
    }
}

/// One entry of `model_api`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelApi {
    /// The key, from the daemon's environment.
    pub key: KeyRef,
    /// The upstream (a shipped provider's public endpoint when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The header carrying the key (`authorization` gets `Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The worker's variables for the base URL and the placeholder key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<ModelEnv>,
}

/// A secret read from the daemon's environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    /// The daemon's variable.
    pub from_env: String,
}

/// `model_api.<name>.env`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelEnv {
    /// The variable holding the route's base URL.
    pub base_url: String,
    /// The variable holding the placeholder key.
    pub key: String,
}

/// `pool` of a worker config.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Ready containers to keep.
    #[serde(default)]
    pub size: u32,
}

impl Pool {
    fn is_default(&self) -> bool {
        self.size == 0
    }
}

/// Parses `"4g"`, `"512m"`, `"1.5g"`, `"1048576"` into bytes.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1u64 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1u64 << 30),
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("memory {s:?} is not a size: write e.g. 512m or 4g"))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("memory {s:?} must be more than 0"));
    }
    let bytes = n * mult as f64;
    if bytes < MIN_MEMORY_BYTES as f64 {
        return Err(format!("memory {s:?} is below Docker's minimum of 6m"));
    }
    if bytes > MAX_MEMORY_BYTES as f64 {
        return Err(format!("memory {s:?} is implausibly large"));
    }
    Ok(bytes as u64)
}

/// Whether `s` is a valid preset id / role: `^[a-z0-9][a-z0-9_.-]{0,63}$`.
pub fn is_valid_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
        && !s.contains("..")
}

/// Whether `cpu` is a CPU limit the engine enforces as given: finite and
/// within [`MIN_CPU`]..=[`MAX_CPU`] (so never 0, -0, a subnormal or NaN,
/// which the engine would take as "no limit" or refuse at start).
pub fn cpu_in_range(cpu: f64) -> bool {
    cpu.is_finite() && (MIN_CPU..=MAX_CPU).contains(&cpu)
}
