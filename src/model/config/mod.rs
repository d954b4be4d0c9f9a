//! Worker configs: the typed model of a preset (PROTOCOL.md section 3), the
//! JSON Schema that every preset and every merged config must pass, and the
//! RFC 7396 merge of an override over a preset.
//!
//! This module does no I/O. The schema ships in `schema/` and is compiled
//! into the binary.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The worker config JSON Schema (Draft 2020-12), as shipped in the repo.
pub const SCHEMA_JSON: &str = include_str!("../../../schema/worker-config.schema.json");

/// Env var prefix reserved for variables the daemon itself sets.
pub const RESERVED_ENV_PREFIX: &str = "ORCHESTRATOR_";

/// A tool group of the in-container `orchestrator` CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// `orchestrator project [list|get|create]`
    Project,
    /// `orchestrator deploy [trigger|status|logs]`
    Deploy,
    /// `orchestrator engineering [trigger|status]`
    Engineering,
    /// `orchestrator infra [allocate|list]`
    Infra,
    /// `orchestrator respond "<message>"`
    Respond,
    /// `orchestrator admin ...` (privileged; presets normally do not allow it)
    Admin,
}

impl Tool {
    /// Every tool group, in a stable order.
    pub const ALL: [Tool; 6] = [
        Tool::Project,
        Tool::Deploy,
        Tool::Engineering,
        Tool::Infra,
        Tool::Respond,
        Tool::Admin,
    ];

    /// The group's name on the command line and in `ORCHESTRATOR_ALLOWED_TOOLS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::Project => "project",
            Tool::Deploy => "deploy",
            Tool::Engineering => "engineering",
            Tool::Infra => "infra",
            Tool::Respond => "respond",
            Tool::Admin => "admin",
        }
    }

    /// The tool with this name, if any.
    pub fn parse(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// Tool groups the worker may use.
    pub allowed_tools: Vec<Tool>,
    /// Extra Docker network to attach (infrastructure access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Whether the worker may reach the internet.
    #[serde(default)]
    pub has_internet: bool,
    /// Environment of the agent.
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Env names a request's override may set, change or remove: exact
    /// names, or prefixes ending in `*` (`APP_*`). A name that changes how
    /// a process starts ([`is_process_start_env`]) matches an exact entry
    /// only. Nothing listed: an override may not touch `env` at all.
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

/// Env names that change how a process starts, loads code or reaches the
/// network rather than what it works on: the shell's start-up files and
/// prompt hooks (`BASH_ENV` makes bash run a file before `bash -c`, such as
/// the prompt file), the dynamic loader, interpreters' start-up and module
/// paths, git's hooks and helpers, `PATH`, proxies and API base URLs (the
/// agent's own API key would follow them). Compared without regard to case.
const PROCESS_START_ENV: &[&str] = &[
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS0",
    "PS1",
    "PS2",
    "PS3",
    "PS4",
    "PROMPT_COMMAND",
    "IFS",
    "CDPATH",
    "GLOBIGNORE",
    "ZDOTDIR",
    "INPUTRC",
    "PATH",
    "HOME",
    "SHELL",
    "TMPDIR",
    "LOCPATH",
    "NLSPATH",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "HOSTALIASES",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "LOCALDOMAIN",
    "CLASSPATH",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "MANPAGER",
    "LESSOPEN",
    "LESSCLOSE",
    "BROWSER",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "CURL_HOME",
    "CURL_CA_BUNDLE",
    "WGETRC",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
];

/// Prefixes of [`PROCESS_START_ENV`]-like names (`LD_PRELOAD`,
/// `PYTHONSTARTUP`, `NODE_OPTIONS`, `GIT_SSH_COMMAND`, ...).
const PROCESS_START_ENV_PREFIXES: &[&str] = &[
    "LD_",
    "DYLD_",
    "BASH_FUNC_",
    "PYTHON",
    "NODE_",
    "NPM_CONFIG_",
    "YARN_",
    "GIT_",
    "PERL",
    "RUBY",
    "GEM_",
    "BUNDLE_",
    "JAVA_",
    "_JAVA_",
    "JDK_",
    "MALLOC_",
    "XDG_",
    "DOCKER_",
];

/// Suffixes of such names (`HTTPS_PROXY`, `ANTHROPIC_BASE_URL`, ...).
const PROCESS_START_ENV_SUFFIXES: &[&str] = &["_PROXY", "_BASE_URL", "_API_BASE"];

/// Whether the env name `name` changes how a process starts (see
/// [`PROCESS_START_ENV`]): such a name is set only where a preset states it
/// exactly, never through a pattern or an inline config.
pub fn is_process_start_env(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    PROCESS_START_ENV.contains(&n.as_str())
        || PROCESS_START_ENV_PREFIXES.iter().any(|p| n.starts_with(p))
        || PROCESS_START_ENV_SUFFIXES.iter().any(|s| n.ends_with(s))
}

impl WorkerConfig {
    /// Whether this preset lets an override set, change or remove the env
    /// name `name`: it is listed exactly in `env_overridable`, or matches a
    /// `PREFIX*` entry there and does not change how a process starts.
    pub fn env_overridable_allows(&self, name: &str) -> bool {
        self.env_overridable
            .iter()
            .any(|entry| match entry.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix) && !is_process_start_env(name),
                None => entry == name,
            })
    }
}

