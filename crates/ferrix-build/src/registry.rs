//! The one registry of outputs that every executor uses: claiming a job's outputs before it
//! builds (locks, validity again, temporary roots, the intent record, the input closure) and
//! registering what it made (in the background, see `register`).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use ferrix_format::StorePath;
use ferrix_store::{LocalStore, OutputsIntent, StoreError, StoreLock};

use crate::error::{BuildFailure, FailureKind};
use crate::executor::{BuildMode, Job};
use crate::register::{Handover, Registrations};

/// Claims and registrations of outputs in one store.
#[derive(Debug)]
pub struct Registry {
    store: Arc<LocalStore>,
    registrations: Arc<Registrations>,
    /// See [`crate::ScheduleOptions::roots_by_work`].
    roots_by_work: bool,
}

/// What claiming a job's outputs found.
#[derive(Debug)]
pub enum Claim {
    /// The outputs are valid (another process built them meanwhile): nothing to build.
    Valid,
    Ready(Box<Claimed>),
}

/// A job's outputs, claimed: held until they are registered or the build fails.
#[derive(Debug)]
pub struct Claimed {
    /// The output locks, in sorted order.
    pub locks: Vec<StoreLock>,
    /// The closure of the job's inputs (outputs still being registered included).
    pub closure: BTreeSet<StorePath>,
    /// Records the outputs (and the extra paths) so that recovery removes them.
    pub intent: OutputsIntent,
    /// What a repair moved aside.
    pub aside: Aside,
}

/// Valid outputs moved aside for a repair: (where they are, where they were), and the
/// intent that removes them once the new outputs are registered.
#[derive(Debug)]
pub struct Aside {
    pub moved: Vec<(PathBuf, PathBuf)>,
    pub intent: Option<OutputsIntent>,
}

impl Aside {
    /// The repair failed: the outputs go back, damaged as they may be.
    pub fn put_back(self) {
        if let Some(i) = self.intent {
            i.abandon(&self.moved);
        }
    }
}

enum Prepared {
    /// Another process holds an output's lock.
    Busy,
    Claim(Claim),
}

impl Registry {
    pub fn new(store: Arc<LocalStore>) -> Self {
        Self {
            store,
            registrations: Arc::default(),
            roots_by_work: false,
        }
    }

    /// The temporary roots taken for a piece of work end with it (see
    /// [`crate::ScheduleOptions::roots_by_work`]).
    pub fn with_roots_by_work(mut self, on: bool) -> Self {
        self.roots_by_work = on;
        self
    }

    /// A hold on the roots a piece of work is about to take, when they end with it.
    pub fn hold_roots(&self) -> Option<ferrix_store::temproots::RootsHold> {
        self.roots_by_work.then(|| self.store.hold_temp_roots())
    }

    pub fn store(&self) -> &Arc<LocalStore> {
        &self.store
    }

    pub fn registrations(&self) -> &Arc<Registrations> {
        &self.registrations
    }

    /// Claim `job`'s outputs (and `extra` paths it builds at, for a check): lock them in
    /// sorted order, check validity again, add temp roots, record the intent. A few quick
    /// system calls, made here, unless another process holds a lock: then on a blocking
    /// thread that waits for it.
    pub async fn claim(
        self: &Arc<Self>,
        job: &Arc<Job>,
        extra: Vec<StorePath>,
    ) -> Result<Claim, BuildFailure> {
        let drv = self.store.print(&job.drv_path);
        match self.prepare(job, &extra, false)? {
            Prepared::Claim(c) => Ok(c),
            Prepared::Busy => {
                let (this, job) = (self.clone(), job.clone());
                let waited = tokio::task::spawn_blocking(move || this.prepare(&job, &extra, true))
                    .await
                    .map_err(|e| {
                        BuildFailure::new(
                            drv.clone(),
                            FailureKind::Io {
                                what: "waiting for the output locks".into(),
                                source: std::io::Error::other(e),
                            },
                        )
                    })??;
                match waited {
                    Prepared::Claim(c) => Ok(c),
                    // Waiting for the locks never finds them busy.
                    Prepared::Busy => unreachable!("a blocking lock is never busy"),
                }
            }
        }
    }

