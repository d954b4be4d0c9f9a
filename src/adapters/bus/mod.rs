//! Redis: the streams of PROTOCOL.md section 1. This is the only module
//! that talks to Redis.
//!
//! Blocking reads (`XREADGROUP ... BLOCK`, `XREAD ... BLOCK`) each run on a
//! connection of their own, whose response timeout is longer than the
//! block time; everything else shares one auto-reconnecting connection.
//! Results are published through a Lua script that records the request id
//! and appends the entry atomically, so a request never gets two results.

use std::time::Duration;

use std::sync::{Arc, Mutex};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script, Value};

mod api;
mod fleet;
pub use api::{RequestState, ResultLookup};
pub use fleet::{Held, HoldClaim, LostInstance, SessionLoss};

/// A Redis failure.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Any error from the client (I/O, protocol, server).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A reply of an unexpected shape.
    #[error("redis: unexpected reply: {0}")]
    Reply(String),
}

/// Names of the streams and keys of one setup (`--stream-prefix`).
#[derive(Debug, Clone)]
pub struct StreamNames {
    /// `<prefix>:spawn`
    pub spawn: String,
    /// `<prefix>:result`
    pub result: String,
    /// `<prefix>:events`
    pub events: String,
    /// `<prefix>:control`
    pub control: String,
    /// `<prefix>:spawn:dead`
    pub dead: String,
    /// Consumer group of `spawn`.
    pub group: String,
    /// Key prefix for bookkeeping keys.
    pub prefix: String,
}

impl StreamNames {
    /// Stream names for `prefix` and consumer group `group`.
    pub fn new(prefix: &str, group: &str) -> Self {
        StreamNames {
            spawn: format!("{prefix}:spawn"),
            result: format!("{prefix}:result"),
            events: format!("{prefix}:events"),
            control: format!("{prefix}:control"),
            dead: format!("{prefix}:spawn:dead"),
            group: group.to_string(),
            prefix: prefix.to_string(),
        }
    }

    fn result_sent_key(&self, request_id: &str) -> String {
        format!("{}:result-sent:{request_id}", self.prefix)
    }

    /// `<prefix>:events:<request_id>`: the request's own copy of its events,
    /// under the ids `0-<seq>`.
    pub fn request_events(&self, request_id: &str) -> String {
        format!("{}:events:{request_id}", self.prefix)
    }

    fn seq_key(&self, request_id: &str) -> String {
        format!("{}:seq:{request_id}", self.prefix)
    }
}

/// One entry read from a stream.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Stream entry id (`<ms>-<n>`).
    pub id: String,
    /// The `data` field, if present.
    pub data: Option<Vec<u8>>,
    /// How many times it was delivered (1 for a fresh read).
    pub deliveries: u64,
    /// The `attempt` field: 2 and up on an entry the daemon re-published
    /// for a retry (`fleet`), 1 otherwise.
    pub attempt: u32,
}

impl Entry {
    /// Milliseconds since the epoch encoded in the entry id.
    pub fn timestamp_ms(&self) -> Option<u64> {
        self.id.split('-').next()?.parse().ok()
    }
}

/// How long a run mark lives without a refresh from its instance.
const RUN_MARK_TTL_SECS: u64 = 60;

/// Most entries of a request's own event stream (`<prefix>:events:<rid>`):
/// an API follower resumes within the last this many events of a request.
pub const REQUEST_EVENTS_MAXLEN: u64 = 20_000;
/// How long a request's own event stream stays once its result is out.
pub const REQUEST_EVENTS_AFTER_RESULT_SECS: u64 = 3600;

#[cfg(test)]
#[test]
fn the_event_script_keeps_the_stated_bounds() {
    assert!(PUBLISH_EVENTS.contains(&format!("'{REQUEST_EVENTS_MAXLEN}'")));
    assert!(PUBLISH_EVENTS.contains(&format!("'{REQUEST_EVENTS_AFTER_RESULT_SECS}'")));
}

/// How long bookkeeping keys (result-sent marks, event counters) live.
const MARK_TTL_SECS: u64 = 7 * 24 * 3600;

