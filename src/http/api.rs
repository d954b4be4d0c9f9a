//! The HTTP API (docs/api.md): JSON under `/v1` on `api_addr`, bearer
//! tokens with roles and a rate per token, live events as Server-Sent
//! Events, the OpenAPI document and the dashboard (`/ui`).
//!
//! The API never runs anything itself: a request is checked as the intake
//! would check it (a [`Backend`] of the supervisor's) and published to
//! `<prefix>:spawn`, so every guarantee of the stream holds and any instance
//! may run it. Events are followed without a scan: one task per daemon
//! ([`EventHub`]) reads the event and result streams once for every
//! follower, and a follower catches up from its request's own stream
//! (`<prefix>:events:<request_id>`, ids `0-<seq>`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::adapters::artifacts::{ArtifactError, Artifacts};
use crate::adapters::bus::{Bus, RequestState, ResultLookup};
use crate::adapters::engine::Engine;
use crate::model::protocol::{parse_spawn_request, ErrorInfo, InputLimits, SpawnRequest};

pub use crate::model::access::Role;

/// One API token, its secret resolved.
#[derive(Clone)]
pub struct Token {
    /// Its name (logs, rate limits).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The bearer secret.
    pub secret: String,
}

/// What the API asks of the daemon besides Redis and the engine.
pub trait Backend: Send + Sync + 'static {
    /// Checks `req` as the intake would (parse done, resolution now), and
    /// gives the error a `rejected` result would carry.
    fn check(&self, req: &SpawnRequest) -> Result<(), ErrorInfo>;
    /// The presets in force, summarised.
    fn presets(&self) -> Vec<Value>;
    /// What `presets show ID` prints; `None`: no such preset.
    fn preset(&self, id: &str) -> Option<Result<Value, String>>;
    /// This instance's warm pools.
    fn pools(&self) -> Vec<Value>;
}

/// The handles of the API.
pub struct Api {
    /// Redis.
    pub bus: Bus,
    /// The engine (`/v1/workers`).
    pub engine: Engine,
    /// The supervisor's side.
    pub backend: Arc<dyn Backend>,
    /// The tokens; none: every route is open (loopback only).
    pub tokens: Vec<Token>,
    /// Requests per token per minute (also the burst).
    pub rate_per_minute: u32,
    /// The stream prefix (for `ps`'s listing).
    pub prefix: String,
    /// Input limits of a request body.
    pub limits: InputLimits,
    /// The followers' shared reader.
    pub hub: Arc<EventHub>,
    /// The artifact store (`/v1/artifacts/`).
    pub artifacts: Artifacts,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// How often an idle event stream says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long an event stream waits for the `removed` event after the result.
const AFTER_RESULT: Duration = Duration::from_secs(5);

/// An API error: status and the JSON `error` object.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    info: ErrorInfo,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &str,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            info: ErrorInfo {
                code: code.into(),
                field: field.map(str::to_string),
                message: message.into(),
            },
            retry_after: None,
        }
    }

    fn unavailable(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            None,
            format!("Redis or Docker did not answer: {e}"),
        )
    }

    fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
            format!("no {what}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(json!({"error": self.info}))).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
        }
        r
    }
}

