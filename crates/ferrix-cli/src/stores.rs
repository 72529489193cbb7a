//! Opening any store a command line names (`--from`, `--to`, `--store`): the local store or
//! one under another root, a binary cache, a machine over ssh, or a daemon on its socket,
//! each as a [`Store`].

use anyhow::{bail, Context, Result};
use ferrix_store::binary_cache::BinaryCache;
use ferrix_store::remote_store::{ServeStore, WorkerStore};
use ferrix_store::worker_client::WorkerClient;
use ferrix_store::{LocalStore, LocalStoreConfig, Store};

use crate::remote::SessionGuard;
use crate::settings::Settings;
use crate::shell::Shell;

/// Which end of a copy a store is: what is opened of a cache depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source,
    Destination,
}

/// How stores named on the command line are opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Do not require signatures on what a binary cache offers (`--no-check-sigs`).
    pub no_check_sigs: bool,
    /// Compress the ssh connection (`nix-copy-closure --gzip`).
    pub compress: bool,
}

/// An open store, with what must outlive it (an ssh session). The store is dropped first.
pub struct Opened {
    pub store: Box<dyn Store>,
    /// The local store itself, when that is what was opened (paths are resolved in it).
    pub local: Option<std::sync::Arc<LocalStore>>,
    _session: Option<SessionGuard>,
}

/// Whether `uri` names a binary cache.
pub fn is_cache(uri: &str) -> bool {
    ["file://", "http://", "https://"]
        .iter()
        .any(|s| uri.starts_with(s))
}

/// Open the store `uri` names; `None` is the configured local store.
pub fn open(
    uri: Option<&str>,
    role: Role,
    settings: &Settings,
    opts: OpenOptions,
    shell: &mut Shell,
) -> Result<Opened> {
    let sd = settings.store_dir();
    let uri = match uri {
        Some(u) => u,
        None => match settings.daemon() {
            Some((u, _)) => u,
            None => return local(settings.open_store()?),
        },
    };
    if crate::settings::is_daemon(uri) {
        let client = connect_daemon(uri, settings)?;
        return Ok(Opened {
            store: Box::new(WorkerStore::new(uri.to_owned(), sd.clone(), client)),
            local: None,
            _session: None,
        });
    }
    if uri.starts_with("ssh-ng://") {
        let (client, guard) = crate::remote::connect_ng(uri, sd)?.split();
        return Ok(Opened {
            store: Box::new(WorkerStore::new(uri.to_owned(), sd.clone(), client)),
            local: None,
            _session: Some(guard),
        });
    }
    if uri.starts_with("ssh://") {
        let (client, guard) = crate::remote::connect(uri, sd, opts.compress)?.split();
        return Ok(Opened {
            store: Box::new(ServeStore::new(uri.to_owned(), sd.clone(), client)),
            local: None,
            _session: Some(guard),
        });
    }
    if is_cache(uri) {
        let cache = match role {
            Role::Source => BinaryCache::new(
                uri.to_owned(),
                sd.clone(),
                Some(cache_source(uri, settings, opts.no_check_sigs, shell)?),
                None,
            ),
            Role::Destination if uri.starts_with("file://") => BinaryCache::new(
                uri.to_owned(),
                sd.clone(),
                None,
                Some(file_cache(uri, settings, shell)?),
            ),
            Role::Destination => {
                bail!("'{uri}': only file:// binary caches can be written to")
            }
        };
        return Ok(Opened {
            store: Box::new(cache),
            local: None,
            _session: None,
        });
    }
    let config = LocalStoreConfig::from_url(uri, &settings.store)?;
    let store = LocalStore::open(config).with_context(|| format!("opening the store '{uri}'"))?;
    local(store)
}

fn local(store: LocalStore) -> Result<Opened> {
    let store = std::sync::Arc::new(store);
    Ok(Opened {
        store: Box::new(store.clone()),
        local: Some(store),
        _session: None,
    })
}

