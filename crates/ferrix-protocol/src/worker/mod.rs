//! The worker protocol: what `nix-daemon` speaks on its socket and `nix-daemon --stdio` on its
//! standard input and output (what `ssh-ng://` stores speak).
//!
//! A session: the handshake ([`handshake`]), then operations until the client closes the
//! stream. Each operation is a u64 [`Op`] and its arguments ([`WorkerRequest`],
//! [`read_request`], [`write_request`]); while the server works on it, it sends log messages
//! ([`StderrMsg`]), and it ends the work with [`StderrMsg::Last`] followed by the operation's
//! reply ([`reply`]), or with [`StderrMsg::Error`] and no reply. Some operations carry a
//! payload after their arguments ([`payload`]): the NAR of `AddToStoreNar`, the stream of
//! `AddMultipleToStore`, the log of `AddBuildLog`; `NarFromPath` answers with a bare NAR after
//! `Last`.
//!
//! Versions: we speak 1.38 and accept clients from 1.18 (as current Nix does). Both sides use
//! the smaller of the two versions for every gate below. Feature negotiation (1.38) is
//! supported, but we offer no feature, so none is ever in use.
//!
//! | since | change |
//! |---|---|
//! | 1.11 | the client sends an obsolete reserve-space flag after the greeting |
//! | 1.12 | `SetOptions` carries the overridden settings |
//! | 1.14 | the client sends an obsolete CPU affinity flag after the greeting |
//! | 1.15 | `BuildPaths` carries a build mode |
//! | 1.16 | path infos carry `ultimate`, signatures and the content address |
//! | 1.17 | `QueryPathInfo` answers a found flag first (before: an error for an invalid path) |
//! | 1.20 | activity messages (`StartActivity`, `StopActivity`, `Result`) |
//! | 1.21 | the NAR of `AddToStoreNar` is pulled by `STDERR_READ` (before: sent raw) |
//! | 1.23 | … sent as a framed stream |
//! | 1.26 | an error is the serialised `Error` (before: message and exit status) |
//! | 1.27 | `QueryValidPaths` carries a `substitute` flag |
//! | 1.28 | a build result carries `builtOutputs` (`DrvOutput` → realisation JSON) |
//! | 1.29 | a build result carries `timesBuilt`, `isNonDeterministic`, `startTime`, `stopTime` |
//! | 1.30 | build targets are `DerivedPath`s (before: legacy "paths with outputs") |
//! | 1.32 | clients use `AddMultipleToStore` |
//! | 1.33 | the server sends its Nix version after the greeting |
//! | 1.34 | clients use `BuildPathsWithResults` (Nix 2.8 speaks 1.34) |
//! | 1.35 | the server says whether it trusts the client after the greeting |
//! | 1.36 | `AddPermRoot` |
//! | 1.37 | a build result carries the CPU times of the build (`cpuUser`, `cpuSystem`) |
//! | 1.38 | feature negotiation |

pub mod build_result;
pub mod handshake;
pub mod options;
pub mod path_info;
pub mod payload;
pub mod reply;
mod request;
pub mod stderr;

pub use build_result::{
    read_build_result, read_keyed_build_results, write_build_result, write_keyed_build_results,
    BuildMode, BuildResult, DerivedPath, KeyedBuildResult, OutputsSpec,
};
pub use handshake::{
    client_handshake, client_post_handshake, client_startup, server_handshake,
    server_post_handshake, server_startup, HandshakeInfo, Negotiated,
};
pub use options::ClientOptions;
pub use path_info::{PathInfo, UnkeyedPathInfo, FULL};
pub use payload::{MultiplePathsReader, MultiplePathsWriter, NarPayload, NarTransfer};
pub use reply::Missing;
pub use request::{
    read_op, read_request, read_request_body, write_request, CaMethod, GcAction, WorkerRequest,
};
pub use stderr::{process_stderr, read_stderr, write_stderr, ErrorInfo, Field, StderrMsg};

/// The types the worker protocol shares with the serve protocol.
pub use crate::serve::{BuildStatus, BuiltOutput};

use crate::Version;

pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;

/// The newest version we speak (Nix 2.24 and later).
pub const WORKER_PROTOCOL_VERSION: Version = Version::new(1, 38);
/// What Nix 2.8 speaks.
pub const WORKER_VERSION_NIX_2_8: Version = Version::new(1, 34);
/// The oldest client a server accepts (as current Nix).
pub const MINIMUM_CLIENT_VERSION: Version = Version::new(1, 18);
/// The oldest daemon a client accepts (as Nix).
pub const MINIMUM_DAEMON_VERSION: Version = Version::new(1, 10);
/// Feature negotiation starts here.
pub const FEATURES_SINCE: Version = Version::new(1, 38);

