//! The service configuration of `tagstream run --config <file>` (SPEC §7).
//!
//! - **Unknown keys are errors**, reported as `<file>:<line>: ...` with the dotted key.
//! - **Environment overrides**: `TAGSTREAM__<SECTION>__<KEY>=value` (double underscore between
//!   levels, any case) replaces or adds a key before the file is interpreted, e.g.
//!   `TAGSTREAM__SOURCE__BROKERS=kafka:9092`, `TAGSTREAM__STATE__DIR=/data`. Values are read as
//!   TOML where they parse as an array, inline table, number or boolean (`["a","b"]`, `10`,
//!   `true`), otherwise as strings; a key whose file value is a string stays a string. Under
//!   `options`, the rest of the name is a librdkafka property with `_` for `.`
//!   (`TAGSTREAM__SOURCE__OPTIONS__SESSION_TIMEOUT_MS` → `session.timeout.ms`), always a string.
//! - **Relative paths** (`rules`, `source.path`, `sink.path`, `dead_letter.path`, `state.dir`,
//!   `api.token_file`) are relative to the configuration file's directory; `-` means stdin or
//!   stdout.
//! - Validation needs no IO: a config that loads can still fail to connect, but never because
//!   of a missing or contradictory key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use tagstream_rules::event::Format;

/// The whole configuration, paths resolved.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The rules file.
    pub rules: PathBuf,
    pub source: SourceConfig,
    #[serde(default)]
    pub sink: SinkConfig,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub clock: ClockConfig,
    #[serde(default)]
    pub api: ApiConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    #[default]
    Kafka,
    File,
    Stdin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    #[default]
    Native,
    Segment,
    Sensors,
}

impl InputFormat {
    pub fn format(self) -> Format {
        match self {
            InputFormat::Native => Format::Native,
            InputFormat::Segment => Format::Segment,
            InputFormat::Sensors => Format::Sensors,
        }
    }
}

/// `[source]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub kind: SourceKind,
    #[serde(default)]
    pub format: InputFormat,
    /// Comma-separated `host:port` list (an array is accepted too). Required for `kafka`.
    #[serde(default, deserialize_with = "brokers")]
    pub brokers: Option<String>,
    #[serde(default, deserialize_with = "string_list")]
    pub topics: Vec<String>,
    #[serde(default = "default_group_id", deserialize_with = "string")]
    pub group_id: String,
    /// `kind = "file"`: NDJSON (`.gz` too).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `kind = "file"`: keep reading lines appended to the file.
    #[serde(default)]
    pub follow: bool,
    /// Messages longer than this are dead-lettered as `too_large` (bytes, or "1MiB", "512KiB").
    #[serde(default = "default_max_event_bytes", deserialize_with = "size")]
    pub max_event_bytes: u64,
    /// librdkafka consumer properties, passed as is (they override tagstream's defaults).
    #[serde(default, deserialize_with = "options")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Kafka,
    File,
    #[default]
    Stdout,
}

/// `[sink]`: where transitions go.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(default)]
    pub kind: SinkKind,
    #[serde(default, deserialize_with = "opt_string")]
    pub topic: Option<String>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Defaults to the source's brokers.
    #[serde(default, deserialize_with = "brokers")]
    pub brokers: Option<String>,
    /// librdkafka producer properties, as is. Connection and security properties (`security.*`,
    /// `sasl.*`, `ssl.*`, `client.*`, `socket.*`...) of `[source.options]` apply too.
    #[serde(default, deserialize_with = "options")]
    pub options: BTreeMap<String, String>,
    /// Consumption pauses while this many outbox entries await delivery.
    #[serde(default = "default_max_backlog")]
    pub max_backlog: u64,
    /// A transition larger than this has its largest tag values cut to fit (bytes, or
    /// "1MiB"): one oversized record can never block delivery.
    #[serde(default = "default_max_message_bytes", deserialize_with = "size")]
    pub max_message_bytes: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::Stdout,
            topic: None,
            path: None,
            brokers: None,
            options: BTreeMap::new(),
            max_backlog: default_max_backlog(),
            max_message_bytes: default_max_message_bytes(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterKind {
    Kafka,
    #[default]
    File,
}

/// `[dead_letter]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    #[serde(default)]
    pub kind: DeadLetterKind,
    #[serde(default, deserialize_with = "opt_string")]
    pub topic: Option<String>,
    /// `kind = "file"`; default `dead-letters.ndjson` in the state dir.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Defaults to the sink's brokers, then the source's.
    #[serde(default, deserialize_with = "brokers")]
    pub brokers: Option<String>,
    #[serde(default, deserialize_with = "options")]
    pub options: BTreeMap<String, String>,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            kind: DeadLetterKind::File,
            topic: None,
            path: None,
            brokers: None,
            options: BTreeMap::new(),
        }
    }
}

