//! A Ferrix master with several Ferrix machines (`ssh://localhost`, run here without ssh,
//! each with a chroot store of its own, so everything travels over the serve protocol):
//! spreading, agreement with a local build, and faults (an unreachable machine, a machine
//! that dies mid-build, a failing remote build, a remote log nobody shows, an interrupt).
//! Derivations come from real Nix's `nix-instantiate`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{ok, Links, Nix};

/// `n` derivations in layers of `width`, each on the one before it, and a `top` over all.
const GRAPH: &str = r#"
{ n ? 60, width ? 10, sleep ? "0", fail ? -1, noise ? 0 }:
let
  mk = i: deps: derivation {
    name = "n${toString i}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = ["-c" ''
      /bin/sleep ${sleep}
      i=0; while [ $i -lt ${toString noise} ]; do echo "noise line $i of a chatty builder"; i=$((i+1)); done
      if [ ${toString i} = ${toString fail} ]; then echo "n${toString i} gives up"; exit 3; fi
      echo ${toString i} > $out; for d in $deps; do /bin/cat $d >> $out; done
    ''];
    inherit deps;
  };
  layer = l: builtins.genList (j: mk (l * width + j) (if l == 0 then [] else [ (builtins.elemAt (layer (l - 1)) j) ])) width;
  all = builtins.concatLists (builtins.genList layer (n / width));
in derivation { name = "top"; system = builtins.currentSystem; builder = "/bin/sh";
  args = ["-c" "for d in $deps; do /bin/cat $d; done > $out"]; deps = all; }
"#;

struct Setup {
    nix: Nix,
    links: Links,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Option<Self> {
        let nix = Nix::new()?;
        // Machines' chroot stores build in the sandbox, which needs the host's shell.
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
        Some(Self {
            nix,
            links: Links::new(),
            dir,
        })
    }

    /// `args`: names and Nix values of the graph's arguments.
    fn instantiate(&self, args: &[&str]) -> String {
        let mut c = self.nix.cmd("nix-instantiate");
        c.arg(self.dir.path().join("g.nix"));
        for a in args.chunks(2) {
            c.args(["--arg", a[0], a[1]]);
        }
        String::from_utf8(ok(&mut c)).unwrap().trim().to_owned()
    }

    /// A machine running `program` as its `nix-store`, with a store of its own.
    fn machine(&self, name: &str, program: &Path, jobs: u32) -> (String, String) {
        let uri = format!(
            "ssh://localhost?remote-program={}&remote-store={}",
            program.display(),
            self.dir.path().join(name).display()
        );
        (uri.clone(), format!("{uri} - - {jobs} 1"))
    }

    fn ferrix_store(&self) -> PathBuf {
        self.links.dir.path().join("nix-store")
    }

