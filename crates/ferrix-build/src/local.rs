//! Building on this machine: the build directory, the sandbox place, the builder process;
//! its log is written by `log`, its outputs checked by `outputs`, `--check` compared by `check`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::PathBuf;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrix_format::{HashAlgo, StorePath};
use ferrix_store::LocalStore;

use crate::attrs::{hash_placeholder, rewrite, Attrs};
use crate::check::compare_outputs;
use crate::env::{builder_env, EnvContext};
use crate::error::{BuildFailure, FailureKind};
use crate::executor::{
    BuildFuture, BuildMode, Built, Cancel, Executor, Job, JobError, Offer, OfferContext,
    OfferFuture, Reporter,
};
use crate::export::{export_closure, path_info_json, registration};
use crate::log::{copy_log, LogState, LogWriter, LOG_DRAIN_LIMIT, LOG_GRACE, LOG_STALL};
use crate::outputs::check_outputs;
use crate::register::Handover;
use crate::registry::{Claim, Claimed, Registry};

mod build_dirs;
mod inputs;
mod run;
mod slots;

pub use build_dirs::BuildDir;
use build_dirs::BuildDirs;

use slots::Slot;

/// Settings of local builds (the CLI fills them from `nix.conf`, the environment and flags).
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// `max-jobs`: builds at once.
    pub max_jobs: usize,
    /// `cores`: passed to builders as `NIX_BUILD_CORES`.
    pub cores: usize,
    /// Where build directories are made (`$TMPDIR` of the caller, as Nix does).
    pub build_dir_base: PathBuf,
    /// `--keep-failed`: keep the build directory of a failed build.
    pub keep_failed: bool,
    /// Where build logs go, and whether they are kept.
    pub log: crate::log::LogSettings,
    pub max_silent_time: Option<Duration>,
    pub timeout: Option<Duration>,
    /// Values for `impureEnvVars` of fixed-output derivations.
    pub impure_env: BTreeMap<String, String>,
    /// Build in the sandbox (`sandbox = true`); `None` runs builders directly.
    pub sandbox: Option<SandboxSettings>,
    /// `system` and `extra-platforms`: the platforms this machine builds for.
    pub platforms: BTreeSet<String>,
    /// `system-features`: what `requiredSystemFeatures` may ask of this machine.
    pub system_features: BTreeSet<String>,
    /// Jobs taken beyond `max_jobs`, claimed and prepared (locks, build directory, log
    /// file) while the builders run, so that a builder starts as soon as another ends. Zero
    /// when other executors share the work: a job must not wait here for a builder while a
    /// machine could take it.
    pub prepare_ahead: usize,
    /// Keep emptied build directories for later builds (see `local/build_dirs.rs`). Off
    /// where the process may be killed at any moment, as a machine's session is when its
    /// master ends: the kept ones would be left behind.
    pub reuse_build_dirs: bool,
    /// How `builtin:fetchurl` reaches servers.
    pub fetch: ferrix_store::binary_cache::HttpSettings,
    /// The users builders run as (when this process is root and `build-users-group` is
    /// set); `None`: as this process's user.
    pub build_users: Option<crate::users::BuildUsers>,
}

impl LocalSettings {
    /// Whether this machine can build `job` at all (Nix's `canBuildLocally`).
    pub fn can_build(&self, job: &Job) -> bool {
        (job.is_builtin() || self.platforms.contains(&job.drv.platform))
            && job
                .required_features()
                .iter()
                .all(|f| self.system_features.contains(f))
    }
}

/// How sandboxed builds are set up.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// The program that answers to `__build-child` and `__build-init` (ours).
    pub helper: PathBuf,
    /// `sandbox-paths`: (path inside, path on the host).
    pub paths: Vec<(String, PathBuf)>,
    /// The host uid and gid that the builder's ids map to (the caller's).
    pub uid: u32,
    pub gid: u32,
    /// `sandbox = relaxed`: fixed-output derivations and those with `__noChroot` build
    /// outside it.
    pub relaxed: bool,
}

