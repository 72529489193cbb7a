//! Registration off the critical path: once a build's outputs are checked, dependents may
//! start on them while the outputs are synced to disk and registered in the background. A
//! registration waits for those of the outputs it refers to, so the database never holds a
//! path whose references are not valid, and until then the outputs stay locked and named in
//! the build record (a crash removes them).
//!
//! Syncing a fresh output and its directory costs about half a millisecond on a disk, and on
//! a journaled file system each sync commits the journal, which holds up the file system
//! work of the builds that run meanwhile. So one worker registers what has piled up while it
//! was busy, in batches: one sync and one transaction each.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ferrix_format::StorePath;
use ferrix_store::{LocalStore, OutputsIntent, StoreError, StoreLock, ValidPathInfo};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{BuildFailure, FailureKind};

/// `Some(true)` once registered, `Some(false)` (or a dropped sender) if it failed.
type Done = watch::Receiver<Option<bool>>;

/// Outputs checked but not registered yet, and the worker registering them.
#[derive(Debug, Default)]
pub struct Registrations {
    pending: Mutex<HashMap<StorePath, (ValidPathInfo, Done)>>,
    /// Handovers waiting for the worker, and whether it runs.
    queue: Mutex<Queue>,
    /// The workers started so far (one runs at a time); each returns the builds it failed.
    tasks: Mutex<Vec<Registering>>,
    /// References of the paths builds have used or made, as Nix's path-info cache keeps
    /// them: a path's references never change, and walking them here is far cheaper than a
    /// query per build when builds stack on each other (a chain: an ever deeper closure).
    refs: Mutex<HashMap<StorePath, Arc<[StorePath]>>>,
    /// Builds whose outputs could not be registered, by derivation, with why.
    failures: Mutex<HashMap<StorePath, Arc<BuildFailure>>>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<(Handover, watch::Sender<Option<bool>>)>,
    running: bool,
    /// Outputs whose registration failed: what refers to them cannot be registered.
    failed: HashSet<StorePath>,
}

/// A build whose outputs the worker is registering: what it holds until then.
#[derive(Debug)]
struct Held {
    drv_path: StorePath,
    drv: String,
    paths: Vec<StorePath>,
    locks: Vec<StoreLock>,
    replaced: Option<OutputsIntent>,
    tx: watch::Sender<Option<bool>>,
    /// Released once the outputs are registered (or not).
    _hold: Option<ferrix_store::temproots::RootsHold>,
}

/// A worker under way: the builds whose outputs it could not register.
type Registering = JoinHandle<Vec<(StorePath, Arc<BuildFailure>)>>;

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
    /// The build directory, to end.
    pub build_dir: Option<crate::local::BuildDir>,
    /// Keeps the roots taken while registering until it is done (set by the registry).
    pub hold: Option<ferrix_store::temproots::RootsHold>,
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

    /// Register `h`'s outputs in the background, after (or with) the pending ones they
    /// refer to.
    pub fn start(self: &Arc<Self>, store: Arc<LocalStore>, h: Handover) {
        let (tx, rx) = watch::channel(None);
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
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.waiting.push((h, tx));
        if !q.running {
            q.running = true;
            let this = self.clone();
            let task = tokio::spawn(async move { this.work(store).await });
            self.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(task);
        }
    }

    /// The worker: registers what waits, batch after batch, until nothing does. Handovers
    /// wait in the order their builds ended, after those of their inputs; a batch holds
    /// them all, so every pending path an output refers to is registered before it or in
    /// the same transaction.
    async fn work(self: Arc<Self>, store: Arc<LocalStore>) -> Vec<(StorePath, Arc<BuildFailure>)> {
        let mut failures = Vec::new();
        loop {
            let (waiting, mut failed) = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiting.is_empty() {
                    q.running = false;
                    return failures;
                }
                (std::mem::take(&mut q.waiting), q.failed.clone())
            };
            // Each build as it ends here, and why it failed, if it did.
            let mut ends: Vec<(Held, Option<BuildFailure>)> = Vec::new();
            let mut work = Vec::new();
            for (h, tx) in waiting {
                let Handover {
                    drv_path,
                    drv,
                    infos,
                    intent,
                    locks,
                    replaced,
                    build_dir,
                    hold,
                } = h;
                let held = Held {
                    drv_path,
                    drv,
                    paths: infos.iter().map(|i| i.path.clone()).collect(),
                    locks,
                    replaced,
                    tx,
                    _hold: hold,
                };
                // What refers to an output that could not be registered cannot be either.
                let bad = infos
                    .iter()
                    .flat_map(|i| i.references.iter())
                    .find(|r| failed.contains(*r));
                let why = bad.map(|input| {
                    BuildFailure::new(
                        held.drv.clone(),
                        FailureKind::InputUnregistered {
                            input: store.print(input),
                        },
                    )
                });
                if why.is_some() {
                    failed.extend(held.paths.iter().cloned());
                    drop(intent); // deletes the outputs
                    if let Some(dir) = build_dir {
                        dir.release();
                    }
                } else {
                    work.push((intent, infos, build_dir));
                }
                ends.push((held, why));
            }
            if !work.is_empty() {
                let store2 = store.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let mut batch = Vec::new();
                    for (intent, infos, build_dir) in work {
                        if let Some(dir) = build_dir {
                            dir.release();
                        }
                        batch.push((intent, infos));
                    }
                    store2.register_outputs_batch(batch)
                })
                .await
                .unwrap_or_else(|e| match e.try_into_panic() {
                    Ok(p) => std::panic::resume_unwind(p),
                    // Cancelled: the runtime is going down.
                    Err(_) => Err(StoreError::Interrupted),
                });
                if let Err(why) = result {
                    // One failed transaction fails every build in it.
                    let why = Arc::new(why);
                    for (held, failure) in ends.iter_mut().filter(|(_, f)| f.is_none()) {
                        failed.extend(held.paths.iter().cloned());
                        *failure = Some(BuildFailure::new(
                            held.drv.clone(),
                            FailureKind::Registration {
                                source: why.clone(),
                            },
                        ));
                    }
                }
            }
            {
                let mut g = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                for (held, _) in &ends {
                    for p in &held.paths {
                        g.remove(p);
                    }
                }
            }
            self.queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .failed
                .extend(failed);
            for (held, failure) in ends {
                let _ = held.tx.send(Some(failure.is_none()));
                if let Some(f) = failure {
                    let f = Arc::new(f);
                    self.failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(held.drv_path.clone(), f.clone());
                    failures.push((held.drv_path.clone(), f));
                }
                // The locks go now, and what a repair replaced.
                drop(held.locks);
                drop(held.replaced);
            }
        }
    }

    /// Wait for every registration started so far; the builds whose outputs could not be
    /// registered, with why.
    pub async fn settle(&self) -> Vec<(StorePath, Arc<BuildFailure>)> {
        let mut failed = Vec::new();
        loop {
            let tasks: Vec<_> =
                std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
            if tasks.is_empty() {
                return failed;
            }
            for t in tasks {
                if let Ok(f) = t.await {
                    failed.extend(f);
                }
            }
        }
    }
}

impl Registrations {
    /// Why the outputs of `drv` could not be registered, if they could not.
    pub fn failure_of(&self, drv: &StorePath) -> Option<Arc<BuildFailure>> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(drv)
            .cloned()
    }
}