    fn realise(&self, drv: &str, jobs: &str, machines: &[String]) -> Command {
        let mut c = Command::new(self.ferrix_store());
        self.nix.isolate(&mut c);
        c.args(["-r", drv, "-j", jobs, "--option", "builders"])
            .arg(machines.join(";"));
        c
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The 60-derivation graph built with `-j2` and `--option NAME VALUE` on top: every one of
/// `machines` built some (by the name it goes by in `building '…' on '…'`), and so did this
/// machine, and the result has the contents of real Nix's own build.
fn sixty_over(s: &Setup, option: (&str, &str), machines: &[String]) {
    let drv = s.instantiate(&["sleep", "\"0.05\""]);
    let mut c = Command::new(s.ferrix_store());
    s.nix.isolate(&mut c);
    // The master's build directories and its machines' (which inherit it) go here.
    let tmp = s.dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    c.env("FERRIX_HOOK_NIX_STORE", s.ferrix_store())
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c
        .args(["-r", &drv, "-j", "2", "--option", option.0, option.1])
        .spawn()
        .unwrap();
    let in_tmp = || fs::read_dir(&tmp).unwrap().count();
    let watcher = {
        let tmp = tmp.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            while tmp.exists() && seen == 0 {
                seen = fs::read_dir(&tmp).map_or(0, |d| d.count());
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // Builds ran there, and no directory outlived them: not the master's, nor those of the
    // machines' sessions, which their master ends by killing them.
    assert_eq!(
        in_tmp(),
        0,
        "{:?}",
        fs::read_dir(&tmp).unwrap().collect::<Vec<_>>()
    );
    fs::remove_dir(&tmp).unwrap();
    assert!(
        watcher.join().unwrap() > 0,
        "no build directory was ever seen"
    );
    for m in machines {
        assert!(
            err.contains(&format!("on '{m}'")),
            "{m} built nothing:\n{err}"
        );
    }
    // The derivations started (a hook's machines may print their own `building` lines).
    let started: std::collections::BTreeSet<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("building '")?.split('\'').next())
        .collect();
    let remote = err.matches("' on '").count();
    assert_eq!(started.len(), 61, "{err}");
    assert!(remote < 61, "nothing was built locally:\n{err}");
    let top = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    ok(s.nix.cmd("nix-store").arg("--verify-path").arg(&top));
    let hash = |nix: &Nix, p: &str| {
        String::from_utf8(ok(nix.cmd("nix-store").args(["-q", "--hash", p]))).unwrap()
    };
    // The same graph built by real Nix alone, in a store of its own (another store
    // directory, so other paths): the same contents.
    let alone = Nix::new().unwrap();
    let mut c = alone.cmd("nix-build");
    c.arg(s.dir.path().join("g.nix"))
        .args(["--arg", "sleep", "\"0.05\"", "--no-out-link", "-j4"]);
    let top_alone = String::from_utf8(ok(&mut c)).unwrap().trim().to_owned();
    assert_eq!(hash(&s.nix, &top), hash(&alone, &top_alone));
}

#[test]
fn sixty_derivations_over_three_machines_and_local_match_a_local_build() {
    let Some(s) = Setup::new() else { return };
    let prog = s.ferrix_store();
    let ms: Vec<(String, String)> = (1..=3)
        .map(|i| s.machine(&format!("m{i}"), &prog, 2))
        .collect();
    let spec: Vec<String> = ms.iter().map(|m| m.1.clone()).collect();
    let uris: Vec<String> = ms.into_iter().map(|m| m.0).collect();
    sixty_over(&s, ("builders", &spec.join(";")), &uris);
}

#[test]
fn sixty_derivations_over_three_ssh_ng_machines() {
    let Some(s) = Setup::new() else { return };
    let daemon = s.links.dir.path().join("nix-daemon");
    let ms: Vec<(String, String)> = (1..=3)
        .map(|i| {
            let (uri, line) = s.machine(&format!("g{i}"), &daemon, 2);
            (
                uri.replacen("ssh://", "ssh-ng://", 1),
                line.replacen("ssh://", "ssh-ng://", 1),
            )
        })
        .collect();
    let spec: Vec<String> = ms.iter().map(|m| m.1.clone()).collect();
    let uris: Vec<String> = ms.into_iter().map(|m| m.0).collect();
    sixty_over(&s, ("builders", &spec.join(";")), &uris);
}

/// The example hook of `examples/distributed/` passes the same test as the built-in
/// machines: three machines (stores of their own here), each fed and drained by the hook.
#[test]
fn the_example_hook_spreads_the_same_graph() {
    let Some(s) = Setup::new() else { return };
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/distributed/hook.sh");
    // Each machine's `nix-store`: a store of its own under the test's directory. On a real
    // machine the store is at its paths and `nix-store --dump PATH` reads it there; here
    // `--dump` goes through the store (`ferrix store dump-path`).
    let conf = s.dir.path().join("machines.conf");
    let mut lines = String::new();
    for i in 1..=3 {
        let store = s.dir.path().join(format!("h{i}"));
        let cmd = s.dir.path().join(format!("h{i}-nix-store"));
        fs::write(
            &cmd,
            format!(
                "#!/bin/sh\nif [ \"$1\" = --dump ]; then exec {ferrix} --store {store} store dump-path \"$2\"; fi\nexec {nix_store} --store {store} \"$@\"\n",
                ferrix = common::ferrix_exe().display(),
                nix_store = s.ferrix_store().display(),
                store = store.display(),
            ),
        )
        .unwrap();
        Command::new("chmod").arg("755").arg(&cmd).status().unwrap();
        lines += &format!("h{i} 2 x86_64-linux {}\n", cmd.display());
    }
    fs::write(&conf, lines).unwrap();
    let hook_env = s.dir.path().join("hook-env.sh");
    fs::write(
        &hook_env,
        format!(
            "#!/bin/sh\nFERRIX_HOOK_MACHINES={} exec {} \"$@\"\n",
            conf.display(),
            hook.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&hook_env)
        .status()
        .unwrap();
    let names: Vec<String> = (1..=3).map(|i| format!("h{i}")).collect();
    sixty_over(&s, ("build-hook", hook_env.to_str().unwrap()), &names);
}

#[test]
fn an_unreachable_machine_is_reported_once_and_its_work_goes_elsewhere() {
    let Some(s) = Setup::new() else { return };
    let drv = s.instantiate(&["n", "20"]);
    let (dead, dead_line) = s.machine("dead", Path::new("/nonexistent/nix-store"), 4);
    let (live, live_line) = s.machine("live", &s.ferrix_store(), 2);
    let out = s
        .realise(&drv, "0", &[dead_line, live_line])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches(&format!("cannot build on '{dead}'")).count(),
        1,
        "{err}"
    );
    assert!(err.contains(&format!("on '{live}'")), "{err}");
}

/// Real Nix sets a new store up racily: of several sessions started at once on a fresh
/// machine, some can fail. They start at once all the same (waiting for the first would
/// cost every run on a fresh machine a round trip), and one that fails is started again
/// once the first one got in; the machine is not given up.
#[test]
fn sessions_that_fail_while_a_machine_sets_its_store_up_are_started_again() {
    let Some(s) = Setup::new() else { return };
    let drv = s.instantiate(&["n", "8", "width", "8"]);
    let d = s.dir.path().join("racy");
    fs::create_dir(&d).unwrap();
    // The first session takes a while to set up; those that start meanwhile fail as
    // Nix's do when they race it; later ones work.
    let racy = s.dir.path().join("racy-nix-store");
    fs::write(
        &racy,
        format!(
            "#!/bin/sh
d={d}
             if mkdir $d/lead 2>/dev/null; then /bin/sleep 0.3; : > $d/ready; exec {p} \"$@\"; fi
             if [ -e $d/ready ]; then exec {p} \"$@\"; fi
             echo raced >> $d/raced
             echo \"error: creating symlink from 'gcroots/profiles': File exists\" >&2; exit 1
",
            d = d.display(),
            p = s.ferrix_store().display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&racy)
        .status()
        .unwrap();
    let (uri, line) = s.machine("racy", &racy, 4);
    let out = s.realise(&drv, "0", &[line]).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("cannot build on"), "{err}");
    assert_eq!(err.matches(&format!("' on '{uri}'")).count(), 9, "{err}");
    let raced = fs::read_to_string(d.join("raced")).unwrap_or_default();
    assert!(
        !raced.is_empty(),
        "no session started while the first one was setting up:\n{err}"
    );
}

#[test]
fn a_machine_that_dies_mid_build_loses_its_jobs_to_another() {
    let Some(s) = Setup::new() else { return };
    let drv = s.instantiate(&["n", "10", "sleep", "\"0.5\""]);
    // A machine whose sessions are killed 0.3 s after they start: mid-build.
    let dying = s.dir.path().join("dying-nix-store");
    fs::write(
        &dying,
        format!(
            "#!/bin/sh\nexec /usr/bin/timeout -s KILL 0.3 {} \"$@\"\n",
            s.ferrix_store().display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&dying)
        .status()
        .unwrap();
    let (dead, dead_line) = s.machine("dying", &dying, 8);
    let (live, live_line) = s.machine("live", &s.ferrix_store(), 4);
    let out = s
        .realise(&drv, "0", &[dead_line, live_line])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("cannot build on '{dead}'")), "{err}");
    assert!(err.contains("was lost"), "{err}");
    assert!(err.contains(&format!("on '{live}'")), "{err}");
    let top = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    ok(s.nix.cmd("nix-store").arg("--verify-path").arg(&top));
}

#[test]
fn a_failing_remote_build_names_the_machine_and_shows_its_log() {
    let Some(s) = Setup::new() else { return };
    let drv = s.instantiate(&["n", "10", "fail", "3"]);
    let (uri, line) = s.machine("m", &s.ferrix_store(), 2);
    let out = s.realise(&drv, "0", &[line]).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    let msg = err
        .lines()
        .position(|l| l.contains("-n3.drv' on '") && l.contains("failed"))
        .map(|i| err.lines().skip(i).take(6).collect::<Vec<_>>().join("\n"))
        .unwrap_or_else(|| panic!("no failure naming n3 and the machine:\n{err}"));
    assert!(msg.contains(&uri), "{msg}");
    assert!(msg.contains("n3 gives up"), "{msg}");
    // Nothing of the failed build is registered here.
    let out3 = ok(s.nix.cmd("nix-store").args(["-q", "--outputs"]).arg(
        String::from_utf8(ok(s.nix.cmd("nix-store").args([
            "-q",
            "--references",
            &drv,
        ])))
        .unwrap()
        .lines()
        .find(|l| l.ends_with("-n3.drv"))
        .unwrap(),
    ));
    let out3 = String::from_utf8(out3).unwrap();
    let v = s
        .nix
        .cmd("nix-store")
        .args(["--check-validity", out3.trim()])
        .output()
        .unwrap();
    assert!(!v.status.success());
}

#[test]
fn a_remote_build_log_is_drained_even_when_nobody_shows_it() {
    let Some(s) = Setup::new() else { return };
    // Two megabytes of log per build: far more than a pipe holds.
    let drv = s.instantiate(&["n", "2", "width", "2", "noise", "50000"]);
    let (uri, line) = s.machine("m", &s.ferrix_store(), 2);
    let t = Instant::now();
    let out = s.realise(&drv, "0", &[line]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("on '{uri}'")));
    assert!(t.elapsed() < Duration::from_secs(60));
    let log = String::from_utf8(ok(s.nix.cmd("nix-store").arg("-l").arg(
        String::from_utf8(ok(s.nix.cmd("nix-store").args([
            "-q",
            "--references",
            &drv,
        ])))
        .unwrap()
        .lines()
        .next()
        .unwrap(),
    )))
    .unwrap();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("noise line")).count(),
        50000
    );
}

