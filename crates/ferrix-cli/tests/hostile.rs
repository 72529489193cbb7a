//! Hostile input (issue 10, point 7): forged and malformed derivations at every door, builds
//! ended by timeouts and signals, a new store opened by several processes at once, interrupted
//! additions, NAR garbage, huge lengths, path traversal and duplicate entries, dangling
//! references and partial export streams, FIFOs, sockets and devices, builders that write no
//! output or a FIFO, and a 50 MB build log. Each case asserts the exit status, the message
//! (what and where), and that the store is sound afterwards: Ferrix's and real Nix's
//! `nix-store --verify --check-contents` pass, nothing unexpected is registered, and no staging
//! entry or intent record is left behind.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rustix::process::{kill_process, Pid, Signal};

// ---------------------------------------------------------------------------------------------
// A private store at a real path, shared by Ferrix and real Nix.

/// The real Nix program `prog`, if installed (a failure when Nix is required).
fn real_nix(prog: &str) -> Option<PathBuf> {
    let found = [
        "/usr/bin",
        "/usr/local/bin",
        "/nix/var/nix/profiles/default/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(prog))
    .find(|p| p.exists());
    if found.is_none() {
        let required = std::env::var_os("FERRIX_REQUIRE_NIX").is_some()
            || std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !required,
            "real Nix is required: apt-get install -y nix-bin"
        );
    }
    found
}

/// A store in a temporary directory: `<root>/store`, `<root>/state`, `<root>/log`, and a
/// `nix.conf` without sandbox, build users or substituters (for Ferrix and real Nix alike).
struct Store {
    root: tempfile::TempDir,
    links: Links,
}

impl Store {
    fn new() -> Self {
        Self::with_conf("")
    }

    fn with_conf(extra: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        for d in ["etc", "home", "tmp"] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        fs::write(
            root.path().join("etc/nix.conf"),
            format!(
                "sandbox = false\nbuild-users-group =\nsubstituters =\n\
                 experimental-features = nix-command\n{extra}"
            ),
        )
        .unwrap();
        Self {
            root,
            links: Links::new(),
        }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.root.path().join(sub)
    }

    /// The store directory; store paths are real paths.
    fn dir(&self) -> String {
        self.path("store").to_str().unwrap().to_owned()
    }

    /// Ferrix under a personality name, on this store.
    fn cmd(&self, name: &str) -> Command {
        let mut c = self.links.cmd(name);
        store_env(&mut c, self.root.path());
        c
    }

    fn nix_store(&self, args: &[&str]) -> Command {
        let mut c = self.cmd("nix-store");
        c.args(args);
        c
    }

    /// `nix-store ARGS` with `stdin`, which must end within a minute.
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        run_within(&mut self.nix_store(args), stdin, Duration::from_secs(60)).0
    }

    /// Real Nix on this store, if installed.
    fn real(&self, prog: &str) -> Option<Command> {
        let mut c = Command::new(real_nix(prog)?);
        store_env(&mut c, self.root.path());
        c.env_remove("NIX_PATH")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME");
        Some(c)
    }

    /// Empty the store, its state and logs (store contents are read-only).
    fn wipe(&self) {
        for d in ["store", "state", "log"] {
            let p = self.path(d);
            if p.exists() {
                let st = Command::new("/bin/chmod")
                    .args(["-R", "u+w"])
                    .arg(&p)
                    .status()
                    .unwrap();
                assert!(st.success());
                fs::remove_dir_all(&p).unwrap();
            }
        }
    }

    /// Every registered path, read from the database itself.
    fn valid(&self) -> BTreeSet<String> {
        let db = self.path("state/db/db.sqlite");
        if !db.exists() {
            return BTreeSet::new();
        }
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let mut st = conn.prepare("SELECT path FROM ValidPaths").unwrap();
        let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    /// `p` is not valid, by the database and by `--check-validity --print-invalid`.
    fn assert_invalid(&self, p: &str) {
        assert!(!self.valid().contains(p), "{p} is registered");
        let out = self.run(&["--check-validity", "--print-invalid", p], None);
        assert_eq!(out.status.code(), Some(0), "{}", err(&out));
        assert_eq!(text(&out.stdout), format!("{p}\n"));
        let out = self.run(&["-q", "--hash", p], None);
        assert_eq!(out.status.code(), Some(1), "{p}");
    }

    /// No staging entry in the store, no intent record in `<state>/ferrix/pending`.
    fn assert_no_leftovers(&self) {
        if let Ok(rd) = fs::read_dir(self.path("store")) {
            let staging: Vec<String> = rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with("-ferrix-staging"))
                .collect();
            assert!(staging.is_empty(), "staging entries left: {staging:?}");
        }
        if let Ok(rd) = fs::read_dir(self.path("state/ferrix/pending")) {
            let left: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
            assert!(left.is_empty(), "intent records left: {left:?}");
        }
    }

    /// Wait (up to 20 s) until a staging entry exists in the store.
    fn wait_for_staging(&self) {
        let start = Instant::now();
        loop {
            let found = fs::read_dir(self.path("store")).is_ok_and(|mut rd| {
                rd.any(|e| {
                    e.unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with("-ferrix-staging")
                })
            });
            if found {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "nothing staged");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The store is sound: no leftovers, and Ferrix and real Nix both verify its contents.
    fn assert_sound(&self) {
        self.assert_no_leftovers();
        let out = self.run(&["--verify", "--check-contents"], None);
        assert_eq!(out.status.code(), Some(0), "ferrix verify: {}", err(&out));
        assert!(!err(&out).contains("error"), "ferrix verify: {}", err(&out));
        if let Some(mut c) = self.real("nix-store") {
            let out = c.args(["--verify", "--check-contents"]).output().unwrap();
            assert_eq!(out.status.code(), Some(0), "nix verify: {}", err(&out));
            assert!(!err(&out).contains("error"), "nix verify: {}", err(&out));
        }
        self.assert_no_leftovers();
    }

    /// A derivation `name` whose builder is `/bin/sh -c script`, added by `ferrix derivation
    /// add`; its path and its output's.
    fn drv(&self, name: &str, script: &str) -> (String, String) {
        let drv = add_drv(self.root.path(), &drv_json(name, script, None));
        let out = ok(&mut self.nix_store(&["-q", "--outputs", &drv]));
        (drv, text(&out).trim().to_owned())
    }
}

fn drv_json(name: &str, script: &str, out: Option<&str>) -> String {
    let (o, e) = match out {
        Some(p) => (format!(r#"{{"path":"{p}"}}"#), p.to_owned()),
        None => ("{}".to_owned(), String::new()),
    };
    format!(
        r#"{{"name":"{name}","outputs":{{"out":{o}}},"inputSrcs":[],"inputDrvs":{{}},
           "system":"x86_64-linux","builder":"/bin/sh","args":["-c",{}],
           "env":{{"name":"{name}","builder":"/bin/sh","system":"x86_64-linux","out":"{e}"}}}}"#,
        serde_json::to_string(script).unwrap()
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn err(o: &Output) -> String {
    text(&o.stderr)
}

/// Assert exit `code` and that stderr contains every one of `words`.
#[track_caller]
fn assert_fails(o: &Output, code: i32, words: &[&str]) {
    let e = err(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {e}");
    for w in words {
        assert!(e.contains(w), "expected {w:?} in: {e}");
    }
}

/// Run `cmd` (stdin from `stdin`, else /dev/null); kill it and fail if it runs past `limit`.
fn run_within(cmd: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let feeder = stdin.map(|input| {
        let mut w = child.stdin.take().unwrap();
        let input = input.to_vec();
        // The command may stop reading early (that is the point): ignore a broken pipe.
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        })
    });
    let out = wait_within(child, limit, start, &format!("{cmd:?}"));
    if let Some(f) = feeder {
        f.join().unwrap();
    }
    (out, start.elapsed())
}

/// Collect a child's output; kill it and fail if it is still running at `start + limit`.
fn wait_within(mut child: Child, limit: Duration, start: Instant, what: &str) -> Output {
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                r.read_to_end(&mut v).unwrap();
            }
            v
        })
    };
    let so = reader(child.stdout.take().map(|r| Box::new(r) as _));
    let se = reader(child.stderr.take().map(|r| Box::new(r) as _));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: so.join().unwrap(),
        stderr: se.join().unwrap(),
    }
}

