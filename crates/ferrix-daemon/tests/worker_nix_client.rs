//! Our worker-protocol server against real Nix as the client: Nix 2.8's `nix-store`, `nix`
//! and `nix copy` with `--store unix://<socket>` talk to [`serve_worker`] on a Unix socket,
//! with an in-memory store behind it. Nix 2.8 speaks 1.34.
//!
//! Needs Debian's `nix-bin`. Without it the test says so and passes, unless `CI` is `true` or
//! `FERRIX_REQUIRE_NIX` is set, where it fails.

#![allow(clippy::print_stderr)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use ferrix_daemon::worker::{serve_worker, IncomingPaths, Logger, WorkerHandler, WorkerOptions};
use ferrix_format::hash::{Encoding, Hash};
use ferrix_format::{Derivation, StoreDir, StorePath};
use ferrix_protocol::worker::{
    BuildMode, BuildResult, CaMethod, ClientOptions, DerivedPath, GcAction, KeyedBuildResult,
    Missing, PathInfo, StderrMsg, UnkeyedPathInfo,
};
use ferrix_protocol::WireError;

fn find_nix(prog: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(["/usr/bin", "/usr/local/bin"].iter().map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// A private directory under the system's temporary directory, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "ferrix-worker-nix-client-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Nix makes store paths read-only.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("u+w")
            .arg(&self.0)
            .status();
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// An in-memory store shared by the connections

#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("path '{0}' is not valid in the ferrix test store")]
    NotValid(String),
    #[error("NAR hash mismatch for '{0}'")]
    HashMismatch(String),
    #[error("bad stream of paths")]
    Wire(#[from] WireError),
    #[error("reading a NAR")]
    Io(#[from] io::Error),
    /// What only clients before 1.18 send (`ExportPath`, `ImportPaths`): the scripted
    /// sessions of the server's unit tests cover them, Nix 2.8 never sends them.
    #[error("{0}: not kept by this test store")]
    NotUsed(String),
}

#[derive(Debug, Default)]
struct State {
    paths: BTreeMap<StorePath, (UnkeyedPathInfo, Vec<u8>)>,
    options: Vec<ClientOptions>,
    ops: Vec<String>,
    /// How each session ended.
    ends: Vec<String>,
}

struct Handler {
    st: Arc<Mutex<State>>,
    dir: StoreDir,
}

impl Handler {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn op(&self, s: impl Into<String>) {
        self.st().ops.push(s.into());
    }

    fn add(&self, info: &PathInfo, nar: &mut dyn Read) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        nar.read_to_end(&mut bytes)?;
        if Hash::sha256(&bytes) != info.info.nar_hash {
            return Err(StoreError::HashMismatch(self.dir.display(&info.path)));
        }
        self.st()
            .paths
            .insert(info.path.clone(), (info.info.clone(), bytes));
        Ok(())
    }
}

impl WorkerHandler for Handler {
    type Error = StoreError;

    fn set_options(&mut self, o: &ClientOptions, _: &mut dyn Logger) -> Result<(), StoreError> {
        self.st().options.push(o.clone());
        Ok(())
    }

    fn is_valid_path(&mut self, path: &StorePath) -> Result<bool, StoreError> {
        self.op("IsValidPath");
        Ok(self.st().paths.contains_key(path))
    }

    fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        _: bool,
        _: &mut dyn Logger,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.op("QueryValidPaths");
        let st = self.st();
        Ok(paths
            .iter()
            .filter(|p| st.paths.contains_key(p))
            .cloned()
            .collect())
    }

    fn query_path_info(&mut self, path: &StorePath) -> Result<Option<UnkeyedPathInfo>, StoreError> {
        self.op("QueryPathInfo");
        Ok(self.st().paths.get(path).map(|(i, _)| i.clone()))
    }

    fn add_to_store(
        &mut self,
        name: &str,
        _method: CaMethod,
        _refs: &BTreeSet<StorePath>,
        _repair: bool,
        _data: &mut dyn Read,
        _log: &mut dyn Logger,
    ) -> Result<PathInfo, StoreError> {
        // This in-memory store only takes NARs; the CLI's daemon takes the rest.
        Err(StoreError::NotValid(name.to_owned()))
    }

    fn add_text_to_store(
        &mut self,
        name: &str,
        _text: &str,
        _refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        Err(StoreError::NotValid(name.to_owned()))
    }

    fn query_valid_derivers(
        &mut self,
        _path: &StorePath,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(BTreeSet::new())
    }

    fn find_roots(&mut self, _censor: bool) -> Result<Vec<(String, StorePath)>, StoreError> {
        Ok(Vec::new())
    }

    fn collect_garbage(
        &mut self,
        _action: GcAction,
        _paths: &BTreeSet<StorePath>,
        _max_freed: Option<u64>,
        _log: &mut dyn Logger,
    ) -> Result<(Vec<StorePath>, u64), StoreError> {
        Ok((Vec::new(), 0))
    }

    fn query_referrers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(self
            .st()
            .paths
            .iter()
            .filter(|(_, (i, _))| i.references.contains(path))
            .map(|(p, _)| p.clone())
            .collect())
    }

    fn query_all_valid_paths(&mut self) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(self.st().paths.keys().cloned().collect())
    }

    fn query_path_from_hash_part(&mut self, h: &str) -> Result<Option<StorePath>, StoreError> {
        Ok(self.st().paths.keys().find(|p| p.hash_part() == h).cloned())
    }

    fn query_derivation_output_map(
        &mut self,
        drv_path: &StorePath,
    ) -> Result<BTreeMap<String, Option<StorePath>>, StoreError> {
        Err(StoreError::NotValid(self.dir.display(drv_path)))
    }

    fn query_missing(&mut self, targets: &[DerivedPath]) -> Result<Missing, StoreError> {
        self.op("QueryMissing");
        let st = self.st();
        let mut m = Missing::default();
        for t in targets {
            if !st.paths.contains_key(t.path()) {
                m.unknown.insert(t.path().clone());
            }
        }
        Ok(m)
    }

    fn add_temp_root(&mut self, _: &StorePath) -> Result<(), StoreError> {
        self.op("AddTempRoot");
        Ok(())
    }

    fn add_indirect_root(&mut self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn add_perm_root(&mut self, _: &StorePath, root: &str) -> Result<String, StoreError> {
        Ok(root.to_owned())
    }

    fn ensure_path(&mut self, path: &StorePath, _: &mut dyn Logger) -> Result<(), StoreError> {
        if self.st().paths.contains_key(path) {
            Ok(())
        } else {
            Err(StoreError::NotValid(self.dir.display(path)))
        }
    }

    fn build_paths(
        &mut self,
        targets: &[DerivedPath],
        _: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<(), StoreError> {
        self.op("BuildPaths");
        let _ = log.log(StderrMsg::Next("ferrix: nothing to build here\n".into()));
        for t in targets {
            if !self.st().paths.contains_key(t.path()) {
                return Err(StoreError::NotValid(self.dir.display(t.path())));
            }
        }
        Ok(())
    }

    fn build_paths_with_results(
        &mut self,
        _: &[DerivedPath],
        _: BuildMode,
        _: &mut dyn Logger,
    ) -> Result<Vec<KeyedBuildResult>, StoreError> {
        Ok(Vec::new())
    }

    fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        _: &Derivation,
        _: BuildMode,
        _: &mut dyn Logger,
    ) -> Result<BuildResult, StoreError> {
        Err(StoreError::NotValid(self.dir.display(drv_path)))
    }

    fn nar_from_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), StoreError> {
        self.op("NarFromPath");
        let nar = match self.st().paths.get(path) {
            Some((_, nar)) => nar.clone(),
            None => return Err(StoreError::NotValid(self.dir.display(path))),
        };
        out.write_all(&nar)?;
        Ok(())
    }

    fn export_path(&mut self, path: &StorePath, _: &mut dyn Write) -> Result<(), StoreError> {
        self.op("ExportPath");
        Err(StoreError::NotUsed(self.dir.display(path)))
    }

    fn import_paths(
        &mut self,
        _: &mut dyn Read,
        _: bool,
        _: &mut dyn Logger,
    ) -> Result<Vec<StorePath>, StoreError> {
        self.op("ImportPaths");
        Err(StoreError::NotUsed("an export stream".into()))
    }

    fn add_to_store_nar(
        &mut self,
        info: &PathInfo,
        _: bool,
        _: bool,
        nar: &mut dyn Read,
        _: &mut dyn Logger,
    ) -> Result<(), StoreError> {
        self.op("AddToStoreNar");
        self.add(info, nar)
    }

    fn add_multiple_to_store(
        &mut self,
        _: bool,
        _: bool,
        paths: &mut IncomingPaths<'_>,
        _: &mut dyn Logger,
    ) -> Result<(), StoreError> {
        let n = paths.count()?;
        self.op(format!("AddMultipleToStore {n}"));
        while let Some((info, mut nar)) = paths.next_path()? {
            self.add(&info, &mut nar)?;
        }
        Ok(())
    }

    fn add_signatures(&mut self, _: &StorePath, _: &BTreeSet<String>) -> Result<(), StoreError> {
        Ok(())
    }

    fn add_build_log(&mut self, _: &StorePath, _: &mut dyn Read) -> Result<(), StoreError> {
        Ok(())
    }

    fn query_substitutable_paths(
        &mut self,
        _: &BTreeSet<StorePath>,
        _: &mut dyn Logger,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(BTreeSet::new())
    }

    fn query_substitutable_path_infos(
        &mut self,
        _: &BTreeMap<StorePath, Option<ferrix_format::ContentAddress>>,
        _: &mut dyn Logger,
    ) -> Result<BTreeMap<StorePath, ferrix_daemon::worker::SubstitutableInfo>, StoreError> {
        Ok(BTreeMap::new())
    }

    fn optimise_store(&mut self, _: &mut dyn Logger) -> Result<(), StoreError> {
        Ok(())
    }

    fn verify_store(&mut self, _: bool, _: bool, _: &mut dyn Logger) -> Result<bool, StoreError> {
        Ok(false)
    }
}

