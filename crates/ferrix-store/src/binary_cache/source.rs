//! One binary cache read from, in a directory (`file://`) or over HTTP (`http(s)://`): its
//! `nix-cache-info`, narinfos parsed strictly and checked against what was asked, NARs as
//! decompressed streams, and the signature policy that decides whether a path may enter.

use std::fs;
use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use ferrix_format::narinfo::CacheInfo;
use ferrix_format::signature::PublicKey;
use ferrix_format::{NarInfo, StoreDir, StorePath};

use super::http::HttpClient;
use super::{CacheError, Compression, NarInfoDiskCache, Remembered};

/// Whom a cache's paths must be signed by.
#[derive(Debug, Clone)]
pub struct Trust {
    /// `trusted-public-keys`.
    pub keys: Vec<PublicKey>,
    /// `require-sigs`: an input-addressed path must carry a trusted signature.
    pub require_sigs: bool,
}

/// Where a cache's files are.
#[derive(Debug)]
enum Location {
    Dir(PathBuf),
    /// The base URL, without a trailing slash.
    Http {
        base: String,
        client: HttpClient,
    },
}

/// Transport failures (not missing or untrusted paths) after which a cache is no longer
/// asked in this run.
const MAX_FAILURES: u32 = 3;

/// A binary cache, read from.
#[derive(Debug)]
pub struct CacheSource {
    /// How the cache is named in messages (its URL).
    pub name: String,
    location: Location,
    pub trust: Trust,
    /// Lower is asked first (`nix-cache-info`'s `Priority`, or `?priority=`); Nix's
    /// default is 50.
    pub priority: u64,
    /// `WantMassQuery`: whether the cache wants to be asked about many paths at once.
    pub want_mass_query: bool,
    failures: AtomicU32,
    /// Its server answered over HTTP/2, so requests need not wait for a connection of
    /// their own.
    multiplexed: AtomicBool,
    disabled: AtomicBool,
    why_disabled: Mutex<Option<String>>,
    /// Where an HTTP cache's answers are remembered between runs, and its row there.
    disk: Option<(Arc<NarInfoDiskCache>, i64)>,
}

