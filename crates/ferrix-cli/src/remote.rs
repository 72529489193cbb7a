//! Reaching a machine from the command line (`nix-copy-closure`, `ferrix copy`, `ferrix
//! machines`): one session over ssh (the serve protocol, or the worker protocol for
//! `ssh-ng://`), with `NIX_SSHOPTS`.

use std::time::Instant;

use anyhow::{Context, Result};
use ferrix_format::StoreDir;
use ferrix_store::serve_client::ServeClient;
use ferrix_store::ssh::{Ssh, SshConfig, SshTarget};
use ferrix_store::worker_client::WorkerClient;

/// A session (`ServeClient` over `ssh://`, `WorkerClient` over `ssh-ng://`) and what
/// keeps it alive (the ssh master and its socket directory).
pub struct Session<C = ServeClient> {
    pub client: C,
    _ssh: Ssh,
    _dir: tempfile::TempDir,
}

/// What a session's client needs kept alive: the ssh connection and its socket directory.
pub struct SessionGuard {
    _ssh: Ssh,
    _dir: tempfile::TempDir,
}

impl<C> Session<C> {
    /// The client, and what must outlive it.
    pub fn split(self) -> (C, SessionGuard) {
        (
            self.client,
            SessionGuard {
                _ssh: self._ssh,
                _dir: self._dir,
            },
        )
    }
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
pub fn connect(uri: &str, store_dir: &StoreDir, compress: bool) -> Result<Session> {
    let mut target = SshTarget::parse(uri)?;
    target.compress |= compress;
    if target.ng {
        anyhow::bail!("'{uri}' is an ssh-ng:// store; this command speaks to ssh:// only");
    }
    connect_target(target, store_dir)
}

/// Open a session with an `ssh-ng://` store (its `nix-daemon --stdio`).
pub fn connect_ng(uri: &str, store_dir: &StoreDir) -> Result<Session<WorkerClient>> {
    let target = SshTarget::parse(uri)?;
    if !target.ng {
        anyhow::bail!("'{uri}' is not an ssh-ng:// store");
    }
    let (mut ssh, dir) = ssh_to(target)?;
    let client = WorkerClient::start(&mut ssh, store_dir.clone(), 0)?;
    Ok(Session {
        client,
        _ssh: ssh,
        _dir: dir,
    })
}

/// The ssh connection (not yet made: the first session makes it), with its socket
/// directory.
fn ssh_to(target: SshTarget) -> Result<(Ssh, tempfile::TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("ferrix-ssh-")
        .tempdir()
        .context("making a directory for the ssh socket")?;
    let config = SshConfig {
        ssh_opts: ssh_opts(),
        runtime_dir: dir.path().to_owned(),
        keepalive: 5,
    };
    Ok((Ssh::new(target, config, 0)?, dir))
}

fn connect_target(target: SshTarget, store_dir: &StoreDir) -> Result<Session> {
    let (mut ssh, dir) = ssh_to(target)?;
    let client = ServeClient::start(&mut ssh, store_dir.clone())?;
    Ok(Session {
        client,
        _ssh: ssh,
        _dir: dir,
    })
}

/// How a machine answered a greeting: the time it took, or why it did not.
pub fn probe(
    m: &ferrix_build::remote::Machine,
    store_dir: &ferrix_format::StoreDir,
) -> Result<std::time::Duration> {
    let mut t = SshTarget::parse(&m.uri)?;
    t.ssh_key = t.ssh_key.or_else(|| m.ssh_key.clone());
    t.host_key = t.host_key.or_else(|| m.host_key.clone());
    let start = Instant::now();
    if t.ng {
        let (mut ssh, _dir) = ssh_to(t)?;
        drop(WorkerClient::start(&mut ssh, store_dir.clone(), 0)?);
    } else {
        drop(connect_target(t, store_dir)?);
    }
    Ok(start.elapsed())
}
