//! Realising derivations from the command line: build settings from `nix.conf` and flags,
//! the run itself on a tokio runtime with Ctrl-C handling, and what the user sees.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferrix_build::FailureKind;
use ferrix_build::{
    BuildFailure, Built, LocalExecutor, LocalSettings, NodeResult, Outcome, Plan, Reporter,
    ScheduleOptions, Wanted,
};
use ferrix_format::StorePath;
use ferrix_store::LocalStore;

use crate::conf::{MaxJobs, SandboxMode};
use crate::settings::Settings;

/// Build flags shared by `nix-store -r` and `ferrix build`; each maps to a `nix.conf` option,
/// so that a flag wins over the file.
pub fn build_flag(flag: &str) -> Option<(&'static str, bool)> {
    // (option name, whether the flag takes a value)
    Some(match flag {
        "-j" | "--max-jobs" => ("max-jobs", true),
        "--cores" => ("cores", true),
        "-k" | "--keep-going" => ("keep-going", false),
        "-K" | "--keep-failed" => ("keep-failed", false),
        "--max-silent-time" => ("max-silent-time", true),
        "--timeout" => ("timeout", true),
        "--builders" => ("builders", true),
        "--fallback" => ("fallback", false),
        _ => return None,
    })
}

fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A number of seconds, 0 (or less) for none.
fn seconds(settings: &Settings, name: &str) -> Option<Duration> {
    let n = settings.conf.int(name)?;
    (n > 0).then(|| Duration::from_secs(n.unsigned_abs()))
}

/// The local build settings: Nix's defaults (`max-jobs` 1, `cores` = all CPUs), then
/// `nix.conf`, then flags (already folded into `settings.conf`, whose values were checked
/// when they were loaded).
/// The build users, when this process is root and `build-users-group` names a group: its
/// members, with the store directory made one they can create outputs in (as Nix keeps it).
/// A group that does not exist or has no members is an error, as in Nix.
fn build_users(
    settings: &Settings,
    store: &LocalStore,
) -> Result<Option<ferrix_build::users::BuildUsers>> {
    let Some(name) = settings
        .conf
        .get("build-users-group")
        .filter(|g| !g.is_empty())
    else {
        return Ok(None);
    };
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let group = nix::unistd::Group::from_name(name)
        .with_context(|| format!("looking up the group '{name}'"))?
        .with_context(|| {
            format!("the group '{name}' specified in 'build-users-group' does not exist")
        })?;
    let mut uids = Vec::new();
    for member in &group.mem {
        let user = nix::unistd::User::from_name(member)
            .with_context(|| format!("looking up the user '{member}'"))?
            .with_context(|| {
                format!("the member '{member}' of the group '{name}' does not exist")
            })?;
        // Never root, whatever the group says.
        if !user.uid.is_root() {
            uids.push(user.uid.as_raw());
        }
    }
    if uids.is_empty() {
        anyhow::bail!(
            "the group '{name}' specified in 'build-users-group' has no members (other than root)"
        );
    }
    uids.sort_unstable();
    let gid = group.gid.as_raw();
    let real = &store.config().real_store_dir;
    ferrix_build::users::prepare_store_dir(real, gid).with_context(|| {
        format!(
            "making the store directory '{}' writable by the build users",
            real.display()
        )
    })?;
    Ok(Some(ferrix_build::users::BuildUsers {
        group: name.to_owned(),
        gid,
        uids,
        lock_dir: store.config().state_dir.join("userpool"),
        killer: std::env::current_exe()
            .context("finding this program, to end build users' processes")?,
    }))
}

