//! Where a local store lives: logical store dir, physical dir, state and log dirs, and store URLs.

use std::path::{Path, PathBuf};

use ferrix_format::StoreDir;
use thiserror::Error;

/// The directories of a local store. The CLI builds this from defaults, `NIX_*` variables and
/// store URLs; the store itself never looks at the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStoreConfig {
    /// The logical store directory that paths are named in (`/nix/store`).
    pub store_dir: StoreDir,
    /// Where the store directory really is on disk (differs for chroot stores).
    pub real_store_dir: PathBuf,
    /// `/nix/var/nix`: database, roots, temp roots, profiles, locks.
    pub state_dir: PathBuf,
    /// `/nix/var/log/nix`: build logs.
    pub log_dir: PathBuf,
    /// The most the writing database connection keeps of it in memory, in KiB; `None`:
    /// SQLite's default (2 MiB). A store opened only to write a few small batches (an
    /// evaluation's derivations) needs far less, and every page it keeps counts in the peak
    /// memory of a short-lived process.
    pub db_cache_kib: Option<u32>,
}

impl Default for LocalStoreConfig {
    fn default() -> Self {
        Self {
            store_dir: StoreDir::default(),
            real_store_dir: PathBuf::from("/nix/store"),
            state_dir: PathBuf::from("/nix/var/nix"),
            log_dir: PathBuf::from("/nix/var/log/nix"),
            db_cache_kib: None,
        }
    }
}

/// Why a store URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreUrlError {
    #[error("store URL '{0}' is not a local store (only 'local', 'local?root=DIR' and directory paths are supported here)")]
    NotLocal(String),
    #[error("store URL '{url}': unknown parameter '{param}'")]
    UnknownParam { url: String, param: String },
    #[error("store URL '{url}': '{param}' must be an absolute path")]
    NotAbsolute { url: String, param: String },
    #[error("store URL '{url}': {msg}")]
    BadStoreDir { url: String, msg: String },
}

impl LocalStoreConfig {
    /// A chroot store: logical paths under `store_dir`, files under `root`. As in Nix, the
    /// files are at `<root>/nix/store` whatever the logical directory is.
    pub fn with_root(root: &Path, store_dir: StoreDir) -> Self {
        let under = |p: &str| root.join(p.trim_start_matches('/'));
        Self {
            real_store_dir: under("/nix/store"),
            state_dir: under("/nix/var/nix"),
            log_dir: under("/nix/var/log/nix"),
            store_dir,
            db_cache_kib: None,
        }
    }

    /// Interpret a store URL (`--store` / `NIX_REMOTE`) on top of `base`: `auto`, `local`,
    /// `local?root=DIR&store=…&state=…&log=…&real=…`, or a plain directory path, which means
    /// `local?root=DIR`.
    pub fn from_url(url: &str, base: &LocalStoreConfig) -> Result<Self, StoreUrlError> {
        if url.is_empty() || url == "auto" || url == "local" {
            return Ok(base.clone());
        }
        if url.starts_with('/') && !url.contains('?') {
            return Ok(Self::with_root(Path::new(url), base.store_dir.clone()));
        }
        let (scheme, query) = url.split_once('?').unwrap_or((url, ""));
        if scheme != "local" && !scheme.starts_with('/') {
            return Err(StoreUrlError::NotLocal(url.to_owned()));
        }
        let mut root: Option<PathBuf> = scheme.starts_with('/').then(|| PathBuf::from(scheme));
        let (mut store, mut real, mut state, mut log) = (None, None, None, None);
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let abs = || {
                if v.starts_with('/') {
                    Ok(PathBuf::from(v))
                } else {
                    Err(StoreUrlError::NotAbsolute {
                        url: url.to_owned(),
                        param: k.to_owned(),
                    })
                }
            };
            match k {
                "root" => root = Some(abs()?),
                "store" => {
                    store = Some(StoreDir::new(v).map_err(|e| StoreUrlError::BadStoreDir {
                        url: url.to_owned(),
                        msg: e.to_string(),
                    })?)
                }
                "real" => real = Some(abs()?),
                "state" => state = Some(abs()?),
                "log" => log = Some(abs()?),
                // Settings Nix also accepts that do not change where things are.
                "trusted" | "priority" | "want-mass-query" | "require-sigs" => {}
                _ => {
                    return Err(StoreUrlError::UnknownParam {
                        url: url.to_owned(),
                        param: k.to_owned(),
                    })
                }
            }
        }
        let store_dir = store.unwrap_or_else(|| base.store_dir.clone());
        let mut cfg = match root {
            Some(r) => Self::with_root(&r, store_dir),
            None => Self {
                real_store_dir: PathBuf::from(store_dir.as_str()),
                store_dir,
                ..base.clone()
            },
        };
        if let Some(r) = real {
            cfg.real_store_dir = r;
        }
        if let Some(s) = state {
            cfg.state_dir = s;
        }
        if let Some(l) = log {
            cfg.log_dir = l;
        }
        Ok(cfg)
    }

    /// `<state>/db`.
    pub fn db_dir(&self) -> PathBuf {
        self.state_dir.join("db")
    }

    /// The physical location of a store path.
    pub fn real_path(&self, p: &ferrix_format::StorePath) -> PathBuf {
        self.real_store_dir.join(p.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let base = LocalStoreConfig::default();
        assert_eq!(LocalStoreConfig::from_url("local", &base).unwrap(), base);
        let c = LocalStoreConfig::from_url("/tmp/r", &base).unwrap();
        assert_eq!(c.real_store_dir, PathBuf::from("/tmp/r/nix/store"));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/r/nix/var/nix"));
        assert_eq!(c.store_dir.as_str(), "/nix/store");
        let c = LocalStoreConfig::from_url("local?root=/tmp/r", &base).unwrap();
        assert_eq!(c.log_dir, PathBuf::from("/tmp/r/nix/var/log/nix"));
        let c = LocalStoreConfig::from_url("local?store=/foo&real=/x/y&state=/s", &base).unwrap();
        assert_eq!(c.store_dir.as_str(), "/foo");
        assert_eq!(c.real_store_dir, PathBuf::from("/x/y"));
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        assert!(LocalStoreConfig::from_url("ssh://host", &base).is_err());
        assert!(LocalStoreConfig::from_url("local?root=rel", &base).is_err());
        assert!(LocalStoreConfig::from_url("local?bogus=1", &base).is_err());
    }
}
