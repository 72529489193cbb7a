//! What evaluation needs of a store: its directory, and writing text files, source trees and
//! derivations into it. The local store implements it, and [`ReadOnlyStore`] computes the
//! same paths without writing; evaluation never builds.

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

/// A store evaluation only computes paths in (`nix-instantiate --eval`, `--readonly-mode`):
/// text files, sources and derivations get the paths writing them would give, and nothing
/// is written. Derivations computed so far are kept here, so that ones depending on them
/// get their output paths, and a `drvPath`'s closure is known without the store.
pub struct ReadOnlyStore {
    store: std::sync::Arc<LocalStore>,
    computed: std::sync::Mutex<Computed>,
}

#[derive(Default)]
struct Computed {
    drvs: HashMap<StorePath, Derivation>,
    /// Hashes modulo of `drvs`, kept from one derivation to the next.
    memo: HashMap<StorePath, DrvHash>,
    /// What computed text files refer to.
    refs: HashMap<StorePath, BTreeSet<StorePath>>,
}

impl std::fmt::Debug for ReadOnlyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlyStore")
            .field("derivations", &self.computed().drvs.len())
            .finish()
    }
}

impl ReadOnlyStore {
    pub fn new(store: std::sync::Arc<LocalStore>) -> Self {
        Self {
            store,
            computed: Default::default(),
        }
    }

    fn computed(&self) -> std::sync::MutexGuard<'_, Computed> {
        self.computed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bad_name(name: &str) -> impl FnOnce(StorePathError) -> StoreError + '_ {
        move |source| StoreError::BadName {
            path: name.to_owned(),
            source,
        }
    }
}

impl EvalStore for ReadOnlyStore {
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
        self.computed().refs.insert(p.clone(), refs.clone());
        Ok(p)
    }

    fn add_source(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        let (hash, _) =
            ferrix_format::nar::hash_path(path, HashAlgo::Sha256).map_err(|source| {
                StoreError::Dump {
                    path: path.to_owned(),
                    source,
                }
            })?;
        let ca = ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            hash,
        };
        self.store_dir()
            .make_ca_path(name, &ca, [], false)
            .map_err(Self::bad_name(name))
    }

    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
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
        self.store_dir()
            .make_ca_path(name, &ca, [], false)
            .map_err(Self::bad_name(name))
    }

    fn is_valid(&self, p: &StorePath) -> Result<bool, StoreError> {
        self.store.is_valid_path(p)
    }

    fn add_derivation(
        &self,
        drv: Derivation,
        name: &str,
    ) -> Result<(StorePath, Derivation), StoreError> {
        let mut computed = self.computed();
        let Computed { drvs, memo, .. } = &mut *computed;
        let drv = ferrix_store::drv::fill(&self.store, drv, name, drvs, memo)?;
        let p = drv
            .drv_path(self.store_dir(), name)
            .map_err(Self::bad_name(name))?;
        computed.drvs.insert(p.clone(), drv.clone());
        Ok((p, drv))
    }

    fn read_derivation(&self, p: &StorePath) -> Result<Derivation, StoreError> {
        if let Some(d) = self.computed().drvs.get(p) {
            return Ok(d.clone());
        }
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
            let refs: Vec<StorePath> = if let Some(d) = computed.drvs.get(&p) {
                d.references().into_iter().collect()
            } else if let Some(r) = computed.refs.get(&p) {
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
        self.store
            .add_path(path, name, FileIngestionMethod::Recursive, HashAlgo::Sha256)
    }

    fn add_fetched_file(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        self.store
            .add_path(path, name, FileIngestionMethod::Flat, HashAlgo::Sha256)
    }

    fn is_read_only(&self) -> bool {
        true
    }
}
