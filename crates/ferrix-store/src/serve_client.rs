//! The client side of the serve protocol (`ssh://` stores): one session with a remote
//! `nix-store --serve --write`, its standard error always drained (the remote build log
//! arrives there, and a full pipe would stop the remote build: NixOS/nix#16437).

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, BufReader, BufWriter, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ferrix_format::hash::HashSink;
use ferrix_format::wire::write_u64;
use ferrix_format::{Derivation, HashAlgo, StoreDir, StorePath};
use ferrix_protocol::serve::{
    self, BuildDerivation, DumpStorePath, PathInfoEntry, QueryClosure, QueryPathInfos,
    QueryValidPaths, Request,
};
use ferrix_protocol::wire::{Limits, WireError};
use ferrix_protocol::Version;
use rustix::event::{poll, PollFd, PollFlags};
use thiserror::Error;

pub use ferrix_protocol::serve::{BuildResult, BuildSettings, BuildStatus};

use crate::ssh::{Ssh, SshError};
use crate::store::{CopyError, Store};
use crate::streams::{HashTee, Noting, PassError};
use crate::{LocalStore, StoreError, ValidPathInfo};

/// Where a remote's log lines go (the build that runs there now), if anywhere.
pub type LogSink = Box<dyn FnMut(&str) + Send>;

/// How many of the remote's last stderr lines are kept for error messages.
const TAIL: usize = 20;

/// A remote's message without its escape sequences, fit for an error shown here.
pub use ferrix_protocol::text::plain;

/// What went wrong talking to a machine; every variant names it.
#[derive(Debug, Error)]
pub enum RemoteError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("cannot talk to '{uri}'{}", tail_note(.tail))]
    Protocol {
        uri: String,
        tail: Vec<String>,
        #[source]
        source: Box<WireError>,
    },
    #[error("cannot send to '{uri}' while {what}{}", tail_note(.tail))]
    Send {
        uri: String,
        what: &'static str,
        tail: Vec<String>,
        #[source]
        source: io::Error,
    },
    #[error("'{uri}' refused {what}")]
    Refused {
        uri: String,
        what: &'static str,
        #[source]
        source: Box<ferrix_protocol::worker::ErrorInfo>,
    },
    #[error("'{uri}' answered with path '{path}', which was not asked for")]
    Unasked { uri: String, path: String },
    #[error("'{uri}' does not have '{path}'")]
    Missing { uri: String, path: String },
    #[error("'{uri}' described paths that refer to each other in a cycle")]
    Cycle { uri: String },
    #[error("cannot copy '{path}' from '{uri}'")]
    Restore {
        uri: String,
        path: String,
        #[source]
        source: Box<ferrix_format::nar::RestoreError>,
    },
    #[error("cannot copy '{path}' from '{uri}'")]
    Nar {
        uri: String,
        path: String,
        #[source]
        source: Box<ferrix_format::nar::NarError>,
    },
    #[error("cannot send paths to '{uri}'")]
    Source {
        uri: String,
        #[source]
        source: Box<CopyError>,
    },
    #[error("{what} for '{uri}'")]
    Store {
        uri: String,
        what: &'static str,
        #[source]
        source: Box<StoreError>,
    },
}

/// Send `paths` (valid in `store`, references first) with `send`: the errors of a machine
/// as its own, and any other as the source's.
pub(crate) fn send_local(
    uri: &str,
    store: &LocalStore,
    paths: &BTreeSet<StorePath>,
    send: impl FnOnce(&[ValidPathInfo]) -> Result<(), CopyError>,
) -> Result<(), RemoteError> {
    let infos = crate::store::sorted_infos(store, paths).map_err(|source| RemoteError::Store {
        uri: uri.to_owned(),
        what: "reading the paths to send",
        source: Box::new(source),
    })?;
    send(&infos).map_err(|e| match e {
        CopyError::Remote(e) => e,
        other => RemoteError::Source {
            uri: uri.to_owned(),
            source: Box::new(other),
        },
    })
}

fn tail_note(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; it said:\n{}", tail.join("\n"))
    }
}

impl RemoteError {
    /// The connection itself failed (a dead machine or network), as opposed to a refusal.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Self::Ssh(_) | Self::Protocol { .. } | Self::Send { .. }
        )
    }
}

#[derive(Default)]
struct Tap {
    sink: Option<LogSink>,
    tail: VecDeque<String>,
    /// The end of a line not finished yet.
    partial: Vec<u8>,
}

impl Tap {
    fn line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        // The tail goes into error messages: without the remote's colours.
        self.tail
            .push_back(ferrix_protocol::text::plain(text).into_owned());
        if let Some(s) = &mut self.sink {
            s(text);
        }
    }

    fn take(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.line(&rest[..i]);
            } else {
                let mut l = std::mem::take(&mut self.partial);
                l.extend_from_slice(&rest[..i]);
                self.line(&l);
            }
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
    }
}