fn signal(pid: u32, sig: Signal) {
    kill_process(Pid::from_raw(pid as i32).unwrap(), sig).unwrap();
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s.rsplit(')').next().unwrap().trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

fn read_pid(file: &Path) -> Option<i32> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Processes a builder left running on purpose (detached with `setsid`), named by the pid
/// files they wrote; killed by pid (if still a `sleep`) when dropped.
struct Strays(Vec<PathBuf>);

impl Drop for Strays {
    fn drop(&mut self) {
        for f in &self.0 {
            let Some(pid) = read_pid(f) else { continue };
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if text(&cmdline).contains("sleep") || text(&cmdline).contains("yes") {
                let _ = kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NARs and export streams made by hand.

fn put_u64(v: &mut Vec<u8>, n: u64) {
    v.extend_from_slice(&n.to_le_bytes());
}

fn put_str(v: &mut Vec<u8>, s: &[u8]) {
    put_u64(v, s.len() as u64);
    v.extend_from_slice(s);
    v.resize(v.len() + (8 - s.len() % 8) % 8, 0);
}

/// A file system object; directory entries are written in the order given (so they can be
/// unsorted or repeated).
enum Node {
    File(Vec<u8>),
    Link(Vec<u8>),
    Dir(Vec<(&'static [u8], Node)>),
}

fn file(contents: &[u8]) -> Node {
    Node::File(contents.to_vec())
}

fn nar(n: &Node) -> Vec<u8> {
    let mut v = Vec::new();
    put_str(&mut v, b"nix-archive-1");
    node(&mut v, n);
    v
}

fn node(v: &mut Vec<u8>, n: &Node) {
    put_str(v, b"(");
    put_str(v, b"type");
    match n {
        Node::File(data) => {
            put_str(v, b"regular");
            put_str(v, b"contents");
            put_str(v, data);
        }
        Node::Link(t) => {
            put_str(v, b"symlink");
            put_str(v, b"target");
            put_str(v, t);
        }
        Node::Dir(entries) => {
            put_str(v, b"directory");
            for (name, n) in entries {
                put_str(v, b"entry");
                put_str(v, b"(");
                put_str(v, b"name");
                put_str(v, name);
                put_str(v, b"node");
                node(v, n);
                put_str(v, b")");
            }
        }
    }
    put_str(v, b")");
}

/// One path of an export stream.
struct Item {
    path: String,
    nar: Vec<u8>,
    refs: Vec<String>,
}

/// The part of an export stream after an item's NAR.
fn trailer(v: &mut Vec<u8>, it: &Item) {
    put_u64(v, 0x4558_494e);
    put_str(v, it.path.as_bytes());
    put_u64(v, it.refs.len() as u64);
    for r in &it.refs {
        put_str(v, r.as_bytes());
    }
    put_str(v, b"");
    put_u64(v, 0);
}

fn export(items: &[Item]) -> Vec<u8> {
    let mut v = Vec::new();
    for it in items {
        put_u64(&mut v, 1);
        v.extend_from_slice(&it.nar);
        trailer(&mut v, it);
    }
    put_u64(&mut v, 0);
    v
}

/// A store path `<dir>/<32 chars>-<name>` (a hash part made from the name).
fn fake_path(dir: &str, name: &str) -> String {
    const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let hash: String = (0..32)
        .map(|i| {
            for b in name.bytes().chain([i as u8]) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            NIX32[(h >> 59) as usize] as char
        })
        .collect();
    format!("{dir}/{hash}-{name}")
}

/// A NAR-level refusal through `--import`: exit 1, the words, nothing registered.
#[track_caller]
fn import_refused(s: &Store, stream: &[u8], words: &[&str]) -> String {
    let before = s.valid();
    let out = s.run(&["--import"], Some(stream));
    assert_fails(&out, 1, words);
    assert_eq!(s.valid(), before, "{}", err(&out));
    s.assert_no_leftovers();
    err(&out)
}

// ---------------------------------------------------------------------------------------------
// 1. Derivations are checked on the way in.

#[test]
fn forged_derivations_are_refused_at_every_door() {
    let a = Store::new();
    let (drv, out) = a.drv("legit", "echo legit > $out");
    let legit = fs::read(&drv).unwrap();
    // Same length, so an export stream can be edited in place.
    let forged = text(&legit).replace("echo legit", "echo evil!");
    assert_ne!(forged.as_bytes(), &legit[..]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("legit.drv");
    fs::write(&file, &forged).unwrap();
    let file = file.to_str().unwrap();
    let incorrect = format!("has incorrect output '{out}', should be '");
    let words = ["derivation '", "-legit.drv'", &incorrect, "(output 'out')"];

    // --add, --add-fixed flat and recursive.
    let mut should_be = None;
    for args in [
        &["--add"][..],
        &["--add-fixed", "sha256"],
        &["--add-fixed", "--recursive", "sha256"],
    ] {
        let before = a.valid();
        let o = a.run(&[args, &[file]].concat(), None);
        assert_fails(&o, 1, &words);
        assert_eq!(a.valid(), before, "{args:?}");
        let e = err(&o);
        let p = e.split("should be '").nth(1).unwrap().split('\'').next();
        should_be = Some(p.unwrap().to_owned());
    }
    // `ferrix derivation add` with the legit output path, and with an arbitrary one.
    for given in [out.clone(), fake_path(&a.dir(), "legit")] {
        let mut c = Command::new(ferrix_exe());
        store_env(&mut c, a.root.path());
        c.args(["derivation", "add"]);
        let json = drv_json("legit", "echo evil! > $out", Some(&given));
        let o = run_within(&mut c, Some(json.as_bytes()), Duration::from_secs(30)).0;
        let incorrect = format!("has incorrect output '{given}', should be '");
        assert_fails(
            &o,
            1,
            &["adding derivation 'legit'", &incorrect, "(output 'out')"],
        );
    }

    // Through an export stream: made by `--export` and edited, or made by hand.
    let exported = ok(&mut a.nix_store(&["--export", &drv]));
    let by_hand = export(&[Item {
        path: drv.clone(),
        nar: nar(&Node::File(legit.clone())),
        refs: vec![],
    }]);
    assert_eq!(exported, by_hand, "the hand-made export stream is Nix's");
    let at = exported
        .windows(10)
        .position(|w| w == b"echo legit")
        .unwrap();
    let mut edited = exported.clone();
    edited[at..at + 10].copy_from_slice(b"echo evil!");
    a.assert_invalid(&out);
    a.assert_invalid(&should_be.unwrap());
    // Where the derivation is valid already, an import of other contents changes nothing.
    let o = a.run(&["--import"], Some(&edited));
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(text(&o.stdout), format!("{drv}\n"));
    assert_eq!(fs::read(&drv).unwrap(), legit);

    // Elsewhere (a fresh store at the same place), the forged streams are refused.
    a.wipe();
    let incorrect = format!("derivation '{drv}' has incorrect output '{out}', should be '");
    let forged_by_hand = export(&[Item {
        path: drv.clone(),
        nar: nar(&Node::File(forged.clone().into_bytes())),
        refs: vec![],
    }]);
    for stream in [&edited, &forged_by_hand] {
        import_refused(&a, stream, &[&incorrect, "(output 'out')"]);
        a.assert_invalid(&drv);
        assert!(Path::new(&drv).symlink_metadata().is_err());
    }
    // The genuine stream is accepted.
    let o = a.run(&["--import"], Some(&exported));
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(text(&o.stdout), format!("{drv}\n"));
    assert_eq!(a.valid(), BTreeSet::from([drv.clone()]));

    // Nothing forged took hold: the legit build is legit.
    let built = ok(&mut a.nix_store(&["-r", &drv]));
    assert_eq!(text(&built).trim(), out);
    assert_eq!(fs::read_to_string(&out).unwrap(), "legit\n");
    a.assert_sound();
}

#[test]
fn malformed_derivations_do_not_parse() {
    let s = Store::new();
    let (drv, _) = s.drv("good", "echo good > $out");
    let good = fs::read(&drv).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "at byte 0: the text ends early"),
        (
            "truncated",
            good[..100].to_vec(),
            "at byte 100: the text ends early",
        ),
        (
            "binary",
            b"Derive(\xff\xfe\x00garbage".to_vec(),
            "at byte 7",
        ),
        (
            "garbage",
            b"hello\n".to_vec(),
            "at byte 0: expected 'Derive('",
        ),
    ];
    let before = s.valid();
    for (name, bytes, word) in &cases {
        let f = dir.path().join(format!("{name}.drv"));
        fs::write(&f, bytes).unwrap();
        let o = s.run(&["--add", f.to_str().unwrap()], None);
        let named = format!("-{name}.drv' does not parse: invalid derivation ");
        assert_fails(&o, 1, &["derivation '", &named, word]);
        // And inside an export stream.
        let p = fake_path(&s.dir(), &format!("{name}.drv"));
        let stream = export(&[Item {
            path: p.clone(),
            nar: nar(&Node::File(bytes.clone())),
            refs: vec![],
        }]);
        let named = format!("derivation '{p}' does not parse: invalid derivation ");
        import_refused(&s, &stream, &[&named, word]);
    }
    // No outputs at all: in ATerm and in JSON.
    let f = dir.path().join("noout.drv");
    fs::write(
        &f,
        r#"Derive([],[],[],"x86_64-linux","/bin/sh",[],[("name","noout")])"#,
    )
    .unwrap();
    let o = s.run(&["--add", f.to_str().unwrap()], None);
    assert_fails(&o, 1, &["-noout.drv' has no outputs"]);
    let mut c = Command::new(ferrix_exe());
    store_env(&mut c, s.root.path());
    c.args(["derivation", "add"]);
    let json = r#"{"name":"noout","outputs":{},"inputSrcs":[],"inputDrvs":{},"system":"x86_64-linux",
                   "builder":"/bin/sh","args":[],"env":{"name":"noout"}}"#;
    let o = run_within(&mut c, Some(json.as_bytes()), Duration::from_secs(30)).0;
    assert_fails(&o, 1, &["adding derivation 'noout'", "has no outputs"]);
    assert_eq!(s.valid(), before);
    s.assert_sound();
}

#[test]
fn a_corrupted_store_derivation_is_not_built() {
    let s = Store::new();
    let (drv, out) = s.drv("victim", "echo victim > $out");
    let legit = fs::read(&drv).unwrap();
    // As if registered by an old version: the file in the store says something else.
    let forged = text(&legit).replace("echo victim", "echo forged");
    let set = |bytes: &[u8]| {
        fs::set_permissions(&drv, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&drv, bytes).unwrap();
        fs::set_permissions(&drv, fs::Permissions::from_mode(0o444)).unwrap();
        let f = fs::File::open(&drv).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1))
            .unwrap();
    };
    set(forged.as_bytes());
    let o = s.run(&["-r", &drv], None);
    let incorrect = format!("derivation '{drv}' has incorrect output '{out}', should be '");
    assert_fails(&o, 1, &[&incorrect, "(output 'out')"]);
    assert!(!err(&o).contains("building"), "{}", err(&o));
    // Nothing was built: no output on disk, no log.
    assert!(Path::new(&out).symlink_metadata().is_err());
    assert!(!s.path("log/drvs").exists() || walk_files(&s.path("log/drvs")).is_empty());
    s.assert_invalid(&out);

    // `--check-validity`: exit 1 naming the invalid path; `--print-invalid` lists it, exit 0.
    let o = s.run(&["--check-validity", &drv, &out], None);
    assert_fails(&o, 1, &[&format!("path '{out}' is not valid")]);
    let o = s.run(&["--check-validity", "--print-invalid", &out, &drv], None);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(text(&o.stdout), format!("{out}\n"));

    // Put back, the store verifies and the derivation builds what it says.
    set(&legit);
    s.assert_sound();
    let built = ok(&mut s.nix_store(&["-r", &drv]));
    assert_eq!(text(&built).trim(), out);
    assert_eq!(fs::read_to_string(&out).unwrap(), "victim\n");
    s.assert_sound();
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk_files(&p));
        } else {
            v.push(p);
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// 2. Timeouts and signals end the run, even with a builder that detached a child.

/// A builder that leaves a detached, TERM-ignoring sleep and then sleeps itself; the pids of
/// its shell, its foreground sleep and the detached one go to files in `pids`.
fn stubborn_builder(s: &Store, pids: &Path, name: &str) -> (String, String) {
    fs::create_dir_all(pids).unwrap();
    let p = pids.display();
    let script = format!(
        "echo $$ > {p}/main.pid; \
         /usr/bin/setsid /bin/sh -c 'echo $$ > {p}/detached.pid; trap \"\" TERM; exec /bin/sleep 60' & \
         /bin/sleep 60 & echo $! > {p}/fg.pid; echo started; wait"
    );
    s.drv(name, &script)
}

/// After the run: the builder's own processes are gone (the detached one is killed by pid).
fn assert_builder_gone(pids: &Path) {
    for f in ["main.pid", "fg.pid"] {
        let pid = read_pid(&pids.join(f)).unwrap_or_else(|| panic!("no {f}"));
        let deadline = Instant::now() + Duration::from_secs(3);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "the builder's {f} ({pid}) outlived the run");
    }
}

#[test]
fn a_build_timeout_ends_the_run() {
    let s = Store::new();
    let pids = s.path("pids");
    let _strays = Strays(vec![pids.join("detached.pid")]);
    let (drv, out) = stubborn_builder(&s, &pids, "slow-timeout");
    let (o, took) = run_within(
        &mut s.nix_store(&["-r", &drv, "--timeout", "2"]),
        None,
        Duration::from_secs(30),
    );
    assert_fails(
        &o,
        101,
        &[&format!("building '{drv}' timed out after 2 seconds")],
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_builder_gone(&pids);
    s.assert_invalid(&out);
    s.assert_sound();
}

/// A process that escaped the builder and writes to the log without pause (faster than the
/// log is compressed): the build still ends, the log read for a short grace only.
#[test]
fn an_escaped_process_flooding_the_log_does_not_hold_the_build() {
    let s = Store::new();
    let pids = s.path("pids");
    fs::create_dir_all(&pids).unwrap();
    let _strays = Strays(vec![pids.join("flood.pid")]);
    let p = pids.display();
    let (drv, out) = s.drv(
        "flood",
        &format!(
            "/usr/bin/setsid /bin/sh -c 'echo $$ > {p}/flood.pid; exec /usr/bin/yes flood' & \
             while [ ! -s {p}/flood.pid ]; do /bin/sleep 0.05; done; echo done > $out"
        ),
    );
    let (o, took) = run_within(
        &mut s.nix_store(&["-r", &drv]),
        None,
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(fs::read_to_string(&out).unwrap(), "done\n");
    // The flood reached the log, and the log is whole (a finished bzip2 stream).
    let log = ok(&mut s.nix_store(&["-l", &drv]));
    assert!(
        text(&log).starts_with("flood\nflood\n"),
        "log starts {:?}",
        &log[..log.len().min(40)]
    );
    s.assert_sound();
}

fn interrupted_build(sig: Signal, name: &str) {
    let s = Store::new();
    let pids = s.path("pids");
    let _strays = Strays(vec![pids.join("detached.pid")]);
    let (drv, out) = stubborn_builder(&s, &pids, name);
    let start = Instant::now();
    let child = s
        .nix_store(&["-r", &drv])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Once the builder runs (its foreground sleep exists), wait a second and signal.
    while read_pid(&pids.join("fg.pid")).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "builder never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    signal(pid, sig);
    let signalled = Instant::now();
    let o = wait_within(child, Duration::from_secs(30), start, "nix-store -r");
    let took = signalled.elapsed();
    assert_fails(&o, 1, &["interrupted by the user"]);
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} after the signal"
    );
    assert_builder_gone(&pids);
    s.assert_invalid(&out);
    s.assert_sound();
}

#[test]
fn sigint_ends_a_build() {
    interrupted_build(Signal::INT, "slow-int");
}

#[test]
fn sigterm_ends_a_build() {
    interrupted_build(Signal::TERM, "slow-term");
}

// ---------------------------------------------------------------------------------------------
// 3. A new store opened by several processes at once.

#[test]
fn a_new_store_opened_by_three_processes_at_once() {
    let src = tempfile::tempdir().unwrap();
    let trees: Vec<PathBuf> = (0..3)
        .map(|i| {
            let t = src.path().join(format!("tree{i}"));
            fs::create_dir_all(t.join("sub")).unwrap();
            fs::write(t.join("sub/file"), format!("tree {i}\n")).unwrap();
            t
        })
        .collect();
    for round in 0..10 {
        let s = Store::new();
        assert!(!s.path("store").exists() && !s.path("state").exists());
        let children: Vec<Child> = trees
            .iter()
            .map(|t| {
                s.nix_store(&["--add", t.to_str().unwrap()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let start = Instant::now();
        let mut added = BTreeSet::new();
        for c in children {
            let o = wait_within(c, Duration::from_secs(30), start, "nix-store --add");
            assert_eq!(o.status.code(), Some(0), "round {round}: {}", err(&o));
            assert!(err(&o).is_empty(), "round {round}: {}", err(&o));
            added.insert(text(&o.stdout).trim().to_owned());
        }
        assert_eq!(added.len(), 3);
        assert_eq!(s.valid(), added, "round {round}");
        if round == 9 {
            s.assert_sound();
        } else {
            s.assert_no_leftovers();
            ok(&mut s.nix_store(&["--verify", "--check-contents"]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Interrupted additions clean up.

/// 25 files of 4 MiB (about 4 s of hashing for a debug build).
fn big_tree(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let base = Rng::new(7).bytes(4 << 20);
    for i in 0..25u64 {
        let mut b = base.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        fs::write(dir.join(format!("f{i:02}")), b).unwrap();
    }
}

#[test]
fn an_interrupted_add_leaves_nothing() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("big");
    big_tree(&tree);
    for sig in [Signal::INT, Signal::TERM] {
        let s = Store::new();
        let start = Instant::now();
        let child = s
            .nix_store(&["--add", tree.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // About 0.3 s in, once the addition has begun staging.
        std::thread::sleep(Duration::from_millis(300));
        s.wait_for_staging();
        signal(child.id(), sig);
        let o = wait_within(child, Duration::from_secs(30), start, "nix-store --add");
        assert_fails(&o, 1, &["interrupted by the user"]);
        assert!(o.stdout.is_empty());
        // Immediately, before anything else opens the store.
        s.assert_no_leftovers();
        assert_eq!(s.valid(), BTreeSet::new(), "{sig:?}");
        s.assert_sound();
    }
}

#[test]
fn an_interrupted_import_leaves_nothing() {
    for sig in [Signal::INT, Signal::TERM] {
        let s = Store::new();
        let p = fake_path(&s.dir(), "big-import");
        let stream = export(&[Item {
            path: p.clone(),
            nar: nar(&Node::Dir(vec![
                (b"a", Node::File(Rng::new(1).bytes(16 << 20))),
                (b"b", Node::File(Rng::new(2).bytes(16 << 20))),
            ])),
            refs: vec![],
        }]);
        let start = Instant::now();
        let mut child = s
            .nix_store(&["--import"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Part of the stream, then the signal while the importer waits for more, then EOF.
        let mut w = child.stdin.take().unwrap();
        w.write_all(&stream[..stream.len() / 3]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        s.wait_for_staging();
        signal(child.id(), sig);
        std::thread::sleep(Duration::from_millis(300));
        drop(w);
        let o = wait_within(child, Duration::from_secs(30), start, "nix-store --import");
        assert_fails(&o, 1, &["interrupted by the user"]);
        s.assert_no_leftovers();
        assert_eq!(s.valid(), BTreeSet::new());
        s.assert_sound();
    }
}

/// A stream that stalls (the pipe stays open, nothing more comes): one signal still ends the
/// import at once, cleanly, as Nix's does.
#[test]
fn an_interrupted_import_of_a_stalled_stream_ends_at_once() {
    let s = Store::new();
    let p = fake_path(&s.dir(), "stalled");
    let stream = export(&[Item {
        path: p,
        nar: nar(&Node::Dir(vec![(
            b"a",
            Node::File(Rng::new(3).bytes(8 << 20)),
        )])),
        refs: vec![],
    }]);
    let mut child = s
        .nix_store(&["--import"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = child.stdin.take().unwrap();
    w.write_all(&stream[..stream.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.wait_for_staging();
    let start = Instant::now();
    signal(child.id(), Signal::INT);
    // The write end stays open until the importer is gone.
    let o = wait_within(child, Duration::from_secs(10), start, "nix-store --import");
    let took = start.elapsed();
    drop(w);
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} after the signal"
    );
    assert_fails(&o, 1, &["interrupted by the user"]);
    s.assert_no_leftovers();
    assert_eq!(s.valid(), BTreeSet::new());
    s.assert_sound();
}

// ---------------------------------------------------------------------------------------------
// Cases that already hold: NAR garbage and huge lengths.

/// `nix-store --restore` of `nar`: exit 1 with `words`, quickly, and nothing at the target.
#[track_caller]
fn restore_refused(nar: &[u8], words: &[&str]) {
    let links = Links::new();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out");
    let (o, took) = run_within(
        links
            .cmd("nix-store")
            .arg("--restore")
            .arg(&target)
            .current_dir(dir.path()),
        Some(nar),
        Duration::from_secs(20),
    );
    let t = target.to_str().unwrap();
    assert_fails(
        &o,
        1,
        &[&[&*format!("restoring into '{t}'")][..], words].concat(),
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(target.symlink_metadata().is_err(), "{t} was left behind");
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left in the target's directory: {left:?}");
}

/// A NAR whose regular file says it holds `len` bytes.
fn nar_with_length(len: u64) -> Vec<u8> {
    let mut v = Vec::new();
    put_str(&mut v, b"nix-archive-1");
    for s in [&b"("[..], b"type", b"regular", b"contents"] {
        put_str(&mut v, s);
    }
    put_u64(&mut v, len);
    v.extend_from_slice(b"only a few bytes");
    v
}

#[test]
fn nar_garbage_and_huge_lengths_are_refused() {
    // Random bytes (whose first word is a huge length), and a wrong magic of the right size.
    restore_refused(&Rng::new(42).bytes(4096), &["bad archive at byte 0"]);
    let mut wrong = nar(&file(b"x"));
    wrong[8..21].copy_from_slice(b"nix-archive-2");
    restore_refused(&wrong, &["bad archive at byte 0", "bad magic"]);
    // Length fields of 2^62 (and 2^64 - 1) where a string or the contents go.
    let huge = 1u64 << 62;
    let mut magic = Vec::new();
    put_u64(&mut magic, huge);
    restore_refused(&magic, &["bad archive at byte 0"]);
    // Contents are streamed, never allocated: the claim fails where the bytes end.
    restore_refused(
        &nar_with_length(huge),
        &["bad archive at byte 112: the archive ends early"],
    );
    restore_refused(
        &nar_with_length(u64::MAX),
        &["bad archive at byte 112: the archive ends early"],
    );
    let mut name = Vec::new();
    put_str(&mut name, b"nix-archive-1");
    for s in [&b"("[..], b"type", b"directory", b"entry", b"(", b"name"] {
        put_str(&mut name, s);
    }
    let at = name.len();
    put_u64(&mut name, huge);
    let too_long =
        format!("bad archive at byte {at}: a string of {huge} bytes is longer than allowed");
    restore_refused(&name, &[&too_long]);

    // The same inside export streams, and lengths of the stream itself.
    let s = Store::new();
    let wrap = |nar: Vec<u8>| {
        let mut v = Vec::new();
        put_u64(&mut v, 1);
        v.extend_from_slice(&nar);
        v
    };
    let within = "invalid NAR for path #1 of the export stream (its archive starts at byte 8): bad archive at byte";
    import_refused(
        &s,
        &wrap(Rng::new(9).bytes(4096)),
        &[&format!(
            "{within} 0: input doesn't look like a Nix archive"
        )],
    );
    import_refused(
        &s,
        &wrap(nar_with_length(huge)),
        &[&format!("{within} 112: the archive ends early")],
    );
    import_refused(
        &s,
        &wrap(name.clone()),
        &[&format!("{within} {at}: a string of {huge} bytes")],
    );
    for (what, stream, msg) in bad_streams(&s.dir()) {
        let e = import_refused(&s, &stream, &[msg]);
        assert!(
            e.starts_with("error: export stream, at byte "),
            "{what}: {e}"
        );
    }
    assert_eq!(s.valid(), BTreeSet::new());
    s.assert_sound();
}

/// Export streams whose own fields are hostile: what, the stream, what Ferrix says now.
fn bad_streams(dir: &str) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let huge = 1u64 << 62;
    let p = fake_path(dir, "huge");
    let good = nar(&file(b"x"));
    let head = |v: &mut Vec<u8>| {
        put_u64(v, 1);
        v.extend_from_slice(&good);
        put_u64(v, 0x4558_494e);
    };
    let mut cases = Vec::new();
    let mut v = Vec::new();
    head(&mut v);
    put_u64(&mut v, huge);
    cases.push((
        "a huge path",
        v,
        "a string of 4611686018427387904 bytes is longer than allowed here",
    ));
    let mut v = Vec::new();
    head(&mut v);
    put_str(&mut v, p.as_bytes());
    put_u64(&mut v, huge);
    cases.push((
        "a huge reference count",
        v,
        "4611686018427387904 references is not plausible",
    ));
    let mut v = Vec::new();
    head(&mut v);
    put_str(&mut v, p.as_bytes());
    put_u64(&mut v, 0);
    put_u64(&mut v, huge);
    cases.push((
        "a huge deriver",
        v,
        "a string of 4611686018427387904 bytes is longer than allowed here",
    ));
    let mut v = Vec::new();
    put_u64(&mut v, 7);
    cases.push(("a bad marker", v, "expected 0 or 1 before a path, got 7"));
    let mut v = Vec::new();
    put_u64(&mut v, 1);
    v.extend_from_slice(&good);
    put_u64(&mut v, 0x1234);
    cases.push((
        "no export magic",
        v,
        "the export magic does not follow the archive",
    ));
    cases
}

#[test]
fn export_stream_errors_name_the_byte_offset() {
    let s = Store::new();
    for (what, stream, _) in bad_streams(&s.dir()) {
        let e = import_refused(&s, &stream, &["export stream"]);
        assert!(e.contains("at byte"), "{what}: {e}");
    }
    let (whole, cuts) = partial_streams(&s.dir());
    for (cut, _) in cuts {
        let e = import_refused(&s, &whole[..cut], &["export stream"]);
        assert!(
            e.contains("at byte") && e.contains("ends early"),
            "cut at {cut}: {e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Path traversal, duplicate and unsorted entries.

#[test]
fn nar_traversal_and_duplicate_entries_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let out_dir = outside.path().to_str().unwrap().as_bytes().to_vec();
    let escape = || Node::Dir(vec![(b"escaped", file(b"x"))]);
    let cases: Vec<(&str, Node, &str)> = vec![
        (
            "dotdot",
            Node::Dir(vec![(b"..", escape())]),
            "invalid file name '..'",
        ),
        (
            "slash",
            Node::Dir(vec![(b"/", escape())]),
            "invalid file name '/'",
        ),
        (
            "a-slash-b",
            Node::Dir(vec![(b"a", Node::Dir(vec![])), (b"a/b", file(b"x"))]),
            "invalid file name 'a/b'",
        ),
        (
            "dup",
            Node::Dir(vec![(b"a", file(b"1")), (b"a", file(b"2"))]),
            "entry 'a' is not after 'a'",
        ),
        (
            "unsorted",
            Node::Dir(vec![(b"b", file(b"1")), (b"a", file(b"2"))]),
            "entry 'a' is not after 'b'",
        ),
        // A symlink out of the tree, then a directory of the same name: written through the
        // link, it would land outside.
        (
            "through-link",
            Node::Dir(vec![
                (b"a", Node::Link(out_dir)),
                (b"a", Node::Dir(vec![(b"pwned", file(b"x"))])),
            ]),
            "entry 'a' is not after 'a'",
        ),
    ];
    let s = Store::new();
    for (name, n, word) in &cases {
        let bytes = nar(n);
        // The restore vectors cover '..', 'a/b' and plain duplicates; add '/' and the link.
        if ["slash", "through-link"].contains(name) {
            restore_refused(&bytes, &["bad archive at byte", word]);
        }
        let p = fake_path(&s.dir(), name);
        let stream = export(&[Item {
            path: p.clone(),
            nar: bytes,
            refs: vec![],
        }]);
        import_refused(
            &s,
            &stream,
            &[
                "invalid NAR for path #1 of the export stream (its archive starts at byte 8): bad archive at byte",
                word,
            ],
        );
        assert!(Path::new(&p).symlink_metadata().is_err(), "{p} on disk");
    }
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    assert!(s.path("store/escaped").symlink_metadata().is_err());
    assert!(s.path("escaped").symlink_metadata().is_err());
    assert_eq!(s.valid(), BTreeSet::new());
    s.assert_sound();
}

// ---------------------------------------------------------------------------------------------
// Dangling references and partial streams on import.

#[test]
fn dangling_references_and_partial_streams_are_refused() {
    let s = Store::new();
    let dep = fake_path(&s.dir(), "dep");
    let top = fake_path(&s.dir(), "top");
    let missing = fake_path(&s.dir(), "missing");
    let dep_item = || Item {
        path: dep.clone(),
        nar: nar(&file(b"dep\n")),
        refs: vec![],
    };
    let top_item = |refs: Vec<String>| Item {
        path: top.clone(),
        nar: nar(&Node::Dir(vec![(b"f", file(b"top\n"))])),
        refs,
    };
    // A reference to a path neither valid nor in the stream.
    let o = import_refused(
        &s,
        &export(&[dep_item(), top_item(vec![dep.clone(), missing.clone()])]),
        &[&missing],
    );
    assert!(o.contains(&top), "{o}");

    // Cut anywhere: nothing is registered, not even the complete first path.
    let (whole, cuts) = partial_streams(&s.dir());
    for (cut, msg) in cuts {
        let e = import_refused(&s, &whole[..cut], &[msg]);
        assert!(e.starts_with("error: "), "cut at {cut}: {e}");
    }
    // The whole stream is fine.
    let o = s.run(&["--import"], Some(&whole));
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(text(&o.stdout), format!("{dep}\n{top}\n"));
    assert_eq!(s.valid(), BTreeSet::from([dep, top]));
    s.assert_sound();
}

/// `dep`, then `top` referring to it, and where to cut that stream, with what Ferrix says now.
fn partial_streams(dir: &str) -> (Vec<u8>, Vec<(usize, &'static str)>) {
    let dep = Item {
        path: fake_path(dir, "dep"),
        nar: nar(&file(b"dep\n")),
        refs: vec![],
    };
    let top = Item {
        path: fake_path(dir, "top"),
        nar: nar(&Node::Dir(vec![(b"f", file(b"top\n"))])),
        refs: vec![dep.path.clone()],
    };
    let mut first = Vec::new();
    put_u64(&mut first, 1);
    first.extend_from_slice(&dep.nar);
    trailer(&mut first, &dep);
    let whole = export(&[dep, top]);
    let nar1 = "invalid NAR for path #1 of the export stream (its archive starts at byte 8): bad archive at byte 32: the archive ends early";
    let nar2 = "bad archive at byte 92: the archive ends early";
    let short = "the stream ends early";
    let no_nar2 = "bad archive at byte 0: the archive ends early";
    let n = whole.len();
    let cuts = vec![
        (40, nar1),                 // in the first NAR
        (first.len() - 20, short),  // in its trailer
        (first.len(), short),       // before the second marker
        (first.len() + 8, no_nar2), // after it
        (first.len() + 100, nar2),  // in the second NAR
        (n - 30, short),            // in its trailer
        (n - 8, short),             // before the end marker
        (n - 1, short),             // in it
    ];
    (whole, cuts)
}

// ---------------------------------------------------------------------------------------------
// FIFOs, sockets and devices given to `nix-store --add`.

#[test]
fn special_files_are_refused_by_add() {
    let s = Store::new();
    let src = tempfile::tempdir().unwrap();
    let mut cases: Vec<(PathBuf, PathBuf, &str)> = Vec::new();
    let fifo_tree = src.path().join("with-fifo");
    fs::create_dir_all(fifo_tree.join("sub")).unwrap();
    fs::write(fifo_tree.join("a"), b"a").unwrap();
    let fifo = fifo_tree.join("sub/pipe");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    cases.push((fifo_tree.clone(), fifo, "(fifo)"));
    let sock_tree = src.path().join("with-socket");
    fs::create_dir_all(&sock_tree).unwrap();
    let sock = sock_tree.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    cases.push((sock_tree, sock, "(socket)"));
    if rustix::process::getuid().is_root() {
        let dev_tree = src.path().join("with-device");
        fs::create_dir_all(&dev_tree).unwrap();
        let dev = dev_tree.join("null2");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &dev,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        cases.push((dev_tree, dev, "(character device)"));
    } else {
        eprintln!("not root: skipping the device node case");
    }
    // The FIFO alone, as the top-level object.
    cases.push((
        fifo_tree.join("sub/pipe"),
        fifo_tree.join("sub/pipe"),
        "(fifo)",
    ));
    for (tree, file, kind) in &cases {
        for args in [&["--add"][..], &["--add-fixed", "--recursive", "sha256"]] {
            let t = tree.to_str().unwrap();
            let o = s.run(&[args, &[t]].concat(), None);
            let named = format!("file '{}' has an unsupported type", file.display());
            assert_fails(&o, 1, &[&named, kind]);
        }
    }
    assert_eq!(s.valid(), BTreeSet::new());
    s.assert_sound();
}

// ---------------------------------------------------------------------------------------------
// Builders that write no output, or something that is not a file.

#[test]
fn builders_without_a_proper_output_are_refused() {
    let s = Store::new();
    let (none, none_out) = s.drv("no-output", "echo nothing");
    let o = s.run(&["-r", &none], None);
    let msg = format!(
        "builder for '{none}' failed to produce output path for output 'out' at '{none_out}'"
    );
    // Exit 1, as Nix 2.8: the builder succeeded, its output was rejected.
    assert_fails(&o, 1, &[&msg]);
    s.assert_invalid(&none_out);

    let (fifo, fifo_out) = s.drv("fifo-output", "/usr/bin/mkfifo $out");
    let (o, _) = run_within(
        &mut s.nix_store(&["-r", &fifo]),
        None,
        Duration::from_secs(30),
    );
    assert_fails(
        &o,
        1,
        &[
            &format!("output '{fifo_out}' of"),
            "cannot be read as a store path",
            "has an unsupported type (fifo)",
        ],
    );
    s.assert_invalid(&fifo_out);
    // Nothing of it is left in the store.
    assert!(Path::new(&fifo_out).symlink_metadata().is_err());
    s.assert_sound();
}

/// Real Nix 2.8 exits 1 for both (not 100) and says why the FIFO is refused.
#[test]
fn builders_without_a_proper_output_fail_as_in_nix() {
    let s = Store::new();
    let (none, _) = s.drv("no-output", "echo nothing");
    let (fifo, fifo_out) = s.drv("fifo-output", "/usr/bin/mkfifo $out");
    for d in [&none, &fifo] {
        let ours = s.run(&["-r", d], None);
        if let Some(mut c) = s.real("nix-store") {
            let theirs = c.args(["-r", d]).output().unwrap();
            assert_eq!(
                ours.status.code(),
                theirs.status.code(),
                "{d}: {}",
                err(&ours)
            );
        }
        assert_eq!(ours.status.code(), Some(1), "{d}: {}", err(&ours));
    }
    let o = s.run(&["-r", &fifo], None);
    let why = format!("file '{fifo_out}' has an unsupported type");
    assert!(err(&o).contains(&why), "{}", err(&o));
}

/// Nix strings are bytes, and real Nix 2.8 builds a derivation whose arguments are not UTF-8.
/// Ferrix keeps derivation strings as text for now and refuses such a file on its way in,
/// with the byte offset, rather than build something it would misread.
#[test]
fn non_utf8_derivation_strings_are_refused_clearly() {
    let s = Store::new();
    let dir = tempfile::tempdir().unwrap();
    let nix_file = dir.path().join("b.nix");
    fs::write(
        &nix_file,
        b"derivation { name = \"bytes\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; \
          args = [ \"-c\" \"echo \xff\xfe > $out\" ]; }",
    )
    .unwrap();
    let mut c = s.real("nix-instantiate").expect("real Nix is needed here");
    let drv = text(&ok(c.arg(&nix_file))).trim().to_owned();
    // Real Nix made it valid in this store; building it is where Ferrix reads it.
    let o = s.run(&["-r", &drv], None);
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(
        err(&o).contains("does not parse: invalid derivation at byte")
            && err(&o).contains("a string is not valid UTF-8"),
        "{}",
        err(&o)
    );
    s.assert_sound();
}

// ---------------------------------------------------------------------------------------------
// A 50 MB build log.

#[test]
fn a_50_mb_log_is_kept_whole() {
    // Uncompressed: bzip2 in a debug build would take minutes for 50 MB.
    let s = Store::with_conf("compress-build-log = false\n");
    const LINE: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
    const SIZE: usize = 50 << 20;
    let (drv, out) = s.drv(
        "big-log",
        &format!(
            "/usr/bin/yes {} | /usr/bin/head -c {SIZE}; echo done > $out",
            std::str::from_utf8(&LINE[..LINE.len() - 1]).unwrap()
        ),
    );
    let stderr = fs::File::create(s.path("build.stderr")).unwrap();
    let start = Instant::now();
    let mut child = s
        .nix_store(&["-r", &drv])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    // The peak resident size, watched while it runs.
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    let status = loop {
        if let Ok(st) = fs::read_to_string(&status_file) {
            if let Some(l) = st.lines().find(|l| l.starts_with("VmHWM:")) {
                let kb: u64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();
                peak_kb = peak_kb.max(kb);
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "build too slow");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(stdout.trim(), out);
    assert_eq!(fs::read_to_string(&out).unwrap(), "done\n");
    assert!(peak_kb < 40 << 10, "peak RSS {peak_kb} kB for a 50 MB log");

    let expected: Vec<u8> = LINE.iter().copied().cycle().take(SIZE).collect();
    let log = ok(&mut s.nix_store(&["-l", &drv]));
    assert_eq!(log.len(), SIZE);
    assert!(
        log == expected,
        "the log differs from what the builder wrote"
    );
    if let Some(mut c) = s.real("nix-store") {
        let theirs = ok(c.args(["-l", &drv]));
        assert!(theirs == expected, "real Nix reads another log");
    }
    s.assert_sound();
}
