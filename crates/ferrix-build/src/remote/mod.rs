//! Remote machines: the machines specification, and the executor that builds on them over
//! ssh (the serve protocol), with sessions kept per machine and reused across builds.

pub mod machines;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrix_format::StorePath;
use ferrix_store::serve_client::{
    BuildResult, BuildSettings, BuildStatus, LogSink, RemoteError, ServeClient,
};
use ferrix_store::ssh::{Ssh, SshConfig, SshTarget};
use ferrix_store::worker_client::WorkerClient;
use ferrix_store::LocalStore;

use crate::error::{BuildFailure, FailureKind};
use crate::executor::{
    BuildFuture, Built, Cancel, Executor, Job, JobError, Offer, OfferContext, OfferFuture, Reporter,
};
use crate::outputs::check_outputs;
use crate::register::Handover;
use crate::registry::{Claim, Claimed, Registry};
use ferrix_store::serve_client::plain;
pub use machines::{parse_machines, Machine, MachineError};

/// Settings of remote builds (the CLI fills them from `builders`, the machines file,
/// `NIX_SSHOPTS` and the build options).
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub machines: Vec<Machine>,
    pub ssh: SshConfig,
    pub max_silent_time: Option<Duration>,
    pub timeout: Option<Duration>,
    pub log: crate::log::LogSettings,
    /// How long a machine that could not be reached is left alone (doubling each time).
    pub backoff: Duration,
    /// `builders-use-substitutes`: the machine fetches the inputs it lacks from its own
    /// substituters where it can, and only the rest is sent from here.
    pub use_substitutes: bool,
}

/// Builds on remote machines, each up to its max jobs.
#[derive(Debug)]
pub struct RemoteExecutor {
    registry: Arc<Registry>,
    reporter: Arc<dyn Reporter + Send + Sync>,
    settings: RemoteSettings,
    machines: Vec<Arc<Remote>>,
}

/// One machine and what we keep of it.
#[derive(Debug)]
struct Remote {
    machine: Machine,
    target: SshTarget,
    ssh: Mutex<Option<Ssh>>,
    id: usize,
    /// Sessions not in use.
    idle: Mutex<Vec<Session>>,
    running: AtomicUsize,
    /// Until when it is left alone, and how often it failed.
    down: Mutex<Option<(Instant, u32)>>,
    reported: AtomicBool,
    /// One upload at a time, so no path is sent twice at once.
    upload: Mutex<()>,
    /// Whether a session has greeted us yet (then `greeting` is done with).
    greeted: AtomicBool,
    greeting: Greeting,
}

/// The first sessions of a machine: how many are starting, and whether one got in.
#[derive(Debug, Default)]
struct Greeting {
    state: Mutex<GreetingState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct GreetingState {
    trying: usize,
    greeted: bool,
}

impl Greeting {
    fn lock(&self) -> std::sync::MutexGuard<'_, GreetingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Remote {
    fn is_down(&self) -> bool {
        let d = self.down.lock().unwrap_or_else(|p| p.into_inner());
        d.is_some_and(|(until, _)| Instant::now() < until)
    }

    fn session(
        &self,
        store: &LocalStore,
        settings: &RemoteSettings,
    ) -> Result<Session, RemoteError> {
        if let Some(s) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(s);
        }
        if self.greeted.load(Ordering::SeqCst) {
            return self.start_session(store, settings);
        }
        // Not greeted yet: the machine's store may be new, and real Nix sets a store up
        // racily (of several processes at once, some can fail). Sessions start at once all
        // the same; one that fails waits until another got in, and then tries again: the
        // machine is there, the failure was the race. When all fail, it is down.
        let g = &self.greeting;
        g.lock().trying += 1;
        let first = self.start_session(store, settings);
        let mut state = g.lock();
        state.trying -= 1;
        g.changed.notify_all();
        match first {
            Ok(s) => {
                state.greeted = true;
                self.greeted.store(true, Ordering::SeqCst);
                Ok(s)
            }
            Err(e) => {
                while !state.greeted && state.trying > 0 {
                    state = g.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if !state.greeted {
                    return Err(e);
                }
                drop(state);
                self.start_session(store, settings)
            }
        }
    }

