//! The gateway: the HTTP API the in-container `orchestrator` CLI calls.
//!
//! Each worker gets its own key, valid only while the worker lives (its
//! record sits in Redis under the key's hash, so it survives a daemon
//! restart and is shared by every instance). The gateway checks the key,
//! that the call comes from the key's own container (its address on the
//! workers' network), enforces the worker's `allowed_tools` again (a worker
//! that bypasses the CLI gains nothing), turns `respond` into a `respond`
//! event (rate-bounded per worker), and forwards the other groups to the
//! upstream orchestrator backend. Workers never see Redis credentials.
//!
//! The server bounds what one caller can hold: a request's headers must
//! arrive within `gateway_header_timeout` and its body within
//! `gateway_body_timeout`; one address keeps at most
//! `gateway_max_connections_per_caller` connections open and one key at
//! most `gateway_max_inflight_per_key` requests in progress.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{RawPathParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::adapters::bus::Bus;
use crate::adapters::sink::Sink;
use crate::model::protocol::EventType;
use crate::model::redact::Redactor;
use crate::model::tools::{allows, grants};
use crate::model::worker_key::{key_hash, KeyRecord};

/// Builds the redactor for a preset's secrets.
pub type RedactorFor = Box<dyn Fn(Option<&str>) -> Redactor + Send + Sync>;

/// Where a group's calls go, from the catalog in force: `None` for a group
/// the catalog does not declare, else its own upstream URL if it names one.
pub type RouteOf = Box<dyn Fn(&str) -> Option<Option<String>> + Send + Sync>;

/// What one caller may hold of the gateway (settings `gateway_*`,
/// `respond_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayLimits {
    /// Time for a request's headers to arrive (also bounds an idle
    /// keep-alive connection).
    pub header_timeout: Duration,
    /// Time for a request's body to arrive.
    pub body_timeout: Duration,
    /// Requests in progress per worker key.
    pub max_inflight_per_key: usize,
    /// Open connections per caller address.
    pub max_connections_per_caller: usize,
    /// `respond` messages per worker per minute (also the burst).
    pub respond_per_minute: u32,
    /// `respond` bytes per worker per minute (also the burst).
    pub respond_bytes_per_minute: u64,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_inflight_per_key: 8,
            max_connections_per_caller: 32,
            respond_per_minute: 30,
            respond_bytes_per_minute: 256 * 1024,
        }
    }
}

/// The largest request body the gateway reads.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The largest `respond` message.
pub const MAX_RESPOND_BYTES: usize = 64 * 1024;

/// A token bucket: `capacity` tokens, refilled at `capacity` per minute.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `capacity` (per minute) at `now`.
    pub fn new(capacity: f64, now: Instant) -> Bucket {
        Bucket {
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * self.capacity / 60.0).min(self.capacity);
        self.at = now;
    }

    /// Whether `n` tokens are there at `now` (without taking them).
    pub fn has(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n
    }

    /// Takes `n` tokens (after [`Bucket::has`]).
    pub fn take(&mut self, n: f64) {
        self.tokens -= n;
    }
}

/// One worker's `respond` budget and what it has had refused.
#[derive(Debug, Clone)]
pub struct RespondBudget {
    messages: Bucket,
    bytes: Bucket,
    /// Refused (messages, bytes) not yet reported in an event.
    pub unreported: (u64, u64),
    /// Whether a report is scheduled.
    pub report_pending: bool,
    last_use: Instant,
}

impl RespondBudget {
    /// A full budget under `limits` at `now`.
    pub fn new(limits: &GatewayLimits, now: Instant) -> RespondBudget {
        RespondBudget {
            messages: Bucket::new(limits.respond_per_minute as f64, now),
            bytes: Bucket::new(limits.respond_bytes_per_minute as f64, now),
            unreported: (0, 0),
            report_pending: false,
            last_use: now,
        }
    }

    /// Whether a message of `len` bytes may go at `now`; takes it from the
    /// budget if so, counts it as refused if not.
    pub fn admit(&mut self, len: usize, now: Instant) -> bool {
        self.last_use = now;
        let ok = self.messages.has(1.0, now) && self.bytes.has(len as f64, now);
        if ok {
            self.messages.take(1.0);
            self.bytes.take(len as f64);
        } else {
            self.unreported.0 += 1;
            self.unreported.1 += len as u64;
        }
        ok
    }
}

/// Whether a caller at `peer` may use a key bound to a container with
/// the addresses `ips` (IPv4-mapped IPv6 compares as IPv4).
pub fn caller_matches(peer: IpAddr, ips: &[IpAddr]) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    ips.iter().any(|ip| canon(*ip) == canon(peer))
}