/// Read the remote's stderr until it closes. Bytes leave the pipe only while `tap` is
/// held, so whoever holds it and finds the pipe empty knows every byte written so far has
/// been handled (see [`ServeClient::caught_up`]).
fn drain(stderr: ChildStderr, tap: &Mutex<Tap>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut fds = [PollFd::new(&stderr, PollFlags::IN)];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        let mut t = tap.lock().unwrap_or_else(|p| p.into_inner());
        match rustix::io::read(&stderr, &mut buf) {
            Ok(0) => {
                let rest = std::mem::take(&mut t.partial);
                if !rest.is_empty() {
                    t.line(&rest);
                }
                return;
            }
            Ok(n) => t.take(&buf[..n]),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(_) => return,
        }
    }
}

/// One session with a remote `nix-store --serve --write`.
pub struct ServeClient {
    uri: String,
    child: Child,
    r: BufReader<ChildStdout>,
    w: BufWriter<ChildStdin>,
    version: Version,
    store_dir: StoreDir,
    limits: Limits,
    tap: Arc<Mutex<Tap>>,
    drain: Option<JoinHandle<()>>,
    /// The read end of the remote's stderr, to see whether anything is left in it.
    stderr: Option<OwnedFd>,
}

impl std::fmt::Debug for ServeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeClient")
            .field("uri", &self.uri)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ServeClient {
    /// Start a session: the remote program over ssh, and the greeting.
    pub fn start(ssh: &mut Ssh, store_dir: StoreDir) -> Result<Self, RemoteError> {
        let uri = ssh.target().uri.clone();
        let child = ssh.spawn_session()?;
        Self::over(uri, child, store_dir)
    }

    /// Speak to a session already started (by [`Ssh::spawn_session`]): the handshake, which
    /// waits for the other side, needs no hold on the connection that started it.
    pub fn over(uri: String, mut child: Child, store_dir: StoreDir) -> Result<Self, RemoteError> {
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("the session's standard streams are piped")
        };
        let tap: Arc<Mutex<Tap>> = Arc::default();
        let t = tap.clone();
        let fd = stderr.as_fd().try_clone_to_owned().ok();
        let drain = std::thread::Builder::new()
            .name("remote-log".into())
            .spawn(move || drain(stderr, &t))
            .ok();
        let mut c = Self {
            uri,
            child,
            r: BufReader::with_capacity(256 << 10, stdout),
            w: BufWriter::with_capacity(256 << 10, stdin),
            version: serve::SERVE_PROTOCOL_VERSION,
            store_dir,
            limits: Limits::default(),
            tap,
            drain,
            stderr: fd,
        };
        c.version = serve::client_handshake(&mut c.r, &mut c.w, serve::SERVE_PROTOCOL_VERSION)
            .map_err(|e| c.protocol(e))?;
        Ok(c)
    }

    /// Wait until everything the remote wrote to its stderr so far has gone to the sink (it
    /// writes a build's log before the build's result).
    fn caught_up(&self) {
        let Some(fd) = &self.stderr else { return };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            {
                let _t = self.tap.lock().unwrap_or_else(|p| p.into_inner());
                if rustix::io::ioctl_fionread(fd).map_or(true, |n| n == 0) {
                    return;
                }
            }
            if std::time::Instant::now() > deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Send the remote's stderr lines to `sink` from now on (`None`: only keep the tail).
    pub fn set_log_sink(&self, sink: Option<LogSink>) {
        self.tap.lock().unwrap_or_else(|p| p.into_inner()).sink = sink;
    }

    /// The remote's last stderr lines.
    pub fn tail(&self) -> Vec<String> {
        let t = self.tap.lock().unwrap_or_else(|p| p.into_inner());
        t.tail.iter().cloned().collect()
    }

    fn protocol(&mut self, source: WireError) -> RemoteError {
        // The remote's last words explain a dropped session; give its stderr a moment.
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

    fn send(&mut self, what: &'static str, req: &Request) -> Result<(), RemoteError> {
        let sd = self.store_dir.clone();
        let r =
            serve::write_request(&mut self.w, self.version, &sd, req).and_then(|()| self.w.flush());
        r.map_err(|source| RemoteError::Send {
            uri: self.uri.clone(),
            what,
            tail: self.tail(),
            source,
        })
    }

    /// Which of `paths` the machine has; with `substitute`, after it fetched what it could
    /// of the rest from its own substituters.
    pub fn query_valid(
        &mut self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, RemoteError> {
        self.send(
            "asking which paths it has",
            &Request::QueryValidPaths(QueryValidPaths {
                lock: false,
                substitute,
                paths: paths.clone(),
            }),
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

    /// What the machine records about `paths` (the valid ones).
    pub fn query_path_infos(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<Vec<PathInfoEntry>, RemoteError> {
        self.send(
            "asking about paths",
            &Request::QueryPathInfos(QueryPathInfos {
                paths: paths.clone(),
            }),
        )?;
        let sd = self.store_dir.clone();
        let infos = serve::read_path_infos(&mut self.r, self.version, &sd, &self.limits)
            .map_err(|e| self.protocol(e))?;
        if let Some(i) = infos.iter().find(|i| !paths.contains(&i.path)) {
            return Err(RemoteError::Unasked {
                uri: self.uri.clone(),
                path: sd.display(&i.path),
            });
        }
        Ok(infos)
    }

    /// Send `paths` (valid in `store`) as one export stream, references first; the machine
    /// imports them.
    pub fn import_paths(
        &mut self,
        store: &LocalStore,
        paths: &BTreeSet<StorePath>,
    ) -> Result<(), RemoteError> {
        let uri = self.uri.clone();
        send_local(&uri, store, paths, |infos| self.send_paths(store, infos))
    }

    /// Send `infos` (references first), their NARs read from `from` and checked against
    /// them on the way, as one export stream; the machine imports them.
    pub fn send_paths(
        &mut self,
        from: &dyn Store,
        infos: &[ValidPathInfo],
    ) -> Result<(), CopyError> {
        if infos.is_empty() {
            return Ok(());
        }
        self.send("copying paths", &Request::ImportPaths)?;
        let sd = self.store_dir.clone();
        let mut w = Noting {
            inner: &mut self.w,
            failed: None,
        };
        // `Err(None)`: a write failed, and `w` holds why.
        let mut sent: Result<(), Option<CopyError>> = Ok(());
        for info in infos {
            sent = write_u64(&mut w, 1)
                .map_err(|_| None)
                .and_then(|()| {
                    // The export stream carries no hash and the machine takes what comes:
                    // the NAR is checked here, and one that is not what its info says ends
                    // the stream before its path is named (nothing of it is registered).
                    let mut nar = HashTee {
                        sink: HashSink::new(HashAlgo::Sha256),
                        inner: &mut w,
                    };
                    from.nar_into(info, &mut nar).map_err(Some)?;
                    let (hash, size) = nar.sink.finish();
                    if hash != info.nar_hash || (info.nar_size != 0 && size != info.nar_size) {
                        return Err(Some(CopyError::NarMismatch {
                            from: from.uri(),
                            path: sd.display(&info.path),
                            expected: info.nar_hash.to_string(),
                            got: hash.to_string(),
                        }));
                    }
                    Ok(())
                })
                .and_then(|()| {
                    w.write_all(&crate::export::trailer(&sd, info))
                        .map_err(|_| None)
                });
            if sent.is_err() {
                break;
            }
        }
        if sent.is_ok() {
            sent = write_u64(&mut w, 0)
                .and_then(|()| w.flush())
                .map_err(|_| None);
        }
        let failed = w.failed.take();
        match (sent, failed) {
            (Ok(()), _) => {}
            // The source failed, not the connection.
            (Err(Some(e)), None) => return Err(e),
            (Err(_), failed) => {
                return Err(RemoteError::Send {
                    uri: self.uri.clone(),
                    what: "copying paths",
                    tail: self.tail(),
                    source: failed.unwrap_or_else(|| io::ErrorKind::BrokenPipe.into()),
                }
                .into())
            }
        }
        serve::read_ok(&mut self.r, "the answer to an import").map_err(|e| self.protocol(e).into())
    }

    /// Write the NAR of `path` (valid there) to `out`, its structure checked as it passes.
    pub fn nar_into(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), CopyError> {
        self.send(
            "asking for a path",
            &Request::DumpStorePath(DumpStorePath { path: path.clone() }),
        )?;
        crate::streams::pass_nar(&mut self.r, out)
            .map(drop)
            .map_err(|e| self.pass_error(path, e))
    }

    fn pass_error(&self, path: &StorePath, e: PassError) -> CopyError {
        match e {
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
        }
    }

    /// The closure of `paths` there (with the outputs of derivations: `include_outputs`).
    pub fn query_closure(
        &mut self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeSet<StorePath>, RemoteError> {
        self.send(
            "asking for a closure",
            &Request::QueryClosure(QueryClosure {
                include_outputs,
                paths: paths.clone(),
            }),
        )?;
        let sd = self.store_dir.clone();
        ferrix_protocol::wire::read_store_path_set(&mut self.r, &sd, &self.limits, "closure")
            .map_err(|e| self.protocol(e))
    }

    /// Build `drv` there (its inputs must be valid there), streaming its log to the sink.
    pub fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &Derivation,
        settings: BuildSettings,
    ) -> Result<BuildResult, RemoteError> {
        self.send(
            "starting a build",
            &Request::BuildDerivation(BuildDerivation {
                drv_path: drv_path.clone(),
                drv: drv.clone(),
                settings,
            }),
        )?;
        let sd = self.store_dir.clone();
        let res = serve::read_build_result(&mut self.r, self.version, &sd, &self.limits)
            .map_err(|e| self.protocol(e));
        self.caught_up();
        res
    }

    /// Copy `path` from the machine to `target` (which must not exist).
    pub fn dump_to(&mut self, path: &StorePath, target: &Path) -> Result<u64, RemoteError> {
        self.send(
            "asking for a path",
            &Request::DumpStorePath(DumpStorePath { path: path.clone() }),
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

    /// Tell the session's process to end, without waiting for it (dropping the session
    /// waits): several sessions end at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }
}

impl Drop for ServeClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }
}
