//! Bad input and failures: handler errors, unknown operations, malformed and truncated
//! requests, the logger's limits, error messages, and arbitrary bytes.

use super::*;

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
fn unknown_and_unsupported_operations_end_the_session() {
    for (op, want) in [
        (2u64, "invalid operation 2"),
        (24, "QueryFailedPaths (24)"),
        (1000, "invalid operation 1000"),
    ] {
        let mut s = Script::new(v(34));
        write_u64(&mut s.input, op).unwrap();
        s.req(&WorkerRequest::SyncWithGC);
        let (res, mut o) = s.run(&mut Fake::default(), &opts(true));
        match (op, res) {
            (24, Err(WorkerError::UnsupportedOp(Op::QueryFailedPaths))) => {}
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
        fn export_path(&mut self, p: &StorePath, o: &mut dyn Write) -> Result<(), FakeError> {
            self.0.export_path(p, o)
        }
        fn import_paths(
            &mut self,
            i: &mut dyn Read,
            t: bool,
            l: &mut dyn Logger,
        ) -> Result<Vec<StorePath>, FakeError> {
            self.0.import_paths(i, t, l)
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
        fn query_substitutable_paths(
            &mut self,
            p: &BTreeSet<StorePath>,
            l: &mut dyn Logger,
        ) -> Result<BTreeSet<StorePath>, FakeError> {
            self.0.query_substitutable_paths(p, l)
        }
        fn query_substitutable_path_infos(
            &mut self,
            p: &BTreeMap<StorePath, Option<ContentAddress>>,
            l: &mut dyn Logger,
        ) -> Result<BTreeMap<StorePath, SubstitutableInfo>, FakeError> {
            self.0.query_substitutable_path_infos(p, l)
        }
        fn optimise_store(&mut self, l: &mut dyn Logger) -> Result<(), FakeError> {
            self.0.optimise_store(l)
        }
        fn verify_store(
            &mut self,
            c: bool,
            r: bool,
            l: &mut dyn Logger,
        ) -> Result<bool, FakeError> {
            self.0.verify_store(c, r, l)
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
