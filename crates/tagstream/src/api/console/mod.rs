//! The web console (SPEC §8 rev 2, "Console"): one page of plain HTML, CSS and JavaScript,
//! embedded in the binary at compile time, so it needs no Node at build time, no separate
//! server and no internet access at run time. It is a client of the `/v1` API.
//!
//! The page and its assets are open, like `/healthz`: they hold no data. Every data request
//! the page makes goes to `/v1` with the bearer token the user typed, kept in the browser
//! tab's session storage only. The content security policy lets the page load nothing but
//! its own files and talk to nothing but this server.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// Everything the page may load or reach: its own origin, nothing inline, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary: revalidate rather than run a stale script against a
    // newer API after an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// The console's routes (open, outside the `/v1` table of [`super::ROUTES`]): the page and its
/// two assets.
pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    let page = || get(|| async { asset("text/html; charset=utf-8", INDEX) });
    axum::Router::new()
        .route("/ui", page())
        .route("/ui/", page())
        .route(
            "/ui/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
