//! What an untrusted session may not do.

use super::*;

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
