//! The local store on a private temporary directory: adding, querying, GC, export/import.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ferrix_format::{FileIngestionMethod, HashAlgo, StoreDir, StorePath};
use ferrix_store::gc::{collect_garbage, GcAction, GcOptions};
use ferrix_store::{LocalStore, LocalStoreConfig, StoreError};

fn open(root: &Path) -> LocalStore {
    let cfg = LocalStoreConfig::with_root(root, StoreDir::default());
    LocalStore::open(cfg).unwrap()
}

fn set(v: &[&StorePath]) -> BTreeSet<StorePath> {
    v.iter().map(|p| (*p).clone()).collect()
}

#[test]
fn add_query_and_closure() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = store.add_text("a", b"aaa", &BTreeSet::new()).unwrap();
    let text_b = format!("see {}", store.print(&a));
    let b = store.add_text("b", text_b.as_bytes(), &set(&[&a])).unwrap();
    assert_eq!(
        store.print(&a),
        StoreDir::default().display(
            &StoreDir::default()
                .make_text_path("a", &ferrix_format::Hash::sha256(b"aaa"), [])
                .unwrap()
        )
    );
    let info = store.path_info(&b).unwrap();
    assert_eq!(info.references, set(&[&a]));
    assert!(info.ultimate);
    assert_eq!(info.ca.unwrap().to_string().split(':').next(), Some("text"));
    assert_eq!(store.referrers(&a).unwrap(), set(&[&b]));
    assert_eq!(
        store.closure([b.clone()], false, false).unwrap(),
        set(&[&a, &b])
    );
    // Contents are canonical: read-only, mtime 1.
    let real = store.real_path(&b);
    let m = fs::metadata(&real).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o444);
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&m), 1);
    // Adding again is a no-op that returns the same path.
    assert_eq!(
        store.add_text("b", text_b.as_bytes(), &set(&[&a])).unwrap(),
        b
    );

    // A tree, recursive sha256 (a source path) and flat.
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/f"), b"hello\n").unwrap();
    fs::write(src.join("x"), b"exec").unwrap();
    fs::set_permissions(src.join("x"), fs::Permissions::from_mode(0o755)).unwrap();
    let p = store
        .add_path(
            &src,
            "src",
            FileIngestionMethod::Recursive,
            HashAlgo::Sha256,
        )
        .unwrap();
    let (h, n) = ferrix_format::nar::hash_path(&src, HashAlgo::Sha256).unwrap();
    let info = store.path_info(&p).unwrap();
    assert_eq!((info.nar_hash, info.nar_size), (h, n));
    assert_eq!(
        ferrix_format::nar::hash_path(&store.real_path(&p), HashAlgo::Sha256)
            .unwrap()
            .0,
        h
    );
    let f = store
        .add_path(
            &src.join("sub/f"),
            "f.txt",
            FileIngestionMethod::Flat,
            HashAlgo::Sha256,
        )
        .unwrap();
    assert_eq!(
        store.print(&f),
        "/nix/store/d4b4lmbd433fa2xcdysz7p7zahnqh1z4-f.txt"
    );
    let err = store
        .add_path(&src, "src", FileIngestionMethod::Flat, HashAlgo::Sha256)
        .unwrap_err();
    assert!(matches!(err, StoreError::NotRegularFile { .. }));
    let err = store.add_text("a b", b"x", &BTreeSet::new()).unwrap_err();
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("illegal character"), "{chain}");
}

