//! The HTTP API of `tagstream run`, through a real HTTP client (ureq) against the real binary
//! (file source, event clock, RocksDB state), compared with `tagstream dump` of the same state:
//! profiles, segment sizes and members, audiences (proptest against naive set algebra),
//! explain, auth, errors, delete, rules reload, and `/metrics` parsed by a Prometheus
//! text-format parser.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{bin, fetch_metrics, metric_sum, spawn_run};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";

fn rules_source() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/rules/ecommerce.toml"),
    )
    .unwrap()
}

struct Service {
    child: Option<Child>,
    log: PathBuf,
    base: String,
}

impl Service {
    fn start(dir: &Path) -> Service {
        let log = dir.join(format!(
            "log-{}.txt",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = spawn_run(&dir.join("tagstream.toml"), &log);
        let mut service = Service {
            child: Some(child),
            log,
            base: String::new(),
        };
        let addr = service.wait_for("the api to listen", |s| common::api_address(&s.log));
        service.base = format!("http://{addr}");
        service
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for<T>(&self, what: &str, mut f: impl FnMut(&Service) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (status, JSON body) of a request with the token.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call_with(method, path, body, Some(TOKEN))
    }

    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = ureq::request(method, &format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(b),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path} answered non-JSON ({e}): {text}"));
        (status, value)
    }

    fn get(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    fn metrics(&self) -> prometheus_parse::Scrape {
        fetch_metrics(&self.base)
    }

    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        common::sigterm(&child);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{}", self.log_text());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn setup(dir: &Path, events: usize) -> usize {
    common::write_file_service(dir, events, &rules_source(), TOKEN)
}

/// The dump, by user id.
fn dump(dir: &Path) -> BTreeMap<String, Value> {
    let out = Command::new(bin())
        .args(["dump", "--state-dir", dir.join("state").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["user_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn members_of(dump: &BTreeMap<String, Value>, segment: &str) -> BTreeSet<String> {
    dump.iter()
        .filter(|(_, v)| {
            v["segments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == segment)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Every member of a segment, page by page.
fn all_pages(service: &Service, path: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit={limit}&cursor={c}"),
            None => format!("{path}?limit={limit}"),
        };
        let page = service.get(&url);
        let members = page["members"].as_array().unwrap();
        assert!(members.len() <= limit);
        out.extend(members.iter().map(|m| m.as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

fn segments(service: &Service) -> Vec<Value> {
    service.get("/v1/segments")["segments"]
        .as_array()
        .unwrap()
        .clone()
}

fn transitions(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Starts the service on a generated stream and waits until every line is accounted for.
fn consumed(dir: &Path) -> (Service, usize) {
    let lines = setup(dir, 6000);
    let service = Service::start(dir);
    service.wait_for("every event to be consumed", |s| {
        let m = s.metrics();
        (metric_sum(&m, "tagstream_events_total") as usize == lines).then_some(())
    });
    (service, lines)
}

#[test]
fn reads_equal_the_dump_and_metrics_move() {
    let dir = tempfile::tempdir().unwrap();
    let (service, lines) = consumed(dir.path());

    // Open endpoints, and readiness once the file partition is assigned.
    assert_eq!(service.call_with("GET", "/healthz", None, None).0, 200);
    assert_eq!(service.call_with("GET", "/readyz", None, None).0, 200);

    // Every SPEC §9 metric is exported, parsed by a Prometheus text-format parser. Gauges
    // (engine time, segment sizes) are refreshed by the next clock tick.
    let m = service.wait_for("the gauges", |s| {
        let m = s.metrics();
        (metric_sum(&m, "tagstream_segment_members") > 0.0
            && metric_sum(&m, "tagstream_engine_time_seconds") > 0.0)
            .then_some(m)
    });
    let names: BTreeSet<&str> = m.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "tagstream_events_total",
        "tagstream_batch_apply_seconds_count",
        "tagstream_event_to_transition_seconds_count",
        "tagstream_engine_time_seconds",
        "tagstream_segment_members",
        "tagstream_transitions_total",
        "tagstream_timers_pending",
        "tagstream_timers_fired_total",
        "tagstream_outbox_backlog",
        "tagstream_state_size_bytes",
        "tagstream_transition_event_lag_seconds_count",
        "tagstream_ingest_to_commit_seconds_count",
        "tagstream_process_start_time_seconds",
        "tagstream_ready",
    ] {
        assert!(names.contains(name), "{name} missing; have {names:?}");
    }
    assert_eq!(metric_sum(&m, "tagstream_events_total") as usize, lines);
    assert!(metric_sum(&m, "tagstream_batch_apply_seconds_count") >= 1.0);
    assert!(metric_sum(&m, "tagstream_transitions_total") >= 1.0);
    assert!(metric_sum(&m, "tagstream_transition_event_lag_seconds_count") >= 1.0);
    assert!(metric_sum(&m, "tagstream_event_to_transition_seconds_count") >= 1.0);
    assert_eq!(metric_sum(&m, "tagstream_ready"), 1.0);
    let sizes_from_metrics = m;
    // Dead letters of the generated stream, by reason, add up.
    let dead = metric_sum(&sizes_from_metrics, "tagstream_dead_letters_total");
    let dead_outcome: f64 = sizes_from_metrics
        .samples
        .iter()
        .filter(|s| {
            s.metric == "tagstream_events_total" && s.labels.get("outcome") == Some("dead_letter")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(dead, dead_outcome);

    // Auth: every /v1 request needs the token.
    let (status, body) = service.call_with("GET", "/v1/segments", None, None);
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("bearer token"));
    assert_eq!(
        service
            .call_with("GET", "/v1/segments", None, Some("wrong"))
            .0,
        401
    );
    assert_eq!(
        service
            .call_with("GET", "/v1/users/u1", None, Some("s3cret-tokeX"))
            .0,
        401
    );

    // The OpenAPI document is open; every route it lists is served (not 404/405).
    let (status, doc) = service.call_with("GET", "/v1/openapi.json", None, None);
    assert_eq!(status, 200, "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/v1/tags") && paths.contains_key("/v1/openapi.json"));
    for path in paths.keys() {
        // A routed path answers an unsupported method with 405, an unknown path with 404: no
        // side effect needed to tell them apart.
        let concrete = path
            .replace("{id}", "no-such-user")
            .replace("{name}", "no-such-segment");
        let (status, body) = service.call_with("OPTIONS", &concrete, None, Some(TOKEN));
        assert_eq!(status, 405, "{path} is documented but not routed: {body}");
    }

    // Tags in rules order, with kind, description and window as written.
    let rules: toml::Table = rules_source().parse().unwrap();
    let tags = service.get("/v1/tags");
    let listed_tags = tags["tags"].as_array().unwrap();
    let written = rules["tag"].as_array().unwrap();
    assert_eq!(listed_tags.len(), written.len());
    for (api, file) in listed_tags.iter().zip(written) {
        assert_eq!(api["name"].as_str(), file["name"].as_str());
        assert_eq!(api["kind"].as_str(), file["kind"].as_str());
        assert_eq!(
            api["window"].as_str(),
            file.get("window").and_then(|w| w.as_str()),
            "{api}"
        );
        assert_eq!(
            api["description"].as_str(),
            Some(
                file.get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
            )
        );
    }
    assert!(
        listed_tags.iter().any(|t| t["description"] != ""),
        "the example rules describe some tags"
    );
    // Segments carry description and emit (default true).
    for (api, file) in segments(&service)
        .iter()
        .zip(rules["segment"].as_array().unwrap())
    {
        assert_eq!(api["name"].as_str(), file["name"].as_str());
        assert_eq!(
            api["emit"].as_bool(),
            Some(file.get("emit").and_then(|e| e.as_bool()).unwrap_or(true))
        );
        assert_eq!(
            api["description"].as_str(),
            Some(
                file.get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
            )
        );
    }

    // Capture everything the API says, then compare with the dump of the stopped service.
    let listed = segments(&service);
    // Size history: one point per minute of engine time at most, oldest first, the newest equal
    // to the live size; `since`/`until` select a range; bad parameters are 400, an unknown
    // segment 404.
    for seg in &listed {
        let name = seg["name"].as_str().unwrap();
        let points = service.get(&format!("/v1/segments/{name}/history"))["points"]
            .as_array()
            .unwrap()
            .clone();
        assert!(!points.is_empty(), "{name}: no history");
        let ts: Vec<i64> = points.iter().map(|p| p["ts"].as_i64().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "{name}: {ts:?}");
        assert!(ts.iter().all(|t| t % 60_000 == 0), "{name}: {ts:?}");
        assert_eq!(
            points.last().unwrap()["size"],
            seg["size"],
            "{name}: {points:?}"
        );
        let (first, last) = (ts[0], *ts.last().unwrap());
        let recent = service.get(&format!(
            "/v1/segments/{name}/history?since={last}&until={last}"
        ));
        assert_eq!(recent["points"].as_array().unwrap().len(), 1, "{recent}");
        let none = service.get(&format!("/v1/segments/{name}/history?until={}", first - 1));
        assert!(none["points"].as_array().unwrap().is_empty(), "{none}");
    }
    assert_eq!(
        service
            .call(
                "GET",
                "/v1/segments/vip_skincare/history?since=yesterday",
                None
            )
            .0,
        400
    );
    assert_eq!(
        service
            .call("GET", "/v1/segments/no_such_segment/history", None)
            .0,
        404
    );
    let mut pages = BTreeMap::new();
    for (i, seg) in listed.iter().enumerate() {
        let name = seg["name"].as_str().unwrap();
        let members = all_pages(&service, &format!("/v1/segments/{name}/members"), 3 + i * 7);
        pages.insert(name.to_string(), members);
    }
    let user_ids: Vec<String> = {
        let out = Command::new(bin())
            .args(["gen", "--users", "300", "--events", "6000", "--seed", "11"])
            .output()
            .unwrap();
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for l in String::from_utf8(out.stdout).unwrap().lines() {
            if let Ok(v) = serde_json::from_str::<Value>(l) {
                if let Some(u) = v["user_id"].as_str() {
                    ids.insert(u.to_string());
                }
            }
        }
        ids.into_iter().collect()
    };
    let mut profiles = BTreeMap::new();
    for id in &user_ids {
        let (status, v) = service.call("GET", &format!("/v1/users/{id}"), None);
        match status {
            200 => {
                profiles.insert(id.clone(), v);
            }
            404 => assert!(v["error"].is_string()),
            other => panic!("GET user {id}: {other} {v}"),
        }
    }
    let (status, body) = service.call("GET", "/v1/users/no-such-user", None);
    assert_eq!((status, body["error"].as_str().is_some()), (404, true));

    // Explain agrees with membership for a sample of users and every segment.
    let mut explained = Vec::new();
    for id in user_ids.iter().step_by(37) {
        for seg in &listed {
            let name = seg["name"].as_str().unwrap();
            let (status, e) = service.call(
                "GET",
                &format!("/v1/users/{id}/explain?segment={name}"),
                None,
            );
            if status == 404 {
                continue;
            }
            assert_eq!(status, 200, "{e}");
            assert!(
                e["tree"]["expr"].is_string() && e["tags"].is_object(),
                "{e}"
            );
            assert_eq!(e["member"], e["tree"]["value"] == json!(true));
            explained.push((id.clone(), name.to_string(), e["member"].as_bool().unwrap()));
        }
    }
    assert!(!explained.is_empty());
    let (status, e) = service.call("GET", "/v1/users/u1/explain?segment=nope", None);
    assert_eq!(status, 404, "{e}");
    assert!(e["error"].as_str().unwrap().contains("vip_skincare"));
    assert_eq!(service.call("GET", "/v1/users/u1/explain", None).0, 400);

    // Errors are JSON 4xx.
    for (method, path, body, want) in [
        (
            "GET",
            "/v1/segments/vip_skincare/members?cursor=zzz",
            None,
            400,
        ),
        (
            "GET",
            "/v1/segments/vip_skincare/members?limit=0",
            None,
            400,
        ),
        (
            "GET",
            "/v1/segments/vip_skincare/members?limit=abc",
            None,
            400,
        ),
        ("GET", "/v1/segments/nope/members", None, 404),
        ("POST", "/v1/audiences", Some("{not json"), 400),
        ("POST", "/v1/audiences", Some(r#"{"limit":3}"#), 400),
        (
            "POST",
            "/v1/audiences",
            Some(r#"{"expr":"vip_skincare AND"}"#),
            400,
        ),
        (
            "POST",
            "/v1/audiences",
            Some(r#"{"expr":"vip_skincare AND nope"}"#),
            400,
        ),
        (
            "POST",
            "/v1/audiences",
            Some(r#"{"expr":"vip_skincare","cursor":"u"}"#),
            400,
        ),
        (
            "POST",
            "/v1/audiences",
            Some(r#"{"expr":"vip_skincare","limit":-1}"#),
            400,
        ),
        ("GET", "/v1/nothing-here", None, 404),
        ("PUT", "/v1/segments", None, 405),
    ] {
        let (status, v) = service.call(method, path, body);
        assert_eq!(status, want, "{method} {path} {body:?}: {v}");
        assert!(v["error"].is_string(), "{v}");
    }
    // The server answers 413 as soon as the body passes the limit and closes the connection; a
    // client still writing the rest may then see a reset instead of the answer, so a transport
    // error is tried again (a few times: the race is rare).
    let oversized = format!(r#"{{"expr":"{}"}}"#, "a".repeat(5 << 20));
    let status = (0..5)
        .find_map(|_| {
            let request = ureq::post(&format!("{}/v1/audiences", service.base))
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .set("Content-Type", "application/json");
            match request.send_string(&oversized) {
                Ok(r) | Err(ureq::Error::Status(_, r)) => Some(r.status()),
                Err(ureq::Error::Transport(_)) => None,
            }
        })
        .expect("five oversized requests all ended in a transport error");
    assert_eq!(status, 413);
    let (_, syntax) = service.call("POST", "/v1/audiences", Some(r#"{"expr":"(vip_skincare"}"#));
    assert!(syntax["column"].is_number(), "{syntax}");

    // Audiences: random expressions, against naive set algebra over the dump (below).
    let names: Vec<String> = listed
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    // Generated by proptest's strategy; checked after the stop, against the dump.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = expr_strategy(names.len());
    let mut audiences = Vec::new();
    for _ in 0..48 {
        let e = strategy.new_tree(&mut runner).unwrap().current();
        let text = e.render(&names);
        let (status, v) = service.call(
            "POST",
            "/v1/audiences",
            Some(&json!({ "expr": text, "limit": 10_000 }).to_string()),
        );
        assert_eq!(status, 200, "{text}: {v}");
        audiences.push((e, v));
    }
    // A paged audience returns every member exactly once.
    let mut paged = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let (_, v) = service.call(
            "POST",
            "/v1/audiences",
            Some(&json!({"expr": "NOT vip_skincare", "limit": 17, "cursor": cursor}).to_string()),
        );
        paged.extend(v["members"].as_array().unwrap().iter().cloned());
        if v["next_cursor"].is_null() {
            assert_eq!(v["size"].as_u64().unwrap() as usize, paged.len());
            break;
        }
        cursor = v["next_cursor"].clone();
    }

    // `dump` works beside the running service (read-only, without the lock).
    let live = dump(dir.path());
    service.stop();
    let dump = dump(dir.path());
    assert_eq!(live, dump);
    assert_eq!(profiles.len(), dump.len());
    for (id, line) in &dump {
        assert_eq!(profiles.get(id), Some(line), "profile of {id}");
    }
    for seg in &listed {
        let name = seg["name"].as_str().unwrap();
        let want = members_of(&dump, name);
        assert_eq!(seg["size"].as_u64().unwrap() as usize, want.len(), "{name}");
        let got = &pages[name];
        assert_eq!(got.len(), want.len(), "{name}: duplicates or gaps in pages");
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), want, "{name}");
        let gauge = sizes_from_metrics.samples.iter().find(|s| {
            s.metric == "tagstream_segment_members" && s.labels.get("segment") == Some(name)
        });
        if let Some(g) = gauge {
            assert_eq!(g.value, prometheus_parse::Value::Gauge(want.len() as f64));
        }
    }
    for (id, segment, member) in explained {
        assert_eq!(member, members_of(&dump, &segment).contains(&id));
    }
    let everyone: BTreeSet<String> = dump.keys().cloned().collect();
    let sets: Vec<BTreeSet<String>> = names.iter().map(|n| members_of(&dump, n)).collect();
    for (e, v) in audiences {
        let want = e.eval(&sets, &everyone);
        let got: BTreeSet<String> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            v["size"].as_u64().unwrap() as usize,
            want.len(),
            "{}",
            e.render(&names)
        );
        assert_eq!(got, want, "{}", e.render(&names));
    }
    let not_vip: BTreeSet<String> = everyone.difference(&sets[0]).cloned().collect();
    let paged: Vec<String> = paged
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    assert_eq!(paged.len(), not_vip.len());
    assert_eq!(paged.into_iter().collect::<BTreeSet<_>>(), not_vip);
}

/// A random audience expression over segment indices.
#[derive(Debug, Clone)]
enum Expr {
    Seg(usize),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Expr {
    fn render(&self, names: &[String]) -> String {
        match self {
            Expr::Seg(i) => names[*i].clone(),
            Expr::Not(e) => format!("NOT ({})", e.render(names)),
            Expr::And(a, b) => format!("({}) and ({})", a.render(names), b.render(names)),
            Expr::Or(a, b) => format!("({}) OR ({})", a.render(names), b.render(names)),
        }
    }

    fn eval(&self, sets: &[BTreeSet<String>], everyone: &BTreeSet<String>) -> BTreeSet<String> {
        match self {
            Expr::Seg(i) => sets[*i].clone(),
            Expr::Not(e) => everyone
                .difference(&e.eval(sets, everyone))
                .cloned()
                .collect(),
            Expr::And(a, b) => a
                .eval(sets, everyone)
                .intersection(&b.eval(sets, everyone))
                .cloned()
                .collect(),
            Expr::Or(a, b) => a
                .eval(sets, everyone)
                .union(&b.eval(sets, everyone))
                .cloned()
                .collect(),
        }
    }
}

fn expr_strategy(segments: usize) -> impl Strategy<Value = Expr> {
    let leaf = (0..segments).prop_map(Expr::Seg);
    leaf.prop_recursive(4, 16, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
        ]
    })
}

#[test]
fn delete_and_reload_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = consumed(dir.path());
    let before = segments(&service);
    let vip = all_pages(&service, "/v1/segments/vip_skincare/members", 1000);
    assert!(
        !vip.is_empty(),
        "the generated stream has vip_skincare members"
    );

    // Delete: exits with cause `delete`, gone from the bitmaps and the profile lookups.
    let victim = vip[0].clone();
    let profile = service.get(&format!("/v1/users/{victim}"));
    let (status, body) = service.call("DELETE", &format!("/v1/users/{victim}"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        service.call("GET", &format!("/v1/users/{victim}"), None).0,
        404
    );
    assert_eq!(
        service
            .call("DELETE", &format!("/v1/users/{victim}"), None)
            .0,
        404
    );
    let after = segments(&service);
    let victim_segments: Vec<&str> = profile["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for (b, a) in before.iter().zip(&after) {
        let expected = b["size"].as_u64().unwrap()
            - u64::from(victim_segments.contains(&b["name"].as_str().unwrap()));
        assert_eq!(a["size"].as_u64().unwrap(), expected, "{}", a["name"]);
    }
    let exits: BTreeSet<String> = service.wait_for("delete exits in the sink", |_| {
        let exits: BTreeSet<String> = transitions(dir.path())
            .into_iter()
            .filter(|t| t["cause"] == "delete" && t["user_id"] == victim.as_str())
            .map(|t| {
                assert_eq!(t["type"], "segment_exit");
                t["segment"].as_str().unwrap().to_string()
            })
            .collect();
        (exits.len() == victim_segments.len()).then_some(exits)
    });
    assert_eq!(
        exits,
        victim_segments.iter().map(|s| s.to_string()).collect()
    );

    // A bad rules file is rejected with positions, and the old rules stay in force.
    let good = rules_source();
    std::fs::write(
        dir.path().join("rules.toml"),
        format!("{good}\n[[segment]]\nname = \"broken\"\nwhen = \"no_such_tag > 1\"\n"),
    )
    .unwrap();
    let (status, body) = service.call("POST", "/v1/rules/reload", None);
    assert_eq!(status, 422, "{body}");
    let err = &body["errors"][0];
    assert!(
        err["line"].as_u64().unwrap() > good.lines().count() as u64,
        "{body}"
    );
    assert!(
        err["column"].is_number() && err["message"].is_string(),
        "{body}"
    );
    assert_eq!(err["rule"], "segment 'broken'");
    assert_eq!(segments(&service), after);
    let (status, body) = service.call("POST", "/v1/rules/reload", Some("this is not toml ="));
    assert_eq!(status, 422, "{body}");

    // Reloading the same rules changes nothing (from the configured file, or a path, or text).
    std::fs::write(dir.path().join("rules.toml"), &good).unwrap();
    let (status, body) = service.call("POST", "/v1/rules/reload", None);
    assert_eq!((status, &body["reloaded"]), (200, &json!(false)), "{body}");
    std::fs::write(dir.path().join("same.toml"), &good).unwrap();
    let (status, body) = service.call("POST", "/v1/rules/reload", Some(r#"{"path":"same.toml"}"#));
    assert_eq!((status, &body["reloaded"]), (200, &json!(false)), "{body}");
    let (status, body) = service.call(
        "POST",
        "/v1/rules/reload",
        Some(&json!({ "rules": good }).to_string()),
    );
    assert_eq!((status, &body["reloaded"]), (200, &json!(false)), "{body}");
    let (status, body) = service.call(
        "POST",
        "/v1/rules/reload",
        Some(r#"{"path":"missing.toml"}"#),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        service
            .call("POST", "/v1/rules/reload", Some(r#"{"x":1}"#))
            .0,
        400
    );
    // Only files beside the configured rules file (SPEC §8 safety): not an absolute path, not
    // `..`, not a link out of the directory, not a FIFO (which would stall the reader); the
    // answer never shows what such a file holds.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.toml"), "password = 'hunter2'\n").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.toml"),
        dir.path().join("link.toml"),
    )
    .unwrap();
    let fifo = dir.path().join("fifo.toml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let absolute = outside.path().join("secret.toml");
    for path in [
        absolute.to_str().unwrap(),
        "../secret.toml",
        "sub/../../secret.toml",
        "link.toml",
        "fifo.toml",
        "",
    ] {
        for query in ["", "?dry_run=true"] {
            let (status, body) = service.call(
                "POST",
                &format!("/v1/rules/reload{query}"),
                Some(&json!({ "path": path }).to_string()),
            );
            assert_eq!(status, 400, "{path:?}: {body}");
            assert!(!body.to_string().contains("hunter2"), "{body}");
        }
    }

    // A new segment over existing tags enters its members at once (cause `rules`); a new
    // windowed tag starts empty and says until when.
    std::fs::write(
        dir.path().join("rules.toml"),
        format!(
            "{good}\n[[tag]]\nname = \"views_3d_new\"\nkind = \"count\"\nevent = \"view\"\nwindow = \"3d\"\n\n[[segment]]\nname = \"api_added\"\nwhen = \"orders_90d >= 2\"\n\n[[segment]]\nname = \"api_warming\"\nwhen = \"views_3d_new >= 1\"\n"
        ),
    )
    .unwrap();
    let (status, body) = service.call("POST", "/v1/rules/reload", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reloaded"], true);
    assert_eq!(body["warming"][0]["tag"], "views_3d_new");
    // Times are epoch milliseconds, like the rest of the API: the reload happens at the
    // engine time, and a 3-day window is complete within 3 days and a bit after it.
    let since = body["warming"][0]["since"]
        .as_i64()
        .expect("since in epoch ms");
    let until = body["warming"][0]["warming_until"]
        .as_i64()
        .expect("warming_until in epoch ms");
    assert!(until > since && until - since <= 4 * 86_400_000, "{body}");
    for key in ["fingerprint", "users", "transitions"] {
        assert!(
            !body[key].is_null(),
            "the reload answer documents {key}: {body}"
        );
    }
    let listed = segments(&service);
    let added = listed.iter().find(|s| s["name"] == "api_added").unwrap();
    let warming = listed.iter().find(|s| s["name"] == "api_warming").unwrap();
    assert!(added["warming_until"].is_null());
    assert_eq!(warming["warming_until"].as_i64(), Some(until), "{warming}");
    assert!(warming["history_since"].is_null(), "{warming}");
    // The new tag is in the catalogue, with its window as written.
    let tags = service.get("/v1/tags");
    let new_tag = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "views_3d_new")
        .cloned();
    assert_eq!(
        new_tag,
        Some(json!({"name":"views_3d_new","kind":"count","description":"","window":"3d"}))
    );
    assert_eq!(warming["size"], 0);
    let size = added["size"].as_u64().unwrap() as usize;
    assert!(size > 0, "the generated stream has repeat buyers");
    let enters: BTreeSet<String> = service.wait_for("rules enters in the sink", |_| {
        let enters: BTreeSet<String> = transitions(dir.path())
            .into_iter()
            .filter(|t| t["cause"] == "rules")
            .map(|t| {
                assert_eq!(
                    (t["type"].as_str(), t["segment"].as_str()),
                    (Some("segment_enter"), Some("api_added")),
                    "{t}"
                );
                assert_eq!(t["seq"], 1);
                t["user_id"].as_str().unwrap().to_string()
            })
            .collect();
        (enters.len() == size).then_some(enters)
    });
    let m = service.metrics();
    let applied: f64 = m
        .samples
        .iter()
        .filter(|s| s.metric == "tagstream_rules_reloads_total")
        .map(|s| match (s.labels.get("outcome"), &s.value) {
            (Some("applied"), prometheus_parse::Value::Counter(v)) => *v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(applied, 1.0);

    service.stop();
    let dump = dump(dir.path());
    assert!(!dump.contains_key(&victim));
    assert_eq!(members_of(&dump, "api_added"), enters);
    for line in dump.values() {
        assert!(line["tags"].get("views_3d_new").is_some());
    }

    // Restarting with the configured rules changes nothing more; restarting after the rules
    // file changed carries the state over (segment removed: its members exit, cause `rules`).
    std::fs::write(dir.path().join("rules.toml"), &good).unwrap();
    let service = Service::start(dir.path());
    service.wait_for("readiness", |s| {
        (s.call_with("GET", "/readyz", None, None).0 == 200).then_some(())
    });
    let exits = service.wait_for("exits of the removed segment", |_| {
        let n = transitions(dir.path())
            .into_iter()
            .filter(|t| t["cause"] == "rules" && t["type"] == "segment_exit")
            .inspect(|t| assert_eq!(t["segment"], "api_added"))
            .count();
        (n == enters.len()).then_some(n)
    });
    assert_eq!(exits, enters.len());
    assert!(segments(&service).iter().all(|s| s["name"] != "api_added"));
    service.stop();
}

/// The ecommerce rules changed in every way a reload can: a segment changed, one removed, one
/// added over existing tags, one added over a new windowed tag (which starts empty).
fn changed_rules() -> String {
    let good = rules_source();
    let upsell = good
        .find("[[segment]]\nname = \"skincare_upsell\"")
        .expect("skincare_upsell in the ecommerce rules");
    let mut text = good[..upsell].to_string();
    let rest = &good[upsell..];
    // Keep whatever follows skincare_upsell's own block.
    if let Some(next) = rest[1..].find("\n[[").map(|i| i + 1) {
        text.push_str(&rest[next..]);
    }
    let text = text
        .replace("last_seen > now() - 2d\"", "last_seen > now() - 5d\"")
        .replace("spend_30d >= 500\"", "spend_30d >= 800\"");
    format!(
        "{text}\n[[tag]]\nname = \"views_3d_new\"\nkind = \"count\"\nevent = \"view\"\nwindow = \"3d\"\n\n[[segment]]\nname = \"repeat_buyer\"\nwhen = \"orders_90d >= 2\"\n\n[[segment]]\nname = \"viewer_new\"\nwhen = \"views_3d_new >= 1\"\n"
    )
}

/// Waits until the timers due at the end of the stream have fired (event clock: those that
/// became due in a partition's last batch fire at the next tick): the live sizes equal the
/// sizes a (read-only, live) dump evaluates.
fn settle(service: &Service, dir: &Path) {
    service.wait_for("the last timers to fire", |s| {
        let live = dump(dir);
        segments(s)
            .iter()
            .all(|seg| {
                let name = seg["name"].as_str().unwrap();
                seg["size"].as_u64() == Some(members_of(&live, name).len() as u64)
            })
            .then_some(())
    });
}

/// Waits until every transition counted in the metrics is in the sink file; returns them.
fn settled_transitions(service: &Service, dir: &Path) -> Vec<Value> {
    service.wait_for("the sink to catch up", |s| {
        let m = s.metrics();
        let counted = metric_sum(&m, "tagstream_transitions_total") as usize;
        let backlog = metric_sum(&m, "tagstream_outbox_backlog") as usize;
        let t = transitions(dir);
        (backlog == 0 && t.len() == counted).then_some(t)
    })
}

#[test]
fn dry_run_previews_exactly_what_the_reload_does() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = consumed(dir.path());
    settle(&service, dir.path());
    let new_rules = changed_rules();
    let before = segments(&service);
    let sunk = settled_transitions(&service, dir.path()).len();

    // Bad query values and bad rules are refused; a dry run of bad rules is 422 like the reload.
    let (status, v) = service.call("POST", "/v1/rules/reload?dry_run=maybe", Some("{}"));
    assert_eq!(status, 400, "{v}");
    let (status, v) = service.call(
        "POST",
        "/v1/rules/reload?dry_run=true",
        Some(&json!({ "rules": "[[segment]]\nname = \"x\"\nwhen = \"nope > 1\"\n" }).to_string()),
    );
    assert_eq!(status, 422, "{v}");
    assert!(v["errors"][0]["column"].is_number(), "{v}");

    // Identical rules: nothing would change.
    let (status, same) = service.call(
        "POST",
        "/v1/rules/reload?dry_run=true",
        Some(&json!({ "rules": rules_source() }).to_string()),
    );
    assert_eq!(status, 200, "{same}");
    assert_eq!(same["changed"], false);
    for s in same["segments"].as_array().unwrap() {
        assert_eq!(s["size_before"], s["size_after"], "{s}");
        assert_eq!(
            (s["enters"].as_u64(), s["exits"].as_u64()),
            (Some(0), Some(0))
        );
    }

    // The preview: every body form gives the same answer, and nothing changes.
    std::fs::write(dir.path().join("next.toml"), &new_rules).unwrap();
    let (status, preview) = service.call(
        "POST",
        "/v1/rules/reload?dry_run=true",
        Some(&json!({ "rules": new_rules }).to_string()),
    );
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["dry_run"], true);
    let (_, by_path) = service.call(
        "POST",
        "/v1/rules/reload?dry_run=true",
        Some(r#"{"path":"next.toml"}"#),
    );
    assert_eq!(by_path, preview);
    let by_text = ureq::post(&format!("{}/v1/rules/reload?dry_run=true", service.base))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .set("Content-Type", "application/toml")
        .send_string(&new_rules)
        .unwrap()
        .into_json::<Value>()
        .unwrap();
    assert_eq!(by_text, preview);
    assert_eq!(segments(&service), before, "a dry run changes nothing");
    assert_eq!(preview["warming"], json!(["views_3d_new"]));
    let listed: BTreeMap<String, Value> = preview["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s.clone()))
        .collect();
    for old in &before {
        let name = old["name"].as_str().unwrap();
        assert_eq!(listed[name]["size_before"], old["size"], "{name}");
    }
    assert_eq!(listed["skincare_upsell"]["size_after"], 0);
    assert_eq!(
        listed["skincare_upsell"]["exits"],
        listed["skincare_upsell"]["size_before"]
    );
    assert_eq!(listed["repeat_buyer"]["size_before"], 0);
    assert!(listed["repeat_buyer"]["enters"].as_u64().unwrap() > 0);
    assert_eq!(listed["viewer_new"]["size_after"], 0);
    assert!(
        listed["cart_abandoner"]["enters"].as_u64().unwrap() > 0,
        "a longer window lets users in: {preview}"
    );

    // Offline, from the state dir (read-only, beside the running service): the same answer.
    let out = Command::new(bin())
        .args([
            "check",
            "--rules",
            dir.path().join("next.toml").to_str().unwrap(),
            "--preview",
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offline, preview);

    // No transition was emitted by the previews.
    assert_eq!(settled_transitions(&service, dir.path()).len(), sunk);

    // The real reload does exactly what the preview said.
    let (status, reloaded) = service.call(
        "POST",
        "/v1/rules/reload",
        Some(&json!({ "rules": new_rules }).to_string()),
    );
    assert_eq!(status, 200, "{reloaded}");
    let all = settled_transitions(&service, dir.path());
    let emitted = &all[sunk..];
    assert_eq!(
        emitted.len() as u64,
        reloaded["transitions"].as_u64().unwrap()
    );
    let mut counted: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for t in emitted {
        let e = counted
            .entry(t["segment"].as_str().unwrap().to_string())
            .or_default();
        if t["type"] == "segment_enter" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let after: BTreeMap<String, u64> = segments(&service)
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["size"].as_u64().unwrap(),
            )
        })
        .collect();
    for (name, s) in &listed {
        let (enters, exits) = counted.get(name).copied().unwrap_or_default();
        assert_eq!(
            (s["enters"].as_u64().unwrap(), s["exits"].as_u64().unwrap()),
            (enters, exits),
            "{name}"
        );
        assert_eq!(
            s["size_after"].as_u64().unwrap(),
            after.get(name).copied().unwrap_or(0),
            "{name}"
        );
    }
    assert!(counted.keys().all(|k| listed.contains_key(k)));
    // Now the rules are in force: a dry run of them again changes nothing.
    let (_, again) = service.call(
        "POST",
        "/v1/rules/reload?dry_run=true",
        Some(&json!({ "rules": new_rules }).to_string()),
    );
    assert_eq!(again["changed"], false, "{again}");
    service.stop();
}

/// A random audience over segments and tag predicates.
#[derive(Debug, Clone)]
enum Cond {
    Seg(usize),
    Atom(usize),
    Not(Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
}

/// Tag predicates of the rules language, and the same predicate over a dump line in SQL
/// three-valued logic (None = NULL), given the engine time.
#[allow(clippy::type_complexity)]
const ATOMS: &[(&str, fn(&Value, i64) -> Option<bool>)] = &[
    ("spend_30d > 500", |t, _| {
        Some(t["spend_30d"].as_f64()? > 500.0)
    }),
    ("city IN ('Shanghai', 'Beijing')", |t, _| {
        let c = t["city"].as_str()?;
        Some(c == "Shanghai" || c == "Beijing")
    }),
    ("orders_90d >= 2", |t, _| {
        Some(t["orders_90d"].as_f64()? >= 2.0)
    }),
    ("lifecycle = 'active'", |t, _| {
        Some(t["lifecycle"].as_str()? == "active")
    }),
    ("last_seen > now() - 3d", |t, now| {
        Some(t["last_seen"].as_i64()? > now - 3 * 86_400_000)
    }),
    ("churn_risk >= 0.5", |t, _| {
        Some(t["churn_risk"].as_f64()? >= 0.5)
    }),
    ("spend_tier IS NULL", |t, _| Some(t["spend_tier"].is_null())),
];

impl Cond {
    fn render(&self, names: &[String]) -> String {
        match self {
            Cond::Seg(i) => names[*i].clone(),
            Cond::Atom(i) => ATOMS[*i].0.to_string(),
            Cond::Not(e) => format!("NOT ({})", e.render(names)),
            Cond::And(a, b) => format!("({}) AND ({})", a.render(names), b.render(names)),
            Cond::Or(a, b) => format!("({}) or ({})", a.render(names), b.render(names)),
        }
    }

    fn eval(&self, names: &[String], line: &Value, now: i64) -> Option<bool> {
        match self {
            Cond::Seg(i) => Some(
                line["segments"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| *s == names[*i]),
            ),
            Cond::Atom(i) => ATOMS[*i].1(&line["tags"], now),
            Cond::Not(e) => e.eval(names, line, now).map(|b| !b),
            Cond::And(a, b) => match (a.eval(names, line, now), b.eval(names, line, now)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Cond::Or(a, b) => match (a.eval(names, line, now), b.eval(names, line, now)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        }
    }
}

fn cond_strategy(segments: usize) -> impl Strategy<Value = Cond> {
    let leaf = prop_oneof![
        (0..segments).prop_map(Cond::Seg),
        (0..ATOMS.len()).prop_map(Cond::Atom),
    ];
    leaf.prop_recursive(4, 16, 2, move |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Cond::Not(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Cond::And(Box::new(a), Box::new(b))),
            // A segment conjunct at the top: evaluated only over its bitmap.
            ((0..segments), inner.clone())
                .prop_map(|(s, b)| Cond::And(Box::new(Cond::Seg(s)), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Cond::Or(Box::new(a), Box::new(b))),
        ]
    })
}

/// An NDJSON export: (content type, user ids in order).
fn export(
    service: &Service,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (String, Vec<String>) {
    let req = ureq::request(method, &format!("{}{path}", service.base))
        .set("Authorization", &format!("Bearer {TOKEN}"));
    let response = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let content_type = response.header("content-type").unwrap_or("").to_string();
    let text = response.into_string().unwrap();
    let ids = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v.as_object().unwrap().len(), 1, "{l}");
            v["user_id"].as_str().unwrap().to_string()
        })
        .collect();
    (content_type, ids)
}

/// Every member of an audience, page by page (and its size).
fn audience_pages(service: &Service, expr: &str, limit: usize) -> (u64, Vec<String>) {
    let mut out = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let (status, v) = service.call(
            "POST",
            "/v1/audiences",
            Some(&json!({ "expr": expr, "limit": limit, "cursor": cursor }).to_string()),
        );
        assert_eq!(status, 200, "{expr}: {v}");
        out.extend(
            v["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_string()),
        );
        if v["next_cursor"].is_null() {
            return (v["size"].as_u64().unwrap(), out);
        }
        cursor = v["next_cursor"].clone();
    }
}

#[test]
fn tag_audiences_and_exports_equal_the_dump() {
    let dir = tempfile::tempdir().unwrap();
    let (service, _) = consumed(dir.path());
    settle(&service, dir.path());
    let names: Vec<String> = segments(&service)
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    // The engine time (one file partition), as explain reports it.
    let someone = all_pages(&service, "/v1/segments/cart_abandoner/members", 1)[0].clone();
    let now = service.get(&format!(
        "/v1/users/{someone}/explain?segment=cart_abandoner"
    ))["now"]
        .as_i64()
        .unwrap();

    // Errors name the column of the expression.
    for (expr, column) in [
        ("vip_skincare AND spend_30d > 'x'", 18),
        ("spend_30d > 1 AND nope = 2", 19),
        ("spend_30d >", 12),
    ] {
        let (status, v) = service.call(
            "POST",
            "/v1/audiences",
            Some(&json!({ "expr": expr }).to_string()),
        );
        assert_eq!(status, 400, "{expr}: {v}");
        assert_eq!(v["column"], column, "{expr}: {v}");
    }

    // Random conditions (proptest's strategy), checked against the dump after the stop.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = cond_strategy(names.len());
    let mut answers = Vec::new();
    for _ in 0..40 {
        let c = strategy.new_tree(&mut runner).unwrap().current();
        let text = c.render(&names);
        let (status, v) = service.call(
            "POST",
            "/v1/audiences",
            Some(&json!({ "expr": text, "limit": 10_000 }).to_string()),
        );
        assert_eq!(status, 200, "{text}: {v}");
        assert!(v["next_cursor"].is_null(), "{v}");
        answers.push((c, v));
    }
    let examples = [
        "vip_skincare AND spend_30d > 500 AND city IN ('Shanghai','Beijing')",
        "cart_abandoner AND last_seen > now() - 1d",
        "NOT churn_risk_high AND days_since(last_seen) < 10",
    ];

    // Paging works the same for both kinds; an export is the concatenation of the pages.
    let mut exported = Vec::new();
    for expr in [
        "NOT vip_skincare",
        "spend_30d > 100 OR lifecycle = 'new'",
        examples[1],
    ] {
        let (size, pages) = audience_pages(&service, expr, 23);
        assert_eq!(size as usize, pages.len(), "{expr}");
        let (ct, ids) = export(
            &service,
            "POST",
            "/v1/audiences/export",
            Some(&json!({ "expr": expr })),
        );
        assert_eq!(ct, "application/x-ndjson");
        assert_eq!(ids, pages, "{expr}");
        exported.push((expr, ids));
    }
    for name in &names {
        let path = format!("/v1/segments/{name}/members");
        let pages = all_pages(&service, &path, 7);
        let (ct, ids) = export(
            &service,
            "GET",
            &format!("/v1/segments/{name}/export"),
            None,
        );
        assert_eq!(ct, "application/x-ndjson");
        assert_eq!(ids, pages, "{name}");
    }
    let (status, v) = service.call("GET", "/v1/segments/nope/export", None);
    assert_eq!(status, 404, "{v}");
    let (status, v) = service.call(
        "POST",
        "/v1/audiences/export",
        Some(r#"{"expr":"spend_30d >"}"#),
    );
    assert_eq!((status, v["column"].as_u64()), (400, Some(12)), "{v}");
    let mut example_answers = Vec::new();
    for expr in examples {
        let (_, members) = audience_pages(&service, expr, 10_000);
        example_answers.push(members);
    }

    service.stop();
    let dump = dump(dir.path());
    for (c, v) in answers {
        let want: BTreeSet<String> = dump
            .iter()
            .filter(|(_, line)| c.eval(&names, line, now) == Some(true))
            .map(|(id, _)| id.clone())
            .collect();
        let got: BTreeSet<String> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect();
        let text = c.render(&names);
        assert_eq!(v["size"].as_u64().unwrap() as usize, want.len(), "{text}");
        assert_eq!(got, want, "{text}");
    }
    for (expr, ids) in exported {
        let set: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(set.len(), ids.len(), "{expr}: an export repeats nobody");
    }
    // The documented examples: at least one has members, so the predicates are exercised.
    let spend = |line: &Value| line["tags"]["spend_30d"].as_f64().unwrap_or(0.0);
    let want0: BTreeSet<String> = dump
        .iter()
        .filter(|(_, l)| {
            l["segments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "vip_skincare")
                && spend(l) > 500.0
                && matches!(l["tags"]["city"].as_str(), Some("Shanghai" | "Beijing"))
        })
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        example_answers[0].iter().cloned().collect::<BTreeSet<_>>(),
        want0
    );
    assert!(example_answers.iter().any(|m| !m.is_empty()));
}
