use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use ferrix_format::content_address::FileIngestionMethod;
use ferrix_format::wire::push_bytes;
use ferrix_format::DerivationOutput;
use proptest::prelude::*;

use super::*;

const L: Limits = Limits::DEFAULT;
const V25: Version = Version::new(2, 5);
const V26: Version = Version::new(2, 6);
const V27: Version = Version::new(2, 7);
const V28: Version = Version::new(2, 8);
const VERSIONS: [Version; 4] = [V25, V26, V27, V28];

fn dir() -> StoreDir {
    StoreDir::default()
}

fn sp(base: &str) -> StorePath {
    StorePath::from_base_name(base).unwrap()
}

const BAR: &str = "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar";
const FOO: &str = "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo";
const FOO2: &str = "n5wkd9frr45pa74if5gpz9j7mifg27fh-foo";

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
}

fn u(n: u64) -> [u8; 8] {
    n.to_le_bytes()
}

// ---------------------------------------------------------------------------------------------
// Handshake

#[test]
fn server_handshake_bytes_and_negotiation() {
    for (client, expect) in [
        (0x205u64, V25),
        (0x206, V26),
        (0x207, V27),
        (0x208, V28),
        (0x209, V28),
        (0x2ff, V28),
    ] {
        let input = [u(SERVE_MAGIC_1), u(client)].concat();
        let mut out = Vec::new();
        let v =
            server_handshake(&mut Cursor::new(&input), &mut out, SERVE_PROTOCOL_VERSION).unwrap();
        assert_eq!(v, expect);
        assert_eq!(out, [u(SERVE_MAGIC_2), u(0x208)].concat());
    }
    // As Nix's test vector "handshake-to-client" (a 2.5 server).
    let mut out = Vec::new();
    server_handshake(
        &mut Cursor::new([u(SERVE_MAGIC_1), u(0x205)].concat()),
        &mut out,
        V25,
    )
    .unwrap();
    assert_eq!(
        out,
        [0xcb, 0xee, 0x52, 0x54, 0, 0, 0, 0, 0x05, 0x02, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn server_handshake_refusals() {
    for bad in [0x204u64, 0x100, 0x107, 0x305, 0, u64::MAX, 0x1_0207] {
        let input = [u(SERVE_MAGIC_1), u(bad)].concat();
        let e = server_handshake(
            &mut Cursor::new(&input),
            &mut Vec::new(),
            SERVE_PROTOCOL_VERSION,
        )
        .unwrap_err();
        match &e {
            WireError::UnsupportedVersion {
                protocol: "serve",
                ours,
                theirs,
                ..
            } => {
                assert_eq!(*ours, V28);
                assert_eq!(*theirs, bad);
            }
            _ => panic!("{e}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("2.8"), "{msg}");
    }
    let e = server_handshake(
        &mut Cursor::new([u(0x6e697863), u(0x207)].concat()),
        &mut Vec::new(),
        V28,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        WireError::BadMagic {
            got: 0x6e697863,
            ..
        }
    ));
    // Truncated greetings.
    let full = [u(SERVE_MAGIC_1), u(0x207)].concat();
    for cut in 0..full.len() {
        let e = server_handshake(&mut Cursor::new(&full[..cut]), &mut Vec::new(), V28).unwrap_err();
        assert!(e.is_eof(), "{e}");
    }
}

#[test]
fn client_handshake_writes_first() {
    // Against a Nix 2.8.0 server (2.7).
    let input = [u(SERVE_MAGIC_2), u(0x207)].concat();
    let mut out = Vec::new();
    let v = client_handshake(&mut Cursor::new(&input), &mut out, SERVE_PROTOCOL_VERSION).unwrap();
    assert_eq!(v, V27);
    assert_eq!(out, [u(SERVE_MAGIC_1), u(0x208)].concat());
    // Even when the server answers nothing, the greeting went out.
    let mut out = Vec::new();
    let e = client_handshake(&mut Cursor::new(&[]), &mut out, V27).unwrap_err();
    assert!(e.is_eof());
    assert_eq!(out, [u(SERVE_MAGIC_1), u(0x207)].concat());
    // Old or foreign servers.
    let input = [u(SERVE_MAGIC_2), u(0x204)].concat();
    let e = client_handshake(&mut Cursor::new(&input), &mut Vec::new(), V28).unwrap_err();
    assert!(matches!(
        e,
        WireError::UnsupportedVersion { theirs: 0x204, .. }
    ));
    let input = [u(1), u(0x207)].concat();
    let e = client_handshake(&mut Cursor::new(&input), &mut Vec::new(), V28).unwrap_err();
    assert!(matches!(e, WireError::BadMagic { got: 1, .. }));
}

// ---------------------------------------------------------------------------------------------
// Requests

fn sample_drv() -> Derivation {
    Derivation {
        outputs: [("out".to_owned(), DerivationOutput::InputAddressed(sp(FOO)))].into(),
        input_drvs: BTreeMap::new(),
        input_srcs: [sp(BAR)].into(),
        platform: "x86_64-linux".into(),
        builder: "/bin/sh".into(),
        args: vec!["-c".into(), "echo hi > $out".into()],
        env: [("out".to_owned(), dir().display(&sp(FOO)))].into(),
    }
}

fn sample_settings() -> BuildSettings {
    BuildSettings {
        max_silent_time: 5,
        build_timeout: 6,
        max_log_size: 7,
        build_repeat: 8,
        enforce_determinism: false,
        keep_failed: true,
    }
}

fn sample_requests() -> Vec<Request> {
    let paths: BTreeSet<StorePath> = [sp(FOO), sp(BAR), sp(FOO2)].into();
    vec![
        Request::QueryValidPaths(QueryValidPaths {
            lock: true,
            substitute: false,
            paths: paths.clone(),
        }),
        Request::QueryPathInfos(QueryPathInfos {
            paths: paths.clone(),
        }),
        Request::DumpStorePath(DumpStorePath { path: sp(FOO) }),
        Request::ImportPaths,
        Request::ExportPaths(ExportPaths {
            paths: BTreeSet::new(),
        }),
        Request::BuildPaths(BuildPaths {
            paths: vec![
                format!("{}!out,dev", dir().display(&sp(FOO))),
                dir().display(&sp(BAR)),
            ],
            settings: sample_settings(),
        }),
        Request::QueryClosure(QueryClosure {
            include_outputs: true,
            paths,
        }),
        Request::BuildDerivation(BuildDerivation {
            drv_path: sp("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-t.drv"),
            drv: sample_drv(),
            settings: sample_settings(),
        }),
        Request::AddToStoreNar(AddToStoreNar {
            path: sp(FOO2),
            deriver: Some(sp("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-t.drv")),
            nar_hash: Hash::sha256(b"nar"),
            references: [sp(BAR)].into(),
            registration_time: 1_700_000_000,
            nar_size: 120,
            ultimate: true,
            sigs: ["cache.example.org-1:AAAA".to_owned()].into(),
            ca: Some(ContentAddress::Fixed {
                method: FileIngestionMethod::Recursive,
                hash: Hash::sha256(b"x"),
            }),
        }),
    ]
}

/// What a request reads back as at `version`: settings fields it does not carry are zero.
fn at_version(req: &Request, version: Version) -> Request {
    let trim = |s: &BuildSettings| {
        let mut back = Vec::new();
        s.write(&mut back, version).unwrap();
        BuildSettings::read(&mut &back[..], version).unwrap()
    };
    match req {
        Request::BuildPaths(b) => Request::BuildPaths(BuildPaths {
            paths: b.paths.clone(),
            settings: trim(&b.settings),
        }),
        Request::BuildDerivation(b) => Request::BuildDerivation(BuildDerivation {
            drv_path: b.drv_path.clone(),
            drv: b.drv.clone(),
            settings: trim(&b.settings),
        }),
        other => other.clone(),
    }
}

#[test]
fn every_request_round_trips_at_every_version() {
    for v in VERSIONS {
        for req in sample_requests() {
            let mut bytes = Vec::new();
            write_request(&mut bytes, v, &dir(), &req).unwrap();
            bytes.extend_from_slice(b"PAYLOAD!");
            let mut r = Cursor::new(&bytes);
            let back = read_request(&mut r, v, &dir(), &L).unwrap().unwrap();
            assert_eq!(back, at_version(&req, v), "{v}");
            // The payload (or nothing) is left in the reader.
            assert_eq!(&bytes[r.position() as usize..], b"PAYLOAD!");
            // Every truncation is an error (an end of file), never a panic or a request.
            let end = bytes.len() - 8;
            for cut in 1..end {
                let e = read_request(&mut Cursor::new(&bytes[..cut]), v, &dir(), &L).unwrap_err();
                assert!(e.is_eof(), "{:?} cut at {cut}: {e}", req.command());
            }
        }
    }
    assert!(read_request(&mut Cursor::new(&[]), V28, &dir(), &L)
        .unwrap()
        .is_none());
}

#[test]
fn build_settings_gates() {
    let s = sample_settings();
    let cases: [(Version, &[u64]); 6] = [
        (Version::new(2, 1), &[5, 6]),
        (Version::new(2, 2), &[5, 6, 7]),
        (Version::new(2, 3), &[5, 6, 7, 8, 0]),
        (V25, &[5, 6, 7, 8, 0]),
        (V27, &[5, 6, 7, 8, 0, 1]),
        (V28, &[5, 6, 7, 8, 0, 1]),
    ];
    for (v, fields) in cases {
        let mut out = Vec::new();
        s.write(&mut out, v).unwrap();
        let expect: Vec<u8> = fields.iter().flat_map(|n| n.to_le_bytes()).collect();
        // At 2.7 this is Nix's test vector "build-options-2.7".
        assert_eq!(out, expect, "{v}");
    }
}

#[test]
fn exact_bytes_of_requests() {
    let d = dir();
    let mut out = Vec::new();
    write_request(
        &mut out,
        V27,
        &d,
        &Request::QueryValidPaths(QueryValidPaths {
            lock: false,
            substitute: true,
            paths: [sp(FOO), sp(BAR)].into(),
        }),
    )
    .unwrap();
    let expect = B::default()
        .n(1)
        .n(0)
        .n(1)
        .n(2)
        .s(&format!("/nix/store/{BAR}"))
        .s(&format!("/nix/store/{FOO}"));
    assert_eq!(out, expect.0);

    let h = Hash::sha256(b"nar");
    let req = Request::AddToStoreNar(AddToStoreNar {
        path: sp(FOO),
        deriver: None,
        nar_hash: h,
        references: BTreeSet::new(),
        registration_time: 3,
        nar_size: 4,
        ultimate: false,
        sigs: BTreeSet::new(),
        ca: None,
    });
    let mut out = Vec::new();
    write_request(&mut out, V27, &d, &req).unwrap();
    let expect = B::default()
        .n(9)
        .s(&format!("/nix/store/{FOO}"))
        .s("")
        .s(&h.to_base16())
        .n(0)
        .n(3)
        .n(4)
        .n(0)
        .n(0)
        .s("");
    assert_eq!(out, expect.0);

    let mut out = Vec::new();
    write_request(
        &mut out,
        V27,
        &d,
        &Request::ExportPaths(ExportPaths {
            paths: [sp(FOO)].into(),
        }),
    )
    .unwrap();
    assert_eq!(
        out,
        B::default()
            .n(5)
            .n(0)
            .n(1)
            .s(&format!("/nix/store/{FOO}"))
            .0
    );
}

#[test]
fn add_to_store_nar_accepts_any_hash_form() {
    let h = Hash::sha256(b"nar");
    for text in [
        h.to_base16(),
        h.encode_typed(ferrix_format::Encoding::Nix32),
        h.to_sri(),
        h.encode_typed(ferrix_format::Encoding::Base16),
    ] {
        let bytes = B::default()
            .n(9)
            .s(&format!("/nix/store/{FOO}"))
            .s("")
            .s(&text)
            .n(0)
            .n(0)
            .n(1)
            .n(0)
            .n(0)
            .s("");
        match read_request(&mut &bytes.0[..], V27, &dir(), &L)
            .unwrap()
            .unwrap()
        {
            Request::AddToStoreNar(a) => assert_eq!(a.nar_hash, h, "{text}"),
            other => panic!("{other:?}"),
        }
    }
    // A SHA-1 NAR hash, a zero NAR size, a bad CA: refused.
    let sha1 = Hash::of(HashAlgo::Sha1, b"nar").encode_typed(ferrix_format::Encoding::Base16);
    let bad = |hash: &str, size: u64, ca: &str| {
        B::default()
            .n(9)
            .s(&format!("/nix/store/{FOO}"))
            .s("")
            .s(hash)
            .n(0)
            .n(0)
            .n(size)
            .n(0)
            .n(0)
            .s(ca)
            .0
    };
    let e = read_request(&mut &bad(&sha1, 1, "")[..], V27, &dir(), &L).unwrap_err();
    assert!(matches!(e, WireError::BadHash { .. }), "{e}");
    let e = read_request(&mut &bad(&h.to_base16(), 0, "")[..], V27, &dir(), &L).unwrap_err();
    assert!(matches!(e, WireError::UnexpectedValue { .. }), "{e}");
    let e = read_request(&mut &bad(&h.to_base16(), 1, "nar:x")[..], V27, &dir(), &L).unwrap_err();
    assert!(matches!(e, WireError::BadContentAddress { .. }), "{e}");
}

#[test]
fn unknown_and_malformed_requests() {
    for n in [0u64, 10, 1 << 40, u64::MAX] {
        let e = read_request(&mut &u(n)[..], V27, &dir(), &L).unwrap_err();
        assert!(
            matches!(e, WireError::UnexpectedValue { what: "serve command", ref value } if *value == n.to_string()),
            "{e}"
        );
    }
    // A boolean of 2.
    let bytes = B::default().n(1).n(2).n(0).n(0).0;
    let e = read_request(&mut &bytes[..], V27, &dir(), &L).unwrap_err();
    assert!(matches!(e, WireError::UnexpectedValue { .. }), "{e}");
    // A path outside the store.
    let bytes = B::default().n(3).s("/etc/passwd").0;
    let e = read_request(&mut &bytes[..], V27, &dir(), &L).unwrap_err();
    assert!(matches!(e, WireError::BadStorePath { .. }), "{e}");
    // Another store directory.
    let other = StoreDir::new("/tmp/store").unwrap();
    let bytes = B::default().n(3).s(&format!("/nix/store/{FOO}")).0;
    assert!(read_request(&mut &bytes[..], V27, &other, &L).is_err());
}

#[test]
fn huge_lengths_are_refused_before_allocating() {
    let huge = u64::MAX;
    let cases: Vec<Vec<u8>> = vec![
        B::default().n(1).n(0).n(0).n(huge).0, // path count
        B::default().n(2).n(1 << 21).0,        // path count over max_items
        B::default().n(3).n(huge).0,           // path length
        B::default().n(6).n(huge).0,           // BuildPaths list
        B::default().n(6).n(1).n(huge).0,      // one BuildPaths string
        B::default().n(8).s(&format!("/nix/store/{FOO}")).n(huge).0, // outputs
        B::default().n(9).n(64 << 20 | 1).0,   // path just over the limit
    ];
    for bytes in cases {
        let e = read_request(&mut &bytes[..], V27, &dir(), &L).unwrap_err();
        assert!(matches!(e, WireError::TooLong { .. }), "{e}");
    }
    // Environment values in a derivation.
    let mut bytes = B::default()
        .n(8)
        .s(&format!("/nix/store/{FOO}"))
        .n(0)
        .n(0)
        .s("p")
        .s("b")
        .n(0)
        .n(1)
        .s("k")
        .0;
    bytes.extend_from_slice(&u(huge));
    let e = read_request(&mut &bytes[..], V27, &dir(), &L).unwrap_err();
    assert!(matches!(e, WireError::TooLong { .. }), "{e}");
}

#[test]
fn path_with_outputs() {
    let d = dir();
    let (p, o) = parse_path_with_outputs(&d, &format!("/nix/store/{FOO}!out,dev")).unwrap();
    assert_eq!(p, sp(FOO));
    assert_eq!(o, ["dev".to_owned(), "out".to_owned()].into());
    let (_, o) = parse_path_with_outputs(&d, &format!("/nix/store/{FOO}")).unwrap();
    assert!(o.is_empty());
    assert!(parse_path_with_outputs(&d, &format!("/nix/store/{FOO}!")).is_err());
    assert!(parse_path_with_outputs(&d, "x!out").is_err());
}

#[test]
fn commands() {
    for c in Command::ALL {
        assert_eq!(Command::from_u64(c.number()), Some(c));
    }
    let writes: Vec<u64> = Command::ALL
        .into_iter()
        .filter(|c| c.needs_write())
        .map(Command::number)
        .collect();
    assert_eq!(writes, [4, 6, 8, 9]);
    assert_eq!(Command::from_u64(0), None);
    assert_eq!(Command::from_u64(10), None);
    assert_eq!(Command::BuildDerivation.to_string(), "BuildDerivation (8)");
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Nix's test vector "unkeyed-valid-path-info-2.4", written field by field (the paths come
/// first in a QueryPathInfos answer and are not part of the vector).
#[test]
fn path_info_vector_2_4() {
    let nar_hash =
        Hash::parse("sha256-FePFYIlMuycIXPZbWi7LGEiMmZSX9FMbaQenWBzm1Sc=", None).unwrap();
    assert_eq!(
        nar_hash.encode_typed(ferrix_format::Encoding::Nix32),
        "sha256:09ymwqf5i9q7d4dm7x4pjjcqqj0qrcp5lnznbh42gfsci5hcbqqm"
    );
    let deriver = sp("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv");
    let sig = |n: u8| format!("fake-sig-{n}:{}==", "A".repeat(86));
    let entries = vec![
        PathInfoEntry {
            path: sp(FOO),
            deriver: Some(deriver.clone()),
            references: [sp("g1w7hyyyy1w7hy3qg1w7hy3qgqqqqy3q-foo.drv")].into(),
            download_size: 34878,
            nar_size: 34878,
            nar_hash: Some(nar_hash),
            ca: None,
            sigs: BTreeSet::new(),
        },
        PathInfoEntry {
            path: sp(BAR),
            deriver: Some(deriver),
            references: [sp(BAR), sp(FOO2)].into(),
            download_size: 34878,
            nar_size: 34878,
            nar_hash: Some(nar_hash),
            ca: Some(ContentAddress::Fixed {
                method: FileIngestionMethod::Recursive,
                hash: Hash::parse("sha256-EMIJ+giQ/gLIWoxmPKjno3zHZrxbGymgzGGyZvZBIdM=", None)
                    .unwrap(),
            }),
            sigs: [sig(1), sig(2)].into(),
        },
    ];
    let mut out = Vec::new();
    write_path_infos(&mut out, Version::new(2, 4), &dir(), &entries).unwrap();
    let expect = B::default()
        .s(&format!("/nix/store/{FOO}"))
        .s("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv")
        .n(1)
        .s("/nix/store/g1w7hyyyy1w7hy3qg1w7hy3qgqqqqy3q-foo.drv")
        .n(34878)
        .n(34878)
        .s("sha256:09ymwqf5i9q7d4dm7x4pjjcqqj0qrcp5lnznbh42gfsci5hcbqqm")
        .s("")
        .n(0)
        .s(&format!("/nix/store/{BAR}"))
        .s("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-bar.drv")
        .n(2)
        .s(&format!("/nix/store/{BAR}"))
        .s(&format!("/nix/store/{FOO2}"))
        .n(34878)
        .n(34878)
        .s("sha256:09ymwqf5i9q7d4dm7x4pjjcqqj0qrcp5lnznbh42gfsci5hcbqqm")
        .s("fixed:r:sha256:1lr187v6dck1rjh2j6svpikcfz53wyl3qrlcbb405zlh13x0khhh")
        .n(2)
        .s(&sig(1))
        .s(&sig(2))
        .s("");
    assert_eq!(out, expect.0);
    for v in [Version::new(2, 3), Version::new(2, 4), V25, V27, V28] {
        let mut out = Vec::new();
        write_path_infos(&mut out, v, &dir(), &entries).unwrap();
        let back = read_path_infos(&mut &out[..], v, &dir(), &L).unwrap();
        if v >= Version::new(2, 4) {
            assert_eq!(back, entries);
        } else {
            assert_eq!(back.len(), 2);
            assert_eq!(back[1].nar_hash, None);
            assert!(back[1].sigs.is_empty());
            assert_eq!(back[1].references, entries[1].references);
        }
        for cut in 0..out.len() {
            assert!(read_path_infos(&mut &out[..cut], v, &dir(), &L).is_err());
        }
    }
    // The number of entries is bounded too.
    let small = Limits { max_items: 1, ..L };
    let mut out = Vec::new();
    write_path_infos(&mut out, V27, &dir(), &entries).unwrap();
    assert!(matches!(
        read_path_infos(&mut &out[..], V27, &dir(), &small).unwrap_err(),
        WireError::TooLong { .. }
    ));
}

/// The three results of Nix's "build-result-*" test vectors.
fn vector_results(drv_hash: Option<Hash>) -> Vec<BuildResult> {
    let mut a = BuildResult::new(BuildStatus::OutputRejected, "no idea why");
    a.drv_hash = None;
    let mut b = BuildResult::new(BuildStatus::NotDeterministic, "no idea why");
    b.times_built = 3;
    b.is_non_deterministic = true;
    b.start_time = 30;
    b.stop_time = 50;
    let mut c = BuildResult::new(BuildStatus::Built, "");
    c.times_built = 1;
    c.start_time = 30;
    c.stop_time = 50;
    c.drv_hash = drv_hash;
    for name in ["bar", "foo"] {
        c.built_outputs.insert(
            name.into(),
            BuiltOutput {
                out_path: sp(&format!("g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-{name}")),
                signatures: BTreeSet::new(),
            },
        );
    }
    vec![a, b, c]
}

fn vector_head() -> B {
    B::default()
        .n(5)
        .s("no idea why")
        .n(0)
        .n(0)
        .n(0)
        .n(0)
        .n(0)
        .n(12)
        .s("no idea why")
        .n(3)
        .n(1)
        .n(30)
        .n(50)
        .n(0)
        .n(0)
        .s("")
        .n(1)
        .n(0)
        .n(30)
        .n(50)
}

#[test]
fn build_result_vector_2_6() {
    let h = Hash::parse(
        "sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad277d4f15c373f5",
        None,
    )
    .unwrap();
    let results = vector_results(Some(h));
    let mut out = Vec::new();
    for r in &results {
        write_build_result(&mut out, V26, &dir(), r).unwrap();
    }
    let mut expect = vector_head().n(2);
    for name in ["bar", "foo"] {
        let id = format!(
            "sha256:6f869f9ea2823bda165e06076fd0de4366dead2c0e8d2dbbad277d4f15c373f5!{name}"
        );
        expect = expect.s(&id).s(&format!(
            r#"{{"dependentRealisations":{{}},"id":"{id}","outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-{name}","signatures":[]}}"#
        ));
    }
    assert_eq!(out, expect.0);
    let mut r = &out[..];
    for want in &results {
        assert_eq!(&read_build_result(&mut r, V26, &dir(), &L).unwrap(), want);
    }
    assert!(r.is_empty());
}

/// Current Nix writes a zero hash and only `id` and `outPath` at 2.6 and 2.7.
#[test]
fn build_result_2_7_as_current_nix_writes_it() {
    let zero = format!("sha256:{}", "0".repeat(64));
    let mut bytes = vector_head().n(2);
    for name in ["bar", "foo"] {
        let id = format!("{zero}!{name}");
        bytes = bytes.s(&id).s(&format!(
            r#"{{"id":"{id}","outPath":"g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-{name}"}}"#
        ));
    }
    let mut r = &bytes.0[..];
    for want in vector_results(None) {
        assert_eq!(read_build_result(&mut r, V27, &dir(), &L).unwrap(), want);
    }
    // And we write zeros when the hash is not known.
    let mut out = Vec::new();
    write_build_result(&mut out, V27, &dir(), &vector_results(None)[2]).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains(&format!("{zero}!bar")), "{text}");
}

#[test]
fn build_result_vector_2_8() {
    let results = vector_results(None);
    let mut out = Vec::new();
    for r in &results {
        write_build_result(&mut out, V28, &dir(), r).unwrap();
    }
    let expect = vector_head()
        .n(2)
        .s("bar")
        .s(&format!("/nix/store/{BAR}"))
        .n(0)
        .s("foo")
        .s(&format!("/nix/store/{FOO}"))
        .n(0);
    assert_eq!(out, expect.0);
    let mut r = &out[..];
    for want in &results {
        assert_eq!(&read_build_result(&mut r, V28, &dir(), &L).unwrap(), want);
    }
}

#[test]
fn build_result_version_gates() {
    let mut res = vector_results(None).pop().unwrap();
    res.built_outputs
        .get_mut("bar")
        .unwrap()
        .signatures
        .insert("k:sig\"\\".into());
    for v in [Version::new(2, 2), V25] {
        let mut out = Vec::new();
        write_build_result(&mut out, v, &dir(), &res).unwrap();
        let expect = if v < Version::new(2, 3) {
            B::default().n(0).s("")
        } else {
            B::default().n(0).s("").n(1).n(0).n(30).n(50)
        };
        assert_eq!(out, expect.0, "{v}");
    }
    for v in [V26, V27, V28] {
        let mut out = Vec::new();
        write_build_result(&mut out, v, &dir(), &res).unwrap();
        assert_eq!(
            read_build_result(&mut &out[..], v, &dir(), &L).unwrap(),
            res,
            "{v}"
        );
    }
}

#[test]
fn bad_build_results() {
    let cases = [
        B::default().n(15).s("").0,
        B::default()
            .n(0)
            .s("")
            .n(0)
            .n(0)
            .n(0)
            .n(0)
            .n(1)
            .s("nohash!out")
            .s("{}")
            .0,
        B::default()
            .n(0)
            .s("")
            .n(0)
            .n(0)
            .n(0)
            .n(0)
            .n(1)
            .s(&format!("sha256:{}!", "0".repeat(64)))
            .s("{}")
            .0,
        B::default()
            .n(0)
            .s("")
            .n(0)
            .n(0)
            .n(0)
            .n(0)
            .n(1)
            .s(&format!("sha256:{}!out", "0".repeat(64)))
            .s("{}")
            .0,
        B::default()
            .n(0)
            .s("")
            .n(0)
            .n(0)
            .n(0)
            .n(0)
            .n(1)
            .s(&format!("sha256:{}!out", "0".repeat(64)))
            .s("{\"outPath\":\"x\"}")
            .0,
        B::default()
            .n(0)
            .s("")
            .n(0)
            .n(0)
            .n(0)
            .n(0)
            .n(1)
            .s(&format!("sha256:{}!out", "0".repeat(64)))
            .s(&format!("{{\"outPath\":\"{FOO}\",\"signatures\":[1]}}"))
            .0,
        B::default()
            .n(0)
            .s("")
            .n(0)
            .n(0)
            .n(0)
            .n(0)
            .n(1)
            .s(&format!("sha256:{}!out", "0".repeat(64)))
            .s("not json")
            .0,
    ];
    for bytes in cases {
        assert!(read_build_result(&mut &bytes[..], V27, &dir(), &L).is_err());
    }
    // 2.8: an output twice.
    let bytes = B::default()
        .n(0)
        .s("")
        .n(0)
        .n(0)
        .n(0)
        .n(0)
        .n(2)
        .s("out")
        .s(&format!("/nix/store/{FOO}"))
        .n(0)
        .s("out")
        .s(&format!("/nix/store/{FOO}"))
        .n(0)
        .0;
    assert!(read_build_result(&mut &bytes[..], V28, &dir(), &L).is_err());
}

#[test]
fn build_paths_reply() {
    let mut out = Vec::new();
    write_build_paths_reply(
        &mut out,
        &BuildPathsReply::from(&BuildResult::new(BuildStatus::Substituted, "")),
    )
    .unwrap();
    assert_eq!(out, u(0));
    let failed = BuildResult::new(BuildStatus::PermanentFailure, "builder failed");
    let reply = BuildPathsReply::from(&failed);
    let mut out = Vec::new();
    write_build_paths_reply(&mut out, &reply).unwrap();
    assert_eq!(out, B::default().n(3).s("builder failed").0);
    assert_eq!(read_build_paths_reply(&mut &out[..], &L).unwrap(), reply);
    // What Nix's server sends: its exit status.
    let nix = B::default().n(100).s("build of '…' failed").0;
    assert_eq!(
        read_build_paths_reply(&mut &nix[..], &L).unwrap(),
        BuildPathsReply::Failure {
            status: 100,
            message: "build of '…' failed".into()
        }
    );
    assert_eq!(
        read_build_paths_reply(&mut &u(0)[..], &L).unwrap(),
        BuildPathsReply::Success
    );
}

#[test]
fn acknowledgements() {
    let mut out = Vec::new();
    write_ok(&mut out).unwrap();
    assert_eq!(out, u(1));
    read_ok(&mut &out[..], "AddToStoreNar").unwrap();
    assert!(matches!(
        read_ok(&mut &u(0)[..], "ImportPaths").unwrap_err(),
        WireError::UnexpectedValue {
            what: "ImportPaths",
            ..
        }
    ));
}

// ---------------------------------------------------------------------------------------------
// Properties

fn arb_store_path() -> impl Strategy<Value = StorePath> {
    (any::<[u8; 20]>(), "[a-z0-9][a-zA-Z0-9+._?=-]{0,12}")
        .prop_map(|(d, name)| StorePath::from_digest(&d, &name).unwrap())
}

fn arb_paths() -> impl Strategy<Value = BTreeSet<StorePath>> {
    prop::collection::btree_set(arb_store_path(), 0..4)
}

fn arb_hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(|b| Hash::from_bytes(HashAlgo::Sha256, &b).unwrap())
}

fn arb_text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn arb_settings() -> impl Strategy<Value = BuildSettings> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(a, b, c, d, e, f)| BuildSettings {
            max_silent_time: a,
            build_timeout: b,
            max_log_size: c,
            build_repeat: d,
            enforce_determinism: e,
            keep_failed: f,
        })
}

fn arb_method() -> impl Strategy<Value = FileIngestionMethod> {
    prop_oneof![
        Just(FileIngestionMethod::Flat),
        Just(FileIngestionMethod::Recursive)
    ]
}

fn arb_algo() -> impl Strategy<Value = HashAlgo> {
    prop::sample::select(HashAlgo::ALL.to_vec())
}

fn arb_output() -> impl Strategy<Value = DerivationOutput> {
    prop_oneof![
        arb_store_path().prop_map(DerivationOutput::InputAddressed),
        (
            arb_method(),
            arb_algo(),
            any::<[u8; 64]>(),
            arb_store_path()
        )
            .prop_map(|(method, a, b, path)| {
                DerivationOutput::CaFixed {
                    method,
                    hash: Hash::from_bytes(a, &b[..a.size()]).unwrap(),
                    path,
                }
            }),
        (arb_method(), arb_algo())
            .prop_map(|(method, algo)| DerivationOutput::CaFloating { method, algo }),
        Just(DerivationOutput::Deferred),
        (arb_method(), arb_algo())
            .prop_map(|(method, algo)| DerivationOutput::Impure { method, algo }),
    ]
}

prop_compose! {
    fn arb_drv()(
        outputs in prop::collection::btree_map("[a-z]{1,6}", arb_output(), 0..4),
        input_srcs in arb_paths(),
        platform in arb_text(),
        builder in arb_text(),
        args in prop::collection::vec(arb_text(), 0..4),
        env in prop::collection::btree_map(arb_text(), arb_text(), 0..4),
    ) -> Derivation {
        Derivation { outputs, input_drvs: BTreeMap::new(), input_srcs, platform, builder, args, env }
    }
}

fn arb_ca() -> impl Strategy<Value = Option<ContentAddress>> {
    prop_oneof![
        Just(None),
        arb_hash().prop_map(|h| Some(ContentAddress::Text(h))),
        (arb_method(), arb_hash())
            .prop_map(|(method, hash)| Some(ContentAddress::Fixed { method, hash })),
    ]
}

prop_compose! {
    fn arb_add()(
        path in arb_store_path(),
        deriver in prop::option::of(arb_store_path()),
        nar_hash in arb_hash(),
        references in arb_paths(),
        registration_time in any::<u64>(),
        nar_size in 1..u64::MAX,
        ultimate in any::<bool>(),
        sigs in prop::collection::btree_set(arb_text(), 0..3),
        ca in arb_ca(),
    ) -> AddToStoreNar {
        AddToStoreNar { path, deriver, nar_hash, references, registration_time, nar_size, ultimate, sigs, ca }
    }
}

pub(crate) fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<bool>(), any::<bool>(), arb_paths()).prop_map(|(lock, substitute, paths)| {
            Request::QueryValidPaths(QueryValidPaths {
                lock,
                substitute,
                paths,
            })
        }),
        arb_paths().prop_map(|paths| Request::QueryPathInfos(QueryPathInfos { paths })),
        arb_store_path().prop_map(|path| Request::DumpStorePath(DumpStorePath { path })),
        Just(Request::ImportPaths),
        arb_paths().prop_map(|paths| Request::ExportPaths(ExportPaths { paths })),
        (prop::collection::vec(arb_text(), 0..4), arb_settings())
            .prop_map(|(paths, settings)| Request::BuildPaths(BuildPaths { paths, settings })),
        (any::<bool>(), arb_paths()).prop_map(|(include_outputs, paths)| {
            Request::QueryClosure(QueryClosure {
                include_outputs,
                paths,
            })
        }),
        (arb_store_path(), arb_drv(), arb_settings()).prop_map(|(drv_path, drv, settings)| {
            Request::BuildDerivation(BuildDerivation {
                drv_path,
                drv,
                settings,
            })
        }),
        arb_add().prop_map(Request::AddToStoreNar),
    ]
}

