//! The deployment files in `deploy/` against the binary they deploy:
//!
//! - every metric the Grafana dashboard and the Prometheus rules query is one the binary
//!   exports ([`Metrics::families`], histograms with `_bucket`, `_sum`, `_count`);
//! - the Kubernetes probes and the ServiceMonitor point at the API's real paths and port;
//! - the ConfigMap's `tagstream.toml` and `rules.toml`, with the StatefulSet's environment
//!   overrides, start the service, which then answers those probe paths.
//!
//! The YAML files are read as text, on purpose: the only YAML this needs is "which
//! `tagstream_*` names does the file mention" (every token, in expressions, comments and
//! descriptions alike, so a renamed metric cannot survive in an annotation either) and a few
//! `key: value` lines, which does not justify a YAML parser in the dependency tree. Their
//! structure is validated by `scripts/check-deploy.sh` (kubernetes-validate, promtool).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tagstream_consumer::metrics::Metrics;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---- metric names ------------------------------------------------------------------------

/// Every series name the binary exports: each family, and each histogram's three series.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for &(name, kind) in Metrics::new().families() {
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Every `tagstream_[a-z0-9_]+` token of `text` that starts a word (so `x_tagstream_y` or
/// `Tagstream...` alert names are not metric names).
fn metric_tokens(text: &str) -> BTreeSet<String> {
    const PREFIX: &str = "tagstream_";
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(PREFIX).map(|i| i + from) {
        let mut end = i + PREFIX.len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word {
            out.insert(text[i..end].to_string());
        }
        from = end;
    }
    out
}

/// The tokens of `text` that are not exported series names.
fn unknown_metrics(text: &str, exported: &BTreeSet<String>) -> Vec<String> {
    metric_tokens(text)
        .into_iter()
        .filter(|t| !exported.contains(t))
        .collect()
}

#[test]
fn the_extractor_catches_made_up_and_misused_names() {
    let exported = exported();
    let text = "sum(rate(tagstream_events_total{outcome=\"dead_letter\"}[5m])) \
                / tagstream_made_up_metric + histogram_quantile(0.9, \
                rate(tagstream_batch_apply_seconds_bucket[5m])) + tagstream_events_total_bucket \
                + tagstream_batch_apply_seconds_total + TagstreamRestarting + x_tagstream_y";
    assert_eq!(
        metric_tokens(text).into_iter().collect::<Vec<_>>(),
        [
            "tagstream_batch_apply_seconds_bucket",
            "tagstream_batch_apply_seconds_total",
            "tagstream_events_total",
            "tagstream_events_total_bucket",
            "tagstream_made_up_metric",
        ]
    );
    assert_eq!(
        unknown_metrics(text, &exported),
        [
            // a histogram has no _total; a counter has no _bucket
            "tagstream_batch_apply_seconds_total",
            "tagstream_events_total_bucket",
            "tagstream_made_up_metric",
        ]
    );
    assert!(metric_tokens("tagstream_ready").contains("tagstream_ready"));
    assert!(exported.contains("tagstream_event_to_transition_seconds_count"));
}

/// The strings under `expr` (panel targets, annotations), `query` and `definition`
/// (template variables) anywhere in a dashboard.
fn dashboard_queries(v: &Value, key: Option<&str>, out: &mut Vec<String>) {
    match v {
        Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
            out.push(s.clone())
        }
        Value::Array(items) => items.iter().for_each(|i| dashboard_queries(i, key, out)),
        Value::Object(map) => map
            .iter()
            .for_each(|(k, i)| dashboard_queries(i, Some(k), out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let exported = exported();
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/tagstream.json"))
        .expect("deploy/grafana/tagstream.json is JSON");
    assert!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "the dashboard needs a Prometheus `datasource` variable"
    );

    let mut targets = 0;
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("?");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title}");
        let panel_targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        assert!(!panel_targets.is_empty(), "panel {title} has no query");
        for t in panel_targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                !metric_tokens(expr).is_empty(),
                "panel {title}: {expr:?} reads no tagstream metric"
            );
            targets += 1;
        }
    }

    let mut queries = Vec::new();
    dashboard_queries(&dashboard, None, &mut queries);
    assert!(
        queries.len() > targets,
        "{} queries, {targets} targets",
        queries.len()
    );
    let mut used = BTreeSet::new();
    for q in &queries {
        let unknown = unknown_metrics(q, &exported);
        assert!(unknown.is_empty(), "dashboard query {q:?} uses {unknown:?}, which the binary does not export (see crates/consumer/src/metrics.rs)");
        used.extend(metric_tokens(q));
    }
    // The panels an operator needs (issue 5).
    for needed in [
        "tagstream_events_total",
        "tagstream_consumer_lag_messages",
        "tagstream_batch_apply_seconds_bucket",
        "tagstream_event_to_transition_seconds_bucket",
        "tagstream_transition_event_lag_seconds_bucket",
        "tagstream_ingest_to_commit_seconds_bucket",
        "tagstream_segment_members",
        "tagstream_transitions_total",
        "tagstream_dead_letters_total",
        "tagstream_state_size_bytes",
        "tagstream_outbox_backlog",
        "tagstream_timers_pending",
        "tagstream_timers_fired_total",
        "tagstream_api_requests_total",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }
}

