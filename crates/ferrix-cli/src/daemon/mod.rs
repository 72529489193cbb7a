//! `nix-daemon` (and `ferrix daemon`): this store behind the worker protocol, on the
//! daemon's socket for the users of this machine ([`socket`]), or with `--stdio` on
//! standard input and output for a master that reaches this machine over `ssh-ng://`,
//! trusting its caller, as Nix's does. Builds run on an Engine; their output
//! reaches the client as log messages while they run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferrix_daemon::worker::{
    IncomingPaths, Logger, SubstitutableInfo, WorkerHandler, WorkerOptions,
};
use ferrix_format::{Derivation, StorePath};
use ferrix_protocol::serve::BuildStatus;
use ferrix_protocol::worker::{
    BuildMode, BuildResult, CaMethod, ClientOptions, DerivedPath, GcAction, KeyedBuildResult,
    Missing, OutputsSpec, PathInfo, StderrMsg, UnkeyedPathInfo,
};
use ferrix_store::{LocalStore, StoreError, ValidPathInfo};

use crate::machine::Progress;
use crate::settings::Settings;

mod activities;
mod socket;

use activities::Activities;

#[derive(Debug, thiserror::Error)]
enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Shown with its whole chain, and no source of its own (a client hears the chain once).
    #[error("{0:#}")]
    Other(anyhow::Error),
    #[error("{0}")]
    Failed(String),
    #[error("path '{0}' is not valid")]
    NotValid(String),
    #[error("cannot add path '{0}' because it lacks a signature by a trusted key (and is not content-addressed); only users in 'trusted-users' may add such paths")]
    Unsigned(String),
}

impl From<anyhow::Error> for DaemonError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

struct Handler<'a> {
    store: Arc<LocalStore>,
    builds: crate::machine::Builds<'a>,
    options: Option<ClientOptions>,
    /// For an untrusted client: the keys a path it adds must be signed with, unless it is
    /// content-addressed (as Nix's daemon checks). A trusted client is taken at its word.
    check_sigs: Option<ferrix_store::binary_cache::Trust>,
    /// `keep-outputs` and `keep-derivations`, for collections.
    keep_outputs: bool,
    keep_derivations: bool,
    /// Where build logs go (for logs clients hand over).
    log: ferrix_build::log::LogSettings,
    /// The roots the client asked for (`AddTempRoot`), made at its first.
    /// The caches the client chose (`None`: the daemon's own).
    caches: Option<Vec<String>>,
    /// The daemon's `substituters`, and those with `trusted-substituters`: what an
    /// untrusted client may choose.
    own_caches: Vec<String>,
    trusted_caches: Vec<String>,
}

impl<'a> Handler<'a> {
    /// A session's handler: its builds notice `client` leaving; with `check_sigs`, the
    /// paths it adds must be signed by those keys or content-addressed.
    fn new(
        settings: &'a Settings,
        store: Arc<LocalStore>,
        builds: crate::machine::Builds<'a>,
        check_sigs: Option<ferrix_store::binary_cache::Trust>,
    ) -> Result<Self> {
        let own_caches = settings.substitution()?.urls;
        let log = ferrix_build::log::LogSettings {
            dir: store.config().log_dir.clone(),
            compress: settings.conf.bool("compress-build-log", true)?,
            keep: true,
        };
        Ok(Handler {
            builds,
            store,
            options: None,
            check_sigs,
            keep_outputs: settings.conf.bool("keep-outputs", false)?,
            keep_derivations: settings.conf.bool("keep-derivations", true)?,
            log,
            caches: None,
            trusted_caches: own_caches
                .iter()
                .cloned()
                .chain(settings.conf.list("trusted-substituters").iter().cloned())
                .collect(),
            own_caches,
        })
    }

    /// Refuse `info` from a client whose paths are checked, unless it is signed by a trusted
    /// key or content-addressed.
    fn check(&self, info: &ValidPathInfo) -> Result<(), DaemonError> {
        match &self.check_sigs {
            Some(trust) if !ferrix_store::trusted(self.store.store_dir(), info, trust) => {
                Err(DaemonError::Unsigned(self.store.print(&info.path)))
            }
            _ => Ok(()),
        }
    }
}