#[test]
fn references_must_be_valid() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ghost = StorePath::from_base_name("0g1savw1cf7pji42hasyx0smc4aw15nw-ghost").unwrap();
    let err = store.add_text("c", b"c", &set(&[&ghost])).unwrap_err();
    assert!(matches!(err, StoreError::ReferenceNotValid { .. }), "{err}");
    // Nothing was left behind.
    let leftovers: Vec<_> = fs::read_dir(&store.config().real_store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn gc_keeps_roots_and_deletes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = store.add_text("a", b"a", &BTreeSet::new()).unwrap();
    let b = store.add_text("b", b"b", &set(&[&a])).unwrap();
    let c = store.add_text("c", b"c", &BTreeSet::new()).unwrap();
    let link = dir.path().join("result");
    ferrix_store::gc::add_perm_root(&store, &b, &link).unwrap();
    drop(store);
    // A fresh process view: no temp roots of ours.
    let store = open(dir.path());
    let live = collect_garbage(&store, &GcOptions::new(GcAction::ReturnLive)).unwrap();
    assert_eq!(live.paths, {
        let mut v = vec![a.clone(), b.clone()];
        v.sort();
        v
    });
    let mut opts = GcOptions::new(GcAction::DeleteSpecific);
    opts.paths = set(&[&a]);
    let err = collect_garbage(&store, &opts).unwrap_err();
    assert!(matches!(err, StoreError::Alive { .. }), "{err}");
    let r = collect_garbage(&store, &GcOptions::new(GcAction::DeleteDead)).unwrap();
    assert_eq!(r.paths, vec![c.clone()]);
    assert!(!store.real_path(&c).exists());
    assert!(store.is_valid_path(&a).unwrap() && store.is_valid_path(&b).unwrap());
    // Remove the root: everything goes, referrers first.
    fs::remove_file(&link).unwrap();
    let r = collect_garbage(&store, &GcOptions::new(GcAction::DeleteDead)).unwrap();
    assert_eq!(r.paths, vec![b.clone(), a.clone()]);
    assert!(store.all_valid_paths().unwrap().is_empty());
}

#[test]
fn export_import_round_trip_and_verify() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let s1 = open(d1.path());
    let a = s1.add_text("a", b"a", &BTreeSet::new()).unwrap();
    let b = s1.add_text("b", b"b", &set(&[&a])).unwrap();
    let mut stream = Vec::new();
    ferrix_store::export::export_paths(&s1, &set(&[&a, &b]), &mut stream).unwrap();
    let s2 = open(d2.path());
    let got = ferrix_store::export::import_paths(&s2, &stream[..]).unwrap();
    assert_eq!(got, vec![a.clone(), b.clone()]);
    let (i1, i2) = (s1.path_info(&b).unwrap(), s2.path_info(&b).unwrap());
    assert_eq!(
        (i1.nar_hash, i1.nar_size, &i1.references),
        (i2.nar_hash, i2.nar_size, &i2.references)
    );
    // Importing a stream whose references come later fails, leaving nothing.
    let d3 = tempfile::tempdir().unwrap();
    let s3 = open(d3.path());
    let mut only_b = Vec::new();
    ferrix_store::export::export_paths(&s1, &set(&[&b]), &mut only_b).unwrap();
    assert!(ferrix_store::export::import_paths(&s3, &only_b[..]).is_err());
    assert!(!s3.real_path(&b).exists());

    assert!(ferrix_store::verify::verify_store(&s2, true, None)
        .unwrap()
        .is_empty());
    // Tamper with a file: verification names it.
    let real = s2.real_path(&a);
    fs::set_permissions(&real, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&real, b"tampered").unwrap();
    let problems = ferrix_store::verify::verify_store(&s2, true, None).unwrap();
    assert_eq!(problems.len(), 1);
    assert!(problems[0].describe(&s2).contains("was modified"));
}

#[test]
fn recovery_removes_unregistered_paths() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let cfg = store.config().clone();
    drop(store);
    // Simulate a crash between rename and registration.
    let p = StorePath::from_base_name("0g1savw1cf7pji42hasyx0smc4aw15nw-t.txt").unwrap();
    fs::write(cfg.real_path(&p), b"abc").unwrap();
    fs::write(
        cfg.state_dir.join("ferrix/pending/999999999-0"),
        format!("{p}\0"),
    )
    .unwrap();
    // And a staging entry of the same dead process.
    let tmp = cfg
        .real_store_dir
        .join("1g1savw1cf7pji42hasyx0smc4aw15nw-ferrix-staging");
    fs::create_dir_all(tmp.join("sub")).unwrap();
    fs::write(
        cfg.state_dir.join("ferrix/pending/999999999-staging"),
        "1g1savw1cf7pji42hasyx0smc4aw15nw-ferrix-staging\0",
    )
    .unwrap();
    let store = LocalStore::open(cfg.clone()).unwrap();
    assert!(!cfg.real_path(&p).exists());
    assert!(!tmp.exists());
    assert!(!store.is_valid_path(&p).unwrap());
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let cfg = store.config().clone();
    drop(store);
    fs::write(cfg.db_dir().join("schema"), "11").unwrap();
    let err = LocalStore::open(cfg).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 11, .. }),
        "{err}"
    );
}

