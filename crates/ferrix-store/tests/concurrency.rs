//! Several processes on one store at once. Workers (this test binary, re-executed to run the
//! test that spawns them, which sees [`WORKER_ENV`] and does the worker's job instead) add
//! overlapping sets of paths — the same contents, so the same store paths — through every way
//! in: text chains with references, batches of trees, an import stream. (a) With adders only,
//! every path must end up registered exactly once. (b) With a garbage collector deleting dead
//! paths in a loop meanwhile, every path an adder added must stay valid while it lives (its
//! temp roots protect it). Two focused cases besides: opening the store (recovery) while
//! another process adds, and two adds of the same trees in opposite orders.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ferrix_format::wire::write_u64;
use ferrix_format::{FileIngestionMethod, Hash, HashAlgo, StorePath};
use ferrix_store::db::Db;
use ferrix_store::export::import_paths;
use ferrix_store::gc::{collect_garbage, GcAction, GcOptions};
use ferrix_store::lock::PathLock;
use ferrix_store::verify::verify_store;
use ferrix_store::LocalStore;

/// Set (to the store root) in worker processes only.
const WORKER_ENV: &str = "FERRIX_CONC_WORKER";
const MODE_ENV: &str = "FERRIX_CONC_MODE";
const ID_ENV: &str = "FERRIX_CONC_ID";
/// Workers that are not done by then are taken to be deadlocked.
const DEADLINE: Duration = Duration::from_secs(30);

const CHAINS: usize = 4;
const CHAIN_LEN: usize = 12;
const TREES: usize = 16;
const TREE_BATCH: usize = 4;
const IMPORTS: usize = 10;

// ---- the shared universe of paths --------------------------------------------------------

/// One unit of work; each worker does all of them, in its own order.
#[derive(Debug, Clone)]
enum Task {
    /// Items `0..CHAIN_LEN` of a chain of text paths, each referring to earlier ones.
    Chain(usize),
    /// Trees added with one `add_paths` call, in this order.
    Trees(Vec<usize>),
    /// The import stream.
    Import,
}

/// Worker `id`'s tasks in its own order. With `same_batches`, every worker adds the same
/// batches of trees, each in the same order (so their path locks cannot form a cycle);
/// otherwise each worker batches the trees in its own order.
fn tasks(id: u64, same_batches: bool) -> Vec<Task> {
    let mut rng = Rng(id.wrapping_mul(7919) + 1);
    let mut tasks: Vec<Task> = (0..CHAINS)
        .map(|c| Task::Chain((c + id as usize) % CHAINS))
        .collect();
    let mut trees: Vec<usize> = (0..TREES).collect();
    if !same_batches {
        rng.shuffle(&mut trees);
    }
    tasks.extend(trees.chunks(TREE_BATCH).map(|c| Task::Trees(c.to_vec())));
    tasks.push(Task::Import);
    rng.shuffle(&mut tasks);
    tasks
}

fn chain_text(store: &LocalStore, c: usize, k: usize, refs: &BTreeSet<StorePath>) -> String {
    let mut text = format!("chain {c} item {k}\n");
    for r in refs {
        text.push_str(&store.print(r));
        text.push('\n');
    }
    text
}

/// The references of chain item `k`: the previous item and the one three back.
fn chain_refs(prev: &[StorePath], k: usize) -> BTreeSet<StorePath> {
    [k.checked_sub(1), k.checked_sub(3)]
        .into_iter()
        .flatten()
        .map(|i| prev[i].clone())
        .collect()
}

/// Tree `i`, written under `scratch` (identical in every worker).
fn make_tree(scratch: &Path, i: usize) -> (PathBuf, String) {
    let src = scratch.join(format!("tree-{i}"));
    let _ = fs::remove_dir_all(&src);
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a"), format!("tree {i} a\n")).unwrap();
    fs::write(src.join("sub/b"), format!("tree {i} b\n").repeat(i + 1)).unwrap();
    if i.is_multiple_of(2) {
        let exe = src.join("run");
        fs::write(&exe, format!("#!/bin/sh\necho {i}\n")).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    }
    if i.is_multiple_of(3) {
        std::os::unix::fs::symlink("a", src.join("l")).unwrap();
    }
    (src, format!("tree-{i}"))
}

