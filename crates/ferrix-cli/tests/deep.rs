//! Deep trees through the store and the classic commands: add, verify, dump, restore,
//! export and import work 1500 directories deep, and agree with real Nix.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const DEPTH: usize = 1500;

/// `root/d/d/…/d` (`depth` levels) with a file at some levels, executable at some, a file
/// after the subdirectory at others, and a file and a symlink at the bottom.
fn make_deep(root: &Path, depth: usize) {
    use std::os::unix::fs::PermissionsExt;
    let mut p = root.to_path_buf();
    fs::create_dir(&p).unwrap();
    for i in 0..depth {
        if i.is_multiple_of(100) {
            let f = p.join("a");
            fs::write(&f, format!("level {i}\n")).unwrap();
            if i.is_multiple_of(200) {
                fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        if i % 100 == 50 {
            fs::write(p.join("z"), b"z").unwrap();
        }
        p.push("d");
        fs::create_dir(&p).unwrap();
    }
    fs::write(p.join("x"), b"bottom\n").unwrap();
    std::os::unix::fs::symlink("../..", p.join("l")).unwrap();
}

/// A private store of its own, and `nix-store` pointed at it.
struct Store {
    root: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        Store {
            root: tempfile::tempdir().unwrap(),
        }
    }
    /// Where the store keeps `path` (a `/nix/store/…` path) on disk.
    fn real(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }
    fn nix_store(&self, links: &Links) -> Command {
        let mut c = links.cmd("nix-store");
        c.env(
            "NIX_REMOTE",
            format!("local?root={}", self.root.path().display()),
        );
        c
    }
}

fn nar_of(path: &Path) -> Vec<u8> {
    ok(ferrix().args(["nar", "dump-path"]).arg(path))
}

fn restore(links: &Links, nar: &[u8], into: &PathBuf) {
    let mut c = links.cmd("nix-store");
    c.arg("--restore").arg(into);
    let out = piped(c, nar);
    assert!(
        out.status.success(),
        "nix-store --restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn verify(links: &Links, store: &Store) {
    let out = run(store
        .nix_store(links)
        .args(["--verify", "--check-contents"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nix-store --verify: {err}");
    assert!(!err.contains("modified"), "{err}");
}

#[test]
fn deep_tree_through_add_verify_dump_restore_export_import() {
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_deep(&tree, DEPTH);
    let nar = nar_of(&tree);

    // Dump and restore, no store involved.
    let restored = dir.path().join("restored");
    restore(&links, &nar, &restored);
    assert!(nar_of(&restored) == nar, "restored tree differs");

    // Add, then check the contents against the registered hash.
    let a = Store::new();
    let out = ok(a.nix_store(&links).arg("--add").arg(&tree));
    let path = String::from_utf8(out).unwrap().trim().to_owned();
    assert!(
        path.starts_with("/nix/store/") && path.ends_with("-tree"),
        "{path}"
    );
    verify(&links, &a);
    let stored = ok(a.nix_store(&links).arg("--dump").arg(a.real(&path)));
    assert!(
        stored == nar,
        "the stored path's NAR differs from the tree's"
    );
    let want_hash = ok(links
        .cmd("nix-hash")
        .args(["--type", "sha256", "--base32"])
        .arg(&tree));
    let got_hash = ok(a.nix_store(&links).args(["--query", "--hash", &path]));
    assert_eq!(
        String::from_utf8(got_hash).unwrap().trim(),
        format!("sha256:{}", String::from_utf8(want_hash).unwrap().trim())
    );

    // The store path's NAR restores to the same tree.
    let from_store = dir.path().join("from-store");
    restore(&links, &stored, &from_store);
    assert!(nar_of(&from_store) == nar);

    // Export from one store, import into another.
    let stream = ok(a.nix_store(&links).args(["--export", &path]));
    let b = Store::new();
    let out = piped(
        {
            let mut c = b.nix_store(&links);
            c.arg("--import");
            c
        },
        &stream,
    );
    assert!(
        out.status.success(),
        "nix-store --import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), path);
    verify(&links, &b);
    assert!(ok(b.nix_store(&links).arg("--dump").arg(b.real(&path))) == nar);
}

#[test]
fn deep_tree_hashes_and_dumps_like_nix() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_deep(&tree, DEPTH);

    let ours = ok(links
        .cmd("nix-hash")
        .args(["--type", "sha256", "--base32"])
        .arg(&tree));
    let theirs = ok(nix
        .cmd("nix-hash")
        .args(["--type", "sha256", "--base32"])
        .arg(&tree));
    assert_eq!(ours, theirs, "nix-hash of a {DEPTH}-deep tree");

    let theirs = ok(nix.cmd("nix-store").arg("--dump").arg(&tree));
    assert!(nar_of(&tree) == theirs, "NAR of a {DEPTH}-deep tree");

    // Each restores the other's archive.
    let by_ours = dir.path().join("by-ferrix");
    restore(&links, &theirs, &by_ours);
    let by_nix = dir.path().join("by-nix");
    let out = piped(
        {
            let mut c = nix.cmd("nix-store");
            c.arg("--restore").arg(&by_nix);
            c
        },
        &theirs,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(nar_of(&by_ours) == theirs);
    assert!(ok(nix.cmd("nix-store").arg("--dump").arg(&by_ours)) == theirs);
    assert!(nar_of(&by_nix) == theirs);
}

#[test]
fn tree_deeper_than_path_max_dumps_and_restores() {
    // 3001 levels, 6000 bytes of path below the root: too long for plain paths, so the tree
    // is made by restoring an archive, a 1500-deep tree spliced into its own bottom.
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let half = dir.path().join("half");
    make_deep(&half, DEPTH);
    let half_nar = nar_of(&half);
    // The archive of `half` with its bottom directory holding another copy of `half` as `d`.
    let nested = nest(&half_nar);
    let deep = dir.path().join("deep");
    restore(&links, &nested, &deep);
    assert!(
        nar_of(&deep) == nested,
        "a 3000-deep tree dumps back to its archive"
    );
    let again = dir.path().join("again");
    restore(&links, &nar_of(&deep), &again);
    assert!(nar_of(&again) == nested);
}

#[test]
fn tree_deeper_than_path_max_through_the_store() {
    // The 3001-deep tree of the test above, added to a store (small enough to be written
    // from memory), checked, exported and imported into a second store, then deleted from
    // both; and a copy with a large file (too large for memory: restored into the staging
    // area, canonicalised and moved into place) added and deleted too.
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let half = dir.path().join("half");
    make_deep(&half, DEPTH);
    let nested = nest(&nar_of(&half));
    let deep = dir.path().join("deep");
    restore(&links, &nested, &deep);
    let big = dir.path().join("deep-big");
    restore(&links, &nested, &big);
    fs::write(big.join("big"), vec![7u8; 3 << 20]).unwrap();
    let big_nar = nar_of(&big);

    let a = Store::new();
    let add = |store: &Store, tree: &Path| {
        let out = ok(store.nix_store(&links).arg("--add").arg(tree));
        String::from_utf8(out).unwrap().trim().to_owned()
    };
    let path = add(&a, &deep);
    let big_path = add(&a, &big);
    verify(&links, &a);
    for (p, nar) in [(&path, &nested), (&big_path, &big_nar)] {
        let stored = ok(a.nix_store(&links).arg("--dump").arg(a.real(p)));
        assert!(
            stored == *nar,
            "the stored NAR of {p} differs from its tree's"
        );
    }

    let stream = ok(a.nix_store(&links).args(["--export", &path]));
    let b = Store::new();
    let out = piped(
        {
            let mut c = b.nix_store(&links);
            c.arg("--import");
            c
        },
        &stream,
    );
    assert!(
        out.status.success(),
        "nix-store --import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), path);
    verify(&links, &b);
    assert!(ok(b.nix_store(&links).arg("--dump").arg(b.real(&path))) == nested);

    // Deleting takes the whole tree away, whatever its depth, and nothing is left over.
    ok(a.nix_store(&links).args(["--delete", &path, &big_path]));
    ok(b.nix_store(&links).args(["--delete", &path]));
    for (store, p) in [(&a, &path), (&a, &big_path), (&b, &path)] {
        assert!(
            fs::symlink_metadata(store.real(p)).is_err(),
            "{p} is still on disk"
        );
        let left: Vec<_> = fs::read_dir(store.real("/nix/store"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != ".links" && !n.to_string_lossy().ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "left in the store: {left:?}");
        verify(&links, store);
    }
}

/// Splice the root node of `nar` into its own deepest directory, as a last entry `y`.
fn nest(nar: &[u8]) -> Vec<u8> {
    // The deepest directory ends with its last entry `x` (the file "bottom\n"), then `)`.
    let frame = |s: &[u8]| {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(s);
        v.resize(8 + s.len().div_ceil(8) * 8, 0);
        v
    };
    let mut x_end = Vec::new();
    for t in [&b"bottom\n"[..], b")", b")"] {
        x_end.extend(frame(t));
    }
    let at = nar
        .windows(x_end.len())
        .position(|w| w == x_end)
        .expect("the bottom file")
        + x_end.len();
    let root_node = &nar[frame(b"nix-archive-1").len()..];
    let mut out = nar[..at].to_vec();
    for t in [&b"entry"[..], b"(", b"name", b"y", b"node"] {
        out.extend(frame(t));
    }
    out.extend_from_slice(root_node);
    out.extend(frame(b")"));
    out.extend_from_slice(&nar[at..]);
    out
}

/// A NAR of `depth` nested directories named `d` around one file, made by hand.
fn nested_nar(depth: usize) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    let mut out = Vec::new();
    s(&mut out, b"nix-archive-1");
    for _ in 0..depth {
        for t in [
            &b"("[..],
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"d",
            b"node",
        ] {
            s(&mut out, t);
        }
    }
    for t in [&b"("[..], b"type", b"regular", b"contents", b"x", b")"] {
        s(&mut out, t);
    }
    for _ in 0..depth {
        s(&mut out, b")");
        s(&mut out, b")");
    }
    out
}

#[test]
fn nar_ls_lists_deep_archives_and_names_its_nesting_limit() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("deep.nar");
    fs::write(&deep, nested_nar(8000)).unwrap();
    let out = ok(ferrix().args(["nar", "ls", "-R"]).arg(&deep).arg("/"));
    // The root is the first of the 8000 directories: 7999 below it, and the file.
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 8000);
    let json = ok(ferrix()
        .args(["nar", "ls", "-R", "--json"])
        .arg(&deep)
        .arg("/"));
    assert_eq!(
        String::from_utf8_lossy(&json)
            .matches("\"directory\"")
            .count(),
        8000
    );
    // Deeper than the command lists: a clear error, not a crash.
    let deeper = dir.path().join("deeper.nar");
    fs::write(&deeper, nested_nar(60_000)).unwrap();
    let o = ferrix()
        .args(["nar", "ls", "-R", "--json"])
        .arg(&deeper)
        .arg("/")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nests 60000 directories deep") && err.contains("a nesting limit"),
        "{err}"
    );
    // Without -R only the top is listed, at any depth.
    let top = ok(ferrix().args(["nar", "ls"]).arg(&deeper).arg("/"));
    assert_eq!(top, b"./d\n");
}
