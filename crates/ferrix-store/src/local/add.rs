//! Adding paths from outside: file system trees, text, derivations, NARs with their
//! metadata, and paths already in place (`--load-db`).

use super::*;

/// The chunks a tree's NAR is handed over in, and how many may wait.
const TREE_CHUNK: usize = 1 << 20;
const TREE_CHUNKS_AHEAD: usize = 4;

/// Hashes what it writes (the NAR's SHA-256, and another hash when the content address
/// needs one).
struct HashingWriter<W> {
    inner: W,
    sink: HashSink,
    extra: Option<Hasher>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sink.write_all(&buf[..n])?;
        if let Some(h) = self.extra.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl LocalStore {
    /// Add a file system tree (`nix-store --add`, `--add-fixed`): recursive ingestion hashes the
    /// NAR with `algo`; flat ingestion hashes the bytes of a regular file.
    pub fn add_path(
        &self,
        src: &Path,
        name: &str,
        method: FileIngestionMethod,
        algo: HashAlgo,
    ) -> Result<StorePath> {
        let mut v = self.add_paths(&[(src.to_owned(), name.to_owned())], method, algo)?;
        Ok(v.remove(0))
    }

    /// Add many trees, committed in batches: one file system sync and one database
    /// transaction per batch rather than per path. Returns the paths in argument order.
    pub fn add_paths(
        &self,
        srcs: &[(PathBuf, String)],
        method: FileIngestionMethod,
        algo: HashAlgo,
    ) -> Result<Vec<StorePath>> {
        let mut out = Vec::with_capacity(srcs.len());
        let mut batch: Vec<Pending> = Vec::new();
        let mut batched: HashSet<StorePath> = HashSet::new();
        for (src, name) in srcs {
            self.check_interrupt()?;
            let (staged, ca) = self
                .stage_tree(src, name, method, algo)
                .map_err(|e| self.or_interrupted(e))?;
            let p = self
                .config
                .store_dir
                .make_ca_path(name, &ca, [], false)
                .map_err(|source| StoreError::BadName {
                    path: name.to_owned(),
                    source,
                })?;
            out.push(p.clone());
            if !batched.insert(p.clone()) {
                continue;
            }
            let mut info = ValidPathInfo::new(p.clone(), staged.nar_hash, staged.nar_size);
            info.ca = Some(ca);
            info.ultimate = true;
            batch.push(Pending { staged, info });
            if batch_full(&batch) {
                self.commit_batch(std::mem::take(&mut batch))?;
                batched.clear();
            }
        }
        self.commit_batch(batch)?;
        Ok(out)
    }

    /// Copy a tree into a temporary directory, computing its NAR hash and content address in
    /// the same pass.
    fn stage_tree(
        &self,
        src: &Path,
        name: &str,
        method: FileIngestionMethod,
        algo: HashAlgo,
    ) -> Result<(Staged, ContentAddress)> {
        ferrix_format::store_path::validate_name(name).map_err(|source| StoreError::BadName {
            path: name.to_owned(),
            source,
        })?;
        let meta = fs::symlink_metadata(src).map_err(io_err("reading", src))?;
        if method == FileIngestionMethod::Flat && !meta.is_file() {
            return Err(StoreError::NotRegularFile {
                path: src.to_owned(),
            });
        }
        let mut ca_hasher = (method == FileIngestionMethod::Recursive && algo != HashAlgo::Sha256)
            .then(|| Hasher::new(algo));
        let what = format!("'{}'", src.display());
        let dump_err = |source| StoreError::Dump {
            path: src.to_owned(),
            source,
        };
        let staged = if !meta.is_dir() && meta.len() < MEM_NAR as u64 {
            // Small files: the NAR in memory, no thread.
            let mut buf = Vec::with_capacity(meta.len() as usize + 200);
            nar::dump_path(src, &mut buf).map_err(dump_err)?;
            if let Some(h) = ca_hasher.as_mut() {
                h.update(&buf);
            }
            self.stage_own_nar(buf)
        } else {
            // One pass: the tree is dumped and hashed on one thread, its NAR handed over in
            // large chunks (not through a pipe, which copied every byte twice more through the
            // kernel) and restored on this one, so reading and writing use a core each.
            let (tx, rx) = crate::chunks::channel(TREE_CHUNK, TREE_CHUNKS_AHEAD);
            let src_owned = src.to_owned();
            let extra = ca_hasher.take();
            let dumper = std::thread::spawn(move || {
                let mut w = HashingWriter {
                    inner: tx,
                    sink: HashSink::new(HashAlgo::Sha256),
                    extra,
                };
                let dumped = nar::dump_path(&src_owned, &mut w)
                    .and_then(|()| w.inner.flush().map_err(nar::DumpError::Write));
                // Closes the stream: the restoring side sees its end.
                drop(w.inner);
                (dumped, w.sink.finish(), w.extra)
            });
            let staged = self.stage_unhashed(rx, &what, true);
            let (dumped, (nar_hash, nar_size), extra) = dumper
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            ca_hasher = extra;
            match (dumped, staged) {
                // The reading side stopped first (a bad name, a full disk): its error is the
                // cause, the dumper's broken pipe only a consequence.
                (Err(nar::DumpError::Write(e)), Err(staged))
                    if e.kind() == io::ErrorKind::BrokenPipe =>
                {
                    return Err(staged)
                }
                (Err(dumped), _) => return Err(dump_err(dumped)),
                (Ok(()), staged) => {
                    let mut staged = staged?;
                    staged.nar_hash = nar_hash;
                    staged.nar_size = nar_size;
                    staged
                }
            }
        };
        let hash = match method {
            FileIngestionMethod::Flat => match &staged.contents {
                Contents::Nar(b) => Hash::of(
                    algo,
                    &crate::place::nar_file_contents(b).ok_or_else(|| {
                        StoreError::NotRegularFile {
                            path: src.to_owned(),
                        }
                    })?,
                ),
                Contents::Tree(t) => {
                    ferrix_format::hash::hash_file(t, algo).map_err(io_err("hashing", t))?
                }
            },
            FileIngestionMethod::Recursive => match ca_hasher {
                Some(h) => h.finish(),
                None => staged.nar_hash,
            },
        };
        Ok((staged, ContentAddress::Fixed { method, hash }))
    }

    /// Add a text file with references (`builtins.toFile`, `.drv` files).
    pub fn add_text(
        &self,
        name: &str,
        text: &[u8],
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath> {
        let (p, hash) = self.text_path(name, text, refs)?;
        self.add_temp_root(&p)?;
        if self.is_valid_path(&p)? {
            return Ok(p);
        }
        self.commit_batch(vec![self.stage_text(&p, hash, text, refs)])?;
        Ok(p)
    }

    /// Add many text files (derivations an evaluation wrote, `toFile`s) in as few commits
    /// as they fit in: one file system sync and one transaction per batch rather than per
    /// file. Each one's references must be valid or come before it. Returns the paths in
    /// argument order.
    pub fn add_texts(
        &self,
        items: &[(String, Vec<u8>, BTreeSet<StorePath>)],
    ) -> Result<Vec<StorePath>> {
        let mut out = Vec::with_capacity(items.len());
        let mut batch: Vec<Pending> = Vec::new();
        let mut batched: HashSet<StorePath> = HashSet::new();
        for (name, text, refs) in items {
            let (p, hash) = self.text_path(name, text, refs)?;
            out.push(p.clone());
            if !batched.insert(p.clone()) {
                continue;
            }
            batch.push(self.stage_text(&p, hash, text, refs));
            if batch_full(&batch) {
                self.commit_batch(std::mem::take(&mut batch))?;
            }
        }
        self.commit_batch(batch)?;
        Ok(out)
    }

    /// Where a text file goes, and the hash of its contents.
    fn text_path(
        &self,
        name: &str,
        text: &[u8],
        refs: &BTreeSet<StorePath>,
    ) -> Result<(StorePath, Hash)> {
        let hash = Hash::sha256(text);
        let p = self
            .config
            .store_dir
            .make_text_path(name, &hash, refs)
            .map_err(|source| StoreError::BadName {
                path: name.to_owned(),
                source,
            })?;
        Ok((p, hash))
    }

    /// A text file at `p`, staged to be committed.
    fn stage_text(
        &self,
        p: &StorePath,
        hash: Hash,
        text: &[u8],
        refs: &BTreeSet<StorePath>,
    ) -> Pending {
        let mut nar_bytes = Vec::with_capacity(text.len() + 128);
        write_file_nar(&mut nar_bytes, text);
        let staged = self.stage_own_nar(nar_bytes);
        let mut info = ValidPathInfo::new(p.clone(), staged.nar_hash, staged.nar_size);
        info.references = refs.clone();
        info.ca = Some(ContentAddress::Text(hash));
        info.ultimate = true;
        Pending { staged, info }
    }

    /// Write a derivation to the store as `<name>.drv`, recording its outputs.
    pub fn add_derivation(&self, drv: &Derivation, name: &str) -> Result<StorePath> {
        let text = drv.to_aterm(&self.config.store_dir);
        self.add_text(&format!("{name}.drv"), text.as_bytes(), &drv.references())
    }

    /// Add a path from its NAR, with metadata from elsewhere (import, substitution). The NAR
    /// must match `info`'s hash and size (when the size is known).
    pub fn add_nar(&self, info: &ValidPathInfo, nar_stream: impl Read) -> Result<()> {
        match self.stage_nar(info, nar_stream)? {
            Some(p) => self.commit_batch(vec![p]),
            None => Ok(()),
        }
    }

    /// Read and check the NAR of a path to add (see [`LocalStore::add_nar`]) without
    /// committing it: `None` when the path is valid already (its stream is read through).
    /// Several may be staged at once, on several threads, and committed together.
    pub(crate) fn stage_nar(
        &self,
        info: &ValidPathInfo,
        nar_stream: impl Read,
    ) -> Result<Option<Pending>> {
        let p = &info.path;
        self.add_temp_root(p)?;
        if self.is_valid_path(p)? {
            // Consume the stream so that a caller reading several NARs stays in step.
            let mut sink = nar::Discard;
            nar::parse(nar_stream, &mut sink).map_err(|source| StoreError::Nar {
                path: self.print(p),
                source,
            })?;
            return Ok(None);
        };
        let what = format!("'{}'", self.print(p));
        let staged = match info.nar_size {
            0 => self.stage(nar_stream, &what, false)?,
            n => self.stage_sized(nar_stream, &what, false, n)?,
        };
        if staged.nar_hash != info.nar_hash {
            return Err(StoreError::HashMismatch {
                path: self.print(p),
                expected: info.nar_hash.encode_typed(ferrix_format::Encoding::Nix32),
                got: staged.nar_hash.encode_typed(ferrix_format::Encoding::Nix32),
            });
        }
        if info.nar_size != 0 && staged.nar_size != info.nar_size {
            return Err(StoreError::SizeMismatch {
                path: self.print(p),
                expected: info.nar_size,
                got: staged.nar_size,
            });
        }
        let mut info = info.clone();
        info.nar_size = staged.nar_size;
        Ok(Some(Pending { staged, info }))
    }

    /// Add a content-addressed path from its dump, as the worker protocol's `AddToStore`
    /// brings it: the tree's NAR (recursive) or the file's bytes (flat), addressed by their
    /// `algo` hash and referring to `refs`. A NAR streams into staging, hashed on the way; a
    /// flat file is read whole first, since its NAR states its size before its bytes. The
    /// path's info as registered (already valid: as it was).
    pub fn add_ca_dump(
        &self,
        name: &str,
        method: FileIngestionMethod,
        algo: HashAlgo,
        refs: &BTreeSet<StorePath>,
        mut dump: impl Read,
    ) -> Result<ValidPathInfo> {
        ferrix_format::store_path::validate_name(name).map_err(|source| StoreError::BadName {
            path: name.to_owned(),
            source,
        })?;
        let what = format!("the contents of '{name}'");
        let (staged, hash) = match method {
            FileIngestionMethod::Recursive => {
                let mut reader = crate::streams::HashingReader {
                    inner: dump,
                    sink: (algo != HashAlgo::Sha256).then(|| HashSink::new(algo)),
                };
                let staged = self.stage(&mut reader, &what, true)?;
                let hash = match algo {
                    HashAlgo::Sha256 => staged.nar_hash,
                    _ => reader.finish().0,
                };
                (staged, hash)
            }
            FileIngestionMethod::Flat => {
                let mut bytes = Vec::new();
                dump.read_to_end(&mut bytes)
                    .map_err(|source| StoreError::Io {
                        what: "reading",
                        path: PathBuf::from(&what),
                        source,
                    })?;
                let mut h = Hasher::new(algo);
                h.update(&bytes);
                let mut nar = Vec::with_capacity(bytes.len() + 128);
                crate::streams::write_file_nar(&mut nar, &bytes);
                (self.stage_own_nar(nar), h.finish())
            }
        };
        let ca = ContentAddress::Fixed { method, hash };
        let p = self
            .config
            .store_dir
            .make_ca_path(name, &ca, refs, false)
            .map_err(|source| StoreError::BadName {
                path: name.to_owned(),
                source,
            })?;
        let mut info = ValidPathInfo::new(p.clone(), staged.nar_hash, staged.nar_size);
        info.references = refs.clone();
        info.ca = Some(ca);
        info.ultimate = true;
        self.commit_batch(vec![Pending { staged, info }])?;
        self.path_info(&p)
    }

    /// Register paths whose contents are already in place (`nix-store --load-db`,
    /// `--register-validity`): their files must exist; references must be valid or among them.
    pub fn register_existing(&self, infos: &[ValidPathInfo]) -> Result<()> {
        for i in infos {
            let real = self.real_path(&i.path);
            fs::symlink_metadata(&real).map_err(io_err("registering", &real))?;
        }
        let mut drvs = Vec::new();
        for i in infos.iter().filter(|i| i.path.is_derivation()) {
            drvs.push((&i.path, read_regular(&self.real_path(&i.path))?));
        }
        let outs = self.check_new_derivations(drvs)?;
        self.db().register(infos, &outs)
    }
}
