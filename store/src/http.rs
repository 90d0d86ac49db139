//! The operator's HTTP endpoints, as etcd serves them next to gRPC on the
//! client port (and alone on `--listen-metrics-urls`): `/metrics`, `/health`,
//! `/livez`, `/readyz` (with `/livez/<check>` and `/readyz/<check>`) and
//! `/version`. Also the tower layer that counts gRPC calls for
//! `grpc_server_started_total` / `grpc_server_handled_total`.
//!
//! The endpoints reproduce etcd 3.6's bodies, status codes and query
//! parameters (`serializable`, `verbose`, `exclude`) so existing probes and
//! scripts work; they are generic over [`Member`] so their logic is unit-tested
//! against a fake member in states (no leader, failing reads, learner) a
//! one-member store cannot be put in from outside.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;

use crate::limits::{HEALTH_READ_TIMEOUT, HTTP_REQUEST_TIMEOUT};
use crate::metrics::{GrpcMethod, Metrics, Scrape};
use crate::node::Node;
use crate::service::maintenance::ETCD_VERSION;

/// The key the health checks read: a point lookup touches storage without
/// scanning (etcd's check is a `Range` with `limit 1`, cheap in its in-memory index).
const HEALTH_PROBE_KEY: &[u8] = b"health";

/// Go's `http.Error` content type, which etcd's health answers carry.
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

// ---- the member, as the endpoints see it --------------------------------------

/// What the endpoints need from a member. [`Node`] is the real one.
pub trait Member: Send + Sync + 'static {
    /// The leader this member knows, if any.
    fn leader(&self) -> Option<u64>;
    /// True if this member is a learner (not a voter).
    fn is_learner(&self) -> bool;
    /// Reads one key, linearizably unless `serializable`; the error text on failure.
    fn read(&self, serializable: bool) -> impl Future<Output = Result<(), String>> + Send;
    /// The member's state for the scrape-time gauges.
    fn scrape(&self) -> Scrape;
    /// The member's metrics.
    fn metrics(&self) -> &Metrics;
}

impl Member for Node {
    /// The live leader (see [`Node::live_leader`]): a member cut off from its leader reports none,
    /// as etcd's does once its raft is a (pre-)candidate.
    fn leader(&self) -> Option<u64> {
        self.live_leader()
    }

    fn is_learner(&self) -> bool {
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        !m.membership_config.membership().voter_ids().any(|id| id == self.member_id)
    }