impl CacheSource {
    /// Open the cache at `uri` (`file:///DIR` or `http(s)://…`, with `?priority=N` and
    /// `?want-mass-query=` overriding what the cache says of itself). Its `nix-cache-info`
    /// is read (a directory may lack one) and its store directory must be ours. An HTTP
    /// cache's answers are remembered in `disk`, if given, and what it said of itself
    /// recently is taken from there instead of asking again.
    pub fn open(
        uri: &str,
        store_dir: &StoreDir,
        trust: Trust,
        http: Option<&HttpClient>,
        disk: Option<&Arc<NarInfoDiskCache>>,
    ) -> Result<Self, CacheError> {
        let bad = |why: &str| CacheError::BadUrl {
            uri: uri.to_owned(),
            why: why.to_owned(),
        };
        let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
        let location = if let Some(dir) = base.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(bad("a file:// cache needs an absolute directory"));
            }
            Location::Dir(PathBuf::from(dir))
        } else if base.starts_with("http://") || base.starts_with("https://") {
            let client = http
                .ok_or_else(|| bad("HTTP caches are not available here"))?
                .clone();
            Location::Http {
                base: base.trim_end_matches('/').to_owned(),
                client,
            }
        } else {
            return Err(bad("only file://, http:// and https:// caches can be read"));
        };
        let mut cache = Self {
            name: base.to_owned(),
            location,
            trust,
            priority: 50,
            want_mass_query: false,
            failures: AtomicU32::new(0),
            multiplexed: AtomicBool::new(false),
            disabled: AtomicBool::new(false),
            why_disabled: Mutex::new(None),
            disk: None,
        };
        // Only HTTP caches are remembered, as in Nix: a directory is as quick to read.
        let (disk, key) = match (&cache.location, disk) {
            (Location::Http { base, .. }, Some(d)) => (Some(d), base.clone()),
            _ => (None, String::new()),
        };
        // A failing disk cache only costs queries: the cache itself is asked.
        let remembered = disk.and_then(|d| d.cache_info(&key).ok().flatten());
        if let (Some(d), Some(info)) = (disk, remembered) {
            if info.store_dir != store_dir.as_str() {
                return Err(CacheError::WrongStore {
                    cache: cache.name.clone(),
                    theirs: info.store_dir,
                    ours: store_dir.as_str().to_owned(),
                });
            }
            cache.priority = info.priority;
            cache.want_mass_query = info.want_mass_query;
            cache.disk = Some((d.clone(), info.id));
        } else {
            cache.read_cache_info(store_dir)?;
            if let Some(d) = disk {
                if let Ok(id) = d.remember_cache(
                    &key,
                    store_dir.as_str(),
                    cache.want_mass_query,
                    cache.priority,
                ) {
                    cache.disk = Some((d.clone(), id));
                }
            }
        }
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "priority" => {
                    cache.priority = v
                        .parse()
                        .map_err(|_| bad(&format!("priority '{v}' is not a number")))?
                }
                "want-mass-query" => cache.want_mass_query = v == "true" || v == "1",
                // Settings of writers and of other Nix stores: nothing to do when reading.
                _ => {}
            }
        }
        Ok(cache)
    }

    /// Read the cache's `nix-cache-info` (required over HTTP): its store directory must
    /// be ours, and it sets the priority and mass-query wish.
    fn read_cache_info(&mut self, store_dir: &StoreDir) -> Result<(), CacheError> {
        match self.get_tries("nix-cache-info", 1)? {
            Some(mut r) => {
                let mut text = String::new();
                r.read_to_string(&mut text)
                    .map_err(|source| CacheError::Io {
                        what: "read",
                        path: PathBuf::from(format!("{}/nix-cache-info", self.name)),
                        source,
                    })?;
                let info = CacheInfo::parse(&text).map_err(|source| CacheError::BadCacheInfo {
                    cache: self.name.clone(),
                    source,
                })?;
                if let Some(theirs) = info.store_dir {
                    if theirs != store_dir.as_str() {
                        return Err(CacheError::WrongStore {
                            cache: self.name.clone(),
                            theirs,
                            ours: store_dir.as_str().to_owned(),
                        });
                    }
                }
                self.priority = info.priority.unwrap_or(self.priority);
                self.want_mass_query = info.want_mass_query.unwrap_or(false);
            }
            None if matches!(self.location, Location::Http { .. }) => {
                return Err(CacheError::NotACache {
                    cache: self.name.clone(),
                });
            }
            None => {}
        }
        Ok(())
    }

    /// The file at `rel` under the cache, streaming; `None` when there is none.
    fn get(&self, rel: &str) -> Result<Option<Box<dyn BufRead + Send>>, CacheError> {
        self.get_tries(rel, u32::MAX)
    }

    /// [`Self::get`], trying an HTTP request at most `tries` times (and at most as often
    /// as the client's settings say).
    fn get_tries(
        &self,
        rel: &str,
        tries: u32,
    ) -> Result<Option<Box<dyn BufRead + Send>>, CacheError> {
        match &self.location {
            Location::Dir(dir) => {
                let file = dir.join(rel);
                match fs::File::open(&file) {
                    Ok(f) => Ok(Some(Box::new(crate::chunks::SpareBufReader::new(
                        f,
                        1 << 20,
                    )))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(CacheError::Io {
                        what: "read",
                        path: file,
                        source,
                    }),
                }
            }
            Location::Http { base, client } => Ok(client
                .get_tries(
                    &format!("{base}/{rel}"),
                    tries.min(client.settings().attempts),
                )?
                .map(|b| {
                    if b.multiplexed {
                        self.multiplexed.store(true, Ordering::Relaxed);
                    }
                    Box::new(crate::chunks::SpareBufReader::new(b.reader, 1 << 20)) as _
                })),
        }
    }

    /// Whether many requests may be in flight to the cache without a connection each: its
    /// server answered over HTTP/2.
    pub fn multiplexed(&self) -> bool {
        self.multiplexed.load(Ordering::Relaxed)
    }

    /// Where `rel` is, for messages.
    fn locate(&self, rel: &str) -> PathBuf {
        match &self.location {
            Location::Dir(dir) => dir.join(rel),
            Location::Http { base, .. } => PathBuf::from(format!("{base}/{rel}")),
        }
    }

    /// Whether the cache may still be asked; a cache that failed too often is not.
    pub fn enabled(&self) -> bool {
        !self.disabled.load(Ordering::Relaxed)
    }

    /// Why the cache was disabled, if it was.
    pub fn why_disabled(&self) -> Option<String> {
        self.why_disabled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Count a failure to reach the cache; the one that disables it says so (`true`).
    pub(super) fn failed(&self, e: &CacheError) -> bool {
        if !matches!(
            e,
            CacheError::Http { .. } | CacheError::HttpStatus { .. } | CacheError::Io { .. }
        ) {
            return false;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= MAX_FAILURES && !self.disabled.swap(true, Ordering::Relaxed) {
            *self.why_disabled.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("{n} failures, the last: {}", chain(e)));
            return true;
        }
        false
    }

    /// The narinfo of `p`, if the cache has it, parsed strictly and describing `p`.
    pub fn narinfo(
        &self,
        store_dir: &StoreDir,
        p: &StorePath,
    ) -> Result<Option<NarInfo>, CacheError> {
        if let Some((d, id)) = &self.disk {
            match d.lookup(*id, store_dir, p) {
                Ok(Remembered::Missing) => return Ok(None),
                Ok(Remembered::Present(info)) => return Ok(Some(*info)),
                Ok(Remembered::Unknown) | Err(_) => {}
            }
        }
        let rel = format!("{}.narinfo", p.hash_part());
        let Some(mut r) = self.get(&rel)? else {
            if let Some((d, id)) = &self.disk {
                let _ = d.remember_missing(*id, p);
            }
            return Ok(None);
        };
        let mut text = String::new();
        r.read_to_string(&mut text)
            .map_err(|source| CacheError::Io {
                what: "read",
                path: self.locate(&rel),
                source,
            })?;
        let info = NarInfo::parse(store_dir, &text).map_err(|source| CacheError::BadNarInfo {
            cache: self.name.clone(),
            file: self.locate(&rel),
            source,
        })?;
        if info.store_path != *p {
            return Err(CacheError::Lying {
                cache: self.name.clone(),
                path: store_dir.display(p),
                why: format!(
                    "its narinfo describes '{}'",
                    store_dir.display(&info.store_path)
                ),
            });
        }
        if let Some((d, id)) = &self.disk {
            let _ = d.remember(*id, &info);
        }
        Ok(Some(info))
    }

    /// Forget what the disk cache remembers of `p` from this cache (its NAR was not as
    /// described, or it cannot be trusted): the next run asks again.
    pub fn forget(&self, p: &StorePath) {
        if let Some((d, id)) = &self.disk {
            let _ = d.forget(*id, p);
        }
    }

    /// Whether `info` may enter the store: a signature by a trusted key, or a content
    /// address that yields its path (or no signatures required).
    pub fn trusted(&self, store_dir: &StoreDir, info: &NarInfo) -> bool {
        if !self.trust.require_sigs || info.valid_signatures(store_dir, &self.trust.keys) > 0 {
            return true;
        }
        let Some(ca) = &info.ca else { return false };
        let self_ref = info.references.contains(&info.store_path);
        let others = info.references.iter().filter(|r| **r != info.store_path);
        store_dir
            .make_ca_path(info.store_path.name(), ca, others, self_ref)
            .is_ok_and(|p| p == info.store_path)
    }

    /// The NAR of `info`, decompressed as it is read.
    pub fn nar(
        &self,
        store_dir: &StoreDir,
        info: &NarInfo,
    ) -> Result<Box<dyn Read + Send>, CacheError> {
        let lying = |why: String| CacheError::Lying {
            cache: self.name.clone(),
            path: store_dir.display(&info.store_path),
            why,
        };
        let compression = Compression::parse(&info.compression).ok_or_else(|| {
            lying(format!(
                "it is compressed with unknown '{}'",
                info.compression
            ))
        })?;
        if info.url.starts_with('/')
            || info.url.contains("://")
            || info.url.split('/').any(|c| c == ".." || c.is_empty())
        {
            return Err(lying(format!("its URL '{}' leaves the cache", info.url)));
        }
        let raw = self
            .get(&info.url)?
            .ok_or_else(|| lying(format!("its NAR '{}' is missing", info.url)))?;
        compression.decoder(raw).map_err(|source| CacheError::Io {
            what: "decompress",
            path: self.locate(&info.url),
            source,
        })
    }
}

/// An error with its causes, on one line.
pub(super) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
