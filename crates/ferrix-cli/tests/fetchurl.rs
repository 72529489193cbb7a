//! `builtin:fetchurl`: the derivations real Nix 2.8 makes of `<nix/fetchurl.nix>`, built by
//! Ferrix in-process from a server the test starts on 127.0.0.1 and from `file://`: plain,
//! executable and unpacked (a `.nar.xz`) downloads, and a wrong hash or a missing file
//! failing with the URL named and nothing left in the store.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::http::Server;
use common::{ok, Links, Nix};

struct Env {
    nix: Nix,
    links: Links,
    files: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            nix: Nix::new().expect("real Nix is installed"),
            links: Links::new(),
            files: tempfile::tempdir().unwrap(),
        }
    }

    /// The derivation of `import <nix/fetchurl.nix> { ARGS }`, instantiated by real Nix,
    /// and its output path.
    fn fetchurl(&self, args: &str) -> (String, String) {
        let drv = text(ok(self
            .nix
            .cmd("nix-instantiate")
            .args(["-E", &format!("import <nix/fetchurl.nix> {{ {args} }}")])));
        let out = text(ok(self.nix.cmd("nix-store").args([
            "-q",
            "--outputs",
            &drv,
        ])));
        (drv, out)
    }

    fn realise(&self, drv: &str) -> Output {
        let mut c: Command = self.links.cmd("nix-store");
        self.nix.isolate(&mut c);
        c.args(["-r", drv]).output().unwrap()
    }

    fn hash(&self, args: &[&str], path: &Path) -> String {
        text(ok(self.nix.cmd("nix-hash").args(args).arg(path)))
    }
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap().trim().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn plain_executable_and_unpacked_downloads_over_http_and_from_files() {
    let e = Env::new();
    let dir = e.files.path();
    fs::write(dir.join("hello.txt"), "hello, world\n").unwrap();
    fs::write(dir.join("tool.sh"), "#!/bin/sh\necho tool\n").unwrap();
    // A NAR of a small tree, as `unpack` expects it: xz-compressed.
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/a"), "a\n").unwrap();
    std::os::unix::fs::symlink("sub/a", tree.join("link")).unwrap();
    let nar = ok(e.nix.cmd("nix-store").arg("--dump").arg(&tree));
    let mut xz = Command::new("xz")
        .args(["-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        xz.stdin.take().unwrap().write_all(&nar).unwrap();
    }
    let packed = xz.wait_with_output().unwrap();
    assert!(packed.status.success());
    fs::write(dir.join("tree.nar.xz"), packed.stdout).unwrap();
    let server = Server::start(dir.to_owned());

    let flat = e.hash(
        &["--type", "sha256", "--flat", "--base32"],
        &dir.join("hello.txt"),
    );
    for url in [
        format!("{}/hello.txt", server.url()),
        format!("file://{}", dir.join("hello.txt").display()),
    ] {
        let (drv, out) = e.fetchurl(&format!(r#"url = "{url}"; sha256 = "{flat}";"#));
        let o = e.realise(&drv);
        assert!(o.status.success(), "{url}: {}", stderr(&o));
        assert_eq!(text(o.stdout.clone()), out);
        assert_eq!(fs::read_to_string(&out).unwrap(), "hello, world\n");
        // The same output for both URLs: only its hash names it.
        ok(e.nix.cmd("nix-store").args(["--delete", &out]));
    }
    assert_eq!(server.hits_of("/hello.txt"), 1);

    // Executable: a recursive hash of an executable file.
    fs::set_permissions(dir.join("tool.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let rec = e.hash(&["--type", "sha256", "--base32"], &dir.join("tool.sh"));
    let (drv, out) = e.fetchurl(&format!(
        r#"url = "{}/tool.sh"; sha256 = "{rec}"; executable = true;"#,
        server.url()
    ));
    let o = e.realise(&drv);
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "{mode:o}");
    let ran = Command::new(&out).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "tool\n");

    // Unpacked: the tree the NAR holds.
    let tree_hash = e.hash(&["--type", "sha256", "--base32"], &tree);
    let (drv, out) = e.fetchurl(&format!(
        r#"url = "{}/tree.nar.xz"; sha256 = "{tree_hash}"; unpack = true;"#,
        server.url()
    ));
    let o = e.realise(&drv);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read_to_string(Path::new(&out).join("sub/a")).unwrap(),
        "a\n"
    );
    assert_eq!(
        fs::read_link(Path::new(&out).join("link")).unwrap(),
        Path::new("sub/a")
    );
    // Real Nix finds every path as the database says.
    ok(e.nix
        .cmd("nix-store")
        .args(["--verify", "--check-contents"]));
}

#[test]
fn a_wrong_hash_or_a_missing_file_fails_naming_it_and_leaves_nothing() {
    let e = Env::new();
    let dir = e.files.path();
    fs::write(dir.join("hello.txt"), "hello, world\n").unwrap();
    let server = Server::start(dir.to_owned());
    let other = "1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0";
    let cases = [
        (
            format!("{}/hello.txt", server.url()),
            "hash mismatch in fixed-output derivation",
        ),
        (format!("{}/missing.txt", server.url()), "404"),
        (
            format!("file://{}", dir.join("missing.txt").display()),
            "missing.txt",
        ),
    ];
    for (url, says) in cases {
        let (drv, out) = e.fetchurl(&format!(r#"url = "{url}"; sha256 = "{other}";"#));
        let o = e.realise(&drv);
        let err = stderr(&o);
        assert!(!o.status.success(), "{url}: {err}");
        assert!(err.contains(says) && err.contains(&drv), "{url}: {err}");
        if says != "hash mismatch in fixed-output derivation" {
            assert!(err.contains(&url), "{url}: {err}");
        }
        assert!(
            fs::symlink_metadata(&out).is_err(),
            "{url}: {out} was left behind"
        );
    }
}