/// `[state]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// When commits are made durable against power loss.
    #[serde(default)]
    pub sync: SyncMode,
    /// The compacted Kafka topic that replicates the state (Kafka sources only). None:
    /// `<source.group_id>-changelog`; `""`: no changelog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changelog_topic: Option<String>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: default_state_dir(),
            sync: SyncMode::default(),
            changelog_topic: None,
        }
    }
}

impl Config {
    /// The changelog topic in use: None without a Kafka source or with `changelog_topic = ""`.
    pub fn changelog_topic(&self) -> Option<String> {
        if self.source.kind != SourceKind::Kafka {
            return None;
        }
        match &self.state.changelog_topic {
            None => Some(tagstream_consumer::changelog::default_topic(
                &self.source.group_id,
            )),
            Some(t) if t.trim().is_empty() => None,
            Some(t) => Some(t.clone()),
        }
    }
}

/// `state.sync`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// The write-ahead log is fsync'd once per committed batch (and per API write), and file
    /// sinks `fdatasync` before their outbox entries are deleted: a machine crash loses
    /// nothing that was delivered or answered.
    #[default]
    Batch,
    /// No fsync: commits survive a process crash; a machine crash can roll state, offsets
    /// and outbox back together to an earlier consistent point (and lose sink file lines).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClockModeConfig {
    #[default]
    Wall,
    Event,
}

/// `[clock]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    #[serde(default)]
    pub mode: ClockModeConfig,
    /// Events further ahead of the system clock are dead-lettered (`future_timestamp`), in
    /// both clock modes. Milliseconds, written as a duration: "90s", "5m", "1h", "1d" (or
    /// "500ms"); "off" (None) applies no limit.
    #[serde(
        default = "default_max_future",
        deserialize_with = "duration_ms_or_off"
    )]
    pub max_future: Option<i64>,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            mode: ClockModeConfig::Wall,
            max_future: default_max_future(),
        }
    }
}

/// `[api]` — parsed and validated here; served by the HTTP API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_listen", deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// A file holding the bearer token for `/v1` (`TAGSTREAM_API_TOKEN` also works).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Every pod's API as `host:port` (this pod included), or one `host:port` whose DNS name
    /// resolves to every pod (a headless Service): `/v1` reads then answer for the whole
    /// deployment. Empty: each pod answers for its own partitions.
    #[serde(default, deserialize_with = "string_list")]
    pub peers: Vec<String>,
    /// Serve `/v1` without a token on an address other machines can reach, on purpose (off:
    /// such a configuration is refused at start).
    #[serde(default)]
    pub allow_anonymous: bool,
    /// A `/v1` request not answered within this is answered 503 (a rules reload excepted);
    /// "off" (None) sets no limit.
    #[serde(
        default = "default_request_timeout",
        deserialize_with = "duration_ms_or_off"
    )]
    pub request_timeout: Option<i64>,
    /// `/v1` requests served at once; more are answered 503 at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// `/healthz` answers 503 once the pipeline has had work pending without progress for this
    /// long (a blocked sink, a stuck consumer); "off" (None) never.
    #[serde(
        default = "default_stall_after",
        deserialize_with = "duration_ms_or_off"
    )]
    pub stall_after: Option<i64>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            token_file: None,
            peers: Vec::new(),
            allow_anonymous: false,
            request_timeout: default_request_timeout(),
            max_in_flight: default_max_in_flight(),
            stall_after: default_stall_after(),
        }
    }
}

