//! What evaluation needs of a store: its directory, and writing text files, source trees and
//! derivations into it. The local store implements it; evaluation never builds.

use std::collections::BTreeSet;
use std::path::Path;

use ferrix_format::content_address::FileIngestionMethod;
use ferrix_format::{Derivation, HashAlgo, StoreDir, StorePath};
use ferrix_store::{LocalStore, StoreError};

/// Building during evaluation (import from derivation): the caller (the CLI, with the
/// Engine) builds the outputs an expression reads before it reads them. Evaluation never
/// depends on building itself.
pub trait Realise {
    /// Build `outputs` (`(drv, output)`), or say why they could not be.
    fn realise(&self, outputs: &[(StorePath, String)]) -> Result<(), String>;
}

pub trait EvalStore {
    fn store_dir(&self) -> &StoreDir;

    /// A text file with references (`builtins.toFile`).
    fn add_text(
        &self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError>;

    /// A file system tree, as a recursive SHA-256 source path named `name`.
    fn add_source(&self, path: &Path, name: &str) -> Result<StorePath, StoreError>;

    /// A regular file, as a flat SHA-256 path named `name` (`builtins.fetchurl`).
    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError>;

    /// Whether `p` is a valid path of the store.
    fn is_valid(&self, p: &StorePath) -> Result<bool, StoreError>;

    /// Write `drv` as `<name>.drv`, its input-addressed outputs computed; the derivation as
    /// written and where.
    fn add_derivation(
        &self,
        drv: Derivation,
        name: &str,
    ) -> Result<(StorePath, Derivation), StoreError>;

    /// The derivation at `p` (for its outputs).
    fn read_derivation(&self, p: &StorePath) -> Result<Derivation, StoreError>;

    /// `p` and everything it refers to, directly or not.
    fn closure(&self, p: &StorePath) -> Result<BTreeSet<StorePath>, StoreError>;
}

impl EvalStore for LocalStore {
    fn store_dir(&self) -> &StoreDir {
        LocalStore::store_dir(self)
    }

    fn add_text(
        &self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        LocalStore::add_text(self, name, text.as_bytes(), refs)
    }

    fn add_source(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        self.add_path(path, name, FileIngestionMethod::Recursive, HashAlgo::Sha256)
    }

    fn add_flat(&self, path: &Path, name: &str) -> Result<StorePath, StoreError> {
        self.add_path(path, name, FileIngestionMethod::Flat, HashAlgo::Sha256)
    }

    fn is_valid(&self, p: &StorePath) -> Result<bool, StoreError> {
        self.is_valid_path(p)
    }

    fn add_derivation(
        &self,
        drv: Derivation,
        name: &str,
    ) -> Result<(StorePath, Derivation), StoreError> {
        ferrix_store::drv::fill_and_add(self, drv, name)
    }

    fn read_derivation(&self, p: &StorePath) -> Result<Derivation, StoreError> {
        ferrix_store::drv::read_derivation(self, p)
    }

    fn closure(&self, p: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        LocalStore::closure(self, [p.clone()], false, false)
    }
}
