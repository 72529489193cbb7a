//! Built-in builders, run in this process instead of a program: `builtin:fetchurl`, which
//! downloads a fixed-output derivation's output (through the HTTP client substitution uses).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ferrix_format::Derivation;
use ferrix_store::binary_cache::{CacheError, Compression, HttpClient, HttpSettings};
use thiserror::Error;

/// Why a built-in builder failed.
#[derive(Debug, Error)]
pub enum BuiltinError {
    #[error("'{0}' is not a built-in builder (only 'builtin:fetchurl' is)")]
    Unknown(String),
    #[error("'builtin:fetchurl' only builds fixed-output derivations")]
    NotFixedOutput,
    #[error("the derivation has no '{0}' attribute")]
    MissingAttr(&'static str),
    #[error("'{0}' is not an http://, https:// or file:// URL")]
    BadUrl(String),
    /// Names the URL itself.
    #[error(transparent)]
    Download(CacheError),
    #[error("'{0}' does not exist on the server (HTTP 404)")]
    NotFound(String),
    #[error("cannot {what} '{path}'")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot unpack the archive downloaded from '{url}'")]
    Unpack {
        url: String,
        #[source]
        source: ferrix_format::nar::RestoreError,
    },
    #[error("the download was cancelled")]
    Cancelled,
}

/// Run the built-in builder `builder` (`builtin:NAME`) of `drv`, with its environment
/// `env`, writing its output `out` at `target` (downloads as `http` says). Blocks: call it on a blocking thread.
/// `log` receives what a builder would print.
pub fn run(
    builder: &str,
    drv: &Derivation,
    env: &BTreeMap<String, String>,
    target: &Path,
    http: &HttpSettings,
    log: &mut dyn FnMut(&str),
    cancel: &AtomicBool,
) -> Result<(), BuiltinError> {
    match builder {
        "builtin:fetchurl" => fetchurl(drv, env, target, http, log, cancel),
        other => Err(BuiltinError::Unknown(other.to_owned())),
    }
}

/// Nix's `builtin:fetchurl`: `url` is downloaded to the output, or with `unpack = "1"`
/// restored from the NAR it is (xz-compressed when the URL ends in `.xz`); `executable =
/// "1"` makes the file executable. The hash of the fixed output is checked afterwards, as
/// for any build.
fn fetchurl(
    drv: &Derivation,
    env: &BTreeMap<String, String>,
    target: &Path,
    http: &HttpSettings,
    log: &mut dyn FnMut(&str),
    cancel: &AtomicBool,
) -> Result<(), BuiltinError> {
    if drv.fixed_output().is_none() {
        return Err(BuiltinError::NotFixedOutput);
    }
    let url = env.get("url").ok_or(BuiltinError::MissingAttr("url"))?;
    let unpack = env.get("unpack").is_some_and(|v| v == "1");
    let executable = env.get("executable").is_some_and(|v| v == "1");
    log(&format!("downloading '{url}'..."));
    let body: Box<dyn Read + Send> = if let Some(path) = url.strip_prefix("file://") {
        let f = fs::File::open(path).map_err(|source| BuiltinError::Io {
            what: "read",
            path: PathBuf::from(path),
            source,
        })?;
        Box::new(io::BufReader::with_capacity(1 << 20, f))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        // A client for each download: they are few, and one for a plain `http://` URL
        // reads no certificates.
        let client = HttpClient::for_urls(http, &[url.as_str()]).map_err(BuiltinError::Download)?;
        let body = client
            .get(url)
            .map_err(BuiltinError::Download)?
            .ok_or_else(|| BuiltinError::NotFound(url.clone()))?;
        Box::new(io::BufReader::with_capacity(1 << 20, body.reader))
    } else {
        return Err(BuiltinError::BadUrl(url.clone()));
    };
    let body = Cancellable {
        inner: body,
        cancel,
    };
    let io_err = |what: &'static str| {
        let path = target.to_owned();
        move |source| BuiltinError::Io { what, path, source }
    };
    if unpack {
        let compression = if url.ends_with(".xz") {
            Compression::Xz
        } else {
            Compression::None
        };
        let nar = compression
            .decoder(io::BufReader::new(body))
            .map_err(io_err("decompress"))?;
        return ferrix_format::nar::restore(nar, target)
            .map(drop)
            .map_err(|source| match source {
                _ if cancel.load(Ordering::Relaxed) => BuiltinError::Cancelled,
                source => BuiltinError::Unpack {
                    url: url.clone(),
                    source,
                },
            });
    }
    let mut file = fs::File::create(target).map_err(io_err("create"))?;
    let mut body = body;
    match io::copy(&mut body, &mut file) {
        Ok(_) => {}
        Err(_) if cancel.load(Ordering::Relaxed) => return Err(BuiltinError::Cancelled),
        Err(source) => {
            return Err(BuiltinError::Io {
                what: "download to",
                path: target.to_owned(),
                source,
            })
        }
    }
    file.flush().map_err(io_err("write"))?;
    if executable {
        fs::set_permissions(target, fs::Permissions::from_mode(0o755))
            .map_err(io_err("make executable"))?;
    }
    Ok(())
}

/// A stream that fails once the build is cancelled.
struct Cancellable<'a, R> {
    inner: R,
    cancel: &'a AtomicBool,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not `Interrupted`, which readers retry.
            return Err(io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}
