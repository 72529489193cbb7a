//! Building what a master sends, for both ways a master reaches this machine
//! (`nix-store --serve` and `nix-daemon --stdio`): the plan for a derivation sent without
//! its input derivations, the run on an Engine with its log lines handed to the session as
//! they come, and the result in the protocols' terms.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{Context, Result};
use ferrix_build::plan::Node;
use ferrix_build::{BuildFailure, BuildMode, FailureKind, Job, Plan, Reporter, Wanted};
use ferrix_format::{Derivation, DerivationOutput, StorePath};
use ferrix_protocol::serve::{BuildResult, BuildStatus, BuiltOutput};
use ferrix_store::LocalStore;

use crate::settings::Settings;
use ferrix_build::substitute::Substituter;

mod shared;

pub use shared::SharedEngine;

/// What the master asks of a build besides the settings here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    /// Seconds, 0 for none.
    pub max_silent_time: u64,
    pub timeout: u64,
    pub keep_failed: bool,
}

/// The plan for `drv` as a master sends it: whole, without its input derivations, whose
/// outputs are among its input sources and must be valid here. `Err` is why it cannot be
/// built here (a failed result, not an error of the session).
pub fn plan_sent(
    store: &LocalStore,
    drv_path: &StorePath,
    drv: &Derivation,
) -> Result<Result<Plan, String>> {
    let mut outputs = BTreeMap::new();
    for (name, o) in &drv.outputs {
        match o {
            DerivationOutput::InputAddressed(p) | DerivationOutput::CaFixed { path: p, .. } => {
                outputs.insert(name.clone(), p.clone());
            }
            _ => {
                return Ok(Err(format!(
                    "derivation '{}': floating, deferred and impure outputs are not supported yet",
                    store.print(drv_path)
                )))
            }
        }
    }
    let valid = store.valid_among(drv.input_srcs.iter())?;
    if let Some(missing) = drv.input_srcs.iter().find(|p| !valid.contains(*p)) {
        return Ok(Err(format!(
            "input '{}' of '{}' is not valid on this machine",
            store.print(missing),
            store.print(drv_path)
        )));
    }
    let job = Job {
        drv_path: drv_path.clone(),
        drv: drv.clone(),
        outputs,
        input_roots: drv.input_srcs.clone(),
        mode: BuildMode::Normal,
        limits: Default::default(),
    };
    Ok(Ok(Plan {
        store_dir: store.store_dir().clone(),
        nodes: vec![Node {
            work: ferrix_build::Work::Build(Arc::new(job)),
            deps: Vec::new(),
            dependents: Vec::new(),
            priority: 1.0,
        }],
        built_by: Default::default(),
    }))
}

/// The plan for derivations in this store (`drv!outputs` or plain paths).
pub fn plan_wanted(store: &LocalStore, wanted: &[Wanted]) -> Result<Plan> {
    let times = crate::build::build_times(store);
    ferrix_build::plan_builds(store, wanted, &times, BuildMode::Normal)
        .context("planning the build")
}

/// The plan for derivations and `paths` (valid ones need nothing), fetching from
/// `substituter` what it has.
pub fn plan_substituting(
    store: &LocalStore,
    wanted: &[Wanted],
    paths: &[StorePath],
    mode: BuildMode,
    substituter: Option<(&dyn ferrix_build::substitute::Substituter, bool)>,
) -> Result<Plan> {
    let times = crate::build::build_times(store);
    let none = BTreeSet::new();
    let subst = substituter.map(|(s, always_allow)| ferrix_build::plan::Substitutes {
        substituter: s,
        exclude: &none,
        always_allow,
    });
    ferrix_build::plan_with(store, wanted, paths, &times, mode, subst).context("planning the build")
}

/// What a session hears of its builds while they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The build of a derivation started, here or on the machine named.
    Started(StorePath, Option<String>),
    /// The fetch of a path from the cache named started.
    Fetching(StorePath, String),
    /// A line of a builder's output.
    Line(StorePath, String),
    /// The build or fetch ended.
    Ended(StorePath),
    /// A warning (a machine lost, a build moved elsewhere).
    Warning(String),
}

