//! An external build hook: a program, started once per Engine, that decides in two phases
//! whether it takes a derivation and then builds it wherever it likes. It speaks a line
//! protocol on its standard input and output (one message per line, fields separated by
//! single spaces; store paths have none):
//!
//! ```text
//! ferrix -> hook   try ID DRV SYSTEM LOCAL FEATURES
//!                      LOCAL is 1 when a local build slot is free, FEATURES the required
//!                      system features joined by commas, or "-" for none. Answered by one
//!                      of accept/decline/postpone before the next try is sent.
//! hook -> ferrix   accept ID MACHINE | decline ID | postpone ID
//! ferrix -> hook   build ID DIR
//!                      After an accept, once the outputs are locked here. DIR holds
//!                      `drv` (the derivation's path), `inputs` (the paths the build needs,
//!                      the .drv's closure included, dependencies first, one per line) and
//!                      `outputs` ("NAME PATH" lines). The hook builds and writes each
//!                      output's NAR to DIR/NAME.nar; what it does not write is missing.
//! ferrix -> hook   cancel ID
//!                      Stop job ID (an interrupt); no answer is expected.
//! hook -> ferrix   log ID TEXT | done ID | failed ID MESSAGE
//! ```
//!
//! A `done` output is checked and reference-scanned here, like a local build's, and
//! registered; nothing the hook does touches this store. When the hook exits, its running
//! jobs are lost (and go elsewhere) and it is asked nothing more. Nix's own `build-remote`
//! speaks Nix's protocol, not this one; the CLI does not start it (the built-in remote
//! machines do its job).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferrix_format::StorePath;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::error::{BuildFailure, FailureKind};
use crate::executor::{
    BuildFuture, Built, Cancel, Executor, Job, JobError, Offer, OfferContext, OfferFuture, Reporter,
};
use crate::outputs::check_outputs;
use crate::register::Handover;
use crate::registry::{Claim, Claimed, Registry};

/// How the hook is run.
#[derive(Debug, Clone)]
pub struct HookSettings {
    /// The program (the `build-hook` setting), run with no arguments.
    pub program: PathBuf,
    /// Where job directories are made.
    pub work_dir: PathBuf,
    pub log: crate::log::LogSettings,
}

/// What the hook says about a job while it builds.
#[derive(Debug)]
enum Event {
    Log(String),
    Done,
    Failed(String),
}

/// How a job on the hook ended.
enum End {
    Done,
    Failed(String),
    /// The hook exited.
    Lost,
    Cancelled,
}

#[derive(Debug, Default)]
struct Waiting {
    /// Offers waiting for their answer.
    answers: HashMap<u64, oneshot::Sender<Answer>>,
    /// Jobs building.
    jobs: HashMap<u64, mpsc::UnboundedSender<Event>>,
}

#[derive(Debug)]
enum Answer {
    Accept(String),
    Decline,
    Postpone,
}

/// The build hook as an executor.
#[derive(Debug)]
pub struct HookExecutor {
    settings: HookSettings,
    registry: Arc<Registry>,
    reporter: Arc<dyn Reporter + Send + Sync>,
    stdin: tokio::sync::Mutex<ChildStdin>,
    waiting: Arc<Mutex<Waiting>>,
    /// The hook has exited (or its output closed): nothing more goes to it.
    dead: Arc<AtomicBool>,
    next: AtomicU64,
}

/// Why the hook could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the build hook '{}'", .program.display())]
pub struct HookError {
    program: PathBuf,
    #[source]
    source: std::io::Error,
}

