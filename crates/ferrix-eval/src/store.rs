//! What evaluation needs of a store: its directory, and writing text files, source trees and
//! derivations into it. The local store implements it, and [`DeferredStore`] computes the
//! same paths and writes them later in batches, or never; evaluation never builds.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use ferrix_format::content_address::FileIngestionMethod;
use ferrix_format::derivation::DrvHash;
use ferrix_format::hash::Hasher;
use ferrix_format::store_path::StorePathError;
use ferrix_format::{ContentAddress, Derivation, Hash, HashAlgo, StoreDir, StorePath};
use ferrix_store::{LocalStore, StoreError};

/// Building during evaluation (import from derivation): the caller (the CLI, with the
/// Engine) builds the outputs an expression reads before it reads them. Evaluation never
/// depends on building itself.
pub trait Realise {
    /// Build `outputs` (`(drv, output)`), or say why they could not be.
    fn realise(&self, outputs: &[(StorePath, String)]) -> Result<(), String>;
}

pub trait EvalStore {
    fn store_dir(&self) -> &StoreDir;

    /// A text file with references (`builtins.toFile`).
    fn add_text(
        &self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError>;

    /// A file system tree, as a recursive SHA-256 source path named `name`.
    fn add_source(&self, path: &Path, name: &str) -> Result<StorePath, StoreError>;

    /// A regular file, as a flat SHA-256 path named `name` (`builtins.fetchurl`).
    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError>;

    /// Whether `p` is a valid path of the store.
    fn is_valid(&self, p: &StorePath) -> Result<bool, StoreError>;

    /// Write `drv` as `<name>.drv`, its input-addressed outputs computed; the derivation as
    /// written and where.
    fn add_derivation(
        &self,
        drv: Derivation,
        name: &str,
    ) -> Result<(StorePath, Derivation), StoreError>;

    /// The derivation at `p` (for its outputs).
    fn read_derivation(&self, p: &StorePath) -> Result<Derivation, StoreError>;

    /// `p` and everything it refers to, directly or not.
    fn closure(&self, p: &StorePath) -> Result<BTreeSet<StorePath>, StoreError>;

    /// A tree a fetcher made (`fetchGit`), added as a source: written even when other
    /// paths are only computed, as Nix's fetchers do, since what is fetched is read next.
    fn add_fetched(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        self.add_source(path, name)
    }

    /// A file a fetcher got (`fetchurl`), added flat; written as [`Self::add_fetched`] is.
    fn add_fetched_file(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        self.add_flat(path, name)
    }

    /// Write what was kept to be written later (see [`DeferredStore`]).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether paths are only computed, never written (nothing can be built then).
    fn is_read_only(&self) -> bool {
        false
    }
}

impl EvalStore for LocalStore {
    fn store_dir(&self) -> &StoreDir {
        LocalStore::store_dir(self)
    }

    fn add_text(
        &self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        LocalStore::add_text(self, name, text.as_bytes(), refs)
    }

    fn add_source(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        self.add_path(path, name, FileIngestionMethod::Recursive, HashAlgo::Sha256)
    }

    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        self.add_path(path, name, FileIngestionMethod::Flat, HashAlgo::Sha256)
    }

    fn is_valid(&self, p: &StorePath) -> Result<bool, StoreError> {
        self.is_valid_path(p)
    }

    fn add_derivation(
        &self,
        drv: Derivation,
        name: &str,
    ) -> Result<(StorePath, Derivation), StoreError> {
        ferrix_store::drv::fill_and_add(self, drv, name)
    }

    fn read_derivation(&self, p: &StorePath) -> Result<Derivation, StoreError> {
        ferrix_store::drv::read_derivation(self, p)
    }

    fn closure(&self, p: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        LocalStore::closure(self, [p.clone()], false, false)
    }
}

/// The path adding the tree at `path` as a recursive SHA-256 source named `name` gives.
pub(crate) fn source_path(sd: &StoreDir, path: &Path, name: &str) -> Result<StorePath, StoreError> {
    let (hash, _) = ferrix_format::nar::hash_path(path, HashAlgo::Sha256).map_err(|source| {
        StoreError::Dump {
            path: path.to_owned(),
            source,
        }
    })?;
    let ca = ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash,
    };
    sd.make_ca_path(name, &ca, [], false)
        .map_err(DeferredStore::bad_name(name))
}

