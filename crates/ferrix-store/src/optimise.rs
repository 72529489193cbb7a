//! Deduplication (`nix-store --optimise`): identical files in the store become hard links to
//! one copy, kept in `<store>/.links` under the base-32 SHA-256 of the file's NAR, as Nix
//! keeps them, so the two tools share the links of one store.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferrix_format::{Encoding, HashAlgo, StorePath};

use crate::canon::MTIME_STORE;
use crate::error::{io_err, Result, StoreError};
use crate::local::LocalStore;

/// What an optimisation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OptimiseStats {
    /// Files replaced by a link to an identical one.
    pub files_linked: u64,
    /// Their sizes, in bytes.
    pub bytes_freed: u64,
}

/// Hears about an optimisation as it goes.
pub trait OptimiseReporter {
    /// A file was left alone: writable (so it may have been modified), or it could not be
    /// linked.
    fn skipped(&mut self, _path: &Path, _why: &str) {}
    /// A corrupted link (its size differs from a file of its hash) was removed.
    fn removed_corrupt_link(&mut self, _link: &Path) {}
}

impl OptimiseReporter for () {}

/// The directory of the links.
pub fn links_dir(store: &LocalStore) -> PathBuf {
    store.config().real_store_dir.join(".links")
}

/// Deduplicate every valid path. Each is made a temporary root first, so a collection
/// running meanwhile leaves it alone, and skipped if it was collected before.
pub fn optimise_store(
    store: &LocalStore,
    reporter: &mut dyn OptimiseReporter,
) -> Result<OptimiseStats> {
    let mut o = Optimiser::new(store, reporter)?;
    for p in store.all_valid_paths()? {
        store.add_temp_root(&p)?;
        if !store.is_valid_path(&p)? {
            continue;
        }
        o.path(&store.real_path(&p))?;
    }
    Ok(o.stats)
}

/// Deduplicate the files of `paths` (new paths, with `auto-optimise-store`).
pub fn optimise_paths(
    store: &LocalStore,
    paths: &[StorePath],
    reporter: &mut dyn OptimiseReporter,
) -> Result<OptimiseStats> {
    let mut o = Optimiser::new(store, reporter)?;
    for p in paths {
        o.path(&store.real_path(p))?;
    }
    Ok(o.stats)
}

/// Remove the links no store file shares any more (a link count of one); how many. Part of
/// a collection, as in Nix; their space was counted when the last store file went.
pub fn remove_unused_links(store: &LocalStore) -> Result<u64> {
    let dir = links_dir(store);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("reading directory", &dir)(e)),
    };
    let mut removed = 0;
    for e in entries {
        let e = e.map_err(io_err("reading directory", &dir))?;
        let path = e.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_err("reading", &path)(err)),
        };
        if meta.nlink() != 1 {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err("removing", &path)(err)),
        }
    }
    Ok(removed)
}

struct Optimiser<'a> {
    store_dir: PathBuf,
    links: PathBuf,
    /// Inodes that already are links (read from `.links`): files with them are done.
    linked: HashSet<u64>,
    stats: OptimiseStats,
    reporter: &'a mut dyn OptimiseReporter,
    counter: u64,
}

impl<'a> Optimiser<'a> {
    fn new(store: &LocalStore, reporter: &'a mut dyn OptimiseReporter) -> Result<Self> {
        let links = links_dir(store);
        fs::create_dir_all(&links).map_err(io_err("creating directory", &links))?;
        let mut linked = HashSet::new();
        for e in fs::read_dir(&links).map_err(io_err("reading directory", &links))? {
            let e = e.map_err(io_err("reading directory", &links))?;
            if let Ok(m) = e.metadata() {
                linked.insert(m.ino());
            }
        }
        Ok(Self {
            store_dir: store.config().real_store_dir.clone(),
            links,
            linked,
            stats: OptimiseStats::default(),
            reporter,
            counter: 0,
        })
    }