#[test]
fn an_interrupt_stops_remote_builds_and_leaves_nothing_behind() {
    let Some(s) = Setup::new() else { return };
    let drv = s.instantiate(&["n", "4", "width", "4", "sleep", "\"30\""]);
    let (_uri, line) = s.machine("m", &s.ferrix_store(), 4);
    let child = s
        .realise(&drv, "0", &[line])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the machine's builders run.
    let machine = s.dir.path().join("m");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !sessions_running(&machine) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sessions_running(&machine), "the machine never started");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // The machine's sessions (and their builders) are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && sessions_running(&machine) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!sessions_running(&machine), "sessions outlived the master");
    // And so are the machine's builders (they sleep 30 s).
    let sleeping = || {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"/bin/sleep\x0030\x00"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && sleeping() {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!sleeping(), "the machine's builders outlived the master");
    // No output of the graph is valid or present here.
    let outs =
        String::from_utf8(ok(s.nix.cmd("nix-store").args(["-q", "--outputs", &drv]))).unwrap();
    let v = s
        .nix
        .cmd("nix-store")
        .args(["--check-validity", outs.trim()])
        .output()
        .unwrap();
    assert!(!v.status.success());
    // And no lock is held: building again (locally) goes through at once.
    let locks: Vec<_> = fs::read_dir(PathBuf::from(s.nix.store_dir()))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lock"))
        .collect();
    for l in locks {
        let f = fs::File::open(l.path()).unwrap();
        assert!(
            rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok(),
            "{:?} is still locked",
            l.path()
        );
    }
}