type Listener = mpsc::Sender<Progress>;

/// Hands progress to the session's thread, while a build runs (an Engine of the session's
/// own).
#[derive(Default)]
struct ToSession(Arc<std::sync::Mutex<Option<Listener>>>);

impl ToSession {
    fn send(&self, p: Progress) {
        if let Some(tx) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(p);
        }
    }
}

impl Reporter for ToSession {
    fn fetching(&self, path: &StorePath, from: &str) {
        self.send(Progress::Fetching(path.clone(), from.to_owned()));
    }
    fn started(&self, drv: &StorePath) {
        self.send(Progress::Started(drv.clone(), None));
    }
    fn started_on(&self, drv: &StorePath, machine: &str) {
        self.send(Progress::Started(drv.clone(), Some(machine.to_owned())));
    }
    fn log_line(&self, drv: &StorePath, line: &str) {
        self.send(Progress::Line(drv.clone(), line.to_owned()));
    }
    fn finished(&self, drv: &StorePath, _: Result<ferrix_build::Built, &BuildFailure>) {
        self.send(Progress::Ended(drv.clone()));
    }
    fn warn(&self, msg: &str) {
        self.send(Progress::Warning(msg.to_owned()));
    }
}

/// The Engine a session's builds run on.
enum Engines<'a> {
    /// The session's own, started at its first build and again when it asks for other
    /// limits (a master on `nix-store --serve` or `--stdio`: the whole process serves it).
    Own {
        settings: &'a Settings,
        store: Arc<LocalStore>,
        host: Option<(Asked, crate::build::EngineHost)>,
        progress: Arc<std::sync::Mutex<Option<Listener>>>,
    },
    /// The daemon's, shared with every other session.
    Shared(&'a SharedEngine),
}

/// The builds of one session with a client: on an Engine of its own (its sandbox places,
/// connections and remembered times serve every build of the session), or on the daemon's.
pub struct Builds<'a> {
    engine: Engines<'a>,
    client: Client,
}

/// How many runs of [`Builds::run`] are going on in this process (a daemon waits for them
/// to stop before it exits).
pub static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a run while it lives.
struct Running;

impl Running {
    fn start() -> Running {
        RUNNING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Where the session's client is, to notice it leaving while a build runs.
pub enum Client {
    /// At the other end of standard input: the whole process serves it, and is interrupted
    /// when it leaves.
    Stdin,
    /// At the other end of this socket (a daemon's client): only what this session alone
    /// waits for stops when it leaves.
    Socket(std::os::fd::OwnedFd),
}

/// What stops a run when its client leaves.
enum Stop<'a> {
    /// This Engine's builds, all of them.
    Engine(Arc<tokio::sync::watch::Sender<bool>>),
    /// One goal on a shared Engine.
    Goal(&'a crate::build::EngineHost, ferrix_build::GoalId),
}

impl Stop<'_> {
    fn stop(&self) {
        match self {
            Stop::Engine(s) => {
                let _ = s.send(true);
            }
            Stop::Goal(host, id) => host.abandon(*id),
        }
    }
}

impl<'a> Builds<'a> {
    /// The builds of a session on an Engine of its own.
    pub fn new(settings: &'a Settings, store: Arc<LocalStore>, client: Client) -> Self {
        Self {
            engine: Engines::Own {
                settings,
                store,
                host: None,
                progress: Arc::default(),
            },
            client,
        }
    }

    /// The builds of a daemon's session, on its shared Engine.
    pub fn shared(engine: &'a SharedEngine, client: Client) -> Self {
        Self {
            engine: Engines::Shared(engine),
            client,
        }
    }

    /// The caches a session fetches from, on a shared Engine that has them: the daemon's
    /// own, or `urls` (see [`SharedEngine::substituter`]).
    pub fn substituter(&self, urls: Option<&[String]>) -> Option<(Arc<dyn Substituter>, bool)> {
        match &self.engine {
            Engines::Shared(e) => e.substituter(urls),
            Engines::Own { .. } => None,
        }
    }