impl ApiConfig {
    /// SPEC §8 safety: profiles are personal data and `/v1` can erase users or replace the
    /// rules, so an API other machines can reach needs a token, unless `allow_anonymous` says
    /// otherwise on purpose.
    pub fn check_exposure(&self, has_token: bool) -> Result<(), String> {
        if has_token || self.allow_anonymous || self.listen.ip().is_loopback() {
            return Ok(());
        }
        Err(format!(
            "api.listen {} can be reached from other machines and no API token is configured: \
             set api.token_file (or TAGSTREAM_API_TOKEN), listen on 127.0.0.1, or set \
             api.allow_anonymous = true to serve /v1 without a token on purpose",
            self.listen
        ))
    }
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/tagstream";
pub const DEFAULT_GROUP_ID: &str = "tagstream";
pub const DEFAULT_MAX_BACKLOG: u64 = 100_000;
pub const DEFAULT_MAX_FUTURE_MS: i64 = 5 * 60_000;
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_DEAD_LETTER_FILE: &str = "dead-letters.ndjson";

fn default_group_id() -> String {
    DEFAULT_GROUP_ID.into()
}
fn default_max_event_bytes() -> u64 {
    tagstream_rules::event::DEFAULT_MAX_EVENT_BYTES as u64
}
fn default_max_backlog() -> u64 {
    DEFAULT_MAX_BACKLOG
}
fn default_max_message_bytes() -> u64 {
    tagstream_consumer::sink::DEFAULT_MAX_MESSAGE_BYTES as u64
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_max_future() -> Option<i64> {
    Some(DEFAULT_MAX_FUTURE_MS)
}
fn default_request_timeout() -> Option<i64> {
    Some(30_000)
}
fn default_stall_after() -> Option<i64> {
    Some(5 * 60_000)
}
fn default_max_in_flight() -> usize {
    64
}
fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("valid default address")
}

// ---- lenient scalar readers (environment values may arrive as numbers) ----

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::F(f) => f.to_string(),
            Scalar::B(b) => b.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Scalar),
    Many(Vec<Scalar>),
}

fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Scalar::deserialize(d)?.text())
}

fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(Scalar::deserialize(d)?.text()))
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .text()
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        OneOrMany::Many(v) => v.into_iter().map(Scalar::text).collect(),
    })
}

fn brokers<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.text(),
        OneOrMany::Many(v) => v
            .into_iter()
            .map(Scalar::text)
            .collect::<Vec<_>>()
            .join(","),
    }))
}

fn options<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(BTreeMap::<String, Scalar>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| (k, v.text()))
        .collect())
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = Scalar::deserialize(d)?.text();
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not a listen address like \"0.0.0.0:8080\""
        ))
    })
}

fn duration_ms_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let text = Scalar::deserialize(d)?.text();
    if text.trim() == "off" {
        return Ok(None);
    }
    parse_duration_ms(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like \"90s\", \"5m\", \"1h\" or \"1d\", nor \"off\""
        ))
    })
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = Scalar::deserialize(d)?.text();
    parse_size(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{text:?} is not a size like 1048576, \"512KiB\" or \"1MiB\""
        ))
    })
}

/// `"90s"`, `"5m"`, `"12h"`, `"7d"`, `"2w"`, `"500ms"` → milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().ok()?;
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(unit_ms)
}

/// `1048576`, `"512KiB"`, `"1MiB"`, `"1MB"` → bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "kb" => 1_000,
        "mb" => 1_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

// ---- loading ----

/// Reads, overrides from the process environment, interprets and validates a config file.
pub fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse(&text, path, env_overrides(std::env::vars_os())?)
}

/// The `TAGSTREAM__*` variables of an environment. Other variables are never decoded (a
/// non-UTF-8 `LANG` or path is none of our business); one of ours that is not UTF-8 is an error
/// naming it, since ignoring it would silently run with a setting the operator did not choose.
fn env_overrides(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Vec<(String, String)>, String> {
    let mut ours = Vec::new();
    for (name, value) in vars {
        if !name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => ours.push((name, value)),
            (Ok(name), Err(_)) => {
                return Err(format!(
                "environment variable {name} is not valid UTF-8; set it to UTF-8 text or unset it"
            ))
            }
            (Err(name), _) => {
                return Err(format!(
                    "environment variable {} has a name that is not valid UTF-8; unset it",
                    name.to_string_lossy()
                ))
            }
        }
    }
    Ok(ours)
}

