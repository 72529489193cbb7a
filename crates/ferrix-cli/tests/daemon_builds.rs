//! Builds through a Ferrix daemon from several real Nix 2.8 clients: one Engine serves them
//! all, so a derivation two clients want is built once and both hear its log, `max-jobs`
//! holds for the machine, a client leaving cancels only what nobody else waits for, and a
//! client's own limits apply to its builds.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Output};
use std::time::Duration;

use common::daemon::{builder_pid, gone, ok, Daemon};
use common::Nix;

/// Instantiate `body` (the builder's shell script; `$out` is its output) through the daemon.
fn drv(d: &Daemon, nix: &Nix, name: &str, body: &str) -> String {
    let expr = d.root.path().join(format!("tmp/{name}.nix"));
    fs::write(
        &expr,
        format!(
            r#"derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh";
                 args = [ "-c" ''{body}'' ]; }}"#
        ),
    )
    .unwrap();
    ok(
        d.nix(nix, "nix-instantiate").arg(&expr).output().unwrap(),
        "instantiating through the daemon",
    )
}

/// Real Nix building `drv` through the daemon in the background, its output captured.
fn build(d: &Daemon, nix: &Nix, drv: &str, extra: &[&str]) -> Child {
    d.nix(nix, "nix-store")
        .args(["-r", drv])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn finished(c: Child) -> Output {
    c.wait_with_output().unwrap()
}

fn lines(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Wait until `p` has `n` lines.
fn wait_lines(p: &Path, n: usize) {
    let start = std::time::Instant::now();
    while lines(p).len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} never had {n} lines",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_sees_the_build_start_and_its_log_as_for_a_local_build() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let drv = drv(
        &d,
        &nix,
        "talker",
        "echo first line; echo second line >&2; echo made > $out",
    );
    let out = finished(build(&d, &nix, &drv, &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Nix's client prints the build activity's text, then the log lines it carries.
    assert!(err.contains(&format!("building '{drv}'...")), "{err}");
    let first = err.find("first line").expect(&err);
    let second = err.find("second line").expect(&err);
    assert!(
        err.find("building '").unwrap() < first && first < second,
        "{err}"
    );
}

#[test]
fn clients_wanting_the_same_output_share_one_build_and_its_log() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("max-jobs = 4\n");
    let count = d.root.path().join("tmp/count");
    let drv = drv(
        &d,
        &nix,
        "shared",
        &format!(
            "echo run >> {}; /bin/sleep 2; echo late line; echo made > $out",
            count.display()
        ),
    );
    let first = build(&d, &nix, &drv, &[]);
    wait_lines(&count, 1);
    let others: Vec<Child> = (0..3).map(|_| build(&d, &nix, &drv, &[])).collect();
    let mut outs = vec![finished(first)];
    outs.extend(others.into_iter().map(finished));
    let path = String::from_utf8_lossy(&outs[0].stdout).trim().to_owned();
    for o in &outs {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), path);
        // Every client waited on the one build and heard what it printed since.
        assert!(err.contains("late line"), "{err}");
    }
    assert_eq!(lines(&count), ["run"], "built more than once");
    assert_eq!(fs::read_to_string(&path).unwrap(), "made\n");
}

#[test]
fn a_client_leaving_cancels_nothing_another_client_waits_for() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let mark = d.root.path().join("tmp/pid");
    let drv = drv(
        &d,
        &nix,
        "awaited",
        &format!(
            "echo $$ >> {}; /bin/sleep 2; echo made > $out",
            mark.display()
        ),
    );
    let mut leaving = build(&d, &nix, &drv, &[]);
    let pid = builder_pid(&mark);
    let staying = build(&d, &nix, &drv, &[]);
    // The second client's goal has reached the daemon before the first one leaves.
    std::thread::sleep(Duration::from_millis(500));
    leaving.kill().unwrap();
    leaving.wait().unwrap();
    let out = finished(staying);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The one builder ran to its end, for the client that stayed.
    assert_eq!(lines(&mark), [pid.to_string()]);
    assert!(gone(pid));
}

#[test]
fn max_jobs_holds_for_the_machine_whatever_the_number_of_clients() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("max-jobs = 1\n");
    let log = d.root.path().join("tmp/log");
    let drvs: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|n| {
            drv(
                &d,
                &nix,
                n,
                &format!(
                    "echo start {n} >> {l}; /bin/sleep 0.5; echo end {n} >> {l}; echo > $out",
                    l = log.display()
                ),
            )
        })
        .collect();
    let clients: Vec<Child> = drvs.iter().map(|p| build(&d, &nix, p, &[])).collect();
    for c in clients {
        let out = finished(c);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got = lines(&log);
    assert_eq!(got.len(), 6, "{got:?}");
    // One build at a time: each start is followed by its own end.
    for pair in got.chunks(2) {
        let (s, e) = (&pair[0], &pair[1]);
        assert!(
            s.starts_with("start ") && e == &s.replace("start", "end"),
            "{got:?}"
        );
    }
}

#[test]
fn a_clients_own_limits_apply_to_its_builds() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let drv = drv(&d, &nix, "quiet", "/bin/sleep 30; echo > $out");
    let start = std::time::Instant::now();
    let out = finished(build(&d, &nix, &drv, &["--max-silent-time", "1"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(start.elapsed() < Duration::from_secs(20), "{err}");
    assert!(err.contains("produced no output for 1 seconds"), "{err}");
}
