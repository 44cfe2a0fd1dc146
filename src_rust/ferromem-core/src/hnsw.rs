//! A hierarchical navigable small-world graph (HNSW, Malkov & Yashunin 2016) over the slots
//! of the state, for approximate search in large stores.
//!
//! Nodes are slots; the graph holds no vectors of its own. Distances are dot products with
//! the rows the state already keeps for its scans ([`GraphRows`]): a unit f32 query with
//! the unit half-precision rows, or, under int8 precision, the quantised unit query with
//! the int8 rows. So the index costs only its links: (2M + 1) u32 per node on layer 0
//! (132 bytes at M = 16) plus the rare upper layers.
//!
//! The graph is built off the write path (see `crate::engine`'s index builder) and published
//! whole, so a search never sees one half-linked. A node remembers the slot version it was
//! linked with; when a record is deleted or its vector replaced the node stays as a
//! waypoint (its links still route searches) but is never returned: callers pass an
//! `accept` predicate that checks liveness, version and filter. Changed records are
//! re-linked by the next build, from the search the insertion does.
//!
//! Scores returned here are approximate (f16 or int8 rows); the state re-scores the results
//! (in f32, or from the exact vectors on disk under int8 precision).

use crate::arena::Arena;
use crate::cursor::Reader;
use crate::simd::half::dot_f16;
use crate::simd::int8::{dot_i8, quantize_i8};
use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

/// A level value that marks a slot without a node.
const ABSENT: u8 = u8::MAX;
/// Levels above this are never drawn (probability M^-16).
const MAX_LEVEL: u8 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on the upper layers; layer 0 keeps 2M.
    pub m: usize,
    /// Width of the search that finds a new node's neighbours.
    pub ef_construction: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams { m: 16, ef_construction: 128 }
    }
}

/// A similarity and the slot it belongs to, ordered by similarity (ties by slot, so heaps
/// are deterministic).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then_with(|| other.1.cmp(&self.1))
    }
}

/// Per-thread visited marks: one u32 stamp per slot, so starting a search is O(1).
struct Visited {
    marks: Vec<u32>,
    stamp: u32,
}

thread_local! {
    static VISITED: RefCell<Visited> = const { RefCell::new(Visited { marks: Vec::new(), stamp: 0 }) };
}

impl Visited {
    fn start(&mut self, slots: usize) {
        if self.marks.len() < slots {
            self.marks.resize(slots, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.fill(0);
            self.stamp = 1;
        }
    }

    /// Marks `slot`; returns whether it was already marked in this search.
    #[inline]
    fn check_and_mark(&mut self, slot: u32) -> bool {
        let m = &mut self.marks[slot as usize];
        let seen = *m == self.stamp;
        *m = self.stamp;
        seen
    }
}

/// The version of a slot's record, None for a free slot (see `State::current_version`).
pub type Current<'a> = dyn Fn(u32) -> Option<u32> + Sync + 'a;

/// The rows distances are measured on: the state's unit half-precision rows, or its int8
/// rows of the unit vectors with their quantisation factors (int8 precision). One enum
/// rather than a type parameter: the branch is perfectly predicted and costs nothing
/// beside a row's dot product, and the graph keeps one concrete type.
#[derive(Clone, Copy)]
pub enum GraphRows<'a> {
    Half(&'a Arena<u16>),
    Int8 { rows: &'a Arena<i8>, factors: &'a [f32] },
}

/// A unit query in the form the rows' kernel takes: f32 values for half-precision rows,
/// int8 values and their factor for int8 rows. Reused across calls as scratch space.
#[derive(Clone, Default)]
pub struct GraphQuery {
    unit: Vec<f32>,
    quantised: Vec<i8>,
    factor: f32,
}

impl GraphRows<'_> {
    /// The unit query `unit` prepared for `dot` and `Hnsw::search`.
    pub fn query(&self, unit: &[f32]) -> GraphQuery {
        let mut q = GraphQuery::default();
        self.prepare(unit, &mut q);
        q
    }

    /// Prepares the unit query `unit` for `dot`.
    fn prepare(&self, unit: &[f32], out: &mut GraphQuery) {
        match self {
            GraphRows::Half(_) => {
                out.unit.clear();
                out.unit.extend_from_slice(unit);
            }
            GraphRows::Int8 { .. } => {
                out.quantised.resize(unit.len(), 0);
                out.factor = quantize_i8(unit, &mut out.quantised);
            }
        }
    }

    /// The stored row of `slot` as a unit f32 vector (as the graph sees it: the half
    /// precision row widened, or the int8 row times its factor).
    pub fn unit_row(&self, slot: u32) -> Vec<f32> {
        match self {
            GraphRows::Half(rows) => {
                let mut out = Vec::new();
                to_f32(rows.row(slot as usize), &mut out);
                out
            }
            GraphRows::Int8 { rows, factors } => rows.row(slot as usize).iter().map(|&q| q as f32 * factors[slot as usize]).collect(),
        }
    }

