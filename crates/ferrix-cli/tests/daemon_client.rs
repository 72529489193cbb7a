//! Ferrix's `nix-store` as a daemon's client: against a Ferrix daemon and against real Nix
//! 2.8's, the same operations give what they give on a local store; and a user who cannot
//! write the store's state is sent to the daemon without asking, as Nix does; and
//! `nix-store --serve` and `ferrix serve-cache` on such a machine serve the daemon's store
//! to real Nix.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::daemon::{ok, Daemon, NixDaemon};
use common::{piped, store_env, Links, Nix};

/// A daemon on a store of its own under `root`: Ferrix's or real Nix's.
struct Served {
    root: PathBuf,
    socket: PathBuf,
    links: Links,
}

impl Served {
    /// A Ferrix daemon's store (the daemon goes when the returned guard does).
    fn by_ferrix() -> (Daemon, Served) {
        let d = Daemon::start("");
        let s = Served {
            root: d.root.path().to_owned(),
            socket: d.socket(),
            links: Links::new(),
        };
        (d, s)
    }

    /// Real Nix 2.8's daemon's store, once it answers a whole handshake.
    fn by_real_nix(nix: &Nix) -> (NixDaemon, Served) {
        let daemon = NixDaemon::start(nix);
        let s = Served {
            root: daemon.root.path().to_owned(),
            socket: daemon.socket(),
            links: Links::new(),
        };
        let start = Instant::now();
        while !s
            .ferrix("nix-store")
            .args(["--check-validity", "--print-invalid"])
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nix-daemon never answered"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        (daemon, s)
    }

    /// Ferrix's `name` (`nix-store`, …) with the daemon as its store.
    fn ferrix(&self, name: &str) -> Command {
        let mut c = Command::new(self.links.dir.path().join(name));
        store_env(&mut c, &self.root);
        c.env("NIX_REMOTE", format!("unix://{}", self.socket.display()));
        c
    }
}

impl Served {
    /// `ferrix` itself with the daemon as its store.
    fn main(&self) -> Command {
        let mut c = Command::new(common::ferrix_exe());
        store_env(&mut c, &self.root);
        c.env("NIX_REMOTE", format!("unix://{}", self.socket.display()));
        c
    }
}

fn text(o: Output, what: &str) -> String {
    ok(o, what)
}

