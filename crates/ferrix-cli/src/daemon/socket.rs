//! `nix-daemon` on its Unix socket: who may connect (`allowed-users`) and who is trusted
//! (`trusted-users`), decided from the credentials the kernel gives for the peer, and a
//! thread per connection, so that one slow or hostile client never holds up another.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferrix_daemon::worker::WorkerOptions;
use ferrix_store::LocalStore;

use crate::settings::Settings;

/// The user at the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub pid: i32,
    /// The user's name (the uid in decimal when the system knows no such user).
    pub user: String,
    /// The name of the peer's primary group, if the system knows it.
    pub group: Option<String>,
}

impl Peer {
    fn of(stream: &UnixStream) -> io::Result<Peer> {
        let cred = rustix::net::sockopt::socket_peercred(stream)?;
        let uid = cred.uid.as_raw();
        let gid = cred.gid.as_raw();
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name);
        Ok(Peer {
            uid,
            pid: cred.pid.as_raw_nonzero().get(),
            user,
            group,
        })
    }
}

/// What a connection may do, from the daemon's settings.
#[derive(Debug, Clone)]
pub struct Access {
    pub allowed_users: Vec<String>,
    pub trusted_users: Vec<String>,
    /// `build-users-group`: its members run builds and may never connect.
    pub build_users_group: Option<String>,
}

/// Why a peer is turned away.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("user '{user}' is not allowed to connect to the daemon (it is in no entry of 'allowed-users' or 'trusted-users')")]
    NotAllowed { user: String },
    #[error("user '{user}' is in the build users group '{group}', whose members may not connect to the daemon")]
    BuildUser { user: String, group: String },
}

impl Access {
    pub fn from_settings(settings: &Settings) -> Self {
        // Nix's defaults: everyone may connect, root is trusted.
        let list = |name: &str, default: &str| match settings.conf.get(name) {
            Some(_) => settings.conf.list(name).to_vec(),
            None => vec![default.to_owned()],
        };
        Access {
            allowed_users: list("allowed-users", "*"),
            trusted_users: list("trusted-users", "root"),
            build_users_group: settings
                .conf
                .get("build-users-group")
                .filter(|g| !g.is_empty())
                .map(str::to_owned),
        }
    }

    /// Whether `peer` may connect, and if so whether it is trusted. `members` gives the
    /// members of a group by name, for `@group` entries.
    pub fn decide(
        &self,
        peer: &Peer,
        members: &dyn Fn(&str) -> Vec<String>,
    ) -> Result<bool, Refused> {
        let trusted = matches(peer, &self.trusted_users, members);
        if let (Some(bug), Some(g)) = (&self.build_users_group, &peer.group) {
            if bug == g {
                return Err(Refused::BuildUser {
                    user: peer.user.clone(),
                    group: g.clone(),
                });
            }
        }
        if !trusted && !matches(peer, &self.allowed_users, members) {
            return Err(Refused::NotAllowed {
                user: peer.user.clone(),
            });
        }
        Ok(trusted)
    }
}

/// Whether `peer` is named by one of `entries`: `*`, its user name, or `@group` for its
/// primary group or a group it is a member of, as Nix matches them.
fn matches(peer: &Peer, entries: &[String], members: &dyn Fn(&str) -> Vec<String>) -> bool {
    entries.iter().any(|e| match e.strip_prefix('@') {
        Some(g) => peer.group.as_deref() == Some(g) || members(g).contains(&peer.user),
        None => e == "*" || *e == peer.user,
    })
}

/// The members of group `name` as the system lists them.
fn group_members(name: &str) -> Vec<String> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.mem)
        .unwrap_or_default()
}

/// Listen at `path`: a socket left by a daemon that died is replaced (one a daemon still
/// listens on is not), and everyone may connect to the socket itself (the daemon decides
/// who may stay), as with Nix.
fn bind(path: &Path) -> Result<UnixListener> {
    if UnixStream::connect(path).is_ok() {
        anyhow::bail!("a daemon already listens on '{}'", path.display());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating '{}'", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing '{}'", path.display())),
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("listening on the socket '{}'", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("making '{}' open to every user", path.display()))?;
    Ok(listener)
}

