//! Evaluation writing through a daemon (`--store daemon`): what it adds goes to the
//! daemon; what it reads (derivations, to name their outputs) is read where the store's
//! files are, readable to every user.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;

use ferrix_format::content_address::FileIngestionMethod;
use ferrix_format::derivation::DrvHash;
use ferrix_format::{Derivation, DerivationOutput, HashAlgo, StoreDir, StorePath};
use ferrix_store::serve_client::RemoteError;
use ferrix_store::worker_client::WorkerClient;
use ferrix_store::StoreError;

use crate::store::EvalStore;

/// A daemon as the store of an evaluation. Read-only, it computes the paths writing
/// would give and writes nothing (`nix-instantiate --eval`), keeping the derivations it
/// computed to read them back.
pub struct DaemonStore {
    client: Mutex<WorkerClient>,
    store_dir: StoreDir,
    /// Hashes modulo of the derivations known so far: those written, those read.
    hashes: Mutex<HashMap<StorePath, DrvHash>>,
    read_only: bool,
    /// Derivations computed but not written (read-only).
    unwritten: Mutex<HashMap<StorePath, Derivation>>,
}

impl std::fmt::Debug for DaemonStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonStore")
            .field("store_dir", &self.store_dir)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl DaemonStore {
    pub fn new(client: WorkerClient, store_dir: StoreDir, read_only: bool) -> Self {
        Self {
            client: Mutex::new(client),
            store_dir,
            hashes: Mutex::default(),
            read_only,
            unwritten: Mutex::default(),
        }
    }

    /// The session, for the caller's work after evaluation (building what it wrote).
    pub fn into_client(self) -> WorkerClient {
        self.client.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    fn call<T>(
        &self,
        f: impl FnOnce(&mut WorkerClient) -> Result<T, RemoteError>,
    ) -> Result<T, StoreError> {
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c).map_err(|e| StoreError::Daemon(Box::new(e)))
    }

    fn print(&self, p: &StorePath) -> String {
        self.store_dir.display(p)
    }

    /// The hash modulo of the derivation `p` (read from the store's files when not known),
    /// its inputs first.
    fn hash_of(&self, p: &StorePath) -> Result<DrvHash, StoreError> {
        // An explicit stack: chains of derivations can be thousands long.
        let mut stack = vec![p.clone()];
        let mut read: HashMap<StorePath, Derivation> = HashMap::new();
        let mut expanding: std::collections::HashSet<StorePath> = Default::default();
        while let Some(top) = stack.last().cloned() {
            if self.known(&top).is_some() {
                stack.pop();
                continue;
            }
            if !read.contains_key(&top) {
                read.insert(top.clone(), self.read_derivation(&top)?);
            }
            let drv = &read[&top];
            let missing: Vec<StorePath> = drv
                .input_drvs
                .keys()
                .filter(|i| self.known(i).is_none())
                .cloned()
                .collect();
            if missing.is_empty() {
                let h = self.hash_modulo(&top, drv)?;
                self.hashes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(top.clone(), h);
                read.remove(&top);
                expanding.remove(&top);
                stack.pop();
            } else {
                // Only a derivation whose inputs are being hashed (not a sibling waiting
                // further down, in a diamond) makes a cycle.
                let cycle =
                    !expanding.insert(top.clone()) || missing.iter().any(|m| expanding.contains(m));
                if cycle {
                    return Err(StoreError::Cycle {
                        path: self.print(&missing[0]),
                        from: self.print(&top),
                    });
                }
                stack.extend(missing);
            }
        }
        self.known(p)
            .ok_or_else(|| StoreError::NotValid(self.print(p)))
    }

    fn known(&self, p: &StorePath) -> Option<DrvHash> {
        self.hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(p)
            .cloned()
    }

    /// `drv`'s hash modulo, its inputs' known.
    fn hash_modulo(&self, p: &StorePath, drv: &Derivation) -> Result<DrvHash, StoreError> {
        drv.hash_modulo(&self.store_dir, false, |i| {
            self.known(i)
                .ok_or_else(|| StoreError::NotValid(self.print(i)))
        })
        .map_err(|e| StoreError::DrvHash {
            path: self.print(p),
            source: Box::new(e),
        })
    }
}

