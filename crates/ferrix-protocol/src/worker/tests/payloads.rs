//! Replies and payloads.

use super::*;

#[test]
pub(super) fn replies_round_trip() {
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

pub(super) fn nar_of_text(text: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for t in ["nix-archive-1", "(", "type", "regular", "contents"] {
        push_bytes(&mut v, t.as_bytes());
    }
    push_bytes(&mut v, text.as_bytes());
    push_bytes(&mut v, b")");
    v
}

#[test]
pub(super) fn nar_payload_framed() {
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
pub(super) fn nar_payload_tunnelled() {
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
pub(super) fn nar_payload_raw() {
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

pub(super) fn path_info_for(base: &str, nar: &[u8], refs: &[&str]) -> PathInfo {
    let mut info = UnkeyedPathInfo::new(Hash::sha256(nar), nar.len() as u64);
    info.references = refs.iter().map(|b| sp(b)).collect();
    PathInfo {
        path: sp(base),
        info,
    }
}

#[test]
pub(super) fn multiple_paths_round_trip() {
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
