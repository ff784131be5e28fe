//! What a volume's writer asks of the snapshots that pin its committed maps: which slots it
//! must not reuse yet. The pins themselves (files, locks, their format) are `snapshot.rs`;
//! this is the small interface between the two, so that the writer (`delta.rs`) needs
//! nothing else of them.

use std::io;
use std::sync::Arc;

/// The pins in force at one moment, as the writer sees them.
#[derive(Debug, Default)]
pub struct PinState {
    /// Changes whenever the set of pins (or a pin's completeness) changes.
    pub version: u64,
    /// A live pin has no map yet: every freed slot must be held.
    pub pending: bool,
    /// The slots each complete live pin references, sorted.
    pub sets: Vec<Arc<Vec<u32>>>,
}

impl PinState {
    pub fn is_empty(&self) -> bool {
        !self.pending && self.sets.is_empty()
    }

    /// Whether slot `slot` must not be reused now.
    pub fn holds(&self, slot: u32) -> bool {
        self.pending || self.sets.iter().any(|s| s.binary_search(&slot).is_ok())
    }
}

/// Where a writer learns of the snapshots pinning its committed maps.
pub trait PinSource: Send + Sync {
    /// The pins live now. An error means "unknown": the caller then holds every slot.
    fn current(&self) -> io::Result<Arc<PinState>>;
}