/// Whether any process serves `machine`'s store.
fn sessions_running(machine: &Path) -> bool {
    let needle = machine.to_string_lossy().into_owned();
    fs::read_dir("/proc").unwrap().flatten().any(|e| {
        fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&needle))
            .unwrap_or(false)
    })
}

#[test]
fn closures_are_copied_to_and_from_a_machine() {
    let Some(s) = Setup::new() else { return };
    let program = s.ferrix_store();
    copy_round_trip(&s, "ssh", &program);
}

#[test]
fn closures_are_copied_to_and_from_a_ferrix_machine_over_ssh_ng() {
    let Some(s) = Setup::new() else { return };
    let program = s.links.dir.path().join("nix-daemon");
    copy_round_trip(&s, "ssh-ng", &program);
}

#[test]
fn closures_are_copied_to_and_from_a_real_nix_daemon_over_ssh_ng() {
    let Some(s) = Setup::new() else { return };
    copy_round_trip(&s, "ssh-ng", Path::new("/usr/bin/nix-daemon"));
}

/// As with `nix copy`, a daemon takes unsigned paths only when told not to check.
#[test]
fn a_real_nix_daemon_refuses_unsigned_paths_unless_told_not_to_check() {
    let Some(s) = Setup::new() else { return };
    let nix = &s.nix;
    let drv = s.instantiate(&["n", "1", "width", "1"]);
    let top = String::from_utf8(ok(nix.cmd("nix-build").arg(&drv).arg("--no-out-link")))
        .unwrap()
        .trim()
        .to_owned();
    let uri = format!(
        "ssh-ng://localhost?remote-program=/usr/bin/nix-daemon&remote-store={}",
        s.dir.path().join("m").display()
    );
    let mut c = Command::new(common::ferrix_exe());
    nix.isolate(&mut c);
    let out = c.args(["copy", "--to", &uri, &top]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("'{uri}' refused copying paths"))
            && err.contains("lacks a valid signature"),
        "{err}"
    );
    // Real Nix colours the path in its message; it reaches the user without the escapes.
    assert!(!err.contains('\x1b'), "{err:?}");
}

