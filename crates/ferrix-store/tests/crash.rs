//! Crash consistency. A worker process (this test binary, re-executed to run the test that
//! spawns it, which sees `WORKER_ENV` set and does the worker's job instead) adds and deletes
//! paths in a loop — text chains with references, trees (recursive and flat), batches,
//! imports, garbage collections of specific and dead paths — and is SIGKILLed at a random
//! moment.
//! After each kill the harness opens the store, which recovers, and checks it: the database
//! is sound, every valid path is on disk with its recorded NAR hash, references are closed,
//! and nothing unregistered is left in the store directory. A second test makes the
//! collector's kill point (after invalidation, before deletion) deterministic.
//!
//! `FERRIX_CRASH_ITERATIONS` sets the number of kills (default 300), `FERRIX_CRASH_SEED` the
//! seed of the timing and of the workers' choices.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ferrix_format::wire::write_u64;
use ferrix_format::{FileIngestionMethod, Hash, HashAlgo, StorePath};
use ferrix_store::db::Db;
use ferrix_store::export::{export_paths, import_paths};
use ferrix_store::fsutil::delete_path;
use ferrix_store::gc::{collect_garbage, GcAction, GcOptions};
use ferrix_store::verify::verify_store;
use ferrix_store::LocalStore;

/// Set (to the store root) in the worker process only.
const WORKER_ENV: &str = "FERRIX_CRASH_WORKER";
const SEED_ENV: &str = "FERRIX_CRASH_SEED";
const ITERATIONS_ENV: &str = "FERRIX_CRASH_ITERATIONS";
/// Makes the worker run one collection of everything dead and stop.
const GC_ONLY_ENV: &str = "FERRIX_CRASH_GC_ONLY";
/// The longest a worker runs before it is killed.
const MAX_KILL_DELAY_US: u64 = 40_000;
/// A worker that is somehow never killed stops by itself after this long.
const WORKER_LIFETIME: Duration = Duration::from_secs(20);

// ---- the worker ------------------------------------------------------------------------

/// The worker's entry point, called first by each test: in a worker process (with
/// [`WORKER_ENV`] set), do the worker's job and return `true`, and the test returns at once;
/// otherwise `false`. Not a test of its own, which would pass without doing anything.
fn crash_worker() -> bool {
    let Some(root) = std::env::var_os(WORKER_ENV) else {
        return false;
    };
    if std::env::var_os(GC_ONLY_ENV).is_some() {
        let store = open(Path::new(&root));
        collect_garbage(&store, &GcOptions::new(GcAction::DeleteDead)).unwrap();
        return true;
    }
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    worker(Path::new(&root), seed);
    true
}

/// The command that runs `test` alone in this test binary, as a worker.
fn worker_command(test: &str, root: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, root);
    cmd
}

/// Add and delete until killed. Every round opens the store afresh (and so recovers, and
/// starts without temp roots, which lets its collections delete what earlier rounds added).
fn worker(root: &Path, seed: u64) {
    let started = Instant::now();
    let mut rng = Rng(seed);
    let scratch = root.join("scratch").join(std::process::id().to_string());
    fs::create_dir_all(&scratch).unwrap();
    let phase_file = root.join("phase");
    let phase = |name: &str| fs::write(&phase_file, name).unwrap();
    while started.elapsed() < WORKER_LIFETIME {
        phase("open");
        let store = open(root);
        let valid = store.all_valid_paths().unwrap();
        match rng.below(100) {
            0..=29 => {
                phase("add_text");
                add_text_chain(&store, &mut rng, &valid);
            }
            30..=44 => {
                phase("add_path");
                for _ in 0..rng.range(1, 4) {
                    add_one_tree(&store, &mut rng, &scratch);
                }
            }
            45..=54 => {
                phase("add_paths");
                add_tree_batch(&store, &mut rng, &scratch);
            }
            55..=69 => {
                phase("import");
                import_stream(&store, &mut rng, &valid);
            }
            70..=84 => {
                phase("gc_specific");
                gc_specific(&store, &mut rng);
            }
            _ => {
                phase("gc_dead");
                gc_dead(&store, &mut rng, &valid);
            }
        }
    }
}

/// References for a new path: a few paths from `pool`.
fn some_refs(rng: &mut Rng, pool: &[StorePath]) -> BTreeSet<StorePath> {
    (0..rng.below(4))
        .filter_map(|_| rng.pick(pool).cloned())
        .collect()
}

