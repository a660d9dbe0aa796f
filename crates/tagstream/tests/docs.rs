//! docs/metrics.md against what the binary exports: the documented families are exactly the
//! registered ones (with their types and labels), and a real scrape of `tagstream run`
//! exports nothing undocumented — including the series that must exist at 0 from the start.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{fetch_metrics, spawn_run};
use tagstream_consumer::metrics::Metrics;

/// (family name → (type, labels)) from the tables of docs/metrics.md.
fn documented() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let metric = cells[0].trim_matches('`');
        let (name, labels) = match metric.split_once('{') {
            Some((n, l)) => (
                n,
                l.trim_end_matches('}')
                    .split(',')
                    .map(str::to_string)
                    .collect(),
            ),
            None => (metric, BTreeSet::new()),
        };
        let previous = out.insert(name.to_string(), (cells[1].to_string(), labels));
        assert!(previous.is_none(), "{name} is documented twice");
    }
    out
}

#[test]
fn the_documented_families_are_the_registered_ones() {
    let docs = documented();
    let registered: BTreeMap<String, String> = Metrics::new()
        .families()
        .iter()
        .map(|&(n, k)| (n.to_string(), k.to_string()))
        .collect();
    let undocumented: Vec<_> = registered
        .keys()
        .filter(|n| !docs.contains_key(*n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
    let unknown: Vec<_> = docs
        .keys()
        .filter(|n| !registered.contains_key(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/metrics.md lists metrics that do not exist: {unknown:?}"
    );
    for (name, kind) in &registered {
        assert_eq!(&docs[name].0, kind, "type of {name}");
    }
}

#[test]
fn a_running_service_exports_what_the_page_says() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("rules.toml"), "[[tag]]\nname = \"n\"\nkind = \"count\"\nevent = \"*\"\n[[segment]]\nname = \"any\"\nwhen = \"n > 0\"\n").unwrap();
    std::fs::write(
        d.join("events.ndjson"),
        "{\"user_id\":\"u1\",\"event\":\"view\",\"ts\":1732000000000}\nnot json\n",
    )
    .unwrap();
    std::fs::write(
        d.join("tagstream.toml"),
        "rules = \"rules.toml\"\n[source]\nkind = \"file\"\npath = \"events.ndjson\"\n[sink]\nkind = \"file\"\npath = \"out.ndjson\"\n[state]\ndir = \"state\"\n[clock]\nmode = \"event\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let log = d.join("log.txt");
    let mut child = spawn_run(&d.join("tagstream.toml"), &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    let base = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("api listening")) {
            let at = line.find("addr=").unwrap() + 5;
            let addr = line[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .trim_matches('"');
            break format!("http://{addr}");
        }
        assert!(Instant::now() < deadline, "no api: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Both lines accounted for (one applied, one dead letter), then scrape.
    let scrape = loop {
        let s = fetch_metrics(&base);
        if common::metric_sum(&s, "tagstream_events_total") == 2.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "events not consumed");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();

    let docs = documented();
    // Every exported family (named by its HELP line) is documented.
    let exported: BTreeSet<&String> = scrape.docs.keys().collect();
    let undocumented: Vec<_> = exported
        .iter()
        .filter(|n| !docs.contains_key(**n))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}"
    );
    // Labels are the documented ones (histogram `le` aside).
    for sample in &scrape.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                sample
                    .metric
                    .strip_suffix(s)
                    .filter(|f| docs.contains_key(*f))
            })
            .unwrap_or(&sample.metric);
        let Some((_, labels)) = docs.get(family) else {
            panic!("{} is not documented", sample.metric);
        };
        for label in sample.labels.keys().filter(|l| *l != "le") {
            assert!(
                labels.contains(label),
                "{family}: label {label} is not documented"
            );
        }
    }
    // Known label values are there from the start, at 0 where nothing happened.
    let value = |name: &str, label: &str, v: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label) == Some(v))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(x) | prometheus_parse::Value::Gauge(x) => x,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        value(
            "tagstream_sink_delivery_errors_total",
            "sink",
            "transitions"
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            "tagstream_sink_delivery_errors_total",
            "sink",
            "dead_letter"
        ),
        Some(0.0)
    );
    assert_eq!(
        value("tagstream_dead_letters_total", "reason", "too_large"),
        Some(0.0)
    );
    assert_eq!(
        value("tagstream_dead_letters_total", "reason", "invalid_json"),
        Some(1.0)
    );
    assert_eq!(
        value("tagstream_consumer_rebalances_total", "kind", "revoke"),
        Some(0.0)
    );
    assert_eq!(
        value("tagstream_rules_reloads_total", "outcome", "rejected"),
        Some(0.0)
    );
    assert_eq!(
        value("tagstream_build_info", "version", env!("CARGO_PKG_VERSION")),
        Some(1.0)
    );
    // The standard process metrics and RocksDB's health are exported.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "tagstream_rocksdb_write_stopped",
        "tagstream_rocksdb_block_cache_usage_bytes",
    ] {
        assert!(exported.contains(&name.to_string()), "{name} missing");
    }
    assert_eq!(
        common::metric_sum(&scrape, "tagstream_rocksdb_write_stopped"),
        0.0
    );
}

/// The README is the door: every page under docs/ is linked from it.
#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut pages: Vec<String> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .collect();
    pages.sort();
    assert!(pages.len() >= 8, "docs/ pages: {pages:?}");
    let unlinked: Vec<&String> = pages
        .iter()
        .filter(|page| !readme.contains(&format!("](docs/{page})")))
        .collect();
    assert!(
        unlinked.is_empty(),
        "docs pages the README does not link: {unlinked:?}"
    );
}
