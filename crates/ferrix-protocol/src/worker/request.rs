//! Operations and their arguments, as the client sends them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use ferrix_format::content_address::{ContentAddress, FileIngestionMethod};
use ferrix_format::{Derivation, HashAlgo, StoreDir, StorePath};

use super::build_result::{
    read_derived_paths, write_derived_paths, BuildMode, DerivedPath, BUILD_MODE_SINCE,
};
use super::options::ClientOptions;
use super::path_info::{PathInfo, FULL};
use super::Op;
use crate::derivation::{read_basic_derivation, write_basic_derivation};
use crate::wire::{
    read_bool, read_count, read_store_path, read_store_path_set, read_string, read_string_set,
    read_u64, read_u64_or_eof, write_bool, write_store_path, write_store_paths, write_str,
    write_strings, write_u64, Limits, WireError,
};
use crate::Version;

/// `QueryValidPaths` carries a `substitute` flag from this version on.
pub const SUBSTITUTE_FLAG_SINCE: Version = Version::new(1, 27);

/// `AddToStore` takes a content-address method and a framed stream from this version on
/// (before, a base name, flags and an unframed NAR, which this crate does not read).
pub const ADD_TO_STORE_CA_SINCE: Version = Version::new(1, 25);
/// `QuerySubstitutablePathInfos` sends each path with its content address.
pub const CA_MAP_SINCE: Version = Version::new(1, 22);
/// Realisations travel as JSON (before, as an id and a path).
pub const REALISATION_JSON_SINCE: Version = Version::new(1, 31);

/// What `CollectGarbage` does (its number on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcAction {
    /// 0: list the live paths.
    ReturnLive,
    /// 1: list the dead paths.
    ReturnDead,
    /// 2: delete every dead path.
    DeleteDead,
    /// 3: delete the given paths, which must be dead.
    DeleteSpecific,
}

impl GcAction {
    pub fn number(self) -> u64 {
        match self {
            GcAction::ReturnLive => 0,
            GcAction::ReturnDead => 1,
            GcAction::DeleteDead => 2,
            GcAction::DeleteSpecific => 3,
        }
    }

    pub fn from_number(n: u64) -> Option<GcAction> {
        Some(match n {
            0 => GcAction::ReturnLive,
            1 => GcAction::ReturnDead,
            2 => GcAction::DeleteDead,
            3 => GcAction::DeleteSpecific,
            _ => return None,
        })
    }
}

/// How the contents of an `AddToStore` are addressed (`text:sha256`, `fixed:r:sha256`,
/// `fixed:sha1`…, as Nix writes a content-address method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaMethod {
    /// A text file, hashed with SHA-256; its references are given.
    Text,
    /// A file's bytes (flat) or a tree's NAR (recursive), hashed with `algo`.
    Fixed {
        method: FileIngestionMethod,
        algo: HashAlgo,
    },
}

impl CaMethod {
    /// Parse `text:sha256`, `fixed:r:ALGO` or `fixed:ALGO`.
    pub fn parse(s: &str) -> Option<CaMethod> {
        if let Some(algo) = s.strip_prefix("text:") {
            return (algo == "sha256").then_some(CaMethod::Text);
        }
        let rest = s.strip_prefix("fixed:")?;
        let (method, algo) = match rest.strip_prefix("r:") {
            Some(a) => (FileIngestionMethod::Recursive, a),
            None => (FileIngestionMethod::Flat, rest),
        };
        Some(CaMethod::Fixed {
            method,
            algo: algo.parse().ok()?,
        })
    }
}

impl std::fmt::Display for CaMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaMethod::Text => f.write_str("text:sha256"),
            CaMethod::Fixed { method, algo } => write!(f, "fixed:{}{algo}", method.prefix()),
        }
    }
}

