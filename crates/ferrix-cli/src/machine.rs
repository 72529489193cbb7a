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

/// Hands log lines and warnings to the session's thread, while a build runs.
#[derive(Default)]
struct ToSession(Arc<std::sync::Mutex<Option<mpsc::Sender<String>>>>);

impl ToSession {
    fn send(&self, line: String) {
        if let Some(tx) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(line);
        }
    }
}

impl Reporter for ToSession {
    fn log_line(&self, _drv: &StorePath, line: &str) {
        self.send(line.to_owned());
    }
    fn warn(&self, msg: &str) {
        self.send(format!("warning: {msg}"));
    }
}

/// The builds of one session with a master: one Engine for all of them (its sandbox
/// places, connections and remembered times serve every build), started at the first and
/// made again only when the master asks for other limits.
pub struct Builds<'a> {
    settings: &'a Settings,
    store: Arc<LocalStore>,
    host: Option<(Asked, crate::build::EngineHost)>,
    lines: Arc<std::sync::Mutex<Option<mpsc::Sender<String>>>>,
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
    /// At the other end of this socket (a daemon's client): only this session's builds
    /// stop when it leaves.
    Socket(std::os::fd::OwnedFd),
}

impl<'a> Builds<'a> {
    pub fn new(settings: &'a Settings, store: Arc<LocalStore>, client: Client) -> Self {
        Self {
            settings,
            store,
            host: None,
            lines: Arc::default(),
            client,
        }
    }

    /// Run `plan` here, `log` getting each line of the builders' output as it comes.
    pub fn run(
        &mut self,
        plan: Plan,
        asked: Asked,
        log: &mut dyn FnMut(&str),
    ) -> Result<BuildResult> {
        let jobs: Vec<Arc<Job>> = plan
            .nodes
            .iter()
            .filter_map(|n| n.work.job().cloned())
            .collect();
        if plan.nodes.is_empty() {
            return Ok(BuildResult::new(BuildStatus::AlreadyValid, ""));
        }
        let _running = Running::start();
        if self.host.as_ref().is_some_and(|(a, _)| *a != asked) {
            if let Some((_, h)) = self.host.take() {
                h.finish();
            }
        }
        if self.host.is_none() {
            let (mut local, opts) = crate::build::local_settings(self.settings, &self.store)?;
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
            let host = crate::build::EngineHost::start(
                self.settings,
                &self.store,
                Arc::new(ToSession(self.lines.clone())),
                opts,
                local,
                crate::build::build_times(&self.store),
            )?;
            self.host = Some((asked, host));
        }
        let Some((_, host)) = &self.host else {
            unreachable!("started above")
        };
        let (tx, rx) = mpsc::channel();
        *self.lines.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        // A client that goes away stops the build, as an interrupt here would: nobody is
        // left to take the outputs. The watch ends when `done` closes.
        let (watch, done) = std::io::pipe().context("making a pipe")?;
        let lines = &self.lines;
        let client = &self.client;
        let stopper = host.stopper();
        let outcome = std::thread::scope(|s| {
            s.spawn(move || stop_when_client_leaves(client, &stopper, watch));
            let run = s.spawn(|| {
                let outcome = host.run(&plan);
                // The lines end here: the loop below stops once what was sent is taken.
                *lines.lock().unwrap_or_else(|p| p.into_inner()) = None;
                outcome
            });
            for line in rx {
                log(&line);
            }
            let outcome = run.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            drop(done);
            outcome
        });
        Ok(result_of(&outcome, &jobs))
    }
}

impl Drop for Builds<'_> {
    fn drop(&mut self) {
        if let Some((_, h)) = self.host.take() {
            h.finish();
        }
    }
}

/// Until `done` closes (the build is over), watch the client's end for a hangup; then stop
/// the builds: this process's (the Engine stops them cleanly on SIGTERM) when the client
/// is at the other end of standard input, this session's only when it is a daemon's.
fn stop_when_client_leaves(
    client: &Client,
    stopper: &tokio::sync::watch::Sender<bool>,
    done: std::io::PipeReader,
) {
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
                    Client::Socket(_) => {
                        let _ = stopper.send(true);
                    }
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
