//! Our client side of the serve protocol against real Nix's `nix-store --serve --write`, in a
//! private store (never the machine's `/nix`).
//!
//! Needs Debian's `nix-bin` (Nix 2.8). Without it the test says so and passes, unless `CI` is
//! `true`, where it fails.

#![allow(clippy::print_stderr)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferrix_format::content_address::FileIngestionMethod;
use ferrix_format::hash::{Encoding, Hash, HashAlgo};
use ferrix_format::wire::push_bytes;
use ferrix_format::{ContentAddress, Derivation, StoreDir, StorePath};
use ferrix_protocol::serve::{
    client_handshake, read_build_paths_reply, read_build_result, read_ok, read_path_infos,
    write_request, AddToStoreNar, BuildDerivation, BuildPaths, BuildPathsReply, BuildSettings,
    BuildStatus, DumpStorePath, QueryClosure, QueryPathInfos, QueryValidPaths, Request,
    SERVE_PROTOCOL_VERSION,
};
use ferrix_protocol::wire::read_store_path_set;
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
        let Some(store_bin) = find_nix("nix-store") else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(
                !ci,
                "real Nix is required for the serve interop test: apt-get install -y nix-bin"
            );
            eprintln!(
                "SKIPPING serve interop test: nix-store not found (apt-get install -y nix-bin)"
            );
            return None;
        };
        let root = tempfile::tempdir().unwrap();
        for d in ["store", "state", "log", "etc", "home", "work"] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        fs::write(
            root.path().join("etc/nix.conf"),
            "sandbox = false\nbuild-users-group =\nsubstituters =\n",
        )
        .unwrap();
        Some(Self {
            root,
            bin: store_bin.parent().unwrap().to_owned(),
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
}

/// Kills the server if the test hangs (a protocol mismatch can leave both sides waiting).
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
            eprintln!("serve interop: no progress in 150 s, killing nix-store --serve");
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

/// A content-addressed (source) path for `nar` with no references.
fn ca_path(dir: &StoreDir, name: &str, nar: &[u8]) -> (StorePath, Hash, ContentAddress) {
    let h = Hash::sha256(nar);
    let p = dir
        .make_fixed_output_path(name, FileIngestionMethod::Recursive, &h, [], false)
        .unwrap();
    let ca = ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash: h,
    };
    (p, h, ca)
}

