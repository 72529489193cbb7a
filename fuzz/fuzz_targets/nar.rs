//! Arbitrary bytes into the NAR reader, lister and restorer.
//!
//! Properties:
//! * every error points inside the input; `list`, `parse_exact` (whatever the visitor reads)
//!   and `parse` agree on which inputs are archives and on their size;
//! * an accepted archive is canonical: written again from its listing (and the contents at
//!   the listed offsets) by an independent writer, it is the same bytes;
//! * `restore` into a scratch directory accepts exactly what `list` accepts (unless the file
//!   system refuses a name or target), and what it wrote dumps back to the same bytes;
//! * nothing is ever written beside the target: the scratch directory and its parent hold
//!   exactly what they held before.
#![no_main]

mod common;
#[path = "../../crates/ferrix-format/tests/support/nar_writer.rs"]
mod nar_writer;
use nar_writer::write_nar;

use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::OnceLock;

use ferrix_format::nar::{self, NarEntry, NarErrorKind, NarVisitor};
use libfuzzer_sys::fuzz_target;

/// Reads up to `limit` bytes of each file (the parser skips the rest) and records the tree.
struct Recording {
    limit: u64,
    events: Vec<(Vec<u8>, Event)>,
}

#[derive(Debug, PartialEq)]
enum Event {
    Dir,
    EndDir,
    File { exec: bool, size: u64, offset: u64 },
    Link(Vec<u8>),
}

impl NarVisitor for Recording {
    fn directory(&mut self, path: &[u8]) -> io::Result<()> {
        self.events.push((path.to_vec(), Event::Dir));
        Ok(())
    }
    fn end_directory(&mut self, path: &[u8]) -> io::Result<()> {
        self.events.push((path.to_vec(), Event::EndDir));
        Ok(())
    }
    fn regular(
        &mut self,
        path: &[u8],
        executable: bool,
        size: u64,
        offset: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let want = size.min(self.limit);
        let got = io::copy(&mut contents.take(want), &mut io::sink())?;
        if got < want {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.events.push((
            path.to_vec(),
            Event::File {
                exec: executable,
                size,
                offset,
            },
        ));
        Ok(())
    }
    fn symlink(&mut self, path: &[u8], target: &[u8]) -> io::Result<()> {
        self.events
            .push((path.to_vec(), Event::Link(target.to_vec())));
        Ok(())
    }
}

/// The listing as the visitor events should have described it (pre-order, byte order).
fn expected_events(root: &NarEntry) -> Vec<(Vec<u8>, Event)> {
    fn walk(path: Vec<u8>, e: &NarEntry, out: &mut Vec<(Vec<u8>, Event)>) {
        match e {
            NarEntry::Regular {
                executable,
                size,
                offset,
            } => out.push((
                path,
                Event::File {
                    exec: *executable,
                    size: *size,
                    offset: *offset,
                },
            )),
            NarEntry::Symlink { target } => out.push((path, Event::Link(target.clone()))),
            NarEntry::Directory { entries } => {
                out.push((path.clone(), Event::Dir));
                for (name, child) in entries {
                    let mut p = path.clone();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(name);
                    walk(p, child, out);
                }
                out.push((path, Event::EndDir));
            }
        }
    }
    let mut out = Vec::new();
    walk(Vec::new(), root, &mut out);
    out
}

/// `$TMPDIR/ferrix-fuzz-nar-<pid>/outer/inner` (`/tmp` by default); restores go to
/// `inner/out`, and `outer` and `inner` each hold a sentinel file; their listings are
/// compared after every restore.
struct Scratch {
    outer: PathBuf,
    inner: PathBuf,
    out: PathBuf,
}

fn scratch() -> &'static Scratch {
    static S: OnceLock<Scratch> = OnceLock::new();
    S.get_or_init(|| {
        let base = common::scratch_dir(&std::env::temp_dir(), "nar");
        let outer = base.join("outer");
        let inner = outer.join("inner");
        fs::create_dir_all(&inner).unwrap();
        fs::write(outer.join("sentinel"), b"outer").unwrap();
        fs::write(inner.join("sentinel"), b"inner").unwrap();
        let out = inner.join("out");
        Scratch { outer, inner, out }
    })
}

