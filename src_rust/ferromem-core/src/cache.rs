//! Result cache for repeated single-query searches (agents repeat their recalls).
//!
//! An entry holds the results of one search together with the state's *search generation*
//! at the time: a counter the state bumps on every change that can alter a search result
//! (a vector, a filterable field, an insert, a delete, a reset; not `last_accessed`, which
//! CrewAI touches after every recall, nor content or importance). A lookup under another
//! generation is a miss, so invalidation is exact and costs nothing at write time.
//!
//! Keys are compared in full (query bits, k, min_score bits, filter), never by hash alone,
//! so a hash collision can only cost a miss. Eviction is first-in first-out among the
//! entries, bounded by `capacity` (0 disables the cache).
//!
//! Locking: the cache mutex is a leaf: nothing else is locked while it is held. Searches
//! take it under the state read lock, which is what keeps the generation they read valid.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicU64;

use crate::filter::{Filter, Privacy};
use crate::state::Hit;

/// The full identity of a single-query search.
#[derive(Clone, PartialEq)]
pub struct SearchKey {
    query_bits: Vec<u32>,
    k: usize,
    min_score_bits: Option<u32>,
    filter: Filter,
}

impl SearchKey {
    pub fn new(query: &[f32], k: usize, filter: &Filter, min_score: Option<f32>) -> SearchKey {
        SearchKey {
            query_bits: query.iter().map(|x| x.to_bits()).collect(),
            k,
            min_score_bits: min_score.map(f32::to_bits),
            filter: filter.clone(),
        }
    }

    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.query_bits.hash(&mut h);
        self.k.hash(&mut h);
        self.min_score_bits.hash(&mut h);
        let f = &self.filter;
        f.scope.hash(&mut h);
        f.categories.hash(&mut h);
        f.where_eq.hash(&mut h);
        f.source.hash(&mut h);
        match &f.privacy {
            Privacy::Include => 0u8.hash(&mut h),
            Privacy::VisibleTo(s) => {
                1u8.hash(&mut h);
                s.hash(&mut h);
            }
        }
        f.older_than.map(f64::to_bits).hash(&mut h);
        f.ids.hash(&mut h);
        h.finish()
    }
}

struct Entry {
    key: SearchKey,
    generation: u64,
    hits: Vec<Hit>,
}

#[derive(Default)]
pub struct ResultCache {
    capacity: usize,
    entries: HashMap<u64, Entry>,
    order: VecDeque<u64>,
}

/// Hit and miss counters, outside the mutex so that stats() never takes it.
#[derive(Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CacheStats {
    pub capacity: usize,
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
}

impl ResultCache {
    pub fn new(capacity: usize) -> ResultCache {
        ResultCache { capacity, ..ResultCache::default() }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Changes the bound, evicting the oldest entries beyond it.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        while self.entries.len() > capacity {
            self.evict_oldest();
        }
    }

    /// The cached results of `key` computed under `generation`, if any.
    pub fn get(&self, key: &SearchKey, generation: u64) -> Option<Vec<Hit>> {
        let e = self.entries.get(&key.digest())?;
        (e.generation == generation && e.key == *key).then(|| e.hits.clone())
    }

    pub fn insert(&mut self, key: SearchKey, generation: u64, hits: Vec<Hit>) {
        if self.capacity == 0 {
            return;
        }
        let digest = key.digest();
        let entry = Entry { key, generation, hits };
        if self.entries.insert(digest, entry).is_none() {
            self.order.push_back(digest);
            while self.entries.len() > self.capacity {
                self.evict_oldest();
            }
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(d) = self.order.pop_front() {
            self.entries.remove(&d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn hits(id: &str) -> Vec<Hit> {
        vec![(Arc::from(id), 0.5)]
    }

    #[test]
    fn hit_needs_the_same_key_and_generation() {
        let mut c = ResultCache::new(4);
        let f = Filter::default();
        let key = SearchKey::new(&[1.0, 2.0], 3, &f, None);
        c.insert(key.clone(), 7, hits("a"));
        assert_eq!(c.get(&key, 7).unwrap()[0].0.as_ref(), "a");
        assert!(c.get(&key, 8).is_none());
        assert!(c.get(&SearchKey::new(&[1.0, 2.0], 4, &f, None), 7).is_none());
        assert!(c.get(&SearchKey::new(&[1.0, 2.5], 3, &f, None), 7).is_none());
        assert!(c.get(&SearchKey::new(&[1.0, 2.0], 3, &f, Some(0.1)), 7).is_none());
        let scoped = Filter { scope: Some("/a".into()), ..Filter::default() };
        assert!(c.get(&SearchKey::new(&[1.0, 2.0], 3, &scoped, None), 7).is_none());
    }

    #[test]
    fn bounded_first_in_first_out_and_zero_disables() {
        let mut c = ResultCache::new(2);
        let f = Filter::default();
        let keys: Vec<_> = (0..3).map(|i| SearchKey::new(&[i as f32 + 1.0], 1, &f, None)).collect();
        for k in &keys {
            c.insert(k.clone(), 1, hits("x"));
        }
        assert_eq!(c.len(), 2);
        assert!(c.get(&keys[0], 1).is_none() && c.get(&keys[2], 1).is_some());
        c.set_capacity(0);
        assert!(c.is_empty());
        c.insert(keys[0].clone(), 1, hits("x"));
        assert!(c.is_empty());
    }
}
