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
use crate::streams::{
    pipe, read_regular, write_file_nar, HashingReader, Interruptible, MemReader, SkipVisitor,
    TeeReader,
};
use crate::temproots::TempRoots;

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

/// An open local store. One per process is enough; it is `Sync`.
#[derive(Debug)]
pub struct LocalStore {
    config: LocalStoreConfig,
    db: Mutex<Db>,
    temp_roots: Mutex<Option<TempRoots>>,
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
        let store = Self {
            config,
            db: Mutex::new(db),
            temp_roots: Mutex::new(None),
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
                    let db = Db::open(&config.db_dir(), &config.store_dir)?;
                    lock.downgrade().map_err(io_err("locking", &lock_path))?;
                    return Ok((lock, db));
                }
            }
            // Waits out a creator that holds the lock exclusively.
            let lock = FileLock::acquire(&lock_path, true, true)?.ok_or_else(lock_err)?;
            if schema.exists() || std::time::Instant::now() > deadline {
                // Past the deadline, whoever keeps the lock shared without a schema (not a
                // Ferrix) is not creating it: create it under the shared lock, as Nix does.
                let db = Db::open(&config.db_dir(), &config.store_dir)?;
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

    /// Keep `p` alive against a concurrent garbage collection for this process's lifetime.
    pub fn add_temp_root(&self, p: &StorePath) -> Result<()> {
        self.add_temp_roots([p])
    }

    /// Like [`Self::add_temp_root`] for several paths at once.
    pub fn add_temp_roots<'a>(&self, paths: impl IntoIterator<Item = &'a StorePath>) -> Result<()> {
        let mut g = self.temp_roots.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(TempRoots::create(&self.config.state_dir)?);
        }
        let full: Vec<String> = paths.into_iter().map(|p| self.print(p)).collect();
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        match g.as_mut() {
            Some(t) => t.add_many(&full),
            None => Ok(()),
        }
    }

    // ---- queries ---------------------------------------------------------------------

    pub fn is_valid_path(&self, p: &StorePath) -> Result<bool> {
        self.db().is_valid(p)
    }

    /// Which of `paths` are valid (one read transaction).
    pub fn valid_among<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<HashSet<StorePath>> {
        self.db().valid_among(paths)
    }

    pub fn query_path_info(&self, p: &StorePath) -> Result<Option<ValidPathInfo>> {
        self.db().path_info(p)
    }

    /// Path info of a path that must be valid.
    pub fn path_info(&self, p: &StorePath) -> Result<ValidPathInfo> {
        self.query_path_info(p)?
            .ok_or_else(|| StoreError::NotValid(self.print(p)))
    }

    pub fn references(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.db().references(p)
    }

    pub fn referrers(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.db().referrers(p)
    }

    pub fn valid_derivers(&self, p: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.db().valid_derivers(p)
    }

    pub fn derivation_outputs(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>> {
        self.db().derivation_outputs(drv)
    }

    pub fn all_valid_paths(&self) -> Result<Vec<StorePath>> {
        self.db().all_valid()
    }

    /// The closure of `paths` under references; optionally with the outputs of derivations
    /// and the derivers of paths, as `nix-store -qR --include-outputs` does.
    pub fn closure(
        &self,
        paths: impl IntoIterator<Item = StorePath>,
        include_outputs: bool,
        include_derivers: bool,
    ) -> Result<BTreeSet<StorePath>> {
        let paths: Vec<StorePath> = paths.into_iter().collect();
        let db = self.db();
        for p in &paths {
            if !db.is_valid(p)? {
                return Err(StoreError::NotValid(self.print(p)));
            }
        }
        if !include_outputs && !include_derivers {
            return Ok(db.closure_graph(&paths, true)?.into_keys().collect());
        }
        crate::closure::closure(paths, |p| {
            let info = db
                .path_info(p)?
                .ok_or_else(|| StoreError::NotValid(self.print(p)))?;
            let mut next: Vec<StorePath> = info.references.into_iter().collect();
            if include_outputs && p.is_derivation() {
                for o in db.derivation_outputs(p)?.into_values() {
                    if db.is_valid(&o)? {
                        next.push(o);
                    }
                }
            }
            if include_derivers {
                if let Some(d) = info.deriver {
                    if db.is_valid(&d)? {
                        next.push(d);
                    }
                }
            }
            Ok(next)
        })
    }

    /// The closure of `paths` as a graph: every member with its references, from one query.
    pub fn closure_graph(
        &self,
        paths: &[StorePath],
    ) -> Result<std::collections::HashMap<StorePath, Vec<StorePath>>> {
        let db = self.db();
        for p in paths {
            if !db.is_valid(p)? {
                return Err(StoreError::NotValid(self.print(p)));
            }
        }
        db.closure_graph(paths, true)
    }

    /// The closure of `paths`, references first (what `nix-store -qR` prints), from one query.
    pub fn closure_sorted(&self, paths: &[StorePath]) -> Result<Vec<StorePath>> {
        let db = self.db();
        for p in paths {
            if !db.is_valid(p)? {
                return Err(StoreError::NotValid(self.print(p)));
            }
        }
        let graph = db.closure_graph(paths, true)?;
        drop(db);
        let set: BTreeSet<StorePath> = graph.keys().cloned().collect();
        crate::closure::topo_sort(&self.config.store_dir, &set, |p| {
            Ok(graph.get(p).cloned().unwrap_or_default())
        })
    }

    /// Every path that (transitively) refers to one of `paths`.
    pub fn referrers_closure(
        &self,
        paths: impl IntoIterator<Item = StorePath>,
    ) -> Result<BTreeSet<StorePath>> {
        let db = self.db();
        crate::closure::closure(paths, |p| Ok(db.referrers(p)?.into_iter().collect()))
    }

    /// `paths` ordered references-first.
    pub fn topo_sort(&self, paths: &BTreeSet<StorePath>) -> Result<Vec<StorePath>> {
        let list: Vec<StorePath> = paths.iter().cloned().collect();
        let graph = self.db().closure_graph(&list, false)?;
        crate::closure::topo_sort(&self.config.store_dir, paths, |p| {
            Ok(graph.get(p).cloned().unwrap_or_default())
        })
    }

    /// Write the NAR of a valid path.
    pub fn nar_from_path(&self, p: &StorePath, out: impl Write) -> Result<()> {
        if !self.is_valid_path(p)? {
            return Err(StoreError::NotValid(self.print(p)));
        }
        let real = self.real_path(p);
        nar::dump_path(&real, out).map_err(|source| StoreError::Dump { path: real, source })
    }

    // ---- outputs written by others (builds) -----------------------------------------

    /// Lock `p` with Nix's `<path>.lock` protocol, waiting for it when `wait` (`None` when
    /// not waiting and another process holds it). While held, this process never writes
    /// paths without locks.
    pub fn lock_path(&self, p: &StorePath, wait: bool) -> Result<Option<StoreLock>> {
        let gate = self.gate.read();
        Ok(
            PathLock::acquire(&self.lock_file(p), wait)?.map(|lock| StoreLock {
                _lock: lock,
                _gate: gate,
            }),
        )
    }

    /// Announce that `paths` (locked by the caller) are about to be written in place, by a
    /// builder for instance: leftovers at those names are removed, and an intent record makes
    /// sure that they are removed again should this process die before
    /// [`Self::register_outputs`]. Dropping the returned value without registering deletes them.
    ///
    /// `scratch` names store entries that are never registered, such as a sandbox's root:
    /// they are recorded the same way and always deleted when the intent ends, so that a
    /// process killed mid-build leaves none behind either.
    ///
    /// All builds of a process share one record, `<state>/ferrix/pending/<pid>-building`,
    /// rewritten as builds start and end: a file per build would cost an inode created and
    /// freed for each.
    pub fn begin_outputs(
        &self,
        paths: &[StorePath],
        scratch: &[StorePath],
    ) -> Result<OutputsIntent> {
        let all: Vec<StorePath> = paths.iter().chain(scratch).cloned().collect();
        self.building.add(&all)?;
        let pending = OutputsIntent {
            paths: all,
            real: paths.iter().map(|p| self.real_path(p)).collect(),
            scratch: scratch.iter().map(|p| self.real_path(p)).collect(),
            building: self.building.clone(),
            done: false,
        };
        for r in pending.real.iter().chain(&pending.scratch) {
            delete_path(r)?;
        }
        Ok(pending)
    }

    /// Register paths announced with [`Self::begin_outputs`], in one transaction. The caller
    /// has made them canonical ([`crate::canon::canonicalise`]) before hashing them; here they
    /// are synced to disk first.
    pub fn register_outputs(&self, pending: OutputsIntent, infos: &[ValidPathInfo]) -> Result<()> {
        self.register_outputs_batch(vec![(pending, infos.to_vec())])
    }

    /// [`Self::register_outputs`] for several builds at once: one sync, one transaction
    /// (a build's outputs may refer to those of another in the batch).
    pub fn register_outputs_batch(
        &self,
        batch: Vec<(OutputsIntent, Vec<ValidPathInfo>)>,
    ) -> Result<()> {
        let reals: Vec<PathBuf> = batch.iter().flat_map(|(p, _)| p.real.clone()).collect();
        crate::fsutil::sync_trees(&reals, &self.config.real_store_dir)?;
        let infos: Vec<ValidPathInfo> = batch.iter().flat_map(|(_, i)| i.clone()).collect();
        self.db().register(&infos, &BTreeMap::new())?;
        for (pending, _) in batch {
            pending.keep();
        }
        Ok(())
    }

    // ---- adding ---------------------------------------------------------------------

    /// A fresh staging entry: a temp root first (so no collector takes it), then a note in
    /// this process's staging record (so recovery removes it should the process die).
    fn new_tmp_path(&self) -> Result<PathBuf> {
        let sp = self.fresh_entry(STAGING_NAME)?;
        self.add_temp_root(&sp)?;
        let record = self.staging_record();
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&record)
            .and_then(|mut f| f.write_all(format!("{sp}\0").as_bytes()))
            .map_err(io_err("writing", &record))?;
        Ok(self.real_path(&sp))
    }

    /// A store entry name no one else uses, `<random hash>-<name>`, for entries that are never
    /// registered (staging, sandbox places, outputs moved aside): a store path, so that Nix's
    /// collector (which deletes other names) leaves it to the temp root the caller adds.
    pub fn fresh_entry(&self, name: &str) -> Result<StorePath> {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = format!("{}-{n}-{nanos}-{name}", std::process::id());
        let mut digest = [0u8; 20];
        digest.copy_from_slice(&Hash::sha256(seed.as_bytes()).digest()[..20]);
        StorePath::from_digest(&digest, name).map_err(|e| StoreError::Format(e.to_string()))
    }

    /// `<state>/ferrix/pending/<pid>-staging`: the staging entries this process made.
    fn staging_record(&self) -> PathBuf {
        self.config
            .state_dir
            .join("ferrix/pending")
            .join(format!("{}-staging", std::process::id()))
    }

    /// Read and check a NAR stream, hashing it. With `exact`, the stream must end with the
    /// archive; otherwise reading stops at its end. Small archives are kept in memory; one
    /// that outgrows [`MEM_NAR`] is restored into a staging entry, starting over from the
    /// bytes already read.
    pub(crate) fn stage(&self, nar_stream: impl Read, what: &str, exact: bool) -> Result<Staged> {
        self.stage_inner(nar_stream, what, exact)
            .map_err(|e| self.or_interrupted(e))
    }

    fn stage_inner(&self, nar_stream: impl Read, what: &str, exact: bool) -> Result<Staged> {
        let mut reader = HashingReader {
            inner: Interruptible {
                inner: nar_stream,
                flag: self.interrupt.get().map(|f| &**f),
            },
            sink: HashSink::new(HashAlgo::Sha256),
        };
        let nar_err = |source| StoreError::Nar {
            path: what.to_owned(),
            source,
        };
        let mut mem = MemReader {
            inner: &mut reader,
            buf: Vec::new(),
            overflowed: false,
        };
        let checked = if exact {
            nar::parse_exact(&mut mem, &mut SkipVisitor)
        } else {
            nar::parse(&mut mem, &mut SkipVisitor)
        };
        let contents = match checked {
            Ok(_) => Contents::Nar(mem.buf),
            Err(_) if mem.overflowed => {
                let tree = self.new_tmp_path()?;
                // Owns the tree from here on: an error below drops it, deleting the tree.
                let mut staged = Staged {
                    contents: Contents::Tree(tree.clone()),
                    nar_hash: Hash::zero(HashAlgo::Sha256),
                    nar_size: 0,
                };
                let input = io::Cursor::new(std::mem::take(&mut mem.buf)).chain(&mut reader);
                let restored = if exact {
                    nar::restore(input, &tree)
                } else {
                    nar::restore_prefix(input, &tree)
                };
                restored.map_err(|e| match e {
                    nar::RestoreError::Nar { source, .. } => nar_err(source),
                })?;
                (staged.nar_hash, staged.nar_size) = reader.sink.finish();
                return Ok(staged);
            }
            Err(e) => return Err(nar_err(e)),
        };
        let (nar_hash, nar_size) = reader.sink.finish();
        Ok(Staged {
            contents,
            nar_hash,
            nar_size,
        })
    }

    /// Stage a NAR this process just produced (known to be well-formed), kept in memory.
    fn stage_own_nar(&self, nar_bytes: Vec<u8>) -> Staged {
        Staged {
            nar_hash: Hash::sha256(&nar_bytes),
            nar_size: nar_bytes.len() as u64,
            contents: Contents::Nar(nar_bytes),
        }
    }

    /// Put one staged path at its place: written there from memory, or renamed from staging.
    fn place(&self, b: &Pending) -> Result<()> {
        let dest = self.real_path(&b.info.path);
        match &b.staged.contents {
            Contents::Nar(bytes) => {
                crate::place::place_nar(bytes, &dest)?;
                if self.inherits_acl {
                    canonicalise(&dest)?;
                }
            }
            Contents::Tree(tree) => {
                // Left by a process that died before registering it.
                delete_path(&dest)?;
                fs::rename(tree, &dest).map_err(io_err("moving into place", &dest))?;
            }
        }
        Ok(())
    }

    /// Put staged paths in place and register them, all in one go: canonicalise staged trees,
    /// record the intent, write or rename each into place, sync the file system once,
    /// register all in one transaction, drop the intent. A crash at any point leaves nothing
    /// that recovery does not remove, and nothing is registered before it is on disk.
    ///
    /// First the paths that are valid already are dropped, and the rest locked. A path that
    /// another process holds is waited for only after everything before it is committed and
    /// its locks released, so two processes adding overlapping sets never wait on each other;
    /// order is kept, so references still come before their referrers.
    pub(crate) fn commit_batch(&self, batch: Vec<Pending>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.check_interrupt()?;
        // Temp roots first: a path found valid stays so while this process lives.
        self.add_temp_roots(batch.iter().map(|b| &b.info.path))?;
        if let Some(_sole) = self.gate.try_write() {
            if self
                .big_lock
                .try_upgrade()
                .map_err(io_err("locking", self.config.db_dir().join("big-lock")))?
            {
                // No other process has the store open (each holds the big lock shared, Nix's
                // processes included) and no thread of ours holds a path lock: nobody can be
                // adding these paths, so their lock files (a create, an unlink and a dying
                // inode each) are not needed. Other processes opening the store wait at most
                // this one batch.
                let res = (|| {
                    let valid = self.db().valid_among(batch.iter().map(|b| &b.info.path))?;
                    let batch: Vec<Pending> = batch
                        .into_iter()
                        .filter(|b| !valid.contains(&b.info.path))
                        .collect();
                    self.place_and_register(batch)
                })();
                self.sole_batches.fetch_add(1, Ordering::Relaxed);
                let down = self.big_lock.downgrade();
                res?;
                return down.map_err(io_err("locking", self.config.db_dir().join("big-lock")));
            }
        }
        let _reader = self.gate.read();
        self.locked_batches.fetch_add(1, Ordering::Relaxed);
        let valid = self.db().valid_among(batch.iter().map(|b| &b.info.path))?;
        let mut group: Vec<(Pending, PathLock)> = Vec::new();
        for b in batch {
            if valid.contains(&b.info.path) {
                continue;
            }
            let lock_file = self.lock_file(&b.info.path);
            let lock = match PathLock::acquire(&lock_file, false)? {
                Some(l) => l,
                None => {
                    self.commit_locked(std::mem::take(&mut group))?;
                    PathLock::acquire(&lock_file, true)?
                        .ok_or_else(|| StoreError::Format("lock unavailable".into()))?
                }
            };
            group.push((b, lock));
        }
        self.commit_locked(group)
    }

    /// Place and register locked paths, skipping any another process made valid before we
    /// got its lock.
    fn commit_locked(&self, group: Vec<(Pending, PathLock)>) -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        let valid = self
            .db()
            .valid_among(group.iter().map(|(b, _)| &b.info.path))?;
        let (batch, _locks): (Vec<Pending>, Vec<PathLock>) = group
            .into_iter()
            .filter(|(b, _)| !valid.contains(&b.info.path))
            .unzip();
        self.place_and_register(batch)
    }

    /// The common end of both ways to commit: the paths are the caller's to write.
    fn place_and_register(&self, batch: Vec<Pending>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let in_batch: HashSet<&StorePath> = batch.iter().map(|b| &b.info.path).collect();
        let outside: BTreeSet<&StorePath> = batch
            .iter()
            .flat_map(|b| &b.info.references)
            .filter(|r| !in_batch.contains(r))
            .collect();
        let valid_refs = self.db().valid_among(outside.iter().copied())?;
        for b in &batch {
            if let Some(r) = b
                .info
                .references
                .iter()
                .find(|r| !in_batch.contains(r) && !valid_refs.contains(*r))
            {
                return Err(StoreError::ReferenceNotValid {
                    path: self.print(&b.info.path),
                    reference: self.print(r),
                });
            }
        }
        let outs = self.check_new_derivations(
            batch
                .iter()
                .filter(|b| b.info.path.is_derivation())
                .map(|b| (&b.info.path, b.staged.file_contents())),
        )?;
        for b in &batch {
            if let Contents::Tree(t) = &b.staged.contents {
                canonicalise(t)?;
            }
        }
        let paths: Vec<StorePath> = batch.iter().map(|b| b.info.path.clone()).collect();
        let intent = self.write_intent(&paths)?;
        let moved = (|| -> Result<()> {
            for b in &batch {
                self.place(b)?;
            }
            sync_fs(&self.config.real_store_dir)?;
            let infos: Vec<ValidPathInfo> = batch.iter().map(|b| b.info.clone()).collect();
            self.db().register(&infos, &outs)
        })();
        if let Err(e) = moved {
            // Never leave an unregistered path behind.
            for b in &batch {
                let _ = delete_path(&self.real_path(&b.info.path));
            }
            let _ = fs::remove_file(&intent);
            return Err(e);
        }
        let _ = fs::remove_file(&intent);
        Ok(())
    }

    /// Add a file system tree (`nix-store --add`, `--add-fixed`): recursive ingestion hashes the
    /// NAR with `algo`; flat ingestion hashes the bytes of a regular file.
    pub fn add_path(
        &self,
        src: &Path,
        name: &str,
        method: FileIngestionMethod,
        algo: HashAlgo,
    ) -> Result<StorePath> {
        let mut v = self.add_paths(&[(src.to_owned(), name.to_owned())], method, algo)?;
        Ok(v.remove(0))
    }

    /// Add many trees, committed in batches: one file system sync and one database
    /// transaction per batch rather than per path. Returns the paths in argument order.
    pub fn add_paths(
        &self,
        srcs: &[(PathBuf, String)],
        method: FileIngestionMethod,
        algo: HashAlgo,
    ) -> Result<Vec<StorePath>> {
        let mut out = Vec::with_capacity(srcs.len());
        let mut batch: Vec<Pending> = Vec::new();
        let mut batched: HashSet<StorePath> = HashSet::new();
        for (src, name) in srcs {
            self.check_interrupt()?;
            let (staged, ca) = self
                .stage_tree(src, name, method, algo)
                .map_err(|e| self.or_interrupted(e))?;
            let p = self
                .config
                .store_dir
                .make_ca_path(name, &ca, [], false)
                .map_err(|source| StoreError::BadName {
                    path: name.to_owned(),
                    source,
                })?;
            out.push(p.clone());
            if !batched.insert(p.clone()) {
                continue;
            }
            let mut info = ValidPathInfo::new(p.clone(), staged.nar_hash, staged.nar_size);
            info.ca = Some(ca);
            info.ultimate = true;
            batch.push(Pending { staged, info });
            if batch_full(&batch) {
                self.commit_batch(std::mem::take(&mut batch))?;
                batched.clear();
            }
        }
        self.commit_batch(batch)?;
        Ok(out)
    }

    /// Copy a tree into a temporary directory, computing its NAR hash and content address in
    /// the same pass.
    fn stage_tree(
        &self,
        src: &Path,
        name: &str,
        method: FileIngestionMethod,
        algo: HashAlgo,
    ) -> Result<(Staged, ContentAddress)> {
        ferrix_format::store_path::validate_name(name).map_err(|source| StoreError::BadName {
            path: name.to_owned(),
            source,
        })?;
        let meta = fs::symlink_metadata(src).map_err(io_err("reading", src))?;
        if method == FileIngestionMethod::Flat && !meta.is_file() {
            return Err(StoreError::NotRegularFile {
                path: src.to_owned(),
            });
        }
        let mut ca_hasher = (method == FileIngestionMethod::Recursive && algo != HashAlgo::Sha256)
            .then(|| Hasher::new(algo));
        let what = format!("'{}'", src.display());
        let dump_err = |source| StoreError::Dump {
            path: src.to_owned(),
            source,
        };
        let staged = if !meta.is_dir() && meta.len() < MEM_NAR as u64 {
            // Small files: the NAR in memory, no thread.
            let mut buf = Vec::with_capacity(meta.len() as usize + 200);
            nar::dump_path(src, &mut buf).map_err(dump_err)?;
            if let Some(h) = ca_hasher.as_mut() {
                h.update(&buf);
            }
            self.stage_own_nar(buf)
        } else {
            // One pass: the NAR is produced on one thread and restored (and hashed) on this one.
            let (rd, wr) = pipe()?;
            let src_owned = src.to_owned();
            let dumper = std::thread::spawn(move || -> std::result::Result<(), nar::DumpError> {
                nar::dump_path(&src_owned, wr)
            });
            let staged = {
                // Moved in, so that an early failure closes the pipe and the dumper stops.
                let tee = TeeReader {
                    inner: rd,
                    extra: ca_hasher.as_mut(),
                };
                self.stage(tee, &what, true)
            };
            let dumped = dumper
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            match (dumped, staged) {
                // The reading side stopped first (a bad name, a full disk): its error is the
                // cause, the dumper's broken pipe only a consequence.
                (Err(nar::DumpError::Write(e)), Err(staged))
                    if e.kind() == io::ErrorKind::BrokenPipe =>
                {
                    return Err(staged)
                }
                (Err(dumped), _) => return Err(dump_err(dumped)),
                (Ok(()), staged) => staged?,
            }
        };
        let hash = match method {
            FileIngestionMethod::Flat => match &staged.contents {
                Contents::Nar(b) => Hash::of(
                    algo,
                    &crate::place::nar_file_contents(b).ok_or_else(|| {
                        StoreError::NotRegularFile {
                            path: src.to_owned(),
                        }
                    })?,
                ),
                Contents::Tree(t) => {
                    ferrix_format::hash::hash_file(t, algo).map_err(io_err("hashing", t))?
                }
            },
            FileIngestionMethod::Recursive => match ca_hasher {
                Some(h) => h.finish(),
                None => staged.nar_hash,
            },
        };
        Ok((staged, ContentAddress::Fixed { method, hash }))
    }

    /// Add a text file with references (`builtins.toFile`, `.drv` files).
    pub fn add_text(
        &self,
        name: &str,
        text: &[u8],
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath> {
        let hash = Hash::sha256(text);
        let p = self
            .config
            .store_dir
            .make_text_path(name, &hash, refs)
            .map_err(|source| StoreError::BadName {
                path: name.to_owned(),
                source,
            })?;
        self.add_temp_root(&p)?;
        if self.is_valid_path(&p)? {
            return Ok(p);
        }
        let mut nar_bytes = Vec::with_capacity(text.len() + 128);
        write_file_nar(&mut nar_bytes, text);
        let staged = self.stage_own_nar(nar_bytes);
        let mut info = ValidPathInfo::new(p.clone(), staged.nar_hash, staged.nar_size);
        info.references = refs.clone();
        info.ca = Some(ContentAddress::Text(hash));
        info.ultimate = true;
        self.commit_batch(vec![Pending { staged, info }])?;
        Ok(p)
    }

    /// Write a derivation to the store as `<name>.drv`, recording its outputs.
    pub fn add_derivation(&self, drv: &Derivation, name: &str) -> Result<StorePath> {
        let text = drv.to_aterm(&self.config.store_dir);
        self.add_text(&format!("{name}.drv"), text.as_bytes(), &drv.references())
    }

    /// Add a path from its NAR, with metadata from elsewhere (import, substitution). The NAR
    /// must match `info`'s hash and size (when the size is known).
    pub fn add_nar(&self, info: &ValidPathInfo, nar_stream: impl Read) -> Result<()> {
        let p = &info.path;
        self.add_temp_root(p)?;
        if self.is_valid_path(p)? {
            // Consume the stream so that a caller reading several NARs stays in step.
            let mut sink = SkipVisitor;
            nar::parse(nar_stream, &mut sink).map_err(|source| StoreError::Nar {
                path: self.print(p),
                source,
            })?;
            return Ok(());
        };
        let staged = self.stage(nar_stream, &format!("'{}'", self.print(p)), false)?;
        if staged.nar_hash != info.nar_hash {
            return Err(StoreError::HashMismatch {
                path: self.print(p),
                expected: info.nar_hash.encode_typed(ferrix_format::Encoding::Nix32),
                got: staged.nar_hash.encode_typed(ferrix_format::Encoding::Nix32),
            });
        }
        if info.nar_size != 0 && staged.nar_size != info.nar_size {
            return Err(StoreError::SizeMismatch {
                path: self.print(p),
                expected: info.nar_size,
                got: staged.nar_size,
            });
        }
        let mut info = info.clone();
        info.nar_size = staged.nar_size;
        self.commit_batch(vec![Pending { staged, info }])
    }

    /// Register paths whose contents are already in place (`nix-store --load-db`,
    /// `--register-validity`): their files must exist; references must be valid or among them.
    pub fn register_existing(&self, infos: &[ValidPathInfo]) -> Result<()> {
        for i in infos {
            let real = self.real_path(&i.path);
            fs::symlink_metadata(&real).map_err(io_err("registering", &real))?;
        }
        let mut drvs = Vec::new();
        for i in infos.iter().filter(|i| i.path.is_derivation()) {
            drvs.push((&i.path, read_regular(&self.real_path(&i.path))?));
        }
        let outs = self.check_new_derivations(drvs)?;
        self.db().register(infos, &outs)
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

/// A path lock taken through a store: see [`LocalStore::lock_path`].
#[derive(Debug)]
pub struct StoreLock {
    _lock: PathLock,
    _gate: GateReader,
}

/// Paths being written in place under an intent record: see [`LocalStore::begin_outputs`].
#[derive(Debug)]
pub struct OutputsIntent {
    /// Outputs and scratch entries, as recorded.
    paths: Vec<StorePath>,
    real: Vec<PathBuf>,
    scratch: Vec<PathBuf>,
    building: Arc<Building>,
    done: bool,
}

impl OutputsIntent {
    /// Give up: delete what was written at the outputs' places, then move entries back
    /// (from, to) — scratch entries of this intent that held what was there before (a
    /// repair moves damaged outputs aside).
    pub fn abandon(mut self, back: &[(PathBuf, PathBuf)]) {
        for r in &self.real {
            let _ = delete_path(r);
        }
        for (from, to) in back {
            let _ = fs::rename(from, to);
        }
        self.done = true;
    }

    /// The paths are registered: they stay.
    fn keep(mut self) {
        self.done = true;
    }
}

impl Drop for OutputsIntent {
    fn drop(&mut self) {
        if !self.done {
            for r in &self.real {
                let _ = delete_path(r);
            }
        }
        for r in &self.scratch {
            let _ = delete_path(r);
        }
        self.building.remove(&self.paths);
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        // Every staging entry is gone by now (each `Staged` deletes its own).
        let _ = fs::remove_file(self.staging_record());
    }
}
