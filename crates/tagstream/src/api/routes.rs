//! The endpoints. Each parses and checks its input completely before touching the engine.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tagstream_consumer::audience::{
    export_ndjson, AudienceQuery, ExportOrder, ExportSet, QueryError, EXPORT_CHUNK,
};
use tagstream_rules::rules::RuleSet;

use super::peers::{self, Peers, INTERNAL_HEADER};
use super::{status, with_engine, ApiError, ApiResult, ApiState};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 10_000;

/// 200 while the process serves and the pipeline moves; 503 once it has had work pending
/// without progress for `api.stall_after` (answered without the engine lock, which a stalled
/// pipeline may hold).
pub async fn healthz(State(state): State<ApiState>) -> Response {
    match state.control.stalled() {
        None => status("ok").into_response(),
        Some(since) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "pipeline stalled: work pending without progress for {} s (api.stall_after)",
                since.as_secs()
            ),
        )
        .with("stalled_seconds", json!(since.as_secs()))
        .into_response(),
    }
}

pub async fn readyz(State(state): State<ApiState>) -> Response {
    if state.control.ready() {
        status("ready").into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no input partitions assigned yet",
        )
        .into_response()
    }
}

pub async fn metrics(State(state): State<ApiState>) -> Response {
    // RocksDB's own figures are read at scrape time: cheap in-memory properties.
    state.metrics.record_store_health(&state.store.health());
    state
        .metrics
        .pipeline_last_progress_seconds
        .set(state.control.since_progress().as_secs_f64());
    state.control.stalled();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::OPENAPI).into_response()
}

/// The peers to ask, when this request is to be answered for the whole deployment: peers are
/// configured and the request does not come from a peer.
fn fan_out_peers(state: &ApiState, headers: &HeaderMap) -> Option<Arc<Peers>> {
    if is_internal(headers) {
        None
    } else {
        state.peers.clone()
    }
}

fn is_internal(headers: &HeaderMap) -> bool {
    headers.contains_key(INTERNAL_HEADER)
}

/// Percent-encodes one path segment or query value.
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs a blocking fan-out on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("request worker failed: {e}"),
        )
    })?
}

pub async fn get_user(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    if let Some(peers) = fan_out_peers(&state, &headers) {
        let path = format!("/v1/users/{}", encode_component(&id));
        return blocking(move || {
            let answers = peers.fan_out(&state, "GET", &path, None)?;
            peers::owner_answer(answers).map(Json)
        })
        .await;
    }
    with_engine(&state, move |engine| match engine.profile(&id)? {
        Some(line) => Ok(Json(line)),
        None => Err(ApiError::not_found("unknown user")),
    })
    .await
}

pub async fn delete_user(State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult {
    with_engine(&state, move |engine| {
        if engine.delete_user(&id)? {
            tracing::debug!(user = %id, "user deleted through the API");
            Ok(Json(json!({ "user_id": id, "deleted": true })))
        } else {
            Err(ApiError::not_found("unknown user"))
        }
    })
    .await
}

pub async fn explain_user(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let Some(segment) = query.get("segment").cloned() else {
        return Err(ApiError::bad_request(
            "missing ?segment=<name>: the segment to explain",
        ));
    };
    if let Some(peers) = fan_out_peers(&state, &headers) {
        let path = format!(
            "/v1/users/{}/explain?segment={}",
            encode_component(&id),
            encode_component(&segment)
        );
        return blocking(move || {
            let answers = peers.fan_out(&state, "GET", &path, None)?;
            peers::owner_answer(answers).map(Json)
        })
        .await;
    }
    with_engine(&state, move |engine| {
        if engine.segment_bitmap(&segment).is_none() {
            return Err(unknown_segment(&segment, &engine.segment_names()));
        }
        match engine.explain(&id, &segment)? {
            Some(Ok(e)) => Ok(Json(e)),
            Some(Err(too_large)) => {
                tracing::debug!(%too_large, "explain refused");
                Err(
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, too_large.to_string())
                        .with("max_nodes", too_large.max_nodes.into()),
                )
            }
            None => Err(ApiError::not_found("unknown user")),
        }
    })
    .await
}

fn unknown_segment(name: &str, known: &[&str]) -> ApiError {
    ApiError::not_found(format!(
        "unknown segment {name:?}; the segments are: {}",
        known.join(", ")
    ))
}

