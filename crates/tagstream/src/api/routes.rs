//! The endpoints. Each parses and checks its input completely before touching the engine.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tagstream_consumer::audience::{Audience, AudienceError};
use tagstream_rules::rules::RuleSet;

use super::{status, with_engine, ApiError, ApiResult, ApiState};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 10_000;

pub async fn healthz() -> Json<Value> {
    status("ok")
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

pub async fn get_user(State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult {
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
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let Some(segment) = query.get("segment").cloned() else {
        return Err(ApiError::bad_request(
            "missing ?segment=<name>: the segment to explain",
        ));
    };
    with_engine(&state, move |engine| {
        if engine.segment_bitmap(&segment).is_none() {
            return Err(unknown_segment(&segment, &engine.segment_names()));
        }
        match engine.explain(&id, &segment)? {
            Some(e) => Ok(Json(e)),
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

pub async fn list_segments(State(state): State<ApiState>) -> ApiResult {
    with_engine(&state, |engine| {
        let rules = engine.rules().clone();
        let segments: Vec<Value> = engine
            .segment_summaries()
            .into_iter()
            .map(|s| {
                let emit = rules.segment_by_name(&s.name).is_none_or(|seg| seg.emit);
                json!({
                    "name": s.name,
                    "description": s.description,
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

pub async fn segment_members(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let limit = parse_limit(query.get("limit").map(String::as_str))?;
    let after = query
        .get("cursor")
        .filter(|c| !c.is_empty())
        .map(|c| decode_cursor(c))
        .transpose()?;
    with_engine(&state, move |engine| {
        let Some(members) = engine.segment_bitmap(&name) else {
            return Err(unknown_segment(&name, &engine.segment_names()));
        };
        let page = engine.page(&members, after, limit)?;
        Ok(Json(json!({
            "members": page.members,
            "next_cursor": page.next.map(encode_cursor),
        })))
    })
    .await
}

fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

pub async fn audience(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = json_body(body)?;
    let Some(expr) = body.get("expr").and_then(Value::as_str) else {
        return Err(ApiError::bad_request(
            "the body needs \"expr\": a set expression over segments, e.g. \"vip AND NOT churned\"",
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
    let after = match body.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(decode_cursor(c)?),
        Some(_) => return Err(ApiError::bad_request("\"cursor\" must be a string")),
    };
    let audience = Audience::parse(expr).map_err(audience_error)?;
    with_engine(&state, move |engine| {
        let known = engine.segment_names().join(", ");
        let set = audience
            .evaluate(&|name| engine.segment_bitmap(name), &engine.all_users())
            .map_err(|e| match e {
                AudienceError::UnknownSegment(name) => ApiError::bad_request(format!(
                    "unknown segment {name:?} in the expression; the segments are: {known}"
                )),
                other => audience_error(other),
            })?;
        let page = if limit == 0 {
            Default::default()
        } else {
            engine.page(&set, after, limit)?
        };
        Ok(Json(json!({
            "size": set.len(),
            "members": page.members,
            "next_cursor": page.next.map(encode_cursor),
        })))
    })
    .await
}

fn audience_error(e: AudienceError) -> ApiError {
    match &e {
        AudienceError::Syntax { position, .. } => {
            ApiError::bad_request(format!("invalid expression: {e}"))
                .with("column", json!(position))
        }
        _ => ApiError::bad_request(format!("invalid expression: {e}")),
    }
}

fn read_rules_file(path: &std::path::Path) -> Result<(String, String), ApiError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("cannot read rules file {shown}: {e}; the rules in force are unchanged"),
        )
    })?;
    Ok((text, shown))
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
            let dir = state
                .rules_path
                .parent()
                .unwrap_or(std::path::Path::new("."));
            return read_rules_file(&dir.join(path));
        }
        return Err(ApiError::bad_request(
            "a JSON body needs \"rules\" (the rules file's TOML text) or \"path\" (a rules file); or send no body to re-read the configured rules file",
        ));
    }
    Ok((text.to_string(), "<request body>".into()))
}

pub async fn reload_rules(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let (source, path) = new_rules_source(&state, &body)?;
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
            state
                .metrics
                .rules_reloads
                .with_label_values(&["rejected"])
                .inc();
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