/// The listening socket systemd handed over (socket activation: descriptor 3, with
/// `LISTEN_PID` naming this process and `LISTEN_FDS` one socket), if it did.
pub fn inherited(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
) -> Result<Option<UnixListener>> {
    let (Some(pid), Some(n)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (the variables were inherited): not ours.
        return Ok(None);
    }
    if n.trim() != "1" {
        anyhow::bail!(
            "socket activation passed LISTEN_FDS={n}: the daemon takes exactly one socket"
        );
    }
    const FIRST: std::os::fd::RawFd = 3;
    // SAFETY: with LISTEN_PID naming this process, systemd passed descriptor 3 open and for
    // this process alone; nothing else here has taken it (it is read once, at start-up).
    #[allow(unsafe_code)]
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(FIRST) };
    let st = rustix::fs::fstat(&owned)
        .context("reading the socket handed over by socket activation (descriptor 3)")?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        anyhow::bail!("socket activation handed over descriptor 3, which is not a socket");
    }
    // Builders must not inherit it.
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
        .context("keeping the activated socket from the builders")?;
    Ok(Some(UnixListener::from(owned)))
}

/// Serve the store until the process is stopped, each connection on a thread of its own:
/// on `listener` if given (socket activation), else at `path`.
pub fn serve(
    settings: &Settings,
    store: Arc<LocalStore>,
    path: &Path,
    listener: Option<UnixListener>,
) -> Result<()> {
    let listener = match listener {
        Some(l) => l,
        None => bind(path)?,
    };
    stop_on_signal(listener_path(&listener, path))?;
    let access = Access::from_settings(settings);
    let sessions = Sessions::default();
    // One Engine for every client's builds.
    let engine = crate::machine::SharedEngine::start(settings, &store)?;
    std::thread::scope(|s| {
        for conn in listener.incoming() {
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    crate::shell::Shell::stdio().error(format!("accepting a connection: {e}"));
                    continue;
                }
            };
            let (store, access, sessions, engine) = (store.clone(), &access, &sessions, &engine);
            s.spawn(move || {
                let session = sessions.start(&store);
                // Every root this connection makes (asked for, or taken by the store while
                // adding its paths) is its own, and ends with it.
                let roots = ferrix_store::temproots::SessionRoots::new(
                    &store.config().state_dir,
                    session.id,
                );
                let served = store.in_session(&roots, || {
                    connection(settings, store.clone(), engine, access, stream)
                });
                if let Err(e) = served {
                    crate::shell::Shell::stdio().error(format!("{e:#}"));
                }
            });
        }
    });
    Ok(())
}

/// The socket file a listener is bound to (the activated one's, or `path`).
fn listener_path(listener: &UnixListener, path: &Path) -> PathBuf {
    listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

/// On SIGTERM or SIGINT: take no more clients (the socket goes), let the builds stop
/// (every Engine stops its own cleanly on the same signal: outputs are registered whole or
/// not at all, locks released), then exit. A second signal exits at once.
fn stop_on_signal(socket: PathBuf) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use std::io::Read;
    use std::sync::atomic::Ordering;
    // The signal writes a byte into the pipe; the thread sleeps on it until then.
    let (mut woken, wake) = std::io::pipe().context("making the daemon's signal pipe")?;
    for sig in [SIGTERM, SIGINT] {
        let wake = wake
            .try_clone()
            .context("making the daemon's signal pipe")?;
        signal_hook::low_level::pipe::register(sig, wake)
            .context("installing the daemon's signal handlers")?;
    }
    std::thread::Builder::new()
        .name("daemon-signals".into())
        .spawn(move || {
            if woken.read(&mut [0u8]).is_err() {
                return;
            }
            let _ = std::fs::remove_file(&socket);
            let start = std::time::Instant::now();
            let running = || crate::machine::RUNNING.load(Ordering::SeqCst);
            while running() > 0 && start.elapsed() < std::time::Duration::from_secs(30) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            std::process::exit(if running() > 0 { 1 } else { 0 });
        })
        .context("starting the daemon's signal thread")?;
    Ok(())
}

/// How many sessions are running. A session's own roots end with it; the roots the
/// process takes elsewhere (the shared Engine's, for the builds of every session) are
/// released when the last session ends, when nothing is in flight.
#[derive(Default)]
struct Sessions(std::sync::Mutex<usize>);

