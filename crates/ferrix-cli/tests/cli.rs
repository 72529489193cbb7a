//! Whole-CLI runs as snapshots: what a user sees on stdout and stderr, and the exit code.

mod common;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// `exit: N`, stdout and stderr, with temporary paths redacted.
fn transcript(cmd: &mut Command, stdin: Option<&[u8]>) -> String {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

macro_rules! snap {
    ($name:expr, $text:expr) => {
        insta::with_settings!({filters => vec![
            (r"[^ '\n]*/\.tmp[A-Za-z0-9]+", "[TMP]"),
            (r"[^ '\n]*/tests/vectors", "[VECTORS]"),
        ]}, {
            insta::assert_snapshot!($name, $text);
        });
    };
}

fn examples() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn hash_path_in_every_encoding() {
    let src = examples().join("hello-src");
    let mut all = String::new();
    for enc in ["--sri", "--base16", "--base32", "--base64"] {
        all += &transcript(ferrix().args(["hash", "path", enc]).arg(&src), None);
    }
    all += &transcript(
        ferrix()
            .args(["hash", "path", "--type", "sha1"])
            .arg(&src)
            .arg(src.join("bin/hello")),
        None,
    );
    snap!("hash_path", all);
}

#[test]
fn hash_conversions_and_errors() {
    let mut all = String::new();
    for args in [
        &[
            "hash",
            "convert",
            "--hash-algo",
            "sha256",
            "--to",
            "nix32",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ][..],
        &[
            "hash",
            "convert",
            "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        ],
        &[
            "hash",
            "convert",
            "--from",
            "base16",
            "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        ],
        &[
            "hash",
            "to-base16",
            "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
        ],
        &["hash", "to-base32", "abcd"],
        &["hash", "to-base32", "--type", "sha256", "abcd"],
        &["hash", "to-base32", "--type", "sha3", "abcd"],
        &[
            "hash",
            "to-base32",
            "sha1:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        ],
        &[
            "hash",
            "to-base16",
            "--type",
            "sha256",
            "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5e",
        ],
        &["hash", "path", "/nonexistent/path"],
        &[
            "--extra-experimental-features",
            "nix-command flakes",
            "hash",
            "to-sri",
            "--type",
            "md5",
            "900150983cd24fb0d6963f7d28e17f72",
        ],
    ] {
        all += &format!("$ ferrix {}\n", args.join(" "));
        all += &transcript(ferrix().args(args), None);
    }
    snap!("hash_conversions", all);
}

#[test]
fn nix_hash_personality() {
    let links = Links::new();
    let src = examples().join("hello-src");
    let mut all = String::new();
    for args in [
        &[][..],
        &["--type", "sha256"],
        &["--type", "sha256", "--base32"],
        &["--type", "sha512", "--truncate", "--base32"],
        &["--flat", "--type", "sha1"],
    ] {
        let target = if args.contains(&"--flat") {
            src.join("bin/hello")
        } else {
            src.clone()
        };
        all += &format!("$ nix-hash {}\n", args.join(" "));
        all += &transcript(links.cmd("nix-hash").args(args).arg(target), None);
    }
    all += &transcript(
        links.cmd("nix-hash").args([
            "--type",
            "sha256",
            "--to-base32",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ]),
        None,
    );
    all += &transcript(links.cmd("nix-hash").arg("--bogus"), None);
    snap!("nix_hash", all);
}

#[test]
fn nar_ls_and_cat() {
    let nar = vectors().join("nar/mixed-tree.nar");
    let mut all = String::new();
    for args in [&["-lR"][..], &["--json", "-R"], &[]] {
        all += &format!("$ ferrix nar ls {} mixed-tree.nar /\n", args.join(" "));
        all += &transcript(
            ferrix().args(["nar", "ls"]).args(args).arg(&nar).arg("/"),
            None,
        );
    }
    all += &transcript(ferrix().args(["nar", "ls"]).arg(&nar).arg("/no/such"), None);
    snap!("nar_ls", all);
}

#[test]
fn bad_nars_are_clear_errors() {
    let cases: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(vectors().join("nar/invalid/cases.json")).unwrap(),
    )
    .unwrap();
    let links = Links::new();
    let mut all = String::new();
    for c in cases.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let file = vectors().join("nar").join(c["nar_file"].as_str().unwrap());
        all += &format!("$ ferrix nar ls -R {name}.nar /\n");
        all += &transcript(ferrix().args(["nar", "ls", "-R"]).arg(&file).arg("/"), None);
        // Restoring it fails too, and leaves nothing behind.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let out = links
            .cmd("nix-store")
            .arg("--restore")
            .arg(&target)
            .stdin(fs::File::open(&file).unwrap())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            target.symlink_metadata().is_err(),
            "{name}: restore left {target:?} behind"
        );
    }
    snap!("bad_nars", all);
}

#[test]
fn derivation_show() {
    let drv = vectors().join("drv/diamond/drvs");
    let mut files: Vec<_> = fs::read_dir(&drv)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut all = transcript(ferrix().args(["derivation", "show"]).args(&files), None);
    // A damaged .drv names what is wrong and where.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.drv");
    let mut text = fs::read(&files[0]).unwrap();
    text.truncate(text.len() / 2);
    fs::write(&bad, &text).unwrap();
    all += &transcript(ferrix().args(["derivation", "show"]).arg(&bad), None);
    all += &transcript(ferrix().args(["derivation", "show", "nixpkgs#hello"]), None);
    snap!("derivation_show", all);
}

#[test]
fn personalities_and_usage() {
    let links = Links::new();
    let mut all = String::new();
    all += &transcript(links.cmd("nix-build").args(["-E", "{ a = 1; } 2 +"]), None);
    all += &transcript(
        links.cmd("nix-store").args([
            "--query",
            "--references",
            "/nix/store/0g1savw1cf7pji42hasyx0smc4aw15nw-t.txt",
        ]),
        None,
    );
    all += &transcript(links.cmd("nix-store").args(["--frobnicate"]), None);
    all += &transcript(&mut links.cmd("nix-store"), None);
    all += &transcript(
        links.cmd("nix-store").args(["--dump", "/nonexistent"]),
        None,
    );
    all += &transcript(links.cmd("nix").args(["hash", "frobnicate"]), None);
    all += &transcript(
        ferrix().args(["key", "convert-secret-to-public"]),
        Some(b"garbage"),
    );
    all += &transcript(
        ferrix().args(["key", "generate-secret", "--key-name", "a:b"]),
        None,
    );
    snap!("personalities", all);
}

#[test]
fn key_round_trip() {
    let sk = ok(ferrix().args(["key", "generate-secret", "--key-name", "test-1"]));
    let sk = String::from_utf8(sk).unwrap();
    assert!(
        sk.starts_with("test-1:") && sk.len() == "test-1:".len() + 88,
        "{sk}"
    );
    let mut c = ferrix();
    c.args(["key", "convert-secret-to-public"]);
    let t = transcript(&mut c, Some(sk.as_bytes()));
    assert!(t.starts_with("exit: 0\n--- stdout\ntest-1:"), "{t}");
}

/// Bad input to the store: a clear error, exit 1, and the store exactly as before.
#[test]
fn store_refuses_bad_input() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("local?root={}", root.path().display());
    let store_cmd = |args: &[&str]| {
        let mut c = ferrix();
        c.env("NIX_REMOTE", &url).args(args);
        c
    };
    let links = Links::new();
    let nix_store = |args: &[&str]| {
        let mut c = links.cmd("nix-store");
        c.env("NIX_REMOTE", &url).args(args);
        c
    };
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("good"), b"good\n").unwrap();
    let good = String::from_utf8(ok(&mut nix_store(&[
        "--add",
        dir.path().join("good").to_str().unwrap(),
    ])))
    .unwrap();
    let listing = |root: &std::path::Path| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(root.join("nix/store"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    };
    let dump = |c: &mut Command| String::from_utf8(ok(c)).unwrap();
    let before = (listing(root.path()), dump(&mut nix_store(&["--dump-db"])));

    let mut all = String::new();
    // A name Nix refuses.
    fs::write(dir.path().join("a b"), b"x").unwrap();
    all += &transcript(
        &mut nix_store(&["--add", dir.path().join("a b").to_str().unwrap()]),
        None,
    );
    // A corrupt export stream: a NAR cut short.
    let mut stream = ok(&mut nix_store(&["--export", good.trim()]));
    stream.truncate(60);
    all += &transcript(&mut nix_store(&["--import"]), Some(&stream));
    // A NAR with a bad archive inside a well-formed stream.
    let mut bad = ok(&mut nix_store(&["--export", good.trim()]));
    bad[8 + 8] = b'X';
    all += &transcript(&mut nix_store(&["--import"]), Some(&bad));
    // Hashes that are not hashes.
    all += &transcript(
        &mut nix_store(&["--print-fixed-path", "sha256", "abcd", "x"]),
        None,
    );
    all += &transcript(&mut nix_store(&["--add-fixed", "sha3", "/dev/null"]), None);
    // A path that is not valid.
    all += &transcript(
        &mut store_cmd(&[
            "path-info",
            "/nix/store/0g1savw1cf7pji42hasyx0smc4aw15nw-t.txt",
        ]),
        None,
    );
    assert_eq!(
        (listing(root.path()), dump(&mut nix_store(&["--dump-db"]))),
        before
    );

    // A path relative to the working directory, `..` and all, as Nix takes it.
    let name = good.trim().rsplit('/').next().unwrap().to_owned();
    let by_abs = ok(&mut nix_store(&["-q", "--hash", good.trim()]));
    let by_rel = ok(nix_store(&["-q", "--hash", &format!("../store/./{name}")])
        .current_dir(root.path().join("nix/store")));
    assert_eq!(by_abs, by_rel);

    // A database from a future Nix: refused, untouched.
    let schema = root.path().join("nix/var/nix/db/schema");
    fs::write(&schema, "11").unwrap();
    all += &transcript(&mut nix_store(&["-q", "--hash", good.trim()]), None);
    assert_eq!(fs::read_to_string(&schema).unwrap(), "11");
    let all = all
        .replace(&dir.path().display().to_string(), "[DIR]")
        .replace(&root.path().display().to_string(), "[ROOT]");
    snap!("store_bad_input", all);
}

