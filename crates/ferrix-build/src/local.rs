//! Building on this machine: the build directory, the sandbox place, the builder process;
//! its log is written by `log`, its outputs checked by `outputs`, `--check` compared by `check`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrix_format::{HashAlgo, StorePath};
use ferrix_store::LocalStore;

use crate::attrs::{hash_placeholder, rewrite, Attrs};
use crate::check::compare_outputs;
use crate::env::{build_dir_name, builder_env, EnvContext};
use crate::error::BuildFailure;
use crate::executor::{
    BuildFuture, BuildMode, Built, Cancel, Executor, Job, JobError, Offer, OfferContext,
    OfferFuture, Reporter,
};
use crate::export::{export_closure, path_info_json, registration};
use crate::log::{copy_log, LogState, LogWriter, LOG_GRACE};
use crate::outputs::check_outputs;
use crate::register::Handover;
use crate::registry::{Claim, Claimed, Registry};

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
    pub log_dir: PathBuf,
    /// `compress-build-log`.
    pub compress_log: bool,
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
    counter: AtomicU64,
    times: Arc<Mutex<crate::times::BuildTimes>>,
    registry: Arc<Registry>,
    /// Sandbox places not in use (see [`LocalExecutor::take_slot`]), with their hosts: these
    /// go before the places are removed.
    slots: Mutex<Vec<Slot>>,
    /// What removes every sandbox place when the executor goes (or recovery, if it dies).
    slot_intents: Mutex<Vec<ferrix_store::OutputsIntent>>,
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
        Self {
            store: registry.store().clone(),
            registry,
            settings,
            reporter,
            counter: AtomicU64::new(0),
            times,
            slots: Mutex::default(),
            slot_intents: Mutex::default(),
        }
    }
}

impl Executor for LocalExecutor {
    fn capacity(&self) -> usize {
        self.settings.max_jobs
    }

    fn is_local(&self) -> bool {
        true
    }

    fn could_build(&self, job: &Job) -> bool {
        self.settings.max_jobs > 0 && self.settings.can_build(job)
    }

    /// Always yes: the scheduler offers only what this machine can build, below `max-jobs`.
    fn offer(self: Arc<Self>, job: Arc<Job>, _ctx: OfferContext, cancel: Cancel) -> OfferFuture {
        let build: BuildFuture =
            Box::pin(async move { self.build_job(&job, cancel).await.map_err(JobError::from) });
        Box::pin(std::future::ready(Offer::Accept(build)))
    }
}

/// Run blocking store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    drv: &str,
    f: impl FnOnce() -> Result<T, BuildFailure> + Send + 'static,
) -> Result<T, BuildFailure> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(BuildFailure::Io {
            drv: drv.to_owned(),
            what: "a worker thread failed".into(),
            source: io::Error::other(e.to_string()),
        })
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
    build_dir: &'a std::path::Path,
    /// The sandbox place, when sandboxed.
    chroot: Option<&'a mut Slot>,
    /// The input closure.
    closure: &'a BTreeSet<StorePath>,
    /// Outputs built elsewhere than at their paths (a check outside the sandbox).
    scratch: &'a BTreeMap<String, StorePath>,
}

/// Outputs up to this size (single files) are checked without a trip to a blocking thread.
const SMALL_OUTPUT: u64 = 256 << 10;

/// A sandbox place (see [`LocalExecutor::take_slot`]) and the host that serves it, once a
/// build has started one.
#[derive(Debug)]
struct Slot {
    dir: PathBuf,
    host: Option<crate::sandbox_host::SandboxHost>,
}

