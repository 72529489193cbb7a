//! Substitution as the Engine sees it: asking which paths the caches have (a whole frontier
//! at once) and fetching one path as a job, with its own limit beside the builds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use ferrix_format::StorePath;
use ferrix_store::binary_cache::{
    CacheError, CacheSource, DiskCacheTtl, Found, HttpClient, HttpSettings, NarInfoDiskCache,
    Substituters, Trust,
};
use ferrix_store::LocalStore;

use crate::error::{BuildFailure, FailureKind};
use crate::executor::{Cancel, Reporter};

/// A path some cache has, with what the plan needs of its narinfo.
#[derive(Debug, Clone)]
pub struct Substitution {
    pub path: StorePath,
    /// Its references, itself left out.
    pub references: BTreeSet<StorePath>,
    pub nar_size: u64,
    /// The compressed size, when the cache says.
    pub download_size: Option<u64>,
    /// The cache that has it (the first asked, by priority).
    pub from: String,
}

pub type FetchFuture = Pin<Box<dyn Future<Output = Result<String, BuildFailure>> + Send>>;

/// Where substitutes come from. `query` blocks (the planner calls it, off the Engine's
/// loop); `fetch` is a job the Engine runs, up to `capacity` at once.
pub trait Substituter: Send + Sync + std::fmt::Debug {
    /// Which of `paths` can be fetched (not checking their references).
    fn query(&self, paths: &[StorePath]) -> BTreeMap<StorePath, Arc<Substitution>>;

    /// Fetch `s` into the store (it is valid when this ends well), telling `reporter` of
    /// the bytes as they arrive: the cache it came from.
    fn fetch(
        self: Arc<Self>,
        s: Arc<Substitution>,
        cancel: Cancel,
        reporter: Arc<dyn Reporter + Send + Sync>,
    ) -> FetchFuture;

    /// Fetches at once (`max-substitution-jobs`).
    fn capacity(&self) -> usize;
}

/// What substitution from binary caches is configured with.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// `substituters`, in the order given (sorted by priority once opened).
    pub urls: Vec<String>,
    pub trust: Trust,
    pub http: HttpSettings,
    /// `max-substitution-jobs`.
    pub max_jobs: usize,
    /// `fallback`: said in the failure of a fetch, so the user knows what would help.
    pub fallback: bool,
    /// The narinfo disk cache's file, where HTTP caches' answers are remembered.
    pub disk_cache: Option<std::path::PathBuf>,
    pub ttl: DiskCacheTtl,
}

/// Substitutes from binary caches, opened the first time they are needed (a run with
/// nothing to fetch never reaches them).
#[derive(Debug)]
pub struct CacheSubstituter {
    store: Arc<LocalStore>,
    settings: CacheSettings,
    reporter: Arc<dyn Reporter + Send + Sync>,
    caches: OnceLock<Substituters>,
    found: Mutex<HashMap<StorePath, Arc<Found>>>,
}