/// Operations, by number. Numbers Nix has retired are listed for what old clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    IsValidPath = 1,
    HasSubstitutes = 3,
    QueryPathHash = 4,
    QueryReferences = 5,
    QueryReferrers = 6,
    AddToStore = 7,
    AddTextToStore = 8,
    BuildPaths = 9,
    EnsurePath = 10,
    AddTempRoot = 11,
    AddIndirectRoot = 12,
    SyncWithGC = 13,
    FindRoots = 14,
    ExportPath = 16,
    QueryDeriver = 18,
    SetOptions = 19,
    CollectGarbage = 20,
    QuerySubstitutablePathInfo = 21,
    QueryDerivationOutputs = 22,
    QueryAllValidPaths = 23,
    QueryFailedPaths = 24,
    ClearFailedPaths = 25,
    QueryPathInfo = 26,
    ImportPaths = 27,
    QueryDerivationOutputNames = 28,
    QueryPathFromHashPart = 29,
    QuerySubstitutablePathInfos = 30,
    QueryValidPaths = 31,
    QuerySubstitutablePaths = 32,
    QueryValidDerivers = 33,
    OptimiseStore = 34,
    VerifyStore = 35,
    BuildDerivation = 36,
    AddSignatures = 37,
    NarFromPath = 38,
    AddToStoreNar = 39,
    QueryMissing = 40,
    QueryDerivationOutputMap = 41,
    RegisterDrvOutput = 42,
    QueryRealisation = 43,
    AddMultipleToStore = 44,
    AddBuildLog = 45,
    BuildPathsWithResults = 46,
    AddPermRoot = 47,
}

impl Op {
    pub const ALL: [Op; 44] = [
        Self::IsValidPath,
        Self::HasSubstitutes,
        Self::QueryPathHash,
        Self::QueryReferences,
        Self::QueryReferrers,
        Self::AddToStore,
        Self::AddTextToStore,
        Self::BuildPaths,
        Self::EnsurePath,
        Self::AddTempRoot,
        Self::AddIndirectRoot,
        Self::SyncWithGC,
        Self::FindRoots,
        Self::ExportPath,
        Self::QueryDeriver,
        Self::SetOptions,
        Self::CollectGarbage,
        Self::QuerySubstitutablePathInfo,
        Self::QueryDerivationOutputs,
        Self::QueryAllValidPaths,
        Self::QueryFailedPaths,
        Self::ClearFailedPaths,
        Self::QueryPathInfo,
        Self::ImportPaths,
        Self::QueryDerivationOutputNames,
        Self::QueryPathFromHashPart,
        Self::QuerySubstitutablePathInfos,
        Self::QueryValidPaths,
        Self::QuerySubstitutablePaths,
        Self::QueryValidDerivers,
        Self::OptimiseStore,
        Self::VerifyStore,
        Self::BuildDerivation,
        Self::AddSignatures,
        Self::NarFromPath,
        Self::AddToStoreNar,
        Self::QueryMissing,
        Self::QueryDerivationOutputMap,
        Self::RegisterDrvOutput,
        Self::QueryRealisation,
        Self::AddMultipleToStore,
        Self::AddBuildLog,
        Self::BuildPathsWithResults,
        Self::AddPermRoot,
    ];

    pub fn from_u64(n: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|o| *o as u64 == n)
    }

    pub const fn number(self) -> u64 {
        self as u64
    }

    /// Nix's name for it, without the `wop` prefix.
    pub const fn name(self) -> &'static str {
        match self {
            Self::IsValidPath => "IsValidPath",
            Self::HasSubstitutes => "HasSubstitutes",
            Self::QueryPathHash => "QueryPathHash",
            Self::QueryReferences => "QueryReferences",
            Self::QueryReferrers => "QueryReferrers",
            Self::AddToStore => "AddToStore",
            Self::AddTextToStore => "AddTextToStore",
            Self::BuildPaths => "BuildPaths",
            Self::EnsurePath => "EnsurePath",
            Self::AddTempRoot => "AddTempRoot",
            Self::AddIndirectRoot => "AddIndirectRoot",
            Self::SyncWithGC => "SyncWithGC",
            Self::FindRoots => "FindRoots",
            Self::ExportPath => "ExportPath",
            Self::QueryDeriver => "QueryDeriver",
            Self::SetOptions => "SetOptions",
            Self::CollectGarbage => "CollectGarbage",
            Self::QuerySubstitutablePathInfo => "QuerySubstitutablePathInfo",
            Self::QueryDerivationOutputs => "QueryDerivationOutputs",
            Self::QueryAllValidPaths => "QueryAllValidPaths",
            Self::QueryFailedPaths => "QueryFailedPaths",
            Self::ClearFailedPaths => "ClearFailedPaths",
            Self::QueryPathInfo => "QueryPathInfo",
            Self::ImportPaths => "ImportPaths",
            Self::QueryDerivationOutputNames => "QueryDerivationOutputNames",
            Self::QueryPathFromHashPart => "QueryPathFromHashPart",
            Self::QuerySubstitutablePathInfos => "QuerySubstitutablePathInfos",
            Self::QueryValidPaths => "QueryValidPaths",
            Self::QuerySubstitutablePaths => "QuerySubstitutablePaths",
            Self::QueryValidDerivers => "QueryValidDerivers",
            Self::OptimiseStore => "OptimiseStore",
            Self::VerifyStore => "VerifyStore",
            Self::BuildDerivation => "BuildDerivation",
            Self::AddSignatures => "AddSignatures",
            Self::NarFromPath => "NarFromPath",
            Self::AddToStoreNar => "AddToStoreNar",
            Self::QueryMissing => "QueryMissing",
            Self::QueryDerivationOutputMap => "QueryDerivationOutputMap",
            Self::RegisterDrvOutput => "RegisterDrvOutput",
            Self::QueryRealisation => "QueryRealisation",
            Self::AddMultipleToStore => "AddMultipleToStore",
            Self::AddBuildLog => "AddBuildLog",
            Self::BuildPathsWithResults => "BuildPathsWithResults",
            Self::AddPermRoot => "AddPermRoot",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

#[cfg(test)]
mod tests;
