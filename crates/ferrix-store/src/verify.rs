//! Checking the store against its database: every valid path present, with its recorded hash.

use ferrix_format::{Encoding, HashAlgo, StorePath};

use crate::error::Result;
use crate::local::LocalStore;

/// A problem `verify_store` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The path is registered but gone from disk; `invalidated` when it was dropped from the
    /// database (nothing referred to it), as Nix does.
    Missing { path: StorePath, invalidated: bool },
    /// The contents differ from the recorded NAR hash (or size).
    Modified {
        path: StorePath,
        expected: String,
        got: String,
    },
    /// A reference of a valid path is not valid: the closure invariant is broken.
    DanglingReference {
        path: StorePath,
        reference: StorePath,
    },
}

impl Problem {
    /// The message Nix prints for it.
    pub fn describe(&self, store: &LocalStore) -> String {
        match self {
            Problem::Missing {
                path,
                invalidated: true,
            } => {
                format!(
                    "path '{}' disappeared, removing from database...",
                    store.print(path)
                )
            }
            Problem::Missing {
                path,
                invalidated: false,
            } => {
                format!(
                    "path '{}' disappeared, but it still has valid referrers!",
                    store.print(path)
                )
            }
            Problem::Modified {
                path,
                expected,
                got,
            } => format!(
                "path '{}' was modified! expected hash '{expected}', got '{got}'",
                store.print(path)
            ),
            Problem::DanglingReference { path, reference } => format!(
                "path '{}' refers to '{}', which is not valid",
                store.print(path),
                store.print(reference)
            ),
        }
    }
}

/// Check every valid path (or just `only`). With `check_contents`, recompute NAR hashes.
pub fn verify_store(
    store: &LocalStore,
    check_contents: bool,
    only: Option<&[StorePath]>,
) -> Result<Vec<Problem>> {
    let paths = match only {
        Some(p) => p.to_vec(),
        None => store.all_valid_paths()?,
    };
    let mut problems = Vec::new();
    for p in paths {
        let Some(info) = store.query_path_info(&p)? else {
            continue;
        };
        let real = store.real_path(&p);
        if std::fs::symlink_metadata(&real).is_err() {
            let has_referrers = store.referrers(&p)?.iter().any(|r| *r != p);
            if !has_referrers {
                store.db().invalidate(&p)?;
            }
            problems.push(Problem::Missing {
                path: p,
                invalidated: !has_referrers,
            });
            continue;
        }
        for r in &info.references {
            if !store.is_valid_path(r)? {
                problems.push(Problem::DanglingReference {
                    path: p.clone(),
                    reference: r.clone(),
                });
            }
        }
        if check_contents {
            let (h, size) =
                ferrix_format::nar::hash_path(&real, info.nar_hash.algo()).map_err(|source| {
                    crate::StoreError::Dump {
                        path: real.clone(),
                        source,
                    }
                })?;
            if h != info.nar_hash || (info.nar_size != 0 && size != info.nar_size) {
                let enc = |h: &ferrix_format::Hash| h.encode_typed(Encoding::Nix32);
                problems.push(Problem::Modified {
                    path: p.clone(),
                    expected: enc(&info.nar_hash),
                    got: if h.algo() == HashAlgo::Sha256 {
                        enc(&h)
                    } else {
                        h.to_string()
                    },
                });
            }
        }
    }
    Ok(problems)
}