pub fn local_settings(
    settings: &Settings,
    store: &LocalStore,
) -> Result<(LocalSettings, ScheduleOptions)> {
    let conf = &settings.conf;
    let max_jobs = match conf.max_jobs() {
        None => 1,
        Some(MaxJobs::Auto) => cpus(),
        Some(MaxJobs::N(n)) => n as usize,
    };
    let cores = match conf.uint("cores") {
        None => cpus(),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    // Values for impureEnvVars: only the CLI reads the environment.
    let impure_env: BTreeMap<String, String> = std::env::vars().collect();
    let build_dir_base = std::env::var_os("TMPDIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    Ok((
        LocalSettings {
            max_jobs,
            cores,
            build_dir_base,
            keep_failed: conf.bool("keep-failed", false)?,
            log: ferrix_build::log::LogSettings {
                dir: store.config().log_dir.clone(),
                compress: conf.bool("compress-build-log", true)?,
                keep: conf.bool("keep-build-log", true)?,
            },
            max_silent_time: seconds(settings, "max-silent-time"),
            timeout: seconds(settings, "timeout"),
            impure_env,
            sandbox: sandbox_settings(settings, store)?,
            platforms: platforms(settings),
            system_features: system_features(settings),
            // Set by the Engine's host once it knows whether machines share the work.
            prepare_ahead: 0,
            reuse_build_dirs: true,
            fetch: settings.substitution()?.http,
            build_users: build_users(settings, store)?,
        },
        ScheduleOptions {
            keep_going: conf.bool("keep-going", false)?,
            fallback: conf.bool("fallback", false)?,
            roots_by_work: false,
        },
    ))
}

/// The platform Nix was built for, which `system` defaults to.
pub fn native_system() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// `system` and `extra-platforms` (Nix's default adds `i686-linux` on `x86_64-linux`).
pub fn platforms(settings: &Settings) -> BTreeSet<String> {
    let conf = &settings.conf;
    let system = conf
        .get("system")
        .map(str::to_owned)
        .unwrap_or_else(native_system);
    let mut out: BTreeSet<String> = match conf.value("extra-platforms") {
        Some(_) => conf.list("extra-platforms").iter().cloned().collect(),
        None if system == "x86_64-linux" => ["i686-linux".to_owned()].into(),
        None => BTreeSet::new(),
    };
    out.insert(system);
    out
}

/// `system-features`; Nix's default on Linux is `nixos-test benchmark big-parallel`, and
/// `kvm` where `/dev/kvm` can be opened for writing.
pub fn system_features(settings: &Settings) -> BTreeSet<String> {
    let conf = &settings.conf;
    if conf.value("system-features").is_some() {
        return conf.list("system-features").iter().cloned().collect();
    }
    let mut f: BTreeSet<String> = ["nixos-test", "benchmark", "big-parallel"]
        .map(str::to_owned)
        .into();
    if rustix::fs::access(
        "/dev/kvm",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_ok()
    {
        f.insert("kvm".into());
    }
    f
}

/// `sandbox` (`true`, `false`, `relaxed`) and `sandbox-paths` (`PATH` or `INSIDE=OUTSIDE`,
/// a trailing `?` for paths that may be missing).
fn sandbox_settings(
    settings: &Settings,
    store: &LocalStore,
) -> Result<Option<ferrix_build::SandboxSettings>> {
    // A store kept elsewhere than its paths say can only be built in through the sandbox,
    // which mounts it at its paths: Nix turns the sandbox on for it, whatever the setting.
    let cfg = store.config();
    let diverted = std::path::Path::new(cfg.store_dir.as_str()) != cfg.real_store_dir;
    // Nix's defaults: on, and falling back to building without it where the kernel cannot.
    let relaxed = match settings.conf.sandbox().unwrap_or(SandboxMode::On) {
        SandboxMode::On => false,
        SandboxMode::Relaxed => true,
        SandboxMode::Off if diverted => false,
        SandboxMode::Off => return Ok(None),
    };
    if let Some(why) = sandbox_unavailable() {
        if settings.conf.bool("sandbox-fallback", true)? {
            let _ = writeln!(
                std::io::stderr(),
                "warning: the build sandbox is not available here ({why}); building without it"
            );
            return Ok(None);
        }
        bail!("the build sandbox is not available here ({why}), and 'sandbox-fallback' is off");
    }
    let mut paths = Vec::new();
    for spec in settings.conf.list("sandbox-paths") {
        let (spec, optional) = match spec.strip_suffix('?') {
            Some(s) => (s, true),
            None => (spec.as_str(), false),
        };
        let (inside, outside) = spec.split_once('=').unwrap_or((spec, spec));
        if optional && std::fs::symlink_metadata(outside).is_err() {
            continue;
        }
        paths.push((inside.to_owned(), PathBuf::from(outside)));
    }
    Ok(Some(ferrix_build::SandboxSettings {
        helper: std::env::current_exe().context("finding this program, to run the sandbox")?,
        paths,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        relaxed,
    }))
}

/// Why user namespaces (which the sandbox needs) cannot be made, if they cannot.
fn sandbox_unavailable() -> Option<String> {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    if !std::path::Path::new("/proc/self/ns/user").exists() {
        return Some("the kernel has no user namespaces".into());
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user.max_user_namespaces is 0".into());
    }
    let root = rustix::process::geteuid().is_root();
    if !root && read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Some("kernel.unprivileged_userns_clone is 0".into());
    }
    None
}

