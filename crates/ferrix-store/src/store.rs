//! The operations every store offers, so that copying, building and substituting can work
//! across backends (the local store today; binary caches, ssh and the daemon later).

use std::collections::BTreeSet;
use std::io::{Read, Write};

use ferrix_format::{StoreDir, StorePath};

use crate::error::{Result, StoreError};
use crate::local::LocalStore;
use crate::path_info::ValidPathInfo;

/// A store of paths. Synchronous: callers on an async runtime run these on blocking threads,
/// which is where SQLite and file system work belong anyway.
pub trait Store {
    fn store_dir(&self) -> &StoreDir;
    fn is_valid_path(&self, p: &StorePath) -> Result<bool>;
    fn query_path_info(&self, p: &StorePath) -> Result<Option<ValidPathInfo>>;
    /// Write the NAR of a valid path.
    fn nar_from_path(&self, p: &StorePath, out: &mut dyn Write) -> Result<()>;
    /// Add a path from its NAR; its references must already be valid here.
    fn add_to_store(&self, info: &ValidPathInfo, nar: &mut dyn Read) -> Result<()>;
}

impl Store for LocalStore {
    fn store_dir(&self) -> &StoreDir {
        LocalStore::store_dir(self)
    }
    fn is_valid_path(&self, p: &StorePath) -> Result<bool> {
        LocalStore::is_valid_path(self, p)
    }
    fn query_path_info(&self, p: &StorePath) -> Result<Option<ValidPathInfo>> {
        LocalStore::query_path_info(self, p)
    }
    fn nar_from_path(&self, p: &StorePath, out: &mut dyn Write) -> Result<()> {
        LocalStore::nar_from_path(self, p, out)
    }
    fn add_to_store(&self, info: &ValidPathInfo, nar: &mut dyn Read) -> Result<()> {
        self.add_nar(info, nar)
    }
}

/// Copy the closure of `paths` from one store to another, references first, skipping what the
/// destination has. Each NAR streams through a pipe between two threads, never held whole.
/// Returns the paths copied.
pub fn copy_closure(
    from: &(dyn Store + Sync),
    to: &dyn Store,
    paths: &BTreeSet<StorePath>,
) -> Result<Vec<StorePath>> {
    if from.store_dir() != to.store_dir() {
        return Err(StoreError::Format(format!(
            "cannot copy between stores with different store directories ('{}' and '{}')",
            from.store_dir(),
            to.store_dir()
        )));
    }
    let sd = from.store_dir().clone();
    let mut infos = std::collections::HashMap::new();
    let closure = crate::closure::closure(paths.iter().cloned(), |p| {
        let info = from
            .query_path_info(p)?
            .ok_or_else(|| StoreError::NotValid(sd.display(p)))?;
        let refs = info.references.iter().cloned().collect();
        infos.insert(p.clone(), info);
        Ok(refs)
    })?;
    let order = crate::closure::topo_sort(&sd, &closure, |p| {
        Ok(infos
            .get(p)
            .map(|i| i.references.iter().cloned().collect())
            .unwrap_or_default())
    })?;
    let mut copied = Vec::new();
    for p in order {
        if to.is_valid_path(&p)? {
            continue;
        }
        let info = &infos[&p];
        let (mut rd, mut wr) = std::io::pipe().map_err(|e| StoreError::Io {
            what: "creating a pipe",
            path: Default::default(),
            source: e,
        })?;
        let res = std::thread::scope(|s| {
            let sender = s.spawn(move || from.nar_from_path(&p, &mut wr));
            let added = to.add_to_store(info, &mut rd);
            drop(rd);
            let sent = sender
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            added.and(sent)
        });
        res?;
        copied.push(info.path.clone());
    }
    Ok(copied)
}
