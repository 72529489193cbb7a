//! The substituters of a run, in priority order: which paths they have (asked many at a
//! time, concurrently), and fetching a path into the store from the first that has it,
//! then from the others should that fail.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferrix_format::{NarInfo, StoreDir, StorePath};

use super::{CacheError, CacheSource};
use crate::local::Pending;
use crate::LocalStore;

/// Told how many bytes of a NAR arrived (decompressed), as they arrive.
pub type Progress<'a> = &'a (dyn Fn(u64) + Sync);

/// The caches substitution may use.
#[derive(Debug)]
pub struct Substituters {
    caches: Vec<CacheSource>,
    /// Requests in flight at once (`http-connections`).
    threads: usize,
}

/// A path a cache has: which cache (an index into [`Substituters::caches`]) and its narinfo.
#[derive(Debug, Clone)]
pub struct Found {
    pub cache: usize,
    pub info: NarInfo,
}

/// What asking the caches found.
#[derive(Debug, Default)]
pub struct Queried {
    pub found: BTreeMap<StorePath, Arc<Found>>,
    /// Paths a cache offered but that cannot be taken from it (untrusted, malformed, a
    /// failure to reach it): for warnings, and as the reason a path is missing.
    pub problems: Vec<(StorePath, CacheError)>,
}

/// Narinfo requests in flight at once to caches that multiplex them (HTTP/2): about what
/// servers allow on one connection (often 100 or 128 streams).
const MULTIPLEXED_QUERIES: usize = 64;

/// One [`Substituters::query`] under way, shared by its threads.
struct Asking<'a> {
    subs: &'a Substituters,
    store_dir: &'a StoreDir,
    paths: &'a [StorePath],
    /// The next path to ask about.
    next: AtomicUsize,
    /// Threads started.
    workers: AtomicUsize,
    out: Mutex<Queried>,
}

impl<'a> Asking<'a> {
    /// Ask about paths until none is left, starting more threads as soon as the caches
    /// are seen to multiplex (each thread waits for one answer at a time).
    fn work<'s>(&'s self, s: &'s std::thread::Scope<'s, 'a>) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(p) = self.paths.get(i) else { return };
            let (found, problems) = self.subs.query_one(self.store_dir, p, 0);
            {
                let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(f) = found {
                    out.found.insert(p.clone(), Arc::new(f));
                }
                out.problems
                    .extend(problems.into_iter().map(|e| (p.clone(), e)));
            }
            let left = self.paths.len().saturating_sub(i + 1);
            let want = self.subs.query_threads().min(left);
            let started = self.workers.load(Ordering::Relaxed);
            if started < want
                && self
                    .workers
                    .compare_exchange(started, want, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                for _ in started..want {
                    s.spawn(|| self.work(s));
                }
            }
        }
    }
}

impl Substituters {
    /// `caches` are asked lowest priority first (Nix's order), keeping the given order
    /// among equals.
    pub fn new(mut caches: Vec<CacheSource>, threads: usize) -> Self {
        caches.sort_by_key(|c| c.priority);
        Self {
            caches,
            threads: threads.max(1),
        }
    }

    pub fn caches(&self) -> &[CacheSource] {
        &self.caches
    }

    /// Requests at once (`http-connections`).
    pub fn connections(&self) -> usize {
        self.threads
    }

    pub fn is_empty(&self) -> bool {
        self.caches.is_empty()
    }

