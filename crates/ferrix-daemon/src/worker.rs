//! The server side of the worker protocol: what `nix-daemon` does with a client's connection
//! and `nix-daemon --stdio` with its standard input and output (what `ssh-ng://` stores
//! speak), over any reader and writer, with the store behind a [`WorkerHandler`].
//!
//! As Nix's daemon:
//!
//! - the greeting, then the start-up: [`StderrMsg::Last`] (no start-up messages);
//! - then one operation after another until the client closes the stream between two (`Ok`).
//!   For each: its arguments are read, the handler does the work, sending log messages through
//!   the [`Logger`] it is given (each written and flushed at once); on success
//!   [`StderrMsg::Last`] and the reply follow, on a handler error [`StderrMsg::Error`] (the
//!   message of [`WorkerHandler::error_info`]) and no reply, and the session goes on. Every
//!   answer is flushed before the next operation is read.
//! - `NarFromPath` sends `Last` when the handler writes the first byte of the NAR, the NAR
//!   after it: a handler that fails before writing anything gives a plain error and the session
//!   goes on; one that fails in the middle of the NAR ends the session
//!   ([`WorkerError::Handler`]), as nothing the client could read is left to say.
//! - what Nix's daemon refuses before it starts the work ends the session, after an error
//!   message to the client: an unknown operation ([`WorkerError::UnknownOp`]), one this server
//!   does not implement ([`WorkerError::UnsupportedOp`]), arguments that cannot be read
//!   ([`WorkerError::Request`]), a repair asked for by an untrusted client and `AddPermRoot`
//!   from an untrusted client ([`WorkerError::NotAllowed`]). So does a payload whose framing
//!   is broken ([`WorkerError::Payload`]).
//!
//! What an untrusted session (`trusted: false`) may not do, as Nix's daemon decides: its
//! `dontCheckSigs` flags are cleared, the paths it adds are never `ultimate`, its overrides in
//! `SetOptions` are filtered ([`ClientOptions::allowed_overrides`]), it may not repair, add
//! signatures, add build logs, make permanent roots, or build input-addressed derivations with
//! `BuildDerivation` (a plain error). The handler stays responsible for what needs the store:
//! Nix's daemon, for an untrusted client, writes the derivation of `BuildDerivation` to the
//! store and builds it under that path rather than the one the client sent, and keeps only
//! trusted substituters from the overrides.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, BufWriter, Read, Write};

use ferrix_format::{Derivation, DerivationOutput, StoreDir, StorePath};
use ferrix_protocol::wire::{
    write_bool, write_opt_store_path, write_store_path, write_store_paths, write_str,
    write_strings, write_u64, FramedReader,
};
use ferrix_protocol::worker::reply::{
    write_missing, write_ok, write_output_map, write_path_info_reply,
};
use ferrix_protocol::worker::{
    read_op, read_request_body, server_handshake, server_post_handshake, server_startup,
    write_build_result, write_keyed_build_results, write_stderr, BuildMode, ErrorInfo,
    HandshakeInfo, MultiplePathsReader, NarPayload, Op, StderrMsg, WorkerRequest,
    WORKER_PROTOCOL_VERSION,
};
use ferrix_protocol::{Limits, Version, WireError};
use thiserror::Error;

mod handler;

pub use handler::{IncomingPaths, Logger, SubstitutableInfo, WorkerHandler};

fn write_substitutable<W: Write + ?Sized>(
    w: &mut W,
    dir: &StoreDir,
    i: &SubstitutableInfo,
) -> io::Result<()> {
    write_opt_store_path(w, dir, i.deriver.as_ref())?;
    write_store_paths(w, dir, &i.references)?;
    write_u64(w, i.download_size)?;
    write_u64(w, i.nar_size)
}

/// How a session runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub store_dir: StoreDir,
    pub limits: Limits,
    /// Whether the client is trusted (`trusted-users`; `nix-daemon --stdio` trusts its
    /// caller). Said to clients from 1.35 on.
    pub trusted: bool,
    /// The version of Nix we say we are (clients from 1.33 on are told), e.g. `2.8.0`.
    pub nix_version: String,
    /// The version we offer; the session uses the smaller of it and the client's.
    pub version: Version,
}

