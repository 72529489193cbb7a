//! Round trips per message and version, exact bytes from the facts, and arbitrary input.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use ferrix_format::content_address::{ContentAddress, FileIngestionMethod};
use ferrix_format::hash::{Hash, HashAlgo};
use ferrix_format::wire::push_bytes;
use ferrix_format::{Derivation, DerivationOutput, StoreDir, StorePath};
use proptest::prelude::*;

use super::build_result::read_derived_paths;
use super::payload::{write_framed, MultiplePathsReader, MultiplePathsWriter};
use super::reply::{
    read_missing, read_output_map, read_path_info_reply, write_missing, write_output_map,
    write_path_info_reply, Missing,
};
use super::stderr::{activity, result_type, verbosity};
use super::*;
use crate::wire::{Limits, WireError};

const L: Limits = Limits::DEFAULT;

fn v(minor: u8) -> Version {
    Version::new(1, minor)
}

/// The versions tests run at: the oldest accepted, every gate, Nix 2.8's, and the newest.
const MINORS: [u8; 15] = [18, 19, 20, 21, 22, 23, 25, 26, 27, 28, 29, 30, 34, 37, 38];

fn dir() -> StoreDir {
    StoreDir::default()
}

fn sp(base: &str) -> StorePath {
    StorePath::from_base_name(base).unwrap()
}

const BAR: &str = "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar";
const FOO: &str = "n5wkd9frr45pa74if5gpz9j7mifg27fh-foo";
const DRV: &str = "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv";

/// Expected bytes, built field by field from the facts.
#[derive(Default)]
struct B(Vec<u8>);