    fn start_session(
        &self,
        store: &LocalStore,
        settings: &RemoteSettings,
    ) -> Result<Session, RemoteError> {
        // The connection is held only to start the session: the handshakes of several
        // sessions, each waiting for its program to start there, go on at once.
        let child = {
            let mut ssh = self.ssh.lock().unwrap_or_else(|p| p.into_inner());
            if ssh.is_none() {
                *ssh = Some(Ssh::new(
                    self.target.clone(),
                    settings.ssh.clone(),
                    self.id,
                )?);
            }
            let ssh = ssh.as_mut().unwrap_or_else(|| unreachable!("made above"));
            ssh.spawn_session()?
        };
        let (uri, sd) = (self.target.uri.clone(), store.store_dir().clone());
        Ok(if self.target.ng {
            let silent = settings.max_silent_time.map_or(0, |d| d.as_secs());
            Session::Worker(WorkerClient::over(uri, child, sd, silent)?)
        } else {
            Session::Serve(ServeClient::over(uri, child, sd)?)
        })
    }
}

/// Gives a machine's job slot back when the job ends, however it ends.
struct SlotGuard(Arc<Remote>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RemoteExecutor {
    /// Machines whose URI cannot be used are returned with why, to be reported.
    pub fn new(
        registry: Arc<Registry>,
        reporter: Arc<dyn Reporter + Send + Sync>,
        settings: RemoteSettings,
    ) -> (Self, Vec<(String, String)>) {
        let mut bad = Vec::new();
        let mut machines = Vec::new();
        for (id, m) in settings.machines.iter().enumerate() {
            match SshTarget::parse(&m.uri) {
                Ok(mut t) => {
                    if t.ssh_key.is_none() {
                        t.ssh_key = m.ssh_key.clone();
                    }
                    if t.host_key.is_none() {
                        t.host_key = m.host_key.clone();
                    }
                    machines.push(Arc::new(Remote {
                        machine: m.clone(),
                        target: t,
                        ssh: Mutex::new(None),
                        id,
                        idle: Mutex::default(),
                        running: AtomicUsize::new(0),
                        down: Mutex::new(None),
                        reported: AtomicBool::new(false),
                        greeted: AtomicBool::new(false),
                        greeting: Greeting::default(),
                        upload: Mutex::new(()),
                    }))
                }
                Err(e) => bad.push((m.uri.clone(), e.to_string())),
            }
        }
        (
            Self {
                registry,
                reporter,
                settings,
                machines,
            },
            bad,
        )
    }

    /// Whether no machine could be used.
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// The machine for `job` now: the least loaded relative to its speed among those that
    /// fit and have a free slot (ties: the faster). `Err(true)` when some fitting machine is
    /// busy, `Err(false)` when none fits.
    fn choose(&self, job: &Job) -> Result<Arc<Remote>, bool> {
        let features = job.required_features();
        let mut best: Option<(f64, u32, &Arc<Remote>)> = None;
        let mut busy = false;
        for r in &self.machines {
            if !r.machine.fits(&job.drv.platform, &features) || r.is_down() {
                continue;
            }
            let load = r.running.load(Ordering::SeqCst);
            if load >= r.machine.max_jobs {
                busy = true;
                continue;
            }
            let speed = r.machine.speed_factor;
            let score = load as f64 / speed as f64;
            if best.is_none_or(|(s, sp, _)| score < s || (score == s && speed > sp)) {
                best = Some((score, speed, r));
            }
        }
        match best {
            Some((_, _, r)) => {
                r.running.fetch_add(1, Ordering::SeqCst);
                Ok(r.clone())
            }
            None => Err(busy),
        }
    }

    /// A machine could not be reached or dropped: left alone for a while, said once.
    fn mark_down(&self, r: &Remote, why: &str) {
        let mut d = r.down.lock().unwrap_or_else(|p| p.into_inner());
        let n = d.map_or(0, |(_, n)| n) + 1;
        let wait = self.settings.backoff * 2u32.saturating_pow(n - 1).min(64);
        *d = Some((Instant::now() + wait, n));
        // Sessions of a machine that failed are not trusted any more.
        r.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if !r.reported.swap(true, Ordering::SeqCst) {
            self.reporter.warn(&format!(
                "cannot build on '{}': {why}; not using it for {} s",
                r.machine.uri,
                wait.as_secs()
            ));
        }
    }

    async fn build_on(
        self: Arc<Self>,
        r: Arc<Remote>,
        job: Arc<Job>,
        mut cancel: Cancel,
    ) -> Result<Built, JobError> {
        let _slot = SlotGuard(r.clone());
        let store = self.registry.store().clone();
        let drv = store.print(&job.drv_path);
        let regs = self.registry.registrations().clone();
        let Claimed {
            locks,
            closure,
            intent,
            aside,
        } = match self.registry.claim(&job, Vec::new()).await? {
            Claim::Valid => return Ok(Built::AlreadyValid),
            Claim::Ready(c) => *c,
        };
        // Inputs still being registered must be valid here before they can be sent.
        if let Err(input) = regs.wait_for(closure.iter().cloned()).await {
            intent.abandon(&[]);
            aside.put_back();
            return Err(BuildFailure::new(
                drv,
                FailureKind::InputUnregistered {
                    input: store.print(&input),
                },
            )
            .into());
        }
        self.reporter.started_on(&job.drv_path, &r.machine.uri);

        let pid = Arc::new(Mutex::new(None::<u32>));
        let work = {
            let (this, r, job, store) = (self.clone(), r.clone(), job.clone(), store.clone());
            let (closure, pid) = (closure.clone(), pid.clone());
            tokio::task::spawn_blocking(move || this.remote_build(&r, &job, &store, &closure, &pid))
        };
        let result = tokio::select! {
            res = work => res.unwrap_or_else(|e| Err(Failure::Local(BuildFailure::new(drv.clone(), FailureKind::Io { what: "a worker thread failed".into(), source: std::io::Error::other(e) })))),
            _ = cancel.wait_for(|c| *c) => {
                // Ending the session stops the remote build: SIGTERM ends the local ssh,
                // and the machine sees its input close (or, run here, the serving process
                // itself stops its builds cleanly).
                if let Some(p) = *pid.lock().unwrap_or_else(|p| p.into_inner()) {
                    let _ = rustix::process::kill_process_group(
                        rustix::process::Pid::from_raw(p as i32).unwrap_or_else(|| unreachable!("a child's pid is positive")),
                        rustix::process::Signal::TERM,
                    );
                }
                Err(Failure::Local(BuildFailure::new(drv.clone(), FailureKind::Interrupted)))
            }
        };
        let said = match result {
            Ok(said) => said,
            Err(f) => {
                intent.abandon(&[]); // deletes whatever arrived of the outputs
                aside.put_back();
                return Err(match f {
                    Failure::Local(f) => JobError::Failed(f),
                    Failure::Remote(e) => {
                        let why = crate::render_error(&e);
                        self.mark_down(&r, &why);
                        JobError::Lost {
                            by: r.machine.uri.clone(),
                            why,
                        }
                    }
                });
            }
        };
        // The outputs are here: checked, canonicalised and scanned as a local build's are
        // (what the machine claims about references is not trusted), then compared with
        // the hashes it reported.
        let checked = {
            let (store, job, d) = (store.clone(), job.clone(), drv.clone());
            let known = regs.snapshot();
            crate::local::blocking(&drv, move || {
                check_outputs(&store, &job, &d, closure, &known)
            })
            .await
        };
        let infos = match checked {
            Ok(infos) => infos,
            Err(e) => {
                intent.abandon(&[]);
                aside.put_back();
                return Err(e.into());
            }
        };
        for i in &infos {
            if let Some(h) = said.get(&i.path) {
                if *h != i.nar_hash {
                    intent.abandon(&[]);
                    aside.put_back();
                    return Err(BuildFailure::new(
                        drv,
                        FailureKind::RemoteMismatch {
                            machine: r.machine.uri.clone(),
                            path: store.print(&i.path),
                            said: h.encode_typed(ferrix_format::Encoding::Nix32),
                            got: i.nar_hash.encode_typed(ferrix_format::Encoding::Nix32),
                        },
                    )
                    .into());
                }
            }
        }
        self.registry.hand_over(Handover {
            drv_path: job.drv_path.clone(),
            drv,
            infos,
            intent,
            locks,
            replaced: aside.intent,
            build_dir: None,
            hold: None,
        });
        Ok(Built::Built)
    }

    /// On a blocking thread: copy what the machine lacks, build there, copy the outputs
    /// back to their places. The NAR hashes the machine reports, by output.
    fn remote_build(
        &self,
        r: &Remote,
        job: &Job,
        store: &LocalStore,
        closure: &BTreeSet<StorePath>,
        pid: &Mutex<Option<u32>>,
    ) -> Result<BTreeMap<StorePath, ferrix_format::Hash>, Failure> {
        let drv = store.print(&job.drv_path);
        let mut s = r
            .session(store, &self.settings)
            .map_err(|e| Failure::of(&drv, &r.machine.uri, e))?;
        *pid.lock().unwrap_or_else(|p| p.into_inner()) = s.pid();
        // Nothing to send (a derivation without inputs): no round trip to ask about it.
        if !closure.is_empty() {
            let _one = r.upload.lock().unwrap_or_else(|p| p.into_inner());
            let have = s
                .query_valid(closure, self.settings.use_substitutes)
                .map_err(|e| Failure::of(&drv, &r.machine.uri, e))?;
            let missing: BTreeSet<StorePath> = closure.difference(&have).cloned().collect();
            s.import_paths(store, &missing)
                .map_err(|e| Failure::of(&drv, &r.machine.uri, e))?;
        }
        // The log, kept here as a local build's is.
        let writer = self
            .settings
            .log
            .writer(&job.drv_path)
            .map_err(|(what, source)| {
                Failure::Local(BuildFailure::new(
                    drv.clone(),
                    FailureKind::Io {
                        what: what.into(),
                        source,
                    },
                ))
            })?;
        let writer = Arc::new(Mutex::new(Some(writer)));
        let sink: LogSink = {
            let (w, reporter, d) = (writer.clone(), self.reporter.clone(), job.drv_path.clone());
            Box::new(move |line: &str| {
                if let Some(w) = w.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    w.write(line.as_bytes());
                    w.write(b"\n");
                }
                reporter.log_line(&d, line);
            })
        };
        // The machine needs no input derivations: their outputs are in the closure.
        let mut basic = job.drv.clone();
        if !basic.input_drvs.is_empty() {
            basic.input_drvs.clear();
            basic.input_srcs = closure.clone();
        }
        let secs = |d: Option<Duration>| d.map_or(0, |d| d.as_secs());
        let settings = BuildSettings {
            max_silent_time: secs(job.limits.max_silent_time.or(self.settings.max_silent_time)),
            build_timeout: secs(job.limits.timeout.or(self.settings.timeout)),
            ..BuildSettings::default()
        };
        let res = s.build(&job.drv_path, &basic, settings, sink);
        if let Some(w) = writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            w.finish();
        }
        let res = res.map_err(|e| Failure::of(&drv, &r.machine.uri, e))?;
        if !matches!(
            res.status,
            BuildStatus::Built | BuildStatus::AlreadyValid | BuildStatus::Substituted
        ) {
            let tail: Vec<String> = crate::log::read_log(&self.settings.log.dir, &job.drv_path)
                .ok()
                .flatten()
                .map(|l| {
                    let text = String::from_utf8_lossy(&l).into_owned();
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(10)..]
                        .iter()
                        .map(|l| plain(l).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            r.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            return Err(Failure::Local(BuildFailure::new(
                drv,
                FailureKind::Remote {
                    machine: r.machine.uri.clone(),
                    msg: plain(&res.error_msg).into_owned(),
                    tail,
                    timed_out: res.status == BuildStatus::TimedOut,
                },
            )));
        }
        let outs: BTreeSet<StorePath> = job.outputs.values().cloned().collect();
        let said = s
            .nar_hashes(&outs)
            .map_err(|e| Failure::of(&drv, &r.machine.uri, e))?;
        for p in &outs {
            if !said.contains_key(p) {
                // Not valid there after a successful build: the output check says so.
                continue;
            }
            s.dump_to(p, &store.real_path(p))
                .map_err(|e| Failure::of(&drv, &r.machine.uri, e))?;
        }
        r.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
        Ok(said)
    }
}

impl Drop for RemoteExecutor {
    /// The idle sessions are all told to end first, so that each one's drop, which waits for
    /// its process, does not wait in turn for the one before.
    fn drop(&mut self) {
        for r in &self.machines {
            for s in r.idle.lock().unwrap_or_else(|p| p.into_inner()).iter_mut() {
                s.kill();
            }
        }
    }
}

/// A session with a machine, in either protocol.
enum Session {
    /// `ssh://`: `nix-store --serve --write`.
    Serve(ServeClient),
    /// `ssh-ng://`: `nix-daemon --stdio`.
    Worker(WorkerClient),
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Serve(c) => c.fmt(f),
            Self::Worker(c) => c.fmt(f),
        }
    }
}

