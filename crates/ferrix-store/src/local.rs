//! The local store: files under the store directory, metadata in SQLite, all or nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ferrix_format::derivation::DrvHash;
use ferrix_format::hash::{HashSink, Hasher};
use ferrix_format::nar;
use ferrix_format::{
    ContentAddress, Derivation, FileIngestionMethod, Hash, HashAlgo, StoreDir, StorePath,
};

use crate::building::Building;
use crate::canon::canonicalise;
use crate::config::LocalStoreConfig;
use crate::db::Db;
use crate::error::{io_err, Result, StoreError};
use crate::fsutil::{delete_path, pid_alive, sync_fs};
use crate::lock::{FileLock, GateReader, PathLock, SoleGate};
use crate::path_info::ValidPathInfo;
use crate::streams::{read_regular, write_file_nar, HashingReader, Interruptible, MemReader};
use crate::temproots::{ProcessRoots, RootsHold, SessionRoots};

std::thread_local! {
    /// The session this thread serves, within [`LocalStore::in_session`].
    static SESSION_ROOTS: std::cell::RefCell<Option<SessionRoots>> =
        const { std::cell::RefCell::new(None) };
}

mod add;
mod as_store;
mod commit;
mod outputs;
mod query;

pub use outputs::{OutputsIntent, StoreLock};

/// The name part of staging entries: large new contents are assembled in the store
/// directory (so that the final rename is atomic) under `<random hash>-ferrix-staging`.
/// A store-path-shaped name whose hash part is a temp root is one that Nix's collector, like
/// ours, leaves alone while its process lives; any other name in the store it deletes.
const STAGING_NAME: &str = "ferrix-staging";

/// NARs up to this size are kept in memory until commit and written straight to their
/// place; larger ones are restored into a staging entry and renamed. Single files below it
/// are also serialised in memory rather than through a pipe and a thread.
pub(crate) const MEM_NAR: usize = 1 << 20;

/// A batch is committed once its in-memory NARs reach this many bytes.
const MEM_BATCH: usize = 64 << 20;

/// How many idle query connections a store keeps (more are opened while many queries run
/// at once, and closed after).
const IDLE_READERS: usize = 8;

/// A query connection, back among the idle ones when dropped.
pub(crate) struct Reader<'a> {
    store: &'a LocalStore,
    db: Option<Db>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let mut idle = self.store.readers.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_READERS {
            idle.extend(self.db.take());
        }
    }
}

/// An open local store. One per process is enough; it is `Sync`.
#[derive(Debug)]
pub struct LocalStore {
    config: LocalStoreConfig,
    /// The one connection that writes.
    db: Mutex<Db>,
    /// Idle connections for queries, so that they run beside a commit and each other.
    readers: Mutex<Vec<Db>>,
    /// The roots taken outside any session.
    temp_roots: ProcessRoots,
    tmp_counter: AtomicU64,
    /// New files inherit a default ACL, so placed trees need the full canonicalisation.
    inherits_acl: bool,
    /// Held shared while the store is open, as Nix does; exclusive means no other process
    /// has the store open.
    big_lock: FileLock,
    /// Keeps this process's path-lock holders and lock-free writers apart.
    gate: Arc<SoleGate>,
    /// What this process's builds are writing in place.
    building: Arc<Building>,
    /// Batches committed as the store's only user, and with path locks.
    sole_batches: AtomicU64,
    locked_batches: AtomicU64,
    /// Hashes modulo of valid derivations (immutable, so never stale), shared by every check
    /// of a derivation that depends on them.
    pub(crate) drv_hashes: Mutex<HashMap<StorePath, DrvHash>>,
    /// Set by the caller when the user asks to stop (Ctrl-C): additions in progress then
    /// stop, clean up and return [`StoreError::Interrupted`].
    interrupt: std::sync::OnceLock<Arc<AtomicBool>>,
}

/// New contents, hashed, not yet in place.
pub(crate) struct Staged {
    contents: Contents,
    pub(crate) nar_hash: Hash,
    pub(crate) nar_size: u64,
}

/// Where staged contents wait: small NARs in memory, large trees in the staging area.
enum Contents {
    Nar(Vec<u8>),
    Tree(PathBuf),
}

impl Staged {
    fn mem_bytes(&self) -> usize {
        match &self.contents {
            Contents::Nar(b) => b.len(),
            Contents::Tree(_) => 0,
        }
    }

