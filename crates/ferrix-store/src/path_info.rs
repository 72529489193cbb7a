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
