//! Per-record checksums, so that a record damaged on disk (SQLite keeps no page checksums)
//! is never served: every durable backend stores these two CRC-32s beside each record and
//! verifies them when a record is read into memory.
//!
//! Two sums, not one: an update of fields (a touch, a new scope) rewrites the fields and
//! their sum, but under f16 and int8 precision the replica has no exact vector to re-sum,
//! so the vector keeps its own sum.
//!
//! The byte layout summed is the contract shared with the NumPy reference engine
//! (`ferromem._reference._fields_crc`); change both together, with a schema version.
//! - fields: for each of id, content, scope, categories (JSON text), metadata (JSON
//!   text): its UTF-8 length as u32 LE, then its bytes; importance, created_at,
//!   last_accessed as f64 LE; source as one byte 0 (none) or 1 followed by u32 LE length
//!   and bytes; private as one byte 0 or 1.
//! - vector: the little-endian float32 BLOB exactly as stored.

use crate::record::Record;

/// Fields in their stored form, before they are decoded (so that damage that breaks the
/// decoding, like invalid UTF-8, is still reported as a checksum failure).
pub struct RawFields<'a> {
    pub id: &'a [u8],
    pub content: &'a [u8],
    pub scope: &'a [u8],
    pub categories_json: &'a [u8],
    pub metadata_json: &'a [u8],
    pub importance: f64,
    pub created_at: f64,
    pub last_accessed: f64,
    pub source: Option<&'a [u8]>,
    pub private: bool,
}

impl<'a> RawFields<'a> {
    pub fn of(rec: &'a Record, categories_json: &'a str) -> RawFields<'a> {
        RawFields {
            id: rec.id.as_bytes(),
            content: rec.content.as_bytes(),
            scope: rec.scope.as_bytes(),
            categories_json: categories_json.as_bytes(),
            metadata_json: rec.metadata_json.as_bytes(),
            importance: rec.importance,
            created_at: rec.created_at,
            last_accessed: rec.last_accessed,
            source: rec.source.as_deref().map(str::as_bytes),
            private: rec.private,
        }
    }

    pub fn crc(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        for text in [self.id, self.content, self.scope, self.categories_json, self.metadata_json] {
            put_text(&mut h, text);
        }
        for x in [self.importance, self.created_at, self.last_accessed] {
            h.update(&x.to_le_bytes());
        }
        match self.source {
            None => h.update(&[0]),
            Some(s) => {
                h.update(&[1]);
                put_text(&mut h, s);
            }
        }
        h.update(&[self.private as u8]);
        h.finalize()
    }
}

fn put_text(h: &mut crc32fast::Hasher, bytes: &[u8]) {
    // Lengths beyond u32 cannot be stored (SQLite caps a value at 1 GB by default).
    h.update(&(bytes.len() as u32).to_le_bytes());
    h.update(bytes);
}

pub fn vector_crc(blob: &[u8]) -> u32 {
    crc32fast::hash(blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rec() -> Record {
        Record {
            id: Arc::from("a"),
            content: "hello".into(),
            scope: "/x".into(),
            categories: vec!["c".into()],
            metadata_json: "{}".into(),
            importance: 0.5,
            created_at: 1.0,
            last_accessed: 2.0,
            source: None,
            private: false,
        }
    }

    #[test]
    fn every_field_changes_the_sum() {
        let base = rec();
        let c = RawFields::of(&base, "[\"c\"]").crc();
        let mut variants = Vec::new();
        let mut r = base.clone();
        r.id = Arc::from("b");
        variants.push(r);
        let mut r = base.clone();
        r.content = "hellp".into();
        variants.push(r);
        let mut r = base.clone();
        r.scope = "/y".into();
        variants.push(r);
        let mut r = base.clone();
        r.metadata_json = "{ }".into();
        variants.push(r);
        let mut r = base.clone();
        r.importance = 0.25;
        variants.push(r);
        let mut r = base.clone();
        r.created_at = 1.5;
        variants.push(r);
        let mut r = base.clone();
        r.last_accessed = 3.0;
        variants.push(r);
        let mut r = base.clone();
        r.source = Some(String::new()); // none and empty differ
        variants.push(r);
        let mut r = base.clone();
        r.private = true;
        variants.push(r);
        for v in &variants {
            assert_ne!(RawFields::of(v, "[\"c\"]").crc(), c, "{v:?}");
        }
        assert_ne!(RawFields::of(&base, "[\"d\"]").crc(), c);
        // Moving bytes across a field boundary changes the sum too (lengths are summed).
        let mut a = base.clone();
        a.content = "ab".into();
        a.scope = "c".into();
        let mut b = base.clone();
        b.content = "a".into();
        b.scope = "bc".into();
        assert_ne!(RawFields::of(&a, "[]").crc(), RawFields::of(&b, "[]").crc());
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        // The reference engine computes the same number in Python (zlib.crc32); this pins
        // the layout so that a change of it is a deliberate schema change.
        let base = rec();
        let mut bytes = Vec::new();
        for t in ["a", "hello", "/x", "[\"c\"]", "{}"] {
            bytes.extend_from_slice(&(t.len() as u32).to_le_bytes());
            bytes.extend_from_slice(t.as_bytes());
        }
        for x in [0.5f64, 1.0, 2.0] {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(RawFields::of(&base, "[\"c\"]").crc(), crc32fast::hash(&bytes));
    }
}
