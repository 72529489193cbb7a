//! Derivations checked on their way in and before building, over graphs with shared inputs:
//! the check hashes every input once, and only a real cycle is one.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use ferrix_format::{Derivation, DerivationOutput, StorePath};
use ferrix_store::LocalStore;

/// A derivation `name` whose builder mentions `tag`, with `inputs` (their `out`).
fn add(store: &LocalStore, name: &str, tag: &str, inputs: &[&StorePath]) -> StorePath {
    let drv = Derivation {
        outputs: BTreeMap::from([("out".to_owned(), DerivationOutput::Deferred)]),
        input_drvs: inputs
            .iter()
            .map(|p| ((*p).clone(), BTreeSet::from(["out".to_owned()])))
            .collect(),
        input_srcs: BTreeSet::new(),
        platform: "x86_64-linux".into(),
        builder: "/bin/sh".into(),
        args: vec!["-c".into(), format!("echo {tag} > $out")],
        env: BTreeMap::from([("out".to_owned(), String::new())]),
    };
    ferrix_store::drv::add_filled(store, drv, name).unwrap()
}

/// A diamond with a shortcut below a top: `x` needs `a`, `a` needs `b` and `c`, and `c`
/// needs `b` too. Built once with `b`'s path sorting before `c`'s and once after, since
/// inputs are walked in path order.
fn shortcut_diamonds(store: &LocalStore) -> Vec<(StorePath, [StorePath; 4])> {
    let mut found: Vec<(StorePath, [StorePath; 4])> = Vec::new();
    let mut orders = BTreeSet::new();
    for n in 0..64 {
        let b = add(store, "b", &n.to_string(), &[]);
        let c = add(store, "c", &n.to_string(), &[&b]);
        let a = add(store, "a", &n.to_string(), &[&b, &c]);
        let x = add(store, "x", &n.to_string(), &[&a]);
        if orders.insert(b < c) {
            found.push((x.clone(), [x, a, b, c]));
        }
        if orders.len() == 2 {
            return found;
        }
    }
    panic!("no two orders in 64 tries");
}

#[test]
fn shared_inputs_are_not_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let graphs = {
        let store = common::open(dir.path());
        shortcut_diamonds(&store)
    };
    // A fresh handle: nothing is remembered, every hash is computed by the check.
    let store = common::open(dir.path());
    for (x, _) in &graphs {
        let drv = ferrix_store::drv::read_derivation(&store, x).unwrap();
        store
            .check_derivation(x, &drv)
            .unwrap_or_else(|e| panic!("{}: {e}", store.print(x)));
    }
    // Imported together into another store: checked as one batch.
    let all: BTreeSet<StorePath> = graphs.iter().flat_map(|(_, g)| g.clone()).collect();
    let mut stream = Vec::new();
    ferrix_store::export::export_paths(&store, &all, &mut stream).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = common::open(other_dir.path());
    let imported = ferrix_store::export::import_paths(&other, &stream[..]).unwrap();
    assert_eq!(imported.into_iter().collect::<BTreeSet<_>>(), all);
}

/// The texts of `paths`, as `add_texts` takes them.
fn texts(store: &LocalStore, paths: &[StorePath]) -> Vec<(String, Vec<u8>, BTreeSet<StorePath>)> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read(store.real_path(p)).unwrap();
            let refs = ferrix_store::drv::read_derivation(store, p)
                .unwrap()
                .references();
            (p.name().to_owned(), text, refs)
        })
        .collect()
}

#[test]
fn a_batch_is_checked_whatever_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path());
    let (_, [x, a, b, c]) = shortcut_diamonds(&store).remove(0);
    // Dependants before their inputs: each input is read from the batch when needed.
    let other_dir = tempfile::tempdir().unwrap();
    let other = common::open(other_dir.path());
    let batch = texts(&store, &[x.clone(), a.clone(), c.clone(), b.clone()]);
    assert_eq!(
        other.add_texts(&batch).unwrap(),
        vec![x.clone(), a, c, b.clone()]
    );
    let drv = ferrix_store::drv::read_derivation(&other, &x).unwrap();
    other.check_derivation(&x, &drv).unwrap();

    // An output path that is not the one computed is refused, naming the derivation, and
    // nothing of the batch is registered.
    let third_dir = tempfile::tempdir().unwrap();
    let third = common::open(third_dir.path());
    let out = ferrix_store::drv::read_derivation(&store, &b)
        .unwrap()
        .outputs["out"]
        .path()
        .unwrap()
        .clone();
    let hash = out.to_string()[..32].to_owned();
    let mut batch = texts(&store, std::slice::from_ref(&b));
    let forged = String::from_utf8(batch[0].1.clone()).unwrap();
    assert!(forged.contains(&hash));
    batch[0].1 = forged.replace(&hash, &"0".repeat(32)).into_bytes();
    let err = third.add_texts(&batch).unwrap_err().to_string();
    assert!(err.contains("-b.drv"), "{err}");
    assert!(third.all_valid_paths().unwrap().is_empty());
}
