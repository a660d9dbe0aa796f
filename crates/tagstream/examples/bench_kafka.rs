//! `make bench-kafka`: `tagstream run` against a real Kafka protocol endpoint (librdkafka's mock
//! cluster hosted in this process, or a Tansu broker started as a child), two measurements:
//!
//! - **throughput**: the events of an NDJSON file, pre-produced to a one-partition topic, consumed
//!   by `tagstream run` in event-clock mode (from `/readyz` turning ready to every event counted in
//!   `tagstream_events_total`), against `tagstream replay` of the same file (wall time of the
//!   process), as events/s and their ratio;
//! - **latency**: new users (each one `purchase` of 150, which enters `active_spender` of
//!   config/rules/minimal.toml) produced at a fixed rate over four partitions to a service in
//!   `wall` mode; every transition is read back from the sink topic. End-to-end latency is the
//!   time it is read minus the time its event was produced (both on this machine's clock; the
//!   produce time is the event's `ts`), ingestion delay is the transition's `ts` (the engine time
//!   at which the event was applied) minus the produce time.
//!
//! ```text
//! bench_kafka --tagstream BIN --broker mock|tansu --input events.ndjson --rules bench15.toml
//!             [--rate 2000] [--seconds 20] [--linger-ms 5] [--work DIR] [--set key=value]...
//!             [--latency-only] [--roll-users N]
//! ```
//! `--roll-users N` adds a midnight roll to the latency run: N users whose membership expires at
//! one instant a few seconds into it, to see how new users' latency holds up while their timers
//! fire (and the service's peak RSS). `--set` adds `[source.options]` / `[sink.options]` entries (`source.fetch.wait.max.ms=100`),
//! to compare librdkafka settings. Prints one row per measurement. Not a test: nothing is
//! asserted about times.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

type Res<T> = Result<T, String>;

const LATENCY_RULES: &str = "config/rules/minimal.toml";
const LATENCY_PARTITIONS: i32 = 4;

struct Args {
    tagstream: PathBuf,
    broker: String,
    input: PathBuf,
    rules: PathBuf,
    rate: u64,
    seconds: u64,
    work: PathBuf,
    sets: Vec<(String, String, String)>,
    skip_throughput: bool,
    /// Users whose membership expires at one instant during the latency run (0: none).
    roll_users: u64,
    /// `linger.ms` of the latency producer.
    linger_ms: u64,
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        tagstream: PathBuf::from("tagstream"),
        broker: "mock".into(),
        input: PathBuf::new(),
        rules: PathBuf::from("config/rules/bench15.toml"),
        rate: 2000,
        seconds: 20,
        work: std::env::temp_dir().join("tagstream-bench-kafka"),
        sets: Vec::new(),
        skip_throughput: false,
        roll_users: 0,
        linger_ms: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--latency-only" {
            a.skip_throughput = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--tagstream" => a.tagstream = value.into(),
            "--broker" => a.broker = value,
            "--input" => a.input = value.into(),
            "--rules" => a.rules = value.into(),
            "--rate" => a.rate = num(&value)?.max(1),
            "--seconds" => a.seconds = num(&value)?.max(1),
            "--linger-ms" => a.linger_ms = num(&value)?,
            "--roll-users" => a.roll_users = num(&value)?,
            "--work" => a.work = value.into(),
            "--set" => {
                let (key, v) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--set {value}: expected side.key=value"))?;
                let (side, key) = key
                    .split_once('.')
                    .filter(|(s, _)| *s == "source" || *s == "sink")
                    .ok_or_else(|| {
                        format!("--set {value}: the key starts with source. or sink.")
                    })?;
                a.sets.push((side.into(), key.into(), v.into()));
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !a.skip_throughput && a.input.as_os_str().is_empty() {
        return Err("--input is required".into());
    }
    Ok(a)
}

/// A broker for the run: the in-process mock cluster or a Tansu child process.
enum Broker {
    Mock(MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    Tansu { child: Child, url: String },
}

impl Broker {
    fn start(kind: &str, work: &Path) -> Res<(Broker, String)> {
        match kind {
            "mock" => {
                let mock = MockCluster::new(1).map_err(|e| format!("mock cluster: {e}"))?;
                let servers = mock.bootstrap_servers();
                Ok((Broker::Mock(mock), servers))
            }
            "tansu" => {
                let bin = tansu_bin()?;
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map_err(|e| format!("no free port: {e}"))?
                    .port();
                let servers = format!("127.0.0.1:{port}");
                let url = format!("tcp://{servers}");
                let log =
                    std::fs::File::create(work.join("tansu.log")).map_err(|e| e.to_string())?;
                let child = Command::new(&bin)
                    .args(["broker", "--listener-url", &url])
                    .args(["--advertised-listener-url", &url])
                    .args(["--storage-engine", "memory://tansu/"])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().map_err(|e| e.to_string())?)
                    .stderr(log)
                    .spawn()
                    .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
                wait_until("tansu to listen", Duration::from_secs(30), || {
                    std::net::TcpStream::connect(&servers).is_ok()
                })?;
                Ok((Broker::Tansu { child, url }, servers))
            }
            other => Err(format!("--broker {other}: expected mock or tansu")),
        }
    }

