//! The one interface between the scheduler and whatever builds a derivation.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ferrix_format::{Derivation, StorePath};
use tokio::sync::watch;

use crate::error::BuildFailure;

/// A derivation to realise, with its output paths.
#[derive(Debug, Clone)]
pub struct Job {
    pub drv_path: StorePath,
    pub drv: Derivation,
    pub outputs: BTreeMap<String, StorePath>,
    /// The input sources and input derivation outputs: their closure (valid once the deps
    /// are built) is what the outputs may refer to, besides the outputs themselves.
    pub input_roots: BTreeSet<StorePath>,
    /// Normal, `--check` or `--repair`.
    pub mode: BuildMode,
    /// What whoever asked for this build wants of it besides the executor's settings (a
    /// daemon's client sends its own).
    pub limits: JobLimits,
}

/// Limits a goal sets on its builds, over the executor's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct JobLimits {
    /// `max-silent-time`, when set.
    pub max_silent_time: Option<std::time::Duration>,
    /// `timeout`, when set.
    pub timeout: Option<std::time::Duration>,
    /// Keep the build directory of a failed build (`keep-failed`).
    pub keep_failed: bool,
}

impl Job {
    /// `requiredSystemFeatures`, split as Nix splits it (on whitespace).
    pub fn required_features(&self) -> BTreeSet<String> {
        self.drv
            .env
            .get("requiredSystemFeatures")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// `preferLocalBuild = true`.
    pub fn prefers_local(&self) -> bool {
        self.drv.env.get("preferLocalBuild").map(String::as_str) == Some("1")
    }

    /// Built in-process (`builtin:fetchurl` and friends): any machine can, none need to.
    pub fn is_builtin(&self) -> bool {
        self.drv.builder.starts_with("builtin:")
    }
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
    /// Fetched from a cache.
    Substituted,
}

/// Set to `true` when running jobs must stop (interrupt, or a failure without keep-going).
pub type Cancel = watch::Receiver<bool>;

/// How a job ended when it did not build.
#[derive(Debug)]
pub enum JobError {
    /// The build failed: its dependents fail too.
    Failed(BuildFailure),
    /// Whoever built it is gone (a machine unreachable, a connection dropped) before
    /// anything was registered: the job can be offered again, elsewhere.
    Lost {
        /// Who lost it (a machine's URI, a hook).
        by: String,
        /// Why, for the user.
        why: String,
    },
}

impl From<BuildFailure> for JobError {
    fn from(f: BuildFailure) -> Self {
        Self::Failed(f)
    }
}

pub type BuildFuture = Pin<Box<dyn Future<Output = Result<Built, JobError>> + Send>>;

/// An executor's answer when offered a ready job.
pub enum Offer {
    /// It takes the job: the future builds it (and holds whatever slot it reserved).
    Accept(BuildFuture),
    /// Not this one: the next executor is asked (the local one last).
    Decline,
    /// Not now (every suitable machine is busy): asked again when any job ends.
    Postpone,
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Accept(_) => "Accept",
            Self::Decline => "Decline",
            Self::Postpone => "Postpone",
        })
    }
}

pub type OfferFuture = Pin<Box<dyn Future<Output = Offer> + Send>>;

/// What the scheduler tells an executor along with an offer.
#[derive(Debug, Clone, Copy)]
pub struct OfferContext {
    /// Whether a local build slot is free now (Nix's `amWilling`): a delegating executor
    /// whose machines are busy declines then, and postpones otherwise.
    pub local_free: bool,
    /// Whether the local executor can build this job at all (system, features, max-jobs).
    pub local_possible: bool,
}

/// Something that can realise jobs: the local builder, a build hook, remote machines. The
/// scheduler asks them in turn (delegating ones first, the local one last, unless the job
/// prefers a local build) and counts each one's running jobs against its capacity.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// How many jobs it runs at once (`max-jobs` for the local builder, the sum of the
    /// machines' max jobs for remote ones). It is offered jobs only below it.
    fn capacity(&self) -> usize;

    /// Whether it builds on this machine (asked last, and what `preferLocalBuild` prefers).
    fn is_local(&self) -> bool {
        false
    }

    /// Whether it could ever take `job` (system, features, a machine not disabled for
    /// good). When no executor could, the job fails at once instead of waiting forever.
    fn could_build(&self, job: &Job) -> bool;

    /// Whether it takes `job` now. Offers are futures: an external hook answers when it
    /// answers, and the scheduler goes on meanwhile (only one undecided offer at a time).
    /// An offer that is ready at once (the local executor's) takes no turn.
    fn offer(self: Arc<Self>, job: Arc<Job>, ctx: OfferContext, cancel: Cancel) -> OfferFuture;
}

/// Hears about progress, for a status line or plain log lines.
pub trait Reporter: Send + Sync {
    fn started(&self, _drv: &StorePath) {}
    /// A job went to another machine (`building '…' on '…'`).
    fn started_on(&self, drv: &StorePath, _machine: &str) {
        self.started(drv)
    }
    /// A path is being fetched from a cache (`copying path '…' from '…'`); its end is
    /// [`Reporter::finished`].
    fn fetching(&self, _path: &StorePath, _from: &str) {}
    /// `bytes` more of `path`'s NAR arrived (called often while a path is fetched).
    fn transferred(&self, _path: &StorePath, _bytes: u64) {}
    fn log_line(&self, _drv: &StorePath, _line: &str) {}
    fn finished(&self, _drv: &StorePath, _result: Result<Built, &BuildFailure>) {}
    /// A job was lost and goes elsewhere; a machine went down.
    fn warn(&self, _msg: &str) {}
}

/// A reporter that says nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl Reporter for Quiet {}
