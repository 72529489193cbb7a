//! Serve sessions with scripted client bytes and an in-memory store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Cursor, Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use ferrix_format::content_address::FileIngestionMethod;
use ferrix_format::hash::{Encoding, Hash};
use ferrix_format::nar::NarError;
use ferrix_format::wire::push_bytes;
use ferrix_format::{ContentAddress, Derivation, DerivationOutput, StoreDir, StorePath};
use ferrix_protocol::serve::{
    client_handshake, read_build_paths_reply, read_build_result, read_ok, read_path_infos,
    write_request, AddToStoreNar, BuildDerivation, BuildPaths, BuildPathsReply, BuildResult,
    BuildSettings, BuildStatus, BuiltOutput, Command, DumpStorePath, ExportPaths, PathInfoEntry,
    QueryClosure, QueryPathInfos, QueryValidPaths, Request, SERVE_MAGIC_1, SERVE_MAGIC_2,
};
use ferrix_protocol::wire::{read_store_path_set, read_u64, write_u64};
use ferrix_protocol::{Limits, Version, WireError};
use proptest::prelude::*;
use thiserror::Error;

use super::*;
use crate::export_record::{read_record, write_record, ExportRecord, RecordError};

const L: Limits = Limits::DEFAULT;
const V25: Version = Version::new(2, 5);
const V26: Version = Version::new(2, 6);
const V27: Version = Version::new(2, 7);
const V28: Version = Version::new(2, 8);

fn dir() -> StoreDir {
    StoreDir::default()
}

fn sp(name: &str, n: u8) -> StorePath {
    StorePath::from_digest(&[n; 20], name).unwrap()
}

// ---------------------------------------------------------------------------------------------
// An in-memory store

