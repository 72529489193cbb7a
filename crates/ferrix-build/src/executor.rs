//! The one interface between the scheduler and whatever builds a derivation.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ferrix_format::{Derivation, StorePath};
use tokio::sync::watch;

use crate::error::BuildFailure;

/// A derivation to realise, with its output paths.
#[derive(Debug)]
pub struct Job {
    pub drv_path: StorePath,
    pub drv: Derivation,
    pub outputs: BTreeMap<String, StorePath>,
    /// The input sources and input derivation outputs: their closure (valid once the deps
    /// are built) is what the outputs may refer to, besides the outputs themselves.
    pub input_roots: BTreeSet<StorePath>,
    /// Normal, `--check` or `--repair`.
    pub mode: BuildMode,
}

/// How a wanted derivation is realised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildMode {
    /// Build unless the outputs are valid.
    #[default]
    Normal,
    /// Build again although the outputs are valid, and compare (`--check`).
    Check,
    /// Build again and replace the outputs, valid or not (`--repair`: they may be damaged).
    Repair,
}

/// What happened to a job that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    /// Built here (or elsewhere) and registered by this job.
    Built,
    /// Found valid once its locks were held: another process built it meanwhile.
    AlreadyValid,
    /// Built again (`--check`) with the same result as the registered outputs.
    Checked,
}

/// Set to `true` when running jobs must stop (interrupt, or a failure without keep-going).
pub type Cancel = watch::Receiver<bool>;

pub type BuildFuture = Pin<Box<dyn Future<Output = Result<Built, BuildFailure>> + Send>>;

/// An executor's answer when offered a ready job. The scheduler asks executors in order
/// (substituters, then delegating ones such as build hooks and remote machines, then local)
/// and gives the job to the first that accepts; `Postpone` means "ask again later" (e.g. all
/// remote slots busy), `Decline` means "never for this job".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Accept,
    Decline,
    Postpone,
}

/// Something that can realise jobs: the local builder here; hooks, remote machines and
/// substituters later, without changes to the scheduler.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Whether this executor takes `job` now. It is only asked when it has a free slot by its
    /// own count ([`Executor::slots`]).
    fn offer(&self, _job: &Job) -> Offer {
        Offer::Accept
    }

    /// How many jobs it runs at once (`max-jobs` for the local builder).
    fn slots(&self) -> usize;

    /// Realise `job`: lock its outputs, build, check and register them. When `cancel` turns
    /// true it stops, leaving nothing half-done, and returns [`BuildFailure::Interrupted`].
    fn build(self: Arc<Self>, job: Arc<Job>, cancel: Cancel) -> BuildFuture;

    /// Finish what goes on after builds have returned (the local builder registers outputs
    /// in the background while dependents start): the jobs that failed in the end, with why.
    fn settle(self: Arc<Self>) -> SettleFuture {
        Box::pin(async { Vec::new() })
    }
}

pub type SettleFuture = Pin<Box<dyn Future<Output = Vec<(StorePath, BuildFailure)>> + Send>>;

/// Hears about progress, for a status line or plain log lines.
pub trait Reporter: Send + Sync {
    fn started(&self, _drv: &StorePath) {}
    fn log_line(&self, _drv: &StorePath, _line: &str) {}
    fn finished(&self, _drv: &StorePath, _result: &Result<Built, BuildFailure>) {}
}

/// A reporter that says nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Reporter for Quiet {}
