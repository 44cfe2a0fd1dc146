//! The storage of an in-memory store: nothing to persist, nothing to catch up from.

use super::{Changes, Snapshot, Storage, WriteOp};
use crate::Result;

#[derive(Default)]
pub struct MemoryStorage;

impl Storage for MemoryStorage {
    fn load(&mut self) -> Result<Snapshot> {
        Ok(Snapshot { epoch: 0, seq: 0, dim: None, records: Vec::new() })
    }
    fn maybe_changed(&mut self) -> Result<bool> {
        Ok(false)
    }
    fn changes_since(&mut self, _epoch: u64, _seq: u64) -> Result<Changes> {
        Ok(Changes::None)
    }
    fn begin_write(&mut self) -> Result<()> {
        Ok(())
    }
    fn write(&mut self, _ops: &[WriteOp<'_>], _seq: u64, _dim: Option<usize>) -> Result<()> {
        Ok(())
    }
    fn reset(&mut self, _epoch: u64, _seq: u64) -> Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
    fn rollback(&mut self) {}
    fn disk_bytes(&self) -> u64 {
        0
    }
}