/// Whether `s` is a valid environment variable name.
pub fn is_valid_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// One schema or semantic violation, with the JSON pointer of the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field (`limits.memory`), or `(root)`.
    pub field: String,
    /// What is wrong with it and what would be valid, as one sentence
    /// that names the field itself (`limits.cpu must be a number, got the
    /// string "two"`).
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a JSON value is not a valid worker config.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid worker config: {}", self.messages())]
pub struct ConfigError {
    /// Every violation found, the first one being the most useful.
    pub errors: Vec<FieldError>,
}

impl ConfigError {
    fn one(field: &str, message: impl Into<String>) -> Self {
        ConfigError {
            errors: vec![FieldError {
                field: field.to_string(),
                message: message.into(),
            }],
        }
    }

    /// Every message, joined with `; `.
    pub fn messages(&self) -> String {
        self.errors
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The first offending field.
    pub fn field(&self) -> &str {
        self.errors
            .first()
            .map(|e| e.field.as_str())
            .unwrap_or("(root)")
    }
}

/// The compiled worker config schema plus the semantic checks a schema
/// cannot express.
///
/// Memory: building a validator also checks the schema against the Draft
/// 2020-12 meta-schema, whose own validator the `jsonschema` crate keeps in
/// a process-wide static. Up to jsonschema 0.33 that meta-validator expanded
/// every `$ref`/`$dynamicRef` of the meta-schema into its own node tree:
/// ~50 MiB of heap held for the life of the daemon (measured with heaptrack
/// and VmRSS: 66 MiB idle RSS, of which 50 MiB anonymous from this alone;
/// compiling our own schema costs ~1 MiB, the regex engine is irrelevant).
/// From 0.34 on, references compile to shared nodes and the same build costs
/// about 1 MiB, which is why Cargo.toml asks for a recent version.
pub struct ConfigSchema {
    validator: jsonschema::Validator,
    /// The schema itself, for the messages of [`crate::model::diagnose`].
    schema: Value,
}

impl fmt::Debug for ConfigSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigSchema")
    }
}

impl ConfigSchema {
    /// Compiles the shipped schema.
    pub fn new() -> Self {
        let schema: Value =
            serde_json::from_str(SCHEMA_JSON).expect("the shipped schema is valid JSON");
        let validator = jsonschema::draft202012::new(&schema)
            .expect("the shipped schema is a valid Draft 2020-12 schema");
        ConfigSchema { validator, schema }
    }

    /// Validates `value` and returns the typed config.
    pub fn validate(&self, value: &Value) -> Result<WorkerConfig, ConfigError> {
        let mut errors: Vec<FieldError> = self
            .validator
            .iter_errors(value)
            .flat_map(|e| crate::model::diagnose::describe(&self.schema, &e))
            .collect();
        if !errors.is_empty() {
            errors.sort_by_key(|e| std::cmp::Reverse(e.field.matches('.').count()));
            return Err(ConfigError { errors });
        }
        let config: WorkerConfig = serde_json::from_value(value.clone()).map_err(|e| {
            ConfigError::one(
                "(root)",
                format!("the preset does not fit the worker config model: {e}"),
            )
        })?;
        check_semantics(&config)?;
        Ok(config)
    }
}

