//! What goes wrong with binary caches, naming the cache, the path or the file.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::StoreError;

/// Why writing or reading a cache failed; each names the cache, path or file.
#[derive(Debug, Error)]
pub enum CacheError {
    #[error("cannot {what} '{path}'")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("'{path}' was modified in the store: its NAR hash is {got}, the database records {expected}")]
    Modified {
        path: String,
        expected: String,
        got: String,
    },
    #[error("'{path}' has a malformed signature '{sig}'")]
    BadSignature { path: String, sig: String },
    #[error("'{cache}' does not have '{path}'")]
    NotInCache { cache: String, path: String },
    #[error("'{cache}' has a malformed narinfo '{file}'")]
    BadNarInfo {
        cache: String,
        file: PathBuf,
        #[source]
        source: ferrix_format::narinfo::NarInfoError,
    },
    #[error("'{cache}' offers '{path}', but {why}")]
    Lying {
        cache: String,
        path: String,
        why: String,
    },
    #[error("'{path}' from '{cache}' is not signed by any of the keys in 'trusted-public-keys'")]
    Untrusted { cache: String, path: String },
    #[error("cannot set up the HTTP client")]
    HttpClient {
        #[source]
        source: reqwest::Error,
    },
    #[error("'{file}' holds no PEM certificates (see 'ssl-cert-file')")]
    Certificates { file: PathBuf },
    #[error("cannot fetch '{url}'")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("'{url}' answered HTTP {status} ({why})")]
    HttpStatus {
        url: String,
        status: u16,
        why: String,
    },
    #[error("'{cache}' does not appear to be a binary cache: it has no 'nix-cache-info'")]
    NotACache { cache: String },
    #[error("'{cache}' is a binary cache for the store '{theirs}', not '{ours}'")]
    WrongStore {
        cache: String,
        theirs: String,
        ours: String,
    },
    #[error("'{cache}' has a malformed 'nix-cache-info'")]
    BadCacheInfo {
        cache: String,
        #[source]
        source: ferrix_format::narinfo::NarInfoError,
    },
    #[error("'{uri}' is not a binary cache URL: {why}")]
    BadUrl { uri: String, why: String },
    #[error("'{cache}' is disabled for the rest of this run: {why}")]
    Disabled { cache: String, why: String },
    #[error("the narinfo disk cache '{file}' failed")]
    DiskCache {
        file: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot copy '{path}' from '{cache}'")]
    Substitute {
        cache: String,
        path: String,
        #[source]
        source: Box<StoreError>,
    },
}
