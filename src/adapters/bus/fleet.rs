//! The fleet's bookkeeping in Redis: which instance holds which request
//! (so what a lost host ran is known without its engine), the attempt that
//! fences older ones, the retry queue, the instances' last heartbeats and
//! the sessions each instance owns.
//!
//! Keys (all under the stream prefix `P`):
//!
//! - `P:held:<rid>`: hash of the request's holder (`instance`, `attempt`)
//!   and what another instance needs to answer for it or run it again
//!   (`entry`, `data`, `kind`, `container`, `preset`, `key`, `retry`);
//!   written before the entry is acknowledged, deleted with the result.
//! - `P:holds:<instance>`: set of the request ids it holds.
//! - `P:attempt:<rid>`: the request's current attempt, once above 1: a
//!   result or hold of an older attempt is refused.
//! - `P:retries` (sorted set: rid -> due, ms) and `P:retry:<rid>` (hash:
//!   `data`, `attempt`): retries waiting for their backoff; a due one goes
//!   back to the spawn stream as a new entry with an `attempt` field.
//! - `P:instances`: sorted set of instance -> last heartbeat (ms).
//! - `P:sessions-of:<instance>`: the sessions it owns;
//!   `P:session-lost:<sid>`: a session ended with its lost instance.

use redis::{Script, Value};

use super::{bulk_to_string, Bus, BusError, MARK_TTL_SECS};

/// How long the mark of a session lost with its instance lives.
const SESSION_LOST_TTL_SECS: u64 = 24 * 3600;

/// A request as held by an instance: what any instance needs to answer for
/// it, or run it again, once its holder is lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// The request.
    pub request_id: String,
    /// The holding instance.
    pub instance: String,
    /// Its attempt (1 = the first run).
    pub attempt: u32,
    /// The spawn entry it came in (empty for a hold taken in adoption).
    pub entry: String,
    /// The entry's `data`: the request as the producer sent it.
    pub data: String,
    /// `oneshot` or `pool`.
    pub kind: String,
    /// Its container's name.
    pub container: String,
    /// Its preset.
    pub preset: String,
    /// Hash of its worker key (revoked when the request is taken over).
    pub key_hash: String,
    /// Its config's retry policy (JSON), empty for none.
    pub retry: String,
}

impl Held {
    fn fields(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("entry", &self.entry),
            ("data", &self.data),
            ("kind", &self.kind),
            ("container", &self.container),
            ("preset", &self.preset),
            ("key", &self.key_hash),
            ("retry", &self.retry),
        ]
    }

    fn from_pairs(request_id: &str, v: Value) -> Held {
        let mut h = Held {
            request_id: request_id.to_string(),
            attempt: 1,
            ..Held::default()
        };
        let items = match v {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        let mut it = items.iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let (Some(k), Some(v)) = (bulk_to_string(k), bulk_to_string(v)) else {
                continue;
            };
            match k.as_str() {
                "instance" => h.instance = v,
                "attempt" => h.attempt = v.parse().unwrap_or(1),
                "entry" => h.entry = v,
                "data" => h.data = v,
                "kind" => h.kind = v,
                "container" => h.container = v,
                "preset" => h.preset = v,
                "key" => h.key_hash = v,
                "retry" => h.retry = v,
                _ => {}
            }
        }
        h
    }
}

/// The answer to taking a hold on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldClaim {
    /// The caller holds it now (or already did).
    Taken,
    /// A live instance holds the same or a later attempt.
    Elsewhere,
    /// Its result is out.
    Answered,
    /// A later attempt exists (or waits for its backoff): this one is stale.
    Stale,
    /// A dead instance holds it; the lost handler answers for it once that
    /// instance counts as lost.
    Orphaned,
}

/// An instance whose heartbeat is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostInstance {
    /// Its id.
    pub id: String,
    /// Its last heartbeat (Unix ms).
    pub last_seen_ms: i64,
}

/// The mark of a session that ended with its lost instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLoss {
    /// The lost instance.
    pub instance: String,
    /// The newest spawn entry at the time: tasks of the session up to it
    /// were queued before the loss.
    pub before: String,
    /// When the loss was recorded (Unix ms): a session container made
    /// before it is the lost one's.
    pub at_ms: i64,
}

