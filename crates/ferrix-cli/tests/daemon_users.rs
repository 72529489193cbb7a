//! A daemon running as root builds as the users of `build-users-group`, one per running
//! build, never as root, in and out of the sandbox; the outputs are root's and read-only.
//! The test makes the group and its users it needs (as root; without root it has nothing
//! to show and says so).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::daemon::{ok, Daemon};
use common::Nix;

const GROUP: &str = "ferrixbld";

/// The group `ferrixbld` with members `ferrixbld1`…`3` (made once, kept: system users
/// without a home or a shell); their uids.
fn build_users() -> Option<Vec<u32>> {
    if !rustix::process::geteuid().is_root() {
        // In CI the tests run as root: there, this is a failure, never a skip.
        assert!(
            std::env::var("CI").is_err_and(|_| std::env::var_os("FERRIX_REQUIRE_NIX").is_none()),
            "the build-user tests need root"
        );
        #[allow(clippy::print_stderr)]
        {
            eprintln!("SKIPPING build-user test: only root can make users and build as them");
        }
        return None;
    }
    // One test at a time makes them (two `useradd`s of one name race).
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = MAKING.lock().unwrap_or_else(|p| p.into_inner());
    let run = |c: &mut Command| {
        let out = c.output().unwrap();
        // Made already (by an earlier run, or a test beside this one): fine.
        assert!(
            out.status.success() || out.status.code() == Some(9),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("groupadd").args(["--system", "-f", GROUP]));
    let mut uids = Vec::new();
    for i in 1..=3 {
        let name = format!("{GROUP}{i}");
        if nix::unistd::User::from_name(&name).unwrap().is_none() {
            run(Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                GROUP,
                "--groups",
                GROUP,
                &name,
            ]));
        }
        uids.push(
            nix::unistd::User::from_name(&name)
                .unwrap()
                .unwrap()
                .uid
                .as_raw(),
        );
    }
    Some(uids)
}

/// The build users are the machine's: two daemons of two tests (each with its own pool of
/// locks) would share them, and a build's end kills its user's processes, so the tests that
/// build take turns.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BUILDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// A daemon whose builds run as the build users, its directories open to them.
fn daemon(sandbox: bool) -> Daemon {
    let extra = if sandbox {
        "sandbox = true\nsandbox-fallback = false\nsandbox-paths = /bin /usr /lib /lib64?\n"
    } else {
        ""
    };
    let d = Daemon::start(&format!(
        "max-jobs = 3\nbuild-users-group = {GROUP}\n{extra}"
    ));
    for dir in [d.root.path().to_owned(), d.root.path().join("tmp")] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    d
}

/// A derivation whose builder's command line carries `marker` (so the test can find its
/// process) and which takes a while.
fn slow_drv(d: &Daemon, nix: &Nix, marker: &str) -> String {
    let expr = d.root.path().join(format!("tmp/{marker}.nix"));
    fs::write(
        &expr,
        format!(
            r#"derivation {{ name = "{marker}"; system = builtins.currentSystem; builder = "/bin/sh";
                 args = [ "-c" "/bin/sleep 2; echo done > $out" "{marker}" ]; }}"#
        ),
    )
    .unwrap();
    ok(
        d.nix(nix, "nix-instantiate").arg(&expr).output().unwrap(),
        "instantiating through the daemon",
    )
}

/// The uid the process whose command line holds `marker` runs as, once there is one.
fn uid_of_process_with(marker: &str) -> u32 {
    let start = Instant::now();
    loop {
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            if cmdline.split(|&b| b == 0).any(|a| a == marker.as_bytes()) {
                let status = fs::read_to_string(e.path().join("status")).unwrap_or_default();
                if let Some(uid) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                {
                    return uid;
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no builder with '{marker}' ever ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn builds_run_as_build_users(sandbox: bool) {
    let Some(nix) = Nix::new() else { return };
    let Some(uids) = build_users() else { return };
    let _turn = one_at_a_time();
    let d = daemon(sandbox);
    let tag = if sandbox { "sb" } else { "plain" };
    let markers: Vec<String> = (0..2).map(|i| format!("ferrix-{tag}-{i}")).collect();
    let drvs: Vec<String> = markers.iter().map(|m| slow_drv(&d, &nix, m)).collect();
    let clients: Vec<Child> = drvs
        .iter()
        .map(|drv| {
            d.nix(&nix, "nix-store")
                .args(["-r", drv])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Both builders run at once, each as a build user of its own.
    let seen: Vec<u32> = markers.iter().map(|m| uid_of_process_with(m)).collect();
    for uid in &seen {
        assert!(
            uids.contains(uid),
            "a builder ran as uid {uid}, not a build user"
        );
    }
    assert_ne!(seen[0], seen[1], "two builds shared a build user");
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The output is root's, and nobody may write it.
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.uid(), 0, "{path}");
        assert_eq!(meta.mode() & 0o222, 0, "{path}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "done\n");
    }
    // The store directory is the build group's to create in, as in Nix.
    let store = fs::metadata(d.root.path().join("store")).unwrap();
    assert_eq!(store.mode() & 0o7777, 0o1775);
}

#[test]
fn builds_outside_the_sandbox_run_as_build_users() {
    builds_run_as_build_users(false);
}

#[test]
fn sandboxed_builds_run_as_build_users() {
    builds_run_as_build_users(true);
}

#[test]
fn a_group_without_members_is_refused_with_a_reason() {
    if build_users().is_none() {
        return;
    }
    let empty = "ferrixnobody";
    let _ = Command::new("groupadd")
        .args(["--system", "-f", empty])
        .output()
        .unwrap();
    // The daemon does not start: it would have no one to build as.
    let root = tempfile::tempdir().unwrap();
    for d in ["etc", "home", "tmp"] {
        fs::create_dir_all(root.path().join(d)).unwrap();
    }
    fs::write(
        root.path().join("etc/nix.conf"),
        format!("{}build-users-group = {empty}\n", common::daemon::CONF),
    )
    .unwrap();
    let links = common::Links::new();
    let mut c = Command::new(links.dir.path().join("nix-daemon"));
    common::store_env(&mut c, root.path());
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "the group '{empty}' specified in 'build-users-group' has no members"
        )),
        "{err}"
    );
}

#[test]
fn what_a_builder_leaves_running_ends_with_its_build() {
    let Some(nix) = Nix::new() else { return };
    if build_users().is_none() {
        return;
    }
    let _turn = one_at_a_time();
    let d = daemon(false);
    // The builder starts a process in a session of its own (out of its process group), and
    // writes its pid as the output.
    let expr = d.root.path().join("tmp/escape.nix");
    fs::write(
        &expr,
        r#"derivation { name = "escape"; system = builtins.currentSystem; builder = "/bin/sh";
             args = [ "-c" "/usr/bin/setsid /bin/sleep 60 & echo $! > $out" ]; }"#,
    )
    .unwrap();
    let drv = ok(
        d.nix(&nix, "nix-instantiate").arg(&expr).output().unwrap(),
        "instantiating",
    );
    let out = ok(
        d.nix(&nix, "nix-store")
            .args(["-r", &drv])
            .output()
            .unwrap(),
        "building",
    );
    let pid: i32 = fs::read_to_string(&out).unwrap().trim().parse().unwrap();
    assert!(
        common::daemon::gone(pid),
        "process {pid}, left by the builder, outlived its build"
    );
}
