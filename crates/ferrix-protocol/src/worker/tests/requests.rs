//! Client options and requests.

use super::*;

#[test]
pub(super) fn client_options() {
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

pub(super) fn trivial_drv() -> Derivation {
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

pub(super) fn all_requests() -> Vec<WorkerRequest> {
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
        WorkerRequest::AddToStore {
            name: "src".into(),
            method: CaMethod::Fixed {
                method: FileIngestionMethod::Recursive,
                algo: HashAlgo::Sha512,
            },
            refs: [sp(BAR)].into(),
            repair: true,
        },
        WorkerRequest::AddToStore {
            name: "t".into(),
            method: CaMethod::Text,
            refs: BTreeSet::new(),
            repair: false,
        },
        WorkerRequest::AddTextToStore {
            name: "t".into(),
            text: "some text".into(),
            refs: [sp(BAR)].into(),
        },
        WorkerRequest::QueryValidDerivers(sp(BAR)),
        WorkerRequest::FindRoots,
        WorkerRequest::CollectGarbage {
            action: GcAction::DeleteSpecific,
            paths: [sp(BAR)].into(),
            ignore_liveness: false,
            max_freed: u64::MAX,
        },
        WorkerRequest::HasSubstitutes(sp(BAR)),
        WorkerRequest::QueryPathHash(sp(BAR)),
        WorkerRequest::QueryReferences(sp(BAR)),
        WorkerRequest::QueryDeriver(sp(BAR)),
        WorkerRequest::QuerySubstitutablePathInfo(sp(FOO)),
        WorkerRequest::QueryDerivationOutputs(sp(DRV)),
        WorkerRequest::QueryDerivationOutputNames(sp(DRV)),
        WorkerRequest::QuerySubstitutablePathInfos(
            [
                (sp(FOO), None),
                (
                    sp(BAR),
                    Some(ferrix_format::ContentAddress::Text(
                        ferrix_format::Hash::sha256(b"x"),
                    )),
                ),
            ]
            .into(),
        ),
        WorkerRequest::QuerySubstitutablePaths([sp(FOO), sp(BAR)].into()),
        WorkerRequest::OptimiseStore,
        WorkerRequest::VerifyStore {
            check_contents: true,
            repair: false,
        },
        WorkerRequest::QueryRealisation("sha256:00!out".into()),
        WorkerRequest::ExportPath(sp(FOO)),
        WorkerRequest::ImportPaths,
    ]
}

/// What `req` reads back as after being written for `version`.
pub(super) fn request_at(req: &WorkerRequest, version: Version) -> WorkerRequest {
    let mut req = req.clone();
    match &mut req {
        WorkerRequest::QueryValidPaths { substitute, .. } if version < v(27) => *substitute = false,
        WorkerRequest::SetOptions(o) if version < v(12) => o.overrides.clear(),
        WorkerRequest::QuerySubstitutablePathInfos(m) if version < v(22) => {
            m.values_mut().for_each(|ca| *ca = None)
        }
        _ => {}
    }
    req
}

#[test]
pub(super) fn requests_round_trip_per_version() {
    for minor in MINORS {
        let ver = v(minor);
        for req in all_requests() {
            let mut buf = Vec::new();
            if matches!(req, WorkerRequest::AddToStore { .. }) && minor < 25 {
                // Older clients send another form, which is not read here.
                assert!(write_request(&mut buf, ver, &dir(), &req).is_err());
                continue;
            }
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
pub(super) fn request_exact_bytes() {
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
pub(super) fn bad_requests() {
    let d = dir();
    // Unknown and unsupported operations are named.
    let e = read_request(&mut &B::default().n(2).0[..], v(34), &d, &L).unwrap_err();
    assert!(
        matches!(e, WireError::UnexpectedValue { what: "worker operation", ref value } if value == "2"),
        "{e}"
    );
    let e = read_request(&mut &B::default().n(24).0[..], v(34), &d, &L).unwrap_err();
    assert!(e.to_string().contains("QueryFailedPaths (24)"), "{e}");
    let e = read_request(&mut &B::default().n(20).n(4).0[..], v(34), &d, &L).unwrap_err();
    assert!(e.to_string().contains("action of CollectGarbage"), "{e}");
    let e = read_request(&mut &B::default().n(7).0[..], v(24), &d, &L).unwrap_err();
    assert!(e.to_string().contains("before 1.25"), "{e}");
    // A content-address method Nix would not send.
    let mut b = B::default().n(7);
    for s in ["x", "fixed:r:md4"] {
        b = b.s(s);
    }
    let e = read_request(&mut &b.0[..], v(34), &d, &L).unwrap_err();
    assert!(e.to_string().contains("fixed:r:md4"), "{e}");
    for good in ["text:sha256", "fixed:sha1", "fixed:r:sha256"] {
        assert_eq!(CaMethod::parse(good).unwrap().to_string(), good);
    }
    assert_eq!(CaMethod::parse("text:sha1"), None);
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