    /// The contents of a regular file at the root (a `.drv`, a text).
    fn file_contents(&self) -> Option<Vec<u8>> {
        match &self.contents {
            Contents::Nar(b) => crate::place::nar_file_contents(b),
            Contents::Tree(t) => fs::read(t).ok(),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Nothing to do once it has been moved into place.
        if let Contents::Tree(t) = &self.contents {
            let _ = delete_path(t);
        }
    }
}

/// Whether a batch is full: by count (each holds a lock file open) or by memory.
pub(crate) fn batch_full(batch: &[Pending]) -> bool {
    batch.len() >= BATCH || batch.iter().map(|b| b.staged.mem_bytes()).sum::<usize>() >= MEM_BATCH
}

/// A staged path waiting to be committed with others.
pub(crate) struct Pending {
    pub(crate) staged: Staged,
    pub(crate) info: ValidPathInfo,
}

/// How many paths one commit handles: each holds an open lock file until then.
pub(crate) const BATCH: usize = 256;

impl LocalStore {
    /// Open the store, creating its directories and database when missing, and finish or
    /// undo whatever a crashed process left half-done.
    pub fn open(config: LocalStoreConfig) -> Result<Self> {
        for d in [
            config.real_store_dir.clone(),
            config.state_dir.clone(),
            config.db_dir(),
            config.state_dir.join("gcroots"),
            config.state_dir.join("temproots"),
            config.state_dir.join("profiles"),
            config.state_dir.join("ferrix/pending"),
        ] {
            fs::create_dir_all(&d).map_err(io_err("creating directory", &d))?;
        }
        let (big_lock, db) = Self::open_db(&config)?;
        let inherits_acl = crate::place::inherits_acl(&config.real_store_dir)?;
        let building_record = config
            .state_dir
            .join("ferrix/pending")
            .join(format!("{}-building", std::process::id()));
        let temp_roots = ProcessRoots::new(&config.state_dir);
        let store = Self {
            config,
            db: Mutex::new(db),
            readers: Mutex::default(),
            temp_roots,
            tmp_counter: AtomicU64::new(0),
            inherits_acl,
            big_lock,
            gate: Arc::default(),
            building: Arc::new(Building::new(building_record)),
            sole_batches: AtomicU64::new(0),
            locked_batches: AtomicU64::new(0),
            drv_hashes: Mutex::default(),
            interrupt: std::sync::OnceLock::new(),
        };
        store.recover()?;
        Ok(store)
    }