/// An operation and its arguments.
///
/// Three carry a payload that stays in the reader after [`read_request`] (and that the client
/// sends after [`write_request`]): `AddToStoreNar` (the NAR, see
/// [`super::payload::NarPayload`]), `AddMultipleToStore` (a framed stream, see
/// [`super::payload::MultiplePathsReader`]) and `AddBuildLog` (the log as a framed stream, see
/// [`crate::wire::FramedReader`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerRequest {
    /// 1 → bool.
    IsValidPath(StorePath),
    /// 6 → path set.
    QueryReferrers(StorePath),
    /// 7 (≥ 1.25): a content-addressed path, its contents follow as a framed stream (a NAR,
    /// a file's bytes or a text, by `method`) → the path info in full.
    AddToStore {
        name: String,
        method: CaMethod,
        refs: BTreeSet<StorePath>,
        repair: bool,
    },
    /// 8 (what clients before 1.25 send for text files) → the path.
    AddTextToStore {
        name: String,
        text: String,
        refs: BTreeSet<StorePath>,
    },
    /// 9 → u64 1.
    BuildPaths {
        paths: Vec<DerivedPath>,
        /// [≥ 1.15]
        mode: BuildMode,
    },
    /// 10 → u64 1.
    EnsurePath(StorePath),
    /// 11 → u64 1.
    AddTempRoot(StorePath),
    /// 12: the absolute path of a symlink to a store path → u64 1.
    AddIndirectRoot(String),
    /// 14 → u64 count, then each root's link (a string) and path.
    FindRoots,
    /// 20 (then three obsolete u64) → the paths listed or deleted (a set of strings), u64
    /// bytes freed, u64 0.
    CollectGarbage {
        action: GcAction,
        paths: BTreeSet<StorePath>,
        ignore_liveness: bool,
        /// `u64::MAX`: no limit.
        max_freed: u64,
    },
    /// 13, obsolete → u64 1.
    SyncWithGC,
    /// 19 → nothing.
    SetOptions(ClientOptions),
    /// 23 → path set.
    QueryAllValidPaths,
    /// 26 → [≥ 1.17] u64 found, then (when found) the unkeyed path info.
    QueryPathInfo(StorePath),
    /// 29: the hash part of a store path → the path or `""`.
    QueryPathFromHashPart(String),
    /// 33 → path set: the derivations known to produce the path.
    QueryValidDerivers(StorePath),
    /// 31 → path set.
    QueryValidPaths {
        paths: BTreeSet<StorePath>,
        /// [≥ 1.27]
        substitute: bool,
    },
    /// 36 → build result.
    BuildDerivation {
        drv_path: StorePath,
        /// Sent without its input derivations (`input_drvs` is empty).
        drv: Derivation,
        mode: BuildMode,
    },
    /// 37 → u64 1.
    AddSignatures {
        path: StorePath,
        sigs: BTreeSet<String>,
    },
    /// 38 → the NAR, after `STDERR_LAST`.
    NarFromPath(StorePath),
    /// 16 (then an obsolete u64), what clients before 1.18 use to export → the path's export
    /// record (without the leading `1`) as `STDERR_WRITE` data, then u64 1.
    ExportPath(StorePath),
    /// 27 → the paths imported (strings). The export stream is pulled from the client with
    /// `STDERR_READ` (see [`super::payload::NarPayload::tunnelled`]).
    ImportPaths,
    /// 39, the NAR follows (see [`super::payload::NarTransfer`]) → nothing.
    AddToStoreNar {
        /// Always sent in full (the 1.16 form).
        info: PathInfo,
        repair: bool,
        dont_check_sigs: bool,
    },
    /// 40 → will-build set, will-substitute set, unknown set, u64 download size, u64 NAR size.
    QueryMissing(Vec<DerivedPath>),
    /// 41 → map output name → optional path.
    QueryDerivationOutputMap(StorePath),
    /// 44, a framed stream of paths follows → nothing.
    AddMultipleToStore { repair: bool, dont_check_sigs: bool },
    /// 45: the derivation (sent as a base name, without the store directory), its log follows
    /// as a framed stream → u64 1.
    AddBuildLog(StorePath),
    /// 46 → a list of keyed build results.
    BuildPathsWithResults {
        paths: Vec<DerivedPath>,
        mode: BuildMode,
    },
    /// 47 (≥ 1.36): make `gc_root` (an absolute path) a symlink to `path` and a root → the
    /// root's path.
    AddPermRoot { path: StorePath, gc_root: String },
    /// 3, obsolete → bool: whether a substituter has the path.
    HasSubstitutes(StorePath),
    /// 4, obsolete → the NAR hash in base 16, without its type.
    QueryPathHash(StorePath),
    /// 5, obsolete → path set.
    QueryReferences(StorePath),
    /// 18, obsolete → the deriver or `""`.
    QueryDeriver(StorePath),
    /// 21 → u64 0, or u64 1 then the deriver (or `""`), references, u64 download size and
    /// u64 NAR size.
    QuerySubstitutablePathInfo(StorePath),
    /// 22 → path set: the derivation's output paths.
    QueryDerivationOutputs(StorePath),
    /// 28 → the derivation's output names (a string list).
    QueryDerivationOutputNames(StorePath),
    /// 30: paths, each with its content address when known ([< 1.22] a plain set) → u64
    /// count, then per path: the path, deriver (or `""`), references, u64 download size, u64
    /// NAR size.
    QuerySubstitutablePathInfos(BTreeMap<StorePath, Option<ContentAddress>>),
    /// 32 → path set: those a substituter has.
    QuerySubstitutablePaths(BTreeSet<StorePath>),
    /// 34 → u64 1.
    OptimiseStore,
    /// 35 → bool: whether errors were found (and not all repaired).
    VerifyStore { check_contents: bool, repair: bool },
    /// 42: a realisation of a content-addressed derivation's output ([≥ 1.31] as JSON; before,
    /// its id and output path as two strings) → nothing.
    RegisterDrvOutput(Vec<String>),
    /// 43: an output id (`sha256:…!out`) → [≥ 1.31] a set of realisations as JSON strings;
    /// before, a path set.
    QueryRealisation(String),
}

