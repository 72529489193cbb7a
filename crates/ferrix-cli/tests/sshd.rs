//! Remote builds through real ssh: an sshd of the test's own on a loopback port (keys,
//! config and host key made here, the daemon stopped by its pid), machines reached with
//! the system `ssh` through Ferrix's own master connection, the host key taken from the
//! machines file. Each machine's `nix-store` has a store of its own.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ok, Links, Nix};

const GRAPH: &str = r#"
{ n ? 6, sleep ? "0" }:
let mk = i: derivation {
  name = "s${toString i}"; system = builtins.currentSystem; builder = "/bin/sh";
  args = ["-c" "/bin/sleep ${sleep}; echo ${toString i} > $out"];
}; in derivation { name = "top"; system = builtins.currentSystem; builder = "/bin/sh";
  args = ["-c" "for d in $deps; do /bin/cat $d; done > $out"]; deps = builtins.genList mk n; }
"#;

/// An sshd on 127.0.0.1, ended (by pid) when dropped.
struct Sshd {
    child: Child,
    port: u16,
    host_key: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // The daemon and every process under it: each connection's sshd starts a session
        // of its own, out of the daemon's process group.
        kill_tree(self.child.id() as i32);
        let _ = self.child.wait();
    }
}

/// Kill `root` and all its descendants.
fn kill_tree(root: i32) {
    let mut parent = std::collections::HashMap::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: the command may hold spaces and parentheses.
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok())
        {
            parent.insert(pid, ppid);
        }
    }
    let under = |mut p: i32| {
        while p > 1 {
            if p == root {
                return true;
            }
            p = parent.get(&p).copied().unwrap_or(0);
        }
        false
    };
    for &pid in parent.keys() {
        if under(pid) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}

fn keygen(path: &Path) {
    ok(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ferrix-test", "-f"])
        .arg(path));
}

/// `None` when sshd is not installed and not required.
fn sshd(dir: &Path, client_pub: &Path) -> Option<Sshd> {
    if !Path::new("/usr/sbin/sshd").exists() {
        let required = std::env::var_os("FERRIX_REQUIRE_NIX").is_some()
            || std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !required,
            "sshd is required: apt-get install -y openssh-server"
        );
        // The skip must be visible in the test log.
        #[allow(clippy::print_stderr)]
        {
            eprintln!("SKIPPING ssh test: openssh-server is not installed");
        }
        return None;
    }
    // sshd insists on its privilege separation directory.
    let _ = fs::create_dir_all("/run/sshd");
    let host = dir.join("host_key");
    keygen(&host);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sshd_config");
    // `SetEnv SHLVL=1`: bash, started by sshd to run each session's command, then counts
    // itself a nested shell and does not read the user's ~/.bashrc, whatever that does (on
    // one machine, a `pyenv rehash` waiting a minute on a lock left by a killed session).
    fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\n\
             PidFile {dir}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSetEnv SHLVL=1\n",
            host = host.display(),
            keys = client_pub.display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pubkey = fs::read_to_string(host.with_extension("pub")).unwrap();
    let key: Vec<&str> = pubkey.split_whitespace().take(2).collect();
    Some(Sshd {
        child,
        port,
        host_key: key.join(" "),
    })
}

use std::os::unix::process::CommandExt;

struct Setup {
    nix: Nix,
    links: Links,
    dir: tempfile::TempDir,
    client_key: PathBuf,
}

impl Setup {
    fn new() -> Option<Self> {
        let nix = Nix::new()?;
        let paths: Vec<&str> = ["/bin", "/usr", "/lib", "/lib64"]
            .into_iter()
            .filter(|p| Path::new(p).exists())
            .collect();
        let conf = nix.root.path().join("etc/nix.conf");
        let text =
            fs::read_to_string(&conf).unwrap() + &format!("sandbox-paths = {}\n", paths.join(" "));
        fs::write(conf, text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("g.nix"), GRAPH).unwrap();
        let client_key = dir.path().join("id");
        keygen(&client_key);
        Some(Self {
            nix,
            links: Links::new(),
            dir,
            client_key,
        })
    }

