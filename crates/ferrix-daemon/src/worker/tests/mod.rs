//! Worker sessions with scripted client bytes and an in-memory store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Cursor, Read, Write};

use ferrix_format::content_address::FileIngestionMethod;
use ferrix_format::hash::{Hash, HashAlgo};
use ferrix_format::wire::push_bytes;
use ferrix_format::{ContentAddress, Derivation, DerivationOutput, StoreDir, StorePath};
use ferrix_protocol::wire::{
    read_bool, read_opt_store_path, read_store_path, read_store_path_set, read_string,
    read_string_set, read_u64, write_str, write_u64,
};
use ferrix_protocol::worker::payload::{write_framed, MultiplePathsWriter};
use ferrix_protocol::worker::reply::{
    read_missing, read_ok, read_output_map, read_path_info_reply,
};
use ferrix_protocol::worker::stderr::{activity, result_type, verbosity};
use ferrix_protocol::worker::{
    client_handshake, client_post_handshake, client_startup, process_stderr, read_build_result,
    read_keyed_build_results, read_stderr, write_request, BuildMode, BuildResult, BuildStatus,
    BuiltOutput, ClientOptions, DerivedPath, ErrorInfo, Field, GcAction, HandshakeInfo,
    KeyedBuildResult, Missing, OutputsSpec, PathInfo, StderrMsg, UnkeyedPathInfo, WorkerRequest,
    FULL, WORKER_MAGIC_1, WORKER_MAGIC_2,
};
use ferrix_protocol::{Limits, Version, WireError};
use proptest::prelude::*;
use thiserror::Error;

use super::*;

mod fake;
mod script;

use fake::*;
use script::*;

const L: Limits = Limits::DEFAULT;

fn v(minor: u8) -> Version {
    Version::new(1, minor)
}

/// The client versions every behaviour is checked at.
const MINORS: [u8; 8] = [18, 21, 23, 26, 33, 34, 35, 38];

fn dir() -> StoreDir {
    StoreDir::default()
}

