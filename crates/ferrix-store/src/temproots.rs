//! Temporary GC roots: paths a running process is creating or using, kept alive for its lifetime.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{io_err, Result};
use crate::lock::FileLock;

/// One of this process's `<state>/temproots/<pid>[-…]` files, exclusively locked while the
/// process lives.
#[derive(Debug)]
pub struct TempRoots {
    file: File,
    path: PathBuf,
    /// `<state>/gc.lock`, kept open: every root is written under a shared lock on it.
    gc_lock: File,
}

impl TempRoots {
    /// A file of one session of this process (a daemon's connection): `<pid>-<session>`,
    /// its roots released when it is dropped, whatever the process's others do. A
    /// collector reads the pid before the dash, as Nix's does.
    pub fn for_session(state_dir: &Path, session: u64) -> Result<Self> {
        Self::create_named(state_dir, &format!("{}-{session}", std::process::id()))
    }

    fn create_named(state_dir: &Path, name: &str) -> Result<Self> {
        let dir = state_dir.join("temproots");
        let path = dir.join(name);
        loop {
            // A file with our pid is left over from a dead process that had it.
            let _ = std::fs::remove_file(&path);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(io_err("creating temp roots file", &path))?;
            flock(&file, FlockOperation::LockExclusive)
                .map_err(|e| io_err("locking", &path)(e.into()))?;
            // The GC deletes (and marks) files of processes it believes dead; start over.
            if file.metadata().map_err(io_err("reading", &path))?.len() != 0 {
                continue;
            }
            return Ok(Self {
                file,
                path,
                gc_lock: FileLock::open(&state_dir.join("gc.lock"))?,
            });
        }
    }

    /// Record `full_path` as a root. With no collection running (the GC lock can be shared),
    /// appending to our file is enough: a collection starting later reads it. While one runs,
    /// tell it through its socket first and wait for its acknowledgement, as Nix's processes
    /// do, so adding never waits for a collection to finish.
    pub fn add(&mut self, full_path: &str) -> Result<()> {
        self.add_many(&[full_path])
    }

