//! Local builds on a private store with `/bin/sh` builders: graphs, outputs, references,
//! environment, failures, logs, parallelism and interrupts.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ferrix_build::FailureKind;
use ferrix_build::{BuildFailure, Built, NodeResult, ScheduleOptions};
use ferrix_format::HashAlgo;
use ferrix_format::StorePath;

fn keep_going() -> ScheduleOptions {
    ScheduleOptions {
        keep_going: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_with_references() {
    let t = TestStore::new();
    let a = t.drv("a", "echo a > $out", &[], &["out"], &[]);
    let a_out = t.store.print(&t.out(&a, "out"));
    let b = t.drv(
        "b",
        &format!("echo 'uses {a_out}' > $out"),
        &[(&a, "out")],
        &["out"],
        &[],
    );
    let c = t.drv("c", "echo c > $out", &[(&a, "out")], &["out"], &[]);
    let b_out = t.store.print(&t.out(&b, "out"));
    let d = t.drv(
        "d",
        &format!("/bin/mkdir $out; echo '{b_out}' > $out/ref; /bin/ln -s $out/ref $out/self"),
        &[(&b, "out"), (&c, "out")],
        &["out"],
        &[],
    );
    let o = t
        .build(&[&d], t.settings(), ScheduleOptions::default())
        .await;
    assert!(o.success(), "{o:?}");
    assert_eq!(o.results.len(), 4);
    assert_eq!(o.exit_status(), 0);

    let info = |drv, out| t.store.path_info(&t.out(drv, out)).unwrap();
    // b mentions a; c mentions nothing; d mentions b and itself, not c.
    assert_eq!(info(&b, "out").references, [t.out(&a, "out")].into());
    assert!(info(&c, "out").references.is_empty());
    assert_eq!(
        info(&d, "out").references,
        [t.out(&b, "out"), t.out(&d, "out")].into()
    );
    let di = info(&d, "out");
    assert_eq!(di.deriver, Some(d.clone()));
    let real = t.store.real_path(&t.out(&d, "out"));
    assert_eq!(
        ferrix_format::nar::hash_path(&real, HashAlgo::Sha256).unwrap(),
        (di.nar_hash, di.nar_size)
    );
    // Canonical: read-only, mtime 1.
    let m = std::fs::metadata(&real).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&m), 1);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777,
        0o555
    );

    // Building again does nothing: the plan is empty.
    let again = t
        .build(&[&d], t.settings(), ScheduleOptions::default())
        .await;
    assert!(again.results.is_empty());
    // The log is where Nix keeps it, and decompresses.
    let log = ferrix_build::log::read_log(&t.settings().log.dir, &a).unwrap();
    assert_eq!(log, Some(Vec::new()));
    // No build directory is left.
    assert_eq!(
        std::fs::read_dir(t.dir.path().join("build"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_environment_is_nix_s() {
    let t = TestStore::new();
    let d = t.drv(
        "env",
        "echo hello from the builder; /usr/bin/env > $out; echo \"cwd=$(pwd)\" >> $out; \
         /bin/cat $bigPath > $out.big 2>/dev/null; echo \"big=$(/bin/cat $bigPath)\" >> $out",
        &[],
        &["out"],
        &[
            ("passAsFile", "big"),
            ("big", "a large value"),
            ("custom", "yes"),
        ],
    );
    let mut s = t.settings();
    s.cores = 7;
    let o = t.build(&[&d], s.clone(), ScheduleOptions::default()).await;
    assert!(o.success(), "{o:?}");
    let text = t.read_out(&d, "out");
    let env: std::collections::BTreeMap<&str, &str> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    let top = env["NIX_BUILD_TOP"];
    assert!(top.starts_with(s.build_dir_base.to_str().unwrap()), "{top}");
    assert!(top.contains("/nix-build-env.drv-"), "{top}");
    for k in ["TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD", "cwd"] {
        assert_eq!(env[k], top, "{k}");
    }
    assert_eq!(env["PATH"], "/path-not-set");
    assert_eq!(env["HOME"], "/homeless-shelter");
    assert_eq!(env["NIX_STORE"], t.store.store_dir().to_string());
    assert_eq!(env["NIX_BUILD_CORES"], "7");
    assert_eq!(env["NIX_LOG_FD"], "2");
    assert_eq!(env["TERM"], "xterm-256color");
    assert_eq!(env["custom"], "yes");
    assert_eq!(env["out"], t.store.print(&t.out(&d, "out")));
    assert_eq!(env["big"], "a large value");
    assert!(env["bigPath"].starts_with(&format!("{top}/.attr-")));
    assert!(!env.contains_key("NIX_OUTPUT_CHECKED"));
    // The builder's output went to the log.
    let log = ferrix_build::log::read_log(&s.log.dir, &d)
        .unwrap()
        .unwrap();
    assert_eq!(log, b"hello from the builder\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_build_log_false_writes_no_log() {
    let t = TestStore::new();
    let d = t.drv(
        "quiet-log",
        "echo something to say; echo done > $out",
        &[],
        &["out"],
        &[],
    );
    let mut s = t.settings();
    s.log.keep = false;
    let o = t.build(&[&d], s.clone(), ScheduleOptions::default()).await;
    assert!(o.success(), "{o:?}");
    assert_eq!(t.read_out(&d, "out"), "done\n");
    assert_eq!(ferrix_build::log::read_log(&s.log.dir, &d).unwrap(), None);
    assert!(!s.log.dir.join("drvs").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_outputs() {
    let t = TestStore::new();
    let d = t.drv(
        "multi",
        "echo lib > $out; echo \"see $out\" > $dev",
        &[],
        &["out", "dev"],
        &[],
    );
    let o = t
        .build(&[&d], t.settings(), ScheduleOptions::default())
        .await;
    assert!(o.success(), "{o:?}");
    let dev = t.store.path_info(&t.out(&d, "dev")).unwrap();
    assert_eq!(dev.references, [t.out(&d, "out")].into());
    // One that uses only `dev` of it.
    let user = t.drv(
        "user",
        &format!("echo {} > $out", t.store.print(&t.out(&d, "dev"))),
        &[(&d, "dev")],
        &["out"],
        &[],
    );
    assert!(t
        .build(&[&user], t.settings(), ScheduleOptions::default())
        .await
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_with_and_without_keep_going() {
    let t = TestStore::new();
    let bad = t.drv("bad", "echo about to fail; exit 3", &[], &["out"], &[]);
    let after_bad = t.drv(
        "after-bad",
        "echo x > $out",
        &[(&bad, "out")],
        &["out"],
        &[],
    );
    let slow_ok = t.drv(
        "slow-ok",
        "/bin/sleep 0.5; echo ok > $out",
        &[],
        &["out"],
        &[],
    );
    let mut s = t.settings();
    s.max_jobs = 1;

    // Keep going: the independent one is built, the dependent fails, naming its input.
    let o = t
        .build(&[&after_bad, &slow_ok], s.clone(), keep_going())
        .await;
    assert_eq!(o.exit_status(), 100);
    let failures: Vec<String> = o.failures().map(|f| f.to_string()).collect();
    assert!(
        failures
            .iter()
            .any(|f| f.contains("failed with exit code 3")),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|f| f.contains("because its input") && f.contains("bad.drv")),
        "{failures:?}"
    );
    assert!(t.store.is_valid_path(&t.out(&slow_ok, "out")).unwrap());
    assert!(!t.store.real_path(&t.out(&bad, "out")).exists());

    // Without keep-going, with the failing build first: the run stops.
    let t = TestStore::new();
    let bad = t.drv("bad", "exit 1", &[], &["out"], &[]);
    let later = t.drv("later", "echo later > $out", &[], &["out"], &[]);
    let mut s = t.settings();
    s.max_jobs = 1;
    let o = t
        .build(&[&bad, &later], s, ScheduleOptions::default())
        .await;
    assert_eq!(o.exit_status(), 100);
    let not_started = o
        .results
        .iter()
        .filter(|r| matches!(r, NodeResult::NotStarted))
        .count();
    assert_eq!(not_started, 1, "{o:?}");
    assert!(!t.store.is_valid_path(&t.out(&later, "out")).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_output_hash_mismatch() {
    let t = TestStore::new();
    let good = t.fixed_drv("good", "contents", b"contents");
    let o = t
        .build(&[&good], t.settings(), ScheduleOptions::default())
        .await;
    assert!(o.success(), "{o:?}");
    let info = t.store.path_info(&t.out(&good, "out")).unwrap();
    assert!(info.ca.is_some());

    let bad = t.fixed_drv("bad", "other contents", b"contents");
    let o = t
        .build(&[&bad], t.settings(), ScheduleOptions::default())
        .await;
    assert_eq!(o.exit_status(), 102);
    let msg = o.failures().next().unwrap().to_string();
    assert!(
        msg.contains("hash mismatch in fixed-output derivation"),
        "{msg}"
    );
    assert!(msg.contains("specified: sha256-"), "{msg}");
    assert!(msg.contains("got:    sha256-"), "{msg}");
    assert!(!t.store.real_path(&t.out(&bad, "out")).exists());
    assert!(!t.store.is_valid_path(&t.out(&bad, "out")).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_restrictions() {
    let t = TestStore::new();
    let dep = t.drv("dep", "echo dep > $out", &[], &["out"], &[]);
    let dep_out = t.store.print(&t.out(&dep, "out"));
    let script = format!("echo {dep_out} > $out");
    let allowed = t.drv(
        "allowed",
        &script,
        &[(&dep, "out")],
        &["out"],
        &[("allowedReferences", &dep_out)],
    );
    let forbidden = t.drv(
        "forbidden",
        &script,
        &[(&dep, "out")],
        &["out"],
        &[("disallowedReferences", &dep_out)],
    );
    let none = t.drv(
        "none",
        &script,
        &[(&dep, "out")],
        &["out"],
        &[("allowedReferences", "")],
    );
    let o = t
        .build(&[&allowed, &forbidden, &none], t.settings(), keep_going())
        .await;
    assert!(t.store.is_valid_path(&t.out(&allowed, "out")).unwrap());
    for d in [&forbidden, &none] {
        assert!(!t.store.is_valid_path(&t.out(d, "out")).unwrap());
    }
    let msgs: Vec<String> = o.failures().map(|f| f.to_string()).collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(
        msgs.iter()
            .all(|m| m.contains("is not allowed to refer to")),
        "{msgs:?}"
    );
}

/// Four builders that each sleep: with four slots they all run at once, shown by the time
/// stamps they write (every one starts before any ends), not by wall-clock limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_run_in_parallel() {
    let t = TestStore::new();
    let drvs: Vec<_> = (0..4)
        .map(|i| {
            t.drv(
                &format!("p{i}"),
                "s=$(/bin/date +%s%N); /bin/sleep 0.4; e=$(/bin/date +%s%N); echo $s $e > $out",
                &[],
                &["out"],
                &[],
            )
        })
        .collect();
    let refs: Vec<_> = drvs.iter().collect();
    let o = t
        .build(&refs, t.settings(), ScheduleOptions::default())
        .await;
    assert!(o.success(), "{o:?}");
    let spans: Vec<(u128, u128)> = drvs
        .iter()
        .map(|d| {
            let text = t.read_out(d, "out");
            let mut it = text.split_whitespace().map(|x| x.parse::<u128>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect();
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(last_start < first_end, "{spans:?}");

    // With one slot, none overlap.
    let t = TestStore::new();
    let drvs: Vec<_> = (0..3)
        .map(|i| {
            t.drv(
                &format!("q{i}"),
                "s=$(/bin/date +%s%N); /bin/sleep 0.1; e=$(/bin/date +%s%N); echo $s $e > $out",
                &[],
                &["out"],
                &[],
            )
        })
        .collect();
    let mut s = t.settings();
    s.max_jobs = 1;
    let refs: Vec<_> = drvs.iter().collect();
    assert!(t
        .build(&refs, s, ScheduleOptions::default())
        .await
        .success());
    let mut spans: Vec<(u128, u128)> = drvs
        .iter()
        .map(|d| {
            let text = t.read_out(d, "out");
            let mut it = text.split_whitespace().map(|x| x.parse::<u128>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect();
    spans.sort();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_kill_the_builder() {
    let t = TestStore::new();
    let hung = t.drv("hung", "echo started; /bin/sleep 30", &[], &["out"], &[]);
    let mut s = t.settings();
    s.max_silent_time = Some(Duration::from_millis(300));
    let start = std::time::Instant::now();
    let o = t.build(&[&hung], s, ScheduleOptions::default()).await;
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(o.exit_status(), 101);
    assert!(
        matches!(
            o.failures().next(),
            Some(BuildFailure {
                kind: FailureKind::Silent { .. },
                ..
            })
        ),
        "{o:?}"
    );

    let mut s = t.settings();
    s.timeout = Some(Duration::from_millis(300));
    let o = t.build(&[&hung], s, ScheduleOptions::default()).await;
    assert_eq!(o.exit_status(), 101);
    assert!(
        matches!(
            o.failures().next(),
            Some(BuildFailure {
                kind: FailureKind::Timeout { .. },
                ..
            })
        ),
        "{o:?}"
    );
}

/// An interrupt while builds run: every builder process is gone, nothing is registered or
/// left at the output paths, and no build directory remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_stops_everything() {
    let t = TestStore::new();
    let marks = t.dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let drvs: Vec<_> = (0..4)
        .map(|i| {
            t.drv(
                &format!("long{i}"),
                &format!(
                    "echo partial > $out; /bin/sleep 60 & echo $! > {m}/{i}.child; echo $$ > {m}/{i}.pid; wait",
                    m = marks.display()
                ),
                &[],
                &["out"],
                &[],
            )
        })
        .collect();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let refs: Vec<_> = drvs.iter().collect();
    let marks2 = marks.clone();
    let trigger = tokio::spawn(async move {
        let all = tokio::task::spawn_blocking(move || {
            // `.pid` is written after `.child`: both are there, whole, once it ends in a
            // newline.
            let written =
                |p: &std::path::Path| std::fs::read_to_string(p).is_ok_and(|s| s.ends_with('\n'));
            let start = std::time::Instant::now();
            (0..4).all(|i| {
                let p = marks2.join(format!("{i}.pid"));
                while !written(&p) {
                    if start.elapsed() > Duration::from_secs(20) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                true
            })
        })
        .await
        .unwrap();
        tx.send(true).unwrap();
        all
    });
    let o = t
        .build_with(&refs, t.settings(), ScheduleOptions::default(), rx)
        .await;
    assert!(trigger.await.unwrap(), "the builders never started");
    assert!(o.interrupted);
    assert_ne!(o.exit_status(), 0);
    for i in 0..4 {
        for f in ["pid", "child"] {
            let pid: i32 = std::fs::read_to_string(marks.join(format!("{i}.{f}")))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or at most a zombie waiting for its parent (already dead) to be reaped.
            assert!(
                stat.is_empty() || stat.contains(") Z "),
                "process {pid} lives: {stat}"
            );
        }
    }
    for d in &drvs {
        let out = t.out(d, "out");
        assert!(!t.store.is_valid_path(&out).unwrap());
        assert!(!t.store.real_path(&out).exists());
    }
    assert_eq!(
        std::fs::read_dir(t.dir.path().join("build"))
            .unwrap()
            .count(),
        0
    );
    let _ = (Built::Built, BTreeSet::<u8>::new());
}

/// With one slot, the ready derivation with the most work behind it starts first: by count
/// of builds when nothing is known, by remembered build times when they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_remaining_work_starts_first() {
    for remembered in [false, true] {
        let t = TestStore::new();
        let order = t.dir.path().join("order");
        let log = |name: &str| format!("echo {name} >> {}; echo > $out", order.display());
        let c1 = t.drv("chain1", &log("chain1"), &[], &["out"], &[]);
        let c2 = t.drv("chain2", &log("chain2"), &[(&c1, "out")], &["out"], &[]);
        let c3 = t.drv("chain3", &log("chain3"), &[(&c2, "out")], &["out"], &[]);
        let slow = t.drv("slow", &log("slow"), &[], &["out"], &[]);
        if remembered {
            // Earlier builds of `slow` took 10 s: more than the chain's three unknown builds.
            ferrix_build::BuildTimes::open(&t.dir.path().join("times.sqlite")).record("slow", 10.0);
        }
        let mut s = t.settings();
        s.max_jobs = 1;
        let o = t.build(&[&slow, &c3], s, ScheduleOptions::default()).await;
        assert!(o.success(), "{o:?}");
        let ran = std::fs::read_to_string(&order).unwrap();
        let first = ran.lines().next().unwrap();
        assert_eq!(first, if remembered { "slow" } else { "chain1" }, "{ran}");
        // The times of this run are remembered for the next.
        let times = ferrix_build::BuildTimes::open(&t.dir.path().join("times.sqlite"));
        assert!(times.get("chain2").is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rebuilds_and_compares() {
    let t = TestStore::new();
    check_mode(&t, t.settings()).await;
}

/// `max-jobs = 0` with no other executor: nothing is built, and the error says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_slots_builds_nothing() {
    let t = TestStore::new();
    let a = t.drv("a", "echo a > $out", &[], &["out"], &[]);
    let b = t.drv("b", "echo b > $out", &[(&a, "out")], &["out"], &[]);
    let mut s = t.settings();
    s.max_jobs = 0;
    let o = t.build(&[&b], s, ScheduleOptions::default()).await;
    assert!(!o.success());
    assert_eq!(o.exit_status(), 1);
    let msgs: Vec<String> = o.failures().map(|f| f.to_string()).collect();
    assert!(msgs.iter().any(|m| m.contains("max-jobs = 0")), "{msgs:?}");
    assert!(!t.store.real_path(&t.out(&a, "out")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_rebuilds_and_replaces() {
    let t = TestStore::new();
    repair_mode(&t, t.settings()).await;
}

/// Jobs prepared ahead (claimed, with their build directory and log made) wait for a
/// builder: never more than `max_jobs` builders run at once, and every job is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_prepared_ahead_wait_for_a_builder() {
    let t = TestStore::new();
    let running = t.dir.path().join("running");
    std::fs::create_dir(&running).unwrap();
    let r = running.display();
    let drvs: Vec<StorePath> = (0..8)
        .map(|i| {
            t.drv(
                &format!("j{i}"),
                &format!(
                    "/bin/touch {r}/$name; /bin/sleep 0.2; \
                     /bin/ls {r} | /usr/bin/wc -l > $out; /bin/rm {r}/$name"
                ),
                &[],
                &["out"],
                &[],
            )
        })
        .collect();
    let mut s = t.settings();
    s.max_jobs = 2;
    s.prepare_ahead = 2;
    let refs: Vec<&StorePath> = drvs.iter().collect();
    let o = t.build(&refs, s, ScheduleOptions::default()).await;
    assert!(o.success(), "{o:?}");
    let seen: Vec<u32> = drvs
        .iter()
        .map(|d| t.read_out(d, "out").trim().parse().unwrap())
        .collect();
    assert!(seen.iter().all(|&n| (1..=2).contains(&n)), "{seen:?}");
    // Two did run together: the limit, not a single runner, kept it at two.
    assert!(seen.contains(&2), "{seen:?}");
}

/// Without keep-going, a failure cancels what else runs for its goal; what was cancelled
/// is not a failure of its own (Nix reports only the build that failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_cancelled_by_a_failure_are_not_failures_themselves() {
    let t = TestStore::new();
    let bad = t.drv("bad", "/bin/sleep 0.2; exit 1", &[], &["out"], &[]);
    let slow = t.drv("slow", "/bin/sleep 5; echo > $out", &[], &["out"], &[]);
    let mut s = t.settings();
    s.max_jobs = 2;
    let started = std::time::Instant::now();
    let o = t.build(&[&bad, &slow], s, ScheduleOptions::default()).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slow was not cancelled"
    );
    assert_eq!(o.exit_status(), 100);
    let failures: Vec<String> = o.failures().map(|f| f.to_string()).collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("bad.drv"), "{failures:?}");
    assert!(!o.interrupted);
    assert!(!t.store.real_path(&t.out(&slow, "out")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_directories_are_reused_under_new_names_and_gone_at_the_end() {
    let t = TestStore::new();
    let drvs: Vec<StorePath> = (0..12)
        .map(|i| {
            t.drv(
                &format!("r{i}"),
                "echo $NIX_BUILD_TOP > $out; /usr/bin/stat -c %i . >> $out; echo x > junk",
                &[],
                &["out"],
                &[],
            )
        })
        .collect();
    let s = t.settings();
    let o = t
        .build(
            &drvs.iter().collect::<Vec<_>>(),
            s.clone(),
            ScheduleOptions::default(),
        )
        .await;
    assert!(o.success(), "{o:?}");
    let mut tops = BTreeSet::new();
    let mut inodes = BTreeSet::new();
    for d in &drvs {
        let text = t.read_out(d, "out");
        let mut lines = text.lines();
        let top = lines.next().unwrap().to_owned();
        assert!(top.contains(&format!("/nix-build-{}-", d.name())), "{top}");
        tops.insert(top);
        inodes.insert(lines.next().unwrap().to_owned());
    }
    assert_eq!(tops.len(), drvs.len(), "each build has a name of its own");
    assert!(
        inodes.len() < drvs.len(),
        "directories are reused: {} inodes for {} builds",
        inodes.len(),
        drvs.len()
    );
    let left: Vec<_> = std::fs::read_dir(&s.build_dir_base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
