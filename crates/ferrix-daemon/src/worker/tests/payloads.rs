//! The data after a request's arguments: NARs read in part, failing, or shorter than
//! announced, and the stream of `AddMultipleToStore`.

use super::*;
use crate::export_record::{read_record, write_record, ExportRecord};

#[test]
fn nar_from_path_failing_in_the_middle_ends_the_session() {
    let (mut fake, _, _) = Fake::with_paths();
    let broken = sp("broken", 9);
    let nar = nar_of_text("broken");
    fake.paths.insert(
        broken.clone(),
        (info_of(&broken, &nar, &[]).info, nar.clone()),
    );
    let mut s = Script::new(v(34));
    s.req(&WorkerRequest::NarFromPath(broken.clone()))
        .req(&WorkerRequest::IsValidPath(broken.clone()));
    let (res, mut o) = s.run(&mut fake, &opts(true));
    assert!(matches!(
        res,
        Err(WorkerError::Handler {
            op: Op::NarFromPath,
            source: FakeError::Asked
        })
    ));
    o.greeting();
    o.ok();
    let mut part = vec![0; 8];
    o.r().read_exact(&mut part).unwrap();
    assert_eq!(part, nar[..8]);
    o.done();
}

#[test]
fn add_to_store_nar_partly_read_or_failing() {
    for minor in MINORS {
        let ver = v(minor);
        for (read, fail) in [(Some(5), false), (Some(5), true), (None, true)] {
            let (mut fake, a, _) = Fake::with_paths();
            fake.nar_read = read;
            fake.nar_fail = fail;
            let nar = nar_of_text("a NAR the handler does not finish");
            let info = info_of(&sp("new", 4), &nar, &[]);
            let mut s = Script::new(ver);
            s.req(&WorkerRequest::AddToStoreNar {
                info,
                repair: false,
                dont_check_sigs: false,
            })
            .nar(&nar)
            .req(&WorkerRequest::IsValidPath(a.clone()));
            let (res, mut o) = s.run(&mut fake, &opts(true));
            res.unwrap_or_else(|e| panic!("{ver} {read:?} {fail}: {e}"));
            o.greeting();
            let (res, _) = o.work_with_reads();
            assert_eq!(res.is_err(), fail, "{ver}");
            o.ok();
            assert!(read_bool(o.r(), "valid").unwrap());
            o.done();
        }
    }
}

#[test]
fn add_to_store_nar_shorter_than_announced() {
    // The client announces more than it sends: the handler sees an early end (an error for
    // the client), the session goes on after the payload.
    let (mut fake, a, _) = Fake::with_paths();
    let nar = nar_of_text("short");
    let mut info = info_of(&sp("new", 4), &nar, &[]);
    info.info.nar_size += 10;
    let mut s = Script::new(v(34));
    s.req(&WorkerRequest::AddToStoreNar {
        info,
        repair: false,
        dont_check_sigs: false,
    })
    .nar(&nar)
    .req(&WorkerRequest::IsValidPath(a));
    let (res, mut o) = s.run(&mut fake, &opts(true));
    res.unwrap();
    o.greeting();
    let (res, _) = o.work();
    assert!(res.unwrap_err().message.contains("reading data"));
    o.ok();
    assert!(read_bool(o.r(), "valid").unwrap());
    o.done();
}

#[test]
fn add_multiple_to_store_partial_and_malformed() {
    let (mut fake, a, _) = Fake::with_paths();
    fake.nar_read = Some(3);
    let m1_nar = nar_of_text("m1");
    let m1 = info_of(&sp("m1", 5), &m1_nar, &[]);
    let m2_nar = nar_of_text("m2");
    let m2 = info_of(&sp("m2", 6), &m2_nar, &[]);
    let mut s = Script::new(v(34));
    s.req(&WorkerRequest::AddMultipleToStore {
        repair: false,
        dont_check_sigs: false,
    });
    let mut mw = MultiplePathsWriter::new(&mut s.input, &dir(), 2).unwrap();
    mw.add(&m1, &mut &m1_nar[..]).unwrap();
    mw.add(&m2, &mut &m2_nar[..]).unwrap();
    mw.finish().unwrap();
    // Well framed, but the path info inside is garbage: an error, the session goes on.
    s.req(&WorkerRequest::AddMultipleToStore {
        repair: false,
        dont_check_sigs: false,
    });
    let mut body = Vec::new();
    write_u64(&mut body, 1).unwrap();
    push_bytes(&mut body, b"/tmp/not-a-store-path");
    write_framed(&mut s.input, &mut &body[..]).unwrap();
    s.req(&WorkerRequest::IsValidPath(a.clone()));
    let (res, mut o) = s.run(&mut fake, &opts(true));
    res.unwrap();
    o.greeting();
    o.ok();
    assert_eq!(fake.calls.iter().filter(|c| c.starts_with("  ")).count(), 2);
    let (res, _) = o.work();
    assert!(res.unwrap_err().message.contains("bad stream of paths"));
    o.ok();
    assert!(read_bool(o.r(), "valid").unwrap());
    o.done();

    // A framed stream cut short: the session ends.
    let mut s = Script::new(v(34));
    s.req(&WorkerRequest::AddMultipleToStore {
        repair: false,
        dont_check_sigs: false,
    });
    write_u64(&mut s.input, 100).unwrap();
    s.raw(b"short");
    let (res, _) = s.run(&mut Fake::default(), &opts(true));
    assert!(
        matches!(
            res,
            Err(WorkerError::Payload {
                op: Op::AddMultipleToStore,
                ..
            })
        ),
        "{res:?}"
    );
}

