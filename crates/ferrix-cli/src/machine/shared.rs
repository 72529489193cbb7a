//! The daemon's one Engine, shared by every session: progress routed to the sessions that
//! wait for each build, and the caches each session may fetch from.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Result;
use ferrix_build::substitute::{CacheSettings, CacheSubstituter, Substituter};
use ferrix_build::{BuildFailure, FailureKind, Reporter};
use ferrix_format::StorePath;
use ferrix_store::LocalStore;

use super::{Listener, Progress};
use crate::settings::Settings;

/// Hands each build's progress to the sessions waiting for it (a daemon's Engine, shared by
/// every session): a session hears of the derivations in its goals, and of warnings.
#[derive(Default)]
pub(super) struct Router {
    /// Per derivation (or fetched path), the sessions waiting for it.
    waiting: std::sync::Mutex<std::collections::HashMap<StorePath, Vec<(u64, Listener)>>>,
    next: std::sync::atomic::AtomicU64,
}

/// A session's place in a [`Router`], until dropped.
pub(super) struct Subscription<'a> {
    router: &'a Router,
    id: u64,
    keys: Vec<StorePath>,
}

impl Router {
    pub(super) fn subscribe(&self, keys: Vec<StorePath>, tx: &Listener) -> Subscription<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        for k in &keys {
            w.entry(k.clone()).or_default().push((id, tx.clone()));
        }
        Subscription {
            router: self,
            id,
            keys,
        }
    }

    fn send(&self, key: &StorePath, p: Progress) {
        let w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        for (_, tx) in w.get(key).into_iter().flatten() {
            let _ = tx.send(p.clone());
        }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut w = self
            .router
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(v) = w.get_mut(k) {
                v.retain(|(id, _)| *id != self.id);
                if v.is_empty() {
                    w.remove(k);
                }
            }
        }
    }
}

impl Reporter for Router {
    fn fetching(&self, path: &StorePath, from: &str) {
        self.send(path, Progress::Fetching(path.clone(), from.to_owned()));
    }
    fn started(&self, drv: &StorePath) {
        self.send(drv, Progress::Started(drv.clone(), None));
    }
    fn started_on(&self, drv: &StorePath, machine: &str) {
        self.send(
            drv,
            Progress::Started(drv.clone(), Some(machine.to_owned())),
        );
    }
    fn log_line(&self, drv: &StorePath, line: &str) {
        self.send(drv, Progress::Line(drv.clone(), line.to_owned()));
    }
    fn finished(&self, drv: &StorePath, _: Result<ferrix_build::Built, &BuildFailure>) {
        self.send(drv, Progress::Ended(drv.clone()));
    }
    fn warn(&self, msg: &str) {
        // Every session waiting for anything: a warning is about the machines they share.
        let w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let mut told = BTreeSet::new();
        for (id, tx) in w.values().flatten() {
            if told.insert(*id) {
                let _ = tx.send(Progress::Warning(msg.to_owned()));
            }
        }
    }
}

/// The daemon's one Engine: every session's builds go to it, so two clients wanting the
/// same output share one build, and `max-jobs` holds for the machine.
pub struct SharedEngine {
    pub(super) host: crate::build::EngineHost,
    pub(super) store: Arc<LocalStore>,
    pub(super) router: Arc<Router>,
    /// The caches its fetches come from; `None` when substitution is off.
    caches: Option<Arc<Caches>>,
    /// `always-allow-substitutes`.
    always_allow: bool,
}

/// The caches a daemon's Engine fetches from: its own (`substituters`), and those sessions
/// chose (a trusted client's, or ones in `trusted-substituters`). A fetch goes to the
/// substituter whose query found the path: the one its session planned with.
#[derive(Debug)]
pub struct Caches {
    store: Arc<LocalStore>,
    settings: CacheSettings,
    own: Option<Arc<CacheSubstituter>>,
    chosen: std::sync::Mutex<BTreeMap<Vec<String>, Arc<CacheSubstituter>>>,
}

impl Caches {
    /// The substituter reading `urls` (the daemon's own for `None`); none for no caches.
    fn for_urls(&self, urls: Option<&[String]>) -> Option<Arc<CacheSubstituter>> {
        match urls {
            None => self.own.clone(),
            Some(u) if u == self.settings.urls.as_slice() => self.own.clone(),
            Some([]) => None,
            Some(u) => {
                let mut chosen = self.chosen.lock().unwrap_or_else(|p| p.into_inner());
                let c = chosen.entry(u.to_vec()).or_insert_with(|| {
                    let mut c = self.settings.clone();
                    c.urls = u.to_vec();
                    crate::build::cache_substituter(&self.store, c)
                });
                Some(c.clone())
            }
        }
    }
}

impl Substituter for Caches {
    fn query(
        &self,
        paths: &[StorePath],
    ) -> BTreeMap<StorePath, Arc<ferrix_build::substitute::Substitution>> {
        // The Engine's own planning (a fallback build's inputs) uses the daemon's caches.
        self.own
            .as_ref()
            .map(|o| o.query(paths))
            .unwrap_or_default()
    }

    fn fetch(
        self: Arc<Self>,
        s: Arc<ferrix_build::substitute::Substitution>,
        cancel: ferrix_build::executor::Cancel,
        reporter: Arc<dyn Reporter + Send + Sync>,
    ) -> ferrix_build::substitute::FetchFuture {
        let chosen = self
            .chosen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|c| c.knows(&s.path))
            .cloned();
        match chosen.or_else(|| self.own.clone()) {
            Some(c) => c.fetch(s, cancel, reporter),
            None => Box::pin(async move {
                Err(BuildFailure::new(
                    s.path.to_string(),
                    FailureKind::Substitute {
                        errors: Vec::new(),
                        fallback: false,
                    },
                ))
            }),
        }
    }

    fn capacity(&self) -> usize {
        self.settings.max_jobs.max(1)
    }
}

impl SharedEngine {
    pub fn start(settings: &Settings, store: &Arc<LocalStore>) -> Result<Self> {
        let (mut local, mut opts) = crate::build::local_settings(settings, store)?;
        // A daemon builds what it is asked to: at least one job at a time.
        local.max_jobs = local.max_jobs.max(1);
        // It lives long and busy: its roots end with each build, each session keeping the
        // results it asked for (see `Builds::run`).
        opts.roots_by_work = true;
        let router = Arc::new(Router::default());
        let caches = crate::build::cache_settings(settings)?.map(|c| {
            Arc::new(Caches {
                store: store.clone(),
                own: (!c.urls.is_empty())
                    .then(|| crate::build::cache_substituter(store, c.clone())),
                settings: c,
                chosen: Default::default(),
            })
        });
        let host = crate::build::EngineHost::start_with(
            settings,
            store,
            router.clone(),
            opts,
            local,
            crate::build::build_times(store),
            caches.clone().map(|c| c as Arc<dyn Substituter>),
        )?;
        Ok(Self {
            host,
            store: store.clone(),
            router,
            caches,
            always_allow: settings.substitution()?.always_allow,
        })
    }

    /// The caches a session fetches from: the daemon's own, or `urls` (already checked
    /// against what the session may choose); and `always-allow-substitutes`.
    pub fn substituter(&self, urls: Option<&[String]>) -> Option<(Arc<dyn Substituter>, bool)> {
        let c = self.caches.as_ref()?.for_urls(urls)?;
        Some((c as Arc<dyn Substituter>, self.always_allow))
    }
}
