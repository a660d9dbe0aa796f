//! `tagstream` — the binary: command line, wiring, and one-line errors.
//!
//! Exit codes: 0 success, 1 user error (bad rules, bad flags, bad input paths), 2 runtime failure.

mod api;
mod config;
mod gen;
mod run;
mod signals;

use std::io::Write;
use std::process::ExitCode;

/// mimalloc instead of the system allocator: the engine frees user states in bursts (a batch's
/// working set, the user cache), which glibc's allocator answers with long free-list
/// consolidation (`malloc_consolidate`, `unlink_chunk`: 13% of a 1M-user replay).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use tagstream_consumer::replay::{dump, replay, ReplayOptions};
use tagstream_consumer::ConsumerError;
use tagstream_rules::event::{Format, Millis};
use tagstream_rules::rules::RuleSet;

/// `tagstream --version`: the crate version and the commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TAGSTREAM_GIT_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "tagstream",
    version = VERSION,
    about = "Real-time user tags and segments from tracking events",
    after_help = "Logging: TAGSTREAM_LOG (or RUST_LOG; TAGSTREAM_LOG wins) takes a tracing filter, e.g. TAGSTREAM_LOG=debug; TAGSTREAM_LOG_FORMAT=json writes JSON lines.\nExit codes: 0 success, 1 user error, 2 runtime failure."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The input formats of `--format` (the same names as `source.format`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FormatArg {
    /// tagstream's own events: {"user_id","event","ts","properties"}
    Native,
    /// Segment / RudderStack tracking spec: track, identify, page, screen
    Segment,
    /// Sensors Data: track, profile_set, profile_set_once, profile_unset, profile_delete
    Sensors,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Native => Format::Native,
            FormatArg::Segment => Format::Segment,
            FormatArg::Sensors => Format::Sensors,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service as configured (source, sink, dead letters, state, clock, API).
    Run {
        /// Service configuration (TOML), e.g. `--config config/tagstream.example.toml`.
        #[arg(long, value_name = "FILE")]
        config: String,
    },
    /// Apply events from a file in event-clock mode and write the transitions.
    Replay {
        /// Rules file (TOML), e.g. `--rules config/rules/ecommerce.toml`.
        #[arg(long, value_name = "FILE")]
        rules: String,
        /// NDJSON events, `.gz` for gzip, `-` for stdin, e.g. `--input events.ndjson.gz`.
        #[arg(long, value_name = "FILE")]
        input: String,
        /// State directory (created when missing; run again to continue), e.g. `--state-dir state`.
        #[arg(long, value_name = "DIR")]
        state_dir: String,
        /// Transitions file, rewritten by each run (`-` for stdout), e.g. `--out transitions.ndjson`.
        #[arg(long, value_name = "FILE")]
        out: String,
        /// Input format, e.g. `--format segment`.
        #[arg(long, value_enum, default_value_t = FormatArg::Native)]
        format: FormatArg,
        /// Dead-letter file (default: stderr), e.g. `--dlq dead-letters.ndjson`.
        #[arg(long, value_name = "FILE")]
        dlq: Option<String>,
        /// After the input, move engine time to this instant, firing every timer due:
        /// epoch milliseconds or RFC 3339, e.g. `--advance-to 2025-01-01T00:00:00Z`.
        #[arg(long, value_name = "INSTANT")]
        advance_to: Option<String>,
        /// Events per committed batch (more: fewer state writes, more memory; a batch also ends
        /// once it holds 262,144 users), e.g. `--batch-size 16384`.
        #[arg(long, value_name = "N", default_value_t = 1_048_576, value_parser = clap::value_parser!(u32).range(1..))]
        batch_size: u32,
    },
    /// Print the state of every user (NDJSON, sorted by user id).
    Dump {
        /// State directory written by `replay` or `run`, e.g. `--state-dir state`.
        #[arg(long, value_name = "DIR")]
        state_dir: String,
        /// Evaluate with this rules file (must be the rules the state was built with;
        /// default: the rules stored in the state), e.g. `--rules config/rules/ecommerce.toml`.
        #[arg(long, value_name = "FILE")]
        rules: Option<String>,
        /// Print only this user, e.g. `--user u000001`.
        #[arg(long, value_name = "ID")]
        user: Option<String>,
    },
    /// Validate a rules file, or a service configuration and the rules it names.
    ///
    /// Prints one line per problem, `file:line:column: rule: message` for rules and
    /// `file:line: key: message` for a configuration, and exits 1; or `ok` and exits 0.
    /// Nothing is started or written.
    #[command(group(ArgGroup::new("what").required(true).args(["rules", "config"])))]
    Check {
        /// Rules file (TOML), e.g. `--rules config/rules/ecommerce.toml`.
        #[arg(long, value_name = "FILE")]
        rules: Option<String>,
        /// Service configuration (TOML), checked with its environment overrides, its rules
        /// file and its API token, e.g. `--config config/tagstream.example.toml`.
        #[arg(long, value_name = "FILE")]
        config: Option<String>,
        /// With --rules and --state-dir: print what reloading these rules into that state
        /// would do (the answer of `POST /v1/rules/reload?dry_run=true`, one JSON line),
        /// reading the state only, e.g. `--preview --state-dir state`.
        #[arg(long, requires_all = ["rules", "state_dir"], conflicts_with = "config")]
        preview: bool,
        /// The state to preview against (opened read-only: a stopped or copied state dir, or
        /// one a running service uses), e.g. `--state-dir state`.
        #[arg(long, value_name = "DIR", requires = "preview")]
        state_dir: Option<String>,
    },
    /// Generate a synthetic e-commerce event stream (NDJSON on stdout).
    Gen {
        /// Number of distinct users, e.g. `--users 2000`.
        #[arg(long, value_name = "N")]
        users: u64,
        /// Number of events, e.g. `--events 100000`.
        #[arg(long, value_name = "M")]
        events: u64,
        /// Random seed (the same seed gives the same stream), e.g. `--seed 7`.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Days of event time the stream spans, e.g. `--days 90`.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

/// An error with its exit code.
struct Failure {
    code: u8,
    message: String,
    /// The message already names its file and line (`file:line:column: ...`): printed as
    /// is, one problem per line, for editors' problem matchers.
    located: bool,
}

impl From<ConsumerError> for Failure {
    fn from(e: ConsumerError) -> Self {
        Failure {
            code: if e.is_user_error() { 1 } else { 2 },
            message: e.to_string(),
            located: false,
        }
    }
}

fn user_error(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: message.into(),
        located: false,
    }
}

fn located_error(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: message.into(),
        located: true,
    }
}

/// Reads and compiles a rules file; errors as `file:line:column: rule: message` lines.
fn check_rules(path: &str) -> Result<RuleSet, Failure> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| user_error(format!("cannot read rules file {path}: {e}")))?;
    RuleSet::compile(&source, path).map_err(|e| located_error(e.to_string()))
}

