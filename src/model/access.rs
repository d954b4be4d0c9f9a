//! Who may do what on the HTTP API: a token's role, each including the
//! ones before it (`read` < `submit` < `admin`).

use serde::{Deserialize, Serialize};

/// What an API token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every `GET`.
    Read,
    /// `POST /v1/requests` too.
    Submit,
    /// The cancels too.
    Admin,
}
