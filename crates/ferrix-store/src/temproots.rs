//! Temporary GC roots: paths a running process is creating or using, kept alive for its lifetime.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{io_err, Result};
use crate::lock::FileLock;

/// This process's `<state>/temproots/<pid>` file, exclusively locked while the process lives.
#[derive(Debug)]
pub struct TempRoots {
    file: File,
    path: PathBuf,
    /// `<state>/gc.lock`, kept open: every root is written under a shared lock on it.
    gc_lock: File,
}

impl TempRoots {
    /// This process's file.
    pub fn create(state_dir: &Path) -> Result<Self> {
        Self::create_named(state_dir, &std::process::id().to_string())
    }

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
