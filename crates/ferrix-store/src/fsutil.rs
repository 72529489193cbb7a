//! File system helpers the store needs: deleting read-only trees, syncing directories, and
//! the walk that deletion and canonicalisation share.
//!
//! The walk keeps its own stack and reaches every entry by name from its parent's descriptor
//! ([`DirStack`], a bounded number of them open), so trees of any depth and any length of
//! full path are handled, and no symlink is ever followed: each entry is acted on itself.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ferrix_format::nar::{DirStack, DIR_FLAGS};
use rustix::fs::{openat, statat, unlinkat, AtFlags, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

use crate::error::{io_err, Result, StoreError};

/// What failed (for the message) and why; the walk adds the path.
pub(crate) type Fail = (&'static str, io::Error);

/// What a [`Visit`] did with one entry.
pub(crate) enum Step<D> {
    /// Done with it (or it had vanished).
    Done,
    /// A directory, open at the descriptor (with [`DIR_FLAGS`]): walk its entries, then
    /// leave it.
    Enter(OwnedFd, D),
}

/// The actions of one walk over a tree. Every entry is named relative to the open directory
/// that holds it, which is never reached through a symlink.
pub(crate) trait Visit {
    /// What the walk keeps for each directory it is in.
    type Dir;
    /// Act on the entry `name` of `dir`; `ty` is what the directory listing said of it
    /// ([`FileType::Unknown`] for the root, or when the file system does not say).
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        ty: FileType,
    ) -> std::result::Result<Step<Self::Dir>, Fail>;
    /// Every entry of the directory open at `fd` is done.
    fn leave(&mut self, fd: BorrowedFd<'_>, d: &Self::Dir) -> std::result::Result<(), Fail>;
    /// The directory `name` of `parent` was left, its descriptor closed.
    fn left(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        d: Self::Dir,
    ) -> std::result::Result<(), Fail>;
}

/// Buffer for reading directories (`getdents`).
const DIRBUF: usize = 32 * 1024;

/// One entry of a directory being walked: its name, NUL included, in the shared `names`.
#[derive(Clone, Copy)]
struct Ent {
    start: usize,
    end: usize,
    ty: FileType,
}

/// A directory being walked: its entries in the shared `ents`, the next one to visit.
struct Frame<D> {
    ents_start: usize,
    next: usize,
    names_start: usize,
    /// Length of the relative path of this directory (for messages).
    rel_len: usize,
    dir: D,
}

/// `root` joined with a relative path of `/`-separated names.
fn full_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_owned()
    } else {
        root.join(std::ffi::OsStr::from_bytes(rel))
    }
}

fn name_of<'a>(names: &'a [u8], e: &Ent) -> std::result::Result<&'a CStr, Fail> {
    names
        .get(e.start..e.end)
        .and_then(|n| CStr::from_bytes_with_nul(n).ok())
        .ok_or_else(|| ("reading", io::Error::other("bad entry name")))
}

