//! File system helpers the store needs: deleting read-only trees, syncing directories.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{io_err, Result};

/// Delete a file or a whole tree, including store trees whose directories are read-only.
/// A path that does not exist is not an error. Returns the bytes freed (apparent sizes).
pub fn delete_path(path: &Path) -> Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("reading", path)(e)),
    };
    let mut freed = meta.len();
    if meta.is_dir() {
        if meta.permissions().mode() & 0o700 != 0o700 {
            match fs::set_permissions(path, fs::Permissions::from_mode(0o755)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(io_err("making writable", path)(e)),
            }
        }
        let entries = match fs::read_dir(path) {
            Ok(rd) => rd,
            // Someone else (a concurrent recovery) got there first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(freed),
            Err(e) => return Err(io_err("reading directory", path)(e)),
        };
        for e in entries {
            let e = e.map_err(io_err("reading directory", path))?;
            freed += delete_path(&e.path())?;
        }
        match fs::remove_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("deleting", path)(e)),
        }
    } else {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("deleting", path)(e)),
        }
    }
    Ok(freed)
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
