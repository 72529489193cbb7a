//! `nix-daemon` (and `ferrix daemon`): this store behind the worker protocol, on the
//! daemon's socket for the users of this machine ([`socket`]), or with `--stdio` on
//! standard input and output for a master that reaches this machine over `ssh-ng://`,
//! trusting its caller, as Nix's does. Builds run on an Engine; their output
//! reaches the client as log messages while they run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferrix_daemon::worker::{IncomingPaths, Logger, WorkerHandler, WorkerOptions};
use ferrix_format::{Derivation, StorePath};
use ferrix_protocol::serve::BuildStatus;
use ferrix_protocol::worker::{
    BuildMode, BuildResult, CaMethod, ClientOptions, DerivedPath, GcAction, KeyedBuildResult,
    Missing, OutputsSpec, PathInfo, StderrMsg, UnkeyedPathInfo,
};
use ferrix_store::{LocalStore, StoreError, ValidPathInfo};

use crate::machine::Progress;
use crate::settings::Settings;

mod socket;

#[derive(Debug, thiserror::Error)]
enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
    #[error("{0}")]
    Failed(String),
    #[error("path '{0}' is not valid")]
    NotValid(String),
    #[error("{0} is not supported by this daemon yet")]
    Unsupported(&'static str),
    #[error("cannot add path '{0}' because it lacks a signature by a trusted key (and is not content-addressed); only users in 'trusted-users' may add such paths")]
    Unsigned(String),
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
        Ok(Handler {
            builds,
            store,
            options: None,
            check_sigs,
            keep_outputs: settings.conf.bool("keep-outputs", false)?,
            keep_derivations: settings.conf.bool("keep-derivations", true)?,
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

fn to_wire(i: ValidPathInfo) -> UnkeyedPathInfo {
    UnkeyedPathInfo {
        deriver: i.deriver,
        nar_hash: i.nar_hash,
        references: i.references,
        registration_time: u64::try_from(i.registration_time).unwrap_or(0),
        nar_size: i.nar_size,
        ultimate: i.ultimate,
        sigs: i.sigs,
        ca: i.ca,
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

/// The build activities a session's client is shown, as Nix's daemon shows them: one per
/// build, its log lines as its results, so a client shows the status line or the log lines
/// it shows for a local build.
#[derive(Default)]
struct Activities {
    open: BTreeMap<StorePath, u64>,
}

/// Activity ids unique in this process, as Nix makes them: the pid above, a count below.
fn next_activity() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    (u64::from(std::process::id()) << 32) + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Activities {
    /// What the client is sent for `p`, if anything.
    fn message(&mut self, store: &LocalStore, p: Progress) -> Option<StderrMsg> {
        use ferrix_protocol::worker::stderr::{activity, result_type, verbosity};
        use ferrix_protocol::worker::Field;
        Some(match p {
            Progress::Started(drv, machine) => {
                let id = next_activity();
                let printed = store.print(&drv);
                let text = match &machine {
                    Some(m) => format!("building '{printed}' on '{m}'"),
                    None => format!("building '{printed}'"),
                };
                self.open.insert(drv, id);
                StderrMsg::StartActivity {
                    id,
                    level: verbosity::INFO,
                    kind: activity::BUILD,
                    text,
                    fields: vec![
                        Field::Str(printed),
                        Field::Str(machine.unwrap_or_default()),
                        Field::Int(1),
                        Field::Int(1),
                    ],
                    parent: 0,
                }
            }
            Progress::Line(drv, line) => match self.open.get(&drv) {
                Some(&id) => StderrMsg::Result {
                    id,
                    kind: result_type::BUILD_LOG_LINE,
                    fields: vec![Field::Str(line)],
                },
                None => StderrMsg::Next(format!("{line}\n")),
            },
            Progress::Ended(drv) => StderrMsg::StopActivity(self.open.remove(&drv)?),
            Progress::Warning(w) => StderrMsg::Next(format!("warning: {w}\n")),
        })
    }
}

impl Handler<'_> {
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

    fn wanted(&self, targets: &[DerivedPath]) -> Result<Vec<ferrix_build::Wanted>, DaemonError> {
        let mut wanted = Vec::new();
        for t in targets {
            match t {
                DerivedPath::Opaque(p) => {
                    if !self.store.is_valid_path(p)? {
                        return Err(DaemonError::NotValid(self.store.print(p)));
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
        Ok(wanted)
    }
}

impl WorkerHandler for Handler<'_> {
    type Error = DaemonError;

    fn set_options(
        &mut self,
        options: &ClientOptions,
        _log: &mut dyn Logger,
    ) -> Result<(), DaemonError> {
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
        Ok(self.store.query_path_info(path)?.map(to_wire))
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
            info: to_wire(info),
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
        _hash_part: &str,
    ) -> Result<Option<StorePath>, DaemonError> {
        Err(DaemonError::Unsupported("QueryPathFromHashPart"))
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
        let wanted = self.wanted(targets)?;
        let plan = crate::machine::plan_wanted(&self.store, &wanted)?;
        Ok(Missing {
            will_build: plan.nodes.iter().map(|n| n.work.key().clone()).collect(),
            will_substitute: BTreeSet::new(),
            unknown: BTreeSet::new(),
            download_size: 0,
            nar_size: 0,
        })
    }

    fn add_temp_root(&mut self, path: &StorePath) -> Result<(), DaemonError> {
        Ok(self.store.add_temp_root(path)?)
    }

    fn add_indirect_root(&mut self, _link: &str) -> Result<(), DaemonError> {
        Err(DaemonError::Unsupported("AddIndirectRoot"))
    }

    fn add_perm_root(&mut self, _path: &StorePath, _root: &str) -> Result<String, DaemonError> {
        Err(DaemonError::Unsupported("AddPermRoot"))
    }

    fn ensure_path(&mut self, path: &StorePath, _log: &mut dyn Logger) -> Result<(), DaemonError> {
        // No substituters yet: a path is there or it cannot be made so.
        if self.store.is_valid_path(path)? {
            Ok(())
        } else {
            Err(DaemonError::NotValid(self.store.print(path)))
        }
    }

    fn build_paths(
        &mut self,
        targets: &[DerivedPath],
        _mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<(), DaemonError> {
        let wanted = self.wanted(targets)?;
        let plan = crate::machine::plan_wanted(&self.store, &wanted)?;
        let r = self.run(plan, log)?;
        match r.status {
            BuildStatus::Built | BuildStatus::AlreadyValid | BuildStatus::Substituted => Ok(()),
            _ => Err(DaemonError::Failed(r.error_msg)),
        }
    }

    fn build_paths_with_results(
        &mut self,
        targets: &[DerivedPath],
        _mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<Vec<KeyedBuildResult>, DaemonError> {
        let wanted = self.wanted(targets)?;
        let plan = crate::machine::plan_wanted(&self.store, &wanted)?;
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
        _path: &StorePath,
        _sigs: &BTreeSet<String>,
    ) -> Result<(), DaemonError> {
        Err(DaemonError::Unsupported("AddSignatures"))
    }

    fn add_build_log(&mut self, _drv: &StorePath, _data: &mut dyn Read) -> Result<(), DaemonError> {
        Err(DaemonError::Unsupported("AddBuildLog"))
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
