//! What builds take and give: build modes, derived paths (build targets) and build results.
//!
//! A build result on the wire: u64 status, error message, [≥ 1.29] u64 `timesBuilt`, u64
//! `isNonDeterministic`, u64 `startTime`, u64 `stopTime`, [≥ 1.37] `cpuUser` and `cpuSystem`
//! (each u64 0 for none, or u64 1 and a u64 of microseconds), [≥ 1.28] `builtOutputs`: a map
//! from `DrvOutput` text (`sha256:<hex>!<output>`) to the realisation in JSON, as Nix 2.8 writes
//! it. (The `realisation-with-path-not-hash` feature of Nix 2.35, which changes that map, is
//! never negotiated: we offer no feature.) `BuildPathsWithResults` answers a list of *keyed*
//! results, each its derived path first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read, Write};

use ferrix_format::hash::{Encoding, Hash, HashAlgo};
use ferrix_format::{StoreDir, StorePath};

use super::{BuildStatus, BuiltOutput};
use crate::serve::{parse_drv_output, parse_realisation, realisation_json};
use crate::wire::{
    parse_store_path, read_bool, read_count, read_string, read_u64, write_bool, write_str,
    write_u64, Limits, WireError,
};
use crate::Version;

/// Build targets are [`DerivedPath`]s from this version on (before: legacy paths with outputs).
pub const DERIVED_PATHS_SINCE: Version = Version::new(1, 30);
/// `BuildPaths` carries a build mode from this version on.
pub const BUILD_MODE_SINCE: Version = Version::new(1, 15);
/// Build results carry `builtOutputs` from this version on.
pub const BUILT_OUTPUTS_SINCE: Version = Version::new(1, 28);
/// Build results carry `timesBuilt`, `isNonDeterministic` and the times from this version on.
pub const TIMES_SINCE: Version = Version::new(1, 29);
/// Build results carry CPU times from this version on.
pub const CPU_TIMES_SINCE: Version = Version::new(1, 37);

/// How to build (u64 on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BuildMode {
    #[default]
    Normal = 0,
    /// Rebuild and replace what is there (trusted clients only).
    Repair = 1,
    /// Rebuild and compare with what is there.
    Check = 2,
}

impl BuildMode {
    pub fn from_u64(n: u64) -> Option<Self> {
        match n {
            0 => Some(Self::Normal),
            1 => Some(Self::Repair),
            2 => Some(Self::Check),
            _ => None,
        }
    }

    pub const fn number(self) -> u64 {
        self as u64
    }

    pub fn read<R: Read + ?Sized>(r: &mut R, what: &'static str) -> Result<Self, WireError> {
        let n = read_u64(r, what)?;
        Self::from_u64(n).ok_or_else(|| WireError::unexpected(what, n))
    }
}

/// Which outputs of a derivation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutputsSpec {
    /// `*`
    All,
    /// Never empty when read; an empty set is written as [`OutputsSpec::All`].
    Names(BTreeSet<String>),
}

/// A build target: a store path wanted as is, or outputs of a derivation.
///
/// From 1.30 on: `<path>` (opaque, even a `.drv`), `<drv>!*` or `<drv>!out,dev`. Before
/// (legacy "path with outputs"): `<path>` is a `.drv`'s outputs (all of them) when it names a
/// derivation and opaque otherwise, `<drv>!out,dev` some outputs; an opaque `.drv` cannot be
/// said there. `*` is read as all outputs in both forms.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DerivedPath {
    Opaque(StorePath),
    Built {
        drv_path: StorePath,
        outputs: OutputsSpec,
    },
}

impl DerivedPath {
    /// Parse the text form of the negotiated `version`.
    pub fn parse(store_dir: &StoreDir, text: &str, version: Version) -> Result<Self, WireError> {
        const WHAT: &str = "derived path";
        let Some((path, outs)) = text.split_once('!') else {
            let path = parse_store_path(store_dir, text.to_owned(), WHAT)?;
            if version < DERIVED_PATHS_SINCE && path.is_derivation() {
                return Ok(Self::Built {
                    drv_path: path,
                    outputs: OutputsSpec::All,
                });
            }
            return Ok(Self::Opaque(path));
        };
        let drv_path = parse_store_path(store_dir, path.to_owned(), WHAT)?;
        let outputs = if outs == "*" {
            OutputsSpec::All
        } else {
            let names: BTreeSet<String> = outs.split(',').map(str::to_owned).collect();
            if names.iter().any(String::is_empty) {
                return Err(WireError::unexpected(WHAT, text));
            }
            OutputsSpec::Names(names)
        };
        Ok(Self::Built { drv_path, outputs })
    }