impl WorkerOptions {
    /// An untrusted session, default limits, the newest version.
    pub fn new(store_dir: StoreDir, nix_version: impl Into<String>) -> Self {
        Self {
            store_dir,
            limits: Limits::DEFAULT,
            trusted: false,
            nix_version: nix_version.into(),
            version: WORKER_PROTOCOL_VERSION,
        }
    }
}

/// Why a session ended early. `E` is the handler's error type.
#[derive(Debug, Error)]
pub enum WorkerError<E> {
    #[error("worker protocol handshake failed")]
    Handshake(#[source] WireError),
    /// The operation number, or the arguments of `op`, could not be read (including a stream
    /// that ends inside them).
    #[error("reading {}", match .op { Some(op) => format!("the arguments of {op}"), None => "a worker operation".to_owned() })]
    Request {
        op: Option<Op>,
        #[source]
        source: WireError,
    },
    #[error("unknown worker operation {0}")]
    UnknownOp(u64),
    #[error("worker operation {0} is not supported")]
    UnsupportedOp(Op),
    #[error("{op} is not allowed: {reason}")]
    NotAllowed { op: Op, reason: String },
    /// The payload of `op` (a NAR, a framed stream) could not be read to its end.
    #[error("reading the data of {op}")]
    Payload {
        op: Op,
        #[source]
        source: io::Error,
    },
    /// The handler failed after part of the reply was sent (`NarFromPath`).
    #[error("{op} failed in the middle of its reply")]
    Handler {
        op: Op,
        #[source]
        source: E,
    },
    #[error("writing to the client{}", match .op { Some(op) => format!(" ({op})"), None => String::new() })]
    Write {
        op: Option<Op>,
        #[source]
        source: io::Error,
    },
}

/// The session's output, shared between the server, the handler's logger and a tunnelled
/// NAR's data requests (never more than one at a time).
struct Out<'a, W: Write>(&'a RefCell<BufWriter<W>>);

impl<W: Write> Write for Out<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.borrow()?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.borrow()?.flush()
    }
}

impl<'a, W: Write> Out<'a, W> {
    fn borrow(&self) -> io::Result<std::cell::RefMut<'a, BufWriter<W>>> {
        self.0
            .try_borrow_mut()
            .map_err(|_| io::Error::other("the session's output is in use"))
    }
}

/// The [`Logger`] of a session: writes and flushes each message, remembers a failure.
struct SessionLogger<'a, W: Write> {
    out: Out<'a, W>,
    version: Version,
    failed: Option<io::Error>,
}

impl<W: Write> Logger for SessionLogger<'_, W> {
    fn log(&mut self, msg: StderrMsg) -> io::Result<()> {
        match msg {
            StderrMsg::Next(_)
            | StderrMsg::StartActivity { .. }
            | StderrMsg::StopActivity(_)
            | StderrMsg::Result { .. } => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only log messages may be sent while working",
                ))
            }
        }
        if let Some(e) = &self.failed {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        let res = write_stderr(&mut self.out, self.version, &msg).and_then(|()| self.out.flush());
        if let Err(e) = &res {
            self.failed = Some(io::Error::new(e.kind(), e.to_string()));
        }
        res
    }
}

/// The most data an `ExportPath` frame carries.
const WRITE_CHUNK: usize = 64 * 1024;

/// The writer `ExportPath` gives the handler (behind a buffer): each write goes out as one
/// `STDERR_WRITE` message.
struct WriteOut<'a, W: Write> {
    out: Out<'a, W>,
    version: Version,
}

impl<W: Write> Write for WriteOut<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(WRITE_CHUNK);
        write_stderr(
            &mut self.out,
            self.version,
            &StderrMsg::Write(buf[..n].to_vec()),
        )?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The writer `NarFromPath` gives the handler: `Last` goes out before the first byte.
struct NarOut<'a, W: Write> {
    out: Out<'a, W>,
    version: Version,
    started: bool,
}

impl<W: Write> NarOut<'_, W> {
    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            write_stderr(&mut self.out, self.version, &StderrMsg::Last)?;
            self.started = true;
        }
        Ok(())
    }
}

impl<W: Write> Write for NarOut<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.start()?;
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Whether every output of `drv` is content-addressed (what an untrusted client may build).
fn is_content_addressed(drv: &Derivation) -> bool {
    !drv.outputs.is_empty()
        && drv.outputs.values().all(|o| {
            matches!(
                o,
                DerivationOutput::CaFixed { .. }
                    | DerivationOutput::CaFloating { .. }
                    | DerivationOutput::Impure { .. }
            )
        })
}