    /// Take the big lock (shared, as Nix does) and open the database. A store that does not
    /// exist yet is created under the big lock held exclusively, so that processes starting
    /// together on a new store wait for the first to create it rather than fail.
    fn open_db(config: &LocalStoreConfig) -> Result<(FileLock, Db)> {
        let lock_path = config.db_dir().join("big-lock");
        let schema = config.db_dir().join("schema");
        let lock_err = || StoreError::Format("could not take the big store lock".into());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if !schema.exists() {
                if let Some(lock) = FileLock::acquire(&lock_path, false, false)? {
                    let db = Db::open(&config.db_dir(), &config.store_dir, config.db_cache_kib)?;
                    lock.downgrade().map_err(io_err("locking", &lock_path))?;
                    return Ok((lock, db));
                }
            }
            // Waits out a creator that holds the lock exclusively.
            let lock = FileLock::acquire(&lock_path, true, true)?.ok_or_else(lock_err)?;
            if schema.exists() || std::time::Instant::now() > deadline {
                // Past the deadline, whoever keeps the lock shared without a schema (not a
                // Ferrix) is not creating it: create it under the shared lock, as Nix does.
                let db = Db::open(&config.db_dir(), &config.store_dir, config.db_cache_kib)?;
                return Ok((lock, db));
            }
            // Another program (Nix creates a store under the shared lock) is creating it:
            // try again to create it ourselves once it is done or gone.
            drop(lock);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Watch `flag`: once it is set, additions in progress (add, import, NARs from
    /// elsewhere) stop before they commit, remove what they staged and fail with
    /// [`StoreError::Interrupted`]. Commits already under way finish.
    pub fn set_interrupt(&self, flag: Arc<AtomicBool>) {
        let _ = self.interrupt.set(flag);
    }

    pub(crate) fn interrupted(&self) -> bool {
        self.interrupt
            .get()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Fail with [`StoreError::Interrupted`] once the user asked to stop.
    pub(crate) fn check_interrupt(&self) -> Result<()> {
        if self.interrupted() {
            return Err(StoreError::Interrupted);
        }
        Ok(())
    }

    /// An error of an addition, or the interruption that caused it (a stream cut short by
    /// the interrupt fails as a bad NAR would).
    pub(crate) fn or_interrupted(&self, e: StoreError) -> StoreError {
        if self.interrupted() {
            StoreError::Interrupted
        } else {
            e
        }
    }

    /// How many batches this handle committed as the store's only user (without path locks)
    /// and how many with path locks.
    pub fn commit_counts(&self) -> (u64, u64) {
        (
            self.sole_batches.load(Ordering::Relaxed),
            self.locked_batches.load(Ordering::Relaxed),
        )
    }

    pub fn config(&self) -> &LocalStoreConfig {
        &self.config
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.config.store_dir
    }

    /// The full logical path, `/nix/store/<hash>-<name>`.
    pub fn print(&self, p: &StorePath) -> String {
        self.config.store_dir.display(p)
    }

    /// Parse a full logical path (or one under the physical store dir) into a store path.
    pub fn parse_path(&self, s: &str) -> Result<StorePath> {
        let sd = &self.config.store_dir;
        let parsed = sd.parse_path(s).or_else(|e| {
            let real = self.config.real_store_dir.to_string_lossy();
            match s.strip_prefix(&*real) {
                Some(rest) => {
                    StoreDir::new(&real).and_then(|rd| rd.parse_path(&format!("{rd}{rest}")))
                }
                None => Err(e),
            }
        });
        parsed.map_err(|source| StoreError::BadName {
            path: s.to_owned(),
            source,
        })
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection for queries only: an idle one, or a new one when all are in use. It
    /// sees every commit made before it is taken.
    pub(crate) fn reader(&self) -> Result<Reader<'_>> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let db = match idle {
            Some(db) => db,
            None => Db::open_reader(&self.config.db_dir(), &self.config.store_dir)?,
        };
        Ok(Reader {
            store: self,
            db: Some(db),
        })
    }

    pub fn real_path(&self, p: &StorePath) -> PathBuf {
        self.config.real_path(p)
    }

    fn lock_file(&self, p: &StorePath) -> PathBuf {
        self.config.real_store_dir.join(format!("{p}.lock"))
    }

    /// Paths that were being put in place when a process died: intent files name them (one
    /// file per batch, NUL-separated base names). Whoever can take a path's lock knows its
    /// adder is gone; an unregistered path is removed. Staging entries of dead processes go
    /// the same way: `<pid>-staging` records name them.
    fn recover(&self) -> Result<()> {
        let pending = self.config.state_dir.join("ferrix/pending");
        'files: for e in fs::read_dir(&pending).map_err(io_err("reading directory", &pending))? {
            let e = e.map_err(io_err("reading directory", &pending))?;
            // Intents (and their half-written temporaries) of a live process are its own.
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if owner.is_some_and(|pid| pid != std::process::id() && pid_alive(pid)) {
                continue;
            }
            let text = fs::read(e.path()).unwrap_or_default();
            let mut locks = Vec::new();
            for name in text.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                let Ok(p) = StorePath::from_base_name(&String::from_utf8_lossy(name)) else {
                    continue;
                };
                match PathLock::acquire(&self.lock_file(&p), false)? {
                    Some(l) => locks.push((p, l)),
                    None => continue 'files, // its adder is still at work
                }
            }
            {
                let db = self.db();
                for (p, _) in &locks {
                    if !db.is_valid(p)? {
                        delete_path(&self.real_path(p))?;
                    }
                }
            }
            let _ = fs::remove_file(e.path());
        }
        Ok(())
    }

    /// Keep `p` alive against a concurrent garbage collection for this process's lifetime,
    /// or, within [`Self::in_session`], for the session's.
    pub fn add_temp_root(&self, p: &StorePath) -> Result<()> {
        self.add_temp_roots([p])
    }

    /// Like [`Self::add_temp_root`] for several paths at once.
    pub fn add_temp_roots<'a>(&self, paths: impl IntoIterator<Item = &'a StorePath>) -> Result<()> {
        let full: Vec<String> = paths.into_iter().map(|p| self.print(p)).collect();
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        if let Some(session) = SESSION_ROOTS.with(|s| s.borrow().clone()) {
            return session.add_many(&full);
        }
        self.temp_roots.add_many(&full)
    }