    /// The text form of the negotiated `version`; `None` for what it cannot say (an opaque
    /// `.drv` before 1.30).
    pub fn to_wire(&self, store_dir: &StoreDir, version: Version) -> Option<String> {
        let legacy = version < DERIVED_PATHS_SINCE;
        match self {
            Self::Opaque(p) if legacy && p.is_derivation() => None,
            Self::Opaque(p) => Some(store_dir.display(p)),
            Self::Built { drv_path, outputs } => {
                let drv = store_dir.display(drv_path);
                Some(match outputs {
                    OutputsSpec::Names(names) if !names.is_empty() => {
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        format!("{drv}!{}", names.join(","))
                    }
                    _ if legacy => drv,
                    _ => format!("{drv}!*"),
                })
            }
        }
    }

    /// Read one (a string).
    pub fn read<R: Read + ?Sized>(
        r: &mut R,
        version: Version,
        store_dir: &StoreDir,
        limits: &Limits,
    ) -> Result<Self, WireError> {
        let text = read_string(r, limits, "derived path")?;
        Self::parse(store_dir, &text, version)
    }

    /// Write one; an [`io::ErrorKind::InvalidInput`] error for what `version` cannot say.
    pub fn write<W: Write + ?Sized>(
        &self,
        w: &mut W,
        version: Version,
        store_dir: &StoreDir,
    ) -> io::Result<()> {
        match self.to_wire(store_dir, version) {
            Some(s) => write_str(w, &s),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "worker protocol {version} is too old (< {DERIVED_PATHS_SINCE}) to ask for the derivation file '{}' itself",
                    store_dir.display(self.path())
                ),
            )),
        }
    }

    /// The store path it starts from (the derivation for `Built`).
    pub fn path(&self) -> &StorePath {
        match self {
            Self::Opaque(p) => p,
            Self::Built { drv_path, .. } => drv_path,
        }
    }
}

impl fmt::Display for DerivedPath {
    /// The 1.30 form with the store path's base name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Opaque(p) => write!(f, "{p}"),
            Self::Built { drv_path, outputs } => match outputs {
                OutputsSpec::Names(names) if !names.is_empty() => {
                    let names: Vec<&str> = names.iter().map(String::as_str).collect();
                    write!(f, "{drv_path}!{}", names.join(","))
                }
                _ => write!(f, "{drv_path}!*"),
            },
        }
    }
}

/// A list of derived paths (u64 count, then each).
pub fn read_derived_paths<R: Read + ?Sized>(
    r: &mut R,
    version: Version,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<Vec<DerivedPath>, WireError> {
    let n = read_count(r, limits, "derived paths")?;
    let mut v = Vec::with_capacity(crate::wire::initial_capacity(n));
    for _ in 0..n {
        v.push(DerivedPath::read(r, version, store_dir, limits)?);
    }
    Ok(v)
}

pub fn write_derived_paths<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    store_dir: &StoreDir,
    paths: &[DerivedPath],
) -> io::Result<()> {
    write_u64(w, paths.len() as u64)?;
    for p in paths {
        p.write(w, version, store_dir)?;
    }
    Ok(())
}

/// The result of building (or substituting) one target. A failed build is a result with a
/// failure status, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    pub status: BuildStatus,
    pub error_msg: String,
    /// [≥ 1.29]
    pub times_built: u64,
    /// [≥ 1.29]
    pub is_non_deterministic: bool,
    /// [≥ 1.29] Seconds since the epoch.
    pub start_time: u64,
    /// [≥ 1.29]
    pub stop_time: u64,
    /// [≥ 1.37] User CPU time of the build, in microseconds.
    pub cpu_user: Option<u64>,
    /// [≥ 1.37] System CPU time of the build, in microseconds.
    pub cpu_system: Option<u64>,
    /// [≥ 1.28] By output name.
    pub built_outputs: BTreeMap<String, BuiltOutput>,
    /// The derivation's hash modulo, which keys `built_outputs` on the wire
    /// (`sha256:<hex>!<output>`). `None` sends zeros, as current Nix does (clients only look at
    /// the output name); read back as `None` when zero or absent.
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
            cpu_user: None,
            cpu_system: None,
            built_outputs: BTreeMap::new(),
            drv_hash: None,
        }
    }
}

