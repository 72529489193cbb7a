//! The serve protocol: what `nix-store --serve [--write]` speaks on its standard input and
//! output, and what `ssh://` stores speak to it.
//!
//! Versions: 2.5 (Nix 2.3), 2.7 (Nix 2.4 to 2.34) and 2.8 (Nix 2.35 and later); 2.6 was
//! never in a release but is handled. What each version changes:
//!
//! | since | change |
//! |---|---|
//! | 2.2 | build settings carry `maxLogSize` |
//! | 2.3 | build settings carry `buildRepeat` and `enforceDeterminism`; a `BuildResult` carries `timesBuilt`, `isNonDeterministic`, `startTime`, `stopTime` |
//! | 2.4 | path infos carry the NAR hash (`sha256:<nix32>`), content address and signatures |
//! | 2.5 | `AddToStoreNar` (9) |
//! | 2.6 | a `BuildResult` carries `builtOutputs`: a map from `DrvOutput` text (`sha256:<hex>!<output>`) to realisation JSON |
//! | 2.7 | build settings carry `keepFailed` |
//! | 2.8 | `builtOutputs` becomes a map from output name to (output path, signatures) |
//!
//! Both sides use the smaller of the two versions (the *negotiated* version) for every gate
//! above. We accept peers from 2.5 on, which every Nix since 2.3 speaks.
//!
//! Session: the client writes [`SERVE_MAGIC_1`] and its version; the server answers
//! [`SERVE_MAGIC_2`] and its version; then the client sends commands (a u64 [`Command`] and
//! its arguments) until it closes the stream, and the server answers each in turn.

mod results;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use ferrix_format::content_address::ContentAddress;
use ferrix_format::hash::{Hash, HashAlgo};
use ferrix_format::{Derivation, StoreDir, StorePath};

pub(crate) use results::{parse_drv_output, parse_realisation, realisation_json};
pub use results::{
    read_build_paths_reply, read_build_result, read_ok, read_path_infos, write_build_paths_reply,
    write_build_result, write_ok, write_path_infos, BuildPathsReply, BuildResult, BuildStatus,
    BuiltOutput, PathInfoEntry,
};

use crate::derivation::{read_basic_derivation, write_basic_derivation};
use crate::wire::{
    read_bool, read_opt_store_path, read_store_path, read_store_path_set, read_string,
    read_string_set, read_strings, read_u64, read_u64_or_eof, write_bool, write_opt_store_path,
    write_store_path, write_store_paths, write_str, write_strings, write_u64, Limits, WireError,
};
use crate::Version;

pub const SERVE_MAGIC_1: u64 = 0x390c_9deb;
pub const SERVE_MAGIC_2: u64 = 0x5452_eecb;

/// The newest version we speak.
pub const SERVE_PROTOCOL_VERSION: Version = Version::new(2, 8);
/// The oldest version we accept from a peer.
pub const MINIMUM_SERVE_VERSION: Version = Version::new(2, 5);

fn check_peer_version(ours: Version, theirs: u64) -> Result<Version, WireError> {
    match Version::from_wire(theirs) {
        Some(v) if v.major == ours.major && v >= MINIMUM_SERVE_VERSION => Ok(v.min(ours)),
        _ => Err(WireError::UnsupportedVersion {
            protocol: "serve",
            ours,
            minimum: MINIMUM_SERVE_VERSION,
            theirs,
        }),
    }
}

/// The client's side of the greeting: magic and `ours` are written (and flushed) before
/// anything is read. The negotiated version.
pub fn client_handshake<R: Read + ?Sized, W: Write + ?Sized>(
    r: &mut R,
    w: &mut W,
    ours: Version,
) -> Result<Version, WireError> {
    (|| {
        write_u64(w, SERVE_MAGIC_1)?;
        write_u64(w, ours.to_wire())?;
        w.flush()
    })()
    .map_err(|e| WireError::io("the serve greeting", e))?;
    let magic = read_u64(r, "serve magic number")?;
    if magic != SERVE_MAGIC_2 {
        return Err(WireError::BadMagic {
            what: "serve greeting of the server",
            expected: SERVE_MAGIC_2,
            got: magic,
        });
    }
    let theirs = read_u64(r, "serve protocol version of the server")?;
    check_peer_version(ours, theirs)
}