// The result-sent mark holds the result's entry id (one XRANGE reads it
// back). A result is refused (0) when one was published, and fenced (2) when it is
// of an older attempt than the request's current one, or when a live
// instance other than the caller holds the request (`fleet`); publishing
// ends the request's hold.
const PUBLISH_RESULT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local cur = tonumber(redis.call('GET', KEYS[4]) or '1')
if tonumber(ARGV[5]) < cur then return 2 end
local holder = redis.call('HGET', KEYS[3], 'instance')
if holder and holder ~= ARGV[4] and redis.call('EXISTS', ARGV[6] .. holder) == 1 then
  return 2
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[1])
redis.call('SET', KEYS[1], id, 'EX', ARGV[3])
-- The request's own copy of its events is kept an hour past its result.
redis.call('EXPIRE', KEYS[5], ARGV[9])
if holder then
  redis.call('DEL', KEYS[3])
  redis.call('SREM', ARGV[7] .. holder, ARGV[8])
end
return 1
"#;

/// What became of a result handed to [`Bus::publish_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// This call published it.
    Now,
    /// A result was already out.
    Already,
    /// An attempt or instance that no longer holds the request sent it:
    /// refused, and nothing else of that worker may be said.
    Fenced,
}

// Events arrive without their seq: ARGV[3..] are JSON objects' tails after
// `{"seq":N`, so the counter and the appends are one atomic step. Each is
// also appended to the request's own stream (KEYS[3]) under the id
// `0-<seq>`, so that a follower reads exactly its request from a position;
// that copy never stops the main one (pcall: an id out of order after a
// counter lost is skipped). It keeps the last 20000 events
// (REQUEST_EVENTS_MAXLEN) and lives an hour past the result
// (REQUEST_EVENTS_AFTER_RESULT_SECS; KEYS[4] is the result-sent mark).
const PUBLISH_EVENTS: &str = r#"
local n = #ARGV - 2
local last = redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], ARGV[2])
local first = last - n
for i = 1, n do
  local data = '{"seq":' .. (first + i) .. ARGV[i + 2]
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'data', data)
  redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', '20000', '0-' .. (first + i), 'data', data)
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('EXPIRE', KEYS[3], '3600')
else
  redis.call('EXPIRE', KEYS[3], ARGV[2])
end
return last
"#;

const CLAIM_ADOPTION: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. cur) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"#;

// A run mark says which instance runs a request now: 1 = taken by the
// caller, 2 = the caller already holds it, 0 = a live instance holds it,
// 3 = a dead instance held it (the run was interrupted).
const CLAIM_RUN: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return 1
end
if cur == ARGV[1] then return 2 end
if redis.call('EXISTS', ARGV[2] .. cur) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 3
"#;

// The owner of a session: kept by the caller if free, its own, or held by
// a dead instance; otherwise the live owner is returned.
const CLAIM_SESSION: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. cur) == 1 then
  return cur
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SADD', ARGV[4] .. ARGV[1], ARGV[5])
if cur and cur ~= ARGV[1] then
  redis.call('SREM', ARGV[4] .. cur, ARGV[5])
  return ARGV[1] .. ' ' .. cur
end
return ARGV[1]
"#;

pub use crate::model::triage::RunClaim;

/// The shared, auto-reconnecting connection plus stream names.
#[derive(Clone)]
pub struct Bus {
    client: Client,
    // One shared multiplexed connection, replaced after a connection-level
    // error: every call has a response timeout, so none hangs on a dead
    // socket, and the next call reconnects.
    shared: Arc<Mutex<Option<MultiplexedConnection>>>,
    /// Stream names.
    pub names: StreamNames,
    maxlen: usize,
    publish_result: Script,
    publish_events: Script,
    claim_adoption: Script,
    claim_run: Script,
    claim_session: Script,
    /// This daemon instance (the holder its results are checked against).
    instance: String,
    fleet: fleet::Scripts,
}

