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

/// Make new trees under `store` durable, names included. A few plain files and directories
/// are synced one by one (with `store` itself); anything larger, or holding symlinks (whose
/// inodes cannot be synced on their own), syncs the whole file system, once.
pub fn sync_trees(trees: &[std::path::PathBuf], store: &Path) -> Result<()> {
    const FEW: usize = 16;
    let mut todo: Vec<std::path::PathBuf> = trees.to_vec();
    let mut entries = Vec::new();
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).map_err(io_err("reading", &p))?;
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
