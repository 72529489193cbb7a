//! Replays the inputs kept in `fuzz/regressions/{nar,aterm,narinfo}/` (seeds and anything the
//! `cargo fuzz` targets found), on stable Rust, with the targets' properties.
//!
//! A file's name says what is expected of it: `ok-*` is accepted, `err-*` and `crash-*` are
//! refused with an error (never a panic). Every input must also satisfy the properties the
//! fuzz targets assert (errors inside the input, round trips of what is accepted).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ferrix_format::derivation::DrvJsonError;
use ferrix_format::nar::{self, NarErrorKind, NarVisitor};
use ferrix_format::narinfo::{CacheInfo, NarInfo, NarInfoError};
use ferrix_format::{Derivation, DerivationOutput, StoreDir};

#[path = "support/nar_writer.rs"]
mod nar_writer;
use nar_writer::write_nar;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Ok,
    Err,
}

/// The files of `fuzz/regressions/<target>/` with what is expected of each.
fn inputs(target: &str) -> Vec<(PathBuf, Expect, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut v = Vec::new();
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let expect = if name.starts_with("ok-") {
            Expect::Ok
        } else if name.starts_with("err-") || name.starts_with("crash-") {
            Expect::Err
        } else {
            panic!("{}: name it ok-*, err-* or crash-*", path.display());
        };
        let data = fs::read(&path).unwrap();
        v.push((path, expect, data));
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        v.iter().any(|(_, e, _)| *e == Expect::Ok) && v.iter().any(|(_, e, _)| *e == Expect::Err),
        "{}: expected both accepted and refused inputs",
        dir.display()
    );
    v
}

// ---------------------------------------------------------------------------------------------
// NAR
// ---------------------------------------------------------------------------------------------

/// Reads up to `limit` bytes of each file.
struct Reading {
    limit: u64,
}

impl NarVisitor for Reading {
    fn directory(&mut self, _path: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn regular(
        &mut self,
        _path: &[u8],
        _executable: bool,
        size: u64,
        _offset: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let want = size.min(self.limit);
        let got = io::copy(&mut contents.take(want), &mut io::sink())?;
        if got < want {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
    fn symlink(&mut self, _path: &[u8], _target: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn nar_regressions() {
    for (path, expect, data) in inputs("nar") {
        let what = path.display();
        let len = data.len() as u64;
        let listing = nar::list(&data[..]);
        match (&listing, expect) {
            (Ok(l), Expect::Ok) => {
                assert_eq!(l.nar_size, len, "{what}");
                assert!(write_nar(&l.root, &data) == data, "{what}: not canonical");
            }
            (Err(e), Expect::Err) => assert!(e.offset <= len, "{what}: offset {}", e.offset),
            (r, _) => panic!("{what}: expected {expect:?}, got {r:?}"),
        }
        for limit in [0, 5, u64::MAX] {
            match nar::parse_exact(&data[..], &mut Reading { limit }) {
                Ok(n) => assert!(expect == Expect::Ok && n == len, "{what}"),
                Err(e) => assert!(expect == Expect::Err && e.offset <= len, "{what}: {e}"),
            }
        }
        if let Ok(n) = nar::parse(&data[..], &mut Reading { limit: 0 }) {
            assert!(nar::list(&data[..n as usize]).is_ok(), "{what}");
        }

        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        match nar::restore(&data[..], &out) {
            Ok(n) => {
                assert_eq!(expect, Expect::Ok, "{what}: restore accepted it");
                assert_eq!(n, len);
                let mut dumped = Vec::new();
                nar::dump_path(&out, &mut dumped).unwrap();
                assert!(dumped == data, "{what}: restore + dump differs");
            }
            Err(nar::RestoreError::Nar { source, .. }) => {
                assert!(source.offset <= len, "{what}: {source}");
                assert!(
                    expect == Expect::Err || matches!(source.kind, NarErrorKind::Visit { .. }),
                    "{what}: restore refused a valid archive: {source}"
                );
            }
        }
        let left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            left.iter().all(|n| n == "out"),
            "{what}: restore wrote {left:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ATerm
// ---------------------------------------------------------------------------------------------

#[test]
fn aterm_regressions() {
    let sd = StoreDir::default();
    for (path, expect, data) in inputs("aterm") {
        let what = path.display();
        match (Derivation::parse_aterm(&sd, &data), expect) {
            (Ok(d), Expect::Ok) => {
                let text = d.to_aterm(&sd);
                let again = Derivation::parse_aterm(&sd, text.as_bytes()).unwrap();
                assert_eq!(again, d, "{what}");
                assert_eq!(again.to_aterm(&sd), text, "{what}");
                // The JSON reader also checks fixed outputs against the name and hash.
                match Derivation::from_json(&sd, &d.to_json(&sd).compact()) {
                    Ok(back) => assert_eq!(back.drv, d, "{what}"),
                    Err(e @ DrvJsonError::Output { .. }) => assert!(
                        d.outputs
                            .values()
                            .any(|o| matches!(o, DerivationOutput::CaFixed { .. })),
                        "{what}: {e}"
                    ),
                    Err(e) => panic!("{what}: JSON does not read back: {e}"),
                }
            }
            (Err(e), Expect::Err) => {
                assert!(e.offset <= data.len(), "{what}: offset {}", e.offset);
                // The error prints without a panic.
                assert!(!e.to_string().is_empty());
            }
            (r, _) => panic!("{what}: expected {expect:?}, got {r:?}"),
        }
        if let Ok(text) = std::str::from_utf8(&data) {
            if let Ok(p) = Derivation::from_json(&sd, text) {
                let again = Derivation::from_json(&sd, &p.drv.to_json(&sd).compact());
                assert_eq!(again.map(|x| x.drv).ok(), Some(p.drv), "{what}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// narinfo
// ---------------------------------------------------------------------------------------------

#[test]
fn narinfo_regressions() {
    let sd = StoreDir::default();
    for (path, expect, data) in inputs("narinfo") {
        let what = path.display();
        let text = String::from_utf8_lossy(&data);
        match (NarInfo::parse(&sd, &text), expect) {
            (Ok(ni), Expect::Ok) => {
                let printed = ni.to_text(&sd);
                let back = NarInfo::parse(&sd, &printed).unwrap();
                assert_eq!(back, ni, "{what}");
                assert_eq!(back.to_text(&sd), printed, "{what}");
            }
            (Err(e), Expect::Err) => {
                if let NarInfoError::Syntax { line }
                | NarInfoError::Field { line, .. }
                | NarInfoError::Duplicate { line, .. } = e
                {
                    assert!(line >= 1 && line <= text.lines().count(), "{what}: {e}");
                }
            }
            (r, _) => panic!("{what}: expected {expect:?}, got {r:?}"),
        }
        if let Ok(ci) = CacheInfo::parse(&text) {
            assert_eq!(CacheInfo::parse(&ci.to_text()), Ok(ci), "{what}");
        }
    }
}
