//! `ferrix serve-cache --listen ADDR`: this store as an HTTP binary cache that Nix and
//! Ferrix substitute from. Narinfos come from the database (signed with the configured
//! keys as they are served), NARs are dumped from the store as they are sent; through a
//! daemon, both come from it. With
//! `--dir DIR`, a binary cache directory (as `copy --to file://` writes) is served as it is.
//! With `--compression`, NARs are compressed once, at the first narinfo asked of their
//! closure, and kept in a cache directory, from where they are sent as files.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use ferrix_daemon::http_cache::{CacheBackend, Nar};
use ferrix_format::signature::SecretKey;
use ferrix_format::{Encoding, NarInfo, StorePath};
use ferrix_store::binary_cache::{Compression, FileCache};
use ferrix_store::worker_client::WorkerClient;
use ferrix_store::{LocalStore, ValidPathInfo};

use crate::settings::Settings;
use crate::shell::Shell;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Where to listen (`127.0.0.1:5000`, `[::1]:5000`).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: String,
    /// Sign narinfos with this secret key (besides the keys of `secret-key-files`).
    #[arg(long, value_name = "FILE")]
    secret_key_file: Vec<String>,
    /// The priority the cache announces (lower is asked first); Nix's default is 30 for
    /// `nix-serve`-style caches.
    #[arg(long, default_value_t = 30)]
    priority: u64,
    /// Serve this binary cache directory (its `nix-cache-info`, narinfos and NARs as they
    /// are) instead of the store.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["secret_key_file", "compression"])]
    dir: Option<std::path::PathBuf>,
    /// Serve NARs compressed (`zstd`, `xz`, `br`, `bzip2`; `none` sends them as the store
    /// holds them). Each is compressed once and kept in `--cache-dir`.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Where compressed NARs and their narinfos are kept (default:
    /// `~/.cache/ferrix/serve-cache/<compression>`).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<std::path::PathBuf>,
}

/// A binary cache directory, served file by file.
struct DirCache {
    dir: std::path::PathBuf,
}

impl DirCache {
    /// The file `name` of the directory `sub` (`""` for the top): one plain component.
    fn file(&self, sub: &str, name: &str) -> Option<std::path::PathBuf> {
        let plain = !name.is_empty() && !name.starts_with('.') && !name.contains('/');
        plain.then(|| self.dir.join(sub).join(name))
    }
}

impl CacheBackend for DirCache {
    fn cache_info(&self) -> String {
        std::fs::read_to_string(self.dir.join("nix-cache-info")).unwrap_or_default()
    }

    fn narinfo(&self, hash_part: &str) -> Option<String> {
        std::fs::read_to_string(self.file("", &format!("{hash_part}.narinfo"))?).ok()
    }

    fn nar(&self, file: &str) -> Option<Nar> {
        let path = self.file("nar", file)?;
        let f = std::fs::File::open(&path).ok()?;
        let meta = f.metadata().ok().filter(|m| m.is_file())?;
        Some(Nar {
            len: meta.len(),
            write: Box::new(move |w| {
                let mut f = f;
                std::io::copy(&mut f, w).map(drop)
            }),
        })
    }
}

struct StoreCache {
    store: Arc<LocalStore>,
    keys: Vec<SecretKey>,
    priority: u64,
    compressed: Option<Compressed>,
}

/// Compressed NARs kept on disk: a binary cache directory filled from the store as paths
/// are asked for.
struct Compressed {
    cache: FileCache,
    files: DirCache,
    /// One closure is compressed at a time: two requests never compress the same NAR.
    writing: std::sync::Mutex<()>,
}

impl Compressed {
    /// The narinfo of `p` (valid here, with `nar_hash`), its NAR compressed first if the
    /// directory lacks it or holds another version of it.
    fn narinfo(
        &self,
        store: &LocalStore,
        p: &StorePath,
        nar_hash: &ferrix_format::Hash,
    ) -> Option<String> {
        let file = self.cache.dir.join(format!("{}.narinfo", p.hash_part()));
        let current = |file: &std::path::Path| {
            let text = std::fs::read_to_string(file).ok()?;
            let ni = NarInfo::parse(store.store_dir(), &text).ok()?;
            (ni.store_path == *p && ni.nar_hash == *nar_hash).then_some(text)
        };
        if let Some(text) = current(&file) {
            return Some(text);
        }
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(text) = current(&file) {
            return Some(text);
        }
        // Another version of the path, from before it was deleted and added again.
        let _ = std::fs::remove_file(&file);
        // Only this path: its references are compressed when they are asked for.
        let info = store.path_info(p).ok()?;
        self.cache
            .write_paths(store.store_dir(), &[info], store)
            .ok()?;
        current(&file)
    }
}