/// `ExportPath` (16): the path's export record as `STDERR_WRITE` data, then `Last` and 1;
/// an invalid path is a plain error and the session goes on.
#[test]
fn export_path_sends_the_record_as_write_messages() {
    for minor in MINORS {
        let ver = v(minor);
        let (mut fake, a, b) = Fake::with_paths();
        let missing = sp("missing", 8);
        let mut s = Script::new(ver);
        s.req(&WorkerRequest::ExportPath(b.clone()))
            .req(&WorkerRequest::ExportPath(missing.clone()))
            .req(&WorkerRequest::IsValidPath(a.clone()));
        let (res, mut o) = s.run(&mut fake, &opts(false));
        res.unwrap();
        o.greeting();
        let data: Vec<u8> = o
            .ok()
            .into_iter()
            .flat_map(|m| match m {
                StderrMsg::Write(d) => d,
                other => panic!("{ver}: {other:?}"),
            })
            .collect();
        assert_eq!(read_u64(o.r(), "done").unwrap(), 1);
        let (info, nar) = fake.paths[&b].clone();
        let want = ExportRecord {
            path: b.clone(),
            references: info.references,
            deriver: info.deriver,
            nar,
        };
        let mut expected = Vec::new();
        write_record(&mut expected, &dir(), &want).unwrap();
        assert_eq!(data, expected, "{ver}");
        assert_eq!(read_record(&mut &data[..], &dir()).unwrap(), want);
        let (res, _) = o.work();
        assert!(res.unwrap_err().message.contains("is not valid"), "{ver}");
        o.ok();
        assert!(read_bool(o.r(), "valid").unwrap());
        o.done();
    }
}

/// `ImportPaths` (27): the export stream is pulled with `STDERR_READ`, and only as much of it
/// as the handler reads; the reply is the paths imported. A client that stops sending ends
/// the import with an error, and the session goes on.
#[test]
fn import_paths_pulls_the_stream_from_the_client() {
    let c = sp("c", 5);
    let d = sp("d", 6);
    let records = [
        ExportRecord {
            path: c.clone(),
            references: BTreeSet::new(),
            deriver: None,
            nar: nar_of_text("c"),
        },
        ExportRecord {
            path: d.clone(),
            references: [c.clone()].into(),
            deriver: Some(sp("d.drv", 7)),
            nar: nar_of_text("d refers to c"),
        },
    ];
    let mut stream = Vec::new();
    for r in &records {
        write_u64(&mut stream, 1).unwrap();
        write_record(&mut stream, &dir(), r).unwrap();
    }
    write_u64(&mut stream, 0).unwrap();
    for (minor, trusted) in [(18, true), (21, false), (34, true), (38, false)] {
        let ver = v(minor);
        let (mut fake, a, _) = Fake::with_paths();
        let mut s = Script::new(ver);
        // The fake reads through an 8 KiB buffer: its first request asks for more than the
        // whole stream, which the client sends in one answer.
        s.req(&WorkerRequest::ImportPaths).raw(&{
            let mut b = Vec::new();
            push_bytes(&mut b, &stream);
            b
        });
        // A second import whose client sends half a stream, then nothing.
        s.req(&WorkerRequest::ImportPaths).raw(&{
            let mut b = Vec::new();
            push_bytes(&mut b, &stream[..20]);
            write_u64(&mut b, 0).unwrap();
            b
        });
        s.req(&WorkerRequest::IsValidPath(a.clone()));
        let (res, mut o) = s.run(&mut fake, &opts(trusted));
        res.unwrap_or_else(|e| panic!("{ver}: {e}"));
        o.greeting();
        let (res, reads) = o.work_with_reads();
        res.unwrap();
        assert_eq!(reads, 1, "{ver}");
        let got = read_string_set(o.r(), &L, "imported").unwrap();
        let want: BTreeSet<String> = [&c, &d]
            .iter()
            .map(|p| dir().display(p).to_string())
            .collect();
        assert_eq!(got, want, "{ver}");
        let (res, reads) = o.work_with_reads();
        assert!(res.is_err(), "{ver}: a truncated stream was imported");
        assert_eq!(reads, 2, "{ver}");
        o.ok();
        assert!(read_bool(o.r(), "valid").unwrap());
        o.done();
        assert_eq!(fake.paths[&d].0.references, records[1].references);
        assert_eq!(fake.paths[&d].1, records[1].nar);
        assert!(
            fake.calls.contains(&format!("import trusted={trusted}")),
            "{:?}",
            fake.calls
        );
    }
}