/// `check --config`: the configuration (with the environment's overrides), the rules it
/// names and its API token; opens no state, socket or broker connection.
fn check_config(path: &str) -> Result<String, Failure> {
    let config = config::load(std::path::Path::new(path)).map_err(located_error)?;
    let rules_path = config.rules.to_string_lossy().into_owned();
    let rules = check_rules(&rules_path)?;
    let token = api::load_token(config.api.token_file.as_deref())
        .map_err(|e| user_error(format!("{path}: {e}")))?;
    config
        .api
        .check_exposure(token.is_some())
        .map_err(|e| user_error(format!("{path}: {e}")))?;
    Ok(format!(
        "{path}: ok (rules {rules_path}: {} tags, {} segments)",
        rules.tags.len(),
        rules.segments.len()
    ))
}

/// `check --preview`: what a reload of `rules` would do to the state in `state_dir`, opened
/// read-only with the rules stored in it; the same JSON as the API's dry run.
fn preview_reload(rules: RuleSet, state_dir: &str) -> Result<serde_json::Value, Failure> {
    use std::sync::Arc;
    use tagstream_consumer::engine::{Engine, EngineOptions};
    use tagstream_state::{RocksStore, StoreOptions};
    let dir = std::path::Path::new(state_dir);
    if !dir.join("CURRENT").exists() {
        return Err(user_error(format!(
            "no tagstream state in {state_dir}: pass the --state-dir of a `replay` or `run`"
        )));
    }
    let store = RocksStore::open_with(
        dir,
        StoreOptions {
            read_only: true,
            ..StoreOptions::default()
        },
    )
    .map_err(ConsumerError::from)?;
    let store: Arc<dyn tagstream_state::StateStore> = Arc::new(store);
    let source = Engine::stored_rules(store.as_ref())?
        .ok_or_else(|| user_error(format!("{state_dir} holds no rules")))?;
    let stored = RuleSet::compile(&source, "<rules stored in the state dir>")
        .map_err(|e| ConsumerError::Corrupt(e.to_string()))?;
    let engine = Engine::open(store, Arc::new(stored), &source, EngineOptions::default())?;
    let fingerprint = rules.fingerprint.clone();
    let report = engine.preview(Arc::new(rules))?;
    Ok(serde_json::json!({
        "dry_run": true,
        "changed": report.changed,
        "fingerprint": fingerprint,
        "users": report.users,
        "segments": report.segments,
        "warming": report.warming,
    }))
}

