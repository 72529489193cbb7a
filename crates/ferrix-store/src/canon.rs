//! Canonical store contents: mtime 1, modes 0444/0555, no setuid, no xattrs, our owner.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::{llistxattr, lremovexattr, utimensat, AtFlags, Timespec, Timestamps, CWD};

use crate::error::{io_err, Result};

/// The modification time of everything in the store (Nix's `mtimeStore`).
pub const MTIME_STORE: i64 = 1;

/// Make the tree at `path` canonical. Durability is the caller's: the store syncs the whole
/// file system once per batch of new paths (`syncfs`), far cheaper than a fsync per file.
pub fn canonicalise(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(io_err("reading", path))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path)
            .map_err(io_err("reading directory", path))?
            .collect::<std::io::Result<_>>()
            .map_err(io_err("reading directory", path))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            canonicalise(&e.path())?;
        }
    }
    remove_xattrs(path)?;
    // Contents written by someone else (a builder running as another user) become ours, as
    // Nix does; only root can do this, and only then can such files exist in the first place.
    let euid = rustix::process::geteuid();
    if std::os::unix::fs::MetadataExt::uid(&meta) != euid.as_raw() {
        rustix::fs::chownat(
            CWD,
            path,
            Some(euid),
            Some(rustix::process::getegid()),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err("changing the owner of", path)(e.into()))?;
    }
    if !ft.is_symlink() {
        let exec = ft.is_dir() || meta.permissions().mode() & 0o100 != 0;
        let mode = if exec { 0o555 } else { 0o444 };
        if meta.permissions().mode() & 0o7777 != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(io_err("setting permissions of", path))?;
        }
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: MTIME_STORE,
            tv_nsec: 0,
        },
        last_modification: Timespec {
            tv_sec: MTIME_STORE,
            tv_nsec: 0,
        },
    };
    utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_err("setting the time of", path)(e.into()))?;
    Ok(())
}

/// Extended attributes (and ACLs, which live in them) do not belong in the store; SELinux
/// labels and NFSv4 ACLs cannot be removed and are left alone, as Nix does.
fn remove_xattrs(path: &Path) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    let n = match llistxattr(path, &mut buf) {
        Ok(n) => n,
        // No xattr support on this file system, or a list too long to care about here.
        Err(rustix::io::Errno::NOTSUP) | Err(rustix::io::Errno::RANGE) => return Ok(()),
        Err(e) => return Err(io_err("listing extended attributes of", path)(e.into())),
    };
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name == b"security.selinux" || name == b"system.nfs4_acl" {
            continue;
        }
        let cname = std::ffi::CString::new(name).unwrap_or_default();
        lremovexattr(path, cname.as_c_str())
            .map_err(|e| io_err("removing extended attributes of", path)(e.into()))?;
    }
    Ok(())
}
