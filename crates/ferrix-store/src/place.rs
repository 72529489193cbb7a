//! Writing a NAR straight to its final place in the store, canonical as it is written.
//!
//! Staging a tree elsewhere and renaming it costs a rename and a pass of `chmod`/`utimes`
//! per file; for the many small paths of an import that is most of the work. Here each file
//! is created with its final mode, its times are set through the open descriptor, and each
//! directory is made read-only once its last entry exists. The caller holds the path's lock
//! and has recorded its intent, so a crash midway leaves nothing that recovery keeps.
//!
//! Every entry is created by name in its parent's descriptor (as `nar::restore` does), so
//! neither the depth of the tree nor the length of its full paths is limited.

use std::ffi::OsStr;
use std::fs::{self, FileTimes};
use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use ferrix_format::nar::{self, DirStack, NarVisitor, DIR_FLAGS};
use rustix::fs::{
    fchmod, futimens, mkdirat, openat, symlinkat, utimensat, AtFlags, Mode, Timespec, Timestamps,
    CWD,
};

use crate::canon::MTIME_STORE;
use crate::error::{io_err, Result, StoreError};
use crate::fsutil::delete_path;

/// The process's umask, read once: when it strips bits from 0444/0555/0755, modes are set
/// explicitly after creation.
static UMASK: LazyLock<u32> = LazyLock::new(|| {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o777)
});

fn store_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME_STORE as u64)
}

fn store_timestamps() -> Timestamps {
    let t = Timespec {
        tv_sec: MTIME_STORE,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

struct Placer<'a> {
    target: &'a PathBuf,
    /// The directories being written, innermost last: every entry is created by name in its
    /// parent, so neither depth nor the length of the full path is limited.
    dirs: DirStack,
}

impl Placer<'_> {
    /// Entry names were checked by the parser (no `/`, `.`, `..`, NUL) and every directory on
    /// the way was created by this placement, so the path stays inside the target. Used for
    /// messages only.
    fn at(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.target.clone()
        } else {
            self.target.join(OsStr::from_bytes(rel))
        }
    }

    /// The directory that holds `rel` (not the root), and the last component of `rel`.
    fn parent<'r>(&self, rel: &'r [u8]) -> io::Result<(BorrowedFd<'_>, &'r [u8])> {
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or(rel);
        match self.dirs.top() {
            Some(fd) => Ok((fd, name)),
            None => Err(ctx(
                "creating",
                &self.at(rel),
                io::Error::other("its directory is not open"),
            )),
        }
    }
}

fn ctx(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} '{}': {e}", path.display()))
}