/// `drv!out,dev`, `drv^out` or a plain drv path: what to build.
pub fn parse_installable(store: &LocalStore, arg: &str) -> Result<Wanted> {
    let (path, outputs) = match arg.rsplit_once(['!', '^']) {
        Some((p, o)) if p.ends_with(".drv") => (p, Some(o)),
        _ => (arg, None),
    };
    let drv = crate::ops::resolve(store, path)?;
    if !drv.is_derivation() {
        bail!("'{arg}' is not a derivation");
    }
    let outputs = match outputs {
        None | Some("*") => None,
        Some(o) => Some(o.split(',').map(str::to_owned).collect::<BTreeSet<_>>()),
    };
    Ok((drv, outputs))
}

/// How progress reaches the user: plain lines on stderr, as Nix prints them when stderr is
/// not a terminal (`building '…'...`), with the builders' output when `logs` is set.
pub struct LineReporter {
    store_dir: ferrix_format::StoreDir,
    logs: bool,
    /// Derivations built again to compare (`--check`).
    checked: BTreeSet<StorePath>,
    out: Mutex<()>,
}

impl LineReporter {
    pub fn new(store: &LocalStore, logs: bool, checked: BTreeSet<StorePath>) -> Self {
        Self {
            store_dir: store.store_dir().clone(),
            logs,
            checked,
            out: Mutex::new(()),
        }
    }

    fn line(&self, s: &str) {
        let _g = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "{s}");
    }
}

impl Reporter for LineReporter {
    fn started(&self, drv: &StorePath) {
        let what = if self.checked.contains(drv) {
            "checking outputs of"
        } else {
            "building"
        };
        self.line(&format!("{what} '{}'...", self.store_dir.display(drv)));
    }
    fn fetching(&self, path: &StorePath, from: &str) {
        self.line(&format!(
            "copying path '{}' from '{from}'...",
            self.store_dir.display(path)
        ));
    }
    fn started_on(&self, drv: &StorePath, machine: &str) {
        self.line(&format!(
            "building '{}' on '{machine}'...",
            self.store_dir.display(drv)
        ));
    }
    fn log_line(&self, _drv: &StorePath, line: &str) {
        if self.logs {
            self.line(line);
        }
    }
    fn warn(&self, msg: &str) {
        self.line(&format!("warning: {msg}"));
    }
    fn finished(&self, _drv: &StorePath, _result: Result<Built, &BuildFailure>) {}
}

/// How a run goes: `dry_run` only says what would be built; `mode` is how the wanted
/// derivations are built (normally, `--check`, `--repair`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunMode {
    pub logs: bool,
    pub dry_run: bool,
    /// `--check` or `--repair` for the wanted derivations.
    pub mode: ferrix_build::BuildMode,
}

/// The substituter of a run, when substitution is on and there are caches.
pub fn substituter(
    settings: &Settings,
    store: &Arc<LocalStore>,
) -> Result<Option<Arc<ferrix_build::substitute::CacheSubstituter>>> {
    Ok(cache_settings(settings)?
        .filter(|c| !c.urls.is_empty())
        .map(|c| cache_substituter(store, c)))
}

/// How caches are read, from the settings; `None` when substitution is off.
pub fn cache_settings(
    settings: &Settings,
) -> Result<Option<ferrix_build::substitute::CacheSettings>> {
    let s = settings.substitution()?;
    if !s.enabled {
        return Ok(None);
    }
    Ok(Some(ferrix_build::substitute::CacheSettings {
        urls: s.urls,
        trust: s.trust,
        http: s.http,
        max_jobs: s.max_jobs,
        fallback: s.fallback,
        disk_cache: s.disk_cache,
        ttl: s.ttl,
    }))
}

