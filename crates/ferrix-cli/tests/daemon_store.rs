//! Store-wide work through a Ferrix daemon, driven by real Nix 2.8: substituting from the
//! daemon's caches, deduplication, verification, roots made by clients, signatures.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::daemon::{ok, Daemon, CONF};
use common::Nix;

fn text_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A derivation whose output is in a signed `file://` cache and not in the daemon's store
/// (built once, copied there, deleted): the derivation, its output, the cache's URL, its
/// public key, and the file its builder writes a line to whenever it runs.
struct Cached {
    drv: String,
    out: String,
    url: String,
    pk: String,
    marker: std::path::PathBuf,
}

fn cached_output(d: &Daemon, nix: &Nix) -> Cached {
    let root = d.root.path().to_owned();
    let marker = root.join("tmp/built");
    let expr = root.join("tmp/cached.nix");
    fs::write(
        &expr,
        format!(
            r#"derivation {{ name = "cached"; system = builtins.currentSystem; builder = "/bin/sh";
                 args = [ "-c" "echo run >> {}; echo from the cache > $out" ]; }}"#,
            marker.display()
        ),
    )
    .unwrap();
    let drv = ok(
        d.nix(nix, "nix-instantiate").arg(&expr).output().unwrap(),
        "instantiating through the daemon",
    );
    // Built once here, copied into a signed cache, and deleted again.
    let out = ok(
        d.local("nix-store").args(["-r", &drv]).output().unwrap(),
        "building locally",
    );
    let cache = root.join("cache");
    let sk = ok(
        d.ferrix()
            .args(["key", "generate-secret", "--key-name", "test-1"])
            .output()
            .unwrap(),
        "making a key",
    );
    fs::write(root.join("sk"), sk).unwrap();
    let pk = ok(
        d.ferrix()
            .args(["key", "convert-secret-to-public"])
            .stdin(fs::File::open(root.join("sk")).unwrap())
            .output()
            .unwrap(),
        "its public half",
    );
    ok(
        d.ferrix()
            .args(["copy", "--to"])
            .arg(format!(
                "file://{}?secret-key={}",
                cache.display(),
                root.join("sk").display()
            ))
            .arg(&out)
            .output()
            .unwrap(),
        "filling the cache",
    );
    ok(
        d.local("nix-store")
            .args(["--delete", &out])
            .output()
            .unwrap(),
        "deleting the output",
    );
    fs::remove_file(&marker).unwrap();
    Cached {
        drv,
        out,
        url: format!("file://{}", cache.display()),
        pk,
        marker,
    }
}

/// Restart `d` with `conf` added to the test's settings.
fn reconfigure(d: &mut Daemon, conf: &str) {
    fs::write(d.root.path().join("etc/nix.conf"), format!("{CONF}{conf}")).unwrap();
    d.kill_and_restart();
}

