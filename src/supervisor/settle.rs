//! Carrying out a [`Disposition`]: the one place a spawn entry is
//! acknowledged, answered with a result that has no container behind it,
//! or dead-lettered. Every path of the supervisor that ends an entry comes
//! here.

use std::time::Duration;

use serde_json::json;

use super::ctx::Ctx;
use crate::adapters::bus::Entry;
use crate::model::protocol::{now_rfc3339, EventType, ResultRecord, Status};
use crate::model::triage::Disposition;

impl Ctx {
    /// Settles `entry` as `disposition` says.
    pub async fn settle(&self, entry: &Entry, disposition: Disposition) {
        // A result made without a worker (triage, refusals) answers the
        // entry's attempt: a retried entry's answer must not be fenced as an
        // older attempt's.
        let stamp = |mut r: ResultRecord| {
            r.attempt = r.attempt.max(entry.attempt);
            r
        };
        let disposition = match disposition {
            Disposition::Answer(r) => Disposition::Answer(stamp(r)),
            Disposition::GiveUp { reason, result } => Disposition::GiveUp {
                reason,
                result: stamp(result),
            },
            Disposition::RejectUnreadable { reason, result } => Disposition::RejectUnreadable {
                reason,
                result: stamp(result),
            },
            other => other,
        };
        match disposition {
            Disposition::Ack => self.ack(&entry.id).await,
            Disposition::Answer(result) => {
                if let Some(e) = &result.error {
                    if result.status == Status::Rejected || result.status == Status::Cancelled {
                        tracing::info!(request_id = %result.request_id, code = %e.code, "request answered: {}", e.message);
                    }
                }
                if self.answer(&result).await {
                    self.ack(&entry.id).await;
                }
            }
            Disposition::DeadLetter(reason) => self.dead_letter(entry, &reason).await,
            Disposition::GiveUp { reason, result } => {
                self.dead_letter(entry, &reason).await;
                if self.answer(&result).await {
                    self.ack(&entry.id).await;
                }
            }
            Disposition::RejectUnreadable { reason, result } => {
                tracing::info!(request_id = %result.request_id, "unreadable request rejected: {reason}");
                // A redelivery after a crash in between finds the result
                // and adds only the dead letter.
                if !self
                    .bus
                    .has_result(&result.request_id)
                    .await
                    .unwrap_or(false)
                    && !self.answer(&result).await
                {
                    return;
                }
                self.dead_letter(entry, &reason).await;
            }
            Disposition::LeavePending(why) => {
                tracing::info!(entry_id = %entry.id, "entry left pending: {why}");
            }
        }
    }

    /// Publishes a result that has no container behind it (a rejection
    /// with its `rejected` event first); returns whether it is out.
    async fn answer(&self, result: &ResultRecord) -> bool {
        if result.status == Status::Rejected {
            self.env
                .sink
                .event(
                    &result.request_id,
                    EventType::Rejected,
                    json!({"error": result.error}),
                )
                .await;
        }
        self.env.sink.result(result, &self.shutdown).await
    }

    async fn ack(&self, entry_id: &str) {
        let mut delay = Duration::from_millis(100);
        for _ in 0..20 {
            match self.bus.ack(entry_id).await {
                Ok(()) => return,
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(entry_id, error = %e, "ack failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        // Left pending: a reclaim finds the finished work by its request id.
    }

    async fn dead_letter(&self, entry: &Entry, reason: &str) {
        // A poison entry may carry a secret (a producer pasted one into a
        // prompt): mask every secret the catalog's presets read.
        let redactor = self.all_secrets();
        let data = entry
            .data
            .as_ref()
            .map(|d| redactor.redact(&String::from_utf8_lossy(&d[..d.len().min(64 * 1024)])));
        let reason = redactor.redact(reason);
        let reason = reason.as_str();
        let json = json!({
            "entry_id": entry.id,
            "reason": reason,
            "deliveries": entry.deliveries,
            "data": data,
            "instance": self.settings.instance_id,
            "ts": now_rfc3339(),
        })
        .to_string();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.bus.dead_letter(&json).await {
                Ok(()) => break,
                Err(e) => {
                    self.metrics.redis_errors.inc();
                    tracing::warn!(error = %e, "dead-lettering failed; retrying");
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.metrics.dead_letters.inc();
        tracing::warn!(entry_id = %entry.id, reason, "entry dead-lettered");
        self.ack(&entry.id).await;
    }
}
