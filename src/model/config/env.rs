//! Env names of a worker config: the prefix reserved for the daemon, the
//! names that change how a process starts, and which names an override may
//! touch.

use super::types::WorkerConfig;

/// Env var prefix reserved for variables the daemon itself sets.
pub const RESERVED_ENV_PREFIX: &str = "ORCHESTRATOR_";

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