#[test]
fn clients_get_what_the_daemons_caches_have_instead_of_building_it() {
    let Some(nix) = Nix::new() else { return };
    let mut d = Daemon::start("");
    let Cached {
        drv,
        out,
        url,
        pk,
        marker,
    } = cached_output(&d, &nix);
    reconfigure(
        &mut d,
        &format!("substituters = {url}\ntrusted-public-keys = {pk}\n"),
    );

    // What is missing: the output is to be fetched, nothing built.
    let dry = d
        .nix(&nix, "nix-store")
        .args(["-r", "--dry-run", &drv])
        .output()
        .unwrap();
    let err = text_of(&dry);
    assert!(dry.status.success(), "{err}");
    assert!(err.contains("will be fetched"), "{err}");
    assert!(!err.contains("will be built"), "{err}");
    // Realising the derivation fetches its output, shown as a copy.
    let got = d
        .nix(&nix, "nix-store")
        .args(["-r", &drv])
        .output()
        .unwrap();
    let err = text_of(&got);
    assert!(got.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), out);
    assert!(
        err.contains(&format!("copying path '{out}' from 'file://")),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), "from the cache\n");
    assert!(!marker.exists(), "the derivation was built");
    // A plain path too (EnsurePath), and a client that turns substitution off gets nothing.
    ok(
        d.local("nix-store")
            .args(["--delete", &out])
            .output()
            .unwrap(),
        "deleting the output",
    );
    let refused = d
        .nix(&nix, "nix-store")
        .args(["-r", &out, "--option", "substitute", "false"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    ok(
        d.nix(&nix, "nix-store")
            .args(["-r", &out])
            .output()
            .unwrap(),
        "fetching the path",
    );
    assert!(Path::new(&out).exists());
    assert!(!marker.exists(), "the derivation was built");
}

#[test]
fn optimise_and_verify_through_the_daemon() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let a = d.add(&nix, "one", "the same contents\n", "adding");
    let b = d.add(&nix, "two", "the same contents\n", "adding");
    let out = d.nix(&nix, "nix-store").arg("--optimise").output().unwrap();
    let err = text_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("freed by hard-linking 1 files"), "{err}");
    let ino = |p: &str| fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&a), ino(&b));
    // Sound, and checked by its contents.
    let verified = d
        .nix(&nix, "nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", text_of(&verified));
    // A file changed behind the store's back is found.
    let c = d.add(&nix, "three", "other contents\n", "adding");
    let mut perms = fs::metadata(&c).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&c, perms).unwrap();
    fs::write(&c, "tampered\n").unwrap();
    let bad = d
        .nix(&nix, "nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    let err = text_of(&bad);
    assert!(!bad.status.success(), "{err}");
    assert!(err.contains(&format!("path '{c}' was modified")), "{err}");
}