/// Text whose store path depends on `id` (from a small space, so contents recur across
/// rounds, including ones whose paths were deleted meanwhile) and on the references.
fn text_for(store: &LocalStore, id: u64, refs: &BTreeSet<StorePath>) -> String {
    let mut text = format!("item {id}\n");
    for r in refs {
        text.push_str(&store.print(r));
        text.push('\n');
    }
    text
}

fn add_text_chain(store: &LocalStore, rng: &mut Rng, valid: &[StorePath]) {
    let mut pool: Vec<StorePath> = valid.to_vec();
    for _ in 0..rng.range(3, 15) {
        let refs = some_refs(rng, &pool);
        let id = rng.below(3000);
        let text = text_for(store, id, &refs);
        let p = store
            .add_text(&format!("t-{id}"), text.as_bytes(), &refs)
            .unwrap();
        pool.push(p);
    }
}

/// A small source tree (or, for flat ingestion, a single file) under `scratch`.
fn make_tree(rng: &mut Rng, scratch: &Path, flat: bool) -> (PathBuf, String) {
    let id = rng.below(2000);
    let src = scratch.join(format!("src-{}", rng.next()));
    if flat {
        fs::write(&src, format!("flat file {id}\n")).unwrap();
        return (src, format!("flat-{id}"));
    }
    fs::create_dir_all(src.join("sub")).unwrap();
    for f in 0..=id % 3 {
        fs::write(src.join(format!("f{f}")), format!("tree {id} file {f}\n")).unwrap();
    }
    fs::write(
        src.join("sub/deep"),
        format!("{id}\n").repeat(id as usize % 50 + 1),
    )
    .unwrap();
    if id.is_multiple_of(2) {
        let exe = src.join("run");
        fs::write(&exe, format!("#!/bin/sh\necho {id}\n")).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    }
    if id.is_multiple_of(3) {
        std::os::unix::fs::symlink("f0", src.join("link")).unwrap();
    }
    if id.is_multiple_of(20) {
        // Over 1 MiB of NAR: assembled in a staging entry and renamed, not written in place.
        let big = vec![(id % 251) as u8; 1_100_000 + id as usize * 7];
        fs::write(src.join("big"), big).unwrap();
    }
    (src, format!("tree-{id}"))
}

fn add_one_tree(store: &LocalStore, rng: &mut Rng, scratch: &Path) {
    let (method, algo, flat) = match rng.below(3) {
        0 => (FileIngestionMethod::Recursive, HashAlgo::Sha256, false),
        1 => (FileIngestionMethod::Recursive, HashAlgo::Sha1, false),
        _ => (FileIngestionMethod::Flat, HashAlgo::Sha256, true),
    };
    let (src, name) = make_tree(rng, scratch, flat);
    store.add_path(&src, &name, method, algo).unwrap();
    delete_path(&src).unwrap();
}

fn add_tree_batch(store: &LocalStore, rng: &mut Rng, scratch: &Path) {
    let srcs: Vec<(PathBuf, String)> = (0..rng.range(2, 8))
        .map(|_| make_tree(rng, scratch, false))
        .collect();
    store
        .add_paths(&srcs, FileIngestionMethod::Recursive, HashAlgo::Sha256)
        .unwrap();
    for (src, _) in &srcs {
        delete_path(src).unwrap();
    }
}

/// An export stream: sometimes the closure of an existing path (already valid, so skipped),
/// then new text paths referring to each other and to that closure.
fn import_stream(store: &LocalStore, rng: &mut Rng, valid: &[StorePath]) {
    let mut stream = Vec::new();
    let mut pool: Vec<StorePath> = Vec::new();
    if let Some(q) = rng.pick(valid).filter(|_| rng.chance(50)) {
        let closure = store.closure([q.clone()], false, false).unwrap();
        export_paths(store, &closure, &mut stream).unwrap();
        stream.truncate(stream.len() - 8); // the end marker
        pool.extend(closure);
    }
    for _ in 0..rng.range(2, 10) {
        let refs = some_refs(rng, &pool);
        let id = rng.below(3000);
        let text = text_for(store, id, &refs);
        let name = format!("imp-{id}");
        let p = store
            .store_dir()
            .make_text_path(&name, &Hash::sha256(text.as_bytes()), &refs)
            .unwrap();
        push_export_text(&mut stream, store, &p, text.as_bytes(), &refs);
        pool.push(p);
    }
    write_u64(&mut stream, 0).unwrap();
    import_paths(store, &stream[..]).unwrap();
}

