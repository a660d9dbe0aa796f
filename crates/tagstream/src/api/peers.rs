//! One answer from any pod (`api.peers`): a `/v1` read is sent to every pod (this one
//! included) with [`INTERNAL_HEADER`], each answers for the partitions it owns, and the
//! answers are combined here.
//!
//! * Peers are `api.peers`: several `host:port` entries are one peer each; a single entry is
//!   resolved at every request and each address it resolves to is a peer (a headless Service
//!   lists every pod). Peers are numbered in that order (addresses sorted) for metrics.
//! * Every peer must answer: a peer that cannot be reached, times out, answers 5xx or
//!   something that is not the API's JSON makes the request fail with 503 naming it. A
//!   combined answer is never partial.
//! * Internal requests carry the caller's bearer token (the configured one) and
//!   [`INTERNAL_HEADER`]; a pod answers such a request from its own partitions, never fanning
//!   out again.
//! * Lists are combined in (partition, internal id) order. Partitions are owned by one pod
//!   each, so the key is unique and peer-independent while the assignment holds; cursors are
//!   `p<partition>.<id>` keys of the last member returned (see docs/api.md).

use std::collections::VecDeque;
use std::io::BufRead;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::{ApiError, ApiState};

/// Marks a request from another pod: answer from the local partitions only.
pub const INTERNAL_HEADER: &str = "x-tagstream-internal";

/// How long a peer may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a peer may stay silent while answering (a tag audience over many users takes a
/// while).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The configured peers and the HTTP client that reaches them.
pub struct Peers {
    entries: Vec<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

/// One pod to ask.
#[derive(Debug, Clone)]
pub struct Target {
    /// Position among the peers of this request (metrics label).
    pub index: usize,
    /// `host:port` to connect to.
    pub addr: String,
    /// How errors name it.
    pub name: String,
}

/// One peer's answer.
#[derive(Debug)]
pub struct Answer {
    pub target: Target,
    pub status: u16,
    pub body: Value,
}

impl Peers {
    /// None when `entries` is empty (no fan-out).
    pub fn new(entries: &[String]) -> Option<Arc<Peers>> {
        if entries.is_empty() {
            return None;
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .build();
        Some(Arc::new(Peers {
            entries: entries.to_vec(),
            agent,
        }))
    }

    /// The pods to ask now.
    pub fn targets(&self) -> Result<Vec<Target>, ApiError> {
        if let [entry] = self.entries.as_slice() {
            let resolved: Vec<std::net::SocketAddr> = entry
                .to_socket_addrs()
                .map_err(|e| {
                    unavailable(entry, format!("api.peers {entry:?} does not resolve: {e}"))
                })?
                .collect();
            // A dual-stack name lists each pod twice (A and AAAA): one family only, IPv4 when
            // there is any, so that no pod is counted twice. Sorted addresses number the peers.
            let v4 = resolved.iter().any(std::net::SocketAddr::is_ipv4);
            let mut addrs: Vec<String> = resolved
                .into_iter()
                .filter(|a| a.is_ipv4() == v4)
                .map(|a| a.to_string())
                .collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                return Err(unavailable(
                    entry,
                    format!("api.peers {entry:?} resolves to no address"),
                ));
            }
            let many = addrs.len() > 1;
            return Ok(addrs
                .into_iter()
                .enumerate()
                .map(|(index, addr)| Target {
                    index,
                    name: if many || addr != *entry {
                        format!("{addr} (api.peers {entry})")
                    } else {
                        addr.clone()
                    },
                    addr,
                })
                .collect());
        }
        Ok(self
            .entries
            .iter()
            .enumerate()
            .map(|(index, e)| Target {
                index,
                addr: e.clone(),
                name: e.clone(),
            })
            .collect())
    }

    fn request(
        &self,
        state: &ApiState,
        target: &Target,
        method: &str,
        path: &str,
    ) -> ureq::Request {
        let mut req = self
            .agent
            .request(method, &format!("http://{}{path}", target.addr))
            .set(INTERNAL_HEADER, "1");
        if let Some(token) = &state.token {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        req
    }

    /// Sends `method path` (with `body` as JSON) to one peer.
    fn ask_one(
        &self,
        state: &ApiState,
        target: &Target,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ureq::Response, ApiError> {
        let req = self.request(state, target, method, path);
        let result = match body {
            Some(b) => req.send_json(b.clone()),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) if status < 500 => r,
            Err(ureq::Error::Status(status, r)) => {
                let text = r.into_string().unwrap_or_default();
                return Err(unavailable(
                    &target.name,
                    format!("peer {} answered {status}: {}", target.name, text.trim()),
                ));
            }
            Err(e) => {
                return Err(unavailable(
                    &target.name,
                    format!("peer {} did not answer: {e}", target.name),
                ))
            }
        };
        Ok(response)
    }

    /// Sends `method path` to every peer at once and waits for every answer (JSON). Any
    /// peer that fails makes the whole request fail with 503 naming it.
    pub fn fan_out(
        &self,
        state: &ApiState,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Vec<Answer>, ApiError> {
        let targets = self.targets()?;
        let results: Vec<Result<Answer, ApiError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = targets
                .iter()
                .map(|target| {
                    scope.spawn(move || {
                        let response = self.ask_one(state, target, method, path, body)?;
                        let status = response.status();
                        let text = response.into_string().map_err(|e| {
                            unavailable(
                                &target.name,
                                format!("peer {}: reading its answer: {e}", target.name),
                            )
                        })?;
                        let body: Value = serde_json::from_str(&text).map_err(|_| {
                            unavailable(
                                &target.name,
                                format!("peer {} answered something other than JSON", target.name),
                            )
                        })?;
                        Ok(Answer {
                            target: target.clone(),
                            status,
                            body,
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "a peer request panicked",
                        ))
                    })
                })
                .collect()
        });
        let mut answers = Vec::with_capacity(results.len());
        for (target, result) in targets.iter().zip(results) {
            super::observe_peer(state, target.index, result.is_ok());
            answers.push(result?);
        }
        Ok(answers)
    }