/// A substituter reading the caches of `c`.
pub fn cache_substituter(
    store: &Arc<LocalStore>,
    c: ferrix_build::substitute::CacheSettings,
) -> Arc<ferrix_build::substitute::CacheSubstituter> {
    // Warnings about caches go out as plain lines, whatever shows the builds.
    let warn: Arc<dyn Reporter + Send + Sync> =
        Arc::new(LineReporter::new(store, false, BTreeSet::new()));
    Arc::new(ferrix_build::substitute::CacheSubstituter::new(
        store.clone(),
        c,
        warn,
    ))
}

/// Say what a plan will do, as Nix does: the derivations built, the paths fetched.
fn announce(store: &LocalStore, plan: &Plan, dry_run: bool, shell: &mut crate::shell::Shell) {
    let what = if dry_run { "would be" } else { "will be" };
    let builds: Vec<&StorePath> = plan
        .nodes
        .iter()
        .filter_map(|n| n.work.job().map(|j| &j.drv_path))
        .collect();
    let fetches: Vec<&ferrix_build::substitute::Substitution> = plan
        .nodes
        .iter()
        .filter_map(|n| match &n.work {
            ferrix_build::Work::Fetch(f) => Some(&**f),
            _ => None,
        })
        .collect();
    if !builds.is_empty() {
        let n = builds.len();
        // Nix's wording: "this derivation" alone, "these N derivations" for more.
        shell.note(if n == 1 {
            format!("this derivation {what} built:")
        } else {
            format!("these {n} derivations {what} built:")
        });
        for d in builds {
            shell.note(format!("  {}", store.print(d)));
        }
    }
    if !fetches.is_empty() {
        let n = fetches.len();
        let download: u64 = fetches.iter().filter_map(|f| f.download_size).sum();
        let unpacked: u64 = fetches.iter().map(|f| f.nar_size).sum();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let head = if n == 1 {
            format!("this path {what} fetched")
        } else {
            format!("these {n} paths {what} fetched")
        };
        shell.note(format!(
            "{head} ({:.2} MiB download, {:.2} MiB unpacked):",
            mib(download),
            mib(unpacked)
        ));
        for f in fetches {
            shell.note(format!("  {}", store.print(&f.path)));
        }
    }
}

/// Plan and run a build. Outputs a cache has are fetched instead of built; with
/// `--fallback`, an output that could not be fetched is built by its derivation in the same
/// run (the Engine plans it then), and a path fetched only as a reference of others is left
/// out of a plan made again after the run. `paths` are wanted as they are (fetched when not
/// valid).
pub fn realise(
    settings: &Settings,
    store: Arc<LocalStore>,
    wanted: &[Wanted],
    paths: &[StorePath],
    mode: RunMode,
    shell: &mut crate::shell::Shell,
) -> Result<(Plan, Option<Outcome>)> {
    let RunMode {
        logs,
        dry_run,
        mode,
    } = mode;
    let times = build_times(&store);
    let subst = substituter(settings, &store)?;
    let always_allow = settings.substitution()?.always_allow;
    let mut exclude = BTreeSet::new();
    let mut runs = 0;
    loop {
        runs += 1;
        let s = subst.as_ref().map(|s| ferrix_build::plan::Substitutes {
            substituter: &**s,
            exclude: &exclude,
            always_allow,
        });
        let plan = ferrix_build::plan_with(&store, wanted, paths, &times, mode, s)?;
        if mode == ferrix_build::BuildMode::Normal {
            announce(&store, &plan, dry_run, shell);
        }
        if dry_run || plan.nodes.is_empty() {
            return Ok((plan, None));
        }
        let (plan, outcome) = run_plan(
            settings,
            &store,
            plan,
            logs,
            subst.clone().map(|s| s as _),
            build_times(&store),
        )?;
        // Fetches the Engine could not replace with a build (paths fetched as references)
        // are left out of another round, with `--fallback`.
        let failed_fetches: BTreeSet<StorePath> = plan
            .nodes
            .iter()
            .zip(&outcome.results)
            .filter_map(|(n, r)| match (&n.work, r) {
                // Only the fetch itself: one that waited for the build the Engine fell back
                // to failed with that build, which is not to be tried again.
                (ferrix_build::Work::Fetch(f), NodeResult::Failed(e))
                    if matches!(e.kind, FailureKind::Substitute { .. }) =>
                {
                    Some(f.path.clone())
                }
                _ => None,
            })
            .collect();
        let fallback = settings.conf.bool("fallback", false)?;
        if fallback && !failed_fetches.is_empty() && !outcome.interrupted && runs < 3 {
            for (n, r) in plan.nodes.iter().zip(&outcome.results) {
                if let (ferrix_build::Work::Fetch(f), NodeResult::Failed(e)) = (&n.work, r) {
                    if failed_fetches.contains(&f.path) {
                        shell.warn(format!("{}; building it instead", crate::render(&**e)));
                    }
                }
            }
            exclude.extend(failed_fetches);
            continue;
        }
        return Ok((plan, Some(outcome)));
    }
}