/// `ferrix copy --to` a machine whose `program` serves a store of its own, then `--from`
/// it after the top path is deleted here.
fn copy_round_trip(s: &Setup, scheme: &str, program: &Path) {
    let nix = &s.nix;
    let drv = s.instantiate(&["n", "4", "width", "2"]);
    let top = String::from_utf8(ok(nix.cmd("nix-build").arg(&drv).arg("--no-out-link")))
        .unwrap()
        .trim()
        .to_owned();
    let closure: Vec<String> = String::from_utf8(ok(nix.cmd("nix-store").args(["-qR", &top])))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let machine = s.dir.path().join("m");
    let uri = format!(
        "{scheme}://localhost?remote-program={}&remote-store={}",
        program.display(),
        machine.display()
    );
    let ferrix = |args: &[&str]| {
        let mut c = Command::new(common::ferrix_exe());
        nix.isolate(&mut c);
        c.args(args);
        c
    };
    // The paths are unsigned: a daemon takes them only unchecked.
    let out = ferrix(&["copy", "--no-check-sigs", "--to", &uri, &top])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("copied {} paths", closure.len())));
    // Again: nothing is missing there now.
    let out = ferrix(&["copy", "--to", &uri, &top]).output().unwrap();
    assert!(stderr(&out).contains("copied 0 paths"), "{}", stderr(&out));
    // The machine has the closure, valid.
    let mut c = Command::new(s.ferrix_store());
    nix.isolate(&mut c);
    c.arg("--store")
        .arg(&machine)
        .arg("--check-validity")
        .args(&closure);
    ok(&mut c);
    // Gone here, then fetched back: the same paths, sound.
    ok(nix.cmd("nix-store").arg("--delete").arg(&top));
    let v = nix
        .cmd("nix-store")
        .args(["--check-validity", &top])
        .output()
        .unwrap();
    assert!(!v.status.success());
    // As with `nix copy`, the local store takes unsigned paths only unchecked.
    let out = ferrix(&["copy", "--from", &uri, &top]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("cannot add path '{top}'"))
            && stderr(&out).contains("lacks a valid signature"),
        "{}",
        stderr(&out)
    );
    let out = ferrix(&["copy", "--no-check-sigs", "--from", &uri, &top])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("copied 1 paths"), "{}", stderr(&out));
    ok(nix.cmd("nix-store").arg("--verify-path").arg(&top));
    // Between two stores neither of which is the local one: the machine into a binary
    // cache, which real Nix reads, then the cache into a store under another root.
    let cache = s.dir.path().join(format!("cache-{scheme}"));
    let cache_uri = format!("file://{}", cache.display());
    let out = ferrix(&["copy", "--from", &uri, "--to", &cache_uri, &top])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "copied {} paths from '{uri}' to '{cache_uri}'",
            closure.len()
        )),
        "{}",
        stderr(&out)
    );
    let listed = String::from_utf8(ok(nix.cmd("nix").args([
        "path-info",
        "-r",
        "--store",
        &cache_uri,
        &top,
    ])))
    .unwrap();
    let mut listed: Vec<&str> = listed.lines().collect();
    let mut want: Vec<&str> = closure.iter().map(String::as_str).collect();
    listed.sort_unstable();
    want.sort_unstable();
    assert_eq!(listed, want);
    let other = s.dir.path().join(format!("other-{scheme}"));
    let out = ferrix(&["copy", "--no-check-sigs", "--from", &cache_uri, "--to"])
        .arg(&other)
        .arg(&top)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut c = Command::new(s.ferrix_store());
    nix.isolate(&mut c);
    c.arg("--store")
        .arg(&other)
        .arg("--verify")
        .arg("--check-contents");
    ok(&mut c);
    let mut c = Command::new(s.ferrix_store());
    nix.isolate(&mut c);
    c.arg("--store")
        .arg(&other)
        .arg("--check-validity")
        .args(&closure);
    ok(&mut c);
}

