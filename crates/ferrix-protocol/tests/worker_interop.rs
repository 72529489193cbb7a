//! Our client side of the worker protocol against real Nix's `nix-daemon --stdio` (what
//! `ssh-ng://` runs on the remote), in a private store (never the machine's `/nix`).
//!
//! Needs Debian's `nix-bin` (Nix 2.8, worker protocol 1.34). Without it the tests say so and
//! pass, unless `CI` is `true` or `FERRIX_REQUIRE_NIX` is set, where they fail.

#![allow(clippy::print_stderr)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferrix_format::content_address::FileIngestionMethod;
use ferrix_format::hash::{Encoding, Hash};
use ferrix_format::{ContentAddress, Derivation, StoreDir, StorePath};
use ferrix_protocol::wire::{read_bool, read_store_path_set, read_string};
use ferrix_protocol::worker::payload::{write_framed, MultiplePathsWriter};
use ferrix_protocol::worker::reply::{
    read_missing, read_ok, read_output_map, read_path_info_reply,
};
use ferrix_protocol::worker::stderr::result_type;
use ferrix_protocol::worker::{
    client_handshake, client_post_handshake, client_startup, process_stderr, read_build_result,
    read_keyed_build_results, write_request, BuildMode, BuildStatus, ClientOptions, DerivedPath,
    ErrorInfo, Field, OutputsSpec, PathInfo, StderrMsg, UnkeyedPathInfo, WorkerRequest,
    WORKER_PROTOCOL_VERSION,
};
use ferrix_protocol::{Limits, Version};

