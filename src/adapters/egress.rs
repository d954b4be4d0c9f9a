//! The workers' egress sockets: the daemon's end of every way out of a
//! worker on the socket path (`model::egress`).
//!
//! Each worker gets a folder under `egress_dir` holding one unix socket,
//! `sock`, which is bind-mounted (the folder, read-only) into its container
//! and reached through the shim's forwarder on the container's loopback.
//! The socket a connection arrives on is the worker's identity: nothing the
//! worker sends says who it is. On it this module serves HTTP/1.1:
//!
//! - `CONNECT host:port` and absolute-form plain-HTTP requests: the proxy,
//!   for the names of the worker's allow-list, resolved and dialled here
//!   (never the daemon's own host, link-local or, unless allowed, private
//!   addresses; names pinned by `egress_resolve` excepted), no TLS
//!   interception;
//! - `/model/<route>/...`: the worker's model API routes, its placeholder
//!   key swapped for the real one, forwarded over TLS, streamed both ways;
//! - `/v1/tools/...`: handed to the gateway ([`ToolCall`]) with the
//!   worker's container name as its caller.
//!
//! Every decision is counted (`egress` metrics) and told as an `egress`
//! event of the worker's current request, at most `events_per_minute`.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::adapters::sink::Sink;
use crate::metrics::{DirectionLabel, EgressLabel, Metrics};
use crate::model::egress::{
    classify, decide, model_url, refused_address, Call, Decision, Grant, Target, SOCKET_NAME,
};
use crate::model::protocol::EventType;

/// Hands a tool call to the gateway: the request and the caller's
/// container name.
pub type ToolCall =
    Arc<dyn Fn(Request<Incoming>, String) -> BoxFuture<'static, Response<Body>> + Send + Sync>;

/// Reads a secret from the daemon's environment (`from_env`).
pub type KeyLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How the sockets behave (from the daemon's settings).
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// The folder holding one folder per worker.
    pub dir: PathBuf,
    /// The same folder as the engine's host sees it (the mounts' source).
    pub host_dir: PathBuf,
    /// Names pinned to addresses.
    pub resolve: HashMap<String, IpAddr>,
    /// Whether private addresses may be dialled.
    pub allow_private: bool,
    /// Upstream base URL per model route, over the route's own.
    pub upstreams: HashMap<String, String>,
    /// Open connections per worker.
    pub max_connections: usize,
    /// Bound of a connect to an allowed host.
    pub connect_timeout: Duration,
    /// Bound of reading a request's header.
    pub header_timeout: Duration,
    /// `egress` events per worker per minute.
    pub events_per_minute: u32,
}

type ModelClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Body,
>;

/// The egress sockets of this daemon's workers.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: EgressConfig,
    sink: Sink,
    metrics: Arc<Metrics>,
    key_of: KeyLookup,
    tools: OnceLock<ToolCall>,
    client: ModelClient,
    open: Mutex<HashMap<String, Open>>,
}

struct Open {
    opened: Instant,
    stop: CancellationToken,
    worker: Arc<Worker>,
    folder: PathBuf,
}

/// One worker's socket: who it is and what it may do.
struct Worker {
    container: String,
    /// Fires when the socket closes: every connection and tunnel ends.
    stop: CancellationToken,
    grant: Grant,
    request: Mutex<Option<String>>,
    connections: AtomicUsize,
    events: Mutex<EventBudget>,
}

/// `egress` events per minute, and how many were left out since the last.
struct EventBudget {
    window: Instant,
    sent: u32,
    suppressed: u64,
}