impl Bus {
    /// Connects to `url`; fails fast when Redis is not reachable.
    pub async fn connect(url: &str, names: StreamNames, maxlen: usize) -> Result<Bus, BusError> {
        let client = Client::open(url)?;
        // Fail fast (one clear error) when Redis is not there at all; the
        // manager below retries with backoff once it has connected.
        let probe = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(Duration::from_secs(3));
        let mut first = client
            .get_multiplexed_async_connection_with_config(&probe)
            .await?;
        let _: String = redis::cmd("PING").query_async(&mut first).await?;
        Ok(Bus {
            client,
            shared: Arc::new(Mutex::new(None)),
            names,
            maxlen,
            publish_result: Script::new(PUBLISH_RESULT),
            publish_events: Script::new(PUBLISH_EVENTS),
            claim_adoption: Script::new(CLAIM_ADOPTION),
            claim_run: Script::new(CLAIM_RUN),
            claim_session: Script::new(CLAIM_SESSION),
            instance: String::new(),
            fleet: fleet::Scripts::new(),
        })
    }

    /// The same bus, speaking for daemon instance `instance`.
    pub fn for_instance(mut self, instance: &str) -> Bus {
        self.instance = instance.to_string();
        self
    }

    /// The instance this bus speaks for.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The shared connection, connecting first if there is none.
    async fn conn(&self) -> Result<MultiplexedConnection, BusError> {
        if let Some(c) = self.shared.lock().expect("bus lock").clone() {
            return Ok(c);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(Duration::from_secs(10));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.shared.lock().expect("bus lock") = Some(c.clone());
        Ok(c)
    }

    /// Turns a client error into a [`BusError`], dropping the shared
    /// connection when the error says it is broken.
    fn broken(&self, e: redis::RedisError) -> BusError {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            *self.shared.lock().expect("bus lock") = None;
        }
        BusError::Redis(e)
    }

    /// A connection of its own for blocking reads of up to `block`.
    pub async fn blocking_connection(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, BusError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(block + Duration::from_secs(10));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// Creates the consumer group (and the stream) if missing.
    pub async fn ensure_group(&self) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let r: Result<Value, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.names.spawn)
            .arg(&self.names.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads up to `count` new entries for `consumer`, blocking up to `block`.
    pub async fn read_new(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry>, BusError> {
        let v: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.names.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.names.spawn)
            .arg(">")
            .query_async(conn)
            .await?;
        Ok(parse_read_reply(v)?
            .into_iter()
            .next()
            .map(|(_, e)| e)
            .unwrap_or_default())
    }

    /// Re-reads entries delivered to `consumer` but not yet acknowledged,
    /// with ids after `after`: left by a crash of this same instance, or
    /// handed to it by another instance (session entries).
    pub async fn read_own_pending(
        &self,
        conn: &mut MultiplexedConnection,
        consumer: &str,
        count: usize,
        after: &str,
    ) -> Result<Vec<Entry>, BusError> {
        let v: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.names.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&self.names.spawn)
            .arg(after)
            .query_async(conn)
            .await?;
        let mut entries: Vec<Entry> = parse_read_reply(v)?
            .into_iter()
            .next()
            .map(|(_, e)| e)
            .unwrap_or_default();
        for e in &mut entries {
            e.deliveries = self.deliveries(&e.id).await.unwrap_or(1);
        }
        Ok(entries)
    }

    fn instance_key(&self, instance: &str) -> String {
        format!("{}:instance:{instance}", self.names.prefix)
    }

