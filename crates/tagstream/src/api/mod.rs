//! The HTTP API of `tagstream run` (SPEC §8), served with axum on `api.listen`.
//!
//! * `GET /ui` serves the web console ([`console`]), a client of `/v1`.
//! * `/healthz`, `/readyz`, `/metrics` and `/v1/openapi.json` are open; everything else under
//!   `/v1` needs `Authorization: Bearer <token>` when a token is configured (compared in
//!   constant time). [`ROUTES`] lists every route; `openapi.json` beside this file describes
//!   them (a test holds the two equal).
//! * Handlers reach the engine through [`SharedEngine`] on tokio's blocking pool: reads see
//!   committed batches, and writes (delete, rules reload) are applied between batches.
//! * Every error is JSON `{"error": "..."}` with a 4xx status for anything the client can fix
//!   (bad JSON, unknown segment, bad cursor, oversized body); a 5xx means a fault of ours.
//! * User ids are personal data: they are never logged above debug level and never used as
//!   metric labels (requests are counted by route template).

mod console;
pub mod peers;
mod routes;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tagstream_consumer::engine::{Engine, SharedEngine};
use tagstream_consumer::metrics::Metrics;
use tagstream_consumer::source::Control;
use tagstream_consumer::ConsumerError;

/// Request bodies larger than this are refused with 413 (rules files included).
pub const MAX_BODY_BYTES: usize = 4 << 20;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub engine: SharedEngine,
    pub metrics: Metrics,
    pub control: Arc<Control>,
    /// The bearer token `/v1` requires, if any.
    pub token: Option<Arc<str>>,
    /// The rules file `POST /v1/rules/reload` re-reads when the request has no body.
    pub rules_path: PathBuf,
    /// The state store, read directly (not through the engine's lock) for its health gauges
    /// at each scrape, so a long batch never delays `/metrics`.
    pub store: Arc<dyn tagstream_state::StateStore>,
    /// `api.peers`: with peers, `/v1` reads answer for the whole deployment.
    pub peers: Option<Arc<peers::Peers>>,
    /// `api.max_in_flight` and `api.request_timeout`.
    pub limits: RequestLimits,
}

/// Bounds on `/v1` requests: how many are served at once, and how long one may take.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    in_flight: Arc<tokio::sync::Semaphore>,
    max_in_flight: usize,
    timeout: Option<std::time::Duration>,
    /// Each cause of rejection is logged once (then counted only).
    logged: Arc<[std::sync::atomic::AtomicBool; 2]>,
}

/// Why a `/v1` request was answered 503 without being served.
#[derive(Debug, Clone, Copy)]
enum Shed {
    Overloaded = 0,
    Timeout = 1,
}

impl RequestLimits {
    pub fn new(max_in_flight: usize, timeout: Option<std::time::Duration>) -> RequestLimits {
        RequestLimits {
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
            max_in_flight,
            timeout,
            logged: Arc::default(),
        }
    }

    fn reject(&self, state: &ApiState, shed: Shed, message: String) -> Response {
        let reason = shed as usize;
        let name = tagstream_consumer::metrics::API_REJECTIONS[reason];
        state.metrics.api_rejected.with_label_values(&[name]).inc();
        if !self.logged[reason].swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                reason = name,
                "{message} (logged once; tagstream_api_rejected_total counts them)"
            );
        }
        let mut response = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

/// Counts one request to a peer (by its index, never its address or a user id).
pub fn observe_peer(state: &ApiState, index: usize, ok: bool) {
    let peer = index.to_string();
    state
        .metrics
        .api_peer_requests
        .with_label_values(&[&peer])
        .inc();
    if !ok {
        state
            .metrics
            .api_peer_failures
            .with_label_values(&[&peer])
            .inc();
    }
}

/// Times a rules preview (`POST /v1/rules/reload?dry_run=true`).
pub fn observe_preview(state: &ApiState, took: std::time::Duration) {
    state
        .metrics
        .api_preview_seconds
        .observe(took.as_secs_f64());
}

/// Times an export from its first chunk to its last (`kind`: segment or audience).
pub fn observe_export(state: &ApiState, kind: &str, took: std::time::Duration) {
    state
        .metrics
        .api_export_seconds
        .with_label_values(&[kind])
        .observe(took.as_secs_f64());
}

