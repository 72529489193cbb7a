//! The obsolete query forms old clients send, substitutes queries, and the store-wide
//! operations (optimise, verify), per negotiated version; realisations answered as none.

use super::*;

#[test]
fn obsolete_queries_and_substitutes_per_version() {
    for minor in MINORS {
        let ver = v(minor);
        let (mut fake, a, b) = Fake::with_paths();
        let missing = sp("missing", 7);
        let s1 = sp("s1", 10);
        let drv = sp("b.drv", 3);
        let mut s = Script::new(ver);
        s.req(&WorkerRequest::QueryPathHash(b.clone()))
            .req(&WorkerRequest::QueryReferences(b.clone()))
            .req(&WorkerRequest::QueryDeriver(b.clone()))
            .req(&WorkerRequest::QueryDeriver(a.clone()))
            .req(&WorkerRequest::QueryReferences(missing.clone()))
            .req(&WorkerRequest::QueryDerivationOutputs(drv.clone()))
            .req(&WorkerRequest::QueryDerivationOutputNames(drv.clone()))
            .req(&WorkerRequest::HasSubstitutes(s1.clone()))
            .req(&WorkerRequest::HasSubstitutes(missing.clone()))
            .req(&WorkerRequest::QuerySubstitutablePaths(
                [s1.clone(), missing.clone()].into(),
            ))
            .req(&WorkerRequest::QuerySubstitutablePathInfo(s1.clone()))
            .req(&WorkerRequest::QuerySubstitutablePathInfo(missing.clone()))
            .req(&WorkerRequest::QuerySubstitutablePathInfos(
                [(s1.clone(), None), (missing.clone(), None)].into(),
            ))
            .req(&WorkerRequest::QueryRealisation("sha256:00!out".into()))
            .req(&WorkerRequest::IsValidPath(a.clone()));
        let (res, mut o) = s.run(&mut fake, &opts(true));
        res.unwrap_or_else(|e| panic!("{ver}: {e}"));
        o.greeting();
        let d = dir();
        // QueryPathHash: base 16, without its type.
        o.ok();
        let h = read_string(o.r(), &L, "hash").unwrap();
        assert_eq!(h, fake.paths[&b].0.nar_hash.to_base16(), "{ver}");
        // QueryReferences, QueryDeriver (a path, then none).
        o.ok();
        assert_eq!(
            read_store_path_set(o.r(), &d, &L, "refs").unwrap(),
            BTreeSet::from([a.clone()])
        );
        o.ok();
        assert_eq!(read_string(o.r(), &L, "deriver").unwrap(), d.display(&drv));
        o.ok();
        assert_eq!(read_string(o.r(), &L, "deriver").unwrap(), "");
        // A path that is not valid: an error, and the session goes on.
        let (res, _) = o.work();
        assert!(res.unwrap_err().message.contains("is not valid"), "{ver}");
        // The derivation's outputs: the paths known, and every name.
        o.ok();
        assert_eq!(
            read_store_path_set(o.r(), &d, &L, "outputs").unwrap(),
            BTreeSet::from([b.clone()])
        );
        o.ok();
        assert_eq!(
            read_string_set(o.r(), &L, "names").unwrap(),
            BTreeSet::from(["dev".to_owned(), "out".to_owned()])
        );
        // HasSubstitutes, QuerySubstitutablePaths.
        o.ok();
        assert!(read_bool(o.r(), "has").unwrap());
        o.ok();
        assert!(!read_bool(o.r(), "has").unwrap());
        o.ok();
        assert_eq!(
            read_store_path_set(o.r(), &d, &L, "substitutable").unwrap(),
            BTreeSet::from([s1.clone()])
        );
        // QuerySubstitutablePathInfo: found, then not.
        let info = |o: &mut Output| {
            let deriver = read_string(o.r(), &L, "deriver").unwrap();
            let refs = read_store_path_set(o.r(), &d, &L, "refs").unwrap();
            let sizes = (
                read_u64(o.r(), "download").unwrap(),
                read_u64(o.r(), "nar").unwrap(),
            );
            (deriver, refs, sizes)
        };
        let want = (
            d.display(&sp("s.drv", 9)),
            BTreeSet::from([s1.clone()]),
            (10, 20),
        );
        o.ok();
        assert_eq!(read_u64(o.r(), "found").unwrap(), 1);
        assert_eq!(info(&mut o), want);
        o.ok();
        assert_eq!(read_u64(o.r(), "found").unwrap(), 0);
        // QuerySubstitutablePathInfos: the paths found, each with its info.
        o.ok();
        assert_eq!(read_u64(o.r(), "count").unwrap(), 1);
        assert_eq!(read_string(o.r(), &L, "path").unwrap(), d.display(&s1));
        assert_eq!(info(&mut o), want);
        // QueryRealisation: none known (an empty set in either form).
        o.ok();
        assert_eq!(read_u64(o.r(), "realisations").unwrap(), 0);
        // And the session is still in step.
        o.ok();
        assert!(read_bool(o.r(), "valid").unwrap());
        o.done();
    }
}

