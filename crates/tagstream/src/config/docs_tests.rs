//! docs/configuration.md against the configuration structs: every key the code reads is
//! documented with its environment variable and its default, and every documented key exists.
//!
//! The code's key list comes from serialising a configuration in which every optional value
//! is set: the struct literal below stops compiling when a field is added, and serde then
//! names every key, so the list cannot drift from the structs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::*;

/// A configuration with every field set (options included), so that no key is skipped.
fn everything() -> Config {
    let options = BTreeMap::from([("x.y".to_string(), "1".to_string())]);
    Config {
        rules: PathBuf::from("r.toml"),
        source: SourceConfig {
            kind: SourceKind::Kafka,
            format: InputFormat::Native,
            brokers: Some("k:9092".into()),
            topics: vec!["t".into()],
            group_id: "g".into(),
            path: Some(PathBuf::from("in")),
            follow: false,
            max_event_bytes: 1,
            options: options.clone(),
        },
        sink: SinkConfig {
            kind: SinkKind::Kafka,
            topic: Some("t".into()),
            path: Some(PathBuf::from("out")),
            brokers: Some("k:9092".into()),
            options: options.clone(),
            max_backlog: 1,
            max_message_bytes: 1,
        },
        dead_letter: DeadLetterConfig {
            kind: DeadLetterKind::Kafka,
            topic: Some("t".into()),
            path: Some(PathBuf::from("dlq")),
            brokers: Some("k:9092".into()),
            options,
        },
        state: StateConfig {
            dir: PathBuf::from("s"),
            sync: SyncMode::None,
            changelog_topic: Some("c".into()),
        },
        clock: ClockConfig {
            mode: ClockModeConfig::Wall,
            max_future: Some(1),
        },
        api: ApiConfig {
            listen: default_listen(),
            token_file: Some(PathBuf::from("token")),
            peers: vec!["tagstream-headless:8080".into()],
            allow_anonymous: true,
            request_timeout: Some(1),
            max_in_flight: 1,
            stall_after: Some(1),
        },
    }
}

/// Dotted keys of a serialised configuration; an `options` table is one key (its entries are
/// librdkafka's, not ours).
fn keys(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if k != "options" => keys(&key, t, out),
            _ => {
                out.insert(key);
            }
        }
    }
}

/// A row of the keys table: (key, default cell, environment cell).
struct Row {
    key: String,
    default: String,
    env: String,
}

fn documented() -> Vec<Row> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let section = text
        .split("\n## Keys\n")
        .nth(1)
        .expect("docs/configuration.md has a `## Keys` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert!(cells.len() >= 4, "a keys row has 4 columns: {line}");
        if cells[0].contains(' ') {
            continue; // the librdkafka defaults table below the keys
        }
        rows.push(Row {
            key: cells[0].trim_matches('`').to_string(),
            default: cells[1].to_string(),
            env: cells[2].trim_matches('`').to_string(),
        });
    }
    rows
}

#[test]
fn every_key_is_documented_and_every_documented_key_exists() {
    let toml::Value::Table(table) = toml::Value::try_from(everything()).unwrap() else {
        panic!("a configuration serialises to a table");
    };
    let mut code = BTreeSet::new();
    keys("", &table, &mut code);
    assert!(
        code.contains("dead_letter.options") && code.contains("api.token_file"),
        "{code:?}"
    );
    let docs: BTreeSet<String> = documented().into_iter().map(|r| r.key).collect();
    let undocumented: Vec<_> = code.difference(&docs).collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from docs/configuration.md: {undocumented:?}"
    );
    let unknown: Vec<_> = docs.difference(&code).collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents keys the code does not read: {unknown:?}"
    );
}

#[test]
fn documented_environment_names_and_defaults_are_the_real_ones() {
    // The built-in defaults: a file with nothing but the required key, not yet resolved.
    let defaults: Config = toml::from_str("rules = \"r.toml\"\n[source]\n").unwrap();
    let toml::Value::Table(defaults) = toml::Value::try_from(defaults).unwrap() else {
        unreachable!()
    };
    let lookup = |key: &str| -> Option<&toml::Value> {
        let mut parts = key.split('.');
        let mut v = defaults.get(parts.next()?)?;
        for p in parts {
            v = v.as_table()?.get(p)?;
        }
        Some(v)
    };
    for row in documented() {
        let env = if row.key.ends_with(".options") {
            format!("{}__<NAME>", env_name(&row.key))
        } else {
            env_name(&row.key)
        };
        assert_eq!(row.env, env, "environment variable of {}", row.key);
        // A default written as one TOML literal must be the built-in default.
        let literal = row
            .default
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'));
        match (literal.filter(|l| !l.contains('`')), lookup(&row.key)) {
            (Some(text), Some(actual)) => {
                let documented: toml::Table = format!("v = {text}")
                    .parse()
                    .unwrap_or_else(|e| panic!("default of {} is not a TOML value: {e}", row.key));
                let documented = &documented["v"];
                let same = documented == actual
                    // sizes and durations are documented as written in a file
                    || (row.key == "source.max_event_bytes" && documented.as_str().and_then(parse_size) == actual.as_integer().map(|n| n as u64))
                    || (["clock.max_future", "api.request_timeout", "api.stall_after"].contains(&row.key.as_str()) && documented.as_str().and_then(parse_duration_ms) == actual.as_integer());
                assert!(
                    same,
                    "{}: documented default {text}, built-in {actual}",
                    row.key
                );
            }
            (Some(text), None) => panic!(
                "{}: documented default {text}, but the built-in default is none",
                row.key
            ),
            // `rules` is required (the value here is the test's own); an empty list or
            // table is documented as "—" or in words.
            (None, Some(actual))
                if row.key != "rules"
                    && !matches!(actual, toml::Value::Table(t) if t.is_empty())
                    && !matches!(actual, toml::Value::Array(a) if a.is_empty()) =>
            {
                panic!(
                    "{}: the built-in default is {actual}; document it as a literal",
                    row.key
                )
            }
            (None, _) => {}
        }
    }
}