impl Default for ConfigSchema {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `cpu` is a CPU limit the engine enforces as given: finite and
/// within [`MIN_CPU`]..=[`MAX_CPU`] (so never 0, -0, a subnormal or NaN,
/// which the engine would take as "no limit" or refuse at start).
pub fn cpu_in_range(cpu: f64) -> bool {
    cpu.is_finite() && (MIN_CPU..=MAX_CPU).contains(&cpu)
}

/// Rules the JSON Schema cannot express.
fn check_semantics(c: &WorkerConfig) -> Result<(), ConfigError> {
    let mut errors = Vec::new();
    // The schema has the same bounds; this holds them for configs that did
    // not come through it, and against float edge cases.
    if !cpu_in_range(c.limits.cpu) {
        errors.push(FieldError {
            field: "limits.cpu".into(),
            message: format!(
                "limits.cpu {} is outside {MIN_CPU}..={MAX_CPU} (below {MIN_CPU} the engine cannot enforce it)",
                c.limits.cpu
            ),
        });
    }
    if let Err(m) = parse_memory(&c.limits.memory) {
        errors.push(FieldError {
            field: "limits.memory".into(),
            message: format!("limits.{m}"),
        });
    }
    for (i, entry) in c
        .env_overridable
        .iter()
        .enumerate()
        .filter(|(_, e)| e.to_ascii_uppercase().starts_with(RESERVED_ENV_PREFIX))
    {
        errors.push(FieldError {
            field: format!("env_overridable.{i}"),
            message: format!(
                "env_overridable.{i}: {entry}: env names starting with {RESERVED_ENV_PREFIX} are reserved for the daemon"
            ),
        });
    }
    for name in c
        .env
        .keys()
        .filter(|k| k.to_ascii_uppercase().starts_with(RESERVED_ENV_PREFIX))
    {
        errors.push(FieldError {
            field: format!("env.{name}"),
            message: format!(
                "env.{name}: names starting with {RESERVED_ENV_PREFIX} are reserved for the daemon, which sets them itself; choose another name"
            ),
        });
    }
    if let Err(m) = crate::model::image_ref::normalize(&c.image) {
        errors.push(FieldError {
            field: "image".into(),
            message: format!("image {:?} is not a valid image reference: {m}", c.image),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { errors })
    }
}

/// Applies `patch` to `base` as an RFC 7396 JSON Merge Patch.
pub fn merge(base: &Value, patch: &Value) -> Value {
    let mut merged = base.clone();
    json_patch::merge(&mut merged, patch);
    merged
}

/// Hash of a config: sha256 of its canonical (sorted-key) JSON, hex, 16 bytes.
pub fn config_hash(config: &Value) -> String {
    use sha2::{Digest, Sha256};
    let canonical = canonical_json(config);
    let digest = Sha256::digest(canonical.as_bytes());
    hex::encode(&digest[..16])
}

/// JSON with object keys sorted, whatever map order serde_json uses.
pub fn canonical_json(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn valid() -> Value {
        json!({
            "id": "po_claude_v1",
            "name": "Product Owner (Claude)",
            "image": "universal-worker-base:latest",
            "system_packages": ["git", "curl"],
            "bootstrap_commands": [],
            "agent": {"type": "claude-code", "command": ["claude", "-p", "{prompt}"]},
            "allowed_tools": ["project", "deploy", "respond"],
            "network": "codegen_orchestrator_internal",
            "has_internet": true,
            "env": {"ANTHROPIC_API_KEY": {"from_env": "ANTHROPIC_API_KEY"}, "MODE": "x"},
            "limits": {"cpu": 2.0, "memory": "4g", "timeout_sec": 600, "ttl_sec": 7200}
        })
    }

    fn field_of(v: Value) -> String {
        ConfigSchema::new()
            .validate(&v)
            .unwrap_err()
            .field()
            .to_string()
    }

    fn with(mut v: Value, pointer: &str, new: Value) -> Value {
        *v.pointer_mut(pointer).unwrap() = new;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().unwrap().remove(key);
        v
    }

    #[test]
    fn the_shipped_schema_is_a_valid_draft_2020_12_schema() {
        let schema: Value = serde_json::from_str(SCHEMA_JSON).unwrap();
        assert!(jsonschema::draft202012::meta::is_valid(&schema));
        jsonschema::draft202012::new(&schema).unwrap();
    }

    #[test]
    fn a_valid_preset_passes_and_is_typed() {
        let c = ConfigSchema::new().validate(&valid()).unwrap();
        assert_eq!(
            c.allowed_tools,
            vec![Tool::Project, Tool::Deploy, Tool::Respond]
        );
        assert_eq!(c.limits.memory_bytes().unwrap(), 4 << 30);
        assert_eq!(
            c.env["ANTHROPIC_API_KEY"],
            EnvValue::FromEnv {
                from_env: "ANTHROPIC_API_KEY".into()
            }
        );
    }

    #[test]
    fn each_required_field_is_named_when_missing() {
        for key in ["id", "name", "image", "agent", "allowed_tools", "limits"] {
            assert_eq!(field_of(without(valid(), key)), key);
        }
    }

    #[test]
    fn an_unknown_top_level_field_is_named() {
        let mut v = valid();
        v["colour"] = json!("blue");
        assert_eq!(field_of(v), "colour");
    }

    #[test]
    fn an_unknown_nested_field_is_named() {
        let v = with(
            valid(),
            "/limits",
            json!({"cpu": 1, "memory": "1g", "timeout_sec": 1, "ttl_sec": 1, "gpu": 1}),
        );
        assert_eq!(field_of(v), "limits.gpu");
    }

    #[test]
    fn an_unknown_tool_is_named_with_every_allowed_one() {
        let v = with(valid(), "/allowed_tools", json!(["project", "nope"]));
        let e = ConfigSchema::new().validate(&v).unwrap_err();
        assert_eq!(e.field(), "allowed_tools.1");
        assert_eq!(
            e.errors[0].message,
            r#"allowed_tools: unknown tool "nope" (known: project, deploy, engineering, infra, respond, admin)"#
        );
    }

    #[test]
    fn a_bad_id_is_refused() {
        assert_eq!(field_of(with(valid(), "/id", json!("../etc"))), "id");
        assert_eq!(field_of(with(valid(), "/id", json!("UPPER"))), "id");
    }

    #[test]
    fn a_command_without_the_prompt_placeholder_is_refused() {
        assert_eq!(
            field_of(with(valid(), "/agent/command", json!(["claude"]))),
            "agent.command"
        );
    }

    #[test]
    fn a_command_with_two_prompt_placeholders_is_refused() {
        let v = with(
            valid(),
            "/agent/command",
            json!(["a", "{prompt}", "{prompt}"]),
        );
        assert_eq!(field_of(v), "agent.command");
    }

    #[test]
    fn an_unknown_tool_is_refused() {
        assert_eq!(
            field_of(with(valid(), "/allowed_tools", json!(["project", "nuke"]))),
            "allowed_tools.1"
        );
    }

    #[test]
    fn duplicate_tools_are_refused() {
        assert_eq!(
            field_of(with(
                valid(),
                "/allowed_tools",
                json!(["project", "project"])
            )),
            "allowed_tools"
        );
    }

    #[test]
    fn wrong_types_are_named() {
        assert_eq!(
            field_of(with(valid(), "/has_internet", json!("yes"))),
            "has_internet"
        );
        assert_eq!(
            field_of(with(valid(), "/limits/cpu", json!("2"))),
            "limits.cpu"
        );
        assert_eq!(
            field_of(with(valid(), "/limits/timeout_sec", json!(1.5))),
            "limits.timeout_sec"
        );
        assert_eq!(
            field_of(with(valid(), "/system_packages", json!("git"))),
            "system_packages"
        );
    }

    #[test]
    fn limits_out_of_range_are_refused() {
        assert_eq!(
            field_of(with(valid(), "/limits/cpu", json!(0))),
            "limits.cpu"
        );
        assert_eq!(
            field_of(with(valid(), "/limits/timeout_sec", json!(0))),
            "limits.timeout_sec"
        );
        assert_eq!(
            field_of(with(valid(), "/limits/memory", json!("4 gigs"))),
            "limits.memory"
        );
        assert_eq!(
            field_of(with(valid(), "/limits/memory", json!("1k"))),
            "limits.memory"
        );
    }

    /// Every numeric limit at its edges: tiny, zero, negative zero,
    /// subnormal, negative, huge. None may reach the engine as 0 ("no
    /// limit") or as a value the runtime refuses at start.
    #[test]
    fn every_numeric_limit_is_refused_at_its_edges() {
        let cases = [
            ("/limits/cpu", json!(1e-10), "limits.cpu"),
            ("/limits/cpu", json!(0.001), "limits.cpu"),
            ("/limits/cpu", json!(0.0099), "limits.cpu"),
            ("/limits/cpu", json!(0), "limits.cpu"),
            ("/limits/cpu", json!(-0.0), "limits.cpu"),
            ("/limits/cpu", json!(5e-324), "limits.cpu"),
            ("/limits/cpu", json!(-1), "limits.cpu"),
            ("/limits/cpu", json!(64.5), "limits.cpu"),
            ("/limits/cpu", json!(1e308), "limits.cpu"),
            ("/limits/memory", json!("0"), "limits.memory"),
            ("/limits/memory", json!("0g"), "limits.memory"),
            ("/limits/memory", json!("0.0000001g"), "limits.memory"),
            ("/limits/memory", json!("5m"), "limits.memory"),
            ("/limits/memory", json!("-1g"), "limits.memory"),
            ("/limits/memory", json!("1e-10g"), "limits.memory"),
            ("/limits/memory", json!("99999999g"), "limits.memory"),
            ("/limits/pids", json!(0), "limits.pids"),
            ("/limits/pids", json!(-0.0), "limits.pids"),
            ("/limits/pids", json!(-1), "limits.pids"),
            ("/limits/pids", json!(15), "limits.pids"),
            ("/limits/pids", json!(65537), "limits.pids"),
            ("/limits/pids", json!(1e300), "limits.pids"),
            ("/limits/timeout_sec", json!(0), "limits.timeout_sec"),
            ("/limits/timeout_sec", json!(-0.0), "limits.timeout_sec"),
            ("/limits/timeout_sec", json!(5e-324), "limits.timeout_sec"),
            ("/limits/timeout_sec", json!(604801), "limits.timeout_sec"),
            ("/limits/ttl_sec", json!(0), "limits.ttl_sec"),
            ("/limits/ttl_sec", json!(-1), "limits.ttl_sec"),
            ("/limits/ttl_sec", json!(1e20), "limits.ttl_sec"),
        ];
        for (pointer, value, field) in cases {
            let mut v = valid();
            v["limits"]["pids"] = json!(64);
            assert_eq!(
                field_of(with(v, pointer, value.clone())),
                field,
                "{pointer} = {value}"
            );
        }
        // The floors themselves are accepted.
        let mut v = valid();
        v["limits"] = json!({"cpu": MIN_CPU, "memory": "6m", "timeout_sec": 1, "ttl_sec": 1, "pids": MIN_PIDS});
        ConfigSchema::new().validate(&v).unwrap();
    }

    #[test]
    fn the_cpu_range_check_holds_for_float_edge_cases() {
        for bad in [
            0.0,
            -0.0,
            5e-324,
            1e-10,
            0.001,
            f64::NAN,
            f64::INFINITY,
            -1.0,
            64.01,
        ] {
            assert!(!cpu_in_range(bad), "{bad}");
        }
        for good in [MIN_CPU, 0.5, 1.0, MAX_CPU] {
            assert!(cpu_in_range(good), "{good}");
        }
    }

    #[test]
    fn env_values_must_be_strings_or_from_env() {
        assert_eq!(field_of(with(valid(), "/env", json!({"A": 1}))), "env.A");
        // The misspelt key itself is named.
        assert_eq!(
            field_of(with(valid(), "/env", json!({"A": {"from": "B"}}))),
            "env.A.from"
        );
        assert_eq!(field_of(with(valid(), "/env", json!({"1BAD": "x"}))), "env");
    }

    #[test]
    fn reserved_env_names_are_refused() {
        assert_eq!(
            field_of(with(valid(), "/env", json!({"ORCHESTRATOR_API_KEY": "x"}))),
            "env.ORCHESTRATOR_API_KEY"
        );
        assert_eq!(
            field_of(with(
                valid(),
                "/env",
                json!({"orchestrator_allowed_tools": "x"})
            )),
            "env.orchestrator_allowed_tools"
        );
    }

    #[test]
    fn names_that_change_how_a_process_starts_are_recognised_in_any_case() {
        for name in [
            "BASH_ENV",
            "ENV",
            "PATH",
            "path",
            "PROMPT_COMMAND",
            "SHELLOPTS",
            "PS4",
            "LD_PRELOAD",
            "ld_library_path",
            "NODE_OPTIONS",
            "PYTHONSTARTUP",
            "PYTHONPATH",
            "GIT_SSH_COMMAND",
            "GIT_CONFIG_GLOBAL",
            "PERL5OPT",
            "RUBYOPT",
            "JAVA_TOOL_OPTIONS",
            "HTTPS_PROXY",
            "http_proxy",
            "ANTHROPIC_BASE_URL",
            "BASH_FUNC_x",
            "HOME",
        ] {
            assert!(is_process_start_env(name), "{name}");
        }
        for name in [
            "MODE",
            "LOG_LEVEL",
            "APP_COLOUR",
            "ANTHROPIC_API_KEY",
            "ENVIRONMENT",
            "TZ",
        ] {
            assert!(!is_process_start_env(name), "{name}");
        }
    }

    #[test]
    fn env_overridable_patterns_never_cover_process_start_names() {
        let mut v = valid();
        v["env_overridable"] = json!(["MODE", "APP_*", "L*", "PATH"]);
        let c = ConfigSchema::new().validate(&v).unwrap();
        assert!(c.env_overridable_allows("MODE"));
        assert!(c.env_overridable_allows("APP_X"));
        assert!(c.env_overridable_allows("LOG_LEVEL"));
        assert!(!c.env_overridable_allows("LD_PRELOAD"), "a pattern");
        assert!(c.env_overridable_allows("PATH"), "stated exactly");
        assert!(!c.env_overridable_allows("MODEX"));
        assert!(!c.env_overridable_allows("mode"), "names are exact");
        for bad in [json!(["*"]), json!(["A B"]), json!(["A**"]), json!(["1A"])] {
            let mut v = valid();
            v["env_overridable"] = bad.clone();
            assert_eq!(
                field_of(v).split('.').next(),
                Some("env_overridable"),
                "{bad}"
            );
        }
        let mut v = valid();
        v["env_overridable"] = json!(["MODE", "ORCHESTRATOR_API_URL"]);
        assert_eq!(field_of(v), "env_overridable.1");
    }

    #[test]
    fn bad_image_references_are_refused() {
        for bad in ["UPPER:latest", "a b", "-x", "x:", "x@sha256:zz"] {
            assert_eq!(
                field_of(with(valid(), "/image", json!(bad))),
                "image",
                "{bad}"
            );
        }
    }

    #[test]
    fn system_package_names_are_checked() {
        assert_eq!(
            field_of(with(valid(), "/system_packages", json!(["git; rm -rf /"]))),
            "system_packages.0"
        );
    }

    #[test]
    fn merge_merges_objects() {
        let m = merge(&valid(), &json!({"limits": {"timeout_sec": 300}}));
        assert_eq!(m["limits"]["timeout_sec"], 300);
        assert_eq!(m["limits"]["memory"], "4g");
    }

    #[test]
    fn merge_replaces_arrays() {
        let m = merge(&valid(), &json!({"allowed_tools": ["respond"]}));
        assert_eq!(m["allowed_tools"], json!(["respond"]));
    }

    #[test]
    fn merge_deletes_on_null() {
        let m = merge(&valid(), &json!({"network": null, "env": {"MODE": null}}));
        assert!(m.get("network").is_none());
        assert!(m["env"].get("MODE").is_none());
        assert!(m["env"].get("ANTHROPIC_API_KEY").is_some());
    }

    #[test]
    fn a_merge_that_breaks_the_schema_is_caught_on_revalidation() {
        let m = merge(&valid(), &json!({"limits": {"memory": null}}));
        assert_eq!(field_of(m), "limits.memory");
    }

    #[test]
    fn the_config_hash_ignores_key_order() {
        let a = json!({"a": 1, "b": {"c": 2, "d": 3}});
        let b = json!({"b": {"d": 3, "c": 2}, "a": 1});
        assert_eq!(config_hash(&a), config_hash(&b));
        assert_ne!(config_hash(&a), config_hash(&json!({"a": 2})));
    }

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1.5g").unwrap(), 3 << 29);
        assert!(parse_memory("0g").is_err());
    }
}
