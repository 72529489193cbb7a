//! Binary caches written by `ferrix copy --to file://…`: what real Nix 2.8 writes for the
//! same paths, and what it substitutes from, in every compression.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{ok, Nix};

const EXPR: &str = r#"
let
  dep = derivation { name = "dep"; system = builtins.currentSystem; builder = "/bin/sh";
    args = ["-c" "echo dep > $out"]; };
in derivation { name = "top"; system = builtins.currentSystem; builder = "/bin/sh";
  args = ["-c" "/bin/mkdir $out; echo ${dep} > $out/ref; /bin/cat ${dep} > $out/copy"]; }
"#;

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap()
}

/// Real Nix builds the closure; the key pair signs.
fn setup(nix: &Nix, dir: &Path) -> (String, Vec<String>, String) {
    let file = dir.join("t.nix");
    fs::write(&file, EXPR).unwrap();
    let top = text(ok(nix.cmd("nix-build").arg(&file).arg("--no-out-link")))
        .trim()
        .to_owned();
    let closure: Vec<String> = text(ok(nix.cmd("nix-store").args(["-qR", &top])))
        .lines()
        .map(str::to_owned)
        .collect();
    ok(nix
        .cmd("nix-store")
        .arg("--generate-binary-cache-key")
        .arg("ferrix-test-1")
        .arg(dir.join("sk"))
        .arg(dir.join("pk")));
    let pk = fs::read_to_string(dir.join("pk"))
        .unwrap()
        .trim()
        .to_owned();
    (top, closure, pk)
}

fn ferrix_copy(nix: &Nix, to: &str, path: &str) -> std::process::Output {
    let mut c = Command::new(common::ferrix_exe());
    nix.isolate(&mut c);
    c.args(["copy", "--to", to, path]).output().unwrap()
}