impl WorkerRequest {
    pub fn op(&self) -> Op {
        match self {
            Self::IsValidPath(_) => Op::IsValidPath,
            Self::QueryReferrers(_) => Op::QueryReferrers,
            Self::AddToStore { .. } => Op::AddToStore,
            Self::AddTextToStore { .. } => Op::AddTextToStore,
            Self::QueryValidDerivers(_) => Op::QueryValidDerivers,
            Self::FindRoots => Op::FindRoots,
            Self::CollectGarbage { .. } => Op::CollectGarbage,
            Self::BuildPaths { .. } => Op::BuildPaths,
            Self::EnsurePath(_) => Op::EnsurePath,
            Self::AddTempRoot(_) => Op::AddTempRoot,
            Self::AddIndirectRoot(_) => Op::AddIndirectRoot,
            Self::SyncWithGC => Op::SyncWithGC,
            Self::SetOptions(_) => Op::SetOptions,
            Self::QueryAllValidPaths => Op::QueryAllValidPaths,
            Self::QueryPathInfo(_) => Op::QueryPathInfo,
            Self::QueryPathFromHashPart(_) => Op::QueryPathFromHashPart,
            Self::QueryValidPaths { .. } => Op::QueryValidPaths,
            Self::BuildDerivation { .. } => Op::BuildDerivation,
            Self::AddSignatures { .. } => Op::AddSignatures,
            Self::NarFromPath(_) => Op::NarFromPath,
            Self::ExportPath(_) => Op::ExportPath,
            Self::ImportPaths => Op::ImportPaths,
            Self::AddToStoreNar { .. } => Op::AddToStoreNar,
            Self::QueryMissing(_) => Op::QueryMissing,
            Self::QueryDerivationOutputMap(_) => Op::QueryDerivationOutputMap,
            Self::AddMultipleToStore { .. } => Op::AddMultipleToStore,
            Self::AddBuildLog(_) => Op::AddBuildLog,
            Self::BuildPathsWithResults { .. } => Op::BuildPathsWithResults,
            Self::AddPermRoot { .. } => Op::AddPermRoot,
            Self::HasSubstitutes(_) => Op::HasSubstitutes,
            Self::QueryPathHash(_) => Op::QueryPathHash,
            Self::QueryReferences(_) => Op::QueryReferences,
            Self::QueryDeriver(_) => Op::QueryDeriver,
            Self::QuerySubstitutablePathInfo(_) => Op::QuerySubstitutablePathInfo,
            Self::QueryDerivationOutputs(_) => Op::QueryDerivationOutputs,
            Self::QueryDerivationOutputNames(_) => Op::QueryDerivationOutputNames,
            Self::QuerySubstitutablePathInfos(_) => Op::QuerySubstitutablePathInfos,
            Self::QuerySubstitutablePaths(_) => Op::QuerySubstitutablePaths,
            Self::OptimiseStore => Op::OptimiseStore,
            Self::VerifyStore { .. } => Op::VerifyStore,
            Self::RegisterDrvOutput(_) => Op::RegisterDrvOutput,
            Self::QueryRealisation(_) => Op::QueryRealisation,
        }
    }
}

