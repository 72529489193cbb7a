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
    #[error("path '{path}' is not valid, and {}", if *substituters { "no substituter can fetch it" } else { "there are no substituters to fetch it from" })]
    PathNotValid { path: String, substituters: bool },
    #[error("some outputs of '{drv}' are not valid, so checking is not possible")]
    CannotCheck { drv: String },
    #[error("derivation '{drv}': {what} are not supported yet")]
    Unsupported { drv: String, what: &'static str },
}

/// Why one derivation did not get built: the derivation, and what went wrong.
#[derive(Debug)]
pub struct BuildFailure {
    /// The derivation, printed with its store directory.
    pub drv: String,
    pub kind: FailureKind,
}

impl BuildFailure {
    pub fn new(drv: impl Into<String>, kind: FailureKind) -> Self {
        Self {
            drv: drv.into(),
            kind,
        }
    }

    /// For `map_err`: an I/O error of `drv` while doing `what`.
    pub fn io(drv: &str, what: String) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::new(drv, FailureKind::Io { what, source })
    }

    /// For `map_err`: a store error of `drv` (reusable: it only borrows the name).
    pub fn store(drv: &str) -> impl Fn(StoreError) -> Self + Copy + '_ {
        move |source| Self::new(drv, FailureKind::Store { source })
    }
}

