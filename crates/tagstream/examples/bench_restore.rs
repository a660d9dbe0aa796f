//! `make bench-restore`: how much faster a partition comes back from the changelog than from the
//! input history, with `tagstream run` against librdkafka's mock cluster (hosted in this
//! process).
//!
//! Generated events of `--users` users are produced to a topic of 32 partitions (the mock keeps
//! at most 5 MB of a partition: 32 keep the input and the changelog whole at 50k users). Instance
//! A builds the state from the input (rebuild: from its assignment to every input offset
//! committed) and publishes the changelog; its volume is then lost and instance B restores
//! every partition from the changelog (restore: the sum of the per-partition restore times B
//! logs, which run one after the other). Prints users/s and MB/s of both and their ratio. Not a
//! test: nothing is asserted about times.
//!
//! ```text
//! bench_restore --tagstream BIN [--users 50000] [--events 300000] [--work DIR]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::TopicPartitionList;

type Res<T> = Result<T, String>;

const PARTITIONS: i32 = 32;
const GROUP: &str = "bench-restore";
const LIMIT: Duration = Duration::from_secs(900);

/// FNV-1a over the key, as the tests partition.
fn partition_of(key: &[u8]) -> i32 {
    let mut h: u32 = 0x811c9dc5;
    for b in key {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % PARTITIONS as u32) as i32
}

struct Args {
    tagstream: PathBuf,
    users: u64,
    events: u64,
    work: PathBuf,
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        tagstream: PathBuf::from("tagstream"),
        users: 50_000,
        events: 300_000,
        work: std::env::temp_dir().join("tagstream-bench-restore"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--tagstream" => a.tagstream = value.into(),
            "--users" => a.users = num(&value)?,
            "--events" => a.events = num(&value)?,
            "--work" => a.work = value.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> Res<bool>) -> Res<()> {
    let deadline = Instant::now() + LIMIT;
    while !ok()? {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

struct Instance {
    child: Child,
    log: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    fn start(args: &Args, dir: &Path, servers: &str, name: &str) -> Res<Instance> {
        let config = dir.join("tagstream.toml");
        std::fs::write(
            &config,
            format!(
                "rules = \"{rules}\"\n[source]\nkind = \"kafka\"\nbrokers = \"{servers}\"\ntopics = [\"events\"]\ngroup_id = \"{GROUP}\"\n[source.options]\n\"session.timeout.ms\" = \"6000\"\n[sink]\nkind = \"file\"\npath = \"out.ndjson\"\n[dead_letter]\nkind = \"file\"\npath = \"dlq.ndjson\"\n[state]\ndir = \"state\"\n[clock]\nmode = \"event\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
                rules = std::fs::canonicalize("config/rules/ecommerce.toml")
                    .map_err(|e| format!("config/rules/ecommerce.toml: {e}"))?
                    .display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(&args.tagstream)
            .args(["run", "--config", config.to_str().unwrap_or_default()])
            .current_dir(dir)
            .env("TAGSTREAM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("{}: {e}", args.tagstream.display()))?;
        Ok(Instance { child, log })
    }

    /// The log so far; an error once the process has exited.
    fn log(&mut self) -> Res<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        match self.child.try_wait() {
            Ok(None) => Ok(text),
            _ => Err(format!("tagstream exited:\n{text}")),
        }
    }

    fn stop(mut self) -> Res<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("tagstream exited with {status}"));
        }
        Ok(())
    }
}

fn committed(consumer: &BaseConsumer, topic: &str) -> Res<Vec<i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let t = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    Ok((0..PARTITIONS)
        .map(|p| {
            t.find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(-1)
        })
        .collect())
}

fn run(args: &Args) -> Res<()> {
    std::fs::create_dir_all(&args.work).map_err(|e| e.to_string())?;
    let out = Command::new(&args.tagstream)
        .args(["gen", "--users", &args.users.to_string()])
        .args(["--events", &args.events.to_string(), "--seed", "5"])
        .output()
        .map_err(|e| e.to_string())?;
    let input = String::from_utf8(out.stdout).map_err(|e| e.to_string())?;

    let mock = MockCluster::new(1).map_err(|e| e.to_string())?;
    for topic in ["events", "bench-restore-changelog"] {
        mock.create_topic(topic, PARTITIONS, 1)
            .map_err(|e| e.to_string())?;
    }
    let servers = mock.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .create()
        .map_err(|e| e.to_string())?;
    for line in input.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let user = v["user_id"].as_str().unwrap_or_default().to_string();
        let mut record = BaseRecord::to("events")
            .partition(partition_of(user.as_bytes()))
            .key(user.as_str())
            .payload(line);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| e.to_string())?;
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("group.id", GROUP)
        .create()
        .map_err(|e| e.to_string())?;
    let high: Vec<i64> = (0..PARTITIONS)
        .map(|p| {
            reader
                .fetch_watermarks("events", p, Duration::from_secs(10))
                .map(|(_, h)| h)
                .map_err(|e| e.to_string())
        })
        .collect::<Res<_>>()?;

    // Rebuild: A from its assignment to the last input offset committed.
    let dir = args.work.join("a");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut a = Instance::start(args, &dir, &servers, "a")?;
    wait_until("A's assignment", || {
        Ok(a.log()?.contains("partitions assigned"))
    })?;
    let started = Instant::now();
    wait_until("A to consume the input", || {
        a.log()?;
        Ok(committed(&reader, "events")? == high)
    })?;
    let rebuild = started.elapsed().as_secs_f64();
    a.stop()?;

    // Restore: A's volume is lost; B restores every partition.
    std::fs::remove_dir_all(dir.join("state")).map_err(|e| e.to_string())?;
    let mut b = Instance::start(args, &dir, &servers, "b")?;
    wait_until("B's restores", || {
        let restored = b
            .log()?
            .matches("partition restored from the changelog")
            .count();
        Ok(restored == PARTITIONS as usize)
    })?;
    let log = b.log()?;
    b.stop()?;
    let field = |line: &str, key: &str| -> f64 {
        line.split(&format!(" {key}="))
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let (mut secs, mut bytes, mut users, mut records) = (0.0, 0.0, 0.0, 0.0);
    for line in log
        .lines()
        .filter(|l| l.contains("partition restored from the changelog"))
    {
        secs += field(line, "seconds");
        bytes += field(line, "bytes");
        users += field(line, "users");
        records += field(line, "records");
    }
    let input_mb = input.len() as f64 / 1e6;
    println!("| | users | data | seconds | users/s | MB/s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| rebuild from the input | {users:.0} | {input_mb:.1} MB, {} events | {rebuild:.2} | {:.0} | {:.1} |",
        input.lines().count(),
        users / rebuild,
        input_mb / rebuild
    );
    println!(
        "| restore from the changelog | {users:.0} | {:.1} MB, {records:.0} records | {secs:.2} | {:.0} | {:.1} |",
        bytes / 1e6,
        users / secs,
        bytes / 1e6 / secs
    );
    println!("restore is {:.0}x faster than the rebuild", rebuild / secs);
    Ok(())
}

fn main() {
    match parse_args().and_then(|a| run(&a)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bench_restore: {e}");
            std::process::exit(1);
        }
    }
}
