//! Derived paths and build results.

use super::*;

#[test]
pub(super) fn derived_paths() {
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

pub(super) fn sample_results() -> Vec<BuildResult> {
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
pub(super) fn result_at(r: &BuildResult, version: Version) -> BuildResult {
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
pub(super) fn build_results_round_trip() {
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
pub(super) fn build_result_exact_bytes() {
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
pub(super) fn build_result_conversions() {
    let r = sample_results().pop().unwrap();
    let s: crate::serve::BuildResult = r.clone().into();
    assert_eq!(s.built_outputs, r.built_outputs);
    let back: BuildResult = s.into();
    assert_eq!(back.cpu_user, None);
    assert_eq!(back.built_outputs, r.built_outputs);
}