fn sp(name: &str, n: u8) -> StorePath {
    StorePath::from_digest(&[n; 20], name).unwrap()
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

fn info_of(path: &StorePath, nar: &[u8], refs: &[&StorePath]) -> PathInfo {
    let mut info = UnkeyedPathInfo::new(Hash::sha256(nar), nar.len() as u64);
    info.references = refs.iter().map(|p| (*p).clone()).collect();
    info.registration_time = 1000;
    PathInfo {
        path: path.clone(),
        info,
    }
}

#[test]
fn greeting_bytes_per_version() {
    for minor in MINORS {
        let ver = v(minor);
        for trusted in [false, true] {
            let mut fake = Fake::default();
            let (res, out) = Script::new(ver).run(&mut fake, &opts(trusted));
            res.unwrap();
            let mut want = Vec::new();
            write_u64(&mut want, WORKER_MAGIC_2).unwrap();
            write_u64(&mut want, 0x126).unwrap();
            if ver >= v(38) {
                write_u64(&mut want, 0).unwrap(); // no features
            }
            if ver >= v(33) {
                push_bytes(&mut want, b"2.8.0");
            }
            if ver >= v(35) {
                write_u64(&mut want, if trusted { 1 } else { 2 }).unwrap();
            }
            write_u64(&mut want, 0x616c_7473).unwrap(); // STDERR_LAST
            assert_eq!(out.bytes.into_inner(), want, "{ver} trusted={trusted}");
        }
    }
    // A 1.38 client with features: none in common.
    let mut s = Script::new(v(38));
    s.input = greeting(v(38), &["realisation-with-path-not-hash"]);
    let (res, mut out) = s.run(&mut Fake::default(), &opts(true));
    res.unwrap();
    let info = out.greeting();
    assert_eq!(info.trusted, Some(true));
    out.done();
    // Too old a client, bad magic.
    let (res, _) = Script::new(v(17)).run(&mut Fake::default(), &opts(true));
    assert!(matches!(
        res,
        Err(WorkerError::Handshake(WireError::UnsupportedVersion { .. }))
    ));
    let mut s = Script::new(v(34));
    s.input[0] ^= 1;
    let (res, _) = s.run(&mut Fake::default(), &opts(true));
    assert!(matches!(
        res,
        Err(WorkerError::Handshake(WireError::BadMagic { .. }))
    ));
}

#[test]
fn every_op_per_version() {
    for minor in MINORS {
        let ver = v(minor);
        let (mut fake, a, b) = Fake::with_paths();
        let missing = sp("missing", 7);
        let new_nar = nar_of_text("new path");
        let new = info_of(&sp("new", 4), &new_nar, &[&a]);
        let m1_nar = nar_of_text("m1");
        let m1 = info_of(&sp("m1", 5), &m1_nar, &[]);
        let m2_nar = nar_of_text("m2 refers to m1");
        let m2 = info_of(&sp("m2", 6), &m2_nar, &[&m1.path]);
        let drv_path = sp("b.drv", 3);
        let target = DerivedPath::Built {
            drv_path: drv_path.clone(),
            outputs: OutputsSpec::Names(["out".to_owned()].into()),
        };
        let out_path = sp("out", 8);
        let mut options = ClientOptions::default();
        options.overrides.insert("sandbox".into(), "false".into());

        let mut s = Script::new(ver);
        s.req(&WorkerRequest::SetOptions(options.clone()))
            .req(&WorkerRequest::IsValidPath(a.clone()))
            .req(&WorkerRequest::IsValidPath(missing.clone()))
            .req(&WorkerRequest::QueryValidPaths {
                paths: [a.clone(), missing.clone()].into(),
                substitute: true,
            })
            .req(&WorkerRequest::QueryPathInfo(b.clone()))
            .req(&WorkerRequest::QueryPathInfo(missing.clone()))
            .req(&WorkerRequest::QueryReferrers(a.clone()))
            .req(&WorkerRequest::AddTempRoot(a.clone()))
            .req(&WorkerRequest::AddIndirectRoot("/home/u/result".into()))
            .req(&WorkerRequest::EnsurePath(a.clone()))
            .req(&WorkerRequest::SyncWithGC)
            .req(&WorkerRequest::QueryDerivationOutputMap(drv_path.clone()))
            .req(&WorkerRequest::BuildPaths {
                paths: vec![target.clone()],
                mode: BuildMode::Check,
            })
            .req(&WorkerRequest::BuildPathsWithResults {
                paths: vec![target.clone()],
                mode: BuildMode::Normal,
            })
            .req(&WorkerRequest::BuildDerivation {
                drv_path: drv_path.clone(),
                drv: trivial_drv(&out_path, "/bin/sh"),
                mode: BuildMode::Normal,
            })
            .req(&WorkerRequest::NarFromPath(b.clone()))
            .req(&WorkerRequest::AddToStoreNar {
                info: new.clone(),
                repair: true,
                dont_check_sigs: true,
            })
            .nar(&new_nar)
            .req(&WorkerRequest::AddMultipleToStore {
                repair: false,
                dont_check_sigs: true,
            });
        let mut mw = MultiplePathsWriter::new(&mut s.input, &dir(), 2).unwrap();
        mw.add(&m1, &mut &m1_nar[..]).unwrap();
        mw.add(&m2, &mut &m2_nar[..]).unwrap();
        mw.finish().unwrap();
        s.req(&WorkerRequest::QueryMissing(vec![
            target.clone(),
            DerivedPath::Opaque(missing.clone()),
        ]))
        .req(&WorkerRequest::AddSignatures {
            path: a.clone(),
            sigs: ["k2:s".to_owned()].into(),
        })
        .req(&WorkerRequest::QueryAllValidPaths)
        .req(&WorkerRequest::QueryPathFromHashPart(
            b.hash_part().to_owned(),
        ))
        .req(&WorkerRequest::AddBuildLog(drv_path.clone()));
        write_framed(&mut s.input, &mut &b"the log\n"[..]).unwrap();
        s.req(&WorkerRequest::AddPermRoot {
            path: a.clone(),
            gc_root: "/root/r".into(),
        });

        let (res, mut o) = s.run(&mut fake, &opts(true));
        res.unwrap_or_else(|e| panic!("{ver}: {e}"));
        o.greeting();
        let d = dir();

        // SetOptions
        o.ok();
        let mut want = options.clone();
        if ver < v(12) {
            want.overrides.clear();
        }
        assert_eq!(fake.options.as_ref(), Some(&want));
        // IsValidPath
        o.ok();
        assert!(read_bool(o.r(), "valid").unwrap());
        o.ok();
        assert!(!read_bool(o.r(), "valid").unwrap());
        // QueryValidPaths: the substitute flag from 1.27 on.
        let log = o.ok();
        assert_eq!(log.len(), usize::from(ver >= v(27)), "{ver}");
        assert_eq!(
            read_store_path_set(o.r(), &d, &L, "valid").unwrap(),
            BTreeSet::from([a.clone()])
        );
        // QueryPathInfo
        o.ok();
        let info = read_path_info_reply(o.r(), ver, &d, &L).unwrap().unwrap();
        assert_eq!(info, fake.paths[&b].0);
        o.ok();
        assert_eq!(read_path_info_reply(o.r(), ver, &d, &L).unwrap(), None);
        // QueryReferrers
        o.ok();
        assert_eq!(
            read_store_path_set(o.r(), &d, &L, "referrers").unwrap(),
            BTreeSet::from([b.clone()])
        );
        // AddTempRoot, AddIndirectRoot, EnsurePath, SyncWithGC
        for _ in 0..4 {
            o.ok();
            read_ok(o.r(), "ok").unwrap();
        }
        // QueryDerivationOutputMap
        o.ok();
        assert_eq!(
            read_output_map(o.r(), &d, &L).unwrap(),
            fake.drvs[&drv_path]
        );
        // BuildPaths: the build's log; activities only from 1.20 on.
        let log = o.ok();
        read_ok(o.r(), "BuildPaths").unwrap();
        if ver >= v(20) {
            assert_eq!(log.len(), 3);
            assert!(
                matches!(&log[1], StderrMsg::Result { kind, .. } if *kind == result_type::BUILD_LOG_LINE)
            );
        } else {
            assert_eq!(log, [StderrMsg::Next("building...\n".into())]);
        }
        // BuildPathsWithResults
        o.ok();
        let results = read_keyed_build_results(o.r(), ver, &d, &L).unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].path, target);
        assert_eq!(results[0].result.status, BuildStatus::AlreadyValid);
        // BuildDerivation
        let log = o.ok();
        assert_eq!(log, [StderrMsg::Next("hi\n".into())]);
        let res = read_build_result(o.r(), ver, &L).unwrap();
        assert_eq!(res.status, BuildStatus::Built);
        if ver >= v(28) {
            assert_eq!(res.built_outputs["out"].out_path, out_path);
        }
        if ver >= v(29) {
            assert_eq!(
                (res.times_built, res.start_time, res.stop_time),
                (1, 10, 12)
            );
        }
        assert_eq!(res.cpu_user, (ver >= v(37)).then_some(3));
        // NarFromPath: the NAR after Last.
        o.ok();
        let want_nar = fake.paths[&b].1.clone();
        let mut nar = vec![0; want_nar.len()];
        o.r().read_exact(&mut nar).unwrap();
        assert_eq!(nar, want_nar);
        // AddToStoreNar: pulled with data requests at 1.21 and 1.22, else sent.
        let (res, reads) = o.work_with_reads();
        res.unwrap();
        assert_eq!(reads, usize::from((21..23).contains(&minor)), "{ver}");
        assert_eq!(fake.paths[&new.path].1, new_nar);
        // AddMultipleToStore
        o.ok();
        assert_eq!(fake.paths[&m2.path].1, m2_nar);
        assert_eq!(fake.paths[&m1.path].1, m1_nar);
        // QueryMissing
        o.ok();
        let m = read_missing(o.r(), &d, &L).unwrap();
        assert_eq!(m.will_build, BTreeSet::from([drv_path.clone()]));
        assert_eq!(m.unknown, BTreeSet::from([missing.clone()]));
        assert_eq!((m.download_size, m.nar_size), (7, 9));
        // AddSignatures
        o.ok();
        read_ok(o.r(), "AddSignatures").unwrap();
        assert!(fake.paths[&a].0.sigs.contains("k2:s"));
        // QueryAllValidPaths
        o.ok();
        assert_eq!(
            read_store_path_set(o.r(), &d, &L, "all").unwrap().len(),
            fake.paths.len()
        );
        // QueryPathFromHashPart
        o.ok();
        assert_eq!(
            read_opt_store_path(o.r(), &d, &L, "path").unwrap(),
            Some(b.clone())
        );
        // AddBuildLog
        o.ok();
        read_ok(o.r(), "AddBuildLog").unwrap();
        assert_eq!(fake.logs[&drv_path], b"the log\n");
        // AddPermRoot
        o.ok();
        assert_eq!(read_string(o.r(), &L, "root").unwrap(), "/root/r");
        o.done();

        // What the handler saw of the flags (a trusted session keeps them).
        assert!(fake.calls.contains(&format!(
            "add {} repair=true dontCheckSigs=true ultimate=false",
            new.path
        )));
        assert!(fake
            .calls
            .contains(&"add-multiple 2 repair=false dontCheckSigs=true".to_owned()));
        assert!(fake.calls.contains(&"build 1 Check".to_owned()));
        assert_eq!(
            fake.roots,
            [
                format!("temp {a}"),
                "indirect /home/u/result".to_owned(),
                format!("perm {a} /root/r")
            ]
        );
    }
}

