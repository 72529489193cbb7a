//! The client side of the worker protocol: one session with a remote `nix-daemon --stdio`
//! over ssh (`ssh-ng://` machines), or with a daemon on its Unix socket (`daemon`,
//! `unix://…`). Build logs arrive as protocol messages, so nothing else needs draining; a
//! remote daemon's stderr is kept only for error messages.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ferrix_format::{Derivation, Hash, StoreDir, StorePath};
use ferrix_protocol::wire::{Limits, WireError};
use ferrix_protocol::worker::payload::MultiplePathsWriter;
use ferrix_protocol::worker::reply::read_path_info_reply;
use ferrix_protocol::worker::stderr::{result_type, verbosity};
use ferrix_protocol::worker::{
    client_handshake, client_post_handshake, client_startup, process_stderr, read_build_result,
    write_request, BuildMode, ClientOptions, ErrorInfo, Field, PathInfo, StderrMsg,
    UnkeyedPathInfo, WorkerRequest, WORKER_PROTOCOL_VERSION,
};
use ferrix_protocol::Version;

use crate::serve_client::{BuildResult, LogSink, RemoteError};
use crate::ssh::Ssh;
use crate::store::{CopyError, Store};
use crate::streams::PassError;
use crate::{LocalStore, ValidPathInfo};

/// The oldest daemon we copy to: `AddMultipleToStore` arrived in 1.32 (Nix 2.4).
const MINIMUM: Version = Version::new(1, 32);

/// One session with a daemon.
pub struct WorkerClient {
    uri: String,
    peer: Peer,
    r: BufReader<Box<dyn Read + Send>>,
    w: BufWriter<Box<dyn Write + Send>>,
    version: Version,
    store_dir: StoreDir,
    limits: Limits,
    tail: Arc<Mutex<VecDeque<String>>>,
    drain: Option<JoinHandle<()>>,
    /// What the daemon said of itself in the handshake.
    info: ferrix_protocol::worker::HandshakeInfo,
}

/// What the session runs over.
enum Peer {
    /// A process (ssh running `nix-daemon --stdio`), on its standard streams.
    Process(Child),
    /// A daemon's socket.
    Socket(UnixStream),
}

