//! Arbitrary input.

use super::*;

pub(super) fn any_version() -> impl Strategy<Value = Version> {
    prop::sample::select(MINORS.to_vec()).prop_map(v)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn readers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), ver in any_version()) {
        let d = dir();
        let small = Limits { max_string: 4096, max_items: 64 };
        let _ = read_stderr(&mut &bytes[..], ver, &small);
        let _ = read_request(&mut &bytes[..], ver, &d, &small);
        for op in Op::ALL {
            let _ = read_request_body(&mut &bytes[..], op, ver, &d, &small);
        }
        let _ = read_build_result(&mut &bytes[..], ver, &small);
        let _ = read_keyed_build_results(&mut &bytes[..], ver, &d, &small);
        let _ = read_derived_paths(&mut &bytes[..], ver, &d, &small);
        let _ = PathInfo::read(&mut &bytes[..], ver, &d, &small);
        let _ = read_path_info_reply(&mut &bytes[..], ver, &d, &small);
        let _ = ClientOptions::read(&mut &bytes[..], ver, &small);
        let _ = read_missing(&mut &bytes[..], &d, &small);
        let _ = read_output_map(&mut &bytes[..], &d, &small);
        let _ = process_stderr(&mut &bytes[..], &mut Vec::new(), ver, &small, Some(&mut &b"data"[..]), &mut |_| {});
        let mut m = MultiplePathsReader::new(&bytes[..], &d, &small);
        for _ in 0..4 {
            match m.next_path() {
                Ok(Some((_, mut nar))) => { let _ = nar.read_to_end(&mut Vec::new()); }
                _ => break,
            }
        }
        let _ = m.finish();
        let mut p = NarPayload::new(&bytes[..], Vec::new(), ver, 100);
        let _ = p.read_to_end(&mut Vec::new());
        let _ = p.finish();
    }

    #[test]
    fn messages_after_a_valid_prefix_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..256),
        ver in any_version(),
        which in 0usize..8,
    ) {
        // A valid message cut anywhere and followed by garbage.
        let m = &all_messages()[which];
        let mut buf = Vec::new();
        write_stderr(&mut buf, ver, m).unwrap();
        let cut = tail.len() % (buf.len() + 1);
        buf.truncate(cut);
        buf.extend_from_slice(&tail);
        let _ = read_stderr(&mut &buf[..], ver, &L);
    }

    #[test]
    fn huge_lengths_are_too_long(prefix_op in prop::sample::select(vec![6u64, 26, 31, 38, 41]), len in (64u64 << 20) + 1..) {
        let b = B::default().n(prefix_op).n(len);
        let e = read_request(&mut &b.0[..], v(34), &dir(), &L).unwrap_err();
        prop_assert!(matches!(e, WireError::TooLong { .. }), "{}", e);
    }

    #[test]
    fn log_lines_round_trip(line in ".*", ver in any_version()) {
        let m = StderrMsg::Next(line);
        let mut buf = Vec::new();
        write_stderr(&mut buf, ver, &m).unwrap();
        prop_assert_eq!(read_stderr(&mut &buf[..], ver, &L).unwrap(), m);
    }
}

#[test]
pub(super) fn nar_payload_output_is_flushed_for_each_request() {
    // The request must reach the client before the server waits for the answer.
    struct Flushes(Vec<u8>, usize);
    impl Write for Flushes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.1 += 1;
            Ok(())
        }
    }
    let input = B::default().s("abcd");
    let mut out = Flushes(Vec::new(), 0);
    let mut p = NarPayload::new(&input.0[..], &mut out, v(21), 4);
    p.read_to_end(&mut Vec::new()).unwrap();
    p.finish().unwrap();
    assert_eq!(out.1, 1);
}