#[test]
fn old_clients_get_log_lines_instead_of_activities() {
    let (mut fake, _, _) = Fake::with_paths();
    let target = DerivedPath::Opaque(sp("a", 1));
    let mut s = Script::new(v(18));
    s.req(&WorkerRequest::BuildPaths {
        paths: vec![target],
        mode: BuildMode::Normal,
    });
    let (res, mut o) = s.run(&mut fake, &opts(true));
    res.unwrap();
    o.greeting();
    let log = o.ok();
    assert_eq!(log, [StderrMsg::Next("building...\n".into())]);
    read_ok(o.r(), "BuildPaths").unwrap();
    o.done();
}

#[test]
fn handler_errors_become_stderr_error_and_the_session_goes_on() {
    for minor in MINORS {
        let ver = v(minor);
        let (mut fake, a, _) = Fake::with_paths();
        let missing = sp("missing", 7);
        let mut s = Script::new(ver);
        s.req(&WorkerRequest::EnsurePath(missing.clone()))
            .req(&WorkerRequest::BuildPaths {
                paths: vec![DerivedPath::Opaque(sp("fail", 9))],
                mode: BuildMode::Normal,
            })
            .req(&WorkerRequest::QueryDerivationOutputMap(missing.clone()))
            .req(&WorkerRequest::BuildDerivation {
                drv_path: sp("x.drv", 9),
                drv: trivial_drv(&sp("x", 9), "error"),
                mode: BuildMode::Normal,
            })
            .req(&WorkerRequest::NarFromPath(missing.clone()))
            .req(&WorkerRequest::IsValidPath(a.clone()));
        let (res, mut o) = s.run(&mut fake, &opts(true));
        res.unwrap();
        o.greeting();
        // EnsurePath: the log line, then the error.
        let (res, log) = o.work();
        assert_eq!(log.len(), 1);
        let e = res.unwrap_err();
        assert_eq!(e.message, format!("path '{missing}' is not valid"));
        assert_eq!(e.exit_status, 1);
        assert_eq!(e.level, verbosity::ERROR);
        for want in [
            "the client asked for an error",
            "is not valid",
            "the client asked",
            "is not valid",
        ] {
            let (res, _) = o.work();
            let e = res.unwrap_err();
            assert!(e.message.contains(want), "{ver}: {e}");
        }
        o.ok();
        assert!(read_bool(o.r(), "valid").unwrap());
        o.done();
    }
}