impl std::fmt::Debug for WorkerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerClient")
            .field("uri", &self.uri)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl WorkerClient {
    /// Start a session: the daemon over ssh, the greeting, and the options (build logs
    /// wanted, `max_silent_time` in seconds).
    pub fn start(
        ssh: &mut Ssh,
        store_dir: StoreDir,
        max_silent_time: u64,
    ) -> Result<Self, RemoteError> {
        let uri = ssh.target().uri.clone();
        let child = ssh.spawn_session()?;
        Self::over(uri, child, store_dir, max_silent_time)
    }

    /// Speak to a session already started (by [`Ssh::spawn_session`]): the handshake, which
    /// waits for the other side, needs no hold on the connection that started it.
    pub fn over(
        uri: String,
        mut child: Child,
        store_dir: StoreDir,
        max_silent_time: u64,
    ) -> Result<Self, RemoteError> {
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("the session's standard streams are piped")
        };
        let (r, w): (Box<dyn Read + Send>, Box<dyn Write + Send>) =
            (Box::new(stdout), Box::new(stdin));
        let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let t = tail.clone();
        let drain = std::thread::Builder::new()
            .name("remote-stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() == 20 {
                        t.pop_front();
                    }
                    t.push_back(ferrix_protocol::text::plain(&line).into_owned());
                }
            })
            .ok();
        let c = Self {
            uri,
            peer: Peer::Process(child),
            r: BufReader::with_capacity(256 << 10, r),
            w: BufWriter::with_capacity(256 << 10, w),
            version: WORKER_PROTOCOL_VERSION,
            store_dir,
            limits: Limits::default(),
            tail,
            drain,
            info: Default::default(),
        };
        c.greet(max_silent_time)
    }

    /// Speak to the daemon listening at `socket` (named `uri` in messages).
    pub fn over_socket(
        uri: String,
        socket: &Path,
        store_dir: StoreDir,
        max_silent_time: u64,
    ) -> Result<Self, RemoteError> {
        let connected = UnixStream::connect(socket)
            .and_then(|s| Ok((s.try_clone()?, s.try_clone()?, s)))
            .map_err(|source| RemoteError::Send {
                uri: uri.clone(),
                what: "connecting to the daemon's socket",
                tail: Vec::new(),
                source,
            });
        let (reading, writing, stream) = connected?;
        let c = Self {
            uri,
            peer: Peer::Socket(stream),
            r: BufReader::with_capacity(256 << 10, Box::new(reading)),
            w: BufWriter::with_capacity(256 << 10, Box::new(writing)),
            version: WORKER_PROTOCOL_VERSION,
            store_dir,
            limits: Limits::default(),
            tail: Arc::default(),
            drain: None,
            info: Default::default(),
        };
        c.greet(max_silent_time)
    }

    /// The greeting, and the options (build logs wanted, `max_silent_time` in seconds).
    fn greet(mut self, max_silent_time: u64) -> Result<Self, RemoteError> {
        let c = &mut self;
        let n = client_handshake(
            &mut c.r,
            &mut c.w,
            WORKER_PROTOCOL_VERSION,
            &BTreeSet::new(),
            &c.limits,
        )
        .map_err(|e| c.protocol(e))?;
        c.version = n.version;
        if c.version < MINIMUM {
            return Err(c.protocol(WireError::UnsupportedVersion {
                protocol: "worker",
                ours: WORKER_PROTOCOL_VERSION,
                minimum: MINIMUM,
                theirs: c.version.to_wire(),
            }));
        }
        c.info = client_post_handshake(&mut c.r, &mut c.w, c.version, &c.limits)
            .map_err(|e| c.protocol(e))?;
        let started = client_startup(&mut c.r, &mut c.w, c.version, &c.limits, &mut |_| {})
            .map_err(|e| c.protocol(e))?;
        c.refused("starting a session", started)?;
        let options = ClientOptions {
            max_silent_time,
            build_verbosity: verbosity::ERROR,
            ..ClientOptions::default()
        };
        c.call("setting options", &WorkerRequest::SetOptions(options), None)?;
        Ok(self)
    }

    fn tail(&self) -> Vec<String> {
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect()
    }

    fn protocol(&mut self, source: WireError) -> RemoteError {
        if source.is_eof() {
            if let Peer::Process(child) = &mut self.peer {
                let _ = child.wait();
            }
            if let Some(d) = self.drain.take() {
                let _ = d.join();
            }
        }
        RemoteError::Protocol {
            uri: self.uri.clone(),
            tail: self.tail(),
            source: Box::new(source),
        }
    }

    fn refused(&self, what: &'static str, r: Result<(), ErrorInfo>) -> Result<(), RemoteError> {
        r.map_err(|e| RemoteError::Refused {
            uri: self.uri.clone(),
            what,
            source: Box::new(e),
        })
    }

    /// Send `req` and follow its log messages (to `sink`) until the daemon says it is done.
    fn call(
        &mut self,
        what: &'static str,
        req: &WorkerRequest,
        sink: Option<&mut LogSink>,
    ) -> Result<(), RemoteError> {
        let sd = self.store_dir.clone();
        write_request(&mut self.w, self.version, &sd, req).map_err(|source| RemoteError::Send {
            uri: self.uri.clone(),
            what,
            tail: self.tail(),
            source,
        })?;
        self.work(what, sink)
    }

    fn work(
        &mut self,
        what: &'static str,
        mut sink: Option<&mut LogSink>,
    ) -> Result<(), RemoteError> {
        let mut log = |m: StderrMsg| {
            let Some(s) = sink.as_mut() else { return };
            match m {
                StderrMsg::Next(line) => s(line.trim_end_matches('\n')),
                StderrMsg::Result { kind, fields, .. }
                    if kind == result_type::BUILD_LOG_LINE
                        || kind == result_type::POST_BUILD_LOG_LINE =>
                {
                    if let Some(Field::Str(line)) = fields.first() {
                        s(line);
                    }
                }
                _ => {}
            }
        };
        let done = process_stderr(
            &mut self.r,
            &mut self.w,
            self.version,
            &self.limits,
            None,
            &mut log,
        )
        .map_err(|e| self.protocol(e))?;
        self.refused(what, done)
    }

    /// Which of `paths` the machine has; with `substitute`, after it fetched what it could
    /// of the rest from its own substituters.
    pub fn query_valid(
        &mut self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, RemoteError> {
        self.call(
            "asking which paths it has",
            &WorkerRequest::QueryValidPaths {
                paths: paths.clone(),
                substitute,
            },
            None,
        )?;
        let sd = self.store_dir.clone();
        let got = ferrix_protocol::wire::read_store_path_set(
            &mut self.r,
            &sd,
            &self.limits,
            "valid paths",
        )
        .map_err(|e| self.protocol(e))?;
        if let Some(p) = got.iter().find(|p| !paths.contains(*p)) {
            return Err(RemoteError::Unasked {
                uri: self.uri.clone(),
                path: sd.display(p),
            });
        }
        Ok(got)
    }

    /// Send `paths` (valid in `store`) as one `AddMultipleToStore` stream, references
    /// first; with `check_sigs`, the machine accepts only paths signed by keys it trusts (as
    /// `nix copy` asks), else it takes them on our word (a master sending a build's inputs).
    pub fn import_paths(
        &mut self,
        store: &LocalStore,
        paths: &BTreeSet<StorePath>,
        check_sigs: bool,
    ) -> Result<(), RemoteError> {
        let uri = self.uri.clone();
        crate::serve_client::send_local(&uri, store, paths, |infos| {
            self.send_paths(store, infos, check_sigs)
        })
    }

    /// Send `infos` (references first), their NARs read from `from`, as one
    /// `AddMultipleToStore` stream (see [`Self::import_paths`] for `check_sigs`).
    pub fn send_paths(
        &mut self,
        from: &dyn Store,
        infos: &[ValidPathInfo],
        check_sigs: bool,
    ) -> Result<(), CopyError> {
        if infos.is_empty() {
            return Ok(());
        }
        let sd = self.store_dir.clone();
        let uri = self.uri.clone();
        let send_err = |source: io::Error| RemoteError::Send {
            uri: uri.clone(),
            what: "copying paths",
            tail: Vec::new(),
            source,
        };
        write_request(
            &mut self.w,
            self.version,
            &sd,
            &WorkerRequest::AddMultipleToStore {
                repair: false,
                dont_check_sigs: !check_sigs,
            },
        )
        .map_err(send_err)?;
        let mut m =
            MultiplePathsWriter::new(&mut self.w, &sd, infos.len() as u64).map_err(send_err)?;
        for i in infos {
            let info = PathInfo {
                path: i.path.clone(),
                info: UnkeyedPathInfo {
                    deriver: i.deriver.clone(),
                    nar_hash: i.nar_hash,
                    references: i.references.clone(),
                    registration_time: u64::try_from(i.registration_time).unwrap_or(0),
                    nar_size: i.nar_size,
                    ultimate: i.ultimate,
                    sigs: i.sigs.clone(),
                    ca: i.ca,
                },
            };
            // The NAR comes from a thread of its own, as the source reads it.
            crate::store::with_nar(from, i, |nar| {
                m.add(&info, nar).map_err(|e| send_err(e).into())
            })?;
        }
        m.finish().map_err(send_err)?;
        Ok(self.work("copying paths", None)?)
    }

    /// Build `drv` there (its inputs must be valid there), its log going to `sink`.
    pub fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &Derivation,
        mut sink: LogSink,
    ) -> Result<BuildResult, RemoteError> {
        self.call(
            "building",
            &WorkerRequest::BuildDerivation {
                drv_path: drv_path.clone(),
                drv: drv.clone(),
                mode: BuildMode::Normal,
            },
            Some(&mut sink),
        )?;
        let r = read_build_result(&mut self.r, self.version, &self.limits)
            .map_err(|e| self.protocol(e))?;
        Ok(r.into())
    }

    /// What the machine records about `path`, if it is valid there.
    pub fn query_path_info(
        &mut self,
        path: &StorePath,
    ) -> Result<Option<UnkeyedPathInfo>, RemoteError> {
        self.call(
            "asking about a path",
            &WorkerRequest::QueryPathInfo(path.clone()),
            None,
        )?;
        let sd = self.store_dir.clone();
        read_path_info_reply(&mut self.r, self.version, &sd, &self.limits)
            .map_err(|e| self.protocol(e))
    }

    /// The NAR hashes the machine records for `paths` (the valid ones).
    pub fn nar_hashes(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, Hash>, RemoteError> {
        let mut out = BTreeMap::new();
        for p in paths {
            if let Some(i) = self.query_path_info(p)? {
                out.insert(p.clone(), i.nar_hash);
            }
        }
        Ok(out)
    }

    /// Write the NAR of `path` (valid there) to `out`, its structure checked as it passes.
    pub fn nar_into(&mut self, path: &StorePath, out: &mut dyn io::Write) -> Result<(), CopyError> {
        self.call(
            "asking for a path",
            &WorkerRequest::NarFromPath(path.clone()),
            None,
        )?;
        crate::streams::pass_nar(&mut self.r, out)
            .map(drop)
            .map_err(|e| match e {
                PassError::Read(source) => RemoteError::Nar {
                    uri: self.uri.clone(),
                    path: self.store_dir.display(path),
                    source: Box::new(source),
                }
                .into(),
                PassError::Write(source) => CopyError::Stream {
                    store: self.uri.clone(),
                    path: self.store_dir.display(path),
                    source,
                },
            })
    }

    /// Copy `path` from the machine to `target` (which must not exist).
    pub fn dump_to(&mut self, path: &StorePath, target: &Path) -> Result<u64, RemoteError> {
        self.call(
            "asking for a path",
            &WorkerRequest::NarFromPath(path.clone()),
            None,
        )?;
        ferrix_format::nar::restore_prefix(&mut self.r, target).map_err(|source| {
            RemoteError::Restore {
                uri: self.uri.clone(),
                path: self.store_dir.display(path),
                source: Box::new(source),
            }
        })
    }

    /// The protocol version of the session.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The daemon's Nix version, if it said (from 1.33).
    pub fn daemon_version(&self) -> Option<&str> {
        self.info.nix_version.as_deref()
    }

    /// Whether the daemon trusts us, if it said (from 1.35).
    pub fn trusted(&self) -> Option<bool> {
        self.info.trusted
    }

    /// The process of the session (its own process group), if it runs over one.
    pub fn pid(&self) -> Option<u32> {
        match &self.peer {
            Peer::Process(child) => Some(child.id()),
            Peer::Socket(_) => None,
        }
    }

    /// Tell the session's process to end, without waiting for it (dropping the session
    /// waits): several sessions end at once. A socket is shut down.
    pub fn kill(&mut self) {
        match &mut self.peer {
            Peer::Process(child) => {
                let _ = child.kill();
            }
            Peer::Socket(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

impl Drop for WorkerClient {
    fn drop(&mut self) {
        self.kill();
        if let Peer::Process(child) = &mut self.peer {
            let _ = child.wait();
        }
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }
}

mod ops;

pub use ops::Collected;
