//! Shared by the CLI tests: running ferrix under its names, isolated real Nix, random trees.

#![allow(dead_code, clippy::print_stderr)]

pub mod daemon;
pub mod http;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn ferrix_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrix"))
}

pub fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors")
}

/// A directory with ferrix linked under every personality name.
pub struct Links {
    pub dir: tempfile::TempDir,
}

impl Links {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(ferrix_exe())
            .arg("install-links")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        Self { dir }
    }
    pub fn cmd(&self, name: &str) -> Command {
        let mut c = Command::new(self.dir.path().join(name));
        sandboxed(&mut c);
        c
    }
}

/// One private chroot store for this test process: no test ever touches the machine's /nix.
/// It is in cargo's temporary directory for tests, named by the process id. A static is
/// never dropped (a `TempDir` here left one directory behind per test binary and run), so
/// the stores of processes that are gone are removed when the next one starts.
fn sandbox_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandboxes");
        fs::create_dir_all(&base).unwrap();
        for e in fs::read_dir(&base).unwrap().flatten() {
            let alive = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(ferrix_store::fsutil::pid_alive);
            if !alive {
                let _ = ferrix_store::fsutil::delete_path(&e.path());
            }
        }
        let d = base.join(std::process::id().to_string());
        let _ = ferrix_store::fsutil::delete_path(&d);
        for sub in ["etc", "home"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        // Its store is at /nix/store, for which cache.nixos.org is the default substituter:
        // tests reach no other address.
        fs::write(d.join("etc/nix.conf"), "substituters =\n").unwrap();
        d
    })
}

/// Point a ferrix command at the private store (logical `/nix/store`, files in a temp dir).
pub fn sandboxed(c: &mut Command) {
    let root = sandbox_root();
    c.env("NIX_REMOTE", format!("local?root={}", root.display()))
        .env("NIX_CONF_DIR", root.join("etc"))
        .env("HOME", root.join("home"))
        .env_remove("NIX_STORE_DIR")
        .env_remove("NIX_STATE_DIR")
        .env_remove("NIX_LOG_DIR");
}

pub fn ferrix() -> Command {
    let mut c = Command::new(ferrix_exe());
    sandboxed(&mut c);
    c
}

/// Run and demand success; stdout bytes.
pub fn ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Run with `input` on stdin; the whole output.
pub fn piped(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// Real Nix 2.8, isolated in a temporary store, state, log and config directory.
pub struct Nix {
    pub root: tempfile::TempDir,
}

impl Nix {
    /// `None` when Nix is not installed and not required; with `FERRIX_REQUIRE_NIX` or `CI`
    /// set, a missing Nix is a failure, never a skip.
    pub fn new() -> Option<Self> {
        let root = tempfile::tempdir().unwrap();
        let probe = Self { root };
        let present = probe.cmd("nix-store").arg("--version").output().is_ok();
        if !present {
            let required = std::env::var_os("FERRIX_REQUIRE_NIX").is_some()
                || std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(
                !required,
                "real Nix is required for the interop tests: apt-get install -y nix-bin"
            );
            // The skip must be visible in the test log.
            eprintln!("SKIPPING interop test: real Nix (nix-bin) is not installed");
            return None;
        }
        let root = probe.root;
        for d in ["store", "state", "log", "etc", "home"] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        fs::write(
            root.path().join("etc/nix.conf"),
            "sandbox = false\nbuild-users-group =\nsubstituters =\nexperimental-features = nix-command\n",
        )
        .unwrap();
        Some(Self { root })
    }

    pub fn store_dir(&self) -> String {
        self.root.path().join("store").to_str().unwrap().to_owned()
    }

    /// A real Nix command (by absolute path, so ferrix's links never stand in).
    pub fn cmd(&self, prog: &str) -> Command {
        let exe = [
            "/usr/bin",
            "/usr/local/bin",
            "/nix/var/nix/profiles/default/bin",
        ]
        .iter()
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(prog));
        let mut c = Command::new(exe);
        self.isolate(&mut c);
        c
    }

    /// Point any command at this isolated store.
    pub fn isolate(&self, c: &mut Command) {
        let r = self.root.path();
        c.env("NIX_STORE_DIR", r.join("store"))
            .env("NIX_STATE_DIR", r.join("state"))
            .env("NIX_LOG_DIR", r.join("log"))
            .env("NIX_CONF_DIR", r.join("etc"))
            .env("HOME", r.join("home"))
            .env_remove("NIX_PATH")
            .env_remove("NIX_REMOTE")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CACHE_HOME");
    }

    /// The home of the isolated commands (`~/.cache/nix` holds the narinfo disk cache).
    pub fn home(&self) -> std::path::PathBuf {
        self.root.path().join("home")
    }
}

/// A small deterministic PRNG (xorshift64*), enough for generating test trees.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Names that exercise byte order: mixed case, dots, dashes, UTF-8, a space, a non-UTF-8 byte.
const NAME_PARTS: &[&[u8]] = &[
    b"a",
    b"B",
    b"z",
    b"_",
    b"-x",
    b".dot",
    b"10",
    b"9",
    b"\xc3\xa9",
    b" sp",
    b"\xff",
    b"long-name-part",
];

fn name(rng: &mut Rng) -> Vec<u8> {
    let mut n = Vec::new();
    for _ in 0..=rng.below(3) {
        n.extend_from_slice(NAME_PARTS[rng.below(NAME_PARTS.len() as u64) as usize]);
    }
    n
}

/// Fill `dir` (which exists) with a random tree: files of varied sizes, executables, symlinks
/// (relative, absolute, dangling), nested and empty directories.
pub fn random_tree(rng: &mut Rng, dir: &Path, depth: u32) {
    let n = rng.below(6) + 1;
    for _ in 0..n {
        let p = dir.join(OsStr::from_bytes(&name(rng)));
        if p.symlink_metadata().is_ok() {
            continue;
        }
        match rng.below(10) {
            0..=4 => {
                let size = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(16) as usize,
                    2 => rng.below(5000) as usize,
                    _ => rng.below(200_000) as usize,
                };
                fs::write(&p, rng.bytes(size)).unwrap();
                let mode = if rng.below(3) == 0 { 0o755 } else { 0o644 };
                fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            }
            5 | 6 => {
                let target: &[u8] = match rng.below(3) {
                    0 => b"../somewhere/else",
                    1 => b"/absolute/target",
                    _ => b"dangling",
                };
                std::os::unix::fs::symlink(OsStr::from_bytes(target), &p).unwrap();
            }
            _ => {
                fs::create_dir(&p).unwrap();
                if depth < 4 {
                    random_tree(rng, &p, depth + 1);
                }
            }
        }
    }
}

/// Point a command at a private store under `root` whose files are where its paths say.
pub fn store_env(c: &mut Command, root: &Path) {
    c.env("NIX_STORE_DIR", root.join("store"))
        .env("NIX_STATE_DIR", root.join("state"))
        .env("NIX_LOG_DIR", root.join("log"))
        .env("NIX_CONF_DIR", root.join("etc"))
        .env("HOME", root.join("home"))
        .env("TMPDIR", root.join("tmp"))
        .env_remove("NIX_REMOTE");
}

/// Add a derivation through `ferrix derivation add`.
pub fn add_drv(root: &Path, json: &str) -> String {
    let mut c = Command::new(ferrix_exe());
    store_env(&mut c, root);
    let mut child = c
        .args(["derivation", "add"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