    fn create_topic(&self, topic: &str, partitions: i32) -> Res<()> {
        match self {
            Broker::Mock(m) => m
                .create_topic(topic, partitions, 1)
                .map_err(|e| format!("creating {topic}: {e}")),
            Broker::Tansu { url, .. } => {
                let out = Command::new(tansu_bin()?)
                    .args(["topic", "create", topic, "--broker", url])
                    .args(["--partitions", &partitions.to_string()])
                    .output()
                    .map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "tansu topic create {topic}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ))
                }
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Tansu { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tansu_bin() -> Res<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(home)
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
        .ok_or_else(|| "tansu is not installed: run scripts/ensure-deps.sh --test".into())
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Res<()> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The 1-minute load average: these machines are shared, and a loaded one shows in the tails.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn producer(servers: &str, linger_ms: &str, compression: &str) -> Res<BaseProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("linger.ms", linger_ms)
        .set("compression.type", compression)
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .map_err(|e| format!("producer: {e}"))
}

fn send(p: &BaseProducer, topic: &str, partition: i32, key: &[u8], payload: &[u8]) {
    let mut record = BaseRecord::<[u8], [u8]>::to(topic)
        .partition(partition)
        .key(key)
        .payload(payload);
    loop {
        match p.send(record) {
            Ok(()) => break,
            Err((_, r)) => {
                p.poll(Duration::from_millis(5));
                record = r;
            }
        }
    }
    p.poll(Duration::ZERO);
}

/// A `tagstream run` child with its own state directory and API port, stopped on drop.
struct Service {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Service {
    #[allow(clippy::too_many_arguments)]
    fn start(
        args: &Args,
        name: &str,
        servers: &str,
        rules: &Path,
        topic: &str,
        sink: &str,
        clock: &str,
    ) -> Res<Service> {
        let dir = args.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let options = |side: &str| {
            args.sets
                .iter()
                .filter(|(s, _, _)| s == side)
                .map(|(_, k, v)| format!("{k:?} = {v:?}\n"))
                .collect::<String>()
        };
        let rules = rules
            .canonicalize()
            .map_err(|e| format!("{}: {e}", rules.display()))?;
        let config = format!(
            r#"rules = {rules:?}
[source]
kind = "kafka"
brokers = "{servers}"
topics = ["{topic}"]
group_id = "bench-{name}"
[source.options]
"fetch.max.bytes" = "30000000"
"max.partition.fetch.bytes" = "30000000"
"receive.message.max.bytes" = "40000000"
{source}
[sink]
kind = "kafka"
topic = "{sink}"
[sink.options]
{sink_options}
[dead_letter]
kind = "file"
path = "dead-letters.ndjson"
[state]
dir = "state"
[clock]
mode = "{clock}"
[api]
listen = "127.0.0.1:{port}"
"#,
            source = options("source"),
            sink_options = options("sink"),
        );
        let path = dir.join("tagstream.toml");
        std::fs::write(&path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("tagstream.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&args.tagstream)
            .args(["run", "--config"])
            .arg(&path)
            .current_dir(&dir)
            .env(
                "TAGSTREAM_LOG",
                std::env::var("TAGSTREAM_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("TAGSTREAM_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", args.tagstream.display()))?;
        let s = Service {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        wait_until(
            "tagstream run to own its partitions",
            Duration::from_secs(60),
            || ureq::get(&format!("{}/readyz", s.base)).call().is_ok(),
        )
        .map_err(|e| format!("{e} (see {})", s.dir.join("tagstream.log").display()))?;
        Ok(s)
    }

    /// Sum of `tagstream_events_total` over its outcomes.
    fn events(&self) -> f64 {
        let Ok(response) = ureq::get(&format!("{}/metrics", self.base)).call() else {
            return 0.0;
        };
        let Ok(text) = response.into_string() else {
            return 0.0;
        };
        text.lines()
            .filter(|l| l.starts_with("tagstream_events_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// CPU seconds used so far (user + system), from /proc.
    /// The service's peak resident set (`VmHWM`), in KiB.
    fn peak_rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM: a clean stop (the state directory is thrown away anyway).
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn throughput(args: &Args, broker: &Broker, servers: &str) -> Res<()> {
    let topic = "tp-events";
    broker.create_topic(topic, 1)?;
    broker.create_topic("tp-transitions", 1)?;
    // The service's changelog (the mock has no CreateTopics).
    broker.create_topic("bench-throughput-changelog", 1)?;
    let file =
        std::fs::File::open(&args.input).map_err(|e| format!("{}: {e}", args.input.display()))?;
    // The mock cluster retains at most 5 MB per partition: gzip keeps the whole file retained.
    let compression = if matches!(broker, Broker::Mock(_)) {
        "gzip"
    } else {
        "lz4"
    };
    let p = producer(servers, "20", compression)?;
    let mut n = 0u64;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        send(&p, topic, 0, &n.to_be_bytes(), line.as_bytes());
        n += 1;
    }
    p.flush(Duration::from_secs(120))
        .map_err(|e| format!("flush: {e}"))?;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "bench-watermarks")
        .create()
        .map_err(|e| e.to_string())?;
    let (lo, hi) = c
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    // Tansu 0.6 reports a high watermark a little below the offsets it assigned: the check
    // only catches a broker that dropped a large part (the mock's 5 MB retention).
    if ((hi - lo) as u64) < n * 9 / 10 {
        return Err(format!(
            "the broker retains {} of the {n} events produced (offsets {lo}..{hi}): use a smaller --input",
            hi - lo
        ));
    }

    let state = args.work.join("replay-state");
    let _ = std::fs::remove_dir_all(&state);
    let started = Instant::now();
    let status = Command::new(&args.tagstream)
        .arg("replay")
        .arg("--rules")
        .arg(&args.rules)
        .arg("--input")
        .arg(&args.input)
        .arg("--state-dir")
        .arg(&state)
        .args(["--out", "/dev/null", "--dlq", "/dev/null"])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    let replay_s = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("tagstream replay failed: {status}"));
    }

    let svc = Service::start(
        args,
        "throughput",
        servers,
        &args.rules,
        topic,
        "tp-transitions",
        "event",
    )?;
    let started = Instant::now();
    let cpu0 = svc.cpu_seconds();
    // Until every event is counted, or none more for 5 s (a broker that lost some).
    let (mut applied, mut last) = (0.0, started);
    while applied < n as f64 && last.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
        let now = svc.events();
        if now > applied {
            (applied, last) = (now, Instant::now());
        }
    }
    let run_s = last.duration_since(started).as_secs_f64();
    if applied < n as f64 {
        eprintln!("bench_kafka: the service applied {applied} of {n} events (the rest never came)");
    }
    let applied = applied as u64;
    let cpu = (svc.cpu_seconds() - cpu0) / run_s;
    let (replay, run) = (n as f64 / replay_s, applied as f64 / run_s);
    println!(
        "| {} | throughput, 1 partition, event clock, {n} events | replay {replay:.0} ev/s | run {run:.0} ev/s | run/replay {:.2} | run CPU {:.0}% of a core | load {} |",
        args.broker,
        run / replay,
        cpu * 100.0,
        load()
    );
    Ok(())
}

/// Records when the broker acknowledged each latency event (by its index).
#[derive(Default)]
struct Acks(Mutex<HashMap<usize, i64>>);

impl rdkafka::ClientContext for Acks {}

impl rdkafka::producer::ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, i: usize) {
        if result.is_ok() {
            if let Ok(mut a) = self.0.lock() {
                a.insert(i, now_ms());
            }
        }
    }
}

struct Received {
    user: String,
    enter: bool,
    read_ms: i64,
    engine_ms: i64,
}

const WEEK_MS: i64 = 7 * 86_400_000;

/// Produces the `i`-th user's event to partition `i % LATENCY_PARTITIONS`, waiting while the
/// producer's queue is full.
fn send_new_user(
    p: &BaseProducer<Acks>,
    topic: &str,
    i: u64,
    opaque: usize,
    user: &str,
    event: &str,
) {
    let partition = (i % LATENCY_PARTITIONS as u64) as i32;
    let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, opaque)
        .partition(partition)
        .key(user.as_bytes())
        .payload(event.as_bytes());
    while let Err((_, r)) = p.send(record) {
        p.poll(Duration::from_millis(5));
        record = r;
    }
}

/// `--roll-users N`: N users who each bought for 150 a week before `roll_at`, so that they all
/// leave `active_spender` (its `last_seen > now() - 7d` turns false) at that instant, in the
/// middle of the latency run: a midnight roll of N timers while new users keep arriving.
fn prepare_roll(
    args: &Args,
    p: &BaseProducer<Acks>,
    topic: &str,
    received: &Arc<Mutex<Vec<Received>>>,
) -> Res<i64> {
    let n = args.roll_users;
    // Time to ingest them first (a conservative 5,000/s), then a few seconds of normal traffic.
    let lead_ms = 10_000 + (n / 5) as i64;
    let roll_at = now_ms() + lead_ms;
    for i in 0..n {
        let user = format!("roll-{i:08}");
        let event = format!(
            r#"{{"type":"track","event":"purchase","user_id":"{user}","ts":{},"properties":{{"amount":150}}}}"#,
            roll_at - WEEK_MS
        );
        send_new_user(p, topic, i, usize::MAX, &user, &event);
    }
    let _ = p.flush(Duration::from_secs(60));
    let entered = || {
        received.lock().map_or(0, |r| {
            r.iter()
                .filter(|x| x.enter && x.user.starts_with("roll-"))
                .count() as u64
        })
    };
    wait_until(
        "the roll users to enter",
        Duration::from_millis(lead_ms as u64),
        || entered() >= n,
    )?;
    // The measured run starts a few seconds before the roll.
    let start_at = roll_at - 5_000;
    if let Ok(wait) = u64::try_from(start_at - now_ms()) {
        std::thread::sleep(Duration::from_millis(wait));
    }
    Ok(roll_at)
}

fn latency(args: &Args, broker: &Broker, servers: &str) -> Res<()> {
    let topic = "lat-events";
    let sink = "lat-transitions";
    broker.create_topic(topic, LATENCY_PARTITIONS)?;
    broker.create_topic(sink, LATENCY_PARTITIONS)?;
    broker.create_topic("bench-latency-changelog", LATENCY_PARTITIONS)?;
    let svc = Service::start(
        args,
        "latency",
        servers,
        Path::new(LATENCY_RULES),
        topic,
        sink,
        "wall",
    )?;

    // The reader asks for data without waiting, so that its own fetch wait adds little.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "bench-reader")
        .set("fetch.wait.max.ms", "5")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..LATENCY_PARTITIONS {
        tpl.add_partition_offset(sink, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    reader.assign(&tpl).map_err(|e| e.to_string())?;
    let received = Arc::new(Mutex::new(Vec::<Received>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let reading = {
        let (received, done) = (received.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let read_ms = now_ms();
                let Some(v) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                else {
                    continue;
                };
                let enter = v["type"] == "segment_enter";
                let user = v["user_id"].as_str().unwrap_or_default().to_string();
                let engine_ms = v["ts"].as_i64().unwrap_or(0);
                if let Ok(mut r) = received.lock() {
                    r.push(Received {
                        user,
                        enter,
                        read_ms,
                        engine_ms,
                    });
                }
            }
        })
    };

    // One second of warm-up (connections, first metadata) at the same rate, not counted.
    let p: BaseProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        // librdkafka's default is 5: at 0, one request per event overwhelms Tansu's produce
        // path (its acknowledgements then lag by seconds).
        .set("linger.ms", args.linger_ms.to_string())
        .create_with_context(Acks::default())
        .map_err(|e| format!("producer: {e}"))?;
    let roll_at = if args.roll_users > 0 {
        Some(prepare_roll(args, &p, topic, &received)?)
    } else {
        None
    };
    let warmup = args.rate;
    let total = warmup + args.rate * args.seconds;
    let mut produced: HashMap<String, (usize, i64)> = HashMap::with_capacity(total as usize);
    let cpu0 = svc.cpu_seconds();
    let start = Instant::now();
    let mut measured_from = start;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if i == warmup {
            measured_from = Instant::now();
        }
        let user = format!("lat-{i:08}");
        let ts = now_ms();
        let event = format!(
            r#"{{"type":"track","event":"purchase","user_id":"{user}","ts":{ts},"properties":{{"amount":150}}}}"#
        );
        send_new_user(&p, topic, i, i as usize, &user, &event);
        p.poll(Duration::ZERO);
        if i >= warmup {
            produced.insert(user, (i as usize, ts));
        }
    }
    let produce_s = measured_from.elapsed().as_secs_f64();
    let _ = p.flush(Duration::from_secs(30));
    let count = |r: &Arc<Mutex<Vec<Received>>>| {
        r.lock()
            .map(|r| {
                r.iter()
                    .filter(|x| x.enter && produced.contains_key(&x.user))
                    .count()
            })
            .unwrap_or(0)
    };
    let _ = wait_until("every transition", Duration::from_secs(30), || {
        count(&received) >= produced.len()
    });
    if args.roll_users > 0 {
        let exits = || {
            received.lock().map_or(0, |r| {
                r.iter()
                    .filter(|x| !x.enter && x.user.starts_with("roll-"))
                    .count() as u64
            })
        };
        let _ = wait_until("every roll exit", Duration::from_secs(300), || {
            exits() >= args.roll_users
        });
    }
    let cpu = (svc.cpu_seconds() - cpu0) / start.elapsed().as_secs_f64();
    let peak_rss_mb = svc.peak_rss_kb() / 1024;
    done.store(true, Ordering::SeqCst);
    let _ = reading.join();
    let received = received.lock().map_err(|e| e.to_string())?;
    let mut e2e = Vec::new();
    let mut ingest = Vec::new();
    let mut append = Vec::new();
    let acks = p.context().0.lock().map_err(|e| e.to_string())?;
    for r in received.iter() {
        if let Some(&(i, sent)) = produced.get(&r.user) {
            if let Some(acked) = acks.get(&i) {
                append.push(acked - sent);
            }
            e2e.push(r.read_ms - sent);
            ingest.push(r.engine_ms - sent);
        }
    }
    e2e.sort_unstable();
    ingest.sort_unstable();
    append.sort_unstable();
    let q = |v: &[i64], q: f64| -> String {
        if v.is_empty() {
            return "-".into();
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        format!("{}", v[i])
    };
    println!(
        "| {} | latency, wall clock, {} partitions, {:.0} ev/s for {}s | {}/{} transitions | e2e ms p50 {} p99 {} max {} | ingest ms p50 {} p99 {} | produce ack ms p50 {} p99 {} | run CPU {:.0}% of a core | load {} |",
        args.broker,
        LATENCY_PARTITIONS,
        produced.len() as f64 / produce_s,
        args.seconds,
        e2e.len(),
        produced.len(),
        q(&e2e, 0.5),
        q(&e2e, 0.99),
        q(&e2e, 1.0),
        q(&ingest, 0.5),
        q(&ingest, 0.99),
        q(&append, 0.5),
        q(&append, 0.99),
        cpu * 100.0,
        load()
    );
    if let Some(roll_at) = roll_at {
        let exits: Vec<i64> = received
            .iter()
            .filter(|r| !r.enter && r.user.starts_with("roll-"))
            .map(|r| r.read_ms)
            .collect();
        let roll_end = exits.iter().max().copied().unwrap_or(roll_at);
        let (mut during, mut outside) = (Vec::new(), Vec::new());
        for r in received.iter().filter(|r| r.enter) {
            if let Some(&(_, sent)) = produced.get(&r.user) {
                let latency = r.read_ms - sent;
                if (roll_at..=roll_end).contains(&sent) {
                    during.push(latency);
                } else {
                    outside.push(latency);
                }
            }
        }
        during.sort_unstable();
        outside.sort_unstable();
        let roll_s = (roll_end - roll_at) as f64 / 1000.0;
        println!(
            "| {} | roll of {} timers at one instant, during the latency run | {}/{} exits read, the last {:.1} s after the instant ({:.0} timers/s) | e2e ms during the roll p50 {} p99 {} max {} ({} events) | before and after p50 {} p99 {} | service peak RSS {} MB |",
            args.broker,
            args.roll_users,
            exits.len(),
            args.roll_users,
            roll_s,
            exits.len() as f64 / roll_s.max(0.001),
            q(&during, 0.5),
            q(&during, 0.99),
            q(&during, 1.0),
            during.len(),
            q(&outside, 0.5),
            q(&outside, 0.99),
            peak_rss_mb,
        );
    }
    Ok(())
}

fn main() {
    let result = parse_args().and_then(|args| {
        std::fs::create_dir_all(&args.work).map_err(|e| e.to_string())?;
        let (broker, servers) = Broker::start(&args.broker, &args.work)?;
        if !args.skip_throughput {
            throughput(&args, &broker, &servers)?;
        }
        latency(&args, &broker, &servers)
    });
    if let Err(e) = result {
        eprintln!("bench_kafka: {e}");
        std::process::exit(1);
    }
}
