//! What the server answers: path infos, build results, acknowledgements.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use ferrix_format::content_address::ContentAddress;
use ferrix_format::hash::{Encoding, Hash, HashAlgo};
use ferrix_format::json::push_string;
use ferrix_format::{StoreDir, StorePath};

use super::{read_opt_ca, write_opt_ca};
use crate::json;
use crate::wire::{
    parse_store_path, read_bool, read_count, read_opt_store_path, read_store_path,
    read_store_path_set, read_string, read_string_set, read_u64, write_bool, write_opt_store_path,
    write_store_path, write_store_paths, write_str, write_strings, write_u64, Limits, WireError,
};
use crate::Version;

/// One entry of the `QueryPathInfos` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfoEntry {
    pub path: StorePath,
    pub deriver: Option<StorePath>,
    pub references: BTreeSet<StorePath>,
    /// Nix sends the NAR size here too.
    pub download_size: u64,
    pub nar_size: u64,
    /// [≥ 2.4] Sent as `sha256:<nix32>`; `None` is the empty string.
    pub nar_hash: Option<Hash>,
    /// [≥ 2.4]
    pub ca: Option<ContentAddress>,
    /// [≥ 2.4]
    pub sigs: BTreeSet<String>,
}

/// The `QueryPathInfos` answer: each entry (its path first), then the empty string. Fields a
/// version does not carry are left out.
pub fn write_path_infos<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    store_dir: &StoreDir,
    entries: &[PathInfoEntry],
) -> io::Result<()> {
    for e in entries {
        write_store_path(w, store_dir, &e.path)?;
        write_opt_store_path(w, store_dir, e.deriver.as_ref())?;
        write_store_paths(w, store_dir, &e.references)?;
        write_u64(w, e.download_size)?;
        write_u64(w, e.nar_size)?;
        if version >= Version::new(2, 4) {
            match &e.nar_hash {
                Some(h) => write_str(w, &h.encode_typed(Encoding::Nix32))?,
                None => write_str(w, "")?,
            }
            write_opt_ca(w, e.ca.as_ref())?;
            write_strings(w, e.sigs.iter().map(String::as_str))?;
        }
    }
    write_str(w, "")
}

/// Read the `QueryPathInfos` answer; at most `limits.max_items` entries.
pub fn read_path_infos<R: Read + ?Sized>(
    r: &mut R,
    version: Version,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<Vec<PathInfoEntry>, WireError> {
    let mut out = Vec::new();
    loop {
        let text = read_string(r, limits, "path of a path info")?;
        if text.is_empty() {
            return Ok(out);
        }
        if out.len() as u64 >= limits.max_items {
            return Err(WireError::TooLong {
                what: "path infos",
                len: out.len() as u64 + 1,
                limit: limits.max_items,
            });
        }
        let path = parse_store_path(store_dir, text, "path of a path info")?;
        let mut e = PathInfoEntry {
            path,
            deriver: read_opt_store_path(r, store_dir, limits, "deriver of a path info")?,
            references: read_store_path_set(r, store_dir, limits, "references of a path info")?,
            download_size: read_u64(r, "download size of a path info")?,
            nar_size: read_u64(r, "NAR size of a path info")?,
            nar_hash: None,
            ca: None,
            sigs: BTreeSet::new(),
        };
        if version >= Version::new(2, 4) {
            let text = read_string(r, limits, "NAR hash of a path info")?;
            if !text.is_empty() {
                e.nar_hash =
                    Some(
                        Hash::parse(&text, None).map_err(|source| WireError::BadHash {
                            what: "NAR hash of a path info",
                            text,
                            source,
                        })?,
                    );
            }
            e.ca = read_opt_ca(r, limits, "content address of a path info")?;
            e.sigs = read_string_set(r, limits, "signatures of a path info")?;
        }
        out.push(e);
    }
}

/// `BuildResult::Status`, by its number on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BuildStatus {
    Built = 0,
    Substituted = 1,
    AlreadyValid = 2,
    PermanentFailure = 3,
    InputRejected = 4,
    OutputRejected = 5,
    /// Possibly transient.
    TransientFailure = 6,
    /// No longer used.
    CachedFailure = 7,
    TimedOut = 8,
    MiscFailure = 9,
    DependencyFailed = 10,
    LogLimitExceeded = 11,
    NotDeterministic = 12,
    ResolvesToAlreadyValid = 13,
    NoSubstituters = 14,
}