/// An export stream of a chain of text paths, made by hand; the same bytes in every worker.
fn import_stream(store: &LocalStore) -> Vec<u8> {
    let mut stream = Vec::new();
    let mut prev: Vec<StorePath> = Vec::new();
    for k in 0..IMPORTS {
        let refs = chain_refs(&prev, k);
        let text = format!("imported {k}\n{:?}\n", refs);
        let name = format!("imp-{k}");
        let p = store
            .store_dir()
            .make_text_path(&name, &Hash::sha256(text.as_bytes()), &refs)
            .unwrap();
        push_export_text(&mut stream, store, &p, text.as_bytes(), &refs);
        prev.push(p);
    }
    write_u64(&mut stream, 0).unwrap();
    stream
}

/// Run one task; returns (label, path) for every path it added, each checked valid at once.
fn run_task(store: &LocalStore, scratch: &Path, task: &Task) -> Vec<(String, StorePath)> {
    let mut out = Vec::new();
    let mut check = |label: String, p: StorePath| {
        assert!(
            store.is_valid_path(&p).unwrap(),
            "{label} ({}) is not valid right after adding it",
            store.print(&p)
        );
        out.push((label, p));
    };
    match task {
        Task::Chain(c) => {
            let mut prev: Vec<StorePath> = Vec::new();
            for k in 0..CHAIN_LEN {
                let refs = chain_refs(&prev, k);
                let text = chain_text(store, *c, k, &refs);
                let p = store
                    .add_text(&format!("c{c}-{k}"), text.as_bytes(), &refs)
                    .unwrap();
                assert_eq!(store.references(&p).unwrap(), refs);
                check(format!("chain {c} item {k}"), p.clone());
                prev.push(p);
            }
        }
        Task::Trees(which) => {
            let srcs: Vec<(PathBuf, String)> =
                which.iter().map(|&i| make_tree(scratch, i)).collect();
            let paths = store
                .add_paths(&srcs, FileIngestionMethod::Recursive, HashAlgo::Sha256)
                .unwrap();
            for (i, p) in which.iter().zip(paths) {
                check(format!("tree {i}"), p);
            }
        }
        Task::Import => {
            let got = import_paths(store, &import_stream(store)[..]).unwrap();
            for (k, p) in got.into_iter().enumerate() {
                check(format!("import {k}"), p);
            }
        }
    }
    out
}

// ---- workers -----------------------------------------------------------------------------

/// The tests that spawn workers of each mode, by name: a worker is this binary re-executed to
/// run just that test (a name that matched no test would run nothing, and the test would
/// then fail for want of the worker's work).
fn test_of_mode(mode: &str) -> &'static str {
    match mode {
        "add" => "concurrent_adds_register_each_path_once",
        "add-gc" | "gc" => "gc_concurrent_with_adds_keeps_temp_roots",
        "add-many" => "opening_the_store_while_another_process_adds",
        "pair" => "adding_in_opposite_orders_does_not_deadlock",
        m => panic!("unknown worker mode {m}"),
    }
}

/// The workers' entry point, called first by each test: in a worker process (with
/// [`WORKER_ENV`] set), do the worker's job and return `true`, and the test returns at once;
/// otherwise `false`. Not a test of its own, which would pass without doing anything.
fn conc_worker() -> bool {
    let Some(root) = std::env::var_os(WORKER_ENV) else {
        return false;
    };
    let root = PathBuf::from(root);
    let mode = std::env::var(MODE_ENV).unwrap();
    let id: u64 = std::env::var(ID_ENV).unwrap().parse().unwrap();
    match mode.as_str() {
        "add" => adder(&root, id, false),
        "add-gc" => adder(&root, id, true),
        "gc" => collector(&root),
        "add-many" => add_many(&root),
        "pair" => add_pair(&root, id),
        m => panic!("unknown worker mode {m}"),
    }
    true
}

