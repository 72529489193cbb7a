//! What the server asks of the store behind it: the [`WorkerHandler`] trait, one method per
//! operation, with the [`Logger`] a handler reports through and the paths of
//! `AddMultipleToStore` as they arrive.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use ferrix_format::content_address::ContentAddress;
use ferrix_format::{Derivation, StorePath};
use ferrix_protocol::worker::payload::PathNar;
use ferrix_protocol::worker::{
    BuildMode, BuildResult, CaMethod, ClientOptions, DerivedPath, ErrorInfo, GcAction,
    KeyedBuildResult, Missing, MultiplePathsReader, PathInfo, StderrMsg, UnkeyedPathInfo,
};
use ferrix_protocol::WireError;

/// Where a handler sends log messages while it works.
pub trait Logger {
    /// Send `msg` to the client, written and flushed at once. Only log messages may be sent:
    /// `Next`, `StartActivity`, `StopActivity` and `Result` (the others belong to the server
    /// and are refused with [`io::ErrorKind::InvalidInput`]). Activity messages are turned into
    /// what an old client understands (see [`write_stderr`]). An error means the client is
    /// gone: the handler may stop its work, and the session ends after it.
    fn log(&mut self, msg: StderrMsg) -> io::Result<()>;
}

/// The paths of `AddMultipleToStore`, each with its NAR, in the order the client sent them
/// (dependencies first). Their `ultimate` flag is always false, as Nix's daemon makes it.
pub struct IncomingPaths<'a> {
    pub(super) inner: MultiplePathsReader<&'a mut dyn Read>,
}

impl std::fmt::Debug for IncomingPaths<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingPaths").finish_non_exhaustive()
    }
}

impl<'a> IncomingPaths<'a> {
    /// The number of paths the client announced.
    pub fn count(&mut self) -> Result<u64, WireError> {
        self.inner.count()
    }

    /// The next path and a reader of exactly its NAR (what the handler leaves of it is
    /// skipped), or `None` after the last. An error means the stream's contents are malformed;
    /// the server skips the rest of it after the handler returns.
    #[allow(clippy::type_complexity)]
    pub fn next_path(
        &mut self,
    ) -> Result<Option<(PathInfo, PathNar<'_, &'a mut dyn Read>)>, WireError> {
        match self.inner.next_path()? {
            None => Ok(None),
            Some((mut info, nar)) => {
                info.info.ultimate = false;
                Ok(Some((info, nar)))
            }
        }
    }
}

/// The store behind a worker session. Each method does the work of one operation; an error
/// is reported to the client ([`WorkerHandler::error_info`]) and the session goes on.
pub trait WorkerHandler {
    type Error: std::error::Error + Send + Sync + 'static;

    /// What the client is told of `err`. By default: the error and its sources, joined by
    /// `": "`, at level error, with exit status 1 (what clients before 1.26 exit with).
    fn error_info(err: &Self::Error) -> ErrorInfo {
        let mut msg = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        ErrorInfo::new(msg)
    }

    /// 19: the client's settings, for the rest of the session. For an untrusted client the
    /// overrides are already filtered ([`ClientOptions::allowed_overrides`]).
    fn set_options(
        &mut self,
        options: &ClientOptions,
        log: &mut dyn Logger,
    ) -> Result<(), Self::Error>;

    /// 1: whether `path` is valid.
    fn is_valid_path(&mut self, path: &StorePath) -> Result<bool, Self::Error>;

