//! The directories along the path being walked, as descriptors: entries are reached by name
//! from their parent (`openat`), so neither depth nor the length of the full path matters,
//! and at most [`WINDOW`] descriptors are open at once, whatever the depth.
//!
//! Public so that other walks of trees (the store's canonicalisation and deletion) share it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::{openat, Mode, OFlags};

/// Descriptors kept open per walk; deeper levels are closed and reopened through `..`.
const WINDOW: usize = 32;

/// Flags to open a directory for reading its entries and reaching them by name: never
/// through a symlink (`O_NOFOLLOW`), and only a directory (`O_DIRECTORY`).
pub const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

#[derive(Debug)]
struct Level {
    fd: Option<OwnedFd>,
    /// Device and inode, recorded when the descriptor is closed, to check the reopened one.
    id: (u64, u64),
}

/// A stack of directory descriptors, innermost last; `levels[first_open..]` are open.
///
/// A walk opens each directory by name from the one on top ([`DirStack::top`]) with
/// [`DIR_FLAGS`], pushes it, and pops it when done with it; popping back to a level whose
/// descriptor was closed reopens it through `..` and checks it is the same directory.
#[derive(Debug)]
pub struct DirStack {
    levels: Vec<Level>,
    first_open: usize,
}

fn identity(fd: OwnedFd) -> io::Result<(OwnedFd, (u64, u64))> {
    let f = File::from(fd);
    let m = f.metadata()?;
    Ok((OwnedFd::from(f), (m.dev(), m.ino())))
}

impl Default for DirStack {
    fn default() -> Self {
        Self::new()
    }
}

impl DirStack {
    /// An empty stack.
    pub fn new() -> Self {
        DirStack {
            levels: Vec::new(),
            first_open: 0,
        }
    }

    /// Create the regular file for the NAR entry at `rel` (`/`-separated, empty for the root,
    /// which is `target` itself) with `mode`, exclusively: never through or over an existing
    /// entry, a symlink included. A non-root entry is made in the innermost directory.
    pub fn create_file(&self, target: &Path, rel: &[u8], mode: u32) -> io::Result<File> {
        if rel.is_empty() {
            // create_new is O_EXCL: it fails on any existing entry, a symlink included.
            return OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(target);
        }
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
        let parent = self
            .top()
            .ok_or_else(|| io::Error::other("its directory is not open"))?;
        let flags = OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        openat(parent, name, flags, Mode::from_raw_mode(mode))
            .map(File::from)
            .map_err(io::Error::from)
    }

    /// The innermost directory.
    pub fn top(&self) -> Option<BorrowedFd<'_>> {
        self.levels
            .last()
            .and_then(|l| l.fd.as_ref())
            .map(|fd| fd.as_fd())
    }

    /// Enter `fd`, a directory inside the current one.
    pub fn push(&mut self, fd: OwnedFd) -> io::Result<()> {
        if self.levels.len() - self.first_open >= WINDOW {
            let oldest = &mut self.levels[self.first_open];
            if let Some(old) = oldest.fd.take() {
                let (old, id) = identity(old)?;
                drop(old);
                oldest.id = id;
            }
            self.first_open += 1;
        }
        self.levels.push(Level {
            fd: Some(fd),
            id: (0, 0),
        });
        Ok(())
    }

    /// Leave the innermost directory. When its parent's descriptor was closed, the parent is
    /// reopened through `..` and must be the very directory it was (device and inode); if it
    /// is not (the tree was moved meanwhile), the error says so.
    pub fn pop(&mut self) -> io::Result<()> {
        let Some(child) = self.levels.pop() else {
            return Ok(());
        };
        let n = self.levels.len();
        if n > 0 && self.first_open >= n {
            let child = child
                .fd
                .ok_or_else(|| io::Error::other("directory descriptor missing"))?;
            let fd = openat(&child, "..", DIR_FLAGS, Mode::empty())?;
            let (fd, id) = identity(fd)?;
            let parent = &mut self.levels[n - 1];
            if id != parent.id {
                return Err(io::Error::other(
                    "the directory was moved or replaced while it was being read",
                ));
            }
            parent.fd = Some(fd);
            self.first_open = n - 1;
        }
        self.first_open = self.first_open.min(self.levels.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(depth: usize) -> (tempfile::TempDir, DirStack) {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = tmp.path().join("root");
        std::fs::create_dir(&p).unwrap();
        for _ in 0..depth {
            p.push("d");
            std::fs::create_dir(&p).unwrap();
        }
        let mut s = DirStack::new();
        s.push(rustix::fs::open(tmp.path().join("root"), DIR_FLAGS, Mode::empty()).unwrap())
            .unwrap();
        for _ in 0..depth {
            let fd = openat(s.top().unwrap(), "d", DIR_FLAGS, Mode::empty()).unwrap();
            s.push(fd).unwrap();
        }
        (tmp, s)
    }

    #[test]
    fn window_bounds_open_descriptors_and_reopens_through_dotdot() {
        let depth = 3 * WINDOW;
        let (tmp, mut s) = chain(depth);
        assert_eq!(s.levels.iter().filter(|l| l.fd.is_some()).count(), WINDOW);
        for _ in 0..depth {
            s.pop().unwrap();
        }
        let root = std::fs::metadata(tmp.path().join("root")).unwrap();
        let top = File::from(s.top().unwrap().try_clone_to_owned().unwrap());
        let m = top.metadata().unwrap();
        assert_eq!((m.dev(), m.ino()), (root.dev(), root.ino()));
        s.pop().unwrap();
        assert!(s.top().is_none());
    }

    #[test]
    fn directory_moved_under_a_closed_level_is_detected() {
        let depth = WINDOW + 8;
        let (tmp, mut s) = chain(depth);
        // Levels 0..=8 are closed; move level 8 (and all below it) elsewhere.
        let level8 = tmp
            .path()
            .join("root")
            .join("d/".repeat(8).trim_end_matches('/'));
        std::fs::rename(&level8, tmp.path().join("moved")).unwrap();
        // Back up to level 8 itself: it moved whole, so it is still the same directory.
        for _ in 0..(depth - 8) {
            s.pop().unwrap();
        }
        // Its parent through `..` is now the temporary directory, not level 7.
        let err = s.pop().unwrap_err();
        assert!(err.to_string().contains("moved"), "{err}");
    }
}