fn find_nix(prog: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(
            [
                "/usr/bin",
                "/usr/local/bin",
                "/nix/var/nix/profiles/default/bin",
            ]
            .iter()
            .map(PathBuf::from),
        )
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Real Nix in a temporary store, state, log, config and home directory.
struct Nix {
    root: tempfile::TempDir,
    bin: PathBuf,
}

impl Nix {
    fn new() -> Option<Self> {
        let Some(daemon) = find_nix("nix-daemon") else {
            let required = std::env::var("CI").is_ok_and(|v| v == "true")
                || std::env::var_os("FERRIX_REQUIRE_NIX").is_some();
            assert!(
                !required,
                "real Nix is required for the worker interop test: apt-get install -y nix-bin"
            );
            eprintln!(
                "SKIPPING worker interop test: nix-daemon not found (apt-get install -y nix-bin)"
            );
            return None;
        };
        let root = tempfile::tempdir().unwrap();
        for d in ["store", "state", "log", "etc", "home", "work"] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        // `nix-daemon --stdio` on a local store trusts its client whatever the user (the
        // standard streams are the caller's business); trusted-users is set all the same.
        fs::write(
            root.path().join("etc/nix.conf"),
            "sandbox = false\nbuild-users-group =\nsubstituters =\ntrusted-users = root\n",
        )
        .unwrap();
        Some(Self {
            root,
            bin: daemon.parent().unwrap().to_owned(),
        })
    }

    fn store_dir(&self) -> StoreDir {
        StoreDir::new(self.root.path().join("store").to_str().unwrap()).unwrap()
    }

    fn work(&self) -> PathBuf {
        self.root.path().join("work")
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bin.join(prog));
        let r = self.root.path();
        c.env("NIX_STORE_DIR", r.join("store"))
            .env("NIX_STATE_DIR", r.join("state"))
            .env("NIX_LOG_DIR", r.join("log"))
            .env("NIX_CONF_DIR", r.join("etc"))
            .env("HOME", r.join("home"))
            .env_remove("NIX_PATH")
            .env_remove("NIX_REMOTE")
            .env_remove("NIX_DAEMON_SOCKET_PATH")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME");
        c
    }

    /// Run, demand success, stdout.
    fn ok(&self, prog: &str, args: &[&str]) -> Vec<u8> {
        let out = self.cmd(prog).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{prog} {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn ok_line(&self, prog: &str, args: &[&str]) -> String {
        String::from_utf8(self.ok(prog, args))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn daemon(&self) -> Child {
        self.cmd("nix-daemon")
            .arg("--stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }
}

/// Kills the daemon if the test hangs (a protocol mismatch can leave both sides waiting).
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn new(child: &Child) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let pid = child.id().to_string();
        let flag = done.clone();
        std::thread::spawn(move || {
            for _ in 0..300 {
                std::thread::sleep(Duration::from_millis(500));
                if flag.load(Ordering::SeqCst) {
                    return;
                }
            }
            eprintln!("worker interop: no progress in 150 s, killing nix-daemon --stdio");
            let _ = Command::new("kill").arg("-9").arg(&pid).status();
        });
        Self(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn nar_of(path: &Path) -> Vec<u8> {
    let mut nar = Vec::new();
    ferrix_format::nar::dump_path(path, &mut nar).unwrap();
    nar
}

/// A content-addressed (source) path for `nar` with `refs`, and its info.
fn ca_info(dir: &StoreDir, name: &str, nar: &[u8], refs: &[&StorePath]) -> PathInfo {
    let h = Hash::sha256(nar);
    let path = dir
        .make_fixed_output_path(
            name,
            FileIngestionMethod::Recursive,
            &h,
            refs.iter().copied(),
            false,
        )
        .unwrap();
    let mut info = UnkeyedPathInfo::new(h, nar.len() as u64);
    info.references = refs.iter().map(|p| (*p).clone()).collect();
    info.ca = Some(ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash: h,
    });
    PathInfo { path, info }
}

/// A client session with the daemon.
struct Session {
    child: Child,
    r: BufReader<ChildStdout>,
    w: BufWriter<ChildStdin>,
    v: Version,
    dir: StoreDir,
    limits: Limits,
    _watchdog: Watchdog,
}

impl Session {
    /// Greet the daemon offering `ours`; the negotiated version.
    fn open(nix: &Nix, ours: Version) -> (Self, Option<String>) {
        let mut child = nix.daemon();
        let watchdog = Watchdog::new(&child);
        let mut w = BufWriter::new(child.stdin.take().unwrap());
        let mut r = BufReader::new(child.stdout.take().unwrap());
        let limits = Limits::DEFAULT;
        let n = client_handshake(&mut r, &mut w, ours, &BTreeSet::new(), &limits).unwrap();
        let info = client_post_handshake(&mut r, &mut w, n.version, &limits).unwrap();
        client_startup(&mut r, &mut w, n.version, &limits, &mut |m| {
            eprintln!("start-up: {m:?}")
        })
        .unwrap()
        .unwrap();
        assert!(n.features.is_empty());
        (
            Self {
                child,
                r,
                w,
                v: n.version,
                dir: nix.store_dir(),
                limits,
                _watchdog: watchdog,
            },
            info.nix_version,
        )
    }

    fn send(&mut self, req: &WorkerRequest) {
        write_request(&mut self.w, self.v, &self.dir, req).unwrap();
    }

    /// Flush, then the daemon's messages up to the end of the work.
    fn work(&mut self, log: &mut Vec<StderrMsg>) -> Result<(), ErrorInfo> {
        process_stderr(
            &mut self.r,
            &mut self.w,
            self.v,
            &self.limits,
            None,
            &mut |m| log.push(m),
        )
        .unwrap()
    }

    /// Send `req` and demand that the work succeeds.
    fn call(&mut self, req: &WorkerRequest) {
        self.send(req);
        let mut log = Vec::new();
        if let Err(e) = self.work(&mut log) {
            panic!("{:?} failed: {e}\nlog: {log:?}", req.op());
        }
    }

    fn path_info(&mut self, p: &StorePath) -> Option<UnkeyedPathInfo> {
        self.call(&WorkerRequest::QueryPathInfo(p.clone()));
        read_path_info_reply(&mut self.r, self.v, &self.dir, &self.limits).unwrap()
    }

    fn is_valid(&mut self, p: &StorePath) -> bool {
        self.call(&WorkerRequest::IsValidPath(p.clone()));
        read_bool(&mut self.r, "IsValidPath").unwrap()
    }

    /// Close the stream; the daemon must have nothing left to say and exit cleanly.
    fn close(self) {
        let Self {
            mut child,
            w,
            mut r,
            ..
        } = self;
        drop(w);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "unread answer bytes: {}", rest.len());
        let status = child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

#[test]
fn against_nix_daemon_stdio() {
    let Some(nix) = Nix::new() else { return };
    let dir = nix.store_dir();
    let (mut s, nix_version) = Session::open(&nix, WORKER_PROTOCOL_VERSION);
    assert_eq!(s.v, Version::new(1, 34), "Nix 2.8 speaks 1.34");
    assert_eq!(nix_version.as_deref(), Some("2.8.0"));

    // SetOptions: no reply.
    let mut opts = ClientOptions::default();
    opts.overrides.insert("max-silent-time".into(), "0".into());
    s.call(&WorkerRequest::SetOptions(opts));

    // AddToStoreNar of a new path, the NAR framed.
    let a_src = nix.work().join("a");
    fs::create_dir(&a_src).unwrap();
    fs::write(a_src.join("file"), "hello from ferrix\n").unwrap();
    fs::write(a_src.join("script"), "#!/bin/sh\n").unwrap();
    let a_nar = nar_of(&a_src);
    let a = ca_info(&dir, "ferrix-a", &a_nar, &[]);
    s.send(&WorkerRequest::AddToStoreNar {
        info: a.clone(),
        repair: false,
        dont_check_sigs: false,
    });
    write_framed(&mut s.w, &mut &a_nar[..]).unwrap();
    s.work(&mut Vec::new()).unwrap();
    let a_full = dir.display(&a.path);
    nix.ok("nix-store", &["--check-validity", &a_full]);

    // QueryPathInfo, against nix-store -q.
    let info = s.path_info(&a.path).expect("the path just added");
    assert_eq!(
        info.nar_hash.encode_typed(Encoding::Nix32),
        nix.ok_line("nix-store", &["-q", "--hash", &a_full])
    );
    assert_eq!(
        info.nar_size.to_string(),
        nix.ok_line("nix-store", &["-q", "--size", &a_full])
    );
    assert_eq!(info.ca, a.info.ca);
    assert!(info.references.is_empty());
    assert!(info.registration_time > 0);
    let missing = StorePath::from_digest(&[7; 20], "missing").unwrap();
    assert_eq!(s.path_info(&missing), None);

    // IsValidPath, QueryValidPaths.
    assert!(s.is_valid(&a.path));
    assert!(!s.is_valid(&missing));
    s.call(&WorkerRequest::QueryValidPaths {
        paths: [a.path.clone(), missing.clone()].into(),
        substitute: false,
    });
    let valid = read_store_path_set(&mut s.r, &dir, &s.limits, "valid paths").unwrap();
    assert_eq!(valid, BTreeSet::from([a.path.clone()]));

    // NarFromPath, byte for byte as nix-store --dump.
    let want_nar = nix.ok("nix-store", &["--dump", &a_full]);
    assert_eq!(want_nar, a_nar);
    s.call(&WorkerRequest::NarFromPath(a.path.clone()));
    let mut nar = vec![0; want_nar.len()];
    s.r.read_exact(&mut nar).unwrap();
    assert_eq!(nar, want_nar);

    // AddMultipleToStore: two paths, the second referring to the first.
    let b_src = nix.work().join("b.txt");
    fs::write(&b_src, "the first of two\n").unwrap();
    let b_nar = nar_of(&b_src);
    let b = ca_info(&dir, "ferrix-b", &b_nar, &[]);
    let c_src = nix.work().join("c.txt");
    fs::write(&c_src, format!("refers to {}\n", dir.display(&b.path))).unwrap();
    let c_nar = nar_of(&c_src);
    let c = ca_info(&dir, "ferrix-c", &c_nar, &[&b.path]);
    s.send(&WorkerRequest::AddMultipleToStore {
        repair: false,
        dont_check_sigs: false,
    });
    let mut m = MultiplePathsWriter::new(&mut s.w, &dir, 2).unwrap();
    m.add(&b, &mut &b_nar[..]).unwrap();
    m.add(&c, &mut &c_nar[..]).unwrap();
    m.finish().unwrap();
    s.work(&mut Vec::new()).unwrap();
    let c_full = dir.display(&c.path);
    nix.ok("nix-store", &["--check-validity", &c_full]);
    assert_eq!(
        nix.ok_line("nix-store", &["-q", "--references", &c_full]),
        dir.display(&b.path)
    );
    s.call(&WorkerRequest::QueryReferrers(b.path.clone()));
    let referrers = read_store_path_set(&mut s.r, &dir, &s.limits, "referrers").unwrap();
    assert_eq!(referrers, BTreeSet::from([c.path.clone()]));

    // A failing operation: STDERR_ERROR (the Error struct at 1.34), and the session goes on.
    s.send(&WorkerRequest::EnsurePath(missing.clone()));
    let err = s.work(&mut Vec::new()).unwrap_err();
    assert!(err.message.contains(&missing.to_string()), "{err}");
    assert!(s.is_valid(&c.path));

    // BuildDerivation of a trivial derivation instantiated by Nix.
    let expr = nix.work().join("t.nix");
    fs::write(
        &expr,
        r#"builtins.derivation { name = "t"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo hi; echo hi > $out" ]; }"#,
    )
    .unwrap();
    let drv_full = nix.ok_line("nix-instantiate", &[expr.to_str().unwrap()]);
    let drv_path = dir.parse_path(&drv_full).unwrap();
    let drv = Derivation::parse_aterm(&dir, &fs::read(&drv_full).unwrap()).unwrap();
    assert!(drv.input_drvs.is_empty());
    let out_path = drv.outputs["out"].path().unwrap().clone();
    s.send(&WorkerRequest::BuildDerivation {
        drv_path: drv_path.clone(),
        drv,
        mode: BuildMode::Normal,
    });
    let mut log = Vec::new();
    s.work(&mut log).unwrap();
    let said_hi = log.iter().any(|m| match m {
        StderrMsg::Next(line) => line.trim_end() == "hi",
        StderrMsg::Result { kind, fields, .. } => {
            *kind == result_type::BUILD_LOG_LINE && fields == &[Field::Str("hi".into())]
        }
        _ => false,
    });
    assert!(said_hi, "no log line 'hi' in {log:?}");
    let res = read_build_result(&mut s.r, s.v, &s.limits).unwrap();
    assert_eq!(res.status, BuildStatus::Built, "{res:?}");
    assert_eq!(res.times_built, 1);
    assert!(res.stop_time >= res.start_time);
    assert_eq!(res.built_outputs["out"].out_path, out_path, "{res:?}");
    let out_info = s.path_info(&out_path).expect("the output is valid");
    assert_eq!(out_info.deriver.as_ref(), Some(&drv_path));
    assert!(out_info.references.is_empty());
    assert_eq!(fs::read_to_string(dir.display(&out_path)).unwrap(), "hi\n");

    // What Nix knows of the derivation now.
    s.call(&WorkerRequest::QueryDerivationOutputMap(drv_path.clone()));
    let outputs = read_output_map(&mut s.r, &dir, &s.limits).unwrap();
    assert_eq!(outputs["out"].as_ref(), Some(&out_path));
    let target = DerivedPath::Built {
        drv_path: drv_path.clone(),
        outputs: OutputsSpec::All,
    };
    s.call(&WorkerRequest::QueryMissing(vec![target.clone()]));
    let missing_set = read_missing(&mut s.r, &dir, &s.limits).unwrap();
    assert!(missing_set.will_build.is_empty(), "{missing_set:?}");
    s.call(&WorkerRequest::BuildPathsWithResults {
        paths: vec![target.clone()],
        mode: BuildMode::Normal,
    });
    let results = read_keyed_build_results(&mut s.r, s.v, &dir, &s.limits).unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].path, target);
    assert!(results[0].result.status.is_success(), "{results:?}");
    s.call(&WorkerRequest::BuildPaths {
        paths: vec![target],
        mode: BuildMode::Normal,
    });
    read_ok(&mut s.r, "BuildPaths").unwrap();

    // Roots, signatures, logs.
    s.call(&WorkerRequest::AddTempRoot(out_path.clone()));
    read_ok(&mut s.r, "AddTempRoot").unwrap();
    s.call(&WorkerRequest::EnsurePath(out_path.clone()));
    read_ok(&mut s.r, "EnsurePath").unwrap();
    s.call(&WorkerRequest::SyncWithGC);
    read_ok(&mut s.r, "SyncWithGC").unwrap();
    s.call(&WorkerRequest::AddSignatures {
        path: c.path.clone(),
        sigs: ["ferrix-test:c2lnbmF0dXJl".to_owned()].into(),
    });
    read_ok(&mut s.r, "AddSignatures").unwrap();
    let c_info = s.path_info(&c.path).unwrap();
    assert!(
        c_info.sigs.contains("ferrix-test:c2lnbmF0dXJl"),
        "{c_info:?}"
    );
    s.send(&WorkerRequest::AddBuildLog(drv_path.clone()));
    write_framed(&mut s.w, &mut &b"a log sent by ferrix\n"[..]).unwrap();
    s.work(&mut Vec::new()).unwrap();
    read_ok(&mut s.r, "AddBuildLog").unwrap();
    s.call(&WorkerRequest::QueryPathFromHashPart(
        a.path.hash_part().to_owned(),
    ));
    assert_eq!(
        read_string(&mut s.r, &s.limits, "path from hash part").unwrap(),
        a_full
    );
    s.call(&WorkerRequest::QueryAllValidPaths);
    let all = read_store_path_set(&mut s.r, &dir, &s.limits, "all valid paths").unwrap();
    for p in [&a.path, &b.path, &c.path, &out_path, &drv_path] {
        assert!(all.contains(p), "{p}");
    }

    s.close();
}

/// Older clients: the NAR of AddToStoreNar pulled with STDERR_READ (1.21, 1.22) or sent raw
/// (before), errors as message and status (before 1.26), legacy build targets (before 1.30).
#[test]
fn older_client_versions() {
    let Some(nix) = Nix::new() else { return };
    let dir = nix.store_dir();
    for minor in [18u8, 21, 23, 25, 29] {
        let ours = Version::new(1, minor);
        let (mut s, nix_version) = Session::open(&nix, ours);
        assert_eq!(s.v, ours);
        assert_eq!(nix_version, None, "the Nix version is sent from 1.33 on");
        s.call(&WorkerRequest::SetOptions(ClientOptions::default()));

        let src = nix.work().join(format!("old-{minor}.txt"));
        fs::write(&src, format!("added by a 1.{minor} client\n")).unwrap();
        let nar = nar_of(&src);
        let p = ca_info(&dir, &format!("ferrix-old-{minor}"), &nar, &[]);
        s.send(&WorkerRequest::AddToStoreNar {
            info: p.clone(),
            repair: false,
            dont_check_sigs: false,
        });
        let mut log = Vec::new();
        let res = if minor >= 23 {
            write_framed(&mut s.w, &mut &nar[..]).unwrap();
            s.work(&mut log)
        } else if minor >= 21 {
            let mut src = &nar[..];
            process_stderr(
                &mut s.r,
                &mut s.w,
                s.v,
                &s.limits,
                Some(&mut src),
                &mut |m| log.push(m),
            )
            .unwrap()
        } else {
            s.w.write_all(&nar).unwrap();
            s.work(&mut log)
        };
        res.unwrap_or_else(|e| panic!("AddToStoreNar at 1.{minor}: {e}"));
        let info = s.path_info(&p.path).unwrap();
        assert_eq!(info.nar_hash, p.info.nar_hash);
        assert_eq!(info.nar_size, nar.len() as u64);
        assert!(s.is_valid(&p.path));

        // An error in the format of the version; the session goes on.
        let missing = StorePath::from_digest(&[9; 20], "missing").unwrap();
        s.send(&WorkerRequest::EnsurePath(missing.clone()));
        let err = s.work(&mut Vec::new()).unwrap_err();
        assert!(err.message.contains(&missing.to_string()), "{err}");
        if minor < 26 {
            assert_eq!(err.exit_status, 1, "{err:?}");
        }

        // A legacy target: the derivation's path alone means all its outputs.
        let expr = nix.work().join(format!("old-{minor}.nix"));
        fs::write(
            &expr,
            format!(r#"builtins.derivation {{ name = "old-{minor}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo old > $out" ]; }}"#),
        )
        .unwrap();
        let drv_full = nix.ok_line("nix-instantiate", &[expr.to_str().unwrap()]);
        let drv_path = dir.parse_path(&drv_full).unwrap();
        s.call(&WorkerRequest::BuildPaths {
            paths: vec![DerivedPath::Built {
                drv_path: drv_path.clone(),
                outputs: OutputsSpec::All,
            }],
            mode: BuildMode::Normal,
        });
        read_ok(&mut s.r, "BuildPaths").unwrap();
        let drv = Derivation::parse_aterm(&dir, &fs::read(&drv_full).unwrap()).unwrap();
        let out = drv.outputs["out"].path().unwrap().clone();
        assert!(s.is_valid(&out));
        s.close();
    }
}
