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
    /// It was answered, but its result has left the result stream
    /// (trimmed at `stream_maxlen`).
    Expired,
}

/// A result looked up by its mark.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultLookup {
    /// No result yet.
    None,
    /// The result.
    Found(Json),
    /// Answered, the entry trimmed away.
    Gone,
}

// Publishes a spawn entry once per request id: the mark and the entry are
// one step (no mark without its entry, no second entry).
const SUBMIT_ONCE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local id = redis.call('XADD', KEYS[2], '*', 'data', ARGV[1])
redis.call('SET', KEYS[1], id, 'EX', ARGV[2])
return id
"#;

/// Results looked through when a result-sent mark is an older daemon's
/// (`1`, not an entry id).
const FALLBACK_SCAN: usize = 5000;

impl Bus {
    fn api_mark_key(&self, request_id: &str) -> String {
        format!("{}:api-request:{request_id}", self.names.prefix)
    }

    /// Publishes `data` to the spawn stream unless the API already did for
    /// `request_id`: the spawn entry's id, `None` for a repeat.
    pub async fn submit_once(
        &self,
        request_id: &str,
        data: &str,
    ) -> Result<Option<String>, BusError> {
        let mut c = self.conn().await?;
        redis::Script::new(SUBMIT_ONCE)
            .key(self.api_mark_key(request_id))
            .key(&self.names.spawn)
            .arg(data)
            .arg(MARK_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.broken(e))
    }

    /// The result of `request_id` by its mark: found, not yet, or trimmed.
    pub async fn lookup_result(&self, request_id: &str) -> Result<ResultLookup, BusError> {
        let mut c = self.conn().await?;
        let mark: Option<String> = redis::cmd("GET")
            .arg(self.names.result_sent_key(request_id))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        let Some(mark) = mark else {
            return Ok(ResultLookup::None);
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
            .find(|v| v["request_id"] == request_id)
            .map(ResultLookup::Found)
            .unwrap_or(ResultLookup::Gone))
    }

    /// The state of `request_id`: its result, else running once it has
    /// an event, else queued when the API published it; `None`: unknown.
    pub async fn request_state(&self, request_id: &str) -> Result<Option<RequestState>, BusError> {
        match self.lookup_result(request_id).await? {
            ResultLookup::Found(r) => return Ok(Some(RequestState::Done(r))),
            ResultLookup::Gone => return Ok(Some(RequestState::Expired)),
            ResultLookup::None => {}
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
