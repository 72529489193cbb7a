//! `delete_path` and `canonicalise` walk trees through directory descriptors: any depth, and
//! symlinks are acted on themselves, never followed out of the tree.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ferrix_store::canon::canonicalise;
use ferrix_store::fsutil::delete_path;
use rustix::fs::{mkdirat, openat, statat, AtFlags, Mode, OFlags};

/// Mode, mtime, owner and (for a file) contents of what lies outside the tree.
type Snapshot = (u32, i64, i64, u32, Option<Vec<u8>>);

fn snapshot(p: &Path) -> Snapshot {
    let m = fs::symlink_metadata(p).unwrap();
    let contents = m.is_file().then(|| fs::read(p).unwrap());
    (m.mode(), m.mtime(), m.mtime_nsec(), m.uid(), contents)
}

/// A directory outside the tree with a file and a subdirectory, and a tree whose symlinks
/// point at them (absolute, relative, and one to the directory itself).
fn hostile(dir: &Path) -> (std::path::PathBuf, Vec<std::path::PathBuf>) {
    let outside = dir.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"keep me").unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir(outside.join("sub")).unwrap();
    fs::write(outside.join("sub/f"), b"f").unwrap();
    fs::set_permissions(outside.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("a/b")).unwrap();
    fs::write(tree.join("a/b/file"), b"x").unwrap();
    fs::write(tree.join("exe"), b"#!").unwrap();
    fs::set_permissions(tree.join("exe"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), tree.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../outside/secret", tree.join("a/b/rel")).unwrap();
    std::os::unix::fs::symlink(outside.join("sub"), tree.join("a/dirlink")).unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("top")).unwrap();
    // Only root can give files away: then the outside belongs to someone else too.
    if rustix::process::geteuid().is_root() {
        for p in ["", "secret", "sub", "sub/f"] {
            std::os::unix::fs::lchown(outside.join(p), Some(4321), Some(4321)).unwrap();
        }
        std::os::unix::fs::lchown(tree.join("abs"), Some(4321), Some(4321)).unwrap();
    }
    // An extended attribute outside (where the file system has them) must stay.
    let _ = rustix::fs::setxattr(
        outside.join("secret"),
        "user.keep",
        b"1",
        rustix::fs::XattrFlags::empty(),
    );
    let watched = ["", "secret", "sub", "sub/f"]
        .iter()
        .map(|p| {
            if p.is_empty() {
                outside.clone()
            } else {
                outside.join(p)
            }
        })
        .collect();
    (tree, watched)
}

fn snapshots(paths: &[std::path::PathBuf]) -> Vec<Snapshot> {
    paths.iter().map(|p| snapshot(p)).collect()
}

fn xattr_keep(p: &Path) -> Option<usize> {
    rustix::fs::getxattr(p, "user.keep", &mut [0u8; 16][..]).ok()
}

#[test]
fn canonicalise_acts_on_symlinks_not_their_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, watched) = hostile(dir.path());
    let keep = xattr_keep(&watched[1]);
    let before = snapshots(&watched);
    canonicalise(&tree).unwrap();
    assert_eq!(snapshots(&watched), before, "the outside changed");
    assert_eq!(xattr_keep(&watched[1]), keep);
    let me = rustix::process::geteuid().as_raw();
    for (p, mode) in [
        ("", 0o555),
        ("a", 0o555),
        ("a/b", 0o555),
        ("a/b/file", 0o444),
        ("exe", 0o555),
    ] {
        let m = fs::symlink_metadata(tree.join(p)).unwrap();
        assert_eq!(m.mode() & 0o7777, mode, "{p}");
        assert_eq!((m.mtime(), m.mtime_nsec()), (1, 0), "{p}");
        assert_eq!(m.uid(), me, "{p}");
    }
    for p in ["abs", "a/b/rel", "a/dirlink", "top"] {
        let m = fs::symlink_metadata(tree.join(p)).unwrap();
        assert!(m.file_type().is_symlink(), "{p}");
        assert_eq!(m.mtime(), 1, "{p}");
        assert_eq!(m.uid(), me, "{p}");
    }
    // The root itself a symlink out: the link is canonicalised, not what it points to.
    let link = dir.path().join("rootlink");
    std::os::unix::fs::symlink(dir.path().join("outside"), &link).unwrap();
    canonicalise(&link).unwrap();
    assert_eq!(fs::symlink_metadata(&link).unwrap().mtime(), 1);
    assert_eq!(snapshots(&watched), before, "the outside changed");
}

#[test]
fn delete_path_removes_symlinks_not_their_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, watched) = hostile(dir.path());
    canonicalise(&tree).unwrap();
    let before = snapshots(&watched);
    let keep = xattr_keep(&watched[1]);
    let freed = delete_path(&tree).unwrap();
    assert!(freed > 0);
    assert!(fs::symlink_metadata(&tree).is_err(), "the tree is gone");
    assert_eq!(snapshots(&watched), before, "the outside changed");
    assert_eq!(xattr_keep(&watched[1]), keep);
    // A symlink as the root: the link goes, its target stays.
    let link = dir.path().join("rootlink");
    std::os::unix::fs::symlink(dir.path().join("outside"), &link).unwrap();
    delete_path(&link).unwrap();
    assert!(fs::symlink_metadata(&link).is_err());
    assert_eq!(snapshots(&watched), before, "the outside changed");
    // Missing paths are no error, missing parents neither.
    assert_eq!(delete_path(&tree).unwrap(), 0);
    assert_eq!(delete_path(&dir.path().join("no/such/thing")).unwrap(), 0);
}

