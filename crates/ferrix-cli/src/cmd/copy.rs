//! `ferrix copy --to|--from ssh://HOST|ssh-ng://HOST PATHS`: copy closures between this
//! store and a machine, sending or fetching only what the other side lacks.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
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
    /// Do not require signatures the destination trusts (an `ssh-ng://` store checks them
    /// otherwise, as with `nix copy`).
    #[arg(long)]
    no_check_sigs: bool,
    /// Store paths whose closures are copied.
    #[arg(required = true)]
    paths: Vec<String>,
}

pub fn run(a: Args, settings: &Settings, shell: &mut Shell) -> Result<()> {
    let store = settings.open_store()?;
    let ng = |uri: &str| uri.starts_with("ssh-ng://");
    match (a.to, a.from) {
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
