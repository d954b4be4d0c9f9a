//! What the HTTP API reads and marks in Redis: a request's state and
//! result without a scan (the result-sent mark holds the result's entry
//! id), its events from a position (its own stream, ids `0-<seq>`), the
//! API's idempotency marks, the latest results.

use redis::Value;
use serde_json::Value as Json;

use super::{parse_entries, Bus, BusError, MARK_TTL_SECS};

/// Where a request is, as the API tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestState {
    /// Published (by the API) or unknown to the daemon: no event yet.
    Queued,
    /// Accepted by an instance, no result yet.
    Running,
    /// Its result.
    Done(Json),
}

/// Results looked through when a result-sent mark is an older daemon's
/// (`1`, not an entry id).
const FALLBACK_SCAN: usize = 5000;

impl Bus {
    fn api_mark_key(&self, request_id: &str) -> String {
        format!("{}:api-request:{request_id}", self.names.prefix)
    }

    /// Marks `request_id` as published by the API; false when it already was.
    pub async fn mark_api_request(&self, request_id: &str) -> Result<bool, BusError> {
        let mut c = self.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.api_mark_key(request_id))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(MARK_TTL_SECS)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(set.is_some())
    }

    /// Takes the API's mark back (its publish failed).
    pub async fn unmark_api_request(&self, request_id: &str) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let _: i64 = redis::cmd("DEL")
            .arg(self.api_mark_key(request_id))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// The published result of `request_id`, if any.
    pub async fn result_of(&self, request_id: &str) -> Result<Option<Json>, BusError> {
        let mut c = self.conn().await?;
        let mark: Option<String> = redis::cmd("GET")
            .arg(self.names.result_sent_key(request_id))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        let Some(mark) = mark else {
            return Ok(None);
        };
        let is_id = mark.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.chars().all(|c| c.is_ascii_digit())
                && b.chars().all(|c| c.is_ascii_digit())
        });
        let entries = if is_id {
            let v: Value = redis::cmd("XRANGE")
                .arg(&self.names.result)
                .arg(&mark)
                .arg(&mark)
                .query_async(&mut c)
                .await
                .map_err(|e| self.broken(e))?;
            parse_entries(v)?
        } else {
            let v: Value = redis::cmd("XREVRANGE")
                .arg(&self.names.result)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(FALLBACK_SCAN)
                .query_async(&mut c)
                .await
                .map_err(|e| self.broken(e))?;
            parse_entries(v)?
        };
        Ok(entries
            .into_iter()
            .filter_map(|e| serde_json::from_slice::<Json>(e.data.as_deref()?).ok())
            .find(|v| v["request_id"] == request_id))
    }

    /// The state of `request_id`: its result, else running once it has
    /// an event, else queued when the API published it; `None`: unknown.
    pub async fn request_state(&self, request_id: &str) -> Result<Option<RequestState>, BusError> {
        if let Some(r) = self.result_of(request_id).await? {
            return Ok(Some(RequestState::Done(r)));
        }
        let mut c = self.conn().await?;
        let (events, marked): (i64, i64) = redis::pipe()
            .cmd("EXISTS")
            .arg(self.names.request_events(request_id))
            .cmd("EXISTS")
            .arg(self.api_mark_key(request_id))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(if events > 0 {
            Some(RequestState::Running)
        } else if marked > 0 {
            Some(RequestState::Queued)
        } else {
            None
        })
    }

    /// Up to `count` events of `request_id` after seq `after`, in order.
    pub async fn events_after(
        &self,
        request_id: &str,
        after: u64,
        count: usize,
    ) -> Result<Vec<(u64, Json)>, BusError> {
        let mut c = self.conn().await?;
        let v: Value = redis::cmd("XRANGE")
            .arg(self.names.request_events(request_id))
            .arg(format!("(0-{after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(parse_entries(v)?
            .into_iter()
            .filter_map(|e| {
                let seq = e.id.strip_prefix("0-")?.parse().ok()?;
                Some((seq, serde_json::from_slice(e.data.as_deref()?).ok()?))
            })
            .collect())
    }

    /// The newest `count` results, newest first.
    pub async fn latest_results(&self, count: usize) -> Result<Vec<Json>, BusError> {
        let mut c = self.conn().await?;
        let v: Value = redis::cmd("XREVRANGE")
            .arg(&self.names.result)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(parse_entries(v)?
            .into_iter()
            .filter_map(|e| serde_json::from_slice(e.data.as_deref()?).ok())
            .collect())
    }
}