    /// Prepares the stored row of `slot` as a query (the searches an insertion makes).
    fn row_query(&self, slot: u32, out: &mut GraphQuery) {
        match self {
            GraphRows::Half(rows) => to_f32(rows.row(slot as usize), &mut out.unit),
            GraphRows::Int8 { rows, factors } => {
                out.quantised.clear();
                out.quantised.extend_from_slice(rows.row(slot as usize));
                out.factor = factors[slot as usize];
            }
        }
    }

    /// The similarity of the prepared query `q` and the row of `slot` (for int8 rows,
    /// computed exactly as the state's int8 scan computes it).
    #[inline]
    pub fn dot(&self, q: &GraphQuery, slot: u32) -> f32 {
        match self {
            GraphRows::Half(rows) => dot_f16(&q.unit, rows.row(slot as usize)),
            GraphRows::Int8 { rows, factors } => dot_i8(&q.quantised, rows.row(slot as usize)) as f32 * q.factor * factors[slot as usize],
        }
    }

    /// Asks the CPU to bring the row of `slot` into cache.
    #[inline]
    fn prefetch(&self, slot: u32) {
        match self {
            GraphRows::Half(rows) => prefetch_bytes(rows.row(slot as usize)),
            GraphRows::Int8 { rows, .. } => prefetch_bytes(rows.row(slot as usize)),
        }
    }

    fn row_len(&self, slot: u32) -> usize {
        match self {
            GraphRows::Half(rows) => rows.row(slot as usize).len(),
            GraphRows::Int8 { rows, .. } => rows.row(slot as usize).len(),
        }
    }
}

/// Neighbours chosen for a node, per layer from 0 (see `Hnsw::plan_insert`).
pub struct PlannedInsert {
    slot: u32,
    version: u32,
    level: u8,
    links: Vec<Vec<u32>>,
}

#[derive(Clone)]
pub struct Hnsw {
    params: HnswParams,
    dim: usize,
    /// Level of each slot's node, `ABSENT` for none.
    levels: Vec<u8>,
    /// The slot version each node was linked with (see `State::slot_version`).
    versions: Vec<u32>,
    /// Layer 0: per slot, a count then up to 2M neighbours.
    layer0: Vec<u32>,
    /// Layers 1..=level of the nodes that have them: per layer a count then up to M.
    upper: HashMap<u32, Box<[u32]>>,
    entry: Option<u32>,
    top: u8,
    nodes: usize,
}