#[test]
fn a_clients_roots_and_signatures_are_kept_by_the_daemon() {
    let Some(nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let root = d.root.path().to_owned();
    let p = d.add(&nix, "kept", "kept contents\n", "adding");
    // An indirect root: the client makes the link, the daemon records it.
    let link = root.join("home/result");
    ok(
        d.nix(&nix, "nix-store")
            .args(["-r", &p, "--add-root"])
            .arg(&link)
            .output()
            .unwrap(),
        "adding a root",
    );
    let roots = ok(
        d.nix(&nix, "nix-store")
            .args(["--gc", "--print-roots"])
            .output()
            .unwrap(),
        "listing roots",
    );
    assert!(
        roots.contains(&format!("{} -> {p}", link.display())),
        "{roots}"
    );
    let gc = d
        .nix(&nix, "nix-store")
        .args(["--delete", &p])
        .output()
        .unwrap();
    assert!(!gc.status.success(), "a rooted path was deleted");
    // Signatures a trusted client adds.
    let sk = root.join("sk");
    ok(
        d.nix(&nix, "nix-store")
            .arg("--generate-binary-cache-key")
            .arg("client-1")
            .arg(&sk)
            .arg(root.join("pk"))
            .output()
            .unwrap(),
        "making a key",
    );
    ok(
        d.nix(&nix, "nix")
            .args(["--extra-experimental-features", "nix-command"])
            .args(["store", "sign", "--key-file"])
            .arg(&sk)
            .arg(&p)
            .output()
            .unwrap(),
        "signing through the daemon",
    );
    let info = ok(
        d.ferrix()
            .args(["path-info", "--sigs", &p])
            .output()
            .unwrap(),
        "reading the signatures",
    );
    assert!(info.contains("client-1:"), "{info}");
}

/// The daemon's store directory.
fn store_dir(d: &Daemon) -> ferrix_format::StoreDir {
    ferrix_format::StoreDir::new(d.root.path().join("store").to_str().unwrap()).unwrap()
}

/// A garbage collection of the daemon's store, beside the daemon.
fn collect(d: &Daemon) {
    ok(
        d.local("nix-store").arg("--gc").output().unwrap(),
        "collecting",
    );
}

/// A client session of the daemon, open until dropped.
fn session(d: &Daemon, sd: &ferrix_format::StoreDir) -> ferrix_store::worker_client::WorkerClient {
    ferrix_store::worker_client::WorkerClient::over_socket(
        "daemon".into(),
        &d.socket(),
        sd.clone(),
        0,
    )
    .unwrap()
}

#[test]
fn a_sessions_temporary_roots_end_with_it_while_others_go_on() {
    let Some(_nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let sd = store_dir(&d);
    // A path nothing keeps, added beside the daemon (so no root of the daemon's own keeps it).
    let f = d.root.path().join("tmp/loose");
    fs::write(&f, "loose\n").unwrap();
    let p = ok(
        d.local("nix-store").arg("--add").arg(&f).output().unwrap(),
        "adding",
    );
    let path = sd.parse_path(&p).unwrap();
    let connect = || session(&d, &sd);
    let mut holder = connect();
    let _bystander = connect();
    holder.add_temp_root(&path).unwrap();
    let collect = || collect(&d);
    collect();
    assert!(
        Path::new(&p).exists(),
        "a session's root did not keep its path"
    );
    // The session ends; another stays open: the root goes with the first.
    drop(holder);
    std::thread::sleep(std::time::Duration::from_millis(200));
    collect();
    assert!(!Path::new(&p).exists(), "the root outlived its session");
}

/// The roots the daemon takes itself while a client adds a path are that client's too:
/// they keep the path while it is connected and end with it, while other clients go on.
#[test]
fn the_roots_of_a_clients_additions_end_with_its_session() {
    let Some(_nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let sd = store_dir(&d);
    let connect = || session(&d, &sd);
    let _bystander = connect();
    let mut adder = connect();
    let added = adder
        .add_text(
            "added-by-a-session",
            b"kept while its client is\n",
            &Default::default(),
        )
        .unwrap();
    let p = sd.display(&added).to_string();
    let collect = || collect(&d);
    collect();
    assert!(Path::new(&p).exists(), "the addition was not kept");
    drop(adder);
    std::thread::sleep(std::time::Duration::from_millis(200));
    collect();
    assert!(
        !Path::new(&p).exists(),
        "the addition's root outlived its session while another client is connected"
    );
}

/// What the shared Engine builds for a session is kept while that session lasts, and not
/// after it: the Engine's own roots end with each build, so a daemon that always has some
/// client connected does not keep every output it ever built.
#[test]
fn a_build_is_kept_by_the_session_that_asked_for_it_and_no_longer() {
    use ferrix_protocol::worker::{BuildMode, DerivedPath, OutputsSpec};
    let Some(_nix) = Nix::new() else { return };
    let d = Daemon::start("");
    let sd = store_dir(&d);
    let expr = d.root.path().join("tmp/built.nix");
    fs::write(
        &expr,
        r#"derivation { name = "built-for-a-session"; system = builtins.currentSystem;
             builder = "/bin/sh"; args = [ "-c" "echo built > $out" ]; }"#,
    )
    .unwrap();
    let drv = ok(
        d.local("nix-instantiate").arg(&expr).output().unwrap(),
        "instantiating",
    );
    let drv_path = sd.parse_path(&drv).unwrap();
    let connect = || session(&d, &sd);
    let _bystander = connect();
    let mut builder = connect();
    builder
        .build_paths(
            &[DerivedPath::Built {
                drv_path: drv_path.clone(),
                outputs: OutputsSpec::All,
            }],
            BuildMode::Normal,
            Box::new(|_| {}),
        )
        .unwrap();
    let out = builder
        .output_map(&drv_path)
        .unwrap()
        .remove("out")
        .flatten()
        .unwrap();
    let out = sd.display(&out).to_string();
    assert_eq!(fs::read_to_string(&out).unwrap(), "built\n");
    let collect = || collect(&d);
    collect();
    assert!(Path::new(&out).exists(), "the session's build was not kept");
    drop(builder);
    // The session ends in the daemon a moment after its client has gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Path::new(&out).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        collect();
    }
    assert!(
        !Path::new(&out).exists(),
        "the build outlived the session that asked for it, while another client is connected"
    );
    // The collection took the derivation too: nothing kept it. The client hears why its
    // build cannot start, once.
    let gone = connect()
        .build_paths(
            &[DerivedPath::Built {
                drv_path: drv_path.clone(),
                outputs: OutputsSpec::All,
            }],
            BuildMode::Normal,
            Box::new(|_| {}),
        )
        .unwrap_err();
    let gone = format!("{:#}", anyhow::Error::from(gone));
    assert_eq!(gone.matches("is not valid").count(), 1, "{gone}");
    // The Engine builds it again for the next session that asks.
    ok(
        d.local("nix-instantiate").arg(&expr).output().unwrap(),
        "instantiating again",
    );
    connect()
        .build_paths(
            &[DerivedPath::Built {
                drv_path,
                outputs: OutputsSpec::All,
            }],
            BuildMode::Normal,
            Box::new(|_| {}),
        )
        .unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), "built\n");
}