fn parse_instant(text: &str) -> Result<Millis, Failure> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| user_error(format!("--advance-to {text:?} is neither epoch milliseconds nor an RFC 3339 time with an offset (e.g. 2024-12-01T00:00:00Z)")))
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run { config } => run::run(&config).map_err(|e| Failure {
            code: e.exit_code(),
            message: e.to_string(),
            located: false,
        }),
        Command::Replay {
            rules,
            input,
            state_dir,
            out,
            format,
            dlq,
            advance_to,
            batch_size,
        } => {
            let format = Format::from(format);
            let advance_to = advance_to.as_deref().map(parse_instant).transpose()?;
            let opts = ReplayOptions {
                rules,
                input,
                state_dir,
                out,
                format,
                dlq,
                advance_to,
                batch_size: batch_size as usize,
            };
            let summary = replay(&opts)?;
            let r = &summary.report;
            tracing::info!(
                applied = r.applied,
                duplicates = r.duplicates,
                dead_letters = r.dead_lettered(),
                transitions = r.transitions,
                timers_fired = r.timers_fired,
                engine_time = summary.engine_time,
                "replay finished"
            );
            Ok(())
        }
        Command::Dump {
            state_dir,
            rules,
            user,
        } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            dump(&state_dir, rules.as_deref(), user.as_deref(), &mut out)?;
            match out.flush() {
                // A reader that stops early (`dump | head`) is a normal way to end.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure {
                    code: 2,
                    message: format!("writing the dump: {e}"),
                    located: false,
                }),
                _ => Ok(()),
            }
        }
        Command::Check {
            rules,
            config,
            preview: true,
            state_dir: Some(state_dir),
        } => {
            let rules = rules.expect("clap requires --rules with --preview");
            let compiled = check_rules(&rules)?;
            let answer = preview_reload(compiled, &state_dir)?;
            let _ = config;
            println!("{answer}");
            Ok(())
        }
        Command::Check { rules, config, .. } => {
            let line = match (rules, config) {
                (_, Some(config)) => check_config(&config)?,
                (Some(rules), None) => {
                    let compiled = check_rules(&rules)?;
                    format!(
                        "{rules}: ok ({} tags, {} segments)",
                        compiled.tags.len(),
                        compiled.segments.len()
                    )
                }
                (None, None) => unreachable!("clap requires --rules or --config"),
            };
            println!("{line}");
            Ok(())
        }
        Command::Gen {
            users,
            events,
            seed,
            days,
        } => {
            let opts = gen::GenOptions {
                users,
                events,
                seed,
                days,
            };
            opts.validate().map_err(user_error)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            match gen::generate(&opts, &mut out).and_then(|_| out.flush()) {
                Ok(()) => Ok(()),
                // A closed pipe (`gen | head`) is a normal way to stop.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                Err(e) => Err(Failure {
                    code: 2,
                    message: format!("writing events: {e}"),
                    located: false,
                }),
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The service logs what operators need (partitions, rebuilds, pauses) by default; the
    // one-shot commands stay quiet unless asked. `TAGSTREAM_LOG_FORMAT=json` for JSON lines.
    let default_level = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = log_filter(default_level);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if std::env::var("TAGSTREAM_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            for line in f.message.lines() {
                if f.located {
                    eprintln!("{line}");
                } else {
                    eprintln!("error: {line}");
                }
            }
            ExitCode::from(f.code)
        }
    }
}

/// `TAGSTREAM_LOG`, else the conventional `RUST_LOG`, else `default_level`. A variable that
/// is set but not a valid filter is reported and the default used, rather than the other
/// variable silently taking over.
fn log_filter(default_level: &str) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    for var in ["TAGSTREAM_LOG", "RUST_LOG"] {
        if let Ok(text) = std::env::var(var) {
            return EnvFilter::try_new(&text).unwrap_or_else(|e| {
                eprintln!(
                    "warning: {var}={text:?} is not a log filter ({e}); using {default_level:?}"
                );
                EnvFilter::new(default_level)
            });
        }
    }
    EnvFilter::new(default_level)
}
