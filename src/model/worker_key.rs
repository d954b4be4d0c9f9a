//! Worker keys: what a key stands for (its record) and how keys are made
//! and stored. A key is a secret; Redis holds its record under the key's
//! hash only (`adapters::bus`), the gateway checks it (`http::gateway`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a worker key stands for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    /// The request the worker serves.
    pub request_id: String,
    /// Allowed tool groups.
    pub tools: Vec<String>,
    /// End user, if any.
    pub user_id: Option<String>,
    /// Session, if any.
    pub session_id: Option<String>,
    /// Preset id, for redaction of its secrets.
    pub preset: Option<String>,
    /// The container the key belongs to: calls with the key are accepted
    /// only from its addresses. Records of older daemons have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl KeyRecord {
    /// The record of the worker of `spec` in the container named
    /// `container` (calls with its key must come from that container's
    /// address); its end user is the request's (`ORCHESTRATOR_USER_ID`).
    pub fn for_worker(spec: &crate::model::spec::WorkerSpec, container: &str) -> KeyRecord {
        KeyRecord {
            request_id: spec.request_id.clone(),
            tools: spec
                .config
                .allowed_tools
                .iter()
                .map(|t| t.to_string())
                .collect(),
            user_id: spec
                .env
                .iter()
                .find(|v| v.name == "ORCHESTRATOR_USER_ID")
                .map(|v| v.value.clone()),
            session_id: spec.session_id.clone(),
            preset: spec.preset_id.clone(),
            container: Some(container.to_string()),
        }
    }
}

/// A fresh random worker key.
pub fn new_key() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    format!("wsk_{}", hex::encode(b))
}

/// The hash under which a key's record is stored (the key itself never is).
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}