/// Builds derivations on this machine, `max_jobs` at a time.
#[derive(Debug)]
pub struct LocalExecutor {
    store: Arc<LocalStore>,
    settings: LocalSettings,
    reporter: Arc<dyn Reporter + Send + Sync>,
    build_dirs: Arc<BuildDirs>,
    times: Arc<Mutex<crate::times::BuildTimes>>,
    registry: Arc<Registry>,
    /// Sandbox places not in use (see [`LocalExecutor::take_slot`]), with their hosts: these
    /// go before the places are removed.
    slots: Mutex<Vec<Slot>>,
    /// What removes every sandbox place when the executor goes (or recovery, if it dies).
    slot_intents: Mutex<Vec<ferrix_store::OutputsIntent>>,
    /// `max-jobs` builders run at once; with `prepare_ahead`, the executor takes more jobs
    /// than that, so the next ones are claimed and prepared while builders run.
    builders: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for dyn Reporter + Send + Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

impl LocalExecutor {
    /// `times` learns how long each successful build took; `registry` claims and registers
    /// the outputs (shared with the other executors of the Engine).
    pub fn new(
        registry: Arc<Registry>,
        settings: LocalSettings,
        reporter: Arc<dyn Reporter + Send + Sync>,
        times: Arc<Mutex<crate::times::BuildTimes>>,
    ) -> Self {
        let settings_max_jobs = settings.max_jobs;
        // As many as may be in use at once: builders running and jobs prepared ahead.
        let keep = if settings.reuse_build_dirs {
            settings_max_jobs + settings.prepare_ahead
        } else {
            0
        };
        let build_dirs = BuildDirs::new(settings.build_dir_base.clone(), keep);
        Self {
            store: registry.store().clone(),
            registry,
            settings,
            reporter,
            build_dirs,
            times,
            slots: Mutex::default(),
            slot_intents: Mutex::default(),
            builders: Arc::new(tokio::sync::Semaphore::new(settings_max_jobs)),
        }
    }
}

impl Executor for LocalExecutor {
    /// `max-jobs`, and the jobs prepared ahead when builders run (see `builders`).
    fn capacity(&self) -> usize {
        match self.settings.max_jobs {
            0 => 0,
            n => n + self.settings.prepare_ahead,
        }
    }

    fn is_local(&self) -> bool {
        true
    }

    fn could_build(&self, job: &Job) -> bool {
        self.settings.max_jobs > 0 && self.settings.can_build(job)
    }

    /// Yes while a builder is free (its turn is taken now, so no later job can take it
    /// first). Beyond that, only a build known to be short is taken, to be prepared ahead:
    /// a longer one would wait for a builder in arrival order, ahead of work that becomes
    /// more urgent meanwhile, so it is postponed (the scheduler asks again when a job ends).
    fn offer(self: Arc<Self>, job: Arc<Job>, _ctx: OfferContext, cancel: Cancel) -> OfferFuture {
        let permit = self.builders.clone().try_acquire_owned().ok();
        if permit.is_none() && !self.known_short(&job) {
            return Box::pin(std::future::ready(Offer::Postpone));
        }
        let build: BuildFuture = Box::pin(async move {
            self.build_job(&job, permit, cancel)
                .await
                .map_err(JobError::from)
        });
        Box::pin(std::future::ready(Offer::Accept(build)))
    }
}

/// A build this short (by its remembered times) may be prepared while all builders run.
const SHORT_BUILD: f64 = 0.05;

impl LocalExecutor {
    fn known_short(&self, job: &Job) -> bool {
        let name = ferrix_format::derivation::drv_name(&job.drv_path);
        self.times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|t| t <= SHORT_BUILD)
    }
}

/// Run blocking store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    drv: &str,
    f: impl FnOnce() -> Result<T, BuildFailure> + Send + 'static,
) -> Result<T, BuildFailure> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(BuildFailure::new(
            drv.to_owned(),
            FailureKind::Io {
                what: "a worker thread failed".into(),
                source: io::Error::other(e.to_string()),
            },
        ))
    })
}

/// Wait until `cancel` turns true (forever if nobody can cancel any more).
async fn cancelled(cancel: &mut Cancel) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Where a build happens and what it sees.
struct Site<'a> {
    /// Where its log goes.
    log: LogWriter,
    /// Its turn among the `max-jobs` builders, given back when the builder ends.
    permit: tokio::sync::OwnedSemaphorePermit,
    build_dir: &'a std::path::Path,
    /// The sandbox place, when sandboxed.
    chroot: Option<&'a mut Slot>,
    /// The input closure.
    closure: &'a BTreeSet<StorePath>,
    /// Outputs built elsewhere than at their paths (a check outside the sandbox).
    scratch: &'a BTreeMap<String, StorePath>,
    /// The build user the builder runs as, if any.
    user: Option<&'a crate::users::BuildUser>,
}

