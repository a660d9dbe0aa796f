//! The parse floor of `make bench`: reads an NDJSON file and decodes every line with serde_json
//! into a typed struct (every field of the native format, properties as a JSON map), doing
//! nothing else. Throughput figures are reported as ratios against this pass, measured in the
//! same run on the same file.
//!
//! `cargo run --example parse_floor -- events.ndjson` prints `lines ok seconds events/s`.

use std::collections::HashMap;
use std::io::BufRead;
use std::time::Instant;

use serde::Deserialize;

#[derive(Deserialize)]
#[allow(dead_code)]
struct NativeEvent {
    user_id: serde_json::Value,
    #[serde(rename = "type")]
    kind: Option<String>,
    event: Option<String>,
    ts: serde_json::Value,
    properties: Option<HashMap<String, serde_json::Value>>,
    event_id: Option<String>,
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: parse_floor <events.ndjson>");
    let start = Instant::now();
    let file = std::fs::File::open(&path).expect("open the input");
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let (mut lines, mut ok) = (0u64, 0u64);
    for line in reader.split(b'\n') {
        let line = line.expect("read the input");
        lines += 1;
        if serde_json::from_slice::<NativeEvent>(&line).is_ok() {
            ok += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{lines} {ok} {secs:.3} {:.0}", lines as f64 / secs);
}
