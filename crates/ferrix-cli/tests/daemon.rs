//! `nix-daemon` on its socket, with real Nix 2.8 as the client (`--store unix://…`): adding,
//! instantiating and building through it, who is trusted and who may connect, and many
//! clients at once. Each daemon serves a temporary store and is stopped by its pid.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::daemon::{
    builder_pid, gone, nothing_half_done, ok, sleeper, Daemon, KillOnDrop, NixDaemon, CONF,
};
use common::{ferrix_exe, store_env, Links, Nix};

/// The path real Nix gives `src` added with `args` to a chroot store of its own whose
/// paths are in `store_dir`: what the daemon must answer.
fn expected_path(nix: &Nix, store_dir: &Path, args: &[&str], src: &Path) -> String {
    let other = tempfile::tempdir().unwrap();
    let mut c = nix.cmd("nix-store");
    c.env("NIX_STORE_DIR", store_dir)
        .arg("--store")
        .arg(format!("local?root={}", other.path().display()))
        .args(args)
        .arg(src);
    ok(c.output().unwrap(), "real Nix adding to its own store")
}

#[test]
fn real_nix_adds_instantiates_and_builds_through_a_ferrix_daemon() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let store_dir = d.root.path().join("store");
    let src = d.root.path().join("tmp/src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/a"), "a\n").unwrap();
    fs::write(src.join("f"), "hello\n").unwrap();
    let file = src.join("f");
    for (args, what) in [
        (vec!["--add"], &src),
        (vec!["--add-fixed", "sha1"], &file),
        (vec!["--add-fixed", "--recursive", "sha512"], &src),
        (vec!["--add-fixed", "--recursive", "sha256"], &src),
    ] {
        let got = ok(
            d.nix(&nix, "nix-store")
                .args(&args)
                .arg(what)
                .output()
                .unwrap(),
            "adding through the daemon",
        );
        assert_eq!(
            got,
            expected_path(&nix, &store_dir, &args, what),
            "{args:?}"
        );
        // The daemon's store has it, whole.
        ok(
            d.local("nix-store")
                .args(["--verify-path", &got])
                .output()
                .unwrap(),
            "verifying what the daemon added",
        );
    }

    let expr = d.root.path().join("tmp/d.nix");
    fs::write(
        &expr,
        r#"derivation { name = "hi"; system = builtins.currentSystem; builder = "/bin/sh";
             args = [ "-c" "read x < $src; echo $x > $out" ]; src = ./src/f; }"#,
    )
    .unwrap();
    let drv = ok(
        d.nix(&nix, "nix-instantiate").arg(&expr).output().unwrap(),
        "instantiating through the daemon",
    );
    // The same .drv as real Nix writes into a store of its own.
    let theirs = tempfile::tempdir().unwrap();
    let mut c = nix.cmd("nix-instantiate");
    c.env("NIX_STORE_DIR", &store_dir)
        .arg("--store")
        .arg(format!("local?root={}", theirs.path().display()))
        .arg(&expr);
    assert_eq!(drv, ok(c.output().unwrap(), "real Nix instantiating"));
    let out = ok(
        d.nix(&nix, "nix-store")
            .args(["-r", &drv])
            .output()
            .unwrap(),
        "building through the daemon",
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), "hello\n");
    assert_eq!(
        ok(
            d.nix(&nix, "nix-store")
                .args(["-q", "--deriver", &out])
                .output()
                .unwrap(),
            "asking the deriver"
        ),
        drv
    );
    let refs = ok(
        d.nix(&nix, "nix-store")
            .args(["-q", "--references", &drv])
            .output()
            .unwrap(),
        "asking the references",
    );
    assert!(refs.ends_with("-f"), "{refs}");
}

#[test]
fn fifty_clients_at_once_are_served_together() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let children: Vec<(PathBuf, Child)> = (0..50)
        .map(|i| {
            let f = d.root.path().join(format!("tmp/file{i}"));
            fs::write(&f, format!("contents {i}\n")).unwrap();
            let child = d
                .nix(&nix, "nix-store")
                .arg("--add")
                .arg(&f)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (f, child)
        })
        .collect();
    for (f, child) in children {
        let p = ok(child.wait_with_output().unwrap(), "adding at the same time");
        assert_eq!(fs::read(&p).unwrap(), fs::read(&f).unwrap());
    }
}