impl Hnsw {
    pub fn new(dim: usize, params: HnswParams) -> Hnsw {
        assert!(params.m >= 2 && params.ef_construction >= 1, "hnsw: m >= 2 and ef_construction >= 1");
        Hnsw {
            params,
            dim,
            levels: Vec::new(),
            versions: Vec::new(),
            layer0: Vec::new(),
            upper: HashMap::new(),
            entry: None,
            top: 0,
            nodes: 0,
        }
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Slots that have a node (valid or not).
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The version `slot` was linked with, or None when it has no node.
    #[inline]
    pub fn version(&self, slot: u32) -> Option<u32> {
        match self.levels.get(slot as usize) {
            Some(&l) if l != ABSENT => Some(self.versions[slot as usize]),
            _ => None,
        }
    }

    /// Bytes held by the links and per-node fields.
    pub fn memory_bytes(&self) -> usize {
        self.layer0.capacity() * 4
            + self.levels.capacity()
            + self.versions.capacity() * 4
            + self.upper.values().map(|v| v.len() * 4 + 16).sum::<usize>()
    }

    fn m0(&self) -> usize {
        2 * self.params.m
    }

    fn max_links(&self, level: u8) -> usize {
        if level == 0 {
            self.m0()
        } else {
            self.params.m
        }
    }

    #[inline]
    fn links(&self, slot: u32, level: u8) -> &[u32] {
        let list = if level == 0 {
            let w = self.m0() + 1;
            &self.layer0[slot as usize * w..(slot as usize + 1) * w]
        } else {
            let w = self.params.m + 1;
            let all = &self.upper[&slot];
            &all[(level as usize - 1) * w..level as usize * w]
        };
        &list[1..1 + list[0] as usize]
    }

    fn set_links(&mut self, slot: u32, level: u8, nbrs: &[u32]) {
        let list = if level == 0 {
            let w = self.m0() + 1;
            &mut self.layer0[slot as usize * w..(slot as usize + 1) * w]
        } else {
            let w = self.params.m + 1;
            let all = self.upper.get_mut(&slot).expect("upper layers of a node above layer 0");
            &mut all[(level as usize - 1) * w..level as usize * w]
        };
        debug_assert!(nbrs.len() < list.len());
        list[0] = nbrs.len() as u32;
        list[1..1 + nbrs.len()].copy_from_slice(nbrs);
    }

    /// The level of a new node: geometric with ratio 1/M, drawn from a hash of the slot and
    /// version so that builds are reproducible.
    fn draw_level(&self, slot: u32, version: u32) -> u8 {
        let mut x = ((slot as u64) << 32 | version as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let u = ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64; // (0, 1]
        let ml = 1.0 / (self.params.m as f64).ln();
        ((-u.ln() * ml).floor() as u64).min(MAX_LEVEL as u64) as u8
    }

    fn grow_to(&mut self, slots: usize) {
        if self.levels.len() < slots {
            self.levels.resize(slots, ABSENT);
            self.versions.resize(slots, 0);
            self.layer0.resize(slots * (self.m0() + 1), 0);
        }
    }

    /// Greedy walk on one layer towards `q` from `from`.
    fn greedy(&self, q: &GraphQuery, mut cur: Scored, level: u8, rows: &GraphRows<'_>) -> Scored {
        loop {
            let mut moved = false;
            for &nb in self.links(cur.1, level) {
                let s = rows.dot(q, nb);
                if s > cur.0 {
                    cur = Scored(s, nb);
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// Beam search of width `ef` on one layer. Every node is walked through; only those
    /// `accept` admits enter the result, so a filtered search keeps going until it has
    /// `ef` admitted nodes or the reachable graph is exhausted. Best first.
    fn search_layer(
        &self,
        q: &GraphQuery,
        entries: &[Scored],
        ef: usize,
        level: u8,
        rows: &GraphRows<'_>,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<Scored> {
        VISITED.with(|v| {
            let mut visited = v.borrow_mut();
            visited.start(self.levels.len());
            let mut frontier: BinaryHeap<Scored> = BinaryHeap::new();
            let mut best: BinaryHeap<Reverse<Scored>> = BinaryHeap::new();
            for &e in entries {
                if !visited.check_and_mark(e.1) {
                    frontier.push(e);
                    if accept(e.1) {
                        best.push(Reverse(e));
                    }
                }
            }
            while best.len() > ef {
                best.pop();
            }
            let mut fresh: Vec<u32> = Vec::with_capacity(self.m0());
            while let Some(c) = frontier.pop() {
                if best.len() >= ef && c.0 < best.peek().expect("non-empty").0 .0 {
                    break;
                }
                // The rows of a node's neighbours lie anywhere in memory: a search is bound
                // by the latency of fetching them, so request each a few rows ahead.
                fresh.clear();
                fresh.extend(self.links(c.1, level).iter().copied().filter(|&nb| !visited.check_and_mark(nb)));
                for &nb in fresh.iter().take(PREFETCH_AHEAD) {
                    rows.prefetch(nb);
                }
                for (i, &nb) in fresh.iter().enumerate() {
                    if let Some(&ahead) = fresh.get(i + PREFETCH_AHEAD) {
                        rows.prefetch(ahead);
                    }
                    let s = rows.dot(q, nb);
                    if best.len() < ef || s > best.peek().expect("non-empty").0 .0 {
                        frontier.push(Scored(s, nb));
                        if accept(nb) {
                            best.push(Reverse(Scored(s, nb)));
                            if best.len() > ef {
                                best.pop();
                            }
                        }
                    }
                }
            }
            let mut out: Vec<Scored> = best.into_iter().map(|r| r.0).collect();
            out.sort_by(|a, b| b.cmp(a));
            out
        })
    }

    /// Up to `ef` accepted slots near the query `q` (a unit query prepared by
    /// `GraphRows::query`), best first, with their approximate (f16 or int8) similarity.
    /// Empty when the graph is.
    pub fn search(&self, q: &GraphQuery, ef: usize, rows: &GraphRows<'_>, accept: &dyn Fn(u32) -> bool) -> Vec<(f32, u32)> {
        let Some(entry) = self.entry else { return Vec::new() };
        let mut cur = Scored(rows.dot(q, entry), entry);
        for level in (1..=self.top).rev() {
            cur = self.greedy(q, cur, level, rows);
        }
        self.search_layer(q, &[cur], ef.max(1), 0, rows, accept).into_iter().map(|s| (s.0, s.1)).collect()
    }

    /// The neighbour-selection heuristic of the paper (algorithm 4): keep a candidate only
    /// when it is closer to the base than to every neighbour already kept, which spreads
    /// the links over directions and keeps clusters connected. `cands` best first.
    fn select(&self, cands: &[Scored], m: usize, rows: &GraphRows<'_>, scratch: &mut GraphQuery) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        for c in cands {
            if kept.len() >= m {
                break;
            }
            rows.row_query(c.1, scratch);
            if kept.iter().all(|&k| rows.dot(scratch, k) <= c.0) {
                kept.push(c.1);
            }
        }
        kept
    }

    /// Whether `slot`'s node is current: its record is live (`current` gives the slot's
    /// version, None for a free slot) and was linked at that version.
    #[inline]
    pub fn is_current(&self, slot: u32, current: &Current<'_>) -> bool {
        let v = self.version(slot);
        v.is_some() && v == current(slot)
    }

    /// Links `slot` (its row in `rows`, at `version`) into the graph; a slot that
    /// already has a node is re-linked from a fresh search (its vector changed). New links
    /// go only to current nodes (`is_current`); the others are only walked through.
    pub fn insert(&mut self, slot: u32, version: u32, rows: &GraphRows<'_>, current: &Current<'_>, scratch: &mut GraphQuery) {
        let plan = self.plan_insert(slot, version, rows, current, scratch);
        self.apply_insert(plan, rows, current, scratch);
    }

    /// The read-only half of `insert`: the searches that choose the new node's neighbours
    /// on each of its layers. Plans for different slots can be made in parallel against
    /// one graph and applied one after the other (they do not see each other, which costs
    /// nothing measurable once the graph holds a few thousand nodes).
    pub fn plan_insert(
        &self,
        slot: u32,
        version: u32,
        rows: &GraphRows<'_>,
        current: &Current<'_>,
        scratch: &mut GraphQuery,
    ) -> PlannedInsert {
        assert_eq!(rows.row_len(slot), self.dim, "hnsw: row length differs from the graph's dim");
        let level = match self.levels.get(slot as usize) {
            Some(&l) if l != ABSENT => l,
            _ => self.draw_level(slot, version),
        };
        let mut links = Vec::new();
        if let Some(entry) = self.entry {
            let mut q = GraphQuery::default();
            rows.row_query(slot, &mut q);
            let mut cur = Scored(rows.dot(&q, entry), entry);
            for l in (level.saturating_add(1)..=self.top).rev() {
                cur = self.greedy(&q, cur, l, rows);
            }
            let mut entries = vec![cur];
            links = vec![Vec::new(); level.min(self.top) as usize + 1];
            for l in (0..=level.min(self.top)).rev() {
                let found =
                    self.search_layer(&q, &entries, self.params.ef_construction, l, rows, &|s| s != slot && self.is_current(s, current));
                links[l as usize] = self.select(&found, self.params.m, rows, scratch);
                if !found.is_empty() {
                    entries = found;
                }
            }
        }
        PlannedInsert { slot, version, level, links }
    }

    /// The writing half of `insert`: the node's links, the links back to it, the entry point.
    pub fn apply_insert(&mut self, plan: PlannedInsert, rows: &GraphRows<'_>, current: &Current<'_>, scratch: &mut GraphQuery) {
        let PlannedInsert { slot, version, level, links } = plan;
        self.grow_to(slot as usize + 1);
        if self.levels[slot as usize] == ABSENT {
            self.nodes += 1;
            self.levels[slot as usize] = level;
            if level > 0 {
                self.upper.insert(slot, vec![0u32; level as usize * (self.params.m + 1)].into_boxed_slice());
            }
        }
        self.versions[slot as usize] = version;
        if self.entry.is_none() {
            self.entry = Some(slot);
            self.top = level;
            return;
        }
        for (l, nbrs) in links.iter().enumerate() {
            let l = l as u8;
            self.set_links(slot, l, nbrs);
            for &nb in nbrs {
                self.link_back(nb, slot, l, rows, current, scratch);
            }
        }
        if level > self.top {
            self.entry = Some(slot);
            self.top = level;
        }
    }

    /// Adds `new` to `node`'s links on `level`; a full list is re-selected by the
    /// heuristic among its current links and `new` (stale links are dropped first).
    fn link_back(&mut self, node: u32, new: u32, level: u8, rows: &GraphRows<'_>, current: &Current<'_>, scratch: &mut GraphQuery) {
        let max = self.max_links(level);
        let links_now = self.links(node, level);
        if links_now.contains(&new) {
            return;
        }
        if links_now.len() < max {
            let mut v = links_now.to_vec();
            v.push(new);
            self.set_links(node, level, &v);
            return;
        }
        rows.row_query(node, scratch);
        let base = scratch.clone();
        let mut cands: Vec<Scored> = links_now
            .iter()
            .copied()
            .chain(std::iter::once(new))
            .filter(|&s| s == new || self.is_current(s, current))
            .map(|s| Scored(rows.dot(&base, s), s))
            .collect();
        cands.sort_by(|a, b| b.cmp(a));
        let kept = self.select(&cands, max, rows, scratch);
        self.set_links(node, level, &kept);
    }
}

/// The graph file's first bytes. Version 2 checksums each section with a CRC-32; version
/// 1 files (one FNV-1a over the body) are not read: a cache, rebuilt.
const FILE_MAGIC: &[u8; 8] = b"FMHNSW02";
/// What every version's magic starts with: a file that starts otherwise is not a graph.
const FILE_MAGIC_FAMILY: &[u8; 6] = b"FMHNSW";
/// Header bytes: magic, epoch, seq, dim, m, ef_construction, count, the two sections'
/// lengths and CRCs, then the CRC of all of that.
const FILE_HEADER: usize = 8 + 8 * 2 + 4 * 4 + 8 * 2 + 4 * 3;
/// The fewest bytes a node takes in the nodes section (an empty id and a level), and a
/// node's links in the links section (one count): bound the nodes a file can name before
/// anything is allocated for them.
const MIN_NODE_BYTES: usize = 4 + 1;
const MIN_LINKS_BYTES: usize = 4;

fn crc32(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(bytes);
    h.finalize()
}

/// Where a saved graph belongs: the store's position when it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedAt {
    pub epoch: u64,
    pub seq: u64,
}

/// Why a saved graph was not installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GraphUnfit {
    /// Not damage: written at another store position, with other parameters or dimension,
    /// naming records this replica does not hold, or of another format version.
    Stale,
    /// The file is damaged (what is wrong, in words).
    Damaged(String),
}

/// A graph file's header, checked, and its two sections, their checksums verified.
struct GraphFile<'a> {
    at: SavedAt,
    dim: usize,
    params: HnswParams,
    count: usize,
    nodes: &'a [u8],
    links: &'a [u8],
}

/// The header and sections of a graph file: its magic, the header's CRC, the sections'
/// lengths against the file's, and each section's CRC.
fn parse_graph_file(bytes: &[u8]) -> Result<GraphFile<'_>, GraphUnfit> {
    let damaged = |why: String| Err(GraphUnfit::Damaged(why));
    if !bytes.starts_with(FILE_MAGIC_FAMILY) {
        return damaged(if bytes.len() < FILE_MAGIC_FAMILY.len() {
            format!("truncated: {} bytes", bytes.len())
        } else {
            "not a ferromem graph file (wrong magic bytes)".into()
        });
    }
    if bytes.len() >= 8 && !bytes.starts_with(FILE_MAGIC) {
        return Err(GraphUnfit::Stale); // another format version
    }
    let Some(header) = bytes.get(..FILE_HEADER) else {
        return damaged(format!("truncated: {} bytes, shorter than the {FILE_HEADER}-byte header", bytes.len()));
    };
    let mut r = Reader { bytes: header, at: FILE_MAGIC.len() };
    let field = |x: Option<u64>| x.expect("inside the header");
    let at = SavedAt { epoch: field(r.u64()), seq: field(r.u64()) };
    let [dim, m, ef_construction, count] = [(); 4].map(|()| field(r.u32().map(u64::from)) as usize);
    let (nodes_len, links_len) = (field(r.u64()), field(r.u64()));
    let (nodes_crc, links_crc, header_crc) =
        (field(r.u32().map(u64::from)) as u32, field(r.u32().map(u64::from)) as u32, field(r.u32().map(u64::from)) as u32);
    if crc32(&header[..FILE_HEADER - 4]) != header_crc {
        return damaged("the header fails its checksum".into());
    }
    let body = (bytes.len() - FILE_HEADER) as u64;
    if nodes_len.checked_add(links_len) != Some(body) {
        return damaged(format!(
            "truncated or extended: {} bytes where the header says {}",
            bytes.len(),
            FILE_HEADER as u128 + nodes_len as u128 + links_len as u128
        ));
    }
    let (nodes, links) = bytes[FILE_HEADER..].split_at(nodes_len as usize);
    if crc32(nodes) != nodes_crc {
        return damaged("the nodes section (record ids and levels) fails its checksum".into());
    }
    if crc32(links) != links_crc {
        return damaged("the links section fails its checksum".into());
    }
    if m < 2 || ef_construction == 0 || count > nodes.len() / MIN_NODE_BYTES || count > links.len() / MIN_LINKS_BYTES {
        return damaged(format!("impossible header: {count} nodes, m = {m}, ef_construction = {ef_construction}"));
    }
    Ok(GraphFile { at, dim, params: HnswParams { m, ef_construction }, count, nodes, links })
}

/// What [`GraphFile::walk`] finds, in file order.
enum Item<'b, 'l> {
    /// Node `i`: its record id and level.
    Node(usize, &'b str, u8),
    /// The links of node `i` on one layer, as node indexes.
    Links(usize, u8, &'l [u32]),
}

impl<'b> GraphFile<'b> {
    /// Walks the sections: `visit(Node)` for each node in order, then `visit(Links)` for
    /// each of each node's layers. Checks the structure: UTF-8 ids, levels and link counts
    /// within bounds, links to nodes that exist, both sections read to their end.
    fn walk(&self, mut visit: impl FnMut(Item<'b, '_>) -> Result<(), GraphUnfit>) -> Result<(), GraphUnfit> {
        let damaged = |why: String| Err(GraphUnfit::Damaged(why));
        let nodes: &'b [u8] = self.nodes;
        let mut r = Reader { bytes: nodes, at: 0 };
        let mut levels = Vec::with_capacity(self.count);
        for i in 0..self.count {
            let Some(id) = r.u32().and_then(|n| r.take(n as usize)) else {
                return damaged(format!("node {i} of {} runs past the nodes section", self.count));
            };
            let Ok(id) = std::str::from_utf8(id) else { return damaged(format!("node {i}'s record id is not UTF-8")) };
            let Some(level) = r.u8().filter(|&l| l <= MAX_LEVEL) else { return damaged(format!("node {i} has no valid level")) };
            visit(Item::Node(i, id, level))?;
            levels.push(level);
        }
        if r.at != nodes.len() {
            return damaged(format!("{} bytes follow the last node", nodes.len() - r.at));
        }
        let mut r = Reader { bytes: self.links, at: 0 };
        // Grows with the links actually read: m comes from the file, unbounded.
        let mut list = Vec::new();
        for (i, &level) in levels.iter().enumerate() {
            for l in 0..=level {
                let max = if l == 0 { 2 * self.params.m } else { self.params.m };
                let Some(n) = r.u32().map(|n| n as usize) else {
                    return damaged(format!("the links of node {i} run past the links section"));
                };
                if n > max {
                    return damaged(format!("node {i} has {n} links on layer {l}, more than {max}"));
                }
                list.clear();
                for _ in 0..n {
                    match r.u32() {
                        Some(to) if (to as usize) < self.count => list.push(to),
                        Some(to) => return damaged(format!("node {i} links to node {to}, of {}", self.count)),
                        None => return damaged(format!("the links of node {i} run past the links section")),
                    }
                }
                visit(Item::Links(i, l, &list))?;
            }
        }
        if r.at != self.links.len() {
            return damaged(format!("{} bytes follow the last links", self.links.len() - r.at));
        }
        Ok(())
    }
}

impl Hnsw {
    /// The graph as bytes, with nodes named by record id (slots are renumbered when a store
    /// is reopened). Only current nodes are kept (`is_current`): links to the others
    /// are dropped.
    pub fn to_bytes<'a>(&self, at: SavedAt, current: &Current<'_>, id_of: impl Fn(u32) -> &'a str) -> Vec<u8> {
        let kept: Vec<u32> = (0..self.levels.len() as u32).filter(|&s| self.is_current(s, current)).collect();
        let index_of: HashMap<u32, u32> = kept.iter().enumerate().map(|(i, &s)| (s, i as u32)).collect();
        let mut nodes = Vec::with_capacity(kept.len() * 24);
        for &s in &kept {
            let id = id_of(s).as_bytes();
            nodes.extend_from_slice(&(id.len() as u32).to_le_bytes());
            nodes.extend_from_slice(id);
            nodes.push(self.levels[s as usize]);
        }
        let mut links_out = Vec::with_capacity(kept.len() * (self.m0() + 2) * 4);
        for &s in &kept {
            for level in 0..=self.levels[s as usize] {
                let links: Vec<u32> = self.links(s, level).iter().filter_map(|nb| index_of.get(nb).copied()).collect();
                links_out.extend_from_slice(&(links.len() as u32).to_le_bytes());
                for l in links {
                    links_out.extend_from_slice(&l.to_le_bytes());
                }
            }
        }
        let mut out = Vec::with_capacity(FILE_HEADER + nodes.len() + links_out.len());
        out.extend_from_slice(FILE_MAGIC);
        for x in [at.epoch, at.seq] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in [self.dim, self.params.m, self.params.ef_construction, kept.len()] {
            out.extend_from_slice(&(x as u32).to_le_bytes());
        }
        for x in [nodes.len() as u64, links_out.len() as u64] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for x in [crc32(&nodes), crc32(&links_out)] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        let header_crc = crc32(&out);
        out.extend_from_slice(&header_crc.to_le_bytes());
        debug_assert_eq!(out.len(), FILE_HEADER);
        out.extend_from_slice(&nodes);
        out.extend_from_slice(&links_out);
        out
    }

    /// Reads a graph written by `to_bytes`, mapping record ids to this replica's slots
    /// (`slot_of`, with the slot's current version). Damaged when a checksum or the
    /// structure fails; stale when it was written at another store position than
    /// `expected`, with other parameters, in another format version, or names a record the
    /// replica does not hold.
    pub fn from_bytes(
        bytes: &[u8],
        expected: SavedAt,
        dim: usize,
        params: HnswParams,
        slot_of: impl Fn(&str) -> Option<(u32, u32)>,
    ) -> Result<Hnsw, GraphUnfit> {
        let file = parse_graph_file(bytes)?;
        if file.at != expected || file.dim != dim || file.params != params {
            return Err(GraphUnfit::Stale);
        }
        let mut g = Hnsw::new(dim, params);
        let mut slots = Vec::with_capacity(file.count);
        file.walk(|item| match item {
            Item::Node(i, id, level) => {
                // Not this replica's records: a graph of another history at this position.
                let Some((slot, version)) = slot_of(id) else { return Err(GraphUnfit::Stale) };
                g.grow_to(slot as usize + 1);
                if g.levels[slot as usize] != ABSENT {
                    return Err(GraphUnfit::Damaged(format!("node {i} names record {id:?} a second time")));
                }
                g.levels[slot as usize] = level;
                g.versions[slot as usize] = version;
                if level > 0 {
                    g.upper.insert(slot, vec![0u32; level as usize * (params.m + 1)].into_boxed_slice());
                }
                g.nodes += 1;
                if g.entry.is_none() || level > g.top {
                    g.entry = Some(slot);
                    g.top = level;
                }
                slots.push(slot);
                Ok(())
            }
            Item::Links(i, level, links) => {
                let to: Vec<u32> = links.iter().map(|&n| slots[n as usize]).collect();
                g.set_links(slots[i], level, &to);
                Ok(())
            }
        })?;
        Ok(g)
    }
}

/// The problems of a graph file's bytes, checked on their own (its checksums and
/// structure, not whether it is current for a store): empty when whole. A file of another
/// format version is not damage (it is never read, and rewritten at the next close).
pub fn verify_graph_bytes(bytes: &[u8]) -> Vec<String> {
    let file = match parse_graph_file(bytes) {
        Ok(f) => f,
        Err(GraphUnfit::Stale) => return Vec::new(),
        Err(GraphUnfit::Damaged(why)) => return vec![why],
    };
    let mut ids = std::collections::HashSet::with_capacity(file.count);
    let result = file.walk(|item| match item {
        Item::Node(i, id, _) if !ids.insert(id) => Err(GraphUnfit::Damaged(format!("node {i} names record {id:?} a second time"))),
        _ => Ok(()),
    });
    match result {
        Err(GraphUnfit::Damaged(why)) => vec![why],
        _ => Vec::new(),
    }
}

/// The problems of the graph file at `path` (see [`verify_graph_bytes`]); no file is not
/// damage: empty.
pub fn verify_graph_file(path: &std::path::Path) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => verify_graph_bytes(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => vec![format!("cannot be read: {e}")],
    }
}

/// The graph reader on arbitrary bytes, for the fuzz target (`examples/fuzz_caches.rs`):
/// [`verify_graph_bytes`], then [`Hnsw::from_bytes`] with the file's own position and
/// parameters and a replica that holds every id it names. Must never panic, read out of
/// bounds or allocate beyond a bound set by the input's length. Returns whether a graph
/// was read.
#[doc(hidden)]
pub fn fuzz_read(bytes: &[u8]) -> bool {
    let _ = verify_graph_bytes(bytes);
    let Ok(file) = parse_graph_file(bytes) else { return false };
    // The engine bounds m (128) and ef_construction; a graph of other parameters is stale.
    if file.params.m > 128 {
        return false;
    }
    let slots: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
    let slot_of = |id: &str| {
        let mut s = slots.borrow_mut();
        let n = s.len() as u32;
        Some((*s.entry(id.to_owned()).or_insert(n), 1))
    };
    Hnsw::from_bytes(bytes, file.at, file.dim, file.params, slot_of).is_ok()
}

/// Recomputes the checksums of a graph file whose header is there (after a mutation),
/// with the section lengths clamped to the file, so the fuzz target reaches the structure
/// checks behind them. False when there is no header to fill.
#[doc(hidden)]
pub fn fuzz_reseal(bytes: &mut [u8]) -> bool {
    if bytes.len() < FILE_HEADER || !bytes.starts_with(FILE_MAGIC) {
        return false;
    }
    let body = bytes.len() - FILE_HEADER;
    let nodes_len = (u64::from_le_bytes(bytes[40..48].try_into().expect("8 bytes")).min(body as u64)) as usize;
    let (nodes, links) = bytes[FILE_HEADER..].split_at(nodes_len);
    let (nc, lc) = (crc32(nodes), crc32(links));
    bytes[56..60].copy_from_slice(&nc.to_le_bytes());
    bytes[60..64].copy_from_slice(&lc.to_le_bytes());
    let hc = crc32(&bytes[..FILE_HEADER - 4]);
    bytes[FILE_HEADER - 4..FILE_HEADER].copy_from_slice(&hc.to_le_bytes());
    true
}

/// Neighbour rows requested ahead of the one being scored.
const PREFETCH_AHEAD: usize = 6;

/// Asks the CPU to bring `row` into cache (a hint; no effect on results).
#[inline(always)]
fn prefetch_bytes<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(row);
        let base = row.as_ptr() as *const i8;
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetching never faults, and base + off lies inside `row`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Unpacks a binary16 row into `out` (exactly, with the SIMD conversion where present).
fn to_f32(row: &[u16], out: &mut Vec<f32>) {
    out.resize(row.len(), 0.0);
    crate::simd::half::widen(row, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::half::to_f16_bits;
    use crate::simd::int8::quantize_i8;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `n` unit rows around 20 random centres (clustered, like text embeddings).
    fn clustered(n: usize, dim: usize, seed: &mut u64) -> (Arena<u16>, Vec<Vec<f32>>) {
        let centres: Vec<Vec<f32>> = (0..20).map(|_| (0..dim).map(|_| lcg(seed)).collect()).collect();
        let mut arena = Arena::new(dim);
        let mut rows = Vec::new();
        for i in 0..n {
            let c = &centres[i % 20];
            let v: Vec<f32> = c.iter().map(|&x| x + 0.6 * lcg(seed)).collect();
            let inv = 1.0 / v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let unit: Vec<f32> = v.iter().map(|x| x * inv).collect();
            let r = arena.push_row();
            to_f16_bits(&unit, 1.0, arena.row_mut(r));
            rows.push(unit);
        }
        (arena, rows)
    }

    fn exact_top(rows: &[Vec<f32>], q: &[f32], k: usize, accept: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut s: Vec<(f32, u32)> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| accept(*i as u32))
            .map(|(i, r)| (r.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i as u32))
            .collect();
        s.sort_by(|a, b| b.0.total_cmp(&a.0));
        s.into_iter().take(k).map(|x| x.1).collect()
    }

    /// The int8 rows and factors of unit `rows`, as the state keeps them.
    fn quantised(rows: &[Vec<f32>]) -> (Arena<i8>, Vec<f32>) {
        let mut arena = Arena::new(rows[0].len());
        let mut factors = Vec::new();
        for r in rows {
            let slot = arena.push_row();
            factors.push(quantize_i8(r, arena.row_mut(slot)));
        }
        (arena, factors)
    }

    #[test]
    fn recall_is_high_and_filters_and_validity_are_respected() {
        let mut seed = 11;
        let (dim, n) = (32, 3000);
        let (half, rows) = clustered(n, dim, &mut seed);
        let (int8, factors) = quantised(&rows);
        for rows_kind in [GraphRows::Half(&half), GraphRows::Int8 { rows: &int8, factors: &factors }] {
            check_recall_and_filters(&rows_kind, &rows, dim);
        }
    }

    fn check_recall_and_filters(graph_rows: &GraphRows<'_>, rows: &[Vec<f32>], dim: usize) {
        let n = rows.len();
        let mut g = Hnsw::new(dim, HnswParams::default());
        let mut scratch = GraphQuery::default();
        for s in 0..n as u32 {
            g.insert(s, 1, graph_rows, &|_| Some(1), &mut scratch);
        }
        assert_eq!(g.nodes(), n);
        let (mut hits, mut total) = (0, 0);
        for t in 0..100 {
            let q = &rows[(t * 29) % n];
            let found: Vec<u32> = g.search(&graph_rows.query(q), 64, graph_rows, &|_| true).into_iter().take(10).map(|x| x.1).collect();
            let truth = exact_top(rows, q, 10, |_| true);
            hits += truth.iter().filter(|t| found.contains(t)).count();
            total += 10;
            // A filter admits only what it says, dead nodes included in the walk.
            let odd = g.search(&graph_rows.query(q), 32, graph_rows, &|s| s % 2 == 1);
            assert!(odd.iter().all(|x| x.1 % 2 == 1));
            assert!(odd.len() == 32);
        }
        let recall = hits as f64 / total as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
    }

    #[test]
    fn relinking_a_changed_node_and_a_single_node_graph() {
        let mut seed = 5;
        let dim = 16;
        let (mut arena, _) = clustered(500, dim, &mut seed);
        let mut g = Hnsw::new(dim, HnswParams { m: 4, ef_construction: 16 });
        let mut scratch = GraphQuery::default();
        g.insert(0, 1, &GraphRows::Half(&arena), &|_| Some(1), &mut scratch);
        let rows = GraphRows::Half(&arena);
        assert_eq!(g.search(&rows.query(&vec![1.0 / 4.0; dim]), 5, &rows, &|_| true).len(), 1);
        for s in 1..500u32 {
            g.insert(s, 1, &GraphRows::Half(&arena), &|_| Some(1), &mut scratch);
        }
        // Slot 7 gets a new vector: the opposite of slot 3's; re-linked at version 2.
        let v3: Vec<f32> = arena.row(3).iter().map(|&b| -half::f16::from_bits(b).to_f32()).collect();
        to_f16_bits(&v3, 1.0, arena.row_mut(7));
        g.insert(7, 2, &GraphRows::Half(&arena), &|s| Some(if s == 7 { 2 } else { 1 }), &mut scratch);
        assert_eq!(g.version(7), Some(2));
        assert_eq!(g.nodes(), 500);
        let rows = GraphRows::Half(&arena);
        let found = g.search(&rows.query(&v3), 16, &rows, &|_| true);
        assert_eq!(found[0].1, 7);
        assert_eq!(g.version(600), None);
    }
}
