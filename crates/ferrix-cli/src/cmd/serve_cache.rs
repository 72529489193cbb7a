//! `ferrix serve-cache --listen ADDR`: this store as an HTTP binary cache that Nix and
//! Ferrix substitute from. Narinfos come from the database (signed with the configured
//! keys as they are served), NARs are dumped from the store as they are sent.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use ferrix_daemon::http_cache::{CacheBackend, Nar};
use ferrix_format::signature::SecretKey;
use ferrix_format::{Encoding, NarInfo, StorePath};
use ferrix_store::LocalStore;

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
}

struct StoreCache {
    store: Arc<LocalStore>,
    keys: Vec<SecretKey>,
    priority: u64,
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
        let sd = self.store.store_dir();
        let mut ni = NarInfo {
            store_path: p.clone(),
            url: format!(
                "nar/{}-{}.nar",
                p.hash_part(),
                info.nar_hash.encode(Encoding::Nix32)
            ),
            compression: "none".to_owned(),
            file_hash: Some(info.nar_hash),
            file_size: Some(info.nar_size),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            system: None,
            sigs: info.sigs.iter().filter_map(|s| s.parse().ok()).collect(),
            ca: info.ca,
        };
        for k in &self.keys {
            ni.sign(sd, k);
        }
        Some(ni.to_text(sd))
    }

    fn nar(&self, file: &str) -> Option<Nar> {
        let stem = file.strip_suffix(".nar")?;
        let (hash_part, nar_hash) = stem.split_once('-')?;
        let p = self.path(hash_part)?;
        let info = self.store.query_path_info(&p).ok()??;
        // Only the NAR the narinfo named: a path changed since is not served as it.
        if info.nar_hash.encode(Encoding::Nix32) != nar_hash {
            return None;
        }
        let store = self.store.clone();
        Some(Nar {
            len: info.nar_size,
            write: Box::new(move |w| store.nar_from_path(&p, w).map_err(std::io::Error::other)),
        })
    }
}

pub fn run(a: Args, settings: &Settings, shell: &mut Shell) -> Result<()> {
    let store = Arc::new(settings.open_store()?);
    let keys = settings.secret_keys(&a.secret_key_file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let backend = Arc::new(StoreCache {
        store,
        keys,
        priority: a.priority,
    });
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&a.listen)
            .await
            .with_context(|| format!("listening on '{}'", a.listen))?;
        let addr = listener.local_addr()?;
        shell.note(format!(
            "serving the store as a binary cache on http://{addr}"
        ));
        shell.flush()?;
        ferrix_daemon::http_cache::serve(listener, backend)
            .await
            .context("serving the binary cache")
    })
}