impl Op {
    /// Whether [`read_request_body`] reads this operation (the others are not supported).
    pub const fn is_supported(self) -> bool {
        matches!(
            self,
            Op::HasSubstitutes
                | Op::QueryPathHash
                | Op::QueryReferences
                | Op::QueryDeriver
                | Op::QuerySubstitutablePathInfo
                | Op::QueryDerivationOutputs
                | Op::QueryDerivationOutputNames
                | Op::QuerySubstitutablePathInfos
                | Op::QuerySubstitutablePaths
                | Op::OptimiseStore
                | Op::VerifyStore
                | Op::RegisterDrvOutput
                | Op::QueryRealisation
                | Op::IsValidPath
                | Op::QueryReferrers
                | Op::AddToStore
                | Op::AddTextToStore
                | Op::QueryValidDerivers
                | Op::FindRoots
                | Op::CollectGarbage
                | Op::BuildPaths
                | Op::EnsurePath
                | Op::AddTempRoot
                | Op::AddIndirectRoot
                | Op::SyncWithGC
                | Op::SetOptions
                | Op::QueryAllValidPaths
                | Op::QueryPathInfo
                | Op::QueryPathFromHashPart
                | Op::QueryValidPaths
                | Op::BuildDerivation
                | Op::AddSignatures
                | Op::NarFromPath
                | Op::ExportPath
                | Op::ImportPaths
                | Op::AddToStoreNar
                | Op::QueryMissing
                | Op::QueryDerivationOutputMap
                | Op::AddMultipleToStore
                | Op::AddBuildLog
                | Op::BuildPathsWithResults
                | Op::AddPermRoot
        )
    }
}

/// The next operation number, or `None` when the client closed the stream between operations.
/// Returned raw so that a server can name an unknown one.
pub fn read_op<R: Read + ?Sized>(r: &mut R) -> Result<Option<u64>, WireError> {
    read_u64_or_eof(r, "worker operation")
}

