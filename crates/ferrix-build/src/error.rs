//! Why a derivation could not be built, with the derivation (and the output or input) named.

use std::time::Duration;

use ferrix_store::StoreError;
use thiserror::Error;

fn tail_lines(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut s = format!(";\n       last {} log lines:", tail.len());
    for l in tail {
        s += "\n       > ";
        s += l;
    }
    s
}

/// Errors found before any build starts: the plan cannot be made.
#[derive(Debug, Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("derivation '{drv}' has no output named '{output}'")]
    NoSuchOutput { drv: String, output: String },
    #[error("input '{input}' of derivation '{drv}' is not valid, and there are no substituters to fetch it from")]
    InputNotValid { drv: String, input: String },
    #[error("some outputs of '{drv}' are not valid, so checking is not possible")]
    CannotCheck { drv: String },
    #[error("derivation '{drv}': {what} are not supported yet")]
    Unsupported { drv: String, what: &'static str },
}

/// Why one derivation did not get built.
#[derive(Debug, Error)]
pub enum BuildFailure {
    #[error("builder for '{drv}' failed with exit code {code}")]
    ExitCode { drv: String, code: i32 },
    #[error("builder for '{drv}' was killed by signal {signal}")]
    Signal { drv: String, signal: i32 },
    #[error("building '{drv}' timed out after {0} seconds", .after.as_secs())]
    Timeout { drv: String, after: Duration },
    #[error("'{drv}' produced no output for {0} seconds", .after.as_secs())]
    Silent { drv: String, after: Duration },
    #[error("could not start the builder '{builder}' of '{drv}'")]
    Spawn {
        drv: String,
        builder: String,
        #[source]
        source: std::io::Error,
    },
    #[error("builder for '{drv}' failed to produce output path for output '{output}' at '{path}'")]
    MissingOutput {
        drv: String,
        output: String,
        path: String,
    },
    #[error("output '{path}' of '{drv}' cannot be read as a store path")]
    UnreadableOutput {
        drv: String,
        path: String,
        #[source]
        source: ferrix_format::nar::DumpError,
    },
    #[error("hash mismatch in fixed-output derivation '{drv}':\n  specified: {specified}\n       got:    {got}")]
    HashMismatch {
        drv: String,
        specified: String,
        got: String,
    },
    #[error("some outputs of '{drv}' are not valid, so checking is not possible")]
    CannotCheck { drv: String },
    #[error("derivation '{drv}' may not be deterministic: output '{path}' differs{}", .kept.as_ref().map(|k| format!(" from '{k}'")).unwrap_or_default())]
    NotDeterministic {
        drv: String,
        path: String,
        /// Where the new build was kept (`--keep-failed`).
        kept: Option<String>,
    },
    #[error("the outputs of '{drv}' were not registered, because those of its input '{input}' could not be")]
    InputUnregistered { drv: String, input: String },
    #[error("derivation '{drv}' cannot be built: {why}")]
    Malformed { drv: String, why: String },
    #[error("output '{path}' of '{drv}' {why}")]
    BadReferences {
        drv: String,
        path: String,
        why: String,
    },
    #[error("{drv}: {what}")]
    Io {
        drv: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{drv}: registering the outputs")]
    Registration {
        drv: String,
        #[source]
        source: std::sync::Arc<StoreError>,
    },
    #[error("{drv}")]
    Store {
        drv: String,
        #[source]
        source: StoreError,
    },
    #[error("building '{drv}' was interrupted")]
    Interrupted { drv: String },
    #[error("cannot build '{drv}' because its input '{input}' failed to build")]
    DependencyFailed { drv: String, input: String },
    #[error("cannot build '{drv}': local builds are disabled (max-jobs = 0) and there are no remote builders; either increase '--max-jobs' or enable remote builds")]
    NoSlots { drv: String },
    #[error("cannot build '{drv}': {} a '{system}'{} is required, and it cannot be built locally", if *.declined { "no machine would take it:" } else { "no machine can build it:" }, if .features.is_empty() { String::new() } else { format!(" with features {{{}}}", .features) })]
    NoBuilder {
        drv: String,
        system: String,
        /// The required features, comma separated.
        features: String,
        /// Some executor could, but declined.
        declined: bool,
    },
    #[error("build of '{drv}' on '{machine}' failed: {msg}{}", tail_lines(.tail))]
    Remote {
        drv: String,
        machine: String,
        msg: String,
        /// The remote log's last lines.
        tail: Vec<String>,
        /// Timed out there (Nix's status bit 1).
        timed_out: bool,
    },
    #[error(
        "'{machine}' sent output '{path}' of '{drv}' with NAR hash {got}, but said it was {said}"
    )]
    RemoteMismatch {
        drv: String,
        machine: String,
        path: String,
        said: String,
        got: String,
    },
    #[error("building '{drv}' was lost {times} times, last on '{by}': {why}")]
    Lost {
        drv: String,
        by: String,
        why: String,
        times: u32,
    },
}

impl BuildFailure {
    /// Bits of Nix's exit status: 0x01 timeout, 0x02 hash mismatch, 0x04 build failure.
    pub fn status_bits(&self) -> u32 {
        match self {
            Self::Timeout { .. } | Self::Silent { .. } => 0x04 | 0x01,
            Self::Remote {
                timed_out: true, ..
            } => 0x04 | 0x01,
            Self::HashMismatch { .. } => 0x04 | 0x02,
            // Nix's "not deterministic" bit: a check that ran and differed, not a failure.
            Self::NotDeterministic { .. } => 0x08,
            // The builder succeeded but its outputs were rejected: Nix's plain failure (1).
            Self::MissingOutput { .. }
            | Self::UnreadableOutput { .. }
            | Self::BadReferences { .. }
            | Self::DependencyFailed { .. }
            | Self::InputUnregistered { .. }
            | Self::Interrupted { .. }
            | Self::NoSlots { .. }
            | Self::NoBuilder { .. }
            | Self::RemoteMismatch { .. }
            | Self::Lost { .. } => 0,
            _ => 0x04,
        }
    }
}
