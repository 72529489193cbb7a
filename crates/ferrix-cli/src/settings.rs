//! Settings, assembled from defaults < nix.conf < environment < flags (the only place any of
//! them is read), and the store they lead to.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferrix_format::StoreDir;
use ferrix_store::{LocalStore, LocalStoreConfig};

use crate::conf::NixConf;
use crate::shell::Shell;

/// What the commands of this binary are configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store_dir: StoreDir,
    pub store: LocalStoreConfig,
    pub conf: NixConf,
    /// `--store` naming a binary cache (`file://`, `http(s)://`): only the commands that
    /// read one take it; the local store is then not to be opened.
    cache_url: Option<String>,
    /// `--store` naming a daemon (`daemon`, `unix://…`): see [`Settings::daemon`].
    daemon_url: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A setting given on the command line: `--option NAME VALUE`, or a flag that stands for one
/// (`-j N` for `max-jobs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliSetting {
    pub name: String,
    pub value: String,
    /// How it was given, for errors: `--option NAME`, `-j`.
    pub origin: String,
}

impl CliSetting {
    /// `--option NAME VALUE`.
    pub fn option(name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            origin: format!("--option {name}"),
            name,
            value: value.into(),
        }
    }

    /// A flag such as `-j` or `--cores` setting `name`.
    pub fn flag(flag: &str, name: &str, value: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            value: value.into(),
            origin: flag.to_owned(),
        }
    }
}

/// `$NIX_CONF_DIR`, default `/etc/nix`.
pub fn conf_dir() -> PathBuf {
    env("NIX_CONF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/nix"))
}

/// The configuration, as Nix 2.8 reads it: `$NIX_CONF_DIR/nix.conf` (default `/etc/nix`),
/// the user's files (`$NIX_USER_CONF_FILES`, or `nix/nix.conf` under `$XDG_CONFIG_HOME`
/// (default `~/.config`) and `$XDG_CONFIG_DIRS` (default `/etc/xdg`), the first winning),
/// `$NIX_CONFIG`, then `options` (the command line, in order). A bad value is an error naming
/// where it was; an unknown setting is a warning, once.
pub fn load_conf(options: &[CliSetting], shell: &mut Shell) -> Result<NixConf> {
    let conf_dir = conf_dir();
    let mut conf = NixConf::default();
    conf.load(&conf_dir.join("nix.conf"))?;
    let user_files: Vec<PathBuf> = match std::env::var_os("NIX_USER_CONF_FILES") {
        Some(files) => std::env::split_paths(&files)
            .filter(|p| !p.as_os_str().is_empty())
            .collect(),
        None => {
            let home = env("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config")));
            let dirs = env("XDG_CONFIG_DIRS").unwrap_or_else(|| "/etc/xdg".into());
            home.into_iter()
                .chain(std::env::split_paths(&dirs).filter(|p| !p.as_os_str().is_empty()))
                .map(|d| d.join("nix/nix.conf"))
                .collect()
        }
    };
    for f in user_files.iter().rev() {
        conf.load(f)?;
    }
    if let Some(text) = env("NIX_CONFIG") {
        conf.apply_text(&text, "NIX_CONFIG")?;
    }
    for o in options {
        conf.set(&o.name, &o.value, &o.origin)?;
    }
    for name in conf.unknown() {
        shell.note(format_args!("warning: unknown setting '{name}'"));
    }
    Ok(conf)
}

impl Settings {
    /// `store_url` is `--store`; `options` are `--option NAME VALUE` and the like.
    pub fn load(
        store_url: Option<&str>,
        options: &[CliSetting],
        shell: &mut Shell,
    ) -> Result<Self> {
        Self::with_conf(store_url, load_conf(options, shell)?)
    }