impl LocalExecutor {
    async fn build_job(&self, job: &Arc<Job>, cancel: Cancel) -> Result<Built, BuildFailure> {
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
        self.reporter.started(&job.drv_path);

        let mut chroot = match sandboxed {
            true => Some(self.take_slot(&drv, &closure).await?),
            false => None,
        };
        // Where a sandboxed build leaves output `p`: in the sandbox's store directory.
        let in_slot = |slot: &Slot, p: &StorePath| slot.dir.join("store").join(p.to_string());
        let build_dir = match self.make_build_dir(job, &drv) {
            Ok(d) => d,
            Err(e) => {
                self.return_slot(chroot, job);
                return Err(e);
            }
        };
        let started = Instant::now();
        let result = self
            .run_builder(
                job,
                &drv,
                Site {
                    build_dir: &build_dir,
                    chroot: chroot.as_mut(),
                    closure: &closure,
                    scratch: &scratch,
                },
                cancel,
            )
            .await;
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
                    let (scratch, keep) = (scratch.clone(), self.settings.keep_failed);
                    blocking(&drv, move || {
                        compare_outputs(&store, &job2, &d, &found, &scratch, keep)
                    })
                    .await
                }
                Err(e) => Err(e),
            };
            self.return_slot(chroot, job);
            drop(intent); // deletes the scratch outputs
            if result.is_err() && self.settings.keep_failed {
                self.reporter.log_line(
                    &job.drv_path,
                    &format!("note: keeping build directory '{}'", build_dir.display()),
                );
            } else {
                let _ = ferrix_store::fsutil::delete_path(&build_dir);
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
                        result = Err(BuildFailure::Io {
                            drv: drv.clone(),
                            what: format!("moving output '{}' out of the sandbox", store.print(p)),
                            source,
                        });
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
                            build_dir: Some(build_dir.clone()),
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
        if result.is_err() && self.settings.keep_failed {
            self.reporter.log_line(
                &job.drv_path,
                &format!("note: keeping build directory '{}'", build_dir.display()),
            );
        } else if result.is_err() {
            let _ = ferrix_store::fsutil::delete_path(&build_dir);
        }
        result.map(|()| Built::Built)
    }

    /// A place for a sandboxed build, on the store's file system (outputs move out by
    /// rename): `root/`, where the builder's `/` is mounted (a fresh tmpfs: its skeleton of
    /// directories, devices and files costs no disk inodes), and `store/`, the builder's store
    /// directory, holding mount points for the inputs and the outputs it writes. Places are
    /// reused by later builds, whose inputs mostly overlap: a mount point made once serves
    /// them all (on a disk, creating inodes is what a sandbox costs most), and those a build
    /// must not see are removed before it starts.
    async fn take_slot(
        &self,
        drv: &str,
        closure: &BTreeSet<StorePath>,
    ) -> Result<Slot, BuildFailure> {
        let reused = self.slots.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let (reused, host) = match reused {
            Some(slot) => (Some(slot.dir), slot.host),
            None => (None, None),
        };
        let store = self.store.clone();
        let keep: BTreeSet<String> = closure.iter().map(|p| p.to_string()).collect();
        let d = drv.to_owned();
        let (dir, intent) = blocking(drv, move || {
            let io = |what: &'static str| {
                let d = d.clone();
                move |source| BuildFailure::Io {
                    drv: d,
                    what: what.into(),
                    source,
                }
            };
            let (dir, intent) = match reused {
                Some(dir) => (dir, None),
                None => {
                    let store_err = |source| BuildFailure::Store {
                        drv: d.clone(),
                        source,
                    };
                    let sp = store.fresh_entry("ferrix-sandbox").map_err(store_err)?;
                    store.add_temp_roots([&sp]).map_err(store_err)?;
                    let intent = store
                        .begin_outputs(&[], std::slice::from_ref(&sp))
                        .map_err(store_err)?;
                    let dir = store.real_path(&sp);
                    for sub in ["root", "store", "view"] {
                        fs::DirBuilder::new()
                            .recursive(true)
                            .create(dir.join(sub))
                            .map_err(io("creating the sandbox"))?;
                    }
                    (dir, Some(intent))
                }
            };
            for e in fs::read_dir(dir.join("store")).map_err(io("reading the sandbox"))? {
                let e = e.map_err(io("reading the sandbox"))?;
                if !keep.contains(&*e.file_name().to_string_lossy()) {
                    ferrix_store::fsutil::delete_path(&e.path())
                        .map_err(|e| io("cleaning the sandbox")(io::Error::other(e.to_string())))?;
                }
            }
            Ok((dir, intent))
        })
        .await?;
        if let Some(i) = intent {
            self.slot_intents
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(i);
        }
        Ok(Slot { dir, host })
    }

    /// Give a sandbox place back, without what the build left in it.
    fn return_slot(&self, slot: Option<Slot>, job: &Job) {
        let Some(slot) = slot else { return };
        for p in job.outputs.values() {
            let _ = ferrix_store::fsutil::delete_path(&slot.dir.join("store").join(p.to_string()));
        }
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot);
    }

    /// Whether `job` builds in the sandbox: with `sandbox = true` always (`__noChroot` is an
    /// error); with `relaxed` unless it is a fixed-output derivation or asks for
    /// `__noChroot`; on a store kept elsewhere than its paths say, always.
    fn use_sandbox(&self, job: &Job, drv: &str) -> Result<bool, BuildFailure> {
        let cfg = self.store.config();
        let diverted = std::path::Path::new(cfg.store_dir.as_str()) != cfg.real_store_dir;
        let Some(sb) = &self.settings.sandbox else {
            return Ok(false);
        };
        let no_chroot = Attrs::of(&job.drv)
            .map_err(|why| BuildFailure::Malformed {
                drv: drv.to_owned(),
                why,
            })?
            .flag("__noChroot");
        if !sb.relaxed {
            if no_chroot {
                return Err(BuildFailure::Malformed {
                    drv: drv.to_owned(),
                    why:
                        "it has '__noChroot' set, which is only allowed when 'sandbox' is 'relaxed'"
                            .into(),
                });
            }
            return Ok(true);
        }
        Ok(diverted || (!no_chroot && job.drv.fixed_output().is_none()))
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
            .map_err(|e| BuildFailure::Io {
                drv: self.store.print(&job.drv_path),
                what: "naming a scratch output".into(),
                source: io::Error::other(e.to_string()),
            })
    }

    /// Structured attributes as the builder gets them: with `outputs` (name to path) and
    /// each `exportReferencesGraph` entry replaced by the path info of that closure.
    fn structured_json(
        &self,
        attrs: &serde_json::Map<String, serde_json::Value>,
        job: &Job,
        closure: &BTreeSet<StorePath>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        use serde_json::Value;
        let mut json = attrs.clone();
        let outputs: serde_json::Map<String, Value> = job
            .outputs
            .iter()
            .map(|(name, p)| (name.clone(), Value::String(self.store.print(p))))
            .collect();
        json.insert("outputs".into(), Value::Object(outputs));
        if let Some(Value::Object(graphs)) = attrs.get("exportReferencesGraph") {
            for (key, roots) in graphs {
                let roots = roots
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| match r.as_str() {
                        Some(r) => self.store.parse_path(r).map_err(|e| e.to_string()),
                        None => Err(format!(
                            "exportReferencesGraph.{key} must be a list of store paths"
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let paths = export_closure(&self.store, &roots, closure)?;
                json.insert(key.clone(), path_info_json(&self.store, &paths)?);
            }
        }
        Ok(json)
    }

    /// `exportReferencesGraph = "name1 path1 name2 path2 …"`: write each closure into the
    /// build directory under its name.
    fn export_graphs(
        &self,
        env: &BTreeMap<String, String>,
        build_dir: &std::path::Path,
        closure: &BTreeSet<StorePath>,
    ) -> Result<(), String> {
        let Some(spec) = env.get("exportReferencesGraph") else {
            return Ok(());
        };
        let words: Vec<&str> = spec.split_ascii_whitespace().collect();
        if !words.len().is_multiple_of(2) {
            return Err(format!(
                "odd number of tokens in 'exportReferencesGraph': '{spec}'"
            ));
        }
        for pair in words.chunks(2) {
            let (name, path) = (pair[0], pair[1]);
            let mut chars = name.chars();
            let good = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !good {
                return Err(format!(
                    "invalid file name '{name}' in 'exportReferencesGraph'"
                ));
            }
            let root = self
                .store
                .store_dir()
                .parse_path_with_subpath(path)
                .map(|(p, _)| p)
                .map_err(|_| {
                    format!("'exportReferencesGraph' contains a non-store path '{path}'")
                })?;
            let paths = export_closure(&self.store, &[root], closure)?;
            let text = registration(&self.store, &paths)?;
            fs::write(build_dir.join(name), text).map_err(|e| format!("writing '{name}': {e}"))?;
        }
        Ok(())
    }

    fn make_build_dir(&self, job: &Job, drv: &str) -> Result<PathBuf, BuildFailure> {
        let io_err = |what: String| {
            let drv = drv.to_owned();
            move |source| BuildFailure::Io { drv, what, source }
        };
        let base = &self.settings.build_dir_base;
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let dir = build_dir_name(base, job.drv_path.name(), n);
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io_err(format!(
                        "creating build directory '{}'",
                        dir.display()
                    ))(e))
                }
            }
        }
    }

    /// Start the builder in its own process group, with stdout and stderr on one pipe that
    /// a thread copies into the log, and wait for it, for a timeout, for silence, or for
    /// cancellation. Whatever happens, its whole process group is gone afterwards.
    async fn run_builder(
        &self,
        job: &Job,
        drv: &str,
        site: Site<'_>,
        mut cancel: Cancel,
    ) -> Result<(), BuildFailure> {
        let Site {
            build_dir,
            chroot,
            closure,
            scratch,
        } = site;
        let s = &self.settings;
        let io_err = |what: &str| {
            let (drv, what) = (drv.to_owned(), what.to_owned());
            move |source| BuildFailure::Io { drv, what, source }
        };
        let top = match chroot {
            Some(_) => crate::sandbox::BUILD_DIR_IN_SANDBOX.to_owned(),
            None => build_dir.to_string_lossy().into_owned(),
        };
        let store_dir = self.store.store_dir().to_string();
        let mut rewrites: Vec<(String, String)> = job
            .outputs
            .iter()
            .map(|(name, p)| (hash_placeholder(name), self.store.print(p)))
            .collect();
        for (name, s) in scratch {
            rewrites.push((
                job.outputs[name].hash_part().to_owned(),
                s.hash_part().to_owned(),
            ));
        }
        let cx = EnvContext {
            store_dir: &store_dir,
            build_top: &top,
            cores: s.cores,
            impure: &s.impure_env,
            rewrites: &rewrites,
        };
        let malformed = |why: String| BuildFailure::Malformed {
            drv: drv.to_owned(),
            why,
        };
        let attrs = Attrs::of(&job.drv).map_err(malformed)?;
        let exports = match &attrs {
            Attrs::Env(env) => env.contains_key("exportReferencesGraph"),
            Attrs::Structured(map) => map.contains_key("exportReferencesGraph"),
        };
        if exports {
            // Path infos come from the database: inputs still being registered must be in.
            self.registry
                .registrations()
                .wait_for(closure.iter().cloned())
                .await
                .map_err(|input| BuildFailure::InputUnregistered {
                    drv: drv.to_owned(),
                    input: self.store.print(&input),
                })?;
        }
        let structured = match &attrs {
            Attrs::Structured(map) => {
                Some(self.structured_json(map, job, closure).map_err(malformed)?)
            }
            Attrs::Env(env) => {
                self.export_graphs(env, build_dir, closure)
                    .map_err(malformed)?;
                None
            }
        };
        let (env, files) =
            builder_env(&job.drv, &attrs, structured.as_ref(), &cx).map_err(malformed)?;
        for (name, contents) in files {
            fs::write(build_dir.join(&name), contents)
                .map_err(io_err("writing attribute files"))?;
        }
        let args: Vec<String> = job.drv.args.iter().map(|a| rewrite(a, &rewrites)).collect();
        let real_store = &self.store.config().real_store_dir;
        if chroot.is_none() && std::path::Path::new(&store_dir) != real_store.as_path() {
            // Outputs are written at their logical paths; only a sandbox can map those onto
            // a store kept elsewhere (a chroot store), as Nix does.
            return Err(BuildFailure::Spawn {
                drv: drv.to_owned(),
                builder: job.drv.builder.clone(),
                source: io::Error::other(format!(
                    "the store '{store_dir}' is kept in '{}': building there needs the sandbox (sandbox = true)",
                    real_store.display()
                )),
            });
        }
        if job.drv.builder.starts_with("builtin:") {
            return Err(BuildFailure::Spawn {
                drv: drv.to_owned(),
                builder: job.drv.builder.clone(),
                source: io::Error::other("built-in builders are not supported yet"),
            });
        }

        // The log file is made while the builder starts (the pipe holds what it writes
        // meanwhile): it is not on the way from one build to the next.
        let log_path = crate::log::log_path(&s.log_dir, &job.drv_path, s.compress_log);
        let (reader, writer) = io::pipe().map_err(io_err("creating a pipe"))?;
        let spawn_err = |source| BuildFailure::Spawn {
            drv: drv.to_owned(),
            builder: job.drv.builder.clone(),
            source,
        };
        let mut running = match (chroot, &s.sandbox) {
            (Some(slot), Some(sb)) => {
                let network = job.drv.fixed_output().is_some();
                let place = crate::sandbox::PlaceSpec {
                    root: slot.dir.join("root"),
                    store: slot.dir.join("store"),
                    view: slot.dir.join("view"),
                    real_store: real_store.clone(),
                    store_dir: store_dir.clone(),
                    extra: sb.paths.clone(),
                    network,
                    uid: sb.uid,
                    gid: sb.gid,
                };
                let build = crate::sandbox::BuildSpec {
                    builder: job.drv.builder.clone(),
                    args: args.clone(),
                    env: env.clone(),
                    build_dir: build_dir.to_owned(),
                    inputs: closure.iter().map(|p| p.to_string()).collect(),
                };
                if network {
                    // The host's network is not the place's: a helper of its own.
                    let (mut cmd, input) =
                        crate::sandbox::one_shot_command(&sb.helper, &place, &build)
                            .map_err(spawn_err)?;
                    cmd.stdin(Stdio::piped());
                    let mut child = spawn_process(cmd, writer).map_err(spawn_err)?;
                    if let Some(mut stdin) = child.stdin.take() {
                        use tokio::io::AsyncWriteExt;
                        stdin
                            .write_all(&input)
                            .await
                            .map_err(io_err("starting the sandbox"))?;
                    }
                    Running::Process(child)
                } else {
                    let mut host = match slot.host.take() {
                        Some(h) => h,
                        None => crate::sandbox_host::SandboxHost::spawn(&sb.helper, &place)
                            .await
                            .map_err(spawn_err)?,
                    };
                    host.start(&build, writer.into())
                        .await
                        .map_err(io_err("starting the sandbox"))?;
                    Running::Hosted { host, slot }
                }
            }
            _ => {
                let mut cmd = tokio::process::Command::new(&job.drv.builder);
                cmd.args(&args)
                    .env_clear()
                    .envs(&env)
                    .current_dir(build_dir)
                    .stdin(Stdio::null());
                Running::Process(spawn_process(cmd, writer).map_err(spawn_err)?)
            }
        };

        let state = Arc::new(Mutex::new(LogState {
            last_activity: Instant::now(),
        }));
        let (stop_log_tx, stop_log) = tokio::sync::oneshot::channel();
        let mut log_task = {
            let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into())
                .map_err(io_err("reading the builder's output"))?;
            let (state, reporter, drv_path) =
                (state.clone(), self.reporter.clone(), job.drv_path.clone());
            let compress = s.compress_log;
            tokio::spawn(async move {
                let log = LogWriter::create(&log_path, compress)?;
                copy_log(rx, log, &state, &*reporter, &drv_path, stop_log).await;
                Ok::<(), (&'static str, io::Error)>(())
            })
        };

        let started = Instant::now();
        let deadline = s.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let outcome: Result<std::process::ExitStatus, BuildFailure> = loop {
            tokio::select! {
                st = running.wait() => break st.map_err(io_err("waiting for the builder")),
                () = cancelled(&mut cancel) => {
                    break Err(BuildFailure::Interrupted { drv: drv.to_owned() });
                }
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                    if deadline.is_some() => {
                    break Err(BuildFailure::Timeout { drv: drv.to_owned(), after: started.elapsed() });
                }
                _ = tick.tick(), if s.max_silent_time.is_some() => {
                    let quiet = state.lock().unwrap_or_else(|p| p.into_inner()).last_activity.elapsed();
                    if s.max_silent_time.is_some_and(|m| quiet >= m) {
                        break Err(BuildFailure::Silent { drv: drv.to_owned(), after: quiet });
                    }
                }
            }
        };
        running.end(outcome.is_ok()).await;
        // The builder's process group is gone, but a process that left it (a new session,
        // a double fork) may still hold the log pipe open: its output is not waited for.
        let logged = match tokio::time::timeout(LOG_GRACE, &mut log_task).await {
            Ok(done) => done,
            Err(_) => {
                let _ = stop_log_tx.send(());
                log_task.await
            }
        };
        if let Ok(Err((what, source))) = logged {
            return Err(io_err(what)(source));
        }

        let status = outcome?;
        if status.success() {
            return Ok(());
        }
        use std::os::unix::process::ExitStatusExt;
        Err(match (status.code(), status.signal()) {
            (Some(code), _) => BuildFailure::ExitCode {
                drv: drv.to_owned(),
                code,
            },
            (None, Some(signal)) => BuildFailure::Signal {
                drv: drv.to_owned(),
                signal,
            },
            (None, None) => BuildFailure::ExitCode {
                drv: drv.to_owned(),
                code: -1,
            },
        })
    }
}

