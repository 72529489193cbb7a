//! Deep trees: dump, parse, list and restore work at any depth, in constant stack space and
//! with few descriptors open, also where the full path is longer than PATH_MAX.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Once;

use ferrix_format::hash::{Hash, HashAlgo};
use ferrix_format::nar::{self, NarEntry, NarErrorKind, NarVisitor};
use ferrix_format::wire::push_bytes;
use rustix::fs::{mkdirat, openat, symlinkat, Mode, OFlags, CWD};

/// Fewer descriptors than the deepest tree has levels: a walk that kept one open per level
/// would fail with EMFILE. Every test of this file runs in this one process.
fn limit_descriptors() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let cur = getrlimit(Resource::Nofile);
        let soft = cur.current.map_or(512, |c| c.min(512));
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(soft),
                maximum: cur.maximum,
            },
        )
        .unwrap();
    });
}

/// Level `i` of the test tree holds `d` (level `i + 1`) and, at some levels, a file `a`
/// before it (executable at some) and a file `z` after it; the last level holds a file `x`
/// and a symlink `l`.
fn a_file(i: usize) -> Option<(Vec<u8>, bool)> {
    i.is_multiple_of(100)
        .then(|| (format!("a{i}").into_bytes(), i.is_multiple_of(200)))
}

fn z_file(i: usize) -> bool {
    i % 100 == 50
}

const BOTTOM: &[u8] = b"bottom";

fn regular_node(v: &mut Vec<u8>, contents: &[u8], exec: bool) {
    push_bytes(v, b"(");
    push_bytes(v, b"type");
    push_bytes(v, b"regular");
    if exec {
        push_bytes(v, b"executable");
        push_bytes(v, b"");
    }
    push_bytes(v, b"contents");
    push_bytes(v, contents);
    push_bytes(v, b")");
}

fn entry_start(v: &mut Vec<u8>, name: &[u8]) {
    for t in [b"entry" as &[u8], b"(", b"name", name, b"node"] {
        push_bytes(v, t);
    }
}

/// The archive of the test tree, written out by hand.
fn expected_nar(depth: usize) -> Vec<u8> {
    let mut v = Vec::new();
    push_bytes(&mut v, b"nix-archive-1");
    for i in 0..depth {
        for t in [b"(" as &[u8], b"type", b"directory"] {
            push_bytes(&mut v, t);
        }
        if let Some((c, x)) = a_file(i) {
            entry_start(&mut v, b"a");
            regular_node(&mut v, &c, x);
            push_bytes(&mut v, b")");
        }
        entry_start(&mut v, b"d");
    }
    for t in [b"(" as &[u8], b"type", b"directory"] {
        push_bytes(&mut v, t);
    }
    entry_start(&mut v, b"l");
    for t in [
        b"(" as &[u8],
        b"type",
        b"symlink",
        b"target",
        b"../..",
        b")",
        b")",
    ] {
        push_bytes(&mut v, t);
    }
    entry_start(&mut v, b"x");
    regular_node(&mut v, BOTTOM, false);
    push_bytes(&mut v, b")");
    push_bytes(&mut v, b")");
    for i in (0..depth).rev() {
        push_bytes(&mut v, b")");
        if z_file(i) {
            entry_start(&mut v, b"z");
            regular_node(&mut v, b"z", false);
            push_bytes(&mut v, b")");
        }
        push_bytes(&mut v, b")");
    }
    v
}

fn write_file(dir: &OwnedFd, name: &str, contents: &[u8], exec: bool) {
    let fd = openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
        Mode::from_raw_mode(if exec { 0o755 } else { 0o644 }),
    )
    .unwrap();
    File::from(fd).write_all(contents).unwrap();
}

/// Make the test tree at `root`, level by level through descriptors (the full path may be
/// longer than PATH_MAX).
fn make_tree(root: &Path, depth: usize) {
    std::fs::create_dir(root).unwrap();
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = openat(CWD, root, dir_flags, Mode::empty()).unwrap();
    for i in 0..depth {
        if let Some((c, x)) = a_file(i) {
            write_file(&dir, "a", &c, x);
        }
        if z_file(i) {
            write_file(&dir, "z", b"z", false);
        }
        mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
        dir = openat(&dir, "d", dir_flags, Mode::empty()).unwrap();
    }
    write_file(&dir, "x", BOTTOM, false);
    symlinkat("../..", &dir, "l").unwrap();
}

fn deep_path(depth: usize, leaf: &str) -> Vec<u8> {
    let mut p = "d/".repeat(depth).into_bytes();
    p.extend_from_slice(leaf.as_bytes());
    p
}

