//! `exportReferencesGraph`: closures of some inputs handed to the builder, as a registration
//! file (plain attributes) or as path-info JSON (structured attributes).

use std::collections::BTreeSet;

use ferrix_format::{Encoding, StorePath};
use ferrix_store::{LocalStore, StoreError};
use serde_json::{json, Value};

/// The closure of `roots`, which must be inputs of the build, plus the closures of the
/// outputs of any derivation in it (so that a build can be handed everything a set of
/// derivations needs, as Nix does).
pub fn export_closure(
    store: &LocalStore,
    roots: &[StorePath],
    input_closure: &BTreeSet<StorePath>,
) -> Result<BTreeSet<StorePath>, String> {
    for r in roots {
        if !input_closure.contains(r) {
            return Err(format!(
                "cannot export references of path '{}' because it is not in the input closure of the derivation",
                store.print(r)
            ));
        }
    }
    let err = |e: StoreError| e.to_string();
    let mut paths = store
        .closure(roots.iter().cloned(), false, false)
        .map_err(err)?;
    let drvs: Vec<StorePath> = paths
        .iter()
        .filter(|p| p.is_derivation())
        .cloned()
        .collect();
    for d in drvs {
        let outs: Vec<StorePath> = store
            .derivation_outputs(&d)
            .map_err(err)?
            .into_values()
            .collect();
        let valid = store.valid_among(&outs).map_err(err)?;
        let outs: Vec<StorePath> = outs.into_iter().filter(|o| valid.contains(o)).collect();
        paths.extend(store.closure(outs, false, false).map_err(err)?);
    }
    Ok(paths)
}

/// The `nix-store --register-validity` form, without hashes or derivers: per path, its name,
/// an empty line, the number of references and the references.
pub fn registration(store: &LocalStore, paths: &BTreeSet<StorePath>) -> Result<String, String> {
    let mut s = String::new();
    for p in paths {
        let refs = store.references(p).map_err(|e| e.to_string())?;
        s += &format!("{}\n\n{}\n", store.print(p), refs.len());
        for r in &refs {
            s += &store.print(r);
            s.push('\n');
        }
    }
    Ok(s)
}

/// The path-info JSON Nix gives structured attributes: path, NAR hash (nix32), NAR size,
/// references, content address, closure size.
pub fn path_info_json(store: &LocalStore, paths: &BTreeSet<StorePath>) -> Result<Value, String> {
    let err = |e: StoreError| e.to_string();
    let mut list = Vec::new();
    for p in paths {
        let info = store.path_info(p).map_err(err)?;
        let closure = store.closure([p.clone()], false, false).map_err(err)?;
        let mut closure_size = 0u64;
        for c in &closure {
            closure_size += store.path_info(c).map_err(err)?.nar_size;
        }
        let mut o = json!({
            "path": store.print(p),
            "narHash": info.nar_hash.encode_typed(Encoding::Nix32),
            "narSize": info.nar_size,
            "references": info.references.iter().map(|r| store.print(r)).collect::<Vec<_>>(),
        });
        if let Some(ca) = &info.ca {
            o["ca"] = Value::String(ca.to_string());
        }
        o["closureSize"] = json!(closure_size);
        list.push(o);
    }
    Ok(Value::Array(list))
}