impl Egress {
    /// Makes the sockets' folder and the model client.
    pub fn new(
        cfg: EgressConfig,
        sink: Sink,
        metrics: Arc<Metrics>,
        key_of: KeyLookup,
    ) -> std::io::Result<Egress> {
        if cfg.dir.as_os_str().len() > crate::model::egress::MAX_DIR_LEN
            || cfg.host_dir.as_os_str().len() > crate::model::egress::MAX_DIR_LEN
        {
            return Err(std::io::Error::other(format!(
                "the path is longer than {} bytes, too long for the sockets in it",
                crate::model::egress::MAX_DIR_LEN
            )));
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(std::io::Error::other)?
            .https_or_http()
            .enable_http1()
            .build();
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(Egress {
            inner: Arc::new(Inner {
                cfg,
                sink,
                metrics,
                key_of,
                tools: OnceLock::new(),
                client,
                open: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Sets where tool calls go (the gateway, made after the sockets).
    pub fn set_tools(&self, tools: ToolCall) {
        let _ = self.inner.tools.set(tools);
    }

    /// The folder of container `name`'s socket as the engine's host sees
    /// it (the bind mount's source).
    pub fn folder(&self, name: &str) -> String {
        crate::model::egress::folder(&self.inner.cfg.host_dir.to_string_lossy(), name)
    }

    /// Opens (or opens anew) the socket of container `name` with `grant`,
    /// telling its events to `request_id`.
    pub fn open(
        &self,
        name: &str,
        grant: Grant,
        request_id: Option<String>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let folder = PathBuf::from(crate::model::egress::folder(
            &self.inner.cfg.dir.to_string_lossy(),
            name,
        ));
        std::fs::create_dir_all(&folder)?;
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755))?;
        let path = folder.join(SOCKET_NAME);
        // Served by someone else (another instance on this host, handling
        // the same container): never taken from them. One served here is
        // replaced below.
        let ours = self.is_open(name);
        if !ours && std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another process", path.display()),
            ));
        }
        // A socket file left by an earlier daemon (or an earlier open)
        // refuses the bind; the container reaches the new one through the
        // same folder.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        // The worker runs as uid 1000: connecting needs write access.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        let stop = CancellationToken::new();
        let worker = Arc::new(Worker {
            container: name.to_string(),
            stop: stop.clone(),
            grant,
            request: Mutex::new(request_id),
            connections: AtomicUsize::new(0),
            events: Mutex::new(EventBudget {
                window: Instant::now(),
                sent: 0,
                suppressed: 0,
            }),
        });
        let old = self.inner.open.lock().expect("egress lock").insert(
            name.to_string(),
            Open {
                opened: Instant::now(),
                stop: stop.clone(),
                worker: worker.clone(),
                folder: folder.clone(),
            },
        );
        if let Some(old) = old {
            old.stop.cancel();
        }
        tokio::spawn(accept(self.inner.clone(), listener, worker, stop));
        Ok(())
    }

    /// Tells later events of container `name` to `request_id` (a session's
    /// task, a pooled container's request).
    pub fn assign(&self, name: &str, request_id: Option<String>) {
        if let Some(o) = self.inner.open.lock().expect("egress lock").get(name) {
            *o.worker.request.lock().expect("egress lock") = request_id;
        }
    }

    /// Whether container `name`'s socket is served here.
    pub fn is_open(&self, name: &str) -> bool {
        self.inner
            .open
            .lock()
            .expect("egress lock")
            .contains_key(name)
    }

    /// Stops serving container `name` and leaves its folder (a container
    /// that failed to be made here may be another's, whose mount it is; the
    /// sweep removes folders no container has).
    pub fn release(&self, name: &str) {
        let open = self.inner.open.lock().expect("egress lock").remove(name);
        if let Some(o) = open {
            o.stop.cancel();
        }
    }

    /// Stops serving container `name` and removes its folder.
    pub fn close(&self, name: &str) {
        let open = self.inner.open.lock().expect("egress lock").remove(name);
        if let Some(o) = open {
            o.stop.cancel();
            let _ = std::fs::remove_dir_all(&o.folder);
        }
    }

    /// Stops serving the containers not in `live` (opened at least
    /// `min_age` ago: a socket is opened just before its container is
    /// created), and removes folders under the sockets' folder that belong
    /// to no live container and are older than `min_age`.
    pub fn sweep(&self, live: &HashSet<String>, min_age: Duration) {
        let gone: Vec<String> = self
            .inner
            .open
            .lock()
            .expect("egress lock")
            .iter()
            .filter(|(n, o)| !live.contains(*n) && o.opened.elapsed() >= min_age)
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            self.close(&n);
        }
        let Ok(entries) = std::fs::read_dir(&self.inner.cfg.dir) else {
            return;
        };
        let mut kept: HashSet<String> = live
            .iter()
            .map(|n| crate::model::egress::folder_name(n))
            .collect();
        kept.extend(
            self.inner
                .open
                .lock()
                .expect("egress lock")
                .keys()
                .map(|n| crate::model::egress::folder_name(n)),
        );
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if kept.contains(&name) {
                continue;
            }
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if old && e.path().join(SOCKET_NAME).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Drops its connection count when the connection ends.
struct ConnectionSlot(Arc<Worker>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept(
    inner: Arc<Inner>,
    listener: UnixListener,
    worker: Arc<Worker>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(container = %worker.container, error = %e, "egress accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let n = worker.connections.fetch_add(1, Ordering::SeqCst);
        let slot = ConnectionSlot(worker.clone());
        if n >= inner.cfg.max_connections {
            count(&inner, "over_limit", "connection");
            inner.event(
                &worker,
                json!({"kind": "connection", "allowed": false,
                       "reason": format!("the worker holds {} open connections, its maximum", inner.cfg.max_connections)}),
            );
            drop(stream);
            continue;
        }
        tokio::spawn(serve_connection(
            inner.clone(),
            worker.clone(),
            stream,
            slot,
            stop.clone(),
        ));
    }
}

async fn serve_connection(
    inner: Arc<Inner>,
    worker: Arc<Worker>,
    stream: UnixStream,
    slot: ConnectionSlot,
    stop: CancellationToken,
) {
    let _slot = slot;
    let timeout = inner.cfg.header_timeout;
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (inner, worker) = (inner.clone(), worker.clone());
        async move { Ok::<_, Infallible>(handle(inner, worker, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        // A client that ends its sending side after its request (nc, a
        // CONNECT whose tunnel only downloads) still gets its answer.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        // A closed socket (its container removed) ends its connections.
        _ = stop.cancelled() => {}
    }
}

fn count(inner: &Inner, decision: &str, kind: &str) {
    inner
        .metrics
        .egress
        .get_or_create(&EgressLabel {
            decision: decision.to_string(),
            kind: kind.to_string(),
        })
        .inc();
}

fn count_bytes(inner: &Inner, up: u64, down: u64) {
    for (direction, n) in [("up", up), ("down", down)] {
        inner
            .metrics
            .egress_bytes
            .get_or_create(&DirectionLabel {
                direction: direction.to_string(),
            })
            .inc_by(n);
    }
}

impl Inner {
    /// Publishes an `egress` event of the worker's current request, within
    /// its budget.
    fn event(&self, worker: &Worker, mut data: Value) {
        let Some(rid) = worker.request.lock().expect("egress lock").clone() else {
            return;
        };
        {
            let mut b = worker.events.lock().expect("egress lock");
            if b.window.elapsed() >= Duration::from_secs(60) {
                b.window = Instant::now();
                b.sent = 0;
            }
            if b.sent >= self.cfg.events_per_minute {
                b.suppressed += 1;
                return;
            }
            b.sent += 1;
            if b.suppressed > 0 {
                data["suppressed"] = json!(b.suppressed);
                b.suppressed = 0;
            }
        }
        let sink = self.sink.clone();
        tokio::spawn(async move { sink.event(&rid, EventType::Egress, data).await });
    }

    /// The addresses to dial for `t`, or why none may be.
    async fn resolve(&self, t: &Target) -> Result<Vec<SocketAddr>, String> {
        if let Some(ip) = self.cfg.resolve.get(&t.host) {
            return Ok(vec![SocketAddr::new(*ip, t.port)]);
        }
        if let Some(ip) = t.literal() {
            return match refused_address(ip, self.cfg.allow_private) {
                Some(why) => Err(format!("{ip} is {why}")),
                None => Ok(vec![SocketAddr::new(ip, t.port)]),
            };
        }
        let found: Vec<SocketAddr> = tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("{} cannot be resolved: {e}", t.host))?
            .collect();
        let mut why = None;
        let ok: Vec<SocketAddr> = found
            .into_iter()
            .filter(|a| match refused_address(a.ip(), self.cfg.allow_private) {
                Some(w) => {
                    why.get_or_insert(format!("{} resolves to {}, {w}", t.host, a.ip()));
                    false
                }
                None => true,
            })
            .collect();
        if ok.is_empty() {
            return Err(why.unwrap_or_else(|| format!("{} has no address", t.host)));
        }
        Ok(ok)
    }

    /// Decides on `t` and connects to it.
    async fn dial(&self, worker: &Worker, t: &Target) -> Result<TcpStream, (StatusCode, String)> {
        if let Decision::Denied(why) = decide(&worker.grant.allow, t) {
            return Err((StatusCode::FORBIDDEN, why));
        }
        let addrs = self
            .resolve(t)
            .await
            .map_err(|why| (StatusCode::FORBIDDEN, why))?;
        match tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(&addrs[..])).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err((
                StatusCode::BAD_GATEWAY,
                format!("connecting to {}:{} failed: {e}", t.host, t.port),
            )),
            Err(_) => Err((
                StatusCode::GATEWAY_TIMEOUT,
                format!("connecting to {}:{} timed out", t.host, t.port),
            )),
        }
    }
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("workers-spawner: {message}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(inner: Arc<Inner>, worker: Arc<Worker>, req: Request<Incoming>) -> Response<Body> {
    let target = if req.method() == Method::CONNECT {
        req.uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default()
    } else {
        req.uri().to_string()
    };
    match classify(req.method().as_str(), &target) {
        Call::Tunnel(t) => tunnel(inner, worker, req, t).await,
        Call::Proxy(t, path) => proxy(inner, worker, req, t, path).await,
        Call::Model(route, rest) => model(inner, worker, req, route, rest).await,
        Call::Gateway => {
            let tools = inner.tools.get().cloned();
            match tools {
                Some(call) if worker.grant.tools => {
                    count(&inner, "allowed", "gateway");
                    call(req, worker.container.clone()).await
                }
                _ => {
                    count(&inner, "denied", "gateway");
                    text(StatusCode::FORBIDDEN, "this worker may call no tools")
                }
            }
        }
        Call::Unknown => text(
            StatusCode::BAD_REQUEST,
            "not a request this socket serves (CONNECT host:port, http://host/..., /model/<route>/..., /v1/tools/...)",
        ),
    }
}

fn denied(inner: &Inner, worker: &Worker, kind: &str, t: &Target, why: &str) {
    count(inner, "denied", kind);
    // Per decision at debug only: the events (rate-bound) and the metric
    // tell it; a worker sending denied requests cannot flood the log.
    tracing::debug!(container = %worker.container, host = %t.host, port = t.port, reason = %why, "egress denied");
    inner.event(
        worker,
        json!({"kind": kind, "host": t.host, "port": t.port, "allowed": false, "reason": why}),
    );
}

async fn tunnel(
    inner: Arc<Inner>,
    worker: Arc<Worker>,
    mut req: Request<Incoming>,
    t: Target,
) -> Response<Body> {
    let upstream = match inner.dial(&worker, &t).await {
        Ok(s) => s,
        Err((status, why)) => {
            denied(&inner, &worker, "tunnel", &t, &why);
            // What the client sent after its CONNECT was meant for the
            // tunnel: never read it as another request.
            let mut r = text(status, &why);
            r.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    count(&inner, "allowed", "tunnel");
    let upgrade = hyper::upgrade::on(&mut req);
    // The tunnel outlives the HTTP connection that asked for it: it holds a
    // connection slot of its own and ends with the socket.
    worker.connections.fetch_add(1, Ordering::SeqCst);
    let slot = ConnectionSlot(worker.clone());
    tokio::spawn(async move {
        let _slot = slot;
        let Ok(upgraded) = upgrade.await else { return };
        let mut client = TokioIo::new(upgraded);
        let mut upstream = upstream;
        let (up, down) = tokio::select! {
            // 64 KiB each way (the default 8 KiB costs a third of the rate).
            r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, 64 << 10, 64 << 10) => r.unwrap_or((0, 0)),
            _ = worker.stop.cancelled() => (0, 0),
        };
        count_bytes(&inner, up, down);
        inner.event(
            &worker,
            json!({"kind": "tunnel", "host": t.host, "port": t.port, "allowed": true,
                   "bytes_up": up, "bytes_down": down}),
        );
    });
    Response::new(Body::empty())
}

/// Headers that belong to one hop, never forwarded (RFC 9110 7.6.1), plus
/// the proxy's own.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let listed: Vec<String> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::new();
    for (k, v) in headers {
        let n = k.as_str();
        if !HOP_BY_HOP.contains(&n) && !listed.iter().any(|l| l == n) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

async fn proxy(
    inner: Arc<Inner>,
    worker: Arc<Worker>,
    req: Request<Incoming>,
    t: Target,
    path: String,
) -> Response<Body> {
    let stream = match inner.dial(&worker, &t).await {
        Ok(s) => s,
        Err((status, why)) => {
            denied(&inner, &worker, "proxy", &t, &why);
            return text(status, &why);
        }
    };
    count(&inner, "allowed", "proxy");
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("{}: {e}", t.host)),
    };
    tokio::spawn(conn);
    let (parts, body) = req.into_parts();
    let mut headers = end_to_end(&parts.headers);
    // The host decided on is the host asked of: a Host header of the
    // worker's own never reaches another virtual host behind the address.
    let host = if t.port == 80 {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    match HeaderValue::from_str(&host) {
        Ok(v) => {
            headers.insert(hyper::header::HOST, v);
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "the host is not valid"),
    }
    let up = Arc::new(AtomicU64::new(0));
    let mut out = Request::new(Body::new(Counted::new(body, up.clone(), None)));
    *out.method_mut() = parts.method;
    *out.uri_mut() = match path.parse() {
        Ok(u) => u,
        Err(_) => return text(StatusCode::BAD_REQUEST, "the request's path is not valid"),
    };
    *out.headers_mut() = headers;
    relay_response(
        inner.clone(),
        worker,
        sender.send_request(out).await,
        up,
        json!({"kind": "proxy", "host": t.host, "port": t.port, "allowed": true}),
    )
}

/// The upstream's response, streamed to the worker; its `egress` event
/// (with the bytes each way) once the body ends or is dropped.
fn relay_response(
    inner: Arc<Inner>,
    worker: Arc<Worker>,
    resp: Result<Response<Incoming>, impl std::fmt::Display>,
    up: Arc<AtomicU64>,
    event: Value,
) -> Response<Body> {
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_GATEWAY,
                &format!("the upstream failed: {e}"),
            )
        }
    };
    let (mut parts, body) = resp.into_parts();
    parts.headers = end_to_end(&parts.headers);
    let status = parts.status.as_u16();
    let done: Box<dyn FnOnce(u64) + Send> = Box::new(move |down| {
        let up = up.load(Ordering::Relaxed);
        count_bytes(&inner, up, down);
        let mut e = event;
        e["status"] = json!(status);
        e["bytes_up"] = json!(up);
        e["bytes_down"] = json!(down);
        inner.event(&worker, e);
    });
    Response::from_parts(
        parts,
        Body::new(Counted::new(body, Arc::new(AtomicU64::new(0)), Some(done))),
    )
}

async fn model(
    inner: Arc<Inner>,
    worker: Arc<Worker>,
    req: Request<Incoming>,
    name: String,
    rest: String,
) -> Response<Body> {
    let Some(route) = worker.grant.route(&name).cloned() else {
        count(&inner, "denied", "model");
        return text(
            StatusCode::NOT_FOUND,
            &format!("this worker has no model route {name:?}"),
        );
    };
    let presented = req
        .headers()
        .get("x-api-key")
        .or_else(|| req.headers().get(hyper::header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string());
    if presented.as_deref() != Some(worker.grant.placeholder.as_str()) {
        count(&inner, "denied", "model");
        return text(
            StatusCode::UNAUTHORIZED,
            &format!(
                "a call on route {name} must carry this worker's placeholder key (${})",
                route.key_env
            ),
        );
    }
    let Some(key) = (inner.key_of)(&route.from_env) else {
        count(&inner, "denied", "model");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the daemon's environment has no {}", route.from_env),
        );
    };
    let operators = inner.cfg.upstreams.get(&name).cloned();
    // The key travels in clear only to an upstream the operator named.
    if operators.is_none() && !route.upstream.starts_with("https://") {
        count(&inner, "denied", "model");
        return text(
            StatusCode::BAD_GATEWAY,
            &format!("route {name}: the key goes only to an https upstream (or one in the daemon's model_upstreams)"),
        );
    }
    let base = operators.unwrap_or_else(|| route.upstream.clone());
    let Some(url) = model_url(&base, &rest) else {
        count(&inner, "denied", "model");
        return text(StatusCode::BAD_REQUEST, "the path leaves the route");
    };
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return text(StatusCode::BAD_REQUEST, "the path is not valid");
    };
    count(&inner, "allowed", "model");
    let (parts, body) = req.into_parts();
    let mut headers = end_to_end(&parts.headers);
    for h in ["host", "x-api-key", "authorization"] {
        headers.remove(h);
    }
    match (
        HeaderName::from_bytes(route.header.as_bytes()),
        HeaderValue::from_str(&route.header_value(&key)),
    ) {
        (Ok(n), Ok(mut v)) => {
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        _ => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the route's key header is not valid",
            )
        }
    }
    let up = Arc::new(AtomicU64::new(0));
    let mut out = Request::new(Body::new(Counted::new(body, up.clone(), None)));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri.clone();
    *out.headers_mut() = headers;
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let resp = inner.client.request(out).await;
    relay_response(
        inner.clone(),
        worker,
        resp,
        up,
        json!({"kind": "model", "route": name, "host": host, "port": port, "allowed": true}),
    )
}

/// A body that counts its bytes into `n` and, when it ends or is dropped,
/// hands its count to `done`.
struct Counted<B> {
    inner: B,
    n: Arc<AtomicU64>,
    done: Option<Box<dyn FnOnce(u64) + Send>>,
}

impl<B> Counted<B> {
    fn new(inner: B, n: Arc<AtomicU64>, done: Option<Box<dyn FnOnce(u64) + Send>>) -> Self {
        Counted { inner, n, done }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.n.load(Ordering::Relaxed));
        }
    }
}

impl<B> hyper::body::Body for Counted<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.n.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