fn from_wire(p: &PathInfo) -> ValidPathInfo {
    ValidPathInfo {
        path: p.path.clone(),
        deriver: p.info.deriver.clone(),
        nar_hash: p.info.nar_hash,
        references: p.info.references.clone(),
        registration_time: ferrix_store::path_info::now(),
        nar_size: p.info.nar_size,
        ultimate: false,
        sigs: p.info.sigs.clone(),
        ca: p.info.ca,
    }
}

impl Handler<'_> {
    /// Build the derivers of `paths` again, replacing their outputs: those repaired.
    fn repair(
        &mut self,
        paths: &[StorePath],
        log: &mut dyn Logger,
    ) -> Result<BTreeSet<StorePath>, DaemonError> {
        let mut wanted: Vec<ferrix_build::Wanted> = Vec::new();
        let mut covered = BTreeSet::new();
        for p in paths {
            let deriver = self.store.query_path_info(p)?.and_then(|i| i.deriver);
            match deriver {
                Some(d) if self.store.is_valid_path(&d)? => {
                    if !wanted.iter().any(|(w, _)| *w == d) {
                        wanted.push((d, None));
                    }
                    covered.insert(p.clone());
                }
                _ => {
                    let _ = log.log(StderrMsg::Next(format!(
                        "error: cannot repair path '{}': it has no valid deriver to build again\n",
                        self.store.print(p)
                    )));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(BTreeSet::new());
        }
        let times = crate::build::build_times(&self.store);
        let plan = ferrix_build::plan_builds(
            &self.store,
            &wanted,
            &times,
            ferrix_build::BuildMode::Repair,
        )
        .map_err(|e| DaemonError::Other(anyhow::Error::new(e)))?;
        let r = self.run(plan, log)?;
        Ok(match r.status {
            BuildStatus::Built | BuildStatus::AlreadyValid => covered,
            _ => BTreeSet::new(),
        })
    }

    /// Build `plan` here, each line of output sent to the client as it comes.
    fn run(&mut self, plan: ferrix_build::Plan, log: &mut dyn Logger) -> Result<BuildResult> {
        let asked = crate::machine::Asked {
            max_silent_time: self.options.as_ref().map_or(0, |o| o.max_silent_time),
            timeout: 0,
            keep_failed: self.options.as_ref().is_some_and(|o| o.keep_failed),
        };
        let store = &self.store;
        let mut activities = Activities::default();
        let mut send = |p: Progress| {
            if let Some(msg) = activities.message(store, p) {
                let _ = log.log(msg);
            }
        };
        let r = self.builds.run(plan, asked, &mut send);
        // A build cancelled before it reported its end still has its activity open.
        for id in activities.open.into_values() {
            let _ = log.log(StderrMsg::StopActivity(id));
        }
        Ok(r?.into())
    }

    /// The caches this session's builds fetch from: the daemon's, or those the client chose
    /// (see [`Self::chosen_caches`]); none when it asked for no substitution.
    fn substituter(&self) -> Option<(Arc<dyn ferrix_build::substitute::Substituter>, bool)> {
        let wanted = self.options.as_ref().is_none_or(|o| o.use_substitutes);
        if !wanted {
            return None;
        }
        self.builds.substituter(self.caches.as_deref())
    }

    /// The caches a client names in its options (`substituters`, `extra-substituters`),
    /// as Nix's daemon takes them: all of them from a trusted client; from another, those
    /// in the daemon's `substituters` or `trusted-substituters` (with or without a final
    /// `/`), each other one refused with a warning. `None`: the daemon's own.
    fn chosen_caches(&self, options: &ClientOptions, log: &mut dyn Logger) -> Option<Vec<String>> {
        let (set, extra) = (
            options
                .overrides
                .get("substituters")
                .or_else(|| options.overrides.get("binary-caches")),
            options
                .overrides
                .get("extra-substituters")
                .or_else(|| options.overrides.get("extra-binary-caches")),
        );
        if set.is_none() && extra.is_none() {
            return None;
        }
        let mut take = |value: &str| -> Vec<String> {
            let mut out = Vec::new();
            for url in value.split_whitespace() {
                let slashed = format!("{url}/");
                if self.check_sigs.is_none() || self.trusted_caches.iter().any(|t| t == url) {
                    out.push(url.to_owned());
                } else if !url.ends_with('/') && self.trusted_caches.contains(&slashed) {
                    out.push(slashed);
                } else {
                    let _ = log.log(StderrMsg::Next(format!(
                        "warning: ignoring untrusted substituter '{url}', you are not a trusted user (it is not in 'trusted-substituters')\n"
                    )));
                }
            }
            out
        };
        let mut urls = match set {
            Some(v) => take(v),
            None => self.own_caches.clone(),
        };
        if let Some(v) = extra {
            for u in take(v) {
                if !urls.contains(&u) {
                    urls.push(u);
                }
            }
        }
        Some(urls)
    }

    /// The plan realising `targets`: derivations built (or their outputs fetched), paths
    /// fetched when they are not valid. A path nobody can fetch is not valid here.
    fn plan(
        &self,
        targets: &[DerivedPath],
        mode: BuildMode,
    ) -> Result<ferrix_build::Plan, DaemonError> {
        let (wanted, paths) = self.wanted(targets)?;
        let subst = self.substituter();
        if subst.is_none() {
            if let Some(p) = paths.first() {
                return Err(DaemonError::NotValid(self.store.print(p)));
            }
        }
        let mode = match mode {
            BuildMode::Normal => ferrix_build::BuildMode::Normal,
            BuildMode::Repair => ferrix_build::BuildMode::Repair,
            BuildMode::Check => ferrix_build::BuildMode::Check,
        };
        let plan = crate::machine::plan_substituting(
            &self.store,
            &wanted,
            &paths,
            mode,
            subst.as_ref().map(|(s, a)| (&**s, *a)),
        )?;
        let fetched: BTreeSet<&StorePath> = plan
            .nodes
            .iter()
            .filter_map(|n| n.work.fetch())
            .map(|f| &f.path)
            .collect();
        if let Some(p) = paths.iter().find(|p| !fetched.contains(p)) {
            return Err(DaemonError::NotValid(self.store.print(p)));
        }
        Ok(plan)
    }

    /// The derivations of `targets`, and the paths that are not valid.
    fn wanted(
        &self,
        targets: &[DerivedPath],
    ) -> Result<(Vec<ferrix_build::Wanted>, Vec<StorePath>), DaemonError> {
        let mut wanted = Vec::new();
        let mut paths = Vec::new();
        for t in targets {
            match t {
                DerivedPath::Opaque(p) => {
                    if !self.store.is_valid_path(p)? {
                        paths.push(p.clone());
                    }
                }
                DerivedPath::Built { drv_path, outputs } => {
                    let names = match outputs {
                        OutputsSpec::All => None,
                        OutputsSpec::Names(n) => Some(n.clone()),
                    };
                    wanted.push((drv_path.clone(), names));
                }
            }
        }
        Ok((wanted, paths))
    }
}

impl WorkerHandler for Handler<'_> {
    type Error = DaemonError;

    fn set_options(
        &mut self,
        options: &ClientOptions,
        log: &mut dyn Logger,
    ) -> Result<(), DaemonError> {
        self.caches = self.chosen_caches(options, log);
        self.options = Some(options.clone());
        Ok(())
    }

    fn is_valid_path(&mut self, path: &StorePath) -> Result<bool, DaemonError> {
        Ok(self.store.is_valid_path(path)?)
    }

    fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        _substitute: bool,
        _log: &mut dyn Logger,
    ) -> Result<BTreeSet<StorePath>, DaemonError> {
        Ok(self.store.valid_among(paths.iter())?.into_iter().collect())
    }

    fn query_path_info(
        &mut self,
        path: &StorePath,
    ) -> Result<Option<UnkeyedPathInfo>, DaemonError> {
        Ok(self
            .store
            .query_path_info(path)?
            .map(ValidPathInfo::to_unkeyed))
    }

    fn query_referrers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>, DaemonError> {
        Ok(self.store.referrers(path)?)
    }

    fn add_to_store(
        &mut self,
        name: &str,
        method: CaMethod,
        refs: &BTreeSet<StorePath>,
        _repair: bool,
        data: &mut dyn Read,
        _log: &mut dyn Logger,
    ) -> Result<PathInfo, DaemonError> {
        let info = match method {
            CaMethod::Text => {
                let mut text = Vec::new();
                data.read_to_end(&mut text)
                    .map_err(|e| DaemonError::Other(anyhow::Error::new(e)))?;
                let p = self.store.add_text(name, &text, refs)?;
                self.store.path_info(&p)?
            }
            CaMethod::Fixed { method, algo } => {
                self.store.add_ca_dump(name, method, algo, refs, data)?
            }
        };
        let path = info.path.clone();
        Ok(PathInfo {
            path,
            info: info.to_unkeyed(),
        })
    }

    fn add_text_to_store(
        &mut self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, DaemonError> {
        Ok(self.store.add_text(name, text.as_bytes(), refs)?)
    }

    fn find_roots(&mut self, censor: bool) -> Result<Vec<(String, StorePath)>, DaemonError> {
        let roots = ferrix_store::gc::find_roots(&self.store, true)?;
        Ok(roots
            .into_iter()
            .flat_map(|(p, links)| {
                links.into_iter().map(move |l| {
                    // Runtime roots (`{pid …}`, `{temp …}`) say which processes use what:
                    // not for an untrusted client, as with Nix.
                    let l = if censor && l.starts_with('{') {
                        "{censored}".to_owned()
                    } else {
                        l
                    };
                    (l, p.clone())
                })
            })
            .collect())
    }

    fn collect_garbage(
        &mut self,
        action: GcAction,
        paths: &BTreeSet<StorePath>,
        max_freed: Option<u64>,
        _log: &mut dyn Logger,
    ) -> Result<(Vec<StorePath>, u64), DaemonError> {
        use ferrix_store::gc::GcAction as A;
        let mut opts = ferrix_store::gc::GcOptions::new(match action {
            GcAction::ReturnLive => A::ReturnLive,
            GcAction::ReturnDead => A::ReturnDead,
            GcAction::DeleteDead => A::DeleteDead,
            GcAction::DeleteSpecific => A::DeleteSpecific,
        });
        opts.paths = paths.clone();
        opts.max_freed = max_freed;
        opts.keep_outputs = self.keep_outputs;
        opts.keep_derivations = self.keep_derivations;
        let r = ferrix_store::gc::collect_garbage(&self.store, &opts)?;
        Ok((r.paths, r.bytes_freed))
    }

    fn query_valid_derivers(
        &mut self,
        path: &StorePath,
    ) -> Result<BTreeSet<StorePath>, DaemonError> {
        Ok(self.store.valid_derivers(path)?)
    }

    fn query_all_valid_paths(&mut self) -> Result<BTreeSet<StorePath>, DaemonError> {
        Ok(self.store.all_valid_paths()?.into_iter().collect())
    }

    fn query_path_from_hash_part(
        &mut self,
        hash_part: &str,
    ) -> Result<Option<StorePath>, DaemonError> {
        Ok(self.store.path_from_hash_part(hash_part)?)
    }

    fn query_derivation_output_map(
        &mut self,
        drv_path: &StorePath,
    ) -> Result<BTreeMap<String, Option<StorePath>>, DaemonError> {
        let drv = ferrix_store::drv::read_derivation(&self.store, drv_path)?;
        Ok(drv
            .outputs
            .iter()
            .map(|(n, o)| (n.clone(), o.path().cloned()))
            .collect())
    }

    fn query_missing(&mut self, targets: &[DerivedPath]) -> Result<Missing, DaemonError> {
        let plan = self.plan(targets, BuildMode::Normal)?;
        let fetches: Vec<_> = plan.nodes.iter().filter_map(|n| n.work.fetch()).collect();
        Ok(Missing {
            will_build: plan
                .nodes
                .iter()
                .filter_map(|n| n.work.job())
                .map(|j| j.drv_path.clone())
                .collect(),
            will_substitute: fetches.iter().map(|f| f.path.clone()).collect(),
            unknown: BTreeSet::new(),
            download_size: fetches.iter().filter_map(|f| f.download_size).sum(),
            nar_size: fetches.iter().map(|f| f.nar_size).sum(),
        })
    }

    fn add_temp_root(&mut self, path: &StorePath) -> Result<(), DaemonError> {
        // The session's own (each connection's thread serves in a session of its own, see
        // `socket::serve`): they end with it, whatever other sessions do.
        Ok(self.store.add_temp_root(path)?)
    }

    fn add_indirect_root(&mut self, link: &str) -> Result<(), DaemonError> {
        Ok(ferrix_store::gc::add_indirect_root(
            &self.store,
            std::path::Path::new(link),
        )?)
    }

    fn add_perm_root(&mut self, path: &StorePath, root: &str) -> Result<String, DaemonError> {
        let root = std::path::Path::new(root);
        if !root.is_absolute() {
            return Err(DaemonError::Failed(format!(
                "the root '{}' is not an absolute path",
                root.display()
            )));
        }
        let made = ferrix_store::gc::add_perm_root(&self.store, path, root)?;
        Ok(made.to_string_lossy().into_owned())
    }

    fn ensure_path(&mut self, path: &StorePath, log: &mut dyn Logger) -> Result<(), DaemonError> {
        if self.store.is_valid_path(path)? {
            return Ok(());
        }
        let plan = self.plan(&[DerivedPath::Opaque(path.clone())], BuildMode::Normal)?;
        let r = self.run(plan, log)?;
        match r.status {
            BuildStatus::Built | BuildStatus::AlreadyValid | BuildStatus::Substituted => Ok(()),
            _ => Err(DaemonError::Failed(r.error_msg)),
        }
    }

    fn build_paths(
        &mut self,
        targets: &[DerivedPath],
        mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<(), DaemonError> {
        let plan = self.plan(targets, mode)?;
        let r = self.run(plan, log)?;
        match r.status {
            BuildStatus::Built | BuildStatus::AlreadyValid | BuildStatus::Substituted => Ok(()),
            _ => Err(DaemonError::Failed(r.error_msg)),
        }
    }

    fn build_paths_with_results(
        &mut self,
        targets: &[DerivedPath],
        mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<Vec<KeyedBuildResult>, DaemonError> {
        let plan = self.plan(targets, mode)?;
        let r = self.run(plan, log)?;
        Ok(targets
            .iter()
            .map(|t| KeyedBuildResult {
                path: t.clone(),
                result: r.clone(),
            })
            .collect())
    }

    fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &Derivation,
        _mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<BuildResult, DaemonError> {
        Ok(
            match crate::machine::plan_sent(&self.store, drv_path, drv)? {
                Ok(plan) => self.run(plan, log)?,
                Err(why) => {
                    ferrix_protocol::serve::BuildResult::new(BuildStatus::MiscFailure, why).into()
                }
            },
        )
    }

    fn nar_from_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), DaemonError> {
        if !self.store.is_valid_path(path)? {
            return Err(DaemonError::NotValid(self.store.print(path)));
        }
        Ok(self.store.nar_from_path(path, out)?)
    }

    fn export_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), DaemonError> {
        let info = self.store.path_info(path)?;
        self.store.nar_from_path(path, &mut *out)?;
        let trailer = ferrix_store::export::trailer(self.store.store_dir(), &info);
        out.write_all(&trailer)
            .map_err(|e| DaemonError::Store(StoreError::ExportWrite(e)))
    }

    fn import_paths(
        &mut self,
        input: &mut dyn Read,
        _trusted: bool,
        _log: &mut dyn Logger,
    ) -> Result<Vec<StorePath>, DaemonError> {
        // Buffered: each read is a request to the client, which answers with what it has
        // and never past its stream's end, where the import stops reading.
        let input = std::io::BufReader::with_capacity(64 * 1024, input);
        // An export stream carries no signatures: an untrusted client may import only
        // what its trust takes without (see `check`).
        let accept = |info: &ValidPathInfo| self.check(info).is_ok();
        Ok(ferrix_store::export::import_checked(
            &self.store,
            input,
            &accept,
        )?)
    }

    fn add_to_store_nar(
        &mut self,
        info: &PathInfo,
        _repair: bool,
        _dont_check_sigs: bool,
        nar: &mut dyn Read,
        _log: &mut dyn Logger,
    ) -> Result<(), DaemonError> {
        let info = from_wire(info);
        self.check(&info)?;
        Ok(self.store.add_nar(&info, nar)?)
    }

    fn add_multiple_to_store(
        &mut self,
        _repair: bool,
        _dont_check_sigs: bool,
        paths: &mut IncomingPaths<'_>,
        _log: &mut dyn Logger,
    ) -> Result<(), DaemonError> {
        while let Some((info, mut nar)) = paths
            .next_path()
            .map_err(|e| DaemonError::Other(anyhow::Error::new(e)))?
        {
            let info = from_wire(&info);
            self.check(&info)?;
            self.store.add_nar(&info, &mut nar)?;
        }
        Ok(())
    }

    fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: &BTreeSet<String>,
    ) -> Result<(), DaemonError> {
        Ok(self.store.add_signatures(path, sigs)?)
    }

    fn add_build_log(&mut self, drv: &StorePath, data: &mut dyn Read) -> Result<(), DaemonError> {
        ferrix_build::log::store_log(&self.log, drv, data).map_err(|e| {
            DaemonError::Other(anyhow::Error::new(e).context(format!(
                "keeping the build log of '{}'",
                self.store.print(drv)
            )))
        })
    }

    fn query_substitutable_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        _log: &mut dyn Logger,
    ) -> Result<BTreeSet<StorePath>, DaemonError> {
        let Some((subst, _)) = self.substituter() else {
            return Ok(BTreeSet::new());
        };
        let list: Vec<StorePath> = paths.iter().cloned().collect();
        Ok(subst.query(&list).into_keys().collect())
    }

    fn query_substitutable_path_infos(
        &mut self,
        paths: &BTreeMap<StorePath, Option<ferrix_format::ContentAddress>>,
        _log: &mut dyn Logger,
    ) -> Result<BTreeMap<StorePath, SubstitutableInfo>, DaemonError> {
        let Some((subst, _)) = self.substituter() else {
            return Ok(BTreeMap::new());
        };
        let list: Vec<StorePath> = paths.keys().cloned().collect();
        Ok(subst
            .query(&list)
            .into_iter()
            .map(|(p, s)| {
                let info = SubstitutableInfo {
                    deriver: None,
                    references: s.references.clone(),
                    download_size: s.download_size.unwrap_or(0),
                    nar_size: s.nar_size,
                };
                (p, info)
            })
            .collect())
    }

    fn optimise_store(&mut self, log: &mut dyn Logger) -> Result<(), DaemonError> {
        struct Warnings<'a>(&'a mut dyn Logger);
        impl ferrix_store::optimise::OptimiseReporter for Warnings<'_> {
            fn skipped(&mut self, path: &std::path::Path, why: &str) {
                let _ = self.0.log(StderrMsg::Next(format!(
                    "warning: skipping '{}': {why}\n",
                    path.display()
                )));
            }
        }
        let stats = ferrix_store::optimise::optimise_store(&self.store, &mut Warnings(log))?;
        let _ = log.log(StderrMsg::Next(format!(
            "{:.2} MiB freed by hard-linking {} files\n",
            stats.bytes_freed as f64 / (1024.0 * 1024.0),
            stats.files_linked
        )));
        Ok(())
    }

    fn verify_store(
        &mut self,
        check_contents: bool,
        repair: bool,
        log: &mut dyn Logger,
    ) -> Result<bool, DaemonError> {
        use ferrix_store::verify::Problem;
        let problems = ferrix_store::verify::verify_store(&self.store, check_contents, None)?;
        let damaged: Vec<StorePath> = problems
            .iter()
            .filter_map(|p| match p {
                Problem::Modified { path, .. }
                | Problem::Missing {
                    path,
                    invalidated: false,
                } => Some(path.clone()),
                _ => None,
            })
            .collect();
        let mut repaired = BTreeSet::new();
        if repair && !damaged.is_empty() {
            repaired = self.repair(&damaged, log)?;
        }
        let mut errors = false;
        for p in &problems {
            let fatal = !matches!(
                p,
                Problem::Missing {
                    invalidated: true,
                    ..
                }
            );
            let path = match p {
                Problem::Missing { path, .. }
                | Problem::Modified { path, .. }
                | Problem::DanglingReference { path, .. } => path,
            };
            let line = if fatal && !repaired.contains(path) {
                errors = true;
                format!("error: {}\n", p.describe(&self.store))
            } else {
                format!("{}\n", p.describe(&self.store))
            };
            let _ = log.log(StderrMsg::Next(line));
        }
        Ok(errors)
    }
}