    async fn read(&self, serializable: bool) -> Result<(), String> {
        let view = self.read_view(serializable).await.map_err(|e| e.to_string())?;
        view.get_latest(HEALTH_PROBE_KEY).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn scrape(&self) -> Scrape {
        let (leader, committed, applied) = {
            let rx = self.raft.metrics();
            let m = rx.borrow_watched();
            (m.current_leader, m.local_committed.map_or(0, |l| l.index), m.last_applied.map_or(0, |l| l.index))
        };
        let engine = &self.shared.engine;
        // etcd's keys_total counts its key index, deleted keys not yet compacted included.
        let keys = engine.index().len() as u64;
        Scrape {
            has_leader: self.has_leader(),
            is_leader: leader == Some(self.member_id),
            committed_index: committed,
            applied_index: applied,
            db_size_bytes: engine.approximate_size(),
            keys,
            watchers: self.shared.hub.watcher_count(),
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

// ---- routes --------------------------------------------------------------------

/// The HTTP endpoints of `node`, each request bounded by [`HTTP_REQUEST_TIMEOUT`].
/// Unknown paths get 404, except gRPC requests, which get gRPC's Unimplemented
/// (so this router can stand in for tonic's fallback when merged with it).
pub fn router(node: Arc<Node>) -> axum::Router {
    router_for(node)
}

fn router_for<M: Member>(member: Arc<M>) -> axum::Router {
    let mut r = axum::Router::new()
        .route("/metrics", get(metrics::<M>))
        .route("/health", get(health::<M>))
        .route("/version", get(version))
        .route("/livez", get(|s: State<Arc<M>>, q: RawQuery| checks(s, q, CheckKind::Livez, None)))
        .route("/readyz", get(|s: State<Arc<M>>, q: RawQuery| checks(s, q, CheckKind::Readyz, None)));
    for kind in [CheckKind::Livez, CheckKind::Readyz] {
        for &name in kind.checks() {
            let path = format!("/{}/{name}", kind.as_str());
            r = r.route(&path, get(move |s: State<Arc<M>>, q: RawQuery| checks(s, q, kind, Some(name))));
        }
    }
    r.fallback(not_found).layer(axum::middleware::from_fn(bounded)).with_state(member)
}

/// Bounds every request: a handler stuck on storage or Raft answers 503, not never.
async fn bounded(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(HTTP_REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(path, timeout = ?HTTP_REQUEST_TIMEOUT, "http request timed out");
            text(StatusCode::SERVICE_UNAVAILABLE, "request timed out\n".to_owned())
        }
    }
}

async fn not_found(headers: HeaderMap) -> Response {
    if is_grpc(&headers) {
        let (parts, ()) = tonic::Status::unimplemented("").into_http::<()>().into_parts();
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    // Go's http.NotFound, which etcd answers unknown paths with.
    text(StatusCode::NOT_FOUND, "404 page not found\n".to_owned())
}

fn text(status: StatusCode, body: String) -> Response {
    let headers = [(header::CONTENT_TYPE, TEXT_PLAIN), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")];
    (status, headers, body).into_response()
}

async fn metrics<M: Member>(State(member): State<Arc<M>>) -> Response {
    match member.metrics().render(&member.scrape()) {
        Ok(body) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

/// etcd's `/version` answer, fields in etcd's order.
#[derive(serde::Serialize)]
struct Versions {
    etcdserver: &'static str,
    etcdcluster: &'static str,
}

async fn version() -> Response {
    let versions = Versions { etcdserver: ETCD_VERSION, etcdcluster: ETCD_VERSION };
    let body = serde_json::to_string(&versions).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

// ---- /health -------------------------------------------------------------------

/// etcd's `/health` answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// "true" or "false" (strings, as etcd writes them).
    pub health: &'static str,
    /// Why not healthy; empty when healthy.
    pub reason: String,
}

impl Health {
    fn ok() -> Self {
        Health { health: "true", reason: String::new() }
    }

    fn failed(reason: String) -> Self {
        Health { health: "false", reason }
    }

    /// True when healthy.
    pub fn is_healthy(&self) -> bool {
        self.health == "true"
    }
}

/// etcd's `/health` verdict: no alarms (geobuk raises none), a known leader
/// unless `serializable`, and a read (linearizable unless `serializable`)
/// within [`HEALTH_READ_TIMEOUT`].
pub async fn check_health<M: Member>(member: &M, serializable: bool) -> Health {
    if !serializable && member.leader().is_none() {
        return Health::failed("RAFT NO LEADER".into());
    }
    match timed_read(member, serializable).await {
        Ok(()) => Health::ok(),
        Err(e) => Health::failed(format!("RANGE ERROR:{e}")),
    }
}

async fn timed_read<M: Member>(member: &M, serializable: bool) -> Result<(), String> {
    match tokio::time::timeout(HEALTH_READ_TIMEOUT, member.read(serializable)).await {
        Ok(result) => result,
        Err(_) => Err(crate::error::StoreError::Timeout.to_string()),
    }
}

async fn health<M: Member>(State(member): State<Arc<M>>, RawQuery(query): RawQuery) -> Response {
    let serializable = Query::parse(query.as_deref()).value("serializable") == Some("true");
    let h = check_health(&*member, serializable).await;
    member.metrics().health_checked(h.is_healthy());
    let body = serde_json::to_string(&h).unwrap_or_else(|_| r#"{"health":"false","reason":"encoding"}"#.into());
    if h.is_healthy() {
        text(StatusCode::OK, body)
    } else {
        tracing::warn!(reason = %h.reason, "serving /health false");
        text(StatusCode::SERVICE_UNAVAILABLE, body + "\n")
    }
}

// ---- /livez and /readyz -----------------------------------------------------------

/// The two check registries etcd 3.5.12+/3.6 serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// `/livez`: is the process serving at all (local reads).
    Livez,
    /// `/readyz`: can it serve clients (consensus reads too).
    Readyz,
}

impl CheckKind {
    fn as_str(self) -> &'static str {
        match self {
            CheckKind::Livez => "livez",
            CheckKind::Readyz => "readyz",
        }
    }

    /// The checks, in the order reported (etcd's registration order).
    pub fn checks(self) -> &'static [&'static str] {
        match self {
            CheckKind::Livez => &["serializable_read"],
            CheckKind::Readyz => &["data_corruption", "serializable_read", "linearizable_read", "non_learner"],
        }
    }
}

async fn run_check<M: Member>(member: &M, name: &str) -> Result<(), String> {
    match name {
        // geobuk has no corruption checker yet, so no CORRUPT alarm is ever raised.
        "data_corruption" => Ok(()),
        "serializable_read" => timed_read(member, true).await,
        "linearizable_read" => timed_read(member, false).await,
        "non_learner" if member.is_learner() => Err("not supported for learner".into()),
        "non_learner" => Ok(()),
        other => Err(format!("unknown check {other}")),
    }
}

/// Runs `kind`'s checks (or only `only`), minus the `exclude`d ones; returns
/// whether all passed and etcd's report lines (`[+]name ok` / `[-]name failed: why`).
pub async fn run_checks<M: Member>(
    member: &M,
    kind: CheckKind,
    only: Option<&str>,
    exclude: &[&str],
) -> (bool, String) {
    let (mut all_ok, mut report) = (true, String::new());
    let names: Vec<&str> = match only {
        Some(name) => vec![name],
        None => kind.checks().iter().copied().filter(|n| !exclude.contains(n)).collect(),
    };
    let unknown: Vec<&&str> = exclude.iter().filter(|e| !kind.checks().contains(e)).collect();
    if only.is_none() && !unknown.is_empty() {
        // As etcd: excluding a check that does not exist is not an error.
        tracing::warn!(?unknown, "some health checks cannot be excluded");
    }
    for name in names {
        let result = run_check(member, name).await;
        match &result {
            Ok(()) => report.push_str(&format!("[+]{name} ok\n")),
            Err(e) => report.push_str(&format!("[-]{name} failed: {e}\n")),
        }
        all_ok &= result.is_ok();
        // Only registered names become label values: the label set stays bounded.
        if kind.checks().contains(&name) {
            member.metrics().healthcheck_ran(kind.as_str(), name, result.is_ok());
        }
    }
    (all_ok, report)
}

async fn checks<M: Member>(
    State(member): State<Arc<M>>,
    RawQuery(query): RawQuery,
    kind: CheckKind,
    only: Option<&'static str>,
) -> Response {
    let query = Query::parse(query.as_deref());
    let exclude: Vec<&str> = query.values("exclude").filter(|v| !v.is_empty()).collect();
    let (ok, report) = run_checks(&*member, kind, only, &exclude).await;
    if !ok {
        // etcd always details failed checks, verbose or not.
        tracing::warn!(kind = kind.as_str(), report, "health check failed");
        return text(StatusCode::SERVICE_UNAVAILABLE, report + "\n");
    }
    let body = if query.has("verbose") { report + "ok\n" } else { "ok\n".to_owned() };
    text(StatusCode::OK, body)
}

/// A decoded URL query string (`a=1&b&a=2`); repeated names keep every value.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        let pairs = raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()).map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        });
        Query(pairs.collect())
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }

    fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte;
/// a malformed escape is kept as written, invalid UTF-8 replaced.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s.get(i + 1..i + 3).filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit())) {
                Some(hex) => {
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---- listeners -----------------------------------------------------------------

/// Errors setting up the HTTP listeners.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Not an `http://host:port` URL.
    #[error("unsupported URL {0:?}: only http://host:port is supported")]
    Url(String),
    /// The host did not resolve.
    #[error("resolving {url}: {source}")]
    Resolve {
        /// The URL.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The address could not be bound.
    #[error("listening on {url}: {source}")]
    Bind {
        /// The URL.
        url: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Binds one listener per `http://host:port` URL (`--listen-metrics-urls`).
pub async fn bind(urls: &[String]) -> Result<Vec<TcpListener>, ListenError> {
    let mut listeners = Vec::with_capacity(urls.len());
    for url in urls {
        let hostport = url
            .strip_prefix("http://")
            .map(|h| h.trim_end_matches('/'))
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| ListenError::Url(url.clone()))?;
        let addr: SocketAddr = tokio::net::lookup_host(hostport)
            .await
            .map_err(|source| ListenError::Resolve { url: url.clone(), source })?
            .next()
            .ok_or_else(|| ListenError::Url(url.clone()))?;
        let listener =
            TcpListener::bind(addr).await.map_err(|source| ListenError::Bind { url: url.clone(), source })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

// ---- gRPC call counting ----------------------------------------------------------

/// A tower layer for the client server that counts gRPC calls as grpc-go's
/// Prometheus interceptors do: `grpc_server_started_total` when a call arrives,
/// `grpc_server_handled_total{grpc_code}` when it ends. The code is read from
/// `grpc-status`: in the headers for an error answered at once (trailers-only),
/// otherwise in the trailers, which a streaming call sends when it ends. A call
/// whose response is dropped unfinished (the client went away) counts as Canceled.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner, metrics: self.metrics.clone() }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn grpc_status(headers: &HeaderMap) -> Option<tonic::Code> {
    headers.get("grpc-status").map(|v: &HeaderValue| tonic::Code::from_bytes(v.as_bytes()))
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let rpc = if is_grpc(req.headers()) { GrpcMethod::from_path(req.uri().path()) } else { None };
        let tracker = rpc.map(|rpc| {
            self.metrics.grpc_started(rpc);
            Tracker { metrics: self.metrics.clone(), rpc, done: false }
        });
        MeteredFuture { inner: self.inner.call(req), tracker }
    }
}

/// One counted call in flight: records its end exactly once, as Canceled if
/// dropped before an end was seen.
struct Tracker {
    metrics: Arc<Metrics>,
    rpc: &'static GrpcMethod,
    done: bool,
}

impl Tracker {
    fn finish(mut self, code: tonic::Code) {
        self.metrics.grpc_handled(self.rpc, code);
        self.done = true;
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.grpc_handled(self.rpc, tonic::Code::Cancelled);
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`GrpcMetricsService`].
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        tracker: Option<Tracker>,
    }
}

impl<F, B, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut tracker = this.tracker.take();
        Poll::Ready(match result {
            Ok(resp) => {
                if let Some(code) = grpc_status(resp.headers())
                    && let Some(t) = tracker.take()
                {
                    t.finish(code);
                }
                Ok(resp.map(|inner| MeteredBody { inner, tracker }))
            }
            Err(e) => {
                if let Some(t) = tracker {
                    t.finish(tonic::Code::Unknown);
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call's end when its trailers pass.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        tracker: Option<Tracker>,
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = ready!(this.inner.poll_frame(cx));
        let end = match &polled {
            Some(Ok(frame)) => frame.trailers_ref().map(|t| grpc_status(t).unwrap_or(tonic::Code::Unknown)),
            Some(Err(_)) => Some(tonic::Code::Unknown),
            // Ended without trailers: not a well-formed gRPC answer.
            None => Some(tonic::Code::Unknown),
        };
        if let Some(code) = end
            && let Some(t) = this.tracker.take()
        {
            t.finish(code);
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::Bytes;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    /// A member in whatever state a test needs.
    struct Fake {
        leader: Option<u64>,
        learner: bool,
        serializable: Result<(), String>,
        linearizable: Result<(), String>,
        metrics: Metrics,
    }

    impl Fake {
        fn healthy() -> Self {
            Fake {
                leader: Some(1),
                learner: false,
                serializable: Ok(()),
                linearizable: Ok(()),
                metrics: Metrics::new(),
            }
        }

        /// No leader: linearizable reads fail as a real member's do.
        fn leaderless() -> Self {
            Fake { leader: None, linearizable: Err("etcdserver: no leader".into()), ..Fake::healthy() }
        }
    }

    impl Member for Fake {
        fn leader(&self) -> Option<u64> {
            self.leader
        }
        fn is_learner(&self) -> bool {
            self.learner
        }
        async fn read(&self, serializable: bool) -> Result<(), String> {
            if serializable { self.serializable.clone() } else { self.linearizable.clone() }
        }
        fn scrape(&self) -> Scrape {
            Scrape { has_leader: self.leader.is_some(), ..Scrape::default() }
        }
        fn metrics(&self) -> &Metrics {
            &self.metrics
        }
    }

    async fn call(member: Fake, uri: &str, grpc: bool) -> (StatusCode, HeaderMap, String) {
        let mut req = http::Request::get(uri);
        if grpc {
            req = req.header(header::CONTENT_TYPE, "application/grpc");
        }
        let req = req.body(axum::body::Body::empty()).expect("request");
        let resp = router_for(Arc::new(member)).oneshot(req).await.expect("infallible");
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, headers, String::from_utf8(body.to_vec()).expect("utf-8"))
    }

    async fn get(member: Fake, uri: &str) -> (StatusCode, String) {
        let (status, _, body) = call(member, uri, false).await;
        (status, body)
    }

    #[tokio::test]
    async fn health_follows_etcd() {
        assert_eq!(get(Fake::healthy(), "/health").await, (StatusCode::OK, r#"{"health":"true","reason":""}"#.into()));
        let no_leader =
            (StatusCode::SERVICE_UNAVAILABLE, "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}\n".into());
        assert_eq!(get(Fake::leaderless(), "/health").await, no_leader);
        assert_eq!(get(Fake::leaderless(), "/health?serializable=false").await, no_leader);
        // serializable=true checks only the local member: no leader needed.
        assert_eq!(get(Fake::leaderless(), "/health?serializable=true").await.0, StatusCode::OK);
        assert_eq!(get(Fake::leaderless(), "/health?exclude=NOSPACE&serializable=true").await.0, StatusCode::OK);

        let slow = Fake { linearizable: Err("etcdserver: request timed out".into()), ..Fake::healthy() };
        let (status, body) = get(slow, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "{\"health\":\"false\",\"reason\":\"RANGE ERROR:etcdserver: request timed out\"}\n");
        let broken = Fake { serializable: Err("etcdserver: corrupt".into()), ..Fake::leaderless() };
        assert_eq!(get(broken, "/health?serializable=true").await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn health_counts_answers() {
        let fake = Arc::new(Fake::leaderless());
        assert!(!check_health(&*fake, false).await.is_healthy());
        let text = fake.metrics.render(&Scrape::default()).expect("render");
        assert!(text.contains("etcd_server_health_failures 0"), "check_health itself does not count");
        let r = router_for(fake.clone());
        let req = || http::Request::get("/health").body(axum::body::Body::empty()).expect("request");
        let _ = r.clone().oneshot(req()).await;
        let _ = r.oneshot(req()).await;
        let text = fake.metrics.render(&Scrape::default()).expect("render");
        assert!(text.contains("etcd_server_health_failures 2"), "{text}");
    }

    #[tokio::test]
    async fn readyz_and_livez_follow_etcd() {
        assert_eq!(get(Fake::healthy(), "/readyz").await, (StatusCode::OK, "ok\n".into()));
        let verbose =
            "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nok\n";
        assert_eq!(get(Fake::healthy(), "/readyz?verbose").await, (StatusCode::OK, verbose.into()));
        assert_eq!(
            get(Fake::healthy(), "/livez?verbose=1").await,
            (StatusCode::OK, "[+]serializable_read ok\nok\n".into())
        );

        // Without a leader the member is alive but not ready.
        assert_eq!(get(Fake::leaderless(), "/livez").await, (StatusCode::OK, "ok\n".into()));
        let (status, headers, body) = call(Fake::leaderless(), "/readyz", false).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()), Some(TEXT_PLAIN.as_bytes()));
        assert_eq!(
            body,
            "[+]data_corruption ok\n[+]serializable_read ok\n[-]linearizable_read failed: etcdserver: no leader\n\
             [+]non_learner ok\n\n"
        );
        let (status, body) = get(Fake::leaderless(), "/readyz?exclude=linearizable_read&exclude=nope&verbose").await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("linearizable_read"), "{body}");
        assert_eq!(get(Fake::leaderless(), "/readyz/linearizable_read").await.0, StatusCode::SERVICE_UNAVAILABLE);
        let one = (StatusCode::OK, "[+]serializable_read ok\nok\n".into());
        assert_eq!(get(Fake::leaderless(), "/readyz/serializable_read?verbose").await, one);
        assert_eq!(get(Fake::healthy(), "/livez/serializable_read").await, (StatusCode::OK, "ok\n".into()));
        assert_eq!(get(Fake::healthy(), "/livez/linearizable_read").await.0, StatusCode::NOT_FOUND);

        let learner = Fake { learner: true, ..Fake::healthy() };
        let (status, body) = get(learner, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("[-]non_learner failed: not supported for learner\n"), "{body}");
    }

    #[tokio::test]
    async fn checks_record_metrics() {
        let fake = Arc::new(Fake::leaderless());
        let (ok, _) = run_checks(&*fake, CheckKind::Readyz, None, &[]).await;
        assert!(!ok);
        let text = fake.metrics.render(&Scrape::default()).expect("render");
        assert!(text.contains("etcd_server_healthcheck{name=\"linearizable_read\",type=\"readyz\"} 0"), "{text}");
        assert!(text.contains("etcd_server_healthcheck{name=\"serializable_read\",type=\"readyz\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn version_metrics_and_unknown_paths() {
        let (status, headers, body) = call(Fake::healthy(), "/version", false).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()), Some(&b"application/json"[..]));
        assert_eq!(body, r#"{"etcdserver":"3.6.0","etcdcluster":"3.6.0"}"#);

        let (status, headers, body) = call(Fake::healthy(), "/metrics", false).await;
        assert_eq!(status, StatusCode::OK);
        let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes().to_vec());
        assert_eq!(content_type.as_deref(), Some(crate::metrics::CONTENT_TYPE.as_bytes()));
        assert!(body.contains("\netcd_server_has_leader 1\n"), "{body}");

        assert_eq!(get(Fake::healthy(), "/nope").await, (StatusCode::NOT_FOUND, "404 page not found\n".into()));
        assert_eq!(get(Fake::healthy(), "/metrics/x").await.0, StatusCode::NOT_FOUND);
        // A gRPC call to an unknown service gets gRPC's answer, not an HTTP 404.
        let (status, headers, _) = call(Fake::healthy(), "/etcdserverpb.Auth/Authenticate", true).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(grpc_status(&headers), Some(tonic::Code::Unimplemented));

        let req = http::Request::post("/health").body(axum::body::Body::empty()).expect("request");
        let resp = router_for(Arc::new(Fake::healthy())).oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn query_strings() {
        let q = Query::parse(Some("verbose&exclude=a&exclude=b%5Fc&x=1+2&bad=%zz&short=%4"));
        assert!(q.has("verbose"));
        assert!(!q.has("serializable"));
        assert_eq!(q.values("exclude").collect::<Vec<_>>(), ["a", "b_c"]);
        assert_eq!(q.value("x"), Some("1 2"));
        assert_eq!(q.value("bad"), Some("%zz"));
        assert_eq!(q.value("short"), Some("%4"));
        assert_eq!(Query::parse(None).0, Vec::<(String, String)>::new());
        assert_eq!(percent_decode("%e2%82%ac%ff"), "€\u{fffd}");
    }

    #[tokio::test]
    async fn bind_rejects_bad_urls() {
        assert!(matches!(bind(&["https://127.0.0.1:1".into()]).await, Err(ListenError::Url(_))));
        assert!(matches!(bind(&["http://".into()]).await, Err(ListenError::Url(_))));
        assert!(matches!(bind(&["http://127.0.0.1:1/x".into()]).await, Err(ListenError::Url(_))));
        let ok = bind(&["http://127.0.0.1:0/".into()]).await.expect("bind");
        assert_eq!(ok.len(), 1);
    }

    /// A response body: the given frames, in order.
    struct Frames(VecDeque<http_body::Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn trailers(code: &str) -> http_body::Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_str(code).expect("header"));
        http_body::Frame::trailers(t)
    }

    /// Runs one request for `path` through the layer around a service answering
    /// with `headers` and `frames`; returns the (unread) metered response body.
    async fn metered(
        metrics: &Arc<Metrics>,
        path: &str,
        status_header: Option<&str>,
        frames: Vec<http_body::Frame<Bytes>>,
    ) -> MeteredBody<Frames> {
        let frames = std::sync::Mutex::new(Some(frames));
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            let frames = frames.lock().expect("lock").take().unwrap_or_default();
            let mut resp = http::Response::new(Frames(frames.into()));
            if let Some(code) = status_header {
                resp.headers_mut().insert("grpc-status", HeaderValue::from_str(code).expect("header"));
            }
            async move { Ok::<_, std::convert::Infallible>(resp) }
        });
        let mut svc = GrpcMetricsLayer::new(metrics.clone()).layer(inner);
        let req = http::Request::post(path).header(header::CONTENT_TYPE, "application/grpc+proto").body(());
        let resp = svc.call(req.expect("request")).await.expect("infallible");
        resp.into_body()
    }

    async fn drain(mut body: MeteredBody<Frames>) {
        use http_body::Body as _;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            frame.expect("frame");
        }
    }

    fn handled(metrics: &Metrics, method: &str, code: &str) -> Option<f64> {
        let text = metrics.render(&Scrape::default()).expect("render");
        let series = format!("grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",");
        text.lines().find(|l| l.starts_with(&series))?.rsplit(' ').next()?.parse().ok()
    }

    #[tokio::test]
    async fn grpc_layer_reads_status_from_headers_or_trailers() {
        let metrics = Arc::new(Metrics::new());
        // Trailers-only error answer: counted from the headers at once.
        let body = metered(&metrics, "/etcdserverpb.KV/Range", Some("11"), vec![]).await;
        assert_eq!(handled(&metrics, "Range", "OutOfRange"), Some(1.0));
        drop(body);
        assert_eq!(handled(&metrics, "Range", "Canceled"), Some(0.0), "already counted: not again on drop");

        // Success: counted when the trailers pass, not before.
        let frames = vec![http_body::Frame::data(Bytes::from_static(b"x")), trailers("0")];
        let body = metered(&metrics, "/etcdserverpb.KV/Put", None, frames).await;
        assert_eq!(handled(&metrics, "Put", "OK"), Some(0.0));
        drain(body).await;
        assert_eq!(handled(&metrics, "Put", "OK"), Some(1.0));

        // A stream the client abandons: Canceled.
        let frames = vec![http_body::Frame::data(Bytes::from_static(b"x")), trailers("0")];
        drop(metered(&metrics, "/etcdserverpb.Watch/Watch", None, frames).await);
        assert_eq!(handled(&metrics, "Watch", "Canceled"), Some(1.0));

        // Unknown methods and plain HTTP are not counted.
        drain(metered(&metrics, "/etcdserverpb.KV/Nope", None, vec![trailers("0")]).await).await;
        let text = metrics.render(&Scrape::default()).expect("render");
        assert!(!text.contains("Nope"));
        let started =
            "grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1";
        assert!(text.contains(started), "{text}");
    }
}