    /// 31: the valid ones among `paths`; with `substitute`, try the substituters for the
    /// others first.
    fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        substitute: bool,
        log: &mut dyn Logger,
    ) -> Result<BTreeSet<StorePath>, Self::Error>;

    /// 26: the info of `path`, `None` when it is not valid (for clients before 1.17 the
    /// server turns `None` into the error "path '…' is not valid").
    fn query_path_info(&mut self, path: &StorePath)
        -> Result<Option<UnkeyedPathInfo>, Self::Error>;

    /// 6: the valid paths that refer to `path`.
    fn query_referrers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>, Self::Error>;

    /// 7: add the content-addressed path `name` whose contents `data` gives (to its end: a
    /// NAR, a file's bytes or a text, as `method` says), referring to `refs`; its path info.
    /// `repair` only for trusted clients.
    fn add_to_store(
        &mut self,
        name: &str,
        method: CaMethod,
        refs: &BTreeSet<StorePath>,
        repair: bool,
        data: &mut dyn Read,
        log: &mut dyn Logger,
    ) -> Result<PathInfo, Self::Error>;

    /// 8: add the text file `name` referring to `refs`; its path.
    fn add_text_to_store(
        &mut self,
        name: &str,
        text: &str,
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, Self::Error>;

    /// 14: the roots of the garbage collector, each link or place with the path it holds.
    /// With `censor` (an untrusted client), the places of runtime roots are not told.
    fn find_roots(&mut self, censor: bool) -> Result<Vec<(String, StorePath)>, Self::Error>;

    /// 20: collect garbage (`max_freed`: `None` for no limit); the paths listed or deleted,
    /// and the bytes freed.
    fn collect_garbage(
        &mut self,
        action: GcAction,
        paths: &BTreeSet<StorePath>,
        max_freed: Option<u64>,
        log: &mut dyn Logger,
    ) -> Result<(Vec<StorePath>, u64), Self::Error>;

    /// 33: the derivations known to produce `path` that are valid.
    fn query_valid_derivers(
        &mut self,
        path: &StorePath,
    ) -> Result<BTreeSet<StorePath>, Self::Error>;

    /// 23: every valid path.
    fn query_all_valid_paths(&mut self) -> Result<BTreeSet<StorePath>, Self::Error>;

    /// 29: the valid path with this hash part, if any (nothing about `hash_part` is checked).
    fn query_path_from_hash_part(
        &mut self,
        hash_part: &str,
    ) -> Result<Option<StorePath>, Self::Error>;

    /// 41: the outputs of the derivation `drv_path` (which must be valid), each with its path
    /// when known.
    fn query_derivation_output_map(
        &mut self,
        drv_path: &StorePath,
    ) -> Result<BTreeMap<String, Option<StorePath>>, Self::Error>;

    /// 40: what building `targets` would take.
    fn query_missing(&mut self, targets: &[DerivedPath]) -> Result<Missing, Self::Error>;

    /// 11: make `path` a root for the rest of the session.
    fn add_temp_root(&mut self, path: &StorePath) -> Result<(), Self::Error>;

    /// 12: register `link` (a path sent by the client, not checked) as an indirect root.
    fn add_indirect_root(&mut self, link: &str) -> Result<(), Self::Error>;

    /// 47 (trusted clients only): make `gc_root` (sent by the client, not checked) a symlink
    /// to `path` and a permanent root; the root's path.
    fn add_perm_root(&mut self, path: &StorePath, gc_root: &str) -> Result<String, Self::Error>;

    /// 10: make `path` valid (by substitution); an error when it cannot be.
    fn ensure_path(&mut self, path: &StorePath, log: &mut dyn Logger) -> Result<(), Self::Error>;

    /// 9: build or substitute `targets`; a failure is an error (Nix's carries the exit status
    /// of the build: see [`WorkerHandler::error_info`]). `Repair` only for trusted clients.
    fn build_paths(
        &mut self,
        targets: &[DerivedPath],
        mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<(), Self::Error>;

    /// 46: build or substitute `targets`, a result for each (failures are results, not
    /// errors). `Repair` only for trusted clients.
    fn build_paths_with_results(
        &mut self,
        targets: &[DerivedPath],
        mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<Vec<KeyedBuildResult>, Self::Error>;

    /// 36: build `drv`, sent whole without its input derivations (its inputs must be valid).
    /// `drv_path` comes from the client; nothing about `drv` has been checked. For an
    /// untrusted client `drv` is content-addressed (checked by the server), and Nix's daemon
    /// builds it under the path it writes it to rather than `drv_path`.
    fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &Derivation,
        mode: BuildMode,
        log: &mut dyn Logger,
    ) -> Result<BuildResult, Self::Error>;

    /// 38: write the NAR of `path` to `out`. See the module documentation for what an error
    /// before and after the first byte does.
    fn nar_from_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), Self::Error>;

    /// 16 (obsolete: how clients before 1.18 export): write the export record of `path` to
    /// `out`: its NAR, then the magic `0x4558494e`, the path, its references, its deriver
    /// (or empty) and `0` (no signature), as `nix-store --export` writes each path after its
    /// `1`. An error after the first byte still reaches the client as an error.
    fn export_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), Self::Error>;

    /// 27 (obsolete: how clients before 1.18 import): add the paths of the export stream
    /// `input` (as `nix-store --import` reads it), signatures unchecked when `trusted`, as
    /// Nix's daemon does. Every read is asked of the client (`STDERR_READ`), which cannot
    /// answer past the end of its stream: read nothing after its final `0`. The paths, in
    /// stream order.
    fn import_paths(
        &mut self,
        input: &mut dyn Read,
        trusted: bool,
        log: &mut dyn Logger,
    ) -> Result<Vec<StorePath>, Self::Error>;

    /// 39: add `info.path` from its NAR: `nar` yields exactly `info.info.nar_size` bytes,
    /// then end of file (an I/O error if the client sends fewer). What the handler leaves
    /// unread is skipped. Nothing about `info` has been checked against the NAR.
    fn add_to_store_nar(
        &mut self,
        info: &PathInfo,
        repair: bool,
        dont_check_sigs: bool,
        nar: &mut dyn Read,
        log: &mut dyn Logger,
    ) -> Result<(), Self::Error>;

    /// 44: add the paths of `paths`, in turn. What the handler leaves unread is skipped.
    fn add_multiple_to_store(
        &mut self,
        repair: bool,
        dont_check_sigs: bool,
        paths: &mut IncomingPaths<'_>,
        log: &mut dyn Logger,
    ) -> Result<(), Self::Error>;

    /// 37 (trusted clients only): add `sigs` to the signatures of `path`.
    fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: &BTreeSet<String>,
    ) -> Result<(), Self::Error>;

    /// 45 (trusted clients only): keep the build log of `drv_path`, read from `data` (to its
    /// end; what the handler leaves unread is skipped).
    fn add_build_log(
        &mut self,
        drv_path: &StorePath,
        data: &mut dyn Read,
    ) -> Result<(), Self::Error>;

    /// 32 (and 3): which of `paths` a substituter has.
    fn query_substitutable_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        log: &mut dyn Logger,
    ) -> Result<BTreeSet<StorePath>, Self::Error>;

    /// 30 (and 21): what the substituters know of those of `paths` they have.
    fn query_substitutable_path_infos(
        &mut self,
        paths: &BTreeMap<StorePath, Option<ContentAddress>>,
        log: &mut dyn Logger,
    ) -> Result<BTreeMap<StorePath, SubstitutableInfo>, Self::Error>;

    /// 34: replace identical files in the store by hard links to one copy.
    fn optimise_store(&mut self, log: &mut dyn Logger) -> Result<(), Self::Error>;

    /// 35 (`repair` for trusted clients only): check the store; whether errors were found
    /// that are still there.
    fn verify_store(
        &mut self,
        check_contents: bool,
        repair: bool,
        log: &mut dyn Logger,
    ) -> Result<bool, Self::Error>;
}

/// What a substituter knows of a path (the answer to `QuerySubstitutablePathInfos`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstitutableInfo {
    pub deriver: Option<StorePath>,
    pub references: BTreeSet<StorePath>,
    /// The compressed size, 0 when unknown.
    pub download_size: u64,
    pub nar_size: u64,
}