    /// Opens every peer's keyed NDJSON export (`method path`, `body` as JSON). A peer that
    /// answers 4xx makes the whole request answer that; one that fails, 503.
    pub fn open_exports(
        &self,
        state: &ApiState,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Vec<PeerLines>, ApiError> {
        let targets = self.targets()?;
        let mut streams = Vec::with_capacity(targets.len());
        for target in targets {
            let result = self.ask_one(state, &target, method, path, body);
            super::observe_peer(state, target.index, result.is_ok());
            let response = result?;
            if response.status() != 200 {
                let status = response.status();
                let body: Value = response
                    .into_string()
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_else(
                        || json!({ "error": format!("peer {} answered {status}", target.name) }),
                    );
                return Err(passed_through(status, body));
            }
            streams.push(PeerLines {
                reader: Box::new(std::io::BufReader::new(response.into_reader())),
                target,
                buffered: VecDeque::new(),
                done: false,
            });
        }
        Ok(streams)
    }
}

/// A peer's keyed export, read line by line.
pub struct PeerLines {
    reader: Box<dyn BufRead + Send>,
    pub target: Target,
    buffered: VecDeque<(u32, u32, String)>,
    done: bool,
}

impl PeerLines {
    /// The next member of this peer ((partition, id), user id) without consuming it.
    fn peek(&mut self) -> Result<Option<&(u32, u32, String)>, String> {
        if self.buffered.is_empty() && !self.done {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    let v: Value = serde_json::from_str(&line).map_err(|e| {
                        format!("peer {} sent a bad export line: {e}", self.target.name)
                    })?;
                    let key = v["key"].as_array().and_then(|k| {
                        Some((
                            u32::try_from(k.first()?.as_u64()?).ok()?,
                            u32::try_from(k.get(1)?.as_u64()?).ok()?,
                        ))
                    });
                    match (key, v["user_id"].as_str()) {
                        (Some((p, id)), Some(user)) => {
                            self.buffered.push_back((p, id, user.to_string()))
                        }
                        _ => {
                            return Err(format!(
                                "peer {} sent an export line without key",
                                self.target.name
                            ))
                        }
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "peer {} stopped sending its export: {e}",
                        self.target.name
                    ))
                }
            }
        }
        Ok(self.buffered.front())
    }
}

/// Merges the peers' keyed exports into NDJSON chunks of `chunk` lines in (partition, id)
/// order, handing each to `send` (false: stop). Memory: one line per peer plus one chunk.
pub fn merge_exports(
    mut streams: Vec<PeerLines>,
    chunk: usize,
    send: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<u64, String> {
    let mut sent = 0u64;
    let mut bytes = Vec::new();
    let mut lines = 0;
    loop {
        let mut best: Option<(usize, (u32, u32))> = None;
        for (i, s) in streams.iter_mut().enumerate() {
            if let Some((p, id, _)) = s.peek()? {
                if best.is_none_or(|(_, k)| (*p, *id) < k) {
                    best = Some((i, (*p, *id)));
                }
            }
        }
        let Some((i, _)) = best else {
            break;
        };
        let (_, _, user) = streams[i].buffered.pop_front().expect("peeked");
        bytes.extend_from_slice(b"{\"user_id\":");
        serde_json::to_writer(&mut bytes, &user).expect("a string serialises");
        bytes.extend_from_slice(b"}\n");
        lines += 1;
        sent += 1;
        if lines >= chunk {
            if !send(std::mem::take(&mut bytes)) {
                return Ok(sent);
            }
            lines = 0;
        }
    }
    if !bytes.is_empty() {
        send(bytes);
    }
    Ok(sent)
}

/// 503 naming the peer.
pub fn unavailable(peer: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).with("peer", json!(peer))
}

/// A peer's error answer, passed on as it is.
pub fn passed_through(status: u16, body: Value) -> ApiError {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let message = body["error"]
        .as_str()
        .unwrap_or("a peer refused the request")
        .to_string();
    let mut e = ApiError::new(status, message);
    if let Value::Object(map) = body {
        for (k, v) in map {
            if k != "error" {
                e = e.with(&k, v);
            }
        }
    }
    e
}