#[test]
fn against_nix_store_serve() {
    let Some(nix) = Nix::new() else { return };
    let dir = nix.store_dir();
    let limits = Limits::DEFAULT;

    // A path made by Nix itself.
    let src = nix.work().join("hello.txt");
    fs::write(&src, "hello from ferrix\n").unwrap();
    let added = nix.ok_line("nix-store", &["--add", src.to_str().unwrap()]);
    let added_path = dir.parse_path(&added).unwrap();
    let missing = StorePath::from_digest(&[7; 20], "missing").unwrap();

    let mut child = nix
        .cmd("nix-store")
        .args(["--serve", "--write"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _watchdog = Watchdog::new(&child);
    let mut w = BufWriter::new(child.stdin.take().unwrap());
    let mut r = BufReader::new(child.stdout.take().unwrap());

    // Handshake: Nix 2.8 speaks 2.7.
    let v = client_handshake(&mut r, &mut w, SERVE_PROTOCOL_VERSION).unwrap();
    assert!(v >= Version::new(2, 5), "{v}");
    eprintln!("serve interop: negotiated {v}");

    // QueryValidPaths.
    let send = |w: &mut BufWriter<_>, req: &Request| {
        write_request(w, v, &dir, req).unwrap();
        w.flush().unwrap();
    };
    send(
        &mut w,
        &Request::QueryValidPaths(QueryValidPaths {
            lock: false,
            substitute: false,
            paths: [added_path.clone(), missing.clone()].into(),
        }),
    );
    let valid = read_store_path_set(&mut r, &dir, &limits, "valid paths").unwrap();
    assert_eq!(valid, BTreeSet::from([added_path.clone()]));

    // QueryPathInfos, checked against nix-store -q.
    send(
        &mut w,
        &Request::QueryPathInfos(QueryPathInfos {
            paths: [added_path.clone(), missing.clone()].into(),
        }),
    );
    let infos = read_path_infos(&mut r, v, &dir, &limits).unwrap();
    assert_eq!(infos.len(), 1);
    let info = &infos[0];
    assert_eq!(info.path, added_path);
    let want_hash = nix.ok_line("nix-store", &["-q", "--hash", &added]);
    let want_size: u64 = nix
        .ok_line("nix-store", &["-q", "--size", &added])
        .parse()
        .unwrap();
    assert_eq!(
        info.nar_hash.unwrap().encode_typed(Encoding::Nix32),
        want_hash
    );
    assert_eq!(info.nar_size, want_size);
    assert!(info.references.is_empty());
    assert!(
        info.ca.is_some(),
        "nix-store --add makes a content-addressed path"
    );

    // DumpStorePath, byte for byte as nix-store --dump.
    let want_nar = nix.ok("nix-store", &["--dump", &added]);
    assert_eq!(want_nar.len() as u64, want_size);
    send(
        &mut w,
        &Request::DumpStorePath(DumpStorePath {
            path: added_path.clone(),
        }),
    );
    let mut nar = vec![0; want_nar.len()];
    r.read_exact(&mut nar).unwrap();
    assert_eq!(nar, want_nar);

    // AddToStoreNar of a new path, with a reference to the first.
    let new_src = nix.work().join("new");
    fs::create_dir(&new_src).unwrap();
    fs::write(new_src.join("file"), format!("refers to {added}\n")).unwrap();
    let new_nar = nar_of(&new_src);
    let new_hash = Hash::sha256(&new_nar);
    let new_path = dir
        .make_fixed_output_path(
            "ferrix-new",
            FileIngestionMethod::Recursive,
            &new_hash,
            [&added_path],
            false,
        )
        .unwrap();
    send(
        &mut w,
        &Request::AddToStoreNar(AddToStoreNar {
            path: new_path.clone(),
            deriver: None,
            nar_hash: new_hash,
            references: [added_path.clone()].into(),
            registration_time: 0,
            nar_size: new_nar.len() as u64,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: Some(ContentAddress::Fixed {
                method: FileIngestionMethod::Recursive,
                hash: new_hash,
            }),
        }),
    );
    w.write_all(&new_nar).unwrap();
    w.flush().unwrap();
    read_ok(&mut r, "acknowledgement of AddToStoreNar").unwrap();
    let new_full = dir.display(&new_path);
    nix.ok("nix-store", &["--check-validity", &new_full]);
    assert_eq!(
        nix.ok_line("nix-store", &["-q", "--references", &new_full]),
        added
    );
    assert_eq!(
        nix.ok_line("nix-store", &["-q", "--hash", &new_full]),
        new_hash.encode_typed(Encoding::Nix32)
    );

    // ImportPaths with one export record.
    let imp_src = nix.work().join("imported.txt");
    fs::write(&imp_src, "imported through ImportPaths\n").unwrap();
    let imp_nar = nar_of(&imp_src);
    let (imp_path, _, _) = ca_path(&dir, "ferrix-imported", &imp_nar);
    send(&mut w, &Request::ImportPaths);
    let mut export = Vec::new();
    export.extend_from_slice(&1u64.to_le_bytes());
    export.extend_from_slice(&imp_nar);
    export.extend_from_slice(&0x4558_494eu64.to_le_bytes());
    push_bytes(&mut export, dir.display(&imp_path).as_bytes());
    export.extend_from_slice(&0u64.to_le_bytes()); // references
    push_bytes(&mut export, b""); // deriver
    export.extend_from_slice(&0u64.to_le_bytes()); // no signature
    export.extend_from_slice(&0u64.to_le_bytes()); // end
    w.write_all(&export).unwrap();
    w.flush().unwrap();
    read_ok(&mut r, "acknowledgement of ImportPaths").unwrap();

    // Both are valid for the server too; the closure of the new path holds the first.
    send(
        &mut w,
        &Request::QueryValidPaths(QueryValidPaths {
            lock: true,
            substitute: false,
            paths: [new_path.clone(), imp_path.clone()].into(),
        }),
    );
    let valid = read_store_path_set(&mut r, &dir, &limits, "valid paths").unwrap();
    assert_eq!(valid, BTreeSet::from([new_path.clone(), imp_path.clone()]));
    send(
        &mut w,
        &Request::QueryClosure(QueryClosure {
            include_outputs: false,
            paths: [new_path.clone()].into(),
        }),
    );
    let closure = read_store_path_set(&mut r, &dir, &limits, "closure").unwrap();
    assert_eq!(closure, BTreeSet::from([new_path, added_path]));

    // BuildDerivation of a trivial derivation instantiated by Nix.
    let expr = nix.work().join("t.nix");
    fs::write(
        &expr,
        r#"builtins.derivation { name = "t"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo hi > $out" ]; }"#,
    )
    .unwrap();
    let drv_full = nix.ok_line("nix-instantiate", &[expr.to_str().unwrap()]);
    let drv_path = dir.parse_path(&drv_full).unwrap();
    let drv = Derivation::parse_aterm(&dir, &fs::read(&drv_full).unwrap()).unwrap();
    assert!(drv.input_drvs.is_empty());
    let out_path = drv.outputs["out"].path().unwrap().clone();
    send(
        &mut w,
        &Request::BuildDerivation(BuildDerivation {
            drv_path: drv_path.clone(),
            drv,
            settings: BuildSettings {
                max_silent_time: 0,
                build_timeout: 60,
                max_log_size: 0,
                build_repeat: 0,
                enforce_determinism: false,
                keep_failed: false,
            },
        }),
    );
    let res = read_build_result(&mut r, v, &dir, &limits).unwrap();
    assert_eq!(res.status, BuildStatus::Built, "{res:?}");
    assert_eq!(res.times_built, 1);
    assert!(res.stop_time >= res.start_time);
    // Nix 2.8 reports the output with the derivation's hash modulo.
    if v >= Version::new(2, 6) {
        assert_eq!(res.built_outputs["out"].out_path, out_path, "{res:?}");
        assert!(res.drv_hash.is_some_and(|h| h.algo() == HashAlgo::Sha256));
    }
    let out_full = dir.display(&out_path);
    assert_eq!(fs::read_to_string(&out_full).unwrap(), "hi\n");
    nix.ok("nix-store", &["--check-validity", &out_full]);

    // BuildPaths of what is now valid: success.
    send(
        &mut w,
        &Request::BuildPaths(BuildPaths {
            paths: vec![format!("{drv_full}!out")],
            settings: BuildSettings::default(),
        }),
    );
    assert_eq!(
        read_build_paths_reply(&mut r, &limits).unwrap(),
        BuildPathsReply::Success
    );

    // The client ends the session by closing the stream; the server exits cleanly.
    drop(w);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "unread answer bytes: {}", rest.len());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// A 2.5 client (Nix 2.3): settings without keepFailed, results without builtOutputs — which
/// Nix 2.8's server sends anyway (its misplaced-parenthesis quirk), checked here so that the
/// documentation of `write_build_result` stays true.
#[test]
fn old_client_version_and_the_builtoutputs_quirk() {
    let Some(nix) = Nix::new() else { return };
    let dir = nix.store_dir();
    let limits = Limits::DEFAULT;
    let src = nix.work().join("x");
    fs::write(&src, "x").unwrap();
    let added = nix.ok_line("nix-store", &["--add", src.to_str().unwrap()]);
    let path = dir.parse_path(&added).unwrap();
    let expr = nix.work().join("t.nix");
    fs::write(
        &expr,
        r#"builtins.derivation { name = "old"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo old > $out" ]; }"#,
    )
    .unwrap();
    let drv_full = nix.ok_line("nix-instantiate", &[expr.to_str().unwrap()]);
    let drv = Derivation::parse_aterm(&dir, &fs::read(&drv_full).unwrap()).unwrap();

    let mut child = nix
        .cmd("nix-store")
        .args(["--serve", "--write"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _watchdog = Watchdog::new(&child);
    let mut w = BufWriter::new(child.stdin.take().unwrap());
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let v = client_handshake(&mut r, &mut w, Version::new(2, 5)).unwrap();
    assert_eq!(v, Version::new(2, 5));

    write_request(
        &mut w,
        v,
        &dir,
        &Request::QueryPathInfos(QueryPathInfos {
            paths: [path.clone()].into(),
        }),
    )
    .unwrap();
    w.flush().unwrap();
    let infos = read_path_infos(&mut r, v, &dir, &limits).unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].path, path);
    assert!(infos[0].nar_hash.is_some(), "hashes are sent since 2.4");

    write_request(
        &mut w,
        v,
        &dir,
        &Request::BuildDerivation(BuildDerivation {
            drv_path: dir.parse_path(&drv_full).unwrap(),
            drv,
            settings: BuildSettings::default(),
        }),
    )
    .unwrap();
    w.flush().unwrap();
    let res = read_build_result(&mut r, v, &dir, &limits).unwrap();
    assert_eq!(res.status, BuildStatus::Built, "{res:?}");
    assert!(res.built_outputs.is_empty());
    // The quirk: a DrvOutputs map follows although a 2.5 client does not expect one.
    let n = ferrix_protocol::wire::read_u64(&mut r, "quirk count").unwrap();
    assert_eq!(n, 1);
    let id = ferrix_protocol::wire::read_string(&mut r, &limits, "id").unwrap();
    assert!(id.starts_with("sha256:") && id.ends_with("!out"), "{id}");
    let json = ferrix_protocol::wire::read_string(&mut r, &limits, "json").unwrap();
    assert!(json.contains("\"outPath\""), "{json}");

    drop(w);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(child.wait().unwrap().success());
}
