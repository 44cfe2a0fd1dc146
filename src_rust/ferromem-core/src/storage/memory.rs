//! The storage of an in-memory store: nothing to persist, nothing to catch up from, and
//! none of the optional capabilities (no exact vectors to read back, no image, no file).

use super::{Changes, Loaded, Storage, StoredRecord, WriteOp};
use crate::Result;

#[derive(Default)]
pub struct MemoryStorage;

impl Storage for MemoryStorage {
    fn load_each(&mut self, _sink: &mut dyn FnMut(StoredRecord) -> Result<()>) -> Result<Loaded> {
        Ok(Loaded { epoch: 0, seq: 0, dim: None, damaged: Vec::new() })
    }
    fn maybe_changed(&mut self, _epoch: u64, _seq: u64) -> Result<bool> {
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
    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "backend": "memory" })
    }
}