/// Run one worker session: the greeting, then operations until the client closes `input`
/// between two (`Ok`), or an error that ends the session.
/// Turn a client away with `message`: the handshake, then the message as the error that
/// ends the session's start-up, so that the client shows why (rather than a connection
/// closed without a word).
pub fn refuse_session(
    input: impl Read,
    output: impl Write,
    opts: &WorkerOptions,
    message: &str,
) -> io::Result<()> {
    let mut r = BufReader::new(input);
    let mut w = BufWriter::new(output);
    let version = server_handshake(&mut r, &mut w, opts.version, &BTreeSet::new(), &opts.limits)
        .map_err(io::Error::other)?
        .version;
    let info = HandshakeInfo {
        nix_version: Some(opts.nix_version.clone()),
        trusted: Some(false),
    };
    server_post_handshake(&mut r, &mut w, version, &info).map_err(io::Error::other)?;
    write_stderr(&mut w, version, &StderrMsg::Error(ErrorInfo::new(message)))?;
    w.flush()
}

pub fn serve_worker<H: WorkerHandler>(
    handler: &mut H,
    input: impl Read,
    output: impl Write,
    opts: &WorkerOptions,
) -> Result<(), WorkerError<H::Error>> {
    let mut r = BufReader::new(input);
    let out = RefCell::new(BufWriter::new(output));
    let version = {
        let mut w = Out(&out);
        let n = server_handshake(&mut r, &mut w, opts.version, &BTreeSet::new(), &opts.limits)
            .map_err(WorkerError::Handshake)?;
        let info = HandshakeInfo {
            nix_version: Some(opts.nix_version.clone()),
            trusted: Some(opts.trusted),
        };
        server_post_handshake(&mut r, &mut w, n.version, &info).map_err(WorkerError::Handshake)?;
        server_startup(&mut w, n.version, &[]).map_err(WorkerError::Handshake)?;
        n.version
    };
    let mut s = Session {
        handler,
        r,
        out: &out,
        version,
        opts,
    };
    loop {
        let n = read_op(&mut s.r).map_err(|source| WorkerError::Request { op: None, source })?;
        let Some(n) = n else { return Ok(()) };
        let Some(op) = Op::from_u64(n) else {
            s.refuse(format!("invalid operation {n}"));
            return Err(WorkerError::UnknownOp(n));
        };
        if !op.is_supported() {
            s.refuse(format!("operation {op} is not supported by this daemon"));
            return Err(WorkerError::UnsupportedOp(op));
        }
        if op == Op::AddPermRoot && !opts.trusted {
            let reason = "you are not privileged to create perm roots".to_owned();
            s.refuse(reason.clone());
            return Err(WorkerError::NotAllowed { op, reason });
        }
        let req = match read_request_body(&mut s.r, op, version, &opts.store_dir, &opts.limits) {
            Ok(req) => req,
            Err(source) => {
                s.refuse(format!("reading the arguments of {op}: {source}"));
                return Err(WorkerError::Request {
                    op: Some(op),
                    source,
                });
            }
        };
        s.run(req)?;
    }
}

struct Session<'a, H: WorkerHandler, R: Read, W: Write> {
    handler: &'a mut H,
    r: BufReader<R>,
    out: &'a RefCell<BufWriter<W>>,
    version: Version,
    opts: &'a WorkerOptions,
}

