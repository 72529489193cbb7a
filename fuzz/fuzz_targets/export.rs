//! Bytes into `import_paths` (`nix-store --import`) on a scratch local store, opened once per
//! process (under /dev/shm when there is one, so that the store's syncs cost nothing).
//!
//! Every input starts from an empty store: after each, all valid paths are deleted again, so
//! that a crash reproduces from its input alone.
//!
//! Properties, whether the import succeeded or not:
//! * the store verifies: every valid path is on disk with its recorded NAR hash and size,
//!   and every reference of a valid path is valid;
//! * the store directory holds valid paths only: no `-ferrix-staging` entry, no unregistered
//!   leftover; no intent record of this process is left in `<state>/ferrix/pending`;
//! * on success, every returned path is valid, and exporting them and importing the export
//!   again succeeds and returns the same set.
//!
//! An input starting with `\xffBIG` is expanded before it is read: bytes 4..8 (u32 LE) are an
//! offset into the rest, bytes 8..12 (u32 LE, modulo 3 MiB) a count of zero bytes inserted
//! there. This reaches NARs over the 1 MiB that the store keeps in memory (they are staged on
//! disk) without multi-megabyte inputs.
#![no_main]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::OnceLock;

use ferrix_format::StoreDir;
use ferrix_store::export::{export_paths, import_paths};
use ferrix_store::verify::verify_store;
use ferrix_store::{LocalStore, LocalStoreConfig};
use libfuzzer_sys::fuzz_target;

struct Scratch {
    store: LocalStore,
    real_store_dir: PathBuf,
    pending: PathBuf,
}

fn scratch() -> &'static Scratch {
    static S: OnceLock<Scratch> = OnceLock::new();
    S.get_or_init(|| {
        let root = common::scratch_dir(&common::base(), "export");
        let config = LocalStoreConfig::with_root(&root, StoreDir::default());
        let real_store_dir = config.real_store_dir.clone();
        let pending = config.state_dir.join("ferrix/pending");
        let store = LocalStore::open(config).unwrap();
        Scratch {
            store,
            real_store_dir,
            pending,
        }
    })
}

fn input(data: &[u8]) -> Box<dyn Read + '_> {
    if data.len() >= 12 && data.starts_with(b"\xffBIG") {
        let rest = &data[12..];
        let at = (u32::from_le_bytes(data[4..8].try_into().unwrap()) as usize).min(rest.len());
        let n = u64::from(u32::from_le_bytes(data[8..12].try_into().unwrap())) % (3 << 20);
        Box::new(
            io::Cursor::new(&rest[..at])
                .chain(io::repeat(0).take(n))
                .chain(io::Cursor::new(&rest[at..])),
        )
    } else {
        Box::new(io::Cursor::new(data))
    }
}

fn check_store(s: &Scratch) {
    let store = &s.store;
    let problems = verify_store(store, true, None).unwrap();
    assert!(
        problems.is_empty(),
        "store does not verify: {:?}",
        problems
            .iter()
            .map(|p| p.describe(store))
            .collect::<Vec<_>>()
    );
    let valid: BTreeSet<String> = store
        .all_valid_paths()
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    for e in fs::read_dir(&s.real_store_dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with("-ferrix-staging"),
            "staging entry '{name}' left in the store"
        );
        assert!(
            valid.contains(&name),
            "unregistered '{name}' left in the store"
        );
    }
    let me = format!("{}-", std::process::id());
    for e in fs::read_dir(&s.pending).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(&me) {
            assert!(
                rest.parse::<u64>().is_err(),
                "intent record '{name}' left behind"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let s = scratch();
    let store = &s.store;
    let result = import_paths(store, input(data));
    if common::show() {
        eprintln!("import: {:?}", result.as_ref().map_err(|e| e.to_string()));
    }
    check_store(s);
    if let Ok(paths) = &result {
        for p in paths {
            assert!(
                store.is_valid_path(p).unwrap(),
                "imported '{p}' is not valid"
            );
        }
        let set: BTreeSet<_> = paths.iter().cloned().collect();
        let mut exported = Vec::new();
        export_paths(store, &set, &mut exported).unwrap();
        let again = import_paths(store, &exported[..])
            .unwrap_or_else(|e| panic!("re-importing an export failed: {e}"));
        assert_eq!(again.into_iter().collect::<BTreeSet<_>>(), set);
        check_store(s);
    }
    // Back to an empty store for the next input, referrers first.
    let all: BTreeSet<_> = store.all_valid_paths().unwrap().into_iter().collect();
    let mut order = store.topo_sort(&all).unwrap();
    order.reverse();
    store.invalidate_and_delete(&order).unwrap();
    assert!(store.all_valid_paths().unwrap().is_empty());
    assert_eq!(fs::read_dir(&s.real_store_dir).unwrap().count(), 0);
});
