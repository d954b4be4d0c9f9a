//! Results of `workers:result` (PROTOCOL.md section 7): the terminal
//! [`Status`], the record and its `error`, `worker` and `timings` parts.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Terminal status of a request (PROTOCOL.md section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The agent exited 0.
    Succeeded,
    /// The agent exited non-zero or was OOM-killed.
    Failed,
    /// The task ran past `timeout_sec` (or its session's TTL) and was stopped.
    TimedOut,
    /// A control command stopped the worker.
    Cancelled,
    /// The request was invalid; `error` names the field.
    Rejected,
    /// Infrastructure failure (image missing, Docker unreachable, ...).
    Error,
}

impl Status {
    /// The wire name, also used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed_out",
            Status::Cancelled => "cancelled",
            Status::Rejected => "rejected",
            Status::Error => "error",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `error` object of a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorInfo {
    /// Machine-readable reason.
    pub code: String,
    /// The offending field, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Human-readable explanation (names the field).
    pub message: String,
}

/// `worker` object of a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct WorkerInfo {
    /// Container name.
    pub container: String,
    /// Image the container ran.
    pub image: String,
    /// Preset id, if the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Hash of the merged config.
    pub config_hash: String,
    /// Daemon instance that ran it.
    pub instance: String,
}

/// `timings` object of a result; instants are RFC 3339.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Timings {
    /// When the daemon read the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// When the agent process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the result was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Entry id time to reception, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    /// Reception to agent start, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
    /// Agent start to finish, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<u64>,
}

/// One entry of `workers:result`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRecord {
    /// The request this result answers.
    pub request_id: String,
    /// Terminal status.
    pub status: Status,
    /// Agent exit code, when it ran.
    pub exit_code: Option<i64>,
    /// Whether the kernel OOM killer stopped the container.
    pub oom_killed: bool,
    /// Why it was rejected or errored.
    pub error: Option<ErrorInfo>,
    /// Tail of stdout (redacted).
    pub output: String,
    /// Whether `output` lost its beginning.
    pub output_truncated: bool,
    /// Session of the request, if any.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Which container ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerInfo>,
    /// Timing breakdown.
    #[serde(default)]
    pub timings: Timings,
    /// Dry run only: the merged config (secrets redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// Dry run only: the rendered files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileView>>,
    /// Which run of the request this is (1 = the first; written only from
    /// 2 on, when a retry policy ran it again).
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: u32,
    /// The change the agent made to its repository, when it started from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<crate::model::workspace::WorkspaceReport>,
    /// What the request left in the artifact store: its transcript, its
    /// patch, its declared artifacts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<crate::model::workspace::ArtifactRecord>,
    /// Files matching `artifacts` that were not kept, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts_refused: Vec<crate::model::workspace::Refused>,
}

fn first_attempt() -> u32 {
    1
}

fn is_first_attempt(a: &u32) -> bool {
    *a <= 1
}

impl ResultRecord {
    /// A result with no run behind it (rejected, error, dry run).
    pub fn bare(request_id: &str, status: Status, error: Option<ErrorInfo>) -> Self {
        ResultRecord {
            request_id: request_id.to_string(),
            status,
            exit_code: None,
            oom_killed: false,
            error,
            output: String::new(),
            output_truncated: false,
            session_id: None,
            worker: None,
            timings: Timings::default(),
            config: None,
            files: None,
            attempt: 1,
            workspace: None,
            artifacts: Vec::new(),
            artifacts_refused: Vec::new(),
        }
    }
}

/// A rendered file as shown to people (`presets show`, dry runs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileView {
    /// Absolute path inside the container.
    pub path: String,
    /// File content.
    pub content: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_serialize_with_the_wire_status_names() {
        let r = ResultRecord::bare("r1", Status::TimedOut, None);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "timed_out");
        assert_eq!(v["error"], Value::Null);
    }
}