#[test]
fn a_client_may_choose_the_caches_the_daemon_trusts_and_no_others() {
    let Some(nix) = Nix::new() else { return };
    let mut d = Daemon::start("");
    let Cached {
        drv,
        out,
        url,
        pk,
        marker,
    } = cached_output(&d, &nix);
    // No caches of its own; the one above is among the trusted ones, and root is an
    // ordinary user here.
    reconfigure(
        &mut d,
        &format!(
            "substituters =\ntrusted-substituters = {url}\ntrusted-public-keys = {pk}\ntrusted-users = someone-else\n"
        ),
    );
    // A cache it does not trust is refused with a warning, and the output is built.
    let other = d
        .nix(&nix, "nix-store")
        .args([
            "-r",
            "--dry-run",
            &drv,
            "--option",
            "substituters",
            "file:///elsewhere",
        ])
        .output()
        .unwrap();
    let err = text_of(&other);
    assert!(other.status.success(), "{err}");
    assert!(
        err.contains("ignoring untrusted substituter 'file:///elsewhere'"),
        "{err}"
    );
    assert!(err.contains("will be built"), "{err}");
    // The trusted one is used: fetched, not built.
    let got = d
        .nix(&nix, "nix-store")
        .args(["-r", &drv, "--option", "substituters", &url])
        .output()
        .unwrap();
    let err = text_of(&got);
    assert!(got.status.success(), "{err}");
    assert!(
        err.contains(&format!("copying path '{out}' from '{url}")),
        "{err}"
    );
    assert!(!marker.exists(), "the derivation was built");
    assert_eq!(fs::read_to_string(&out).unwrap(), "from the cache\n");
}

/// A session speaking the worker protocol by hand, for what no client here sends.
struct RawSession {
    r: std::io::BufReader<std::os::unix::net::UnixStream>,
    w: std::os::unix::net::UnixStream,
    version: ferrix_protocol::Version,
    sd: ferrix_format::StoreDir,
}

impl RawSession {
    fn open(d: &Daemon) -> Self {
        use ferrix_protocol::worker::{client_handshake, client_post_handshake, client_startup};
        let l = ferrix_protocol::Limits::DEFAULT;
        let w = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
        let mut r = std::io::BufReader::new(w.try_clone().unwrap());
        let mut w2 = w.try_clone().unwrap();
        let ours = ferrix_protocol::worker::WORKER_PROTOCOL_VERSION;
        let version = client_handshake(&mut r, &mut w2, ours, &Default::default(), &l)
            .unwrap()
            .version;
        client_post_handshake(&mut r, &mut w2, version, &l).unwrap();
        client_startup(&mut r, &mut w2, version, &l, &mut |_| {})
            .unwrap()
            .unwrap();
        Self {
            r,
            w,
            version,
            sd: store_dir(d),
        }
    }