#[test]
fn nar_from_path_failing_in_the_middle_ends_the_session() {
    let (mut fake, _, _) = Fake::with_paths();
    let broken = sp("broken", 9);
    let nar = nar_of_text("broken");
    fake.paths.insert(
        broken.clone(),
        (info_of(&broken, &nar, &[]).info, nar.clone()),
    );
    let mut s = Script::new(v(34));
    s.req(&WorkerRequest::NarFromPath(broken.clone()))
        .req(&WorkerRequest::IsValidPath(broken.clone()));
    let (res, mut o) = s.run(&mut fake, &opts(true));
    assert!(matches!(
        res,
        Err(WorkerError::Handler {
            op: Op::NarFromPath,
            source: FakeError::Asked
        })
    ));
    o.greeting();
    o.ok();
    let mut part = vec![0; 8];
    o.r().read_exact(&mut part).unwrap();
    assert_eq!(part, nar[..8]);
    o.done();
}

#[test]
fn add_to_store_nar_partly_read_or_failing() {
    for minor in MINORS {
        let ver = v(minor);
        for (read, fail) in [(Some(5), false), (Some(5), true), (None, true)] {
            let (mut fake, a, _) = Fake::with_paths();
            fake.nar_read = read;
            fake.nar_fail = fail;
            let nar = nar_of_text("a NAR the handler does not finish");
            let info = info_of(&sp("new", 4), &nar, &[]);
            let mut s = Script::new(ver);
            s.req(&WorkerRequest::AddToStoreNar {
                info,
                repair: false,
                dont_check_sigs: false,
            })
            .nar(&nar)
            .req(&WorkerRequest::IsValidPath(a.clone()));
            let (res, mut o) = s.run(&mut fake, &opts(true));
            res.unwrap_or_else(|e| panic!("{ver} {read:?} {fail}: {e}"));
            o.greeting();
            let (res, _) = o.work_with_reads();
            assert_eq!(res.is_err(), fail, "{ver}");
            o.ok();
            assert!(read_bool(o.r(), "valid").unwrap());
            o.done();
        }
    }
}

#[test]
fn add_to_store_nar_shorter_than_announced() {
    // The client announces more than it sends: the handler sees an early end (an error for
    // the client), the session goes on after the payload.
    let (mut fake, a, _) = Fake::with_paths();
    let nar = nar_of_text("short");
    let mut info = info_of(&sp("new", 4), &nar, &[]);
    info.info.nar_size += 10;
    let mut s = Script::new(v(34));
    s.req(&WorkerRequest::AddToStoreNar {
        info,
        repair: false,
        dont_check_sigs: false,
    })
    .nar(&nar)
    .req(&WorkerRequest::IsValidPath(a));
    let (res, mut o) = s.run(&mut fake, &opts(true));
    res.unwrap();
    o.greeting();
    let (res, _) = o.work();
    assert!(res.unwrap_err().message.contains("reading data"));
    o.ok();
    assert!(read_bool(o.r(), "valid").unwrap());
    o.done();
}

#[test]
fn add_multiple_to_store_partial_and_malformed() {
    let (mut fake, a, _) = Fake::with_paths();
    fake.nar_read = Some(3);
    let m1_nar = nar_of_text("m1");
    let m1 = info_of(&sp("m1", 5), &m1_nar, &[]);
    let m2_nar = nar_of_text("m2");
    let m2 = info_of(&sp("m2", 6), &m2_nar, &[]);
    let mut s = Script::new(v(34));
    s.req(&WorkerRequest::AddMultipleToStore {
        repair: false,
        dont_check_sigs: false,
    });
    let mut mw = MultiplePathsWriter::new(&mut s.input, &dir(), 2).unwrap();
    mw.add(&m1, &mut &m1_nar[..]).unwrap();
    mw.add(&m2, &mut &m2_nar[..]).unwrap();
    mw.finish().unwrap();
    // Well framed, but the path info inside is garbage: an error, the session goes on.
    s.req(&WorkerRequest::AddMultipleToStore {
        repair: false,
        dont_check_sigs: false,
    });
    let mut body = Vec::new();
    write_u64(&mut body, 1).unwrap();
    push_bytes(&mut body, b"/tmp/not-a-store-path");
    write_framed(&mut s.input, &mut &body[..]).unwrap();
    s.req(&WorkerRequest::IsValidPath(a.clone()));
    let (res, mut o) = s.run(&mut fake, &opts(true));
    res.unwrap();
    o.greeting();
    o.ok();
    assert_eq!(fake.calls.iter().filter(|c| c.starts_with("  ")).count(), 2);
    let (res, _) = o.work();
    assert!(res.unwrap_err().message.contains("bad stream of paths"));
    o.ok();
    assert!(read_bool(o.r(), "valid").unwrap());
    o.done();

    // A framed stream cut short: the session ends.
    let mut s = Script::new(v(34));
    s.req(&WorkerRequest::AddMultipleToStore {
        repair: false,
        dont_check_sigs: false,
    });
    write_u64(&mut s.input, 100).unwrap();
    s.raw(b"short");
    let (res, _) = s.run(&mut Fake::default(), &opts(true));
    assert!(
        matches!(
            res,
            Err(WorkerError::Payload {
                op: Op::AddMultipleToStore,
                ..
            })
        ),
        "{res:?}"
    );
}