impl Session {
    fn pid(&self) -> Option<u32> {
        match self {
            Self::Serve(c) => Some(c.pid()),
            Self::Worker(c) => c.pid(),
        }
    }

    /// Tell the session's process to end, without waiting for it.
    fn kill(&mut self) {
        match self {
            Self::Serve(c) => c.kill(),
            Self::Worker(c) => c.kill(),
        }
    }

    fn query_valid(
        &mut self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, RemoteError> {
        match self {
            Self::Serve(c) => c.query_valid(paths, substitute),
            Self::Worker(c) => c.query_valid(paths, substitute),
        }
    }

    fn import_paths(
        &mut self,
        store: &LocalStore,
        paths: &BTreeSet<StorePath>,
    ) -> Result<(), RemoteError> {
        match self {
            Self::Serve(c) => c.import_paths(store, paths),
            // A build's inputs go unsigned, as Nix's build-remote sends them: the machine
            // trusts its master.
            Self::Worker(c) => c.import_paths(store, paths, false),
        }
    }

    /// Build there, the log going to `sink` as it comes.
    fn build(
        &mut self,
        drv_path: &StorePath,
        drv: &ferrix_format::Derivation,
        settings: BuildSettings,
        sink: LogSink,
    ) -> Result<BuildResult, RemoteError> {
        match self {
            Self::Serve(c) => {
                c.set_log_sink(Some(sink));
                let r = c.build_derivation(drv_path, drv, settings);
                c.set_log_sink(None);
                r
            }
            // The time limits went with the session's options.
            Self::Worker(c) => c.build_derivation(drv_path, drv, sink),
        }
    }

    fn nar_hashes(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, ferrix_format::Hash>, RemoteError> {
        match self {
            Self::Serve(c) => Ok(c
                .query_path_infos(paths)?
                .into_iter()
                .filter_map(|i| Some((i.path, i.nar_hash?)))
                .collect()),
            Self::Worker(c) => c.nar_hashes(paths),
        }
    }

    fn dump_to(&mut self, path: &StorePath, target: &std::path::Path) -> Result<u64, RemoteError> {
        match self {
            Self::Serve(c) => c.dump_to(path, target),
            Self::Worker(c) => c.dump_to(path, target),
        }
    }
}

enum Failure {
    /// The build failed (there or here): a build failure.
    Local(BuildFailure),
    /// The machine or the connection failed: the job is lost and goes elsewhere.
    Remote(RemoteError),
}

impl Failure {
    /// A dead connection loses the job; anything else (a refusal, bad data, our own store)
    /// fails it, naming the machine.
    fn of(drv: &str, machine: &str, e: RemoteError) -> Self {
        if e.is_connection() {
            return Self::Remote(e);
        }
        Self::Local(BuildFailure::new(
            drv,
            FailureKind::Remote {
                machine: machine.to_owned(),
                msg: crate::render_error(&e),
                tail: Vec::new(),
                timed_out: false,
            },
        ))
    }
}

impl Executor for RemoteExecutor {
    fn capacity(&self) -> usize {
        self.machines.iter().map(|r| r.machine.max_jobs).sum()
    }

    fn could_build(&self, job: &Job) -> bool {
        let features = job.required_features();
        self.machines
            .iter()
            .any(|r| r.machine.fits(&job.drv.platform, &features) && !r.is_down())
    }

    fn offer(self: Arc<Self>, job: Arc<Job>, ctx: OfferContext, cancel: Cancel) -> OfferFuture {
        let answer = match self.choose(&job) {
            Ok(r) => Offer::Accept(Box::pin(self.build_on(r, job, cancel)) as BuildFuture),
            // Busy machines: build here if here is free, else wait for one.
            Err(true) if ctx.local_free && ctx.local_possible => Offer::Decline,
            Err(true) => Offer::Postpone,
            Err(false) => Offer::Decline,
        };
        Box::pin(std::future::ready(answer))
    }
}
