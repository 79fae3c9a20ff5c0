//! A bounded slab of in-flight ops: each op's driver state under a small integer key, the
//! key is the op's user_data. Bounded by the backend's capacity (never more than the CQ).

/// Fixed-capacity slab; keys are reused once their op completed.
pub struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    pub fn with_capacity(cap: usize) -> Self {
        assert!(cap > 0 && cap <= u32::MAX as usize);
        Slab {
            entries: (0..cap).map(|_| None).collect(),
            free: (0..cap as u32).rev().collect(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Stores `v`; `None` when full (the caller's bound was wrong: it checks `is_full` first).
    pub fn insert(&mut self, v: T) -> Option<u32> {
        let key = self.free.pop()?;
        let e = &mut self.entries[key as usize];
        debug_assert!(e.is_none());
        *e = Some(v);
        Some(key)
    }

    /// Takes the entry of a completed op. A key that holds nothing is a completion the engine
    /// never asked for: a bug, so it panics (the reactor's guard then aborts the job).
    pub fn remove(&mut self, key: u64) -> T {
        let v = usize::try_from(key)
            .ok()
            .and_then(|k| self.entries.get_mut(k))
            .and_then(Option::take)
            .unwrap_or_else(|| panic!("completion for op {key}, which is not in flight"));
        self.free.push(key as u32);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::Slab;

    #[test]
    fn bounded_and_keys_reused() {
        let mut s = Slab::with_capacity(3);
        let keys: Vec<u32> = (0..3).map(|i| s.insert(i).unwrap()).collect();
        assert!(s.is_full());
        assert_eq!(s.insert(9), None, "a full slab takes nothing more");
        assert_eq!(s.len(), 3);
        assert_eq!(s.remove(keys[1] as u64), 1);
        assert_eq!(s.len(), 2);
        let k = s.insert(7).unwrap();
        assert_eq!(k, keys[1], "the freed key is the one reused");
        assert_eq!(s.remove(k as u64), 7);
        assert_eq!(s.remove(keys[0] as u64), 0);
        assert_eq!(s.remove(keys[2] as u64), 2);
        assert!(s.is_empty());
    }

    #[test]
    #[should_panic(expected = "not in flight")]
    fn a_completion_twice_is_a_bug() {
        let mut s = Slab::with_capacity(2);
        let k = s.insert(1u8).unwrap();
        s.remove(k as u64);
        s.remove(k as u64);
    }

    #[test]
    #[should_panic(expected = "not in flight")]
    fn a_key_out_of_range_is_a_bug() {
        let mut s: Slab<u8> = Slab::with_capacity(2);
        s.remove(5);
    }
}