#[test]
fn delete_path_handles_unreadable_directories_and_plain_files() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    fs::create_dir_all(t.join("x/y")).unwrap();
    fs::write(t.join("x/y/f"), b"abc").unwrap();
    fs::set_permissions(t.join("x/y"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(t.join("x"), fs::Permissions::from_mode(0o100)).unwrap();
    delete_path(&t).unwrap();
    assert!(fs::symlink_metadata(&t).is_err());
    let f = dir.path().join("f");
    fs::write(&f, b"12345").unwrap();
    assert_eq!(delete_path(&f).unwrap(), 5);
    assert!(!f.exists());
}

/// Depth and the length of the bottom's full path, far past `PATH_MAX` (4096).
const DEEP: usize = 3000;

/// `root/d/d/…` (`DEEP` levels, a file `f` with mode 0644 and a symlink `up` at every
/// level), made through descriptors since the full paths are too long for the kernel.
fn make_deep(root: &Path) {
    fs::create_dir(root).unwrap();
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut fd: OwnedFd = rustix::fs::open(root, flags, Mode::empty()).unwrap();
    for i in 0..DEEP {
        let f = openat(
            &fd,
            "f",
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, format!("{i}").as_bytes()).unwrap();
        rustix::fs::symlinkat("..", &fd, "up").unwrap();
        mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
        fd = openat(&fd, "d", flags, Mode::empty()).unwrap();
    }
}

/// Apply `check` to the mode and mtime of `f`, `up` and `d` at every level.
fn check_deep(root: &Path, check: impl Fn(usize, &str, u32, i64)) {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut fd: OwnedFd = rustix::fs::open(root, flags, Mode::empty()).unwrap();
    for i in 0..DEEP {
        for n in ["f", "up", "d"] {
            let st = statat(&fd, n, AtFlags::SYMLINK_NOFOLLOW).unwrap();
            check(i, n, st.st_mode, st.st_mtime);
        }
        fd = openat(&fd, "d", flags, Mode::empty()).unwrap();
    }
}

#[test]
fn deeper_than_path_max_canonicalises_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("deep");
    make_deep(&root);
    assert!(
        fs::metadata(root.join("d/".repeat(DEEP))).is_err(),
        "the bottom is out of reach by path"
    );
    canonicalise(&root).unwrap();
    check_deep(&root, |i, n, mode, mtime| {
        assert_eq!(mtime, 1, "{n} at level {i}");
        match n {
            "f" => assert_eq!(mode & 0o7777, 0o444, "{n} at level {i}"),
            "d" => assert_eq!(mode & 0o7777, 0o555, "{n} at level {i}"),
            _ => assert_eq!(mode & 0o170000, 0o120000, "{n} at level {i}"),
        }
    });
    let freed = delete_path(&root).unwrap();
    assert!(freed >= DEEP as u64 * 4, "{freed}");
    assert!(fs::symlink_metadata(&root).is_err(), "the tree is gone");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn canonicalise_removes_extended_attributes_and_setuid() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    fs::create_dir(&t).unwrap();
    fs::write(t.join("f"), b"x").unwrap();
    fs::set_permissions(t.join("f"), fs::Permissions::from_mode(0o6711)).unwrap();
    let flags = rustix::fs::XattrFlags::empty();
    if rustix::fs::setxattr(t.join("f"), "user.x", b"1", flags).is_err() {
        return; // no user xattrs on this file system
    }
    rustix::fs::setxattr(&t, "user.y", b"1", flags).unwrap();
    canonicalise(&t).unwrap();
    let mut buf = [0u8; 256];
    assert_eq!(rustix::fs::listxattr(t.join("f"), &mut buf[..]).unwrap(), 0);
    assert_eq!(rustix::fs::listxattr(&t, &mut buf[..]).unwrap(), 0);
    let m = fs::metadata(t.join("f")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o555);
}

#[test]
fn canonicalise_reaches_unreadable_entries() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    for d in ["search-only", "read-only", "none"] {
        fs::create_dir_all(t.join(d)).unwrap();
        fs::write(t.join(d).join("f"), b"x").unwrap();
    }
    fs::write(t.join("secret"), b"x").unwrap();
    let mode = |p: &str, m: u32| fs::set_permissions(t.join(p), fs::Permissions::from_mode(m));
    mode("secret", 0o200).unwrap();
    mode("search-only", 0o100).unwrap();
    mode("read-only", 0o400).unwrap();
    mode("none", 0o000).unwrap();
    canonicalise(&t).unwrap();
    for (p, want) in [
        ("", 0o555),
        ("secret", 0o444),
        ("search-only", 0o555),
        ("search-only/f", 0o444),
        ("read-only", 0o555),
        ("read-only/f", 0o444),
        ("none", 0o555),
        ("none/f", 0o444),
    ] {
        let m = fs::symlink_metadata(t.join(p)).unwrap();
        assert_eq!(m.mode() & 0o7777, want, "{p}");
        assert_eq!(m.mtime(), 1, "{p}");
    }
    delete_path(&t).unwrap();
}