impl HookExecutor {
    /// Start the hook (on the current tokio runtime).
    pub fn start(
        settings: HookSettings,
        registry: Arc<Registry>,
        reporter: Arc<dyn Reporter + Send + Sync>,
    ) -> Result<Self, HookError> {
        let err = |source| HookError {
            program: settings.program.clone(),
            source,
        };
        let mut child = Command::new(&settings.program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(err)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            unreachable!("the hook's standard streams are piped")
        };
        let waiting: Arc<Mutex<Waiting>> = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let (w, d, rep) = (waiting.clone(), dead.clone(), reporter.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if !dispatch(&w, &line) {
                    rep.warn(&format!(
                        "the build hook said something unexpected: '{line}'"
                    ));
                }
            }
            d.store(true, Ordering::SeqCst);
            // Whatever waits on the hook learns that it is gone.
            {
                let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
                g.answers.clear();
                g.jobs.clear();
            }
            let _ = child.wait().await;
        });
        Ok(Self {
            settings,
            registry,
            reporter,
            stdin: tokio::sync::Mutex::new(stdin),
            waiting,
            dead,
            next: AtomicU64::new(1),
        })
    }

    async fn send(&self, line: String) -> bool {
        let mut w = self.stdin.lock().await;
        w.write_all(line.as_bytes()).await.is_ok() && w.flush().await.is_ok()
    }

    fn name(&self) -> String {
        self.settings.program.display().to_string()
    }

    async fn build(
        self: Arc<Self>,
        id: u64,
        machine: String,
        job: Arc<Job>,
        mut cancel: Cancel,
    ) -> Result<Built, JobError> {
        let store = self.registry.store().clone();
        let drv = store.print(&job.drv_path);
        let (tx, mut events) = mpsc::unbounded_channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .jobs
            .insert(id, tx);
        let claimed = match self.registry.claim(&job, Vec::new()).await {
            Ok(Claim::Ready(c)) => *c,
            other => {
                // Not built after all: the hook drops the job (and its slot).
                self.drop_job(id).await;
                return match other {
                    Ok(_) => Ok(Built::AlreadyValid),
                    Err(e) => Err(e.into()),
                };
            }
        };
        let Claimed {
            locks,
            closure,
            intent,
            aside,
        } = claimed;
        let fail = |e: BuildFailure| -> Result<Built, JobError> { Err(e.into()) };
        let regs = self.registry.registrations().clone();
        if let Err(input) = regs.wait_for(closure.iter().cloned()).await {
            intent.abandon(&[]);
            aside.put_back();
            self.drop_job(id).await;
            return fail(BuildFailure::new(
                drv,
                FailureKind::InputUnregistered {
                    input: store.print(&input),
                },
            ));
        }
        let dir = match self.job_dir(&job, &closure, id).await {
            Ok(d) => d,
            Err(e) => {
                intent.abandon(&[]);
                aside.put_back();
                self.drop_job(id).await;
                return fail(e);
            }
        };
        self.reporter.started_on(&job.drv_path, &machine);
        let mut log = self.settings.log.writer(&job.drv_path).ok();
        let sent = self
            .send(format!("build {id} {}\n", dir.path().display()))
            .await;
        let end = if !sent {
            End::Lost
        } else {
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    _ = cancel.wait_for(|c| *c) => break End::Cancelled,
                };
                match ev {
                    Some(Event::Log(line)) => {
                        if let Some(l) = log.as_mut() {
                            l.write(line.as_bytes());
                            l.write(b"\n");
                        }
                        self.reporter.log_line(&job.drv_path, &line);
                    }
                    Some(Event::Done) => break End::Done,
                    Some(Event::Failed(msg)) => break End::Failed(msg),
                    None => break End::Lost,
                }
            }
        };
        if let Some(l) = log.take() {
            l.finish();
        }
        if matches!(end, End::Cancelled) {
            self.drop_job(id).await;
        } else {
            self.forget(id).await;
        }
        let abandon = |intent: ferrix_store::OutputsIntent, aside: crate::registry::Aside| {
            intent.abandon(&[]);
            aside.put_back();
        };
        match end {
            End::Cancelled => {
                abandon(intent, aside);
                return fail(BuildFailure::new(drv, FailureKind::Interrupted));
            }
            End::Lost => {
                abandon(intent, aside);
                return Err(JobError::Lost {
                    by: self.name(),
                    why: "the build hook exited".into(),
                });
            }
            End::Failed(msg) => {
                abandon(intent, aside);
                return fail(BuildFailure::new(
                    drv,
                    FailureKind::Remote {
                        machine,
                        msg,
                        tail: Vec::new(),
                        timed_out: false,
                    },
                ));
            }
            End::Done => {}
        }
        // The outputs the hook wrote, into their places; then checked as a local build's.
        let (store2, job2, d, dir_path) = (
            store.clone(),
            job.clone(),
            drv.clone(),
            dir.path().to_owned(),
        );
        let known = regs.snapshot();
        let checked = crate::local::blocking(&drv, move || {
            for (name, p) in &job2.outputs {
                let nar = dir_path.join(format!("{name}.nar"));
                let Ok(file) = std::fs::File::open(&nar) else {
                    continue; // missing: the output check says so
                };
                ferrix_format::nar::restore(std::io::BufReader::new(file), &store2.real_path(p))
                    .map_err(|e| {
                        BuildFailure::new(
                            d.clone(),
                            FailureKind::Malformed {
                                why: format!(
                                    "the build hook's NAR of output '{name}' is unusable: {e}"
                                ),
                            },
                        )
                    })?;
            }
            check_outputs(&store2, &job2, &d, closure, &known)
        })
        .await;
        match checked {
            Ok(infos) => {
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
            Err(e) => {
                abandon(intent, aside);
                fail(e)
            }
        }
    }

    /// Tell the hook that job `id` is off, and stop listening to it.
    async fn drop_job(&self, id: u64) {
        self.send(format!("cancel {id}\n")).await;
        self.forget(id).await;
    }

    async fn forget(&self, id: u64) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .jobs
            .remove(&id);
    }

    /// The job's directory: what the hook needs to know.
    async fn job_dir(
        &self,
        job: &Job,
        closure: &std::collections::BTreeSet<StorePath>,
        id: u64,
    ) -> Result<tempfile::TempDir, BuildFailure> {
        let store = self.registry.store().clone();
        let drv = store.print(&job.drv_path);
        let (job_drv, closure, base) = (
            job.drv_path.clone(),
            closure.clone(),
            self.settings.work_dir.clone(),
        );
        let outputs: Vec<(String, StorePath)> = job
            .outputs
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        let d = drv.clone();
        crate::local::blocking(&drv, move || {
            let io = |what: &str| BuildFailure::io(&d, what.to_owned());
            let dir = tempfile::Builder::new()
                .prefix(&format!("ferrix-hook-{id}-"))
                .tempdir_in(&base)
                .map_err(io("making the build hook's directory"))?;
            // The .drv's own closure (its input derivations) with the inputs' closure.
            let mut all = closure;
            let drvs = store
                .closure([job_drv.clone()], false, false)
                .map_err(|source| BuildFailure::new(d.clone(), FailureKind::Store { source }))?;
            all.extend(drvs);
            let sorted = store
                .topo_sort(&all)
                .map_err(|source| BuildFailure::new(d.clone(), FailureKind::Store { source }))?;
            let lines: String = sorted.iter().map(|p| store.print(p) + "\n").collect();
            std::fs::write(dir.path().join("inputs"), lines).map_err(io("writing the inputs"))?;
            std::fs::write(dir.path().join("drv"), store.print(&job_drv) + "\n")
                .map_err(io("writing the derivation's path"))?;
            let outs: String = outputs
                .iter()
                .map(|(n, p)| format!("{n} {}\n", store.print(p)))
                .collect();
            std::fs::write(dir.path().join("outputs"), outs).map_err(io("writing the outputs"))?;
            Ok(dir)
        })
        .await
    }
}