fn round_trip(depth: usize) {
    limit_descriptors();
    // One round trip at a time: removing a deep temporary tree (std's `remove_dir_all`)
    // holds a descriptor per level for a moment, which under the lowered limit would starve
    // a walk running beside it. The tree goes before the lock does.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src, depth);
    let want = expected_nar(depth);

    let mut got = Vec::new();
    nar::dump_path(&src, &mut got).unwrap();
    assert_eq!(got.len(), want.len(), "NAR size of a {depth}-deep tree");
    assert!(got == want, "NAR of a {depth}-deep tree");

    let (h, n) = nar::hash_path(&src, HashAlgo::Sha256).unwrap();
    assert_eq!(h, Hash::sha256(&want));
    assert_eq!(n, want.len() as u64);

    let out = tmp.path().join("out");
    assert_eq!(nar::restore(&want[..], &out).unwrap(), want.len() as u64);
    let mut again = Vec::new();
    nar::dump_path(&out, &mut again).unwrap();
    assert!(again == want, "restored {depth}-deep tree differs");
    assert_eq!(nar::hash_path(&out, HashAlgo::Sha256).unwrap(), (h, n));

    // Embedded in a longer stream, reading stops at the archive's end.
    let out2 = tmp.path().join("out2");
    let mut stream = want.clone();
    stream.extend_from_slice(b"trailing");
    assert_eq!(
        nar::restore_prefix(&stream[..], &out2).unwrap(),
        want.len() as u64
    );
    assert_eq!(nar::hash_path(&out2, HashAlgo::Sha256).unwrap(), (h, n));

    let listing = nar::list(&want[..]).unwrap();
    assert_eq!(listing.nar_size, want.len() as u64);
    match listing.get(&deep_path(depth, "x")) {
        Some(NarEntry::Regular {
            size, executable, ..
        }) => {
            assert_eq!(*size, BOTTOM.len() as u64);
            assert!(!executable);
        }
        other => panic!("bottom file: {other:?}"),
    }
    match listing.get(&deep_path(depth, "l")) {
        Some(NarEntry::Symlink { target }) => assert_eq!(target, b"../.."),
        other => panic!("bottom symlink: {other:?}"),
    }
    // The temporary directory's own removal (std's `remove_dir_all`, one descriptor per
    // level) fails under the lowered limit and would leave the trees behind.
    for tree in [&src, &out, &out2] {
        remove_deep(tmp.path(), tree);
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// Remove a tree of any depth with few descriptors and short paths: each directory is moved
/// up to `top` before its entries are removed.
fn remove_deep(top: &Path, tree: &Path) {
    let mut moved = 0;
    let mut todo = vec![tree.to_owned()];
    while let Some(dir) = todo.pop() {
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        for e in entries {
            if e.file_type().unwrap().is_dir() {
                let up = top.join(format!("up-{moved}"));
                moved += 1;
                std::fs::rename(e.path(), &up).unwrap();
                todo.push(up);
            } else {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        std::fs::remove_dir(&dir).unwrap();
    }
}

#[test]
fn tree_1500_deep_round_trips() {
    round_trip(1500);
}

#[test]
fn tree_3000_deep_beyond_path_max_round_trips() {
    // 6000 bytes of path below the root: no syscall may see the full path.
    assert!(deep_path(3000, "x").len() > 4096);
    round_trip(3000);
}

#[test]
fn shallow_tree_round_trips() {
    round_trip(0);
    round_trip(1);
    round_trip(101);
}

/// An archive of directories `d` nested `depth` deep around an empty file.
fn nested_nar(depth: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(depth * 200 + 200);
    push_bytes(&mut v, b"nix-archive-1");
    for _ in 0..depth {
        for t in [b"(" as &[u8], b"type", b"directory"] {
            push_bytes(&mut v, t);
        }
        entry_start(&mut v, b"d");
    }
    regular_node(&mut v, b"", false);
    for _ in 0..depth {
        push_bytes(&mut v, b")");
        push_bytes(&mut v, b")");
    }
    v
}

struct Count {
    dirs: usize,
    ends: usize,
    deepest: usize,
}

impl NarVisitor for Count {
    fn directory(&mut self, _path: &[u8]) -> io::Result<()> {
        self.dirs += 1;
        Ok(())
    }
    fn end_directory(&mut self, _path: &[u8]) -> io::Result<()> {
        self.ends += 1;
        Ok(())
    }
    fn regular(
        &mut self,
        path: &[u8],
        _executable: bool,
        _size: u64,
        _offset: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        self.deepest = path.len();
        io::copy(contents, &mut io::sink()).map(|_| ())
    }
    fn symlink(&mut self, _path: &[u8], _target: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Run `f` on a thread with a small stack: recursion per level would overflow it.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn archive_nested_100000_deep_parses_in_constant_stack() {
    const DEPTH: usize = 100_000;
    let bytes = nested_nar(DEPTH);
    let len = bytes.len() as u64;
    let bytes = std::sync::Arc::new(bytes);

    let b = bytes.clone();
    let (n, c) = on_small_stack(move || {
        let mut c = Count {
            dirs: 0,
            ends: 0,
            deepest: 0,
        };
        let n = nar::parse_exact(&b[..], &mut c).unwrap();
        (n, c)
    });
    assert_eq!(n, len);
    assert_eq!((c.dirs, c.ends), (DEPTH, DEPTH));
    assert_eq!(c.deepest, 2 * DEPTH - 1);

    // The listing is built, searched and dropped without recursion too.
    let b = bytes.clone();
    let found = on_small_stack(move || {
        let listing = nar::list(&b[..]).unwrap();
        let path = "d/".repeat(DEPTH);
        matches!(
            listing.get(path.as_bytes()),
            Some(NarEntry::Regular { size: 0, .. })
        )
    });
    assert!(found, "the innermost file is listed");

    // Cut anywhere in the middle, the archive is reported truncated.
    let b = bytes.clone();
    let err = on_small_stack(move || nar::list(&b[..b.len() / 2]).unwrap_err());
    assert!(matches!(err.kind, NarErrorKind::Truncated), "{err}");
    assert_eq!(err.offset, len / 2);
}

#[test]
fn bad_entry_deep_inside_is_reported_at_its_offset() {
    const DEPTH: usize = 5000;
    let mut bytes = nested_nar(DEPTH);
    // The innermost node's `type` string becomes `tYpe`.
    let good = nested_nar(DEPTH);
    let at = good.windows(8).rposition(|w| w == b"type\0\0\0\0").unwrap();
    bytes[at + 1] = b'Y';
    let err = on_small_stack(move || nar::list(&bytes[..]).unwrap_err());
    assert!(
        matches!(
            err.kind,
            NarErrorKind::Expected {
                expected: "type",
                ..
            }
        ),
        "{err}"
    );
    // The error names the string's length field, 8 bytes before its text.
    assert_eq!(err.offset, at as u64 - 8);
}