#[test]
fn untrusted_users_cannot_add_unsigned_input_addressed_paths() {
    let Some(nix) = Nix::new() else { return };
    // Root (who runs the tests) is not in trusted-users here.
    let mut d = Daemon::start("trusted-users = someone-else\n");
    let expr = d.root.path().join("tmp/d.nix");
    fs::write(
        &expr,
        r#"derivation { name = "ia"; system = builtins.currentSystem; builder = "/bin/sh";
             args = [ "-c" "echo ia > $out" ]; }"#,
    )
    .unwrap();
    // Built by the store's owner, exported, then deleted: an input-addressed path without a
    // signature.
    let drv = ok(
        d.local("nix-instantiate").arg(&expr).output().unwrap(),
        "instantiating locally",
    );
    let out = ok(
        d.local("nix-store").args(["-r", &drv]).output().unwrap(),
        "building locally",
    );
    let export = d.root.path().join("tmp/export");
    let mut c = d.local("nix-store");
    c.args(["--export", &out])
        .stdout(fs::File::create(&export).unwrap());
    ok(c.output().unwrap(), "exporting");
    ok(
        d.local("nix-store")
            .args(["--delete", &out])
            .output()
            .unwrap(),
        "deleting",
    );
    // Content-addressed paths are fine for anyone.
    d.add(
        &nix,
        "f",
        "x\n",
        "an untrusted user adding a content-addressed path",
    );
    let refused = d
        .nix(&nix, "nix-store")
        .arg("--import")
        .stdin(fs::File::open(&export).unwrap())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("lacks a signature by a trusted key") && err.contains(&out),
        "{err}"
    );
    let valid = d
        .local("nix-store")
        .args(["--check-validity", &out])
        .output()
        .unwrap();
    assert!(!valid.status.success(), "the refused path was registered");
    assert!(
        !Path::new(&out).exists(),
        "the refused path was left in the store"
    );
    assert!(d.alive());
}

#[test]
fn users_outside_allowed_users_are_turned_away_and_the_daemon_goes_on() {
    let Some(nix) = Nix::new() else { return };
    let mut d = Daemon::start("allowed-users = someone-else\ntrusted-users = someone-else\n");
    let f = d.root.path().join("tmp/f");
    fs::write(&f, "x\n").unwrap();
    let refused = d
        .nix(&nix, "nix-store")
        .arg("--add")
        .arg(&f)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    // The client says why.
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("user 'root' is not allowed to connect"),
        "{err}"
    );
    assert!(d.alive(), "a refused client stopped the daemon");
    let log = d.log();
    assert!(
        log.contains("user 'root' is not allowed to connect"),
        "{log}"
    );
    // Nothing was added.
    let entries: Vec<_> = fs::read_dir(d.root.path().join("store"))
        .map(|r| r.filter_map(Result::ok).collect())
        .unwrap_or_default();
    assert!(entries.is_empty(), "{entries:?}");
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    let d = Daemon::start("");
    let mut c = d.ferrix();
    let out = c.arg("daemon").output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a daemon already listens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::os::unix::net::UnixStream::connect(d.socket()).is_ok());
}