#[derive(Default)]
struct GatewayState {
    /// Open connections per caller address.
    connections: HashMap<IpAddr, usize>,
    /// Requests in progress per key hash.
    inflight: HashMap<String, usize>,
    /// Addresses of the containers keys are bound to, as last inspected.
    callers: HashMap<String, (Vec<IpAddr>, Instant)>,
    /// `respond` budgets per request id.
    respond: HashMap<String, RespondBudget>,
}

/// Cached container addresses are looked up again after this long (and
/// at once when a call does not match them).
const CALLER_CACHE_TTL: Duration = Duration::from_secs(300);

/// Entries kept per table before idle ones are dropped.
const STATE_ENTRIES: usize = 4096;

/// Shared state of the gateway.
pub struct Gateway {
    /// Redis, for key records.
    pub bus: Bus,
    /// Where `respond` events go.
    pub sink: Sink,
    /// Upstream backend base URL, if configured.
    pub upstream: Option<String>,
    /// Secrets of a preset, to mask in `respond` messages.
    pub redactor_for: RedactorFor,
    /// The tool groups the catalog declares, and where each is forwarded.
    pub route_of: RouteOf,
    /// The engine, to learn the address of a key's container.
    pub engine: crate::adapters::engine::Engine,
    /// Per-caller bounds.
    pub limits: GatewayLimits,
    state: Mutex<GatewayState>,
}

impl Gateway {
    /// The gateway's state over these parts.
    pub fn new(
        bus: Bus,
        sink: Sink,
        upstream: Option<String>,
        redactor_for: RedactorFor,
        route_of: RouteOf,
        engine: crate::adapters::engine::Engine,
        limits: GatewayLimits,
    ) -> Gateway {
        Gateway {
            bus,
            sink,
            upstream,
            redactor_for,
            route_of,
            engine,
            limits,
            state: Mutex::new(GatewayState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GatewayState> {
        self.state.lock().expect("gateway state lock")
    }

    /// A connection slot for `peer`, or `None` when it holds its maximum.
    fn connection(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let mut st = self.state();
        let n = st.connections.entry(peer).or_default();
        if *n >= self.limits.max_connections_per_caller {
            return None;
        }
        *n += 1;
        Some(Slot {
            gw: self.clone(),
            kind: SlotKind::Connection(peer),
        })
    }

    /// A request slot for the key with hash `key_hash`, or `None`.
    fn request(self: &Arc<Self>, key_hash: &str) -> Option<Slot> {
        let mut st = self.state();
        let n = st.inflight.entry(key_hash.to_string()).or_default();
        if *n >= self.limits.max_inflight_per_key {
            return None;
        }
        *n += 1;
        Some(Slot {
            gw: self.clone(),
            kind: SlotKind::Request(key_hash.to_string()),
        })
    }

    /// Whether `peer` is the container `name` (from the cache, else by
    /// asking the engine).
    async fn is_caller(
        &self,
        name: &str,
        peer: IpAddr,
    ) -> Result<bool, crate::adapters::engine::EngineError> {
        let cached = self
            .state()
            .callers
            .get(name)
            .filter(|(_, at)| at.elapsed() < CALLER_CACHE_TTL)
            .map(|(ips, _)| ips.clone());
        if let Some(ips) = &cached {
            if caller_matches(peer, ips) {
                return Ok(true);
            }
        }
        // Not cached, or not matching: the container may have been
        // replaced under its name since; ask again before refusing.
        let facts = self.engine.inspect(name).await?;
        let ips: Vec<IpAddr> = facts.ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        let ok = caller_matches(peer, &ips);
        let mut st = self.state();
        if st.callers.len() >= STATE_ENTRIES {
            st.callers
                .retain(|_, (_, at)| at.elapsed() < CALLER_CACHE_TTL);
            if st.callers.len() >= STATE_ENTRIES {
                st.callers.clear();
            }
        }
        st.callers.insert(name.to_string(), (ips, Instant::now()));
        Ok(ok)
    }

    /// Takes a `respond` of `len` bytes from `rid`'s budget; when refused,
    /// counts it and makes sure a `respond_dropped` event reports it.
    fn admit_respond(self: &Arc<Self>, rid: &str, len: usize) -> bool {
        let now = Instant::now();
        let mut st = self.state();
        if st.respond.len() >= STATE_ENTRIES && !st.respond.contains_key(rid) {
            st.respond
                .retain(|_, b| now.duration_since(b.last_use) < Duration::from_secs(120));
        }
        let budget = st
            .respond
            .entry(rid.to_string())
            .or_insert_with(|| RespondBudget::new(&self.limits, now));
        if budget.admit(len, now) {
            return true;
        }
        if !budget.report_pending {
            budget.report_pending = true;
            let gw = self.clone();
            let rid = rid.to_string();
            tokio::spawn(async move { gw.report_dropped(rid).await });
        }
        false
    }

    /// Reports refused `respond` messages of `rid`: soon after the first,
    /// then every few seconds while more are refused.
    async fn report_dropped(self: Arc<Self>, rid: String) {
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::time::sleep(wait).await;
            wait = Duration::from_secs(5);
            let (messages, bytes) = {
                let mut st = self.state();
                let Some(b) = st.respond.get_mut(&rid) else {
                    return;
                };
                let n = std::mem::take(&mut b.unreported);
                if n.0 == 0 {
                    b.report_pending = false;
                    return;
                }
                n
            };
            tracing::warn!(request_id = %rid, messages, bytes, "respond messages over the rate bound were refused");
            self.sink
                .event(
                    &rid,
                    EventType::RespondDropped,
                    json!({
                        "messages": messages,
                        "bytes": bytes,
                        "per_minute": self.limits.respond_per_minute,
                        "bytes_per_minute": self.limits.respond_bytes_per_minute,
                    }),
                )
                .await;
        }
    }
}

enum SlotKind {
    Connection(IpAddr),
    Request(String),
}

/// A held connection or request slot, given back on drop.
struct Slot {
    gw: Arc<Gateway>,
    kind: SlotKind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.gw.state();
        match &self.kind {
            SlotKind::Connection(ip) => {
                if let Some(n) = st.connections.get_mut(ip) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        st.connections.remove(ip);
                    }
                }
            }
            SlotKind::Request(k) => {
                if let Some(n) = st.inflight.get_mut(k) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        st.inflight.remove(k);
                    }
                }
            }
        }
    }
}

