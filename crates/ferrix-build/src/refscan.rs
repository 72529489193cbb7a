//! Finding which candidate store paths an output mentions, in one pass over its NAR.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};

use ferrix_format::StorePath;

/// Nix's base-32 alphabet: the characters a hash part is made of.
const fn is_nix32(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'd' | b'f'..=b'n' | b'p'..=b's' | b'v'..=b'z')
}

const HASH_LEN: usize = 32;

/// A `Write` sink that looks for the 32-character hash parts of candidate paths in what goes
/// through it. Any run of base-32 characters is checked window by window against a hash map,
/// so the cost does not grow with the number of candidates; a window may span writes.
#[derive(Debug)]
pub struct RefScanner {
    candidates: HashMap<[u8; HASH_LEN], StorePath>,
    found: BTreeSet<StorePath>,
    /// The last bytes of the current base-32 run (at most 31), carried across writes.
    tail: Vec<u8>,
}

impl RefScanner {
    pub fn new(candidates: impl IntoIterator<Item = StorePath>) -> Self {
        let candidates = candidates
            .into_iter()
            .filter_map(|p| {
                let h: [u8; HASH_LEN] = p.hash_part().as_bytes().try_into().ok()?;
                Some((h, p))
            })
            .collect();
        Self {
            candidates,
            found: BTreeSet::new(),
            tail: Vec::with_capacity(2 * HASH_LEN),
        }
    }

    pub fn found(self) -> BTreeSet<StorePath> {
        self.found
    }

    fn check(&mut self, window: &[u8]) {
        if let Ok(w) = <[u8; HASH_LEN]>::try_from(window) {
            if let Some(p) = self.candidates.get(&w) {
                if !self.found.contains(p) {
                    self.found.insert(p.clone());
                }
            }
        }
    }

    fn scan(&mut self, data: &[u8]) {
        if self.candidates.is_empty() {
            return;
        }
        // Finish a run that started in an earlier write.
        let mut i = 0;
        if !self.tail.is_empty() {
            while i < data.len() && is_nix32(data[i]) {
                self.tail.push(data[i]);
                i += 1;
                if self.tail.len() >= HASH_LEN {
                    let start = self.tail.len() - HASH_LEN;
                    let w: Vec<u8> = self.tail[start..].to_vec();
                    self.check(&w);
                }
                if self.tail.len() >= 2 * HASH_LEN {
                    self.tail.drain(..HASH_LEN);
                }
            }
            if i == data.len() {
                return;
            }
            self.tail.clear();
        }
        let mut run_start = None;
        while i < data.len() {
            if is_nix32(data[i]) {
                let s = *run_start.get_or_insert(i);
                if i + 1 - s >= HASH_LEN {
                    self.check(&data[i + 1 - HASH_LEN..=i]);
                }
            } else {
                run_start = None;
            }
            i += 1;
        }
        if let Some(s) = run_start {
            let keep = (data.len() - s).min(HASH_LEN - 1);
            self.tail.extend_from_slice(&data[data.len() - keep..]);
        }
    }
}

impl Write for RefScanner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scan(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> StorePath {
        StorePath::from_base_name(s).unwrap()
    }

    #[test]
    fn finds_hashes_across_write_boundaries() {
        let a = p("0g1savw1cf7pji42hasyx0smc4aw15nw-a");
        let b = p("1g1savw1cf7pji42hasyx0smc4aw15nw-b");
        let c = p("2g1savw1cf7pji42hasyx0smc4aw15nw-c");
        let text = format!(
            "x /nix/store/{}-a y zz{}q",
            a.hash_part(),
            // b's hash inside a longer base-32 run still counts, as in Nix.
            format_args!("aa{}bb", b.hash_part())
        );
        for split in 0..text.len() {
            let mut s = RefScanner::new([a.clone(), b.clone(), c.clone()]);
            s.write_all(&text.as_bytes()[..split]).unwrap();
            s.write_all(&text.as_bytes()[split..]).unwrap();
            assert_eq!(s.found(), [a.clone(), b.clone()].into(), "split at {split}");
        }
        // One byte at a time.
        let mut s = RefScanner::new([a.clone(), c.clone()]);
        for byte in text.as_bytes() {
            s.write_all(&[*byte]).unwrap();
        }
        assert_eq!(s.found(), [a].into());
    }
}
