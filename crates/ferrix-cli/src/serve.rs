//! `nix-store --serve [--write]`: this store behind the serve protocol, for a master that
//! reaches this machine over `ssh://`. Builds run on an Engine here; their logs go to
//! standard error, which ssh carries back to the master.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferrix_build::plan::Node;
use ferrix_build::FailureKind;
use ferrix_build::{BuildFailure, BuildMode, Job, Plan, Reporter};
use ferrix_daemon::serve::{ServeHandler, ServeOptions};
use ferrix_format::{DerivationOutput, StorePath};
use ferrix_protocol::serve::{
    AddToStoreNar, BuildResult, BuildSettings, BuildStatus, BuiltOutput, PathInfoEntry,
};
use ferrix_store::{LocalStore, StoreError, ValidPathInfo};

use crate::settings::Settings;

/// The handler: this store and the settings builds run with.
struct Handler<'a> {
    store: Arc<LocalStore>,
    settings: &'a Settings,
}

/// Builder output goes to standard error, unadorned: the master shows it as the build log.
struct StderrLog;

impl Reporter for StderrLog {
    fn log_line(&self, _drv: &StorePath, line: &str) {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "{line}");
    }
    fn warn(&self, msg: &str) {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "warning: {msg}");
    }
}

#[derive(Debug, thiserror::Error)]
enum ServeFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

fn result_of(outcome: &ferrix_build::Outcome, jobs: &[Arc<Job>]) -> BuildResult {
    if outcome.success() {
        let mut r = BuildResult::new(BuildStatus::Built, "");
        r.times_built = 1;
        for job in jobs {
            for (name, p) in &job.outputs {
                r.built_outputs.insert(
                    name.clone(),
                    BuiltOutput {
                        out_path: p.clone(),
                        signatures: BTreeSet::new(),
                    },
                );
            }
        }
        return r;
    }
    let failure: Option<&BuildFailure> = outcome.failures().next();
    let (status, msg) = match failure {
        Some(f) => {
            let status = match f {
                BuildFailure {
                    kind: FailureKind::Timeout { .. },
                    ..
                }
                | BuildFailure {
                    kind: FailureKind::Silent { .. },
                    ..
                } => BuildStatus::TimedOut,
                BuildFailure {
                    kind: FailureKind::DependencyFailed { .. },
                    ..
                } => BuildStatus::DependencyFailed,
                BuildFailure {
                    kind: FailureKind::HashMismatch { .. },
                    ..
                }
                | BuildFailure {
                    kind: FailureKind::MissingOutput { .. },
                    ..
                }
                | BuildFailure {
                    kind: FailureKind::BadReferences { .. },
                    ..
                } => BuildStatus::OutputRejected,
                BuildFailure {
                    kind: FailureKind::NotDeterministic { .. },
                    ..
                } => BuildStatus::NotDeterministic,
                BuildFailure {
                    kind: FailureKind::ExitCode { .. },
                    ..
                }
                | BuildFailure {
                    kind: FailureKind::Signal { .. },
                    ..
                } => BuildStatus::PermanentFailure,
                _ => BuildStatus::MiscFailure,
            };
            (status, crate::render(f))
        }
        None => (BuildStatus::MiscFailure, "interrupted".to_owned()),
    };
    BuildResult::new(status, msg)
}

impl Handler<'_> {
    fn run(
        &self,
        plan: Plan,
        settings: &BuildSettings,
        times: ferrix_build::BuildTimes,
    ) -> Result<BuildResult> {
        let jobs: Vec<Arc<Job>> = plan.nodes.iter().map(|n| n.job.clone()).collect();
        if plan.nodes.is_empty() {
            return Ok(BuildResult::new(BuildStatus::AlreadyValid, ""));
        }
        let (mut local, opts) = crate::build::local_settings(self.settings, &self.store)?;
        let secs = |n: u64| (n > 0).then(|| std::time::Duration::from_secs(n));
        if let Some(t) = secs(settings.max_silent_time) {
            local.max_silent_time = Some(t);
        }
        if let Some(t) = secs(settings.build_timeout) {
            local.timeout = Some(t);
        }
        local.keep_failed |= settings.keep_failed;
        // A machine builds what it is given: at least one job at a time.
        local.max_jobs = local.max_jobs.max(1);
        let outcome = crate::build::run_engine(
            self.settings,
            &self.store,
            Arc::new(plan),
            Arc::new(StderrLog),
            opts,
            local,
            times,
        )?;
        Ok(result_of(&outcome, &jobs))
    }
}

