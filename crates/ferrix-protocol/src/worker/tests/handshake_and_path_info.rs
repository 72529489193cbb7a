//! Handshake start-up and path infos.

use super::*;

#[test]
pub(super) fn startup_both_sides() {
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

pub(super) fn sample_info() -> UnkeyedPathInfo {
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
pub(super) fn path_info_round_trip_and_bytes() {
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
pub(super) fn query_path_info_reply() {
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