/// What Ferrix's nix-store does through `s`, checked against what the store holds.
fn nix_store_through(s: &Served, nix: &Nix) {
    let src = s.root.join("tmp/src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), "contents\n").unwrap();
    let added = text(
        s.ferrix("nix-store")
            .arg("--add")
            .arg(&src)
            .output()
            .unwrap(),
        "adding through the daemon",
    );
    // The path real Nix gives it.
    let mut theirs = nix.cmd("nix-store");
    let other = tempfile::tempdir().unwrap();
    theirs
        .env("NIX_STORE_DIR", s.root.join("store"))
        .arg("--store")
        .arg(format!("local?root={}", other.path().display()))
        .arg("--add")
        .arg(&src);
    assert_eq!(added, text(theirs.output().unwrap(), "real Nix adding"));
    assert!(Path::new(&added).join("d/f").exists());
    // Built through the daemon: the build's log on standard error, the output printed.
    let expr = s.root.join("tmp/d.nix");
    fs::write(
        &expr,
        format!(
            r#"derivation {{ name = "via-daemon"; system = builtins.currentSystem; builder = "/bin/sh";
                 args = [ "-c" "echo building it; /bin/cat $src/d/f > $out" ]; src = builtins.storePath "{added}"; }}"#
        ),
    )
    .unwrap();
    let mut inst = nix.cmd("nix-instantiate");
    store_env(&mut inst, &s.root);
    inst.arg("--store")
        .arg(format!("unix://{}", s.socket.display()))
        .arg(&expr);
    let drv = text(inst.output().unwrap(), "instantiating");
    // The registration of a path and of all, as real Nix dumps them through the daemon.
    for args in [
        vec!["--dump-db", drv.as_str(), added.as_str()],
        vec!["--dump-db"],
    ] {
        let mut real = nix.cmd("nix-store");
        store_env(&mut real, &s.root);
        real.arg("--store")
            .arg(format!("unix://{}", s.socket.display()))
            .args(&args);
        assert_eq!(
            text(
                s.ferrix("nix-store").args(&args).output().unwrap(),
                "dumping"
            ),
            text(real.output().unwrap(), "real Nix dumping"),
            "{args:?}"
        );
    }
    let dry = s
        .ferrix("nix-store")
        .args(["-r", "--dry-run", &drv])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&dry.stderr).contains("this derivation would be built:"),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let link = s.root.join("home/result");
    let built = s
        .ferrix("nix-store")
        .args(["-r", &drv, "--add-root"])
        .arg(&link)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&built.stderr).into_owned();
    assert!(built.status.success(), "{err}");
    assert!(err.contains("building it"), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&built.stdout).trim(),
        link.display().to_string()
    );
    let out = fs::read_link(&link).unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), "contents\n");
    let out = out.display().to_string();
    // Queries.
    let q = |args: &[&str]| {
        text(
            s.ferrix("nix-store").arg("-q").args(args).output().unwrap(),
            "querying through the daemon",
        )
    };
    assert_eq!(q(&["--outputs", &drv]), out);
    assert_eq!(q(&["--deriver", &out]), drv);
    assert_eq!(q(&["--references", &out]), "");
    assert!(q(&["--references", &drv]).contains(&added));
    assert!(q(&["--referrers", &added]).contains(&drv));
    let req = q(&["-R", &drv]);
    assert!(req.contains(&added) && req.ends_with(&drv), "{req}");
    assert!(q(&["--hash", &added]).starts_with("sha256:"));
    assert!(q(&["--roots", &out]).contains(&link.display().to_string()));
    // The tree and the graph are the store's own.
    let mut local = Command::new(s.links.dir.path().join("nix-store"));
    store_env(&mut local, &s.root);
    let direct = text(
        local.args(["-q", "--tree", &drv]).output().unwrap(),
        "the tree, locally",
    );
    assert_eq!(q(&["--tree", &drv]), direct);
    assert!(q(&["--graph", &drv]).starts_with("digraph G {"));
    // The build's log, read where the daemon keeps it.
    let log = text(
        s.ferrix("nix-store")
            .args(["--read-log", &out])
            .output()
            .unwrap(),
        "reading the log",
    );
    assert!(log.contains("building it"), "{log}");
    // An export through the daemon is the export of the store itself.
    let through = s
        .ferrix("nix-store")
        .args(["--export", &out, &added])
        .output()
        .unwrap();
    assert!(through.status.success());
    let mut local = Command::new(s.links.dir.path().join("nix-store"));
    store_env(&mut local, &s.root);
    let direct = local.args(["--export", &out, &added]).output().unwrap();
    assert!(direct.status.success());
    assert_eq!(through.stdout, direct.stdout);
    // The root keeps the output; what nothing keeps goes.
    let refused = s
        .ferrix("nix-store")
        .args(["--delete", &out])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let roots = text(
        s.ferrix("nix-store")
            .args(["--gc", "--print-roots"])
            .output()
            .unwrap(),
        "listing roots",
    );
    assert!(
        roots.contains(&format!("{} -> {out}", link.display())),
        "{roots}"
    );
    let verified = s
        .ferrix("nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(verified.status.success());
    let checked = s
        .ferrix("nix-store")
        .args(["--verify-path", &out, &added])
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // A damaged output is built again by its deriver.
    let mut perms = fs::metadata(&out).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&out, perms).unwrap();
    fs::write(&out, "damaged\n").unwrap();
    let damaged = s
        .ferrix("nix-store")
        .args(["--verify-path", &out])
        .output()
        .unwrap();
    assert!(!damaged.status.success());
    assert!(String::from_utf8_lossy(&damaged.stderr).contains("was modified"));
    let repaired = s
        .ferrix("nix-store")
        .args(["--repair-path", &out])
        .output()
        .unwrap();
    assert!(
        repaired.status.success(),
        "{}",
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), "contents\n");
    fs::remove_file(&link).unwrap();
    // The repair's session ends in the daemon a moment after its client has gone; the
    // roots of its build go with it (with the last session, for the ones the shared Engine
    // takes): the output is collected within moments.
    let start = Instant::now();
    loop {
        let gc = text(
            s.ferrix("nix-store").arg("--gc").output().unwrap(),
            "collecting",
        );
        assert!(gc.contains("store paths deleted"), "{gc}");
        let valid = s
            .ferrix("nix-store")
            .args(["--check-validity", &out])
            .output()
            .unwrap();
        if !valid.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the output outlived its root"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Evaluation and builds with Ferrix's nix-instantiate and nix-build through `s`: the same
/// `.drv` real Nix writes, nothing written by `--eval`, import from derivation built by the
/// daemon, results linked and recorded as roots.
fn eval_and_build_through(s: &Served, nix: &Nix) {
    let dir = s.root.join("tmp/proj");
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(dir.join("src/input"), "from a source\n").unwrap();
    fs::write(
        dir.join("default.nix"),
        r#"let
  dep = derivation { name = "dep"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo dep > $out" ]; };
in derivation { name = "top"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo top-builds; /bin/cat ${./src}/input ${dep} ${builtins.toFile "t" "text\n"} > $out" ]; }
"#,
    )
    .unwrap();
    let ours = text(
        s.ferrix("nix-instantiate").arg(&dir).output().unwrap(),
        "instantiating with Ferrix through the daemon",
    );
    let mut theirs = nix.cmd("nix-instantiate");
    store_env(&mut theirs, &s.root);
    theirs
        .arg("--store")
        .arg(format!("unix://{}", s.socket.display()))
        .arg(&dir);
    assert_eq!(
        ours,
        text(theirs.output().unwrap(), "real Nix instantiating")
    );
    // `--eval` computes paths and writes nothing.
    let file = text(
        s.ferrix("nix-instantiate")
            .args([
                "--eval",
                "-E",
                r#"builtins.toFile "only-computed" "never written""#,
            ])
            .output()
            .unwrap(),
        "evaluating",
    );
    let file = file.trim_matches('"').to_owned();
    assert!(file.ends_with("-only-computed"), "{file}");
    let check = s
        .ferrix("nix-store")
        .args(["--check-validity", &file])
        .output()
        .unwrap();
    assert!(!check.status.success(), "--eval wrote '{file}'");
    // Built, linked, and the link a root.
    let link = s.root.join("home/built");
    let built = s
        .ferrix("nix-build")
        .arg(&dir)
        .arg("-o")
        .arg(&link)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&built.stderr).into_owned();
    assert!(built.status.success(), "{err}");
    assert!(err.contains("top-builds"), "{err}");
    let out = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    assert_eq!(fs::read_link(&link).unwrap().display().to_string(), out);
    // nix-instantiate --add-root: the link made here, the root recorded by the daemon.
    let drv_link = s.root.join("home/drv-root");
    let rooted = text(
        s.ferrix("nix-instantiate")
            .arg(&dir)
            .arg("--add-root")
            .arg(&drv_link)
            .output()
            .unwrap(),
        "instantiating with a root",
    );
    assert_eq!(rooted, drv_link.display().to_string());
    assert_eq!(
        fs::read_link(&drv_link).unwrap().display().to_string(),
        ours
    );
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "from a source\ndep\ntext\n"
    );
    let roots = text(
        s.ferrix("nix-store")
            .args(["--gc", "--print-roots"])
            .output()
            .unwrap(),
        "listing roots",
    );
    assert!(
        roots.contains(&format!("{} -> {out}", link.display())),
        "{roots}"
    );
    assert!(
        roots.contains(&format!("{} -> {ours}", drv_link.display())),
        "{roots}"
    );
    // Import from derivation: built by the daemon during evaluation.
    let ifd = text(
        s.ferrix("nix-instantiate")
            .args([
                "--eval",
                "-E",
                r#"builtins.readFile (derivation { name = "ifd"; system = builtins.currentSystem;
                     builder = "/bin/sh"; args = [ "-c" "echo -n read-back > $out" ]; })"#,
            ])
            .output()
            .unwrap(),
        "import from derivation",
    );
    assert_eq!(ifd, "\"read-back\"");
}