#[test]
fn copy_closure_between_stores() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (s1, s2) = (open(d1.path()), open(d2.path()));
    let a = s1.add_text("a", b"a", &BTreeSet::new()).unwrap();
    let b = s1.add_text("b", b"b", &set(&[&a])).unwrap();
    let opts = ferrix_store::CopyOptions::default();
    let copied = ferrix_store::copy_paths(&s1, &s2, &set(&[&b]), &opts).unwrap();
    assert_eq!(copied, vec![a.clone(), b.clone()]);
    assert_eq!(s2.path_info(&b).unwrap().references, set(&[&a]));
    assert!(ferrix_store::verify::verify_store(&s2, true, None)
        .unwrap()
        .is_empty());
    // Nothing left to copy the second time.
    assert!(ferrix_store::copy_paths(&s1, &s2, &set(&[&b]), &opts)
        .unwrap()
        .is_empty());
    // A path the source does not have is named, with the source.
    let c = s1.add_text("c", b"c", &BTreeSet::new()).unwrap();
    s1.invalidate_and_delete(std::slice::from_ref(&c)).unwrap();
    let err = ferrix_store::copy_paths(&s1, &s2, &set(&[&c]), &opts).unwrap_err();
    assert!(err.to_string().contains(&s1.print(&c)), "{err}");
    assert!(!s2.is_valid_path(&c).unwrap());
}

/// Paths bigger than what is kept in memory, and many of them, cross through the NAR
/// streams between the stores' threads intact, in batches.
#[test]
fn copy_many_and_big_paths_between_stores() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (s1, s2) = (open(d1.path()), open(d2.path()));
    let src = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..9_000_000u32).map(|i| (i % 253) as u8).collect();
    fs::create_dir(src.path().join("tree")).unwrap();
    fs::write(src.path().join("tree/big"), &big).unwrap();
    fs::write(src.path().join("tree/small"), b"small").unwrap();
    let tree = s1
        .add_path(
            &src.path().join("tree"),
            "tree",
            FileIngestionMethod::Recursive,
            HashAlgo::Sha256,
        )
        .unwrap();
    let mut last = tree.clone();
    let mut all = vec![tree.clone()];
    for i in 0..150 {
        last = s1
            .add_text(&format!("t{i}"), format!("{i}").as_bytes(), &set(&[&last]))
            .unwrap();
        all.push(last.clone());
    }
    let opts = ferrix_store::CopyOptions::default();
    let copied = ferrix_store::copy_paths(&s1, &s2, &set(&[&last]), &opts).unwrap();
    assert_eq!(copied, all);
    assert_eq!(fs::read(s2.real_path(&tree).join("big")).unwrap(), big);
    assert!(ferrix_store::verify::verify_store(&s2, true, None)
        .unwrap()
        .is_empty());
}

/// Every entry of `root` is canonical: read-only modes (0555 for directories and executables),
/// mtime 1, symlinks included.
fn assert_canonical(root: &Path) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(root).unwrap();
    assert_eq!(m.mtime(), 1, "{}", root.display());
    if m.file_type().is_symlink() {
        return;
    }
    let mode = m.permissions().mode() & 0o7777;
    assert!(
        mode == 0o444 || mode == 0o555,
        "{} has {mode:o}",
        root.display()
    );
    if m.is_dir() {
        assert_eq!(mode, 0o555);
        for e in fs::read_dir(root).unwrap() {
            assert_canonical(&e.unwrap().path());
        }
    }
}

