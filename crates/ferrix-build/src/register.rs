//! Registration off the critical path: once a build's outputs are checked, dependents may
//! start on them while the outputs are synced to disk and registered in the background. A
//! registration waits for those of the outputs it refers to, so the database never holds a
//! path whose references are not valid, and until then the outputs stay locked and named in
//! the build record (a crash removes them).
//!
//! Syncing a fresh output and its directory costs about half a millisecond on a disk; on a
//! chain of builds that cost would otherwise sit between every two builds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use ferrix_format::StorePath;
use ferrix_store::{LocalStore, OutputsIntent, StoreError, StoreLock, ValidPathInfo};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::BuildFailure;

/// `Some(true)` once registered, `Some(false)` (or a dropped sender) if it failed.
type Done = watch::Receiver<Option<bool>>;

/// A registration under way: the failed build, if it fails.
type Registering = JoinHandle<Option<(StorePath, BuildFailure)>>;

/// Outputs checked but not registered yet, and the tasks registering them.
#[derive(Debug, Default)]
pub struct Registrations {
    pending: Mutex<HashMap<StorePath, (ValidPathInfo, Done)>>,
    tasks: Mutex<Vec<Registering>>,
    /// References of the paths builds have used or made, as Nix's path-info cache keeps
    /// them: a path's references never change, and walking them here is far cheaper than a
    /// query per build when builds stack on each other (a chain: an ever deeper closure).
    refs: Mutex<HashMap<StorePath, Arc<[StorePath]>>>,
}

/// What a build hands over for registration.
#[derive(Debug)]
pub struct Handover {
    pub drv_path: StorePath,
    pub drv: String,
    pub infos: Vec<ValidPathInfo>,
    pub intent: OutputsIntent,
    pub locks: Vec<StoreLock>,
    /// What the outputs replace (a repair): removed once they are registered.
    pub replaced: Option<OutputsIntent>,
    /// The build directory, to remove.
    pub build_dir: Option<std::path::PathBuf>,
}

impl Registrations {
    /// Path infos of outputs not registered yet (what the database cannot tell).
    pub fn snapshot(&self) -> BTreeMap<StorePath, ValidPathInfo> {
        let g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().map(|(p, (i, _))| (p.clone(), i.clone())).collect()
    }

    /// The closure of `roots`, which may include outputs not registered yet.
    pub fn closure(
        &self,
        store: &LocalStore,
        roots: impl IntoIterator<Item = StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<StorePath> = roots.into_iter().collect();
        loop {
            let mut missing = Vec::new();
            {
                let refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
                while let Some(p) = todo.pop() {
                    if out.contains(&p) {
                        continue;
                    }
                    match refs.get(&p) {
                        Some(r) => {
                            todo.extend(r.iter().filter(|x| !out.contains(*x)).cloned());
                            out.insert(p);
                        }
                        None => missing.push(p),
                    }
                }
            }
            if missing.is_empty() {
                return Ok(out);
            }
            // Unknown paths are valid ones (outputs of this run are known from the start):
            // their whole closure comes from one query, and is remembered.
            missing.sort();
            missing.dedup();
            let graph = store.closure_graph(&missing)?;
            let mut refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
            for (p, r) in graph {
                refs.entry(p).or_insert_with(|| r.into());
            }
            if let Some(p) = missing.iter().find(|p| !refs.contains_key(*p)) {
                // Not in its own closure: not valid after all (and no endless loop).
                return Err(StoreError::NotValid(store.print(p)));
            }
            todo = missing;
        }
    }

    /// Wait until every one of `paths` that is being registered is; an error names the
    /// first that could not be.
    pub async fn wait_for(
        &self,
        paths: impl IntoIterator<Item = StorePath>,
    ) -> Result<(), StorePath> {
        let waits: Vec<(StorePath, Done)> = {
            let g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            paths
                .into_iter()
                .filter_map(|p| g.get(&p).map(|(_, d)| (p, d.clone())))
                .collect()
        };
        for (p, mut done) in waits {
            let ok = loop {
                if let Some(v) = *done.borrow_and_update() {
                    break v;
                }
                if done.changed().await.is_err() {
                    break false;
                }
            };
            if !ok {
                return Err(p);
            }
        }
        Ok(())
    }

    /// Register `h`'s outputs in the background, after the pending ones they refer to.
    pub fn start(self: &Arc<Self>, store: Arc<LocalStore>, h: Handover) {
        let (tx, rx) = watch::channel(None);
        let own: BTreeSet<StorePath> = h.infos.iter().map(|i| i.path.clone()).collect();
        let refs: BTreeSet<StorePath> = h
            .infos
            .iter()
            .flat_map(|i| i.references.iter().cloned())
            .filter(|r| !own.contains(r))
            .collect();
        {
            let mut g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for i in &h.infos {
                g.insert(i.path.clone(), (i.clone(), rx.clone()));
            }
        }
        {
            let mut refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
            for i in &h.infos {
                let r: Vec<StorePath> = i.references.iter().cloned().collect();
                refs.insert(i.path.clone(), r.into());
            }
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            let Handover {
                drv_path,
                drv,
                infos,
                intent,
                locks,
                replaced,
                build_dir,
            } = h;
            let result = match this.wait_for(refs).await {
                Err(input) => {
                    if let Some(dir) = build_dir {
                        let _ = ferrix_store::fsutil::delete_path(&dir);
                    }
                    drop(intent); // deletes the outputs
                    Err(BuildFailure::InputUnregistered {
                        drv: drv.clone(),
                        input: store.print(&input),
                    })
                }
                Ok(()) => {
                    let store2 = store.clone();
                    let d = drv.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Some(dir) = build_dir {
                            let _ = ferrix_store::fsutil::delete_path(&dir);
                        }
                        store2
                            .register_outputs(intent, &infos)
                            .map_err(|source| BuildFailure::Store { drv: d, source })
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(BuildFailure::Io {
                            drv: drv.clone(),
                            what: "registering the outputs".into(),
                            source: std::io::Error::other(e.to_string()),
                        })
                    })
                }
            };
            {
                let mut g = this.pending.lock().unwrap_or_else(|p| p.into_inner());
                for p in &own {
                    g.remove(p);
                }
            }
            let _ = tx.send(Some(result.is_ok()));
            drop(replaced);
            drop(locks);
            result.err().map(|f| (drv_path, f))
        });
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// Wait for every registration started so far; the builds whose outputs could not be
    /// registered, with why.
    pub async fn settle(&self) -> Vec<(StorePath, BuildFailure)> {
        let mut failed = Vec::new();
        loop {
            let tasks: Vec<_> =
                std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
            if tasks.is_empty() {
                return failed;
            }
            for t in tasks {
                if let Ok(Some(f)) = t.await {
                    failed.push(f);
                }
            }
        }
    }
}
