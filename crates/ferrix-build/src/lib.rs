//! Realising derivations: the plan (what must be built), the Engine (an event loop over the
//! goals it is given, most urgent first, each executor up to its capacity) and the executors
//! behind one trait (local builds, build hooks, remote machines), with one registry of
//! outputs they all claim and register through.

pub mod attrs;
pub mod builtin;
mod check;
pub mod env;
pub mod error;
pub mod executor;
pub mod export;
pub mod hook;
pub mod local;
pub mod log;
mod outputs;
pub mod plan;
pub mod refscan;
pub mod register;
pub mod registry;
pub mod remote;
pub mod sandbox;
pub mod sandbox_host;
pub mod scheduler;
pub mod substitute;
pub mod times;
pub mod users;

pub use error::{BuildFailure, FailureKind, PlanError};
pub use executor::{
    BuildMode, Built, Executor, Job, JobError, JobLimits, Offer, OfferContext, Quiet, Reporter,
};
pub use local::{LocalExecutor, LocalSettings, SandboxSettings};
pub use plan::{plan, plan_builds, plan_with, Plan, Wanted, Work};
pub use registry::Registry;
pub use scheduler::{
    run, Engine, EngineSetup, Fallback, GoalHandle, GoalId, NodeResult, Outcome, ScheduleOptions,
};
pub use times::BuildTimes;

/// An error and its causes on one line, as messages show them.
pub fn render_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s += ": ";
            s += &t;
        }
        cur = c.source();
    }
    s
}
