//! `nix-store --serve [--write]`: this store behind the serve protocol, for a master that
//! reaches this machine over `ssh://`. Builds run on an Engine here; their logs go to
//! standard error, which ssh carries back to the master. On a multi-user machine, where
//! the user the master logs in as cannot write the store, every command goes to the daemon.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferrix_build::Plan;
use ferrix_daemon::serve::{ServeHandler, ServeOptions};
use ferrix_format::{StoreDir, StorePath};
use ferrix_protocol::serve::{
    AddToStoreNar, BuildResult, BuildSettings, BuildStatus, PathInfoEntry,
};
use ferrix_store::worker_client::WorkerClient;
use ferrix_store::{LocalStore, StoreError, ValidPathInfo};

use crate::settings::Settings;

/// The handler: this store and the session's builds.
struct Handler<'a> {
    store: Arc<LocalStore>,
    builds: crate::machine::Builds<'a>,
}

#[derive(Debug, thiserror::Error)]
enum ServeFailure {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Daemon(#[from] ferrix_store::serve_client::RemoteError),
    #[error(transparent)]
    Copy(#[from] ferrix_store::CopyError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl Handler<'_> {
    /// Build here; the builders' output goes to standard error, unadorned: the master shows
    /// it as the build log.
    fn run(&mut self, plan: Plan, settings: &BuildSettings) -> Result<BuildResult> {
        let asked = crate::machine::Asked {
            max_silent_time: settings.max_silent_time,
            timeout: settings.build_timeout,
            keep_failed: settings.keep_failed,
        };
        // The builders' output goes to standard error, which the master shows.
        let mut to_stderr = |p: crate::machine::Progress| {
            let line = match p {
                crate::machine::Progress::Line(_, line) => line,
                crate::machine::Progress::Warning(w) => format!("warning: {w}"),
                crate::machine::Progress::Started(..)
                | crate::machine::Progress::Fetching(..)
                | crate::machine::Progress::Ended(_) => return,
            };
            let mut e = std::io::stderr().lock();
            let _ = writeln!(e, "{line}");
        };
        self.builds.run(plan, asked, &mut to_stderr)
    }
}

impl ServeHandler for Handler<'_> {
    type Error = ServeFailure;

    fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        lock: bool,
        _substitute: bool,
    ) -> Result<BTreeSet<StorePath>, ServeFailure> {
        if lock {
            self.store.add_temp_roots(paths)?;
        }
        Ok(self.store.valid_among(paths.iter())?.into_iter().collect())
    }

    fn query_path_infos(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<Vec<PathInfoEntry>, ServeFailure> {
        let mut out = Vec::new();
        for p in paths {
            if let Some(i) = self.store.query_path_info(p)? {
                out.push(entry(i));
            }
        }
        Ok(out)
    }

    fn dump_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), ServeFailure> {
        Ok(self.store.nar_from_path(path, out)?)
    }

    fn import_paths(&mut self, input: &mut dyn Read) -> Result<(), ServeFailure> {
        ferrix_store::export::import_paths(&self.store, input)?;
        Ok(())
    }

    fn export_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        out: &mut dyn Write,
    ) -> Result<(), ServeFailure> {
        Ok(ferrix_store::export::export_paths(&self.store, paths, out)?)
    }

    fn build_paths(
        &mut self,
        paths: &[String],
        settings: &BuildSettings,
    ) -> Result<BuildResult, ServeFailure> {
        let mut wanted = Vec::new();
        for p in paths {
            wanted.push(crate::build::parse_installable(&self.store, p)?);
        }
        let plan = crate::machine::plan_wanted(&self.store, &wanted)?;
        Ok(self.run(plan, settings)?)
    }

    fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &ferrix_format::Derivation,
        settings: &BuildSettings,
    ) -> Result<BuildResult, ServeFailure> {
        Ok(
            match crate::machine::plan_sent(&self.store, drv_path, drv)? {
                Ok(plan) => self.run(plan, settings)?,
                Err(why) => BuildResult::new(BuildStatus::MiscFailure, why),
            },
        )
    }

    fn query_closure(
        &mut self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeSet<StorePath>, ServeFailure> {
        Ok(self
            .store
            .closure(paths.iter().cloned(), include_outputs, false)?)
    }

    fn add_to_store_nar(
        &mut self,
        info: &AddToStoreNar,
        nar: &mut dyn Read,
    ) -> Result<(), ServeFailure> {
        let vpi = ValidPathInfo {
            path: info.path.clone(),
            deriver: info.deriver.clone(),
            nar_hash: info.nar_hash,
            references: info.references.clone(),
            registration_time: ferrix_store::path_info::now(),
            nar_size: info.nar_size,
            ultimate: false,
            sigs: info.sigs.clone(),
            ca: info.ca,
        };
        Ok(self.store.add_nar(&vpi, nar)?)
    }
}

/// What the serve protocol says of a valid path (its NAR is sent uncompressed).
fn entry(i: ValidPathInfo) -> PathInfoEntry {
    PathInfoEntry {
        path: i.path,
        deriver: i.deriver,
        references: i.references,
        download_size: i.nar_size,
        nar_size: i.nar_size,
        nar_hash: Some(i.nar_hash),
        ca: i.ca,
        sigs: i.sigs,
    }
}

