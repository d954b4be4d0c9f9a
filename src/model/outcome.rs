//! How a request ends when the daemon itself decides it: one [`ErrorCode`]
//! per reason (the `error.code` strings of PROTOCOL.md section 6), and the
//! canned results and errors built from them, so that each reason is
//! spelled in one place.

use crate::model::protocol::{ErrorInfo, ResultRecord, Status};

/// The `error.code` of a result the daemon writes (the request parser's
/// codes, `missing_field`, `invalid_field`, `too_large`, `invalid_json`,
/// ..., come with its [`crate::model::protocol::RequestError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A control command cancelled the request.
    Cancelled,
    /// The daemon running it stopped before it finished.
    Interrupted,
    /// Its container name is held by a container not its own.
    NameConflict,
    /// Its entry was delivered more than `max_deliveries` times.
    TooManyDeliveries,
    /// It ran past `limits.timeout_sec`.
    TimedOut,
    /// Its container disappeared.
    ContainerLost,
    /// Its container or exec could not be started.
    StartFailed,
    /// Its image does not exist on the engine.
    ImageNotFound,
    /// Its image is for another platform.
    ImagePlatform,
    /// Preparing its image failed.
    ImagePrepareFailed,
    /// Building its derived image (`system_packages`) failed.
    ImageBuildFailed,
    /// The engine failed otherwise.
    DockerError,
    /// Its extra `network` does not exist.
    NetworkNotFound,
    /// Its session runs another preset or config.
    SessionMismatch,
    /// Its session (container or volumes) belongs to another `user_id`.
    SessionUserMismatch,
    /// The agent's command is not in the image.
    AgentNotFound,
    /// The agent's command cannot be executed.
    AgentNotExecutable,
    /// The delivery shim could not unpack the worker's files.
    DeliveryFailed,
    /// No preset of that id.
    UnknownPreset,
    /// The merged config breaks the schema.
    InvalidConfig,
    /// The override widens its preset.
    PolicyViolation,
    /// No agent layout of that type.
    UnknownAgentType,
    /// Rendering the instructions failed.
    RenderFailed,
    /// A `from_env` value is missing from the daemon's environment.
    MissingEnv,
    /// The instance running it was lost with its host (no heartbeat for
    /// `instance_lost_after`) and its preset does not retry that.
    Lost,
    /// Its `task.repo` / `workspace` is not one the daemon accepts (URL,
    /// ref or branch name).
    InvalidRepo,
    /// Its repository could not be fetched or its ref not found (the
    /// daemon's fetch failed: unreachable, refused credentials, no such ref).
    RepoUnavailable,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Interrupted => "interrupted",
            ErrorCode::NameConflict => "name_conflict",
            ErrorCode::TooManyDeliveries => "too_many_deliveries",
            ErrorCode::TimedOut => "timed_out",
            ErrorCode::ContainerLost => "container_lost",
            ErrorCode::StartFailed => "start_failed",
            ErrorCode::ImageNotFound => "image_not_found",
            ErrorCode::ImagePlatform => "image_platform",
            ErrorCode::ImagePrepareFailed => "image_prepare_failed",
            ErrorCode::ImageBuildFailed => "image_build_failed",
            ErrorCode::DockerError => "docker_error",
            ErrorCode::NetworkNotFound => "network_not_found",
            ErrorCode::SessionMismatch => "session_mismatch",
            ErrorCode::SessionUserMismatch => "session_user_mismatch",
            ErrorCode::AgentNotFound => "agent_not_found",
            ErrorCode::AgentNotExecutable => "agent_not_executable",
            ErrorCode::DeliveryFailed => "delivery_failed",
            ErrorCode::UnknownPreset => "unknown_preset",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::PolicyViolation => "policy_violation",
            ErrorCode::UnknownAgentType => "unknown_agent_type",
            ErrorCode::RenderFailed => "render_failed",
            ErrorCode::MissingEnv => "missing_env",
            ErrorCode::Lost => "lost",
            ErrorCode::InvalidRepo => "invalid_repo",
            ErrorCode::RepoUnavailable => "repo_unavailable",
        }
    }

    /// An `error` object of this code about `field`.
    pub fn info(self, field: Option<&str>, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            code: self.as_str().to_string(),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }
}

/// The error of a task stopped at its deadline.
pub fn timed_out() -> ErrorInfo {
    ErrorCode::TimedOut.info(
        Some("limits.timeout_sec"),
        "the task ran past its deadline and was stopped",
    )
}

/// The error of a task stopped by a control command.
pub fn cancelled() -> ErrorInfo {
    ErrorCode::Cancelled.info(None, "cancelled by a control command")
}

/// Where a request's run was when its daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interruption {
    /// Its worker was created (or started) but nothing ran in it.
    BeforeStart,
    /// A pooled request was running.
    Request,
    /// A session task was running.
    Task,
}