/// Tags in rules order (implicit `first_seen`/`last_seen` are not listed: they are not
/// defined in the file and not dumped).
pub async fn list_tags(State(state): State<ApiState>) -> ApiResult {
    with_engine(&state, |engine| {
        let rules = engine.rules();
        let tags: Vec<Value> = rules
            .tags
            .iter()
            .map(|&id| {
                let node = &rules.nodes[id];
                json!({
                    "name": &*node.name,
                    "kind": &*node.kind_name,
                    "description": node.description,
                    "window": node.window_text,
                })
            })
            .collect();
        Ok(Json(json!({ "tags": tags })))
    })
    .await
}

/// `GET /v1/rules`: the rules in force as the state stores them, for a reader (the console)
/// that shows or edits them; with the zone their times are computed in.
pub async fn get_rules(State(state): State<ApiState>) -> ApiResult {
    with_engine(&state, |engine| {
        let rules = engine.rules();
        Ok(Json(json!({
            "rules": engine.rules_source()?,
            "fingerprint": rules.fingerprint,
            "time_zone": rules.zone.name(),
        })))
    })
    .await
}

pub async fn list_segments(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult {
    if let Some(peers) = fan_out_peers(&state, &headers) {
        return blocking(move || {
            let answers = peers.fan_out(&state, "GET", "/v1/segments", None)?;
            peers::all_ok(&answers)?;
            // The first pod's list (rules are per pod), with sizes summed over every pod.
            let mut combined = answers[0].body.clone();
            if let Some(list) = combined["segments"].as_array_mut() {
                for seg in list {
                    let name = seg["name"].clone();
                    let total: u64 = answers
                        .iter()
                        .filter_map(|a| {
                            a.body["segments"]
                                .as_array()?
                                .iter()
                                .find(|s| s["name"] == name)?["size"]
                                .as_u64()
                        })
                        .sum();
                    seg["size"] = json!(total);
                }
            }
            Ok(Json(combined))
        })
        .await;
    }
    with_engine(&state, |engine| {
        let rules = engine.rules().clone();
        let segments: Vec<Value> = engine
            .segment_summaries()
            .into_iter()
            .map(|s| {
                let segment = rules.segment_by_name(&s.name);
                let emit = segment.is_none_or(|seg| seg.emit);
                json!({
                    "name": s.name,
                    "description": s.description,
                    "rule": segment.map_or("", |seg| seg.when.as_str()),
                    "emit": emit,
                    "size": s.size,
                    "warming_until": s.warming_until,
                    "history_since": s.history_since,
                })
            })
            .collect();
        Ok(Json(json!({ "segments": segments })))
    })
    .await
}

/// Cursors are opaque to clients: the last internal user id of the page, tagged.
fn encode_cursor(last: u32) -> String {
    format!("u{last}")
}

fn decode_cursor(text: &str) -> Result<u32, ApiError> {
    text.strip_prefix('u')
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid cursor: pass back the next_cursor of the previous page unchanged",
            )
        })
}

fn parse_limit(text: Option<&str>) -> Result<usize, ApiError> {
    match text {
        None => Ok(DEFAULT_PAGE),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "invalid limit {t:?}: a whole number from 1 to {MAX_PAGE}"
            ))),
        },
    }
}

/// A `cursor` as this request's order reads it: internal ids (`u<id>`), or (partition, id)
/// keys (`p<partition>.<id>`) in the order combined over pods.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    Id(u32),
    Key(u32, u32),
}

fn decode_any_cursor(text: &str, keyed: bool) -> Result<Cursor, ApiError> {
    if keyed {
        peers::decode_key(text)
            .map(|(p, id)| Cursor::Key(p, id))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid cursor: pass back the next_cursor of the previous page unchanged",
                )
            })
    } else {
        decode_cursor(text).map(Cursor::Id)
    }
}

