//! `tagstream` — the binary: command line, wiring, and one-line errors.
//!
//! Exit codes: 0 success, 1 user error (bad rules, bad flags, bad input paths), 2 runtime failure.

mod api;
mod config;
mod gen;
mod run;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tagstream_consumer::replay::{dump, load_rules, replay, ReplayOptions};
use tagstream_consumer::ConsumerError;
use tagstream_rules::event::{Format, Millis};

#[derive(Parser, Debug)]
#[command(
    name = "tagstream",
    version,
    about = "Real-time user tags and segments from tracking events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service as configured (source, sink, dead letters, state, clock, API).
    Run {
        #[arg(long)]
        config: String,
    },
    /// Apply events from a file in event-clock mode and write the transitions.
    Replay {
        #[arg(long)]
        rules: String,
        /// NDJSON events (`.gz` for gzip, `-` for stdin).
        #[arg(long)]
        input: String,
        #[arg(long)]
        state_dir: String,
        /// Where transitions go (`-` for stdout).
        #[arg(long)]
        out: String,
        #[arg(long, default_value = "native")]
        format: String,
        /// Dead-letter file (default: stderr).
        #[arg(long)]
        dlq: Option<String>,
        /// After the input, move engine time to this instant (epoch ms or RFC 3339).
        #[arg(long)]
        advance_to: Option<String>,
    },
    /// Print the state of every user (NDJSON, sorted by user id).
    Dump {
        #[arg(long)]
        state_dir: String,
        #[arg(long)]
        rules: Option<String>,
        #[arg(long)]
        user: Option<String>,
    },
    /// Validate a rules file.
    Check {
        #[arg(long)]
        rules: String,
    },
    /// Generate a synthetic e-commerce event stream (NDJSON on stdout).
    Gen {
        #[arg(long)]
        users: u64,
        #[arg(long)]
        events: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

/// An error with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<ConsumerError> for Failure {
    fn from(e: ConsumerError) -> Self {
        Failure {
            code: if e.is_user_error() { 1 } else { 2 },
            message: e.to_string(),
        }
    }
}

fn user_error(message: impl Into<String>) -> Failure {
    Failure {
        code: 1,
        message: message.into(),
    }
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
        }),
        Command::Replay {
            rules,
            input,
            state_dir,
            out,
            format,
            dlq,
            advance_to,
        } => {
            let format = Format::parse(&format).ok_or_else(|| {
                user_error(format!(
                    "unknown --format {format:?}; use native, segment or sensors"
                ))
            })?;
            let advance_to = advance_to.as_deref().map(parse_instant).transpose()?;
            let opts = ReplayOptions {
                rules,
                input,
                state_dir,
                out,
                format,
                dlq,
                advance_to,
                batch_size: std::env::var("TS_BATCH")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(131_072),
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
                }),
                _ => Ok(()),
            }
        }
        Command::Check { rules } => {
            let (compiled, _) = load_rules(&rules)?;
            println!(
                "{rules}: ok ({} tags, {} segments)",
                compiled.tags.len(),
                compiled.segments.len()
            );
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAGSTREAM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
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
                eprintln!("error: {line}");
            }
            ExitCode::from(f.code)
        }
    }
}