    /// Record several roots with one write and one check for a running collection.
    pub fn add_many(&mut self, full_paths: &[&str]) -> Result<()> {
        // The file first: a collection that starts from here on reads it.
        let mut rec = Vec::new();
        for p in full_paths {
            rec.extend_from_slice(p.as_bytes());
            rec.push(0);
        }
        self.file
            .write_all(&rec)
            .map_err(io_err("writing temp root to", &self.path))?;
        let mut told = 0;
        loop {
            match flock(&self.gc_lock, FlockOperation::NonBlockingLockShared) {
                Ok(()) => {
                    // No collection is running.
                    let _ = flock(&self.gc_lock, FlockOperation::Unlock);
                    return Ok(());
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {}
                Err(e) => return Err(io_err("locking", &self.path)(e.into())),
            }
            // One is running and may have read the file before our write.
            while told < full_paths.len() && self.tell_collector(full_paths[told]) {
                told += 1;
            }
            if told == full_paths.len() {
                return Ok(());
            }
            // The collector is starting up or just finished: try again shortly.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Send a root to the running collector; false when it is not (or no longer) listening.
    fn tell_collector(&self, full_path: &str) -> bool {
        use std::io::Read;
        let Some(state) = self.path.parent().and_then(Path::parent) else {
            return false;
        };
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(state.join(GC_SOCKET)) else {
            return false;
        };
        let mut line = full_path.as_bytes().to_vec();
        line.push(b'\n');
        let mut ack = [0u8; 1];
        s.write_all(&line).is_ok() && s.read_exact(&mut ack).is_ok() && ack[0] == b'1'
    }
}

/// The temporary roots this process takes outside any session, in generations: each root
/// goes to the current generation's file, and a generation's file goes once no
/// [`RootsHold`] that was alive while it was current is left. A long-lived process (a
/// daemon's Engine) holds one for each piece of work (a goal, a build, a registration), so
/// its roots end with the work that took them, however busy the process stays. Without
/// holds (a command's run) nothing is released before the process ends.
///
/// Generation 0 (`<pid>`) is never released: it has what was rooted before the first hold,
/// and what must last as long as the process ([`ProcessRoots::add_lasting`]).
#[derive(Debug, Clone)]
pub struct ProcessRoots(std::sync::Arc<std::sync::Mutex<Generations>>);

#[derive(Debug)]
struct Generations {
    state_dir: PathBuf,
    /// Files of the generations not released, by number (made at their first root).
    files: std::collections::BTreeMap<u64, TempRoots>,
    current: u64,
    /// When the current generation began.
    since: std::time::Instant,
    /// Live holds, counted by the generation current when each began.
    holds: std::collections::BTreeMap<u64, usize>,
}

/// A piece of work relying on the process's roots: the generations current while it lives
/// stay. Released when dropped.
#[derive(Debug)]
pub struct RootsHold {
    roots: ProcessRoots,
    generation: u64,
}

/// A generation gives way to a new one at a hold that finds it this old, so a busy process
/// makes a file a second at most.
const GENERATION_AGE: std::time::Duration = std::time::Duration::from_secs(1);

impl ProcessRoots {
    pub fn new(state_dir: &Path) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(Generations {
            state_dir: state_dir.to_owned(),
            files: Default::default(),
            current: 0,
            since: std::time::Instant::now(),
            holds: Default::default(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record `full_paths` in the current generation.
    pub fn add_many(&self, full_paths: &[&str]) -> Result<()> {
        let mut g = self.lock();
        let n = g.current;
        g.file(n)?.add_many(full_paths)
    }

    /// Record `full_paths` for as long as the process lives (places it keeps reusing).
    pub fn add_lasting(&self, full_paths: &[&str]) -> Result<()> {
        self.lock().file(0)?.add_many(full_paths)
    }

    /// Hold the current generation, and every later one, until the hold is dropped. The
    /// first hold starts generation 1, so generation 0 keeps only what came before.
    pub fn hold(&self) -> RootsHold {
        let mut g = self.lock();
        let aged = g.since.elapsed() >= GENERATION_AGE && g.files.contains_key(&g.current);
        if g.current == 0 || aged {
            g.current += 1;
            g.since = std::time::Instant::now();
        }
        let n = g.current;
        *g.holds.entry(n).or_default() += 1;
        RootsHold {
            roots: self.clone(),
            generation: n,
        }
    }

    /// Release what no hold needs: every generation but 0 older than the oldest hold, and
    /// with no hold, the current one too (a new one begins).
    pub fn release(&self) {
        self.lock().release();
    }
}

impl Generations {
    /// Generation `n`'s file, made at its first root.
    fn file(&mut self, n: u64) -> Result<&mut TempRoots> {
        use std::collections::btree_map::Entry;
        match self.files.entry(n) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(v) => {
                let name = match n {
                    0 => std::process::id().to_string(),
                    n => format!("{}-g{n}", std::process::id()),
                };
                Ok(v.insert(TempRoots::create_named(&self.state_dir, &name)?))
            }
        }
    }

    fn release(&mut self) {
        let keep_from = match self.holds.keys().next() {
            Some(&oldest) => oldest,
            None => {
                if self.files.contains_key(&self.current) && self.current != 0 {
                    self.current += 1;
                    self.since = std::time::Instant::now();
                }
                self.current
            }
        };
        // Dropping a file removes it.
        self.files.retain(|&n, _| n == 0 || n >= keep_from);
    }
}

impl Drop for RootsHold {
    fn drop(&mut self) {
        let mut g = self.roots.lock();
        if let Some(c) = g.holds.get_mut(&self.generation) {
            *c -= 1;
            if *c == 0 {
                g.holds.remove(&self.generation);
                g.release();
            }
        }
    }
}

/// The temporary roots of one session of this process (a daemon's connection): its file
/// is made at its first root and removed when the last handle goes, whatever the
/// process's other sessions do. Shared by the session's handles.
#[derive(Debug, Clone)]
pub struct SessionRoots(std::sync::Arc<std::sync::Mutex<SessionFile>>);

#[derive(Debug)]
struct SessionFile {
    state_dir: PathBuf,
    id: u64,
    file: Option<TempRoots>,
}

impl SessionRoots {
    /// Session `id`'s roots, under `state_dir`; nothing is written before the first root.
    pub fn new(state_dir: &Path, id: u64) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(SessionFile {
            state_dir: state_dir.to_owned(),
            id,
            file: None,
        })))
    }

    /// Record `full_paths` as the session's roots.
    pub fn add_many(&self, full_paths: &[&str]) -> Result<()> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.file.is_none() {
            g.file = Some(TempRoots::for_session(&g.state_dir, g.id)?);
        }
        match g.file.as_mut() {
            Some(t) => t.add_many(full_paths),
            None => Ok(()),
        }
    }
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where a running collection listens for new temp roots (Nix's protocol: a path and a newline
/// in, `1` out once the collector will keep it).
pub const GC_SOCKET: &str = "gc-socket/socket";

/// The temp roots of every live process; files of dead processes are removed.
pub fn read_all(state_dir: &Path) -> Result<Vec<String>> {
    let dir = state_dir.join("temproots");
    let mut roots = Vec::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(roots),
        Err(e) => return Err(io_err("reading directory", &dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io_err("reading directory", &dir))?;
        if e.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let p = e.path();
        let Ok(mut f) = OpenOptions::new().read(true).write(true).open(&p) else {
            continue;
        };
        // If we can lock it, its owner is gone.
        if flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok() {
            let _ = std::fs::remove_file(&p);
            let _ = f.write_all(b"d");
            continue;
        }
        let mut text = Vec::new();
        f.read_to_end(&mut text).map_err(io_err("reading", &p))?;
        for r in text.split(|&b| b == 0).filter(|r| !r.is_empty()) {
            roots.push(String::from_utf8_lossy(r).into_owned());
        }
    }
    Ok(roots)
}