/// Do every task. Without `keep`, each task opens the store anew, as separate commands would
/// (so recoveries run while others add), and trees are batched in the worker's own order.
/// With `keep`, one store for the whole run, whose temp roots must keep everything added
/// alive until the end, which is checked; tree batches are the same in every worker, so
/// that this test is about collections, not lock order (see
/// `adding_in_opposite_orders_does_not_deadlock`).
fn adder(root: &Path, id: u64, keep: bool) {
    let scratch = root.join("scratch").join(id.to_string());
    fs::create_dir_all(&scratch).unwrap();
    let mut added: Vec<(String, StorePath)> = Vec::new();
    let kept = keep.then(|| open(root));
    for task in tasks(id, keep) {
        match &kept {
            Some(store) => added.extend(run_task(store, &scratch, &task)),
            None => added.extend(run_task(&open(root), &scratch, &task)),
        }
    }
    if let Some(store) = &kept {
        let paths: Vec<StorePath> = added.iter().map(|(_, p)| p.clone()).collect();
        for (label, p) in &added {
            assert!(
                store.is_valid_path(p).unwrap(),
                "{label} ({}) was deleted while its adder is alive",
                store.print(p)
            );
        }
        let problems = verify_store(store, true, Some(&paths)).unwrap();
        let described: Vec<String> = problems.iter().map(|p| p.describe(store)).collect();
        assert!(described.is_empty(), "{described:#?}");
    }
    let mut text = String::new();
    for (label, p) in &added {
        text.push_str(&format!("{label}\t{p}\n"));
    }
    let out = root.join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join(format!("{id}.tmp")), text).unwrap();
    fs::rename(out.join(format!("{id}.tmp")), out.join(id.to_string())).unwrap();
}

/// Collect garbage (deleting dead paths) back to back until `<root>/stop` appears, at least
/// once.
fn collector(root: &Path) {
    let store = open(root);
    let (mut runs, mut deleted) = (0u64, 0usize);
    loop {
        let r = collect_garbage(&store, &GcOptions::new(GcAction::DeleteDead)).unwrap();
        runs += 1;
        deleted += r.paths.len();
        if root.join("stop").exists() {
            break;
        }
    }
    let out = root.join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("gc"), format!("{runs} {deleted}\n")).unwrap();
}

/// Add many text paths one by one (each commit writes an intent file).
fn add_many(root: &Path) {
    let store = open(root);
    for k in 0..ADD_MANY {
        let p = store
            .add_text(
                &format!("many-{k}"),
                format!("{k}\n").as_bytes(),
                &BTreeSet::new(),
            )
            .unwrap();
        assert!(store.is_valid_path(&p).unwrap());
    }
}

/// Add trees `PAIR` with one `add_paths` call: in order for worker 0, reversed otherwise.
fn add_pair(root: &Path, id: u64) {
    let scratch = root.join("scratch").join(format!("pair-{id}"));
    fs::create_dir_all(&scratch).unwrap();
    let mut srcs: Vec<(PathBuf, String)> = PAIR.iter().map(|&i| make_tree(&scratch, i)).collect();
    if id != 0 {
        srcs.reverse();
    }
    let store = open(root);
    for p in store
        .add_paths(&srcs, FileIngestionMethod::Recursive, HashAlgo::Sha256)
        .unwrap()
    {
        assert!(store.is_valid_path(&p).unwrap());
    }
}

const ADD_MANY: usize = 300;
const PAIR: [usize; 2] = [100, 101];

// ---- the harness -------------------------------------------------------------------------

fn spawn(root: &Path, mode: &str, id: u64) -> Child {
    let logs = root.join("logs");
    fs::create_dir_all(&logs).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            test_of_mode(mode),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_ENV, root)
        .env(MODE_ENV, mode)
        .env(ID_ENV, id.to_string())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(logs.join(format!("{mode}-{id}"))).unwrap())
        .spawn()
        .unwrap()
}

