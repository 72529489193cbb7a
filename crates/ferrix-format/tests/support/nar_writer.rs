//! An independent NAR writer for tests and fuzz targets: the canonical archive of a listing,
//! to check that what the reader accepts is canonical. Shared by `tests/fuzz_regressions.rs`
//! and `fuzz/fuzz_targets/nar.rs` (included by path).

use ferrix_format::nar::{self, NarEntry};

fn framed(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// The canonical NAR of a listing, contents taken from `data` at the listed offsets.
pub fn write_nar(root: &NarEntry, data: &[u8]) -> Vec<u8> {
    fn node(out: &mut Vec<u8>, e: &NarEntry, data: &[u8]) {
        framed(out, b"(");
        framed(out, b"type");
        match e {
            NarEntry::Regular {
                executable,
                size,
                offset,
            } => {
                framed(out, b"regular");
                if *executable {
                    framed(out, b"executable");
                    framed(out, b"");
                }
                framed(out, b"contents");
                let at = *offset as usize;
                framed(out, &data[at..at + *size as usize]);
            }
            NarEntry::Symlink { target } => {
                framed(out, b"symlink");
                framed(out, b"target");
                framed(out, target);
            }
            NarEntry::Directory { entries } => {
                framed(out, b"directory");
                for (name, child) in entries {
                    framed(out, b"entry");
                    framed(out, b"(");
                    framed(out, b"name");
                    framed(out, name);
                    framed(out, b"node");
                    node(out, child, data);
                    framed(out, b")");
                }
            }
        }
        framed(out, b")");
    }
    let mut out = Vec::new();
    framed(&mut out, nar::MAGIC);
    node(&mut out, root, data);
    out
}