    /// The settings of `conf` (from [`load_conf`]) and the environment.
    pub fn with_conf(store_url: Option<&str>, conf: NixConf) -> Result<Self> {
        let store_dir = match env("NIX_STORE_DIR") {
            Some(d) => StoreDir::new(&d).with_context(|| format!("in NIX_STORE_DIR='{d}'"))?,
            None => StoreDir::default(),
        };
        let mut base = LocalStoreConfig {
            real_store_dir: PathBuf::from(store_dir.as_str()),
            store_dir: store_dir.clone(),
            ..LocalStoreConfig::default()
        };
        if let Some(s) = env("NIX_STATE_DIR") {
            base.state_dir = PathBuf::from(s);
        }
        if let Some(l) = env("NIX_LOG_DIR") {
            base.log_dir = PathBuf::from(l);
        }
        let url = store_url
            .map(str::to_owned)
            .or_else(|| env("NIX_REMOTE"))
            .or_else(|| {
                conf.get("store")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            });
        let is_cache = |u: &str| {
            ["file://", "http://", "https://"]
                .iter()
                .any(|s| u.starts_with(s))
        };
        // No store named: Nix's automatic choice. A state directory this user cannot write,
        // with a daemon's socket there, means the daemon (a multi-user installation).
        let url = url.or_else(|| {
            let writable =
                rustix::fs::access(&base.state_dir, rustix::fs::Access::WRITE_OK).is_ok();
            let socket = env("NIX_DAEMON_SOCKET_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| base.state_dir.join("daemon-socket/socket"));
            (!writable && socket.exists()).then(|| "daemon".to_owned())
        });
        let cache_url = url.clone().filter(|u| is_cache(u));
        let daemon_url = url.clone().filter(|u| is_daemon(u));
        let store = match url.as_deref() {
            Some(u) if is_cache(u) || is_daemon(u) => base,
            Some(u) => LocalStoreConfig::from_url(u, &base)?,
            None if needs_chroot(&base) => {
                // As Nix does for users who cannot write to /nix: a store under their home.
                let data = env("XDG_DATA_HOME")
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                    .context("cannot write to /nix and HOME is not set: pass --store DIR")?;
                LocalStoreConfig::with_root(&data.join("ferrix/root"), store_dir.clone())
            }
            None => base,
        };
        Ok(Self {
            store_dir: store.store_dir.clone(),
            store,
            conf,
            cache_url,
            daemon_url,
        })
    }

    /// The daemon `--store` (or `NIX_REMOTE`) names, if it names one: its URL and socket.
    pub fn daemon(&self) -> Option<(&str, PathBuf)> {
        let url = self.daemon_url.as_deref()?;
        Some((url, self.daemon_socket(url)))
    }

    /// The socket a daemon URL names: `unix://PATH`'s path; for `daemon`,
    /// `NIX_DAEMON_SOCKET_PATH` or the state directory's `daemon-socket/socket`, as in Nix
    /// (where the daemon itself listens too).
    pub fn daemon_socket(&self, url: &str) -> PathBuf {
        match url.strip_prefix("unix://") {
            Some(rest) if !rest.is_empty() => {
                PathBuf::from(rest.split_once('?').map_or(rest, |(p, _)| p))
            }
            _ => env("NIX_DAEMON_SOCKET_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| self.store.state_dir.join("daemon-socket/socket")),
        }
    }

    /// The binary cache `--store` names, if it names one.
    pub fn cache_url(&self) -> Option<&str> {
        self.cache_url.as_deref()
    }

    /// Open the configured local store.
    pub fn open_store(&self) -> Result<LocalStore> {
        self.open_store_with(self.store.clone())
    }

    /// Open the configured local store for an evaluation, which writes its derivations in
    /// batches of a few hundred and reads little back: a small database cache does.
    pub fn open_eval_store(&self) -> Result<LocalStore> {
        self.open_store_with(LocalStoreConfig {
            db_cache_kib: Some(EVAL_DB_CACHE_KIB),
            ..self.store.clone()
        })
    }

    fn open_store_with(&self, config: LocalStoreConfig) -> Result<LocalStore> {
        if let Some(url) = &self.daemon_url {
            anyhow::bail!(
                "the store '{url}' is a daemon: this command works on a local store only so far \
                 (through a daemon: nix-store's realise, query, add, export, import, read-log, verify, \
                 optimise, serve, dump-db and collection operations, nix-build, nix-instantiate, \
                 nix-collect-garbage, nix-copy-closure, and ferrix build, eval, instantiate, repl, \
                 store, copy, path-info, log, serve-cache, machines and derivation add)"
            );
        }
        if let Some(url) = &self.cache_url {
            anyhow::bail!(
                "the store '{url}' is a binary cache: this command needs a local store \
                 (a cache is read by 'ferrix path-info --store' and 'ferrix copy --from')"
            );
        }
        let at = config.real_store_dir.display().to_string();
        LocalStore::open(config).with_context(|| format!("opening the store at '{at}'"))
    }
}

/// Whether `url` names a daemon's socket (`daemon`, `unix://…`).
pub fn is_daemon(url: &str) -> bool {
    url == "daemon" || url.starts_with("unix://")
}

/// A non-root user with the default locations and no writable `/nix`.
fn needs_chroot(base: &LocalStoreConfig) -> bool {
    let defaults = LocalStoreConfig::default();
    if base != &defaults || rustix::process::geteuid().is_root() {
        return false;
    }
    let nix = std::path::Path::new("/nix");
    let writable =
        |p: &std::path::Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    !(writable(&defaults.state_dir)
        || (!nix.exists() && writable(std::path::Path::new("/")))
        || (nix.exists() && !defaults.state_dir.exists() && writable(nix)))
}

/// The database cache of an evaluation's store, in KiB. Instantiating 2000 derivations
/// filled 1.1 MiB of SQLite's default 2 MiB; with 256 KiB its peak memory was 1 MiB lower
/// and its time unchanged.
const EVAL_DB_CACHE_KIB: u32 = 256;

/// The key Nix trusts when `trusted-public-keys` is not set.
const NIX_DEFAULT_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

/// How paths are substituted, typed from the settings of the same names.
#[derive(Debug, Clone)]
pub struct SubstitutionSettings {
    /// `substituters` (with `extra-substituters`): cache.nixos.org by default, but only for
    /// a store at `/nix/store`, as in Nix.
    pub urls: Vec<String>,
    /// `substitute` (false with `--offline`): whether builds look for substitutes at all.
    pub enabled: bool,
    /// `trusted-public-keys` and `require-sigs`.
    pub trust: ferrix_store::binary_cache::Trust,
    pub http: ferrix_store::binary_cache::HttpSettings,
    /// `fallback`: build when a substitute that a cache claimed cannot be fetched.
    pub fallback: bool,
    /// `max-substitution-jobs`: paths fetched at once.
    pub max_jobs: usize,
    /// `always-allow-substitutes`: substitute even derivations with `allowSubstitutes = false`.
    pub always_allow: bool,
    /// The narinfo disk cache, Nix's own: `$XDG_CACHE_HOME/nix/binary-cache-v6.sqlite`
    /// (`~/.cache/…`); none without a home.
    pub disk_cache: Option<PathBuf>,
    /// `narinfo-cache-positive-ttl`, `narinfo-cache-negative-ttl` and
    /// `narinfo-cache-meta-ttl`.
    pub ttl: ferrix_store::binary_cache::DiskCacheTtl,
}

impl SubstitutionSettings {
    /// The one HTTP client of a run (made on a thread of its own: it must not start inside
    /// an async runtime).
    /// The narinfo disk cache, opened; a warning (and none) when it cannot be, since it
    /// only saves queries.
    pub fn disk_cache(
        &self,
        shell: &mut crate::shell::Shell,
    ) -> Option<std::sync::Arc<ferrix_store::binary_cache::NarInfoDiskCache>> {
        let file = self.disk_cache.as_ref()?;
        match ferrix_store::binary_cache::NarInfoDiskCache::open(file, self.ttl) {
            Ok(d) => Some(std::sync::Arc::new(d)),
            Err(e) => {
                shell.warn(format!("{:#}", anyhow::Error::from(e)));
                None
            }
        }
    }

    /// The HTTP client of a run, for `urls` alone (see `HttpClient::for_urls`).
    pub fn http_client(&self, urls: &[&str]) -> Result<ferrix_store::binary_cache::HttpClient> {
        ferrix_store::binary_cache::HttpClient::for_urls(&self.http, urls)
            .context("setting up the HTTP client for binary caches")
    }
}

impl Settings {
    /// `$XDG_CACHE_HOME`, or `~/.cache`.
    pub fn cache_home(&self) -> Option<PathBuf> {
        env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The signing keys of `secret-key-files`, then those of `extra` files.
    pub fn secret_keys(
        &self,
        extra: &[String],
    ) -> Result<Vec<ferrix_format::signature::SecretKey>> {
        self.conf
            .get("secret-key-files")
            .unwrap_or("")
            .split_whitespace()
            .chain(extra.iter().map(String::as_str))
            .map(|f| {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the secret key file '{f}'"))?;
                text.trim()
                    .parse()
                    .with_context(|| format!("'{f}' does not hold a secret key"))
            })
            .collect()
    }

    /// The substitution settings.
    pub fn substitution(&self) -> Result<SubstitutionSettings> {
        let c = &self.conf;
        let urls = match c.get("substituters") {
            Some(_) => c.list("substituters").to_vec(),
            None if self.store_dir.as_str() == "/nix/store" => {
                vec!["https://cache.nixos.org/".to_owned()]
            }
            None => Vec::new(),
        };
        let keys = match c.get("trusted-public-keys") {
            Some(_) => c.list("trusted-public-keys").to_vec(),
            None => vec![NIX_DEFAULT_KEY.to_owned()],
        };
        let keys = keys
            .iter()
            .map(|k| {
                k.parse()
                    .with_context(|| format!("'{k}' in 'trusted-public-keys' is not a public key"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut http = ferrix_store::binary_cache::HttpSettings::default();
        if let Some(n) = c.uint("http-connections") {
            // 0 means "no limit" in Nix.
            http.connections = if n == 0 { 64 } else { n as usize };
        }
        if let Some(s) = c.uint("connect-timeout").filter(|s| *s > 0) {
            http.connect_timeout = Some(std::time::Duration::from_secs(s));
        }
        if let Some(s) = c.uint("stalled-download-timeout") {
            http.stalled_timeout = std::time::Duration::from_secs(s.max(1));
        }
        if let Some(n) = c.uint("download-attempts") {
            http.attempts = n.max(1) as u32;
        }
        // As Nix finds its certificates: `ssl-cert-file`, `$NIX_SSL_CERT_FILE`,
        // `$SSL_CERT_FILE`, then the system bundle if there is one.
        let ca = c
            .get("ssl-cert-file")
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .or_else(|| env("NIX_SSL_CERT_FILE").map(PathBuf::from))
            .or_else(|| env("SSL_CERT_FILE").map(PathBuf::from))
            .or_else(|| {
                let f = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
                f.is_file().then_some(f)
            });
        if let Some(f) = ca {
            http.roots = ferrix_store::binary_cache::TlsRoots::File(f);
        }
        Ok(SubstitutionSettings {
            urls,
            enabled: c.bool("substitute", true)?,
            trust: ferrix_store::binary_cache::Trust {
                keys,
                require_sigs: c.bool("require-sigs", true)?,
            },
            http,
            fallback: c.bool("fallback", false)?,
            max_jobs: c.uint("max-substitution-jobs").unwrap_or(16).max(1) as usize,
            always_allow: c.bool("always-allow-substitutes", false)?,
            disk_cache: self
                .cache_home()
                .map(|d| d.join("nix/binary-cache-v6.sqlite")),
            ttl: {
                let d = ferrix_store::binary_cache::DiskCacheTtl::default();
                let secs = |k: &str, dflt: std::time::Duration| {
                    c.uint(k)
                        .map(std::time::Duration::from_secs)
                        .unwrap_or(dflt)
                };
                ferrix_store::binary_cache::DiskCacheTtl {
                    positive: secs("narinfo-cache-positive-ttl", d.positive),
                    negative: secs("narinfo-cache-negative-ttl", d.negative),
                    meta: secs("narinfo-cache-meta-ttl", d.meta),
                }
            },
        })
    }
}
