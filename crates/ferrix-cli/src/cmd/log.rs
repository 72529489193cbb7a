//! `ferrix log`: the build log of a derivation, or of the derivation that built a path.

use anyhow::Result;

use crate::settings::Settings;
use crate::shell::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A derivation or a store path built by one.
    installable: String,
}

pub fn run(a: Args, settings: &Settings, shell: &mut Shell) -> Result<()> {
    let store = settings.open_store()?;
    let path = a
        .installable
        .rsplit_once(['^', '!'])
        .filter(|(p, _)| p.ends_with(".drv"))
        .map_or(a.installable.as_str(), |(p, _)| p);
    let p = crate::ops::resolve(&store, path)?;
    shell
        .out()
        .write_all(&crate::build::read_log(&store, &p)?)?;
    Ok(())
}
