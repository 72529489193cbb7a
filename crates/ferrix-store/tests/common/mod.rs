//! Shared by the crash and concurrency tests: a small seeded PRNG, opening a private store,
//! and hand-made NARs for export streams.

#![allow(dead_code)]

use std::path::Path;

use ferrix_format::wire::push_bytes;
use ferrix_format::StoreDir;
use ferrix_store::{LocalStore, LocalStoreConfig};

/// Nix's export stream puts this after each NAR.
pub const EXPORT_MAGIC: u64 = 0x4558_494e;

/// SplitMix64: small, seeded, good enough for timing and choices.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// In `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            v.get(self.below(v.len() as u64) as usize)
        }
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

pub fn config(root: &Path) -> LocalStoreConfig {
    LocalStoreConfig::with_root(root, StoreDir::default())
}

pub fn open(root: &Path) -> LocalStore {
    LocalStore::open(config(root)).unwrap()
}

/// The NAR of a non-executable regular file.
pub fn file_nar(contents: &[u8]) -> Vec<u8> {
    let mut nar = Vec::new();
    for s in [
        ferrix_format::nar::MAGIC,
        b"(",
        b"type",
        b"regular",
        b"contents",
        contents,
        b")",
    ] {
        push_bytes(&mut nar, s);
    }
    nar
}

/// Append one path of Nix's export format to `stream`: the NAR of a text file holding
/// `text`, then its metadata (no deriver, no signature).
pub fn push_export_text(
    stream: &mut Vec<u8>,
    store: &LocalStore,
    p: &ferrix_format::StorePath,
    text: &[u8],
    refs: &std::collections::BTreeSet<ferrix_format::StorePath>,
) {
    use ferrix_format::wire::{write_bytes, write_u64};
    write_u64(&mut *stream, 1).unwrap();
    stream.extend_from_slice(&file_nar(text));
    write_u64(&mut *stream, EXPORT_MAGIC).unwrap();
    write_bytes(&mut *stream, store.print(p).as_bytes()).unwrap();
    write_u64(&mut *stream, refs.len() as u64).unwrap();
    for r in refs {
        write_bytes(&mut *stream, store.print(r).as_bytes()).unwrap();
    }
    write_bytes(&mut *stream, b"").unwrap();
    write_u64(&mut *stream, 0).unwrap();
}