#[test]
fn ferrix_nix_store_through_a_ferrix_daemon() {
    let Some(nix) = Nix::new() else { return };
    let (_d, s) = Served::by_ferrix();
    nix_store_through(&s, &nix);
    eval_and_build_through(&s, &nix);
    repl_through(&s);
}

#[test]
fn ferrix_nix_store_through_a_real_nix_daemon() {
    let Some(nix) = Nix::new() else { return };
    let (_daemon, s) = Served::by_real_nix(&nix);
    nix_store_through(&s, &nix);
    eval_and_build_through(&s, &nix);
    repl_through(&s);
}

#[test]
fn a_user_who_cannot_write_the_store_is_sent_to_the_daemon() {
    let Some(nix) = Nix::new() else { return };
    if !rustix::process::geteuid().is_root() {
        assert!(std::env::var("CI").is_err(), "this test needs root in CI");
        return;
    }
    let d = Daemon::start("");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let links = Links::new();
    for dir in [d.root.path(), links.dir.path(), &d.root.path().join("home")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let p = d.add(&nix, "f", "for everyone\n", "adding");
    // `nobody`, with the daemon's state directory (not theirs to write) and no store named.
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={}", nobody.uid),
        &format!("--regid={}", nobody.gid),
        "--clear-groups",
        "--",
    ])
    .arg(links.dir.path().join("nix-store"))
    .args(["-q", "--hash", &p]);
    store_env(&mut c, d.root.path());
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sha256:"));
}