/// A page of `set` as JSON fields: in internal-id order, or (internal requests) in key order
/// with the keys beside the members.
fn page_json(
    engine: &tagstream_consumer::engine::Engine,
    set: &roaring::RoaringBitmap,
    after: Option<Cursor>,
    limit: usize,
    keyed: bool,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let mut out = serde_json::Map::new();
    if keyed {
        let after = match after {
            Some(Cursor::Key(p, id)) => Some((p, id)),
            _ => None,
        };
        let page = if limit == 0 {
            Default::default()
        } else {
            engine.page_by_partition(set, after, limit)?
        };
        let next = page
            .members
            .last()
            .filter(|_| page.more)
            .map(|(p, id, _)| peers::encode_key((*p, *id)));
        let keys: Vec<Value> = page
            .members
            .iter()
            .map(|(p, id, _)| json!([p, id]))
            .collect();
        let members: Vec<Value> = page.members.into_iter().map(|(_, _, m)| json!(m)).collect();
        out.insert("members".into(), Value::Array(members));
        out.insert("keys".into(), Value::Array(keys));
        out.insert("next_cursor".into(), json!(next));
    } else {
        let after = match after {
            Some(Cursor::Id(id)) => Some(id),
            _ => None,
        };
        let page = if limit == 0 {
            Default::default()
        } else {
            engine.page(set, after, limit)?
        };
        out.insert("members".into(), json!(page.members));
        out.insert("next_cursor".into(), json!(page.next.map(encode_cursor)));
    }
    Ok(out)
}

/// An instant query parameter: epoch milliseconds or RFC 3339.
fn instant_param(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(text) = query.get(name).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{name}={text:?} is neither epoch milliseconds nor an RFC 3339 time"),
            )
        })
}

/// `GET /v1/segments/{name}/history?since=&until=`: the segment's size sampled once a minute of
/// engine time (30 days kept); with peers, summed over every pod.
pub async fn segment_history(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let since = instant_param(&query, "since")?.unwrap_or(i64::MIN);
    let until = instant_param(&query, "until")?.unwrap_or(i64::MAX);
    if since > until {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("since ({since}) is after until ({until})"),
        ));
    }
    let points_json = |points: Vec<(i64, u64)>| {
        let points: Vec<Value> = points
            .into_iter()
            .map(|(ts, size)| json!({ "ts": ts, "size": size }))
            .collect();
        Json(json!({ "points": points }))
    };
    if let Some(peers) = fan_out_peers(&state, &headers) {
        let path = format!(
            "/v1/segments/{}/history?since={since}&until={until}",
            encode_component(&name)
        );
        return blocking(move || {
            let answers = peers.fan_out(&state, "GET", &path, None)?;
            peers::all_ok(&answers)?;
            let series: Vec<Vec<(i64, u64)>> = answers
                .iter()
                .map(|a| {
                    a.body["points"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| Some((p["ts"].as_i64()?, p["size"].as_u64()?)))
                        .collect()
                })
                .collect();
            Ok(points_json(tagstream_consumer::engine::sum_step_series(
                &series,
            )))
        })
        .await;
    }
    with_engine(&state, move |engine| {
        if engine.rules().segment_by_name(&name).is_none() {
            return Err(unknown_segment(&name, &engine.segment_names()));
        }
        Ok(points_json(engine.segment_history(&name, since, until)?))
    })
    .await
}

pub async fn segment_members(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let limit = parse_limit(query.get("limit").map(String::as_str))?;
    let fan_out = fan_out_peers(&state, &headers);
    let keyed = fan_out.is_some() || is_internal(&headers);
    let after = query
        .get("cursor")
        .filter(|c| !c.is_empty())
        .map(|c| decode_any_cursor(c, keyed))
        .transpose()?;
    if let Some(peers) = fan_out {
        let mut path = format!(
            "/v1/segments/{}/members?limit={limit}",
            encode_component(&name)
        );
        if let Some(c) = query.get("cursor").filter(|c| !c.is_empty()) {
            path.push_str(&format!("&cursor={}", encode_component(c)));
        }
        return blocking(move || {
            let answers = peers.fan_out(&state, "GET", &path, None)?;
            peers::all_ok(&answers)?;
            let (members, next) = peers::merge_pages(&answers, limit)?;
            Ok(Json(json!({ "members": members, "next_cursor": next })))
        })
        .await;
    }
    with_engine(&state, move |engine| {
        let Some(members) = engine.segment_bitmap(&name) else {
            return Err(unknown_segment(&name, &engine.segment_names()));
        };
        Ok(Json(Value::Object(page_json(
            engine, &members, after, limit, keyed,
        )?)))
    })
    .await
}

fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// The body of `POST /v1/audiences` (and, `expr` only, of its export).
struct AudienceRequest {
    expr: String,
    limit: usize,
    cursor: Option<String>,
}