/// The result of a request cut off by the death of its daemon: never run
/// twice, so the producer is told to publish it again.
pub fn interrupted(request_id: &str, session_id: Option<&str>, at: Interruption) -> ResultRecord {
    let mut r = ResultRecord::bare(request_id, Status::Error, Some(interrupted_info(at)));
    r.session_id = session_id.map(str::to_string);
    r
}

/// The error of a run cut off by the death of its daemon.
pub fn interrupted_info(at: Interruption) -> ErrorInfo {
    let message = match at {
        Interruption::BeforeStart => {
            "the daemon stopped before the worker started; publish the request again"
        }
        Interruption::Request => {
            "the daemon running this request stopped before it finished; publish the request again"
        }
        Interruption::Task => {
            "the daemon running this task stopped before it finished; publish the request again"
        }
    };
    ErrorCode::Interrupted.info(None, message)
}

/// The result of a request cancelled before its worker existed.
pub fn cancelled_before_start(request_id: &str, session_id: Option<&str>) -> ResultRecord {
    let info = ErrorCode::Cancelled.info(None, "cancelled by a control command before it started");
    let mut r = ResultRecord::bare(request_id, Status::Cancelled, Some(info));
    r.session_id = session_id.map(str::to_string);
    r
}

/// The dead-letter reason of an entry delivered `deliveries` times.
pub fn too_many_deliveries_reason(deliveries: u64) -> String {
    format!("failed {} deliveries", deliveries.saturating_sub(1))
}

/// The result of a request whose entry was delivered too often.
pub fn too_many_deliveries(request_id: &str, deliveries: u64) -> ResultRecord {
    let info = ErrorCode::TooManyDeliveries.info(None, too_many_deliveries_reason(deliveries));
    ResultRecord::bare(request_id, Status::Error, Some(info))
}

/// The result of a request whose container name is held by a container
/// that is not its own: one this daemon does not manage (`foreign`, never
/// touched), or one whose labels name another request.
pub fn name_conflict(request_id: &str, name: &str, foreign: bool) -> ResultRecord {
    let message = if foreign {
        format!("a container named {name} exists that this daemon does not manage")
    } else {
        format!("the container named {name} holds another request's work")
    };
    let info = ErrorCode::NameConflict.info(Some("request_id"), message);
    ResultRecord::bare(request_id, Status::Error, Some(info))
}

/// The error of a session whose container name is held by another container.
pub fn session_name_conflict(session_id: &str, holder: &str) -> ErrorInfo {
    ErrorCode::NameConflict.info(
        Some("task.session_id"),
        format!("the container named {holder} is not session {session_id}'s container"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_results_keep_their_wire_codes_and_messages() {
        let r = interrupted("r1", Some("s1"), Interruption::Task);
        assert_eq!(r.status, Status::Error);
        assert_eq!(r.session_id.as_deref(), Some("s1"));
        let e = r.error.unwrap();
        assert_eq!(e.code, "interrupted");
        assert!(e.message.contains("this task"), "{}", e.message);

        let r = too_many_deliveries("r2", 4);
        assert_eq!(r.error.as_ref().unwrap().code, "too_many_deliveries");
        assert_eq!(r.error.unwrap().message, "failed 3 deliveries");

        let r = name_conflict("r3", "ws-x", true);
        let e = r.error.unwrap();
        assert_eq!(
            (e.code.as_str(), e.field.as_deref()),
            ("name_conflict", Some("request_id"))
        );

        let r = cancelled_before_start("r4", None);
        assert_eq!(r.status, Status::Cancelled);
        assert_eq!(timed_out().field.as_deref(), Some("limits.timeout_sec"));
        assert_eq!(cancelled().code, "cancelled");
    }

    #[test]
    fn every_code_has_its_own_snake_case_spelling() {
        use ErrorCode::*;
        let all = [
            Cancelled,
            Interrupted,
            NameConflict,
            TooManyDeliveries,
            TimedOut,
            ContainerLost,
            StartFailed,
            ImageNotFound,
            ImagePlatform,
            ImagePrepareFailed,
            ImageBuildFailed,
            DockerError,
            NetworkNotFound,
            SessionMismatch,
            SessionUserMismatch,
            AgentNotFound,
            AgentNotExecutable,
            DeliveryFailed,
            UnknownPreset,
            InvalidConfig,
            PolicyViolation,
            UnknownAgentType,
            RenderFailed,
            MissingEnv,
            Lost,
        ];
        let spelled: std::collections::HashSet<&str> = all.iter().map(|c| c.as_str()).collect();
        assert_eq!(spelled.len(), all.len(), "two codes share a spelling");
        for s in spelled {
            assert!(
                s.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{s}"
            );
        }
    }
}