/// Everything but reading the file: `vars` are the environment variables to consider.
pub fn parse(
    text: &str,
    path: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, String> {
    let file = path.display().to_string();
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| located(&file, text, &e))?;
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, value) in vars {
        apply_override(&mut table, &name, &value)?;
        applied.push(name);
    }
    let mut config: Config = match toml::Value::Table(table).try_into() {
        Ok(c) => c,
        Err(merged) => {
            // Locate the error in the file when the file alone has it.
            return Err(match toml::from_str::<Config>(text) {
                Err(e) if e.message() == merged.message() => located(&file, text, &e),
                _ => format!(
                    "{file}: with the environment overrides {}: {}",
                    applied.join(", "),
                    merged.message().trim()
                ),
            });
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    config.resolve(&base);
    config.validate().map_err(|(key, message)| {
        let env = env_name(&key);
        if applied.contains(&env) {
            format!("{file}: {env}: {message}")
        } else {
            match find_key_line(text, &key) {
                Some(line) => format!("{file}:{line}: {key}: {message}"),
                None if applied.is_empty() => format!("{file}: {key}: {message}"),
                None => format!(
                    "{file}: {key}: {message} (with the environment overrides {})",
                    applied.join(", ")
                ),
            }
        }
    })?;
    Ok(config)
}

const ENV_PREFIX: &str = "TAGSTREAM__";

fn env_name(dotted: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        dotted.replace('.', "__").to_ascii_uppercase()
    )
}

fn apply_override(table: &mut toml::Table, name: &str, raw: &str) -> Result<(), String> {
    let parts: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("environment variable {name}: empty key (use double underscores between levels, e.g. TAGSTREAM__SOURCE__BROKERS)"));
    }
    let (path, key, options) = match parts.iter().position(|p| p == "options") {
        Some(i) if i + 1 < parts.len() => (
            parts[..=i].to_vec(),
            parts[i + 1..].join("_").replace('_', "."),
            true,
        ),
        _ => (
            parts[..parts.len() - 1].to_vec(),
            parts[parts.len() - 1].clone(),
            false,
        ),
    };
    let mut t = table;
    for (i, p) in path.iter().enumerate() {
        let entry = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| {
            format!(
                "environment variable {name}: `{}` is not a table",
                path[..=i].join(".")
            )
        })?;
    }
    let value = if options || matches!(t.get(&key), Some(toml::Value::String(_))) {
        toml::Value::String(raw.to_string())
    } else {
        parse_scalar(raw)
    };
    t.insert(key, value);
    Ok(())
}

/// A TOML value when `raw` is one (array, inline table, number, boolean), else a string.
fn parse_scalar(raw: &str) -> toml::Value {
    let looks_typed = raw.starts_with('[')
        || raw.starts_with('{')
        || raw == "true"
        || raw == "false"
        || raw.parse::<f64>().is_ok();
    if looks_typed {
        if let Ok(mut t) = format!("v = {raw}").parse::<toml::Table>() {
            if let Some(v) = t.remove("v") {
                return v;
            }
        }
    }
    toml::Value::String(raw.to_string())
}

/// `<file>:<line>: <key>: <message>` for a TOML or deserialization error with a span.
fn located(file: &str, text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            match key_at(text, span.start) {
                Some(key) => format!("{file}:{line}: {key}: {message}"),
                None => format!("{file}:{line}: {message}"),
            }
        }
        None => format!("{file}: {message}"),
    }
}

/// The dotted key of the entry at byte `at` (its table header plus the key on that line).
fn key_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = &text[line_start..line_end];
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return Some(
            trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string(),
        );
    }
    let key = line.split('=').next()?.trim().trim_matches('"').to_string();
    if key.is_empty() {
        return None;
    }
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key,
    })
}

/// The 1-based line where dotted `key` is set in the file, if it is.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let (section, name) = match key.rsplit_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, key),
    };
    let mut current: Option<String> = None;
    let mut section_line = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            if current.as_deref() == section {
                section_line = Some(i + 1);
            }
            continue;
        }
        if current.as_deref() == section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == name {
                    return Some(i + 1);
                }
            }
        }
    }
    section_line
}