/// Route one line of the hook's output; false when it makes no sense.
fn dispatch(w: &Mutex<Waiting>, line: &str) -> bool {
    let mut parts = line.splitn(3, ' ');
    let (Some(verb), Some(id)) = (
        parts.next(),
        parts.next().and_then(|i| i.parse::<u64>().ok()),
    ) else {
        return false;
    };
    let rest = parts.next().unwrap_or_default();
    let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
    let answer = match verb {
        "accept" => Some(Answer::Accept(rest.to_owned())),
        "decline" => Some(Answer::Decline),
        "postpone" => Some(Answer::Postpone),
        _ => None,
    };
    if let Some(a) = answer {
        return g.answers.remove(&id).is_some_and(|tx| tx.send(a).is_ok());
    }
    let ev = match verb {
        "log" => Event::Log(rest.to_owned()),
        "done" => Event::Done,
        "failed" => Event::Failed(rest.to_owned()),
        _ => return false,
    };
    match g.jobs.get(&id) {
        Some(tx) => {
            let _ = tx.send(ev);
            true
        }
        // A job given up here (cancelled, found valid) may still talk.
        None => true,
    }
}

impl Executor for HookExecutor {
    fn capacity(&self) -> usize {
        // The hook counts its machines' slots itself: it postpones when they are full.
        usize::MAX
    }

    fn could_build(&self, _job: &Job) -> bool {
        !self.dead.load(Ordering::SeqCst)
    }

    fn offer(self: Arc<Self>, job: Arc<Job>, ctx: OfferContext, cancel: Cancel) -> OfferFuture {
        Box::pin(async move {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .answers
                .insert(id, tx);
            let mut features: Vec<String> = job.required_features().into_iter().collect();
            features.sort();
            let features = if features.is_empty() {
                "-".to_owned()
            } else {
                features.join(",")
            };
            let line = format!(
                "try {id} {} {} {} {features}\n",
                self.registry.store().print(&job.drv_path),
                job.drv.platform,
                u8::from(ctx.local_free),
            );
            if !self.send(line).await {
                self.dead.store(true, Ordering::SeqCst);
                return Offer::Decline;
            }
            match rx.await {
                Ok(Answer::Accept(machine)) => {
                    let machine = if machine.is_empty() {
                        self.name()
                    } else {
                        machine
                    };
                    Offer::Accept(
                        Box::pin(self.clone().build(id, machine, job, cancel)) as BuildFuture
                    )
                }
                Ok(Answer::Postpone) => Offer::Postpone,
                Ok(Answer::Decline) | Err(_) => Offer::Decline,
            }
        })
    }
}