/// The path adding the regular file at `path` flat (SHA-256) as `name` gives.
pub(crate) fn flat_path(sd: &StoreDir, path: &Path, name: &str) -> Result<StorePath, StoreError> {
    let io = |what| {
        move |source| StoreError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    if !std::fs::symlink_metadata(path)
        .map_err(io("reading"))?
        .is_file()
    {
        return Err(StoreError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    let mut file = std::fs::File::open(path).map_err(io("opening"))?;
    let mut h = Hasher::new(HashAlgo::Sha256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(io("reading"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let ca = ContentAddress::Fixed {
        method: FileIngestionMethod::Flat,
        hash: h.finish(),
    };
    sd.make_ca_path(name, &ca, [], false)
        .map_err(DeferredStore::bad_name(name))
}

/// How many text files (mostly `.drv`) a writing evaluation keeps before writing them: as
/// many as the store commits at once, so that keeping more would save no sync and only
/// take memory.
const FLUSH_EVERY: usize = 256;

/// The store an evaluation writes through, in one of two ways. *Read-only*
/// (`nix-instantiate --eval`, `--readonly-mode`): text files, sources and derivations get
/// the paths writing them would give, and nothing is written. *Writing*: text files and
/// derivations are kept until [`EvalStore::flush`] writes them all in a few commits (one
/// file system sync for thousands of `.drv` files, where writing each as it comes costs a
/// sync each); sources are written at once. Either way what is needed of the derivations
/// computed so far is kept here (their hashes modulo, so that ones depending on them get
/// their output paths; their references, so that a `drvPath`'s closure is known without
/// the store).
pub struct DeferredStore {
    store: std::sync::Arc<LocalStore>,
    writing: bool,
    computed: std::sync::Mutex<Computed>,
}

#[derive(Default)]
struct Computed {
    /// Read-only: the text of each derivation computed that the store may lack (never
    /// written, so never to be read from it), parsed again only if it is read. The
    /// derivation's hash is in `memo` and its references in `refs`, which is all that
    /// the derivations depending on it need: a parsed one took three times the memory, and
    /// time to copy and free.
    drv_texts: HashMap<StorePath, Box<[u8]>>,
    /// Hashes modulo of every derivation computed, kept from one derivation to the next.
    memo: HashMap<StorePath, DrvHash>,
    /// What computed text files and derivations not in the store yet refer to (also what
    /// the kept ones are written with).
    refs: HashMap<StorePath, BTreeSet<StorePath>>,
    /// Writing: the files to write, in the order they were made (inputs first), with
    /// where each goes; the store may have some already (asked at [`DeferredStore::write_kept`],
    /// for all at once).
    texts: Vec<Kept>,
    unwritten: std::collections::HashSet<StorePath>,
    /// Read-only: derivations kept in `drv_texts` whose validity in the store is not asked yet;
    /// the ones the store has need not be kept.
    unchecked: Vec<StorePath>,
}

/// A text file to write: its contents without spare capacity, since a thousand may wait.
struct Kept {
    path: StorePath,
    name: Box<str>,
    text: Box<[u8]>,
}

impl std::fmt::Debug for DeferredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredStore")
            .field("writing", &self.writing)
            .field("derivations", &self.computed().drv_texts.len())
            .finish()
    }
}

impl DeferredStore {
    /// Paths computed, nothing written.
    pub fn read_only(store: std::sync::Arc<LocalStore>) -> Self {
        Self {
            store,
            writing: false,
            computed: Default::default(),
        }
    }

    /// Text files and derivations written at [`EvalStore::flush`], sources at once.
    pub fn writing(store: std::sync::Arc<LocalStore>) -> Self {
        Self {
            store,
            writing: true,
            computed: Default::default(),
        }
    }

    fn computed(&self) -> std::sync::MutexGuard<'_, Computed> {
        self.computed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn bad_name(name: &str) -> impl FnOnce(StorePathError) -> StoreError + '_ {
        move |source| StoreError::BadName {
            path: name.to_owned(),
            source,
        }
    }

    /// Keep `text` to write at `p` unless the store has it (writing mode).
    fn keep(
        &self,
        computed: &mut Computed,
        p: &StorePath,
        name: String,
        text: impl FnOnce() -> Vec<u8>,
    ) -> Result<(), StoreError> {
        if self.writing && computed.unwritten.insert(p.clone()) {
            computed.texts.push(Kept {
                path: p.clone(),
                name: name.into_boxed_str(),
                text: text().into_boxed_slice(),
            });
            // Not all in memory at once: the store syncs once per batch anyway.
            if computed.texts.len() >= FLUSH_EVERY {
                self.write_kept(computed)?;
            }
        }
        Ok(())
    }

    /// Write the files kept so far that the store lacks (asking it once for all of them,
    /// where asking per file took a fifth of an instantiation's time); the derivations
    /// among them are read from the store from now on (their hashes stay in the memo).
    fn write_kept(&self, computed: &mut Computed) -> Result<(), StoreError> {
        let texts = std::mem::take(&mut computed.texts);
        let valid = self.store.valid_among(texts.iter().map(|k| &k.path))?;
        let texts: Vec<_> = texts
            .into_iter()
            .filter(|k| !valid.contains(&k.path))
            .map(|k| {
                let refs = computed.refs.remove(&k.path).unwrap_or_default();
                (k.name.into_string(), k.text.into_vec(), refs)
            })
            .collect();
        if !texts.is_empty() {
            self.store.add_texts(&texts)?;
        }
        // The store has them now, and knows what they refer to.
        for p in computed.unwritten.drain() {
            computed.refs.remove(&p);
        }
        Ok(())
    }

    /// Read-only: forget the kept derivations the store has (it gives them when asked).
    fn check_kept(&self, computed: &mut Computed) -> Result<(), StoreError> {
        let unchecked = std::mem::take(&mut computed.unchecked);
        for p in self.store.valid_among(&unchecked)? {
            computed.drv_texts.remove(&p);
            computed.refs.remove(&p);
        }
        Ok(())
    }
}

impl EvalStore for DeferredStore {
    fn store_dir(&self) -> &StoreDir {
        self.store.store_dir()
    }

    fn add_text(
        &self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        let p = self
            .store_dir()
            .make_text_path(name, &Hash::sha256(text.as_bytes()), refs)
            .map_err(Self::bad_name(name))?;
        let mut computed = self.computed();
        computed.refs.insert(p.clone(), refs.clone());
        self.keep(&mut computed, &p, name.to_owned(), || {
            text.as_bytes().to_vec()
        })?;
        Ok(p)
    }

    fn add_source(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        if self.writing {
            return self.add_fetched(path, name);
        }
        source_path(self.store_dir(), path, name)
    }

    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        if self.writing {
            return self.add_fetched_file(path, name);
        }
        flat_path(self.store_dir(), path, name)
    }

    fn is_valid(&self, p: &StorePath) -> Result<bool, StoreError> {
        if self.computed().unwritten.contains(p) {
            return Ok(true);
        }
        self.store.is_valid_path(p)
    }

    fn add_derivation(
        &self,
        drv: Derivation,
        name: &str,
    ) -> Result<(StorePath, Derivation), StoreError> {
        let mut computed = self.computed();
        // Every derivation computed so far has its hash in the memo, which is all `fill`
        // needs of the ones not in the store.
        let drv = ferrix_store::drv::fill(&self.store, drv, name, &mut computed.memo)?;
        // The text once, for its path and for writing it.
        let text = drv.to_aterm(self.store_dir());
        let refs = drv.references();
        let file_name = format!("{name}.drv");
        let p = self
            .store_dir()
            .make_text_path(&file_name, &Hash::sha256(text.as_bytes()), &refs)
            .map_err(Self::bad_name(name))?;
        ferrix_store::drv::remember_hash(&self.store, &p, &drv, &mut computed.memo)?;
        // One the store has already is read from there when needed, not kept; the store
        // is asked in batches (see `write_kept` and `check_kept`). Writing, the text is
        // all that is kept: the hash is in the memo, and the text gives the rest.
        if self.writing {
            if !computed.unwritten.contains(&p) {
                computed.refs.insert(p.clone(), refs);
                self.keep(&mut computed, &p, file_name, || text.into_bytes())?;
            }
        } else if !computed.drv_texts.contains_key(&p) {
            computed
                .drv_texts
                .insert(p.clone(), text.into_bytes().into_boxed_slice());
            computed.refs.insert(p.clone(), refs);
            computed.unchecked.push(p.clone());
            if computed.unchecked.len() >= FLUSH_EVERY {
                self.check_kept(&mut computed)?;
            }
        }
        Ok((p, drv))
    }

    fn read_derivation(&self, p: &StorePath) -> Result<Derivation, StoreError> {
        let computed = self.computed();
        let kept = computed.drv_texts.get(p).or_else(|| {
            computed
                .texts
                .iter()
                .find(|k| k.path == *p)
                .map(|k| &k.text)
        });
        if let Some(text) = kept {
            return Derivation::parse_aterm(self.store_dir(), text).map_err(|source| {
                StoreError::BadDerivation {
                    path: self.store.print(p),
                    source,
                }
            });
        }
        drop(computed);
        ferrix_store::drv::read_derivation(&self.store, p)
    }

    fn closure(&self, p: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        let mut out = BTreeSet::new();
        let mut todo = vec![p.clone()];
        let computed = self.computed();
        while let Some(p) = todo.pop() {
            if out.contains(&p) {
                continue;
            }
            let refs: Vec<StorePath> = if let Some(r) = computed.refs.get(&p) {
                r.iter().cloned().collect()
            } else if self.store.is_valid_path(&p)? {
                out.extend(LocalStore::closure(&self.store, [p], false, false)?);
                continue;
            } else {
                // A source computed but not written refers to nothing.
                Vec::new()
            };
            out.insert(p);
            todo.extend(refs);
        }
        Ok(out)
    }

    fn add_fetched(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        EvalStore::add_source(&*self.store, path, name)
    }

    fn add_fetched_file(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        EvalStore::add_flat(&*self.store, path, name)
    }

    fn flush(&self) -> Result<(), StoreError> {
        if !self.writing {
            return Ok(());
        }
        let mut computed = self.computed();
        self.write_kept(&mut computed)
    }

    fn is_read_only(&self) -> bool {
        !self.writing
    }
}
