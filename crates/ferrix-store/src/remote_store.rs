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

/// What a machine's store needs of a protocol session.
pub trait Session: Send {
    fn query_valid(
        &mut self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, RemoteError>;
    /// What the machine records of the valid ones among `paths`.
    fn query_infos(
        &mut self,
        uri: &str,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError>;
    /// The closure of `paths` there in one request, if the protocol has one.
    fn closure(
        &mut self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Option<Result<BTreeSet<StorePath>, RemoteError>>;
    fn nar_into(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), CopyError>;
    fn send_paths(
        &mut self,
        from: &dyn Store,
        infos: &[ValidPathInfo],
        opts: &AddOptions,
    ) -> Result<(), CopyError>;
}

/// A machine's store, reached through one session.
pub struct Machine<C> {
    uri: String,
    store_dir: StoreDir,
    client: Mutex<C>,
    /// A failed exchange may leave the session in the middle of a message: not used again.
    broken: AtomicBool,
}

/// An `ssh://` machine's store.
pub type ServeStore = Machine<ServeClient>;
/// An `ssh-ng://` machine's store (its `nix-daemon --stdio`).
pub type WorkerStore = Machine<WorkerClient>;

impl<C> std::fmt::Debug for Machine<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("uri", &self.uri).finish()
    }
}

impl<C: Session> Machine<C> {
    pub fn new(uri: String, store_dir: StoreDir, client: C) -> Self {
        Self {
            uri,
            store_dir,
            client: Mutex::new(client),
            broken: AtomicBool::new(false),
        }
    }

    /// Run `f` on the session, unless an earlier failure left it unusable; a failure now
    /// does so.
    fn call<T>(&self, f: impl FnOnce(&mut C) -> Result<T, CopyError>) -> Result<T, CopyError> {
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

impl<C: Session> Store for Machine<C> {
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
        self.call(|c| c.query_infos(&self.uri, paths))
    }

    fn query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        let Some(all) = self.call(|c| Ok(c.closure(paths, include_outputs).transpose()?))? else {
            return crate::store::closure_by_level(self, paths, include_outputs);
        };
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
        opts: &AddOptions,
    ) -> Result<(), CopyError> {
        self.call(|c| c.send_paths(from, infos, opts))
    }
}

impl Session for ServeClient {
    fn query_valid(
        &mut self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, RemoteError> {
        ServeClient::query_valid(self, paths, substitute)
    }

    fn query_infos(
        &mut self,
        uri: &str,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        self.query_path_infos(paths)?
            .into_iter()
            .map(|e| {
                // Serve protocol 2.4 and later send the NAR hash, and it is what a copy is
                // checked against.
                let nar_hash = e.nar_hash.ok_or_else(|| CopyError::Unsupported {
                    store: uri.to_owned(),
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

    fn closure(
        &mut self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Option<Result<BTreeSet<StorePath>, RemoteError>> {
        Some(self.query_closure(paths, include_outputs))
    }

    fn nar_into(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), CopyError> {
        ServeClient::nar_into(self, path, out)
    }

    fn send_paths(
        &mut self,
        from: &dyn Store,
        infos: &[ValidPathInfo],
        _opts: &AddOptions,
    ) -> Result<(), CopyError> {
        ServeClient::send_paths(self, from, infos)
    }
}

impl Session for WorkerClient {
    fn query_valid(
        &mut self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, RemoteError> {
        WorkerClient::query_valid(self, paths, substitute)
    }

    fn query_infos(
        &mut self,
        _uri: &str,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, ValidPathInfo>, CopyError> {
        // The protocol asks about one path at a time.
        let mut out = BTreeMap::new();
        for p in paths {
            if let Some(i) = self.query_path_info(p)? {
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
    }

    fn closure(
        &mut self,
        _paths: &BTreeSet<StorePath>,
        _include_outputs: bool,
    ) -> Option<Result<BTreeSet<StorePath>, RemoteError>> {
        None
    }

    fn nar_into(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), CopyError> {
        WorkerClient::nar_into(self, path, out)
    }

    fn send_paths(
        &mut self,
        from: &dyn Store,
        infos: &[ValidPathInfo],
        opts: &AddOptions,
    ) -> Result<(), CopyError> {
        WorkerClient::send_paths(self, from, infos, opts.check_sigs)
    }
}
