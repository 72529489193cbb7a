//! A Ferrix daemon on a temporary store for the daemon tests, and what they share.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::{ferrix_exe, store_env, Links, Nix};

pub const CONF: &str = "sandbox = false\nbuild-users-group =\nsubstituters =\n";

/// A Ferrix daemon on a store of its own under `root`, listening on the default socket.
pub struct Daemon {
    pub root: tempfile::TempDir,
    pub child: Child,
    pub links: Links,
}

impl Daemon {
    pub fn start(extra_conf: &str) -> Daemon {
        let root = tempfile::tempdir().unwrap();
        for d in ["etc", "home", "tmp"] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        fs::write(
            root.path().join("etc/nix.conf"),
            format!("{CONF}{extra_conf}"),
        )
        .unwrap();
        let links = Links::new();
        let child = Self::spawn(&links, root.path());
        let d = Daemon { root, child, links };
        d.wait_for_socket();
        d
    }

    pub fn spawn(links: &Links, root: &Path) -> Child {
        let mut c = Command::new(links.dir.path().join("nix-daemon"));
        store_env(&mut c, root);
        c.stdout(std::process::Stdio::null())
            .stderr(fs::File::create(root.join("daemon.log")).unwrap())
            .spawn()
            .unwrap()
    }

    /// Kill the daemon (SIGKILL, by its pid) and start it again on the same store.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(&self.links, self.root.path());
        self.wait_for_socket();
    }

    pub fn socket(&self) -> PathBuf {
        self.root.path().join("state/daemon-socket/socket")
    }

    pub fn wait_for_socket(&self) {
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the daemon never listened: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.root.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// A real Nix command talking to this daemon.
    pub fn nix(&self, nix: &Nix, prog: &str) -> Command {
        let mut c = nix.cmd(prog);
        store_env(&mut c, self.root.path());
        c.arg("--store").arg(self.url());
        c
    }

    /// A Ferrix command on the daemon's store directly (as its owner).
    pub fn local(&self, prog: &str) -> Command {
        let mut c = Command::new(self.links.dir.path().join(prog));
        store_env(&mut c, self.root.path());
        c
    }

    /// Write `contents` to `tmp/<name>` and add it through the daemon with real Nix; its path.
    pub fn add(&self, nix: &Nix, name: &str, contents: &str, what: &str) -> String {
        let f = self.root.path().join("tmp").join(name);
        fs::write(&f, contents).unwrap();
        ok(
            self.nix(nix, "nix-store")
                .arg("--add")
                .arg(&f)
                .output()
                .unwrap(),
            what,
        )
    }

    /// `ferrix` itself, with the daemon's store and settings.
    pub fn ferrix(&self) -> Command {
        let mut c = Command::new(ferrix_exe());
        store_env(&mut c, self.root.path());
        c
    }

    /// Real Nix building `drv` through the daemon, in the background.
    pub fn build_in_background(&self, nix: &Nix, drv: &str) -> Child {
        self.nix(nix, "nix-store")
            .args(["-r", drv])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // By its pid, never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A derivation whose builder writes its pid to `mark` and sleeps for a minute.
pub fn sleeper(d: &Daemon, nix: &Nix, mark: &Path) -> String {
    let expr = d.root.path().join("tmp/sleep.nix");
    fs::write(
        &expr,
        format!(
            r#"derivation {{ name = "sleeper"; system = builtins.currentSystem; builder = "/bin/sh";
                 args = [ "-c" "echo $$ > {}; exec /bin/sleep 60" ]; }}"#,
            mark.display()
        ),
    )
    .unwrap();
    ok(
        d.nix(nix, "nix-instantiate").arg(&expr).output().unwrap(),
        "instantiating through the daemon",
    )
}

/// The pid a sleeper wrote, once it has.
pub fn builder_pid(mark: &Path) -> i32 {
    let start = Instant::now();
    loop {
        if let Ok(s) = fs::read_to_string(mark) {
            if let Ok(pid) = s.trim().parse() {
                return pid;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the build never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn gone(pid: i32) -> bool {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        if start.elapsed() > Duration::from_secs(20) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// No lock files, build directories or output of `drv` left behind, and the store sound.
/// A cancelled build's clean-up may still be finishing once its builder is gone (an
/// abandoned goal is answered at once): its locks are given a few seconds to go.
pub fn nothing_half_done(d: &Daemon, drv: &str) {
    let locks = || -> Vec<PathBuf> {
        fs::read_dir(d.root.path().join("store"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
            .map(|e| e.path())
            .collect()
    };
    let start = Instant::now();
    while !locks().is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = locks();
    assert!(left.is_empty(), "{left:?}");
    let out = ok(
        d.local("nix-store")
            .args(["-q", "--outputs", drv])
            .output()
            .unwrap(),
        "asking the outputs",
    );
    assert!(!Path::new(&out).exists(), "a half-built output is left");
    ok(
        d.local("nix-store")
            .args(["--verify", "--check-contents"])
            .output()
            .unwrap(),
        "verifying the store",
    );
}

/// A process stopped by its pid when this is dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Real Nix 2.8's daemon on a store of its own (the test's settings), stopped by its pid.
pub struct NixDaemon {
    pub root: tempfile::TempDir,
    _child: KillOnDrop,
}

impl NixDaemon {
    /// Started; its socket may not answer yet.
    pub fn start(nix: &Nix) -> NixDaemon {
        let root = tempfile::tempdir().unwrap();
        for d in ["etc", "home", "tmp"] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        fs::write(root.path().join("etc/nix.conf"), CONF).unwrap();
        let mut c = nix.cmd("nix-daemon");
        store_env(&mut c, root.path());
        let child = c
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        NixDaemon {
            root,
            _child: KillOnDrop(child),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.root.path().join("state/daemon-socket/socket")
    }
}
