//! The replies the server writes after [`StderrMsg::Last`](super::StderrMsg::Last), and their
//! readers for the client.
//!
//! | op | reply | functions |
//! |---|---|---|
//! | `IsValidPath` | u64 bool | [`crate::wire::write_bool`], [`crate::wire::read_bool`] |
//! | `QueryValidPaths`, `QueryReferrers`, `QueryAllValidPaths` | path set | [`crate::wire::write_store_paths`], [`crate::wire::read_store_path_set`] |
//! | `QueryPathInfo` | [≥ 1.17] found flag, then the unkeyed info | [`write_path_info_reply`], [`read_path_info_reply`] |
//! | `QueryPathFromHashPart` | path or `""` | [`crate::wire::write_opt_store_path`], [`crate::wire::read_opt_store_path`] |
//! | `QueryDerivationOutputMap` | map name → optional path | [`write_output_map`], [`read_output_map`] |
//! | `BuildDerivation` | build result | [`super::write_build_result`], [`super::read_build_result`] |
//! | `BuildPathsWithResults` | keyed build results | [`super::write_keyed_build_results`], [`super::read_keyed_build_results`] |
//! | `QueryMissing` | [`Missing`] | [`write_missing`], [`read_missing`] |
//! | `BuildPaths`, `EnsurePath`, `AddTempRoot`, `AddIndirectRoot`, `SyncWithGC`, `AddSignatures`, `AddBuildLog` | u64 1 | [`write_ok`], [`read_ok`] |
//! | `AddPermRoot` | string | [`crate::wire::write_str`], [`crate::wire::read_string`] |
//! | `SetOptions`, `AddToStoreNar`, `AddMultipleToStore` | nothing | |
//! | `NarFromPath` | the NAR itself | |

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use ferrix_format::{StoreDir, StorePath};

use super::path_info::UnkeyedPathInfo;
pub use crate::serve::{read_ok, write_ok};
use crate::wire::{
    read_bool, read_count, read_opt_store_path, read_store_path_set, read_string, read_u64,
    write_bool, write_opt_store_path, write_store_paths, write_str, write_u64, Limits, WireError,
};
use crate::Version;

/// `QueryPathInfo` answers a found flag from this version on; before, an invalid path is an
/// error ([`StderrMsg::Error`](super::StderrMsg::Error)) and the reply is always an info.
pub const FOUND_FLAG_SINCE: Version = Version::new(1, 17);

/// The reply to `QueryPathInfo`. Before 1.17 there is no way to say "not found" here (the
/// server must send an error instead): `None` is then an [`io::ErrorKind::InvalidInput`] error.
pub fn write_path_info_reply<W: Write + ?Sized>(
    w: &mut W,
    version: Version,
    store_dir: &StoreDir,
    info: Option<&UnkeyedPathInfo>,
) -> io::Result<()> {
    let found = version >= FOUND_FLAG_SINCE;
    match info {
        Some(i) => {
            if found {
                write_bool(w, true)?;
            }
            i.write(w, version, store_dir)
        }
        None if found => write_bool(w, false),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("worker protocol {version} cannot answer 'not found' (< {FOUND_FLAG_SINCE})"),
        )),
    }
}

pub fn read_path_info_reply<R: Read + ?Sized>(
    r: &mut R,
    version: Version,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<Option<UnkeyedPathInfo>, WireError> {
    if version >= FOUND_FLAG_SINCE && !read_bool(r, "found flag of QueryPathInfo")? {
        return Ok(None);
    }
    UnkeyedPathInfo::read(r, version, store_dir, limits).map(Some)
}

/// The reply to `QueryDerivationOutputMap`: the outputs of a derivation by name, each with its
/// path when known (`""` when not).
pub fn write_output_map<W: Write + ?Sized>(
    w: &mut W,
    store_dir: &StoreDir,
    outputs: &BTreeMap<String, Option<StorePath>>,
) -> io::Result<()> {
    write_u64(w, outputs.len() as u64)?;
    for (name, path) in outputs {
        write_str(w, name)?;
        write_opt_store_path(w, store_dir, path.as_ref())?;
    }
    Ok(())
}

/// Read the reply to `QueryDerivationOutputMap`; an output named twice is refused.
pub fn read_output_map<R: Read + ?Sized>(
    r: &mut R,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<BTreeMap<String, Option<StorePath>>, WireError> {
    let n = read_count(r, limits, "outputs of a derivation output map")?;
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let name = read_string(r, limits, "output name in a derivation output map")?;
        let path = read_opt_store_path(r, store_dir, limits, "output path in an output map")?;
        if m.contains_key(&name) {
            return Err(WireError::unexpected(
                "output name in a derivation output map (sent twice)",
                name,
            ));
        }
        m.insert(name, path);
    }
    Ok(m)
}

/// The reply to `QueryMissing`: what building the targets would take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missing {
    /// Derivations to build.
    pub will_build: BTreeSet<StorePath>,
    /// Paths to fetch from substituters.
    pub will_substitute: BTreeSet<StorePath>,
    /// Paths neither valid nor buildable nor substitutable.
    pub unknown: BTreeSet<StorePath>,
    /// Bytes to download (compressed).
    pub download_size: u64,
    /// Bytes the fetched NARs unpack to.
    pub nar_size: u64,
}

pub fn write_missing<W: Write + ?Sized>(
    w: &mut W,
    store_dir: &StoreDir,
    m: &Missing,
) -> io::Result<()> {
    write_store_paths(w, store_dir, &m.will_build)?;
    write_store_paths(w, store_dir, &m.will_substitute)?;
    write_store_paths(w, store_dir, &m.unknown)?;
    write_u64(w, m.download_size)?;
    write_u64(w, m.nar_size)
}

pub fn read_missing<R: Read + ?Sized>(
    r: &mut R,
    store_dir: &StoreDir,
    limits: &Limits,
) -> Result<Missing, WireError> {
    Ok(Missing {
        will_build: read_store_path_set(r, store_dir, limits, "willBuild of QueryMissing")?,
        will_substitute: read_store_path_set(
            r,
            store_dir,
            limits,
            "willSubstitute of QueryMissing",
        )?,
        unknown: read_store_path_set(r, store_dir, limits, "unknown of QueryMissing")?,
        download_size: read_u64(r, "downloadSize of QueryMissing")?,
        nar_size: read_u64(r, "narSize of QueryMissing")?,
    })
}
