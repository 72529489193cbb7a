//! The server side of the serve protocol: what `nix-store --serve [--write]` does with its
//! standard input and output, over any reader and writer, with the store behind a
//! [`ServeHandler`].
//!
//! As Nix's server: the greeting, then one command after another until the client closes
//! the stream. Without `write`, the commands that change the store (`ImportPaths`,
//! `BuildPaths`, `BuildDerivation`, `AddToStoreNar`) end the session with
//! [`ServeError::NotAllowed`], and `QueryValidPaths` ignores its `lock` and `substitute` flags.
//! Any error ends the session (the caller reports it on standard error and exits non-zero, as
//! Nix does); a failed build is not an error but a [`BuildResult`] with a failure status. Each
//! answer is flushed before the next command is read.

use std::collections::BTreeSet;
use std::io::{self, BufReader, BufWriter, Read, Write};

use ferrix_format::{Derivation, StoreDir, StorePath};
use ferrix_protocol::serve::{
    read_command, read_request_body, server_handshake, write_build_paths_reply, write_build_result,
    write_ok, write_path_infos, AddToStoreNar, BuildPathsReply, BuildResult, BuildSettings,
    Command, PathInfoEntry, Request, SERVE_PROTOCOL_VERSION,
};
use ferrix_protocol::wire::{write_store_paths, SizedReader};
use ferrix_protocol::{Limits, Version, WireError};
use thiserror::Error;

/// The store behind a serve session. Each method answers one command; an error ends the
/// session and is returned by [`serve`] as [`ServeError::Handler`].
pub trait ServeHandler {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The valid ones among `paths`. `lock`: add them to the session's temporary roots;
    /// `substitute`: try the substituters for the invalid ones first. Both are false unless
    /// the session may write.
    fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        lock: bool,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, Self::Error>;

    /// The infos of the valid ones among `paths` (invalid ones are left out).
    fn query_path_infos(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<Vec<PathInfoEntry>, Self::Error>;

    /// Write the NAR of `path` to `out`.
    fn dump_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), Self::Error>;

    /// Read one export stream (`nix-store --export` format, ended by its `0`) from `input`
    /// and add its paths; read exactly the stream, nothing after it.
    fn import_paths(&mut self, input: &mut dyn Read) -> Result<(), Self::Error>;

    /// Write an export stream of `paths` to `out`.
    fn export_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        out: &mut dyn Write,
    ) -> Result<(), Self::Error>;

    /// Build `paths` (`path` or `drvpath!out1,out2`, see
    /// [`ferrix_protocol::serve::parse_path_with_outputs`]). Only the status and message of the
    /// result are sent.
    fn build_paths(
        &mut self,
        paths: &[String],
        settings: &BuildSettings,
    ) -> Result<BuildResult, Self::Error>;

    /// Build `drv` (sent whole, without its input derivations, which must not be needed: its
    /// inputs are store paths). `drv_path` comes from the client; nothing about `drv` has been
    /// checked.
    fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &Derivation,
        settings: &BuildSettings,
    ) -> Result<BuildResult, Self::Error>;

    /// The closure of `paths` under references (plus the outputs of derivations with
    /// `include_outputs`).
    fn query_closure(
        &mut self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeSet<StorePath>, Self::Error>;

    /// Add `info.path` from its NAR: `nar` yields exactly `info.nar_size` bytes, then end of
    /// file (an I/O error if the client sends fewer). What the handler leaves unread is
    /// skipped. Nothing about `info` has been checked against the NAR.
    fn add_to_store_nar(
        &mut self,
        info: &AddToStoreNar,
        nar: &mut dyn Read,
    ) -> Result<(), Self::Error>;
}

/// How a session runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Accept the commands that change the store (`--write`).
    pub write: bool,
    pub store_dir: StoreDir,
    pub limits: Limits,
    /// The version we offer; the session uses the smaller of it and the client's.
    pub version: Version,
}

impl ServeOptions {
    /// Read-only, default limits, the newest version.
    pub fn new(store_dir: StoreDir) -> Self {
        Self {
            write: false,
            store_dir,
            limits: Limits::DEFAULT,
            version: SERVE_PROTOCOL_VERSION,
        }
    }
}