/// Delete a few dead paths together with their referrers.
fn gc_specific(store: &LocalStore, rng: &mut Rng) {
    let dead = collect_garbage(store, &GcOptions::new(GcAction::ReturnDead))
        .unwrap()
        .paths;
    let picks: Vec<StorePath> = (0..rng.range(1, 5))
        .filter_map(|_| rng.pick(&dead).cloned())
        .collect();
    if picks.is_empty() {
        return;
    }
    let mut opts = GcOptions::new(GcAction::DeleteSpecific);
    opts.paths = store.referrers_closure(picks).unwrap();
    collect_garbage(store, &opts).unwrap();
}

/// Move a permanent root or two, then delete what is dead (sometimes only up to a limit).
fn gc_dead(store: &LocalStore, rng: &mut Rng, valid: &[StorePath]) {
    let roots = store.config().state_dir.join("gcroots");
    for _ in 0..rng.below(3) {
        let link = roots.join(format!("r{}", rng.below(4)));
        match rng.pick(valid) {
            Some(p) if rng.chance(80) => {
                let tmp = roots.join(format!(".tmp-{}", std::process::id()));
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(store.print(p), &tmp).unwrap();
                fs::rename(&tmp, &link).unwrap();
            }
            _ => {
                let _ = fs::remove_file(&link);
            }
        }
    }
    let mut opts = GcOptions::new(GcAction::DeleteDead);
    if rng.chance(30) {
        opts.max_freed = Some(rng.range(1, 4000));
    }
    collect_garbage(store, &opts).unwrap();
}

// ---- the harness -----------------------------------------------------------------------

#[test]
fn crash_harness() {
    if crash_worker() {
        return;
    }
    let iterations: u64 = std::env::var(ITERATIONS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c0_ffee);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let stderr_file = dir.path().join("worker.stderr");
    let mut rng = Rng(seed);
    drop(open(&root));

    let started = Instant::now();
    let mut kills = 0u64;
    let mut phases: BTreeMap<String, u64> = BTreeMap::new();
    // Each distinct violation once, with the iteration and phase of the kill that caused it.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut violations: Vec<String> = Vec::new();
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut max_valid = 0usize;
    // Kill points after which something was wrong, by phase.
    let mut bad_kills: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..iterations {
        let _ = fs::remove_file(root.join("phase"));
        let mut child = worker_command("crash_harness", &root)
            .env(SEED_ENV, rng.next().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_file).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(MAX_KILL_DELAY_US + 1)));
        let mut found: Vec<(&'static str, String)> = Vec::new();
        match child.try_wait().unwrap() {
            None => {
                child.kill().unwrap();
                kills += 1;
            }
            Some(status) => {
                let err = fs::read_to_string(&stderr_file).unwrap_or_default();
                let tail: String = err.lines().rev().take(15).collect::<Vec<_>>().join("\n");
                found.push((
                    "worker failed",
                    format!("worker exited by itself ({status}):\n{tail}"),
                ));
            }
        }
        child.wait().unwrap();
        let phase = fs::read_to_string(root.join("phase")).unwrap_or_default();
        let phase = if phase.is_empty() {
            "startup".to_owned()
        } else {
            phase
        };
        *phases.entry(phase.clone()).or_default() += 1;
        max_valid = max_valid.max(check(&root, &mut found));
        if !found.is_empty() {
            *bad_kills.entry(phase.clone()).or_default() += 1;
        }
        for (kind, v) in found {
            if seen.insert(v.clone()) {
                *kinds.entry(kind).or_default() += 1;
                violations.push(format!("iteration {i}, killed in {phase}: {v}"));
            }
        }
        let _ = delete_path(&root.join("scratch"));
    }
    let elapsed = started.elapsed();
    println!(
        "crash test: {iterations} iterations, {kills} kill points in {:.1}s; kills by phase: {phases:?}; \
         at most {max_valid} valid paths; {} violations {kinds:?} after {} kill points {bad_kills:?}",
        elapsed.as_secs_f64(),
        violations.len(),
        bad_kills.values().sum::<u64>()
    );
    for v in violations.iter().take(20) {
        println!("  {v}");
    }
    let _ = std::io::stdout().flush();
    assert!(
        violations.is_empty(),
        "{} consistency violations after {} of {kills} kill points, first: {}",
        violations.len(),
        bad_kills.values().sum::<u64>(),
        violations[0]
    );
}