#[test]
fn optimise_and_verify_and_who_may_repair() {
    for trusted in [true, false] {
        let mut fake = Fake::default();
        let mut s = Script::new(v(34));
        s.req(&WorkerRequest::OptimiseStore)
            .req(&WorkerRequest::VerifyStore {
                check_contents: true,
                repair: false,
            })
            .req(&WorkerRequest::VerifyStore {
                check_contents: false,
                repair: true,
            })
            .req(&WorkerRequest::RegisterDrvOutput(vec!["{}".into()]))
            .req(&WorkerRequest::SyncWithGC);
        let (res, mut o) = s.run(&mut fake, &opts(trusted));
        res.unwrap();
        o.greeting();
        // OptimiseStore: its log, then 1.
        let log = o.ok();
        assert_eq!(log, [StderrMsg::Next("0 freed\n".into())]);
        read_ok(o.r(), "optimise").unwrap();
        // VerifyStore: whether errors were found.
        o.ok();
        assert!(read_bool(o.r(), "errors").unwrap());
        if trusted {
            o.ok();
            assert!(!read_bool(o.r(), "errors").unwrap());
        } else {
            let (res, _) = o.work();
            assert!(res.unwrap_err().message.contains("trusted-users"));
        }
        // RegisterDrvOutput: refused with a reason; the session goes on.
        let (res, _) = o.work();
        assert!(res.unwrap_err().message.contains("not supported"));
        o.ok();
        read_ok(o.r(), "sync").unwrap();
        o.done();
        let want: Vec<String> = if trusted {
            vec![
                "optimise".into(),
                "verify contents=true repair=false".into(),
                "verify contents=false repair=true".into(),
            ]
        } else {
            vec![
                "optimise".into(),
                "verify contents=true repair=false".into(),
            ]
        };
        assert_eq!(fake.calls, want);
    }
}

#[test]
fn substitutable_path_infos_from_old_clients_are_a_plain_set() {
    // Before 1.22 the paths come without content addresses; the request reads back the same.
    let s1 = sp("s1", 10);
    for minor in [21u8, 22] {
        let mut buf = Vec::new();
        let req = WorkerRequest::QuerySubstitutablePathInfos([(s1.clone(), None)].into());
        write_request(&mut buf, v(minor), &dir(), &req).unwrap();
        let mut r = &buf[..];
        let got = read_request(&mut r, v(minor), &dir(), &L).unwrap().unwrap();
        assert_eq!(got, req);
        assert!(r.is_empty());
        // 1.21: op, count, path; 1.22: op, count, path, empty content address.
        let strings = if minor < 22 { 1 } else { 2 };
        let path_len = 8 + dir().display(&s1).len().div_ceil(8) * 8;
        assert_eq!(buf.len(), 16 + path_len + (strings - 1) * 8, "{minor}");
    }
}
