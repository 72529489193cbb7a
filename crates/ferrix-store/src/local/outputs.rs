//! Outputs that builds write in place: path locks, intent records that recovery honours,
//! registration once they are checked, and fresh entry names for what is never registered.

use super::*;

impl LocalStore {
    /// Lock `p` with Nix's `<path>.lock` protocol, waiting for it when `wait` (`None` when
    /// not waiting and another process holds it). While held, this process never writes
    /// paths without locks.
    pub fn lock_path(&self, p: &StorePath, wait: bool) -> Result<Option<StoreLock>> {
        let gate = self.gate.read();
        Ok(
            PathLock::acquire(&self.lock_file(p), wait)?.map(|lock| StoreLock {
                _lock: lock,
                _gate: gate,
            }),
        )
    }

    /// Announce that `paths` (locked by the caller) are about to be written in place, by a
    /// builder for instance: leftovers at those names are removed, and an intent record makes
    /// sure that they are removed again should this process die before
    /// [`Self::register_outputs`]. Dropping the returned value without registering deletes them.
    ///
    /// `scratch` names store entries that are never registered, such as a sandbox's root:
    /// they are recorded the same way and always deleted when the intent ends, so that a
    /// process killed mid-build leaves none behind either.
    ///
    /// All builds of a process share one record, `<state>/ferrix/pending/<pid>-building`,
    /// rewritten as builds start and end: a file per build would cost an inode created and
    /// freed for each.
    pub fn begin_outputs(
        &self,
        paths: &[StorePath],
        scratch: &[StorePath],
    ) -> Result<OutputsIntent> {
        let all: Vec<StorePath> = paths.iter().chain(scratch).cloned().collect();
        self.building.add(&all)?;
        let pending = OutputsIntent {
            paths: all,
            real: paths.iter().map(|p| self.real_path(p)).collect(),
            scratch: scratch.iter().map(|p| self.real_path(p)).collect(),
            building: self.building.clone(),
            done: false,
        };
        for r in pending.real.iter().chain(&pending.scratch) {
            delete_path(r)?;
        }
        Ok(pending)
    }

    /// Register paths announced with [`Self::begin_outputs`], in one transaction. The caller
    /// has made them canonical ([`crate::canon::canonicalise`]) before hashing them; here they
    /// are synced to disk first.
    pub fn register_outputs(&self, pending: OutputsIntent, infos: &[ValidPathInfo]) -> Result<()> {
        self.register_outputs_batch(vec![(pending, infos.to_vec())])
    }

    /// [`Self::register_outputs`] for several builds at once: one sync, one transaction
    /// (a build's outputs may refer to those of another in the batch).
    pub fn register_outputs_batch(
        &self,
        batch: Vec<(OutputsIntent, Vec<ValidPathInfo>)>,
    ) -> Result<()> {
        let reals: Vec<PathBuf> = batch.iter().flat_map(|(p, _)| p.real.clone()).collect();
        crate::fsutil::sync_trees(&reals, &self.config.real_store_dir)?;
        let infos: Vec<ValidPathInfo> = batch.iter().flat_map(|(_, i)| i.clone()).collect();
        self.db().register(&infos, &BTreeMap::new())?;
        for (pending, _) in batch {
            pending.keep();
        }
        Ok(())
    }

    /// A store entry name no one else uses, `<random hash>-<name>`, for entries that are never
    /// registered (staging, sandbox places, outputs moved aside): a store path, so that Nix's
    /// collector (which deletes other names) leaves it to the temp root the caller adds.
    pub fn fresh_entry(&self, name: &str) -> Result<StorePath> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = format!("{}-{n}-{nanos}-{name}", std::process::id());
        let mut digest = [0u8; 20];
        digest.copy_from_slice(&Hash::sha256(seed.as_bytes()).digest()[..20]);
        StorePath::from_digest(&digest, name).map_err(|e| StoreError::Format(e.to_string()))
    }
}
/// A path lock taken through a store: see [`LocalStore::lock_path`].
#[derive(Debug)]
pub struct StoreLock {
    _lock: PathLock,
    _gate: GateReader,
}

/// Paths being written in place under an intent record: see [`LocalStore::begin_outputs`].
#[derive(Debug)]
pub struct OutputsIntent {
    /// Outputs and scratch entries, as recorded.
    paths: Vec<StorePath>,
    real: Vec<PathBuf>,
    scratch: Vec<PathBuf>,
    building: Arc<Building>,
    done: bool,
}

impl OutputsIntent {
    /// Give up: delete what was written at the outputs' places, then move entries back
    /// (from, to) — scratch entries of this intent that held what was there before (a
    /// repair moves damaged outputs aside).
    pub fn abandon(mut self, back: &[(PathBuf, PathBuf)]) {
        for r in &self.real {
            let _ = delete_path(r);
        }
        for (from, to) in back {
            let _ = fs::rename(from, to);
        }
        self.done = true;
    }

    /// The paths are registered: they stay.
    fn keep(mut self) {
        self.done = true;
    }
}

impl Drop for OutputsIntent {
    fn drop(&mut self) {
        if !self.done {
            for r in &self.real {
                let _ = delete_path(r);
            }
        }
        for r in &self.scratch {
            let _ = delete_path(r);
        }
        self.building.remove(&self.paths);
    }
}