impl ServeHandler for Handler<'_> {
    type Error = ServeFailure;

    fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        lock: bool,
        _substitute: bool,
    ) -> Result<BTreeSet<StorePath>, ServeFailure> {
        if lock {
            self.store.add_temp_roots(paths)?;
        }
        Ok(self.store.valid_among(paths.iter())?.into_iter().collect())
    }

    fn query_path_infos(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<Vec<PathInfoEntry>, ServeFailure> {
        let mut out = Vec::new();
        for p in paths {
            if let Some(i) = self.store.query_path_info(p)? {
                out.push(PathInfoEntry {
                    path: i.path,
                    deriver: i.deriver,
                    references: i.references,
                    download_size: i.nar_size,
                    nar_size: i.nar_size,
                    nar_hash: Some(i.nar_hash),
                    ca: i.ca,
                    sigs: i.sigs,
                });
            }
        }
        Ok(out)
    }

    fn dump_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), ServeFailure> {
        Ok(self.store.nar_from_path(path, out)?)
    }

    fn import_paths(&mut self, input: &mut dyn Read) -> Result<(), ServeFailure> {
        ferrix_store::export::import_paths(&self.store, input)?;
        Ok(())
    }

    fn export_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        out: &mut dyn Write,
    ) -> Result<(), ServeFailure> {
        Ok(ferrix_store::export::export_paths(&self.store, paths, out)?)
    }

    fn build_paths(
        &mut self,
        paths: &[String],
        settings: &BuildSettings,
    ) -> Result<BuildResult, ServeFailure> {
        let mut wanted = Vec::new();
        for p in paths {
            wanted.push(crate::build::parse_installable(&self.store, p)?);
        }
        let times = crate::build::build_times(&self.store);
        let plan = ferrix_build::plan_builds(&self.store, &wanted, &times, BuildMode::Normal)
            .context("planning the build")?;
        Ok(self.run(plan, settings, times)?)
    }

    fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &ferrix_format::Derivation,
        settings: &BuildSettings,
    ) -> Result<BuildResult, ServeFailure> {
        // The master sends the derivation without its input derivations: their outputs are
        // among the input sources, which must be valid here (it copied them).
        let mut outputs = BTreeMap::new();
        for (name, o) in &drv.outputs {
            match o {
                DerivationOutput::InputAddressed(p) | DerivationOutput::CaFixed { path: p, .. } => {
                    outputs.insert(name.clone(), p.clone());
                }
                _ => {
                    return Ok(BuildResult::new(
                        BuildStatus::MiscFailure,
                        format!(
                            "derivation '{}': floating, deferred and impure outputs are not supported yet",
                            self.store.print(drv_path)
                        ),
                    ))
                }
            }
        }
        let valid = self.store.valid_among(drv.input_srcs.iter())?;
        if let Some(missing) = drv.input_srcs.iter().find(|p| !valid.contains(*p)) {
            return Ok(BuildResult::new(
                BuildStatus::MiscFailure,
                format!(
                    "input '{}' of '{}' is not valid on this machine",
                    self.store.print(missing),
                    self.store.print(drv_path)
                ),
            ));
        }
        let job = Job {
            drv_path: drv_path.clone(),
            drv: drv.clone(),
            outputs,
            input_roots: drv.input_srcs.clone(),
            mode: BuildMode::Normal,
        };
        let plan = Plan {
            store_dir: self.store.store_dir().clone(),
            nodes: vec![Node {
                job: Arc::new(job),
                deps: Vec::new(),
                dependents: Vec::new(),
                priority: 1.0,
            }],
        };
        Ok(self.run(plan, settings, crate::build::build_times(&self.store))?)
    }

    fn query_closure(
        &mut self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeSet<StorePath>, ServeFailure> {
        Ok(self
            .store
            .closure(paths.iter().cloned(), include_outputs, false)?)
    }

    fn add_to_store_nar(
        &mut self,
        info: &AddToStoreNar,
        nar: &mut dyn Read,
    ) -> Result<(), ServeFailure> {
        let vpi = ValidPathInfo {
            path: info.path.clone(),
            deriver: info.deriver.clone(),
            nar_hash: info.nar_hash,
            references: info.references.clone(),
            registration_time: ferrix_store::path_info::now(),
            nar_size: info.nar_size,
            ultimate: false,
            sigs: info.sigs.clone(),
            ca: info.ca,
        };
        Ok(self.store.add_nar(&vpi, nar)?)
    }
}

/// Serve the store on standard input and output until the master closes it.
pub fn serve(settings: &Settings, store: Arc<LocalStore>, write: bool) -> Result<()> {
    let mut opts = ServeOptions::new(store.store_dir().clone());
    opts.write = write;
    let mut h = Handler { store, settings };
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    ferrix_daemon::serve::serve(&mut h, stdin, stdout, &opts).context("serving the store")?;
    Ok(())
}
