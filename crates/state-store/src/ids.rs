//! [`UserIds`]: the dictionary user id (string) ↔ dense `u32`, for roaring bitmaps.
//!
//! Layout in [`Cf::Ids`]:
//! - `b"u" + user_id` → id (`u32` BE)
//! - `b"i" + id (u32 BE)` → user_id (UTF-8)
//! - `b"next"` → the next id to hand out (`u32` BE; absent = 0)
//!
//! Ids are never reused. A deleted user's entries are removed ([`UserIds::forget`]): the
//! dictionary keeps nothing of it, and a re-created user gets a new id.

use std::collections::HashMap;

use crate::keys::{decode_u32_be, u32_be};
use crate::{Cf, StateStore, StoreError, WriteBatch};

const NEXT_KEY: &[u8] = b"next";

fn user_key(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + user.len());
    k.push(b'u');
    k.extend_from_slice(user.as_bytes());
    k
}

fn id_key(id: u32) -> [u8; 5] {
    let [a, b, c, d] = u32_be(id);
    [b'i', a, b, c, d]
}

fn decode_id(v: &[u8]) -> Result<u32, StoreError> {
    decode_u32_be(v).ok_or_else(|| {
        StoreError::corrupt(
            Cf::Ids.name(),
            "user id",
            format!("{} bytes, expected 4", v.len()),
        )
    })
}

fn decode_name(v: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(v)
        .map_err(|e| StoreError::corrupt(Cf::Ids.name(), "user name", e.to_string()))
}

/// Assigns and resolves user ids.
///
/// The writer (the engine) owns one `UserIds`; new assignments are staged in the
/// caller's [`WriteBatch`] and become durable with it. Until then they live in a pending
/// cache, so two calls before the commit agree, and they are re-staged into any later
/// batch until [`UserIds::committed`] is called — a dropped or failed batch can
/// therefore never leave an id that was handed out unrecorded. Readers (the HTTP API)
/// use the associated functions [`UserIds::name_of`] / [`UserIds::names_of`] on the
/// store directly.
/// Cloning is cheap between batches (nothing is pending once a batch is committed): the engine
/// keeps a copy to restore when a commit fails.
#[derive(Debug, Default, Clone)]
pub struct UserIds {
    /// Assignments not yet known to be committed.
    pending: HashMap<String, u32>,
    /// The next id to hand out; `None` until read from the store.
    next: Option<u32>,
    /// Serial of the batch `pending` was last staged into.
    staged_in: Option<u64>,
}

impl UserIds {
    /// A dictionary with nothing cached; everything is read from the store on demand.
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of `user`, if assigned (committed, or pending in this instance).
    pub fn lookup(&self, store: &dyn StateStore, user: &str) -> Result<Option<u32>, StoreError> {
        if let Some(&id) = self.pending.get(user) {
            return Ok(Some(id));
        }
        store
            .get(Cf::Ids, &user_key(user))?
            .map(|v| decode_id(&v))
            .transpose()
    }

    /// The id of `user`, assigning the next free one if it has none; a new assignment is
    /// staged in `batch`.
    pub fn get_or_assign(
        &mut self,
        store: &dyn StateStore,
        user: &str,
        batch: &mut WriteBatch,
    ) -> Result<u32, StoreError> {
        Ok(self.get_or_assign_many(store, &[user], batch)?[0])
    }

    /// [`UserIds::get_or_assign`] for each of `users`, in order (new ids are handed out in
    /// that order, so the result is the same as one call per user), with the dictionary read
    /// in one batched lookup: a commit of 100k new users would otherwise pay a point read
    /// (a miss, through every level's filters) per user.
    pub fn get_or_assign_many(
        &mut self,
        store: &dyn StateStore,
        users: &[&str],
        batch: &mut WriteBatch,
    ) -> Result<Vec<u32>, StoreError> {
        if self.staged_in != Some(batch.serial()) {
            // A new batch: the previous one may have been dropped, so stage again every
            // assignment not known to be committed (identical values if it was not).
            for (name, &id) in &self.pending {
                stage(batch, name, id);
            }
            if let Some(next) = self.next.filter(|_| !self.pending.is_empty()) {
                batch.put(Cf::Ids, NEXT_KEY, u32_be(next));
            }
            self.staged_in = Some(batch.serial());
        }
        let unknown: Vec<usize> = (0..users.len())
            .filter(|&i| !self.pending.contains_key(users[i]))
            .collect();
        let keys: Vec<Vec<u8>> = unknown.iter().map(|&i| user_key(users[i])).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let mut stored: Vec<Option<u32>> = vec![None; users.len()];
        for (&i, value) in unknown.iter().zip(store.multi_get(Cf::Ids, &refs)?) {
            stored[i] = value.map(|v| decode_id(&v)).transpose()?;
        }
        users
            .iter()
            .zip(stored)
            .map(|(user, stored)| match (self.pending.get(*user), stored) {
                (Some(&id), _) | (None, Some(id)) => Ok(id),
                (None, None) => self.assign(store, user, batch),
            })
            .collect()
    }

    /// Hands out the next free id to `user` (which has none), staged in `batch`.
    fn assign(
        &mut self,
        store: &dyn StateStore,
        user: &str,
        batch: &mut WriteBatch,
    ) -> Result<u32, StoreError> {
        let id = match self.next {
            Some(next) => next,
            None => store
                .get(Cf::Ids, NEXT_KEY)?
                .map(|v| decode_id(&v))
                .transpose()?
                .unwrap_or(0),
        };
        // `next` = u32::MAX means every id up to u32::MAX - 1 is taken; u32::MAX itself is
        // kept unassigned so the counter never wraps.
        let next = id.checked_add(1).ok_or(StoreError::IdsExhausted)?;
        stage(batch, user, id);
        batch.put(Cf::Ids, NEXT_KEY, u32_be(next));
        self.next = Some(next);
        self.pending.insert(user.to_owned(), id);
        Ok(id)
    }

    /// Stages the removal of `user`'s entries (a deleted user: nothing of it is kept). Its id
    /// is not handed out again.
    pub fn forget(&mut self, user: &str, id: u32, batch: &mut WriteBatch) {
        self.pending.remove(user);
        batch.delete(Cf::Ids, user_key(user));
        batch.delete(Cf::Ids, id_key(id));
    }

    /// Call after the batch holding the assignments was committed: forgets them (they
    /// are now in the store). Optional for correctness, needed to keep the cache small.
    pub fn committed(&mut self) {
        self.pending.clear();
        self.staged_in = None;
    }

    /// Number of assignments not yet known to be committed.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The user id behind `id`, if assigned and committed.
    pub fn name_of(store: &dyn StateStore, id: u32) -> Result<Option<String>, StoreError> {
        store
            .get(Cf::Ids, &id_key(id))?
            .map(decode_name)
            .transpose()
    }

    /// The user ids behind `ids`, in the same order (`None` where unassigned), in one
    /// read — for pages of a segment's members.
    pub fn names_of(
        store: &dyn StateStore,
        ids: &[u32],
    ) -> Result<Vec<Option<String>>, StoreError> {
        let keys: Vec<[u8; 5]> = ids.iter().map(|&id| id_key(id)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        store
            .multi_get(Cf::Ids, &refs)?
            .into_iter()
            .map(|v| v.map(decode_name).transpose())
            .collect()
    }
}

fn stage(batch: &mut WriteBatch, user: &str, id: u32) {
    batch.put(Cf::Ids, user_key(user), u32_be(id));
    batch.put(Cf::Ids, id_key(id), user.as_bytes());
}
