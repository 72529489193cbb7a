//! What a command asks of a daemon besides copying and building on a machine: realising,
//! queries, adding contents, roots, collections, verification and deduplication.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ferrix_format::{FileIngestionMethod, HashAlgo, StorePath};
use ferrix_protocol::wire::{read_store_path_set, read_string, read_strings, read_u64};
use ferrix_protocol::worker::payload::write_framed;
use ferrix_protocol::worker::reply::{read_missing, read_ok, read_output_map};
use ferrix_protocol::worker::{
    BuildMode, CaMethod, DerivedPath, GcAction, Missing, PathInfo, WorkerRequest,
};

use super::WorkerClient;
use crate::serve_client::{LogSink, RemoteError};

/// What a collection through a daemon did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// The paths deleted (or that would be, or that are live), as the daemon prints them.
    pub paths: Vec<String>,
    pub bytes_freed: u64,
}

impl WorkerClient {
    /// Realise `targets` there (built, fetched or found valid), the log going to `sink`.
    pub fn build_paths(
        &mut self,
        targets: &[DerivedPath],
        mode: BuildMode,
        mut sink: LogSink,
    ) -> Result<(), RemoteError> {
        self.call(
            "building",
            &WorkerRequest::BuildPaths {
                paths: targets.to_vec(),
                mode,
            },
            Some(&mut sink),
        )?;
        read_ok(&mut self.r, "BuildPaths").map_err(|e| self.protocol(e))
    }

    /// What realising `targets` would build, fetch, and not know how to make.
    pub fn query_missing(&mut self, targets: &[DerivedPath]) -> Result<Missing, RemoteError> {
        self.call(
            "asking what is missing",
            &WorkerRequest::QueryMissing(targets.to_vec()),
            None,
        )?;
        let sd = self.store_dir.clone();
        read_missing(&mut self.r, &sd, &self.limits).map_err(|e| self.protocol(e))
    }

