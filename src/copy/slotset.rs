//! A set of small indices (a reactor's active-segment slots) as bits, so the per-file scans
//! of the driver (which slot is free, which segments still have data to read) cost a few
//! word operations instead of a walk over every slot (queue-depth slots, 64 by default).

/// Indices `0..len` in or out of the set.
#[derive(Clone, Debug, Default)]
pub struct SlotSet {
    words: Vec<u64>,
}

impl SlotSet {
    /// An empty set for indices below `len`.
    pub fn new(len: usize) -> SlotSet {
        SlotSet {
            words: vec![0; len.div_ceil(64)],
        }
    }

    pub fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    pub fn remove(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    /// The smallest index in the set at or after `from`.
    pub fn next_from(&self, from: usize) -> Option<usize> {
        let mut w = from / 64;
        if w >= self.words.len() {
            return None;
        }
        let mut bits = self.words[w] & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            w += 1;
            bits = *self.words.get(w)?;
        }
    }

    /// The smallest index below `len` not in the set.
    pub fn first_absent(&self, len: usize) -> Option<usize> {
        let i = self
            .words
            .iter()
            .enumerate()
            .find(|(_, w)| **w != !0)
            .map(|(k, w)| k * 64 + w.trailing_ones() as usize)?;
        (i < len).then_some(i)
    }

    /// The indices in the set, smallest first.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let i = self.next_from(at)?;
            at = i + 1;
            Some(i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::SlotSet;

    #[test]
    fn bits_agree_with_a_plain_vector() {
        for len in [1, 63, 64, 65, 130] {
            let mut s = SlotSet::new(len);
            let mut v = vec![false; len];
            // A fixed pseudo-random walk of inserts and removes.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % len as u64) as usize;
                if x & (1 << 40) != 0 {
                    s.insert(i);
                    v[i] = true;
                } else {
                    s.remove(i);
                    v[i] = false;
                }
                let want: Vec<usize> = (0..len).filter(|&k| v[k]).collect();
                assert_eq!(s.iter().collect::<Vec<_>>(), want, "len {len}");
                assert_eq!(s.first_absent(len), (0..len).find(|&k| !v[k]));
                let from = (x >> 20) as usize % (len + 1);
                assert_eq!(s.next_from(from), (from..len).find(|&k| v[k]));
                assert_eq!(s.iter().any(|k| k == i), v[i]);
            }
        }
    }
}
