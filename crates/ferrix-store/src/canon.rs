//! Canonical store contents: mtime 1, modes 0444/0555, no setuid, no xattrs, our owner.
//!
//! The tree is walked through directory descriptors ([`crate::fsutil::walk`]), so any depth
//! is handled, and nothing in it is followed: a symlink is canonicalised itself (owner, times,
//! attributes), every other entry is changed through a descriptor opened without following
//! symlinks, so a link pointing out of the tree never leads a change elsewhere.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use ferrix_format::nar::DIR_FLAGS;
use rustix::fs::{
    chownat, fchmod, fchown, flistxattr, fremovexattr, fstat, futimens, listxattr, llistxattr,
    lremovexattr, openat, removexattr, statat, utimensat, AtFlags, FileType, Mode, OFlags, Stat,
    Timespec, Timestamps, CWD,
};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};

use crate::error::Result;
use crate::fsutil::{chmod_unreadable_dir, proc_fd, walk, Fail, Step, Visit};

/// The modification time of everything in the store (Nix's `mtimeStore`).
pub const MTIME_STORE: i64 = 1;

/// Make the tree at `path` canonical. Durability is the caller's: the store syncs the whole
/// file system once per batch of new paths (`syncfs`), far cheaper than a fsync per file.
pub fn canonicalise(path: &Path) -> Result<()> {
    let mut c = Canon {
        uid: rustix::process::geteuid(),
        gid: rustix::process::getegid(),
        xattrs: vec![0u8; 4096],
    };
    walk(path, &mut c, false)
}

struct Canon {
    uid: Uid,
    gid: Gid,
    /// Buffer for lists of extended attributes.
    xattrs: Vec<u8>,
}

/// How the metadata of one node is reached, each way acting on the node itself.
#[derive(Clone, Copy)]
enum Node<'a> {
    /// A descriptor of it.
    Fd(BorrowedFd<'a>),
    /// A path that resolves to it: `/proc/self/fd/N` of an `O_PATH` descriptor.
    Path(&'a CStr),
    /// A symlink: by name in its directory, not followed; its extended attributes through
    /// `proc`, `/proc/self/fd/<dir>/<name>`, not followed either.
    Link {
        dir: BorrowedFd<'a>,
        name: &'a CStr,
        proc: &'a CStr,
    },
}

fn store_times() -> Timestamps {
    let t = Timespec {
        tv_sec: MTIME_STORE,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn replaced() -> Fail {
    (
        "canonicalising",
        io::Error::other("it was replaced while it was being canonicalised"),
    )
}

fn c_path(s: impl Into<Vec<u8>>) -> std::result::Result<CString, Fail> {
    CString::new(s).map_err(|e| ("reading", io::Error::new(io::ErrorKind::InvalidInput, e)))
}

impl Canon {
    /// Give the node `st` describes the canonical owner, mode, times and no extended
    /// attributes.
    fn fix(&mut self, node: Node<'_>, st: &Stat) -> std::result::Result<(), Fail> {
        self.remove_xattrs(node)?;
        // Contents written by someone else (a builder running as another user) become ours,
        // as Nix does; only root can do this, and only then can such files exist at all.
        if st.st_uid != self.uid.as_raw() {
            let (u, g) = (Some(self.uid), Some(self.gid));
            match node {
                Node::Fd(fd) => fchown(fd, u, g),
                Node::Path(p) => chownat(CWD, p, u, g, AtFlags::empty()),
                Node::Link { dir, name, .. } => chownat(dir, name, u, g, AtFlags::SYMLINK_NOFOLLOW),
            }
            .map_err(|e| ("changing the owner of", e.into()))?;
        }
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft != FileType::Symlink {
            let exec = ft == FileType::Directory || st.st_mode & 0o100 != 0;
            let mode = if exec { 0o555 } else { 0o444 };
            if st.st_mode & 0o7777 != mode {
                let m = Mode::from_raw_mode(mode);
                match node {
                    Node::Fd(fd) => fchmod(fd, m),
                    Node::Path(p) => rustix::fs::chmod(p, m),
                    Node::Link { .. } => Ok(()),
                }
                .map_err(|e| ("setting permissions of", e.into()))?;
            }
        }
        let times = store_times();
        match node {
            Node::Fd(fd) => futimens(fd, &times),
            Node::Path(p) => utimensat(CWD, p, &times, AtFlags::empty()),
            Node::Link { dir, name, .. } => utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW),
        }
        .map_err(|e| ("setting the time of", e.into()))
    }

    /// Extended attributes (and ACLs, which live in them) do not belong in the store; SELinux
    /// labels and NFSv4 ACLs cannot be removed and are left alone, as Nix does.
    fn remove_xattrs(&mut self, node: Node<'_>) -> std::result::Result<(), Fail> {
        let buf = &mut self.xattrs[..];
        let listed = match node {
            Node::Fd(fd) => flistxattr(fd, &mut *buf),
            Node::Path(p) => listxattr(p, &mut *buf),
            Node::Link { proc, .. } => llistxattr(proc, &mut *buf),
        };
        let n = match listed {
            Ok(n) => n,
            // No xattr support on this file system, or a list too long to care about here.
            Err(Errno::NOTSUP) | Err(Errno::RANGE) => return Ok(()),
            Err(e) => return Err(("listing extended attributes of", e.into())),
        };
        for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if name == b"security.selinux" || name == b"system.nfs4_acl" {
                continue;
            }
            match node {
                Node::Fd(fd) => fremovexattr(fd, name),
                Node::Path(p) => removexattr(p, name),
                Node::Link { proc, .. } => lremovexattr(proc, name),
            }
            .map_err(|e| ("removing extended attributes of", e.into()))?;
        }
        Ok(())
    }

    /// The symlink `name` of `dir`, itself.
    fn link(&mut self, dir: BorrowedFd<'_>, name: &CStr) -> std::result::Result<(), Fail> {
        let st = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| ("reading", e.into()))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            return Err(replaced());
        }
        let mut proc = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        proc.extend_from_slice(name.to_bytes());
        let proc = c_path(proc)?;
        self.fix(
            Node::Link {
                dir,
                name,
                proc: &proc,
            },
            &st,
        )
    }

    /// Anything but a directory or symlink, held by `O_PATH` (opening it could have effects,
    /// or be refused) and changed through `/proc/self/fd/N`, which resolves to that very file.
    fn by_path(&mut self, dir: BorrowedFd<'_>, name: &CStr) -> std::result::Result<(), Fail> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = openat(dir, name, flags, Mode::empty()).map_err(|e| ("opening", e.into()))?;
        let st = fstat(&fd).map_err(|e| ("reading", e.into()))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => self.link(dir, name),
            FileType::Directory => Err(replaced()),
            _ => {
                let p = c_path(proc_fd(fd.as_fd()))?;
                self.fix(Node::Path(&p), &st)
            }
        }
    }
}

