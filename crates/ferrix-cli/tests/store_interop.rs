//! The local store shared with real Nix 2.8, both directions: what one adds, the other sees
//! with identical metadata, verifies, queries the same way, exports and collects.

mod common;

use std::fs;
use std::process::Command;

use common::*;

fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap()
}

/// A ferrix command (under a personality name) on Nix's isolated store.
fn ours(links: &Links, nix: &Nix, name: &str) -> Command {
    let mut c = links.cmd(name);
    nix.isolate(&mut c);
    c
}

const EXPR: &str = r#"
let
  a = builtins.toFile "a.txt" "aaa";
  b = builtins.toFile "b.txt" "see ${a}";
  dep = derivation { name = "dep"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo ${b} > $out" ]; };
in derivation {
  name = "top"; system = "x86_64-linux"; builder = "/bin/sh";
  outputs = [ "out" "dev" ];
  args = [ "-c" "echo ${dep} > $out; echo dev > $dev" ];
}
"#;

#[test]
fn nix_made_paths_look_the_same_to_ferrix() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("t.nix"), EXPR).unwrap();
    let drv = text(ok(nix.cmd("nix-instantiate").arg(dir.path().join("t.nix"))));
    let drv = drv.trim();
    let outs = text(ok(nix.cmd("nix-store").args(["-r", drv])));
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/file"), b"x\n").unwrap();
    let added = text(ok(nix.cmd("nix-store").arg("--add").arg(&src)));
    let fixed = text(ok(nix
        .cmd("nix-store")
        .args(["--add-fixed", "sha1"])
        .arg(src.join("sub/file"))));
    let mut paths: Vec<String> = vec![
        drv.to_owned(),
        added.trim().to_owned(),
        fixed.trim().to_owned(),
    ];
    paths.extend(outs.lines().map(str::to_owned));

    for p in &paths {
        for q in [
            "--references",
            "--referrers",
            "--requisites",
            "--tree",
            "--graph",
            "--deriver",
            "--hash",
            "--size",
            "--outputs",
            "--referrers-closure",
        ] {
            let t = ok(nix.cmd("nix-store").args(["-q", q, p]));
            let o = ok(ours(&links, &nix, "nix-store").args(["-q", q, p]));
            assert_eq!(text(o), text(t), "nix-store -q {q} {p}");
        }
        let t = ok(nix.cmd("nix-store").args(["-qR", "--include-outputs", p]));
        let o = ok(ours(&links, &nix, "nix-store").args(["-qR", "--include-outputs", p]));
        assert_eq!(text(o), text(t), "-qR --include-outputs {p}");
    }
    for args in [
        &["path-info", "--json", "-r"][..],
        &["path-info", "-rsS"],
        &["path-info", "-r", "--sigs"],
    ] {
        let t = ok(nix.cmd("nix").args(args).args(&paths));
        let o = ok(ours(&links, &nix, "nix").args(args).args(&paths));
        assert_eq!(text(o), text(t), "{args:?}");
    }
    let t = ok(nix.cmd("nix-store").arg("--dump-db"));
    let o = ok(ours(&links, &nix, "nix-store").arg("--dump-db"));
    assert_eq!(text(o), text(t), "--dump-db");
    // Paths named are dumped in the order named.
    let named: Vec<_> = paths.iter().rev().collect();
    let t = ok(nix.cmd("nix-store").arg("--dump-db").args(&named));
    let o = ok(ours(&links, &nix, "nix-store")
        .arg("--dump-db")
        .args(&named));
    assert_eq!(text(o), text(t), "--dump-db of paths");
    let out = ours(&links, &nix, "nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same live and dead sets (Nix also lists junk entries; compare store paths only).
    for flag in ["--print-live", "--print-dead"] {
        let keep = |s: String| -> Vec<String> {
            let mut v: Vec<String> = s
                .lines()
                .filter(|l| !l.contains("/."))
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        let t = keep(text(ok(nix.cmd("nix-store").args(["--gc", flag]))));
        let o = keep(text(ok(
            ours(&links, &nix, "nix-store").args(["--gc", flag])
        )));
        assert_eq!(o, t, "--gc {flag}");
    }
}

#[test]
fn ferrix_made_paths_look_the_same_to_nix() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("tree");
    fs::create_dir(&src).unwrap();
    random_tree(&mut Rng::new(5), &src, 0);
    fs::write(dir.path().join("flat"), Rng::new(6).bytes(10_000)).unwrap();
    let mut paths = Vec::new();
    paths.push(
        text(ok(ours(&links, &nix, "nix-store").arg("--add").arg(&src)))
            .trim()
            .to_owned(),
    );
    for algo in ["md5", "sha1", "sha256", "sha512"] {
        for rec in [&[][..], &["--recursive"][..]] {
            let o = text(ok(ours(&links, &nix, "nix-store")
                .arg("--add-fixed")
                .args(rec)
                .arg(algo)
                .arg(dir.path().join("flat"))));
            // Nix computes the same path for the same content.
            let t = text(ok(nix
                .cmd("nix-store")
                .arg("--add-fixed")
                .args(rec)
                .arg(algo)
                .arg(dir.path().join("flat"))));
            assert_eq!(o, t, "--add-fixed {rec:?} {algo}");
            paths.push(o.trim().to_owned());
        }
    }
    // Real Nix checks everything we wrote: contents, hashes, database.
    let out = nix
        .cmd("nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("error"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in &paths {
        let t = ok(nix.cmd("nix-store").args(["-q", "--hash", p]));
        let o = ok(ours(&links, &nix, "nix-store").args(["-q", "--hash", p]));
        assert_eq!(t, o);
        let t = ok(nix.cmd("nix").args(["path-info", "--json", p]));
        let o = ok(ours(&links, &nix, "nix").args(["path-info", "--json", p]));
        assert_eq!(text(o), text(t), "{p}");
        // And the bytes Nix reads back are the tree we added.
        let t = ok(nix.cmd("nix-store").args(["--dump", p]));
        let o = ok(ours(&links, &nix, "nix-store").args(["--dump", p]));
        assert!(t == o);
    }
    // Export from Nix, import into a second store (same logical store directory, files
    // elsewhere), which real Nix then verifies; our export of it is Nix's byte for byte.
    let stream = ok(nix.cmd("nix-store").arg("--export").args(&paths));
    let other = tempfile::tempdir().unwrap();
    let url = format!(
        "local?root={}&store={}",
        other.path().display(),
        nix.store_dir()
    );
    let mut imp = ours(&links, &nix, "nix-store");
    imp.args(["--store", &url, "--import"]);
    let out = piped(imp, &stream);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = nix
        .cmd("nix-store")
        .args(["--store", &url, "--verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours_stream = ok(ours(&links, &nix, "nix-store")
        .args(["--store", &url, "--export"])
        .args(&paths));
    assert!(ours_stream == stream, "export streams differ");
    // Nix collects what we made.
    let out = ok(nix.cmd("nix-store").arg("--gc"));
    assert!(text(out).contains("store paths deleted"));
    for p in &paths {
        assert!(!std::path::Path::new(p).exists(), "{p} survived Nix's GC");
    }
}

#[test]
fn gc_roots_and_delete_like_nix() {
    let Some(nix) = Nix::new() else { return };
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("t.nix"), EXPR).unwrap();
    let drv = text(ok(nix.cmd("nix-instantiate").arg(dir.path().join("t.nix"))));
    let outs = text(ok(nix.cmd("nix-store").args(["-r", drv.trim()])));
    let out = outs.lines().next().unwrap().to_owned();
    let link = dir.path().join("result");
    let made = text(ok(ours(&links, &nix, "nix-store")
        .arg("--add-root")
        .arg(&link)
        .args(["-r", &out])));
    assert_eq!(made.trim(), link.to_str().unwrap());
    // Both see the root.
    let t = text(ok(nix.cmd("nix-store").args(["--gc", "--print-roots"])));
    let o = text(ok(
        ours(&links, &nix, "nix-store").args(["--gc", "--print-roots"])
    ));
    assert!(t.contains(&format!("{} -> {out}", link.display())), "{t}");
    assert_eq!(o, t);
    let t = text(ok(nix.cmd("nix-store").args(["-q", "--roots", &out])));
    let o = text(ok(
        ours(&links, &nix, "nix-store").args(["-q", "--roots", &out])
    ));
    assert_eq!(o, t);
    // A live path cannot be deleted; a dead one can.
    let r = ours(&links, &nix, "nix-store")
        .args(["--delete", &out])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("still alive"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    fs::remove_file(&link).unwrap();
    let r = ok(&mut ours(&links, &nix, "nix-collect-garbage"));
    assert!(text(r).contains("store paths deleted"));
    assert!(!std::path::Path::new(&out).exists());
    let out = nix
        .cmd("nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(out.status.success());
}