impl BuildStatus {
    pub const ALL: [BuildStatus; 15] = [
        Self::Built,
        Self::Substituted,
        Self::AlreadyValid,
        Self::PermanentFailure,
        Self::InputRejected,
        Self::OutputRejected,
        Self::TransientFailure,
        Self::CachedFailure,
        Self::TimedOut,
        Self::MiscFailure,
        Self::DependencyFailed,
        Self::LogLimitExceeded,
        Self::NotDeterministic,
        Self::ResolvesToAlreadyValid,
        Self::NoSubstituters,
    ];

    pub fn from_u64(n: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u64 == n)
    }

    pub const fn number(self) -> u64 {
        self as u64
    }

    /// Built, substituted, already valid, or resolves to already valid.
    pub const fn is_success(self) -> bool {
        matches!(
            self,
            Self::Built | Self::Substituted | Self::AlreadyValid | Self::ResolvesToAlreadyValid
        )
    }
}

/// An output a build produced (an "unkeyed realisation").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltOutput {
    pub out_path: StorePath,
    pub signatures: BTreeSet<String>,
}

/// The answer to `BuildDerivation`. A failed build is a `BuildResult` with a failure status,
/// not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    pub status: BuildStatus,
    pub error_msg: String,
    /// [≥ 2.3]
    pub times_built: u64,
    /// [≥ 2.3]
    pub is_non_deterministic: bool,
    /// [≥ 2.3] Seconds since the epoch.
    pub start_time: u64,
    /// [≥ 2.3]
    pub stop_time: u64,
    /// [≥ 2.6] By output name.
    pub built_outputs: BTreeMap<String, BuiltOutput>,
    /// [2.6 and 2.7 only] The derivation's hash modulo, which keys `built_outputs` there
    /// (`sha256:<hex>!<output>`). `None` sends zeros, as current Nix does; old clients only
    /// look at the output name. Read back as `None` when zero or absent.
    pub drv_hash: Option<Hash>,
}

impl BuildResult {
    /// A result with `status` and message and every other field empty.
    pub fn new(status: BuildStatus, error_msg: impl Into<String>) -> Self {
        Self {
            status,
            error_msg: error_msg.into(),
            times_built: 0,
            is_non_deterministic: false,
            start_time: 0,
            stop_time: 0,
            built_outputs: BTreeMap::new(),
            drv_hash: None,
        }
    }
}

/// Write a `BuildResult` for the negotiated `version`.
///
/// `builtOutputs` is sent only from 2.6 on. (Nix 2.8.0's server, by a misplaced parenthesis,
/// sends it to every client, which desynchronises a 2.5 client such as Nix 2.3; we follow the
/// gate, as current Nix does. Our client never meets the quirk: it negotiates at least 2.7
/// with any Nix that has it.) At 2.6 and 2.7 each output goes as the `DrvOutput` text
/// `sha256:<hex>!<name>` and a realisation in JSON, shaped as Nix 2.8.0 writes it; at 2.8 as
/// the output name, the full output path and the signatures.
pub fn write_build_result<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    store_dir: &StoreDir,
    res: &BuildResult,
) -> io::Result<()> {
    write_u64(w, res.status.number())?;
    write_str(w, &res.error_msg)?;
    if version >= Version::new(2, 3) {
        write_u64(w, res.times_built)?;
        write_bool(w, res.is_non_deterministic)?;
        write_u64(w, res.start_time)?;
        write_u64(w, res.stop_time)?;
    }
    if version >= Version::new(2, 8) {
        write_u64(w, res.built_outputs.len() as u64)?;
        for (name, out) in &res.built_outputs {
            write_str(w, name)?;
            write_store_path(w, store_dir, &out.out_path)?;
            write_strings(w, out.signatures.iter().map(String::as_str))?;
        }
    } else if version >= Version::new(2, 6) {
        let drv_hash = res.drv_hash.unwrap_or(Hash::zero(HashAlgo::Sha256));
        write_u64(w, res.built_outputs.len() as u64)?;
        for (name, out) in &res.built_outputs {
            let id = format!("{}!{name}", drv_hash.encode_typed(Encoding::Base16));
            write_str(w, &id)?;
            write_str(w, &realisation_json(&id, out))?;
        }
    }
    Ok(())
}

