//! Replays `fuzz/regressions/export/` on stable Rust: every input the `export` fuzz target
//! keeps is imported into a fresh store; `ok-*` inputs must import, `err-*` and `crash-*`
//! must be refused, and either way the store verifies and holds nothing half-done.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ferrix_format::StoreDir;
use ferrix_store::export::{export_paths, import_paths};
use ferrix_store::verify::verify_store;
use ferrix_store::{LocalStore, LocalStoreConfig};

fn regressions() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/export")
}

/// The target's input expansion: `\xffBIG`, an offset and a count of zero bytes inserted
/// there (so that large NARs need no large files).
fn input(data: &[u8]) -> Box<dyn Read + '_> {
    if data.len() >= 12 && data.starts_with(b"\xffBIG") {
        let rest = &data[12..];
        let at =
            (u32::from_le_bytes([data[4], data[5], data[6], data[7]]) as usize).min(rest.len());
        let n = u64::from(u32::from_le_bytes([data[8], data[9], data[10], data[11]])) % (3 << 20);
        Box::new(
            io::Cursor::new(&rest[..at])
                .chain(io::repeat(0).take(n))
                .chain(io::Cursor::new(&rest[at..])),
        )
    } else {
        Box::new(io::Cursor::new(data))
    }
}

fn assert_clean(store: &LocalStore, what: &str) {
    let problems = verify_store(store, true, None).unwrap();
    assert!(problems.is_empty(), "{what}: the store does not verify");
    let valid = store.all_valid_paths().unwrap();
    for e in fs::read_dir(&store.config().real_store_dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".lock") {
            continue;
        }
        assert!(
            valid.iter().any(|p| p.to_string() == name),
            "{what}: '{name}' is in the store but not valid"
        );
    }
    let pending = store.config().state_dir.join("ferrix/pending");
    let left: Vec<_> = fs::read_dir(&pending)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        // This process's records of what it builds and stages live as long as its store
        // handle (the staged entries themselves are gone, as the loop above shows).
        .filter(|n| {
            let n = n.to_string_lossy();
            !(n.ends_with("-building") || n.ends_with("-staging"))
        })
        .collect();
    assert!(left.is_empty(), "{what}: records left behind: {left:?}");
}

#[test]
fn export_regressions_replay() {
    let mut files: Vec<PathBuf> = fs::read_dir(regressions())
        .expect("fuzz/regressions/export exists")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (mut ok, mut err) = (0, 0);
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let data = fs::read(f).unwrap();
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(LocalStoreConfig::with_root(
            root.path(),
            StoreDir::default(),
        ))
        .unwrap();
        let res = import_paths(&store, input(&data));
        if name.starts_with("ok-") {
            let paths = res.unwrap_or_else(|e| panic!("{name}: {e}"));
            for p in &paths {
                assert!(store.is_valid_path(p).unwrap(), "{name}: {p} not valid");
            }
            // Exported again and imported elsewhere, the same paths come back.
            let mut stream = Vec::new();
            export_paths(&store, &paths.iter().cloned().collect(), &mut stream).unwrap();
            let root2 = tempfile::tempdir().unwrap();
            let other = LocalStore::open(LocalStoreConfig::with_root(
                root2.path(),
                StoreDir::default(),
            ))
            .unwrap();
            let mut again = import_paths(&other, &stream[..]).unwrap();
            let mut want = paths.clone();
            again.sort();
            again.dedup();
            want.sort();
            want.dedup();
            assert_eq!(again, want, "{name}: round trip");
            ok += 1;
        } else {
            assert!(
                name.starts_with("err-") || name.starts_with("crash-"),
                "{name}: a regression input is named ok-, err- or crash-"
            );
            assert!(res.is_err(), "{name}: imported, but must be refused");
            assert!(
                store.all_valid_paths().unwrap().is_empty(),
                "{name}: a refused stream registered something"
            );
            err += 1;
        }
        assert_clean(&store, &name);
    }
    assert!(ok > 0 && err > 0, "both kinds of input are replayed");
}