/// Walk the tree at `root` (a directory or not) with `v`, depth first, each directory's
/// entries before the directory itself is left. With `missing_ok`, a `root` whose parent
/// does not exist is no error (the root itself is `v`'s to look up).
pub(crate) fn walk<V: Visit>(root: &Path, v: &mut V, missing_ok: bool) -> Result<()> {
    let fail = |rel: &[u8], (what, e): Fail| StoreError::Io {
        what,
        path: full_path(root, rel),
        source: e,
    };
    let Some(root_name) = root.file_name() else {
        return Err(fail(
            b"",
            (
                "walking",
                io::Error::new(io::ErrorKind::InvalidInput, "the path has no last name"),
            ),
        ));
    };
    let root_name = CString::new(root_name.as_bytes()).map_err(|e| {
        fail(
            b"",
            ("walking", io::Error::new(io::ErrorKind::InvalidInput, e)),
        )
    })?;
    let parent = match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // The directory holding the root: reached by path (as the caller named it), held with
    // `O_PATH`, which needs no permission to read it.
    let base = match rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) if missing_ok => return Ok(()),
        Err(e) => return Err(io_err("opening", parent)(e.into())),
    };
    let mut rel: Vec<u8> = Vec::new();
    let mut names: Vec<u8> = Vec::new();
    let mut ents: Vec<Ent> = Vec::new();
    let mut frames: Vec<Frame<V::Dir>> = Vec::new();
    let mut dirs = DirStack::new();
    let mut dirbuf: Vec<u8> = Vec::new();

    // Read the entries of the directory open at `fd` and push it.
    let mut enter = |fd: OwnedFd,
                     d: V::Dir,
                     rel: &[u8],
                     names: &mut Vec<u8>,
                     ents: &mut Vec<Ent>,
                     frames: &mut Vec<Frame<V::Dir>>,
                     dirs: &mut DirStack|
     -> Result<()> {
        let names_start = names.len();
        let ents_start = ents.len();
        if dirbuf.capacity() == 0 {
            dirbuf = Vec::with_capacity(DIRBUF);
        }
        let mut it = RawDir::new(&fd, dirbuf.spare_capacity_mut());
        while let Some(e) = it.next() {
            let e = e.map_err(|e| fail(rel, ("reading directory", e.into())))?;
            let name = e.file_name().to_bytes_with_nul();
            if name == b".\0" || name == b"..\0" {
                continue;
            }
            ents.push(Ent {
                start: names.len(),
                end: names.len() + name.len(),
                ty: e.file_type(),
            });
            names.extend_from_slice(name);
        }
        frames.push(Frame {
            ents_start,
            next: ents_start,
            names_start,
            rel_len: rel.len(),
            dir: d,
        });
        dirs.push(fd)
            .map_err(|e| fail(rel, ("opening directory", e)))
    };

    match v
        .entry(base.as_fd(), &root_name, FileType::Unknown)
        .map_err(|e| fail(&rel, e))?
    {
        Step::Done => return Ok(()),
        Step::Enter(fd, d) => enter(fd, d, &rel, &mut names, &mut ents, &mut frames, &mut dirs)?,
    }
    let no_dir = |rel: &[u8]| {
        fail(
            rel,
            ("reading", io::Error::other("its directory is not open")),
        )
    };
    while let Some(top) = frames.last_mut() {
        if top.next == ents.len() {
            // Every entry is done: leave the directory, then let its parent act on it.
            let Some(frame) = frames.pop() else { break };
            names.truncate(frame.names_start);
            ents.truncate(frame.ents_start);
            let fd = dirs.top().ok_or_else(|| no_dir(&rel))?;
            v.leave(fd, &frame.dir).map_err(|e| fail(&rel, e))?;
            dirs.pop().map_err(|e| fail(&rel, ("leaving", e)))?;
            match frames.last() {
                Some(pf) => {
                    let parent = dirs.top().ok_or_else(|| no_dir(&rel))?;
                    let ent = pf
                        .next
                        .checked_sub(1)
                        .and_then(|i| ents.get(i))
                        .ok_or_else(|| fail(&rel, ("reading", io::Error::other("lost entry"))))?;
                    let name = name_of(&names, ent).map_err(|e| fail(&rel, e))?;
                    v.left(parent, name, frame.dir).map_err(|e| fail(&rel, e))?;
                    rel.truncate(pf.rel_len);
                }
                None => {
                    v.left(base.as_fd(), &root_name, frame.dir)
                        .map_err(|e| fail(&rel, e))?;
                }
            }
            continue;
        }
        let Some(&ent) = ents.get(top.next) else {
            break;
        };
        top.next += 1;
        let rel_len = top.rel_len;
        let name = name_of(&names, &ent).map_err(|e| fail(&rel, e))?;
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.to_bytes());
        let dir = dirs.top().ok_or_else(|| no_dir(&rel))?;
        match v.entry(dir, name, ent.ty).map_err(|e| fail(&rel, e))? {
            Step::Done => rel.truncate(rel_len),
            Step::Enter(fd, d) => {
                enter(fd, d, &rel, &mut names, &mut ents, &mut frames, &mut dirs)?
            }
        }
    }
    Ok(())
}

