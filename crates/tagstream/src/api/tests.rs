//! The route table against the OpenAPI document, and where the API token comes from.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{token_from, OPENAPI, ROUTES, TOKEN_ENV};

fn document() -> openapiv3::OpenAPI {
    serde_json::from_str(OPENAPI).unwrap_or_else(|e| panic!("openapi.json is not OpenAPI 3: {e}"))
}

/// (METHOD, path) of every operation in the document.
fn documented() -> BTreeSet<(String, String)> {
    let doc = document();
    let mut out = BTreeSet::new();
    for (path, item) in doc.paths.paths.iter() {
        let item = item.as_item().expect("paths are inline, not $ref");
        for (method, _) in item.iter() {
            out.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let documented = documented();
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes served but not in openapi.json: {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        extra.is_empty(),
        "routes in openapi.json that the router does not serve: {extra:?}"
    );
}

#[test]
fn the_document_is_complete_where_clients_need_it() {
    let doc = document();
    assert!(doc.openapi.starts_with("3."), "{}", doc.openapi);
    let raw: Value = serde_json::from_str(OPENAPI).unwrap();
    for r in ROUTES {
        let item = doc.paths.paths[r.path].as_item().unwrap();
        let op = item
            .iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(r.method))
            .map(|(_, op)| op)
            .unwrap();
        let what = format!("{} {}", r.method, r.path);
        assert!(op.operation_id.is_some(), "{what}: no operationId");
        assert!(op.summary.is_some(), "{what}: no summary");
        assert!(
            op.responses
                .responses
                .contains_key(&openapiv3::StatusCode::Code(200)),
            "{what}: no 200 answer"
        );
        // Every `{param}` of the path template is declared as a path parameter.
        let declared: BTreeSet<String> = item
            .parameters
            .iter()
            .chain(op.parameters.iter())
            .filter_map(|p| match p.as_item()? {
                openapiv3::Parameter::Path { parameter_data, .. } => {
                    Some(parameter_data.name.clone())
                }
                _ => None,
            })
            .collect();
        let in_template: BTreeSet<String> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_string)
            .collect();
        assert_eq!(declared, in_template, "{what}: path parameters");
        // Open routes say so (an empty security list); the others use the bearer scheme.
        let open = raw["paths"][r.path][r.method.to_ascii_lowercase()]["security"]
            == serde_json::json!([]);
        assert_eq!(
            open, r.open,
            "{what}: `security` does not match whether the route needs the token"
        );
        if !r.open {
            assert!(
                op.responses
                    .responses
                    .contains_key(&openapiv3::StatusCode::Code(401)),
                "{what}: no 401 answer"
            );
        }
    }
    // Every `$ref` points at something the document defines.
    let mut refs = Vec::new();
    collect_refs(&raw, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(raw.pointer(pointer).is_some(), "dangling $ref {r}");
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn the_token_comes_from_one_place_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-file\nignored\n").unwrap();
    let t = token_from(Some(&file), None).unwrap();
    assert_eq!(t.as_deref(), Some("from-file"));
    let t = token_from(None, Some(" from-env \n".into())).unwrap();
    assert_eq!(t.as_deref(), Some("from-env"));
    assert_eq!(token_from(None, None).unwrap(), None);
    // An empty variable is no configuration at all, so the file is used.
    let t = token_from(Some(&file), Some("  ".into())).unwrap();
    assert_eq!(t.as_deref(), Some("from-file"));
    // Both: an error naming both, whichever would have won.
    let e = token_from(Some(&file), Some("from-env".into())).unwrap_err();
    assert!(
        e.contains(TOKEN_ENV)
            && e.contains("api.token_file")
            && e.contains(&file.display().to_string()),
        "{e}"
    );
    assert!(
        !e.contains("from-env") && !e.contains("from-file"),
        "the error must not print a token: {e}"
    );
    std::fs::write(&file, "\n").unwrap();
    assert!(token_from(Some(&file), None)
        .unwrap_err()
        .contains("is empty"));
}

#[test]
fn a_store_write_error_answers_503_with_a_json_error() {
    use axum::response::IntoResponse;
    let refused =
        tagstream_consumer::ConsumerError::Store(tagstream_state::StoreError::CreateDir {
            path: "/state".into(),
            source: std::io::Error::from_raw_os_error(28),
        });
    let response = super::ApiError::from(refused).into_response();
    assert_eq!(
        response.status(),
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    );
}