/// Who calls the gateway: an address on the workers' bridges, or a worker
/// known by the egress socket its call came through.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A TCP peer (the bridge path).
    Address(IpAddr),
    /// The container of the egress socket the call arrived on.
    Worker(String),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Address(ip) => write!(f, "{ip}"),
            Caller::Worker(name) => write!(f, "egress socket of {name}"),
        }
    }
}

/// The gateway as the egress sockets' tool-call handler: each call carries
/// its worker's container name as the caller.
pub fn tool_call(gw: Arc<Gateway>) -> crate::adapters::egress::ToolCall {
    use tower::ServiceExt;
    let app = router(gw);
    Arc::new(move |mut req, container| {
        req.extensions_mut().insert(Caller::Worker(container));
        let app = app.clone();
        Box::pin(async move {
            match app.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            }
        })
    })
}

/// The gateway's router. Handlers read the [`Caller`] from an extension,
/// which [`serve`] and [`tool_call`] set.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/tools/{group}/{action}", post(call))
        .with_state(gw)
}

/// Serves the gateway on `listener` until `shutdown`: HTTP/1.1 with a
/// header read timeout, and at most `max_connections_per_caller` open
/// connections per caller address (more are closed at once).
pub async fn serve(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let app = router(gw.clone());
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Some(slot) = gw.connection(peer.ip()) else {
            tracing::warn!(caller = %peer.ip(), "gateway connection refused: the caller holds its maximum");
            drop(stream);
            continue;
        };
        let app = app.clone();
        let header_timeout = gw.limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Caller::Address(peer.ip()));
                    app.clone().oneshot(req)
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}

/// Whether `s` may name a tool group or an action: `^[a-z][a-z0-9_-]{0,63}$`
/// ([`crate::model::tools::is_name`]), checked on the raw (still
/// percent-encoded) path segment, so no `%`, `.`, `/`, `?` or `#` ever
/// reaches the upstream URL.
pub use crate::model::tools::is_name as is_valid_name;

/// The upstream URL of a call: the configured base, then only the group's
/// own name and an action that passed [`is_valid_name`].
pub fn upstream_url(base: &str, group: &str, action: &str) -> Option<String> {
    (is_valid_name(group) && is_valid_name(action))
        .then(|| format!("{}/v1/tools/{group}/{action}", base.trim_end_matches('/')))
}

