//! Build directories, made once and reused: an emptied one is renamed to the next build's
//! name. On a disk, making a directory and removing it are the costliest steps of a small
//! build: a new inode is searched for past the ones freed recently, and removing frees a
//! block (discarded at once on a file system mounted with `discard`). A rename is neither.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::env::build_dir_name;

/// The build directories of one executor and the emptied ones it keeps.
#[derive(Debug)]
pub struct BuildDirs {
    base: PathBuf,
    counter: AtomicU64,
    spare: Mutex<Vec<PathBuf>>,
    /// At most this many are kept; more are deleted.
    keep: usize,
}

/// One build's directory; [`BuildDir::release`] ends it.
#[derive(Debug)]
pub struct BuildDir {
    path: PathBuf,
    dirs: Arc<BuildDirs>,
}

impl BuildDirs {
    pub fn new(base: PathBuf, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            base,
            counter: AtomicU64::new(0),
            spare: Mutex::default(),
            keep,
        })
    }

    /// An empty directory `nix-build-<drv name>-<n>` (mode 0700, this process's), at the
    /// first free name, as Nix names them; or the one that could not be made, and why.
    pub fn make(self: &Arc<Self>, drv_name: &str) -> Result<BuildDir, (PathBuf, io::Error)> {
        loop {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let path = build_dir_name(&self.base, drv_name, n);
            let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
            if let Some(old) = spare {
                // Never over something already at that name.
                match rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &old,
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::RenameFlags::NOREPLACE,
                ) {
                    Ok(()) => return Ok(self.handle(path)),
                    Err(rustix::io::Errno::EXIST) => {
                        self.spare
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(old);
                        continue;
                    }
                    // A file system without that kind of rename: no reuse there.
                    Err(_) => {
                        let _ = ferrix_store::fsutil::delete_path(&old);
                    }
                }
            }
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(self.handle(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err((path, e)),
            }
        }
    }

    fn handle(self: &Arc<Self>, path: PathBuf) -> BuildDir {
        BuildDir {
            path,
            dirs: self.clone(),
        }
    }

    /// Empty `dir` and keep it, as its build left it a directory of this process's user;
    /// anything else is deleted.
    fn release(&self, dir: &Path) {
        let room = self.spare.lock().unwrap_or_else(|p| p.into_inner()).len() < self.keep;
        if room && empty_for_reuse(dir).is_ok() {
            self.spare
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(dir.to_owned());
            return;
        }
        let _ = ferrix_store::fsutil::delete_path(dir);
    }
}

impl Drop for BuildDirs {
    fn drop(&mut self) {
        for d in self
            .spare
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = ferrix_store::fsutil::delete_path(&d);
        }
    }
}

impl BuildDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The build is over: the directory is emptied for a later build, or deleted.
    pub fn release(self) {
        self.dirs.release(&self.path);
    }

    /// Kept where it is (`--keep-failed`); the path is returned for the message.
    pub fn keep(self) -> PathBuf {
        self.path
    }
}

/// Delete what `dir` holds and give it back its first state. Only a real directory (not
/// a symlink a builder put in its place) owned by this process's user is reused: a build
/// user's is given back to this user first.
fn empty_for_reuse(dir: &Path) -> io::Result<()> {
    let m = fs::symlink_metadata(dir)?;
    if !m.is_dir() {
        return Err(io::Error::other("not a directory any more"));
    }
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    if m.mode() & 0o700 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    for e in fs::read_dir(dir)? {
        ferrix_store::fsutil::delete_path(&e?.path()).map_err(io::Error::other)?;
    }
    if m.uid() != uid.as_raw() || m.gid() != gid.as_raw() {
        std::os::unix::fs::chown(dir, Some(uid.as_raw()), Some(gid.as_raw()))?;
    }
    if m.mode() & 0o7777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_directory_is_reused_under_the_next_name_and_removed_at_the_end() {
        let t = tempfile::tempdir().unwrap();
        let dirs = BuildDirs::new(t.path().to_owned(), 1);
        let a = dirs.make("a.drv").unwrap();
        let first = a.path().to_owned();
        assert!(first.ends_with("nix-build-a.drv-0"));
        fs::create_dir(first.join("sub")).unwrap();
        fs::write(first.join("sub/f"), "x").unwrap();
        fs::set_permissions(&first, fs::Permissions::from_mode(0o500)).unwrap();
        let ino = fs::metadata(&first).unwrap().ino();
        a.release();
        let b = dirs.make("b.drv").unwrap();
        assert!(!first.exists());
        assert!(b.path().ends_with("nix-build-b.drv-1"));
        let m = fs::metadata(b.path()).unwrap();
        assert_eq!(m.ino(), ino, "the same directory, renamed");
        assert_eq!(m.mode() & 0o7777, 0o700);
        assert_eq!(fs::read_dir(b.path()).unwrap().count(), 0);
        // Only `keep` are kept: the second goes.
        let c = dirs.make("c.drv").unwrap();
        let c_path = c.path().to_owned();
        b.release();
        c.release();
        assert!(!c_path.exists());
        drop(dirs);
        assert_eq!(
            fs::read_dir(t.path()).unwrap().count(),
            0,
            "nothing left behind"
        );
    }

    /// Keeping none (a machine's session, which its master kills): a build's directory is
    /// gone when the build ends, though the pool itself is never dropped, as in a killed
    /// process.
    #[test]
    fn with_none_kept_nothing_outlives_its_build() {
        let t = tempfile::tempdir().unwrap();
        let dirs = BuildDirs::new(t.path().to_owned(), 0);
        for name in ["a.drv", "b.drv"] {
            let d = dirs.make(name).unwrap();
            fs::write(d.path().join("f"), "x").unwrap();
            d.release();
            assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0, "{name}");
        }
        std::mem::forget(dirs);
    }

    #[test]
    fn a_symlink_left_in_place_of_the_directory_is_removed_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("keep"), "x").unwrap();
        let base = t.path().join("b");
        fs::create_dir(&base).unwrap();
        let dirs = BuildDirs::new(base.clone(), 4);
        let a = dirs.make("a.drv").unwrap();
        fs::remove_dir(a.path()).unwrap();
        std::os::unix::fs::symlink(&victim, a.path()).unwrap();
        a.release();
        assert!(victim.join("keep").exists());
        assert_eq!(fs::read_dir(&base).unwrap().count(), 0);
        let b = dirs.make("b.drv").unwrap();
        assert!(fs::symlink_metadata(b.path()).unwrap().is_dir());
    }
}