fn names(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

/// Remove a restored tree; directories may have lost their write bit (they never do in a
/// restore, but be safe), so make them writable first.
fn remove(path: &std::path::Path) {
    match fs::symlink_metadata(path) {
        Err(_) => {}
        Ok(m) if m.is_dir() => {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
            fs::remove_dir_all(path).unwrap();
        }
        Ok(_) => fs::remove_file(path).unwrap(),
    }
}

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;

    // `list`: the whole input is one archive, or an error inside it.
    let listing = match nar::list(data) {
        Ok(l) => {
            assert_eq!(l.nar_size, len);
            Some(l)
        }
        Err(e) => {
            assert!(e.offset <= len, "offset {} > len {len}: {e}", e.offset);
            None
        }
    };

    // `parse_exact` agrees with `list` however much of each file the visitor reads, and
    // reports the same tree.
    for limit in [0, 5, u64::MAX] {
        let mut v = Recording {
            limit,
            events: Vec::new(),
        };
        match nar::parse_exact(data, &mut v) {
            Ok(n) => {
                assert_eq!(n, len);
                let l = listing
                    .as_ref()
                    .expect("parse_exact accepted what list refused");
                assert_eq!(v.events, expected_events(&l.root));
            }
            Err(e) => {
                assert!(e.offset <= len, "offset {} > len {len}: {e}", e.offset);
                assert!(
                    listing.is_none(),
                    "parse_exact refused what list accepted: {e}"
                );
            }
        }
    }

    // `parse` stops at the end of the archive: what it reads is an archive by itself.
    match nar::parse(
        data,
        &mut Recording {
            limit: 0,
            events: Vec::new(),
        },
    ) {
        Ok(n) => {
            assert!(n <= len);
            let l = nar::list(&data[..n as usize]).expect("prefix accepted by parse");
            assert_eq!(l.nar_size, n);
            if listing.is_some() {
                assert_eq!(n, len);
            }
        }
        Err(e) => {
            assert!(e.offset <= len, "offset {} > len {len}: {e}", e.offset);
            assert!(listing.is_none());
        }
    }

    // Canonical: the independent writer gives the same bytes back.
    if let Some(l) = &listing {
        assert!(l.get(b"").is_some());
        let again = write_nar(&l.root, data);
        assert!(again == data, "accepted archive is not canonical");
    }

    // Restore into the scratch directory.
    let s = scratch();
    let before_outer = names(&s.outer);
    remove(&s.out);
    let before_inner = names(&s.inner);
    match nar::restore(data, &s.out) {
        Ok(n) => {
            assert_eq!(n, len);
            assert!(listing.is_some(), "restore accepted what list refused");
            let mut dumped = Vec::new();
            nar::dump_path(&s.out, &mut dumped).unwrap();
            assert!(
                dumped == data,
                "restore + dump_path differs from the archive"
            );
        }
        Err(nar::RestoreError::Nar { source, .. }) => {
            assert!(
                source.offset <= len,
                "offset {} > len {len}: {source}",
                source.offset
            );
            if listing.is_some() {
                // Only the file system may refuse a valid archive (a name over 255 bytes, a
                // symlink target over PATH_MAX).
                assert!(
                    matches!(source.kind, NarErrorKind::Visit { .. }),
                    "restore refused a valid archive: {source}"
                );
            }
        }
    }
    let mut after_inner = names(&s.inner);
    after_inner.retain(|n| n != "out");
    let mut expected_inner = before_inner;
    expected_inner.retain(|n| n != "out");
    assert_eq!(
        after_inner, expected_inner,
        "restore wrote beside its target"
    );
    assert_eq!(
        names(&s.outer),
        before_outer,
        "restore wrote outside its directory"
    );
    assert_eq!(fs::read(s.inner.join("sentinel")).unwrap(), b"inner");
    assert_eq!(fs::read(s.outer.join("sentinel")).unwrap(), b"outer");
    remove(&s.out);
});