#[test]
fn untrusted_clients() {
    let ver = v(34);
    let (mut fake, a, _) = Fake::with_paths();
    let nar = nar_of_text("untrusted");
    let mut info = info_of(&sp("new", 4), &nar, &[]);
    info.info.ultimate = true;
    let m_nar = nar_of_text("m");
    let mut m = info_of(&sp("m", 5), &m_nar, &[]);
    m.info.ultimate = true;
    let mut options = ClientOptions::default();
    for (k, val) in [
        ("sandbox", "false"),
        ("timeout", "5"),
        ("builders", ""),
        ("substituters", "https://cache"),
        ("experimental-features", "nix-command"),
    ] {
        options.overrides.insert(k.into(), val.into());
    }
    let mut s = Script::new(ver);
    s.req(&WorkerRequest::SetOptions(options))
        .req(&WorkerRequest::AddToStoreNar {
            info: info.clone(),
            repair: false,
            dont_check_sigs: true,
        })
        .nar(&nar)
        .req(&WorkerRequest::AddMultipleToStore {
            repair: false,
            dont_check_sigs: true,
        });
    let mut mw = MultiplePathsWriter::new(&mut s.input, &dir(), 1).unwrap();
    mw.add(&m, &mut &m_nar[..]).unwrap();
    mw.finish().unwrap();
    s.req(&WorkerRequest::AddSignatures {
        path: a.clone(),
        sigs: ["k:s".to_owned()].into(),
    })
    .req(&WorkerRequest::AddBuildLog(sp("x.drv", 9)));
    write_framed(&mut s.input, &mut &b"log"[..]).unwrap();
    s.req(&WorkerRequest::BuildDerivation {
        drv_path: sp("x.drv", 9),
        drv: trivial_drv(&sp("x", 9), "/bin/sh"),
        mode: BuildMode::Normal,
    })
    .req(&WorkerRequest::BuildDerivation {
        drv_path: sp("ca.drv", 9),
        drv: ca_drv("/bin/sh"),
        mode: BuildMode::Normal,
    })
    .req(&WorkerRequest::IsValidPath(a.clone()));
    let (res, mut o) = s.run(&mut fake, &opts(false));
    res.unwrap();
    let hello = o.greeting();
    assert_eq!(hello.trusted, None, "1.34 has no trust flag");
    o.ok();
    assert_eq!(
        fake.options
            .as_ref()
            .unwrap()
            .overrides
            .keys()
            .collect::<Vec<_>>(),
        ["builders", "substituters", "timeout"]
    );
    o.ok();
    assert!(fake.calls.contains(&format!(
        "add {} repair=false dontCheckSigs=false ultimate=false",
        info.path
    )));
    o.ok();
    assert!(fake
        .calls
        .contains(&"add-multiple 1 repair=false dontCheckSigs=false".to_owned()));
    assert!(fake.calls.contains(&format!("  {} ultimate=false", m.path)));
    for want in ["add signatures", "add logs", "input-addressed"] {
        let (res, _) = o.work();
        assert!(res.unwrap_err().message.contains(want), "{want}");
    }
    assert!(!fake.paths[&a].0.sigs.contains("k:s"));
    assert!(fake.logs.is_empty());
    // A content-addressed derivation may be built.
    o.ok();
    assert_eq!(
        read_build_result(o.r(), ver, &L).unwrap().status,
        BuildStatus::Built
    );
    o.ok();
    assert!(read_bool(o.r(), "valid").unwrap());
    o.done();

    // Repairs and permanent roots end the session, as in Nix's daemon.
    for req in [
        WorkerRequest::BuildPaths {
            paths: vec![DerivedPath::Opaque(a.clone())],
            mode: BuildMode::Repair,
        },
        WorkerRequest::BuildPathsWithResults {
            paths: vec![DerivedPath::Opaque(a.clone())],
            mode: BuildMode::Repair,
        },
        WorkerRequest::AddPermRoot {
            path: a.clone(),
            gc_root: "/r".into(),
        },
    ] {
        let mut s = Script::new(v(38));
        s.req(&req).req(&WorkerRequest::IsValidPath(a.clone()));
        let (res, mut o) = s.run(&mut Fake::default(), &opts(false));
        assert!(
            matches!(res, Err(WorkerError::NotAllowed { op, .. }) if op == req.op()),
            "{res:?}"
        );
        assert_eq!(o.greeting().trusted, Some(false));
        let (res, _) = o.work();
        assert!(res.is_err());
        o.done();
    }
}

#[test]
fn unknown_and_unsupported_operations_end_the_session() {
    for (op, want) in [
        (2u64, "invalid operation 2"),
        (35, "VerifyStore (35)"),
        (1000, "invalid operation 1000"),
    ] {
        let mut s = Script::new(v(34));
        write_u64(&mut s.input, op).unwrap();
        s.req(&WorkerRequest::SyncWithGC);
        let (res, mut o) = s.run(&mut Fake::default(), &opts(true));
        match (op, res) {
            (35, Err(WorkerError::UnsupportedOp(Op::VerifyStore))) => {}
            (n, Err(WorkerError::UnknownOp(m))) if n == m => {}
            (_, res) => panic!("{op}: {res:?}"),
        }
        o.greeting();
        let (res, _) = o.work();
        assert!(res.unwrap_err().message.contains(want), "{op}");
        o.done();
    }
}

#[test]
fn malformed_arguments_end_the_session() {
    let mut s = Script::new(v(34));
    write_u64(&mut s.input, 1).unwrap();
    push_bytes(&mut s.input, b"/tmp/evil");
    let (res, mut o) = s.run(&mut Fake::default(), &opts(true));
    assert!(matches!(
        res,
        Err(WorkerError::Request {
            op: Some(Op::IsValidPath),
            source: WireError::BadStorePath { .. }
        })
    ));
    o.greeting();
    let (res, _) = o.work();
    assert!(res.unwrap_err().message.contains("/tmp/evil"));
    o.done();
    // A huge count.
    let mut s = Script::new(v(34));
    write_u64(&mut s.input, 31).unwrap();
    write_u64(&mut s.input, u64::MAX).unwrap();
    let (res, _) = s.run(&mut Fake::default(), &opts(true));
    assert!(matches!(
        res,
        Err(WorkerError::Request {
            source: WireError::TooLong { .. },
            ..
        })
    ));
}

