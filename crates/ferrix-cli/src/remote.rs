//! Reaching a machine from the command line (`nix-copy-closure`, `ferrix copy`, `ferrix
//! machines`): one serve session over ssh, with `NIX_SSHOPTS`.

use std::time::Instant;

use anyhow::{Context, Result};
use ferrix_store::serve_client::ServeClient;
use ferrix_store::ssh::{Ssh, SshConfig, SshTarget};
use ferrix_store::LocalStore;

/// A session and what keeps it alive (the ssh master and its socket directory).
pub struct Session {
    pub client: ServeClient,
    _ssh: Ssh,
    _dir: tempfile::TempDir,
}

/// `NIX_SSHOPTS`, split on whitespace as Nix splits it.
pub fn ssh_opts() -> Vec<String> {
    std::env::var("NIX_SSHOPTS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Open a session with `uri` (`ssh://…`), `key` and `host_key` from a machines line if any.
pub fn connect(uri: &str, store: &LocalStore, compress: bool) -> Result<Session> {
    let mut target = SshTarget::parse(uri)?;
    target.compress |= compress;
    if target.ng {
        anyhow::bail!("'{uri}': ssh-ng:// stores are not supported yet; use ssh://");
    }
    connect_target(target, store)
}

fn connect_target(target: SshTarget, store: &LocalStore) -> Result<Session> {
    let dir = tempfile::Builder::new()
        .prefix("ferrix-ssh-")
        .tempdir()
        .context("making a directory for the ssh socket")?;
    let config = SshConfig {
        ssh_opts: ssh_opts(),
        runtime_dir: dir.path().to_owned(),
        keepalive: 5,
    };
    let mut ssh = Ssh::new(target, config, 0)?;
    let client = ServeClient::start(&mut ssh, store.store_dir().clone())?;
    Ok(Session {
        client,
        _ssh: ssh,
        _dir: dir,
    })
}

/// How a machine answered a greeting: the time it took, or why it did not.
pub fn probe(m: &ferrix_build::remote::Machine, store: &LocalStore) -> Result<std::time::Duration> {
    let mut t = SshTarget::parse(&m.uri)?;
    t.ssh_key = t.ssh_key.or_else(|| m.ssh_key.clone());
    t.host_key = t.host_key.or_else(|| m.host_key.clone());
    let start = Instant::now();
    if t.ng {
        let dir = tempfile::Builder::new()
            .prefix("ferrix-ssh-")
            .tempdir()
            .context("making a directory for the ssh socket")?;
        let config = SshConfig {
            ssh_opts: ssh_opts(),
            runtime_dir: dir.path().to_owned(),
            keepalive: 5,
        };
        let mut ssh = Ssh::new(t, config, 0)?;
        drop(ferrix_store::worker_client::WorkerClient::start(
            &mut ssh,
            store.store_dir().clone(),
            0,
        )?);
    } else {
        drop(connect_target(t, store)?);
    }
    Ok(start.elapsed())
}
