//! Derivations: the data type, its ATerm text, its JSON form, and how output paths follow.

mod aterm;
mod hash_modulo;
mod json;

use std::collections::{BTreeMap, BTreeSet};

pub use aterm::{DrvParseError, DrvParseErrorKind};
pub use hash_modulo::{DrvCheckError, DrvCheckErrorKind, DrvHash, DrvHashError};
pub use json::{DrvJsonError, ParsedDrv};

use crate::content_address::FileIngestionMethod;
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath};

/// How one output of a derivation gets its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivationOutput {
    /// Path fixed by hashing the derivation (the usual case).
    InputAddressed(StorePath),
    /// A fixed-output derivation: the path follows from the expected content hash.
    CaFixed {
        method: FileIngestionMethod,
        hash: Hash,
        path: StorePath,
    },
    /// Content-addressed, path known only after the build (experimental in Nix).
    CaFloating {
        method: FileIngestionMethod,
        algo: HashAlgo,
    },
    /// Input-addressed, but depends on floating outputs; path not yet known.
    Deferred,
    /// Impure derivation (experimental in Nix).
    Impure {
        method: FileIngestionMethod,
        algo: HashAlgo,
    },
}

/// Why an output's three fields (path, hash algorithm, hash) make no output.
#[derive(Debug)]
pub enum OutputFieldsError<E> {
    /// The path, as the caller's parser found it.
    Path(E),
    /// A hash without a hash algorithm.
    HashWithoutAlgo,
    /// A path with an algorithm but no fixed hash.
    PathWithoutHash,
    /// A fixed hash without a path.
    HashWithoutPath,
    /// The hash algorithm is unknown.
    Algo,
    Hash(crate::hash::HashError),
}

impl DerivationOutput {
    /// The path, hash algorithm and hash strings of the output, as `.drv` files and the
    /// wire protocols hold them.
    pub fn to_fields(&self, store_dir: &StoreDir) -> (String, String, String) {
        match self {
            Self::InputAddressed(p) => (store_dir.display(p), String::new(), String::new()),
            Self::CaFixed { method, hash, path } => (
                store_dir.display(path),
                format!("{}{}", method.prefix(), hash.algo()),
                hash.to_base16(),
            ),
            Self::CaFloating { method, algo } => (
                String::new(),
                format!("{}{algo}", method.prefix()),
                String::new(),
            ),
            Self::Deferred => (String::new(), String::new(), String::new()),
            Self::Impure { method, algo } => (
                String::new(),
                format!("{}{algo}", method.prefix()),
                "impure".to_owned(),
            ),
        }
    }

    /// The output its three strings describe, by the rules of `.drv` files; `parse_path`
    /// reads a (non-empty) path.
    pub fn from_fields<E>(
        path: &str,
        algo: &str,
        hash: &str,
        parse_path: impl FnOnce(&str) -> Result<StorePath, E>,
    ) -> Result<Self, OutputFieldsError<E>> {
        if algo.is_empty() {
            if !hash.is_empty() {
                return Err(OutputFieldsError::HashWithoutAlgo);
            }
            return Ok(if path.is_empty() {
                Self::Deferred
            } else {
                Self::InputAddressed(parse_path(path).map_err(OutputFieldsError::Path)?)
            });
        }
        let (method, name) = match algo.strip_prefix("r:") {
            Some(a) => (FileIngestionMethod::Recursive, a),
            None => (FileIngestionMethod::Flat, algo),
        };
        let a: HashAlgo = name.parse().map_err(|_| OutputFieldsError::Algo)?;
        if hash == "impure" && path.is_empty() {
            Ok(Self::Impure { method, algo: a })
        } else if hash.is_empty() {
            if !path.is_empty() {
                return Err(OutputFieldsError::PathWithoutHash);
            }
            Ok(Self::CaFloating { method, algo: a })
        } else {
            let h = Hash::decode_digits(a, hash).map_err(OutputFieldsError::Hash)?;
            if path.is_empty() {
                return Err(OutputFieldsError::HashWithoutPath);
            }
            Ok(Self::CaFixed {
                method,
                hash: h,
                path: parse_path(path).map_err(OutputFieldsError::Path)?,
            })
        }
    }

    /// The output path, when it is known before building.
    pub fn path(&self) -> Option<&StorePath> {
        match self {
            Self::InputAddressed(p) | Self::CaFixed { path: p, .. } => Some(p),
            _ => None,
        }
    }
}

/// A derivation as stored in a `.drv` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    pub outputs: BTreeMap<String, DerivationOutput>,
    /// Input derivations and the outputs of each that are needed.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<String>>,
    pub input_srcs: BTreeSet<StorePath>,
    pub platform: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl Derivation {
    /// A fixed-output derivation has exactly one output, `out`, with a fixed hash.
    pub fn fixed_output(&self) -> Option<(FileIngestionMethod, &Hash, &StorePath)> {
        if self.outputs.len() != 1 {
            return None;
        }
        match self.outputs.get("out") {
            Some(DerivationOutput::CaFixed { method, hash, path }) => Some((*method, hash, path)),
            _ => None,
        }
    }

    /// Whether the builder is one Nix runs in-process (`builtin:fetchurl`, …).
    pub fn is_builtin(&self) -> bool {
        self.builder.starts_with("builtin:")
    }

    /// The references a `.drv` store path gets: its sources and its input derivations.
    pub fn references(&self) -> BTreeSet<StorePath> {
        self.input_srcs
            .iter()
            .chain(self.input_drvs.keys())
            .cloned()
            .collect()
    }

    /// The store path this derivation is written to, named `<name>.drv`.
    pub fn drv_path(
        &self,
        store_dir: &StoreDir,
        name: &str,
    ) -> Result<StorePath, crate::store_path::StorePathError> {
        let text = self.to_aterm(store_dir);
        store_dir.make_text_path(
            &format!("{name}.drv"),
            &Hash::sha256(text.as_bytes()),
            &self.references(),
        )
    }
}

/// The derivation name encoded in a `.drv` path (`<hash>-<name>.drv`).
pub fn drv_name(drv_path: &StorePath) -> &str {
    drv_path
        .name()
        .strip_suffix(".drv")
        .unwrap_or(drv_path.name())
}
