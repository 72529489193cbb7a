//! `ferrix copy --to|--from ssh://HOST|ssh-ng://HOST PATHS`: copy closures between this
//! store and a machine, sending or fetching only what the other side lacks; `ferrix copy
//! --to file:///DIR?compression=…` writes a binary cache.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;

use crate::ops;
use crate::settings::Settings;
use crate::shell::Shell;

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The store to copy to.
    #[arg(long)]
    to: Option<String>,
    /// The store to copy from.
    #[arg(long)]
    from: Option<String>,
    /// Also copy the outputs of derivations.
    #[arg(long)]
    include_outputs: bool,
    /// Let the destination fetch what it can from its own substituters first.
    #[arg(long, short = 's')]
    substitute_on_destination: bool,
    /// Do not require trusted signatures: on what an `ssh-ng://` destination takes, and on
    /// what comes from a binary cache (as with `nix copy`).
    #[arg(long)]
    no_check_sigs: bool,
    /// Store paths whose closures are copied.
    #[arg(required = true)]
    paths: Vec<String>,
}

/// Whether `uri` names a binary cache to read from.
fn is_cache(uri: &str) -> bool {
    ["file://", "http://", "https://"]
        .iter()
        .any(|s| uri.starts_with(s))
}

pub fn run(a: Args, settings: &Settings, shell: &mut Shell) -> Result<()> {
    let store = settings.open_store()?;
    let ng = |uri: &str| uri.starts_with("ssh-ng://");
    match (a.to, a.from) {
        (Some(to), None) if to.starts_with("file://") => {
            let paths = ops::resolve_all(&store, &a.paths)?;
            let cache = file_cache(&to, settings, shell)?;
            let sent = ferrix_store::binary_cache::copy_to_cache(&store, &cache, &paths)
                .with_context(|| format!("copying to '{to}'"))?;
            shell.note(format!("copied {} paths to '{to}'", sent.len()));
        }
        (None, Some(from)) if is_cache(&from) => {
            let paths: BTreeSet<_> = a
                .paths
                .iter()
                .map(|p| store.parse_path(p))
                .collect::<Result<_, _>>()?;
            let cache = cache_source(&from, settings, a.no_check_sigs, shell)?;
            let got = ferrix_store::binary_cache::copy_from_cache(&store, &cache, &paths)?;
            shell.note(format!("copied {} paths from '{from}'", got.len()));
        }
        (Some(to), None) if ng(&to) => {
            let paths = ops::resolve_all(&store, &a.paths)?;
            if a.include_outputs {
                bail!("'--include-outputs' is not supported with ssh-ng:// stores");
            }
            let mut s = crate::remote::connect_ng(&to, &store)?;
            let sent = ferrix_store::worker_client::copy_to(
                &store,
                &mut s.client,
                &paths,
                a.substitute_on_destination,
                !a.no_check_sigs,
            )?;
            shell.note(format!("copied {} paths to '{to}'", sent.len()));
        }
        (None, Some(from)) if ng(&from) => {
            let paths: BTreeSet<_> = a
                .paths
                .iter()
                .map(|p| store.parse_path(p))
                .collect::<Result<_, _>>()?;
            if a.include_outputs {
                bail!("'--include-outputs' is not supported with ssh-ng:// stores");
            }
            let mut s = crate::remote::connect_ng(&from, &store)?;
            let got = ferrix_store::worker_client::copy_from(&store, &mut s.client, &paths)?;
            shell.note(format!("copied {} paths from '{from}'", got.len()));
        }
        (Some(to), None) => {
            let paths = ops::resolve_all(&store, &a.paths)?;
            let mut s = crate::remote::connect(&to, &store, false)?;
            let sent = ferrix_store::serve_client::copy_to(
                &store,
                &mut s.client,
                &paths,
                a.include_outputs,
                a.substitute_on_destination,
            )?;
            shell.note(format!("copied {} paths to '{to}'", sent.len()));
        }
        (None, Some(from)) => {
            let paths: BTreeSet<_> = a
                .paths
                .iter()
                .map(|p| store.parse_path(p))
                .collect::<Result<_, _>>()?;
            let mut s = crate::remote::connect(&from, &store, false)?;
            let got = ferrix_store::serve_client::copy_from(
                &store,
                &mut s.client,
                &paths,
                a.include_outputs,
            )?;
            shell.note(format!("copied {} paths from '{from}'", got.len()));
        }
        _ => bail!("'ferrix copy' needs exactly one of '--to' and '--from'"),
    }
    Ok(())
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