#[test]
fn an_uncompressed_cache_is_what_nix_copy_writes() {
    let Some(nix) = Nix::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (top, closure, _) = setup(&nix, dir.path());
    let sk = dir.path().join("sk");
    let theirs = dir.path().join("theirs");
    let ours = dir.path().join("ours");
    ok(nix
        .cmd("nix")
        .args(["copy", "--to"])
        .arg(format!(
            "file://{}?compression=none&secret-key={}",
            theirs.display(),
            sk.display()
        ))
        .arg(&top));
    let out = ferrix_copy(
        &nix,
        &format!(
            "file://{}?compression=none&secret-key={}",
            ours.display(),
            sk.display()
        ),
        &top,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files = 0;
    for e in fs::read_dir(&theirs).unwrap().flatten() {
        let name = e.file_name();
        if e.path().is_file() {
            assert_eq!(
                fs::read(e.path()).unwrap(),
                fs::read(ours.join(&name)).unwrap_or_default(),
                "{name:?}"
            );
            files += 1;
        }
    }
    // nix-cache-info and one narinfo per path.
    assert_eq!(files, closure.len() + 1);
    for e in fs::read_dir(theirs.join("nar")).unwrap().flatten() {
        assert_eq!(
            fs::read(e.path()).unwrap(),
            fs::read(ours.join("nar").join(e.file_name())).unwrap()
        );
    }
}

#[test]
fn real_nix_substitutes_from_every_compression() {
    let Some(nix) = Nix::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (top, closure, pk) = setup(&nix, dir.path());
    let sk = dir.path().join("sk");
    for c in ["none", "xz", "zstd", "bzip2", "br"] {
        let cache = dir.path().join(format!("cache-{c}"));
        let url = format!("file://{}", cache.display());
        let out = ferrix_copy(
            &nix,
            &format!("{url}?compression={c}&secret-key={}", sk.display()),
            &top,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Gone here, then fetched back by real Nix from the cache, signature checked.
        ok(nix.cmd("nix-store").arg("--delete").args(&closure));
        let out = nix
            .cmd("nix-store")
            .args(["-r", &top, "--option", "substituters", &url])
            .args(["--option", "trusted-public-keys", &pk])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{c}: {err}");
        assert!(err.contains("copying path"), "{c}: {err}");
        ok(nix.cmd("nix-store").arg("--verify-path").args(&closure));
        assert_eq!(
            fs::read_to_string(Path::new(&top).join("copy")).unwrap(),
            "dep\n"
        );
    }
}

#[test]
fn real_nix_refuses_an_unsigned_cache() {
    let Some(nix) = Nix::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (top, closure, pk) = setup(&nix, dir.path());
    let url = format!("file://{}", dir.path().join("unsigned").display());
    let out = ferrix_copy(&nix, &url, &top);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(nix.cmd("nix-store").arg("--delete").args(&closure));
    let out = nix
        .cmd("nix-store")
        .args(["-r", &top, "--option", "substituters", &url])
        .args(["--option", "trusted-public-keys", &pk])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is not signed by any of the keys"), "{err}");
}

#[test]
fn bad_cache_urls_are_clear_errors() {
    let Some(nix) = Nix::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (top, _, _) = setup(&nix, dir.path());
    let base = format!("file://{}", dir.path().join("c").display());
    for (url, want) in [
        (
            format!("{base}?compression=lz4"),
            "unknown compression 'lz4'",
        ),
        (
            format!("{base}?compression-level=high"),
            "compression-level 'high'",
        ),
        (
            format!("{base}?secret-key=/nonexistent/key"),
            "'/nonexistent/key'",
        ),
        ("file://relative/dir".to_owned(), "absolute directory"),
    ] {
        let out = ferrix_copy(&nix, &url, &top);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{url}: {err}");
    }
}

fn ferrix_from(nix: &Nix, from: &str, path: &str, pk: &str) -> std::process::Output {
    let mut c = Command::new(common::ferrix_exe());
    nix.isolate(&mut c);
    c.args(["--option", "trusted-public-keys", pk])
        .args(["copy", "--from", from, path])
        .output()
        .unwrap()
}

/// A cache real Nix wrote (xz, its default) is read back by Ferrix, signature checked, and
/// real Nix finds the paths sound; a NAR cut short is refused and nothing enters.
#[test]
fn ferrix_reads_what_nix_copy_wrote() {
    let Some(nix) = Nix::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (top, closure, pk) = setup(&nix, dir.path());
    let cache = dir.path().join("theirs");
    let url = format!("file://{}", cache.display());
    ok(nix
        .cmd("nix")
        .args(["copy", "--to"])
        .arg(format!(
            "{url}?secret-key={}",
            dir.path().join("sk").display()
        ))
        .arg(&top));
    ok(nix.cmd("nix-store").arg("--delete").args(&closure));
    // Without the key it is refused.
    let out = ferrix_from(
        &nix,
        &url,
        &top,
        "other-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not signed by any of the keys"),
        "{err}"
    );
    let out = ferrix_from(&nix, &url, &top, &pk);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("copied {} paths", closure.len())),
        "{err}"
    );
    ok(nix.cmd("nix-store").arg("--verify-path").args(&closure));

    // The NAR of the top path cut in half.
    ok(nix.cmd("nix-store").arg("--delete").arg(&top));
    let hash = Path::new(&top).file_name().unwrap().to_string_lossy()[..32].to_owned();
    let info = fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
    let url_line = info.lines().find(|l| l.starts_with("URL: ")).unwrap();
    let nar = cache.join(&url_line["URL: ".len()..]);
    let bytes = fs::read(&nar).unwrap();
    fs::write(&nar, &bytes[..bytes.len() / 2]).unwrap();
    let out = ferrix_from(&nix, &url, &top, &pk);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot copy '{top}' from '{url}'")),
        "{err}"
    );
    let v = nix
        .cmd("nix-store")
        .args(["--check-validity", &top])
        .output()
        .unwrap();
    assert!(!v.status.success());
}

/// `ferrix store sign` gives the signatures real Nix gives (Ed25519 is deterministic: Nix
/// signing again adds none) and that real Nix verifies.
#[test]
fn store_sign_makes_the_signatures_nix_makes() {
    let Some(nix) = Nix::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (top, closure, pk) = setup(&nix, dir.path());
    let sk = dir.path().join("sk");
    let mut c = Command::new(common::ferrix_exe());
    nix.isolate(&mut c);
    let out = c
        .args(["store", "sign", "-r", "--key-file"])
        .arg(&sk)
        .arg(&top)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("added {} signatures", closure.len())),
        "{err}"
    );
    ok(nix
        .cmd("nix")
        .args([
            "store",
            "verify",
            "-r",
            "--sigs-needed",
            "1",
            "--trusted-public-keys",
            &pk,
        ])
        .arg(&top));
    ok(nix
        .cmd("nix")
        .args(["store", "sign", "-r", "--key-file"])
        .arg(&sk)
        .arg(&top));
    let sigs = text(ok(nix
        .cmd("nix")
        .args(["path-info", "--sigs", "-r"])
        .arg(&top)));
    for line in sigs.lines() {
        assert_eq!(line.matches("ferrix-test-1:").count(), 1, "{sigs}");
    }
}
