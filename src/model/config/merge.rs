//! The RFC 7396 merge of an override over a preset, and the hash of a
//! config.

use std::collections::BTreeMap;

use serde_json::Value;

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