fn audience_request(body: Result<Bytes, BytesRejection>) -> Result<AudienceRequest, ApiError> {
    let body = json_body(body)?;
    let Some(expr) = body.get("expr").and_then(Value::as_str) else {
        return Err(ApiError::bad_request(
            "the body needs \"expr\": a condition over segments and tags, e.g. \"vip AND NOT churned\" or \"vip AND spend_30d > 500\"",
        ));
    };
    let limit = match body.get("limit") {
        None | Some(Value::Null) => DEFAULT_PAGE,
        Some(v) => match v.as_u64() {
            Some(n) if n as usize <= MAX_PAGE => n as usize,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid limit {v}: a whole number from 0 to {MAX_PAGE}"
                )))
            }
        },
    };
    let cursor = match body.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(_) => return Err(ApiError::bad_request("\"cursor\" must be a string")),
    };
    Ok(AudienceRequest {
        expr: expr.to_string(),
        limit,
        cursor,
    })
}

fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::Invalid { column, .. } => {
            let message = e.to_string();
            let err = ApiError::bad_request(message);
            match column {
                Some(c) => err.with("column", json!(c)),
                None => err,
            }
        }
        QueryError::RulesChanged => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        QueryError::Engine(e) => e.into(),
    }
}

/// Every member of an audience on this pod (bitmaps, or the condition evaluated chunk by
/// chunk), computed on the blocking pool.
async fn audience_members(
    state: &ApiState,
    expr: String,
) -> Result<roaring::RoaringBitmap, ApiError> {
    let engine = state.engine.clone();
    blocking(move || {
        let query = AudienceQuery::resolve_in(&engine, &expr).map_err(query_error)?;
        query.members(&engine).map_err(query_error)
    })
    .await
}

pub async fn audience(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let request = audience_request(body)?;
    let fan_out = fan_out_peers(&state, &headers);
    let keyed = fan_out.is_some() || is_internal(&headers);
    let after = request
        .cursor
        .as_deref()
        .map(|c| decode_any_cursor(c, keyed))
        .transpose()?;
    if let Some(peers) = fan_out {
        let body =
            json!({ "expr": request.expr, "limit": request.limit, "cursor": request.cursor });
        let limit = request.limit;
        return blocking(move || {
            let answers = peers.fan_out(&state, "POST", "/v1/audiences", Some(&body))?;
            peers::all_ok(&answers)?;
            let size: u64 = answers.iter().filter_map(|a| a.body["size"].as_u64()).sum();
            let (members, next) = peers::merge_pages(&answers, limit)?;
            Ok(Json(
                json!({ "size": size, "members": members, "next_cursor": next }),
            ))
        })
        .await;
    }
    let set = audience_members(&state, request.expr).await?;
    let limit = request.limit;
    with_engine(&state, move |engine| {
        let mut answer = serde_json::Map::new();
        answer.insert("size".into(), json!(set.len()));
        answer.extend(page_json(engine, &set, after, limit, keyed)?);
        Ok(Json(Value::Object(answer)))
    })
    .await
}

/// Chunks an export keeps in flight between the producer and the connection: with
/// [`EXPORT_CHUNK`] users per chunk, at most this many chunks are buffered.
pub const EXPORT_BUFFERED_CHUNKS: usize = 2;

/// An NDJSON answer streamed from `produce`, which runs on the blocking pool and hands
/// chunks to its `send` (false: the client went away). The channel between the two is
/// bounded, so a slow client slows the producer instead of filling memory. An error after the
/// first byte aborts the stream (the client sees a truncated chunked body, never a clean end).
fn ndjson_stream(
    state: &ApiState,
    kind: &'static str,
    produce: impl FnOnce(&mut dyn FnMut(Vec<u8>) -> bool) -> Result<u64, String> + Send + 'static,
) -> Response {
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_BUFFERED_CHUNKS);
    let metrics_state = state.clone();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let errors = tx.clone();
        let mut send = |bytes: Vec<u8>| tx.blocking_send(Ok(Bytes::from(bytes))).is_ok();
        let result = produce(&mut send);
        if let Err(e) = &result {
            tracing::warn!(error = %e, "export aborted");
            let _ = errors.blocking_send(Err(std::io::Error::other(e.clone())));
        }
        super::observe_export(&metrics_state, kind, started.elapsed());
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Streams the set from this pod (internal-id order, or keyed order for a peer).
fn local_export(state: &ApiState, kind: &'static str, set: ExportSet, keyed: bool) -> Response {
    let engine = state.engine.clone();
    let order = if keyed {
        ExportOrder::Keyed
    } else {
        ExportOrder::Id
    };
    ndjson_stream(state, kind, move |send| {
        export_ndjson(&engine, &set, order, EXPORT_CHUNK, send).map_err(|e| e.to_string())
    })
}

