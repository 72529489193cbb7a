//! Settings for every command: a bad value in `nix.conf`, `NIX_CONFIG` or on the command line
//! is an error naming where it was, before anything is done; an unknown setting is one
//! warning; `extra-NAME` appends. Each test has a private store and configuration directory
//! of its own, so that the bad files it writes reach no other test.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A private store, configuration directory, home and user configuration file.
struct Env {
    links: Links,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["etc", "home", "tmp"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let env = Self {
            links: Links::new(),
            dir,
        };
        env.conf("sandbox = false\n");
        env
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn conf_file(&self) -> PathBuf {
        self.root().join("etc/nix.conf")
    }

    fn conf(&self, text: &str) {
        fs::write(self.conf_file(), text).unwrap();
    }

    /// `name` is `ferrix` or one of its classic names.
    fn cmd(&self, name: &str) -> Command {
        let mut c = if name == "ferrix" {
            Command::new(ferrix_exe())
        } else {
            self.links.cmd(name)
        };
        store_env(&mut c, self.root());
        c.env("NIX_USER_CONF_FILES", self.root().join("user.conf"))
            .env_remove("NIX_CONFIG")
            .env_remove("XDG_CONFIG_HOME");
        c
    }

    /// A valid path of this store.
    fn add_path(&self) -> String {
        let file = self.root().join("tmp/hello");
        fs::write(&file, "hello\n").unwrap();
        let out = ok(self.cmd("nix-store").arg("--add").arg(&file));
        String::from_utf8(out).unwrap().trim().to_owned()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The commands that read settings, each with arguments that would succeed (or at least do
/// something) with a sound configuration.
fn commands(env: &Env, path: &str) -> Vec<(&'static str, Vec<String>)> {
    let file = env.root().join("tmp/hello").to_str().unwrap().to_owned();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    vec![
        ("nix-store", s(&["-q", "--references", path])),
        ("nix-store", s(&["-r", path])),
        ("nix-store", s(&["--dump", &file])),
        ("nix-store", s(&["--verify"])),
        ("nix-collect-garbage", s(&["--dry-run"])),
        ("nix-hash", s(&["--type", "sha256", &file])),
        ("ferrix", s(&["path-info", path])),
        ("ferrix", s(&["store", "verify", "--all"])),
        ("ferrix", s(&["log", path])),
        ("ferrix", s(&["hash", "file", &file])),
        ("ferrix", s(&["build", path])),
    ]
}

fn assert_refused(env: &Env, path: &str, expected: &str) {
    for (name, args) in commands(env, path) {
        let out = run(env.cmd(name).args(&args));
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name} {args:?}: {}",
            stderr(&out)
        );
        assert_eq!(
            stderr(&out),
            format!("error: {expected}\n"),
            "{name} {args:?}"
        );
        assert!(out.stdout.is_empty(), "{name} {args:?} did something");
    }
}

#[test]
fn bad_values_in_nix_conf_are_errors_naming_file_and_line_for_every_command() {
    let env = Env::new();
    let conf = env.conf_file();
    // A sound configuration first: every command runs (there is no log to show, and the
    // path is no derivation to build).
    let path = env.add_path();
    for (name, args) in commands(&env, &path) {
        let out = run(env.cmd(name).args(&args));
        assert!(
            out.status.success() || args[0] == "log" || args[0] == "build",
            "{name} {args:?}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("setting"), "{}", stderr(&out));
    }

    env.conf("sandbox = false\nmax-jobs = -3\n");
    assert_refused(
        &env,
        &path,
        &format!(
            "{}:2: configuration setting 'max-jobs' should be 'auto' or an integer, not '-3'",
            conf.display()
        ),
    );
    env.conf("# cores\n\ncores = abc\n");
    assert_refused(
        &env,
        &path,
        &format!(
            "{}:3: setting 'cores' has invalid value 'abc' (expected an integer from 0 to 4294967295)",
            conf.display()
        ),
    );
    // Settings Ferrix does not use are checked by their type too, and the user's file.
    env.conf("");
    let user = env.root().join("user.conf");
    fs::write(&user, "http2 = maybe\n").unwrap();
    assert_refused(
        &env,
        &path,
        &format!(
            "{}:1: Boolean setting 'http2' has invalid value 'maybe' (expected 'true' or 'false')",
            user.display()
        ),
    );
}

#[test]
fn nix_config_is_read_and_named_in_errors() {
    let env = Env::new();
    let path = env.add_path();
    let out = run(env
        .cmd("nix-store")
        .env("NIX_CONFIG", "keep-going = true\nmax-jobs = lots")
        .args(["-q", "--references", &path]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: NIX_CONFIG:2: configuration setting 'max-jobs' should be 'auto' or an integer, not 'lots'\n"
    );
    // NIX_CONFIG comes after the files: its sound value wins over a file's.
    env.conf("sandbox = false\nfoo = 1\n");
    let out = run(env
        .cmd("ferrix")
        .env("NIX_CONFIG", "foo = 2\nbar = 3")
        .args(["path-info", &path]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "warning: unknown setting 'bar'\nwarning: unknown setting 'foo'\n"
    );
}

#[test]
fn an_unknown_setting_is_one_warning_and_the_command_succeeds() {
    let env = Env::new();
    let path = env.add_path();
    env.conf("sandbox = false\nfoo = 1\nfoo = 2\n# every setting of Nix 2.8 is known:\nbuild-users-group = nixbld\ntrusted-users = root\nextra-substituters = https://example.org\nbuild-max-jobs = 2\nwarn-dirty = false\n");
    for (name, args) in [
        ("nix-store", vec!["-q", "--references", &path]),
        ("ferrix", vec!["path-info", &path]),
        ("nix-collect-garbage", vec!["--dry-run"]),
    ] {
        let out = run(env.cmd(name).args(&args).args(["--option", "foo", "3"]));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(
            stderr(&out)
                .matches("warning: unknown setting 'foo'\n")
                .count(),
            1,
            "{name}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("extra-"), "{}", stderr(&out));
    }
    let out = run(env.cmd("nix-store").args(["-q", "--references", &path]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "a path with no references"
    );
    assert_eq!(stderr(&out), "warning: unknown setting 'foo'\n");
    // `extra-` of a setting that is not a list is unknown, as in Nix.
    env.conf("sandbox = false\nextra-cores = 2\n");
    let out = run(env.cmd("ferrix").args(["path-info", &path]));
    assert!(out.status.success());
    assert_eq!(stderr(&out), "warning: unknown setting 'extra-cores'\n");
}

#[test]
fn bad_command_line_values_name_the_option() {
    let env = Env::new();
    let path = env.add_path();
    let msg = "configuration setting 'max-jobs' should be 'auto' or an integer, not '-3'";
    for (name, args) in [
        (
            "nix-store",
            vec!["--option", "max-jobs", "-3", "-q", "--hash", &path],
        ),
        (
            "nix-store",
            vec!["-q", "--hash", &path, "--option", "max-jobs", "-3"],
        ),
        (
            "nix-collect-garbage",
            vec!["--dry-run", "--option", "max-jobs", "-3"],
        ),
        ("nix-hash", vec!["--option", "max-jobs", "-3", &path]),
        (
            "ferrix",
            vec!["--option", "max-jobs", "-3", "path-info", &path],
        ),
        (
            "ferrix",
            vec!["path-info", &path, "--option", "max-jobs", "-3"],
        ),
    ] {
        let out = run(env.cmd(name).args(&args));
        assert_eq!(out.status.code(), Some(1), "{name} {args:?}");
        assert_eq!(
            stderr(&out),
            format!("error: --option max-jobs: {msg}\n"),
            "{name} {args:?}"
        );
        assert!(out.stdout.is_empty());
    }
    // Build flags stand for settings, and are named as given.
    let out = run(env.cmd("nix-store").args(["-r", "-j", "-3", &path]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), format!("error: -j: {msg}\n"));
    let out = run(env
        .cmd("nix-store")
        .args(["-r", "--timeout", "soon", &path]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: --timeout: setting 'timeout' has invalid value 'soon' (expected an integer)\n"
    );
    let out = run(env.cmd("ferrix").args(["build", "--cores", "abc", &path]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: --cores: setting 'cores' has invalid value 'abc' (expected an integer from 0 to 4294967295)\n"
    );
    // A bad value in the file is refused even when the command line sets a sound one, as
    // in Nix.
    env.conf("max-jobs = x\n");
    let out = run(env
        .cmd("nix-store")
        .args(["--option", "max-jobs", "1", "-q", "--hash", &path]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nix.conf:1: configuration setting 'max-jobs'"));
}

/// `extra-sandbox-paths` in the file and `--option extra-sandbox-paths` both append to
/// `sandbox-paths`: the builder needs the file's `/bin` for its shell, the `extra-` line's
/// `/lib` for the shell's libraries, and the option's directory for the test.
#[test]
fn extra_settings_append_from_files_and_options() {
    let env = Env::new();
    let root = env.root();
    let probe = root.join("probe");
    fs::create_dir_all(&probe).unwrap();
    fs::write(probe.join("token"), "appended\n").unwrap();
    env.conf("sandbox = true\nsandbox-fallback = false\nsandbox-paths = /bin /usr\nextra-sandbox-paths = /lib\nextra-sandbox-paths = /lib64?\n");
    let script = "set -e; read t < /probe/token; /bin/mkdir $out; echo $t > $out/token";
    let json = format!(
        r#"{{"name":"extra","outputs":{{"out":{{}}}},"inputSrcs":[],"inputDrvs":{{}},
           "system":"x86_64-linux","builder":"/bin/sh","args":["-c",{}],
           "env":{{"name":"extra","builder":"/bin/sh","system":"x86_64-linux","out":""}}}}"#,
        serde_json::to_string(script).unwrap(),
    );
    let drv = add_drv(root, &json);
    // Without the option the probe is not there: the build fails.
    let out = run(env.cmd("nix-store").args(["-r", &drv]));
    assert!(!out.status.success(), "{}", stderr(&out));
    let option = format!("/probe={}", probe.display());
    let out =
        ok(env
            .cmd("nix-store")
            .args(["-r", &drv, "--option", "extra-sandbox-paths", &option]));
    let built = String::from_utf8(out).unwrap().trim().to_owned();
    let real = root
        .join("store")
        .join(Path::new(&built).file_name().unwrap());
    assert_eq!(
        fs::read_to_string(real.join("token")).unwrap(),
        "appended\n"
    );
}

/// Real Nix 2.8 and Ferrix refuse and accept the same values (`nix-hash` reads the settings
/// in both).
#[test]
fn nix_and_ferrix_agree_on_which_values_are_bad() {
    let Some(nix) = Nix::new() else { return };
    let env = Env::new();
    let file = env.root().join("tmp/hello");
    fs::write(&file, "x").unwrap();
    let lines = [
        "max-jobs = -3",
        "max-jobs = auto",
        "max-jobs = 0",
        "max-jobs = 4294967296",
        "max-jobs = AUTO",
        "cores = abc",
        "cores = +4",
        "cores = 3 4",
        "build-cores = x",
        "keep-outputs = yes",
        "keep-outputs = 1",
        "keep-outputs = maybe",
        "sandbox = relaxed",
        "sandbox = 1",
        "max-silent-time = -1",
        "timeout = 1.5",
        "gc-reserved-space = -5",
        "min-free = -1",
        "max-free = 18446744073709551615",
        "narinfo-cache-negative-ttl = 4294967296",
        "diff-hook = relative",
        "diff-hook =",
        "build-hook = /x",
        "extra-sandbox-paths = /x",
        "extra-cores = 2",
        "substituters =",
        "system-features = kvm",
        "sandbox-dev-shm-size = lots",
        "store = local",
    ];
    for line in lines {
        fs::write(nix.root.path().join("etc/nix.conf"), format!("{line}\n")).unwrap();
        let theirs = run(nix
            .cmd("nix-hash")
            .env_remove("NIX_CONFIG")
            .env("NIX_USER_CONF_FILES", env.root().join("user.conf"))
            .arg(&file));
        env.conf(&format!("{line}\n"));
        let ours = run(env.cmd("nix-hash").arg(&file));
        assert_eq!(
            ours.status.code(),
            theirs.status.code(),
            "'{line}': Nix said {:?}, Ferrix {:?}",
            stderr(&theirs),
            stderr(&ours)
        );
        // Both warn of the same unknown settings.
        let warnings = |o: &Output| -> Vec<String> {
            stderr(o)
                .lines()
                .filter(|l| l.starts_with("warning: unknown setting"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(warnings(&ours), warnings(&theirs), "'{line}'");
    }
}
