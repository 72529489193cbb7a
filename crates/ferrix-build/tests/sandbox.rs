//! The build sandbox: what the builder can see and reach, and that nothing outlives it.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use ferrix_build::{LocalSettings, SandboxSettings, ScheduleOptions};
use ferrix_format::StoreDir;
use ferrix_store::{LocalStore, LocalStoreConfig};

/// Debian's /bin/sh and tools are dynamically linked: the system directories they need.
fn sandboxed(mut s: LocalSettings) -> LocalSettings {
    let paths = ["/bin", "/usr", "/lib", "/lib64"]
        .iter()
        .filter(|p| std::path::Path::new(p).exists())
        .map(|p| (p.to_string(), PathBuf::from(p)))
        .collect();
    s.sandbox = Some(SandboxSettings {
        helper: PathBuf::from(env!("CARGO_BIN_EXE_ferrix-build-helper")),
        paths,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        relaxed: false,
    });
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_sees_only_its_closure() {
    let t = TestStore::new();
    let secret = t.dir.path().join("secret");
    std::fs::write(&secret, "host secret").unwrap();
    let dep = t.drv("dep", "echo dependency > $out", &[], &["out"], &[]);
    let dep_out = t.store.print(&t.out(&dep, "out"));
    let other = t.drv("other", "echo not an input > $out", &[], &["out"], &[]);
    let o = t
        .build(&[&other], t.settings(), ScheduleOptions::default())
        .await;
    assert!(o.success());
    let other_out = t.store.print(&t.out(&other, "out"));
    let script = format!(
        "exec > $out; echo top=$NIX_BUILD_TOP pwd=$(pwd) host=$(/bin/cat /proc/sys/kernel/hostname); \
         /bin/cat {dep_out}; echo from {dep_out}; \
         /bin/cat {secret} 2>/dev/null && echo SECRET-READ || echo secret-hidden; \
         /bin/cat {other_out} 2>/dev/null && echo OTHER-READ || echo other-hidden; \
         test -e /proc/{host_pid} && echo HOST-PID-SEEN || echo host-pid-hidden; \
         echo me=$$; /usr/bin/id -u; /bin/cat /etc/passwd | /usr/bin/head -c 4; echo; \
         /bin/chmod u+w {dep_out} 2>/dev/null && echo INPUT-WRITABLE || echo input-read-only; \
         /bin/grep CapEff /proc/self/status",
        secret = secret.display(),
        host_pid = std::process::id(),
    );
    let d = t.drv("look", &script, &[(&dep, "out")], &["out"], &[]);
    let o = t
        .build(&[&d], sandboxed(t.settings()), ScheduleOptions::default())
        .await;
    assert!(o.success(), "{o:?}");
    let text = t.read_out(&d, "out");
    assert!(
        text.contains("top=/build pwd=/build host=localhost"),
        "{text}"
    );
    assert!(text.contains("dependency"), "{text}");
    assert!(text.contains("secret-hidden"), "{text}");
    assert!(text.contains("other-hidden"), "{text}");
    assert!(text.contains("host-pid-hidden"), "{text}");
    assert!(
        text.contains("me=1\n"),
        "the builder is process 1 of its namespace: {text}"
    );
    assert!(text.contains("\n1000\n"), "uid 1000 inside: {text}");
    assert!(text.contains("input-read-only"), "{text}");
    assert!(
        text.contains("CapEff:\t0000000000000000"),
        "no capabilities: {text}"
    );
    // The output refers to the dependency it printed, and it was moved into the store.
    let info = t.store.path_info(&t.out(&d, "out")).unwrap();
    assert!(info.references.contains(&t.out(&dep, "out")));
    // No sandbox root is left in the store.
    let leftovers: Vec<_> = std::fs::read_dir(&t.store.config().real_store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("sandbox") || n.ends_with("chroot"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Only fixed-output derivations keep the host's network: a listener on the host's
/// 127.0.0.1 is out of reach of a normal builder and reachable by a fixed-output one; a
/// normal builder has a loopback of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_only_for_fixed_outputs() {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        panic!("this test needs /usr/bin/python3 to open a connection from the builder");
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let probe = format!(
        "/usr/bin/python3 -c \"import socket,sys\ntry:\n socket.create_connection(('127.0.0.1',{port}),timeout=2); print('connected', end='')\nexcept OSError: print('unreachable', end='')\" > $out"
    );
    let t = TestStore::new();
    let normal = t.drv("normal", &probe, &[], &["out"], &[]);
    let o = t
        .build(
            &[&normal],
            sandboxed(t.settings()),
            ScheduleOptions::default(),
        )
        .await;
    assert!(o.success(), "{o:?}");
    assert_eq!(t.read_out(&normal, "out"), "unreachable");

    // Its own loopback is up: a server inside the sandbox answers there. And the usual
    // scratch places exist: a writable /tmp, a private /dev/shm.
    let own = t.drv(
        "own-loopback",
        "/usr/bin/python3 -c \"import socket\ns=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(1)\n\
         c=socket.create_connection(s.getsockname(),timeout=2); print('served', end='')\" > $out; \
         echo > /tmp/x && echo > /dev/shm/x && echo ' scratch' >> $out",
        &[],
        &["out"],
        &[],
    );
    let o = t
        .build(&[&own], sandboxed(t.settings()), ScheduleOptions::default())
        .await;
    assert!(o.success(), "{o:?}");
    assert_eq!(t.read_out(&own, "out"), "served scratch\n");

    let fixed = t.fixed_drv_script("fetch", &probe, b"connected");
    let o = t
        .build(
            &[&fixed],
            sandboxed(t.settings()),
            ScheduleOptions::default(),
        )
        .await;
    assert!(o.success(), "{o:?}");
    assert_eq!(t.read_out(&fixed, "out"), "connected");
}

/// A chroot store (logical /nix/store, files elsewhere) can build in the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroot_stores_build_in_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LocalStoreConfig::with_root(dir.path(), StoreDir::default());
    let store = Arc::new(LocalStore::open(cfg).unwrap());
    let t = TestStore::with_store(dir, store);
    let a = t.drv("a", "echo a > $out", &[], &["out"], &[]);
    let b = t.drv(
        "b",
        &format!("/bin/cat {} > $out", t.store.print(&t.out(&a, "out"))),
        &[(&a, "out")],
        &["out"],
        &[],
    );
    let o = t
        .build(&[&b], sandboxed(t.settings()), ScheduleOptions::default())
        .await;
    assert!(o.success(), "{o:?}");
    assert!(t.store.print(&t.out(&b, "out")).starts_with("/nix/store/"));
    assert_eq!(t.read_out(&b, "out"), "a\n");
    // Without the sandbox, it is refused with a reason.
    let c = t.drv("c", "echo c > $out", &[], &["out"], &[]);
    let o = t
        .build(&[&c], t.settings(), ScheduleOptions::default())
        .await;
    let msg = o.failures().next().unwrap().to_string();
    let _ = BTreeMap::<u8, u8>::new();
    assert!(!o.success(), "{msg}");
}

/// Cancelling a sandboxed build ends every process in it, background ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_a_sandboxed_build_ends_all_its_processes() {
    let t = TestStore::new();
    let marks = t.dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    // The build directory is the one place the builder can write that we can see.
    let d = t.drv(
        "bg",
        "/bin/sleep 60 & echo started > $NIX_BUILD_TOP/started; wait",
        &[],
        &["out"],
        &[],
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let base = t.settings().build_dir_base.clone();
    let watcher = tokio::spawn(async move {
        let found = tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            while t0.elapsed() < std::time::Duration::from_secs(20) {
                for e in std::fs::read_dir(&base).unwrap().flatten() {
                    if e.path().join("started").exists() {
                        return true;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            false
        })
        .await
        .unwrap();
        tx.send(true).unwrap();
        found
    });
    let before = sleepers();
    let o = t
        .build_with(
            &[&d],
            sandboxed(t.settings()),
            ScheduleOptions::default(),
            rx,
        )
        .await;
    assert!(watcher.await.unwrap(), "the builder never started");
    assert!(o.interrupted);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let after = sleepers();
    assert!(
        after.is_subset(&before),
        "sleep 60 outlived the build: {after:?} vs {before:?}"
    );
}

/// Pids of `sleep 60` processes on the host.
fn sleepers() -> std::collections::BTreeSet<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c == b"/bin/sleep\x0060\x00")
                .unwrap_or(false)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_in_the_sandbox() {
    let t = TestStore::new();
    check_mode(&t, sandboxed(t.settings())).await;
}

/// `sandbox = relaxed`: a derivation with `__noChroot` and a fixed-output one build outside
/// the sandbox, others inside; with `sandbox = true`, `__noChroot` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_sandbox_lets_no_chroot_out() {
    let t = TestStore::new();
    let probe = "echo $NIX_BUILD_TOP > $out";
    let free = t.drv("free", probe, &[], &["out"], &[("__noChroot", "1")]);
    let boxed = t.drv("boxed", probe, &[], &["out"], &[]);
    let fixed = t.fixed_drv_script(
        "fetched",
        "test $NIX_BUILD_TOP != /build && printf outside > $out",
        b"outside",
    );

    let o = t
        .build(
            &[&free],
            sandboxed(t.settings()),
            ScheduleOptions::default(),
        )
        .await;
    let msg = o.failures().next().expect("refused").to_string();
    assert!(msg.contains("__noChroot"), "{msg}");

    let mut relaxed = sandboxed(t.settings());
    if let Some(sb) = relaxed.sandbox.as_mut() {
        sb.relaxed = true;
    }
    let o = t
        .build(
            &[&free, &boxed, &fixed],
            relaxed,
            ScheduleOptions::default(),
        )
        .await;
    assert!(o.success(), "{o:?}");
    assert_ne!(t.read_out(&free, "out"), "/build\n");
    assert_eq!(t.read_out(&boxed, "out"), "/build\n");
    assert_eq!(t.read_out(&fixed, "out"), "outside");
}

/// Sandbox places are reused between builds: a later build does not see what an earlier
/// one had as inputs (its mount points are removed before it starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_sandbox_shows_only_the_new_closure() {
    let t = TestStore::new();
    let x = t.drv("x", "echo x > $out", &[], &["out"], &[]);
    let o = t
        .build(&[&x], t.settings(), ScheduleOptions::default())
        .await;
    assert!(o.success());
    // p first (r waits for it, so it has the longest chain), then q, in the same place.
    let p = t.drv(
        "p",
        "/bin/ls $NIX_STORE > $out",
        &[(&x, "out")],
        &["out"],
        &[],
    );
    let r = t.drv("r", "echo r > $out", &[(&p, "out")], &["out"], &[]);
    let q = t.drv(
        "q",
        "/bin/ls -a $NIX_STORE > l; /bin/cat l > $out",
        &[],
        &["out"],
        &[],
    );
    let mut s = sandboxed(t.settings());
    s.max_jobs = 1;
    let o = t.build(&[&r, &q], s, ScheduleOptions::default()).await;
    assert!(o.success(), "{o:?}");
    let x_name = t.out(&x, "out").to_string();
    assert!(t.read_out(&p, "out").contains(&x_name));
    assert_eq!(t.read_out(&q, "out"), ".\n..\n");
    // Nothing of the sandbox is left in the store.
    let left: Vec<String> = std::fs::read_dir(&t.store.config().real_store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("sandbox"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Builds of one sandbox place share its host (namespaces, the root's skeleton), and none
/// leaves anything there for the next: the root is read-only, `/tmp` and `/dev/shm` are
/// fresh, and so is the System V IPC namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_leaves_nothing_for_the_next_in_its_place() {
    let t = TestStore::new();
    let a = t.drv(
        "a",
        "exec > $out; echo x > /tmp/left && echo tmp-written; echo y > /dev/shm/left && echo shm-written; \
         echo z > /left 2>/dev/null && echo ROOT-WRITTEN || echo root-read-only; \
         echo z >> /etc/passwd 2>/dev/null && echo ETC-WRITTEN || echo etc-read-only; \
         /usr/bin/ipcmk -M 4096 >/dev/null && echo segments=$(/usr/bin/ipcs -m | /bin/grep -c 0x)",
        &[],
        &["out"],
        &[],
    );
    let b = t.drv(
        "b",
        "exec > $out; test -e /tmp/left && echo TMP-LEFT || echo tmp-fresh; \
         echo shm=$(/bin/ls -A /dev/shm) \
         segments=$(/usr/bin/ipcs -m | /bin/grep -c 0x) passwd=$(/bin/grep -c z /etc/passwd)",
        &[(&a, "out")],
        &["out"],
        &[],
    );
    let mut s = sandboxed(t.settings());
    s.max_jobs = 1;
    let o = t.build(&[&b], s, ScheduleOptions::default()).await;
    assert!(o.success(), "{o:?}");
    assert_eq!(
        t.read_out(&a, "out"),
        "tmp-written\nshm-written\nroot-read-only\netc-read-only\nsegments=1\n"
    );
    assert_eq!(
        t.read_out(&b, "out"),
        "tmp-fresh\nshm= segments=0 passwd=0\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_in_the_sandbox() {
    let t = TestStore::new();
    repair_mode(&t, sandboxed(t.settings())).await;
}
