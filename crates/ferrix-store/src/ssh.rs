//! Reaching a machine over ssh as Nix does: the system `ssh` client with the user's config,
//! `NIX_SSHOPTS`, an identity and a known_hosts entry from the machines file; one master
//! connection of our own per machine (never the user's ControlMaster), with keepalives so a
//! dead peer is noticed in seconds. `localhost` runs the command here without ssh, as Nix's
//! test suite expects.

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use thiserror::Error;

/// Where and how to reach a machine, from an `ssh://` or `ssh-ng://` URI and the machine's
/// columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The URI as written (for messages).
    pub uri: String,
    /// `[user@]host`.
    pub host: String,
    /// `ssh-ng://`: the worker protocol (`nix-daemon --stdio`) rather than the serve one.
    pub ng: bool,
    /// `?remote-program=`: what runs there (`nix-store`, or `nix-daemon` for ssh-ng).
    pub remote_program: Option<String>,
    /// `?remote-store=`: `--store` for the remote program.
    pub remote_store: Option<String>,
    /// `?ssh-key=` or the machine's identity column.
    pub ssh_key: Option<PathBuf>,
    /// The host key (`type base64`), from the machine's last column.
    pub host_key: Option<String>,
    /// `?compress=true`.
    pub compress: bool,
}