    /// A machine behind `sshd`: its `nix-store` (sshd gives commands a clean environment,
    /// so a wrapper sets the store's directories) with a store of its own.
    fn machine(&self, name: &str, sshd: &Sshd) -> (String, String) {
        let wrapper = self.dir.path().join(format!("{name}-nix-store"));
        let r = self.nix.root.path();
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexport NIX_STORE_DIR={r}/store NIX_CONF_DIR={r}/etc NIX_STATE_DIR={r}/state NIX_LOG_DIR={r}/log\nexec {} \"$@\"\n",
                self.links.dir.path().join("nix-store").display(),
                r = r.display(),
            ),
        )
        .unwrap();
        ok(Command::new("chmod").arg("755").arg(&wrapper));
        use base64::Engine;
        let host_key = base64::engine::general_purpose::STANDARD.encode(&sshd.host_key);
        let uri = format!(
            "ssh://root@127.0.0.1?remote-program={}&remote-store={}",
            wrapper.display(),
            self.dir.path().join(name).display()
        );
        let line = format!("{uri} - {} 2 1 - - {host_key}", self.client_key.display());
        (uri, line)
    }

    fn instantiate(&self, args: &[&str]) -> String {
        let mut c = self.nix.cmd("nix-instantiate");
        c.arg(self.dir.path().join("g.nix"));
        for a in args.chunks(2) {
            c.args(["--arg", a[0], a[1]]);
        }
        String::from_utf8(ok(&mut c)).unwrap().trim().to_owned()
    }

    fn realise(&self, drv: &str, machines: &[String], port: u16) -> Command {
        let mut c = Command::new(self.links.dir.path().join("nix-store"));
        self.nix.isolate(&mut c);
        c.env(
            "NIX_SSHOPTS",
            format!("-p {port} -oStrictHostKeyChecking=yes"),
        )
        .args(["-r", drv, "-j0", "--option", "builders"])
        .arg(machines.join(";"));
        c
    }
}

#[test]
fn builds_go_over_real_ssh_with_the_host_key_from_the_machines_file() {
    let Some(s) = Setup::new() else { return };
    let Some(d) = sshd(s.dir.path(), &s.client_key.with_extension("pub")) else {
        return;
    };
    let drv = s.instantiate(&[]);
    let (uri, line) = s.machine("m", &d);
    let out = s.realise(&drv, &[line], d.port).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches(&format!("on '{uri}'")).count(), 7, "{err}");
    let top = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(fs::read_to_string(&top).unwrap(), "0\n1\n2\n3\n4\n5\n");
    ok(s.nix.cmd("nix-store").arg("--verify-path").arg(&top));
}

#[test]
fn a_wrong_host_key_is_refused() {
    let Some(s) = Setup::new() else { return };
    let Some(d) = sshd(s.dir.path(), &s.client_key.with_extension("pub")) else {
        return;
    };
    let drv = s.instantiate(&["n", "1"]);
    let (uri, line) = s.machine("m", &d);
    // Another key in the host-key column.
    let other = s.dir.path().join("other");
    keygen(&other);
    let other_pub = fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_key: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    use base64::Engine;
    let forged = base64::engine::general_purpose::STANDARD.encode(other_key.join(" "));
    let line = format!("{} {forged}", line.rsplit_once(' ').unwrap().0);
    let out = s.realise(&drv, &[line], d.port).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("cannot build on '{uri}'")), "{err}");
}