/// The one answer to a user lookup: the peer that has the user (200), else the answer all
/// gave (404, or the same 4xx).
pub fn owner_answer(answers: Vec<Answer>) -> Result<Value, ApiError> {
    let mut first_error = None;
    for a in answers {
        if a.status == 200 {
            return Ok(a.body);
        }
        if first_error.is_none() {
            first_error = Some((a.status, a.body));
        }
    }
    let (status, body) = first_error.unwrap_or((404, json!({ "error": "unknown user" })));
    Err(passed_through(status, body))
}

/// Every answer must be 200: the first that is not is passed on.
pub fn all_ok(answers: &[Answer]) -> Result<(), ApiError> {
    match answers.iter().find(|a| a.status != 200) {
        Some(a) => Err(passed_through(a.status, a.body.clone())),
        None => Ok(()),
    }
}

/// A merged page: members of every peer's page ((partition, id) keys under `keys`) in key
/// order, the first `limit`, and the cursor after them when more remain.
pub fn merge_pages(
    answers: &[Answer],
    limit: usize,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let mut items: Vec<((u32, u32), Value)> = Vec::new();
    let mut more = false;
    for a in answers {
        let members = a.body["members"].as_array().cloned().unwrap_or_default();
        let keys = a.body["keys"].as_array().cloned().unwrap_or_default();
        if members.len() != keys.len() {
            return Err(unavailable(
                &a.target.name,
                format!("peer {} answered a page without keys", a.target.name),
            ));
        }
        for (m, k) in members.into_iter().zip(keys) {
            let key = (|| {
                Some((
                    u32::try_from(k.get(0)?.as_u64()?).ok()?,
                    u32::try_from(k.get(1)?.as_u64()?).ok()?,
                ))
            })()
            .ok_or_else(|| {
                unavailable(
                    &a.target.name,
                    format!("peer {} answered a bad key", a.target.name),
                )
            })?;
            items.push((key, m));
        }
        more |= !a.body["next_cursor"].is_null();
    }
    items.sort_by_key(|(k, _)| *k);
    if items.len() > limit {
        more = true;
        items.truncate(limit);
    }
    let next = match items.last() {
        Some((k, _)) if more => Some(encode_key(*k)),
        _ => None,
    };
    Ok((items.into_iter().map(|(_, m)| m).collect(), next))
}

/// A cursor in the combined order: `p<partition>.<id>`.
pub fn encode_key((p, id): (u32, u32)) -> String {
    format!("p{p}.{id}")
}

pub fn decode_key(text: &str) -> Option<(u32, u32)> {
    let (p, id) = text.strip_prefix('p')?.split_once('.')?;
    Some((p.parse().ok()?, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[test]
    fn one_name_is_every_address_it_resolves_to_and_a_list_is_itself() {
        let peers = Peers::new(&["localhost:8080".to_string()]).unwrap();
        let targets = peers.targets().unwrap();
        // localhost may resolve to 127.0.0.1 and ::1: the same host, asked once.
        assert_eq!(targets.len(), 1, "{targets:?}");
        assert!(
            targets[0].name.contains("api.peers localhost:8080"),
            "{targets:?}"
        );
        let peers = Peers::new(&["a:1".to_string(), "b:2".to_string()]).unwrap();
        let targets = peers.targets().unwrap();
        assert_eq!(
            targets
                .iter()
                .map(|t| (t.index, t.addr.as_str()))
                .collect::<Vec<_>>(),
            vec![(0, "a:1"), (1, "b:2")]
        );
        assert!(Peers::new(&[]).is_none());
        let e = Peers::new(&["no-such-host.invalid:80".to_string()])
            .unwrap()
            .targets()
            .unwrap_err();
        assert_eq!(e.into_response().status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn cursors_of_the_combined_order_round_trip() {
        assert_eq!(decode_key(&encode_key((3, 17))), Some((3, 17)));
        for bad in ["u17", "p3", "p3.", "p.1", "px.1", "p1.2.3"] {
            assert_eq!(decode_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn pages_merge_in_key_order_and_say_when_more_remain() {
        let answer = |i: usize, members: Value, keys: Value, next: Value| Answer {
            target: Target {
                index: i,
                addr: format!("h{i}:1"),
                name: format!("h{i}:1"),
            },
            status: 200,
            body: json!({ "members": members, "keys": keys, "next_cursor": next }),
        };
        let answers = vec![
            answer(0, json!(["a", "c"]), json!([[0, 5], [2, 1]]), Value::Null),
            answer(1, json!(["b"]), json!([[1, 9]]), Value::Null),
        ];
        let (members, next) = merge_pages(&answers, 2).unwrap();
        assert_eq!(members, vec![json!("a"), json!("b")]);
        assert_eq!(next.as_deref(), Some("p1.9"));
        let (members, next) = merge_pages(&answers, 3).unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(next, None);
        // A peer with more than it sent: the merged page is not the last.
        let answers = vec![answer(0, json!(["a"]), json!([[0, 5]]), json!("p0.5"))];
        assert_eq!(merge_pages(&answers, 1).unwrap().1.as_deref(), Some("p0.5"));
    }
}