impl EvalStore for DaemonStore {
    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn add_text(
        &self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        if self.read_only {
            return self
                .store_dir
                .make_text_path(name, &ferrix_format::Hash::sha256(text.as_bytes()), refs)
                .map_err(crate::store::DeferredStore::bad_name(name));
        }
        self.call(|c| c.add_text(name, text.as_bytes(), refs))
    }

    fn add_source(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        if self.read_only {
            return crate::store::source_path(&self.store_dir, path, name);
        }
        self.call(|c| c.add_path(path, name, FileIngestionMethod::Recursive, HashAlgo::Sha256))
    }

    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        if self.read_only {
            return crate::store::flat_path(&self.store_dir, path, name);
        }
        self.call(|c| c.add_path(path, name, FileIngestionMethod::Flat, HashAlgo::Sha256))
    }

    fn add_fetched(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        // What a fetcher got is read next: written even in read-only mode, as Nix does.
        self.call(|c| c.add_path(path, name, FileIngestionMethod::Recursive, HashAlgo::Sha256))
    }

    fn add_fetched_file(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        self.call(|c| c.add_path(path, name, FileIngestionMethod::Flat, HashAlgo::Sha256))
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn is_valid(&self, p: &StorePath) -> Result<bool, StoreError> {
        if self
            .unwritten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(p)
        {
            return Ok(true);
        }
        let one = BTreeSet::from([p.clone()]);
        self.call(|c| c.query_valid(&one, false))
            .map(|v| v.contains(p))
    }

    fn add_derivation(
        &self,
        mut drv: Derivation,
        name: &str,
    ) -> Result<(StorePath, Derivation), StoreError> {
        if drv.fixed_output().is_none() {
            for i in drv.input_drvs.keys() {
                self.hash_of(i)?;
            }
            let given = drv.clone();
            for o in drv.outputs.values_mut() {
                if matches!(o, DerivationOutput::InputAddressed(_)) {
                    *o = DerivationOutput::Deferred;
                }
            }
            drv.fill_input_addressed_outputs(&self.store_dir, name, |i| {
                self.known(i)
                    .ok_or_else(|| StoreError::NotValid(self.print(i)))
            })
            .map_err(|e| StoreError::DrvHash {
                path: format!("{name}.drv"),
                source: Box::new(e),
            })?;
            // Outputs given by path stay as given (the daemon checks them).
            for (o, out) in given.outputs {
                if let DerivationOutput::InputAddressed(_) = out {
                    if let Some(v) = given.env.get(&o).filter(|v| !v.is_empty()) {
                        drv.env.insert(o.clone(), v.clone());
                    }
                    drv.outputs.insert(o, out);
                }
            }
        }
        let text = drv.to_aterm(&self.store_dir);
        let p = self.add_text(&format!("{name}.drv"), &text, &drv.references())?;
        if self.read_only {
            self.unwritten
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p.clone(), drv.clone());
        }
        let h = self.hash_modulo(&p, &drv)?;
        self.hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p.clone(), h);
        Ok((p, drv))
    }

    fn read_derivation(&self, p: &StorePath) -> Result<Derivation, StoreError> {
        if let Some(d) = self
            .unwritten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(p)
        {
            return Ok(d.clone());
        }
        let file = std::path::PathBuf::from(self.print(p));
        let text = std::fs::read(&file).map_err(|source| StoreError::Io {
            what: "reading",
            path: file.clone(),
            source,
        })?;
        Derivation::parse_aterm(&self.store_dir, &text).map_err(|source| {
            StoreError::BadDerivation {
                path: self.print(p),
                source,
            }
        })
    }

    fn closure(&self, p: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        let mut set = BTreeSet::new();
        let mut todo = vec![p.clone()];
        while let Some(q) = todo.pop() {
            if !set.insert(q.clone()) {
                continue;
            }
            let computed = self
                .unwritten
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&q)
                .map(Derivation::references);
            if let Some(refs) = computed {
                todo.extend(refs);
                continue;
            }
            match self.call(|c| c.query_path_info(&q))? {
                Some(i) => todo.extend(i.references),
                None => return Err(StoreError::NotValid(self.print(&q))),
            }
        }
        Ok(set)
    }
}