impl StoreCache {
    fn path(&self, hash_part: &str) -> Option<StorePath> {
        self.store.path_from_hash_part(hash_part).ok().flatten()
    }
}

impl CacheBackend for StoreCache {
    fn cache_info(&self) -> String {
        format!(
            "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
            self.store.store_dir().as_str(),
            self.priority
        )
    }

    fn narinfo(&self, hash_part: &str) -> Option<String> {
        let p = self.path(hash_part)?;
        let info = self.store.query_path_info(&p).ok()??;
        if let Some(c) = &self.compressed {
            return c.narinfo(&self.store, &p, &info.nar_hash);
        }
        Some(plain_narinfo(self.store.store_dir(), &self.keys, &info))
    }

    fn nar(&self, file: &str) -> Option<Nar> {
        if let Some(c) = &self.compressed {
            return c.files.nar(file);
        }
        let (hash_part, _) = file.split_once('-')?;
        let p = self.path(hash_part)?;
        let info = self.store.query_path_info(&p).ok()??;
        // Only the NAR the narinfo named: a path changed since is not served as it.
        if format!("nar/{file}") != nar_file(&p, &info.nar_hash) {
            return None;
        }
        let store = self.store.clone();
        Some(Nar {
            len: info.nar_size,
            write: Box::new(move |w| store.nar_from_path(&p, w).map_err(std::io::Error::other)),
        })
    }
}

/// The narinfo of a path whose NAR is sent as the store holds it, signed with `keys`.
fn plain_narinfo(sd: &ferrix_format::StoreDir, keys: &[SecretKey], i: &ValidPathInfo) -> String {
    let mut ni = NarInfo {
        store_path: i.path.clone(),
        url: nar_file(&i.path, &i.nar_hash),
        compression: "none".to_owned(),
        file_hash: Some(i.nar_hash),
        file_size: Some(i.nar_size),
        nar_hash: i.nar_hash,
        nar_size: i.nar_size,
        references: i.references.clone(),
        deriver: i.deriver.clone(),
        system: None,
        sigs: i.sigs.iter().filter_map(|s| s.parse().ok()).collect(),
        ca: i.ca,
    };
    for k in keys {
        ni.sign(sd, k);
    }
    ni.to_text(sd)
}

/// `nar/<hash part>-<NAR hash>.nar`: the NAR hash in the name, so that a path changed
/// since its narinfo was served is not served as it.
fn nar_file(p: &StorePath, nar_hash: &ferrix_format::Hash) -> String {
    format!(
        "nar/{}-{}.nar",
        p.hash_part(),
        nar_hash.encode(Encoding::Nix32)
    )
}

/// The store of a daemon (a multi-user machine, where this user cannot open the store's
/// database), served uncompressed: each request on a connection of a small pool.
struct DaemonCache {
    pool: Arc<DaemonPool>,
    sd: ferrix_format::StoreDir,
    keys: Vec<SecretKey>,
    priority: u64,
}

struct DaemonPool {
    url: String,
    settings: Settings,
    idle: std::sync::Mutex<Vec<WorkerClient>>,
}

impl DaemonPool {
    /// An idle connection, or a new one.
    fn take(&self) -> Result<WorkerClient> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(c) => Ok(c),
            None => crate::stores::connect_daemon(&self.url, &self.settings),
        }
    }

    /// Keep `c` for the next request (only a connection that did not fail comes back).
    fn give(&self, c: WorkerClient) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }

    /// `f` on a connection; `None` when it failed (the client is told the path is not here).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut WorkerClient) -> Result<T, ferrix_store::serve_client::RemoteError>,
    ) -> Option<T> {
        let mut c = self.take().ok()?;
        let r = f(&mut c).ok()?;
        self.give(c);
        Some(r)
    }
}

