//! Where a worker's events and result go: Redis streams for the daemon, or
//! the terminal for `workers-spawner run`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::adapters::bus::{Bus, Published};
use crate::metrics::Metrics;
use crate::model::protocol::{now_rfc3339, Event, EventType, ResultRecord};

/// Destination of events and results.
// One value per daemon (cloned per worker): its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum Sink {
    /// `workers:events` and `workers:result`; the attempts above 1 of the
    /// requests running here (their events carry `attempt`).
    Redis(Bus, Arc<Metrics>, Attempts),
    /// Events on stderr, results on stdout (one JSON object per line).
    Print(Arc<Mutex<HashMap<String, u64>>>),
}

/// The attempt (from 2 on) of each request that runs again here.
pub type Attempts = Arc<Mutex<HashMap<String, u32>>>;

#[derive(Serialize)]
struct EventTail<'a> {
    request_id: &'a str,
    #[serde(rename = "type")]
    kind: EventType,
    ts: String,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
}

impl Sink {
    /// A printing sink.
    pub fn print() -> Sink {
        Sink::Print(Arc::new(Mutex::new(HashMap::new())))
    }

    /// Publishes events of one request, in order. Redis trouble is retried
    /// a few times; after that the events are counted as lost, never blocking
    /// the worker for good.
    pub async fn events(&self, request_id: &str, events: &[(EventType, Value)]) {
        if events.is_empty() {
            return;
        }
        match self {
            Sink::Redis(bus, metrics, attempts) => {
                let attempt = attempts
                    .lock()
                    .expect("attempts lock")
                    .get(request_id)
                    .copied();
                let tails: Vec<String> = events
                    .iter()
                    .map(|(kind, data)| {
                        let t = serde_json::to_string(&EventTail {
                            request_id,
                            kind: *kind,
                            ts: now_rfc3339(),
                            data,
                            attempt,
                        })
                        .expect("events serialize");
                        t[1..].to_string()
                    })
                    .collect();
                for attempt in 0..5u32 {
                    match bus.publish_events(request_id, &tails).await {
                        Ok(()) => return,
                        Err(e) => {
                            metrics.redis_errors.inc();
                            tracing::warn!(request_id, error = %e, attempt, "publishing events failed");
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                    }
                }
                metrics.events_lost.inc_by(events.len() as u64);
            }
            Sink::Print(seqs) => {
                for (kind, data) in events {
                    let seq = {
                        let mut m = seqs.lock().expect("seq lock");
                        let s = m.entry(request_id.to_string()).or_insert(0);
                        *s += 1;
                        *s
                    };
                    let e = Event {
                        request_id: request_id.to_string(),
                        seq,
                        kind: *kind,
                        ts: now_rfc3339(),
                        data: data.clone(),
                    };
                    eprintln!("{}", serde_json::to_string(&e).expect("events serialize"));
                }
            }
        }
    }

    /// Marks `request_id` as running its `attempt` here (events carry it
    /// from 2 on).
    pub fn set_attempt(&self, request_id: &str, attempt: u32) {
        if let Sink::Redis(_, _, attempts) = self {
            if attempt > 1 {
                attempts
                    .lock()
                    .expect("attempts lock")
                    .insert(request_id.to_string(), attempt);
            }
        }
    }

    /// Whether this instance may still speak for `attempt` of `request_id`
    /// (Redis trouble counts as yes: the result's own fence still holds).
    pub async fn may_speak(&self, request_id: &str, attempt: u32) -> bool {
        match self {
            Sink::Redis(bus, _, _) => bus.still_mine(request_id, attempt).await.unwrap_or(true),
            Sink::Print(_) => true,
        }
    }

    /// Queues attempt `next` of `request_id` (held here at `attempt`) after
    /// `backoff`, counts it and says so in one `retrying` event (under the
    /// ending attempt's number); false when this instance holds no such
    /// attempt or Redis refused (the caller answers instead).
    pub async fn retry(
        &self,
        request_id: &str,
        attempt: u32,
        next: u32,
        why: crate::model::retry::Reason,
        backoff: Duration,
        instance: &str,
    ) -> bool {
        let Sink::Redis(bus, metrics, _) = self else {
            return false;
        };
        let backoff_ms = backoff.as_millis() as u64;
        match bus
            .schedule_retry(request_id, attempt, next, backoff_ms)
            .await
        {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                metrics.redis_errors.inc();
                tracing::warn!(request_id, error = %e, "scheduling the retry failed");
                return false;
            }
        }
        metrics
            .retries
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: why.as_str().to_string(),
            })
            .inc();
        tracing::info!(
            request_id,
            attempt,
            next,
            reason = why.as_str(),
            "running the request again"
        );
        self.event(
            request_id,
            EventType::Retrying,
            serde_json::json!({"attempt": attempt, "next_attempt": next, "reason": why.as_str(), "backoff_ms": backoff_ms, "instance": instance}),
        )
        .await;
        self.forget_attempt(request_id);
        true
    }

    /// Forgets `request_id`'s attempt (its worker was fenced or retried).
    pub fn forget_attempt(&self, request_id: &str) {
        if let Sink::Redis(_, _, attempts) = self {
            attempts.lock().expect("attempts lock").remove(request_id);
        }
    }

    /// Publishes one event.
    pub async fn event(&self, request_id: &str, kind: EventType, data: Value) {
        self.events(request_id, &[(kind, data)]).await
    }

    /// Publishes the result, retrying until Redis takes it or `give_up`
    /// fires. Returns whether it is known to be published (by this call or
    /// an earlier one) or refused as fenced, i.e. whether the request is
    /// answered for.
    pub async fn result(
        &self,
        result: &ResultRecord,
        give_up: &tokio_util::sync::CancellationToken,
    ) -> bool {
        self.publish(result, give_up).await.is_some()
    }

    /// Like [`Sink::result`], saying what became of it (`None`: given up).
    pub async fn publish(
        &self,
        result: &ResultRecord,
        give_up: &tokio_util::sync::CancellationToken,
    ) -> Option<Published> {
        match self {
            Sink::Redis(bus, metrics, attempts) => {
                let json = serde_json::to_string(result).expect("results serialize");
                let mut delay = Duration::from_millis(100);
                loop {
                    match bus
                        .publish_result(&result.request_id, result.attempt, &json)
                        .await
                    {
                        Ok(published) => {
                            match published {
                                Published::Now => {
                                    metrics
                                        .results
                                        .get_or_create(&crate::metrics::OutcomeLabel {
                                            outcome: result.status.as_str().to_string(),
                                        })
                                        .inc();
                                }
                                Published::Already => {
                                    tracing::info!(request_id = %result.request_id, "result already published; not sending another")
                                }
                                Published::Fenced => {
                                    metrics.fenced.inc();
                                    tracing::info!(request_id = %result.request_id, attempt = result.attempt, "result of an attempt that no longer holds the request; not sent")
                                }
                            }
                            attempts
                                .lock()
                                .expect("attempts lock")
                                .remove(&result.request_id);
                            return Some(published);
                        }
                        Err(e) => {
                            metrics.redis_errors.inc();
                            tracing::warn!(request_id = %result.request_id, error = %e, "publishing the result failed; retrying");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = give_up.cancelled() => return None,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
            Sink::Print(_) => {
                println!(
                    "{}",
                    serde_json::to_string(result).expect("results serialize")
                );
                Some(Published::Now)
            }
        }
    }
}
