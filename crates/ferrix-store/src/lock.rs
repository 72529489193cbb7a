//! File locks as Nix takes them: `flock(2)` on `<path>.lock`, with Nix's stale-lock protocol.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{io_err, Result};

/// An exclusive lock on a lock file, released on drop. The lock file is removed on release
/// (and marked, so that processes waiting on the old file retry with a new one): locks leave
/// nothing behind in the store.
#[derive(Debug)]
pub struct PathLock {
    file: File,
    path: PathBuf,
}

impl PathLock {
    /// Take the lock, waiting for it when `wait`; `None` when not waiting and it is held.
    /// A lock file that its last owner deleted (and marked by writing into it) is stale:
    /// open the new one and try again.
    pub fn acquire(path: &Path, wait: bool) -> Result<Option<Self>> {
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::CLOEXEC.bits() as i32)
                .open(path)
                .map_err(io_err("opening lock file", path))?;
            let op = if wait {
                FlockOperation::LockExclusive
            } else {
                FlockOperation::NonBlockingLockExclusive
            };
            match flock(&file, op) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) if !wait => return Ok(None),
                Err(e) => return Err(io_err("locking", path)(e.into())),
            }
            let len = file
                .metadata()
                .map_err(io_err("reading lock file", path))?
                .len();
            if len != 0 {
                // The previous holder unlinked this file after we opened it.
                continue;
            }
            return Ok(Some(Self {
                file,
                path: path.to_owned(),
            }));
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // Waiters holding the old file see it non-empty and reopen.
        let _ = self.file.write_all(b"d");
        // Closing the file releases the flock.
    }
}

/// A shared or exclusive lock held for a while (the big lock, the GC lock, temp roots).
#[derive(Debug)]
pub struct FileLock {
    /// Held open for the lock's lifetime; closing it releases the lock.
    file: File,
}

impl FileLock {
    pub fn open(path: &Path) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err("opening lock file", path))
    }

    /// Lock `path`; `shared` or exclusive; `None` when `!wait` and it is held.
    pub fn acquire(path: &Path, shared: bool, wait: bool) -> Result<Option<Self>> {
        let file = Self::open(path)?;
        let op = match (shared, wait) {
            (true, true) => FlockOperation::LockShared,
            (true, false) => FlockOperation::NonBlockingLockShared,
            (false, true) => FlockOperation::LockExclusive,
            (false, false) => FlockOperation::NonBlockingLockExclusive,
        };
        match flock(&file, op) {
            Ok(()) => Ok(Some(Self { file })),
            Err(rustix::io::Errno::WOULDBLOCK) if !wait => Ok(None),
            Err(e) => Err(io_err("locking", path)(e.into())),
        }
    }
}

impl FileLock {
    /// Turn a shared lock into an exclusive one if nobody else holds it; `false` otherwise,
    /// and the lock is shared again. (A failed conversion drops the old lock, see flock(2),
    /// so the shared lock is taken anew, waiting out any exclusive holder.)
    pub fn try_upgrade(&self) -> std::io::Result<bool> {
        match flock(&self.file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                flock(&self.file, FlockOperation::LockShared)?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Turn an exclusive lock back into a shared one.
    pub fn downgrade(&self) -> std::io::Result<()> {
        flock(&self.file, FlockOperation::LockShared).map_err(Into::into)
    }
}

/// Within one process: threads that hold path locks (readers) against a thread that writes
/// paths without them while it is the store's only user (the writer).
#[derive(Debug, Default)]
pub struct SoleGate {
    state: std::sync::Mutex<(usize, bool)>,
    cv: std::sync::Condvar,
}

/// A thread's permission to hold path locks; while any exists, no sole writer starts.
#[derive(Debug)]
pub struct GateReader(std::sync::Arc<SoleGate>);

/// The permission to write without path locks; no thread of this process holds any.
#[derive(Debug)]
pub struct GateWriter<'a>(&'a SoleGate);

impl SoleGate {
    fn state(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until no sole writer runs, then count as a reader.
    pub fn read(self: &std::sync::Arc<Self>) -> GateReader {
        let mut g = self.state();
        while g.1 {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.0 += 1;
        GateReader(self.clone())
    }

    /// Become the sole writer if no reader or writer is active; never waits.
    pub fn try_write(&self) -> Option<GateWriter<'_>> {
        let mut g = self.state();
        if g.0 != 0 || g.1 {
            return None;
        }
        g.1 = true;
        Some(GateWriter(self))
    }
}

impl Drop for GateReader {
    fn drop(&mut self) {
        self.0.state().0 -= 1;
    }
}

impl Drop for GateWriter<'_> {
    fn drop(&mut self) {
        self.0.state().1 = false;
        self.0.cv.notify_all();
    }
}
