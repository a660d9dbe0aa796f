//! `tagstream run` consuming over TLS, from a zstd-compressed topic: the Kafka every managed
//! service runs (`security.protocol=SSL`, a CA tagstream trusts through `[source.options]`).
//!
//! The broker is Tansu (in memory) on a plaintext port, advertised at the port of a TLS
//! listener in front of it (`socat`, with a certificate signed by a CA generated here by
//! `openssl`), so every client connection — the test's producer and tagstream's consumer —
//! goes through TLS. Needs `tansu` and `socat` (`scripts/ensure-deps.sh --test` installs both).
//!
//! No assertion depends on elapsed time; deadlines only stop a broken run from hanging.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{fetch_metrics, metric_sum, spawn_run, tail};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const EVENTS: &str = "events";
const DEADLINE: Duration = Duration::from_secs(120);
const USERS: usize = 50;
const T: i64 = 1_732_000_000_000;

const RULES: &str = r#"
[[tag]]
name = "views"
kind = "count"
event = "view"

[[segment]]
name = "viewers"
when = "views >= 1"
"#;

fn wait_for<T>(what: &str, context: impl Fn() -> String, f: impl FnMut() -> Option<T>) -> T {
    common::wait_for(what, DEADLINE, context, f)
}

/// A program on PATH or in Cargo's bin directory.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bins = [
        std::env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    ];
    std::env::split_paths(&path)
        .chain(cargo_bins.into_iter().flatten())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run scripts/ensure-deps.sh --test"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it, with its key
/// (`server.pem`, both in one file as socat wants them).
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tagstream test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let mut both = std::fs::read(dir.join("server.crt")).unwrap();
    both.extend(std::fs::read(dir.join("server.key")).unwrap());
    std::fs::write(dir.join("server.pem"), both).unwrap();
}

/// Children killed on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Tansu on a plaintext port, advertised at a TLS port served by socat; returns the TLS
/// `host:port`.
fn broker(dir: &Path, procs: &mut Procs) -> String {
    let (plain, tls) = (free_port(), free_port());
    let log = dir.join("tansu.log");
    let out = File::create(&log).unwrap();
    procs.0.push(
        Command::new(program("tansu"))
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{plain}"),
            ])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{tls}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let socat_log = dir.join("socat.log");
    procs.0.push(
        Command::new(program("socat"))
            .arg(format!(
                "OPENSSL-LISTEN:{tls},reuseaddr,fork,cert={},verify=0",
                dir.join("server.pem").display()
            ))
            .arg(format!("TCP:127.0.0.1:{plain}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&socat_log).unwrap())
            .spawn()
            .unwrap(),
    );
    for port in [plain, tls] {
        wait_for(
            "the broker and the TLS listener",
            || format!("{}\n{}", tail(&log, 20), tail(&socat_log, 20)),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
    }
    let out = Command::new(program("tansu"))
        .args(["topic", "create", EVENTS, "--partitions", "1"])
        .args(["--broker", &format!("tcp://127.0.0.1:{plain}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tansu topic create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("127.0.0.1:{tls}")
}

#[test]
fn consumes_a_zstd_topic_over_tls_with_a_ca_from_the_source_options() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    certificates(dir);
    let ca = dir.join("ca.pem");
    let mut procs = Procs(Vec::new());
    let servers = broker(dir, &mut procs);

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", ca.to_str().unwrap())
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for i in 0..USERS {
        let event = format!(
            r#"{{"user_id":"u{i}","event":"view","ts":{}}}"#,
            T + i as i64
        );
        producer
            .send(BaseRecord::to(EVENTS).key(&format!("u{i}")).payload(&event))
            .map_err(|(e, _)| e)
            .unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();

    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    let config = dir.join("tagstream.toml");
    std::fs::write(
        &config,
        format!(
            r#"rules = "rules.toml"
[source]
kind = "kafka"
brokers = "{servers}"
topics = ["{EVENTS}"]
group_id = "ts-tls"
[source.options]
"security.protocol" = "SSL"
"ssl.ca.location" = "{ca}"
"session.timeout.ms" = "4500"
"heartbeat.interval.ms" = "300"
[sink]
kind = "file"
path = "transitions.ndjson"
[dead_letter]
kind = "file"
path = "dlq.ndjson"
[state]
dir = "state"
[clock]
mode = "event"
[api]
listen = "127.0.0.1:0"
"#,
            ca = ca.display()
        ),
    )
    .unwrap();
    let log = dir.join("run.log");
    procs.0.push(spawn_run(&config, &log));
    let context = || tail(&log, 40);
    let base = wait_for("the API", context, || {
        let text = std::fs::read_to_string(&log).ok()?;
        let line = text.lines().find(|l| l.contains("api listening"))?;
        let at = line.find("addr=")? + 5;
        Some(format!("http://{}", line[at..].split_whitespace().next()?))
    });
    wait_for("every event applied", context, || {
        let applied = metric_sum(&fetch_metrics(&base), "tagstream_events_total");
        (applied >= USERS as f64).then_some(())
    });
    let transitions = wait_for("every transition written", context, || {
        let text = std::fs::read_to_string(dir.join("transitions.ndjson")).ok()?;
        (text.lines().count() >= USERS).then_some(text)
    });
    assert_eq!(transitions.lines().count(), USERS);
    let metrics = fetch_metrics(&base);
    assert_eq!(
        metric_sum(&metrics, "tagstream_events_total"),
        USERS as f64,
        "every event applied once, none dead-lettered:\n{}",
        tail(&log, 40)
    );
    assert_eq!(metric_sum(&metrics, "tagstream_dead_letters_total"), 0.0);
}