/// Streams the merge of every peer's keyed export.
async fn peers_export(
    state: ApiState,
    peers: Arc<Peers>,
    kind: &'static str,
    method: &'static str,
    path: String,
    body: Option<Value>,
) -> Result<Response, ApiError> {
    let opener = state.clone();
    let streams =
        blocking(move || peers.open_exports(&opener, method, &path, body.as_ref())).await?;
    Ok(ndjson_stream(&state, kind, move |send| {
        peers::merge_exports(streams, EXPORT_CHUNK, send)
    }))
}

pub async fn segment_export(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(peers) = fan_out_peers(&state, &headers) {
        let path = format!("/v1/segments/{}/export", encode_component(&name));
        return peers_export(state, peers, "segment", "GET", path, None).await;
    }
    let check = name.clone();
    with_engine(&state, move |engine| match engine.segment_bitmap(&check) {
        Some(_) => Ok(()),
        None => Err(unknown_segment(&check, &engine.segment_names())),
    })
    .await?;
    Ok(local_export(
        &state,
        "segment",
        ExportSet::Segment(name),
        is_internal(&headers),
    ))
}

pub async fn audience_export(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let Some(expr) = body.get("expr").and_then(Value::as_str).map(str::to_string) else {
        return Err(ApiError::bad_request(
            "the body needs \"expr\": a condition over segments and tags",
        ));
    };
    if let Some(peers) = fan_out_peers(&state, &headers) {
        let body = json!({ "expr": expr });
        return peers_export(
            state,
            peers,
            "audience",
            "POST",
            "/v1/audiences/export".into(),
            Some(body),
        )
        .await;
    }
    let set = audience_members(&state, expr).await?;
    Ok(local_export(
        &state,
        "audience",
        ExportSet::Fixed(set),
        is_internal(&headers),
    ))
}

/// Reads a rules file for a reload: a regular file (a FIFO or a device could stall or flood
/// the reader) of at most [`super::MAX_BODY_BYTES`].
fn read_rules_file(path: &std::path::Path) -> Result<(String, String), ApiError> {
    use std::io::Read as _;
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("cannot read rules file {shown}: {e}; the rules in force are unchanged"),
        )
    };
    // Checked before opening: opening a FIFO for reading blocks until a writer comes.
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(ApiError::bad_request(format!(
            "{shown} is not a regular file; the rules in force are unchanged"
        )));
    }
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(super::MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() > super::MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "rules file {shown} is larger than {} bytes; the rules in force are unchanged",
                super::MAX_BODY_BYTES
            ),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("rules file {shown} is not UTF-8; the rules in force are unchanged"),
        )
    })?;
    Ok((text, shown))
}

/// `{"path": ...}` of a reload: only a file inside the configured rules file's directory (SPEC
/// §8 safety) — a relative path without `..`, that resolves (symbolic links followed) inside
/// that directory. Anything else is 400.
fn rules_file_in_dir(
    rules_path: &std::path::Path,
    path: &str,
) -> Result<std::path::PathBuf, ApiError> {
    use std::path::Component;
    let dir = rules_path.parent().unwrap_or(std::path::Path::new("."));
    let outside = || {
        ApiError::bad_request(format!(
            "path {path:?} is not a file in the rules file's directory; a reload reads only \
             the configured rules file, a body, or a file beside it"
        ))
    };
    let relative = std::path::Path::new(path);
    if path.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(outside());
    }
    let candidate = dir.join(relative);
    if let (Ok(real), Ok(real_dir)) = (candidate.canonicalize(), dir.canonicalize()) {
        if !real.starts_with(&real_dir) {
            return Err(outside());
        }
    }
    Ok(candidate)
}