/// Run one plan on an Engine, with a status line on a terminal.
fn run_plan(
    settings: &Settings,
    store: &Arc<LocalStore>,
    plan: Plan,
    logs: bool,
    subst: Option<Arc<dyn ferrix_build::substitute::Substituter>>,
    times: ferrix_build::BuildTimes,
) -> Result<(Plan, Outcome)> {
    let (local, opts) = local_settings(settings, store)?;
    let checked: BTreeSet<StorePath> = plan
        .nodes
        .iter()
        .filter_map(|n| n.work.job())
        .filter(|j| j.mode == ferrix_build::BuildMode::Check)
        .map(|j| j.drv_path.clone())
        .collect();
    // A live status line on a terminal; plain lines otherwise, as Nix does.
    let status = (std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var("TERM").is_ok_and(|t| t != "dumb"))
    .then(|| {
        let mut totals = crate::progress::Totals::default();
        for n in &plan.nodes {
            match n.work.fetch() {
                Some(f) => {
                    totals.fetches += 1;
                    totals.fetch_bytes += f.nar_size;
                }
                None => totals.builds += 1,
            }
        }
        Arc::new(crate::progress::StatusReporter::new(
            store.store_dir().clone(),
            totals,
            logs,
            checked.clone(),
        ))
    });
    let reporter: Arc<dyn Reporter + Send + Sync> = match &status {
        Some(s) => s.clone(),
        None => Arc::new(LineReporter::new(store, logs, checked)),
    };
    let plan = Arc::new(plan);
    let host = EngineHost::start_with(settings, store, reporter, opts, local, times, subst)?;
    let outcome = host.run(&plan);
    host.finish();
    let plan = Arc::try_unwrap(plan).unwrap_or_else(|_| unreachable!("the scheduler has ended"));
    if let Some(s) = status {
        s.clear();
    }
    Ok((plan, outcome))
}

/// The build machines: `builders` (default `@<conf dir>/machines`, Nix's), files included
/// with `@`, a missing file ignored as Nix ignores it.
pub fn machines(settings: &Settings) -> Result<Vec<ferrix_build::remote::Machine>> {
    let spec = match settings.conf.get("builders") {
        Some(b) => b.to_owned(),
        None => format!(
            "@{}",
            crate::settings::conf_dir().join("machines").display()
        ),
    };
    let system = settings
        .conf
        .get("system")
        .map(str::to_owned)
        .unwrap_or_else(native_system);
    let mut read = |f: &str| std::fs::read_to_string(f).ok();
    Ok(ferrix_build::remote::parse_machines(
        &spec, &system, &mut read,
    )?)
}

/// The remembered build times of this store (what plans are prioritised by).
pub fn build_times(store: &LocalStore) -> ferrix_build::BuildTimes {
    ferrix_build::BuildTimes::open(&store.config().state_dir.join("ferrix/build-times.sqlite"))
}