impl From<crate::serve::BuildResult> for BuildResult {
    fn from(r: crate::serve::BuildResult) -> Self {
        Self {
            status: r.status,
            error_msg: r.error_msg,
            times_built: r.times_built,
            is_non_deterministic: r.is_non_deterministic,
            start_time: r.start_time,
            stop_time: r.stop_time,
            cpu_user: None,
            cpu_system: None,
            built_outputs: r.built_outputs,
            drv_hash: r.drv_hash,
        }
    }
}

impl From<BuildResult> for crate::serve::BuildResult {
    /// The CPU times are dropped: the serve protocol has none.
    fn from(r: BuildResult) -> Self {
        let mut s = crate::serve::BuildResult::new(r.status, r.error_msg);
        s.times_built = r.times_built;
        s.is_non_deterministic = r.is_non_deterministic;
        s.start_time = r.start_time;
        s.stop_time = r.stop_time;
        s.built_outputs = r.built_outputs;
        s.drv_hash = r.drv_hash;
        s
    }
}

fn write_opt_micros<W: Write + ?Sized>(w: &mut W, v: Option<u64>) -> io::Result<()> {
    match v {
        None => write_u64(w, 0),
        Some(n) => {
            write_u64(w, 1)?;
            write_u64(w, n)
        }
    }
}

fn read_opt_micros<R: Read + ?Sized>(
    r: &mut R,
    what: &'static str,
) -> Result<Option<u64>, WireError> {
    match read_u64(r, what)? {
        0 => Ok(None),
        1 => Ok(Some(read_u64(r, what)?)),
        n => Err(WireError::unexpected(what, n)),
    }
}

/// Write a build result for the negotiated `version` (the answer to `BuildDerivation`).
pub fn write_build_result<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    res: &BuildResult,
) -> io::Result<()> {
    write_u64(w, res.status.number())?;
    write_str(w, &res.error_msg)?;
    if version >= TIMES_SINCE {
        write_u64(w, res.times_built)?;
        write_bool(w, res.is_non_deterministic)?;
        write_u64(w, res.start_time)?;
        write_u64(w, res.stop_time)?;
    }
    if version >= CPU_TIMES_SINCE {
        write_opt_micros(w, res.cpu_user)?;
        write_opt_micros(w, res.cpu_system)?;
    }
    if version >= BUILT_OUTPUTS_SINCE {
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

/// Read a build result for the negotiated `version`.
pub fn read_build_result<R: Read + ?Sized>(
    r: &mut R,
    version: Version,
    limits: &Limits,
) -> Result<BuildResult, WireError> {
    let n = read_u64(r, "status of a build result")?;
    let status = BuildStatus::from_u64(n)
        .ok_or_else(|| WireError::unexpected("status of a build result", n))?;
    let mut res = BuildResult::new(
        status,
        read_string(r, limits, "error message of a build result")?,
    );
    if version >= TIMES_SINCE {
        res.times_built = read_u64(r, "timesBuilt of a build result")?;
        res.is_non_deterministic = read_bool(r, "isNonDeterministic of a build result")?;
        res.start_time = read_u64(r, "startTime of a build result")?;
        res.stop_time = read_u64(r, "stopTime of a build result")?;
    }
    if version >= CPU_TIMES_SINCE {
        res.cpu_user = read_opt_micros(r, "cpuUser of a build result")?;
        res.cpu_system = read_opt_micros(r, "cpuSystem of a build result")?;
    }
    if version >= BUILT_OUTPUTS_SINCE {
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

/// A build result and the target it is for (the answer to `BuildPathsWithResults`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedBuildResult {
    pub path: DerivedPath,
    pub result: BuildResult,
}

/// Write the answer to `BuildPathsWithResults`: a count, then each target and its result.
/// An [`io::ErrorKind::InvalidInput`] error for a target `version` cannot say.
pub fn write_keyed_build_results<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    store_dir: &StoreDir,
    results: &[KeyedBuildResult],
) -> io::Result<()> {
    write_u64(w, results.len() as u64)?;
    for k in results {
        k.path.write(w, version, store_dir)?;
        write_build_result(w, version, &k.result)?;
    }
    Ok(())
}

pub fn read_keyed_build_results<R: Read + ?Sized>(
    r: &mut R,
    version: Version,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<Vec<KeyedBuildResult>, WireError> {
    let n = read_count(r, limits, "build results")?;
    let mut v = Vec::with_capacity(crate::wire::initial_capacity(n));
    for _ in 0..n {
        let path = DerivedPath::read(r, version, store_dir, limits)?;
        let result = read_build_result(r, version, limits)?;
        v.push(KeyedBuildResult { path, result });
    }
    Ok(v)
}