/// What went wrong.
#[derive(Debug)]
pub enum FailureKind {
    ExitCode {
        code: i32,
    },
    Signal {
        signal: i32,
    },
    Timeout {
        after: Duration,
    },
    Silent {
        after: Duration,
    },
    Spawn {
        builder: String,
        source: std::io::Error,
    },
    /// A built-in builder (`builtin:fetchurl`) failed.
    Builtin {
        builder: String,
        source: Box<crate::builtin::BuiltinError>,
    },
    MissingOutput {
        output: String,
        path: String,
    },
    UnreadableOutput {
        path: String,
        source: ferrix_format::nar::DumpError,
    },
    HashMismatch {
        specified: String,
        got: String,
    },
    CannotCheck,
    NotDeterministic {
        path: String,
        /// Where the new build was kept (`--keep-failed`).
        kept: Option<String>,
    },
    InputUnregistered {
        input: String,
    },
    Malformed {
        why: String,
    },
    BadReferences {
        path: String,
        why: String,
    },
    Io {
        what: String,
        source: std::io::Error,
    },
    Registration {
        source: std::sync::Arc<StoreError>,
    },
    Store {
        source: StoreError,
    },
    Interrupted,
    DependencyFailed {
        input: String,
    },
    NoSlots,
    NoBuilder {
        system: String,
        /// The required features, comma separated.
        features: String,
        /// Some executor could, but declined.
        declined: bool,
    },
    Remote {
        machine: String,
        msg: String,
        /// The remote log's last lines.
        tail: Vec<String>,
        /// Timed out there (Nix's status bit 1).
        timed_out: bool,
    },
    RemoteMismatch {
        machine: String,
        path: String,
        said: String,
        got: String,
    },
    Lost {
        by: String,
        why: String,
        times: u32,
    },
    /// Fetching a path (the failure's `drv` is the path) failed from every cache that has
    /// it: each cache's error, in the order they were tried.
    Substitute {
        errors: Vec<ferrix_store::binary_cache::CacheError>,
        /// Whether it will be built instead (`--fallback`).
        fallback: bool,
    },
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let drv = &self.drv;
        match &self.kind {
            FailureKind::ExitCode { code, .. } => write!(f, "builder for '{drv}' failed with exit code {code}"),
            FailureKind::Signal { signal, .. } => write!(f, "builder for '{drv}' was killed by signal {signal}"),
            FailureKind::Timeout { after, .. } => write!(f, "building '{drv}' timed out after {0} seconds", after.as_secs()),
            FailureKind::Silent { after, .. } => write!(f, "'{drv}' produced no output for {0} seconds", after.as_secs()),
            FailureKind::Spawn { builder, .. } => write!(f, "could not start the builder '{builder}' of '{drv}'"),
            FailureKind::Builtin { builder, .. } => write!(f, "the builder '{builder}' of '{drv}' failed"),
            FailureKind::MissingOutput { output, path, .. } => write!(f, "builder for '{drv}' failed to produce output path for output '{output}' at '{path}'"),
            FailureKind::UnreadableOutput { path, .. } => write!(f, "output '{path}' of '{drv}' cannot be read as a store path"),
            FailureKind::HashMismatch { specified, got, .. } => write!(f, "hash mismatch in fixed-output derivation '{drv}':\n  specified: {specified}\n       got:    {got}"),
            FailureKind::CannotCheck => write!(f, "some outputs of '{drv}' are not valid, so checking is not possible"),
            FailureKind::NotDeterministic { path, kept, .. } => write!(f, "derivation '{drv}' may not be deterministic: output '{path}' differs{}", kept.as_ref().map(|k| format!(" from '{k}'")).unwrap_or_default()),
            FailureKind::InputUnregistered { input, .. } => write!(f, "the outputs of '{drv}' were not registered, because those of its input '{input}' could not be"),
            FailureKind::Malformed { why, .. } => write!(f, "derivation '{drv}' cannot be built: {why}"),
            FailureKind::BadReferences { path, why, .. } => write!(f, "output '{path}' of '{drv}' {why}"),
            FailureKind::Io { what, .. } => write!(f, "{drv}: {what}"),
            FailureKind::Registration { .. } => write!(f, "{drv}: registering the outputs"),
            FailureKind::Store { .. } => write!(f, "{drv}"),
            FailureKind::Interrupted => write!(f, "building '{drv}' was interrupted"),
            FailureKind::DependencyFailed { input, .. } => write!(f, "cannot build '{drv}' because its input '{input}' failed to build"),
            FailureKind::NoSlots => write!(f, "cannot build '{drv}': local builds are disabled (max-jobs = 0) and there are no remote builders; either increase '--max-jobs' or enable remote builds"),
            FailureKind::NoBuilder { system, features, declined, .. } => write!(f, "cannot build '{drv}': {} a '{system}'{} is required, and it cannot be built locally", if *declined { "no machine would take it:" } else { "no machine can build it:" }, if features.is_empty() { String::new() } else { format!(" with features {{{}}}", features) }),
            FailureKind::Remote { machine, msg, tail, .. } => write!(f, "build of '{drv}' on '{machine}' failed: {msg}{}", tail_lines(tail)),
            FailureKind::RemoteMismatch { machine, path, said, got, .. } => write!(f, "'{machine}' sent output '{path}' of '{drv}' with NAR hash {got}, but said it was {said}"),
            FailureKind::Lost { by, why, times, .. } => write!(f, "building '{drv}' was lost {times} times, last on '{by}': {why}"),
            FailureKind::Substitute { errors, fallback } => {
                write!(f, "substituting '{drv}' failed")?;
                for e in errors {
                    write!(f, ";\n       {}", crate::render_error(e))?;
                }
                if !fallback {
                    write!(f, "\n       (try '--fallback' to build it from source instead)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for BuildFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            FailureKind::Spawn { source, .. } => Some(source),
            FailureKind::Builtin { source, .. } => Some(source),
            FailureKind::UnreadableOutput { source, .. } => Some(source),
            FailureKind::Io { source, .. } => Some(source),
            FailureKind::Registration { source, .. } => Some(source),
            FailureKind::Store { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl BuildFailure {
    /// Bits of Nix's exit status: 0x01 timeout, 0x02 hash mismatch, 0x04 build failure.
    pub fn status_bits(&self) -> u32 {
        use FailureKind as K;
        match &self.kind {
            K::Timeout { .. } | K::Silent { .. } => 0x04 | 0x01,
            K::Remote {
                timed_out: true, ..
            } => 0x04 | 0x01,
            K::HashMismatch { .. } => 0x04 | 0x02,
            // Nix's "not deterministic" bit: a check that ran and differed, not a failure.
            K::NotDeterministic { .. } => 0x08,
            // The builder succeeded but its outputs were rejected: Nix's plain failure (1).
            K::MissingOutput { .. }
            | K::UnreadableOutput { .. }
            | K::BadReferences { .. }
            | K::DependencyFailed { .. }
            | K::InputUnregistered { .. }
            | K::Interrupted
            | K::NoSlots
            | K::NoBuilder { .. }
            | K::RemoteMismatch { .. }
            | K::Lost { .. }
            | K::Substitute { .. } => 0,
            _ => 0x04,
        }
    }
}
