//! Bounded top-k selection: a binary min-heap of (score, slot) whose root is the worst hit
//! kept so far, so most candidates are rejected by one comparison with the root.
//! Ties in score are broken by id (smaller id ranks higher), through the caller's
//! `id_less(a, b)` so the heap itself stays string-free.

pub struct TopK {
    k: usize,
    heap: Vec<(f32, u32)>,
}

impl TopK {
    pub fn new(k: usize) -> TopK {
        TopK { k, heap: Vec::with_capacity(k.min(4096)) }
    }

    /// True when `a` ranks strictly better than `b`.
    #[inline]
    fn better(a: (f32, u32), b: (f32, u32), id_less: &impl Fn(u32, u32) -> bool) -> bool {
        a.0 > b.0 || (a.0 == b.0 && id_less(a.1, b.1))
    }

    #[inline]
    pub fn offer(&mut self, score: f32, slot: u32, id_less: impl Fn(u32, u32) -> bool) {
        let item = (score, slot);
        if self.heap.len() < self.k {
            self.heap.push(item);
            self.sift_up(self.heap.len() - 1, &id_less);
        } else if self.k > 0 && Self::better(item, self.heap[0], &id_less) {
            self.heap[0] = item;
            self.sift_down(0, &id_less);
        }
    }

    fn sift_up(&mut self, mut i: usize, id_less: &impl Fn(u32, u32) -> bool) {
        while i > 0 {
            let parent = (i - 1) / 2;
            // The root holds the worst: a child that is worse than its parent moves up.
            if Self::better(self.heap[parent], self.heap[i], id_less) {
                self.heap.swap(parent, i);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize, id_less: &impl Fn(u32, u32) -> bool) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut worst = i;
            if l < n && Self::better(self.heap[worst], self.heap[l], id_less) {
                worst = l;
            }
            if r < n && Self::better(self.heap[worst], self.heap[r], id_less) {
                worst = r;
            }
            if worst == i {
                break;
            }
            self.heap.swap(i, worst);
            i = worst;
        }
    }

    /// The kept hits, unordered.
    pub fn into_entries(self) -> Vec<(f32, u32)> {
        self.heap
    }
}

#[cfg(test)]
mod tests {
    use super::TopK;

    #[test]
    fn keeps_the_best_k_with_id_tiebreak() {
        let scores = [0.5f32, 0.9, 0.1, 0.9, 0.7, 0.3, 0.9];
        let mut t = TopK::new(3);
        for (i, &s) in scores.iter().enumerate() {
            t.offer(s, i as u32, |a, b| a < b);
        }
        let mut got = t.into_entries();
        got.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(got, vec![(0.9, 1), (0.9, 3), (0.9, 6)]);
    }

    #[test]
    fn random_against_sort() {
        let mut x: u64 = 7;
        for k in [1usize, 2, 5, 10, 100] {
            let mut all = Vec::new();
            let mut t = TopK::new(k);
            for i in 0..1000u32 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let s = ((x >> 40) % 50) as f32 / 50.0; // many ties
                all.push((s, i));
                t.offer(s, i, |a, b| a < b);
            }
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.truncate(k);
            let mut got = t.into_entries();
            got.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            assert_eq!(got, all);
        }
    }
}