#[test]
fn a_stale_socket_is_replaced() {
    let root = tempfile::tempdir().unwrap();
    let sock = root.path().join("state/daemon-socket/socket");
    fs::create_dir_all(sock.parent().unwrap()).unwrap();
    // What a killed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    fs::create_dir_all(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/nix.conf"), CONF).unwrap();
    let mut c = Command::new(ferrix_exe());
    store_env(&mut c, root.path());
    let mut child = c
        .args(["daemon"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut up = false;
    while start.elapsed() < Duration::from_secs(20) {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(up, "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn garbage_is_collected_through_the_daemon() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    // Made by another process that has ended: no temporary root holds them.
    let add = |name: &str| {
        let f = d.root.path().join("tmp").join(name);
        fs::write(&f, format!("{name}\n")).unwrap();
        ok(
            d.local("nix-store").arg("--add").arg(&f).output().unwrap(),
            "adding locally",
        )
    };
    let (garbage, kept) = (add("garbage"), add("kept"));
    let root = d.root.path().join("state/gcroots/keep");
    fs::create_dir_all(root.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&kept, &root).unwrap();

    let roots = ok(
        d.nix(&nix, "nix-store")
            .args(["--gc", "--print-roots"])
            .output()
            .unwrap(),
        "listing roots through the daemon",
    );
    assert!(
        roots.contains(&format!("{} -> {kept}", root.display())),
        "{roots}"
    );
    let dead = ok(
        d.nix(&nix, "nix-store")
            .args(["--gc", "--print-dead"])
            .output()
            .unwrap(),
        "listing dead paths through the daemon",
    );
    assert!(dead.lines().any(|l| l == garbage), "{dead}");
    assert!(!dead.lines().any(|l| l == kept), "{dead}");
    // A live path is not deleted.
    let live = d
        .nix(&nix, "nix-store")
        .args(["--delete", &kept])
        .output()
        .unwrap();
    assert!(!live.status.success());
    assert!(Path::new(&kept).exists());
    let mut c = nix.cmd("nix-collect-garbage");
    store_env(&mut c, d.root.path());
    c.env("NIX_REMOTE", d.url());
    ok(
        c.output().unwrap(),
        "nix-collect-garbage through the daemon",
    );
    assert!(!Path::new(&garbage).exists(), "the garbage is still there");
    assert!(Path::new(&kept).exists(), "a rooted path was deleted");
}

#[test]
fn ferrix_says_what_a_daemon_is_and_whether_it_trusts_us() {
    for (conf, trusted) in [("", "1"), ("trusted-users = someone-else\n", "0")] {
        let d = Daemon::start(conf);
        let mut c = d.ferrix();
        let out = ok(
            c.args(["store", "ping", "--store", "daemon"])
                .output()
                .unwrap(),
            "ferrix store ping",
        );
        assert_eq!(
            out,
            format!("Store URL: daemon\nVersion: 2.8.0\nTrusted: {trusted}")
        );
    }
}

#[test]
fn ferrix_copies_to_and_from_a_real_nix_daemon() {
    let Some(nix) = Nix::new() else { return };
    let daemon = NixDaemon::start(&nix);
    let root = &daemon.root;
    let socket = daemon.socket();
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nix-daemon never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("unix://{}", socket.display());
    // Ferrix's own store: elsewhere on disk, its paths in the daemon's store directory.
    let mine = tempfile::tempdir().unwrap();
    let links = Links::new();
    let ferrix = |args: &[&str]| {
        // `nix-store …` runs under that name.
        let mut c = match args.split_first() {
            Some((&"nix-store", _)) => Command::new(links.dir.path().join("nix-store")),
            _ => Command::new(ferrix_exe()),
        };
        let args = if args[0] == "nix-store" {
            &args[1..]
        } else {
            args
        };
        store_env(&mut c, root.path());
        c.env(
            "NIX_REMOTE",
            format!("local?root={}", mine.path().display()),
        )
        .args(args);
        c
    };
    // Ready once it answers a whole handshake: a socket that accepts may still belong to a
    // daemon that is starting (its first connections are sometimes reset then).
    let start = Instant::now();
    let pinged = loop {
        let out = ferrix(&["store", "ping", "--store", &url])
            .output()
            .unwrap();
        if out.status.success() || start.elapsed() > Duration::from_secs(20) {
            break ok(out, "ferrix store ping of a real Nix daemon");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(pinged, format!("Store URL: {url}\nVersion: 2.8.0"));
    let f = root.path().join("tmp/f");
    fs::write(&f, "to the daemon\n").unwrap();
    let p = ok(
        ferrix(&["nix-store", "--add", f.to_str().unwrap()])
            .output()
            .unwrap(),
        "adding to ferrix's store",
    );
    ok(
        ferrix(&["copy", "--to", &url, &p]).output().unwrap(),
        "ferrix copy --to a real Nix daemon",
    );
    let theirs = |args: &[&str]| {
        let mut c = nix.cmd("nix-store");
        store_env(&mut c, root.path());
        c.arg("--store").arg(&url).args(args);
        ok(c.output().unwrap(), "asking the real Nix daemon")
    };
    let ours = ok(
        ferrix(&["nix-store", "-q", "--hash", &p]).output().unwrap(),
        "asking ferrix",
    );
    assert_eq!(theirs(&["-q", "--hash", &p]), ours);
    let g = root.path().join("tmp/g");
    fs::write(&g, "from the daemon\n").unwrap();
    let q = theirs(&["--add", g.to_str().unwrap()]);
    ok(
        ferrix(&["copy", "--from", &url, &q]).output().unwrap(),
        "ferrix copy --from a real Nix daemon",
    );
    assert_eq!(
        ok(
            ferrix(&["nix-store", "-q", "--hash", &q]).output().unwrap(),
            "asking ferrix"
        ),
        theirs(&["-q", "--hash", &q])
    );
}

#[test]
fn what_a_client_added_is_garbage_once_no_client_is_connected() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let p = d.add(&nix, "f", "short-lived\n", "adding through the daemon");
    // The client has gone: the daemon keeps nothing of its session alive.
    let dead = ok(
        d.nix(&nix, "nix-store")
            .args(["--gc", "--print-dead"])
            .output()
            .unwrap(),
        "listing dead paths through the daemon",
    );
    assert!(dead.lines().any(|l| l == p), "{dead}");
    let mut c = nix.cmd("nix-collect-garbage");
    store_env(&mut c, d.root.path());
    c.env("NIX_REMOTE", d.url());
    ok(
        c.output().unwrap(),
        "nix-collect-garbage through the daemon",
    );
    assert!(!Path::new(&p).exists());
}

#[test]
fn a_socket_handed_over_by_systemd_is_served() {
    let Some(nix) = Nix::new() else { return };
    let root = tempfile::tempdir().unwrap();
    for d in ["etc", "home", "tmp"] {
        fs::create_dir_all(root.path().join(d)).unwrap();
    }
    fs::write(root.path().join("etc/nix.conf"), CONF).unwrap();
    // Not where the daemon would make one: it must serve this one.
    let sock = root.path().join("tmp/activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    // As systemd does: the socket on descriptor 3, LISTEN_PID the daemon's own pid (the
    // shell's, which it becomes).
    let mut c = Command::new("/bin/sh");
    store_env(&mut c, root.path());
    c.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" daemon"])
        .arg(ferrix_exe())
        .stderr(std::process::Stdio::null());
    #[allow(unsafe_code)]
    // SAFETY: between fork and exec only dup2 and fcntl, which are async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
            // Already 3: only its close-on-exec flag must go (dup2 would keep it).
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c.spawn().unwrap();
    drop(listener);
    let _daemon = KillOnDrop(child);
    let mut add = nix.cmd("nix-store");
    store_env(&mut add, root.path());
    let f = root.path().join("tmp/f");
    fs::write(&f, "activated\n").unwrap();
    let p = ok(
        add.arg("--store")
            .arg(format!("unix://{}", sock.display()))
            .arg("--add")
            .arg(&f)
            .output()
            .unwrap(),
        "adding through the activated socket",
    );
    assert_eq!(fs::read_to_string(p).unwrap(), "activated\n");
    assert!(!root.path().join("state/daemon-socket/socket").exists());
}

#[test]
fn a_client_that_leaves_mid_build_stops_its_build_and_the_daemon_goes_on() {
    let Some(nix) = Nix::new() else { return };
    let mut d = Daemon::start("");
    let mark = d.root.path().join("tmp/pid");
    let drv = sleeper(&d, &nix, &mark);
    let mut client = d.build_in_background(&nix, &drv);
    let pid = builder_pid(&mark);
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(gone(pid), "the builder outlived its client");
    assert!(d.alive());
    nothing_half_done(&d, &drv);
    // The daemon serves the next client.
    d.add(&nix, "f", "next\n", "the next client");
}

#[test]
fn sigterm_stops_the_builds_cleanly_and_the_daemon_exits() {
    let Some(nix) = Nix::new() else { return };
    let mut d = Daemon::start("");
    let mark = d.root.path().join("tmp/pid");
    let drv = sleeper(&d, &nix, &mark);
    let client = d.build_in_background(&nix, &drv);
    let pid = builder_pid(&mark);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&d.child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let start = Instant::now();
    while d.alive() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon did not exit: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(pid), "the builder outlived the daemon");
    let out = client.wait_with_output().unwrap();
    assert!(!out.status.success(), "the client's build did not fail");
    assert!(!d.socket().exists(), "the socket was left");
    nothing_half_done(&d, &drv);
}

#[test]
fn a_hostile_client_loses_its_connection_and_nobody_else_notices() {
    use std::io::{Read, Write};
    let Some(nix) = Nix::new() else { return };
    let mut d = Daemon::start("");
    // One client holds a session open meanwhile.
    let mut held = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    held.write_all(&0x6e69_7863u64.to_le_bytes()).unwrap();
    let mut greeting = [0u8; 16];
    held.read_exact(&mut greeting).unwrap();
    for junk in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        // The right magic, then a version and a flood of nonsense.
        [
            0x6e69_7863u64.to_le_bytes(),
            0x122u64.to_le_bytes(),
            [0xff; 8],
        ]
        .concat(),
        Vec::new(),
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
        let _ = s.write_all(&junk);
        let _ = s.write_all(&[0xee; 4096]);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // The daemon ends the connection: reading reaches its end (or an error).
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut rest = Vec::new();
        let r = s.read_to_end(&mut rest);
        assert!(
            !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the connection was left open"
        );
    }
    assert!(d.alive());
    d.add(
        &nix,
        "f",
        "after the junk\n",
        "a client after the hostile ones",
    );
    drop(held);
}

#[test]
fn a_daemon_killed_mid_transfer_leaves_the_store_intact_and_the_client_an_error() {
    let Some(nix) = Nix::new() else { return };
    let mut d = Daemon::start("");
    // Big enough to be still arriving when the daemon dies.
    let big = d.root.path().join("tmp/big");
    fs::create_dir_all(&big).unwrap();
    let mut rng = common::Rng::new(7);
    for i in 0..40 {
        fs::write(big.join(format!("f{i}")), rng.bytes(2 << 20)).unwrap();
    }
    let client = d
        .nix(&nix, "nix-store")
        .arg("--add")
        .arg(&big)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    d.kill_and_restart();
    let start = Instant::now();
    let out = client.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(30), "the client hung");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        // It got there before the kill: then it is whole.
        ok(
            d.local("nix-store")
                .args(["--verify-path", &printed])
                .output()
                .unwrap(),
            "verifying the path that made it",
        );
    } else {
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
    ok(
        d.local("nix-store")
            .args(["--verify", "--check-contents"])
            .output()
            .unwrap(),
        "verifying the store after the kill",
    );
    // Nothing but valid paths (and the database's own files) in the store directory.
    for e in fs::read_dir(d.root.path().join("store")).unwrap() {
        let p = e.unwrap().path();
        let check = d
            .local("nix-store")
            .arg("--check-validity")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "'{}' is in the store but not valid",
            p.display()
        );
    }
    // And it serves again.
    d.add(
        &nix,
        "f",
        "after the restart\n",
        "a client after the restart",
    );
}