/// Serve the store on standard input and output until the master closes it.
pub fn serve(settings: &Settings, store: Arc<LocalStore>, write: bool) -> Result<()> {
    let mut opts = ServeOptions::new(store.store_dir().clone());
    opts.write = write;
    let mut h = Handler {
        builds: crate::machine::Builds::new(settings, store.clone(), crate::machine::Client::Stdin),
        store,
    };
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    ferrix_daemon::serve::serve(&mut h, stdin, stdout, &opts).context("serving the store")?;
    Ok(())
}

/// The handler of a machine whose store is the daemon's.
struct ThroughDaemon {
    d: WorkerClient,
    sd: StoreDir,
}

impl ThroughDaemon {
    /// The master's limits for the builds that follow, as the session's options.
    fn limits(&mut self, settings: &BuildSettings) -> Result<(), ServeFailure> {
        let mut overrides = std::collections::BTreeMap::new();
        if settings.build_timeout != 0 {
            overrides.insert("timeout".to_owned(), settings.build_timeout.to_string());
        }
        self.d.set_options(ferrix_protocol::worker::ClientOptions {
            keep_failed: settings.keep_failed,
            max_silent_time: settings.max_silent_time,
            build_verbosity: ferrix_protocol::worker::stderr::verbosity::ERROR,
            overrides,
            ..Default::default()
        })?;
        Ok(())
    }
}

impl ServeHandler for ThroughDaemon {
    type Error = ServeFailure;

    fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        lock: bool,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>, ServeFailure> {
        if lock {
            for p in paths {
                self.d.add_temp_root(p)?;
            }
        }
        Ok(self.d.query_valid(paths, substitute)?)
    }

    fn query_path_infos(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<Vec<PathInfoEntry>, ServeFailure> {
        let mut out = Vec::new();
        for p in paths {
            if let Some(i) = self.d.query_path_info(p)? {
                out.push(entry(ValidPathInfo::from_unkeyed(p.clone(), i)));
            }
        }
        Ok(out)
    }

    fn dump_path(&mut self, path: &StorePath, out: &mut dyn Write) -> Result<(), ServeFailure> {
        Ok(self.d.nar_into(path, out)?)
    }

    fn import_paths(&mut self, input: &mut dyn Read) -> Result<(), ServeFailure> {
        ferrix_store::export::import_through_daemon(&mut self.d, &self.sd, input)?;
        Ok(())
    }

    fn export_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
        out: &mut dyn Write,
    ) -> Result<(), ServeFailure> {
        let paths: Vec<StorePath> = paths.iter().cloned().collect();
        crate::legacy::nix_store::daemon::export_to(&mut self.d, &self.sd, &paths, out)?;
        Ok(())
    }

    fn build_paths(
        &mut self,
        paths: &[String],
        settings: &BuildSettings,
    ) -> Result<BuildResult, ServeFailure> {
        let mut targets = Vec::new();
        for p in paths {
            targets.push(crate::legacy::nix_store::daemon::derived_path(&self.sd, p)?);
        }
        self.limits(settings)?;
        // A failed build is the master's to report, as the local handler's is; the
        // session goes on.
        Ok(
            match self.d.build_paths(
                &targets,
                ferrix_protocol::worker::BuildMode::Normal,
                crate::stores::log_to_stderr(),
            ) {
                Ok(()) => BuildResult::new(BuildStatus::Built, ""),
                Err(e) => BuildResult::new(
                    BuildStatus::MiscFailure,
                    format!("{:#}", anyhow::Error::new(e)),
                ),
            },
        )
    }

    fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &ferrix_format::Derivation,
        settings: &BuildSettings,
    ) -> Result<BuildResult, ServeFailure> {
        self.limits(settings)?;
        Ok(self
            .d
            .build_derivation(drv_path, drv, crate::stores::log_to_stderr())?)
    }

    fn query_closure(
        &mut self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeSet<StorePath>, ServeFailure> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<StorePath> = paths.iter().cloned().collect();
        while let Some(p) = todo.pop() {
            if seen.contains(&p) {
                continue;
            }
            let info = self
                .d
                .query_path_info(&p)?
                .ok_or_else(|| anyhow::anyhow!("path '{}' is not valid", self.sd.display(&p)))?;
            todo.extend(info.references);
            if include_outputs && p.is_derivation() {
                let outs: BTreeSet<StorePath> =
                    self.d.output_map(&p)?.into_values().flatten().collect();
                todo.extend(self.d.query_valid(&outs, false)?);
            }
            seen.insert(p);
        }
        Ok(seen)
    }

    fn add_to_store_nar(
        &mut self,
        info: &AddToStoreNar,
        nar: &mut dyn Read,
    ) -> Result<(), ServeFailure> {
        let info = ferrix_protocol::worker::PathInfo {
            path: info.path.clone(),
            info: ferrix_protocol::worker::UnkeyedPathInfo {
                deriver: info.deriver.clone(),
                nar_hash: info.nar_hash,
                references: info.references.clone(),
                registration_time: info.registration_time,
                nar_size: info.nar_size,
                ultimate: info.ultimate,
                sigs: info.sigs.clone(),
                ca: info.ca,
            },
        };
        // As Nix's `nix-store --serve` asks; the daemon grants it only to a trusted user.
        Ok(self.d.add_nar_as(&info, nar, true)?)
    }
}

/// Serve the daemon's store on standard input and output until the master closes it.
pub fn serve_through_daemon(d: WorkerClient, sd: StoreDir, write: bool) -> Result<()> {
    let mut opts = ServeOptions::new(sd.clone());
    opts.write = write;
    let mut h = ThroughDaemon { d, sd };
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    ferrix_daemon::serve::serve(&mut h, stdin, stdout, &opts).context("serving the store")?;
    Ok(())
}