/// Small trees are written straight to their place from memory, large ones restored into the
/// staging area and renamed: both end up canonical with the source's NAR hash, also through
/// an export and import.
#[test]
fn small_and_large_trees_land_canonical() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut paths = Vec::new();
    for (name, big) in [("small", 1000usize), ("large", 1_500_000)] {
        let src = dir.path().join(name);
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::write(src.join("d/e/f"), vec![b'x'; big]).unwrap();
        fs::write(src.join("run"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("run"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("d/e/f", src.join("link")).unwrap();
        fs::create_dir(src.join("empty")).unwrap();
        let p = store
            .add_path(&src, name, FileIngestionMethod::Recursive, HashAlgo::Sha256)
            .unwrap();
        let real = store.real_path(&p);
        assert_canonical(&real);
        let (h, n) = ferrix_format::nar::hash_path(&src, HashAlgo::Sha256).unwrap();
        let info = store.path_info(&p).unwrap();
        assert_eq!((info.nar_hash, info.nar_size), (h, n));
        assert_eq!(
            ferrix_format::nar::hash_path(&real, HashAlgo::Sha256).unwrap(),
            (h, n)
        );
        paths.push(p);
    }
    // A single large file, flat: hashed from the staged copy.
    let big = dir.path().join("big.bin");
    fs::write(&big, vec![7u8; 2_000_000]).unwrap();
    let flat = store
        .add_path(&big, "big.bin", FileIngestionMethod::Flat, HashAlgo::Sha1)
        .unwrap();
    assert_canonical(&store.real_path(&flat));
    paths.push(flat);

    let mut stream = Vec::new();
    let all: BTreeSet<StorePath> = paths.iter().cloned().collect();
    ferrix_store::export::export_paths(&store, &all, &mut stream).unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let s2 = open(d2.path());
    ferrix_store::export::import_paths(&s2, &stream[..]).unwrap();
    for p in &paths {
        assert_canonical(&s2.real_path(p));
        assert_eq!(
            s2.path_info(p).unwrap().nar_hash,
            store.path_info(p).unwrap().nar_hash
        );
    }
    assert!(ferrix_store::verify::verify_store(&s2, true, None)
        .unwrap()
        .is_empty());
    // Nothing is left of the staging entries, nor of their record once the store is closed.
    let cfg = s2.config().clone();
    drop(s2);
    let names: Vec<String> = fs::read_dir(&cfg.real_store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("staging")), "{names:?}");
    assert_eq!(
        fs::read_dir(cfg.state_dir.join("ferrix/pending"))
            .unwrap()
            .count(),
        0
    );
}

/// Alone with the store, a batch needs no lock files; with a second handle open (as another
/// process would hold it), every batch takes path locks.
#[test]
fn path_locks_only_when_the_store_is_shared() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_text("alone", b"1", &BTreeSet::new()).unwrap();
    assert_eq!(store.commit_counts(), (1, 0));
    let other = open(dir.path());
    let p = store.add_text("shared", b"2", &BTreeSet::new()).unwrap();
    assert_eq!(store.commit_counts(), (1, 1));
    // The other handle sees it, and adding it again there is a no-op.
    assert!(other.is_valid_path(&p).unwrap());
    assert_eq!(other.add_text("shared", b"2", &BTreeSet::new()).unwrap(), p);
    assert_eq!(other.commit_counts(), (0, 0));
    drop(other);
    store
        .add_text("alone-again", b"3", &BTreeSet::new())
        .unwrap();
    assert_eq!(store.commit_counts(), (2, 1));
}

/// Canonicalisation gives files written by another user (a builder's) to the store's owner.
/// Only root can create such files; otherwise the check is that our own stay ours.
#[test]
fn canonicalise_takes_ownership() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("out");
    fs::create_dir_all(tree.join("d")).unwrap();
    fs::write(tree.join("d/f"), b"x").unwrap();
    std::os::unix::fs::symlink("d/f", tree.join("l")).unwrap();
    let me = fs::metadata(dir.path()).unwrap().uid();
    if me == 0 {
        for p in ["d/f", "l", "d", ""] {
            std::os::unix::fs::lchown(tree.join(p), Some(1234), Some(1234)).unwrap();
        }
    }
    ferrix_store::canon::canonicalise(&tree).unwrap();
    for p in ["d/f", "l", "d", ""] {
        let m = fs::symlink_metadata(tree.join(p)).unwrap();
        assert_eq!(m.uid(), me, "{p}");
        assert_eq!(m.mtime(), 1, "{p}");
    }
}