/// Plans the build of a derivation whose fetched output could not be fetched (`--fallback`):
/// its inputs fetched where they can be, never what failed already.
#[derive(Debug)]
struct PlanFallback {
    store: Arc<LocalStore>,
    substituter: Arc<dyn ferrix_build::substitute::Substituter>,
    always_allow: bool,
}

impl ferrix_build::Fallback for PlanFallback {
    fn plan(
        &self,
        drv: &StorePath,
        exclude: &BTreeSet<StorePath>,
    ) -> Result<Plan, ferrix_build::PlanError> {
        let s = ferrix_build::plan::Substitutes {
            substituter: &*self.substituter,
            exclude,
            always_allow: self.always_allow,
        };
        ferrix_build::plan_with(
            &self.store,
            &[(drv.clone(), None)],
            &[],
            &build_times(&self.store),
            ferrix_build::BuildMode::Normal,
            Some(s),
        )
    }
}

/// An Engine with its runtime and executors (the local one, the remote machines, a build
/// hook), for one plan or many in turn (a machine serving a master keeps one per session,
/// so its sandbox places and connections serve every build).
pub struct EngineHost {
    runtime: tokio::runtime::Runtime,
    engine: ferrix_build::Engine,
    /// Turned true, it stops the Engine's builds cleanly (as the first Ctrl-C does).
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// The machines' ssh sockets are in it.
    _runtime_dir: Option<tempfile::TempDir>,
}

impl EngineHost {
    /// Start the Engine; Ctrl-C or SIGTERM stops what runs cleanly, a second one exits.
    pub fn start(
        settings: &Settings,
        store: &Arc<LocalStore>,
        reporter: Arc<dyn Reporter + Send + Sync>,
        opts: ScheduleOptions,
        local: LocalSettings,
        times: ferrix_build::BuildTimes,
    ) -> Result<Self> {
        Self::start_with(settings, store, reporter, opts, local, times, None)
    }

