//! Reading paths from a binary cache directory into the store, as substitution does: the
//! closure from the narinfos, each NAR decompressed as it streams into the store's own
//! restore and NAR-hash check, trusted only when signed by a trusted key (or, being
//! content-addressed, when its address proves it).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use ferrix_format::signature::PublicKey;
use ferrix_format::{NarInfo, StorePath};

use super::{CacheError, Compression};
use crate::local::Pending;
use crate::path_info::ValidPathInfo;
use crate::LocalStore;

/// A binary cache in a directory, read from.
#[derive(Debug)]
pub struct CacheSource {
    pub dir: PathBuf,
    /// How the cache is named in messages (its URL).
    pub name: String,
    /// `trusted-public-keys`.
    pub trusted_keys: Vec<PublicKey>,
    /// `require-sigs`: an input-addressed path must carry a trusted signature.
    pub require_sigs: bool,
}

impl CacheSource {
    /// The narinfo of `p`, if the cache has it, parsed strictly.
    pub fn narinfo(
        &self,
        store: &LocalStore,
        p: &StorePath,
    ) -> Result<Option<NarInfo>, CacheError> {
        let file = self.dir.join(format!("{}.narinfo", p.hash_part()));
        let text = match fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CacheError::Io {
                    what: "read",
                    path: file,
                    source,
                })
            }
        };
        let info =
            NarInfo::parse(store.store_dir(), &text).map_err(|source| CacheError::BadNarInfo {
                cache: self.name.clone(),
                file: file.clone(),
                source,
            })?;
        if info.store_path != *p {
            return Err(CacheError::Lying {
                cache: self.name.clone(),
                path: store.print(p),
                why: format!("its narinfo describes '{}'", store.print(&info.store_path)),
            });
        }
        Ok(Some(info))
    }

    /// Whether `info` may enter the store: a signature by a trusted key, or a content
    /// address that yields its path (or no signatures required).
    fn trusted(&self, store: &LocalStore, info: &NarInfo) -> bool {
        if !self.require_sigs || info.valid_signatures(store.store_dir(), &self.trusted_keys) > 0 {
            return true;
        }
        let Some(ca) = &info.ca else { return false };
        let self_ref = info.references.contains(&info.store_path);
        let others = info.references.iter().filter(|r| **r != info.store_path);
        store
            .store_dir()
            .make_ca_path(info.store_path.name(), ca, others, self_ref)
            .is_ok_and(|p| p == info.store_path)
    }
}

/// Copy the closure of `paths` from `cache` into `store`: what is missing here, a path
/// after its references. The paths added.
pub fn copy_from_cache(
    store: &LocalStore,
    cache: &CacheSource,
    paths: &BTreeSet<StorePath>,
) -> Result<Vec<StorePath>, CacheError> {
    // The closure, from the narinfos.
    let mut infos: BTreeMap<StorePath, NarInfo> = BTreeMap::new();
    let mut todo: Vec<StorePath> = paths.iter().cloned().collect();
    while let Some(p) = todo.pop() {
        if infos.contains_key(&p) || store.is_valid_path(&p)? {
            continue;
        }
        let info = cache
            .narinfo(store, &p)?
            .ok_or_else(|| CacheError::NotInCache {
                cache: cache.name.clone(),
                path: store.print(&p),
            })?;
        if !cache.trusted(store, &info) {
            return Err(CacheError::Untrusted {
                cache: cache.name.clone(),
                path: store.print(&p),
            });
        }
        todo.extend(info.references.iter().filter(|r| **r != p).cloned());
        infos.insert(p, info);
    }
    // References first, in batches: each batch's NARs are read, decompressed and checked
    // on several threads, then placed, synced and registered in one commit.
    let keys: BTreeSet<StorePath> = infos.keys().cloned().collect();
    let sorted = crate::closure::topo_sort(store.store_dir(), &keys, |p| {
        Ok(infos[p].references.iter().cloned().collect())
    })
    .map_err(|source| CacheError::Lying {
        cache: cache.name.clone(),
        path: store.print(
            keys.iter()
                .next()
                .unwrap_or_else(|| unreachable!("a cycle has paths")),
        ),
        why: format!("its references form a cycle ({source})"),
    })?;
    let order: Vec<NarInfo> = sorted
        .iter()
        .map(|p| {
            infos
                .remove(p)
                .unwrap_or_else(|| unreachable!("sorted from its keys"))
        })
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for chunk in order.chunks(BATCH) {
        let staged = stage_all(store, cache, chunk, threads)?;
        store
            .commit_batch(staged)
            .map_err(|source| CacheError::Substitute {
                cache: cache.name.clone(),
                path: store.print(&chunk[0].store_path),
                source: Box::new(source),
            })?;
    }
    Ok(order.into_iter().map(|i| i.store_path).collect())
}

/// Paths per commit.
const BATCH: usize = 64;

/// Stage the NARs of `infos` on `threads` threads; in `infos`' order.
fn stage_all(
    store: &LocalStore,
    cache: &CacheSource,
    infos: &[NarInfo],
    threads: usize,
) -> Result<Vec<Pending>, CacheError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Mutex<Vec<Option<Pending>>> = Mutex::new((0..infos.len()).map(|_| None).collect());
    let first_error: Mutex<Option<CacheError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(infos.len()).max(1) {
            s.spawn(|| loop {
                if failed.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(info) = infos.get(i) else { return };
                match stage_one(store, cache, info) {
                    Ok(p) => slots.lock().unwrap_or_else(|e| e.into_inner())[i] = p,
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(slots
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect())
}

/// Stream one NAR from the cache, decompressed, into the store's staging and checks.
fn stage_one(
    store: &LocalStore,
    cache: &CacheSource,
    info: &NarInfo,
) -> Result<Option<Pending>, CacheError> {
    let compression = Compression::parse(&info.compression).ok_or_else(|| CacheError::Lying {
        cache: cache.name.clone(),
        path: store.print(&info.store_path),
        why: format!("it is compressed with unknown '{}'", info.compression),
    })?;
    let file = cache.dir.join(&info.url);
    if !file.starts_with(&cache.dir) || info.url.split('/').any(|c| c == "..") {
        return Err(CacheError::Lying {
            cache: cache.name.clone(),
            path: store.print(&info.store_path),
            why: format!("its URL '{}' leaves the cache", info.url),
        });
    }
    let f = fs::File::open(&file).map_err(|source| CacheError::Io {
        what: "read",
        path: file.clone(),
        source,
    })?;
    let reader: Box<dyn Read> = compression
        .decoder(BufReader::with_capacity(1 << 20, f))
        .map_err(|source| CacheError::Io {
            what: "decompress",
            path: file.clone(),
            source,
        })?;
    let mut local = ValidPathInfo::new(info.store_path.clone(), info.nar_hash, info.nar_size);
    local.references = info.references.clone();
    local.deriver = info.deriver.clone();
    local.ca = info.ca;
    local.sigs = info.sigs.iter().map(|s| s.to_string()).collect();
    // Buffered: the archive's small fields are read one at a time.
    store
        .stage_nar(&local, std::io::BufReader::with_capacity(1 << 18, reader))
        .map_err(|source| CacheError::Substitute {
            cache: cache.name.clone(),
            path: store.print(&info.store_path),
            source: Box::new(source),
        })
}
