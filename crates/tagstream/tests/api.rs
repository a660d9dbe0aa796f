//! The HTTP API of `tagstream run`, through a real HTTP client (ureq) against the real binary
//! (file source, event clock, RocksDB state), compared with `tagstream dump` of the same state:
//! profiles, segment sizes and members, audiences (proptest against naive set algebra),
//! explain, auth, errors, delete, rules reload, and `/metrics` parsed by a Prometheus
//! text-format parser.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, fetch_metrics, metric_sum};
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
        let child = Command::new(bin())
            .args([
                "run",
                "--config",
                dir.join("tagstream.toml").to_str().unwrap(),
            ])
            .env("TAGSTREAM_LOG", "info")
            .env_remove("TAGSTREAM_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut service = Service {
            child: Some(child),
            log,
            base: String::new(),
        };
        let addr = service.wait_for("the api to listen", |s| {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            let line = text.lines().find(|l| l.contains("api listening"))?;
            let at = line.find("addr=")? + 5;
            Some(
                line[at..]
                    .split_whitespace()
                    .next()?
                    .trim_matches('"')
                    .to_string(),
            )
        });
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
        assert!(Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success());
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
    let out = Command::new(bin())
        .args([
            "gen",
            "--users",
            "300",
            "--events",
            &events.to_string(),
            "--seed",
            "11",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
    std::fs::write(dir.join("events.ndjson"), out.stdout).unwrap();
    std::fs::write(dir.join("rules.toml"), rules_source()).unwrap();
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        dir.join("tagstream.toml"),
        "rules = \"rules.toml\"\n[source]\nkind = \"file\"\npath = \"events.ndjson\"\n[sink]\nkind = \"file\"\npath = \"out.ndjson\"\n[dead_letter]\nkind = \"file\"\npath = \"dlq.ndjson\"\n[state]\ndir = \"state\"\n[clock]\nmode = \"event\"\n[api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"token\"\n",
    )
    .unwrap();
    lines
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
    let (status, v) = service.call(
        "POST",
        "/v1/audiences",
        Some(&format!(r#"{{"expr":"{}"}}"#, "a".repeat(5 << 20))),
    );
    assert_eq!(status, 413, "{v}");
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