/// Why `tools` (a key's grants) does not cover `group action`, in the words
/// the CLI uses.
pub fn refusal(tools: &[String], group: &str, action: &str) -> String {
    let some: Vec<String> = grants(tools)
        .into_iter()
        .filter(|g| g.group == group)
        .filter_map(|g| g.action.map(|a| format!("{group} {a}")))
        .collect();
    if some.is_empty() {
        format!("Permission denied: {group} is not in ORCHESTRATOR_ALLOWED_TOOLS")
    } else {
        format!(
            "Permission denied: {group} {action} is not allowed (allowed: {})",
            some.join(", ")
        )
    }
}

fn reply(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"ok": false, "error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}

#[derive(Deserialize)]
struct CallBody {
    #[serde(default)]
    args: Value,
}

async fn call(
    State(gw): State<Arc<Gateway>>,
    axum::Extension(caller): axum::Extension<Caller>,
    params: RawPathParams,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The raw segments: a decoded `%2e%2e%2f` or `%3f` must never become
    // part of the upstream path or its query.
    let raw = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    };
    let (group, action) = (raw("group"), raw("action"));
    if !is_valid_name(&group) || !is_valid_name(&action) {
        return reply(
            StatusCode::BAD_REQUEST,
            "invalid_action",
            "group and action must each match ^[a-z][a-z0-9_-]{0,63}$",
        );
    }
    let Some(key) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return reply(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer key",
        );
    };
    let hash = key_hash(key);
    let record = match gw.bus.get_worker_key(&hash).await {
        Ok(Some(r)) => match serde_json::from_str::<KeyRecord>(&r) {
            Ok(r) => r,
            Err(_) => return reply(StatusCode::UNAUTHORIZED, "unauthorized", "invalid key"),
        },
        Ok(None) => {
            return reply(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid or expired key (keys end with their worker)",
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "gateway cannot reach Redis");
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "gateway storage unavailable",
            );
        }
    };
    // The key works only from its own container: another worker, or the
    // host, holding a copy of it gains nothing.
    let checked = match (&caller, &record.container) {
        // Through a worker's egress socket: the socket says which container
        // calls, so the key must be that container's.
        (Caller::Worker(name), container) => Ok(container.as_deref() == Some(name.as_str())),
        (Caller::Address(ip), Some(container)) => gw.is_caller(container, *ip).await,
        (Caller::Address(_), None) => Ok(true),
    };
    {
        match checked {
            Ok(true) => {}
            Ok(false) | Err(crate::adapters::engine::EngineError::NotFound(_)) => {
                tracing::warn!(request_id = %record.request_id, caller = %caller, "gateway refused a key used outside its container");
                return reply(
                    StatusCode::FORBIDDEN,
                    "wrong_caller",
                    "this key belongs to another container",
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway cannot reach the engine");
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "gateway cannot check the caller",
                );
            }
        }
    }
    let Some(_request) = gw.request(&hash) else {
        return reply(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "this key has {} requests in progress already",
                gw.limits.max_inflight_per_key
            ),
        );
    };
    let Some(route) = (gw.route_of)(&group) else {
        return reply(
            StatusCode::NOT_FOUND,
            "unknown_group",
            format!("unknown tool group {group:?}"),
        );
    };
    if !allows(&record.tools, &group, &action) {
        tracing::warn!(request_id = %record.request_id, group, action, "gateway refused a tool outside allowed_tools");
        return reply(
            StatusCode::FORBIDDEN,
            "permission_denied",
            refusal(&record.tools, &group, &action),
        );
    }
    let body = match tokio::time::timeout(
        gw.limits.body_timeout,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("body over {MAX_BODY_BYTES} bytes, or cut short"),
            )
        }
        Err(_) => {
            return reply(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the body did not arrive within {:?}",
                    gw.limits.body_timeout
                ),
            )
        }
    };
    let args = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice::<CallBody>(&body) {
            Ok(b) => b.args,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("body must be {{\"args\": ...}}: {e}"),
                )
            }
        }
    };
    if group == "respond" {
        let Some(message) = args.get("message").and_then(Value::as_str) else {
            return reply(
                StatusCode::BAD_REQUEST,
                "invalid_args",
                "respond needs args.message",
            );
        };
        if message.len() > MAX_RESPOND_BYTES {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "message over 64 KiB",
            );
        }
        if !gw.admit_respond(&record.request_id, message.len()) {
            return reply(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "respond is bound to {} messages and {} bytes a minute per worker",
                    gw.limits.respond_per_minute, gw.limits.respond_bytes_per_minute
                ),
            );
        }
        // The preset's secrets and the worker's own key never reach an event.
        let mut redactor = (gw.redactor_for)(record.preset.as_deref());
        redactor.add(key);
        let message = redactor.redact(message);
        gw.sink
            .event(
                &record.request_id,
                EventType::Respond,
                json!({"message": message, "user_id": record.user_id, "session_id": record.session_id}),
            )
            .await;
        return (
            StatusCode::OK,
            Json(json!({"ok": true, "data": {"delivered": true}})),
        )
            .into_response();
    }
    let Some(upstream) = route.or_else(|| gw.upstream.clone()) else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_upstream",
            "no orchestrator backend is configured (setting upstream_url)",
        );
    };
    let Some(url) = upstream_url(&upstream, &group, &action) else {
        return reply(
            StatusCode::BAD_REQUEST,
            "invalid_action",
            "invalid action name",
        );
    };
    // Identity travels only here, set by the gateway from the key's record
    // (a worker's args cannot override it: they stay inside `args`).
    let payload = json!({
        "args": args,
        "request_id": record.request_id,
        "user_id": record.user_id,
        "session_id": record.session_id,
    });
    let forwarded = tokio::task::spawn_blocking(move || forward(&url, &payload)).await;
    match forwarded {
        Ok(Ok((status, body))) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, Json(body)).into_response()
        }
        Ok(Err(e)) => reply(StatusCode::BAD_GATEWAY, "upstream_unavailable", e),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "forwarding task failed",
        ),
    }
}

