//! Staging new contents (hashed while they are read) and committing batches of them: placed,
//! synced, then registered in one transaction.

use super::*;

impl LocalStore {
    /// A fresh staging entry: a temp root first (so no collector takes it), then a note in
    /// this process's staging record (so recovery removes it should the process die).
    fn new_tmp_path(&self) -> Result<PathBuf> {
        let sp = self.fresh_entry(STAGING_NAME)?;
        self.add_temp_root(&sp)?;
        let record = self.staging_record();
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&record)
            .and_then(|mut f| f.write_all(format!("{sp}\0").as_bytes()))
            .map_err(io_err("writing", &record))?;
        Ok(self.real_path(&sp))
    }

    /// `<state>/ferrix/pending/<pid>-staging`: the staging entries this process made.
    pub(super) fn staging_record(&self) -> PathBuf {
        self.config
            .state_dir
            .join("ferrix/pending")
            .join(format!("{}-staging", std::process::id()))
    }

    /// Read and check a NAR stream, hashing it. With `exact`, the stream must end with the
    /// archive; otherwise reading stops at its end. Small archives are kept in memory; one
    /// that outgrows [`MEM_NAR`] is restored into a staging entry, starting over from the
    /// bytes already read.
    pub(crate) fn stage(&self, nar_stream: impl Read, what: &str, exact: bool) -> Result<Staged> {
        self.stage_inner(nar_stream, what, exact, true, None)
            .map_err(|e| self.or_interrupted(e))
    }

    /// [`Self::stage`] of a NAR said to be `size` bytes long: one too large to keep in
    /// memory goes straight into a staging entry, without a first try in memory.
    pub(crate) fn stage_sized(
        &self,
        nar_stream: impl Read,
        what: &str,
        exact: bool,
        size: u64,
    ) -> Result<Staged> {
        self.stage_inner(nar_stream, what, exact, true, Some(size))
            .map_err(|e| self.or_interrupted(e))
    }

    /// [`Self::stage`] of a NAR its producer hashes (on its own thread): the hash and size
    /// of the result are left for the caller to fill in.
    pub(crate) fn stage_unhashed(
        &self,
        nar_stream: impl Read,
        what: &str,
        exact: bool,
    ) -> Result<Staged> {
        self.stage_inner(nar_stream, what, exact, false, None)
            .map_err(|e| self.or_interrupted(e))
    }

    fn stage_inner(
        &self,
        nar_stream: impl Read,
        what: &str,
        exact: bool,
        hash: bool,
        size: Option<u64>,
    ) -> Result<Staged> {
        let mut reader = HashingReader {
            inner: Interruptible {
                inner: nar_stream,
                flag: self.interrupt.get().map(|f| &**f),
            },
            sink: hash.then(|| HashSink::new(HashAlgo::Sha256)),
        };
        let nar_err = |source| StoreError::Nar {
            path: what.to_owned(),
            source,
        };
        let mut mem = MemReader {
            inner: &mut reader,
            buf: Vec::new(),
            overflowed: false,
        };
        let checked = match size {
            // Known to be too large: read into the tree at once.
            Some(n) if n > MEM_NAR as u64 => None,
            _ if exact => Some(nar::parse_exact(&mut mem, &mut nar::Discard)),
            _ => Some(nar::parse(&mut mem, &mut nar::Discard)),
        };
        let contents = match checked {
            Some(Ok(_)) => Contents::Nar(mem.buf),
            Some(Err(e)) if !mem.overflowed => return Err(nar_err(e)),
            // Too large for memory, known before or found on the way.
            _ => {
                let tree = self.new_tmp_path()?;
                // Owns the tree from here on: an error below drops it, deleting the tree.
                let mut staged = Staged {
                    contents: Contents::Tree(tree.clone()),
                    nar_hash: Hash::zero(HashAlgo::Sha256),
                    nar_size: 0,
                };
                let input = io::Cursor::new(std::mem::take(&mut mem.buf)).chain(&mut reader);
                let restored = if exact {
                    nar::restore(input, &tree)
                } else {
                    nar::restore_prefix(input, &tree)
                };
                restored.map_err(|e| match e {
                    nar::RestoreError::Nar { source, .. } => nar_err(source),
                })?;
                (staged.nar_hash, staged.nar_size) = reader.finish();
                return Ok(staged);
            }
        };
        let (nar_hash, nar_size) = reader.finish();
        Ok(Staged {
            contents,
            nar_hash,
            nar_size,
        })
    }

    /// Stage a NAR this process just produced (known to be well-formed), kept in memory.
    pub(super) fn stage_own_nar(&self, nar_bytes: Vec<u8>) -> Staged {
        Staged {
            nar_hash: Hash::sha256(&nar_bytes),
            nar_size: nar_bytes.len() as u64,
            contents: Contents::Nar(nar_bytes),
        }
    }

    /// Put one staged path at its place: written there from memory, or renamed from staging.
    pub(super) fn place(&self, b: &Pending) -> Result<()> {
        let dest = self.real_path(&b.info.path);
        match &b.staged.contents {
            Contents::Nar(bytes) => {
                crate::place::place_nar(bytes, &dest)?;
                if self.inherits_acl {
                    canonicalise(&dest)?;
                }
            }
            Contents::Tree(tree) => {
                // Left by a process that died before registering it.
                delete_path(&dest)?;
                fs::rename(tree, &dest).map_err(io_err("moving into place", &dest))?;
            }
        }
        Ok(())
    }

    /// Put staged paths in place and register them, all in one go: canonicalise staged trees,
    /// record the intent, write or rename each into place, sync the file system once,
    /// register all in one transaction, drop the intent. A crash at any point leaves nothing
    /// that recovery does not remove, and nothing is registered before it is on disk.
    ///
    /// First the paths that are valid already are dropped, and the rest locked. A path that
    /// another process holds is waited for only after everything before it is committed and
    /// its locks released, so two processes adding overlapping sets never wait on each other;
    /// order is kept, so references still come before their referrers.
    pub(crate) fn commit_batch(&self, batch: Vec<Pending>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.check_interrupt()?;
        // Temp roots first: a path found valid stays so while this process lives.
        self.add_temp_roots(batch.iter().map(|b| &b.info.path))?;
        if let Some(_sole) = self.gate.try_write() {
            if self
                .big_lock
                .try_upgrade()
                .map_err(io_err("locking", self.config.db_dir().join("big-lock")))?
            {
                // No other process has the store open (each holds the big lock shared, Nix's
                // processes included) and no thread of ours holds a path lock: nobody can be
                // adding these paths, so their lock files (a create, an unlink and a dying
                // inode each) are not needed. Other processes opening the store wait at most
                // this one batch.
                let res = (|| {
                    let valid = self.db().valid_among(batch.iter().map(|b| &b.info.path))?;
                    let batch: Vec<Pending> = batch
                        .into_iter()
                        .filter(|b| !valid.contains(&b.info.path))
                        .collect();
                    self.place_and_register(batch)
                })();
                self.sole_batches.fetch_add(1, Ordering::Relaxed);
                let down = self.big_lock.downgrade();
                res?;
                return down.map_err(io_err("locking", self.config.db_dir().join("big-lock")));
            }
        }
        let _reader = self.gate.read();
        self.locked_batches.fetch_add(1, Ordering::Relaxed);
        let valid = self.db().valid_among(batch.iter().map(|b| &b.info.path))?;
        let mut group: Vec<(Pending, PathLock)> = Vec::new();
        for b in batch {
            if valid.contains(&b.info.path) {
                continue;
            }
            let lock_file = self.lock_file(&b.info.path);
            let lock = match PathLock::acquire(&lock_file, false)? {
                Some(l) => l,
                None => {
                    self.commit_locked(std::mem::take(&mut group))?;
                    PathLock::acquire(&lock_file, true)?
                        .ok_or_else(|| StoreError::Format("lock unavailable".into()))?
                }
            };
            group.push((b, lock));
        }
        self.commit_locked(group)
    }

    /// Place and register locked paths, skipping any another process made valid before we
    /// got its lock.
    fn commit_locked(&self, group: Vec<(Pending, PathLock)>) -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        let valid = self
            .db()
            .valid_among(group.iter().map(|(b, _)| &b.info.path))?;
        let (batch, _locks): (Vec<Pending>, Vec<PathLock>) = group
            .into_iter()
            .filter(|(b, _)| !valid.contains(&b.info.path))
            .unzip();
        self.place_and_register(batch)
    }

    /// The common end of both ways to commit: the paths are the caller's to write.
    fn place_and_register(&self, batch: Vec<Pending>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let in_batch: HashSet<&StorePath> = batch.iter().map(|b| &b.info.path).collect();
        let outside: BTreeSet<&StorePath> = batch
            .iter()
            .flat_map(|b| &b.info.references)
            .filter(|r| !in_batch.contains(r))
            .collect();
        let valid_refs = self.db().valid_among(outside.iter().copied())?;
        for b in &batch {
            if let Some(r) = b
                .info
                .references
                .iter()
                .find(|r| !in_batch.contains(r) && !valid_refs.contains(*r))
            {
                return Err(StoreError::ReferenceNotValid {
                    path: self.print(&b.info.path),
                    reference: self.print(r),
                });
            }
        }
        let outs = self.check_new_derivations(
            batch
                .iter()
                .filter(|b| b.info.path.is_derivation())
                .map(|b| (&b.info.path, b.staged.file_contents())),
        )?;
        for b in &batch {
            if let Contents::Tree(t) = &b.staged.contents {
                canonicalise(t)?;
            }
        }
        let paths: Vec<StorePath> = batch.iter().map(|b| b.info.path.clone()).collect();
        let intent = self.write_intent(&paths)?;
        let moved = (|| -> Result<()> {
            for b in &batch {
                self.place(b)?;
            }
            sync_fs(&self.config.real_store_dir)?;
            let infos: Vec<ValidPathInfo> = batch.iter().map(|b| b.info.clone()).collect();
            self.db().register(&infos, &outs)
        })();
        if let Err(e) = moved {
            // Never leave an unregistered path behind.
            for b in &batch {
                let _ = delete_path(&self.real_path(&b.info.path));
            }
            let _ = fs::remove_file(&intent);
            return Err(e);
        }
        let _ = fs::remove_file(&intent);
        Ok(())
    }
}