#[test]
fn ferrix_store_commands_and_nix_collect_garbage_through_a_daemon() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let s = Served {
        root: d.root.path().to_owned(),
        socket: d.socket(),
        links: Links::new(),
    };
    let f = s.root.join("tmp/file");
    fs::write(&f, "a file\n").unwrap();
    // add-file: the file's bytes (flat), as real Nix's --add-fixed sha256 gives.
    let flat = text(
        s.main()
            .args(["store", "add-file"])
            .arg(&f)
            .output()
            .unwrap(),
        "ferrix store add-file",
    );
    let mut theirs = nix.cmd("nix-store");
    let other = tempfile::tempdir().unwrap();
    theirs
        .env("NIX_STORE_DIR", s.root.join("store"))
        .arg("--store")
        .arg(format!("local?root={}", other.path().display()))
        .args(["--add-fixed", "sha256"])
        .arg(&f);
    assert_eq!(flat, text(theirs.output().unwrap(), "real Nix adding"));
    let tree = text(
        s.main()
            .args(["store", "add-path"])
            .arg(&f)
            .output()
            .unwrap(),
        "ferrix store add-path",
    );
    assert_ne!(flat, tree);
    // dump-path: the NAR the daemon holds.
    let nar = s
        .main()
        .args(["store", "dump-path", &tree])
        .output()
        .unwrap();
    assert!(nar.status.success());
    let local = Command::new(common::ferrix_exe())
        .args(["nar", "dump-path"])
        .arg(&tree)
        .output()
        .unwrap();
    assert_eq!(nar.stdout, local.stdout);
    // sign: the signature reaches the daemon's store.
    let key = text(
        s.main()
            .args(["key", "generate-secret", "--key-name", "k-1"])
            .output()
            .unwrap(),
        "making a key",
    );
    let key_file = s.root.join("tmp/key");
    fs::write(&key_file, key).unwrap();
    let signed = s
        .main()
        .args(["store", "sign", "--key-file"])
        .arg(&key_file)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&signed.stderr).contains("added 1 signatures"),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let info = text(
        d.ferrix()
            .args(["path-info", "--sigs", &tree])
            .output()
            .unwrap(),
        "reading the signatures",
    );
    assert!(info.contains("k-1:"), "{info}");
    // An export of another store (same store directory) imported through the daemon.
    let elsewhere = tempfile::tempdir().unwrap();
    let src = s.root.join("tmp/imported");
    fs::write(&src, "imported contents\n").unwrap();
    let other_store = |c: &mut Command| {
        store_env(c, &s.root);
        c.arg("--store")
            .arg(format!("local?root={}", elsewhere.path().display()));
    };
    let mut c = Command::new(s.links.dir.path().join("nix-store"));
    other_store(&mut c);
    let moved = text(
        c.arg("--add").arg(&src).output().unwrap(),
        "adding elsewhere",
    );
    let mut c = Command::new(s.links.dir.path().join("nix-store"));
    other_store(&mut c);
    let stream = c.args(["--export", &moved]).output().unwrap();
    assert!(stream.status.success());
    let mut import = s
        .ferrix("nix-store")
        .arg("--import")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        import
            .stdin
            .take()
            .unwrap()
            .write_all(&stream.stdout)
            .unwrap();
    }
    let imported = text(
        import.wait_with_output().unwrap(),
        "importing through the daemon",
    );
    assert_eq!(imported, moved);
    assert_eq!(fs::read_to_string(&moved).unwrap(), "imported contents\n");
    // A derivation added through the daemon is the one added to the store itself.
    let json = r#"{"name": "added", "system": "x86_64-linux", "builder": "/bin/sh",
        "args": ["-c", "echo > $out"], "env": {"out": ""}, "inputSrcs": [], "inputDrvs": {},
        "outputs": {"out": {"path": ""}}}"#;
    let add = |mut c: Command| {
        c.args(["derivation", "add"]);
        text(piped(c, json.as_bytes()), "ferrix derivation add")
    };
    let through = add(s.main());
    assert!(Path::new(&through).exists());
    assert_eq!(through, add(d.ferrix()));
    // verify, optimise, a dry collection, a deletion, then nix-collect-garbage.
    for cmd in ["verify", "optimise"] {
        let o = s.main().args(["store", cmd]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let dead = text(
        s.main()
            .args(["store", "gc", "--dry-run"])
            .output()
            .unwrap(),
        "listing garbage",
    );
    assert!(dead.contains(&flat) && dead.contains(&tree), "{dead}");
    let deleted = text(
        s.main().args(["store", "delete", &flat]).output().unwrap(),
        "deleting",
    );
    assert!(deleted.starts_with("1 store paths deleted"), "{deleted}");
    assert!(!Path::new(&flat).exists());
    let collected = text(
        s.ferrix("nix-collect-garbage").output().unwrap(),
        "nix-collect-garbage",
    );
    assert!(collected.contains("store paths deleted"), "{collected}");
    assert!(!Path::new(&tree).exists());
}

/// Real Nix 2.8 reaching `s` as an `ssh://` machine (run here, as Nix runs `localhost`)
/// whose `nix-store --serve --write` is Ferrix's, with the daemon as its store: a
/// multi-user machine, where the user a master logs in as cannot write the store; and the
/// daemon's store as an HTTP cache (`ferrix serve-cache`).
fn serve_through(s: &Served, nix: &Nix) {
    let wrapper = s.root.join("tmp/serve-through-daemon");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nNIX_REMOTE=unix://{} exec {} \"$@\"\n",
            s.socket.display(),
            s.links.dir.path().join("nix-store").display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let machine = format!("ssh://localhost?remote-program={}", wrapper.display());
    // Real Nix with only the machine as its store (no local store is opened).
    let real = |prog: &str| {
        let mut c = nix.cmd(prog);
        store_env(&mut c, &s.root);
        c.args(["--extra-experimental-features", "nix-command"]);
        c
    };
    let through_daemon = |prog: &str| {
        let mut c = nix.cmd(prog);
        store_env(&mut c, &s.root);
        c.arg("--store")
            .arg(format!("unix://{}", s.socket.display()));
        c
    };
    let src = s.root.join("tmp/served");
    fs::write(&src, "served through the daemon\n").unwrap();
    let p = text(
        through_daemon("nix-store")
            .arg("--add")
            .arg(&src)
            .output()
            .unwrap(),
        "adding",
    );
    let hash = text(
        through_daemon("nix-store")
            .args(["-q", "--hash", &p])
            .output()
            .unwrap(),
        "asking the hash",
    );

    // Path infos (QueryPathInfos).
    let info = text(
        real("nix")
            .args(["path-info", "--json", "--store", &machine, &p])
            .output()
            .unwrap(),
        "nix path-info from the machine",
    );
    let expected = hash.trim_start_matches("sha256:");
    assert!(info.contains(&p), "{info}");
    assert!(
        info.contains(expected) || info.contains(&hash),
        "{info} lacks {hash}"
    );

    // Its NAR out (DumpStorePath), into a binary cache.
    let cache = s.root.join("tmp/cache");
    ok(
        real("nix")
            .args(["copy", "--from", &machine])
            .arg("--to")
            .arg(format!("file://{}", cache.display()))
            .arg(&p)
            .output()
            .unwrap(),
        "nix copy from the machine",
    );
    let hash_part = Path::new(&p)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .to_owned();
    assert!(cache.join(format!("{hash_part}.narinfo")).exists());

    // And back in after it is deleted (AddToStoreNar), unsigned: root is a trusted user.
    ok(
        through_daemon("nix-store")
            .args(["--delete", &p])
            .output()
            .unwrap(),
        "deleting",
    );
    let gone = through_daemon("nix-store")
        .args(["--check-validity", &p])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    ok(
        real("nix")
            .arg("copy")
            .arg("--from")
            .arg(format!("file://{}", cache.display()))
            .args(["--no-check-sigs", "--to", &machine, &p])
            .output()
            .unwrap(),
        "nix copy to the machine",
    );
    ok(
        through_daemon("nix-store")
            .args(["--check-validity", &p])
            .output()
            .unwrap(),
        "the path is back",
    );
    assert_eq!(
        fs::read_to_string(&p).unwrap(),
        "served through the daemon\n"
    );

    // The daemon's store as an HTTP binary cache (`ferrix serve-cache`), which real Nix
    // copies from, checking the NAR against its narinfo.
    let mut server = s
        .main()
        .args(["serve-cache", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(server.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().rsplit(' ').next().unwrap().to_owned()
    };
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let from_http = s.root.join("tmp/from-http");
    let copied = real("nix")
        .args(["copy", "--no-check-sigs", "--from", &url])
        .arg("--to")
        .arg(format!("file://{}", from_http.display()))
        .arg(&p)
        .output()
        .unwrap();
    // By its pid, whatever happened.
    let _ = server.kill();
    let _ = server.wait();
    ok(copied, "nix copy from serve-cache through the daemon");
    assert!(from_http.join(format!("{hash_part}.narinfo")).exists());

    // A build handed to the machine (BuildDerivation), as a master's remote builder sends
    // it: here by Ferrix's serve client, since a real Nix master would need a store of its
    // own at the same store directory.
    let drv = text(
        through_daemon("nix-instantiate")
            .args([
                "-E",
                "derivation { name = \"served-build\"; system = builtins.currentSystem; \
                 builder = \"/bin/sh\"; args = [ \"-c\" \"echo built-there > $out\" ]; }",
            ])
            .output()
            .unwrap(),
        "instantiating",
    );
    let sd = ferrix_format::StoreDir::new(s.root.join("store").to_str().unwrap()).unwrap();
    let drv_path = sd.parse_path(&drv).unwrap();
    let parsed = ferrix_format::Derivation::parse_aterm(&sd, &fs::read(&drv).unwrap()).unwrap();
    let mut session = Command::new(&wrapper);
    store_env(&mut session, &s.root);
    session
        .args(["--serve", "--write"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut client = ferrix_store::serve_client::ServeClient::over(
        machine.clone(),
        session.spawn().unwrap(),
        sd.clone(),
    )
    .unwrap();
    let r = client
        .build_derivation(&drv_path, &parsed, Default::default())
        .unwrap();
    assert!(r.status.is_success(), "{r:?}");
    let built = text(
        through_daemon("nix-store")
            .args(["-q", "--outputs", &drv])
            .output()
            .unwrap(),
        "the outputs",
    );
    assert_eq!(fs::read_to_string(built.trim()).unwrap(), "built-there\n");
    // The closure of the output, as the machine sees it (QueryClosure).
    let out_path = sd.parse_path(built.trim()).unwrap();
    let closure = client
        .query_closure(&[out_path.clone()].into(), false)
        .unwrap();
    assert_eq!(closure, [out_path].into());
}

#[test]
fn serving_a_daemon_s_store_through_a_ferrix_daemon() {
    let Some(nix) = Nix::new() else { return };
    let (_d, s) = Served::by_ferrix();
    serve_through(&s, &nix);
}

#[test]
fn serving_a_daemon_s_store_through_a_real_nix_daemon() {
    let Some(nix) = Nix::new() else { return };
    let (_daemon, s) = Served::by_real_nix(&nix);
    serve_through(&s, &nix);
}

/// `ferrix repl` with the daemon as its store: a derivation made in it is written there,
/// and `:b` builds it there.
fn repl_through(s: &Served) {
    let mut repl = s.main();
    repl.arg("repl").current_dir(s.root.join("tmp"));
    let out = piped(
        repl,
        b"1 + 1\nd = derivation { name = \"from-the-repl\"; system = builtins.currentSystem; \
          builder = \"/bin/sh\"; args = [ \"-c\" \"echo repl-built > $out\" ]; }\n:b d\n:q\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.get(1), Some(&"2"), "{stdout}{stderr}");
    assert_eq!(
        lines.get(2),
        Some(&"This derivation produced the following outputs:"),
        "{stdout}{stderr}"
    );
    let built = lines[3].trim().strip_prefix("out -> ").unwrap();
    ok(
        s.ferrix("nix-store")
            .args(["--check-validity", built])
            .output()
            .unwrap(),
        "the REPL's output is valid in the daemon's store",
    );
    assert_eq!(fs::read_to_string(built).unwrap(), "repl-built\n");
}