/// The new rules: the request body (TOML; or JSON `{"rules": "<toml>"}` or `{"path": "<file>"}`,
/// a path relative to the configured rules file's directory), or when the body is empty the
/// configured rules file, read again.
fn new_rules_source(state: &ApiState, body: &[u8]) -> Result<(String, String), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return read_rules_file(&state.rules_path);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the rules in the body are not UTF-8"))?;
    if text.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
        if let Some(rules) = v.get("rules").and_then(Value::as_str) {
            return Ok((rules.to_string(), "<request body>".into()));
        }
        if let Some(path) = v.get("path").and_then(Value::as_str) {
            return read_rules_file(&rules_file_in_dir(&state.rules_path, path)?);
        }
        return Err(ApiError::bad_request(
            "a JSON body needs \"rules\" (the rules file's TOML text) or \"path\" (a rules file); or send no body to re-read the configured rules file",
        ));
    }
    Ok((text.to_string(), "<request body>".into()))
}

/// `?dry_run=true|false` (also `1`/`0`); absent is false.
fn parse_dry_run(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("dry_run").map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid dry_run {other:?}: true or false"
        ))),
    }
}

/// Users carried over per hold of the engine lock in a preview: the pipeline waits at most
/// this long between two batches.
const PREVIEW_CHUNK: usize = 2048;

pub async fn reload_rules(
    State(state): State<ApiState>,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let dry_run = parse_dry_run(&query)?;
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    // File reads are blocking: off the async workers.
    let reading = state.clone();
    let (source, path) = tokio::task::spawn_blocking(move || new_rules_source(&reading, &body))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the rules failed: {e}"),
            )
        })??;
    let compile_source = source.clone();
    let compiled = tokio::task::spawn_blocking(move || RuleSet::compile(&compile_source, &path))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rules compiler failed: {e}"),
            )
        })?;
    let rules = match compiled {
        Ok(rules) => Arc::new(rules),
        Err(errors) => {
            if !dry_run {
                state
                    .metrics
                    .rules_reloads
                    .with_label_values(&["rejected"])
                    .inc();
            }
            let list: Vec<Value> = errors
                .errors
                .iter()
                .map(|e| {
                    json!({
                        "file": errors.path,
                        "line": e.line,
                        "column": e.column,
                        "rule": e.rule,
                        "message": e.message,
                    })
                })
                .collect();
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the new rules have {} error(s); the rules in force are unchanged",
                    list.len()
                ),
            )
            .with("errors", Value::Array(list)));
        }
    };
    if dry_run {
        return preview(&state, rules).await;
    }
    let fingerprint = rules.fingerprint.clone();
    let metrics = state.metrics.clone();
    with_engine(&state, move |engine| {
        let report = engine.reload(rules, &source)?;
        if report.changed {
            metrics.rules_reloads.with_label_values(&["applied"]).inc();
            metrics.record_batch(&report.report);
            metrics.rules_loaded_timestamp_seconds.set(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
            );
            tracing::info!(
                users = report.users,
                transitions = report.report.transitions,
                "rules reloaded"
            );
        }
        let warming: Vec<Value> = report
            .warming
            .iter()
            .map(
                |(tag, since, until)| json!({ "tag": tag, "since": since, "warming_until": until }),
            )
            .collect();
        Ok(Json(json!({
            "reloaded": report.changed,
            "fingerprint": fingerprint,
            "users": report.users,
            "transitions": report.report.transitions,
            "warming": warming,
        })))
    })
    .await
}

/// `POST /v1/rules/reload?dry_run=true`: what the reload would do, computed by the reload's
/// own carry-over, a chunk of users per hold of the engine lock; nothing is written.
async fn preview(state: &ApiState, rules: Arc<RuleSet>) -> ApiResult {
    let engine = state.engine.clone();
    let started = std::time::Instant::now();
    let fingerprint = rules.fingerprint.clone();
    let report = tokio::task::spawn_blocking(move || {
        let mut preview = engine.lock().preview_start(rules);
        while !engine.lock().preview_step(&mut preview, PREVIEW_CHUNK)? {}
        Ok::<_, tagstream_consumer::ConsumerError>(preview.finish())
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("request worker failed: {e}"),
        )
    })??;
    super::observe_preview(state, started.elapsed());
    Ok(Json(json!({
        "dry_run": true,
        "changed": report.changed,
        "fingerprint": fingerprint,
        "users": report.users,
        "segments": report.segments,
        "warming": report.warming,
    })))
}
