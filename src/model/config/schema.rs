//! The worker config JSON Schema, compiled, and the semantic checks it
//! cannot express: what turns a JSON value into a [`WorkerConfig`] or a
//! [`ConfigError`] naming every offending field.

use std::fmt;

use serde_json::Value;

use super::env::RESERVED_ENV_PREFIX;
use super::types::{cpu_in_range, parse_memory, WorkerConfig, MAX_CPU, MIN_CPU};

/// The worker config JSON Schema (Draft 2020-12), as shipped in the repo.
pub const SCHEMA_JSON: &str = include_str!("../../../schema/worker-config.schema.json");

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
