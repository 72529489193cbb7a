//! Realising derivations: the plan (what must be built), the scheduler (an event loop over
//! it, most urgent first, `max-jobs` at a time) and the executors behind one trait (local
//! builds now; build hooks, remote machines and substituters later).

pub mod attrs;
mod check;
pub mod env;
pub mod error;
pub mod executor;
pub mod export;
pub mod local;
pub mod log;
mod outputs;
pub mod plan;
pub mod refscan;
pub mod register;
pub mod sandbox;
pub mod sandbox_host;
pub mod scheduler;
pub mod times;

pub use error::{BuildFailure, PlanError};
pub use executor::{BuildMode, Built, Executor, Job, Offer, Quiet, Reporter};
pub use local::{LocalExecutor, LocalSettings, SandboxSettings};
pub use plan::{plan, plan_builds, Plan, Wanted};
pub use scheduler::{run, NodeResult, Outcome, ScheduleOptions};
pub use times::BuildTimes;