/// Wait for every child until `deadline`; those still running then are killed (`None`).
fn wait_all(children: Vec<Child>, deadline: Instant) -> Vec<Option<ExitStatus>> {
    let mut children: Vec<(Child, Option<ExitStatus>)> =
        children.into_iter().map(|c| (c, None)).collect();
    loop {
        let mut running = false;
        for (c, st) in children.iter_mut().filter(|(_, st)| st.is_none()) {
            match c.try_wait().unwrap() {
                Some(s) => *st = Some(s),
                None => running = true,
            }
        }
        if !running {
            break;
        }
        if Instant::now() >= deadline {
            for (c, _) in children.iter_mut().filter(|(_, st)| st.is_none()) {
                c.kill().unwrap();
                c.wait().unwrap();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    children.into_iter().map(|(_, st)| st).collect()
}

/// Run a worker for each id, at most `parallel` at once, starting the next as one finishes.
fn run_pool(
    root: &Path,
    mode: &str,
    ids: &[u64],
    parallel: usize,
    deadline: Instant,
) -> Vec<Option<ExitStatus>> {
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; ids.len()];
    let mut running: Vec<(usize, Child)> = Vec::new();
    let mut next = 0;
    loop {
        while running.len() < parallel && next < ids.len() {
            running.push((next, spawn(root, mode, ids[next])));
            next += 1;
        }
        if running.is_empty() {
            return statuses;
        }
        if Instant::now() >= deadline {
            for (_, c) in &mut running {
                c.kill().unwrap();
                c.wait().unwrap();
            }
            return statuses;
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait().unwrap() {
                Some(st) => {
                    statuses[running[i].0] = Some(st);
                    running.swap_remove(i);
                }
                None => i += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fail naming each worker that failed or hung, with the end of its stderr.
fn assert_all_succeeded(root: &Path, names: &[String], statuses: &[Option<ExitStatus>]) {
    let mut failures = Vec::new();
    for (name, st) in names.iter().zip(statuses) {
        let ok = st.is_some_and(|s| s.success());
        if !ok {
            let log = fs::read_to_string(root.join("logs").join(name)).unwrap_or_default();
            // The panic message, or else the end of the log.
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let from = lines
                .iter()
                .position(|l| l.contains("panicked at"))
                .unwrap_or(lines.len().saturating_sub(12));
            let tail = lines[from..]
                .iter()
                .take(12)
                .copied()
                .collect::<Vec<_>>()
                .join("\n");
            let what = match st {
                Some(s) => format!("failed ({s})"),
                None => format!("did not finish within {}s (deadlock?)", DEADLINE.as_secs()),
            };
            failures.push(format!("worker {name} {what}:\n{tail}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The checks every finished store must pass: a sound database, every valid path intact with
/// closed references, nothing unregistered in the store directory, no staging or intent left.
fn check_store(store: &LocalStore) {
    let cfg = store.config();
    let db = Db::open(&cfg.db_dir(), &cfg.store_dir, None).unwrap();
    assert_eq!(db.integrity_check().unwrap(), "ok");
    drop(db);
    let problems: Vec<String> = verify_store(store, true, None)
        .unwrap()
        .iter()
        .map(|p| p.describe(store))
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let valid: BTreeSet<StorePath> = store.all_valid_paths().unwrap().into_iter().collect();
    let mut junk = Vec::new();
    for e in fs::read_dir(&cfg.real_store_dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".lock") {
            continue;
        }
        if !StorePath::from_base_name(&name).is_ok_and(|p| valid.contains(&p)) {
            junk.push(name);
        }
    }
    assert!(junk.is_empty(), "unregistered store entries: {junk:?}");
    let intents: Vec<_> = fs::read_dir(cfg.state_dir.join("ferrix/pending"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(intents.is_empty(), "intents left: {intents:?}");
}

/// Every worker's `label → path`; all workers must agree on each label's path.
fn read_outputs(root: &Path, ids: &[u64]) -> BTreeMap<String, StorePath> {
    let mut all: BTreeMap<String, StorePath> = BTreeMap::new();
    for id in ids {
        let text = fs::read_to_string(root.join("out").join(id.to_string())).unwrap();
        for line in text.lines() {
            let (label, p) = line.split_once('\t').unwrap();
            let p = StorePath::from_base_name(p).unwrap();
            if let Some(q) = all.insert(label.to_owned(), p.clone()) {
                assert_eq!(q, p, "workers disagree on the path of {label}");
            }
        }
    }
    all
}

const UNIVERSE: usize = CHAINS * CHAIN_LEN + TREES + IMPORTS;

#[test]
fn concurrent_adds_register_each_path_once() {
    if conc_worker() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    drop(open(&root));
    let ids: Vec<u64> = (0..4).collect();
    let children: Vec<Child> = ids.iter().map(|&id| spawn(&root, "add", id)).collect();
    let statuses = wait_all(children, Instant::now() + DEADLINE);
    let names: Vec<String> = ids.iter().map(|id| format!("add-{id}")).collect();
    assert_all_succeeded(&root, &names, &statuses);

    let all = read_outputs(&root, &ids);
    assert_eq!(all.len(), UNIVERSE, "every worker reports every item");
    let expected: BTreeSet<StorePath> = all.values().cloned().collect();
    assert_eq!(
        expected.len(),
        UNIVERSE,
        "distinct items have distinct paths"
    );
    let store = open(&root);
    let valid: BTreeSet<StorePath> = store.all_valid_paths().unwrap().into_iter().collect();
    assert_eq!(valid, expected);
    check_store(&store);
    let cfg = store.config().clone();
    drop(store);
    let conn = rusqlite::Connection::open(cfg.db_dir().join("db.sqlite")).unwrap();
    let seq: i64 = conn
        .query_row(
            "select seq from sqlite_sequence where name = 'ValidPaths'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        seq,
        expected.len() as i64,
        "each path is registered exactly once"
    );
    println!(
        "concurrent adds: {} workers, {} distinct paths, {:.1}s",
        ids.len(),
        expected.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
}

#[test]
fn gc_concurrent_with_adds_keeps_temp_roots() {
    if conc_worker() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    drop(open(&root));
    let gc = spawn(&root, "gc", 0);
    // Nine adders, three at a time: what those that have exited added is dead and collected
    // while later ones add the same paths again.
    let ids: Vec<u64> = (0..9).collect();
    let statuses = run_pool(&root, "add-gc", &ids, 3, Instant::now() + DEADLINE);
    fs::write(root.join("stop"), b"").unwrap();
    let gc_status = wait_all(vec![gc], Instant::now() + DEADLINE);
    let mut names: Vec<String> = ids.iter().map(|id| format!("add-gc-{id}")).collect();
    names.push("gc-0".into());
    let all_statuses: Vec<Option<ExitStatus>> = statuses.into_iter().chain(gc_status).collect();
    assert_all_succeeded(&root, &names, &all_statuses);

    let all = read_outputs(&root, &ids);
    assert_eq!(all.len(), UNIVERSE, "every worker reports every item");
    let gc_stats = fs::read_to_string(root.join("out/gc")).unwrap();
    let store = open(&root);
    check_store(&store);
    // With nobody alive and no roots, a last collection empties the store completely.
    collect_garbage(&store, &GcOptions::new(GcAction::DeleteDead)).unwrap();
    assert!(store.all_valid_paths().unwrap().is_empty());
    check_store(&store);
    let left: Vec<String> = fs::read_dir(&store.config().real_store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "left after a full collection: {left:?}");
    println!(
        "gc with adds: {} adders (3 at a time), collector runs and paths deleted: {}, {:.1}s",
        ids.len(),
        gc_stats.trim(),
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stdout().flush();
}

/// Opening the store (which recovers) while another process adds must not disturb it:
/// recovery must not take the intent file an adder is writing for a stale one.
#[test]
fn opening_the_store_while_another_process_adds() {
    if conc_worker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    drop(open(&root));
    let mut adder = spawn(&root, "add-many", 0);
    let deadline = Instant::now() + DEADLINE;
    let mut opens = 0u64;
    let status = loop {
        if let Some(st) = adder.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            adder.kill().unwrap();
            adder.wait().unwrap();
            break None;
        }
        drop(open(&root));
        opens += 1;
    };
    println!("opened the store {opens} times while {ADD_MANY} paths were added");
    let _ = std::io::stdout().flush();
    assert_all_succeeded(&root, &["add-many-0".to_owned()], &[status]);
    let store = open(&root);
    assert_eq!(store.all_valid_paths().unwrap().len(), ADD_MANY);
    check_store(&store);
}

/// Two processes adding the same two trees in opposite orders, made deterministic: this
/// process holds the lock of the second tree (as an `add_paths` of the reverse order would,
/// having locked it first) while a worker adds both; once the worker holds the first tree's
/// lock, this process adds the first tree. That must finish: if the worker keeps the first
/// lock while waiting for the second, the two wait for each other forever.
#[test]
fn adding_in_opposite_orders_does_not_deadlock() {
    if conc_worker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = std::sync::Arc::new(open(&root));
    let scratch = dir.path().join("pair");
    fs::create_dir_all(&scratch).unwrap();
    let trees: Vec<(PathBuf, String, StorePath)> = PAIR
        .iter()
        .map(|&i| {
            let (src, name) = make_tree(&scratch, i);
            let (hash, _) = ferrix_format::nar::hash_path(&src, HashAlgo::Sha256).unwrap();
            let ca = ferrix_format::ContentAddress::Fixed {
                method: FileIngestionMethod::Recursive,
                hash,
            };
            let p = store
                .store_dir()
                .make_ca_path(&name, &ca, [], false)
                .unwrap();
            (src, name, p)
        })
        .collect();
    let lock_file = |p: &StorePath| store.config().real_store_dir.join(format!("{p}.lock"));
    let (x_lock, y_lock) = (lock_file(&trees[0].2), lock_file(&trees[1].2));

    let held_y = PathLock::acquire(&y_lock, true).unwrap().unwrap();
    let mut worker = spawn(&root, "pair", 0);
    // Wait for the worker to lock the first tree (it then waits for the second). A worker
    // that keeps that lock while waiting is seen holding it. One that (rightly) commits the
    // first tree and lets its lock go before waiting holds it only while committing, which
    // polling can miss (it mostly does where fsync is free, e.g. on tmpfs); the first tree
    // then turns valid while this process holds the second tree's lock, which only the
    // worker's add under the first tree's lock can do (this process has the store open, so
    // the worker cannot write without path locks).
    let until = Instant::now() + Duration::from_secs(10);
    let (mut worker_holds_x, mut worker_added_x) = (false, false);
    while Instant::now() < until && worker.try_wait().unwrap().is_none() {
        if PathLock::acquire(&x_lock, false).unwrap().is_none() {
            worker_holds_x = true;
            break;
        }
        if store.is_valid_path(&trees[0].2).unwrap() {
            worker_added_x = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let worker_reached_x = worker_holds_x || worker_added_x;
    // Now add the first tree, as the reverse-order process would next.
    let (tx, rx) = std::sync::mpsc::channel();
    let adding = {
        let store = store.clone();
        let (src, name) = (trees[0].0.clone(), trees[0].1.clone());
        std::thread::spawn(move || {
            let r = store.add_path(
                &src,
                &name,
                FileIngestionMethod::Recursive,
                HashAlgo::Sha256,
            );
            let _ = tx.send(r.is_ok());
        })
    };
    let finished = rx.recv_timeout(Duration::from_secs(5));
    // Let everything unwind whatever happened.
    drop(held_y);
    adding.join().unwrap();
    let status = wait_all(vec![worker], Instant::now() + DEADLINE);
    assert_all_succeeded(&root, &["pair-0".to_owned()], &status);
    // Otherwise the case was not set up: this process added the first tree with no worker
    // in the way, and the check below proves nothing.
    assert!(
        worker_reached_x,
        "the worker neither locked nor added {} (in 10 s, or before it exited) while this \
         process held the lock of {}",
        store.print(&trees[0].2),
        store.print(&trees[1].2)
    );
    assert_eq!(
        finished,
        Ok(true),
        "adding {} blocked for 5 s while this process held the lock of {}: the worker's \
         add_paths held the first lock while waiting for the second (worker seen holding \
         it: {worker_holds_x}) — opposite orders deadlock",
        store.print(&trees[0].2),
        store.print(&trees[1].2)
    );
    for (_, _, p) in &trees {
        assert!(store.is_valid_path(p).unwrap());
    }
    check_store(&store);
}
