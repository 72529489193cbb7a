//! What the local store knows: validity, path infos, references, closures, NARs of valid paths.

use super::*;

impl LocalStore {
    pub fn is_valid_path(&self, p: &StorePath) -> Result<bool> {
        self.reader()?.is_valid(p)
    }

    /// Which of `paths` are valid (one read transaction).
    pub fn valid_among<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<HashSet<StorePath>> {
        self.reader()?.valid_among(paths)
    }

    /// The valid path whose hash part is `hash_part`, if any.
    pub fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>> {
        if hash_part.len() != 32 || !hash_part.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(None);
        }
        self.reader()?.path_from_hash_part(hash_part)
    }

    pub fn query_path_info(&self, p: &StorePath) -> Result<Option<ValidPathInfo>> {
        self.reader()?.path_info(p)
    }

    /// Path info of a path that must be valid.
    pub fn path_info(&self, p: &StorePath) -> Result<ValidPathInfo> {
        self.query_path_info(p)?
            .ok_or_else(|| StoreError::NotValid(self.print(p)))
    }

    pub fn references(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.reader()?.references(p)
    }

    pub fn referrers(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.reader()?.referrers(p)
    }

    pub fn valid_derivers(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.reader()?.valid_derivers(p)
    }

    pub fn derivation_outputs(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>> {
        self.reader()?.derivation_outputs(drv)
    }

    pub fn all_valid_paths(&self) -> Result<Vec<StorePath>> {
        self.reader()?.all_valid()
    }

    /// The closure of `paths` under references; optionally with the outputs of derivations
    /// and the derivers of paths, as `nix-store -qR --include-outputs` does.
    pub fn closure(
        &self,
        paths: impl IntoIterator<Item = StorePath>,
        include_outputs: bool,
        include_derivers: bool,
    ) -> Result<BTreeSet<StorePath>> {
        let paths: Vec<StorePath> = paths.into_iter().collect();
        let db = self.reader()?;
        for p in &paths {
            if !db.is_valid(p)? {
                return Err(StoreError::NotValid(self.print(p)));
            }
        }
        if !include_outputs && !include_derivers {
            return Ok(db.closure_graph(&paths, true)?.into_keys().collect());
        }
        crate::closure::closure(paths, |p| {
            let info = db
                .path_info(p)?
                .ok_or_else(|| StoreError::NotValid(self.print(p)))?;
            let mut next: Vec<StorePath> = info.references.into_iter().collect();
            if include_outputs && p.is_derivation() {
                for o in db.derivation_outputs(p)?.into_values() {
                    if db.is_valid(&o)? {
                        next.push(o);
                    }
                }
            }
            if include_derivers {
                if let Some(d) = info.deriver {
                    if db.is_valid(&d)? {
                        next.push(d);
                    }
                }
            }
            Ok(next)
        })
    }

    /// The closure of `paths` as a graph: every member with its references, from one query.
    pub fn closure_graph(
        &self,
        paths: &[StorePath],
    ) -> Result<std::collections::HashMap<StorePath, Vec<StorePath>>> {
        let db = self.reader()?;
        for p in paths {
            if !db.is_valid(p)? {
                return Err(StoreError::NotValid(self.print(p)));
            }
        }
        db.closure_graph(paths, true)
    }

    /// The closure of `paths`, references first (what `nix-store -qR` prints), from one query.
    pub fn closure_sorted(&self, paths: &[StorePath]) -> Result<Vec<StorePath>> {
        let db = self.reader()?;
        for p in paths {
            if !db.is_valid(p)? {
                return Err(StoreError::NotValid(self.print(p)));
            }
        }
        let graph = db.closure_graph(paths, true)?;
        drop(db);
        let set: BTreeSet<StorePath> = graph.keys().cloned().collect();
        crate::closure::topo_sort(&self.config.store_dir, &set, |p| {
            Ok(graph.get(p).cloned().unwrap_or_default())
        })
    }

    /// Every path that (transitively) refers to one of `paths`.
    pub fn referrers_closure(
        &self,
        paths: impl IntoIterator<Item = StorePath>,
    ) -> Result<BTreeSet<StorePath>> {
        let db = self.reader()?;
        crate::closure::closure(paths, |p| Ok(db.referrers(p)?.into_iter().collect()))
    }

    /// `paths` ordered references-first.
    pub fn topo_sort(&self, paths: &BTreeSet<StorePath>) -> Result<Vec<StorePath>> {
        let list: Vec<StorePath> = paths.iter().cloned().collect();
        let graph = self.reader()?.closure_graph(&list, false)?;
        crate::closure::topo_sort(&self.config.store_dir, paths, |p| {
            Ok(graph.get(p).cloned().unwrap_or_default())
        })
    }

    /// Write the NAR of a valid path.
    /// Sign `p` with `keys` (its fingerprint: path, NAR hash and size, references); the
    /// signatures it did not have yet, which are recorded with the others.
    pub fn sign(
        &self,
        p: &StorePath,
        keys: &[ferrix_format::signature::SecretKey],
    ) -> Result<Vec<String>> {
        let mut db = self.db();
        let mut info = db
            .path_info(p)?
            .ok_or_else(|| StoreError::NotValid(self.print(p)))?;
        let fp = ferrix_format::signature::fingerprint(
            &self.config.store_dir,
            p,
            &info.nar_hash,
            info.nar_size,
            &info.references,
        );
        let mut added = Vec::new();
        for k in keys {
            let sig = k.sign(fp.as_bytes()).to_string();
            if info.sigs.insert(sig.clone()) {
                added.push(sig);
            }
        }
        if !added.is_empty() {
            db.set_sigs(p, &info.sigs)?;
        }
        Ok(added)
    }

    /// Record `sigs` as signatures of `p` besides those it has (a trusted client's, checked
    /// by nobody, as Nix records them).
    pub fn add_signatures(&self, p: &StorePath, sigs: &BTreeSet<String>) -> Result<()> {
        let mut db = self.db();
        let mut info = db
            .path_info(p)?
            .ok_or_else(|| StoreError::NotValid(self.print(p)))?;
        let before = info.sigs.len();
        info.sigs.extend(sigs.iter().cloned());
        if info.sigs.len() != before {
            db.set_sigs(p, &info.sigs)?;
        }
        Ok(())
    }

    pub fn nar_from_path(&self, p: &StorePath, out: impl Write) -> Result<()> {
        if !self.is_valid_path(p)? {
            return Err(StoreError::NotValid(self.print(p)));
        }
        let real = self.real_path(p);
        nar::dump_path(&real, out).map_err(|source| StoreError::Dump { path: real, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_run_beside_the_writer() {
        let root = tempfile::tempdir().unwrap();
        let cfg = crate::LocalStoreConfig::with_root(root.path(), StoreDir::default());
        let store = LocalStore::open(cfg).unwrap();
        let p = store.add_text("x", b"x", &BTreeSet::new()).unwrap();
        // The writer is held (as by a commit in progress): queries still answer.
        let writer = store.db();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (tx, store, p) = (tx.clone(), &store, &p);
                s.spawn(move || {
                    let valid = store.is_valid_path(p).unwrap();
                    let info = store.query_path_info(p).unwrap();
                    let closure = store.closure_sorted(std::slice::from_ref(p)).unwrap();
                    let _ = tx.send((valid, info.is_some(), closure.len()));
                });
            }
            for _ in 0..4 {
                let got = rx.recv_timeout(std::time::Duration::from_secs(10));
                if got.is_err() {
                    drop(writer);
                    panic!("a query waited for the writer");
                }
                assert_eq!(got.unwrap(), (true, true, 1));
            }
            drop(writer);
        });
        // What the writer commits, the next query sees.
        let q = store.add_text("y", b"y", &BTreeSet::new()).unwrap();
        assert!(store.is_valid_path(&q).unwrap());
    }
}
