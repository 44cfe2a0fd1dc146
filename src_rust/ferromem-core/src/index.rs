//! Filter indexes: one bitmap of slots per scope, category, metadata (key, scalar) pair and
//! source, plus the private set. Maintained on every insert/replace/remove so a filtered
//! search starts from its exact candidate set instead of post-filtering a top-k.

use crate::filter::{scope_matches, Filter, Privacy, Scalar};
use crate::record::Record;
use roaring::RoaringBitmap;
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub struct FilterIndexes {
    /// Ordered so that every scope under a prefix is one contiguous range.
    pub scopes: BTreeMap<String, RoaringBitmap>,
    pub categories: HashMap<String, RoaringBitmap>,
    pub metadata: HashMap<(String, Scalar), RoaringBitmap>,
    pub sources: HashMap<String, RoaringBitmap>,
    pub private: RoaringBitmap,
}

fn add_to<K: std::hash::Hash + Eq>(map: &mut HashMap<K, RoaringBitmap>, key: K, slot: u32) {
    map.entry(key).or_default().insert(slot);
}

fn remove_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, RoaringBitmap>, key: &K, slot: u32) {
    if let Some(b) = map.get_mut(key) {
        b.remove(slot);
        if b.is_empty() {
            map.remove(key);
        }
    }
}

impl FilterIndexes {
    pub fn insert(&mut self, slot: u32, rec: &Record, meta: &[(String, Scalar)]) {
        self.scopes.entry(rec.scope.clone()).or_default().insert(slot);
        for c in &rec.categories {
            add_to(&mut self.categories, c.clone(), slot);
        }
        for (k, v) in meta {
            add_to(&mut self.metadata, (k.clone(), v.clone()), slot);
        }
        if let Some(s) = &rec.source {
            add_to(&mut self.sources, s.clone(), slot);
        }
        if rec.private {
            self.private.insert(slot);
        }
    }

    pub fn remove(&mut self, slot: u32, rec: &Record, meta: &[(String, Scalar)]) {
        if let Some(b) = self.scopes.get_mut(&rec.scope) {
            b.remove(slot);
            if b.is_empty() {
                self.scopes.remove(&rec.scope);
            }
        }
        for c in &rec.categories {
            remove_from(&mut self.categories, c, slot);
        }
        for (k, v) in meta {
            remove_from(&mut self.metadata, &(k.clone(), v.clone()), slot);
        }
        if let Some(s) = &rec.source {
            remove_from(&mut self.sources, s, slot);
        }
        self.private.remove(slot);
    }

    /// Slots under a scope prefix (boundary rule of `scope_matches`).
    pub fn scope_slots(&self, prefix: &str) -> RoaringBitmap {
        let mut out = RoaringBitmap::new();
        for (scope, slots) in self.scopes.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded)) {
            if !scope.starts_with(prefix) {
                break;
            }
            if scope_matches(prefix, scope) {
                out |= slots;
            }
        }
        out
    }

    /// The exact candidate set of a filter from the indexes, or None when the filter has no
    /// indexed criterion (every live slot is a candidate). `older_than` is not indexed: the
    /// caller checks it per candidate (`Filter` + `State::matches_unindexed`).
    pub fn candidates(&self, f: &Filter, live: &RoaringBitmap, id_slots: impl Fn(&str) -> Option<u32>) -> Option<RoaringBitmap> {
        let mut acc: Option<RoaringBitmap> = None;
        let mut and = |b: RoaringBitmap| {
            acc = Some(match acc.take() {
                None => b,
                Some(a) => a & b,
            });
        };
        if let Some(ids) = &f.ids {
            and(ids.iter().filter_map(|id| id_slots(id)).collect());
        }
        if let Some(prefix) = f.effective_scope() {
            and(self.scope_slots(prefix));
        }
        if let Some(cats) = &f.categories {
            let mut u = RoaringBitmap::new();
            for c in cats {
                if let Some(b) = self.categories.get(c) {
                    u |= b;
                }
            }
            and(u);
        }
        for (k, v) in &f.where_eq {
            and(self.metadata.get(&(k.clone(), v.clone())).cloned().unwrap_or_default());
        }
        if let Some(s) = &f.source {
            and(self.sources.get(s).cloned().unwrap_or_default());
        }
        if let Privacy::VisibleTo(who) = &f.privacy {
            let mut visible = live - &self.private;
            if let Some(who) = who {
                if let Some(mine) = self.sources.get(who) {
                    visible |= &self.private & mine;
                }
            }
            and(visible);
        }
        acc.map(|a| a & live)
    }
}