#[test]
fn machines_are_listed_with_whether_they_answer() {
    let Some(s) = Setup::new() else { return };
    let (live, live_line) = s.machine("live", &s.ferrix_store(), 3);
    let (dead, dead_line) = s.machine("dead", Path::new("/nonexistent/nix-store"), 1);
    let mut c = Command::new(common::ferrix_exe());
    s.nix.isolate(&mut c);
    c.args([
        "--option",
        "builders",
        &format!("{live_line};{dead_line}"),
        "machines",
    ]);
    let out = String::from_utf8(ok(&mut c)).unwrap();
    let block = |uri: &str| {
        let i = out
            .find(&format!("{uri}\n"))
            .unwrap_or_else(|| panic!("{out}"));
        out[i..].lines().take(3).collect::<Vec<_>>().join("\n")
    };
    let l = block(&live);
    assert!(l.contains("max jobs: 3") && l.contains("\n  up ("), "{l}");
    let d = block(&dead);
    assert!(d.contains("\n  down: "), "{d}");
    // No store is opened: the same through a daemon (here, one that is not even running).
    c.env("NIX_REMOTE", "unix:///nonexistent/daemon-socket");
    let through = String::from_utf8(ok(&mut c)).unwrap();
    assert!(through.contains(&format!("{live}\n")), "{through}");
}

/// The serve protocol's import stream carries no hash and the machine takes what comes, so
/// the NAR is checked as it is sent: a path modified here after it was registered is refused,
/// named, and the machine does not get it.
#[test]
fn a_path_modified_here_is_not_sent_to_a_machine() {
    let Some(s) = Setup::new() else { return };
    let nix = &s.nix;
    let drv = s.instantiate(&["n", "1", "width", "1"]);
    let top = String::from_utf8(ok(nix.cmd("nix-build").arg(&drv).arg("--no-out-link")))
        .unwrap()
        .trim()
        .to_owned();
    let real = Path::new(&top);
    let mut perm = fs::metadata(real).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(real, perm).unwrap();
    fs::write(real, "modified after it was registered\n").unwrap();
    let machine = s.dir.path().join("m");
    let uri = format!(
        "ssh://localhost?remote-program={}&remote-store={}",
        s.ferrix_store().display(),
        machine.display()
    );
    let mut c = Command::new(common::ferrix_exe());
    nix.isolate(&mut c);
    let out = c.args(["copy", "--to", &uri, &top]).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&top) && err.contains("was it modified?"),
        "{err}"
    );
    let mut c = Command::new(s.ferrix_store());
    nix.isolate(&mut c);
    let v = c
        .arg("--store")
        .arg(&machine)
        .args(["--check-validity", &top])
        .output()
        .unwrap();
    assert!(!v.status.success(), "the machine took the modified path");
}
