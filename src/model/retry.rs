//! A preset's retry policy as data: which failures run a request again, how
//! often and after how long; the failure a result stands for; whether an
//! override narrows the policy. Attempts number from 1; a retried request's
//! attempt is also its fencing token (a result or event of an older attempt
//! is refused, `adapters::bus`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::outcome::ErrorCode;
use super::protocol::{ResultRecord, Status};

/// Attempts a request may have in all (`max` retries plus the first).
pub const MAX_RETRIES: u32 = 10;

/// The failures a retry may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The instance running it was lost (no heartbeat for
    /// `instance_lost_after`) with its host.
    Lost,
    /// An infrastructure failure (`status: error` of a retryable code).
    Error,
    /// The kernel's OOM killer stopped it.
    Oom,
    /// It ran past `limits.timeout_sec`.
    TimedOut,
}

impl Reason {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Lost => "lost",
            Reason::Error => "error",
            Reason::Oom => "oom",
            Reason::TimedOut => "timed_out",
        }
    }
}

/// `retry` of a worker config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = none).
    pub max: u32,
    /// Which failures are retried.
    #[serde(default = "default_on")]
    pub on: Vec<Reason>,
    /// Wait before the next attempt.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
}

fn default_on() -> Vec<Reason> {
    vec![Reason::Lost, Reason::Error]
}

fn default_backoff() -> Duration {
    Duration::from_secs(10)
}

impl RetryPolicy {
    /// The attempt that follows `attempt` after a failure of `reason`, or
    /// `None` when the policy does not retry it (any more).
    pub fn next_attempt(&self, attempt: u32, reason: Reason) -> Option<u32> {
        let attempt = attempt.max(1);
        (self.on.contains(&reason) && attempt <= self.max.min(MAX_RETRIES)).then(|| attempt + 1)
    }
}

/// The next attempt of a request whose config has `policy`, after `reason`.
pub fn next_attempt(policy: Option<&RetryPolicy>, attempt: u32, reason: Reason) -> Option<u32> {
    policy.and_then(|p| p.next_attempt(attempt, reason))
}

/// Infrastructure errors another attempt may not hit again. Configuration
/// errors (unknown preset, missing env, agent not in the image, a platform
/// mismatch) and the daemon's own refusals are not retried: they would fail
/// the same way.
pub fn is_retryable_error(code: &str) -> bool {
    [
        ErrorCode::Interrupted,
        ErrorCode::ContainerLost,
        ErrorCode::StartFailed,
        ErrorCode::ImageNotFound,
        ErrorCode::ImagePrepareFailed,
        ErrorCode::DockerError,
        ErrorCode::DeliveryFailed,
        ErrorCode::Lost,
    ]
    .iter()
    .any(|c| c.as_str() == code)
}

/// The failure `result` stands for, if a retry could answer it.
pub fn reason_of(result: &ResultRecord) -> Option<Reason> {
    match result.status {
        Status::TimedOut => Some(Reason::TimedOut),
        Status::Failed if result.oom_killed => Some(Reason::Oom),
        Status::Error => {
            let code = result.error.as_ref().map(|e| e.code.as_str()).unwrap_or("");
            if code == ErrorCode::Lost.as_str() {
                Some(Reason::Lost)
            } else {
                is_retryable_error(code).then_some(Reason::Error)
            }
        }
        _ => None,
    }
}

