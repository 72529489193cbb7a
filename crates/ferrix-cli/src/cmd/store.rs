//! `ferrix store add|add-path|add-file|gc|verify|optimise|delete|ping`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ferrix_format::{FileIngestionMethod, HashAlgo};
use ferrix_store::gc::{GcAction, GcOptions};

use crate::ops;
use crate::settings::Settings;
use crate::shell::Shell;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Add a file or directory to the store.
    Add(AddArgs),
    /// Add a path to the store (recursive, sha256).
    AddPath(AddArgs),
    /// Add a regular file to the store (flat, sha256).
    AddFile(AddArgs),
    /// Delete unreachable paths.
    Gc {
        /// Stop after freeing this many bytes.
        #[arg(long)]
        max: Option<u64>,
        /// Only show what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check that paths are present with their recorded contents.
    Verify {
        /// Do not recompute NAR hashes.
        #[arg(long)]
        no_contents: bool,
        /// Check every valid path.
        #[arg(long)]
        all: bool,
        paths: Vec<String>,
    },
    /// Repair paths by building their derivers again.
    Repair { paths: Vec<String> },
    /// Replace identical files in the store by hard links to one copy.
    Optimise,
    /// Write the NAR of a store path to standard output (through the store, so a store
    /// kept elsewhere than its paths say works too).
    DumpPath { path: String },
    /// Sign paths with a secret key (their closures too with --recursive).
    Sign {
        /// The file holding the secret key (`NAME:BASE64`).
        #[arg(long, short = 'k', required = true)]
        key_file: String,
        #[arg(long, short = 'r')]
        recursive: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Check that the store can be reached, and say what it is (for a daemon: its version
    /// and whether it trusts us).
    Ping,
    /// Delete paths, refusing live ones.
    Delete {
        #[arg(long)]
        ignore_liveness: bool,
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Flat,
    Nar,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Name of the store path (default: the file's name).
    #[arg(short = 'n', long)]
    name: Option<String>,
    /// How to hash: the file's bytes (flat) or its NAR (nar).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Hash algorithm for the content address.
    #[arg(long = "hash-algo", default_value = "sha256", value_parser = crate::cmd::parse_algo)]
    algo: HashAlgo,
    path: PathBuf,
}

pub fn run(cmd: StoreCommand, settings: &Settings, shell: &mut Shell) -> Result<ExitCode> {
    if let StoreCommand::Ping = cmd {
        return ping(settings, shell);
    }
    if let Some((url, _)) = settings.daemon() {
        let url = url.to_owned();
        return through_daemon(cmd, settings, &url, shell);
    }
    let store = settings.open_store()?;
    if matches!(
        cmd,
        StoreCommand::Add(_) | StoreCommand::AddPath(_) | StoreCommand::AddFile(_)
    ) {
        crate::interrupt::watch(&store)?;
    }
    match cmd {
        StoreCommand::Add(a) | StoreCommand::AddPath(a) | StoreCommand::AddFile(a)
            if a.name.is_some() =>
        {
            let method = match a.mode {
                Some(Mode::Flat) => FileIngestionMethod::Flat,
                _ => FileIngestionMethod::Recursive,
            };
            let name = a.name.clone().unwrap_or_default();
            let p = store.add_path(&a.path, &name, method, a.algo)?;
            shell.println(store.print(&p))?;
        }
        StoreCommand::AddFile(a) => {
            let p = ops::add(
                &store,
                std::slice::from_ref(&a.path),
                FileIngestionMethod::Flat,
                a.algo,
            )?
            .remove(0);
            shell.println(store.print(&p))?;
        }
        StoreCommand::Add(a) | StoreCommand::AddPath(a) => {
            let method = match a.mode {
                Some(Mode::Flat) => FileIngestionMethod::Flat,
                _ => FileIngestionMethod::Recursive,
            };
            let p = ops::add(&store, std::slice::from_ref(&a.path), method, a.algo)?.remove(0);
            shell.println(store.print(&p))?;
        }
        StoreCommand::Gc { max, dry_run } => {
            let mut opts = GcOptions::new(if dry_run {
                GcAction::ReturnDead
            } else {
                GcAction::DeleteDead
            });
            opts.max_freed = max;
            ops::gc(&store, settings, opts, shell)?;
        }
        StoreCommand::Verify {
            no_contents,
            all,
            paths,
        } => {
            if all || paths.is_empty() {
                return ops::verify(&store, !no_contents, None, None, shell);
            }
            let ps = ops::resolve_all(&store, &paths)?;
            return ops::verify(&store, !no_contents, None, Some(&ps), shell);
        }
        StoreCommand::Optimise => ops::optimise(&store, shell)?,
        StoreCommand::Repair { paths } => {
            let ps = ops::resolve_all(&store, &paths)?;
            let store = std::sync::Arc::new(store);
            let repaired = crate::build::repair_paths(settings, store, &ps, shell)?;
            if !ps.iter().all(|p| repaired.contains(p)) {
                return Ok(ExitCode::from(1));
            }
        }
        StoreCommand::DumpPath { path } => {
            let p = ops::resolve(&store, &path)?;
            if !store.is_valid_path(&p)? {
                bail!("path '{}' is not valid", store.print(&p));
            }
            store.nar_from_path(&p, shell.out())?;
        }
        StoreCommand::Sign {
            key_file,
            recursive,
            paths,
        } => {
            let key = secret_key(&key_file)?;
            let mut ps = ops::resolve_all(&store, &paths)?;
            if recursive {
                ps = store.closure(ps, false, false)?.into_iter().collect();
            }
            let mut added = 0;
            for p in &ps {
                added += store.sign(p, std::slice::from_ref(&key))?.len();
            }
            shell.note(format!("added {added} signatures"));
        }
        StoreCommand::Ping => unreachable!("answered above"),
        StoreCommand::Delete {
            ignore_liveness,
            paths,
        } => {
            let mut opts = GcOptions::new(GcAction::DeleteSpecific);
            opts.paths = ops::resolve_all(&store, &paths)?.into_iter().collect();
            opts.ignore_liveness = ignore_liveness;
            ops::gc(&store, settings, opts, shell)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The secret key in `key_file` (`NAME:BASE64`).
fn secret_key(key_file: &str) -> Result<ferrix_format::signature::SecretKey> {
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading the secret key file '{key_file}'"))?;
    text.trim()
        .parse()
        .with_context(|| format!("'{key_file}' does not hold a secret key"))
}

/// `ferrix store …` through the daemon at `url`.
fn through_daemon(
    cmd: StoreCommand,
    settings: &Settings,
    url: &str,
    shell: &mut Shell,
) -> Result<ExitCode> {
    use ferrix_protocol::worker::GcAction as A;
    let sd = settings.store_dir.clone();
    let mut d = crate::stores::connect_daemon(url, settings)?;
    let resolve = |a: &str| ops::resolve_in(&sd, std::path::Path::new(sd.as_str()), a);
    let resolve_all = |v: &[String]| v.iter().map(|a| resolve(a)).collect::<Result<Vec<_>>>();
    // `add-file` adds a file's bytes unless told otherwise; the others its NAR.
    let file_by_default = matches!(cmd, StoreCommand::AddFile(_));
    match cmd {
        StoreCommand::Add(a) | StoreCommand::AddPath(a) | StoreCommand::AddFile(a) => {
            let flat = match a.mode {
                Some(m) => matches!(m, Mode::Flat),
                None => file_by_default,
            };
            let method = if flat {
                FileIngestionMethod::Flat
            } else {
                FileIngestionMethod::Recursive
            };
            let name = match a.name.clone() {
                Some(n) => n,
                None => a
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .with_context(|| format!("'{}' has no file name", a.path.display()))?,
            };
            let p = d.add_path(&a.path, &name, method, a.algo)?;
            shell.println(sd.display(&p))?;
        }
        StoreCommand::Gc { max, dry_run } => {
            let action = if dry_run {
                A::ReturnDead
            } else {
                A::DeleteDead
            };
            ops::gc_through_daemon(&mut d, action, &Default::default(), max, shell)?;
        }
        StoreCommand::Delete {
            ignore_liveness,
            paths,
        } => {
            if ignore_liveness {
                bail!("nobody may ignore liveness through a daemon");
            }
            let ps = resolve_all(&paths)?.into_iter().collect();
            ops::gc_through_daemon(&mut d, A::DeleteSpecific, &ps, None, shell)?;
        }
        StoreCommand::Verify {
            no_contents,
            all,
            paths,
        } => {
            if !(all || paths.is_empty()) {
                bail!("through a daemon the whole store is verified: pass no paths (or --all)");
            }
            if d.verify_store(!no_contents, false, crate::stores::log_to_stderr())? {
                return Ok(ExitCode::from(1));
            }
        }
        StoreCommand::Optimise => d.optimise_store(crate::stores::log_to_stderr())?,
        StoreCommand::Repair { paths } => {
            crate::stores::repair_through_daemon(&mut d, &sd, &resolve_all(&paths)?)?;
        }
        StoreCommand::DumpPath { path } => {
            let p = resolve(&path)?;
            d.nar_into(&p, shell.out())?;
        }
        StoreCommand::Sign {
            key_file,
            recursive,
            paths,
        } => {
            let key = secret_key(&key_file)?;
            let mut todo = resolve_all(&paths)?;
            let mut seen = std::collections::BTreeSet::new();
            let mut added = 0;
            while let Some(p) = todo.pop() {
                if !seen.insert(p.clone()) {
                    continue;
                }
                let Some(info) = d.query_path_info(&p)? else {
                    bail!("path '{}' is not valid", sd.display(&p));
                };
                if recursive {
                    todo.extend(info.references.iter().cloned());
                }
                let fp = ferrix_format::signature::fingerprint(
                    &sd,
                    &p,
                    &info.nar_hash,
                    info.nar_size,
                    &info.references,
                );
                let sig = key.sign(fp.as_bytes()).to_string();
                if !info.sigs.contains(&sig) {
                    d.add_signatures(&p, &[sig].into())?;
                    added += 1;
                }
            }
            shell.note(format!("added {added} signatures"));
        }
        StoreCommand::Ping => unreachable!("answered above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `ferrix store ping`, in the form of `nix store ping`.
fn ping(settings: &Settings, shell: &mut Shell) -> Result<ExitCode> {
    match settings.daemon() {
        Some((url, _)) => {
            let client = crate::stores::connect_daemon(url, settings)?;
            shell.println(format!("Store URL: {url}"))?;
            if let Some(v) = client.daemon_version() {
                shell.println(format!("Version: {v}"))?;
            }
            if let Some(t) = client.trusted() {
                shell.println(format!("Trusted: {}", u8::from(t)))?;
            }
        }
        None => {
            let store = settings.open_store()?;
            shell.println(format!(
                "Store URL: local (store '{}')",
                store.store_dir().as_str()
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