#[derive(Debug, Error)]
enum FakeError {
    #[error("path '{0}' is not valid")]
    NotValid(StorePath),
    #[error("the builder asked for an error")]
    Asked,
    #[error("bad NAR")]
    Nar(#[from] NarError),
    #[error("bad export stream")]
    Wire(#[from] WireError),
    #[error("bad export record")]
    Record(#[from] RecordError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, Default)]
struct Fake {
    paths: BTreeMap<StorePath, (PathInfoEntry, Vec<u8>)>,
    /// What each call saw, in order.
    calls: Vec<String>,
    /// How much of a NAR `add_to_store_nar` reads (all when `None`).
    nar_read: Option<usize>,
}

fn nar_of_text(text: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for t in ["nix-archive-1", "(", "type", "regular", "contents"] {
        push_bytes(&mut v, t.as_bytes());
    }
    push_bytes(&mut v, text.as_bytes());
    push_bytes(&mut v, b")");
    v
}

fn entry(path: &StorePath, refs: &[&StorePath], nar: &[u8]) -> PathInfoEntry {
    PathInfoEntry {
        path: path.clone(),
        deriver: None,
        references: refs.iter().map(|p| (*p).clone()).collect(),
        download_size: nar.len() as u64,
        nar_size: nar.len() as u64,
        nar_hash: Some(Hash::sha256(nar)),
        ca: None,
        sigs: BTreeSet::new(),
    }
}

impl Fake {
    fn with_paths() -> (Self, StorePath, StorePath) {
        let a = sp("a", 1);
        let b = sp("b", 2);
        let mut f = Fake::default();
        let nar_a = nar_of_text("a");
        let nar_b = nar_of_text("b refers to a");
        f.paths.insert(a.clone(), (entry(&a, &[], &nar_a), nar_a));
        let mut eb = entry(&b, &[&a], &nar_b);
        eb.sigs.insert("k:sig".into());
        eb.ca = Some(ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            hash: Hash::sha256(b"b"),
        });
        f.paths.insert(b.clone(), (eb, nar_b));
        (f, a, b)
    }
}

impl ServeHandler for Fake {
    type Error = FakeError;

    fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        lock: bool,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, FakeError> {
        self.calls
            .push(format!("valid lock={lock} substitute={substitute}"));
        Ok(paths
            .iter()
            .filter(|p| self.paths.contains_key(p))
            .cloned()
            .collect())
    }

    fn query_path_infos(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<Vec<PathInfoEntry>, FakeError> {
        self.calls.push("infos".into());
        Ok(paths
            .iter()
            .filter_map(|p| self.paths.get(p).map(|(e, _)| e.clone()))
            .collect())
    }

    fn dump_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), FakeError> {
        self.calls.push(format!("dump {path}"));
        let (_, nar) = self
            .paths
            .get(path)
            .ok_or_else(|| FakeError::NotValid(path.clone()))?;
        out.write_all(nar)?;
        Ok(())
    }

    fn import_paths(&mut self, input: &mut dyn Read) -> Result<(), FakeError> {
        self.calls.push("import".into());
        loop {
            match read_u64(input, "export flag")? {
                0 => return Ok(()),
                1 => {}
                n => return Err(WireError::unexpected("export flag", n).into()),
            }
            let r = read_record(input, &dir())?;
            let mut e = entry(&r.path, &[], &r.nar);
            e.references = r.references;
            e.deriver = r.deriver;
            self.paths.insert(r.path, (e, r.nar));
        }
    }

    fn export_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        out: &mut dyn Write,
    ) -> Result<(), FakeError> {
        self.calls.push("export".into());
        for p in paths {
            let (e, nar) = self
                .paths
                .get(p)
                .ok_or_else(|| FakeError::NotValid(p.clone()))?;
            write_export_record(out, e, nar)?;
        }
        write_u64(out, 0)?;
        Ok(())
    }

    fn build_paths(
        &mut self,
        paths: &[String],
        settings: &BuildSettings,
    ) -> Result<BuildResult, FakeError> {
        self.calls
            .push(format!("build {} {settings:?}", paths.join(" ")));
        if paths.iter().any(|p| p.contains("error")) {
            return Err(FakeError::Asked);
        }
        Ok(if paths.iter().any(|p| p.contains("fail")) {
            BuildResult::new(BuildStatus::PermanentFailure, "builder for 'fail' failed")
        } else {
            BuildResult::new(BuildStatus::Built, "")
        })
    }

    fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &Derivation,
        settings: &BuildSettings,
    ) -> Result<BuildResult, FakeError> {
        self.calls.push(format!(
            "build-derivation {drv_path} {} {settings:?}",
            drv.builder
        ));
        match drv.builder.as_str() {
            "error" => Err(FakeError::Asked),
            "fail" => Ok(BuildResult::new(BuildStatus::TimedOut, "timed out")),
            _ => {
                let mut res = BuildResult::new(BuildStatus::Built, "");
                res.times_built = 1;
                res.start_time = 10;
                res.stop_time = 12;
                for (name, out) in &drv.outputs {
                    if let Some(p) = out.path() {
                        res.built_outputs.insert(
                            name.clone(),
                            BuiltOutput {
                                out_path: p.clone(),
                                signatures: BTreeSet::new(),
                            },
                        );
                    }
                }
                Ok(res)
            }
        }
    }

    fn query_closure(
        &mut self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeSet<StorePath>, FakeError> {
        self.calls.push(format!("closure {include_outputs}"));
        let mut todo: Vec<StorePath> = paths.iter().cloned().collect();
        let mut seen = BTreeSet::new();
        while let Some(p) = todo.pop() {
            if !seen.insert(p.clone()) {
                continue;
            }
            let (e, _) = self
                .paths
                .get(&p)
                .ok_or_else(|| FakeError::NotValid(p.clone()))?;
            todo.extend(e.references.iter().cloned());
        }
        Ok(seen)
    }

    fn add_to_store_nar(
        &mut self,
        info: &AddToStoreNar,
        nar: &mut dyn Read,
    ) -> Result<(), FakeError> {
        self.calls.push(format!("add {}", info.path));
        let mut bytes = Vec::new();
        match self.nar_read {
            Some(n) => {
                nar.take(n as u64).read_to_end(&mut bytes)?;
            }
            None => {
                nar.read_to_end(&mut bytes)?;
            }
        }
        let mut e = entry(&info.path, &[], &bytes);
        e.references = info.references.clone();
        e.nar_hash = Some(info.nar_hash);
        self.paths.insert(info.path.clone(), (e, bytes));
        Ok(())
    }
}

fn write_export_record(out: &mut dyn Write, e: &PathInfoEntry, nar: &[u8]) -> io::Result<()> {
    write_u64(out, 1)?;
    let r = ExportRecord {
        path: e.path.clone(),
        references: e.references.clone(),
        deriver: e.deriver.clone(),
        nar: nar.to_vec(),
    };
    write_record(out, &dir(), &r)
}

// ---------------------------------------------------------------------------------------------
// Scripts

fn u(n: u64) -> [u8; 8] {
    n.to_le_bytes()
}

/// A client's bytes: the greeting at `version`, then requests (and payloads) added with `req`.
struct Script {
    version: Version,
    bytes: Vec<u8>,
}

impl Script {
    fn new(version: Version) -> Self {
        Self {
            version,
            bytes: [u(SERVE_MAGIC_1), u(version.to_wire())].concat(),
        }
    }
    fn req(mut self, r: &Request) -> Self {
        write_request(&mut self.bytes, self.version, &dir(), r).unwrap();
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.bytes.extend_from_slice(b);
        self
    }
}

fn opts(write: bool) -> ServeOptions {
    ServeOptions {
        write,
        ..ServeOptions::new(dir())
    }
}

/// Run a session; its result and what the server wrote after the greeting.
fn run_script(
    fake: &mut Fake,
    input: &[u8],
    write: bool,
) -> (Result<(), ServeError<FakeError>>, Vec<u8>) {
    let mut out = Vec::new();
    let res = serve(fake, input, &mut out, &opts(write));
    if out.len() >= 16 {
        assert_eq!(&out[..16], &[u(SERVE_MAGIC_2), u(0x208)].concat()[..]);
        out.drain(..16);
    }
    (res, out)
}

fn settings() -> BuildSettings {
    BuildSettings {
        max_silent_time: 1,
        build_timeout: 2,
        max_log_size: 3,
        build_repeat: 0,
        enforce_determinism: true,
        keep_failed: true,
    }
}

fn drv(builder: &str, out: &StorePath) -> Derivation {
    Derivation {
        outputs: [(
            "out".to_owned(),
            DerivationOutput::InputAddressed(out.clone()),
        )]
        .into(),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        platform: "x86_64-linux".into(),
        builder: builder.into(),
        args: vec![],
        env: BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn handshake_and_clean_end_at_every_version() {
    for (client, negotiated) in [
        (0x205u64, V25),
        (0x206, V26),
        (0x207, V27),
        (0x208, V28),
        (0x20a, V28),
    ] {
        let mut fake = Fake::default();
        let input = [u(SERVE_MAGIC_1), u(client)].concat();
        let mut out = Vec::new();
        serve(&mut fake, &input[..], &mut out, &opts(true)).unwrap();
        assert_eq!(out, [u(SERVE_MAGIC_2), u(0x208)].concat());
        // The client's side agrees on the version.
        let v = client_handshake(
            &mut &out[..],
            &mut Vec::new(),
            Version::from_wire(client).unwrap(),
        )
        .unwrap();
        assert_eq!(v, negotiated);
        assert!(fake.calls.is_empty());
    }
    // Refused greetings.
    for input in [
        [u(SERVE_MAGIC_1), u(0x204)].concat(),
        [u(SERVE_MAGIC_1), u(0x107)].concat(),
        [u(SERVE_MAGIC_2), u(0x207)].concat(),
        u(SERVE_MAGIC_1).to_vec(),
        vec![],
    ] {
        let (res, _) = run_script(&mut Fake::default(), &input, true);
        assert!(matches!(res, Err(ServeError::Handshake(_))), "{res:?}");
    }
    let (res, _) = run_script(
        &mut Fake::default(),
        &[u(SERVE_MAGIC_1), u(0x204)].concat(),
        true,
    );
    let msg = match res {
        Err(ServeError::Handshake(e)) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(
        msg.contains("2.4") && msg.contains("2.8") && msg.contains("2.5"),
        "{msg}"
    );
}

/// Every command once, at each version, read back with the client's functions.
#[test]
fn every_command() {
    for v in [V25, V26, V27, V28] {
        let (mut fake, a, b) = Fake::with_paths();
        let missing = sp("missing", 9);
        let new = sp("new", 3);
        let new_nar = nar_of_text("new");
        let imported = sp("imported", 4);
        let imp_nar = nar_of_text("imported");
        let drv_path = sp("t.drv", 5);
        let out_path = sp("t", 6);
        let all: BTreeSet<StorePath> = [a.clone(), b.clone(), missing.clone()].into();

        let mut export = Vec::new();
        write_export_record(&mut export, &entry(&imported, &[&a], &imp_nar), &imp_nar).unwrap();
        write_u64(&mut export, 0).unwrap();

        let script = Script::new(v)
            .req(&Request::QueryValidPaths(QueryValidPaths {
                lock: true,
                substitute: true,
                paths: all.clone(),
            }))
            .req(&Request::QueryPathInfos(QueryPathInfos {
                paths: all.clone(),
            }))
            .req(&Request::DumpStorePath(DumpStorePath { path: b.clone() }))
            .req(&Request::ImportPaths)
            .raw(&export)
            .req(&Request::ExportPaths(ExportPaths {
                paths: [a.clone()].into(),
            }))
            .req(&Request::BuildPaths(BuildPaths {
                paths: vec![format!("{}!out", dir().display(&drv_path))],
                settings: settings(),
            }))
            .req(&Request::QueryClosure(QueryClosure {
                include_outputs: false,
                paths: [b.clone()].into(),
            }))
            .req(&Request::BuildDerivation(BuildDerivation {
                drv_path: drv_path.clone(),
                drv: drv("/bin/sh", &out_path),
                settings: settings(),
            }))
            .req(&Request::AddToStoreNar(AddToStoreNar {
                path: new.clone(),
                deriver: Some(drv_path.clone()),
                nar_hash: Hash::sha256(&new_nar),
                references: [a.clone()].into(),
                registration_time: 0,
                nar_size: new_nar.len() as u64,
                ultimate: false,
                sigs: BTreeSet::new(),
                ca: None,
            }))
            .raw(&new_nar)
            .req(&Request::QueryValidPaths(QueryValidPaths {
                lock: false,
                substitute: false,
                paths: [new.clone(), imported.clone()].into(),
            }));
        let (res, out) = run_script(&mut fake, &script.bytes, true);
        res.unwrap();

        let mut r = &out[..];
        let d = dir();
        assert_eq!(
            read_store_path_set(&mut r, &d, &L, "valid").unwrap(),
            [a.clone(), b.clone()].into()
        );
        let infos = read_path_infos(&mut r, v, &d, &L).unwrap();
        assert_eq!(infos, vec![fake_entry(&fake, &a), fake_entry(&fake, &b)]);
        let mut nar = vec![0; fake.paths[&b].1.len()];
        r.read_exact(&mut nar).unwrap();
        assert_eq!(nar, fake.paths[&b].1);
        read_ok(&mut r, "import").unwrap();
        let mut exported = Vec::new();
        write_export_record(&mut exported, &fake.paths[&a].0, &fake.paths[&a].1).unwrap();
        write_u64(&mut exported, 0).unwrap();
        assert_eq!(&r[..exported.len()], &exported[..]);
        r = &r[exported.len()..];
        assert_eq!(
            read_build_paths_reply(&mut r, &L).unwrap(),
            BuildPathsReply::Success
        );
        assert_eq!(
            read_store_path_set(&mut r, &d, &L, "closure").unwrap(),
            [a.clone(), b.clone()].into()
        );
        let res = read_build_result(&mut r, v, &d, &L).unwrap();
        assert_eq!(res.status, BuildStatus::Built);
        if v >= V26 {
            assert_eq!(res.built_outputs["out"].out_path, out_path);
        } else {
            assert!(res.built_outputs.is_empty());
        }
        read_ok(&mut r, "add").unwrap();
        assert_eq!(
            read_store_path_set(&mut r, &d, &L, "valid").unwrap(),
            [new.clone(), imported.clone()].into()
        );
        assert!(r.is_empty(), "{} bytes left at {v}", r.len());

        // What the handler saw: the settings this version carries, flags as sent with write.
        let mut want_settings = settings();
        if v < V27 {
            want_settings.keep_failed = false;
        }
        assert_eq!(
            fake.calls,
            [
                "valid lock=true substitute=true".to_owned(),
                "infos".into(),
                format!("dump {b}"),
                "import".into(),
                "export".into(),
                format!("build {}!out {want_settings:?}", dir().display(&drv_path)),
                "closure false".into(),
                format!("build-derivation {drv_path} /bin/sh {want_settings:?}"),
                format!("add {new}"),
                "valid lock=false substitute=false".into(),
            ]
        );
        assert_eq!(fake.paths[&new].1, new_nar);
        assert_eq!(fake.paths[&imported].0.references, [a.clone()].into());
    }
}

fn fake_entry(f: &Fake, p: &StorePath) -> PathInfoEntry {
    f.paths[p].0.clone()
}

#[test]
fn read_only_sessions_refuse_writes() {
    let (_, a, _) = Fake::with_paths();
    let nar = nar_of_text("x");
    let requests = [
        Request::ImportPaths,
        Request::BuildPaths(BuildPaths {
            paths: vec![],
            settings: settings(),
        }),
        Request::BuildDerivation(BuildDerivation {
            drv_path: sp("t.drv", 5),
            drv: drv("/bin/sh", &a),
            settings: settings(),
        }),
        Request::AddToStoreNar(AddToStoreNar {
            path: sp("x", 7),
            deriver: None,
            nar_hash: Hash::sha256(&nar),
            references: BTreeSet::new(),
            registration_time: 0,
            nar_size: nar.len() as u64,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        }),
    ];
    for req in requests {
        let (mut fake, _, _) = Fake::with_paths();
        let script = Script::new(V27).req(&req).raw(&nar);
        let (res, out) = run_script(&mut fake, &script.bytes, false);
        match res {
            Err(e @ ServeError::NotAllowed { command }) => {
                assert_eq!(command, req.command());
                assert!(e.to_string().contains(command.name()), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty());
        assert!(fake.calls.is_empty(), "{:?}", fake.calls);
    }
    // Reads are fine, and QueryValidPaths drops its lock and substitute flags.
    let (mut fake, a, b) = Fake::with_paths();
    let script = Script::new(V27)
        .req(&Request::QueryValidPaths(QueryValidPaths {
            lock: true,
            substitute: true,
            paths: [a.clone()].into(),
        }))
        .req(&Request::ExportPaths(ExportPaths {
            paths: [b.clone()].into(),
        }))
        .req(&Request::QueryClosure(QueryClosure {
            include_outputs: true,
            paths: [b].into(),
        }));
    let (res, _) = run_script(&mut fake, &script.bytes, false);
    res.unwrap();
    assert_eq!(
        fake.calls,
        [
            "valid lock=false substitute=false",
            "export",
            "closure true"
        ]
    );
}

#[test]
fn unknown_commands() {
    for n in [0u64, 10, 11, 0x390c_9deb, u64::MAX] {
        let (res, out) = run_script(
            &mut Fake::default(),
            &Script::new(V27).raw(&u(n)).bytes,
            true,
        );
        match res {
            Err(e @ ServeError::UnknownCommand(got)) => {
                assert_eq!(got, n);
                assert!(e.to_string().contains(&n.to_string()));
            }
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty());
    }
}

#[test]
fn oversize_lengths() {
    let huge = u64::MAX;
    let path_of_a = dir().display(&sp("a", 1));
    let cases: Vec<(Vec<u8>, Command)> = vec![
        (
            [u(1), u(0), u(0), u(huge)].concat(),
            Command::QueryValidPaths,
        ),
        ([u(2), u((1 << 20) + 1)].concat(), Command::QueryPathInfos),
        ([u(3), u(huge)].concat(), Command::DumpStorePath),
        ([u(6), u(1), u(huge)].concat(), Command::BuildPaths),
        (
            {
                let mut v = u(8).to_vec();
                push_bytes(&mut v, path_of_a.as_bytes());
                v.extend_from_slice(&u(huge));
                v
            },
            Command::BuildDerivation,
        ),
        ([u(9), u((64 << 20) + 1)].concat(), Command::AddToStoreNar),
    ];
    for (bytes, cmd) in cases {
        let (res, out) = run_script(
            &mut Fake::default(),
            &Script::new(V27).raw(&bytes).bytes,
            true,
        );
        match res {
            Err(ServeError::Request {
                command: Some(c),
                source: WireError::TooLong { .. },
            }) => assert_eq!(c, cmd),
            other => panic!("{cmd}: {other:?}"),
        }
        assert!(out.is_empty());
    }
    // Smaller limits apply as configured.
    let o = ServeOptions {
        limits: Limits {
            max_string: 16,
            max_items: 4,
        },
        ..opts(true)
    };
    let script = Script::new(V27).req(&Request::DumpStorePath(DumpStorePath { path: sp("a", 1) }));
    let res = serve(&mut Fake::default(), &script.bytes[..], io::sink(), &o);
    assert!(matches!(
        res,
        Err(ServeError::Request {
            source: WireError::TooLong { limit: 16, .. },
            ..
        })
    ));
}

/// A script of every command, cut at every byte: a clean typed error (or, at a command
/// boundary, a clean end), never a panic, never a handler call for a half-read request.
#[test]
fn truncated_input() {
    let (fake0, a, b) = Fake::with_paths();
    let nar = nar_of_text("new");
    let mut export = Vec::new();
    write_export_record(&mut export, &entry(&sp("i", 4), &[], &nar), &nar).unwrap();
    write_u64(&mut export, 0).unwrap();
    let mut boundaries = vec![16];
    let mut script = Script::new(V27);
    let reqs: Vec<(Request, Vec<u8>)> = vec![
        (
            Request::QueryValidPaths(QueryValidPaths {
                lock: false,
                substitute: false,
                paths: [a.clone(), b.clone()].into(),
            }),
            vec![],
        ),
        (Request::ImportPaths, export),
        (
            Request::BuildDerivation(BuildDerivation {
                drv_path: sp("t.drv", 5),
                drv: drv("/bin/sh", &sp("t", 6)),
                settings: settings(),
            }),
            vec![],
        ),
        (
            Request::AddToStoreNar(AddToStoreNar {
                path: sp("new", 3),
                deriver: None,
                nar_hash: Hash::sha256(&nar),
                references: BTreeSet::new(),
                registration_time: 0,
                nar_size: nar.len() as u64,
                ultimate: false,
                sigs: BTreeSet::new(),
                ca: None,
            }),
            nar.clone(),
        ),
    ];
    for (req, payload) in &reqs {
        script = script.req(req).raw(payload);
        boundaries.push(script.bytes.len());
    }
    let full = script.bytes;
    for cut in 0..full.len() {
        let mut fake = Fake {
            paths: fake0.paths.clone(),
            ..Fake::default()
        };
        let (res, _) = run_script(&mut fake, &full[..cut], true);
        if boundaries.contains(&cut) {
            res.unwrap();
            continue;
        }
        match res {
            Err(ServeError::Handshake(e)) => assert!(cut < 16 && e.is_eof(), "{cut}: {e}"),
            Err(ServeError::Request { source, .. }) => assert!(source.is_eof(), "{cut}: {source}"),
            // Cut inside a payload: the handler sees the end, or the server when draining.
            Err(ServeError::Handler { command, source }) => {
                assert!(
                    matches!(command, Command::ImportPaths | Command::AddToStoreNar),
                    "{cut}"
                );
                let _ = source;
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // A NAR shorter than announced, the handler reading none of it: the server's drain says so.
    let script = Script::new(V27).req(&reqs[3].0).raw(&nar[..nar.len() - 1]);
    let mut fake = Fake {
        nar_read: Some(0),
        ..Fake::default()
    };
    let (res, _) = run_script(&mut fake, &script.bytes, true);
    match res {
        Err(ServeError::Nar { nar_size, source }) => {
            assert_eq!(nar_size, nar.len() as u64);
            assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof);
        }
        other => panic!("{other:?}"),
    }
}

/// The handler reads only part of the NAR: the server skips the rest, and the next command
/// is read from the right place.
#[test]
fn add_to_store_nar_drains_what_the_handler_left() {
    let nar = nar_of_text("a fairly long file, to leave something unread");
    let info = AddToStoreNar {
        path: sp("new", 3),
        deriver: None,
        nar_hash: Hash::sha256(&nar),
        references: BTreeSet::new(),
        registration_time: 0,
        nar_size: nar.len() as u64,
        ultimate: false,
        sigs: BTreeSet::new(),
        ca: None,
    };
    let script = Script::new(V28)
        .req(&Request::AddToStoreNar(info.clone()))
        .raw(&nar)
        .req(&Request::QueryValidPaths(QueryValidPaths {
            lock: false,
            substitute: false,
            paths: [info.path.clone()].into(),
        }));
    for read in [0, 7, nar.len()] {
        let mut fake = Fake {
            nar_read: Some(read),
            ..Fake::default()
        };
        let (res, out) = run_script(&mut fake, &script.bytes, true);
        res.unwrap();
        let mut r = &out[..];
        read_ok(&mut r, "add").unwrap();
        assert_eq!(
            read_store_path_set(&mut r, &dir(), &L, "valid").unwrap(),
            [info.path.clone()].into()
        );
        assert_eq!(fake.paths[&info.path].1, nar[..read]);
    }
}

#[test]
fn handler_errors_end_the_session_build_failures_do_not() {
    // A failed build is an answer.
    let (mut fake, _, _) = Fake::with_paths();
    let script = Script::new(V27)
        .req(&Request::BuildDerivation(BuildDerivation {
            drv_path: sp("t.drv", 5),
            drv: drv("fail", &sp("t", 6)),
            settings: settings(),
        }))
        .req(&Request::BuildPaths(BuildPaths {
            paths: vec!["fail".into()],
            settings: settings(),
        }));
    let (res, out) = run_script(&mut fake, &script.bytes, true);
    res.unwrap();
    let mut r = &out[..];
    let br = read_build_result(&mut r, V27, &dir(), &L).unwrap();
    assert_eq!(br.status, BuildStatus::TimedOut);
    assert_eq!(br.error_msg, "timed out");
    assert_eq!(
        read_build_paths_reply(&mut r, &L).unwrap(),
        BuildPathsReply::Failure {
            status: BuildStatus::PermanentFailure as u64,
            message: "builder for 'fail' failed".into()
        }
    );
    assert!(r.is_empty());

    // A handler error ends it, with the error kept as the source.
    let (mut fake, a, _) = Fake::with_paths();
    let missing = sp("missing", 9);
    let script = Script::new(V27)
        .req(&Request::DumpStorePath(DumpStorePath {
            path: missing.clone(),
        }))
        .req(&Request::QueryValidPaths(QueryValidPaths {
            lock: false,
            substitute: false,
            paths: [a].into(),
        }));
    let (res, out) = run_script(&mut fake, &script.bytes, true);
    match res {
        Err(
            e @ ServeError::Handler {
                command: Command::DumpStorePath,
                ..
            },
        ) => {
            let src = std::error::Error::source(&e).unwrap();
            let fe = src.downcast_ref::<FakeError>().unwrap();
            assert!(matches!(fe, FakeError::NotValid(p) if *p == missing));
        }
        other => panic!("{other:?}"),
    }
    assert!(out.is_empty());
    assert_eq!(fake.calls.len(), 1);

    for req in [
        Request::BuildDerivation(BuildDerivation {
            drv_path: sp("t.drv", 5),
            drv: drv("error", &sp("t", 6)),
            settings: settings(),
        }),
        Request::BuildPaths(BuildPaths {
            paths: vec!["error".into()],
            settings: settings(),
        }),
    ] {
        let (res, _) = run_script(
            &mut Fake::default(),
            &Script::new(V27).req(&req).bytes,
            true,
        );
        assert!(
            matches!(res, Err(ServeError::Handler { command, source: FakeError::Asked }) if command == req.command()),
            "{res:?}"
        );
    }
}

/// Counts what reached the underlying writer at each flush.
#[derive(Default)]
struct Flushes {
    bytes: Vec<u8>,
    flushed_at: Vec<usize>,
}

impl Write for Flushes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flushed_at.push(self.bytes.len());
        Ok(())
    }
}

#[test]
fn every_answer_is_flushed() {
    let (mut fake, a, b) = Fake::with_paths();
    let script = Script::new(V27)
        .req(&Request::QueryValidPaths(QueryValidPaths {
            lock: false,
            substitute: false,
            paths: [a.clone()].into(),
        }))
        .req(&Request::DumpStorePath(DumpStorePath { path: b.clone() }))
        .req(&Request::QueryPathInfos(QueryPathInfos {
            paths: [b.clone()].into(),
        }));
    let mut sink = Flushes::default();
    serve(&mut fake, &script.bytes[..], &mut sink, &opts(true)).unwrap();
    let d = dir();
    let mut r = Cursor::new(&sink.bytes[16..]);
    let mut ends = vec![16];
    read_store_path_set(&mut r, &d, &L, "valid").unwrap();
    ends.push(16 + r.position() as usize);
    r.set_position(r.position() + fake.paths[&b].1.len() as u64);
    ends.push(16 + r.position() as usize);
    read_path_infos(&mut r, V27, &d, &L).unwrap();
    ends.push(16 + r.position() as usize);
    assert_eq!(ends.last(), Some(&sink.bytes.len()));
    for end in ends {
        assert!(
            sink.flushed_at.contains(&end),
            "not flushed at {end}: {:?}",
            sink.flushed_at
        );
    }
}

/// Client and server over real pipes: each side waits for the other, so a missing flush
/// would hang (caught by the timeout).
#[test]
fn interactive_over_pipes() {
    let (to_server_r, mut to_server_w) = io::pipe().unwrap();
    let (mut from_server_r, from_server_w) = io::pipe().unwrap();
    let (mut fake, a, b) = Fake::with_paths();
    let server = std::thread::spawn(move || {
        let res = serve(&mut fake, to_server_r, from_server_w, &opts(true));
        (res.map_err(|e| e.to_string()), fake.calls)
    });
    let (done_tx, done_rx) = mpsc::channel();
    let client = std::thread::spawn(move || {
        let d = dir();
        let v = client_handshake(&mut from_server_r, &mut to_server_w, V28).unwrap();
        assert_eq!(v, V28);
        for _ in 0..3 {
            write_request(
                &mut to_server_w,
                v,
                &d,
                &Request::QueryPathInfos(QueryPathInfos {
                    paths: [a.clone(), b.clone()].into(),
                }),
            )
            .unwrap();
            to_server_w.flush().unwrap();
            let infos = read_path_infos(&mut from_server_r, v, &d, &L).unwrap();
            assert_eq!(infos.len(), 2);
            assert_eq!(
                infos[1]
                    .nar_hash
                    .unwrap()
                    .encode_typed(Encoding::Nix32)
                    .len(),
                59
            );
        }
        write_request(
            &mut to_server_w,
            v,
            &d,
            &Request::BuildDerivation(BuildDerivation {
                drv_path: sp("t.drv", 5),
                drv: drv("/bin/sh", &sp("t", 6)),
                settings: BuildSettings::default(),
            }),
        )
        .unwrap();
        to_server_w.flush().unwrap();
        let res = read_build_result(&mut from_server_r, v, &d, &L).unwrap();
        assert_eq!(res.built_outputs["out"].out_path, sp("t", 6));
        drop(to_server_w);
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the session stalled: an answer was not flushed");
    client.join().unwrap();
    let (res, calls) = server.join().unwrap();
    res.unwrap();
    assert_eq!(calls.len(), 4);
}

#[test]
fn options_default_to_read_only_and_the_newest_version() {
    let o = ServeOptions::new(dir());
    assert!(!o.write);
    assert_eq!(o.version, Version::new(2, 8));
    assert_eq!(o.limits, Limits::DEFAULT);
    // An older version offered: the session uses it.
    let mut fake = Fake::default();
    let mut out = Vec::new();
    let o = ServeOptions { version: V27, ..o };
    serve(
        &mut fake,
        &[u(SERVE_MAGIC_1), u(0x208)].concat()[..],
        &mut out,
        &o,
    )
    .unwrap();
    assert_eq!(out, [u(SERVE_MAGIC_2), u(0x207)].concat());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Arbitrary bytes after a valid greeting: an answer or a typed error, never a panic.
    #[test]
    fn arbitrary_bytes_after_handshake(
        minor in 5u8..=9,
        body in prop::collection::vec(any::<u8>(), 0..512),
        write in any::<bool>(),
    ) {
        let (mut fake, _, _) = Fake::with_paths();
        let input = Script::new(Version::new(2, minor)).raw(&body).bytes;
        let _ = run_script(&mut fake, &input, write);
    }

    /// A valid command number followed by arbitrary bytes reaches deeper into each reader.
    #[test]
    fn arbitrary_arguments(
        cmd in 1u64..=9,
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let (mut fake, _, _) = Fake::with_paths();
        let input = Script::new(V28).raw(&u(cmd)).raw(&body).bytes;
        let _ = run_script(&mut fake, &input, true);
    }
}