/// `nix-collect-garbage -d`: old profile generations go, and with them what only they held.
#[test]
fn collect_garbage_deletes_old_generations() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("local?root={}", root.path().display());
    let links = Links::new();
    let cmd = |name: &str, args: &[&str]| {
        let mut c = links.cmd(name);
        c.env("NIX_REMOTE", &url).args(args);
        c
    };
    let dir = tempfile::tempdir().unwrap();
    for n in ["old", "new"] {
        fs::write(dir.path().join(n), n).unwrap();
    }
    let add = |n: &str| {
        let out = ok(&mut cmd(
            "nix-store",
            &["--add", dir.path().join(n).to_str().unwrap()],
        ));
        String::from_utf8(out).unwrap().trim().to_owned()
    };
    let (old, new) = (add("old"), add("new"));
    let profiles = root.path().join("nix/var/nix/profiles");
    std::os::unix::fs::symlink(&old, profiles.join("p-1-link")).unwrap();
    std::os::unix::fs::symlink(&new, profiles.join("p-2-link")).unwrap();
    std::os::unix::fs::symlink("p-2-link", profiles.join("p")).unwrap();
    let real = |p: &str| root.path().join(p.trim_start_matches('/'));
    // Both generations are roots: nothing to collect.
    ok(&mut cmd("nix-collect-garbage", &[]));
    assert!(real(&old).exists() && real(&new).exists());
    let out = String::from_utf8(ok(&mut cmd("nix-collect-garbage", &["-d"]))).unwrap();
    assert_eq!(out.trim(), "1 store paths deleted, 0.00 MiB freed");
    assert!(!profiles.join("p-1-link").exists());
    assert!(!real(&old).exists());
    assert!(real(&new).exists());
}