fn forward(url: &str, payload: &Value) -> Result<(u16, Value), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(url)
        .send_json(payload)
        .map_err(|e| format!("upstream unreachable: {e}"))?;
    let status = resp.status().as_u16();
    let body: Value = resp
        .body_mut()
        .read_json()
        .unwrap_or_else(|_| json!({"ok": status < 400, "data": null}));
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_respond_budget_refuses_past_its_rate_and_counts_what_it_refused() {
        let limits = GatewayLimits {
            respond_per_minute: 3,
            respond_bytes_per_minute: 1000,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut b = RespondBudget::new(&limits, t0);
        assert!(b.admit(10, t0));
        assert!(b.admit(10, t0));
        assert!(b.admit(10, t0));
        assert!(!b.admit(10, t0), "a fourth message in the same instant");
        assert_eq!(b.unreported, (1, 10));
        // One message comes back every 20 s.
        assert!(!b.admit(10, t0 + Duration::from_secs(19)));
        assert!(b.admit(10, t0 + Duration::from_secs(41)));
        // The byte budget binds on its own.
        let mut b = RespondBudget::new(&limits, t0);
        assert!(b.admit(900, t0));
        assert!(!b.admit(200, t0));
        assert!(b.admit(100, t0));
        assert_eq!(b.unreported, (1, 200));
        // 300 messages of 60 KiB in 16 s (the probe of issue #14): almost all refused.
        let mut b = RespondBudget::new(&GatewayLimits::default(), t0);
        let passed = (0..300)
            .filter(|i| b.admit(60 * 1024, t0 + Duration::from_millis(16_000 * i / 300)))
            .count();
        assert!(passed <= 5, "{passed}");
    }

    #[test]
    fn a_caller_matches_only_its_containers_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mine = [ip("172.18.0.5")];
        assert!(caller_matches(ip("172.18.0.5"), &mine));
        assert!(caller_matches(ip("::ffff:172.18.0.5"), &mine));
        assert!(!caller_matches(ip("172.18.0.1"), &mine), "the host");
        assert!(!caller_matches(ip("172.18.0.6"), &mine), "another worker");
        assert!(!caller_matches(ip("172.18.0.5"), &[]));
    }

    #[test]
    fn only_plain_names_pass_as_group_or_action() {
        for ok in ["list", "trigger", "get-status", "list_all", "a", "v2"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            "%2e%2e%2fdeploy%2ftrigger",
            "../deploy/trigger",
            "list%3fuser_id=victim%26request_id=other",
            "list?user_id=victim",
            "list#x",
            "List",
            "1list",
            "-list",
            "li st",
            "list\n",
            &"a".repeat(65),
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_upstream_url_is_built_from_validated_parts_only() {
        assert_eq!(
            upstream_url("http://backend:8080/", "project", "list").as_deref(),
            Some("http://backend:8080/v1/tools/project/list")
        );
        assert_eq!(
            upstream_url("http://backend:8080", "project", "../deploy/trigger"),
            None
        );
        assert_eq!(
            upstream_url("http://b", "project", "list?user_id=victim"),
            None
        );
    }
}