impl Config {
    fn resolve(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != "-" {
                *p = base.join(&*p);
            }
        };
        join(&mut self.rules);
        join(&mut self.state.dir);
        for p in [
            &mut self.source.path,
            &mut self.sink.path,
            &mut self.dead_letter.path,
            &mut self.api.token_file,
        ]
        .into_iter()
        .flatten()
        {
            join(p);
        }
        if self.sink.brokers.is_none() {
            self.sink.brokers = self.source.brokers.clone();
        }
        if self.dead_letter.brokers.is_none() {
            self.dead_letter.brokers = if self.sink.kind == SinkKind::Kafka {
                self.sink.brokers.clone()
            } else {
                self.source.brokers.clone()
            };
        }
        if self.dead_letter.kind == DeadLetterKind::File && self.dead_letter.path.is_none() {
            self.dead_letter.path = Some(self.state.dir.join(DEFAULT_DEAD_LETTER_FILE));
        }
    }

    /// Consistency checks; an error names the dotted key.
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        let s = &self.source;
        match s.kind {
            SourceKind::Kafka => {
                if s.brokers.as_deref().is_none_or(|b| b.trim().is_empty()) {
                    return err(
                        "source.brokers",
                        "required when source.kind = \"kafka\" (e.g. \"127.0.0.1:9092\")",
                    );
                }
                if s.topics.is_empty() || s.topics.iter().any(|t| t.trim().is_empty()) {
                    return err("source.topics", "required when source.kind = \"kafka\": a list of topic names, e.g. [\"events\"]");
                }
                if s.group_id.trim().is_empty() {
                    return err("source.group_id", "must not be empty");
                }
            }
            SourceKind::File => match &s.path {
                None => return err("source.path", "required when source.kind = \"file\""),
                Some(p) if s.follow && p.to_string_lossy().ends_with(".gz") => {
                    return err("source.follow", "cannot follow a .gz file")
                }
                Some(_) => {}
            },
            SourceKind::Stdin => {}
        }
        if s.max_event_bytes == 0 {
            return err("source.max_event_bytes", "must be positive");
        }
        match self.sink.kind {
            SinkKind::Kafka => {
                if self
                    .sink
                    .topic
                    .as_deref()
                    .is_none_or(|t| t.trim().is_empty())
                {
                    return err("sink.topic", "required when sink.kind = \"kafka\"");
                }
                if self
                    .sink
                    .brokers
                    .as_deref()
                    .is_none_or(|b| b.trim().is_empty())
                {
                    return err(
                        "sink.brokers",
                        "required when sink.kind = \"kafka\" and the source is not Kafka",
                    );
                }
            }
            SinkKind::File => {
                if self.sink.path.is_none() {
                    return err("sink.path", "required when sink.kind = \"file\"");
                }
            }
            SinkKind::Stdout => {}
        }
        if self.sink.max_backlog == 0 {
            return err("sink.max_backlog", "must be positive");
        }
        if self.dead_letter.kind == DeadLetterKind::Kafka {
            if self
                .dead_letter
                .topic
                .as_deref()
                .is_none_or(|t| t.trim().is_empty())
            {
                return err(
                    "dead_letter.topic",
                    "required when dead_letter.kind = \"kafka\"",
                );
            }
            if self
                .dead_letter
                .brokers
                .as_deref()
                .is_none_or(|b| b.trim().is_empty())
            {
                return err("dead_letter.brokers", "required when dead_letter.kind = \"kafka\" and neither the source nor the sink is Kafka");
            }
        }
        if self.api.max_in_flight == 0 {
            return err("api.max_in_flight", "must be at least 1");
        }
        if self.api.request_timeout.is_some_and(|t| t <= 0) {
            return err("api.request_timeout", "must be positive (or \"off\")");
        }
        if self.api.stall_after.is_some_and(|t| t <= 0) {
            return err("api.stall_after", "must be positive (or \"off\")");
        }
        if self.clock.max_future.is_some_and(|m| m < 0) {
            return err("clock.max_future", "must not be negative");
        }
        for peer in &self.api.peers {
            let port = peer.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            if !matches!(port, Some((h, Ok(_))) if !h.is_empty()) {
                return err(
                    "api.peers",
                    "each peer is host:port, e.g. \"tagstream-headless:8080\" or [\"10.0.0.5:8080\", \"10.0.0.6:8080\"]",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod docs_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "rules = \"rules.toml\"\n[source]\nbrokers = \"k:9092\"\ntopics = [\"events\"]\n";

    fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
        parse(
            text,
            Path::new("/etc/ts/tagstream.toml"),
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = parse_with(MINIMAL, &[]).unwrap();
        assert_eq!(c.rules, PathBuf::from("/etc/ts/rules.toml"));
        assert_eq!(c.source.kind, SourceKind::Kafka);
        assert_eq!(c.source.format, InputFormat::Native);
        assert_eq!(c.source.group_id, "tagstream");
        assert_eq!(c.source.max_event_bytes, 1 << 20);
        assert!(c.source.options.is_empty());
        assert_eq!(c.sink.kind, SinkKind::Stdout);
        assert_eq!(c.sink.brokers.as_deref(), Some("k:9092"));
        assert_eq!(c.sink.max_backlog, 100_000);
        assert_eq!(c.dead_letter.kind, DeadLetterKind::File);
        assert_eq!(
            c.dead_letter.path,
            Some(PathBuf::from("/var/lib/tagstream/dead-letters.ndjson"))
        );
        assert_eq!(c.state.dir, PathBuf::from("/var/lib/tagstream"));
        assert_eq!(c.state.sync, SyncMode::Batch);
        assert_eq!(c.clock.mode, ClockModeConfig::Wall);
        assert_eq!(c.clock.max_future, Some(300_000));
        assert_eq!(c.api.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.api.token_file, None);
    }

    #[test]
    fn the_spec_example_parses() {
        let text = r#"
rules = "rules.toml"             # relative to this file
[source]
kind = "kafka"                   # kafka | file | stdin
format = "native"                # native | segment | sensors
brokers = "127.0.0.1:9092"
topics = ["events"]
group_id = "tagstream"
# path = "events.ndjson"         # kind = "file"
[source.options]                 # passed to librdkafka as is
"session.timeout.ms" = "10000"
[sink]
kind = "kafka"                   # kafka | file | stdout
topic = "segment-events"         # brokers default to the source's
# path = "transitions.ndjson"    # kind = "file"
[dead_letter]
kind = "kafka"                   # kafka | file
topic = "events-dlq"
[state]
dir = "/var/lib/tagstream"
[clock]
mode = "wall"                    # wall | event
max_future = "5m"
[api]
listen = "0.0.0.0:8080"
token_file = "/etc/tagstream/token"   # optional; TAGSTREAM_API_TOKEN also works
"#;
        let c = parse_with(text, &[]).unwrap();
        assert_eq!(
            c.source
                .options
                .get("session.timeout.ms")
                .map(String::as_str),
            Some("10000")
        );
        assert_eq!(c.sink.kind, SinkKind::Kafka);
        assert_eq!(c.sink.topic.as_deref(), Some("segment-events"));
        assert_eq!(c.dead_letter.brokers.as_deref(), Some("127.0.0.1:9092"));
        assert_eq!(
            c.api.token_file,
            Some(PathBuf::from("/etc/tagstream/token"))
        );
    }

    #[test]
    fn unknown_keys_name_the_file_line_and_key() {
        let text = MINIMAL.replace("topics", "group_id = \"g\"\nbrokerz = \"x\"\ntopics");
        let e = parse_with(&text, &[]).unwrap_err();
        assert!(
            e.starts_with("/etc/ts/tagstream.toml:5: source.brokerz: unknown field `brokerz`"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = parse_with(&format!("{MINIMAL}[sinkk]\nkind = \"file\"\n"), &[]).unwrap_err();
        assert!(
            e.starts_with("/etc/ts/tagstream.toml:5: sinkk: unknown field `sinkk`"),
            "{e}"
        );
        let e = parse_with(&format!("{MINIMAL}[clock]\nmode = \"lunar\"\n"), &[]).unwrap_err();
        assert!(
            e.starts_with("/etc/ts/tagstream.toml:6: clock.mode: unknown variant `lunar`"),
            "{e}"
        );
        let e = parse_with(
            &format!("{MINIMAL}[clock]\nmax_future = \"5 parsecs\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(
            e.contains(":6: clock.max_future:") && e.contains("not a duration"),
            "{e}"
        );
        let e = parse_with("rules = \"r\"\n[source\n", &[]).unwrap_err();
        assert!(e.starts_with("/etc/ts/tagstream.toml:2:"), "{e}");
        let c = parse_with(&format!("{MINIMAL}[clock]\nmax_future = \"off\"\n"), &[]).unwrap();
        assert_eq!(c.clock.max_future, None);
    }

    #[test]
    fn missing_and_contradictory_keys_are_reported() {
        let e = parse_with("[source]\nbrokers = \"k\"\ntopics = [\"e\"]\n", &[]).unwrap_err();
        assert!(e.contains("missing field `rules`"), "{e}");
        let e = parse_with("rules = \"r\"\n[source]\ntopics = [\"e\"]\n", &[]).unwrap_err();
        assert_eq!(e, "/etc/ts/tagstream.toml:2: source.brokers: required when source.kind = \"kafka\" (e.g. \"127.0.0.1:9092\")");
        let e = parse_with(&format!("{MINIMAL}[sink]\nkind = \"kafka\"\n"), &[]).unwrap_err();
        assert!(e.contains(":5: sink.topic: required"), "{e}");
        let e = parse_with("rules = \"r\"\n[source]\nkind = \"file\"\n", &[]).unwrap_err();
        assert!(e.contains("source.path: required"), "{e}");
        let e = parse_with(
            "rules = \"r\"\n[source]\nkind = \"file\"\npath = \"in.gz\"\nfollow = true\n",
            &[],
        )
        .unwrap_err();
        assert!(e.contains(":5: source.follow"), "{e}");
        let e = parse_with(
            "rules = \"r\"\n[source]\nkind = \"stdin\"\n[sink]\nkind = \"kafka\"\ntopic = \"t\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("sink.brokers: required"), "{e}");
        let e = parse_with(&format!("{MINIMAL}[api]\nlisten = \"nowhere\"\n"), &[]).unwrap_err();
        assert!(e.contains(":6: api.listen:"), "{e}");
    }

    #[test]
    fn environment_overrides_every_level() {
        let c = parse_with(
            MINIMAL,
            &[
                ("TAGSTREAM__SOURCE__BROKERS", "a:1,b:2"),
                ("TAGSTREAM__STATE__DIR", "/data"),
                ("TAGSTREAM__SOURCE__TOPICS", "[\"x\",\"y\"]"),
                ("TAGSTREAM__SOURCE__GROUP_ID", "123"),
                ("TAGSTREAM__SOURCE__OPTIONS__SESSION_TIMEOUT_MS", "6000"),
                ("TAGSTREAM__SOURCE__OPTIONS__GROUP_INSTANCE_ID", "pod-0"),
                ("TAGSTREAM__SINK__KIND", "kafka"),
                ("TAGSTREAM__SINK__TOPIC", "out"),
                ("TAGSTREAM__SINK__MAX_BACKLOG", "500"),
                ("TAGSTREAM__CLOCK__MODE", "event"),
                ("TAGSTREAM__CLOCK__MAX_FUTURE", "90s"),
                ("TAGSTREAM__API__LISTEN", "127.0.0.1:9000"),
                ("TAGSTREAM__DEAD_LETTER__KIND", "kafka"),
                ("TAGSTREAM__DEAD_LETTER__TOPIC", "dlq"),
                ("OTHER", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.source.brokers.as_deref(), Some("a:1,b:2"));
        assert_eq!(c.sink.brokers.as_deref(), Some("a:1,b:2"));
        assert_eq!(c.state.dir, PathBuf::from("/data"));
        assert_eq!(c.source.topics, vec!["x", "y"]);
        assert_eq!(c.source.group_id, "123");
        assert_eq!(
            c.source
                .options
                .get("session.timeout.ms")
                .map(String::as_str),
            Some("6000")
        );
        assert_eq!(
            c.source
                .options
                .get("group.instance.id")
                .map(String::as_str),
            Some("pod-0")
        );
        assert_eq!(c.sink.kind, SinkKind::Kafka);
        assert_eq!(c.sink.topic.as_deref(), Some("out"));
        assert_eq!(c.sink.max_backlog, 500);
        assert_eq!(c.clock.mode, ClockModeConfig::Event);
        assert_eq!(c.clock.max_future, Some(90_000));
        assert_eq!(c.api.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.dead_letter.kind, DeadLetterKind::Kafka);
        assert_eq!(c.dead_letter.topic.as_deref(), Some("dlq"));
        // The rules path can come from the environment too.
        let c = parse_with(
            "[source]\nkind = \"stdin\"\n",
            &[("TAGSTREAM__RULES", "/r.toml")],
        )
        .unwrap();
        assert_eq!(c.rules, PathBuf::from("/r.toml"));
    }

    #[test]
    fn bad_environment_overrides_name_the_variable() {
        let e = parse_with(MINIMAL, &[("TAGSTREAM__SOURCE__BROKERZ", "x")]).unwrap_err();
        assert!(
            e.contains("TAGSTREAM__SOURCE__BROKERZ") && e.contains("unknown field `brokerz`"),
            "{e}"
        );
        let e = parse_with(MINIMAL, &[("TAGSTREAM__SINK__KIND", "kafka")]).unwrap_err();
        assert!(
            e.contains("sink.topic: required") && e.contains("TAGSTREAM__SINK__KIND"),
            "{e}"
        );
        let e = parse_with(
            MINIMAL,
            &[
                ("TAGSTREAM__SINK__KIND", "kafka"),
                ("TAGSTREAM__SINK__TOPIC", ""),
            ],
        )
        .unwrap_err();
        assert!(e.contains("TAGSTREAM__SINK__TOPIC: required"), "{e}");
        let e = parse_with(MINIMAL, &[("TAGSTREAM__RULES__X", "1")]).unwrap_err();
        assert!(e.contains("`rules` is not a table"), "{e}");
        let e = parse_with(MINIMAL, &[("TAGSTREAM____X", "1")]).unwrap_err();
        assert!(e.contains("empty key"), "{e}");
    }

    #[test]
    fn api_peers_are_a_list_of_host_port() {
        let c = parse_with(MINIMAL, &[]).unwrap();
        assert!(c.api.peers.is_empty());
        let c = parse_with(
            &format!("{MINIMAL}[api]\npeers = [\"a:8080\", \"10.0.0.2:8080\"]\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.api.peers, vec!["a:8080", "10.0.0.2:8080"]);
        let c = parse_with(
            MINIMAL,
            &[("TAGSTREAM__API__PEERS", "tagstream-headless:8080")],
        )
        .unwrap();
        assert_eq!(c.api.peers, vec!["tagstream-headless:8080"]);
        let c = parse_with(MINIMAL, &[("TAGSTREAM__API__PEERS", "a:1, b:2")]).unwrap();
        assert_eq!(c.api.peers, vec!["a:1", "b:2"]);
        for bad in ["a", "a:port", ":80"] {
            let e = parse_with(&format!("{MINIMAL}[api]\npeers = [\"{bad}\"]\n"), &[]).unwrap_err();
            assert!(e.contains("api.peers"), "{bad}: {e}");
        }
    }

    #[test]
    fn only_our_environment_variables_are_decoded() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![b'a', 0xff]);
        let ok = env_overrides([
            (OsString::from("LANG"), bad()),
            (OsString::from_vec(b"X\xff".to_vec()), OsString::from("1")),
            (
                OsString::from("TAGSTREAM__STATE__DIR"),
                OsString::from("/s"),
            ),
        ])
        .unwrap();
        assert_eq!(
            ok,
            [("TAGSTREAM__STATE__DIR".to_string(), "/s".to_string())]
        );
        let e = env_overrides([(OsString::from("TAGSTREAM__STATE__DIR"), bad())]).unwrap_err();
        assert!(
            e.contains("TAGSTREAM__STATE__DIR is not valid UTF-8"),
            "{e}"
        );
        let e =
            env_overrides([(OsString::from_vec(b"TAGSTREAM__\xff".to_vec()), bad())]).unwrap_err();
        assert!(e.contains("TAGSTREAM__\u{fffd}"), "{e}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration_ms("5m"), Some(300_000));
        assert_eq!(parse_duration_ms("90s"), Some(90_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("2w"), Some(14 * 86_400_000));
        assert_eq!(parse_duration_ms("5"), None);
        assert_eq!(parse_duration_ms("m"), None);
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("2000"), Some(2000));
        assert_eq!(parse_size("1GiB"), None);
    }

    #[test]
    fn shipped_configs_parse_and_the_example_documents_the_defaults() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let example_path = root.join("config/tagstream.example.toml");
        let example = std::fs::read_to_string(&example_path).unwrap();
        let c = parse(&example, &example_path, std::iter::empty()).unwrap();
        // Every key the example sets is either a documented default or listed here.
        let mut expected = parse(MINIMAL, &example_path, std::iter::empty()).unwrap();
        expected.rules = c.rules.clone();
        expected.source.brokers = Some("127.0.0.1:9092".into());
        expected.sink.brokers = expected.source.brokers.clone();
        expected
            .source
            .options
            .insert("session.timeout.ms".into(), "10000".into());
        expected.sink.kind = SinkKind::Kafka;
        expected.sink.topic = Some("segment-events".into());
        expected.dead_letter.kind = DeadLetterKind::Kafka;
        expected.dead_letter.topic = Some("events-dlq".into());
        expected.dead_letter.path = None;
        expected.dead_letter.brokers = expected.source.brokers.clone();
        expected.api.token_file = Some(PathBuf::from("/etc/tagstream/token"));
        assert_eq!(c, expected);
        let quick_path = root.join("config/quickstart.toml");
        let quick = std::fs::read_to_string(&quick_path).unwrap();
        let q = parse(&quick, &quick_path, std::iter::empty()).unwrap();
        assert_eq!(q.source.kind, SourceKind::File);
        assert_eq!(q.clock.mode, ClockModeConfig::Event);
    }
}