// Another instance's hold of the same attempt is taken only when that
// instance is dead and the caller has its container in hand (adoption) or
// handles the very entry the hold was taken for, still unacknowledged (a
// one-shot whose instance died before its container was sure to exist);
// otherwise it is the lost handler's (TAKE_LOST, by the retry policy).
// KEYS: held, attempt, result-sent. ARGV: me, attempt, instance key prefix,
// holds prefix, rid, ttl, mode ('adopt' or 'intake'), the caller's entry
// id, then field/value pairs.
const HOLD: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
local cur = tonumber(redis.call('GET', KEYS[2]) or '1')
local a = tonumber(ARGV[2])
if a < cur then return 3 end
local holder = redis.call('HGET', KEYS[1], 'instance')
if holder and holder ~= ARGV[1] then
  local ha = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '1')
  if ha >= a then
    if redis.call('EXISTS', ARGV[3] .. holder) == 1 then return 0 end
    if ARGV[7] ~= 'adopt' then
      local same_entry = redis.call('HGET', KEYS[1], 'entry') == ARGV[8]
      local oneshot = redis.call('HGET', KEYS[1], 'kind') == 'oneshot'
      if not (same_entry and oneshot) then return 4 end
    end
  end
  redis.call('SREM', ARGV[4] .. holder, ARGV[5])
end
if a > cur then redis.call('SET', KEYS[2], a, 'EX', ARGV[6]) end
redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'attempt', a)
for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SADD', ARGV[4] .. ARGV[1], ARGV[5])
return 1
"#;

// Whether the caller may still speak for `attempt` of the request: 1 yes,
// 0 its result is out, 2 a later attempt or another live holder has it.
// KEYS: held, attempt, result-sent. ARGV: me, attempt, instance key prefix.
const STILL_MINE: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[2]) or '1')
if tonumber(ARGV[2]) < cur then return 2 end
local holder = redis.call('HGET', KEYS[1], 'instance')
if holder and holder ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. holder) == 1 then
  return 2
end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
return 1
"#;

// Takes a request held by a lost instance, once. Returns {0} when the
// instance is alive again or no longer holds it, {2} when it is answered
// (the hold is dropped), {1, fields} when the caller holds it now; an entry
// of it still pending (read, never acknowledged) is acknowledged in the
// same step, so its reclaim finds the hold taken. A caller taking its own
// hold back leaves a pending one to its own backlog ({3}). KEYS: held, result-sent. ARGV: lost, me, instance key prefix, holds
// prefix, rid, spawn stream, group, '1' when the caller takes its own
// (a hold whose worker is gone from its engine).
const TAKE_LOST: &str = r#"
if ARGV[8] ~= '1' and redis.call('EXISTS', ARGV[3] .. ARGV[1]) == 1 then return {0} end
local holder = redis.call('HGET', KEYS[1], 'instance')
if holder ~= ARGV[1] then
  redis.call('SREM', ARGV[4] .. ARGV[1], ARGV[5])
  return {0}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', ARGV[4] .. ARGV[1], ARGV[5])
  return {2}
end
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry and entry ~= '' then
  local p = redis.call('XPENDING', ARGV[6], ARGV[7], entry, entry, 1)
  if #p > 0 then
    if ARGV[8] == '1' then return {3} end
    redis.call('XACK', ARGV[6], ARGV[7], entry)
  end
end
redis.call('HSET', KEYS[1], 'instance', ARGV[2])
redis.call('SREM', ARGV[4] .. ARGV[1], ARGV[5])
redis.call('SADD', ARGV[4] .. ARGV[2], ARGV[5])
return {1, redis.call('HGETALL', KEYS[1])}
"#;

// Moves the caller's hold of `attempt` into the retry queue as attempt
// `next`, due at `due`. KEYS: held, attempt, retry hash, retries zset, run
// mark. ARGV: me, attempt, next, due ms, holds prefix, rid, ttl, instance
// key prefix.
const SCHEDULE_RETRY: &str = r#"
local holder = redis.call('HGET', KEYS[1], 'instance')
if not holder then return 0 end
if holder ~= ARGV[1] and redis.call('EXISTS', ARGV[8] .. holder) == 1 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'attempt') or '1') ~= tonumber(ARGV[2]) then return 0 end
local data = redis.call('HGET', KEYS[1], 'data')
if not data or data == '' then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[7])
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'data', data, 'attempt', ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[6])
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[5])
redis.call('SREM', ARGV[5] .. holder, ARGV[6])
return 1
"#;

