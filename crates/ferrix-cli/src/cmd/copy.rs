//! `ferrix copy [--from STORE] [--to STORE] PATHS`: copy closures between any two stores —
//! the local one (the default at either end), another local root, a binary cache
//! (`file://`, `http(s)://`; written only to `file://`) or a machine (`ssh://`, `ssh-ng://`)
//! — sending only what the destination lacks.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use ferrix_store::{AddOptions, CopyOptions};

use crate::ops;
use crate::settings::Settings;
use crate::shell::Shell;
use crate::stores::{self, OpenOptions, Role};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The store to copy to (the local store if not given).
    #[arg(long)]
    to: Option<String>,
    /// The store to copy from (the local store if not given).
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

pub fn run(a: Args, settings: &Settings, shell: &mut Shell) -> Result<()> {
    if a.to.is_none() && a.from.is_none() {
        bail!("'ferrix copy' needs '--to', '--from' or both");
    }
    let opts = OpenOptions {
        no_check_sigs: a.no_check_sigs,
        compress: false,
    };
    let from = stores::open(a.from.as_deref(), Role::Source, settings, opts, shell)?;
    let to = stores::open(a.to.as_deref(), Role::Destination, settings, opts, shell)?;
    // Paths given at the local store may be links into it (`./result`).
    let paths: BTreeSet<_> = match &from.local {
        Some(local) => ops::resolve_all(local, &a.paths)?.into_iter().collect(),
        None => a
            .paths
            .iter()
            .map(|p| settings.store_dir().parse_path(p))
            .collect::<Result<_, _>>()?,
    };
    let copy = CopyOptions {
        include_outputs: a.include_outputs,
        substitute_on_destination: a.substitute_on_destination,
        add: AddOptions {
            check_sigs: !a.no_check_sigs,
            // As `nix copy`: a local destination takes only paths signed by a trusted key
            // (or content-addressed), unless told not to check.
            trust: Some(settings.substitution()?.trust),
        },
    };
    let (f, t) = (from.store.uri(), to.store.uri());
    let copied = ferrix_store::copy_paths(&*from.store, &*to.store, &paths, &copy)
        .with_context(|| format!("copying from '{f}' to '{t}'"))?;
    shell.note(format!("copied {} paths from '{f}' to '{t}'", copied.len()));
    Ok(())
}