impl DaemonCache {
    /// The record of the valid path whose hash part is `hash_part`.
    fn info(&self, hash_part: &str) -> Option<ValidPathInfo> {
        self.pool.with(|c| {
            let Some(p) = c.path_from_hash_part(hash_part)? else {
                return Ok(None);
            };
            Ok(c.query_path_info(&p)?
                .map(|i| ValidPathInfo::from_unkeyed(p, i)))
        })?
    }
}

impl CacheBackend for DaemonCache {
    fn cache_info(&self) -> String {
        format!(
            "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
            self.sd.as_str(),
            self.priority
        )
    }

    fn narinfo(&self, hash_part: &str) -> Option<String> {
        Some(plain_narinfo(&self.sd, &self.keys, &self.info(hash_part)?))
    }

    fn nar(&self, file: &str) -> Option<Nar> {
        let (hash_part, _) = file.split_once('-')?;
        let info = self.info(hash_part)?;
        // Only the NAR the narinfo named.
        if format!("nar/{file}") != nar_file(&info.path, &info.nar_hash) {
            return None;
        }
        let (pool, p) = (self.pool.clone(), info.path);
        Some(Nar {
            len: info.nar_size,
            write: Box::new(move |w| {
                let mut c = pool.take().map_err(std::io::Error::other)?;
                c.nar_into(&p, w).map_err(std::io::Error::other)?;
                pool.give(c);
                Ok(())
            }),
        })
    }
}

pub fn run(a: Args, settings: &Settings, shell: &mut Shell) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if let Some(dir) = a.dir {
        if !dir.join("nix-cache-info").is_file() {
            anyhow::bail!(
                "'{}' is not a binary cache directory: it has no 'nix-cache-info'",
                dir.display()
            );
        }
        let what = format!("'{}'", dir.display());
        return serve_on(&runtime, &a.listen, DirCache { dir }, &what, shell);
    }
    let keys = settings.secret_keys(&a.secret_key_file)?;
    if let Some((url, _)) = settings.daemon() {
        if a.compression != "none" {
            anyhow::bail!(
                "the store '{url}' is a daemon: its NARs are served as the store holds them \
                 ('--compression none'); compressing them needs the store opened directly"
            );
        }
        let backend = DaemonCache {
            pool: Arc::new(DaemonPool {
                url: url.to_owned(),
                settings: settings.clone(),
                idle: std::sync::Mutex::default(),
            }),
            sd: settings.store_dir.clone(),
            keys,
            priority: a.priority,
        };
        let what = format!("the store of the daemon at '{url}'");
        return serve_on(&runtime, &a.listen, backend, &what, shell);
    }
    let store = Arc::new(settings.open_store()?);
    let compression = Compression::parse(&a.compression).with_context(|| {
        format!(
            "unknown compression '{}' (none, zstd, xz, br or bzip2)",
            a.compression
        )
    })?;
    let compressed = match compression {
        Compression::None => None,
        c => {
            let dir = match a.cache_dir {
                Some(d) => d,
                None => settings
                    .cache_home()
                    .context("no home directory for compressed NARs: pass --cache-dir")?
                    .join("ferrix/serve-cache")
                    .join(c.name()),
            };
            std::fs::create_dir_all(dir.join("nar"))
                .with_context(|| format!("creating '{}'", dir.display()))?;
            Some(Compressed {
                cache: FileCache {
                    dir: dir.clone(),
                    compression: c,
                    level: None,
                    keys: keys.clone(),
                    threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                },
                files: DirCache { dir },
                writing: std::sync::Mutex::new(()),
            })
        }
    };
    let backend = StoreCache {
        store,
        keys,
        priority: a.priority,
        compressed,
    };
    serve_on(&runtime, &a.listen, backend, "the store", shell)
}

/// Listen on `listen`, say where, and serve `backend` until the process ends.
fn serve_on<B: CacheBackend>(
    runtime: &tokio::runtime::Runtime,
    listen: &str,
    backend: B,
    what: &str,
    shell: &mut Shell,
) -> Result<()> {
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on '{listen}'"))?;
        let addr = listener.local_addr()?;
        shell.note(format!("serving {what} as a binary cache on http://{addr}"));
        shell.flush()?;
        ferrix_daemon::http_cache::serve(listener, Arc::new(backend))
            .await
            .context("serving the binary cache")
    })
}