/// Open (and so recover) the store with no worker alive and check it; returns the number of
/// valid paths. Unregistered entries are reported and then removed, so that each violation
/// is blamed on the kill that caused it.
fn check(root: &Path, found: &mut Vec<(&'static str, String)>) -> usize {
    let cfg = config(root);
    let store = match LocalStore::open(cfg.clone()) {
        Ok(s) => s,
        Err(e) => {
            found.push(("open failed", format!("opening the store failed: {e}")));
            return 0;
        }
    };
    let db = Db::open(&cfg.db_dir(), &cfg.store_dir, None).unwrap();
    let integrity = db.integrity_check().unwrap();
    if integrity != "ok" {
        found.push(("integrity", format!("integrity_check: {integrity}")));
    }
    drop(db);

    let valid: BTreeSet<StorePath> = store.all_valid_paths().unwrap().into_iter().collect();
    for p in &valid {
        if fs::symlink_metadata(store.real_path(p)).is_err() {
            found.push(("missing", format!("valid path {p} is not on disk")));
        }
        for r in store.references(p).unwrap() {
            if !valid.contains(&r) {
                found.push(("dangling", format!("valid path {p} refers to invalid {r}")));
            }
        }
    }
    for problem in verify_store(&store, true, None).unwrap() {
        found.push(("verify", problem.describe(&store)));
    }

    let real = &cfg.real_store_dir;
    for e in fs::read_dir(real).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".links" || name.ends_with(".lock") {
            continue;
        }
        let registered = StorePath::from_base_name(&name).is_ok_and(|p| valid.contains(&p));
        if !registered {
            let what = match fs::symlink_metadata(e.path()) {
                Ok(m) if m.is_dir() => "directory",
                Ok(_) => "file",
                Err(_) => "entry",
            };
            found.push((
                "unregistered",
                format!("unregistered {what} {name} in the store directory"),
            ));
            delete_path(&e.path()).unwrap();
        }
    }
    let pending = cfg.state_dir.join("ferrix/pending");
    for e in fs::read_dir(&pending).unwrap() {
        let e = e.unwrap();
        found.push((
            "intent left",
            format!("intent {:?} survived recovery", e.file_name()),
        ));
        let _ = fs::remove_file(e.path());
    }
    valid.len()
}

/// The collection kill point, made deterministic: many dead trees, and a kill as soon as the
/// collector's invalidation has committed (the database, polled, shows them gone) while it is
/// still deleting their files. Recovery must leave nothing unregistered behind.
#[test]
fn kill_between_invalidation_and_deletion() {
    if crash_worker() {
        return;
    }
    const TREES: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let cfg = config(&root);
    let srcs: Vec<(PathBuf, String)> = (0..TREES)
        .map(|i| {
            let src = dir.path().join(format!("src-{i}"));
            fs::create_dir_all(&src).unwrap();
            for f in 0..20 {
                fs::write(src.join(format!("f{f}")), format!("{i} {f}\n")).unwrap();
            }
            (src, format!("tree-{i}"))
        })
        .collect();
    let store = open(&root);
    store
        .add_paths(&srcs, FileIngestionMethod::Recursive, HashAlgo::Sha256)
        .unwrap();
    drop(store);

    let conn = rusqlite::Connection::open(cfg.db_dir().join("db.sqlite")).unwrap();
    let count = || -> i64 {
        conn.query_row("select count(*) from ValidPaths", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(), TREES as i64);
    let mut child = worker_command("kill_between_invalidation_and_deletion", &root)
        .env(GC_ONLY_ENV, "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() == TREES as i64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    let exited = child.try_wait().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        exited.is_none(),
        "the collector finished before it could be killed"
    );
    assert_eq!(count(), 0, "the collector invalidated every tree at once");
    drop(conn);

    let store = open(&root);
    assert!(store.all_valid_paths().unwrap().is_empty());
    let left: Vec<String> = fs::read_dir(&cfg.real_store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !n.ends_with(".lock"))
        .collect();
    println!(
        "kill between invalidation and deletion: {} of {TREES} unregistered trees left after recovery",
        left.len()
    );
    assert!(
        left.is_empty(),
        "{} unregistered trees left in the store after recovery, e.g. {}",
        left.len(),
        left[0]
    );
}
