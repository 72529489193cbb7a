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

mod arbitrary;
mod build_results;
mod handshake_and_path_info;
mod payloads;
mod requests;

use handshake_and_path_info::*;

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
        StderrMsg::Result {
            kind: result_type::BUILD_LOG_LINE,
            fields,
            ..
        } if version < v(20) => match fields.as_slice() {
            [Field::Str(line)] => Some(StderrMsg::Next(format!("{line}\n"))),
            _ => None,
        },
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
