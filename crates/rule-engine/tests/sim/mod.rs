//! A minimal in-memory driver for tests: one partition, every timer fired in global order.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use tagstream_rules::engine;
use tagstream_rules::event::{
    decode_message_keeping, DecodeOptions, Decoded, EventBody, Format, Millis,
};
use tagstream_rules::rules::RuleSet;
use tagstream_rules::state::UserState;
use tagstream_rules::transition::Transition;

pub struct Sim {
    pub rules: RuleSet,
    pub users: BTreeMap<String, UserState>,
    pub now: Millis,
    pub out: Vec<Transition>,
    pub duplicates: usize,
}

impl Sim {
    pub fn new(rules: &str) -> Sim {
        let rules = RuleSet::compile(rules, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        Sim {
            rules,
            users: BTreeMap::new(),
            now: Millis::MIN,
            out: Vec::new(),
            duplicates: 0,
        }
    }

    fn catch_up_all(&mut self, now: Millis) {
        for (id, state) in self.users.iter_mut() {
            engine::catch_up(
                &self.rules,
                &Arc::from(id.as_str()),
                state,
                now,
                &mut self.out,
            );
        }
    }

    pub fn event(&mut self, json: &str) {
        self.event_as(json, Format::Native);
    }

    pub fn event_as(&mut self, json: &str, format: Format) {
        let opts = DecodeOptions {
            format,
            ..DecodeOptions::default()
        };
        // The engine's decoding: only the track properties the rules read are kept.
        let event =
            match decode_message_keeping(json.as_bytes(), &opts, &self.rules.track_properties) {
                Ok(Decoded::Event(event)) => event,
                other => panic!("{json}: {other:?}"),
            };
        if engine::is_duplicate(
            &self.rules,
            self.users.get(&event.user_id),
            &event,
            self.now,
        ) {
            self.duplicates += 1;
            return;
        }
        let now = self.now.max(event.ts);
        self.catch_up_all(now);
        self.now = now;
        let user: Arc<str> = Arc::from(event.user_id.as_str());
        if matches!(event.body, EventBody::Delete) {
            if let Some(state) = self.users.remove(&event.user_id) {
                engine::delete(&self.rules, &user, &state, now, &mut self.out);
            }
            return;
        }
        let state = self
            .users
            .entry(event.user_id.clone())
            .or_insert_with(|| UserState::new(&self.rules.aggregates, self.rules.segments.len()));
        engine::apply(&self.rules, &user, state, &event, now, &mut self.out);
    }

    pub fn advance(&mut self, t: Millis) {
        self.catch_up_all(t);
        self.now = self.now.max(t);
    }

    pub fn tag(&self, user: &str, tag: &str) -> serde_json::Value {
        let state = &self.users[user];
        engine::dump_line(&self.rules, user, state, self.now)["tags"][tag].clone()
    }

    pub fn segments(&self, user: &str) -> serde_json::Value {
        match self.users.get(user) {
            Some(state) => {
                engine::dump_line(&self.rules, user, state, self.now)["segments"].clone()
            }
            None => serde_json::json!(null),
        }
    }

    /// Transitions as (user, segment, type, ts, cause).
    pub fn log(&self) -> Vec<(String, String, &'static str, Millis, &'static str)> {
        self.out
            .iter()
            .map(|t| {
                (
                    t.user_id.to_string(),
                    t.segment.to_string(),
                    t.kind(),
                    t.ts,
                    t.cause.as_str(),
                )
            })
            .collect()
    }
}