impl Api {
    /// The API over these handles.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        bus: Bus,
        engine: Engine,
        backend: Arc<dyn Backend>,
        tokens: Vec<Token>,
        rate_per_minute: u32,
        prefix: &str,
        limits: InputLimits,
        hub: Arc<EventHub>,
        artifacts: Artifacts,
    ) -> Api {
        Api {
            artifacts,
            bus,
            engine,
            backend,
            tokens,
            rate_per_minute,
            prefix: prefix.to_string(),
            limits,
            hub,
            buckets: Mutex::default(),
        }
    }

    /// The caller's token, when it may do what `need` asks; its rate
    /// spent.
    fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<(), ApiError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let host = header("host").unwrap_or("");
        // A browser page of another site may send requests here (no CORS
        // preflight for a simple one): a cross-origin caller is refused,
        // and so is any body a form or a no-cors fetch can send.
        if let Some(origin) = header("origin") {
            let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or(origin);
            if !authority.eq_ignore_ascii_case(host) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    None,
                    format!(
                        "requests from {origin} are refused: the API serves only its own origin"
                    ),
                ));
            }
        }
        if let Some(kind) = header("content-type") {
            if !kind
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
            {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    None,
                    "request bodies are application/json",
                ));
            }
        }
        if self.tokens.is_empty() {
            // Open only to this host: a name that resolves here by DNS
            // rebinding is not this host's.
            let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
            let local = matches!(name, "localhost" | "[::1]")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !local {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    None,
                    "an API without tokens answers only requests for a loopback host",
                ));
            }
            return Ok(());
        }
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(given) = given else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                None,
                "an Authorization: Bearer <token> header is required",
            ));
        };
        let token = self
            .tokens
            .iter()
            .find(|t| constant_time_eq(t.secret.as_bytes(), given.as_bytes()))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    None,
                    "unknown token",
                )
            })?;
        if token.role < need {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                None,
                format!(
                    "token {:?} has role {:?}; this needs {:?}",
                    token.name, token.role, need
                ),
            ));
        }
        self.spend(&token.name)
    }

    fn spend(&self, name: &str) -> Result<(), ApiError> {
        let rate = self.rate_per_minute.max(1) as f64;
        let mut buckets = self.buckets.lock().expect("bucket lock");
        let b = buckets.entry(name.to_string()).or_insert(Bucket {
            tokens: rate,
            at: Instant::now(),
        });
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate / 60.0).min(rate);
        b.at = now;
        if b.tokens < 1.0 {
            let wait = ((1.0 - b.tokens) * 60.0 / rate).ceil() as u64;
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                None,
                format!(
                    "more than {} requests a minute for this token",
                    self.rate_per_minute
                ),
            );
            e.retry_after = Some(wait.max(1));
            return Err(e);
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The dashboard's files, embedded.
const UI_INDEX: &str = include_str!("ui/index.html");
const UI_JS: &str = include_str!("ui/app.js");
const UI_CSS: &str = include_str!("ui/style.css");
/// The OpenAPI document of the routes below (kept by hand, checked by tests).
pub const OPENAPI: &str = include_str!("openapi.json");

/// The API's router.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/requests", post(submit).get(latest))
        .route("/v1/requests/{id}", get(request))
        .route("/v1/requests/{id}/events", get(events))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/sessions/{id}/cancel", post(cancel_session))
        .route("/v1/workers", get(workers))
        .route("/v1/presets", get(presets))
        .route("/v1/presets/{id}", get(preset))
        .route("/v1/pools", get(pools))
        .route("/v1/artifacts/{id}", get(artifact_list))
        .route("/v1/artifacts/{id}/{*name}", get(artifact))
        .route(
            "/v1/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    OPENAPI,
                )
            }),
        )
        .route(
            "/ui",
            get(|| async { page(UI_INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/",
            get(|| async { page(UI_INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page(UI_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/style.css",
            get(|| async { page(UI_CSS, "text/css; charset=utf-8") }),
        )
        .fallback(|| async { ApiError::not_found("such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                None,
                "this route does not take that method",
            )
        })
        .with_state(api)
}

fn page(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, kind),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn valid_id(id: &str) -> Result<(), ApiError> {
    if crate::model::protocol::is_valid_token(id, 128) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("request_id"),
            "ids are 1-128 chars of [A-Za-z0-9._:-]",
        ))
    }
}

async fn submit(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    api.authorize(&headers, Role::Submit)?;
    let req = parse_spawn_request(&body, &api.limits).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            e.code,
            Some(&e.field),
            e.to_string(),
        )
    })?;
    if let Err(info) = api.backend.check(&req) {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            info,
            retry_after: None,
        });
    }
    let rid = req.request_id.clone();
    let text = String::from_utf8_lossy(&body).into_owned();
    let fresh = api
        .bus
        .submit_once(&rid, &text)
        .await
        .map_err(ApiError::unavailable)?
        .is_some();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"request_id": rid, "state": "queued", "duplicate": !fresh})),
    )
        .into_response())
}

async fn request(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.authorize(&headers, Role::Read)?;
    valid_id(&id)?;
    match api
        .bus
        .request_state(&id)
        .await
        .map_err(ApiError::unavailable)?
    {
        None => Err(ApiError::not_found(&format!("request {id:?}"))),
        Some(RequestState::Queued) => Ok(Json(
            json!({"request_id": id, "state": "queued", "result": null}),
        )),
        Some(RequestState::Running) => Ok(Json(
            json!({"request_id": id, "state": "running", "result": null}),
        )),
        Some(RequestState::Done(r)) => Ok(Json(
            json!({"request_id": id, "state": r["status"].clone(), "result": r}),
        )),
        Some(RequestState::Expired) => Ok(Json(
            json!({"request_id": id, "state": "expired", "result": null}),
        )),
    }
}