    /// Marks `instance` alive for `ttl_secs`.
    pub async fn heartbeat(&self, instance: &str, ttl_secs: u64) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        // The sorted set remembers an instance after its key expired: how
        // long it has been gone decides when it counts as lost (`fleet`).
        let _: Value = redis::pipe()
            .cmd("SET")
            .arg(self.instance_key(instance))
            .arg(crate::model::protocol::now_rfc3339())
            .arg("EX")
            .arg(ttl_secs)
            .cmd("ZADD")
            .arg(self.instances_key())
            .arg(now_ms)
            .arg(instance)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// Whether `instance` sent a heartbeat recently.
    pub async fn instance_alive(&self, instance: &str) -> Result<bool, BusError> {
        let mut c = self.conn().await?;
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.instance_key(instance))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(n > 0)
    }

    /// Records `instance` as the adopter of `container` unless another live
    /// instance already adopted it; returns whether `instance` may adopt.
    pub async fn claim_adoption(&self, container: &str, instance: &str) -> Result<bool, BusError> {
        let mut c = self.conn().await?;
        let v: i64 = self
            .claim_adoption
            .key(format!("{}:adopter:{container}", self.names.prefix))
            .arg(instance)
            .arg(format!("{}:instance:", self.names.prefix))
            .arg(MARK_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(v == 1)
    }

    fn key_key(&self, key_hash: &str) -> String {
        format!("{}:key:{key_hash}", self.names.prefix)
    }

    /// Stores a worker key's record (by the key's hash) for `ttl_secs`.
    pub async fn put_worker_key(
        &self,
        key_hash: &str,
        record: &str,
        ttl_secs: u64,
    ) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let _: Value = redis::cmd("SET")
            .arg(self.key_key(key_hash))
            .arg(record)
            .arg("EX")
            .arg(ttl_secs.max(1))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// The record of a worker key, if it is still valid.
    pub async fn get_worker_key(&self, key_hash: &str) -> Result<Option<String>, BusError> {
        let mut c = self.conn().await?;
        redis::cmd("GET")
            .arg(self.key_key(key_hash))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))
    }

    /// Revokes a worker key.
    pub async fn delete_worker_key(&self, key_hash: &str) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let _: Value = redis::cmd("DEL")
            .arg(self.key_key(key_hash))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// Registers worker key `key` with its record until `ttl` (plus a
    /// minute, so a worker's last call near its deadline still works).
    pub async fn register_worker_key(
        &self,
        key: &str,
        record: &crate::model::worker_key::KeyRecord,
        ttl: std::time::Duration,
    ) -> Result<(), BusError> {
        let json = serde_json::to_string(record).expect("key records serialize");
        self.put_worker_key(
            &crate::model::worker_key::key_hash(key),
            &json,
            ttl.as_secs() + 60,
        )
        .await
    }

    /// Revokes worker key `key`.
    pub async fn revoke_worker_key(&self, key: &str) -> Result<(), BusError> {
        self.delete_worker_key(&crate::model::worker_key::key_hash(key))
            .await
    }

    fn run_key(&self, request_id: &str) -> String {
        format!("{}:run:{request_id}", self.names.prefix)
    }

    /// Marks `request_id` as run by `instance` (see [`RunClaim`]).
    pub async fn claim_run(&self, request_id: &str, instance: &str) -> Result<RunClaim, BusError> {
        let mut c = self.conn().await?;
        let v: i64 = self
            .claim_run
            .key(self.run_key(request_id))
            .arg(instance)
            .arg(format!("{}:instance:", self.names.prefix))
            .arg(RUN_MARK_TTL_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(match v {
            1 => RunClaim::Taken,
            2 => RunClaim::Mine,
            0 => RunClaim::Elsewhere,
            _ => RunClaim::Interrupted,
        })
    }

    /// The instance that runs session `sid`: the caller, unless another live
    /// instance already does (then that one's name).
    pub async fn claim_session(&self, sid: &str, instance: &str) -> Result<String, BusError> {
        Ok(self.take_session(sid, instance).await?.0)
    }

    /// Like [`Bus::claim_session`], also naming the dead instance the caller
    /// took the session over from, if it did.
    pub async fn take_session(
        &self,
        sid: &str,
        instance: &str,
    ) -> Result<(String, Option<String>), BusError> {
        let mut c = self.conn().await?;
        let v: String = self
            .claim_session
            .key(format!("{}:session-owner:{sid}", self.names.prefix))
            .arg(instance)
            .arg(format!("{}:instance:", self.names.prefix))
            .arg(120)
            .arg(format!("{}:sessions-of:", self.names.prefix))
            .arg(sid)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(match v.split_once(' ') {
            Some((owner, from)) => (owner.to_string(), Some(from.to_string())),
            None => (v, None),
        })
    }

    /// Forgets the owner of session `sid` if it is `instance`.
    pub async fn release_session(&self, sid: &str, instance: &str) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let key = format!("{}:session-owner:{sid}", self.names.prefix);
        let cur: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        if cur.as_deref() == Some(instance) {
            let _: Value = redis::pipe()
                .cmd("DEL")
                .arg(&key)
                .cmd("SREM")
                .arg(format!("{}:sessions-of:{instance}", self.names.prefix))
                .arg(sid)
                .query_async(&mut c)
                .await
                .map_err(|e| self.broken(e))?;
        }
        Ok(())
    }

    /// Records that session `sid`'s volumes were used now (a task ended,
    /// its container ended, or a container is about to mount them): the
    /// start of their `session_keep`.
    pub async fn touch_session_volumes(&self, sid: &str, now_unix: u64) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let _: Value = redis::cmd("ZADD")
            .arg(format!("{}:session-used", self.names.prefix))
            .arg(now_unix)
            .arg(sid)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// When session `sid`'s volumes were last used; a session with no
    /// record (Redis lost it) is recorded as used now, so a lost record
    /// never shortens a volume's keep.
    pub async fn session_volumes_used(&self, sid: &str, now_unix: u64) -> Result<u64, BusError> {
        let mut c = self.conn().await?;
        let key = format!("{}:session-used", self.names.prefix);
        let _: Value = redis::cmd("ZADD")
            .arg(&key)
            .arg("NX")
            .arg(now_unix)
            .arg(sid)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(&key)
            .arg(sid)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(score.map(|s| s as u64).unwrap_or(now_unix))
    }

    /// Forgets the use record of session `sid` (its volumes are gone).
    pub async fn forget_session_volumes(&self, sid: &str) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let _: Value = redis::cmd("ZREM")
            .arg(format!("{}:session-used", self.names.prefix))
            .arg(sid)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// Pending entries of the group with ids below `id` (oldest first).
    pub async fn pending_before(&self, id: &str, count: usize) -> Result<Vec<String>, BusError> {
        let mut c = self.conn().await?;
        let v: Value = redis::cmd("XPENDING")
            .arg(&self.names.spawn)
            .arg(&self.names.group)
            .arg("-")
            .arg(format!("({id}"))
            .arg(count)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        let Value::Array(rows) = v else {
            return Ok(Vec::new());
        };
        Ok(rows
            .into_iter()
            .filter_map(|r| match r {
                Value::Array(mut f) if !f.is_empty() => bulk_to_string(&f.swap_remove(0)),
                _ => None,
            })
            .collect())
    }

    /// Hands a pending spawn entry to another consumer of the group.
    pub async fn transfer(&self, entry_id: &str, consumer: &str) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let _: Value = redis::cmd("XCLAIM")
            .arg(&self.names.spawn)
            .arg(&self.names.group)
            .arg(consumer)
            .arg(0)
            .arg(entry_id)
            .arg("JUSTID")
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// Keeps the run marks of `request_ids` alive.
    pub async fn refresh_runs(&self, request_ids: &[String]) -> Result<(), BusError> {
        if request_ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        for rid in request_ids {
            pipe.cmd("EXPIRE")
                .arg(self.run_key(rid))
                .arg(RUN_MARK_TTL_SECS)
                .ignore();
        }
        let _: Value = pipe.query_async(&mut c).await.map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// True for the first caller only (per `what`, for a week).
    pub async fn claim_once(&self, what: &str) -> Result<bool, BusError> {
        let mut c = self.conn().await?;
        let v: Value = redis::cmd("SET")
            .arg(format!("{}:once:{what}", self.names.prefix))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(MARK_TTL_SECS)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(!matches!(v, Value::Nil))
    }

    /// Reads control entries after `last_id`, blocking up to `block`.
    pub async fn read_control(
        &self,
        conn: &mut MultiplexedConnection,
        last_id: &str,
        block: Duration,
    ) -> Result<Vec<Entry>, BusError> {
        let v: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.names.control)
            .arg(last_id)
            .query_async(conn)
            .await?;
        Ok(parse_read_reply(v)?
            .into_iter()
            .next()
            .map(|(_, e)| e)
            .unwrap_or_default())
    }

    /// Id of the newest control entry (`0-0` when the stream is empty).
    pub async fn control_tail(&self) -> Result<String, BusError> {
        self.tail_id(&self.names.control).await
    }

    /// Claims entries idle for at least `min_idle` from any consumer,
    /// following the cursor from `start`; returns the entries and the next cursor.
    pub async fn autoclaim(
        &self,
        consumer: &str,
        min_idle: Duration,
        start: &str,
        count: usize,
    ) -> Result<(Vec<Entry>, String), BusError> {
        let mut c = self.conn().await?;
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.names.spawn)
            .arg(&self.names.group)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg(start)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        let Value::Array(mut parts) = v else {
            return Err(BusError::Reply("XAUTOCLAIM".into()));
        };
        if parts.len() < 2 {
            return Err(BusError::Reply("XAUTOCLAIM".into()));
        }
        let entries_v = parts.remove(1);
        let next = match parts.remove(0) {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::SimpleString(s) => s,
            other => return Err(BusError::Reply(format!("XAUTOCLAIM cursor {other:?}"))),
        };
        let mut entries = parse_entries(entries_v)?;
        for e in &mut entries {
            e.deliveries = self.deliveries(&e.id).await.unwrap_or(1);
        }
        Ok((entries, next))
    }

    /// Delivery count of a pending entry.
    pub async fn deliveries(&self, id: &str) -> Result<u64, BusError> {
        let mut c = self.conn().await?;
        let v: Value = redis::cmd("XPENDING")
            .arg(&self.names.spawn)
            .arg(&self.names.group)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        if let Value::Array(rows) = v {
            if let Some(Value::Array(row)) = rows.into_iter().next() {
                if let Some(Value::Int(n)) = row.get(3) {
                    return Ok(*n as u64);
                }
            }
        }
        Ok(1)
    }

    /// The spawn entry with id `id`, if the stream still holds it.
    pub async fn entry_by_id(&self, id: &str) -> Result<Option<Entry>, BusError> {
        let mut c = self.conn().await?;
        let v: Value = redis::cmd("XRANGE")
            .arg(&self.names.spawn)
            .arg(id)
            .arg(id)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(parse_entries(v)?.into_iter().find(|e| e.id == id))
    }

    /// `XACK` of one spawn entry.
    pub async fn ack(&self, id: &str) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let _: Value = redis::cmd("XACK")
            .arg(&self.names.spawn)
            .arg(&self.names.group)
            .arg(id)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// Publishes the result of `attempt` of `request_id` unless one was
    /// already published or the attempt is fenced (see [`Published`]).
    pub async fn publish_result(
        &self,
        request_id: &str,
        attempt: u32,
        json: &str,
    ) -> Result<Published, BusError> {
        let mut c = self.conn().await?;
        let v: i64 = self
            .publish_result
            .key(self.names.result_sent_key(request_id))
            .key(&self.names.result)
            .key(self.held_key(request_id))
            .key(self.attempt_key(request_id))
            .key(self.names.request_events(request_id))
            .arg(json)
            .arg(self.maxlen)
            .arg(MARK_TTL_SECS)
            .arg(&self.instance)
            .arg(attempt)
            .arg(format!("{}:instance:", self.names.prefix))
            .arg(format!("{}:holds:", self.names.prefix))
            .arg(request_id)
            .arg(REQUEST_EVENTS_AFTER_RESULT_SECS)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(match v {
            1 => Published::Now,
            2 => Published::Fenced,
            _ => Published::Already,
        })
    }

    /// Whether a result was already published for `request_id`.
    pub async fn has_result(&self, request_id: &str) -> Result<bool, BusError> {
        let mut c = self.conn().await?;
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.names.result_sent_key(request_id))
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(n > 0)
    }

    /// Publishes events of one request; `tails` are each event's JSON object
    /// without its opening `{` (the script prepends `{"seq":N,`).
    pub async fn publish_events(&self, request_id: &str, tails: &[String]) -> Result<(), BusError> {
        if tails.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let mut inv = self.publish_events.key(self.names.seq_key(request_id));
        inv.key(&self.names.events)
            .key(self.names.request_events(request_id))
            .key(self.names.result_sent_key(request_id))
            .arg(self.maxlen)
            .arg(MARK_TTL_SECS);
        for t in tails {
            inv.arg(format!(",{t}"));
        }
        let _: Value = inv.invoke_async(&mut c).await.map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// Appends to the dead-letter stream.
    pub async fn dead_letter(&self, json: &str) -> Result<(), BusError> {
        self.xadd(&self.names.dead, json).await
    }

    /// Appends to the control stream.
    pub async fn publish_control(&self, json: &str) -> Result<(), BusError> {
        self.xadd(&self.names.control, json).await
    }

    /// Appends a spawn request.
    pub async fn publish_spawn(&self, json: &str) -> Result<String, BusError> {
        let mut c = self.conn().await?;
        redis::cmd("XADD")
            .arg(&self.names.spawn)
            .arg("*")
            .arg("data")
            .arg(json)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))
    }

    async fn xadd(&self, stream: &str, json: &str) -> Result<(), BusError> {
        let mut c = self.conn().await?;
        let _: Value = redis::cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg("data")
            .arg(json)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(())
    }

    /// Stream length and pending count of the spawn stream.
    pub async fn queue_depth(&self) -> Result<(u64, u64), BusError> {
        let mut c = self.conn().await?;
        let len: u64 = redis::cmd("XLEN")
            .arg(&self.names.spawn)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        let v: Value = redis::cmd("XPENDING")
            .arg(&self.names.spawn)
            .arg(&self.names.group)
            .query_async(&mut c)
            .await
            .unwrap_or(Value::Nil);
        let pending = match v {
            Value::Array(a) => match a.first() {
                Some(Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        };
        Ok((len, pending))
    }

    /// Reads entries of any stream after `last_id` (for clients like `spawn --follow`).
    pub async fn read_after(
        &self,
        conn: &mut MultiplexedConnection,
        streams: &[&str],
        last_ids: &[String],
        block: Duration,
    ) -> Result<Vec<(String, Vec<Entry>)>, BusError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS");
        for s in streams {
            cmd.arg(*s);
        }
        for id in last_ids {
            cmd.arg(id);
        }
        let v: Value = cmd.query_async(conn).await?;
        parse_read_reply(v)
    }

    /// Id of the newest entry of `stream` (`0-0` when empty).
    pub async fn tail_id(&self, stream: &str) -> Result<String, BusError> {
        let mut c = self.conn().await?;
        let v: Value = redis::cmd("XREVRANGE")
            .arg(stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(parse_entries(v)?
            .into_iter()
            .next()
            .map(|e| e.id)
            .unwrap_or_else(|| "0-0".into()))
    }
}

fn bulk_to_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Parses `[[id, [k, v, ...]], ...]`; entries deleted meanwhile have nil fields.
fn parse_entries(v: Value) -> Result<Vec<Entry>, BusError> {
    let Value::Array(items) = v else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            continue;
        };
        if pair.is_empty() {
            continue;
        }
        let fields = if pair.len() > 1 {
            pair.remove(1)
        } else {
            Value::Nil
        };
        let Some(id) = bulk_to_string(&pair[0]) else {
            continue;
        };
        let mut data = None;
        let mut attempt = 1;
        let pairs: Vec<(Value, Value)> = match fields {
            Value::Array(kv) => {
                let mut it = kv.into_iter();
                let mut v = Vec::new();
                while let (Some(k), Some(val)) = (it.next(), it.next()) {
                    v.push((k, val));
                }
                v
            }
            Value::Map(kv) => kv,
            _ => Vec::new(),
        };
        for (k, val) in pairs {
            match bulk_to_string(&k).as_deref() {
                Some("data") => {
                    if let Value::BulkString(b) = val {
                        data = Some(b);
                    }
                }
                // Bounded: a producer's own `attempt` field cannot push a
                // request past its retries (only fewer of them).
                Some("attempt") => {
                    attempt = bulk_to_string(&val)
                        .and_then(|a| a.parse::<u32>().ok())
                        .map(|a| a.clamp(1, crate::model::retry::MAX_RETRIES + 1))
                        .unwrap_or(1)
                }
                _ => {}
            }
        }
        out.push(Entry {
            id,
            data,
            deliveries: 1,
            attempt,
        });
    }
    Ok(out)
}

/// Parses an `XREAD`/`XREADGROUP` reply into (stream, entries).
fn parse_read_reply(v: Value) -> Result<Vec<(String, Vec<Entry>)>, BusError> {
    let streams: Vec<(Value, Value)> = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut p) if p.len() == 2 => {
                    let e = p.remove(1);
                    Some((p.remove(0), e))
                }
                _ => None,
            })
            .collect(),
        Value::Map(m) => m,
        other => return Err(BusError::Reply(format!("{other:?}"))),
    };
    let mut out = Vec::new();
    for (name, entries) in streams {
        let name = bulk_to_string(&name).unwrap_or_default();
        out.push((name, parse_entries(entries)?));
    }
    Ok(out)
}