#[derive(Debug, Error)]
pub enum SshError {
    #[error("'{uri}' is not an ssh:// or ssh-ng:// store URI")]
    NotSsh { uri: String },
    #[error("'{uri}' names no host")]
    NoHost { uri: String },
    #[error("store URI '{uri}' has an unknown parameter '{param}'")]
    UnknownParam { uri: String, param: String },
    #[error("cannot start '{program}' to reach '{uri}'")]
    Spawn {
        uri: String,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the known host key of '{uri}' to '{}'", .file.display())]
    HostKey {
        uri: String,
        file: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Decode the few `%XX` escapes URIs carry in parameter values.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SshTarget {
    /// Parse `ssh://[user@]host[?params]` or `ssh-ng://…`.
    pub fn parse(uri: &str) -> Result<Self, SshError> {
        let (ng, rest) = if let Some(r) = uri.strip_prefix("ssh-ng://") {
            (true, r)
        } else if let Some(r) = uri.strip_prefix("ssh://") {
            (false, r)
        } else {
            return Err(SshError::NotSsh { uri: uri.into() });
        };
        let (host, query) = rest.split_once('?').unwrap_or((rest, ""));
        let host = host.trim_end_matches('/');
        if host.is_empty() || host.ends_with('@') {
            return Err(SshError::NoHost { uri: uri.into() });
        }
        let mut t = SshTarget {
            uri: uri.into(),
            host: host.into(),
            ng,
            remote_program: None,
            remote_store: None,
            ssh_key: None,
            host_key: None,
            compress: false,
        };
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = unescape(v);
            match k {
                "remote-program" => t.remote_program = Some(v),
                "remote-store" => t.remote_store = Some(v),
                "ssh-key" => t.ssh_key = Some(PathBuf::from(v)),
                "base64-ssh-public-host-key" => {
                    use base64::Engine;
                    t.host_key = base64::engine::general_purpose::STANDARD
                        .decode(&v)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok());
                }
                "compress" => t.compress = v == "true",
                // Nix's settings of a store that make no difference here.
                "max-connections"
                | "log-fd"
                | "system-features"
                | "trusted"
                | "priority"
                | "path-info-cache-size"
                | "want-mass-query" => {}
                _ => {
                    return Err(SshError::UnknownParam {
                        uri: uri.into(),
                        param: k.into(),
                    })
                }
            }
        }
        Ok(t)
    }

    /// The host without the user.
    pub fn host_name(&self) -> &str {
        self.host.rsplit('@').next().unwrap_or(&self.host)
    }

    /// Nix runs `localhost` targets here, without ssh.
    pub fn is_local(&self) -> bool {
        self.host_name() == "localhost"
    }

    /// The remote command line: `nix-store --serve --write` or `nix-daemon --stdio`, with
    /// `--store` when a remote store is named.
    pub fn remote_command(&self) -> String {
        let mut cmd = match (&self.remote_program, self.ng) {
            (Some(p), false) => format!("{p} --serve --write"),
            (Some(p), true) => format!("{p} --stdio"),
            (None, false) => "nix-store --serve --write".into(),
            (None, true) => "nix-daemon --stdio".into(),
        };
        if let Some(s) = &self.remote_store {
            cmd += &format!(" --store {}", shell_quote(s));
        }
        cmd
    }
}

/// Quote for a POSIX shell (the remote command is run by the remote user's shell).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.,:=+@%".contains(&b))
    {
        return s.into();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// How ssh is run: options from the CLI (`NIX_SSHOPTS`), and where per-machine files go.
#[derive(Debug, Clone, Default)]
pub struct SshConfig {
    /// Extra options for every ssh command (`NIX_SSHOPTS`, split on whitespace).
    pub ssh_opts: Vec<String>,
    /// A private directory for master sockets and known_hosts files.
    pub runtime_dir: PathBuf,
    /// Seconds between keepalives; three missed ones end the connection.
    pub keepalive: u32,
}

/// One machine's ssh: the master connection and the command for each session.
#[derive(Debug)]
pub struct Ssh {
    target: SshTarget,
    config: SshConfig,
    socket: PathBuf,
    known_hosts: Option<PathBuf>,
    master: Option<Child>,
}

impl Ssh {
    pub fn new(target: SshTarget, config: SshConfig, id: usize) -> Result<Self, SshError> {
        let socket = config.runtime_dir.join(format!("ssh-{id}.sock"));
        let known_hosts = match &target.host_key {
            Some(key) if !target.is_local() => {
                let file = config.runtime_dir.join(format!("known-hosts-{id}"));
                std::fs::write(&file, format!("{} {key}\n", target.host_name())).map_err(
                    |source| SshError::HostKey {
                        uri: target.uri.clone(),
                        file: file.clone(),
                        source,
                    },
                )?;
                Some(file)
            }
            _ => None,
        };
        Ok(Self {
            target,
            config,
            socket,
            known_hosts,
            master: None,
        })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    fn base_args(&self, cmd: &mut Command) {
        cmd.arg(&self.target.host).args(["-x", "-a"]);
        cmd.args(&self.config.ssh_opts);
        if let Some(k) = &self.target.ssh_key {
            cmd.arg("-i").arg(k);
        }
        if let Some(f) = &self.known_hosts {
            // The key is looked up under the URI's host name, whatever port or HostName the
            // user's ssh config gives it.
            cmd.arg(format!("-oUserKnownHostsFile={}", f.display()))
                .arg(format!("-oHostKeyAlias={}", self.target.host_name()));
        }
        if self.target.compress {
            cmd.arg("-C");
        }
        let ka = self.config.keepalive.max(1);
        cmd.arg(format!("-oServerAliveInterval={ka}"))
            .arg("-oServerAliveCountMax=3")
            .arg("-oBatchMode=yes");
    }

    /// Start the master connection once; sessions go through its socket.
    fn ensure_master(&mut self) -> Result<(), SshError> {
        if self.target.is_local() {
            return Ok(());
        }
        if let Some(m) = &mut self.master {
            if m.try_wait().ok().flatten().is_none() && self.socket.exists() {
                return Ok(());
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        let mut cmd = Command::new("ssh");
        self.base_args(&mut cmd);
        cmd.args(["-M", "-N", "-S"]).arg(&self.socket);
        cmd.arg("-oControlPersist=no").arg("-oControlMaster=yes");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|source| SshError::Spawn {
            uri: self.target.uri.clone(),
            program: "ssh".into(),
            source,
        })?;
        self.master = Some(child);
        // Wait (briefly) for the socket; a session started before it would open its own.
        for _ in 0..200 {
            if self.socket.exists() {
                break;
            }
            if let Some(m) = &mut self.master {
                if m.try_wait().ok().flatten().is_some() {
                    // The master failed (host down, auth): sessions say why on their own.
                    self.master = None;
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    }

    /// Start the remote program as a new session, with piped stdin, stdout and stderr.
    pub fn spawn_session(&mut self) -> Result<Child, SshError> {
        self.ensure_master()?;
        let remote = self.target.remote_command();
        let mut cmd = if self.target.is_local() {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(format!("exec {remote}"));
            c
        } else {
            let mut c = Command::new("ssh");
            self.base_args(&mut c);
            if self.master.is_some() && self.socket.exists() {
                c.arg("-S").arg(&self.socket);
            }
            c.arg(remote);
            c
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group: a Ctrl-C at the terminal reaches us, and we end it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn().map_err(|source| SshError::Spawn {
            uri: self.target.uri.clone(),
            program: if self.target.is_local() {
                "/bin/sh"
            } else {
                "ssh"
            }
            .into(),
            source,
        })
    }
}

impl Drop for Ssh {
    fn drop(&mut self) {
        if let Some(mut m) = self.master.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let t = SshTarget::parse(
            "ssh://nix@host?remote-program=/x/nix-store&remote-store=/tmp/a%20b&ssh-key=/k",
        )
        .unwrap();
        assert_eq!(t.host, "nix@host");
        assert_eq!(t.host_name(), "host");
        assert!(!t.ng && !t.is_local());
        assert_eq!(
            t.remote_command(),
            "/x/nix-store --serve --write --store '/tmp/a b'"
        );
        assert_eq!(t.ssh_key, Some(PathBuf::from("/k")));
        let t = SshTarget::parse("ssh-ng://localhost").unwrap();
        assert!(t.ng && t.is_local());
        assert_eq!(t.remote_command(), "nix-daemon --stdio");
        assert!(matches!(
            SshTarget::parse("http://x"),
            Err(SshError::NotSsh { .. })
        ));
        assert!(matches!(
            SshTarget::parse("ssh://"),
            Err(SshError::NoHost { .. })
        ));
        assert!(matches!(
            SshTarget::parse("ssh://h?bogus=1"),
            Err(SshError::UnknownParam { .. })
        ));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/a/b"), "/a/b");
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
        assert_eq!(shell_quote(""), "''");
    }
}