#[test]
fn truncated_input() {
    let (fake, a, b) = Fake::with_paths();
    let nar = nar_of_text("t");
    let info = info_of(&sp("t", 4), &nar, &[]);
    let mut s = Script::new(v(34));
    let start = s.input.len();
    s.req(&WorkerRequest::SetOptions(ClientOptions::default()))
        .req(&WorkerRequest::QueryValidPaths {
            paths: [a.clone(), b.clone()].into(),
            substitute: false,
        })
        .req(&WorkerRequest::AddToStoreNar {
            info,
            repair: false,
            dont_check_sigs: false,
        })
        .nar(&nar)
        .req(&WorkerRequest::BuildDerivation {
            drv_path: sp("x.drv", 9),
            drv: trivial_drv(&sp("x", 9), "/bin/sh"),
            mode: BuildMode::Normal,
        });
    let full = s.input.clone();
    for cut in start..full.len() {
        s.input = full[..cut].to_vec();
        let mut f = Fake {
            paths: fake.paths.clone(),
            ..Fake::default()
        };
        let (res, _) = s.run(&mut f, &opts(true));
        match res {
            Ok(()) => {}
            Err(WorkerError::Request { source, .. }) => assert!(source.is_eof(), "{cut}: {source}"),
            Err(WorkerError::Payload { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof, "{cut}")
            }
            Err(e) => panic!("{cut}: {e}"),
        }
    }
    // Cut inside the greeting.
    for cut in 0..start {
        s.input = full[..cut].to_vec();
        let (res, _) = s.run(&mut Fake::default(), &opts(true));
        assert!(matches!(res, Err(WorkerError::Handshake(_))), "{cut}");
    }
}