/// The server's side of the greeting: check the client's magic, answer with ours and our
/// version (flushed), then read the client's version. The negotiated version.
pub fn server_handshake<R: Read + ?Sized, W: Write + ?Sized>(
    r: &mut R,
    w: &mut W,
    ours: Version,
) -> Result<Version, WireError> {
    let magic = read_u64(r, "serve magic number")?;
    if magic != SERVE_MAGIC_1 {
        return Err(WireError::BadMagic {
            what: "serve greeting of the client",
            expected: SERVE_MAGIC_1,
            got: magic,
        });
    }
    (|| {
        write_u64(w, SERVE_MAGIC_2)?;
        write_u64(w, ours.to_wire())?;
        w.flush()
    })()
    .map_err(|e| WireError::io("the serve greeting", e))?;
    let theirs = read_u64(r, "serve protocol version of the client")?;
    check_peer_version(ours, theirs)
}

/// The commands, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    QueryValidPaths = 1,
    QueryPathInfos = 2,
    DumpStorePath = 3,
    ImportPaths = 4,
    /// Dropped by Nix 2.32 as a server; still served here for older clients.
    ExportPaths = 5,
    BuildPaths = 6,
    QueryClosure = 7,
    BuildDerivation = 8,
    AddToStoreNar = 9,
}

impl Command {
    pub const ALL: [Command; 9] = [
        Self::QueryValidPaths,
        Self::QueryPathInfos,
        Self::DumpStorePath,
        Self::ImportPaths,
        Self::ExportPaths,
        Self::BuildPaths,
        Self::QueryClosure,
        Self::BuildDerivation,
        Self::AddToStoreNar,
    ];

    pub fn from_u64(n: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.number() == n)
    }

    pub const fn number(self) -> u64 {
        self as u64
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::QueryValidPaths => "QueryValidPaths",
            Self::QueryPathInfos => "QueryPathInfos",
            Self::DumpStorePath => "DumpStorePath",
            Self::ImportPaths => "ImportPaths",
            Self::ExportPaths => "ExportPaths",
            Self::BuildPaths => "BuildPaths",
            Self::QueryClosure => "QueryClosure",
            Self::BuildDerivation => "BuildDerivation",
            Self::AddToStoreNar => "AddToStoreNar",
        }
    }

    /// Whether the server must run with `--write` to accept it (imports and builds).
    pub const fn needs_write(self) -> bool {
        matches!(
            self,
            Self::ImportPaths | Self::BuildPaths | Self::BuildDerivation | Self::AddToStoreNar
        )
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.number())
    }
}

/// The settings `BuildPaths` and `BuildDerivation` carry. Fields a version does not send are
/// left at their defaults (zero, false) when read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildSettings {
    /// Seconds without output before a build is killed; 0 = no limit.
    pub max_silent_time: u64,
    /// Seconds a build may run; 0 = no limit.
    pub build_timeout: u64,
    /// [≥ 2.2] Bytes of log a build may write; 0 = no limit.
    pub max_log_size: u64,
    /// [≥ 2.3] Extra rounds of each build (Nix 2.35 refuses anything but 0).
    pub build_repeat: u64,
    /// [≥ 2.3]
    pub enforce_determinism: bool,
    /// [≥ 2.7] Keep the build directory of a failed build.
    pub keep_failed: bool,
}

impl BuildSettings {
    pub fn read<R: Read + ?Sized>(r: &mut R, version: Version) -> Result<Self, WireError> {
        let mut s = BuildSettings {
            max_silent_time: read_u64(r, "maxSilentTime of build settings")?,
            build_timeout: read_u64(r, "buildTimeout of build settings")?,
            ..Self::default()
        };
        if version >= Version::new(2, 2) {
            s.max_log_size = read_u64(r, "maxLogSize of build settings")?;
        }
        if version >= Version::new(2, 3) {
            s.build_repeat = read_u64(r, "buildRepeat of build settings")?;
            s.enforce_determinism = read_bool(r, "enforceDeterminism of build settings")?;
        }
        if version >= Version::new(2, 7) {
            s.keep_failed = read_bool(r, "keepFailed of build settings")?;
        }
        Ok(s)
    }