/// A `file://DIR?compression=…&compression-level=…&secret-key=…` cache, signed also with
/// the keys of `secret-key-files`. Compression is zstd unless given, as Lix and Harmonia
/// write (Nix 2.8 reads it).
fn file_cache(
    uri: &str,
    settings: &Settings,
    shell: &mut Shell,
) -> Result<ferrix_store::binary_cache::FileCache> {
    use ferrix_store::binary_cache::{Compression, FileCache};
    let rest = uri.strip_prefix("file://").unwrap_or(uri);
    let (dir, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !dir.starts_with('/') {
        bail!("'{uri}': a file:// cache needs an absolute directory");
    }
    let mut compression = Compression::Zstd;
    let mut level = None;
    let mut key_files: Vec<String> = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "compression" => {
                compression = Compression::parse(v).with_context(|| {
                    format!("'{uri}': unknown compression '{v}' (none, xz, zstd, bzip2 or br)")
                })?
            }
            "compression-level" => {
                level =
                    Some(v.parse().with_context(|| {
                        format!("'{uri}': compression-level '{v}' is not a number")
                    })?)
            }
            "secret-key" => key_files.push(v.to_owned()),
            // Compression always uses every core here.
            "parallel-compression" => {}
            _ => shell.warn(format!("'{uri}': unknown setting '{k}'")),
        }
    }
    let keys = settings.secret_keys(&key_files)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    Ok(FileCache {
        dir: dir.into(),
        compression,
        level,
        keys,
        threads,
    })
}

/// A `file://DIR` or `http(s)://…` cache to read from, trusting the keys of
/// `trusted-public-keys`, requiring their signatures unless `require-sigs = false` or
/// `--no-check-sigs`.
fn cache_source(
    uri: &str,
    settings: &Settings,
    no_check_sigs: bool,
    shell: &mut Shell,
) -> Result<ferrix_store::binary_cache::Substituters> {
    let mut subst = settings.substitution()?;
    subst.trust.require_sigs &= !no_check_sigs;
    let http = subst.http_client(&[uri])?;
    let disk = uri
        .starts_with("http")
        .then(|| subst.disk_cache(shell))
        .flatten();
    let cache = ferrix_store::binary_cache::CacheSource::open(
        uri,
        settings.store_dir(),
        subst.trust.clone(),
        Some(&http),
        disk.as_ref(),
    )?;
    Ok(ferrix_store::binary_cache::Substituters::new(
        vec![cache],
        subst.http.connections,
    ))
}

/// A session with the daemon `uri` names (`daemon`, `unix://PATH`).
/// Make `link` (made absolute) a symlink to `p` and have the daemon record it as a root:
/// the link is the client's to make, as with Nix. Where it is.
pub fn daemon_root(
    d: &mut WorkerClient,
    sd: &ferrix_format::StoreDir,
    p: &ferrix_format::StorePath,
    link: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let link = std::path::absolute(link)
        .with_context(|| format!("finding where '{}' is", link.display()))?;
    let tmp = link.with_extension("ferrix-tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(sd.display(p), &tmp)
        .and_then(|()| std::fs::rename(&tmp, &link))
        .with_context(|| format!("creating the symlink '{}'", link.display()))?;
    d.add_indirect_root(&link)?;
    Ok(link)
}

/// Repair `paths` through the daemon: their derivers are built again there and the outputs
/// replaced, the log on standard error.
pub fn repair_through_daemon(
    d: &mut WorkerClient,
    sd: &ferrix_format::StoreDir,
    paths: &[ferrix_format::StorePath],
) -> Result<()> {
    use ferrix_protocol::worker::{BuildMode, DerivedPath, OutputsSpec};
    let mut targets = Vec::new();
    for p in paths {
        let deriver = d.query_path_info(p)?.and_then(|i| i.deriver);
        let Some(drv_path) = deriver else {
            bail!(
                "cannot repair path '{}': it has no deriver to build again",
                sd.display(p)
            );
        };
        targets.push(DerivedPath::Built {
            drv_path,
            outputs: OutputsSpec::All,
        });
    }
    d.build_paths(&targets, BuildMode::Repair, log_to_stderr())?;
    Ok(())
}

/// A daemon's log lines, on standard error as they come.
pub fn log_to_stderr() -> ferrix_store::serve_client::LogSink {
    Box::new(|line: &str| {
        use std::io::Write;
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "{line}");
    })
}

pub fn connect_daemon(uri: &str, settings: &Settings) -> Result<WorkerClient> {
    let socket = settings.daemon_socket(uri);
    WorkerClient::over_socket(uri.to_owned(), &socket, settings.store_dir().clone(), 0)
        .with_context(|| format!("connecting to the daemon at '{}'", socket.display()))
}