    /// Which of `paths` some cache has with a signature it may be trusted by: for each,
    /// the first such cache. Many paths are asked at once: `http-connections` at a time,
    /// and more once every cache still asked has answered over HTTP/2, where requests
    /// share a connection (as Nix's curl multiplexes them).
    pub fn query(&self, store_dir: &StoreDir, paths: &[StorePath]) -> Queried {
        let asking = Asking {
            subs: self,
            store_dir,
            paths,
            next: AtomicUsize::new(0),
            workers: AtomicUsize::new(0),
            out: Mutex::new(Queried::default()),
        };
        std::thread::scope(|s| {
            let first = self.threads.min(paths.len());
            asking.workers.store(first, Ordering::Relaxed);
            for _ in 0..first {
                s.spawn(|| asking.work(s));
            }
        });
        asking.out.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Threads to ask with: `http-connections`, or more when every cache still asked
    /// multiplexes its requests.
    fn query_threads(&self) -> usize {
        let mut enabled = self.caches.iter().filter(|c| c.enabled()).peekable();
        if enabled.peek().is_some() && enabled.all(|c| c.multiplexed()) {
            self.threads.max(MULTIPLEXED_QUERIES)
        } else {
            self.threads
        }
    }

    /// Ask the caches from `from` on about `p`, in order, until one has it.
    fn query_one(
        &self,
        store_dir: &StoreDir,
        p: &StorePath,
        from: usize,
    ) -> (Option<Found>, Vec<CacheError>) {
        let mut problems = Vec::new();
        for (i, c) in self.caches.iter().enumerate().skip(from) {
            if !c.enabled() {
                continue;
            }
            match c.narinfo(store_dir, p) {
                Ok(None) => {}
                Ok(Some(info)) if c.trusted(store_dir, &info) => {
                    return (Some(Found { cache: i, info }), problems)
                }
                Ok(Some(_)) => {
                    // Not remembered: once signed (or its key trusted) it is taken.
                    c.forget(p);
                    problems.push(CacheError::Untrusted {
                        cache: c.name.clone(),
                        path: store_dir.display(p),
                    })
                }
                Err(e) => {
                    if c.failed(&e) {
                        problems.push(CacheError::Disabled {
                            cache: c.name.clone(),
                            why: c.why_disabled().unwrap_or_default(),
                        });
                    }
                    problems.push(e);
                }
            }
        }
        (None, problems)
    }

    /// Download and check `found`'s NAR, staging it: from its cache, then from any later
    /// cache that has the path should that fail. The cache it came from; `None` for the
    /// staged path when it became valid meanwhile. Every failure is in the error list,
    /// the first cache's first.
    fn stage(
        &self,
        store: &LocalStore,
        found: &Found,
        cancel: &AtomicBool,
        progress: Progress<'_>,
    ) -> Result<(Option<Pending>, usize), Vec<CacheError>> {
        let mut errors = Vec::new();
        let mut cur = Some(found.clone());
        while let Some(f) = cur {
            let cache = &self.caches[f.cache];
            if cache.enabled() {
                match stage_from(store, cache, &f.info, cancel, progress) {
                    Ok(p) => return Ok((p, f.cache)),
                    Err(e) => {
                        // Its narinfo is not believed in the next run either.
                        cache.forget(&f.info.store_path);
                        if cache.failed(&e) {
                            errors.push(CacheError::Disabled {
                                cache: cache.name.clone(),
                                why: cache.why_disabled().unwrap_or_default(),
                            });
                        }
                        errors.push(e);
                    }
                }
            }
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            let (next, problems) =
                self.query_one(store.store_dir(), &f.info.store_path, f.cache + 1);
            errors.extend(problems);
            cur = next;
        }
        Err(errors)
    }

    /// [`Self::stage`], then commit: the path is valid when this returns `Ok`.
    pub fn fetch(
        &self,
        store: &LocalStore,
        found: &Found,
        cancel: &AtomicBool,
        progress: Progress<'_>,
    ) -> Result<usize, Vec<CacheError>> {
        let (pending, cache) = self.stage(store, found, cancel, progress)?;
        if let Some(p) = pending {
            store.commit_batch(vec![p]).map_err(|source| {
                vec![CacheError::Substitute {
                    cache: self.caches[cache].name.clone(),
                    path: store.print(&found.info.store_path),
                    source: Box::new(source),
                }]
            })?;
        }
        Ok(cache)
    }
}

/// Stream one NAR from `cache`, decompressed on a thread of its own, into the store's
/// staging and checks (which hash and restore on this one).
fn stage_from(
    store: &LocalStore,
    cache: &CacheSource,
    info: &NarInfo,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<Option<Pending>, CacheError> {
    let nar = cache.nar(store.store_dir(), info)?;
    let local = super::to_path_info(info);
    let substitute_err = |source| CacheError::Substitute {
        cache: cache.name.clone(),
        path: store.print(&info.store_path),
        source: Box::new(source),
    };
    let stop = AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(|s| {
        let (tx, rx) = crate::chunks::channel(CHUNK, CHUNKS_AHEAD);
        s.spawn(move || decompress(nar, tx, cancel, stop, progress));
        let res = store.stage_nar(&local, rx);
        // Whatever happened, the decompressing thread stops at its next chunk.
        stop.store(true, Ordering::Relaxed);
        res.map_err(substitute_err)
    })
}

/// Chunks the decompressor may run ahead of the restore.
const CHUNKS_AHEAD: usize = 8;
const CHUNK: usize = 256 << 10;

fn decompress(
    mut nar: Box<dyn Read + Send + '_>,
    mut tx: crate::chunks::ChunkSender,
    cancel: &AtomicBool,
    stop: &AtomicBool,
    progress: Progress<'_>,
) {
    loop {
        if cancel.load(Ordering::Relaxed) {
            tx.fail(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the substitution was cancelled",
            ));
            return;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut buf = tx.buffer_of(CHUNK);
        let mut n = 0;
        while n < buf.len() {
            match nar.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tx.fail(e);
                    return;
                }
            }
        }
        let end = n < buf.len();
        buf.truncate(n);
        progress(n as u64);
        if tx.send(buf).is_err() || end {
            return;
        }
    }
}