    fn path(&mut self, path: &Path) -> Result<()> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            // Collected meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("reading", path)(e)),
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(path)
                .map_err(io_err("reading directory", path))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()
                .map_err(io_err("reading directory", path))?;
            names.sort();
            for n in names {
                self.path(&path.join(n))?;
            }
            return Ok(());
        }
        if !ft.is_file() && !ft.is_symlink() {
            return Ok(());
        }
        // A writable file may have been changed in place: linking it would spread that.
        if ft.is_file() && meta.mode() & 0o200 != 0 {
            self.reporter
                .skipped(path, "it is writable, so it may have been modified");
            return Ok(());
        }
        if meta.nlink() > 1 && self.linked.contains(&meta.ino()) {
            return Ok(());
        }
        // The NAR's hash, so an executable and a plain file with the same bytes stay apart.
        let (hash, _) =
            ferrix_format::nar::hash_path(path, HashAlgo::Sha256).map_err(|source| {
                StoreError::Dump {
                    path: path.to_owned(),
                    source,
                }
            })?;
        let link = self.links.join(hash.encode(Encoding::Nix32));
        if let Ok(l) = fs::symlink_metadata(&link) {
            if l.len() != meta.len() {
                fs::remove_file(&link).map_err(io_err("removing", &link))?;
                self.reporter.removed_corrupt_link(&link);
            }
        }
        match fs::hard_link(path, &link) {
            Ok(()) => {
                self.linked.insert(meta.ino());
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            // A full directory index (ext4): this file is simply not deduplicated.
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => {
                self.reporter.skipped(path, &format!("linking it: {e}"));
                return Ok(());
            }
            Err(e) => return Err(io_err("linking", &link)(e)),
        }
        let target = fs::symlink_metadata(&link).map_err(io_err("reading", &link))?;
        if target.ino() == meta.ino() {
            return Ok(());
        }
        self.replace(path, &link, &meta)
    }

    /// Put a link to `link` in place of `path`, atomically.
    fn replace(&mut self, path: &Path, link: &Path, meta: &fs::Metadata) -> Result<()> {
        let dir = path.parent().unwrap_or(&self.store_dir).to_owned();
        // The store directory itself is writable; a directory in a path is made so for the
        // rename, then read-only again with the store's time.
        let toggle = dir != self.store_dir;
        if toggle {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .map_err(io_err("making writable", &dir))?;
        }
        let result = self.swap(path, link, meta);
        if toggle {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o555))
                .map_err(io_err("making read-only", &dir))?;
            let t = rustix::fs::Timespec {
                tv_sec: MTIME_STORE,
                tv_nsec: 0,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &dir,
                &rustix::fs::Timestamps {
                    last_access: t,
                    last_modification: t,
                },
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err("setting the time of", &dir)(e.into()))?;
        }
        result
    }

    fn swap(&mut self, path: &Path, link: &Path, meta: &fs::Metadata) -> Result<()> {
        self.counter += 1;
        let tmp = self
            .store_dir
            .join(format!(".tmp-link-{}-{}", std::process::id(), self.counter));
        if let Err(e) = fs::hard_link(link, &tmp) {
            // Too many links to one file (empty files reach it first): leave this one.
            if e.raw_os_error() == Some(libc_emlink()) {
                self.reporter
                    .skipped(path, "its twin has the most links the file system allows");
                return Ok(());
            }
            return Err(io_err("linking", &tmp)(e));
        }
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            if e.raw_os_error() == Some(libc_emlink()) {
                return Ok(());
            }
            return Err(io_err("replacing", path)(e));
        }
        self.stats.files_linked += 1;
        self.stats.bytes_freed += meta.len();
        Ok(())
    }
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

fn libc_emlink() -> i32 {
    rustix::io::Errno::MLINK.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path, files: &[(&str, &str, bool)]) {
        fs::create_dir_all(dir).unwrap();
        for (name, text, exec) in files {
            let p = dir.join(name);
            fs::write(&p, text).unwrap();
            if *exec {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
    }

    #[test]
    fn identical_files_become_one_and_the_paths_stay_sound() {
        let root = tempfile::tempdir().unwrap();
        let cfg = crate::LocalStoreConfig::with_root(root.path(), Default::default());
        let store = LocalStore::open(cfg).unwrap();
        let src = root.path().join("src");
        let mut paths = Vec::new();
        for (i, extra) in ["one", "two"].iter().enumerate() {
            let d = src.join(format!("t{i}"));
            tree(
                &d,
                &[
                    ("same", "shared contents\n", false),
                    ("script", "shared contents\n", true),
                    ("own", extra, false),
                ],
            );
            paths.push(
                store
                    .add_path(
                        &d,
                        "t",
                        ferrix_format::FileIngestionMethod::Recursive,
                        HashAlgo::Sha256,
                    )
                    .unwrap(),
            );
        }
        let stats = optimise_store(&store, &mut ()).unwrap();
        // `same` of the second path, and `script` of the second: the plain and the
        // executable file stay apart.
        assert_eq!(stats.files_linked, 2);
        assert_eq!(stats.bytes_freed, 2 * 16);
        let ino = |p: &StorePath, f: &str| fs::metadata(store.real_path(p).join(f)).unwrap().ino();
        assert_eq!(ino(&paths[0], "same"), ino(&paths[1], "same"));
        assert_eq!(ino(&paths[0], "script"), ino(&paths[1], "script"));
        assert_ne!(ino(&paths[0], "same"), ino(&paths[0], "script"));
        // Still canonical and whole.
        let problems = crate::verify::verify_store(&store, true, None).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let dir = fs::metadata(store.real_path(&paths[1])).unwrap();
        assert_eq!(dir.mode() & 0o777, 0o555);
        assert_eq!(dir.mtime(), MTIME_STORE);
        // Again: nothing more to do.
        assert_eq!(optimise_store(&store, &mut ()).unwrap().files_linked, 0);
        // Once no path shares a link, a collection's pass removes it.
        assert_eq!(remove_unused_links(&store).unwrap(), 0);
        for p in &paths {
            fs::set_permissions(store.real_path(p), fs::Permissions::from_mode(0o755)).unwrap();
            fs::remove_dir_all(store.real_path(p)).unwrap();
        }
        // Every file had its link: the two shared ones and the two `own` ones.
        assert_eq!(remove_unused_links(&store).unwrap(), 4);
        assert_eq!(fs::read_dir(links_dir(&store)).unwrap().count(), 0);
    }
}