    /// Send `req`, answering the daemon's data requests from `source`; the data it sends
    /// (`STDERR_WRITE`), or its error.
    fn call(
        &mut self,
        req: &ferrix_protocol::worker::WorkerRequest,
        source: Option<&mut dyn std::io::Read>,
    ) -> Result<Vec<u8>, String> {
        use ferrix_protocol::worker::{process_stderr, write_request, StderrMsg};
        write_request(&mut self.w, self.version, &self.sd, req).unwrap();
        let mut data = Vec::new();
        let l = ferrix_protocol::Limits::DEFAULT;
        process_stderr(
            &mut self.r,
            &mut self.w,
            self.version,
            &l,
            source,
            &mut |m| {
                if let StderrMsg::Write(d) = m {
                    data.extend(d)
                }
            },
        )
        .unwrap()
        .map(|()| data)
        .map_err(|e| e.message)
    }
}

/// `ExportPath` and `ImportPaths`, what clients before Nix 2.0 export and import with: the
/// record matches real Nix's `nix-store --export`, real Nix's stream imports, and an
/// untrusted client cannot import the unsigned paths of a stream.
#[test]
fn the_export_and_import_operations_of_old_clients() {
    use ferrix_protocol::worker::WorkerRequest;
    let Some(nix) = Nix::new() else { return };
    let mut d = Daemon::start("");
    let sd = store_dir(&d);
    let p = d.add(&nix, "exported", "exported contents\n", "adding");
    let path = sd.parse_path(&p).unwrap();
    let export = d
        .nix(&nix, "nix-store")
        .args(["--export", &p])
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", text_of(&export));
    // `1`, the record, `0`.
    let stream = export.stdout;
    let record = &stream[8..stream.len() - 8];
    let mut s = RawSession::open(&d);
    let got = s
        .call(&WorkerRequest::ExportPath(path.clone()), None)
        .unwrap();
    assert_eq!(got, record, "the record differs from real Nix's export");
    let done = ferrix_protocol::wire::read_u64(&mut s.r, "done").unwrap();
    assert_eq!(done, 1);
    let missing = sd.parse_path(&p.replace("exported", "missing")).unwrap();
    let err = s
        .call(&WorkerRequest::ExportPath(missing), None)
        .unwrap_err();
    assert!(err.contains("is not valid"), "{err}");
    drop(s);
    let delete = || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        ok(
            d.local("nix-store")
                .args(["--delete", &p])
                .output()
                .unwrap(),
            "deleting",
        );
        assert!(!Path::new(&p).exists());
    };
    delete();
    let mut s = RawSession::open(&d);
    s.call(&WorkerRequest::ImportPaths, Some(&mut &stream[..]))
        .unwrap();
    let l = ferrix_protocol::Limits::DEFAULT;
    let imported = ferrix_protocol::wire::read_strings(&mut s.r, &l, "imported").unwrap();
    assert_eq!(imported, vec![p.clone()]);
    assert_eq!(fs::read_to_string(&p).unwrap(), "exported contents\n");
    // The session goes on.
    let again = s
        .call(&WorkerRequest::ExportPath(path.clone()), None)
        .unwrap();
    assert_eq!(again, record);
    drop(s);
    ok(
        d.nix(&nix, "nix-store")
            .args(["--verify-path", &p])
            .output()
            .unwrap(),
        "verifying the imported path",
    );
    // Root is an ordinary user now: the stream's path has no signature.
    delete();
    reconfigure(&mut d, "trusted-users = someone-else\n");
    let mut s = RawSession::open(&d);
    let err = s
        .call(&WorkerRequest::ImportPaths, Some(&mut &stream[..]))
        .unwrap_err();
    assert!(err.contains("lacks a signature by a trusted key"), "{err}");
    assert!(!Path::new(&p).exists(), "an untrusted import left the path");
}
