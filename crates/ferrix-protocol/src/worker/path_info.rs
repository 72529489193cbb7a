//! Path infos (`ValidPathInfo`) as the worker protocol carries them.
//!
//! On the wire: [the path, when keyed,] the deriver (`""` for none), the NAR hash (Nix sends
//! bare base16 SHA-256; any form Nix parses is accepted), the references (a set), u64
//! registration time, u64 NAR size, and from 1.16 on u64 `ultimate`, the signatures (a set) and
//! the content address (`""` for none).
//!
//! Requests that carry a path info (`AddToStoreNar`, the stream of `AddMultipleToStore`)
//! always carry the 1.16 form, whatever the version: see [`FULL`].

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use ferrix_format::content_address::ContentAddress;
use ferrix_format::hash::{Hash, HashAlgo};
use ferrix_format::{StoreDir, StorePath};

use crate::serve::{read_opt_ca, write_opt_ca};
use crate::wire::{
    read_bool, read_opt_store_path, read_store_path, read_store_path_set, read_string,
    read_string_set, read_u64, write_bool, write_opt_store_path, write_store_path,
    write_store_paths, write_str, write_strings, write_u64, Limits, WireError,
};
use crate::Version;

/// Path infos carry `ultimate`, signatures and a content address from this version on.
pub const SIGS_SINCE: Version = Version::new(1, 16);

/// The version whose path-info form requests use whatever the session's version.
pub const FULL: Version = SIGS_SINCE;

/// What the store knows about a valid path, without the path itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnkeyedPathInfo {
    pub deriver: Option<StorePath>,
    /// SHA-256 of the NAR; sent as bare base16.
    pub nar_hash: Hash,
    pub references: BTreeSet<StorePath>,
    /// Seconds since the epoch.
    pub registration_time: u64,
    pub nar_size: u64,
    /// [≥ 1.16] Built locally (trusted without signatures).
    pub ultimate: bool,
    /// [≥ 1.16]
    pub sigs: BTreeSet<String>,
    /// [≥ 1.16]
    pub ca: Option<ContentAddress>,
}

impl UnkeyedPathInfo {
    /// An info with the hash and size of `nar_hash`/`nar_size` and everything else empty.
    pub fn new(nar_hash: Hash, nar_size: u64) -> Self {
        Self {
            deriver: None,
            nar_hash,
            references: BTreeSet::new(),
            registration_time: 0,
            nar_size,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        }
    }

    /// Read for the negotiated `version`; fields it does not carry are left empty.
    pub fn read<R: Read + ?Sized>(
        r: &mut R,
        version: Version,
        store_dir: &StoreDir,
        limits: &Limits,
    ) -> Result<Self, WireError> {
        let deriver = read_opt_store_path(r, store_dir, limits, "deriver of a path info")?;
        let text = read_string(r, limits, "NAR hash of a path info")?;
        let nar_hash =
            Hash::parse(&text, Some(HashAlgo::Sha256)).map_err(|source| WireError::BadHash {
                what: "NAR hash of a path info",
                text,
                source,
            })?;
        let mut info = Self {
            deriver,
            nar_hash,
            references: read_store_path_set(r, store_dir, limits, "references of a path info")?,
            registration_time: read_u64(r, "registration time of a path info")?,
            nar_size: read_u64(r, "NAR size of a path info")?,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        };
        if version >= SIGS_SINCE {
            info.ultimate = read_bool(r, "ultimate flag of a path info")?;
            info.sigs = read_string_set(r, limits, "signatures of a path info")?;
            info.ca = read_opt_ca(r, limits, "content address of a path info")?;
        }
        Ok(info)
    }

    /// Write for the negotiated `version`.
    pub fn write<W: Write + ?Sized>(
        &self,
        w: &mut W,
        version: Version,
        store_dir: &StoreDir,
    ) -> io::Result<()> {
        write_opt_store_path(w, store_dir, self.deriver.as_ref())?;
        write_str(w, &self.nar_hash.to_base16())?;
        write_store_paths(w, store_dir, &self.references)?;
        write_u64(w, self.registration_time)?;
        write_u64(w, self.nar_size)?;
        if version >= SIGS_SINCE {
            write_bool(w, self.ultimate)?;
            write_strings(w, self.sigs.iter().map(String::as_str))?;
            write_opt_ca(w, self.ca.as_ref())?;
        }
        Ok(())
    }
}

/// A path and its info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub info: UnkeyedPathInfo,
}

impl PathInfo {
    pub fn read<R: Read + ?Sized>(
        r: &mut R,
        version: Version,
        store_dir: &StoreDir,
        limits: &Limits,
    ) -> Result<Self, WireError> {
        Ok(Self {
            path: read_store_path(r, store_dir, limits, "path of a path info")?,
            info: UnkeyedPathInfo::read(r, version, store_dir, limits)?,
        })
    }

    pub fn write<W: Write + ?Sized>(
        &self,
        w: &mut W,
        version: Version,
        store_dir: &StoreDir,
    ) -> io::Result<()> {
        write_store_path(w, store_dir, &self.path)?;
        self.info.write(w, version, store_dir)
    }
}
