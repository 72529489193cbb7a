//! NAR restore stays inside its target, and dump refuses what a NAR cannot hold.

use std::fs;
use std::path::Path;

use ferrix_format::nar::{self, NarErrorKind};
use ferrix_format::wire::push_bytes;

/// Build an archive from tokens, each written as a framed string.
fn nar_of(tokens: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for t in tokens {
        push_bytes(&mut v, t);
    }
    v
}

fn entry_start(name: &[u8]) -> Vec<&[u8]> {
    vec![b"entry" as &[u8], b"(", b"name", name, b"node"]
}

#[test]
fn symlink_then_directory_of_same_name_is_refused_before_writing() {
    // A symlink `a -> <outside>`, then a directory `a` with a file: a restore that followed
    // the symlink would write outside the target.
    let outside = tempfile::tempdir().unwrap();
    let target_parent = tempfile::tempdir().unwrap();
    let target = target_parent.path().join("t");
    let outside_s = outside.path().to_str().unwrap().as_bytes().to_vec();
    let mut toks: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
    toks.extend(entry_start(b"a"));
    toks.extend([
        b"(" as &[u8],
        b"type",
        b"symlink",
        b"target",
        &outside_s,
        b")",
        b")",
    ]);
    toks.extend(entry_start(b"a"));
    toks.extend([b"(" as &[u8], b"type", b"directory"]);
    toks.extend(entry_start(b"evil"));
    toks.extend([
        b"(" as &[u8],
        b"type",
        b"regular",
        b"contents",
        b"pwned",
        b")",
        b")",
        b")",
        b")",
        b")",
    ]);
    let bytes = nar_of(&toks);
    let err = nar::restore(&bytes[..], &target).unwrap_err();
    let ferrix_format::nar::RestoreError::Nar { source, .. } = err;
    assert!(
        matches!(source.kind, NarErrorKind::Unsorted { .. }),
        "{source}"
    );
    assert!(
        fs::read_dir(outside.path()).unwrap().next().is_none(),
        "wrote outside the target"
    );
}

#[test]
fn restore_refuses_an_existing_target_and_dotdot_names() {
    let dir = tempfile::tempdir().unwrap();
    let file_nar = nar_of(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"regular",
        b"contents",
        b"x",
        b")",
    ]);
    // Existing target: O_EXCL refuses, nothing is overwritten.
    let existing = dir.path().join("exists");
    fs::write(&existing, b"keep").unwrap();
    assert!(nar::restore(&file_nar[..], &existing).is_err());
    assert_eq!(fs::read(&existing).unwrap(), b"keep");
    // A dangling symlink at the target is not followed either.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path().join("victim"), &link).unwrap();
    assert!(nar::restore(&file_nar[..], &link).is_err());
    assert!(!dir.path().join("victim").exists());

    let mut toks: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
    toks.extend(entry_start(b".."));
    toks.extend([
        b"(" as &[u8],
        b"type",
        b"regular",
        b"contents",
        b"x",
        b")",
        b")",
        b")",
    ]);
    let bytes = nar_of(&toks);
    let target = dir.path().join("t");
    let err = nar::list(&bytes[..]).unwrap_err();
    assert!(matches!(err.kind, NarErrorKind::BadName(_)));
    assert!(nar::restore(&bytes[..], &target).is_err());
    assert!(!dir.path().join("x").exists());
}

#[test]
fn trailing_data_and_truncation_are_located() {
    let mut bytes = nar_of(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"regular",
        b"contents",
        b"abc",
        b")",
    ]);
    let len = bytes.len() as u64;
    bytes.extend_from_slice(b"junk");
    let err = nar::list(&bytes[..]).unwrap_err();
    assert!(matches!(err.kind, NarErrorKind::TrailingData));
    assert_eq!(err.offset, len);
    // `parse` (for archives inside a stream) stops at the end and leaves the rest.
    struct Nop;
    impl nar::NarVisitor for Nop {
        fn directory(&mut self, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn regular(
            &mut self,
            _: &[u8],
            _: bool,
            _: u64,
            _: u64,
            _: &mut dyn std::io::Read,
        ) -> std::io::Result<()> {
            Ok(())
        }
        fn symlink(&mut self, _: &[u8], _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
    }
    assert_eq!(nar::parse(&bytes[..], &mut Nop).unwrap(), len);
    for cut in 0..len as usize {
        let err = nar::list(&bytes[..cut]).unwrap_err();
        assert!(err.offset <= cut as u64, "cut {cut}: {err}");
    }
}

#[test]
fn huge_lengths_do_not_allocate() {
    // A name claiming 2^60 bytes must be refused without trying to read it.
    let mut v = nar_of(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
    ]);
    v.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let err = nar::list(&v[..]).unwrap_err();
    assert!(matches!(err.kind, NarErrorKind::TooLong(_)), "{err}");
    let mut v = nar_of(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    v.extend_from_slice(&u64::MAX.to_le_bytes());
    let err = nar::list(&v[..]).unwrap_err();
    assert!(matches!(err.kind, NarErrorKind::Truncated), "{err}");
}

#[test]
fn dump_refuses_special_files() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = nar::dump_path(dir.path(), std::io::sink()).unwrap_err();
    assert!(
        err.to_string().contains("unsupported type (socket)"),
        "{err}"
    );
    let err = nar::dump_path(Path::new("/nonexistent/x"), std::io::sink()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x"), "{err}");
}
