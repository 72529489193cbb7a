//! Writing a NAR straight to its final place in the store, canonical as it is written.
//!
//! Staging a tree elsewhere and renaming it costs a rename and a pass of `chmod`/`utimes`
//! per file; for the many small paths of an import that is most of the work. Here each file
//! is created with its final mode, its times are set through the open descriptor, and each
//! directory is made read-only once its last entry exists. The caller holds the path's lock
//! and has recorded its intent, so a crash midway leaves nothing that recovery keeps.

use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use ferrix_format::nar::{self, NarVisitor};
use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};

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
}

impl Placer<'_> {
    /// Entry names were checked by the parser (no `/`, `.`, `..`, NUL) and every directory on
    /// the way was created by this placement, so the path stays inside the target.
    fn at(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.target.clone()
        } else {
            self.target.join(OsStr::from_bytes(rel))
        }
    }
}

fn ctx(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} '{}': {e}", path.display()))
}

impl NarVisitor for Placer<'_> {
    fn directory(&mut self, rel: &[u8]) -> io::Result<()> {
        let p = self.at(rel);
        fs::create_dir(&p).map_err(|e| ctx("creating", &p, e))?;
        if *UMASK & 0o700 != 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                .map_err(|e| ctx("setting permissions of", &p, e))?;
        }
        Ok(())
    }

    fn end_directory(&mut self, rel: &[u8]) -> io::Result<()> {
        let p = self.at(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o555))
            .map_err(|e| ctx("setting permissions of", &p, e))?;
        utimensat(CWD, &p, &store_timestamps(), AtFlags::empty())
            .map_err(|e| ctx("setting the time of", &p, e.into()))
    }

    fn regular(
        &mut self,
        rel: &[u8],
        executable: bool,
        _size: u64,
        _offset: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let p = self.at(rel);
        let mode = if executable { 0o555 } else { 0o444 };
        // create_new is O_EXCL: it never follows or replaces an existing entry. Writing
        // through the descriptor works although the mode is read-only.
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&p)
            .map_err(|e| ctx("creating", &p, e))?;
        io::copy(contents, &mut f).map_err(|e| ctx("writing", &p, e))?;
        if *UMASK & 0o555 != 0 {
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| ctx("setting permissions of", &p, e))?;
        }
        f.set_times(
            FileTimes::new()
                .set_accessed(store_time())
                .set_modified(store_time()),
        )
        .map_err(|e| ctx("setting the time of", &p, e))
    }

    fn symlink(&mut self, rel: &[u8], target: &[u8]) -> io::Result<()> {
        let p = self.at(rel);
        symlink(OsStr::from_bytes(target), &p).map_err(|e| ctx("creating", &p, e))?;
        utimensat(CWD, &p, &store_timestamps(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ctx("setting the time of", &p, e.into()))
    }
}

/// Write the (already validated) NAR `bytes` at `dest`, canonical. A leftover at `dest`
/// (from a process that died before registering it; the caller holds the lock) is replaced.
pub(crate) fn place_nar(bytes: &[u8], dest: &PathBuf) -> Result<()> {
    let attempt = |what: &str| {
        nar::parse_exact(bytes, &mut Placer { target: dest }).map_err(|source| StoreError::Nar {
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
