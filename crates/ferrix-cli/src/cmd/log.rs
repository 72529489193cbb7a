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
    let path = a
        .installable
        .rsplit_once(['^', '!'])
        .filter(|(p, _)| p.ends_with(".drv"))
        .map_or(a.installable.as_str(), |(p, _)| p);
    if let Some((url, _)) = settings.daemon() {
        // The deriver from the daemon; the log where it keeps logs, readable to all.
        let sd = &settings.store_dir;
        let p = crate::ops::resolve_in(sd, std::path::Path::new(sd.as_str()), path)?;
        let deriver = if p.is_derivation() {
            None
        } else {
            crate::stores::connect_daemon(url, settings)?
                .query_path_info(&p)?
                .and_then(|i| i.deriver)
        };
        let log = crate::build::log_of(sd, &settings.store.log_dir, &p, deriver)?;
        shell.out().write_all(&log)?;
        return Ok(());
    }
    let store = settings.open_store()?;
    let p = crate::ops::resolve(&store, path)?;
    shell
        .out()
        .write_all(&crate::build::read_log(&store, &p)?)?;
    Ok(())
}