    /// The output paths of the derivation `drv` (those it knows, by name).
    pub fn output_map(
        &mut self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, Option<StorePath>>, RemoteError> {
        self.call(
            "asking for a derivation's outputs",
            &WorkerRequest::QueryDerivationOutputMap(drv.clone()),
            None,
        )?;
        let sd = self.store_dir.clone();
        read_output_map(&mut self.r, &sd, &self.limits).map_err(|e| self.protocol(e))
    }

    /// The paths that refer to `path`.
    pub fn referrers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>, RemoteError> {
        self.path_set(
            "asking for referrers",
            WorkerRequest::QueryReferrers(path.clone()),
        )
    }

    /// The derivations known to produce `path`.
    pub fn valid_derivers(&mut self, path: &StorePath) -> Result<BTreeSet<StorePath>, RemoteError> {
        self.path_set(
            "asking for derivers",
            WorkerRequest::QueryValidDerivers(path.clone()),
        )
    }

    /// The valid path whose hash part is `hash_part`, if there is one.
    pub fn path_from_hash_part(
        &mut self,
        hash_part: &str,
    ) -> Result<Option<StorePath>, RemoteError> {
        self.call(
            "looking a path up by its hash",
            &WorkerRequest::QueryPathFromHashPart(hash_part.to_owned()),
            None,
        )?;
        let sd = self.store_dir.clone();
        ferrix_protocol::wire::read_opt_store_path(&mut self.r, &sd, &self.limits, "path")
            .map_err(|e| self.protocol(e))
    }

    /// Every valid path.
    pub fn all_valid(&mut self) -> Result<BTreeSet<StorePath>, RemoteError> {
        self.path_set("asking for every path", WorkerRequest::QueryAllValidPaths)
    }

    fn path_set(
        &mut self,
        what: &'static str,
        req: WorkerRequest,
    ) -> Result<BTreeSet<StorePath>, RemoteError> {
        self.call(what, &req, None)?;
        let sd = self.store_dir.clone();
        read_store_path_set(&mut self.r, &sd, &self.limits, "paths").map_err(|e| self.protocol(e))
    }

    /// Keep `path` from collection while this session lasts.
    pub fn add_temp_root(&mut self, path: &StorePath) -> Result<(), RemoteError> {
        self.call(
            "adding a temporary root",
            &WorkerRequest::AddTempRoot(path.clone()),
            None,
        )?;
        read_ok(&mut self.r, "AddTempRoot").map_err(|e| self.protocol(e))
    }

    /// Register `link` (an absolute symlink to a store path, made by the caller) as a root.
    pub fn add_indirect_root(&mut self, link: &Path) -> Result<(), RemoteError> {
        self.call(
            "adding a root",
            &WorkerRequest::AddIndirectRoot(link.to_string_lossy().into_owned()),
            None,
        )?;
        read_ok(&mut self.r, "AddIndirectRoot").map_err(|e| self.protocol(e))
    }

    /// Add `text` as the text file `name` with references `refs`.
    pub fn add_text(
        &mut self,
        name: &str,
        text: &[u8],
        refs: &BTreeSet<StorePath>,
    ) -> Result<StorePath, RemoteError> {
        self.add_contents(name, CaMethod::Text, refs, &mut &text[..])
    }

    /// Add the file or tree at `src` as `name`, content-addressed by `method` and `algo`.
    pub fn add_path(
        &mut self,
        src: &Path,
        name: &str,
        method: FileIngestionMethod,
        algo: HashAlgo,
    ) -> Result<StorePath, RemoteError> {
        let uri = self.uri.clone();
        let source_err = |e: std::io::Error| RemoteError::Source {
            uri: uri.clone(),
            source: Box::new(crate::store::CopyError::Stream {
                store: "the local file system".into(),
                path: src.display().to_string(),
                source: e,
            }),
        };
        match method {
            FileIngestionMethod::Flat => {
                let mut f = std::fs::File::open(src).map_err(source_err)?;
                self.add_contents(
                    name,
                    CaMethod::Fixed { method, algo },
                    &BTreeSet::new(),
                    &mut f,
                )
            }
            _ => {
                // The NAR is made on a thread of its own while it is sent.
                let (mut reading, writing) = std::io::pipe().map_err(source_err)?;
                let src_owned = src.to_owned();
                let dumper =
                    std::thread::spawn(move || ferrix_format::nar::dump_path(&src_owned, writing));
                let sent = self.add_contents(
                    name,
                    CaMethod::Fixed { method, algo },
                    &BTreeSet::new(),
                    &mut reading,
                );
                let dumped = dumper
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e));
                if let Err(e) = dumped {
                    return Err(source_err(std::io::Error::other(e)));
                }
                sent
            }
        }
    }

    fn add_contents(
        &mut self,
        name: &str,
        method: CaMethod,
        refs: &BTreeSet<StorePath>,
        data: &mut dyn std::io::Read,
    ) -> Result<StorePath, RemoteError> {
        let req = WorkerRequest::AddToStore {
            name: name.to_owned(),
            method,
            refs: refs.clone(),
            repair: false,
        };
        self.call_with_data("adding a path", &req, data)?;
        let sd = self.store_dir.clone();
        let info = PathInfo::read(&mut self.r, self.version, &sd, &self.limits)
            .map_err(|e| self.protocol(e))?;
        Ok(info.path)
    }

    /// Send `req` with `data` after it as a framed stream, and follow its log messages until
    /// the daemon says it is done.
    fn call_with_data(
        &mut self,
        what: &'static str,
        req: &WorkerRequest,
        data: &mut dyn std::io::Read,
    ) -> Result<(), RemoteError> {
        let sd = self.store_dir.clone();
        let uri = self.uri.clone();
        let send_err = |source| RemoteError::Send {
            uri: uri.clone(),
            what,
            tail: Vec::new(),
            source,
        };
        ferrix_protocol::worker::write_request(&mut self.w, self.version, &sd, req)
            .map_err(send_err)?;
        write_framed(&mut self.w, data).map_err(send_err)?;
        self.work(what, None)
    }

    /// Collect garbage there (`paths` for deleting specific ones; `max_freed`: stop after).
    pub fn collect_garbage(
        &mut self,
        action: GcAction,
        paths: &BTreeSet<StorePath>,
        max_freed: Option<u64>,
    ) -> Result<Collected, RemoteError> {
        self.call(
            "collecting garbage",
            &WorkerRequest::CollectGarbage {
                action,
                paths: paths.clone(),
                ignore_liveness: false,
                max_freed: max_freed.unwrap_or(u64::MAX),
            },
            None,
        )?;
        let mut read = || -> Result<Collected, ferrix_protocol::WireError> {
            let paths = read_strings(&mut self.r, &self.limits, "collected paths")?;
            let bytes_freed = read_u64(&mut self.r, "bytes freed")?;
            read_u64(&mut self.r, "obsolete field")?;
            Ok(Collected { paths, bytes_freed })
        };
        read().map_err(|e| self.protocol(e))
    }

    /// The roots there: each link (or runtime root) with the path it keeps.
    pub fn find_roots(&mut self) -> Result<Vec<(String, StorePath)>, RemoteError> {
        self.call("asking for roots", &WorkerRequest::FindRoots, None)?;
        let sd = self.store_dir.clone();
        let mut read = || -> Result<Vec<(String, StorePath)>, ferrix_protocol::WireError> {
            let n = read_u64(&mut self.r, "roots")?;
            let mut out = Vec::new();
            for _ in 0..n {
                let link = read_string(&mut self.r, &self.limits, "root")?;
                let p = ferrix_protocol::wire::read_store_path(
                    &mut self.r,
                    &sd,
                    &self.limits,
                    "root's path",
                )?;
                out.push((link, p));
            }
            Ok(out)
        };
        read().map_err(|e| self.protocol(e))
    }

    /// Record `sigs` as signatures of `path` there (a trusted client only).
    pub fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: &BTreeSet<String>,
    ) -> Result<(), RemoteError> {
        self.call(
            "adding signatures",
            &WorkerRequest::AddSignatures {
                path: path.clone(),
                sigs: sigs.clone(),
            },
            None,
        )?;
        read_ok(&mut self.r, "AddSignatures").map_err(|e| self.protocol(e))
    }

    /// Add `info`'s path from its NAR, read from `nar` (`AddToStoreNar`); the daemon checks
    /// its signatures unless it trusts us.
    pub fn add_nar(
        &mut self,
        info: &PathInfo,
        nar: &mut dyn std::io::Read,
    ) -> Result<(), RemoteError> {
        self.add_nar_as(info, nar, false)
    }

    /// [`Self::add_nar`], asking the daemon not to check signatures with
    /// `dont_check_sigs` (which it grants only to a client it trusts, as Nix's daemon does).
    pub fn add_nar_as(
        &mut self,
        info: &PathInfo,
        nar: &mut dyn std::io::Read,
        dont_check_sigs: bool,
    ) -> Result<(), RemoteError> {
        let req = WorkerRequest::AddToStoreNar {
            info: info.clone(),
            repair: false,
            dont_check_sigs,
        };
        self.call_with_data("adding a path", &req, nar)
    }

    /// Send the session's options again (a build's limits, for instance).
    pub fn set_options(
        &mut self,
        options: ferrix_protocol::worker::ClientOptions,
    ) -> Result<(), RemoteError> {
        self.call("setting options", &WorkerRequest::SetOptions(options), None)
    }

    /// Check the store there; whether problems remain. Its report goes to `sink`.
    pub fn verify_store(
        &mut self,
        check_contents: bool,
        repair: bool,
        mut sink: LogSink,
    ) -> Result<bool, RemoteError> {
        self.call(
            "verifying the store",
            &WorkerRequest::VerifyStore {
                check_contents,
                repair,
            },
            Some(&mut sink),
        )?;
        ferrix_protocol::wire::read_bool(&mut self.r, "errors found").map_err(|e| self.protocol(e))
    }

    /// Deduplicate the store there; its report goes to `sink`.
    pub fn optimise_store(&mut self, mut sink: LogSink) -> Result<(), RemoteError> {
        self.call(
            "optimising the store",
            &WorkerRequest::OptimiseStore,
            Some(&mut sink),
        )?;
        read_ok(&mut self.r, "OptimiseStore").map_err(|e| self.protocol(e))
    }
}