// Publishes a due retry as a new spawn entry, once. KEYS: retries zset,
// retry hash, spawn stream. ARGV: rid.
const RELEASE_RETRY: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return false end
local data = redis.call('HGET', KEYS[2], 'data')
local attempt = redis.call('HGET', KEYS[2], 'attempt')
redis.call('DEL', KEYS[2])
if not data then return false end
return redis.call('XADD', KEYS[3], '*', 'data', data, 'attempt', attempt)
"#;

// Ends a session of a lost instance, once. KEYS: owner, sessions-of set of
// the lost instance, lost mark. ARGV: lost, sid, mark JSON, ttl, instance
// key prefix, the caller when it took the session over itself (else '').
const LOSE_SESSION: &str = r#"
if redis.call('EXISTS', ARGV[5] .. ARGV[1]) == 1 then return 0 end
redis.call('SREM', KEYS[2], ARGV[2])
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and owner ~= ARGV[6] then return 0 end
local mark = redis.call('GET', KEYS[3])
if mark and string.find(mark, '"instance":"' .. ARGV[1] .. '"', 1, true) then return 0 end
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[1], ARGV[6], 'EX', 120)
else
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
return 1
"#;

/// The fleet's scripts, loaded once per bus.
#[derive(Clone)]
pub(super) struct Scripts {
    hold: Script,
    still_mine: Script,
    take_lost: Script,
    schedule_retry: Script,
    release_retry: Script,
    lose_session: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            hold: Script::new(HOLD),
            still_mine: Script::new(STILL_MINE),
            take_lost: Script::new(TAKE_LOST),
            schedule_retry: Script::new(SCHEDULE_RETRY),
            release_retry: Script::new(RELEASE_RETRY),
            lose_session: Script::new(LOSE_SESSION),
        }
    }
}

impl Bus {
    pub(super) fn held_key(&self, rid: &str) -> String {
        format!("{}:held:{rid}", self.names.prefix)
    }

    pub(super) fn attempt_key(&self, rid: &str) -> String {
        format!("{}:attempt:{rid}", self.names.prefix)
    }

    pub(super) fn instances_key(&self) -> String {
        format!("{}:instances", self.names.prefix)
    }

    fn holds_prefix(&self) -> String {
        format!("{}:holds:", self.names.prefix)
    }

    fn instance_prefix(&self) -> String {
        format!("{}:instance:", self.names.prefix)
    }

    fn retries_key(&self) -> String {
        format!("{}:retries", self.names.prefix)
    }

    fn retry_key(&self, rid: &str) -> String {
        format!("{}:retry:{rid}", self.names.prefix)
    }

    /// Takes (or renews) this instance's hold on `h.request_id` for
    /// `h.attempt`, recording `h`'s fields; an adopter (`adopt`: it has the
    /// container in hand) passes only the id and attempt (empty fields keep
    /// the ones recorded).
    pub async fn hold(&self, h: &Held, adopt: bool) -> Result<HoldClaim, BusError> {
        let mut c = self.conn().await?;
        let mut inv = self.fleet.hold.prepare_invoke();
        inv.key(self.held_key(&h.request_id))
            .key(self.attempt_key(&h.request_id))
            .key(self.names.result_sent_key(&h.request_id))
            .arg(&self.instance)
            .arg(h.attempt.max(1))
            .arg(self.instance_prefix())
            .arg(self.holds_prefix())
            .arg(&h.request_id)
            .arg(MARK_TTL_SECS)
            .arg(if adopt { "adopt" } else { "intake" })
            .arg(&h.entry);
        for (k, v) in h.fields() {
            if !v.is_empty() {
                inv.arg(k).arg(v);
            }
        }
        let v: i64 = inv.invoke_async(&mut c).await.map_err(|e| self.broken(e))?;
        Ok(match v {
            1 => HoldClaim::Taken,
            2 => HoldClaim::Answered,
            3 => HoldClaim::Stale,
            4 => HoldClaim::Orphaned,
            _ => HoldClaim::Elsewhere,
        })
    }

    /// Whether this instance may still speak for `attempt` of `rid` (no
    /// result out, no later attempt, no other live holder).
    pub async fn still_mine(&self, rid: &str, attempt: u32) -> Result<bool, BusError> {
        Ok(self.standing(rid, attempt).await? == 1)
    }

