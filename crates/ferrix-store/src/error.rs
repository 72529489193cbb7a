//! Errors of the store, each naming the path, file or database it concerns.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// A store operation that failed, with what it was working on.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{what} '{path}'")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("database '{path}'")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the database at '{path}' has schema version {found}, newer than the version {supported} this Ferrix understands; use a newer Ferrix or Nix")]
    SchemaTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("the database at '{path}' has the old schema version {found}; open it once with Nix 2.8 to upgrade it to version {supported}")]
    SchemaTooOld {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("the schema file '{path}' is corrupt: {text:?}")]
    SchemaCorrupt { path: PathBuf, text: String },
    #[error("path '{0}' is not valid")]
    NotValid(String),
    #[error("cannot add '{path}': its reference '{reference}' is not valid")]
    ReferenceNotValid { path: String, reference: String },
    #[error("hash mismatch importing path '{path}';\n  specified: {expected}\n  got:       {got}")]
    HashMismatch {
        path: String,
        expected: String,
        got: String,
    },
    #[error(
        "size mismatch importing path '{path}': the NAR is {got} bytes, {expected} were announced"
    )]
    SizeMismatch {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("'{path}' is not a regular file, so it cannot be added with flat hashing")]
    NotRegularFile { path: PathBuf },
    #[error("cycle detected in the references of '{path}' from '{from}'")]
    Cycle { path: String, from: String },
    #[error("cannot delete path '{path}' because it is in use by '{by}'")]
    InUse { path: String, by: String },
    #[error("cannot delete path '{path}' since it is still alive (reachable from root '{root}')")]
    Alive { path: String, root: String },
    #[error("'{path}' cannot be a store path")]
    BadName {
        path: String,
        #[source]
        source: ferrix_format::store_path::StorePathError,
    },
    #[error("{0}")]
    Format(String),
    #[error("derivation '{path}' does not parse")]
    BadDerivation {
        path: String,
        #[source]
        source: ferrix_format::derivation::DrvParseError,
    },
    #[error("'{0}' is named like a derivation but is not a regular file")]
    DrvNotFile(String),
    #[error(transparent)]
    BadDrvOutputs(Box<ferrix_format::derivation::DrvCheckError<StoreError>>),
    #[error("computing the hash of derivation '{path}'")]
    DrvHash {
        path: String,
        #[source]
        source: Box<ferrix_format::derivation::DrvHashError<StoreError>>,
    },
    #[error("invalid NAR for {path}")]
    Nar {
        path: String,
        #[source]
        source: ferrix_format::nar::NarError,
    },
    #[error("reading '{path}' as a NAR")]
    Dump {
        path: PathBuf,
        #[source]
        source: ferrix_format::nar::DumpError,
    },
    #[error("export stream, at byte {offset}")]
    BadExport {
        offset: u64,
        #[source]
        kind: crate::export::ExportErrorKind,
    },
    #[error("export stream, at byte {offset}")]
    InExport {
        offset: u64,
        #[source]
        source: Box<StoreError>,
    },
    #[error("writing the export stream")]
    ExportWrite(#[source] io::Error),
    #[error("interrupted by the user")]
    Interrupted,
    /// A store behind a daemon failed to do what was asked.
    #[error(transparent)]
    Daemon(Box<crate::serve_client::RemoteError>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attach a path and a verb to an io::Error.
pub(crate) fn io_err(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { what, path, source }
}