    /// [`Self::start`], fetching the plans' substitutes from `substituter`.
    pub fn start_with(
        settings: &Settings,
        store: &Arc<LocalStore>,
        reporter: Arc<dyn Reporter + Send + Sync>,
        opts: ScheduleOptions,
        mut local: LocalSettings,
        times: ferrix_build::BuildTimes,
        substituter: Option<Arc<dyn ferrix_build::substitute::Substituter>>,
    ) -> Result<Self> {
        let registry = Arc::new(
            ferrix_build::Registry::new(store.clone()).with_roots_by_work(opts.roots_by_work),
        );
        let mut executors: Vec<Arc<dyn ferrix_build::Executor>> = Vec::new();
        let machines = machines(settings)?;
        // Kept until the run ends: the machines' ssh sockets are in it.
        let mut _runtime_dir = None;
        if !machines.is_empty() {
            let runtime_dir = tempfile::Builder::new()
                .prefix("ferrix-ssh-")
                .tempdir()
                .context("making a directory for ssh sockets")?;
            let remote = ferrix_build::remote::RemoteSettings {
                machines,
                ssh: ferrix_store::ssh::SshConfig {
                    ssh_opts: std::env::var("NIX_SSHOPTS")
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                    runtime_dir: runtime_dir.path().to_owned(),
                    keepalive: 5,
                },
                max_silent_time: local.max_silent_time,
                timeout: local.timeout,
                log: local.log.clone(),
                backoff: Duration::from_secs(30),
                use_substitutes: settings.conf.bool("builders-use-substitutes", false)?,
            };
            let (ex, bad) = ferrix_build::remote::RemoteExecutor::new(
                registry.clone(),
                reporter.clone(),
                remote,
            );
            for (uri, why) in bad {
                reporter.warn(&format!("not using machine '{uri}': {why}"));
            }
            if !ex.is_empty() {
                executors.push(Arc::new(ex));
            }
            _runtime_dir = Some(runtime_dir);
        }
        // An external build hook goes first. Nix's own `build-remote` (the usual value of
        // `build-hook`) speaks Nix's protocol; the built-in machines above do its job.
        let hook = settings.conf.get("build-hook").filter(|h| {
            !h.is_empty() && std::path::Path::new(h).file_name() != Some("build-remote".as_ref())
        });
        // Alone, the local builds prepare the next jobs while builders run.
        if executors.is_empty() && hook.is_none() {
            local.prepare_ahead = local.max_jobs;
        }
        let (build_dir_base, log) = (local.build_dir_base.clone(), local.log.clone());
        executors.push(Arc::new(LocalExecutor::new(
            registry.clone(),
            local,
            reporter.clone(),
            Arc::new(Mutex::new(times)),
        )));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        if let Some(program) = hook {
            let _in_runtime = runtime.enter();
            let hook = ferrix_build::hook::HookExecutor::start(
                ferrix_build::hook::HookSettings {
                    program: PathBuf::from(program),
                    work_dir: build_dir_base.clone(),
                    log,
                },
                registry.clone(),
                reporter.clone(),
            )?;
            executors.insert(0, Arc::new(hook));
        }
        let store_dir = store.store_dir().clone();
        let fallback: Option<Arc<dyn ferrix_build::Fallback>> = match &substituter {
            Some(sub) if opts.fallback => Some(Arc::new(PlanFallback {
                store: store.clone(),
                substituter: sub.clone(),
                always_allow: settings.substitution()?.always_allow,
            })),
            _ => None,
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stop = Arc::new(tx);
        let engine = runtime.block_on(async {
            let tx = stop.clone();
            // The first Ctrl-C (or SIGTERM) stops the run cleanly; a second one exits at once.
            tokio::spawn(async move {
                wait_for_signal().await;
                let _ = tx.send(true);
                wait_for_signal().await;
                let _ = std::io::stderr().write_all(b"error: interrupted by the user\n");
                std::process::exit(130);
            });
            // The Engine's loop is a task on the worker threads, as the builds it spawns are:
            // a build's end wakes it there, not across threads.
            ferrix_build::Engine::start(ferrix_build::EngineSetup {
                executors,
                registry: Some(registry),
                reporter,
                substituter,
                options: opts,
                store_dir,
                interrupt: rx,
                fallback,
            })
        });
        Ok(Self {
            runtime,
            engine,
            stop,
            _runtime_dir,
        })
    }

    /// What stops this Engine's builds cleanly (and only this Engine's), from any thread.
    pub fn stopper(&self) -> Arc<tokio::sync::watch::Sender<bool>> {
        self.stop.clone()
    }

    /// Realise `plan`, waiting for its outcome.
    pub fn run(&self, plan: &Plan) -> Outcome {
        self.runtime.block_on(self.engine.submit(plan))
    }

    /// Hand `plan` to the Engine (from any thread); [`Self::wait`] for its outcome.
    pub fn submit(&self, plan: &Plan) -> ferrix_build::GoalHandle {
        self.engine.submit(plan)
    }

    /// Wait for a submitted goal's outcome.
    pub fn wait(&self, goal: ferrix_build::GoalHandle) -> Outcome {
        self.runtime.block_on(goal)
    }

    /// Nobody waits for goal `id` any more (see [`ferrix_build::Engine::abandon`]).
    pub fn abandon(&self, id: ferrix_build::GoalId) {
        self.engine.abandon(id);
    }

    /// Wait for what is still being registered, and stop.
    pub fn finish(self) {
        self.runtime.block_on(self.engine.shutdown());
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Repair `paths` by building their derivers again (`--repair`); without substituters that
/// is the only source. Returns the paths that are sound afterwards; those without a valid
/// deriver are reported and left as they are.
pub fn repair_paths(
    settings: &Settings,
    store: Arc<LocalStore>,
    paths: &[StorePath],
    shell: &mut crate::shell::Shell,
) -> Result<BTreeSet<StorePath>> {
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut covered = Vec::new();
    for p in paths {
        let deriver = store.query_path_info(p)?.and_then(|i| i.deriver);
        match deriver {
            Some(d) if store.is_valid_path(&d)? => {
                if !wanted.iter().any(|(w, _)| *w == d) {
                    wanted.push((d, None));
                }
                covered.push(p.clone());
            }
            _ => shell.error(format!(
                "cannot repair path '{}': it has no valid deriver to build again, and there are no substituters",
                store.print(p)
            )),
        }
    }
    if wanted.is_empty() {
        return Ok(BTreeSet::new());
    }
    let mode = RunMode {
        logs: true,
        dry_run: false,
        mode: ferrix_build::BuildMode::Repair,
    };
    let (plan, outcome) = realise(settings, store.clone(), &wanted, &[], mode, shell)?;
    if let Some(o) = &outcome {
        if !o.success() {
            report_failures(&store, &plan, o, shell);
        }
    }
    // Sound now: on disk with the contents its registration records.
    let problems = ferrix_store::verify::verify_store(&store, true, Some(&covered))?;
    Ok(covered
        .into_iter()
        .filter(|p| {
            !problems.iter().any(|x| match x {
                ferrix_store::verify::Problem::Missing { path, .. }
                | ferrix_store::verify::Problem::Modified { path, .. }
                | ferrix_store::verify::Problem::DanglingReference { path, .. } => path == p,
            })
        })
        .collect())
}

/// The next SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Report the failures of a run, Nix-style, with the end of the failed builds' logs.
pub fn report_failures(
    store: &LocalStore,
    plan: &Plan,
    outcome: &Outcome,
    shell: &mut crate::shell::Shell,
) {
    let log_dir = &store.config().log_dir;
    for (i, r) in outcome.results.iter().enumerate() {
        let NodeResult::Failed(f) = r else { continue };
        let f: &BuildFailure = f;
        // Past the plan's nodes: builds the Engine added in place of failed fetches.
        let key = match plan.nodes.get(i) {
            Some(node) => Some(node.work.key().clone()),
            None => store.parse_path(&f.drv).ok(),
        };
        // The failure and its causes, as the CLI words every error.
        let mut msg = crate::render(f);
        if matches!(
            f,
            BuildFailure {
                kind: FailureKind::ExitCode { .. },
                ..
            } | BuildFailure {
                kind: FailureKind::Signal { .. },
                ..
            }
        ) {
            let log = key
                .as_ref()
                .and_then(|k| ferrix_build::log::read_log(log_dir, k).ok().flatten());
            if let (Some(key), Some(log)) = (&key, log) {
                let text = String::from_utf8_lossy(&log);
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(10)..];
                if !tail.is_empty() {
                    msg += &format!(";\n       last {} log lines:", tail.len());
                    for l in tail {
                        msg += &format!("\n       > {l}");
                    }
                }
                msg += &format!(
                    "\n       For full logs, run 'nix-store -l {}'.",
                    store.print(key)
                );
            }
        }
        shell.error(msg);
    }
    if outcome.interrupted {
        shell.error("interrupted by the user");
    }
}

/// The output paths a wanted entry names.
pub fn wanted_outputs(store: &LocalStore, w: &Wanted) -> Result<BTreeMap<String, StorePath>> {
    let drv = ferrix_build::plan::read_drv(store, &w.0)?;
    let all = ferrix_build::plan::output_paths(&w.0, &drv, store)?;
    Ok(match &w.1 {
        None => all,
        Some(names) => all.into_iter().filter(|(n, _)| names.contains(n)).collect(),
    })
}

/// The build log of `p`: of the derivation itself, or of the derivation that built it.
pub fn read_log(store: &LocalStore, p: &StorePath) -> Result<Vec<u8>> {
    let deriver = if p.is_derivation() {
        None
    } else {
        store.query_path_info(p)?.and_then(|i| i.deriver)
    };
    log_of(store.store_dir(), &store.config().log_dir, p, deriver)
}

/// The build log of `p` (a derivation, or a path built by `deriver`), from `log_dir`.
pub fn log_of(
    sd: &ferrix_format::StoreDir,
    log_dir: &std::path::Path,
    p: &StorePath,
    deriver: Option<StorePath>,
) -> Result<Vec<u8>> {
    let drv = if p.is_derivation() {
        p.clone()
    } else {
        deriver.with_context(|| {
            format!(
                "path '{}' is not valid or has no known deriver",
                sd.display(p)
            )
        })?
    };
    ferrix_build::log::read_log(log_dir, &drv)
        .with_context(|| format!("reading the build log of '{}'", sd.display(&drv)))?
        .with_context(|| {
            format!(
                "build log of derivation '{}' is not available",
                sd.display(&drv)
            )
        })
}
