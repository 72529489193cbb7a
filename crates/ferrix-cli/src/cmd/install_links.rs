//! `ferrix install-links DIR`: the classic command names as symlinks to this binary.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::shell::Shell;
use crate::PERSONALITIES;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to create the links in (created if missing).
    dir: PathBuf,
}

pub fn run(a: Args, shell: &mut Shell) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program's own path")?;
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("creating directory '{}'", a.dir.display()))?;
    for name in PERSONALITIES {
        let link = a.dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => std::fs::remove_file(&link)
                .with_context(|| format!("replacing '{}'", link.display()))?,
            Ok(_) => bail!(
                "'{}' exists and is not a symlink; not replacing it",
                link.display()
            ),
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&exe, &link)
            .with_context(|| format!("creating link '{}'", link.display()))?;
        shell.println(link.display())?;
    }
    Ok(())
}
