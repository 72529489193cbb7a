//! Scripted client sessions: the bytes a client writes, and the server's output read as a
//! client would.

use super::*;

/// The client's bytes up to the end of the post-handshake.
pub(super) fn greeting(ver: Version, features: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    write_u64(&mut b, WORKER_MAGIC_1).unwrap();
    write_u64(&mut b, ver.to_wire()).unwrap();
    if ver >= v(38) {
        ferrix_protocol::wire::write_strings(&mut b, features.iter().copied()).unwrap();
    }
    if ver >= v(14) {
        write_u64(&mut b, 0).unwrap();
    }
    if ver >= v(11) {
        write_u64(&mut b, 0).unwrap();
    }
    b
}

pub(super) fn opts(trusted: bool) -> WorkerOptions {
    let mut o = WorkerOptions::new(dir(), "2.8.0");
    o.trusted = trusted;
    o
}

/// A client session: writes requests into the input, then reads the server's output.
pub(super) struct Script {
    pub(super) ver: Version,
    pub(super) input: Vec<u8>,
}

impl Script {
    pub(super) fn new(ver: Version) -> Self {
        Self {
            ver,
            input: greeting(ver, &[]),
        }
    }

    pub(super) fn req(&mut self, req: &WorkerRequest) -> &mut Self {
        write_request(&mut self.input, self.ver, &dir(), req).unwrap();
        self
    }

    pub(super) fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.input.extend_from_slice(b);
        self
    }

    /// The NAR of `AddToStoreNar` as this version sends it. Tunnelled: one answer for the
    /// whole NAR (the fake reads 8 KiB at a time, and the NARs here are smaller).
    pub(super) fn nar(&mut self, nar: &[u8]) -> &mut Self {
        if self.ver >= v(23) {
            write_framed(&mut self.input, &mut &nar[..]).unwrap();
        } else if self.ver >= v(21) {
            push_bytes(&mut self.input, nar);
        } else {
            self.input.extend_from_slice(nar);
        }
        self
    }

    pub(super) fn run(
        &self,
        fake: &mut Fake,
        o: &WorkerOptions,
    ) -> (Result<(), WorkerError<FakeError>>, Output) {
        let mut out = Vec::new();
        let res = serve_worker(fake, Cursor::new(&self.input), &mut out, o);
        (
            res,
            Output {
                ver: self.ver,
                bytes: Cursor::new(out),
            },
        )
    }
}

/// The server's output, read as a client would.
pub(super) struct Output {
    pub(super) ver: Version,
    pub(super) bytes: Cursor<Vec<u8>>,
}

impl Output {
    /// The greeting and start-up; what the server said about itself.
    pub(super) fn greeting(&mut self) -> HandshakeInfo {
        let n = client_handshake(
            &mut self.bytes,
            &mut Vec::new(),
            self.ver,
            &BTreeSet::new(),
            &L,
        )
        .unwrap();
        assert_eq!(n.version, self.ver);
        assert!(n.features.is_empty());
        let info = client_post_handshake(&mut self.bytes, &mut Vec::new(), self.ver, &L).unwrap();
        client_startup(&mut self.bytes, &mut Vec::new(), self.ver, &L, &mut |m| {
            panic!("start-up message {m:?}")
        })
        .unwrap()
        .unwrap();
        info
    }

    /// The messages of one operation's work, up to its end.
    pub(super) fn work(&mut self) -> (Result<(), ErrorInfo>, Vec<StderrMsg>) {
        let mut log = Vec::new();
        let res = process_stderr(
            &mut self.bytes,
            &mut Vec::new(),
            self.ver,
            &L,
            None,
            &mut |m| log.push(m),
        )
        .unwrap();
        (res, log)
    }

    /// A successful work, its log.
    pub(super) fn ok(&mut self) -> Vec<StderrMsg> {
        let (res, log) = self.work();
        res.unwrap();
        log
    }

    /// A tunnelled NAR's data requests (skipped), then the end of the work.
    pub(super) fn work_with_reads(&mut self) -> (Result<(), ErrorInfo>, usize) {
        let mut reads = 0;
        loop {
            match read_stderr(&mut self.bytes, self.ver, &L).unwrap() {
                StderrMsg::Read(_) => reads += 1,
                StderrMsg::Last => return (Ok(()), reads),
                StderrMsg::Error(e) => return (Err(e), reads),
                _ => {}
            }
        }
    }

    pub(super) fn r(&mut self) -> &mut Cursor<Vec<u8>> {
        &mut self.bytes
    }

    pub(super) fn done(&self) {
        let left = self.bytes.get_ref().len() as u64 - self.bytes.position();
        assert_eq!(left, 0, "unread output bytes");
    }
}

pub(super) fn trivial_drv(out: &StorePath, builder: &str) -> Derivation {
    Derivation {
        outputs: [(
            "out".to_owned(),
            DerivationOutput::InputAddressed(out.clone()),
        )]
        .into(),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        platform: "x86_64-linux".into(),
        builder: builder.into(),
        args: vec![],
        env: BTreeMap::new(),
    }
}

pub(super) fn ca_drv(builder: &str) -> Derivation {
    Derivation {
        outputs: [(
            "out".to_owned(),
            DerivationOutput::CaFloating {
                method: FileIngestionMethod::Recursive,
                algo: HashAlgo::Sha256,
            },
        )]
        .into(),
        ..trivial_drv(&sp("x", 9), builder)
    }
}
