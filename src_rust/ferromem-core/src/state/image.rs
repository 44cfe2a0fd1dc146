//! The replica's side of the store image (see [`crate::image`]): the records and norms it
//! writes, and a replica built from one. The rows' sections are the precision's own
//! (`crate::vectors`).

use super::{Slot, State};
use crate::record::{metadata_scalars, Record};
use crate::vectors::PrecisionRows;
use crate::{Error, Result};

impl State {
    /// The live records in slot order, each with 1/|v|: the records and norms of a store
    /// image. [`State::image_slots`] gives their slots in the same order.
    pub fn image_records(&self) -> impl Iterator<Item = (&Record, f32)> + '_ {
        self.live.iter().map(move |slot| (&self.slots[slot as usize].as_ref().expect("live slot").rec, self.inv_norm[slot as usize]))
    }

    /// The live slots in order: the image writes their rows (see
    /// [`PrecisionRows::image_search_row`]).
    pub fn image_slots(&self) -> impl Iterator<Item = usize> + Clone + '_ {
        self.live.iter().map(|s| s as usize)
    }

    /// A replica at (epoch, seq) from a store image: row `i` of `rows` and `inv_norm`
    /// belongs to `records[i]`. Errors (and the image is not used) when a record's metadata
    /// does not parse or an id repeats.
    pub fn from_image(
        dim: usize,
        epoch: u64,
        seq: u64,
        records: Vec<Record>,
        rows: Box<dyn PrecisionRows>,
        inv_norm: Vec<f32>,
    ) -> Result<State> {
        let n = records.len();
        assert!(inv_norm.len() == n && rows.rows() == n);
        let precision = rows.precision();
        // Generation 1, cleared at 1: a device mirror that asks what changed since 0 (an
        // engine it never saw) reads every row.
        let mut st =
            State { dim: Some(dim), epoch, seq, inv_norm, rows, precision, search_generation: 1, rows_cleared_at: 1, ..State::default() };
        st.slot_version = vec![1; n];
        st.row_changed_at = vec![0; n];
        st.slots.reserve_exact(n);
        st.ids.reserve(n);
        for (slot, rec) in records.into_iter().enumerate() {
            let slot = slot as u32;
            if st.inv_norm[slot as usize] <= 0.0 || !st.inv_norm[slot as usize].is_finite() {
                return Err(Error::Corrupt(format!("record {:?} has no valid norm", &*rec.id)));
            }
            let meta = metadata_scalars(&rec.metadata_json)?;
            if st.ids.insert(rec.id.clone(), slot).is_some() {
                return Err(Error::Corrupt(format!("record {:?} appears twice", &*rec.id)));
            }
            st.idx.insert(slot, &rec, &meta);
            st.slots.push(Some(Slot { rec, meta }));
        }
        st.live.insert_range(0..n as u32);
        st.unindexed = st.live.clone();
        Ok(st)
    }
}