/// An error answer: a status and a JSON body `{"error": message, ...details}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    details: Option<serde_json::Map<String, Value>>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn with(mut self, key: &str, value: Value) -> ApiError {
        self.details
            .get_or_insert_with(Default::default)
            .insert(key.into(), value);
        self
    }
}

impl From<ConsumerError> for ApiError {
    fn from(e: ConsumerError) -> ApiError {
        if e.is_user_error() {
            ApiError::bad_request(e.to_string())
        } else if matches!(e, ConsumerError::Store(_)) {
            // The write was rolled back (disk full, IO error): the request may be retried. Logged
            // once; tagstream_state_commit_failures_total counts them.
            static LOGGED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(error = %e, "api request failed on a state store error (logged once)");
            }
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("state store unavailable: {e}"),
            )
        } else {
            tracing::error!(error = %e, "api request failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal error: {e}"),
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.details.unwrap_or_default();
        body.insert("error".into(), Value::String(self.message));
        (self.status, Json(Value::Object(body))).into_response()
    }
}

pub type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// Runs `f` with the engine locked, on the blocking pool (the lock may be held by a batch).
pub async fn with_engine<T, F>(state: &ApiState, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Engine) -> Result<T, ApiError> + Send + 'static,
{
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || f(&mut engine.lock()))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("request worker failed: {e}"),
            )
        })?
}

/// Reads the API token from `TAGSTREAM_API_TOKEN` or the first line of `api.token_file`.
pub fn load_token(token_file: Option<&std::path::Path>) -> Result<Option<Arc<str>>, String> {
    let env = match std::env::var(TOKEN_ENV) {
        Ok(token) => Some(token),
        Err(std::env::VarError::NotPresent) => None,
        // Never read as "no token": that would open /v1.
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!("{TOKEN_ENV} is not valid UTF-8"))
        }
    };
    token_from(token_file, env)
}

/// The environment variable that can hold the API token instead of `api.token_file`.
pub const TOKEN_ENV: &str = "TAGSTREAM_API_TOKEN";

/// The token from the environment's value `env` or from `token_file`. Both at once is an
/// error: which one wins would be a guess, and a stale Secret silently overriding a rotated
/// file (or the reverse) is how a token leaks or an outage starts.
fn token_from(
    token_file: Option<&std::path::Path>,
    env: Option<String>,
) -> Result<Option<Arc<str>>, String> {
    let env = env.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    match (env, token_file) {
        (Some(_), Some(path)) => Err(format!(
            "the API token is configured twice: {TOKEN_ENV} is set and api.token_file = {}; keep one of them",
            path.display()
        )),
        (Some(token), None) => {
            tracing::info!("/v1 requires the bearer token from {TOKEN_ENV}");
            Ok(Some(Arc::from(token)))
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read api.token_file {}: {e}", path.display()))?;
            let token = text.lines().next().unwrap_or("").trim();
            if token.is_empty() {
                return Err(format!(
                    "api.token_file {} is empty; put the bearer token on its first line",
                    path.display()
                ));
            }
            tracing::info!(token_file = %path.display(), "/v1 requires the bearer token from api.token_file");
            Ok(Some(Arc::from(token)))
        }
        (None, None) => {
            tracing::warn!("no API token configured: /v1 answers without authentication");
            Ok(None)
        }
    }
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.as_bytes())));
        if !ok {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send Authorization: Bearer <token>",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// `/v1` load shedding: beyond `api.max_in_flight` requests at once, or past
/// `api.request_timeout`, the answer is 503 at once instead of a queue that grows behind the
/// engine lock. A timed-out request's work may still finish on the blocking pool; a rules
/// reload is never cut (its answer says whether it was applied).
async fn limit_requests(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let limits = state.limits.clone();
    let Ok(_permit) = limits.in_flight.clone().try_acquire_owned() else {
        let message = format!(
            "too many requests in flight (api.max_in_flight = {}); retry shortly",
            limits.max_in_flight
        );
        return limits.reject(&state, Shed::Overloaded, message);
    };
    let reload = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str() == "/v1/rules/reload");
    match limits.timeout.filter(|_| !reload) {
        None => next.run(request).await,
        Some(timeout) => match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                let message = format!(
                    "the request was not answered within api.request_timeout ({} ms)",
                    timeout.as_millis()
                );
                limits.reject(&state, Shed::Timeout, message)
            }
        },
    }
}

