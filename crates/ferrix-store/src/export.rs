//! `nix-store --export` / `--import`: NARs with their metadata, in Nix's stream format.
//!
//! Per path: `1`, the NAR, the magic `0x4558494e` ("NIXE"), the path, its references, its
//! deriver (or empty) and `0` (no signature); after the last path, `0`.

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};

use ferrix_format::wire::{write_bytes, write_u64};
use ferrix_format::StorePath;

use crate::error::{Result, StoreError};
use crate::local::{LocalStore, Pending};
use crate::path_info::ValidPathInfo;

const EXPORT_MAGIC: u64 = 0x4558_494e;

fn w(e: std::io::Error) -> StoreError {
    StoreError::BadExport(format!("writing: {e}"))
}

/// Write `paths` (which must be valid) references-first.
pub fn export_paths(
    store: &LocalStore,
    paths: &BTreeSet<StorePath>,
    mut out: impl Write,
) -> Result<()> {
    for p in store.topo_sort(paths)? {
        let info = store.path_info(&p)?;
        write_u64(&mut out, 1).map_err(w)?;
        store.nar_from_path(&p, &mut out)?;
        write_u64(&mut out, EXPORT_MAGIC).map_err(w)?;
        write_bytes(&mut out, store.print(&p).as_bytes()).map_err(w)?;
        write_u64(&mut out, info.references.len() as u64).map_err(w)?;
        for r in &info.references {
            write_bytes(&mut out, store.print(r).as_bytes()).map_err(w)?;
        }
        let deriver = info.deriver.map(|d| store.print(&d)).unwrap_or_default();
        write_bytes(&mut out, deriver.as_bytes()).map_err(w)?;
        write_u64(&mut out, 0).map_err(w)?;
    }
    write_u64(&mut out, 0).map_err(w)?;
    out.flush().map_err(w)
}

fn read_u64(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)
        .map_err(|e| StoreError::BadExport(format!("reading: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read, max: usize) -> Result<String> {
    let n = read_u64(r)?;
    if n > max as u64 {
        return Err(StoreError::BadExport(format!(
            "a string of {n} bytes is too long"
        )));
    }
    let mut v = vec![0u8; n as usize];
    r.read_exact(&mut v)
        .map_err(|e| StoreError::BadExport(format!("reading: {e}")))?;
    let pad = ferrix_format::wire::padding(n);
    let mut p = [0u8; 8];
    r.read_exact(&mut p[..pad])
        .map_err(|e| StoreError::BadExport(format!("reading: {e}")))?;
    if p[..pad].iter().any(|&b| b != 0) {
        return Err(StoreError::BadExport("non-zero padding".into()));
    }
    String::from_utf8(v).map_err(|_| StoreError::BadExport("a path is not UTF-8".into()))
}

/// Read an export stream into the store; returns the paths it held, in stream order. Paths
/// are committed in batches (references may point into the same batch).
pub fn import_paths(store: &LocalStore, input: impl Read) -> Result<Vec<StorePath>> {
    import_inner(store, input).map_err(|e| store.or_interrupted(e))
}

fn import_inner(store: &LocalStore, mut input: impl Read) -> Result<Vec<StorePath>> {
    let mut imported = Vec::new();
    let mut batch: Vec<Pending> = Vec::new();
    let mut batched: HashSet<StorePath> = HashSet::new();
    loop {
        match read_u64(&mut input)? {
            0 => break,
            1 => {}
            n => {
                return Err(StoreError::BadExport(format!(
                    "expected 0 or 1 before a path, got {n}"
                )))
            }
        }
        let what = format!("path #{} of the export stream", imported.len() + 1);
        let staged = store.stage(&mut input, &what, false)?;
        if read_u64(&mut input)? != EXPORT_MAGIC {
            return Err(StoreError::BadExport(
                "missing the export magic after a NAR".into(),
            ));
        }
        let p = store.parse_path(&read_string(&mut input, 4096)?)?;
        let n = read_u64(&mut input)?;
        if n > 1_000_000 {
            return Err(StoreError::BadExport(format!(
                "{n} references is not plausible"
            )));
        }
        let mut refs = BTreeSet::new();
        for _ in 0..n {
            refs.insert(store.parse_path(&read_string(&mut input, 4096)?)?);
        }
        let deriver = read_string(&mut input, 4096)?;
        let deriver = if deriver.is_empty() {
            None
        } else {
            Some(store.parse_path(&deriver)?)
        };
        if read_u64(&mut input)? == 1 {
            // A legacy signature; Nix ignores it too.
            read_string(&mut input, 65536)?;
        }
        imported.push(p.clone());
        if batched.insert(p.clone()) {
            let mut info = ValidPathInfo::new(p.clone(), staged.nar_hash, staged.nar_size);
            info.references = refs;
            info.deriver = deriver;
            batch.push(Pending { staged, info });
            if crate::local::batch_full(&batch) {
                store.commit_batch(std::mem::take(&mut batch))?;
                batched.clear();
            }
        }
    }
    store.commit_batch(batch)?;
    Ok(imported)
}