    /// Keep `paths` alive for as long as this process lives, outside any session and
    /// whatever is released meanwhile: places the process keeps reusing.
    pub fn add_lasting_temp_roots<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<()> {
        let full: Vec<String> = paths.into_iter().map(|p| self.print(p)).collect();
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        self.temp_roots.add_lasting(&full)
    }

    /// Hold the roots taken outside a session from now on until the hold is dropped (see
    /// [`ProcessRoots`]): a long-lived process holds one for each piece of work, so its
    /// roots end with that work rather than with the process.
    pub fn hold_temp_roots(&self) -> RootsHold {
        self.temp_roots.hold()
    }

    /// Run `f` on this thread for a session: every temporary root made meanwhile on this
    /// thread (those asked for, and those the store takes itself while adding a path) is
    /// `roots`', and ends with the session. A daemon serves each connection on a thread of
    /// its own this way.
    pub fn in_session<T>(&self, roots: &SessionRoots, f: impl FnOnce() -> T) -> T {
        let before = SESSION_ROOTS.with(|s| s.replace(Some(roots.clone())));
        /// Puts the thread's previous session back however `f` ends.
        struct Restore(Option<SessionRoots>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let before = self.0.take();
                SESSION_ROOTS.with(|s| *s.borrow_mut() = before);
            }
        }
        let _restore = Restore(before);
        f()
    }

    /// Release the temporary roots this process took outside a session that no
    /// [`RootsHold`] needs, at a moment its owner knows that nothing else in flight relies
    /// on them (a daemon whose last client has gone). Lasting roots stay.
    pub fn release_temp_roots(&self) {
        self.temp_roots.release();
    }

    /// Invalidate `paths` (in one transaction, referrers first) and delete their files, under
    /// an intent record so that a crash in between leaves nothing that recovery keeps.
    /// Liveness against GC roots is the caller's business (see [`crate::gc`]).
    pub fn invalidate_and_delete(&self, paths: &[StorePath]) -> Result<u64> {
        if paths.is_empty() {
            return Ok(0);
        }
        let intent = self.write_intent(paths)?;
        self.db().invalidate_batch(paths)?;
        let freed = self.delete_all(paths)?;
        let _ = fs::remove_file(&intent);
        Ok(freed)
    }

    /// Delete the files of `paths` on a few threads. Unlinking waits on the disk (discards,
    /// freeing blocks) far more than it uses the CPU, so the waits overlap well.
    fn delete_all(&self, paths: &[StorePath]) -> Result<u64> {
        const THREADS: usize = 8;
        if paths.len() < 2 * THREADS {
            let mut freed = 0;
            for p in paths {
                freed += delete_path(&self.real_path(p))?;
            }
            return Ok(freed);
        }
        let next = AtomicU64::new(0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| -> Result<u64> {
                        let mut freed = 0;
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                            let Some(p) = paths.get(i) else {
                                return Ok(freed);
                            };
                            freed += delete_path(&self.real_path(p))?;
                        }
                    })
                })
                .collect();
            let mut freed = 0;
            let mut first_err = None;
            for w in workers {
                match w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                    Ok(n) => freed += n,
                    Err(e) => first_err = first_err.or(Some(e)),
                }
            }
            first_err.map_or(Ok(freed), Err)
        })
    }

    /// Record the paths about to appear or disappear: `<state>/ferrix/pending/<pid>-<n>`.
    ///
    /// The record is written whole before anything it names appears, but not synced: a
    /// killed process leaves it in the page cache for recovery to read, and after a power
    /// loss a missing record can only leave unregistered paths behind (garbage for the
    /// collector), never a registered path without its contents, since nothing is
    /// registered before the file system has been synced.
    fn write_intent(&self, paths: &[StorePath]) -> Result<PathBuf> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let intent = self
            .config
            .state_dir
            .join("ferrix/pending")
            .join(format!("{}-{n}", std::process::id()));
        let mut names = Vec::new();
        for p in paths {
            names.extend_from_slice(p.to_string().as_bytes());
            names.push(0);
        }
        fs::write(&intent, &names).map_err(io_err("writing", &intent))?;
        Ok(intent)
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        // Every staging entry is gone by now (each `Staged` deletes its own).
        let _ = fs::remove_file(self.staging_record());
    }
}