    /// Whether a later attempt or another live instance holds `rid` now
    /// (this instance's worker of `attempt` is fenced).
    pub async fn held_elsewhere(&self, rid: &str, attempt: u32) -> Result<bool, BusError> {
        Ok(self.standing(rid, attempt).await? == 2)
    }

    async fn standing(&self, rid: &str, attempt: u32) -> Result<i64, BusError> {
        let mut c = self.conn().await?;
        let v: i64 = self
            .fleet
            .still_mine
            .key(self.held_key(rid))
            .key(self.attempt_key(rid))
            .key(self.names.result_sent_key(rid))
            .arg(&self.instance)
            .arg(attempt.max(1))
            .arg(self.instance_prefix())
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(v)
    }

    /// The request ids `instance` holds.
    pub async fn holds_of(&self, instance: &str) -> Result<Vec<String>, BusError> {
        let mut c = self.conn().await?;
        redis::cmd("SMEMBERS")
            .arg(format!("{}{instance}", self.holds_prefix()))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))
    }

    /// The hold record of `rid`, if any.
    pub async fn held(&self, rid: &str) -> Result<Option<Held>, BusError> {
        let mut c = self.conn().await?;
        let v: Value = redis::cmd("HGETALL")
            .arg(self.held_key(rid))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        let h = Held::from_pairs(rid, v);
        Ok((!h.instance.is_empty()).then_some(h))
    }

    /// Instances other than this one whose last heartbeat is older than
    /// `lost_after_ms` and whose heartbeat key is gone.
    pub async fn lost_instances(&self, lost_after_ms: i64) -> Result<Vec<LostInstance>, BusError> {
        let mut c = self.conn().await?;
        let before = chrono::Utc::now().timestamp_millis() - lost_after_ms;
        let v: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.instances_key())
            .arg("-inf")
            .arg(before)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(100)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        let mut out = Vec::new();
        for (id, score) in v {
            if id == self.instance || self.instance_alive(&id).await? {
                continue;
            }
            out.push(LostInstance {
                id,
                last_seen_ms: score as i64,
            });
        }
        Ok(out)
    }

    /// Forgets lost instance `id` once it holds nothing and owns no session.
    pub async fn forget_instance(&self, id: &str) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let (holds, sessions): (i64, i64) = redis::pipe()
            .cmd("SCARD")
            .arg(format!("{}{id}", self.holds_prefix()))
            .cmd("SCARD")
            .arg(format!("{}:sessions-of:{id}", self.names.prefix))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        if holds == 0 && sessions == 0 && !self.instance_alive(id).await? {
            let _: Value = redis::cmd("ZREM")
                .arg(self.instances_key())
                .arg(id)
                .query_async(&mut c)
                .await
                .map_err(|e| self.broken(e))?;
        }
        Ok(())
    }

    /// Takes request `rid` from lost instance `lost`, once (see [`Held`]).
    /// `Ok(None)`: nothing to do here (alive again, moved or answered).
    pub async fn take_lost(&self, lost: &str, rid: &str) -> Result<Option<Held>, BusError> {
        self.take(lost, rid, false).await
    }

    /// Takes back this instance's own hold of `rid` whose worker is gone
    /// (not running here, no container, entry acknowledged), to answer for
    /// it or run it again; like [`Bus::take_lost`].
    pub async fn take_own(&self, rid: &str) -> Result<Option<Held>, BusError> {
        let me = self.instance.clone();
        self.take(&me, rid, true).await
    }

    async fn take(&self, lost: &str, rid: &str, own: bool) -> Result<Option<Held>, BusError> {
        let mut c = self.conn().await?;
        let v: Value = self
            .fleet
            .take_lost
            .key(self.held_key(rid))
            .key(self.names.result_sent_key(rid))
            .arg(lost)
            .arg(&self.instance)
            .arg(self.instance_prefix())
            .arg(self.holds_prefix())
            .arg(rid)
            .arg(&self.names.spawn)
            .arg(&self.names.group)
            .arg(if own { "1" } else { "0" })
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        let Value::Array(mut parts) = v else {
            return Err(BusError::Reply("take_lost".into()));
        };
        match parts.first() {
            Some(Value::Int(1)) if parts.len() == 2 => {
                let fields = parts.remove(1);
                Ok(Some(Held::from_pairs(rid, fields)))
            }
            _ => Ok(None),
        }
    }

    /// Moves this instance's hold of `attempt` of `rid` into the retry
    /// queue as attempt `next`, due in `backoff_ms`; false when it holds no
    /// such attempt or knows no request to run again.
    pub async fn schedule_retry(
        &self,
        rid: &str,
        attempt: u32,
        next: u32,
        backoff_ms: u64,
    ) -> Result<bool, BusError> {
        let mut c = self.conn().await?;
        let due = chrono::Utc::now().timestamp_millis() + backoff_ms as i64;
        let v: i64 = self
            .fleet
            .schedule_retry
            .key(self.held_key(rid))
            .key(self.attempt_key(rid))
            .key(self.retry_key(rid))
            .key(self.retries_key())
            .key(format!("{}:run:{rid}", self.names.prefix))
            .arg(&self.instance)
            .arg(attempt.max(1))
            .arg(next)
            .arg(due)
            .arg(self.holds_prefix())
            .arg(rid)
            .arg(MARK_TTL_SECS)
            .arg(self.instance_prefix())
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(v == 1)
    }

    /// Publishes the retries whose backoff is over as new spawn entries
    /// (each once, whichever instance gets there first); returns their ids.
    pub async fn release_due_retries(&self) -> Result<Vec<(String, String)>, BusError> {
        let mut c = self.conn().await?;
        let now = chrono::Utc::now().timestamp_millis();
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.retries_key())
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(64)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        let mut out = Vec::new();
        for rid in due {
            let v: Value = self
                .fleet
                .release_retry
                .key(self.retries_key())
                .key(self.retry_key(&rid))
                .key(&self.names.spawn)
                .arg(&rid)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.broken(e))?;
            if let Some(id) = bulk_to_string(&v) {
                out.push((rid, id));
            }
        }
        Ok(out)
    }

    /// When the next retry is due (Unix ms), if any waits.
    pub async fn next_retry_due(&self) -> Result<Option<i64>, BusError> {
        let mut c = self.conn().await?;
        let v: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.retries_key())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(v.first().map(|(_, s)| *s as i64))
    }

    /// The sessions `instance` owns.
    pub async fn sessions_of(&self, instance: &str) -> Result<Vec<String>, BusError> {
        let mut c = self.conn().await?;
        redis::cmd("SMEMBERS")
            .arg(format!("{}:sessions-of:{instance}", self.names.prefix))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))
    }

    /// Ends session `sid` of lost instance `lost`, once: true for the
    /// caller that did (it says so in a `session_expired` event).
    /// `taken_over`: the caller owns the session now, having taken it from
    /// `lost` without finding its container.
    pub async fn lose_session(
        &self,
        sid: &str,
        lost: &str,
        taken_over: bool,
    ) -> Result<bool, BusError> {
        let before = self.tail_id(&self.names.spawn).await?;
        let at_ms = chrono::Utc::now().timestamp_millis();
        let mark =
            serde_json::json!({"instance": lost, "before": before, "at_ms": at_ms}).to_string();
        let mut c = self.conn().await?;
        let v: i64 = self
            .fleet
            .lose_session
            .key(format!("{}:session-owner:{sid}", self.names.prefix))
            .key(format!("{}:sessions-of:{lost}", self.names.prefix))
            .key(format!("{}:session-lost:{sid}", self.names.prefix))
            .arg(lost)
            .arg(sid)
            .arg(mark)
            .arg(SESSION_LOST_TTL_SECS)
            .arg(self.instance_prefix())
            .arg(if taken_over {
                self.instance.as_str()
            } else {
                ""
            })
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(v == 1)
    }

    /// The last heartbeat of `instance` (Unix ms), if it is remembered.
    pub async fn last_seen(&self, instance: &str) -> Result<Option<i64>, BusError> {
        let mut c = self.conn().await?;
        let v: Option<f64> = redis::cmd("ZSCORE")
            .arg(self.instances_key())
            .arg(instance)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(v.map(|s| s as i64))
    }

    /// The mark of session `sid` if it ended with a lost instance.
    pub async fn session_loss(&self, sid: &str) -> Result<Option<SessionLoss>, BusError> {
        let mut c = self.conn().await?;
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("{}:session-lost:{sid}", self.names.prefix))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(
            v.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .map(|j| SessionLoss {
                    instance: j["instance"].as_str().unwrap_or("").to_string(),
                    before: j["before"].as_str().unwrap_or("0-0").to_string(),
                    at_ms: j["at_ms"].as_i64().unwrap_or(0),
                }),
        )
    }
}