/// Make the directory `name` of `dir` accessible (`mode`) when it cannot be opened as it is:
/// it is held by `O_PATH` (never through a symlink), and changed through its descriptor.
pub(crate) fn chmod_unreadable_dir(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: u32,
) -> std::result::Result<(), Fail> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty()).map_err(|e| ("opening", e.into()))?;
    rustix::fs::chmod(proc_fd(fd.as_fd()), Mode::from_raw_mode(mode))
        .map_err(|e| ("setting permissions of", e.into()))
}

/// `/proc/self/fd/N`: the file open at `fd`, reached by path.
pub(crate) fn proc_fd(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Deletes what it walks, adding up apparent sizes.
struct Deleter {
    freed: u64,
}

fn unlink(dir: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> std::result::Result<(), Fail> {
    match unlinkat(dir, name, flags) {
        // Someone else (a concurrent recovery) got there first.
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(("deleting", e.into())),
    }
}

impl Visit for Deleter {
    type Dir = ();

    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        _ty: FileType,
    ) -> std::result::Result<Step<()>, Fail> {
        let st = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Step::Done),
            Err(e) => return Err(("reading", e.into())),
        };
        // A file's last link frees its space; so does, most likely, its last but one when the
        // store is deduplicated (the other is in `.links`, removed after), as Nix counts.
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory && st.st_nlink <= 2 {
            self.freed += u64::try_from(st.st_size).unwrap_or_default();
        }
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return unlink(dir, name, AtFlags::empty()).map(|()| Step::Done);
        }
        let fd = match openat(dir, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(Step::Done),
            // Replaced by something else meanwhile: that goes instead.
            Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                return unlink(dir, name, AtFlags::empty()).map(|()| Step::Done)
            }
            Err(Errno::ACCESS) => {
                chmod_unreadable_dir(dir, name, 0o755)?;
                openat(dir, name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| ("reading directory", e.into()))?
            }
            Err(e) => return Err(("reading directory", e.into())),
        };
        if st.st_mode & 0o700 != 0o700 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                .map_err(|e| ("making writable", e.into()))?;
        }
        Ok(Step::Enter(fd, ()))
    }

    fn leave(&mut self, _fd: BorrowedFd<'_>, _d: &()) -> std::result::Result<(), Fail> {
        Ok(())
    }

    fn left(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        _d: (),
    ) -> std::result::Result<(), Fail> {
        unlink(parent, name, AtFlags::REMOVEDIR)
    }
}

/// Delete a file or a whole tree, including store trees whose directories are read-only.
/// A path that does not exist is not an error. Returns the bytes freed (apparent sizes).
///
/// Any depth is handled, and symlinks in the tree are deleted, never followed.
pub fn delete_path(path: &Path) -> Result<u64> {
    let mut d = Deleter { freed: 0 };
    walk(path, &mut d, true)?;
    Ok(d.freed)
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Flush everything written to the file system that holds `dir` (one call per batch).
pub fn sync_fs(dir: &Path) -> Result<()> {
    let f = fs::File::open(dir).map_err(io_err("opening", dir))?;
    rustix::fs::syncfs(&f).map_err(|e| io_err("syncing the file system of", dir)(e.into()))
}

/// Make new trees under `store` durable, names included. A few plain files and directories
/// are synced one by one (with `store` itself); anything larger, or holding symlinks (whose
/// inodes cannot be synced on their own), syncs the whole file system, once.
pub fn sync_trees(trees: &[std::path::PathBuf], store: &Path) -> Result<()> {
    const FEW: usize = 16;
    let mut todo: Vec<std::path::PathBuf> = trees.to_vec();
    let mut entries = Vec::new();
    while let Some(p) = todo.pop() {
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            // Few entries, but very long names: the whole file system then.
            Err(e) if e.raw_os_error() == Some(Errno::NAMETOOLONG.raw_os_error()) => {
                return sync_fs(store)
            }
            Err(e) => return Err(io_err("reading", &p)(e)),
        };
        if m.file_type().is_symlink() || entries.len() >= FEW {
            return sync_fs(store);
        }
        if m.is_dir() {
            for e in fs::read_dir(&p).map_err(io_err("reading directory", &p))? {
                todo.push(e.map_err(io_err("reading directory", &p))?.path());
            }
        }
        entries.push(p);
    }
    entries.push(store.to_owned());
    for p in &entries {
        fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(io_err("syncing", p))?;
    }
    Ok(())
}
