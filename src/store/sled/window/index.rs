//! A slice's in-memory index: for each mark, its 32-bit fingerprint and the offset of its
//! entry in the slice's file, packed in one `u64` (8 bytes a mark). A lookup finds the
//! offsets whose fingerprint matches and the entries there are read to confirm.
//!
//! The marks are kept sorted, with the newest (at most [`TAIL`]) in an unsorted tail that is
//! merged in when full: an append costs amortised a few hundred bytes moved, a lookup a
//! binary search and a scan of the tail.

/// How many marks the unsorted tail holds before it is merged.
const TAIL: usize = 2048;

#[derive(Debug, Default)]
pub struct Index {
    sorted: Vec<u64>,
    tail: Vec<u64>,
}

fn pack(fingerprint: u32, offset: u32) -> u64 {
    (u64::from(fingerprint) << 32) | u64::from(offset)
}

impl Index {
    /// An index of marks already sorted (read from an index file).
    pub fn from_sorted(sorted: Vec<u64>) -> Self {
        Self {
            sorted,
            tail: Vec::new(),
        }
    }

    pub fn push(&mut self, fingerprint: u32, offset: u32) {
        self.tail.push(pack(fingerprint, offset));
        if self.tail.len() >= TAIL {
            self.merge();
        }
    }

    fn merge(&mut self) {
        self.sorted.append(&mut self.tail);
        // Two sorted runs or one sorted run and a short unsorted one: the standard sort
        // finds the runs and merges them in linear time.
        self.sorted.sort_unstable();
    }

    /// Everything sorted, with no spare capacity (a slice that takes no more marks).
    pub fn seal(&mut self) {
        self.merge();
        self.sorted.shrink_to_fit();
        self.tail = Vec::new();
    }

    /// The sorted marks (after [`seal`](Self::seal)), for the index file.
    pub fn sorted(&self) -> &[u64] {
        &self.sorted
    }

    /// The offsets of the entries whose fingerprint is `fingerprint`.
    pub fn candidates(&self, fingerprint: u32) -> impl Iterator<Item = u32> + '_ {
        let start = self
            .sorted
            .partition_point(|&v| (v >> 32) < u64::from(fingerprint));
        let sorted = self.sorted[start..]
            .iter()
            .take_while(move |&&v| (v >> 32) == u64::from(fingerprint));
        let tail = self
            .tail
            .iter()
            .filter(move |&&v| (v >> 32) == u64::from(fingerprint));
        sorted.chain(tail).map(|&v| v as u32)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sorted.len() + self.tail.len()
    }

    /// Bytes it holds in memory.
    pub fn heap_bytes(&self) -> usize {
        (self.sorted.capacity() + self.tail.capacity()) * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offset_of_a_fingerprint_is_found_sorted_or_not_yet() {
        let mut index = Index::default();
        for i in 0..(3 * TAIL as u32 + 17) {
            index.push(i % 1000, i);
        }
        assert_eq!(index.len(), 3 * TAIL + 17);
        let mut found: Vec<u32> = index.candidates(7).collect();
        found.sort_unstable();
        let expected: Vec<u32> = (0..(3 * TAIL as u32 + 17))
            .filter(|i| i % 1000 == 7)
            .collect();
        assert_eq!(found, expected);
        assert_eq!(index.candidates(5000).count(), 0);
        index.seal();
        let mut sealed: Vec<u32> = index.candidates(7).collect();
        sealed.sort_unstable();
        assert_eq!(sealed, expected);
        assert!(index.sorted().windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(index.heap_bytes(), index.len() * 8);
    }
}