#[test]
fn a_machine_whose_sshd_dies_mid_run_loses_its_jobs_to_another() {
    let Some(s) = Setup::new() else { return };
    let pubkey = s.client_key.with_extension("pub");
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let Some(a) = sshd(a_dir.path(), &pubkey) else {
        return;
    };
    let Some(b) = sshd(b_dir.path(), &pubkey) else {
        return;
    };
    let drv = s.instantiate(&["n", "8", "sleep", "\"1\""]);
    let (a_uri, a_line) = s.machine("a", &a);
    let (b_uri, b_line) = s.machine("b", &b);
    // Both sshds on different ports: NIX_SSHOPTS can name one, so b's port goes in an
    // ssh config entry for a host alias.
    let cfg = s.dir.path().join("ssh_config");
    fs::write(
        &cfg,
        format!(
            "Host a-host\n  HostName 127.0.0.1\n  Port {}\nHost b-host\n  HostName 127.0.0.1\n  Port {}\n",
            a.port, b.port
        ),
    )
    .unwrap();
    let a_line = a_line.replace("root@127.0.0.1", "root@a-host");
    let b_line = b_line.replace("root@127.0.0.1", "root@b-host");
    let a_uri = a_uri.replace("root@127.0.0.1", "root@a-host");
    let b_uri = b_uri.replace("root@127.0.0.1", "root@b-host");
    let mut c = Command::new(s.links.dir.path().join("nix-store"));
    s.nix.isolate(&mut c);
    c.env("NIX_SSHOPTS", format!("-F {}", cfg.display()))
        .args(["-r", &drv, "-j0", "--option", "builders"])
        .arg(format!("{a_line};{b_line}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    // Once a build runs on a, a's sshd and everything it started die.
    let mut a = Some(a);
    for l in lines.by_ref() {
        let l = l.unwrap();
        seen += &l;
        seen.push('\n');
        if a.is_some() && l.contains(&format!("on '{a_uri}'")) {
            std::thread::sleep(Duration::from_millis(300));
            let d = a.take().unwrap();
            drop(d);
            kill_serving(&s.dir.path().join("a"));
        }
    }
    let status = child.wait().unwrap();
    assert!(a.is_none(), "nothing was built on a:\n{seen}");
    assert!(status.success(), "{seen}");
    assert!(seen.contains(&format!("on '{b_uri}'")), "{seen}");
    assert!(
        seen.contains("was lost") || seen.contains("cannot build on"),
        "{seen}"
    );
    drop(b);
}

/// Kill every process serving the store in `dir` (`nix-store --serve --write --store DIR`,
/// started by sshd; not the master, whose arguments name `dir` too).
fn kill_serving(dir: &Path) {
    let needle = format!("--store\0{}\0", dir.display());
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Whether this process may make mount namespaces (root); in CI it must.
fn can_mount() -> bool {
    let ok = rustix::process::geteuid().is_root()
        && Command::new("/usr/bin/unshare")
            .args(["-m", "/bin/true"])
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err_and(|_| std::env::var_os("FERRIX_REQUIRE_NIX").is_none()),
            "the mounted-machine tests need root (mount namespaces)"
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!("SKIPPING mounted-machine test: mount namespaces need root");
        }
    }
    ok
}

impl Setup {
    /// A machine behind `sshd` with a store of its own that it sees at the master's store
    /// path, as a real machine does: `program` (its `nix-store` or `nix-daemon`) runs in a
    /// mount namespace of its own, with the machine's store directory bind-mounted over the
    /// master's and state and log directories of its own. No sandbox and no chroot store:
    /// every input and output travels over ssh. `(uri, machines line)`.
    fn mounted(&self, name: &str, scheme: &str, program: &Path, sshd: &Sshd) -> (String, String) {
        let m = self.dir.path().join(name);
        fs::create_dir_all(m.join("store")).unwrap();
        let r = self.nix.root.path();
        let wrapper = self.dir.path().join(format!("{name}-wrapper"));
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexport NIX_STORE_DIR={r}/store NIX_CONF_DIR={r}/etc \
                 NIX_STATE_DIR={m}/state NIX_LOG_DIR={m}/log HOME={m}\n\
                 exec /usr/bin/unshare -m /bin/sh -c \
                 'mount --bind {m}/store {r}/store && exec \"$0\" \"$@\"' {p} \"$@\"\n",
                r = r.display(),
                m = m.display(),
                p = program.display(),
            ),
        )
        .unwrap();
        ok(Command::new("chmod").arg("755").arg(&wrapper));
        use base64::Engine;
        let host_key = base64::engine::general_purpose::STANDARD.encode(&sshd.host_key);
        let uri = format!(
            "{scheme}://root@127.0.0.1?remote-program={}",
            wrapper.display()
        );
        let line = format!("{uri} - {} 2 1 - - {host_key}", self.client_key.display());
        (uri, line)
    }

    /// The outputs in machine `name`'s own store.
    fn on_machine(&self, name: &str) -> Vec<String> {
        fs::read_dir(self.dir.path().join(name).join("store"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".drv") && !n.ends_with(".lock") && !n.starts_with('.'))
            .collect()
    }

    /// Every path of the master's store has the contents its database records, as real
    /// Nix sees it.
    fn verify_all(&self) {
        let out = self
            .nix
            .cmd("nix-store")
            .args(["--verify", "--check-contents"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("modified") && !err.contains("error"),
            "{err}"
        );
    }
}