/// Within a session, the roots the store takes (adding a path) and those asked for go to
/// the session's file, which goes when the session's last handle does; outside, and after
/// the session (even one that panicked), to the process's.
#[test]
fn a_sessions_roots_go_to_its_own_file_and_end_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let state = store.config().state_dir.clone();
    let file = |name: &str| state.join("temproots").join(name);
    let pid = std::process::id();
    let roots = ferrix_store::temproots::SessionRoots::new(&state, 7);
    let a = store.in_session(&roots, || {
        store
            .add_text("in-session", b"s", &BTreeSet::new())
            .unwrap()
    });
    let session_file = file(&format!("{pid}-7"));
    let text = fs::read_to_string(&session_file).unwrap();
    assert!(text.contains(&store.print(&a)), "{text:?}");
    // A panic inside leaves the thread outside the session again.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store.in_session(&roots, || panic!("inside"))
    }));
    assert!(caught.is_err());
    let b = store.add_text("outside", b"o", &BTreeSet::new()).unwrap();
    let process = fs::read_to_string(file(&pid.to_string())).unwrap();
    assert!(process.contains(&store.print(&b)), "{process:?}");
    assert!(!process.contains(&store.print(&a)), "{process:?}");
    assert!(!fs::read_to_string(&session_file)
        .unwrap()
        .contains(&store.print(&b)));
    drop(roots);
    assert!(!session_file.exists(), "the session's roots outlived it");
}

/// Roots taken outside a session while work holds them end with the last hold that was
/// alive while they were taken; the first generation (what came before any hold, and lasting
/// roots) stays; a hold begun later does not keep an older generation.
#[test]
fn process_roots_end_with_the_work_that_held_them() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let state = store.config().state_dir.clone();
    let rooted = |p: &ferrix_format::StorePath| {
        ferrix_store::temproots::read_all(&state)
            .unwrap()
            .contains(&store.print(p))
    };
    let add = |name: &str| {
        let p = store
            .add_text(name, name.as_bytes(), &BTreeSet::new())
            .unwrap();
        assert!(rooted(&p), "{name} was not rooted");
        p
    };
    let before = add("before-any-hold");
    let first = store.hold_temp_roots();
    let a = add("while-the-first-holds");
    let sandbox = store.fresh_entry("a-place").unwrap();
    store.add_lasting_temp_roots([&sandbox]).unwrap();
    // The generation is young: a second hold joins it.
    let second = store.hold_temp_roots();
    drop(first);
    assert!(
        rooted(&a),
        "released while another hold of its generation lives"
    );
    drop(second);
    assert!(!rooted(&a), "kept after every hold ended");
    assert!(
        rooted(&before) && rooted(&sandbox),
        "the first generation was released"
    );
    // An old generation gives way at the next hold; the later hold does not keep the
    // earlier generation, but the earlier hold keeps the later one.
    let early = store.hold_temp_roots();
    let b = add("early");
    std::thread::sleep(Duration::from_millis(1100));
    let late = store.hold_temp_roots();
    let c = add("late");
    drop(late);
    assert!(
        rooted(&b) && rooted(&c),
        "released while the early hold lives"
    );
    let late = store.hold_temp_roots();
    drop(early);
    assert!(!rooted(&b), "an older generation was kept by a later hold");
    assert!(
        rooted(&c),
        "released while a hold alive in its generation lives"
    );
    drop(late);
    assert!(!rooted(&c));
    // Releasing by hand keeps what a hold needs.
    let h = store.hold_temp_roots();
    let d = add("held");
    store.release_temp_roots();
    assert!(rooted(&d));
    drop(h);
    store.release_temp_roots();
    assert!(!rooted(&d) && rooted(&before));
}
