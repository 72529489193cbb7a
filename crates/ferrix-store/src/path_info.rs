//! What the store records about a valid path.

use std::collections::BTreeSet;

use ferrix_format::{ContentAddress, Hash, StorePath};

/// A valid path's metadata, as in Nix's `ValidPaths` row plus its references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPathInfo {
    pub path: StorePath,
    pub deriver: Option<StorePath>,
    /// SHA-256 of the path's NAR serialisation.
    pub nar_hash: Hash,
    pub references: BTreeSet<StorePath>,
    /// Unix seconds.
    pub registration_time: i64,
    pub nar_size: u64,
    /// Built locally (or otherwise trusted without signatures).
    pub ultimate: bool,
    /// `keyname:base64` signatures.
    pub sigs: BTreeSet<String>,
    pub ca: Option<ContentAddress>,
}

impl ValidPathInfo {
    /// `path`'s record as the worker protocol carries it, without the path.
    pub fn from_unkeyed(path: StorePath, i: ferrix_protocol::worker::UnkeyedPathInfo) -> Self {
        Self {
            path,
            deriver: i.deriver,
            nar_hash: i.nar_hash,
            references: i.references,
            registration_time: i64::try_from(i.registration_time).unwrap_or(i64::MAX),
            nar_size: i.nar_size,
            ultimate: i.ultimate,
            sigs: i.sigs,
            ca: i.ca,
        }
    }

    /// The record as the worker protocol carries it, without the path.
    pub fn to_unkeyed(self) -> ferrix_protocol::worker::UnkeyedPathInfo {
        ferrix_protocol::worker::UnkeyedPathInfo {
            deriver: self.deriver,
            nar_hash: self.nar_hash,
            references: self.references,
            registration_time: u64::try_from(self.registration_time).unwrap_or(0),
            nar_size: self.nar_size,
            ultimate: self.ultimate,
            sigs: self.sigs,
            ca: self.ca,
        }
    }

    /// A fresh record for a path about to be registered now.
    pub fn new(path: StorePath, nar_hash: Hash, nar_size: u64) -> Self {
        Self {
            path,
            deriver: None,
            nar_hash,
            references: BTreeSet::new(),
            registration_time: now(),
            nar_size,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        }
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