/// A running session; its end is counted when dropped.
struct Session<'a> {
    sessions: &'a Sessions,
    store: Arc<LocalStore>,
    /// Its number in this process, which names its roots' file.
    id: u64,
}

impl Sessions {
    fn start(&self, store: &Arc<LocalStore>) -> Session<'_> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Session {
            sessions: self,
            store: store.clone(),
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Under the count's lock: a session starting meanwhile counts itself before it
        // makes a root, so its roots are never the ones released.
        let mut n = self.sessions.0.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.store.release_temp_roots();
        }
    }
}

/// One client, from its credentials to the end of its session.
fn connection(
    settings: &Settings,
    store: Arc<LocalStore>,
    engine: &crate::machine::SharedEngine,
    access: &Access,
    stream: UnixStream,
) -> Result<()> {
    let peer = Peer::of(&stream).context("reading the credentials of a connection")?;
    let mut opts = WorkerOptions::new(store.store_dir().clone(), "2.8.0");
    let trusted = match access.decide(&peer, &group_members) {
        Ok(t) => t,
        Err(why) => {
            // The client is told why; a client that is not a Nix client gets nothing more.
            let reading = stream.try_clone().context("sharing the socket")?;
            let _ =
                ferrix_daemon::worker::refuse_session(reading, &stream, &opts, &why.to_string());
            return Err(why)
                .with_context(|| format!("refusing the connection of process {}", peer.pid));
        }
    };
    opts.trusted = trusted;
    let watch = stream.try_clone().context("sharing the socket")?;
    let check_sigs = if trusted {
        None
    } else {
        Some(settings.substitution()?.trust)
    };
    let client = crate::machine::Client::Socket(watch.into());
    let builds = crate::machine::Builds::shared(engine, client);
    let mut h = super::Handler::new(settings, store, builds, check_sigs)?;
    let input = io::BufReader::new(stream.try_clone().context("sharing the socket")?);
    let output = io::BufWriter::new(stream);
    ferrix_daemon::worker::serve_worker(&mut h, input, output, &opts).with_context(|| {
        format!(
            "serving user '{}' (uid {}, process {})",
            peer.user, peer.uid, peer.pid
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(user: &str, group: &str) -> Peer {
        Peer {
            uid: 1000,
            pid: 1,
            user: user.into(),
            group: Some(group.into()),
        }
    }

    fn access(allowed: &[&str], trusted: &[&str], bug: Option<&str>) -> Access {
        Access {
            allowed_users: allowed.iter().map(|s| s.to_string()).collect(),
            trusted_users: trusted.iter().map(|s| s.to_string()).collect(),
            build_users_group: bug.map(str::to_owned),
        }
    }

    fn members(g: &str) -> Vec<String> {
        match g {
            "wheel" => vec!["alice".into()],
            _ => vec![],
        }
    }

    #[test]
    fn users_are_matched_by_name_star_primary_group_and_membership() {
        let a = access(&["*"], &["root", "@wheel"], None);
        assert_eq!(a.decide(&peer("root", "root"), &members), Ok(true));
        // A member of @wheel, and a user whose primary group is wheel.
        assert_eq!(a.decide(&peer("alice", "users"), &members), Ok(true));
        assert_eq!(a.decide(&peer("bob", "wheel"), &members), Ok(true));
        assert_eq!(a.decide(&peer("carol", "users"), &members), Ok(false));
    }

    #[test]
    fn users_outside_allowed_users_are_refused_unless_trusted() {
        let a = access(&["@wheel"], &["root"], None);
        assert_eq!(a.decide(&peer("alice", "users"), &members), Ok(false));
        assert_eq!(a.decide(&peer("root", "root"), &members), Ok(true));
        assert_eq!(
            a.decide(&peer("carol", "users"), &members),
            Err(Refused::NotAllowed {
                user: "carol".into()
            })
        );
    }

    #[test]
    fn build_users_may_never_connect() {
        let a = access(&["*"], &["*"], Some("nixbld"));
        assert_eq!(
            a.decide(&peer("nixbld1", "nixbld"), &members),
            Err(Refused::BuildUser {
                user: "nixbld1".into(),
                group: "nixbld".into()
            })
        );
    }
}