#[test]
fn three_mounted_ferrix_machines_and_local_builds_share_sixty_derivations() {
    let Some(s) = Setup::new() else { return };
    if !can_mount() {
        return;
    }
    let Some(d) = sshd(s.dir.path(), &s.client_key.with_extension("pub")) else {
        return;
    };
    let drv = s.instantiate(&["n", "59", "sleep", "\"0.1\""]);
    let program = s.links.dir.path().join("nix-store");
    let machines: Vec<(String, String)> = ["a", "b", "c"]
        .iter()
        .map(|n| s.mounted(n, "ssh", &program, &d))
        .collect();
    let lines: Vec<String> = machines.iter().map(|(_, l)| l.clone()).collect();
    let mut c = Command::new(&program);
    s.nix.isolate(&mut c);
    let out = c
        .env(
            "NIX_SSHOPTS",
            format!("-p {} -oStrictHostKeyChecking=yes", d.port),
        )
        .args(["-r", &drv, "-j1", "--option", "builders"])
        .arg(lines.join(";"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let top = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_owned();
    let want: String = (0..59).map(|i| format!("{i}\n")).collect();
    assert_eq!(fs::read_to_string(&top).unwrap(), want);
    // 60 builds: some on each machine, in its own store, and some here.
    let started = err.matches("building '").count();
    assert_eq!(started, 60, "{err}");
    let mut remote = 0;
    for ((uri, _), name) in machines.iter().zip(["a", "b", "c"]) {
        let here = err.matches(&format!("' on '{uri}'")).count();
        assert!(here > 0, "nothing built on {name}:\n{err}");
        assert!(
            s.on_machine(name).len() >= here,
            "{name}: {:?}",
            s.on_machine(name)
        );
        remote += here;
    }
    assert!(remote < 60, "nothing was built locally:\n{err}");
    // The master's copies are whole, and a local build gives the same outputs.
    s.verify_all();
    let drvs = String::from_utf8(ok(Command::new(&program)
        .envs(isolated(&s.nix))
        .args(["-qR", &drv])))
    .unwrap();
    let drvs: Vec<&str> = drvs.lines().filter(|l| l.ends_with(".drv")).collect();
    assert_eq!(drvs.len(), 60);
    let mut c = Command::new(&program);
    s.nix.isolate(&mut c);
    let check = c
        .args(["-r", "--check", "-j2"])
        .args(&drvs)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// The environment `Nix::isolate` sets, for commands built elsewhere.
fn isolated(nix: &Nix) -> Vec<(String, PathBuf)> {
    let r = nix.root.path();
    [
        ("NIX_STORE_DIR", "store"),
        ("NIX_STATE_DIR", "state"),
        ("NIX_LOG_DIR", "log"),
        ("NIX_CONF_DIR", "etc"),
        ("HOME", "home"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), r.join(v)))
    .collect()
}

#[test]
fn a_ferrix_master_uses_mounted_real_nix_machines_over_ssh_and_ssh_ng() {
    let Some(s) = Setup::new() else { return };
    if !can_mount() {
        return;
    }
    let Some(d) = sshd(s.dir.path(), &s.client_key.with_extension("pub")) else {
        return;
    };
    let drv = s.instantiate(&["n", "6", "sleep", "\"0.3\""]);
    let (u1, l1) = s.mounted("n1", "ssh", Path::new("/usr/bin/nix-store"), &d);
    let (u2, l2) = s.mounted("n2", "ssh-ng", Path::new("/usr/bin/nix-daemon"), &d);
    let out = s.realise(&drv, &[l1, l2], d.port).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let top = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(fs::read_to_string(&top).unwrap(), "0\n1\n2\n3\n4\n5\n");
    for (uri, name) in [(&u1, "n1"), (&u2, "n2")] {
        let n = err.matches(&format!("' on '{uri}'")).count();
        assert!(n > 0, "nothing built on {uri}:\n{err}");
        assert!(s.on_machine(name).len() >= n, "{:?}", s.on_machine(name));
    }
    s.verify_all();
}

#[test]
fn a_real_nix_master_uses_mounted_ferrix_machines_over_ssh_and_ssh_ng() {
    let Some(s) = Setup::new() else { return };
    if !can_mount() {
        return;
    }
    let Some(d) = sshd(s.dir.path(), &s.client_key.with_extension("pub")) else {
        return;
    };
    for (scheme, program, sleep) in [("ssh", "nix-store", "0"), ("ssh-ng", "nix-daemon", "0.01")] {
        let drv = s.instantiate(&["n", "3", "sleep", &format!("\"{sleep}\"")]);
        let name = format!("f-{scheme}");
        let (uri, line) = s.mounted(&name, scheme, &s.links.dir.path().join(program), &d);
        // Real Nix writes the host key for the bare host name: the alias makes ssh look it
        // up by that name on another port.
        let out = s
            .nix
            .cmd("nix-store")
            .env(
                "NIX_SSHOPTS",
                format!(
                    "-p {} -oStrictHostKeyChecking=yes -oHostKeyAlias=127.0.0.1",
                    d.port
                ),
            )
            .args(["-r", &drv, "-j0", "--option", "builders", &line])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{scheme}: {err}");
        let top = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_eq!(fs::read_to_string(&top).unwrap(), "0\n1\n2\n", "{scheme}");
        // All four were built there, in the machine's own store.
        let built = s.on_machine(&name);
        assert_eq!(built.len(), 4, "{scheme}: {built:?}\n{err}");
        assert!(err.contains(&uri) || err.contains("127.0.0.1"), "{err}");
    }
    s.verify_all();
}
