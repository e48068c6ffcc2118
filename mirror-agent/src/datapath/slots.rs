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
}
