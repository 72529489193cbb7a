//! The client side of the worker protocol over ssh (`ssh-ng://` machines): one session with
//! a remote `nix-daemon --stdio`. Build logs arrive as protocol messages, so nothing else
//! needs draining; the daemon's stderr is kept only for error messages.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, BufRead, BufReader, BufWriter};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout};
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
use crate::LocalStore;

/// The oldest daemon we copy to: `AddMultipleToStore` arrived in 1.32 (Nix 2.4).
const MINIMUM: Version = Version::new(1, 32);

/// One session with a remote `nix-daemon --stdio`.
pub struct WorkerClient {
    uri: String,
    child: Child,
    r: BufReader<ChildStdout>,
    w: BufWriter<ChildStdin>,
    version: Version,
    store_dir: StoreDir,
    limits: Limits,
    tail: Arc<Mutex<VecDeque<String>>>,
    drain: Option<JoinHandle<()>>,
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
        let mut c = Self {
            uri,
            child,
            r: BufReader::with_capacity(256 << 10, stdout),
            w: BufWriter::with_capacity(256 << 10, stdin),
            version: WORKER_PROTOCOL_VERSION,
            store_dir,
            limits: Limits::default(),
            tail,
            drain,
        };
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
        client_post_handshake(&mut c.r, &mut c.w, c.version, &c.limits)
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
        Ok(c)
    }

    fn tail(&self) -> Vec<String> {
        let t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().cloned().collect()
    }

    fn protocol(&mut self, source: WireError) -> RemoteError {
        if source.is_eof() {
            let _ = self.child.wait();
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

    /// Send `paths` (valid here) as one `AddMultipleToStore` stream, dependencies first;
    /// with `check_sigs`, the machine accepts only paths signed by keys it trusts (as `nix
    /// copy` asks), else it takes them on our word (a master sending a build's inputs).
    pub fn import_paths(
        &mut self,
        store: &LocalStore,
        paths: &BTreeSet<StorePath>,
        check_sigs: bool,
    ) -> Result<(), RemoteError> {
        if paths.is_empty() {
            return Ok(());
        }
        let uri = self.uri.clone();
        let store_err = |what: &'static str| {
            let uri = uri.clone();
            move |source| RemoteError::Store {
                uri,
                what,
                source: Box::new(source),
            }
        };
        let sorted = store
            .topo_sort(paths)
            .map_err(store_err("ordering paths"))?;
        let mut infos = Vec::new();
        for p in &sorted {
            let i = store
                .path_info(p)
                .map_err(store_err("reading path infos"))?;
            infos.push(PathInfo {
                path: i.path,
                info: UnkeyedPathInfo {
                    deriver: i.deriver,
                    nar_hash: i.nar_hash,
                    references: i.references,
                    registration_time: u64::try_from(i.registration_time).unwrap_or(0),
                    nar_size: i.nar_size,
                    ultimate: i.ultimate,
                    sigs: i.sigs,
                    ca: i.ca,
                },
            });
        }
        let sd = self.store_dir.clone();
        let send_err = |source: io::Error| RemoteError::Send {
            uri: self.uri.clone(),
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
        for info in &infos {
            // The NAR comes from a thread writing into a pipe as it reads the store.
            let (mut rx, tx) = io::pipe().map_err(send_err)?;
            let sent = std::thread::scope(|s| {
                let dump = s.spawn(move || store.nar_from_path(&info.path, tx));
                let sent = m.add(info, &mut rx);
                drop(rx);
                (sent, dump.join())
            });
            match sent {
                (Ok(()), Ok(Ok(()))) => {}
                (_, Ok(Err(e))) => return Err(store_err("reading a path to send")(e)),
                (Err(e), _) => return Err(send_err(e)),
                (_, Err(p)) => std::panic::resume_unwind(p),
            }
        }
        m.finish().map_err(send_err)?;
        self.work("copying paths", None)
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

    /// The closure of `paths` there, each with what the machine records about it. A path
    /// it does not have is an error naming it.
    pub fn query_closure(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, UnkeyedPathInfo>, RemoteError> {
        let mut out = BTreeMap::new();
        let mut todo: Vec<StorePath> = paths.iter().cloned().collect();
        while let Some(p) = todo.pop() {
            if out.contains_key(&p) {
                continue;
            }
            let Some(info) = self.query_path_info(&p)? else {
                return Err(RemoteError::Missing {
                    uri: self.uri.clone(),
                    path: self.store_dir.display(&p),
                });
            };
            todo.extend(
                info.references
                    .iter()
                    .filter(|r| !out.contains_key(*r))
                    .cloned(),
            );
            out.insert(p, info);
        }
        Ok(out)
    }

    /// Copy `path` (its references valid here) from the machine into `store`, checked
    /// against `info` and registered with it, as `nix copy` does (not built here: not
    /// ultimately trusted).
    pub fn add_from(
        &mut self,
        store: &LocalStore,
        path: &StorePath,
        info: &UnkeyedPathInfo,
    ) -> Result<(), RemoteError> {
        self.call(
            "asking for a path",
            &WorkerRequest::NarFromPath(path.clone()),
            None,
        )?;
        let mut local = crate::ValidPathInfo::new(path.clone(), info.nar_hash, info.nar_size);
        local.deriver = info.deriver.clone();
        local.references = info.references.clone();
        local.sigs = info.sigs.clone();
        local.ca = info.ca;
        store
            .add_nar(&local, &mut self.r)
            .map_err(|source| RemoteError::Store {
                uri: self.uri.clone(),
                what: "adding a path from the machine",
                source: Box::new(source),
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

    /// The process of the session (its own process group).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for WorkerClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }
}

/// Copy the closure of `paths` to the machine: one query for what it has (after it
/// substituted what it could, with `substitute`), then what it lacks as one
/// `AddMultipleToStore` stream, checked against the keys it trusts with `check_sigs`. The
/// paths sent.
pub fn copy_to(
    store: &LocalStore,
    client: &mut WorkerClient,
    paths: &[StorePath],
    substitute: bool,
    check_sigs: bool,
) -> Result<BTreeSet<StorePath>, RemoteError> {
    let closure = store
        .closure(paths.iter().cloned(), false, false)
        .map_err(|source| RemoteError::Store {
            uri: client.uri.clone(),
            what: "computing the closure to send",
            source: Box::new(source),
        })?;
    let have = client.query_valid(&closure, substitute)?;
    let missing: BTreeSet<StorePath> = closure.difference(&have).cloned().collect();
    client.import_paths(store, &missing, check_sigs)?;
    Ok(missing)
}

/// Copy the closure of `paths` on the machine into `store`: what is missing here, a path
/// after its references. The paths received.
pub fn copy_from(
    store: &LocalStore,
    client: &mut WorkerClient,
    paths: &BTreeSet<StorePath>,
) -> Result<Vec<StorePath>, RemoteError> {
    let closure = client.query_closure(paths)?;
    let have = store
        .valid_among(closure.keys())
        .map_err(|source| RemoteError::Store {
            uri: client.uri.clone(),
            what: "checking what is here",
            source: Box::new(source),
        })?;
    let missing: BTreeMap<StorePath, UnkeyedPathInfo> = closure
        .into_iter()
        .filter(|(p, _)| !have.contains(p))
        .collect();
    // References first.
    let keys: BTreeSet<StorePath> = missing.keys().cloned().collect();
    let order = crate::closure::topo_sort(&client.store_dir, &keys, |p| {
        Ok(missing[p].references.iter().cloned().collect())
    })
    .map_err(|_| RemoteError::Cycle {
        uri: client.uri.clone(),
    })?;
    let mut done = Vec::new();
    for p in order {
        client.add_from(store, &p, &missing[&p])?;
        done.push(p);
    }
    Ok(done)
}
