//! Events of `workers:events` (PROTOCOL.md section 8): their kinds and the
//! entry that carries a payload.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Kinds of `workers:events` entries (PROTOCOL.md section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The request was read and will be worked on.
    Accepted,
    /// The request was refused (a `rejected` result follows).
    Rejected,
    /// A derived image is being built.
    ImageBuilding,
    /// The container exists.
    ContainerCreated,
    /// The agent process started.
    Started,
    /// A line of agent output.
    Output,
    /// Output lines were dropped by the rate bound.
    OutputDropped,
    /// The agent exited.
    Finished,
    /// The task was stopped at its timeout.
    TimedOut,
    /// The task was cancelled.
    Cancelled,
    /// The container was removed.
    Removed,
    /// A session container was created.
    SessionCreated,
    /// A session ended at its TTL, idle timeout or cancel.
    SessionExpired,
    /// A message the agent sent with `orchestrator respond`.
    Respond,
    /// `respond` messages over the per-worker rate bound were refused.
    RespondDropped,
    /// A preset, skill or template file was rejected on reload.
    CatalogError,
    /// A decision of the worker's egress socket (a tunnel, proxied request
    /// or model call: allowed or denied, and its bytes each way once closed).
    Egress,
    /// The request runs again (its retry policy): which attempt ended, why,
    /// and when the next one starts.
    Retrying,
    /// An instance was lost (no heartbeat for `instance_lost_after`) and
    /// the requests it held were taken over.
    InstanceLost,
    /// The request's repository is checked out (`base`, `branch`), before
    /// its container exists.
    RepoReady,
    /// The agent's workspace was read back (its change, pushed or not; its
    /// artifacts), before the result.
    WorkspaceCollected,
}

/// One entry of `workers:events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// The request the event belongs to (empty for daemon-wide events).
    pub request_id: String,
    /// Per-request sequence number, starting at 1.
    pub seq: u64,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When, RFC 3339.
    pub ts: String,
    /// Event-specific payload.
    pub data: Value,
}
