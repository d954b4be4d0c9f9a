//! Worker configs: the typed model of a preset (PROTOCOL.md section 3), the
//! JSON Schema that every preset and every merged config must pass, and the
//! RFC 7396 merge of an override over a preset.
//!
//! This module does no I/O. The schema ships in `schema/` and is compiled
//! into the binary.

mod env;
mod merge;
mod schema;
mod types;

#[cfg(test)]
mod tests;

pub use env::{is_process_start_env, is_valid_env_name, RESERVED_ENV_PREFIX};
pub use merge::{canonical_json, config_hash, merge};
pub use schema::{ConfigError, ConfigSchema, FieldError, SCHEMA_JSON};
pub use types::{
    cpu_in_range, is_valid_slug, parse_memory, AgentSpec, Delivery, EgressRule, EnvValue, KeyRef,
    Limits, ModelApi, ModelEnv, Pool, Security, WorkerConfig, DEFAULT_PIDS, MAX_CPU,
    MAX_MEMORY_BYTES, MAX_PIDS, MIN_CPU, MIN_MEMORY_BYTES, MIN_PIDS,
};
