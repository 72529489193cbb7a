//! Every operation per negotiated version: the greeting, the requests and their replies,
//! log messages for old and new clients, content-addressed additions and collections.

use super::*;

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
            assert_eq!(
                log,
                [
                    StderrMsg::Next("building...\n".into()),
                    StderrMsg::Next("hi\n".into())
                ]
            );
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
fn old_clients_get_log_lines_instead_of_activities_and_build_logs() {
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
    // The activity's text, then its log line (which Nix's daemon would drop).
    assert_eq!(
        log,
        [
            StderrMsg::Next("building...\n".into()),
            StderrMsg::Next("hi\n".into())
        ]
    );
    read_ok(o.r(), "BuildPaths").unwrap();
    o.done();
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