    /// Run `plan` here, `progress` hearing of each build and each line of its output as it
    /// comes.
    pub fn run(
        &mut self,
        plan: Plan,
        asked: Asked,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<BuildResult> {
        if plan.nodes.is_empty() {
            return Ok(BuildResult::new(BuildStatus::AlreadyValid, ""));
        }
        let _running = Running::start();
        let (tx, rx) = mpsc::channel();
        let client = &self.client;
        let (plan, outcome) = match &mut self.engine {
            Engines::Own {
                settings,
                store,
                host,
                progress: to_session,
            } => {
                if host.as_ref().is_some_and(|(a, _)| *a != asked) {
                    if let Some((_, h)) = host.take() {
                        h.finish();
                    }
                }
                if host.is_none() {
                    *host = Some((
                        asked,
                        own_engine(settings, store, asked, to_session.clone())?,
                    ));
                }
                let Some((_, host)) = host.as_ref() else {
                    unreachable!("started above")
                };
                *to_session.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
                let stop = Stop::Engine(host.stopper());
                let outcome = watched(client, &stop, rx, progress, || {
                    let outcome = host.run(&plan);
                    // The progress ends here: the session's loop stops once it is taken.
                    *to_session.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    outcome
                })?;
                (plan, outcome)
            }
            Engines::Shared(shared) => {
                let plan = with_limits(plan, asked);
                // The shared Engine's roots end with each build: what the session asked for
                // is rooted in the session (this thread's) before it exists, as a Nix
                // daemon's worker roots what it builds, and stays so while the session does.
                let mut paths: Vec<StorePath> = Vec::new();
                for n in &plan.nodes {
                    paths.push(n.work.key().clone());
                    paths.extend(n.work.outputs());
                }
                paths.sort();
                paths.dedup();
                shared
                    .store
                    .add_temp_roots(&paths)
                    .context("rooting the session's builds")?;
                let keys = plan.nodes.iter().map(|n| n.work.key().clone()).collect();
                let subscription = shared.router.subscribe(keys, &tx);
                drop(tx);
                let goal = shared.host.submit(&plan);
                let stop = Stop::Goal(&shared.host, goal.id());
                let outcome = watched(client, &stop, rx, progress, move || {
                    let outcome = shared.host.wait(goal);
                    drop(subscription);
                    outcome
                })?;
                (plan, outcome)
            }
        };
        let jobs: Vec<Arc<Job>> = plan
            .nodes
            .iter()
            .filter_map(|n| n.work.job().cloned())
            .collect();
        Ok(result_of(&outcome, &jobs))
    }
}

/// A session's own Engine, with the limits its master asks for.
fn own_engine(
    settings: &Settings,
    store: &Arc<LocalStore>,
    asked: Asked,
    to_session: Arc<std::sync::Mutex<Option<Listener>>>,
) -> Result<crate::build::EngineHost> {
    let (mut local, opts) = crate::build::local_settings(settings, store)?;
    let secs = |n: u64| (n > 0).then(|| Duration::from_secs(n));
    if let Some(t) = secs(asked.max_silent_time) {
        local.max_silent_time = Some(t);
    }
    if let Some(t) = secs(asked.timeout) {
        local.timeout = Some(t);
    }
    local.keep_failed |= asked.keep_failed;
    // A machine builds what it is given: at least one job at a time.
    local.max_jobs = local.max_jobs.max(1);
    // Masters end their sessions by killing them, or the ssh they run under (Ferrix's
    // and Nix's alike): build directories kept for later builds would stay behind in the
    // machine's TMPDIR.
    local.reuse_build_dirs = false;
    crate::build::EngineHost::start(
        settings,
        store,
        Arc::new(ToSession(to_session)),
        opts,
        local,
        crate::build::build_times(store),
    )
}

/// `plan` with the limits a session asks for on each of its builds (on a shared Engine,
/// its settings are the daemon's).
fn with_limits(mut plan: Plan, asked: Asked) -> Plan {
    let secs = |n: u64| (n > 0).then(|| Duration::from_secs(n));
    let limits = ferrix_build::JobLimits {
        max_silent_time: secs(asked.max_silent_time),
        timeout: secs(asked.timeout),
        keep_failed: asked.keep_failed,
    };
    if limits == ferrix_build::JobLimits::default() {
        return plan;
    }
    for n in &mut plan.nodes {
        if let ferrix_build::Work::Build(job) = &mut n.work {
            let mut j = (**job).clone();
            j.limits = limits;
            *job = Arc::new(j);
        }
    }
    plan
}

/// Run `run` while the session's thread hands what comes on `rx` to `progress`, and
/// `stop` is used should the client leave meanwhile.
fn watched(
    client: &Client,
    stop: &Stop<'_>,
    rx: mpsc::Receiver<Progress>,
    progress: &mut dyn FnMut(Progress),
    run: impl FnOnce() -> ferrix_build::Outcome + Send,
) -> Result<ferrix_build::Outcome> {
    // The watch ends when `done` closes.
    let (watch, done) = std::io::pipe().context("making a pipe")?;
    Ok(std::thread::scope(|s| {
        s.spawn(move || stop_when_client_leaves(client, stop, watch));
        let run = s.spawn(run);
        for p in rx {
            progress(p);
        }
        let outcome = run.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        drop(done);
        outcome
    }))
}

impl Drop for Builds<'_> {
    fn drop(&mut self) {
        if let Engines::Own { host, .. } = &mut self.engine {
            if let Some((_, h)) = host.take() {
                h.finish();
            }
        }
    }
}

/// Until `done` closes (the build is over), watch the client's end for a hangup; then stop
/// the builds: this process's (the Engine stops them cleanly on SIGTERM) when the client
/// is at the other end of standard input, the ones only this session waits for when it is
/// a daemon's.
fn stop_when_client_leaves(client: &Client, stop: &Stop<'_>, done: std::io::PipeReader) {
    use rustix::event::{poll, PollFd, PollFlags};
    let stdin = std::io::stdin();
    let (watched, interest): (std::os::fd::BorrowedFd<'_>, PollFlags) = match client {
        Client::Stdin => (std::os::fd::AsFd::as_fd(&stdin), PollFlags::empty()),
        // The peer closing its end shows as RDHUP (the client sends nothing while it waits).
        Client::Socket(fd) => (std::os::fd::AsFd::as_fd(fd), PollFlags::RDHUP),
    };
    loop {
        // No interest in data from the client: only its hanging up, or the end of `done`.
        let mut fds = [
            PollFd::from_borrowed_fd(watched, interest),
            PollFd::new(&done, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) if !fds[1].revents().is_empty() => return,
            Ok(_)
                if fds[0]
                    .revents()
                    .intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::RDHUP) =>
            {
                match client {
                    Client::Stdin => {
                        let _ = rustix::process::kill_process(
                            rustix::process::getpid(),
                            rustix::process::Signal::TERM,
                        );
                    }
                    Client::Socket(_) => stop.stop(),
                }
                return;
            }
            // Nothing to watch (no standard input): the build goes on.
            Ok(_) if fds[0].revents().contains(PollFlags::NVAL) => return,
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// A run's outcome as the protocols report it.
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
            let status = match &f.kind {
                FailureKind::Timeout { .. } | FailureKind::Silent { .. } => BuildStatus::TimedOut,
                FailureKind::DependencyFailed { .. } => BuildStatus::DependencyFailed,
                FailureKind::HashMismatch { .. }
                | FailureKind::MissingOutput { .. }
                | FailureKind::BadReferences { .. } => BuildStatus::OutputRejected,
                FailureKind::NotDeterministic { .. } => BuildStatus::NotDeterministic,
                FailureKind::ExitCode { .. } | FailureKind::Signal { .. } => {
                    BuildStatus::PermanentFailure
                }
                _ => BuildStatus::MiscFailure,
            };
            (status, crate::render(f))
        }
        None => (BuildStatus::MiscFailure, "interrupted".to_owned()),
    };
    BuildResult::new(status, msg)
}