impl Visit for Canon {
    /// A directory's status when it was entered (its metadata is fixed when it is left).
    type Dir = Stat;

    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        ty: FileType,
    ) -> std::result::Result<Step<Stat>, Fail> {
        let ty = match ty {
            FileType::Directory | FileType::RegularFile | FileType::Symlink => ty,
            _ => statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| FileType::from_raw_mode(st.st_mode))
                .map_err(|e| ("reading", e.into()))?,
        };
        match ty {
            FileType::Directory => {
                let fd = match openat(dir, name, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::ACCESS) => {
                        chmod_unreadable_dir(dir, name, 0o755)?;
                        openat(dir, name, DIR_FLAGS, Mode::empty())
                            .map_err(|e| ("reading directory", e.into()))?
                    }
                    Err(Errno::NOTDIR) | Err(Errno::LOOP) => return Err(replaced()),
                    Err(e) => return Err(("reading directory", e.into())),
                };
                let st = fstat(&fd).map_err(|e| ("reading", e.into()))?;
                if st.st_mode & 0o500 != 0o500 {
                    // Readable but not searchable: its entries could not be reached.
                    fchmod(&fd, Mode::from_raw_mode((st.st_mode & 0o7777) | 0o500))
                        .map_err(|e| ("setting permissions of", e.into()))?;
                }
                Ok(Step::Enter(fd, st))
            }
            FileType::RegularFile => {
                let flags = OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC;
                match openat(dir, name, flags, Mode::empty()) {
                    Ok(fd) => {
                        let st = fstat(&fd).map_err(|e| ("reading", e.into()))?;
                        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                            return Err(replaced());
                        }
                        self.fix(Node::Fd(fd.as_fd()), &st)?;
                    }
                    // Not readable by us: changed without opening it.
                    Err(Errno::ACCESS) => self.by_path(dir, name)?,
                    Err(Errno::LOOP) => return Err(replaced()),
                    Err(e) => return Err(("opening", e.into())),
                }
                Ok(Step::Done)
            }
            FileType::Symlink => self.link(dir, name).map(|()| Step::Done),
            _ => self.by_path(dir, name).map(|()| Step::Done),
        }
    }

    fn leave(&mut self, fd: BorrowedFd<'_>, st: &Stat) -> std::result::Result<(), Fail> {
        self.fix(Node::Fd(fd), st)
    }

    fn left(&mut self, _: BorrowedFd<'_>, _: &CStr, _: Stat) -> std::result::Result<(), Fail> {
        Ok(())
    }
}