// ---------------------------------------------------------------------------------------------

struct Env {
    root: TempDir,
    bin: PathBuf,
    socket: PathBuf,
}

impl Env {
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bin.join(prog));
        let r = &self.root.0;
        c.env("NIX_STORE_DIR", r.join("store"))
            .env("NIX_STATE_DIR", r.join("state"))
            .env("NIX_LOG_DIR", r.join("log"))
            .env("NIX_CONF_DIR", r.join("etc"))
            .env("HOME", r.join("home"))
            .env_remove("NIX_PATH")
            .env_remove("NIX_REMOTE")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .stdin(Stdio::null());
        c
    }

    fn remote(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn run(&self, prog: &str, args: &[&str]) -> Output {
        self.cmd(prog).args(args).output().unwrap()
    }

    /// Run, demand success, stdout trimmed.
    fn ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run(prog, args);
        assert!(
            out.status.success(),
            "{prog} {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

fn nar_of(path: &Path) -> Vec<u8> {
    let mut nar = Vec::new();
    ferrix_format::nar::dump_path(path, &mut nar).unwrap();
    nar
}

#[test]
fn nix_as_client() {
    let Some(nix_store) = find_nix("nix-store") else {
        let required = std::env::var("CI").is_ok_and(|v| v == "true")
            || std::env::var_os("FERRIX_REQUIRE_NIX").is_some();
        assert!(
            !required,
            "real Nix is required: apt-get install -y nix-bin"
        );
        eprintln!("SKIPPING worker client interop test: nix-store not found");
        return;
    };
    let root = TempDir::new();
    for d in ["store", "state", "log", "etc", "home", "work"] {
        fs::create_dir_all(root.0.join(d)).unwrap();
    }
    fs::write(
        root.0.join("etc/nix.conf"),
        "sandbox = false\nbuild-users-group =\nsubstituters =\n",
    )
    .unwrap();
    let env = Env {
        bin: nix_store.parent().unwrap().to_owned(),
        socket: root.0.join("ferrix.socket"),
        root,
    };
    let dir = StoreDir::new(env.root.0.join("store").to_str().unwrap()).unwrap();

    // The server: one session per connection, each on its own thread.
    let st = Arc::new(Mutex::new(State::default()));
    let listener = UnixListener::bind(&env.socket).unwrap();
    {
        let st = st.clone();
        let dir = dir.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let st = st.clone();
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let mut opts = WorkerOptions::new(dir.clone(), "ferrix-test");
                    opts.trusted = true;
                    let mut h = Handler {
                        st: st.clone(),
                        dir,
                    };
                    let input = conn.try_clone().unwrap();
                    let res = serve_worker(&mut h, input, conn, &opts);
                    let end = match res {
                        Ok(()) => "ok".to_owned(),
                        Err(e) => format!("{e}: {:?}", std::error::Error::source(&e)),
                    };
                    st.lock().unwrap_or_else(|e| e.into_inner()).ends.push(end);
                });
            }
        });
    }
    let remote = env.remote();
    let work = env.root.0.join("work");

    // A path in Nix's own (local) store, exported, imported into ours: AddToStoreNar.
    let src = work.join("hello.txt");
    fs::write(&src, "hello, ferrix daemon\n").unwrap();
    let p_full = env.ok("nix-store", &["--add", src.to_str().unwrap()]);
    let p = dir.parse_path(&p_full).unwrap();
    let export = env
        .cmd("nix-store")
        .args(["--export", &p_full])
        .output()
        .unwrap();
    assert!(export.status.success());
    let mut child = env
        .cmd("nix-store")
        .args(["--store", &remote, "--import"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&export.stdout)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), p_full);
    let local_nar = nar_of(Path::new(&p_full));
    assert_eq!(st.lock().unwrap().paths[&p].1, local_nar);

    // Queries answered by our server.
    let local_hash = env.ok("nix-store", &["-q", "--hash", &p_full]);
    assert_eq!(
        env.ok("nix-store", &["--store", &remote, "-q", "--hash", &p_full]),
        local_hash
    );
    assert_eq!(
        local_hash,
        Hash::sha256(&local_nar).encode_typed(Encoding::Nix32)
    );
    env.ok(
        "nix-store",
        &["--store", &remote, "--check-validity", &p_full],
    );
    let missing = dir.display(&StorePath::from_digest(&[3; 20], "missing").unwrap());
    let out = env.run(
        "nix-store",
        &["--store", &remote, "--check-validity", &missing],
    );
    assert!(!out.status.success());

    // NarFromPath: nix-store --dump through our server.
    let out = env.run("nix-store", &["--store", &remote, "--dump", &p_full]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, local_nar);

    // nix copy of a closure of two paths (an output referring to a source): AddMultipleToStore.
    let expr = work.join("o.nix");
    fs::write(
        &expr,
        r#"let r = builtins.toFile "r" "referred to\n"; in builtins.derivation { name = "o"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${r} > $out" ]; }"#,
    )
    .unwrap();
    let o_full = env.ok("nix-build", &["--no-out-link", expr.to_str().unwrap()]);
    let o = dir.parse_path(&o_full).unwrap();
    let refs = env.ok("nix-store", &["-q", "--references", &o_full]);
    let r = dir.parse_path(refs.lines().next().unwrap()).unwrap();
    env.ok(
        "nix",
        &[
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
            &remote,
            &o_full,
        ],
    );
    {
        let st = st.lock().unwrap();
        assert!(
            st.ops.iter().any(|o| o == "AddMultipleToStore 2"),
            "{:?}",
            st.ops
        );
        assert_eq!(st.paths[&o].0.references, BTreeSet::from([r.clone()]));
        assert_eq!(st.paths[&r].1, nar_of(Path::new(&dir.display(&r))));
    }
    assert_eq!(
        env.ok(
            "nix-store",
            &["--store", &remote, "-q", "--references", &o_full]
        ),
        dir.display(&r)
    );
    assert_eq!(
        env.ok(
            "nix-store",
            &["--store", &remote, "-q", "--referrers", &dir.display(&r)]
        ),
        o_full
    );

    // nix-store -r: QueryMissing and BuildPaths, the log line shown; a failure reported.
    let out = env.run(
        "nix-store",
        &[
            "--store",
            &remote,
            "--option",
            "keep-going",
            "true",
            "--option",
            "connect-timeout",
            "7",
            "-r",
            &o_full,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), o_full);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ferrix: nothing to build here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.run("nix-store", &["--store", &remote, "-r", &missing]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not valid in the ferrix test store"),
        "{err}"
    );

    let st = st.lock().unwrap();
    assert!(st.options.iter().any(|o| o.keep_going), "{:?}", st.options);
    // Settings given on the command line arrive as overrides (those of nix.conf do not).
    assert!(st
        .options
        .iter()
        .any(|o| o.overrides.get("connect-timeout").map(String::as_str) == Some("7")));
    assert!(st.ops.iter().any(|o| o == "QueryMissing"));
    assert!(st.ends.iter().all(|e| e == "ok"), "{:?}", st.ends);
    assert!(!st.ends.is_empty());
}