#[test]
fn the_alert_rules_query_only_exported_metrics() {
    let exported = exported();
    for file in [
        "deploy/prometheus/alerts.yaml",
        "deploy/prometheus/alerts_test.yaml",
    ] {
        let text = read(file);
        let unknown = unknown_metrics(&text, &exported);
        assert!(unknown.is_empty(), "{file} mentions {unknown:?}, which the binary does not export (see crates/consumer/src/metrics.rs)");
    }
    let rules = read("deploy/prometheus/alerts.yaml");
    let alerts = rules.matches("- alert: ").count();
    assert!(alerts >= 7, "{alerts} alerts");
    for key in ["severity: ", "summary: ", "description: "] {
        assert_eq!(
            rules.matches(key).count(),
            alerts,
            "every alert needs a {key:?}"
        );
    }
    for needed in [
        "tagstream_consumer_lag_messages",
        "tagstream_dead_letters_total",
        "tagstream_outbox_backlog",
        "tagstream_consumer_messages_total",
        "time() - max by (namespace, job, pod, instance) (tagstream_engine_time_seconds)",
        "changes(tagstream_process_start_time_seconds[30m]) > 2",
    ] {
        assert!(rules.contains(needed), "no alert on {needed}");
    }
}

// ---- Kubernetes manifests ------------------------------------------------------------------

/// The value of the first `key:` line after the first line containing `anchor`.
fn value_after<'t>(text: &'t str, anchor: &str, key: &str) -> &'t str {
    let start = text
        .find(anchor)
        .unwrap_or_else(|| panic!("{anchor:?} not found"));
    text[start..]
        .lines()
        .skip(1)
        .find_map(|l| l.trim_start().strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("no {key:?} after {anchor:?}"))
}

#[test]
fn probes_and_scrapes_point_at_the_api() {
    let sts = read("deploy/k8s/statefulset.yaml");
    assert_eq!(value_after(&sts, "readinessProbe:", "path"), "/readyz");
    assert_eq!(value_after(&sts, "livenessProbe:", "path"), "/healthz");
    assert_eq!(value_after(&sts, "startupProbe:", "path"), "/healthz");
    for probe in ["readinessProbe:", "livenessProbe:", "startupProbe:"] {
        assert_eq!(value_after(&sts, probe, "port"), "http", "{probe}");
    }
    assert_eq!(value_after(&sts, "ports:", "- name"), "http");
    assert_eq!(value_after(&sts, "ports:", "containerPort"), "8080");
    assert_eq!(value_after(&sts, "volumeClaimTemplates:", "name"), "state");
    assert!(sts.contains("mountPath: /var/lib/tagstream"));
    assert!(sts.contains("name: TAGSTREAM__SOURCE__OPTIONS__GROUP_INSTANCE_ID"));

    let monitor = read("deploy/k8s/servicemonitor.yaml");
    assert_eq!(value_after(&monitor, "endpoints:", "- port"), "http");
    assert_eq!(value_after(&monitor, "endpoints:", "path"), "/metrics");
    for service in [
        "deploy/k8s/service-api.yaml",
        "deploy/k8s/service-headless.yaml",
    ] {
        let text = read(service);
        assert_eq!(value_after(&text, "ports:", "- name"), "http", "{service}");
        assert_eq!(value_after(&text, "ports:", "port"), "8080", "{service}");
    }

    let config = configmap_file("tagstream.toml");
    assert!(
        config.contains("listen = \"0.0.0.0:8080\""),
        "api.listen must match the container port"
    );
    assert!(config.contains("token_file = \"/etc/tagstream/token\""));
    assert!(config.contains("dir = \"/var/lib/tagstream\""));

    let docker = read("deploy/docker/Dockerfile");
    for needed in [
        "cargo build --release --locked -p tagstream",
        "/usr/local/bin/tagstream",
        "USER 10001",
        "EXPOSE 8080",
        "CMD [\"run\", \"--config\", \"/etc/tagstream/tagstream.toml\"]",
    ] {
        assert!(docker.contains(needed), "Dockerfile: no {needed:?}");
    }
}

/// A file of the ConfigMap: the block scalar under `  <key>: |`, indented four spaces.
fn configmap_file(key: &str) -> String {
    let text = read("deploy/k8s/configmap.yaml");
    let header = format!("  {key}: |");
    let mut lines = text.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "configmap.yaml has no {header:?}");
    let mut body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.get(4..).unwrap_or(""))
        .collect();
    while body.last() == Some(&"") {
        body.pop();
    }
    assert!(!body.is_empty(), "{key} is empty in configmap.yaml");
    body.join("\n") + "\n"
}