/// A realisation as Nix 2.8.0's `Realisation::toJSON` prints it (keys sorted).
pub(crate) fn realisation_json(id: &str, out: &BuiltOutput) -> String {
    let mut s = String::from("{\"dependentRealisations\":{},\"id\":");
    push_string(&mut s, id);
    s.push_str(",\"outPath\":");
    push_string(&mut s, &out.out_path.to_string());
    s.push_str(",\"signatures\":[");
    for (i, sig) in out.signatures.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_string(&mut s, sig);
    }
    s.push_str("]}");
    s
}

/// Read a `BuildResult` for the negotiated `version`.
pub fn read_build_result<R: Read + ?Sized>(
    r: &mut R,
    version: Version,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<BuildResult, WireError> {
    let n = read_u64(r, "status of a build result")?;
    let status = BuildStatus::from_u64(n)
        .ok_or_else(|| WireError::unexpected("status of a build result", n))?;
    let mut res = BuildResult::new(
        status,
        read_string(r, limits, "error message of a build result")?,
    );
    if version >= Version::new(2, 3) {
        res.times_built = read_u64(r, "timesBuilt of a build result")?;
        res.is_non_deterministic = read_bool(r, "isNonDeterministic of a build result")?;
        res.start_time = read_u64(r, "startTime of a build result")?;
        res.stop_time = read_u64(r, "stopTime of a build result")?;
    }
    if version >= Version::new(2, 8) {
        let n = read_count(r, limits, "builtOutputs of a build result")?;
        for _ in 0..n {
            let name = read_string(r, limits, "output name in builtOutputs")?;
            let out_path = read_store_path(r, store_dir, limits, "output path in builtOutputs")?;
            let signatures = read_string_set(r, limits, "signatures in builtOutputs")?;
            if res.built_outputs.contains_key(&name) {
                return Err(WireError::unexpected(
                    "output name in builtOutputs (sent twice)",
                    name,
                ));
            }
            res.built_outputs.insert(
                name,
                BuiltOutput {
                    out_path,
                    signatures,
                },
            );
        }
    } else if version >= Version::new(2, 6) {
        let n = read_count(r, limits, "builtOutputs of a build result")?;
        for _ in 0..n {
            let id = read_string(r, limits, "derivation output id in builtOutputs")?;
            let json = read_string(r, limits, "realisation in builtOutputs")?;
            let (hash, name) = parse_drv_output(&id)?;
            let out = parse_realisation(&json)?;
            if res.drv_hash.is_none() && hash != Hash::zero(hash.algo()) {
                res.drv_hash = Some(hash);
            }
            if res.built_outputs.contains_key(name) {
                return Err(WireError::unexpected(
                    "derivation output id in builtOutputs (output sent twice)",
                    id,
                ));
            }
            res.built_outputs.insert(name.to_owned(), out);
        }
    }
    Ok(res)
}

/// `sha256:<hex>!<output>` into the hash and the output name.
pub(crate) fn parse_drv_output(id: &str) -> Result<(Hash, &str), WireError> {
    const WHAT: &str = "derivation output id in builtOutputs";
    let Some((h, name)) = id.split_once('!') else {
        return Err(WireError::unexpected(WHAT, id));
    };
    if name.is_empty() {
        return Err(WireError::unexpected(WHAT, id));
    }
    let hash = Hash::parse(h, None).map_err(|source| WireError::BadHash {
        what: WHAT,
        text: h.to_owned(),
        source,
    })?;
    Ok((hash, name))
}

/// The output path (a base name) and signatures of a realisation in JSON.
pub(crate) fn parse_realisation(text: &str) -> Result<BuiltOutput, WireError> {
    const WHAT: &str = "realisation in builtOutputs";
    let v = json::parse(text)
        .map_err(|e| WireError::unexpected(WHAT, format_args!("{e} in {text}")))?;
    let Some(json::Value::String(base)) = v.get("outPath") else {
        return Err(WireError::unexpected(
            WHAT,
            format_args!("no string outPath in {text}"),
        ));
    };
    let out_path = StorePath::from_base_name(base).map_err(|source| WireError::BadStorePath {
        what: WHAT,
        text: base.clone(),
        source,
    })?;
    let mut signatures = BTreeSet::new();
    match v.get("signatures") {
        None | Some(json::Value::Null) => {}
        Some(json::Value::Array(items)) => {
            for item in items {
                match item {
                    json::Value::String(s) => {
                        signatures.insert(s.clone());
                    }
                    _ => {
                        return Err(WireError::unexpected(
                            WHAT,
                            format_args!("a signature that is no string in {text}"),
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(WireError::unexpected(
                WHAT,
                format_args!("signatures that are no list in {text}"),
            ))
        }
    }
    Ok(BuiltOutput {
        out_path,
        signatures,
    })
}

/// The answer to `BuildPaths`. Every Nix server sends 0 on success, else a non-zero number and
/// a message; Nix's server puts its exit status there (1, 100, 101 …), which a current Nix
/// client then fails to read as a `BuildResult` status, and a Nix 2.8 client reads 1 as
/// "substituted" and stops before the message. Both read a failing `BuildResult` status
/// followed by the message correctly, so [`From<&BuildResult>`] sends that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildPathsReply {
    Success,
    Failure { status: u64, message: String },
}

impl From<&BuildResult> for BuildPathsReply {
    fn from(r: &BuildResult) -> Self {
        if r.status.is_success() {
            Self::Success
        } else {
            Self::Failure {
                status: r.status.number(),
                message: r.error_msg.clone(),
            }
        }
    }
}

pub fn write_build_paths_reply<W: Write + ?Sized>(
    w: &mut W,
    reply: &BuildPathsReply,
) -> io::Result<()> {
    match reply {
        BuildPathsReply::Success => write_u64(w, 0),
        BuildPathsReply::Failure { status, message } => {
            // 0 would read as success.
            write_u64(w, (*status).max(1))?;
            write_str(w, message)
        }
    }
}

pub fn read_build_paths_reply<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
) -> Result<BuildPathsReply, WireError> {
    match read_u64(r, "status of BuildPaths")? {
        0 => Ok(BuildPathsReply::Success),
        status => Ok(BuildPathsReply::Failure {
            status,
            message: read_string(r, limits, "error message of BuildPaths")?,
        }),
    }
}

/// The `u64 1` that acknowledges `ImportPaths` and `AddToStoreNar`.
pub fn write_ok<W: Write + ?Sized>(w: &mut W) -> io::Result<()> {
    write_u64(w, 1)
}

/// Read the acknowledgement; anything but 1 is an error naming `what`.
pub fn read_ok<R: Read + ?Sized>(r: &mut R, what: &'static str) -> Result<(), WireError> {
    match read_u64(r, what)? {
        1 => Ok(()),
        n => Err(WireError::unexpected(what, n)),
    }
}