#[test]
fn logger_refuses_control_messages_and_reports_a_gone_client() {
    struct Misbehaving;
    impl Misbehaving {
        fn check(log: &mut dyn Logger) {
            for m in [
                StderrMsg::Last,
                StderrMsg::Read(1),
                StderrMsg::Write(vec![1]),
                StderrMsg::Error(ErrorInfo::new("x")),
            ] {
                assert_eq!(log.log(m).unwrap_err().kind(), io::ErrorKind::InvalidInput);
            }
        }
    }
    let (mut fake, a, _) = Fake::with_paths();
    let mut s = Script::new(v(34));
    s.req(&WorkerRequest::SetOptions(ClientOptions::default()))
        .req(&WorkerRequest::IsValidPath(a));
    // Run with a wrapper handler that checks the logger in set_options.
    struct Wrap<'a>(&'a mut Fake);
    impl WorkerHandler for Wrap<'_> {
        type Error = FakeError;
        fn set_options(
            &mut self,
            o: &ClientOptions,
            log: &mut dyn Logger,
        ) -> Result<(), FakeError> {
            Misbehaving::check(log);
            self.0.set_options(o, log)
        }
        fn is_valid_path(&mut self, p: &StorePath) -> Result<bool, FakeError> {
            self.0.is_valid_path(p)
        }
        fn query_valid_paths(
            &mut self,
            p: &BTreeSet<StorePath>,
            s: bool,
            l: &mut dyn Logger,
        ) -> Result<BTreeSet<StorePath>, FakeError> {
            self.0.query_valid_paths(p, s, l)
        }
        fn query_path_info(&mut self, p: &StorePath) -> Result<Option<UnkeyedPathInfo>, FakeError> {
            self.0.query_path_info(p)
        }
        fn query_referrers(&mut self, p: &StorePath) -> Result<BTreeSet<StorePath>, FakeError> {
            self.0.query_referrers(p)
        }
        fn add_to_store(
            &mut self,
            name: &str,
            method: CaMethod,
            refs: &BTreeSet<StorePath>,
            repair: bool,
            data: &mut dyn Read,
            log: &mut dyn Logger,
        ) -> Result<PathInfo, FakeError> {
            self.0.add_to_store(name, method, refs, repair, data, log)
        }
        fn add_text_to_store(
            &mut self,
            name: &str,
            text: &str,
            refs: &BTreeSet<StorePath>,
        ) -> Result<StorePath, FakeError> {
            self.0.add_text_to_store(name, text, refs)
        }
        fn query_valid_derivers(
            &mut self,
            p: &StorePath,
        ) -> Result<BTreeSet<StorePath>, FakeError> {
            self.0.query_valid_derivers(p)
        }
        fn find_roots(&mut self, censor: bool) -> Result<Vec<(String, StorePath)>, FakeError> {
            self.0.find_roots(censor)
        }
        fn collect_garbage(
            &mut self,
            action: GcAction,
            paths: &BTreeSet<StorePath>,
            max_freed: Option<u64>,
            log: &mut dyn Logger,
        ) -> Result<(Vec<StorePath>, u64), FakeError> {
            self.0.collect_garbage(action, paths, max_freed, log)
        }
        fn query_all_valid_paths(&mut self) -> Result<BTreeSet<StorePath>, FakeError> {
            self.0.query_all_valid_paths()
        }
        fn query_path_from_hash_part(&mut self, h: &str) -> Result<Option<StorePath>, FakeError> {
            self.0.query_path_from_hash_part(h)
        }
        fn query_derivation_output_map(
            &mut self,
            p: &StorePath,
        ) -> Result<BTreeMap<String, Option<StorePath>>, FakeError> {
            self.0.query_derivation_output_map(p)
        }
        fn query_missing(&mut self, t: &[DerivedPath]) -> Result<Missing, FakeError> {
            self.0.query_missing(t)
        }
        fn add_temp_root(&mut self, p: &StorePath) -> Result<(), FakeError> {
            self.0.add_temp_root(p)
        }
        fn add_indirect_root(&mut self, l: &str) -> Result<(), FakeError> {
            self.0.add_indirect_root(l)
        }
        fn add_perm_root(&mut self, p: &StorePath, r: &str) -> Result<String, FakeError> {
            self.0.add_perm_root(p, r)
        }
        fn ensure_path(&mut self, p: &StorePath, l: &mut dyn Logger) -> Result<(), FakeError> {
            self.0.ensure_path(p, l)
        }
        fn build_paths(
            &mut self,
            t: &[DerivedPath],
            m: BuildMode,
            l: &mut dyn Logger,
        ) -> Result<(), FakeError> {
            self.0.build_paths(t, m, l)
        }
        fn build_paths_with_results(
            &mut self,
            t: &[DerivedPath],
            m: BuildMode,
            l: &mut dyn Logger,
        ) -> Result<Vec<KeyedBuildResult>, FakeError> {
            self.0.build_paths_with_results(t, m, l)
        }
        fn build_derivation(
            &mut self,
            p: &StorePath,
            d: &Derivation,
            m: BuildMode,
            l: &mut dyn Logger,
        ) -> Result<BuildResult, FakeError> {
            self.0.build_derivation(p, d, m, l)
        }
        fn nar_from_path(&mut self, p: &StorePath, o: &mut dyn Write) -> Result<(), FakeError> {
            self.0.nar_from_path(p, o)
        }
        fn add_to_store_nar(
            &mut self,
            i: &PathInfo,
            r: bool,
            d: bool,
            n: &mut dyn Read,
            l: &mut dyn Logger,
        ) -> Result<(), FakeError> {
            self.0.add_to_store_nar(i, r, d, n, l)
        }
        fn add_multiple_to_store(
            &mut self,
            r: bool,
            d: bool,
            p: &mut IncomingPaths<'_>,
            l: &mut dyn Logger,
        ) -> Result<(), FakeError> {
            self.0.add_multiple_to_store(r, d, p, l)
        }
        fn add_signatures(&mut self, p: &StorePath, s: &BTreeSet<String>) -> Result<(), FakeError> {
            self.0.add_signatures(p, s)
        }
        fn add_build_log(&mut self, p: &StorePath, d: &mut dyn Read) -> Result<(), FakeError> {
            self.0.add_build_log(p, d)
        }
    }
    let mut out = Vec::new();
    serve_worker(
        &mut Wrap(&mut fake),
        Cursor::new(&s.input),
        &mut out,
        &opts(true),
    )
    .unwrap();
    assert!(fake.options.is_some());

    // A client that goes away while the handler logs: the session ends with a write error.
    struct Breaks(usize);
    impl Write for Breaks {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.0 < b.len() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"));
            }
            self.0 -= b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut s = Script::new(v(34));
    s.req(&WorkerRequest::BuildPaths {
        paths: vec![DerivedPath::Opaque(sp("a", 1))],
        mode: BuildMode::Normal,
    });
    // Enough room for the greeting only.
    let greeting_len = 8 + 8 + 8 + 8 + 8;
    let (mut fake, _, _) = Fake::with_paths();
    let res = serve_worker(
        &mut fake,
        Cursor::new(&s.input),
        Breaks(greeting_len),
        &opts(true),
    );
    assert!(
        matches!(
            res,
            Err(WorkerError::Write {
                op: Some(Op::BuildPaths),
                ..
            })
        ),
        "{res:?}"
    );
}

#[test]
fn error_info_names_the_causes() {
    let e = FakeError::Io(io::Error::other("disk on fire"));
    let info = Fake::error_info(&e);
    assert_eq!(info.message, "reading data: disk on fire");
    assert_eq!(info.exit_status, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_after_the_greeting_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..512),
        which in 0usize..MINORS.len(),
        trusted: bool,
    ) {
        let ver = v(MINORS[which]);
        let mut s = Script::new(ver);
        s.raw(&tail);
        let (mut fake, _, _) = Fake::with_paths();
        let _ = s.run(&mut fake, &opts(trusted));
    }

    #[test]
    fn valid_operations_then_garbage_never_panic(
        ops in prop::collection::vec(0usize..6, 0..6),
        tail in prop::collection::vec(any::<u8>(), 0..128),
        small_op in 0u64..50,
    ) {
        let (mut fake, a, b) = Fake::with_paths();
        let mut s = Script::new(v(34));
        for o in ops {
            match o {
                0 => { s.req(&WorkerRequest::IsValidPath(a.clone())); }
                1 => { s.req(&WorkerRequest::QueryPathInfo(b.clone())); }
                2 => { s.req(&WorkerRequest::NarFromPath(a.clone())); }
                3 => { s.req(&WorkerRequest::AddBuildLog(b.clone())); write_framed(&mut s.input, &mut &tail[..]).unwrap(); }
                4 => { s.req(&WorkerRequest::SetOptions(ClientOptions::default())); }
                _ => { s.req(&WorkerRequest::EnsurePath(sp("nope", 3))); }
            }
        }
        write_u64(&mut s.input, small_op).unwrap();
        s.raw(&tail);
        let _ = s.run(&mut fake, &opts(true));
    }
}