pub(crate) fn arb_version() -> impl Strategy<Value = Version> {
    (0u8..=9).prop_map(|m| Version::new(2, m))
}

prop_compose! {
    fn arb_build_result()(
        status in prop::sample::select(BuildStatus::ALL.to_vec()),
        error_msg in arb_text(),
        times_built in any::<u64>(),
        is_non_deterministic in any::<bool>(),
        start_time in any::<u64>(),
        stop_time in any::<u64>(),
        outs in prop::collection::btree_map(
            "[a-z]{1,6}",
            (arb_store_path(), prop::collection::btree_set(arb_text(), 0..3)),
            0..3,
        ),
        drv_hash in prop::option::of(arb_hash()),
    ) -> BuildResult {
        BuildResult {
            status,
            error_msg,
            times_built,
            is_non_deterministic,
            start_time,
            stop_time,
            drv_hash: if outs.is_empty() { None } else { drv_hash },
            built_outputs: outs
                .into_iter()
                .map(|(k, (out_path, signatures))| (k, BuiltOutput { out_path, signatures }))
                .collect(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn request_round_trip(req in arb_request(), v in arb_version()) {
        let mut bytes = Vec::new();
        write_request(&mut bytes, v, &dir(), &req).unwrap();
        let mut r = Cursor::new(&bytes);
        let back = read_request(&mut r, v, &dir(), &L).unwrap().unwrap();
        prop_assert_eq!(back, at_version(&req, v));
        prop_assert_eq!(r.position() as usize, bytes.len());
    }

    #[test]
    fn build_result_round_trip(res in arb_build_result(), v in arb_version()) {
        let mut bytes = Vec::new();
        write_build_result(&mut bytes, v, &dir(), &res).unwrap();
        let back = read_build_result(&mut &bytes[..], v, &dir(), &L).unwrap();
        let mut want = res.clone();
        if v < Version::new(2, 3) {
            want.times_built = 0;
            want.is_non_deterministic = false;
            want.start_time = 0;
            want.stop_time = 0;
        }
        if v < Version::new(2, 6) {
            want.built_outputs.clear();
        }
        if v < Version::new(2, 6) || v >= Version::new(2, 8) {
            want.drv_hash = None;
        }
        if want.drv_hash.is_some_and(|h| h == Hash::zero(HashAlgo::Sha256)) {
            want.drv_hash = None;
        }
        prop_assert_eq!(back, want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), v in arb_version()) {
        let _ = read_request(&mut &bytes[..], v, &dir(), &L);
        let _ = read_path_infos(&mut &bytes[..], v, &dir(), &L);
        let _ = read_build_result(&mut &bytes[..], v, &dir(), &L);
        let _ = read_build_paths_reply(&mut &bytes[..], &L);
        let _ = crate::derivation::read_basic_derivation(&mut &bytes[..], &dir(), &L);
        let _ = BuildSettings::read(&mut &bytes[..], v);
        let _ = server_handshake(&mut &bytes[..], &mut Vec::new(), V28);
        let _ = client_handshake(&mut &bytes[..], &mut Vec::new(), V28);
    }

    /// Arbitrary bytes after a valid command number: mostly reach deep into each reader.
    #[test]
    fn arbitrary_bodies_never_panic(cmd in 1u64..=9, body in prop::collection::vec(any::<u8>(), 0..512), v in arb_version()) {
        let mut bytes = u(cmd).to_vec();
        bytes.extend_from_slice(&body);
        let _ = read_request(&mut &bytes[..], v, &dir(), &L);
    }

    /// Mutations of valid requests: a byte changed, a length made huge.
    #[test]
    fn mutated_requests_never_panic(req in arb_request(), v in arb_version(), at in any::<prop::sample::Index>(), byte in any::<u8>(), huge in any::<bool>()) {
        let mut bytes = Vec::new();
        write_request(&mut bytes, v, &dir(), &req).unwrap();
        let i = at.index(bytes.len());
        if huge {
            let start = i - i % 8;
            if start + 8 <= bytes.len() {
                bytes[start..start + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            }
        } else {
            bytes[i] = byte;
        }
        let small = Limits { max_string: 1 << 16, max_items: 1 << 10 };
        match read_request(&mut &bytes[..], v, &dir(), &small) {
            Ok(_) => {}
            Err(WireError::TooLong { len, limit, .. }) => prop_assert!(len > limit),
            Err(_) => {}
        }
    }
}
