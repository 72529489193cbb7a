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
    _file: File,
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
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) if !wait => Ok(None),
            Err(e) => Err(io_err("locking", path)(e.into())),
        }
    }
}