    fn prepare(
        &self,
        job: &Job,
        extra: &[StorePath],
        wait: bool,
    ) -> Result<Prepared, BuildFailure> {
        let store = &self.store;
        let d = store.print(&job.drv_path);
        let store_err = BuildFailure::store(&d);
        let mut paths: Vec<StorePath> = job.outputs.values().cloned().collect();
        paths.sort();
        paths.dedup();
        let mut locks: Vec<StoreLock> = Vec::new();
        for p in &paths {
            match store.lock_path(p, wait).map_err(store_err)? {
                Some(l) => locks.push(l),
                None if !wait => return Ok(Prepared::Busy),
                None => {
                    return Err(store_err(StoreError::Format(format!(
                        "the lock of '{}' could not be taken",
                        store.print(p)
                    ))))
                }
            }
        }
        let valid = store.valid_among(paths.iter()).map_err(store_err)?;
        let all_valid = valid.len() == paths.len();
        match job.mode {
            BuildMode::Normal if all_valid => return Ok(Prepared::Claim(Claim::Valid)),
            BuildMode::Check if !all_valid => {
                return Err(BuildFailure::new(d.clone(), FailureKind::CannotCheck))
            }
            _ => {}
        }
        // A repair builds where the outputs are: the valid ones (damaged, maybe) are moved
        // aside first, and back should the build fail. Recorded before they are made, so
        // that recovery removes them.
        let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut aside_intent = None;
        if job.mode == BuildMode::Repair {
            let present: Vec<&StorePath> = paths
                .iter()
                .filter(|p| valid.contains(*p))
                .filter(|p| fs::symlink_metadata(store.real_path(p)).is_ok())
                .collect();
            let names = present
                .iter()
                .map(|_| store.fresh_entry("ferrix-repair-aside"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(store_err)?;
            if !names.is_empty() {
                store.add_temp_roots(&names).map_err(store_err)?;
                aside_intent = Some(store.begin_outputs(&[], &names).map_err(store_err)?);
            }
            for (p, aside) in present.into_iter().zip(&names) {
                let (real, to) = (store.real_path(p), store.real_path(aside));
                fs::rename(&real, &to).map_err(|source| {
                    BuildFailure::new(
                        d.clone(),
                        FailureKind::Io {
                            what: format!("moving '{}' aside to repair it", real.display()),
                            source,
                        },
                    )
                })?;
                moved.push((to, real));
            }
        }
        // The outputs too: a collector must not take them while they are invalid.
        let roots = std::iter::once(&job.drv_path)
            .chain(job.outputs.values())
            .chain(extra);
        store.add_temp_roots(roots).map_err(store_err)?;
        // What the outputs may refer to; in the sandbox, all the builder sees of the store.
        let closure = self
            .registrations
            .closure(store, job.input_roots.iter().cloned())
            .map_err(store_err)?;
        // A check registers nothing: the valid outputs are not touched.
        let outputs = if job.mode == BuildMode::Check {
            Vec::new()
        } else {
            paths.clone()
        };
        let intent = store.begin_outputs(&outputs, extra).map_err(store_err)?;
        Ok(Prepared::Claim(Claim::Ready(Box::new(Claimed {
            locks,
            closure,
            intent,
            aside: Aside {
                moved,
                intent: aside_intent,
            },
        }))))
    }

    /// Register a finished job's outputs in the background; dependents may start at once.
    pub fn hand_over(&self, mut h: Handover) {
        h.hold = self.hold_roots();
        self.registrations.start(self.store.clone(), h);
    }

    /// Wait for every registration started so far.
    pub async fn settle(&self) -> Vec<(StorePath, Arc<BuildFailure>)> {
        self.registrations.settle().await
    }
}