impl<'a, H: WorkerHandler, R: Read, W: Write> Session<'a, H, R, W> {
    fn w(&self) -> Out<'a, W> {
        Out(self.out)
    }

    fn logger(&self) -> SessionLogger<'a, W> {
        SessionLogger {
            out: self.w(),
            version: self.version,
            failed: None,
        }
    }

    /// Tell the client why the session ends (best effort: it may be gone).
    fn refuse(&self, message: String) {
        let mut w = self.w();
        let _ = write_stderr(
            &mut w,
            self.version,
            &StderrMsg::Error(ErrorInfo::new(message)),
        )
        .and_then(|()| w.flush());
    }

    /// End the work of `op`: `Last` and the reply on success, the error otherwise; flushed.
    /// A logger that failed (the client is gone) ends the session.
    fn finish<T>(
        &self,
        op: Op,
        logger: Option<SessionLogger<'a, W>>,
        res: Result<T, H::Error>,
        reply: impl FnOnce(&mut dyn Write, T) -> io::Result<()>,
    ) -> Result<(), WorkerError<H::Error>> {
        if let Some(e) = logger.and_then(|l| l.failed) {
            return Err(WorkerError::Write {
                op: Some(op),
                source: e,
            });
        }
        let mut w = self.w();
        let written = match res {
            Ok(v) => {
                write_stderr(&mut w, self.version, &StderrMsg::Last).and_then(|()| reply(&mut w, v))
            }
            Err(e) => write_stderr(&mut w, self.version, &StderrMsg::Error(H::error_info(&e))),
        };
        written
            .and_then(|()| w.flush())
            .map_err(|source| WorkerError::Write {
                op: Some(op),
                source,
            })
    }

    /// End the work of `op` with a plain error message; flushed.
    fn fail(&self, op: Op, message: String) -> Result<(), WorkerError<H::Error>> {
        let mut w = self.w();
        write_stderr(
            &mut w,
            self.version,
            &StderrMsg::Error(ErrorInfo::new(message)),
        )
        .and_then(|()| w.flush())
        .map_err(|source| WorkerError::Write {
            op: Some(op),
            source,
        })
    }

    fn not_allowed(&self, op: Op, reason: &str) -> WorkerError<H::Error> {
        self.refuse(reason.to_owned());
        WorkerError::NotAllowed {
            op,
            reason: reason.to_owned(),
        }
    }

    fn run(&mut self, req: WorkerRequest) -> Result<(), WorkerError<H::Error>> {
        let op = req.op();
        let dir = &self.opts.store_dir;
        let version = self.version;
        let trusted = self.opts.trusted;
        const REPAIR: &str = "repairing is not allowed because you are not in 'trusted-users'";
        match req {
            WorkerRequest::IsValidPath(p) => {
                let res = self.handler.is_valid_path(&p);
                self.finish(op, None, res, |w, v| write_bool(w, v))
            }
            WorkerRequest::QueryReferrers(p) => {
                let res = self.handler.query_referrers(&p);
                self.finish(op, None, res, |w, v| write_store_paths(w, dir, &v))
            }
            WorkerRequest::FindRoots => {
                let res = self.handler.find_roots(!trusted);
                self.finish(op, None, res, |w, roots| {
                    write_u64(w, roots.len() as u64)?;
                    for (link, p) in &roots {
                        write_str(w, link)?;
                        write_store_path(w, dir, p)?;
                    }
                    Ok(())
                })
            }
            WorkerRequest::CollectGarbage {
                action,
                paths,
                ignore_liveness,
                max_freed,
            } => {
                if ignore_liveness {
                    // Nobody may, through a daemon (as with Nix).
                    return self.fail(op, "you are not allowed to ignore liveness".into());
                }
                let mut log = self.logger();
                let max = (max_freed != u64::MAX).then_some(max_freed);
                let res = self.handler.collect_garbage(action, &paths, max, &mut log);
                self.finish(op, Some(log), res, |w, (paths, freed)| {
                    let mut names: Vec<String> = paths.iter().map(|p| dir.display(p)).collect();
                    names.sort();
                    names.dedup();
                    write_strings(w, names.iter().map(String::as_str))?;
                    write_u64(w, freed)?;
                    write_u64(w, 0)
                })
            }
            WorkerRequest::QueryValidDerivers(p) => {
                let res = self.handler.query_valid_derivers(&p);
                self.finish(op, None, res, |w, v| write_store_paths(w, dir, &v))
            }
            WorkerRequest::AddTextToStore { name, text, refs } => {
                let res = self.handler.add_text_to_store(&name, &text, &refs);
                self.finish(op, None, res, |w, p| write_store_path(w, dir, &p))
            }
            WorkerRequest::AddToStore {
                name,
                method,
                refs,
                repair,
            } => {
                let mut log = self.logger();
                let mut data = FramedReader::new(&mut self.r);
                let res = if repair && !trusted {
                    None
                } else {
                    Some(
                        self.handler
                            .add_to_store(&name, method, &refs, repair, &mut data, &mut log),
                    )
                };
                // Whatever the handler left, the next operation starts after the contents.
                if let Err(source) = data.drain() {
                    self.refuse(format!("reading the contents of {op}: {source}"));
                    return Err(WorkerError::Payload { op, source });
                }
                match res {
                    Some(res) => self.finish(op, Some(log), res, |w, info| {
                        info.write(w, ferrix_protocol::worker::FULL, dir)
                    }),
                    None => self.fail(op, REPAIR.into()),
                }
            }
            WorkerRequest::QueryAllValidPaths => {
                let res = self.handler.query_all_valid_paths();
                self.finish(op, None, res, |w, v| write_store_paths(w, dir, &v))
            }
            WorkerRequest::QueryValidPaths { paths, substitute } => {
                let mut log = self.logger();
                let res = self.handler.query_valid_paths(&paths, substitute, &mut log);
                self.finish(op, Some(log), res, |w, v| write_store_paths(w, dir, &v))
            }
            WorkerRequest::QueryPathInfo(p) => {
                let res = self.handler.query_path_info(&p);
                if matches!(res, Ok(None)) && version < Version::new(1, 17) {
                    return self.fail(op, format!("path '{}' is not valid", dir.display(&p)));
                }
                self.finish(op, None, res, |w, v| {
                    write_path_info_reply(w, version, dir, v.as_ref())
                })
            }
            WorkerRequest::QueryPathFromHashPart(h) => {
                let res = self.handler.query_path_from_hash_part(&h);
                self.finish(op, None, res, |w, v| {
                    write_opt_store_path(w, dir, v.as_ref())
                })
            }
            WorkerRequest::QueryDerivationOutputMap(p) => {
                let res = self.handler.query_derivation_output_map(&p);
                self.finish(op, None, res, |w, v| write_output_map(w, dir, &v))
            }
            WorkerRequest::QueryDerivationOutputs(p) => {
                let res = self.handler.query_derivation_output_map(&p);
                self.finish(op, None, res, |w, v| {
                    let paths: BTreeSet<StorePath> = v.into_values().flatten().collect();
                    write_store_paths(w, dir, &paths)
                })
            }
            WorkerRequest::QueryDerivationOutputNames(p) => {
                let res = self.handler.query_derivation_output_map(&p);
                self.finish(op, None, res, |w, v| {
                    write_strings(w, v.keys().map(String::as_str))
                })
            }
            WorkerRequest::QueryPathHash(p)
            | WorkerRequest::QueryReferences(p)
            | WorkerRequest::QueryDeriver(p) => {
                // Obsolete forms of QueryPathInfo: the path must be valid.
                let res = match self.handler.query_path_info(&p) {
                    Ok(None) => {
                        return self.fail(op, format!("path '{}' is not valid", dir.display(&p)))
                    }
                    Ok(Some(i)) => Ok(i),
                    Err(e) => Err(e),
                };
                self.finish(op, None, res, |w, i| match op {
                    Op::QueryPathHash => write_str(w, &i.nar_hash.to_base16()),
                    Op::QueryReferences => write_store_paths(w, dir, &i.references),
                    _ => write_opt_store_path(w, dir, i.deriver.as_ref()),
                })
            }
            WorkerRequest::HasSubstitutes(p) => {
                let mut log = self.logger();
                let one = BTreeSet::from([p.clone()]);
                let res = self.handler.query_substitutable_paths(&one, &mut log);
                self.finish(op, Some(log), res, |w, v| write_bool(w, v.contains(&p)))
            }
            WorkerRequest::QuerySubstitutablePaths(paths) => {
                let mut log = self.logger();
                let res = self.handler.query_substitutable_paths(&paths, &mut log);
                self.finish(op, Some(log), res, |w, v| write_store_paths(w, dir, &v))
            }
            WorkerRequest::QuerySubstitutablePathInfo(p) => {
                let mut log = self.logger();
                let one = BTreeMap::from([(p.clone(), None)]);
                let res = self.handler.query_substitutable_path_infos(&one, &mut log);
                self.finish(op, Some(log), res, |w, v| match v.get(&p) {
                    None => write_u64(w, 0),
                    Some(i) => {
                        write_u64(w, 1)?;
                        write_substitutable(w, dir, i)
                    }
                })
            }
            WorkerRequest::QuerySubstitutablePathInfos(paths) => {
                let mut log = self.logger();
                let res = self
                    .handler
                    .query_substitutable_path_infos(&paths, &mut log);
                self.finish(op, Some(log), res, |w, v| {
                    write_u64(w, v.len() as u64)?;
                    for (p, i) in &v {
                        write_store_path(w, dir, p)?;
                        write_substitutable(w, dir, i)?;
                    }
                    Ok(())
                })
            }
            WorkerRequest::OptimiseStore => {
                let mut log = self.logger();
                let res = self.handler.optimise_store(&mut log);
                self.finish(op, Some(log), res, |w, ()| write_u64(w, 1))
            }
            WorkerRequest::VerifyStore {
                check_contents,
                repair,
            } => {
                if repair && !trusted {
                    return self.fail(op, REPAIR.into());
                }
                let mut log = self.logger();
                let res = self.handler.verify_store(check_contents, repair, &mut log);
                self.finish(op, Some(log), res, |w, errors| write_bool(w, errors))
            }
            WorkerRequest::QueryRealisation(_) => {
                // No content-addressed derivations are built here: no realisation is known.
                self.finish(op, None, Ok(()), |w, ()| write_u64(w, 0))
            }
            WorkerRequest::RegisterDrvOutput(_) => self.fail(
                op,
                "content-addressed derivations (realisations) are not supported by this daemon"
                    .into(),
            ),
            WorkerRequest::QueryMissing(targets) => {
                let res = self.handler.query_missing(&targets);
                self.finish(op, None, res, |w, v| write_missing(w, dir, &v))
            }
            WorkerRequest::AddTempRoot(p) => {
                let res = self.handler.add_temp_root(&p);
                self.finish(op, None, res, |w, ()| write_ok(w))
            }
            WorkerRequest::AddIndirectRoot(link) => {
                let res = self.handler.add_indirect_root(&link);
                self.finish(op, None, res, |w, ()| write_ok(w))
            }
            WorkerRequest::AddPermRoot { path, gc_root } => {
                let res = self.handler.add_perm_root(&path, &gc_root);
                self.finish(op, None, res, |w, v| write_str(w, &v))
            }
            WorkerRequest::SyncWithGC => self.finish(op, None, Ok(()), |w, ()| write_ok(w)),
            WorkerRequest::SetOptions(mut o) => {
                o.overrides = o.allowed_overrides(trusted);
                let mut log = self.logger();
                let res = self.handler.set_options(&o, &mut log);
                self.finish(op, Some(log), res, |_, ()| Ok(()))
            }
            WorkerRequest::EnsurePath(p) => {
                let mut log = self.logger();
                let res = self.handler.ensure_path(&p, &mut log);
                self.finish(op, Some(log), res, |w, ()| write_ok(w))
            }
            WorkerRequest::BuildPaths { paths, mode } => {
                if mode == BuildMode::Repair && !trusted {
                    return Err(self.not_allowed(op, REPAIR));
                }
                let mut log = self.logger();
                let res = self.handler.build_paths(&paths, mode, &mut log);
                self.finish(op, Some(log), res, |w, ()| write_ok(w))
            }
            WorkerRequest::BuildPathsWithResults { paths, mode } => {
                if mode == BuildMode::Repair && !trusted {
                    return Err(self.not_allowed(op, REPAIR));
                }
                let mut log = self.logger();
                let res = self
                    .handler
                    .build_paths_with_results(&paths, mode, &mut log);
                self.finish(op, Some(log), res, |w, v| {
                    write_keyed_build_results(w, version, dir, &v)
                })
            }
            WorkerRequest::BuildDerivation {
                drv_path,
                drv,
                mode,
            } => {
                if !trusted && !is_content_addressed(&drv) {
                    return self.fail(
                        op,
                        "you are not privileged to build input-addressed derivations".into(),
                    );
                }
                let mut log = self.logger();
                let res = self
                    .handler
                    .build_derivation(&drv_path, &drv, mode, &mut log);
                self.finish(op, Some(log), res, |w, v| {
                    write_build_result(w, version, &v)
                })
            }
            WorkerRequest::AddSignatures { path, sigs } => {
                if !trusted {
                    return self.fail(op, "you are not privileged to add signatures".into());
                }
                let res = self.handler.add_signatures(&path, &sigs);
                self.finish(op, None, res, |w, ()| write_ok(w))
            }
            WorkerRequest::NarFromPath(p) => self.nar_from_path(op, &p),
            WorkerRequest::ExportPath(p) => {
                let mut out = BufWriter::with_capacity(
                    WRITE_CHUNK,
                    WriteOut {
                        out: self.w(),
                        version,
                    },
                );
                let res = self.handler.export_path(&p, &mut out);
                let res = match out.flush() {
                    Err(source) => {
                        return Err(WorkerError::Write {
                            op: Some(op),
                            source,
                        })
                    }
                    Ok(()) => res,
                };
                self.finish(op, None, res, |w, ()| write_u64(w, 1))
            }
            WorkerRequest::ImportPaths => {
                let mut log = self.logger();
                let w = self.w();
                let mut data = NarPayload::tunnelled(&mut self.r, w);
                let res = self.handler.import_paths(&mut data, trusted, &mut log);
                // Only what the handler asked for was sent: the next operation follows.
                if let Err(source) = data.finish() {
                    self.refuse(format!("reading the export stream of {op}: {source}"));
                    return Err(WorkerError::Payload { op, source });
                }
                self.finish(op, Some(log), res, |w, paths| {
                    let paths: Vec<String> =
                        paths.iter().map(|p| dir.display(p).to_string()).collect();
                    write_strings(w, paths.iter().map(String::as_str))
                })
            }
            WorkerRequest::AddToStoreNar {
                mut info,
                repair,
                dont_check_sigs,
            } => {
                if !trusted {
                    info.info.ultimate = false;
                }
                let dont_check_sigs = dont_check_sigs && trusted;
                let mut log = self.logger();
                let w = self.w();
                let mut nar = NarPayload::new(&mut self.r, w, version, info.info.nar_size);
                let res = self.handler.add_to_store_nar(
                    &info,
                    repair,
                    dont_check_sigs,
                    &mut nar,
                    &mut log,
                );
                // Whatever the handler left, the next operation starts after the NAR.
                if let Err(source) = nar.finish() {
                    self.refuse(format!("reading the NAR of {op}: {source}"));
                    return Err(WorkerError::Payload { op, source });
                }
                self.finish(op, Some(log), res, |_, ()| Ok(()))
            }
            WorkerRequest::AddMultipleToStore {
                repair,
                dont_check_sigs,
            } => {
                let dont_check_sigs = dont_check_sigs && trusted;
                let mut log = self.logger();
                let mut paths = IncomingPaths {
                    inner: MultiplePathsReader::new(
                        &mut self.r as &mut dyn Read,
                        dir,
                        &self.opts.limits,
                    ),
                };
                let res = self.handler.add_multiple_to_store(
                    repair,
                    dont_check_sigs,
                    &mut paths,
                    &mut log,
                );
                if let Err(source) = paths.inner.finish() {
                    self.refuse(format!("reading the paths of {op}: {source}"));
                    return Err(WorkerError::Payload { op, source });
                }
                self.finish(op, Some(log), res, |_, ()| Ok(()))
            }
            WorkerRequest::AddBuildLog(drv_path) => {
                let mut data = FramedReader::new(&mut self.r);
                let res = if trusted {
                    Some(self.handler.add_build_log(&drv_path, &mut data))
                } else {
                    None
                };
                if let Err(source) = data.drain() {
                    self.refuse(format!("reading the log of {op}: {source}"));
                    return Err(WorkerError::Payload { op, source });
                }
                match res {
                    Some(res) => self.finish(op, None, res, |w, ()| write_ok(w)),
                    None => self.fail(op, "you are not privileged to add logs".into()),
                }
            }
        }
    }

    fn nar_from_path(&mut self, op: Op, p: &StorePath) -> Result<(), WorkerError<H::Error>> {
        let mut out = NarOut {
            out: self.w(),
            version: self.version,
            started: false,
        };
        match self.handler.nar_from_path(p, &mut out) {
            Ok(()) => out
                .start()
                .and_then(|()| out.flush())
                .map_err(|source| WorkerError::Write {
                    op: Some(op),
                    source,
                }),
            Err(source) if out.started => Err(WorkerError::Handler { op, source }),
            Err(e) => self.finish(op, None, Err::<(), _>(e), |_, ()| Ok(())),
        }
    }
}

#[cfg(test)]
mod tests;