async fn count_requests(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .api_request_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .api_requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
}

/// One HTTP route: method, path template (axum syntax) and whether it needs the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    /// Open routes answer without the bearer token.
    pub open: bool,
}

const fn route(method: &'static str, path: &'static str, open: bool) -> Route {
    Route { method, path, open }
}

/// Every route the API serves. The router is built from this table (see [`handler`]), so a
/// test can compare it with the OpenAPI document in both directions.
pub const ROUTES: &[Route] = &[
    route("GET", "/healthz", true),
    route("GET", "/readyz", true),
    route("GET", "/metrics", true),
    route("GET", "/v1/openapi.json", true),
    route("GET", "/v1/users/{id}", false),
    route("DELETE", "/v1/users/{id}", false),
    route("GET", "/v1/users/{id}/explain", false),
    route("GET", "/v1/tags", false),
    route("GET", "/v1/segments", false),
    route("GET", "/v1/segments/{name}/members", false),
    route("GET", "/v1/segments/{name}/export", false),
    route("GET", "/v1/segments/{name}/history", false),
    route("POST", "/v1/audiences", false),
    route("POST", "/v1/audiences/export", false),
    route("GET", "/v1/rules", false),
    route("POST", "/v1/rules/reload", false),
];

/// The OpenAPI 3 document of the API, served at `GET /v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The handler of a route of [`ROUTES`].
fn handler(r: &Route) -> axum::routing::MethodRouter<ApiState> {
    use axum::routing::{delete, get, post};
    match (r.method, r.path) {
        ("GET", "/healthz") => get(routes::healthz),
        ("GET", "/readyz") => get(routes::readyz),
        ("GET", "/metrics") => get(routes::metrics),
        ("GET", "/v1/openapi.json") => get(routes::openapi),
        ("GET", "/v1/users/{id}") => get(routes::get_user),
        ("DELETE", "/v1/users/{id}") => delete(routes::delete_user),
        ("GET", "/v1/users/{id}/explain") => get(routes::explain_user),
        ("GET", "/v1/tags") => get(routes::list_tags),
        ("GET", "/v1/segments") => get(routes::list_segments),
        ("GET", "/v1/segments/{name}/members") => get(routes::segment_members),
        ("GET", "/v1/segments/{name}/history") => get(routes::segment_history),
        ("GET", "/v1/segments/{name}/export") => get(routes::segment_export),
        ("POST", "/v1/audiences") => post(routes::audience),
        ("POST", "/v1/audiences/export") => post(routes::audience_export),
        ("GET", "/v1/rules") => get(routes::get_rules),
        ("POST", "/v1/rules/reload") => post(routes::reload_rules),
        (method, path) => unreachable!("ROUTES lists {method} {path} but no handler serves it"),
    }
}

/// The whole router.
pub fn router(state: ApiState) -> axum::Router {
    let mut open = axum::Router::new();
    let mut protected = axum::Router::new();
    for r in ROUTES {
        if r.open {
            open = open.route(r.path, handler(r));
        } else {
            protected = protected.route(r.path, handler(r));
        }
    }
    // The token is checked first: a request without it takes no slot.
    let protected = protected
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_requests,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    open.merge(protected)
        .merge(console::router())
        .fallback(|| async {
            ApiError::not_found("no such endpoint; GET /v1/openapi.json lists the API")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// A running API server.
pub struct ApiServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `listen` (errors name the address) and serves on a thread of its own.
    pub fn start(listen: &str, state: ApiState) -> Result<ApiServer, String> {
        let listener = std::net::TcpListener::bind(listen)
            .map_err(|e| format!("cannot listen on api.listen {listen}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("api.listen {listen}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("api.listen {listen}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("api")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the API runtime: {e}"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(state);
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "the API cannot serve");
                            return;
                        }
                    };
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                        let _ = stopped.await;
                    });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "the API stopped");
                    }
                });
            })
            .map_err(|e| format!("cannot start the API thread: {e}"))?;
        tracing::info!(%addr, "api listening");
        Ok(ApiServer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops accepting requests and waits for the server to finish.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `{"status": ...}` bodies of the open endpoints.
pub fn status(status: &str) -> Json<Value> {
    Json(json!({ "status": status }))
}

#[cfg(test)]
mod tests;