impl CacheSubstituter {
    pub fn new(
        store: Arc<LocalStore>,
        settings: CacheSettings,
        reporter: Arc<dyn Reporter + Send + Sync>,
    ) -> Self {
        Self {
            store,
            settings,
            reporter,
            caches: OnceLock::new(),
            found: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a query of this substituter found `p` (so that its fetch is this one's).
    pub fn knows(&self, p: &StorePath) -> bool {
        self.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(p)
    }

    /// The caches, opened at the first call (on threads of their own: the HTTP client
    /// must not start on an async runtime's threads). A cache that cannot be opened is
    /// left out with a warning, as Nix does.
    fn caches(&self) -> &Substituters {
        self.caches.get_or_init(|| {
            let s = &self.settings;
            let store_dir = self.store.store_dir();
            let urls: Vec<&str> = s.urls.iter().map(String::as_str).collect();
            let http = urls
                .iter()
                .any(|u| u.starts_with("http"))
                .then(|| HttpClient::for_urls(&s.http, &urls))
                .transpose();
            let http = match http {
                Ok(h) => h,
                Err(e) => {
                    self.reporter.warn(&crate::render_error(&e));
                    None
                }
            };
            let disk = http.as_ref().and(s.disk_cache.as_ref()).and_then(|f| {
                NarInfoDiskCache::open(f, s.ttl)
                    .map(Arc::new)
                    .map_err(|e| self.reporter.warn(&crate::render_error(&e)))
                    .ok()
            });
            let opened: Vec<Result<CacheSource, CacheError>> = std::thread::scope(|sc| {
                let handles: Vec<_> = s
                    .urls
                    .iter()
                    .map(|u| {
                        let (http, disk) = (http.as_ref(), disk.as_ref());
                        sc.spawn(move || {
                            CacheSource::open(u, store_dir, s.trust.clone(), http, disk)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            });
            let mut caches = Vec::new();
            for (url, c) in s.urls.iter().zip(opened) {
                match c {
                    Ok(c) => caches.push(c),
                    Err(e) => self.reporter.warn(&format!(
                        "ignoring substituter '{url}': {}",
                        crate::render_error(&e)
                    )),
                }
            }
            Substituters::new(caches, s.http.connections)
        })
    }
}

impl Substituter for CacheSubstituter {
    fn query(&self, paths: &[StorePath]) -> BTreeMap<StorePath, Arc<Substitution>> {
        if paths.is_empty() || self.settings.urls.is_empty() {
            return BTreeMap::new();
        }
        let caches = self.caches();
        if caches.is_empty() {
            return BTreeMap::new();
        }
        // Off any async runtime's threads, whoever calls.
        let q = std::thread::scope(|s| {
            s.spawn(|| caches.query(self.store.store_dir(), paths))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
        for (_, e) in &q.problems {
            self.reporter.warn(&crate::render_error(e));
        }
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        q.found
            .into_iter()
            .map(|(p, f)| {
                let s = Substitution {
                    path: p.clone(),
                    references: f
                        .info
                        .references
                        .iter()
                        .filter(|r| **r != p)
                        .cloned()
                        .collect(),
                    nar_size: f.info.nar_size,
                    download_size: f.info.file_size,
                    from: caches.caches()[f.cache].name.clone(),
                };
                found.insert(p.clone(), f);
                (p, Arc::new(s))
            })
            .collect()
    }

    fn fetch(
        self: Arc<Self>,
        s: Arc<Substitution>,
        mut cancel: Cancel,
        reporter: Arc<dyn Reporter + Send + Sync>,
    ) -> FetchFuture {
        Box::pin(async move {
            let me = self.clone();
            let flag = Arc::new(AtomicBool::new(false));
            let f2 = flag.clone();
            let path = s.path.clone();
            let mut task = tokio::task::spawn_blocking(move || {
                let found = me
                    .found
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&path)
                    .cloned();
                let Some(found) = found else {
                    return Err(vec![]);
                };
                let caches = me.caches();
                let progress = |n: u64| reporter.transferred(&path, n);
                caches
                    .fetch(&me.store, &found, &f2, &progress)
                    .map(|i| caches.caches()[i].name.clone())
            });
            let res = loop {
                tokio::select! {
                    r = &mut task => break r,
                    c = cancel.changed() => {
                        if c.is_err() || *cancel.borrow() {
                            flag.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        if c.is_err() {
                            break (&mut task).await;
                        }
                    }
                }
            };
            let printed = self.store.print(&s.path);
            match res {
                Ok(Ok(from)) => Ok(from),
                _ if flag.load(std::sync::atomic::Ordering::Relaxed) => {
                    Err(BuildFailure::new(printed, FailureKind::Interrupted))
                }
                Ok(Err(errors)) => Err(BuildFailure::new(
                    printed,
                    FailureKind::Substitute {
                        errors,
                        fallback: self.settings.fallback,
                    },
                )),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        })
    }

    fn capacity(&self) -> usize {
        self.settings.max_jobs.max(1)
    }
}