#[test]
fn path_info_through_the_daemon_is_what_the_store_says() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let expr = d.root.path().join("tmp/d.nix");
    fs::write(
        &expr,
        r#"let dep = builtins.toFile "dep" "x"; in derivation { name = "pi"; system = builtins.currentSystem;
             builder = "/bin/sh"; args = [ "-c" "echo ${dep} > $out" ]; }"#,
    )
    .unwrap();
    let drv = ok(
        d.nix(&nix, "nix-instantiate").arg(&expr).output().unwrap(),
        "instantiating through the daemon",
    );
    let out = ok(
        d.nix(&nix, "nix-store")
            .args(["-r", &drv])
            .output()
            .unwrap(),
        "building through the daemon",
    );
    let path_info = |through_daemon: bool| {
        let mut c = d.ferrix();
        c.args(["path-info", "--json", "-r", "-S", "--sigs", &out]);
        if through_daemon {
            c.args(["--store", "daemon"]);
        }
        ok(c.output().unwrap(), "ferrix path-info")
    };
    let (theirs, ours) = (path_info(true), path_info(false));
    assert!(theirs.contains(&out), "{theirs}");
    assert_eq!(theirs, ours);
    // What works on a local store only (as in Nix) says so.
    let refused = d
        .local("nix-store")
        .args(["--load-db", "--store", "daemon"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not through the daemon"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // The build log, through the daemon, is the store's.
    let log = |through_daemon: bool| {
        let mut c = d.ferrix();
        c.args(["log", &out]);
        if through_daemon {
            c.args(["--store", "daemon"]);
        }
        c.output().unwrap()
    };
    let (theirs, ours) = (log(true), log(false));
    assert!(theirs.status.success() && ours.status.success());
    assert_eq!(theirs.stdout, ours.stdout);
}
