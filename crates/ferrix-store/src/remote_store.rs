//! Machines over ssh as [`Store`]s: `ssh://` (the serve protocol) and `ssh-ng://` (the worker
//! protocol). One session each, so one request at a time; what the protocol can batch (which
//! paths are valid, path infos and closures over `ssh://`, many NARs in one stream) is.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use ferrix_format::{StoreDir, StorePath};

use crate::path_info::ValidPathInfo;
use crate::serve_client::{RemoteError, ServeClient};
use crate::store::{AddOptions, CopyError, Store};
use crate::worker_client::WorkerClient;

/// An `ssh://` machine's store.
pub struct ServeStore {
    uri: String,
    store_dir: StoreDir,
    client: Mutex<ServeClient>,
    /// A failed exchange may leave the session in the middle of a message: not used again.
    broken: AtomicBool,
}

impl std::fmt::Debug for ServeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeStore")
            .field("uri", &self.uri)
            .finish()
    }
}

impl ServeStore {
    pub fn new(uri: String, store_dir: StoreDir, client: ServeClient) -> Self {
        Self {
            uri,
            store_dir,
            client: Mutex::new(client),
            broken: AtomicBool::new(false),
        }
    }

    /// Run `f` on the session, unless an earlier failure left it unusable; a failure now
    /// does so.
    fn call<T>(
        &self,
        f: impl FnOnce(&mut ServeClient) -> Result<T, CopyError>,
    ) -> Result<T, CopyError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(CopyError::Broken {
                store: self.uri.clone(),
            });
        }
        let r = f(&mut self.client.lock().unwrap_or_else(|e| e.into_inner()));
        if r.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        r
    }
}

impl Store for ServeStore {
    fn uri(&self) -> String {
        self.uri.clone()
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn query_valid(
        &self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, CopyError> {
        self.call(|c| Ok(c.query_valid(paths, substitute)?))
    }

    fn query_infos(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        let entries = self.call(|c| Ok(c.query_path_infos(paths)?))?;
        entries
            .into_iter()
            .map(|e| {
                // Serve protocol 2.4 and later send the NAR hash, and it is what a copy is
                // checked against.
                let nar_hash = e.nar_hash.ok_or_else(|| CopyError::Unsupported {
                    store: self.uri.clone(),
                    what:
                        "say the NAR hashes of its paths (it speaks the serve protocol before 2.4)",
                })?;
                let mut info = ValidPathInfo::new(e.path.clone(), nar_hash, e.nar_size);
                info.deriver = e.deriver;
                info.references = e.references;
                info.sigs = e.sigs;
                info.ca = e.ca;
                Ok((e.path, info))
            })
            .collect()
    }

    fn query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        let all = self.call(|c| Ok(c.query_closure(paths, include_outputs)?))?;
        let infos = self.query_infos(&all)?;
        if let Some(p) = all.iter().find(|p| !infos.contains_key(*p)) {
            return Err(RemoteError::Missing {
                uri: self.uri.clone(),
                path: self.store_dir.display(p),
            }
            .into());
        }
        Ok(infos)
    }

    fn nar_into(&self, info: &ValidPathInfo, out: &mut dyn Write) -> Result<(), CopyError> {
        self.call(|c| c.nar_into(&info.path, out))
    }

    fn add_many(
        &self,
        infos: &[ValidPathInfo],
        from: &dyn Store,
        _opts: &AddOptions,
    ) -> Result<(), CopyError> {
        self.call(|c| c.send_paths(from, infos))
    }
}

/// An `ssh-ng://` machine's store (its `nix-daemon --stdio`).
pub struct WorkerStore {
    uri: String,
    store_dir: StoreDir,
    client: Mutex<WorkerClient>,
    /// A failed exchange may leave the session in the middle of a message: not used again.
    broken: AtomicBool,
}

impl std::fmt::Debug for WorkerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerStore")
            .field("uri", &self.uri)
            .finish()
    }
}

impl WorkerStore {
    pub fn new(uri: String, store_dir: StoreDir, client: WorkerClient) -> Self {
        Self {
            uri,
            store_dir,
            client: Mutex::new(client),
            broken: AtomicBool::new(false),
        }
    }

    /// Run `f` on the session, unless an earlier failure left it unusable; a failure now
    /// does so.
    fn call<T>(
        &self,
        f: impl FnOnce(&mut WorkerClient) -> Result<T, CopyError>,
    ) -> Result<T, CopyError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(CopyError::Broken {
                store: self.uri.clone(),
            });
        }
        let r = f(&mut self.client.lock().unwrap_or_else(|e| e.into_inner()));
        if r.is_err() {
            self.broken.store(true, Ordering::SeqCst);
        }
        r
    }
}

impl Store for WorkerStore {
    fn uri(&self) -> String {
        self.uri.clone()
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn query_valid(
        &self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, CopyError> {
        self.call(|c| Ok(c.query_valid(paths, substitute)?))
    }

    fn query_infos(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        // The protocol asks about one path at a time.
        self.call(|client| {
            let mut out = BTreeMap::new();
            for p in paths {
                if let Some(i) = client.query_path_info(p)? {
                    let mut info = ValidPathInfo::new(p.clone(), i.nar_hash, i.nar_size);
                    info.deriver = i.deriver;
                    info.references = i.references;
                    info.registration_time = i64::try_from(i.registration_time).unwrap_or(0);
                    info.ultimate = i.ultimate;
                    info.sigs = i.sigs;
                    info.ca = i.ca;
                    out.insert(p.clone(), info);
                }
            }
            Ok(out)
        })
    }

    fn nar_into(&self, info: &ValidPathInfo, out: &mut dyn Write) -> Result<(), CopyError> {
        self.call(|c| c.nar_into(&info.path, out))
    }

    fn add_many(
        &self,
        infos: &[ValidPathInfo],
        from: &dyn Store,
        opts: &AddOptions,
    ) -> Result<(), CopyError> {
        self.call(|c| c.send_paths(from, infos, opts.check_sigs))
    }
}