    pub fn write<W: Write + ?Sized>(&self, w: &mut W, version: Version) -> io::Result<()> {
        write_u64(w, self.max_silent_time)?;
        write_u64(w, self.build_timeout)?;
        if version >= Version::new(2, 2) {
            write_u64(w, self.max_log_size)?;
        }
        if version >= Version::new(2, 3) {
            write_u64(w, self.build_repeat)?;
            write_bool(w, self.enforce_determinism)?;
        }
        if version >= Version::new(2, 7) {
            write_bool(w, self.keep_failed)?;
        }
        Ok(())
    }
}

/// 1: which of `paths` are valid. The server honours `lock` (temporary roots) and
/// `substitute` only with `--write`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryValidPaths {
    pub lock: bool,
    pub substitute: bool,
    pub paths: BTreeSet<StorePath>,
}

/// 2: the infos of the valid ones among `paths`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPathInfos {
    pub paths: BTreeSet<StorePath>,
}

/// 3: the NAR of `path`, sent raw (no length; the NAR's own structure ends it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpStorePath {
    pub path: StorePath,
}

/// 5: an export stream (`nix-store --export` format) of `paths`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPaths {
    pub paths: BTreeSet<StorePath>,
}

/// 6: build paths given as `path` or `drvpath!out1,out2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPaths {
    pub paths: Vec<String>,
    pub settings: BuildSettings,
}

/// 7: the closure of `paths` (with the outputs of derivations when `include_outputs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryClosure {
    pub include_outputs: bool,
    pub paths: BTreeSet<StorePath>,
}

/// 8: build a derivation sent whole (without its input derivations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildDerivation {
    pub drv_path: StorePath,
    /// `input_drvs` is empty.
    pub drv: Derivation,
    pub settings: BuildSettings,
}

/// 9: add a path whose NAR (exactly `nar_size` bytes) follows the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddToStoreNar {
    pub path: StorePath,
    pub deriver: Option<StorePath>,
    /// Sent by Nix as bare base16 SHA-256; any form [`Hash::parse`] takes is accepted.
    pub nar_hash: Hash,
    pub references: BTreeSet<StorePath>,
    pub registration_time: u64,
    /// Never 0 (refused when read, as Nix does: a NAR is never empty).
    pub nar_size: u64,
    pub ultimate: bool,
    pub sigs: BTreeSet<String>,
    pub ca: Option<ContentAddress>,
}

/// A command and its arguments.
///
/// Two carry a payload that stays in the reader after [`read_request`]: `ImportPaths` (an
/// export stream) and `AddToStoreNar` (`nar_size` bytes of NAR). [`write_request`] likewise
/// writes only the request; the caller sends the payload after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    QueryValidPaths(QueryValidPaths),
    QueryPathInfos(QueryPathInfos),
    DumpStorePath(DumpStorePath),
    ImportPaths,
    ExportPaths(ExportPaths),
    BuildPaths(BuildPaths),
    QueryClosure(QueryClosure),
    BuildDerivation(BuildDerivation),
    AddToStoreNar(AddToStoreNar),
}

impl Request {
    pub fn command(&self) -> Command {
        match self {
            Self::QueryValidPaths(_) => Command::QueryValidPaths,
            Self::QueryPathInfos(_) => Command::QueryPathInfos,
            Self::DumpStorePath(_) => Command::DumpStorePath,
            Self::ImportPaths => Command::ImportPaths,
            Self::ExportPaths(_) => Command::ExportPaths,
            Self::BuildPaths(_) => Command::BuildPaths,
            Self::QueryClosure(_) => Command::QueryClosure,
            Self::BuildDerivation(_) => Command::BuildDerivation,
            Self::AddToStoreNar(_) => Command::AddToStoreNar,
        }
    }
}