/// Start `cmd` in its own process group, its standard output and error on `out`.
fn spawn_process(
    mut cmd: tokio::process::Command,
    out: io::PipeWriter,
) -> io::Result<tokio::process::Child> {
    cmd.stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .kill_on_drop(true);
    // `cmd` holds copies of the pipe's write end: they go at the end of this call, so that
    // the log's reader sees the end of the output when the builder's processes are gone.
    cmd.spawn()
}

/// A builder running: a process of ours (its process group), or a build of a sandbox host.
enum Running<'a> {
    Process(tokio::process::Child),
    Hosted {
        host: crate::sandbox_host::SandboxHost,
        slot: &'a mut Slot,
    },
}

impl Running<'_> {
    /// The build's exit status. Cancel-safe.
    async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        match self {
            Running::Process(child) => child.wait().await,
            Running::Hosted { host, .. } => host.wait().await,
        }
    }

    /// Make sure that nothing of the build runs any more (`finished`: its status has been
    /// read). A host that served the build well goes back to its place for the next one.
    async fn end(self, finished: bool) {
        match self {
            Running::Process(mut child) => {
                // The builder's helpers may outlive it and hold the log pipe open: end them
                // all.
                if let Some(pg) = child
                    .id()
                    .and_then(|id| rustix::process::Pid::from_raw(id as i32))
                {
                    let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::KILL);
                }
                let _ = child.wait().await;
            }
            Running::Hosted { mut host, slot } => {
                // In the sandbox, the build's processes end with its process 1.
                let healthy = finished || (host.kill().await.is_ok() && host.wait().await.is_ok());
                if healthy {
                    slot.host = Some(host);
                }
            }
        }
    }
}