/// Why a session ended early. `E` is the handler's error type.
#[derive(Debug, Error)]
pub enum ServeError<E> {
    #[error("serve protocol handshake failed")]
    Handshake(#[source] WireError),
    /// The command number, or the arguments of `command`, could not be read (including a
    /// stream that ends inside them).
    #[error("reading {}", match .command { Some(c) => format!("the arguments of {c}"), None => "a serve command".to_owned() })]
    Request {
        command: Option<Command>,
        #[source]
        source: WireError,
    },
    #[error("unknown serve command {0}")]
    UnknownCommand(u64),
    #[error("{command} is not allowed: the server runs without write access (--write)")]
    NotAllowed { command: Command },
    #[error("{command} failed")]
    Handler {
        command: Command,
        #[source]
        source: E,
    },
    /// The NAR of `AddToStoreNar` ended before its announced size, or could not be read.
    #[error("reading the NAR of AddToStoreNar ({nar_size} bytes announced)")]
    Nar {
        nar_size: u64,
        #[source]
        source: io::Error,
    },
    #[error("writing the answer to {command}")]
    Write {
        command: Command,
        #[source]
        source: io::Error,
    },
}

/// Run one serve session: the greeting, then commands until the client closes `input`
/// between two commands (`Ok`), or the first error.
pub fn serve<H: ServeHandler>(
    handler: &mut H,
    input: impl Read,
    output: impl Write,
    opts: &ServeOptions,
) -> Result<(), ServeError<H::Error>> {
    let mut r = BufReader::new(input);
    let mut w = BufWriter::new(output);
    let version = server_handshake(&mut r, &mut w, opts.version).map_err(ServeError::Handshake)?;
    loop {
        let n = read_command(&mut r).map_err(|source| ServeError::Request {
            command: None,
            source,
        })?;
        let Some(n) = n else { return Ok(()) };
        let command = Command::from_u64(n).ok_or(ServeError::UnknownCommand(n))?;
        if command.needs_write() && !opts.write {
            return Err(ServeError::NotAllowed { command });
        }
        let req = read_request_body(&mut r, command, version, &opts.store_dir, &opts.limits)
            .map_err(|source| ServeError::Request {
                command: Some(command),
                source,
            })?;
        run(handler, req, &mut r, &mut w, version, opts)?;
        w.flush()
            .map_err(|source| ServeError::Write { command, source })?;
    }
}

/// Answer one request.
fn run<H: ServeHandler, R: Read, W: Write>(
    handler: &mut H,
    req: Request,
    r: &mut R,
    w: &mut W,
    version: Version,
    opts: &ServeOptions,
) -> Result<(), ServeError<H::Error>> {
    let command = req.command();
    let fail = |source| ServeError::Handler { command, source };
    let write_err = |source| ServeError::Write { command, source };
    let dir = &opts.store_dir;
    match req {
        Request::QueryValidPaths(q) => {
            let valid = handler
                .query_valid_paths(&q.paths, q.lock && opts.write, q.substitute && opts.write)
                .map_err(fail)?;
            write_store_paths(w, dir, &valid).map_err(write_err)
        }
        Request::QueryPathInfos(q) => {
            let infos = handler.query_path_infos(&q.paths).map_err(fail)?;
            write_path_infos(w, version, dir, &infos).map_err(write_err)
        }
        Request::DumpStorePath(q) => handler.dump_path(&q.path, w).map_err(fail),
        Request::ImportPaths => {
            handler.import_paths(r).map_err(fail)?;
            write_ok(w).map_err(write_err)
        }
        Request::ExportPaths(q) => handler.export_paths(&q.paths, w).map_err(fail),
        Request::BuildPaths(q) => {
            let res = handler.build_paths(&q.paths, &q.settings).map_err(fail)?;
            write_build_paths_reply(w, &BuildPathsReply::from(&res)).map_err(write_err)
        }
        Request::QueryClosure(q) => {
            let closure = handler
                .query_closure(&q.paths, q.include_outputs)
                .map_err(fail)?;
            write_store_paths(w, dir, &closure).map_err(write_err)
        }
        Request::BuildDerivation(q) => {
            let res = handler
                .build_derivation(&q.drv_path, &q.drv, &q.settings)
                .map_err(fail)?;
            write_build_result(w, version, dir, &res).map_err(write_err)
        }
        Request::AddToStoreNar(info) => {
            let mut nar = SizedReader::new(&mut *r, info.nar_size);
            handler.add_to_store_nar(&info, &mut nar).map_err(fail)?;
            // Whatever the handler left, the next command starts after the NAR.
            nar.drain().map_err(|source| ServeError::Nar {
                nar_size: info.nar_size,
                source,
            })?;
            write_ok(w).map_err(write_err)
        }
    }
}

#[cfg(test)]
mod tests;