impl LocalExecutor {
    /// A build user for a build, when builds run as build users: the first free one, or,
    /// when all are busy, the first to become free (until the build is cancelled).
    async fn build_user(
        &self,
        drv: &str,
        mut cancel: Cancel,
    ) -> Result<Option<crate::users::BuildUser>, BuildFailure> {
        let Some(users) = &self.settings.build_users else {
            return Ok(None);
        };
        let mut said = false;
        loop {
            let got = users.try_acquire().map_err(|e| {
                BuildFailure::io(drv, format!("taking a user of the group '{}'", users.group))(e)
            })?;
            if let Some(u) = got {
                return Ok(Some(u));
            }
            if !said {
                said = true;
                self.reporter.warn(&format!(
                    "waiting for a free build user of the group '{}' to build '{drv}'",
                    users.group
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                () = cancelled(&mut cancel) => {
                    return Err(BuildFailure::new(drv.to_owned(), FailureKind::Interrupted));
                }
            }
        }
    }
}

/// Outputs up to this size (single files) are checked without a trip to a blocking thread.
const SMALL_OUTPUT: u64 = 256 << 10;

impl LocalExecutor {
    /// `permit`: the builder's turn, if the offer took one.
    async fn build_job(
        &self,
        job: &Arc<Job>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        cancel: Cancel,
    ) -> Result<Built, BuildFailure> {
        let store = self.store.clone();
        let drv = store.print(&job.drv_path);
        let mut paths: Vec<StorePath> = job.outputs.values().cloned().collect();
        paths.sort();
        paths.dedup();

        let sandboxed = self.use_sandbox(job, &drv)?;
        // A check outside the sandbox cannot write the valid outputs' paths: it builds at
        // other paths, as Nix does, with the outputs' hash parts rewritten to those.
        let checking = job.mode == BuildMode::Check;
        let scratch: BTreeMap<String, StorePath> = if checking && !sandboxed {
            job.outputs
                .iter()
                .map(|(name, p)| Ok((name.clone(), self.fallback_path(job, name, p)?)))
                .collect::<Result<_, BuildFailure>>()?
        } else {
            BTreeMap::new()
        };

        // The output locks, validity again (another process may have built them
        // meanwhile), temp roots, the input closure and the intent record.
        let extra: Vec<StorePath> = scratch.values().cloned().collect();
        let Claimed {
            locks,
            closure,
            intent,
            aside,
        } = match self.registry.claim(job, extra).await? {
            Claim::Valid => return Ok(Built::AlreadyValid),
            Claim::Ready(r) => *r,
        };
        let build_dir = self.make_build_dir(job, &drv)?;
        // The log file too is made before a builder may start: creating files is the slow
        // part of a small build on a disk, and it is done while other builders run.
        let s = &self.settings;
        let log_path = crate::log::log_path(&s.log.dir, &job.drv_path, s.log.compress);
        let log = match s.log.writer(&job.drv_path) {
            Ok(l) => l,
            Err((what, source)) => {
                build_dir.release();
                return Err(BuildFailure::io(&drv, what.to_owned())(source));
            }
        };
        // Interrupted while waiting: the claim, the empty build directory and log go.
        let mut waiting = cancel.clone();
        let permit = match permit {
            Some(p) => Some(p),
            None => tokio::select! {
                p = self.builders.clone().acquire_owned() => p.ok(),
                () = cancelled(&mut waiting) => None,
            },
        };
        let Some(permit) = permit else {
            log.discard(&log_path);
            build_dir.release();
            intent.abandon(&[]);
            aside.put_back();
            return Err(BuildFailure::new(drv.clone(), FailureKind::Interrupted));
        };
        // A build user of its own, when builds run as build users (waiting for one to be
        // free, as Nix does).
        let user = match self.build_user(&drv, cancel.clone()).await {
            Ok(u) => u,
            Err(e) => {
                log.discard(&log_path);
                build_dir.release();
                intent.abandon(&[]);
                aside.put_back();
                return Err(e);
            }
        };
        self.reporter.started(&job.drv_path);
        let mut chroot = match sandboxed {
            true => match self.take_slot(&drv, &closure).await {
                Ok(s) => Some(s),
                Err(e) => {
                    build_dir.release();
                    return Err(e);
                }
            },
            false => None,
        };
        // Where a sandboxed build leaves output `p`: in the sandbox's store directory.
        let in_slot = |slot: &Slot, p: &StorePath| slot.dir.join("store").join(p.to_string());
        let started = Instant::now();
        let result = self
            .run_builder(
                job,
                &drv,
                Site {
                    log,
                    permit,
                    build_dir: build_dir.path(),
                    chroot: chroot.as_mut(),
                    closure: &closure,
                    scratch: &scratch,
                    user: user.as_ref(),
                },
                cancel,
            )
            .await;
        // Whatever the builder left running (a daemon it started, processes that left its
        // group) ends before its user serves another build.
        let result = match (&user, &self.settings.build_users) {
            (Some(u), Some(users)) => {
                // The sandbox's host runs as the user too: it goes with the rest, and the
                // place gets a new one for its next build.
                if let Some(slot) = chroot.as_mut() {
                    slot.host = None;
                }
                match crate::users::kill_user(&users.killer, u).await {
                    Ok(()) => result,
                    Err(e) => result.and(Err(BuildFailure::io(
                        &drv,
                        "ending the build user's processes".to_owned(),
                    )(e))),
                }
            }
            _ => result,
        };

        if checking {
            let result = match result {
                Ok(()) => {
                    // Where the new outputs are: at their paths in the sandbox, or elsewhere.
                    let found: BTreeMap<String, PathBuf> = job
                        .outputs
                        .iter()
                        .map(|(name, p)| {
                            let at = match (&chroot, scratch.get(name)) {
                                (Some(root), _) => in_slot(root, p),
                                (None, Some(s)) => store.real_path(s),
                                (None, None) => store.real_path(p),
                            };
                            (name.clone(), at)
                        })
                        .collect();
                    let (store, job2, d) = (store.clone(), job.clone(), drv.clone());
                    let (scratch, keep) = (
                        scratch.clone(),
                        self.settings.keep_failed || job.limits.keep_failed,
                    );
                    blocking(&drv, move || {
                        compare_outputs(&store, &job2, &d, &found, &scratch, keep)
                    })
                    .await
                }
                Err(e) => Err(e),
            };
            self.return_slot(chroot, job);
            drop(intent); // deletes the scratch outputs
            if result.is_err() && (self.settings.keep_failed || job.limits.keep_failed) {
                self.keeping(job, build_dir);
            } else {
                build_dir.release();
            }
            return result.map(|()| Built::Checked);
        }
        let mut result = result;
        if let (Some(root), Ok(())) = (&chroot, &result) {
            // Outputs were written in the sandbox's store directory: move them to the store.
            for p in job.outputs.values() {
                let from = in_slot(root, p);
                if fs::symlink_metadata(&from).is_ok() {
                    let to = store.real_path(p);
                    if let Err(source) = fs::rename(&from, &to) {
                        result = Err(BuildFailure::new(
                            drv.clone(),
                            FailureKind::Io {
                                what: format!(
                                    "moving output '{}' out of the sandbox",
                                    store.print(p)
                                ),
                                source,
                            },
                        ));
                        break;
                    }
                }
            }
        }
        self.return_slot(chroot, job);
        if result.is_ok() {
            let name = ferrix_format::derivation::drv_name(&job.drv_path);
            self.times
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(name, started.elapsed().as_secs_f64());
        }
        // Handed over with the outputs when they are; otherwise ended below.
        let mut build_dir = Some(build_dir);
        let result = match result {
            Ok(()) => {
                let (store2, job2, d) = (store.clone(), job.clone(), drv.clone());
                let known = self.registry.registrations().snapshot();
                // Small outputs are checked here; reading big ones takes a blocking thread.
                let small = job.outputs.values().all(|p| {
                    fs::symlink_metadata(store.real_path(p))
                        .is_ok_and(|m| !m.is_dir() && m.len() <= SMALL_OUTPUT)
                });
                let checked = if small {
                    check_outputs(&store2, &job2, &d, closure, &known)
                } else {
                    blocking(&drv, move || {
                        check_outputs(&store2, &job2, &d, closure, &known)
                    })
                    .await
                };
                match checked {
                    Ok(infos) => {
                        // Dependents may start now; the outputs are synced and registered
                        // meanwhile, still locked.
                        self.registry.hand_over(Handover {
                            drv_path: job.drv_path.clone(),
                            drv: drv.clone(),
                            infos,
                            intent,
                            locks,
                            replaced: aside.intent,
                            // Removed in the background too, off the way to the
                            // next build.
                            build_dir: build_dir.take(),
                            hold: None,
                        });
                        Ok(())
                    }
                    Err(e) => {
                        intent.abandon(&[]); // deletes the outputs
                        aside.put_back();
                        Err(e)
                    }
                }
            }
            Err(e) => {
                intent.abandon(&[]); // deletes whatever the builder left at the outputs
                aside.put_back();
                Err(e)
            }
        };
        if let Some(dir) = build_dir {
            if result.is_err() && (self.settings.keep_failed || job.limits.keep_failed) {
                self.keeping(job, dir);
            } else {
                dir.release();
            }
        }
        result.map(|()| Built::Built)
    }

    fn keeping(&self, job: &Job, dir: BuildDir) {
        let path = dir.keep();
        self.reporter.log_line(
            &job.drv_path,
            &format!("note: keeping build directory '{}'", path.display()),
        );
    }

    /// Where a check outside the sandbox builds output `name`: Nix's fallback path.
    fn fallback_path(
        &self,
        job: &Job,
        name: &str,
        p: &StorePath,
    ) -> Result<StorePath, BuildFailure> {
        let kind = format!("rewrite:{}:name:{name}", job.drv_path);
        self.store
            .store_dir()
            .make_store_path(
                &kind,
                &ferrix_format::Hash::zero(HashAlgo::Sha256),
                p.name(),
            )
            .map_err(|e| {
                BuildFailure::new(
                    self.store.print(&job.drv_path),
                    FailureKind::Io {
                        what: "naming a scratch output".into(),
                        source: io::Error::other(e.to_string()),
                    },
                )
            })
    }
}