/// A query parameter `name` as an unsigned number (a JSON 400 otherwise,
/// like every other error of the API).
fn number(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                Some(name),
                format!("{name} must be a non-negative integer"),
            )
        }),
    }
}

async fn latest(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    api.authorize(&headers, Role::Read)?;
    let n = number(&q, "limit")?.unwrap_or(50);
    if !(1..=500).contains(&n) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("limit"),
            "limit must be 1-500",
        ));
    }
    let n = n as usize;
    let results = api
        .bus
        .latest_results(n)
        .await
        .map_err(ApiError::unavailable)?;
    let list: Vec<Value> = results
        .into_iter()
        .map(|r| {
            json!({
                "request_id": r["request_id"],
                "status": r["status"],
                "finished_at": r["timings"]["finished_at"],
                "preset": r["worker"]["preset"],
                "session_id": r["session_id"],
            })
        })
        .collect();
    Ok(Json(json!({ "requests": list })))
}

async fn events(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    api.authorize(&headers, Role::Read)?;
    valid_id(&id)?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .or(number(&q, "after")?)
        .unwrap_or(0);
    // A request nobody published and nobody ran: nothing to wait for.
    if api
        .bus
        .request_state(&id)
        .await
        .map_err(ApiError::unavailable)?
        .is_none()
    {
        return Err(ApiError::not_found(&format!("request {id:?}")));
    }
    let stream = follow(api.clone(), id, after);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response())
}