/// The literal `value:` of an environment variable of the StatefulSet, or (for a `fieldRef`)
/// the name of the pod it would get.
fn statefulset_env() -> Vec<(String, String)> {
    let sts = read("deploy/k8s/statefulset.yaml");
    let mut env = Vec::new();
    let mut lines = sts.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim_start().strip_prefix("- name: TAGSTREAM") else {
            continue;
        };
        let name = format!("TAGSTREAM{name}");
        let next = lines.peek().map(|l| l.trim_start()).unwrap_or("");
        let value = match next.strip_prefix("value:") {
            Some(v) => v.trim().trim_matches('"').to_string(),
            None => "tagstream-0".to_string(), // valueFrom: fieldRef metadata.name
        };
        env.push((name, value));
    }
    env
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

#[test]
fn the_configmap_starts_the_service_and_it_answers_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tagstream.toml");
    std::fs::write(&config, configmap_file("tagstream.toml")).unwrap();
    std::fs::write(dir.path().join("rules.toml"), configmap_file("rules.toml")).unwrap();
    std::fs::write(dir.path().join("token"), "test-token\n").unwrap();

    let check = Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .args(["check", "--rules"])
        .arg(dir.path().join("rules.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "the ConfigMap's rules.toml does not compile:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tagstream"));
    command.args(["run", "--config"]).arg(&config);
    // Only the overrides below: none from the environment the test runs in.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TAGSTREAM")) {
        command.env_remove(k);
    }
    command.env("TAGSTREAM_LOG", "info");
    // The StatefulSet's overrides must be keys the service accepts ...
    let env = statefulset_env();
    assert!(env.iter().any(|(k, _)| k == "TAGSTREAM__SOURCE__BROKERS"));
    for (k, v) in &env {
        command.env(k, v);
    }
    // ... and, without a broker here, the pod's paths move into the temp dir and the input
    // is a file of generated events (the Kafka options stay in the config, validated but
    // unused).
    let events = dir.path().join("events.ndjson");
    let gen = Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .args(["gen", "--users", "50", "--events", "500", "--seed", "7"])
        .output()
        .unwrap();
    assert!(gen.status.success());
    std::fs::write(&events, &gen.stdout).unwrap();
    let s = dir.path().display();
    command
        .env("TAGSTREAM__SOURCE__KIND", "file")
        .env("TAGSTREAM__SOURCE__PATH", &events)
        .env("TAGSTREAM__SINK__KIND", "file")
        .env("TAGSTREAM__SINK__PATH", format!("{s}/transitions.ndjson"))
        .env("TAGSTREAM__DEAD_LETTER__KIND", "file")
        .env("TAGSTREAM__DEAD_LETTER__PATH", format!("{s}/dlq.ndjson"))
        .env("TAGSTREAM__STATE__DIR", format!("{s}/state"))
        .env("TAGSTREAM__API__TOKEN_FILE", format!("{s}/token"))
        .env("TAGSTREAM__API__LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut service = Service(command.spawn().unwrap());
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    let sts = read("deploy/k8s/statefulset.yaml");
    let readiness = value_after(&sts, "readinessProbe:", "path");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = http_get(port, readiness) {
            break;
        }
        if let Ok(Some(status)) = service.0.try_wait() {
            panic!(
                "the service exited ({status}) before it was ready:\n{}",
                logs()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{readiness} never answered 200:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let liveness = value_after(&sts, "livenessProbe:", "path");
    assert_eq!(http_get(port, liveness).unwrap().0, 200, "{liveness}");
    let monitor = read("deploy/k8s/servicemonitor.yaml");
    let metrics_path = value_after(&monitor, "endpoints:", "path");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, metrics) = http_get(port, metrics_path).unwrap();
        assert_eq!(status, 200, "{metrics_path}");
        assert!(metrics.contains("tagstream_ready 1"), "{metrics}");
        // Every event was applied or dead-lettered.
        let count = |outcome: &str| {
            let series = format!("tagstream_events_total{{outcome=\"{outcome}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str())?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if count("applied") + count("dead_letter") + count("duplicate") == 500 {
            assert!(count("applied") > 0, "{metrics}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events not applied:\n{metrics}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The token from api.token_file guards /v1.
    assert_eq!(http_get(port, "/v1/segments").unwrap().0, 401);

    // SIGTERM, as the kubelet sends it: the service finishes and exits cleanly within the
    // pod's grace period.
    let grace: u64 = value_after(&sts, "template:", "terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    let kill = Command::new("kill")
        .args(["-TERM", &service.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(grace);
    let status = loop {
        if let Some(status) = service.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not stop within {grace} s of SIGTERM:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit {status}:\n{}", logs());
}