/// Why `merged`'s policy is wider than `preset`'s (an override's), as a
/// field and a sentence; `None` when it only narrows (fewer retries, fewer
/// reasons, a longer backoff) or is the same.
pub fn widening(
    preset: Option<&RetryPolicy>,
    merged: Option<&RetryPolicy>,
) -> Option<(&'static str, String)> {
    let merged = merged?;
    let Some(preset) = preset else {
        return (merged.max > 0).then(|| {
            (
                "retry",
                "an override may not add retries its preset does not have".to_string(),
            )
        });
    };
    if merged.max > preset.max {
        return Some((
            "retry.max",
            format!("at most {} retries (the preset's)", preset.max),
        ));
    }
    if let Some(r) = merged.on.iter().find(|r| !preset.on.contains(r)) {
        return Some((
            "retry.on",
            format!(
                "the preset does not retry on {:?}; allowed: {:?}",
                r.as_str(),
                preset.on.iter().map(|r| r.as_str()).collect::<Vec<_>>()
            ),
        ));
    }
    if merged.backoff < preset.backoff {
        return Some((
            "retry.backoff",
            format!(
                "at least {} (the preset's)",
                humantime::format_duration(preset.backoff)
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::outcome::ErrorCode;

    fn policy(max: u32, on: &[Reason]) -> RetryPolicy {
        RetryPolicy {
            max,
            on: on.to_vec(),
            backoff: Duration::from_secs(10),
        }
    }

    #[test]
    fn retries_up_to_max_and_only_on_its_reasons() {
        let p = policy(2, &[Reason::Lost, Reason::Oom]);
        assert_eq!(p.next_attempt(1, Reason::Lost), Some(2));
        assert_eq!(p.next_attempt(2, Reason::Oom), Some(3));
        assert_eq!(p.next_attempt(3, Reason::Lost), None);
        assert_eq!(p.next_attempt(1, Reason::Error), None);
        assert_eq!(
            p.next_attempt(0, Reason::Lost),
            Some(2),
            "0 counts as the first"
        );
        assert_eq!(
            next_attempt(None, 1, Reason::Lost),
            None,
            "no policy, no retry"
        );
        let huge = policy(u32::MAX, &[Reason::Error]);
        assert_eq!(huge.next_attempt(MAX_RETRIES + 1, Reason::Error), None);
    }

    #[test]
    fn parses_the_admins_form_with_defaults() {
        let p: RetryPolicy = serde_json::from_str(r#"{"max": 1}"#).unwrap();
        assert_eq!(p.on, vec![Reason::Lost, Reason::Error]);
        assert_eq!(p.backoff, Duration::from_secs(10));
        let p: RetryPolicy =
            serde_json::from_str(r#"{"max": 3, "on": ["timed_out", "oom"], "backoff": "250ms"}"#)
                .unwrap();
        assert_eq!(p.on, vec![Reason::TimedOut, Reason::Oom]);
        assert_eq!(p.backoff, Duration::from_millis(250));
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"max": 1, "memory": "2g"}"#).is_err());
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"max": 3, "on": ["timed_out", "oom"], "backoff": "250ms"})
        );
    }

    #[test]
    fn a_result_names_its_failure() {
        let mut r = ResultRecord::bare("r", Status::TimedOut, None);
        assert_eq!(reason_of(&r), Some(Reason::TimedOut));
        r.status = Status::Failed;
        assert_eq!(reason_of(&r), None, "a plain non-zero exit is the agent's");
        r.oom_killed = true;
        assert_eq!(reason_of(&r), Some(Reason::Oom));
        let err = |c: ErrorCode| ResultRecord::bare("r", Status::Error, Some(c.info(None, "x")));
        assert_eq!(
            reason_of(&err(ErrorCode::ImageNotFound)),
            Some(Reason::Error)
        );
        assert_eq!(reason_of(&err(ErrorCode::Lost)), Some(Reason::Lost));
        assert_eq!(reason_of(&err(ErrorCode::MissingEnv)), None);
        assert_eq!(reason_of(&err(ErrorCode::Cancelled)), None);
        assert_eq!(
            reason_of(&ResultRecord::bare("r", Status::Rejected, None)),
            None
        );
        assert_eq!(
            reason_of(&ResultRecord::bare("r", Status::Cancelled, None)),
            None
        );
    }

    #[test]
    fn an_override_only_narrows() {
        let preset = policy(2, &[Reason::Lost, Reason::Error]);
        assert_eq!(
            widening(Some(&preset), Some(&policy(1, &[Reason::Lost]))),
            None
        );
        assert_eq!(
            widening(Some(&preset), None),
            None,
            "removing retries narrows"
        );
        assert_eq!(
            widening(Some(&preset), Some(&policy(3, &[]))).unwrap().0,
            "retry.max"
        );
        assert_eq!(
            widening(Some(&preset), Some(&policy(1, &[Reason::Oom])))
                .unwrap()
                .0,
            "retry.on"
        );
        let mut quick = preset.clone();
        quick.backoff = Duration::from_secs(1);
        assert_eq!(
            widening(Some(&preset), Some(&quick)).unwrap().0,
            "retry.backoff"
        );
        assert_eq!(
            widening(None, Some(&policy(1, &[Reason::Lost]))).unwrap().0,
            "retry"
        );
        assert_eq!(widening(None, Some(&policy(0, &[Reason::Lost]))), None);
    }
}