impl NarVisitor for Placer<'_> {
    fn directory(&mut self, rel: &[u8]) -> io::Result<()> {
        let fd = if rel.is_empty() {
            fs::create_dir(self.target).map_err(|e| ctx("creating", self.target, e))?;
            rustix::fs::open(self.target, DIR_FLAGS, Mode::empty())
        } else {
            let (parent, name) = self.parent(rel)?;
            mkdirat(parent, name, Mode::from_raw_mode(0o755))
                .and_then(|()| openat(parent, name, DIR_FLAGS, Mode::empty()))
        };
        let fd = fd.map_err(|e| ctx("creating", &self.at(rel), e.into()))?;
        if *UMASK & 0o700 != 0 {
            fchmod(&fd, Mode::from_raw_mode(0o755))
                .map_err(|e| ctx("setting permissions of", &self.at(rel), e.into()))?;
        }
        self.dirs
            .push(fd)
            .map_err(|e| ctx("creating", &self.at(rel), e))
    }

    fn end_directory(&mut self, rel: &[u8]) -> io::Result<()> {
        let Some(fd) = self.dirs.top() else {
            return Err(ctx(
                "creating",
                &self.at(rel),
                io::Error::other("the directory is not open"),
            ));
        };
        fchmod(fd, Mode::from_raw_mode(0o555))
            .map_err(|e| ctx("setting permissions of", &self.at(rel), e.into()))?;
        futimens(fd, &store_timestamps())
            .map_err(|e| ctx("setting the time of", &self.at(rel), e.into()))?;
        self.dirs
            .pop()
            .map_err(|e| ctx("creating", &self.at(rel), e))
    }

    fn regular(
        &mut self,
        rel: &[u8],
        executable: bool,
        _size: u64,
        _offset: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let mode = if executable { 0o555 } else { 0o444 };
        // Never follows or replaces an existing entry. Writing through the descriptor works
        // although the mode is read-only.
        let f = self.dirs.create_file(self.target, rel, mode);
        let mut f = f.map_err(|e| ctx("creating", &self.at(rel), e))?;
        io::copy(contents, &mut f).map_err(|e| ctx("writing", &self.at(rel), e))?;
        if *UMASK & 0o555 != 0 {
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| ctx("setting permissions of", &self.at(rel), e))?;
        }
        f.set_times(
            FileTimes::new()
                .set_accessed(store_time())
                .set_modified(store_time()),
        )
        .map_err(|e| ctx("setting the time of", &self.at(rel), e))
    }

    fn symlink(&mut self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        let made = if rel.is_empty() {
            symlink(OsStr::from_bytes(target), self.target).and_then(|()| {
                utimensat(
                    CWD,
                    self.target,
                    &store_timestamps(),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io::Error::from)
            })
        } else {
            let (parent, name) = self.parent(rel)?;
            symlinkat(target, parent, name)
                .and_then(|()| {
                    utimensat(parent, name, &store_timestamps(), AtFlags::SYMLINK_NOFOLLOW)
                })
                .map_err(io::Error::from)
        };
        made.map_err(|e| ctx("creating", &self.at(rel), e))
    }
}

/// Write the (already validated) NAR `bytes` at `dest`, canonical. A leftover at `dest`
/// (from a process that died before registering it; the caller holds the lock) is replaced.
pub(crate) fn place_nar(bytes: &[u8], dest: &PathBuf) -> Result<()> {
    let attempt = |what: &str| {
        nar::parse_exact(
            bytes,
            &mut Placer {
                target: dest,
                dirs: DirStack::new(),
            },
        )
        .map_err(|source| StoreError::Nar {
            path: format!("{what} '{}'", dest.display()),
            source,
        })
    };
    match attempt("writing") {
        Ok(_) => Ok(()),
        Err(_) if fs::symlink_metadata(dest).is_ok() => {
            // Either a leftover was in the way, or this attempt got partway: start over.
            delete_path(dest)?;
            attempt("writing").map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// The contents of a NAR whose root is a regular file (`None` for anything else).
pub(crate) fn nar_file_contents(bytes: &[u8]) -> Option<Vec<u8>> {
    struct Grab(Option<Vec<u8>>);
    impl NarVisitor for Grab {
        fn directory(&mut self, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn regular(
            &mut self,
            rel: &[u8],
            _: bool,
            size: u64,
            _: u64,
            contents: &mut dyn Read,
        ) -> io::Result<()> {
            if rel.is_empty() {
                let mut v = Vec::with_capacity(size.min(1 << 24) as usize);
                contents.read_to_end(&mut v)?;
                self.0 = Some(v);
            }
            Ok(())
        }
        fn symlink(&mut self, _: &[u8], _: &[u8]) -> io::Result<()> {
            Ok(())
        }
    }
    let mut g = Grab(None);
    nar::parse_exact(bytes, &mut g).ok()?;
    g.0
}

/// Whether new files in `dir` inherit ACLs (a default ACL on it): then placed trees still
/// need the full canonicalisation pass, which strips extended attributes.
pub(crate) fn inherits_acl(dir: &Path) -> Result<bool> {
    match rustix::fs::lgetxattr_query(dir, "system.posix_acl_default") {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => Ok(false),
        Err(e) => Err(io_err("reading the default ACL of", dir)(e.into())),
    }
}