/// The arguments of `op`, its number already read. An operation this crate does not read
/// ([`Op::is_supported`]) is a [`WireError::UnexpectedValue`] naming it.
pub fn read_request_body<R: Read + ?Sized>(
    r: &mut R,
    op: Op,
    version: Version,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<WorkerRequest, WireError> {
    let path = |r: &mut R, what: &'static str| read_store_path(r, store_dir, limits, what);
    Ok(match op {
        Op::IsValidPath => WorkerRequest::IsValidPath(path(r, "path of IsValidPath")?),
        Op::QueryReferrers => WorkerRequest::QueryReferrers(path(r, "path of QueryReferrers")?),
        Op::AddToStore => {
            if version < ADD_TO_STORE_CA_SINCE {
                return Err(WireError::unexpected(
                    "worker operation (AddToStore from clients before 1.25 is not read here)",
                    op,
                ));
            }
            let name = read_string(r, limits, "name of AddToStore")?;
            let method = read_string(r, limits, "content-address method of AddToStore")?;
            let method = CaMethod::parse(&method).ok_or_else(|| {
                WireError::unexpected("content-address method of AddToStore", method)
            })?;
            WorkerRequest::AddToStore {
                name,
                method,
                refs: read_store_path_set(r, store_dir, limits, "references of AddToStore")?,
                repair: read_bool(r, "repair flag of AddToStore")?,
            }
        }
        Op::AddTextToStore => WorkerRequest::AddTextToStore {
            name: read_string(r, limits, "name of AddTextToStore")?,
            text: read_string(r, limits, "text of AddTextToStore")?,
            refs: read_store_path_set(r, store_dir, limits, "references of AddTextToStore")?,
        },
        Op::FindRoots => WorkerRequest::FindRoots,
        Op::CollectGarbage => {
            let n = read_u64(r, "action of CollectGarbage")?;
            let action = GcAction::from_number(n)
                .ok_or_else(|| WireError::unexpected("action of CollectGarbage", n))?;
            let paths = read_store_path_set(r, store_dir, limits, "paths of CollectGarbage")?;
            let ignore_liveness = read_bool(r, "ignoreLiveness flag of CollectGarbage")?;
            let max_freed = read_u64(r, "maxFreed of CollectGarbage")?;
            for _ in 0..3 {
                read_u64(r, "obsolete field of CollectGarbage")?;
            }
            WorkerRequest::CollectGarbage {
                action,
                paths,
                ignore_liveness,
                max_freed,
            }
        }
        Op::QueryValidDerivers => {
            WorkerRequest::QueryValidDerivers(path(r, "path of QueryValidDerivers")?)
        }
        Op::BuildPaths => {
            let paths = read_derived_paths(r, version, store_dir, limits)?;
            let mode = if version >= BUILD_MODE_SINCE {
                BuildMode::read(r, "build mode of BuildPaths")?
            } else {
                BuildMode::Normal
            };
            WorkerRequest::BuildPaths { paths, mode }
        }
        Op::EnsurePath => WorkerRequest::EnsurePath(path(r, "path of EnsurePath")?),
        Op::AddTempRoot => WorkerRequest::AddTempRoot(path(r, "path of AddTempRoot")?),
        Op::AddIndirectRoot => {
            WorkerRequest::AddIndirectRoot(read_string(r, limits, "path of AddIndirectRoot")?)
        }
        Op::SyncWithGC => WorkerRequest::SyncWithGC,
        Op::SetOptions => WorkerRequest::SetOptions(ClientOptions::read(r, version, limits)?),
        Op::QueryAllValidPaths => WorkerRequest::QueryAllValidPaths,
        Op::QueryPathInfo => WorkerRequest::QueryPathInfo(path(r, "path of QueryPathInfo")?),
        Op::QueryPathFromHashPart => WorkerRequest::QueryPathFromHashPart(read_string(
            r,
            limits,
            "hash part of QueryPathFromHashPart",
        )?),
        Op::QueryValidPaths => {
            let paths = read_store_path_set(r, store_dir, limits, "paths of QueryValidPaths")?;
            let substitute = version >= SUBSTITUTE_FLAG_SINCE
                && read_bool(r, "substitute flag of QueryValidPaths")?;
            WorkerRequest::QueryValidPaths { paths, substitute }
        }
        Op::BuildDerivation => WorkerRequest::BuildDerivation {
            drv_path: path(r, "derivation path of BuildDerivation")?,
            drv: read_basic_derivation(r, store_dir, limits)?,
            mode: BuildMode::read(r, "build mode of BuildDerivation")?,
        },
        Op::AddSignatures => WorkerRequest::AddSignatures {
            path: path(r, "path of AddSignatures")?,
            sigs: read_string_set(r, limits, "signatures of AddSignatures")?,
        },
        Op::NarFromPath => WorkerRequest::NarFromPath(path(r, "path of NarFromPath")?),
        Op::AddToStoreNar => {
            let info = PathInfo::read(r, FULL, store_dir, limits)?;
            let repair = read_bool(r, "repair flag of AddToStoreNar")?;
            let dont_check_sigs = read_bool(r, "dontCheckSigs flag of AddToStoreNar")?;
            if info.info.nar_size == 0 {
                return Err(WireError::unexpected(
                    "NAR size of AddToStoreNar (a NAR is never empty)",
                    0,
                ));
            }
            WorkerRequest::AddToStoreNar {
                info,
                repair,
                dont_check_sigs,
            }
        }
        Op::QueryMissing => {
            WorkerRequest::QueryMissing(read_derived_paths(r, version, store_dir, limits)?)
        }
        Op::QueryDerivationOutputMap => WorkerRequest::QueryDerivationOutputMap(path(
            r,
            "derivation path of QueryDerivationOutputMap",
        )?),
        Op::AddMultipleToStore => WorkerRequest::AddMultipleToStore {
            repair: read_bool(r, "repair flag of AddMultipleToStore")?,
            dont_check_sigs: read_bool(r, "dontCheckSigs flag of AddMultipleToStore")?,
        },
        Op::AddBuildLog => {
            const WHAT: &str = "derivation of AddBuildLog";
            let text = read_string(r, limits, WHAT)?;
            match StorePath::from_base_name(&text) {
                Ok(p) => WorkerRequest::AddBuildLog(p),
                Err(source) => {
                    return Err(WireError::BadStorePath {
                        what: WHAT,
                        text,
                        source,
                    })
                }
            }
        }
        Op::BuildPathsWithResults => WorkerRequest::BuildPathsWithResults {
            paths: read_derived_paths(r, version, store_dir, limits)?,
            mode: BuildMode::read(r, "build mode of BuildPathsWithResults")?,
        },
        Op::AddPermRoot => WorkerRequest::AddPermRoot {
            path: path(r, "path of AddPermRoot")?,
            gc_root: read_string(r, limits, "root of AddPermRoot")?,
        },
        Op::HasSubstitutes => WorkerRequest::HasSubstitutes(path(r, "path of HasSubstitutes")?),
        Op::QueryPathHash => WorkerRequest::QueryPathHash(path(r, "path of QueryPathHash")?),
        Op::QueryReferences => WorkerRequest::QueryReferences(path(r, "path of QueryReferences")?),
        Op::QueryDeriver => WorkerRequest::QueryDeriver(path(r, "path of QueryDeriver")?),
        Op::QuerySubstitutablePathInfo => WorkerRequest::QuerySubstitutablePathInfo(path(
            r,
            "path of QuerySubstitutablePathInfo",
        )?),
        Op::QueryDerivationOutputs => {
            WorkerRequest::QueryDerivationOutputs(path(r, "path of QueryDerivationOutputs")?)
        }
        Op::QueryDerivationOutputNames => WorkerRequest::QueryDerivationOutputNames(path(
            r,
            "path of QueryDerivationOutputNames",
        )?),
        Op::QuerySubstitutablePathInfos => {
            let what = "paths of QuerySubstitutablePathInfos";
            let map = if version < CA_MAP_SINCE {
                read_store_path_set(r, store_dir, limits, what)?
                    .into_iter()
                    .map(|p| (p, None))
                    .collect()
            } else {
                let n = read_count(r, limits, what)?;
                let mut map = BTreeMap::new();
                for _ in 0..n {
                    let p = path(r, what)?;
                    let ca = crate::serve::read_opt_ca(
                        r,
                        limits,
                        "content address of QuerySubstitutablePathInfos",
                    )?;
                    map.insert(p, ca);
                }
                map
            };
            WorkerRequest::QuerySubstitutablePathInfos(map)
        }
        Op::QuerySubstitutablePaths => WorkerRequest::QuerySubstitutablePaths(read_store_path_set(
            r,
            store_dir,
            limits,
            "paths of QuerySubstitutablePaths",
        )?),
        Op::OptimiseStore => WorkerRequest::OptimiseStore,
        Op::VerifyStore => WorkerRequest::VerifyStore {
            check_contents: read_bool(r, "checkContents flag of VerifyStore")?,
            repair: read_bool(r, "repair flag of VerifyStore")?,
        },
        Op::RegisterDrvOutput => {
            let what = "realisation of RegisterDrvOutput";
            let n = if version < REALISATION_JSON_SINCE {
                2
            } else {
                1
            };
            let mut fields = Vec::with_capacity(n);
            for _ in 0..n {
                fields.push(read_string(r, limits, what)?);
            }
            WorkerRequest::RegisterDrvOutput(fields)
        }
        Op::QueryRealisation => WorkerRequest::QueryRealisation(read_string(
            r,
            limits,
            "output id of QueryRealisation",
        )?),
        Op::ExportPath => {
            let p = path(r, "path of ExportPath")?;
            read_u64(r, "obsolete flag of ExportPath")?;
            WorkerRequest::ExportPath(p)
        }
        Op::ImportPaths => WorkerRequest::ImportPaths,
        Op::QueryFailedPaths | Op::ClearFailedPaths => {
            return Err(WireError::unexpected(
                "worker operation (not supported here)",
                op,
            ))
        }
    })
}

/// The next request, or `None` when the client closed the stream between operations. An
/// unknown operation number, or one this crate does not read, is a
/// [`WireError::UnexpectedValue`] naming it.
pub fn read_request<R: Read + ?Sized>(
    r: &mut R,
    version: Version,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<Option<WorkerRequest>, WireError> {
    let Some(n) = read_op(r)? else {
        return Ok(None);
    };
    let op = Op::from_u64(n).ok_or_else(|| WireError::unexpected("worker operation", n))?;
    read_request_body(r, op, version, store_dir, limits).map(Some)
}

/// Write a request (the client's side) for the negotiated `version`. Payloads are for the
/// caller to send after it. Not flushed. An [`io::ErrorKind::InvalidInput`] error for what the
/// version cannot say (an opaque `.drv` as a build target before 1.30).
pub fn write_request<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    store_dir: &StoreDir,
    req: &WorkerRequest,
) -> io::Result<()> {
    write_u64(w, req.op().number())?;
    match req {
        WorkerRequest::IsValidPath(p)
        | WorkerRequest::QueryReferrers(p)
        | WorkerRequest::QueryValidDerivers(p)
        | WorkerRequest::EnsurePath(p)
        | WorkerRequest::AddTempRoot(p)
        | WorkerRequest::QueryPathInfo(p)
        | WorkerRequest::NarFromPath(p)
        | WorkerRequest::QueryDerivationOutputMap(p)
        | WorkerRequest::HasSubstitutes(p)
        | WorkerRequest::QueryPathHash(p)
        | WorkerRequest::QueryReferences(p)
        | WorkerRequest::QueryDeriver(p)
        | WorkerRequest::QuerySubstitutablePathInfo(p)
        | WorkerRequest::QueryDerivationOutputs(p)
        | WorkerRequest::QueryDerivationOutputNames(p) => write_store_path(w, store_dir, p),
        WorkerRequest::QuerySubstitutablePathInfos(map) => {
            if version < CA_MAP_SINCE {
                write_store_paths(w, store_dir, map.keys())
            } else {
                write_u64(w, map.len() as u64)?;
                for (p, ca) in map {
                    write_store_path(w, store_dir, p)?;
                    crate::serve::write_opt_ca(w, ca.as_ref())?;
                }
                Ok(())
            }
        }
        WorkerRequest::QuerySubstitutablePaths(paths) => write_store_paths(w, store_dir, paths),
        WorkerRequest::OptimiseStore => Ok(()),
        WorkerRequest::VerifyStore {
            check_contents,
            repair,
        } => {
            write_bool(w, *check_contents)?;
            write_bool(w, *repair)
        }
        WorkerRequest::RegisterDrvOutput(fields) => {
            let n = if version < REALISATION_JSON_SINCE {
                2
            } else {
                1
            };
            if fields.len() != n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("worker protocol {version} sends a realisation as {n} strings"),
                ));
            }
            fields.iter().try_for_each(|f| write_str(w, f))
        }
        WorkerRequest::QueryRealisation(id) => write_str(w, id),
        WorkerRequest::BuildPaths { paths, mode } => {
            write_derived_paths(w, version, store_dir, paths)?;
            if version >= BUILD_MODE_SINCE {
                write_u64(w, mode.number())?;
            } else if *mode != BuildMode::Normal {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("worker protocol {version} has no build modes (< {BUILD_MODE_SINCE})"),
                ));
            }
            Ok(())
        }
        WorkerRequest::AddIndirectRoot(s) | WorkerRequest::QueryPathFromHashPart(s) => {
            write_str(w, s)
        }
        WorkerRequest::SyncWithGC
        | WorkerRequest::QueryAllValidPaths
        | WorkerRequest::FindRoots
        | WorkerRequest::ImportPaths => Ok(()),
        WorkerRequest::ExportPath(p) => {
            write_store_path(w, store_dir, p)?;
            write_u64(w, 0)
        }
        WorkerRequest::CollectGarbage {
            action,
            paths,
            ignore_liveness,
            max_freed,
        } => {
            write_u64(w, action.number())?;
            write_store_paths(w, store_dir, paths)?;
            write_bool(w, *ignore_liveness)?;
            write_u64(w, *max_freed)?;
            for _ in 0..3 {
                write_u64(w, 0)?;
            }
            Ok(())
        }
        WorkerRequest::SetOptions(o) => o.write(w, version),
        WorkerRequest::QueryValidPaths { paths, substitute } => {
            write_store_paths(w, store_dir, paths)?;
            if version >= SUBSTITUTE_FLAG_SINCE {
                write_bool(w, *substitute)?;
            }
            Ok(())
        }
        WorkerRequest::BuildDerivation {
            drv_path,
            drv,
            mode,
        } => {
            write_store_path(w, store_dir, drv_path)?;
            write_basic_derivation(w, store_dir, drv)?;
            write_u64(w, mode.number())
        }
        WorkerRequest::AddSignatures { path, sigs } => {
            write_store_path(w, store_dir, path)?;
            write_strings(w, sigs.iter().map(String::as_str))
        }
        WorkerRequest::AddToStoreNar {
            info,
            repair,
            dont_check_sigs,
        } => {
            info.write(w, FULL, store_dir)?;
            write_bool(w, *repair)?;
            write_bool(w, *dont_check_sigs)
        }
        WorkerRequest::QueryMissing(paths) => write_derived_paths(w, version, store_dir, paths),
        WorkerRequest::AddMultipleToStore {
            repair,
            dont_check_sigs,
        } => {
            write_bool(w, *repair)?;
            write_bool(w, *dont_check_sigs)
        }
        WorkerRequest::AddBuildLog(p) => write_str(w, &p.base_name()),
        WorkerRequest::BuildPathsWithResults { paths, mode } => {
            write_derived_paths(w, version, store_dir, paths)?;
            write_u64(w, mode.number())
        }
        WorkerRequest::AddPermRoot { path, gc_root } => {
            write_store_path(w, store_dir, path)?;
            write_str(w, gc_root)
        }
        WorkerRequest::AddToStore {
            name,
            method,
            refs,
            repair,
        } => {
            if version < ADD_TO_STORE_CA_SINCE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("worker protocol {version} sends AddToStore in an older form (< {ADD_TO_STORE_CA_SINCE})"),
                ));
            }
            write_str(w, name)?;
            write_str(w, &method.to_string())?;
            write_store_paths(w, store_dir, refs)?;
            write_bool(w, *repair)
        }
        WorkerRequest::AddTextToStore { name, text, refs } => {
            write_str(w, name)?;
            write_str(w, text)?;
            write_store_paths(w, store_dir, refs)
        }
    }
}