#[test]
fn content_addressed_paths_are_added_from_their_framed_contents() {
    let (mut fake, a, _) = Fake::with_paths();
    let d = dir();
    for (trusted, repair) in [(true, false), (true, true), (false, false), (false, true)] {
        let mut s = Script::new(v(34));
        s.req(&WorkerRequest::AddToStore {
            name: "t".into(),
            method: CaMethod::Text,
            refs: BTreeSet::from([a.clone()]),
            repair,
        });
        write_framed(&mut s.input, &mut &b"some text"[..]).unwrap();
        s.req(&WorkerRequest::AddToStore {
            name: "f".into(),
            method: CaMethod::Fixed {
                method: FileIngestionMethod::Flat,
                algo: HashAlgo::Sha1,
            },
            refs: BTreeSet::new(),
            repair: false,
        });
        write_framed(&mut s.input, &mut &b"flat"[..]).unwrap();
        s.req(&WorkerRequest::AddTextToStore {
            name: "old".into(),
            text: "old text".into(),
            refs: BTreeSet::new(),
        })
        .req(&WorkerRequest::QueryValidDerivers(a.clone()));
        let (res, mut o) = s.run(&mut fake, &opts(trusted));
        res.unwrap();
        o.greeting();
        let text_path = d
            .make_text_path("t", &Hash::sha256(b"some text"), [&a])
            .unwrap();
        if repair && !trusted {
            // Refused, and the next request still starts after the contents.
            let (res, _) = o.work();
            assert!(res.unwrap_err().message.contains("trusted-users"));
        } else {
            o.ok();
            let info = PathInfo::read(o.r(), FULL, &d, &L).unwrap();
            assert_eq!(info.path, text_path);
            assert_eq!(info.info.references, BTreeSet::from([a.clone()]));
        }
        o.ok();
        let info = PathInfo::read(o.r(), FULL, &d, &L).unwrap();
        let mut h = ferrix_format::hash::Hasher::new(HashAlgo::Sha1);
        h.update(b"flat");
        let ca = ContentAddress::Fixed {
            method: FileIngestionMethod::Flat,
            hash: h.finish(),
        };
        assert_eq!(info.path, d.make_ca_path("f", &ca, [], false).unwrap());
        o.ok();
        assert_eq!(
            read_store_path(o.r(), &d, &L, "path").unwrap(),
            d.make_text_path("old", &Hash::sha256(b"old text"), [])
                .unwrap()
        );
        o.ok();
        assert!(read_store_path_set(o.r(), &d, &L, "derivers")
            .unwrap()
            .is_empty());
        o.done();
    }
}

#[test]
fn add_to_store_from_clients_before_1_25_is_refused_by_name() {
    let (mut fake, _, _) = Fake::with_paths();
    let mut s = Script::new(v(24));
    // The old form: a base name, flags, then an unframed NAR.
    write_u64(&mut s.input, 7).unwrap();
    write_str(&mut s.input, "x").unwrap();
    let (res, mut o) = s.run(&mut fake, &opts(true));
    assert!(res.is_err());
    o.greeting();
    let (res, _) = o.work();
    assert!(res.unwrap_err().message.contains("AddToStore"));
}

#[test]
fn garbage_is_collected_and_roots_found_through_the_session() {
    let d = dir();
    for trusted in [true, false] {
        let (mut fake, a, b) = Fake::with_paths();
        fake.gc_roots.push(("/home/u/result".into(), a.clone()));
        let mut s = Script::new(v(34));
        s.req(&WorkerRequest::FindRoots)
            .req(&WorkerRequest::CollectGarbage {
                action: GcAction::ReturnDead,
                paths: BTreeSet::new(),
                ignore_liveness: false,
                max_freed: u64::MAX,
            })
            .req(&WorkerRequest::CollectGarbage {
                action: GcAction::DeleteSpecific,
                paths: [b.clone()].into(),
                ignore_liveness: true,
                max_freed: 10,
            })
            .req(&WorkerRequest::CollectGarbage {
                action: GcAction::DeleteDead,
                paths: BTreeSet::new(),
                ignore_liveness: false,
                max_freed: 10,
            });
        let (res, mut o) = s.run(&mut fake, &opts(trusted));
        res.unwrap();
        o.greeting();
        o.ok();
        assert_eq!(read_u64(o.r(), "count").unwrap(), 1);
        assert_eq!(read_string(o.r(), &L, "link").unwrap(), "/home/u/result");
        assert_eq!(read_store_path(o.r(), &d, &L, "root").unwrap(), a);
        o.ok();
        assert_eq!(
            read_string_set(o.r(), &L, "dead").unwrap(),
            BTreeSet::from([d.display(&b)])
        );
        assert_eq!(read_u64(o.r(), "freed").unwrap(), 0);
        assert_eq!(read_u64(o.r(), "obsolete").unwrap(), 0);
        // Liveness is never ignored through a daemon; the session goes on.
        let (res, _) = o.work();
        assert!(res.unwrap_err().message.contains("ignore liveness"));
        o.ok();
        read_string_set(o.r(), &L, "deleted").unwrap();
        read_u64(o.r(), "freed").unwrap();
        read_u64(o.r(), "obsolete").unwrap();
        o.done();
        assert!(fake
            .calls
            .contains(&format!("find-roots censor={}", !trusted)));
        assert!(fake
            .calls
            .contains(&"gc DeleteDead 0 max=Some(10)".to_owned()));
    }
}