/// Serve the store on standard input and output until the client closes it.
pub fn serve_stdio(settings: &Settings, store: Arc<LocalStore>) -> Result<()> {
    let mut opts = WorkerOptions::new(store.store_dir().clone(), "2.8.0");
    // `--stdio` serves whoever runs it, as Nix's does.
    opts.trusted = true;
    let builds =
        crate::machine::Builds::new(settings, store.clone(), crate::machine::Client::Stdin);
    let mut h = Handler::new(settings, store, builds, None)?;
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    ferrix_daemon::worker::serve_worker(&mut h, stdin, stdout, &opts)
        .context("serving the store on standard input and output")?;
    Ok(())
}

/// Serve the store on the daemon's socket (the one systemd hands over, or
/// `NIX_DAEMON_SOCKET_PATH`, or the one in the state directory) until the process is stopped.
pub fn serve_socket(settings: &Settings, store: Arc<LocalStore>) -> Result<()> {
    let path = settings.daemon_socket("daemon");
    let env = |n: &str| std::env::var(n).ok();
    let activated = socket::inherited(env("LISTEN_PID").as_deref(), env("LISTEN_FDS").as_deref())?;
    socket::serve(settings, store, &path, activated)
}

/// `nix-daemon [--stdio] [--store URL] [--option NAME VALUE]`: the store on the daemon's
/// socket, or (`--stdio`) on standard input and output.
pub fn run(
    args: &[std::ffi::OsString],
    shell: &mut crate::shell::Shell,
) -> Result<std::process::ExitCode> {
    let mut stdio = false;
    let mut store_url: Option<String> = None;
    let mut options = Vec::new();
    let mut it = crate::legacy::ArgIter::new("nix-daemon", args.to_vec());
    while let Some(a) = it.next() {
        let flag = a.to_str().unwrap_or("");
        match it.common(
            flag,
            "Usage: nix-daemon [--stdio] [--store URL] [--option NAME VALUE]",
            shell,
        )? {
            crate::legacy::Common::Exit(code) => return Ok(code),
            crate::legacy::Common::Consumed => continue,
            crate::legacy::Common::Other => {}
        }
        match flag {
            "--stdio" => stdio = true,
            "--store" => store_url = Some(it.value(flag)?),
            "--option" => {
                let name = it.value(flag)?;
                let value = it.value(flag)?;
                options.push(crate::settings::CliSetting::option(name, value));
            }
            f => return Err(it.unknown(f)),
        }
    }
    let settings = Settings::load(store_url.as_deref(), &options, shell)?;
    let store = Arc::new(settings.open_store()?);
    if stdio {
        serve_stdio(&settings, store)?;
    } else {
        serve_socket(&settings, store)?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}
