//! SIGKILL during builds. `nix-store -r -j4` builds a layered graph of derivations whose
//! builders take a few milliseconds each and is killed at a random moment; the builders run
//! in the sandbox, so they die with it. Then the store is opened again, which recovers, and
//! checked: the database is sound, every valid path is on disk with its recorded NAR hash,
//! references are closed, nothing unregistered is left (no builder lived on to write after
//! recovery), no intent record remains; then the same build completes.
//!
//! `FERRIX_BUILD_CRASH_ITERATIONS` sets the number of kills (default 40).

mod common;

use std::collections::BTreeSet;
use std::fs;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use ferrix_format::{StoreDir, StorePath};
use ferrix_store::{LocalStore, LocalStoreConfig};

fn config(root: &Path) -> LocalStoreConfig {
    LocalStoreConfig {
        store_dir: StoreDir::new(root.join("store").to_str().unwrap()).unwrap(),
        real_store_dir: root.join("store"),
        state_dir: root.join("state"),
        log_dir: root.join("log"),
        db_cache_kib: None,
    }
}

fn out_of(links: &Links, root: &Path, drv: &str) -> String {
    let mut c = links.cmd("nix-store");
    store_env(&mut c, root);
    String::from_utf8(ok(c.args(["-q", "--outputs", drv])))
        .unwrap()
        .trim()
        .to_owned()
}

/// 4 layers of 5; each node refers to two of the layer below. Returns all drv paths.
fn make_graph(links: &Links, root: &Path, round: u64, rng: &mut Rng) -> Vec<String> {
    let mut below: Vec<(String, String)> = Vec::new();
    let mut all = Vec::new();
    for layer in 0..4 {
        let mut this = Vec::new();
        for j in 0..5 {
            let name = format!("r{round}-l{layer}-{j}");
            let deps: Vec<&(String, String)> = if below.is_empty() {
                vec![]
            } else {
                vec![&below[j % below.len()], &below[(j + 2) % below.len()]]
            };
            let ms = rng.below(30);
            let script = format!(
                "/bin/sleep 0.0{ms:02}; /bin/mkdir $out; echo $deps > $out/deps; echo {round} > $out/round"
            );
            let input_drvs: Vec<String> = deps
                .iter()
                .map(|(d, _)| format!("\"{d}\": [\"out\"]"))
                .collect();
            let dep_outs: Vec<&str> = deps.iter().map(|(_, o)| o.as_str()).collect();
            let json = format!(
                r#"{{"name":"{name}","outputs":{{"out":{{}}}},"inputSrcs":[],"inputDrvs":{{{}}},
                   "system":"x86_64-linux","builder":"/bin/sh","args":["-c",{}],
                   "env":{{"name":"{name}","builder":"/bin/sh","system":"x86_64-linux","out":"","deps":"{}"}}}}"#,
                input_drvs.join(","),
                serde_json::to_string(&script).unwrap(),
                dep_outs.join(" ")
            );
            let drv = add_drv(root, &json);
            let out = out_of(links, root, &drv);
            all.push(drv.clone());
            this.push((drv, out));
        }
        below = this;
    }
    all
}

fn check(root: &Path, round: &str) {
    let store = LocalStore::open(config(root)).unwrap();
    let db = rusqlite_integrity(root);
    assert_eq!(db, "ok", "round {round}: integrity_check");
    let problems = ferrix_store::verify::verify_store(&store, true, None).unwrap();
    assert!(
        problems.is_empty(),
        "round {round}: {:?}",
        problems
            .iter()
            .map(|p| p.describe(&store))
            .collect::<Vec<_>>()
    );
    let valid: BTreeSet<StorePath> = store.all_valid_paths().unwrap().into_iter().collect();
    for p in &valid {
        for r in store.references(p).unwrap() {
            assert!(
                valid.contains(&r),
                "round {round}: {p} refers to invalid {r}"
            );
        }
    }
    for e in fs::read_dir(root.join("store")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".lock") {
            continue; // a killed process leaves its lock files, as Nix's do; they are stale
        }
        let p = StorePath::from_base_name(&name);
        assert!(
            p.is_ok_and(|p| valid.contains(&p)),
            "round {round}: unregistered '{name}' survived recovery"
        );
    }
    let pending: Vec<_> = fs::read_dir(root.join("state/ferrix/pending"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        pending.is_empty(),
        "round {round}: intents left: {pending:?}"
    );
}

fn rusqlite_integrity(root: &Path) -> String {
    let c = rusqlite::Connection::open(root.join("state/db/db.sqlite")).unwrap();
    c.query_row("pragma integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn sigkill_during_builds_leaves_a_consistent_store() {
    let iterations: u64 = std::env::var("FERRIX_BUILD_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in ["etc", "home", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    // The default sandbox, with what Debian's dynamically linked /bin/sh needs.
    fs::write(
        root.join("etc/nix.conf"),
        "sandbox = true\nsandbox-fallback = false\nsandbox-paths = /bin /usr /lib /lib64?\nsubstituters =\n",
    )
    .unwrap();
    let mut rng = Rng::new(7);
    let mut killed_mid_build = 0;
    for round in 0..iterations {
        let drvs = make_graph(&links, root, round, &mut rng);
        let mut c = links.cmd("nix-store");
        store_env(&mut c, root);
        let mut child = c
            .args(["-r", "-j4"])
            .args(&drvs)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(150_000)));
        let status = child.try_wait().unwrap();
        if let Some(st) = status {
            if !st.success() {
                let mut e = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut e).unwrap();
                panic!("round {round}: the build failed by itself: {st}: {e}");
            }
        }
        let finished = status.is_some();
        let _ = child.kill();
        let _ = child.wait();
        if !finished {
            killed_mid_build += 1;
        }
        // Give a builder that escaped (none should) the time to write something.
        std::thread::sleep(Duration::from_millis(50));
        check(root, &format!("{round}, after the kill"));
        // The same build now completes.
        let mut c = links.cmd("nix-store");
        store_env(&mut c, root);
        ok(c.arg("-r").args(&drvs));
        check(root, &format!("{round}, after the rebuild"));
    }
    assert!(
        killed_mid_build >= iterations / 2,
        "only {killed_mid_build} of {iterations} kills hit a running build"
    );
}