/// The next command number, or `None` when the client closed the stream between commands.
/// The number is returned raw so that a server can name an unknown one.
pub fn read_command<R: Read + ?Sized>(r: &mut R) -> Result<Option<u64>, WireError> {
    read_u64_or_eof(r, "serve command")
}

/// The arguments of `cmd`, its number already read.
pub fn read_request_body<R: Read + ?Sized>(
    r: &mut R,
    cmd: Command,
    version: Version,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<Request, WireError> {
    Ok(match cmd {
        Command::QueryValidPaths => Request::QueryValidPaths(QueryValidPaths {
            lock: read_bool(r, "lock flag of QueryValidPaths")?,
            substitute: read_bool(r, "substitute flag of QueryValidPaths")?,
            paths: read_store_path_set(r, store_dir, limits, "paths of QueryValidPaths")?,
        }),
        Command::QueryPathInfos => Request::QueryPathInfos(QueryPathInfos {
            paths: read_store_path_set(r, store_dir, limits, "paths of QueryPathInfos")?,
        }),
        Command::DumpStorePath => Request::DumpStorePath(DumpStorePath {
            path: read_store_path(r, store_dir, limits, "path of DumpStorePath")?,
        }),
        Command::ImportPaths => Request::ImportPaths,
        Command::ExportPaths => {
            // An obsolete flag (signing), ignored by every Nix.
            read_u64(r, "obsolete flag of ExportPaths")?;
            Request::ExportPaths(ExportPaths {
                paths: read_store_path_set(r, store_dir, limits, "paths of ExportPaths")?,
            })
        }
        Command::BuildPaths => Request::BuildPaths(BuildPaths {
            paths: read_strings(r, limits, "paths of BuildPaths")?,
            settings: BuildSettings::read(r, version)?,
        }),
        Command::QueryClosure => Request::QueryClosure(QueryClosure {
            include_outputs: read_bool(r, "includeOutputs flag of QueryClosure")?,
            paths: read_store_path_set(r, store_dir, limits, "paths of QueryClosure")?,
        }),
        Command::BuildDerivation => Request::BuildDerivation(BuildDerivation {
            drv_path: read_store_path(r, store_dir, limits, "derivation path of BuildDerivation")?,
            drv: read_basic_derivation(r, store_dir, limits)?,
            settings: BuildSettings::read(r, version)?,
        }),
        Command::AddToStoreNar => {
            Request::AddToStoreNar(read_add_to_store_nar(r, store_dir, limits)?)
        }
    })
}

fn read_add_to_store_nar<R: Read + ?Sized>(
    r: &mut R,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<AddToStoreNar, WireError> {
    let path = read_store_path(r, store_dir, limits, "path of AddToStoreNar")?;
    let deriver = read_opt_store_path(r, store_dir, limits, "deriver of AddToStoreNar")?;
    let text = read_string(r, limits, "NAR hash of AddToStoreNar")?;
    let nar_hash =
        Hash::parse(&text, Some(HashAlgo::Sha256)).map_err(|source| WireError::BadHash {
            what: "NAR hash of AddToStoreNar",
            text,
            source,
        })?;
    let references = read_store_path_set(r, store_dir, limits, "references of AddToStoreNar")?;
    let registration_time = read_u64(r, "registration time of AddToStoreNar")?;
    let nar_size = read_u64(r, "NAR size of AddToStoreNar")?;
    let ultimate = read_bool(r, "ultimate flag of AddToStoreNar")?;
    let sigs = read_string_set(r, limits, "signatures of AddToStoreNar")?;
    let ca = read_opt_ca(r, limits, "content address of AddToStoreNar")?;
    if nar_size == 0 {
        return Err(WireError::unexpected(
            "NAR size of AddToStoreNar (a NAR is never empty; a client this old is not supported)",
            0,
        ));
    }
    Ok(AddToStoreNar {
        path,
        deriver,
        nar_hash,
        references,
        registration_time,
        nar_size,
        ultimate,
        sigs,
        ca,
    })
}

/// A content address, or the empty string for none.
pub(crate) fn read_opt_ca<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
    what: &'static str,
) -> Result<Option<ContentAddress>, WireError> {
    let text = read_string(r, limits, what)?;
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse() {
        Ok(ca) => Ok(Some(ca)),
        Err(source) => Err(WireError::BadContentAddress { what, text, source }),
    }
}

pub(crate) fn write_opt_ca<W: Write + ?Sized>(
    w: &mut W,
    ca: Option<&ContentAddress>,
) -> io::Result<()> {
    match ca {
        Some(ca) => write_str(w, &ca.to_string()),
        None => write_str(w, ""),
    }
}

/// The next request, or `None` when the client closed the stream between commands. An
/// unknown command number is an [`WireError::UnexpectedValue`].
pub fn read_request<R: Read + ?Sized>(
    r: &mut R,
    version: Version,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<Option<Request>, WireError> {
    let Some(n) = read_command(r)? else {
        return Ok(None);
    };
    let cmd = Command::from_u64(n).ok_or_else(|| WireError::unexpected("serve command", n))?;
    read_request_body(r, cmd, version, store_dir, limits).map(Some)
}

/// Write a request (the client's side). Payloads (`ImportPaths`, `AddToStoreNar`) are for the
/// caller to send after it. Not flushed.
pub fn write_request<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    store_dir: &StoreDir,
    req: &Request,
) -> io::Result<()> {
    write_u64(w, req.command().number())?;
    match req {
        Request::QueryValidPaths(q) => {
            write_bool(w, q.lock)?;
            write_bool(w, q.substitute)?;
            write_store_paths(w, store_dir, &q.paths)
        }
        Request::QueryPathInfos(q) => write_store_paths(w, store_dir, &q.paths),
        Request::DumpStorePath(q) => write_store_path(w, store_dir, &q.path),
        Request::ImportPaths => Ok(()),
        Request::ExportPaths(q) => {
            write_u64(w, 0)?;
            write_store_paths(w, store_dir, &q.paths)
        }
        Request::BuildPaths(q) => {
            write_strings(w, q.paths.iter().map(String::as_str))?;
            q.settings.write(w, version)
        }
        Request::QueryClosure(q) => {
            write_bool(w, q.include_outputs)?;
            write_store_paths(w, store_dir, &q.paths)
        }
        Request::BuildDerivation(q) => {
            write_store_path(w, store_dir, &q.drv_path)?;
            write_basic_derivation(w, store_dir, &q.drv)?;
            q.settings.write(w, version)
        }
        Request::AddToStoreNar(q) => {
            write_store_path(w, store_dir, &q.path)?;
            write_opt_store_path(w, store_dir, q.deriver.as_ref())?;
            // As Nix's client sends it.
            write_str(w, &q.nar_hash.to_base16())?;
            write_store_paths(w, store_dir, &q.references)?;
            write_u64(w, q.registration_time)?;
            write_u64(w, q.nar_size)?;
            write_bool(w, q.ultimate)?;
            write_strings(w, q.sigs.iter().map(String::as_str))?;
            write_opt_ca(w, q.ca.as_ref())
        }
    }
}

/// Split a legacy "path with outputs" (`/nix/store/…-x.drv!out,dev`, or a bare path) into the
/// path and the output names (empty for a bare path).
pub fn parse_path_with_outputs(
    store_dir: &StoreDir,
    s: &str,
) -> Result<(StorePath, BTreeSet<String>), WireError> {
    const WHAT: &str = "path of BuildPaths";
    let (path, outputs) = match s.split_once('!') {
        Some((p, o)) => (p, o.split(',').map(str::to_owned).collect()),
        None => (s, BTreeSet::new()),
    };
    let path = crate::wire::parse_store_path(store_dir, path.to_owned(), WHAT)?;
    if outputs.iter().any(String::is_empty) {
        return Err(WireError::unexpected(WHAT, s));
    }
    Ok((path, outputs))
}

#[cfg(test)]
pub(crate) mod tests;
