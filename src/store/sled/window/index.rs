//! A slice's in-memory index: for each mark, its 32-bit fingerprint and the offset of its
//! entry in the slice's file. A lookup finds the offsets whose fingerprint matches, and the
//! entries there are read to confirm.
//!
//! - While the slice takes entries, the marks are in a hash map (fingerprint → the first
//!   offset with it; the rare further ones, fingerprints shared within the slice, in a short
//!   list): an append and a lookup cost a hash-map step each.
//! - Once sealed, they are one sorted array of `fingerprint << 32 | offset` (8 bytes a mark,
//!   what the index file holds) with a directory of bucket starts by the fingerprint's top
//!   bits (half a byte a mark): a lookup reads one directory entry and the few marks of one
//!   bucket, two cache misses, where a binary search over millions of marks took twenty.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};

/// About this many marks a bucket of a sealed slice's directory.
const BUCKET: usize = 8;

#[derive(Debug, Default)]
pub struct Index {
    /// Sealed: the marks, sorted.
    sorted: Vec<u64>,
    /// Sealed: where each bucket of `sorted` starts (one more entry than buckets).
    directory: Vec<u32>,
    /// Sealed: the number of the fingerprint's top bits that pick a bucket.
    bits: u32,
    /// Open: fingerprint → the offset of the first mark with it.
    open: HashMap<u32, u32, BuildHasherDefault<FingerprintHasher>>,
    /// Open: marks whose fingerprint `open` already has.
    shared: Vec<u64>,
}

/// The fingerprint is a checksum already: it is only spread over the 64 bits the map
/// looks at (its top bits pick control bytes).
#[derive(Debug, Default)]
pub struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

fn pack(fingerprint: u32, offset: u32) -> u64 {
    (u64::from(fingerprint) << 32) | u64::from(offset)
}

fn fingerprint_of(v: u64) -> u32 {
    (v >> 32) as u32
}

impl Index {
    /// The index of a sealed slice, from its marks sorted (read from its index file).
    pub fn from_sorted(sorted: Vec<u64>) -> Self {
        let mut index = Self {
            sorted,
            ..Self::default()
        };
        index.build_directory();
        index
    }

    fn build_directory(&mut self) {
        let buckets = (self.sorted.len() / BUCKET).max(1).next_power_of_two();
        self.bits = buckets.trailing_zeros();
        let mut directory = Vec::with_capacity(buckets + 1);
        let mut at = 0;
        for bucket in 0..buckets as u64 {
            while at < self.sorted.len() && self.bucket_of(fingerprint_of(self.sorted[at])) < bucket
            {
                at += 1;
            }
            directory.push(at as u32);
        }
        directory.push(self.sorted.len() as u32);
        self.directory = directory;
    }

    fn bucket_of(&self, fingerprint: u32) -> u64 {
        if self.bits == 0 {
            0
        } else {
            u64::from(fingerprint) >> (32 - self.bits)
        }
    }

    /// Adds a mark (to a slice not yet sealed).
    pub fn push(&mut self, fingerprint: u32, offset: u32) {
        match self.open.entry(fingerprint) {
            Entry::Vacant(free) => {
                free.insert(offset);
            }
            Entry::Occupied(_) => self.shared.push(pack(fingerprint, offset)),
        }
    }

    /// Sorts the marks into one array with its directory (a slice that takes no more).
    pub fn seal(&mut self) {
        let mut sorted = std::mem::take(&mut self.sorted);
        sorted.reserve_exact(self.open.len() + self.shared.len());
        sorted.extend(self.open.drain().map(|(fp, offset)| pack(fp, offset)));
        sorted.append(&mut self.shared);
        sorted.sort_unstable();
        sorted.shrink_to_fit();
        self.open = HashMap::default();
        self.shared = Vec::new();
        self.sorted = sorted;
        self.build_directory();
    }

    /// The sorted marks (after [`seal`](Self::seal)), for the index file.
    pub fn sorted(&self) -> &[u64] {
        &self.sorted
    }

    /// The offsets of the entries whose fingerprint is `fingerprint`.
    pub fn candidates(&self, fingerprint: u32) -> impl Iterator<Item = u32> + '_ {
        let bucket = self.bucket_of(fingerprint) as usize;
        let sealed = match (self.directory.get(bucket), self.directory.get(bucket + 1)) {
            (Some(&start), Some(&end)) => &self.sorted[start as usize..end as usize],
            _ => &[],
        };
        let open = self.open.get(&fingerprint).copied();
        let shared = if open.is_some() {
            &self.shared[..]
        } else {
            &[]
        };
        sealed
            .iter()
            .chain(shared)
            .filter(move |&&v| fingerprint_of(v) == fingerprint)
            .map(|&v| v as u32)
            .chain(open)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sorted.len() + self.open.len() + self.shared.len()
    }

    /// Bytes it holds in memory (the open map's slots about 9 bytes each).
    pub fn heap_bytes(&self) -> usize {
        self.sorted.capacity() * 8
            + self.directory.capacity() * 4
            + self.open.capacity() * 9
            + self.shared.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offset_of_a_fingerprint_is_found_open_or_sealed() {
        let mut index = Index::default();
        let n = 20_000u32;
        // Fingerprints spread over the whole range, each used by 3 marks.
        let fp = |i: u32| (i % (n / 3)).wrapping_mul(0x9e37_79b9);
        for i in 0..n {
            index.push(fp(i), i);
        }
        assert_eq!(index.len(), n as usize);
        let expected = |f: u32| -> Vec<u32> { (0..n).filter(|&i| fp(i) == f).collect() };
        let found = |index: &Index, f: u32| {
            let mut v: Vec<u32> = index.candidates(f).collect();
            v.sort_unstable();
            v
        };
        for probe in [0, 7, 1234, n / 3 - 1] {
            assert_eq!(found(&index, fp(probe)), expected(fp(probe)));
        }
        assert_eq!(index.candidates(fp(0).wrapping_add(1)).count(), 0);
        index.seal();
        assert!(index.sorted().windows(2).all(|w| w[0] <= w[1]));
        for probe in [0, 7, 1234, n / 3 - 1] {
            assert_eq!(found(&index, fp(probe)), expected(fp(probe)));
        }
        // The highest and lowest fingerprints land in the first and last buckets.
        let mut edges = Index::default();
        edges.push(0, 1);
        edges.push(u32::MAX, 2);
        edges.seal();
        assert_eq!(edges.candidates(0).collect::<Vec<_>>(), [1]);
        assert_eq!(edges.candidates(u32::MAX).collect::<Vec<_>>(), [2]);
        let reread = Index::from_sorted(index.sorted().to_vec());
        assert_eq!(found(&reread, fp(7)), expected(fp(7)));
        assert!(
            index.heap_bytes() <= index.len() * 9,
            "{}",
            index.heap_bytes()
        );
    }
}
