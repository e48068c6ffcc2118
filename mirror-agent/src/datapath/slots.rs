//! Stable small indexes for map arrays: an object keeps its slot for as long as it exists, so
//! its counters stay where they are whatever else changes.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug)]
pub struct Slots {
    capacity: u32,
    by_id: BTreeMap<String, u32>,
    free: BTreeSet<u32>,
    next: u32,
}

impl Slots {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            by_id: BTreeMap::new(),
            free: BTreeSet::new(),
            next: 0,
        }
    }

    /// Slots as an earlier agent left them: the free list is every gap below the highest.
    pub fn restore(capacity: u32, by_id: BTreeMap<String, u32>) -> Self {
        let mut s = Slots::new(capacity);
        for (id, slot) in by_id {
            s.restore_one(&id, slot);
        }
        s
    }

    /// Gives `id` exactly `slot` (an adopted object keeps its counters); `None` if taken or
    /// out of range.
    pub fn restore_one(&mut self, id: &str, slot: u32) -> Option<u32> {
        if slot >= self.capacity || self.by_id.values().any(|s| *s == slot) {
            return self.get_or_alloc(id);
        }
        while self.next <= slot {
            self.free.insert(self.next);
            self.next += 1;
        }
        self.free.remove(&slot);
        self.by_id.insert(id.to_string(), slot);
        Some(slot)
    }

    /// id → slot, for saving.
    pub fn table(&self) -> BTreeMap<String, u32> {
        self.by_id.clone()
    }

    pub fn get(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The id's slot, allocating the lowest free one; `None` when the map is full.
    pub fn get_or_alloc(&mut self, id: &str) -> Option<u32> {
        if let Some(slot) = self.by_id.get(id) {
            return Some(*slot);
        }
        let slot = match self.free.pop_first() {
            Some(slot) => slot,
            None if self.next < self.capacity => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.by_id.insert(id.to_string(), slot);
        Some(slot)
    }

    pub fn release(&mut self, id: &str) -> Option<u32> {
        let slot = self.by_id.remove(id)?;
        self.free.insert(slot);
        Some(slot)
    }

    pub fn ids(&self) -> Vec<String> {
        self.by_id.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_reused() {
        let mut s = Slots::new(2);
        assert_eq!(s.get_or_alloc("a"), Some(0));
        assert_eq!(s.get_or_alloc("b"), Some(1));
        assert_eq!(s.get_or_alloc("c"), None);
        assert_eq!(s.get_or_alloc("a"), Some(0));
        assert_eq!(s.release("a"), Some(0));
        assert_eq!(s.get_or_alloc("c"), Some(0));
        assert_eq!(s.get("b"), Some(1));
    }

    #[test]
    fn restored_slots_keep_their_numbers_and_gaps_are_free() {
        let table = BTreeMap::from([("a".to_string(), 0), ("c".to_string(), 2)]);
        let mut s = Slots::restore(4, table.clone());
        assert_eq!(s.table(), table);
        assert_eq!(s.get_or_alloc("b"), Some(1));
        assert_eq!(s.get_or_alloc("d"), Some(3));
        assert_eq!(s.get_or_alloc("e"), None);
    }
}