/// The SSE stream of request `id` after seq `after`: backlog from its own
/// stream, then live from the hub, the result last.
fn follow(
    api: Arc<Api>,
    id: String,
    after: u64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let (tx, rx) = mpsc::channel::<SseEvent>(256);
    tokio::spawn(async move {
        // Subscribed before the backlog is read: nothing falls between.
        let mut live = api.hub.subscribe(&id);
        let mut cursor = after;
        let mut result_at: Option<Instant> = None;
        let mut removed = false;
        let send = |seq: u64, ev: &Value| {
            let kind = ev["type"].as_str().unwrap_or("event").to_string();
            SseEvent::default()
                .id(seq.to_string())
                .event(kind)
                .data(ev.to_string())
        };
        // Backlog, in pages.
        loop {
            let page = match api.bus.events_after(&id, cursor, 500).await {
                Ok(p) => p,
                Err(_) if tx.is_closed() => return,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let n = page.len();
            for (seq, ev) in page {
                removed |= ev["type"] == "removed";
                cursor = seq;
                if tx.send(send(seq, &ev)).await.is_err() {
                    return;
                }
            }
            if n < 500 {
                break;
            }
        }
        // A result trimmed from its stream ends the follow too (answered,
        // nothing more will come).
        let mut gone = false;
        let mut result = match api.bus.lookup_result(&id).await {
            Ok(ResultLookup::Found(r)) => Some(r),
            Ok(ResultLookup::Gone) => {
                gone = true;
                None
            }
            _ => None,
        };
        if result.is_some() || gone {
            result_at = Some(Instant::now());
        }
        loop {
            if let Some(at) = result_at {
                if removed || at.elapsed() >= AFTER_RESULT {
                    break;
                }
            }
            let wait = result_at
                .map(|at| AFTER_RESULT.saturating_sub(at.elapsed()))
                .unwrap_or(Duration::from_secs(5));
            tokio::select! {
                msg = live.recv() => match msg {
                    Some(HubMessage::Event(seq, ev)) if seq > cursor => {
                        // A gap (the hub's channel was full): fill it from the
                        // stream; when that fails the follow ends, and the
                        // client resumes with Last-Event-ID (never a gap).
                        if seq > cursor + 1 {
                            match api.bus.events_after(&id, cursor, (seq - cursor) as usize).await {
                                Ok(page) => {
                                    for (s, e) in page.into_iter().filter(|(s, _)| *s < seq) {
                                        removed |= e["type"] == "removed";
                                        if tx.send(send(s, &e)).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                                Err(_) => return,
                            }
                        }
                        removed |= ev["type"] == "removed";
                        cursor = seq;
                        if tx.send(send(seq, &ev)).await.is_err() {
                            return;
                        }
                    }
                    Some(HubMessage::Event(..)) => {}
                    Some(HubMessage::Result(r)) => {
                        result = Some(r);
                        result_at.get_or_insert_with(Instant::now);
                    }
                    None => {
                        live = api.hub.subscribe(&id);
                    }
                },
                _ = tokio::time::sleep(wait) => {
                    // The hub may have missed nothing, but a quiet stream
                    // checks the record now and then (a result published
                    // before this follower subscribed).
                    if result.is_none() && !gone {
                        match api.bus.lookup_result(&id).await {
                            Ok(ResultLookup::Found(r)) => {
                                result = Some(r);
                                result_at = Some(Instant::now());
                            }
                            Ok(ResultLookup::Gone) => {
                                gone = true;
                                result_at = Some(Instant::now());
                            }
                            _ => {}
                        }
                    }
                    if let Ok(page) = api.bus.events_after(&id, cursor, 500).await {
                        for (s, e) in page {
                            removed |= e["type"] == "removed";
                            cursor = s;
                            if tx.send(send(s, &e)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                _ = tx.closed() => return,
            }
        }
        if let Some(r) = result {
            let _ = tx
                .send(SseEvent::default().event("result").data(r.to_string()))
                .await;
        }
    });
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}

async fn cancel(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    publish_cancel(&api, &headers, "request_id", id).await
}

async fn cancel_session(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    publish_cancel(&api, &headers, "session_id", id).await
}

/// Publishes `{"command": "cancel", <key>: id}` (PROTOCOL.md section 9:
/// a cancel naming a session ends it).
async fn publish_cancel(
    api: &Api,
    headers: &HeaderMap,
    key: &str,
    id: String,
) -> Result<Response, ApiError> {
    api.authorize(headers, Role::Admin)?;
    valid_id(&id)?;
    let cmd = json!({"command": "cancel", key: id}).to_string();
    api.bus
        .publish_control(&cmd)
        .await
        .map_err(ApiError::unavailable)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({key: id, "cancel": "published"})),
    )
        .into_response())
}

async fn workers(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    use crate::model::container::labels;
    api.authorize(&headers, Role::Read)?;
    let list = api
        .engine
        .list_managed(&api.prefix)
        .await
        .map_err(ApiError::unavailable)?;
    let workers: Vec<Value> = list
        .into_iter()
        .map(|c| {
            let l = |k: &str| c.labels.get(k).cloned().filter(|v| !v.is_empty());
            let state = if c.running {
                "running"
            } else if c.started {
                "exited"
            } else {
                "created"
            };
            let created = l(labels::RECEIVED_MS)
                .and_then(|ms| ms.parse::<i64>().ok())
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(crate::model::protocol::rfc3339_millis);
            let deadline = l(labels::DEADLINE)
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .map(crate::model::protocol::rfc3339_millis);
            json!({
                "container": c.name,
                "request_id": l(labels::REQUEST_ID),
                "session_id": l(labels::SESSION_ID),
                "preset": l(labels::PRESET),
                "kind": l(labels::KIND),
                "user_id": l(labels::USER_ID),
                "instance": l(labels::INSTANCE),
                "state": state,
                "created": created,
                "deadline": deadline,
            })
        })
        .collect();
    Ok(Json(json!({ "workers": workers })))
}

async fn presets(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    api.authorize(&headers, Role::Read)?;
    Ok(Json(json!({ "presets": api.backend.presets() })))
}

async fn preset(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.authorize(&headers, Role::Read)?;
    match api.backend.preset(&id) {
        None => Err(ApiError::not_found(&format!("preset {id:?}"))),
        Some(Ok(v)) => Ok(Json(v)),
        Some(Err(message)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_preset",
            None,
            message,
        )),
    }
}

fn store_error(e: ArtifactError) -> ApiError {
    match e {
        ArtifactError::NotFound { .. } => ApiError::not_found(&e.to_string()),
        ArtifactError::BadName(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("name"),
            e.to_string(),
        ),
        _ => ApiError::unavailable(e),
    }
}

async fn artifact_list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    api.authorize(&headers, Role::Read)?;
    valid_id(&id)?;
    let list = api.artifacts.list(&id).await.map_err(store_error)?;
    Ok(Json(json!({"request_id": id, "artifacts": list})))
}

async fn artifact(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    api.authorize(&headers, Role::Read)?;
    valid_id(&id)?;
    let bytes = api.artifacts.get(&id, &name).await.map_err(store_error)?;
    // Agent-made content: never rendered or sniffed as a page here.
    let text = name.ends_with(".log") || name.ends_with(".diff");
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                if text {
                    "text/plain; charset=utf-8"
                } else {
                    "application/octet-stream"
                },
            ),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (axum::http::header::CONTENT_SECURITY_POLICY, "sandbox"),
        ],
        bytes,
    )
        .into_response())
}