impl B {
    fn n(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }
    fn s(mut self, s: &str) -> Self {
        push_bytes(&mut self.0, s.as_bytes());
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

fn full(base: &str) -> String {
    format!("/nix/store/{base}")
}

// ---------------------------------------------------------------------------------------------
// Operations

#[test]
fn ops() {
    for op in Op::ALL {
        assert_eq!(Op::from_u64(op.number()), Some(op));
    }
    assert_eq!(Op::from_u64(2), None);
    assert_eq!(Op::from_u64(48), None);
    assert_eq!(Op::BuildPathsWithResults.number(), 46);
    assert_eq!(Op::AddToStoreNar.to_string(), "AddToStoreNar (39)");
}

// ---------------------------------------------------------------------------------------------
// Log messages

fn all_messages() -> Vec<StderrMsg> {
    vec![
        StderrMsg::Next("building...\n".into()),
        StderrMsg::Read(32768),
        StderrMsg::Write(b"\x00\xffdata".to_vec()),
        StderrMsg::Last,
        StderrMsg::Error(ErrorInfo {
            level: verbosity::ERROR,
            message: "builder failed".into(),
            traces: vec!["while building x".into(), "while y".into()],
            exit_status: 100,
        }),
        StderrMsg::StartActivity {
            id: 7,
            level: verbosity::INFO,
            kind: activity::BUILD,
            text: "building '/nix/store/x.drv'".into(),
            fields: vec![Field::Str("/nix/store/x.drv".into()), Field::Int(1)],
            parent: 3,
        },
        StderrMsg::StopActivity(7),
        StderrMsg::Result {
            id: 7,
            kind: result_type::BUILD_LOG_LINE,
            fields: vec![Field::Str("hi".into())],
        },
    ]
}

/// What a message reads back as after being written for `version`.
fn downgraded(m: &StderrMsg, version: Version) -> Option<StderrMsg> {
    match m {
        StderrMsg::Error(e) if version < v(26) => Some(StderrMsg::Error(ErrorInfo {
            level: 0,
            message: e.message.clone(),
            traces: vec![],
            exit_status: e.exit_status,
        })),
        StderrMsg::Error(e) => Some(StderrMsg::Error(ErrorInfo {
            exit_status: 1,
            ..e.clone()
        })),
        StderrMsg::StartActivity { text, .. } if version < v(20) => {
            Some(StderrMsg::Next(format!("{text}...\n")))
        }
        StderrMsg::StopActivity(_) | StderrMsg::Result { .. } if version < v(20) => None,
        m => Some(m.clone()),
    }
}

#[test]
fn stderr_round_trip_per_version() {
    for minor in MINORS {
        let ver = v(minor);
        for m in all_messages() {
            let mut buf = Vec::new();
            write_stderr(&mut buf, ver, &m).unwrap();
            match downgraded(&m, ver) {
                None => assert!(buf.is_empty(), "{ver} {m:?}"),
                Some(want) => {
                    let mut r = &buf[..];
                    assert_eq!(read_stderr(&mut r, ver, &L).unwrap(), want, "{ver}");
                    assert!(r.is_empty(), "{ver} {m:?}");
                    for cut in 0..buf.len() {
                        assert!(read_stderr(&mut &buf[..cut], ver, &L).is_err());
                    }
                }
            }
        }
    }
    // An activity without text says nothing at all to an old client.
    let mut buf = Vec::new();
    let m = StderrMsg::StartActivity {
        id: 1,
        level: 0,
        kind: 0,
        text: String::new(),
        fields: vec![],
        parent: 0,
    };
    write_stderr(&mut buf, v(19), &m).unwrap();
    assert!(buf.is_empty());
}

#[test]
fn stderr_exact_bytes() {
    let mut buf = Vec::new();
    write_stderr(&mut buf, v(34), &StderrMsg::Next("hi\n".into())).unwrap();
    assert_eq!(buf, B::default().n(0x6f6c6d67).s("hi\n").0);

    // The serialised Error of 10.5.
    let e = ErrorInfo {
        level: 0,
        message: "boom".into(),
        traces: vec!["t1".into()],
        exit_status: 1,
    };
    let mut buf = Vec::new();
    write_stderr(&mut buf, v(26), &StderrMsg::Error(e.clone())).unwrap();
    let want = B::default()
        .n(0x63787470)
        .s("Error")
        .n(0)
        .s("Error")
        .s("boom")
        .n(0)
        .n(1)
        .n(0)
        .s("t1");
    assert_eq!(buf, want.0);
    // Before 1.26: message and exit status.
    let mut buf = Vec::new();
    let e = ErrorInfo {
        exit_status: 101,
        ..e
    };
    write_stderr(&mut buf, v(25), &StderrMsg::Error(e)).unwrap();
    assert_eq!(buf, B::default().n(0x63787470).s("boom").n(101).0);

    let mut buf = Vec::new();
    write_stderr(
        &mut buf,
        v(20),
        &StderrMsg::StartActivity {
            id: 5,
            level: 3,
            kind: 105,
            text: "b".into(),
            fields: vec![Field::Int(9), Field::Str("s".into())],
            parent: 0,
        },
    )
    .unwrap();
    let want = B::default()
        .n(0x53545254)
        .n(5)
        .n(3)
        .n(105)
        .s("b")
        .n(2)
        .n(0)
        .n(9)
        .n(1)
        .s("s")
        .n(0);
    assert_eq!(buf, want.0);

    let mut buf = Vec::new();
    write_stderr(&mut buf, v(34), &StderrMsg::Last).unwrap();
    assert_eq!(buf, 0x616c7473u64.to_le_bytes());
}

#[test]
fn stderr_bad_input() {
    let e = read_stderr(&mut &B::default().n(0x1234).0[..], v(34), &L).unwrap_err();
    assert!(
        matches!(e, WireError::UnexpectedValue { what: "log message tag", ref value } if value == "0x1234"),
        "{e}"
    );
    let bad_field = B::default().n(0x52534c54).n(1).n(101).n(1).n(2).n(0);
    assert!(matches!(
        read_stderr(&mut &bad_field.0[..], v(34), &L).unwrap_err(),
        WireError::UnexpectedValue {
            what: "type of a log field",
            ..
        }
    ));
    let bad_kind = B::default().n(0x63787470).s("Oops");
    assert!(read_stderr(&mut &bad_kind.0[..], v(34), &L).is_err());
    let with_pos = B::default()
        .n(0x63787470)
        .s("Error")
        .n(0)
        .s("Error")
        .s("m")
        .n(1);
    assert!(matches!(
        read_stderr(&mut &with_pos.0[..], v(34), &L).unwrap_err(),
        WireError::UnexpectedValue {
            what: "position flag of an error",
            ..
        }
    ));
    // Log text that is not UTF-8 is read lossily, not refused.
    let mut b = B::default().n(0x6f6c6d67);
    push_bytes(&mut b.0, b"a\xffb\n");
    assert_eq!(
        read_stderr(&mut &b.0[..], v(34), &L).unwrap(),
        StderrMsg::Next("a\u{fffd}b\n".into())
    );
    // Huge counts and lengths are refused before anything is allocated.
    let huge = B::default().n(0x52534c54).n(1).n(101).n(u64::MAX);
    assert!(matches!(
        read_stderr(&mut &huge.0[..], v(34), &L).unwrap_err(),
        WireError::TooLong { .. }
    ));
    let huge = B::default().n(0x6f6c6d67).n(u64::MAX);
    assert!(matches!(
        read_stderr(&mut &huge.0[..], v(34), &L).unwrap_err(),
        WireError::TooLong { .. }
    ));
}

#[test]
fn process_stderr_drives_the_work() {
    // Log lines, a data request answered from the source, then the end.
    let server = B::default()
        .n(0x6f6c6d67)
        .s("line\n")
        .n(0x64617461)
        .n(4)
        .n(0x64617461)
        .n(100)
        .n(0x52534c54)
        .n(1)
        .n(101)
        .n(1)
        .n(1)
        .s("hi")
        .n(0x616c7473)
        .s("reply");
    let mut r = &server.0[..];
    let mut out = Vec::new();
    let mut logs = Vec::new();
    let mut src = &b"abcdefg"[..];
    let res = process_stderr(&mut r, &mut out, v(34), &L, Some(&mut src), &mut |m| {
        logs.push(m)
    })
    .unwrap();
    assert_eq!(res, Ok(()));
    assert_eq!(out, B::default().s("abcd").s("efg").0);
    assert_eq!(logs.len(), 2);
    assert_eq!(r, B::default().s("reply").0);

    // An error ends the work.
    let server = B::default().n(0x63787470).s("nope").n(1);
    let res = process_stderr(
        &mut &server.0[..],
        &mut Vec::new(),
        v(25),
        &L,
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(res.unwrap_err().message, "nope");

    // A data request without a source is a protocol error.
    let server = B::default().n(0x64617461).n(4);
    let e = process_stderr(
        &mut &server.0[..],
        &mut Vec::new(),
        v(34),
        &L,
        None,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(e, WireError::UnexpectedValue { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Handshake start-up

#[test]
fn startup_both_sides() {
    for minor in [18, 33, 34, 35, 38] {
        let ver = v(minor);
        let mut out = Vec::new();
        server_startup(&mut out, ver, &[StderrMsg::Next("welcome\n".into())]).unwrap();
        let mut lines = Vec::new();
        let res = client_startup(&mut &out[..], &mut Vec::new(), ver, &L, &mut |m| {
            lines.push(m)
        })
        .unwrap();
        assert_eq!(res, Ok(()));
        assert_eq!(lines, [StderrMsg::Next("welcome\n".into())]);

        let mut out = Vec::new();
        server_startup(
            &mut out,
            ver,
            &[StderrMsg::Error(ErrorInfo::new("not allowed"))],
        )
        .unwrap();
        let res = client_startup(&mut &out[..], &mut Vec::new(), ver, &L, &mut |_| {}).unwrap();
        assert_eq!(res.unwrap_err().message, "not allowed");
    }
    let mut out = Vec::new();
    server_startup(&mut out, v(34), &[]).unwrap();
    assert_eq!(out, 0x616c7473u64.to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Path infos

fn sample_info() -> UnkeyedPathInfo {
    UnkeyedPathInfo {
        deriver: Some(sp(DRV)),
        nar_hash: Hash::parse(
            "15e3c560894cbb27085cf65b5a2ecb18488c999497f4531b6907a7581ce6d527",
            Some(HashAlgo::Sha256),
        )
        .unwrap(),
        references: [sp(BAR), sp(FOO)].into(),
        registration_time: 23423,
        nar_size: 34878,
        ultimate: true,
        sigs: ["fake-sig-1:AAAA".to_owned(), "fake-sig-2:BBBB".to_owned()].into(),
        ca: Some(ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            hash: Hash::sha256(b"x"),
        }),
    }
}

#[test]
fn path_info_round_trip_and_bytes() {
    let info = sample_info();
    let keyed = PathInfo {
        path: sp(BAR),
        info: info.clone(),
    };
    for minor in [15, 16, 34] {
        let ver = v(minor);
        let mut buf = Vec::new();
        keyed.write(&mut buf, ver, &dir()).unwrap();
        let back = PathInfo::read(&mut &buf[..], ver, &dir(), &L).unwrap();
        let mut want = keyed.clone();
        if ver < v(16) {
            want.info.ultimate = false;
            want.info.sigs.clear();
            want.info.ca = None;
        }
        assert_eq!(back, want, "{ver}");
        for cut in 0..buf.len() {
            assert!(PathInfo::read(&mut &buf[..cut], ver, &dir(), &L).is_err());
        }
    }
    // Exact bytes of the 1.16 form: the hash as bare base16.
    let mut buf = Vec::new();
    keyed.write(&mut buf, v(16), &dir()).unwrap();
    let want = B::default()
        .s(&full(BAR))
        .s(&full(DRV))
        .s("15e3c560894cbb27085cf65b5a2ecb18488c999497f4531b6907a7581ce6d527")
        .n(2)
        .s(&full(BAR))
        .s(&full(FOO))
        .n(23423)
        .n(34878)
        .n(1)
        .n(2)
        .s("fake-sig-1:AAAA")
        .s("fake-sig-2:BBBB")
        .s(&info.ca.as_ref().unwrap().to_string());
    assert_eq!(buf, want.0);
    // The hash is accepted in any form Nix parses.
    let mut b = B::default()
        .s("")
        .s(&Hash::sha256(b"n").to_sri())
        .n(0)
        .n(0)
        .n(8);
    let got = UnkeyedPathInfo::read(&mut &b.0[..], v(15), &dir(), &L).unwrap();
    assert_eq!(got.nar_hash, Hash::sha256(b"n"));
    b = B::default().s("").s("sha256:zz").n(0).n(0).n(8);
    assert!(matches!(
        UnkeyedPathInfo::read(&mut &b.0[..], v(15), &dir(), &L).unwrap_err(),
        WireError::BadHash { .. }
    ));
}

#[test]
fn query_path_info_reply() {
    let info = sample_info();
    for minor in [16, 17, 34] {
        let ver = v(minor);
        let mut buf = Vec::new();
        write_path_info_reply(&mut buf, ver, &dir(), Some(&info)).unwrap();
        let got = read_path_info_reply(&mut &buf[..], ver, &dir(), &L).unwrap();
        assert_eq!(got.unwrap().nar_hash, info.nar_hash);
        let mut buf = Vec::new();
        let res = write_path_info_reply(&mut buf, ver, &dir(), None);
        if ver >= v(17) {
            res.unwrap();
            assert_eq!(buf, 0u64.to_le_bytes());
            assert_eq!(
                read_path_info_reply(&mut &buf[..], ver, &dir(), &L).unwrap(),
                None
            );
        } else {
            assert!(res.is_err());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Derived paths and build results

#[test]
fn derived_paths() {
    let d = dir();
    let drv = sp(DRV);
    let out = sp(BAR);
    let all = DerivedPath::Built {
        drv_path: drv.clone(),
        outputs: OutputsSpec::All,
    };
    let some = DerivedPath::Built {
        drv_path: drv.clone(),
        outputs: OutputsSpec::Names(["dev".to_owned(), "out".to_owned()].into()),
    };
    let opaque = DerivedPath::Opaque(out.clone());
    let opaque_drv = DerivedPath::Opaque(drv.clone());
    let new = v(30);
    let old = v(29);
    assert_eq!(all.to_wire(&d, new).unwrap(), format!("{}!*", full(DRV)));
    assert_eq!(all.to_wire(&d, old).unwrap(), full(DRV));
    assert_eq!(
        some.to_wire(&d, new).unwrap(),
        format!("{}!dev,out", full(DRV))
    );
    assert_eq!(some.to_wire(&d, old), some.to_wire(&d, new));
    assert_eq!(opaque.to_wire(&d, old).unwrap(), full(BAR));
    assert_eq!(opaque_drv.to_wire(&d, new).unwrap(), full(DRV));
    assert_eq!(opaque_drv.to_wire(&d, old), None);
    assert!(opaque_drv.write(&mut Vec::new(), old, &d).is_err());
    for ver in [old, new] {
        for p in [&all, &some, &opaque] {
            let s = p.to_wire(&d, ver).unwrap();
            assert_eq!(&DerivedPath::parse(&d, &s, ver).unwrap(), p, "{s} {ver}");
        }
    }
    assert_eq!(DerivedPath::parse(&d, &full(DRV), new).unwrap(), opaque_drv);
    assert_eq!(
        DerivedPath::parse(&d, &format!("{}!*", full(DRV)), old).unwrap(),
        all
    );
    for bad in [
        format!("{}!", full(DRV)),
        format!("{}!out,", full(DRV)),
        "/tmp/x!out".to_owned(),
        String::new(),
    ] {
        assert!(DerivedPath::parse(&d, &bad, new).is_err(), "{bad}");
    }
    assert_eq!(some.to_string(), format!("{DRV}!dev,out"));
    // An empty output set is written as all outputs.
    let empty = DerivedPath::Built {
        drv_path: drv,
        outputs: OutputsSpec::Names(BTreeSet::new()),
    };
    assert_eq!(empty.to_wire(&d, new), all.to_wire(&d, new));
}

fn sample_results() -> Vec<BuildResult> {
    let failed = BuildResult::new(BuildStatus::OutputRejected, "no idea why");
    let mut nondet = BuildResult::new(BuildStatus::NotDeterministic, "no idea why");
    nondet.times_built = 3;
    nondet.is_non_deterministic = true;
    nondet.start_time = 30;
    nondet.stop_time = 50;
    let mut built = BuildResult::new(BuildStatus::Built, "");
    built.times_built = 1;
    built.start_time = 30;
    built.stop_time = 50;
    built.cpu_user = Some(500_000_000);
    built.cpu_system = Some(604_000_000);
    built.drv_hash = Some(
        Hash::parse(
            "sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad277d4f15c373f5",
            None,
        )
        .unwrap(),
    );
    for (name, base) in [("bar", BAR), ("foo", FOO)] {
        built.built_outputs.insert(
            name.into(),
            BuiltOutput {
                out_path: sp(base),
                signatures: BTreeSet::new(),
            },
        );
    }
    vec![failed, nondet, built]
}

/// What `r` reads back as after being written for `version`.
fn result_at(r: &BuildResult, version: Version) -> BuildResult {
    let mut r = r.clone();
    if version < v(29) {
        r.times_built = 0;
        r.is_non_deterministic = false;
        r.start_time = 0;
        r.stop_time = 0;
    }
    if version < v(37) {
        r.cpu_user = None;
        r.cpu_system = None;
    }
    if version < v(28) {
        r.built_outputs.clear();
        r.drv_hash = None;
    }
    r
}

#[test]
fn build_results_round_trip() {
    for minor in MINORS {
        let ver = v(minor);
        for res in sample_results() {
            let mut buf = Vec::new();
            write_build_result(&mut buf, ver, &res).unwrap();
            let mut r = &buf[..];
            assert_eq!(
                read_build_result(&mut r, ver, &L).unwrap(),
                result_at(&res, ver),
                "{ver}"
            );
            assert!(r.is_empty());
            for cut in 0..buf.len() {
                assert!(read_build_result(&mut &buf[..cut], ver, &L).is_err());
            }
        }
        let keyed: Vec<KeyedBuildResult> = sample_results()
            .into_iter()
            .map(|result| KeyedBuildResult {
                path: DerivedPath::Built {
                    drv_path: sp(DRV),
                    outputs: OutputsSpec::Names(["out".to_owned()].into()),
                },
                result,
            })
            .collect();
        let mut buf = Vec::new();
        write_keyed_build_results(&mut buf, ver, &dir(), &keyed).unwrap();
        let back = read_keyed_build_results(&mut &buf[..], ver, &dir(), &L).unwrap();
        assert_eq!(back.len(), 3);
        for (b, k) in back.iter().zip(&keyed) {
            assert_eq!(b.path, k.path);
            assert_eq!(b.result, result_at(&k.result, ver));
        }
    }
}

#[test]
fn build_result_exact_bytes() {
    let results = sample_results();
    // 1.29: times but no CPU times; builtOutputs keyed by DrvOutput, the realisation as JSON.
    let mut buf = Vec::new();
    write_build_result(&mut buf, v(29), &results[1]).unwrap();
    let want = B::default()
        .n(12)
        .s("no idea why")
        .n(3)
        .n(1)
        .n(30)
        .n(50)
        .n(0);
    assert_eq!(buf, want.0);
    // 1.37: CPU times as tagged optionals.
    let mut buf = Vec::new();
    write_build_result(&mut buf, v(37), &results[2]).unwrap();
    let id = "sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad277d4f15c373f5!bar";
    let json = format!(
        r#"{{"dependentRealisations":{{}},"id":"{id}","outPath":"{BAR}","signatures":[]}}"#
    );
    let id2 = id.replace("!bar", "!foo");
    let json2 = format!(
        r#"{{"dependentRealisations":{{}},"id":"{id2}","outPath":"{FOO}","signatures":[]}}"#
    );
    let want = B::default()
        .n(0)
        .s("")
        .n(1)
        .n(0)
        .n(30)
        .n(50)
        .n(1)
        .n(500_000_000)
        .n(1)
        .n(604_000_000)
        .n(2)
        .s(id)
        .s(&json)
        .s(&id2)
        .s(&json2);
    assert_eq!(buf, want.0);
    // 1.28: no times, outputs.
    let mut buf = Vec::new();
    write_build_result(&mut buf, v(28), &results[0]).unwrap();
    assert_eq!(buf, B::default().n(5).s("no idea why").n(0).0);
    // A keyed result of 1.29 starts with the target.
    let keyed = KeyedBuildResult {
        path: DerivedPath::Opaque(sp("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-xxx")),
        result: results[0].clone(),
    };
    let mut buf = Vec::new();
    write_keyed_build_results(&mut buf, v(29), &dir(), &[keyed]).unwrap();
    let want = B::default()
        .n(1)
        .s("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-xxx")
        .n(5)
        .s("no idea why")
        .n(0)
        .n(0)
        .n(0)
        .n(0)
        .n(0);
    assert_eq!(buf, want.0);
    // Unknown status, bad optional tag.
    let bad = B::default().n(99).s("");
    assert!(read_build_result(&mut &bad.0[..], v(27), &L).is_err());
    let bad = B::default().n(0).s("").n(0).n(0).n(0).n(0).n(2);
    assert!(matches!(
        read_build_result(&mut &bad.0[..], v(37), &L).unwrap_err(),
        WireError::UnexpectedValue {
            what: "cpuUser of a build result",
            ..
        }
    ));
}

#[test]
fn build_result_conversions() {
    let r = sample_results().pop().unwrap();
    let s: crate::serve::BuildResult = r.clone().into();
    assert_eq!(s.built_outputs, r.built_outputs);
    let back: BuildResult = s.into();
    assert_eq!(back.cpu_user, None);
    assert_eq!(back.built_outputs, r.built_outputs);
}

// ---------------------------------------------------------------------------------------------
// Client options

#[test]
fn client_options() {
    let mut o = ClientOptions {
        keep_failed: true,
        max_build_jobs: 4,
        build_cores: 2,
        ..ClientOptions::default()
    };
    o.overrides.insert("builders".into(), "".into());
    o.overrides.insert("sandbox".into(), "false".into());
    o.overrides
        .insert("substituters".into(), "https://c".into());
    o.overrides
        .insert("experimental-features".into(), "x".into());
    for minor in [11, 12, 34] {
        let ver = v(minor);
        let mut buf = Vec::new();
        o.write(&mut buf, ver).unwrap();
        let back = ClientOptions::read(&mut &buf[..], ver, &L).unwrap();
        let mut want = o.clone();
        if ver < v(12) {
            want.overrides.clear();
        }
        assert_eq!(back, want);
        for cut in 0..buf.len() {
            assert!(ClientOptions::read(&mut &buf[..cut], ver, &L).is_err());
        }
    }
    // Exact bytes of what a default Nix client sends, as SetOptions.
    let mut buf = Vec::new();
    write_request(
        &mut buf,
        v(34),
        &dir(),
        &WorkerRequest::SetOptions(ClientOptions::default()),
    )
    .unwrap();
    let want = B::default()
        .n(19)
        .n(0)
        .n(0)
        .n(0)
        .n(3)
        .n(1)
        .n(0)
        .n(1)
        .n(0)
        .n(0)
        .n(0)
        .n(0)
        .n(1)
        .n(0);
    assert_eq!(buf, want.0);
    assert!(ClientOptions::default().verbose_build());

    let untrusted = o.allowed_overrides(false);
    assert_eq!(
        untrusted.keys().collect::<Vec<_>>(),
        ["builders", "substituters"]
    );
    let trusted = o.allowed_overrides(true);
    assert_eq!(
        trusted.keys().collect::<Vec<_>>(),
        ["builders", "sandbox", "substituters"]
    );
    let mut o2 = ClientOptions::default();
    o2.overrides.insert("builders".into(), "ssh://x".into());
    assert!(o2.allowed_overrides(false).is_empty());

    // A setting sent twice is refused.
    let mut buf = Vec::new();
    ClientOptions::default().write(&mut buf, v(11)).unwrap();
    let buf = B::default().raw(&buf).n(2).s("a").s("1").s("a").s("2");
    assert!(ClientOptions::read(&mut &buf.0[..], v(12), &L).is_err());
}

// ---------------------------------------------------------------------------------------------
// Requests

fn trivial_drv() -> Derivation {
    Derivation {
        outputs: [("out".to_owned(), DerivationOutput::InputAddressed(sp(BAR)))].into(),
        input_drvs: BTreeMap::new(),
        input_srcs: [sp(FOO)].into(),
        platform: "x86_64-linux".into(),
        builder: "/bin/sh".into(),
        args: vec!["-c".into(), "echo hi > $out".into()],
        env: [("out".to_owned(), full(BAR))].into(),
    }
}

fn all_requests() -> Vec<WorkerRequest> {
    let targets = vec![
        DerivedPath::Built {
            drv_path: sp(DRV),
            outputs: OutputsSpec::All,
        },
        DerivedPath::Built {
            drv_path: sp(DRV),
            outputs: OutputsSpec::Names(["out".to_owned()].into()),
        },
        DerivedPath::Opaque(sp(FOO)),
    ];
    let mut opts = ClientOptions::default();
    opts.overrides.insert("timeout".into(), "5".into());
    vec![
        WorkerRequest::IsValidPath(sp(BAR)),
        WorkerRequest::QueryReferrers(sp(BAR)),
        WorkerRequest::BuildPaths {
            paths: targets.clone(),
            mode: BuildMode::Check,
        },
        WorkerRequest::EnsurePath(sp(FOO)),
        WorkerRequest::AddTempRoot(sp(FOO)),
        WorkerRequest::AddIndirectRoot("/home/u/result".into()),
        WorkerRequest::SyncWithGC,
        WorkerRequest::SetOptions(opts),
        WorkerRequest::QueryAllValidPaths,
        WorkerRequest::QueryPathInfo(sp(BAR)),
        WorkerRequest::QueryPathFromHashPart("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q".into()),
        WorkerRequest::QueryValidPaths {
            paths: [sp(BAR), sp(FOO)].into(),
            substitute: true,
        },
        WorkerRequest::BuildDerivation {
            drv_path: sp(DRV),
            drv: trivial_drv(),
            mode: BuildMode::Repair,
        },
        WorkerRequest::AddSignatures {
            path: sp(BAR),
            sigs: ["k:s".to_owned()].into(),
        },
        WorkerRequest::NarFromPath(sp(BAR)),
        WorkerRequest::AddToStoreNar {
            info: PathInfo {
                path: sp(BAR),
                info: sample_info(),
            },
            repair: false,
            dont_check_sigs: true,
        },
        WorkerRequest::QueryMissing(targets.clone()),
        WorkerRequest::QueryDerivationOutputMap(sp(DRV)),
        WorkerRequest::AddMultipleToStore {
            repair: true,
            dont_check_sigs: false,
        },
        WorkerRequest::AddBuildLog(sp(DRV)),
        WorkerRequest::BuildPathsWithResults {
            paths: targets,
            mode: BuildMode::Normal,
        },
        WorkerRequest::AddPermRoot {
            path: sp(BAR),
            gc_root: "/home/u/result".into(),
        },
    ]
}

/// What `req` reads back as after being written for `version`.
fn request_at(req: &WorkerRequest, version: Version) -> WorkerRequest {
    let mut req = req.clone();
    match &mut req {
        WorkerRequest::QueryValidPaths { substitute, .. } if version < v(27) => *substitute = false,
        WorkerRequest::SetOptions(o) if version < v(12) => o.overrides.clear(),
        _ => {}
    }
    req
}

#[test]
fn requests_round_trip_per_version() {
    for minor in MINORS {
        let ver = v(minor);
        for req in all_requests() {
            let mut buf = Vec::new();
            write_request(&mut buf, ver, &dir(), &req).unwrap();
            let mut r = &buf[..];
            let got = read_request(&mut r, ver, &dir(), &L).unwrap().unwrap();
            assert_eq!(got, request_at(&req, ver), "{ver}");
            assert!(r.is_empty(), "{ver} {:?}", req.op());
            assert_eq!(read_request(&mut r, ver, &dir(), &L).unwrap(), None);
            for cut in 1..buf.len() {
                let e = read_request(&mut &buf[..cut], ver, &dir(), &L).unwrap_err();
                assert!(e.is_eof(), "{ver} {:?} cut {cut}: {e}", req.op());
            }
        }
    }
}

#[test]
fn request_exact_bytes() {
    let d = dir();
    let cases: Vec<(Version, WorkerRequest, B)> = vec![
        (
            v(34),
            WorkerRequest::IsValidPath(sp(BAR)),
            B::default().n(1).s(&full(BAR)),
        ),
        (
            v(27),
            WorkerRequest::QueryValidPaths {
                paths: [sp(BAR)].into(),
                substitute: true,
            },
            B::default().n(31).n(1).s(&full(BAR)).n(1),
        ),
        (
            v(26),
            WorkerRequest::QueryValidPaths {
                paths: [sp(BAR)].into(),
                substitute: false,
            },
            B::default().n(31).n(1).s(&full(BAR)),
        ),
        (
            v(30),
            WorkerRequest::BuildPaths {
                paths: vec![DerivedPath::Built {
                    drv_path: sp(DRV),
                    outputs: OutputsSpec::All,
                }],
                mode: BuildMode::Normal,
            },
            B::default().n(9).n(1).s(&format!("{}!*", full(DRV))).n(0),
        ),
        (
            v(29),
            WorkerRequest::BuildPaths {
                paths: vec![DerivedPath::Built {
                    drv_path: sp(DRV),
                    outputs: OutputsSpec::All,
                }],
                mode: BuildMode::Normal,
            },
            B::default().n(9).n(1).s(&full(DRV)).n(0),
        ),
        (
            v(34),
            WorkerRequest::AddBuildLog(sp(DRV)),
            B::default().n(45).s(DRV),
        ),
        (
            v(34),
            WorkerRequest::AddMultipleToStore {
                repair: false,
                dont_check_sigs: true,
            },
            B::default().n(44).n(0).n(1),
        ),
        (
            v(18),
            WorkerRequest::AddToStoreNar {
                info: PathInfo {
                    path: sp(BAR),
                    info: UnkeyedPathInfo::new(Hash::sha256(b""), 8),
                },
                repair: false,
                dont_check_sigs: false,
            },
            B::default()
                .n(39)
                .s(&full(BAR))
                .s("")
                .s("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
                .n(0)
                .n(0)
                .n(8)
                .n(0)
                .n(0)
                .s("")
                .n(0)
                .n(0),
        ),
    ];
    for (ver, req, want) in cases {
        let mut buf = Vec::new();
        write_request(&mut buf, ver, &d, &req).unwrap();
        assert_eq!(buf, want.0, "{req:?} at {ver}");
    }
    // Build modes before 1.15 are not sent; only the normal one can be asked for.
    let mut buf = Vec::new();
    let req = WorkerRequest::BuildPaths {
        paths: vec![DerivedPath::Opaque(sp(BAR))],
        mode: BuildMode::Repair,
    };
    assert!(write_request(&mut buf, v(14), &d, &req).is_err());
}

#[test]
fn bad_requests() {
    let d = dir();
    // Unknown and unsupported operations are named.
    let e = read_request(&mut &B::default().n(2).0[..], v(34), &d, &L).unwrap_err();
    assert!(
        matches!(e, WireError::UnexpectedValue { what: "worker operation", ref value } if value == "2"),
        "{e}"
    );
    let e = read_request(&mut &B::default().n(7).0[..], v(34), &d, &L).unwrap_err();
    assert!(e.to_string().contains("AddToStore (7)"), "{e}");
    // A clean end between operations, and one inside an operation number.
    assert_eq!(read_request(&mut &[][..], v(34), &d, &L).unwrap(), None);
    assert!(read_request(&mut &[1u8, 0][..], v(34), &d, &L)
        .unwrap_err()
        .is_eof());
    // Bad build mode, bad path, zero NAR size.
    let b = B::default().n(9).n(0).n(3);
    assert!(matches!(
        read_request(&mut &b.0[..], v(34), &d, &L).unwrap_err(),
        WireError::UnexpectedValue {
            what: "build mode of BuildPaths",
            ..
        }
    ));
    let b = B::default().n(1).s("/tmp/evil");
    assert!(matches!(
        read_request(&mut &b.0[..], v(34), &d, &L).unwrap_err(),
        WireError::BadStorePath { .. }
    ));
    let mut zero = Vec::new();
    write_request(
        &mut zero,
        v(34),
        &d,
        &WorkerRequest::AddToStoreNar {
            info: PathInfo {
                path: sp(BAR),
                info: UnkeyedPathInfo::new(Hash::sha256(b""), 0),
            },
            repair: false,
            dont_check_sigs: false,
        },
    )
    .unwrap();
    assert!(read_request(&mut &zero[..], v(34), &d, &L).is_err());
    // The base name of AddBuildLog, not a full path.
    let b = B::default().n(45).s(&full(DRV));
    assert!(read_request(&mut &b.0[..], v(34), &d, &L).is_err());
    // Huge counts.
    for op in [31u64, 9, 40, 46, 19] {
        let mut b = B::default().n(op);
        if op == 19 {
            b = b
                .n(0)
                .n(0)
                .n(0)
                .n(0)
                .n(0)
                .n(0)
                .n(0)
                .n(0)
                .n(0)
                .n(0)
                .n(0)
                .n(0);
        }
        let b = b.n(u64::MAX);
        let e = read_request(&mut &b.0[..], v(34), &d, &L).unwrap_err();
        assert!(matches!(e, WireError::TooLong { .. }), "op {op}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Replies

#[test]
fn replies_round_trip() {
    let d = dir();
    let mut map = BTreeMap::new();
    map.insert("out".to_owned(), Some(sp(BAR)));
    map.insert("dev".to_owned(), None);
    let mut buf = Vec::new();
    write_output_map(&mut buf, &d, &map).unwrap();
    assert_eq!(
        buf,
        B::default().n(2).s("dev").s("").s("out").s(&full(BAR)).0
    );
    assert_eq!(read_output_map(&mut &buf[..], &d, &L).unwrap(), map);
    let dup = B::default().n(2).s("out").s("").s("out").s("");
    assert!(read_output_map(&mut &dup.0[..], &d, &L).is_err());

    let m = Missing {
        will_build: [sp(DRV)].into(),
        will_substitute: [sp(FOO)].into(),
        unknown: BTreeSet::new(),
        download_size: 10,
        nar_size: 20,
    };
    let mut buf = Vec::new();
    write_missing(&mut buf, &d, &m).unwrap();
    assert_eq!(
        buf,
        B::default()
            .n(1)
            .s(&full(DRV))
            .n(1)
            .s(&full(FOO))
            .n(0)
            .n(10)
            .n(20)
            .0
    );
    assert_eq!(read_missing(&mut &buf[..], &d, &L).unwrap(), m);
    for cut in 0..buf.len() {
        assert!(read_missing(&mut &buf[..cut], &d, &L).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads

fn nar_of_text(text: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for t in ["nix-archive-1", "(", "type", "regular", "contents"] {
        push_bytes(&mut v, t.as_bytes());
    }
    push_bytes(&mut v, text.as_bytes());
    push_bytes(&mut v, b")");
    v
}

#[test]
fn nar_payload_framed() {
    let nar = nar_of_text("framed");
    let mut input = Vec::new();
    write_framed(&mut input, &mut &nar[..]).unwrap();
    input.extend_from_slice(b"next op");
    let mut r = &input[..];
    let mut out = Vec::new();
    let mut p = NarPayload::new(&mut r, &mut out, v(23), nar.len() as u64);
    assert_eq!(p.transfer(), NarTransfer::Framed);
    let mut got = Vec::new();
    p.read_to_end(&mut got).unwrap();
    assert_eq!(got, nar);
    p.finish().unwrap();
    assert_eq!(r, b"next op");
    assert!(out.is_empty());

    // A consumer that stops early: finish skips the rest.
    let mut r = &input[..];
    let mut p = NarPayload::new(&mut r, Vec::new(), v(34), nar.len() as u64);
    p.read_exact(&mut [0; 5]).unwrap();
    assert_eq!(p.remaining(), nar.len() as u64 - 5);
    p.finish().unwrap();
    assert_eq!(r, b"next op");

    // Fewer bytes than announced: an early end for the consumer, the stream still usable.
    let mut r = &input[..];
    let mut p = NarPayload::new(&mut r, Vec::new(), v(34), nar.len() as u64 + 1);
    let e = p.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    p.finish().unwrap();
    assert_eq!(r, b"next op");

    // A stream cut inside: finish fails.
    let mut r = &input[..10];
    let p = NarPayload::new(&mut r, Vec::new(), v(34), nar.len() as u64);
    assert!(p.finish().is_err());
}

#[test]
fn nar_payload_tunnelled() {
    let nar = nar_of_text("tunnel");
    // The client answers each STDERR_READ with a part of the NAR (here 3 bytes each, and what
    // is left at the end).
    let mut input = B::default();
    for chunk in nar.chunks(3) {
        push_bytes(&mut input.0, chunk);
    }
    input.0.extend_from_slice(b"next op");
    let mut r = &input.0[..];
    let mut out = Vec::new();
    let mut p = NarPayload::new(&mut r, &mut out, v(21), nar.len() as u64);
    assert_eq!(p.transfer(), NarTransfer::Tunnelled);
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    loop {
        let n = p.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, nar);
    p.finish().unwrap();
    assert_eq!(r, b"next op");
    // One request per answer, each for at most what is left and at least what came.
    let mut o = &out[..];
    let mut left = nar.len() as u64;
    for chunk in nar.chunks(3) {
        match read_stderr(&mut o, v(21), &L).unwrap() {
            StderrMsg::Read(n) => assert!(n >= chunk.len() as u64 && n <= left, "{n}"),
            m => panic!("{m:?}"),
        }
        left -= chunk.len() as u64;
    }
    assert!(o.is_empty());

    // More than asked for is refused.
    let input = B::default().s("abcdefgh");
    let mut r = &input.0[..];
    let mut p = NarPayload::new(&mut r, Vec::new(), v(22), 4);
    assert_eq!(
        p.read_to_end(&mut Vec::new()).unwrap_err().kind(),
        std::io::ErrorKind::InvalidData
    );
    // An empty answer is an early end.
    let input = B::default().s("");
    let mut p = NarPayload::new(&input.0[..], Vec::new(), v(22), 4);
    assert_eq!(
        p.read_to_end(&mut Vec::new()).unwrap_err().kind(),
        std::io::ErrorKind::UnexpectedEof
    );
}

#[test]
fn nar_payload_raw() {
    let nar = nar_of_text("raw");
    let input = [&nar[..], b"next op"].concat();
    let mut r = &input[..];
    let mut p = NarPayload::new(&mut r, Vec::new(), v(20), nar.len() as u64);
    assert_eq!(p.transfer(), NarTransfer::Raw);
    p.read_exact(&mut [0; 3]).unwrap();
    p.finish().unwrap();
    assert_eq!(r, b"next op");
    let mut p = NarPayload::new(&nar[..4], Vec::new(), v(18), nar.len() as u64);
    assert!(p.read_to_end(&mut Vec::new()).is_err());
}

fn path_info_for(base: &str, nar: &[u8], refs: &[&str]) -> PathInfo {
    let mut info = UnkeyedPathInfo::new(Hash::sha256(nar), nar.len() as u64);
    info.references = refs.iter().map(|b| sp(b)).collect();
    PathInfo {
        path: sp(base),
        info,
    }
}

#[test]
fn multiple_paths_round_trip() {
    let d = dir();
    let nar_a = nar_of_text("a");
    let nar_b = nar_of_text("b refers to a");
    let a = path_info_for(FOO, &nar_a, &[]);
    let b = path_info_for(BAR, &nar_b, &[FOO]);
    let mut w = MultiplePathsWriter::new(Vec::new(), &d, 2).unwrap();
    w.add(&a, &mut &nar_a[..]).unwrap();
    w.add(&b, &mut &nar_b[..]).unwrap();
    let mut stream = w.finish().unwrap();
    stream.extend_from_slice(b"next op");

    // The framed payload holds the count, then info and NAR of each.
    let mut payload = Vec::new();
    crate::wire::FramedReader::new(&stream[..])
        .read_to_end(&mut payload)
        .unwrap();
    let mut want = B::default().n(2);
    a.write(&mut want.0, v(16), &d).unwrap();
    want = want.raw(&nar_a);
    b.write(&mut want.0, v(16), &d).unwrap();
    want = want.raw(&nar_b);
    assert_eq!(payload, want.0);

    let mut r = &stream[..];
    let mut m = MultiplePathsReader::new(&mut r, &d, &L);
    assert_eq!(m.count().unwrap(), 2);
    {
        let (info, mut nar) = m.next_path().unwrap().unwrap();
        assert_eq!(info, a);
        let mut got = Vec::new();
        nar.read_to_end(&mut got).unwrap();
        assert_eq!(got, nar_a);
    }
    {
        // Read only part of the second NAR; the rest is skipped.
        let (info, mut nar) = m.next_path().unwrap().unwrap();
        assert_eq!(info, b);
        nar.read_exact(&mut [0; 4]).unwrap();
        assert_eq!(nar.remaining(), nar_b.len() as u64 - 4);
    }
    assert!(m.next_path().unwrap().is_none());
    m.finish().unwrap();
    assert_eq!(r, b"next op");

    // A consumer that stops after the first path: finish skips the rest.
    let mut r = &stream[..];
    let mut m = MultiplePathsReader::new(&mut r, &d, &L);
    let _ = m.next_path().unwrap().unwrap();
    m.finish().unwrap();
    assert_eq!(r, b"next op");

    // Writers check counts and sizes.
    let mut w = MultiplePathsWriter::new(Vec::new(), &d, 1).unwrap();
    assert!(w.add(&a, &mut &nar_a[1..]).is_err());
    let w = MultiplePathsWriter::new(Vec::new(), &d, 1).unwrap();
    assert!(w.finish().is_err());
    let mut w = MultiplePathsWriter::new(Vec::new(), &d, 0).unwrap();
    assert!(w.add(&a, &mut &nar_a[..]).is_err());

    // A NAR cut short inside the stream.
    let mut bad = Vec::new();
    {
        let mut fw = crate::wire::FramedWriter::new(&mut bad);
        let mut body = B::default().n(2);
        a.write(&mut body.0, v(16), &d).unwrap();
        body = body.raw(&nar_a[..10]);
        fw.write_all(&body.0).unwrap();
        fw.finish().unwrap();
    }
    let mut m = MultiplePathsReader::new(&bad[..], &d, &L);
    {
        let (_, mut nar) = m.next_path().unwrap().unwrap();
        assert!(nar.read_to_end(&mut Vec::new()).is_err());
    }
    assert!(m.next_path().is_err());
}

// ---------------------------------------------------------------------------------------------
// Arbitrary input

fn any_version() -> impl Strategy<Value = Version> {
    prop::sample::select(MINORS.to_vec()).prop_map(v)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn readers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), ver in any_version()) {
        let d = dir();
        let small = Limits { max_string: 4096, max_items: 64 };
        let _ = read_stderr(&mut &bytes[..], ver, &small);
        let _ = read_request(&mut &bytes[..], ver, &d, &small);
        for op in Op::ALL {
            let _ = read_request_body(&mut &bytes[..], op, ver, &d, &small);
        }
        let _ = read_build_result(&mut &bytes[..], ver, &small);
        let _ = read_keyed_build_results(&mut &bytes[..], ver, &d, &small);
        let _ = read_derived_paths(&mut &bytes[..], ver, &d, &small);
        let _ = PathInfo::read(&mut &bytes[..], ver, &d, &small);
        let _ = read_path_info_reply(&mut &bytes[..], ver, &d, &small);
        let _ = ClientOptions::read(&mut &bytes[..], ver, &small);
        let _ = read_missing(&mut &bytes[..], &d, &small);
        let _ = read_output_map(&mut &bytes[..], &d, &small);
        let _ = process_stderr(&mut &bytes[..], &mut Vec::new(), ver, &small, Some(&mut &b"data"[..]), &mut |_| {});
        let mut m = MultiplePathsReader::new(&bytes[..], &d, &small);
        for _ in 0..4 {
            match m.next_path() {
                Ok(Some((_, mut nar))) => { let _ = nar.read_to_end(&mut Vec::new()); }
                _ => break,
            }
        }
        let _ = m.finish();
        let mut p = NarPayload::new(&bytes[..], Vec::new(), ver, 100);
        let _ = p.read_to_end(&mut Vec::new());
        let _ = p.finish();
    }

    #[test]
    fn messages_after_a_valid_prefix_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..256),
        ver in any_version(),
        which in 0usize..8,
    ) {
        // A valid message cut anywhere and followed by garbage.
        let m = &all_messages()[which];
        let mut buf = Vec::new();
        write_stderr(&mut buf, ver, m).unwrap();
        let cut = tail.len() % (buf.len() + 1);
        buf.truncate(cut);
        buf.extend_from_slice(&tail);
        let _ = read_stderr(&mut &buf[..], ver, &L);
    }

    #[test]
    fn huge_lengths_are_too_long(prefix_op in prop::sample::select(vec![6u64, 26, 31, 38, 41]), len in (64u64 << 20) + 1..) {
        let b = B::default().n(prefix_op).n(len);
        let e = read_request(&mut &b.0[..], v(34), &dir(), &L).unwrap_err();
        prop_assert!(matches!(e, WireError::TooLong { .. }), "{}", e);
    }

    #[test]
    fn log_lines_round_trip(line in ".*", ver in any_version()) {
        let m = StderrMsg::Next(line);
        let mut buf = Vec::new();
        write_stderr(&mut buf, ver, &m).unwrap();
        prop_assert_eq!(read_stderr(&mut &buf[..], ver, &L).unwrap(), m);
    }
}

#[test]
fn nar_payload_output_is_flushed_for_each_request() {
    // The request must reach the client before the server waits for the answer.
    struct Flushes(Vec<u8>, usize);
    impl Write for Flushes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.1 += 1;
            Ok(())
        }
    }
    let input = B::default().s("abcd");
    let mut out = Flushes(Vec::new(), 0);
    let mut p = NarPayload::new(&input.0[..], &mut out, v(21), 4);
    p.read_to_end(&mut Vec::new()).unwrap();
    p.finish().unwrap();
    assert_eq!(out.1, 1);
}