async fn pools(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    api.authorize(&headers, Role::Read)?;
    Ok(Json(json!({ "pools": api.backend.pools() })))
}

/// A message of the hub to a follower.
#[derive(Debug, Clone)]
pub enum HubMessage {
    /// An event (seq, JSON).
    Event(u64, Value),
    /// The request's result.
    Result(Value),
}

/// One reader of `<prefix>:events` and `<prefix>:result` for every
/// follower of this daemon: a follower subscribes to its request id.
#[derive(Default)]
pub struct EventHub {
    subs: Mutex<HashMap<String, Vec<mpsc::Sender<HubMessage>>>>,
}

impl EventHub {
    /// A receiver of `request_id`'s messages from now on.
    pub fn subscribe(&self, request_id: &str) -> mpsc::Receiver<HubMessage> {
        let (tx, rx) = mpsc::channel(1024);
        let mut subs = self.subs.lock().expect("hub lock");
        // Followers that ended leave closed senders: gone with the next
        // subscription (no message may come for their requests any more).
        subs.retain(|_, list| {
            list.retain(|tx| !tx.is_closed());
            !list.is_empty()
        });
        subs.entry(request_id.to_string()).or_default().push(tx);
        rx
    }

    fn dispatch(&self, request_id: &str, msg: HubMessage) {
        let mut subs = self.subs.lock().expect("hub lock");
        if let Some(list) = subs.get_mut(request_id) {
            // A full channel drops the message: its follower fills the gap
            // from the request's stream.
            list.retain(|tx| !tx.is_closed());
            for tx in list.iter() {
                let _ = tx.try_send(msg.clone());
            }
            if list.is_empty() {
                subs.remove(request_id);
            }
        }
    }

    /// Reads the two streams from their tails and dispatches, until
    /// `shutdown`.
    pub async fn run(self: Arc<Self>, bus: Bus, shutdown: CancellationToken) {
        let block = Duration::from_secs(2);
        let streams = [bus.names.events.clone(), bus.names.result.clone()];
        // From the streams' tails as they are now (`$` would be re-read on
        // every call, skipping what came between two reads).
        let mut last = Vec::new();
        for st in &streams {
            loop {
                match bus.tail_id(st).await {
                    Ok(id) => {
                        last.push(id);
                        break;
                    }
                    Err(_) if shutdown.is_cancelled() => return,
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
        let mut conn = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if conn.is_none() {
                match bus.blocking_connection(block).await {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let refs: Vec<&str> = streams.iter().map(String::as_str).collect();
            let read = tokio::select! {
                r = bus.read_after(conn.as_mut().expect("a connection"), &refs, &last, block) => r,
                _ = shutdown.cancelled() => return,
            };
            let got = match read {
                Ok(g) => g,
                Err(_) => {
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            for (stream, entries) in got {
                let i = if stream == streams[0] { 0 } else { 1 };
                for e in entries {
                    last[i] = e.id.clone();
                    let Some(v) = e
                        .data
                        .as_deref()
                        .and_then(|d| serde_json::from_slice::<Value>(d).ok())
                    else {
                        continue;
                    };
                    let Some(rid) = v["request_id"].as_str().map(str::to_string) else {
                        continue;
                    };
                    if i == 0 {
                        if let Some(seq) = v["seq"].as_u64() {
                            self.dispatch(&rid, HubMessage::Event(seq, v));
                        }
                    } else {
                        self.dispatch(&rid, HubMessage::Result(v));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_before_them() {
        assert!(Role::Admin > Role::Submit && Role::Submit > Role::Read);
        let r: Vec<Role> = serde_json::from_value(json!(["read", "submit", "admin"])).unwrap();
        assert_eq!(r, [Role::Read, Role::Submit, Role::Admin]);
    }

    #[test]
    fn secrets_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn the_openapi_document_names_every_route_of_the_router() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/v1/requests",
            "/v1/requests/{id}",
            "/v1/requests/{id}/events",
            "/v1/requests/{id}/cancel",
            "/v1/sessions/{id}/cancel",
            "/v1/workers",
            "/v1/presets",
            "/v1/presets/{id}",
            "/v1/pools",
        ] {
            assert!(
                doc["paths"][path].is_object(),
                "{path} is not in openapi.json"
            );
        }
    }
}
