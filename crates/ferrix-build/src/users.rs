//! Build users (`build-users-group`): when the builds' owner is root, each running build
//! has a user of that group to itself, so builders never run as root and cannot reach each
//! other's files. Who is free is decided by a lock file per user, shared with every other
//! process building in the same store (and with Nix's, which locks the same files).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ferrix_store::lock::FileLock;

/// The users builds may run as (resolved by the caller from the system's group database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildUsers {
    /// The group's name, for messages.
    pub group: String,
    /// The group's id: the builders' group.
    pub gid: u32,
    /// Its members' uids.
    pub uids: Vec<u32>,
    /// Where the lock file of each user is (`<state>/userpool`).
    pub lock_dir: PathBuf,
    /// The program that ends every process of a user (`PROGRAM __kill-user UID`, see
    /// [`kill_user_main`]): run after each build, so that nothing a builder left running
    /// (even outside its process group) outlives it.
    pub killer: PathBuf,
}

/// A build user held for one build; free again when dropped.
#[derive(Debug)]
pub struct BuildUser {
    pub uid: u32,
    pub gid: u32,
    _lock: FileLock,
}

impl BuildUsers {
    /// A user nobody builds as now, if any.
    pub fn try_acquire(&self) -> io::Result<Option<BuildUser>> {
        std::fs::create_dir_all(&self.lock_dir)?;
        for &uid in &self.uids {
            let path = self.lock_dir.join(uid.to_string());
            match FileLock::acquire(&path, false, false) {
                Ok(Some(lock)) => {
                    return Ok(Some(BuildUser {
                        uid,
                        gid: self.gid,
                        _lock: lock,
                    }))
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        Ok(None)
    }
}

/// End every process of `user` (run as root, after a build): the killer becomes the user
/// and signals everything it may, as Nix's `killUser` does.
pub async fn kill_user(killer: &Path, user: &BuildUser) -> io::Result<()> {
    let status = tokio::process::Command::new(killer)
        .arg("__kill-user")
        .arg(user.uid.to_string())
        .stdin(std::process::Stdio::null())
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ending the processes of uid {} failed ({status})",
            user.uid
        )))
    }
}

/// `__kill-user UID`: become that user, then kill every process it has (all it may signal,
/// but itself), as Nix's `killUser` does.
#[allow(unsafe_code)]
pub fn kill_user_main() -> ! {
    let uid: Option<u32> = std::env::args().nth(2).and_then(|a| a.parse().ok());
    let code = match uid {
        Some(uid) if uid != 0 => {
            let u = rustix::process::Uid::from_raw(uid);
            if rustix::thread::set_thread_res_uid(u, u, u).is_err() {
                2
            } else {
                loop {
                    // One call signals them all. SAFETY: kill(2) with pid -1 and a valid
                    // signal number; no memory is involved.
                    if unsafe { libc::kill(-1, libc::SIGKILL) } == 0 {
                        break 0;
                    }
                    match io::Error::last_os_error().raw_os_error() {
                        // Nothing left, or nothing we may signal.
                        Some(libc::ESRCH) | Some(libc::EPERM) => break 0,
                        Some(libc::EINTR) => continue,
                        _ => break 1,
                    }
                }
            }
        }
        _ => 2,
    };
    std::process::exit(code)
}

/// Give `dir` and everything in it to `uid`:`gid` (a build directory before its builder
/// starts). Symlinks are changed themselves, never followed.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.is_dir() {
        for e in std::fs::read_dir(dir)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Make the store directory one build users can create their outputs in, as Nix keeps it:
/// owned by root and the build group, group-writable, sticky.
pub fn prepare_store_dir(real_store_dir: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(real_store_dir, Some(0), Some(gid))?;
    std::fs::set_permissions(real_store_dir, std::fs::Permissions::from_mode(0o1775))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_serves_one_build_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let users = BuildUsers {
            group: "bld".into(),
            gid: 30000,
            uids: vec![30001, 30002],
            lock_dir: d.path().join("userpool"),
            killer: PathBuf::from("/nonexistent"),
        };
        let a = users.try_acquire().unwrap().unwrap();
        let b = users.try_acquire().unwrap().unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(users.try_acquire().unwrap().is_none());
        drop(a);
        let c = users.try_acquire().unwrap().unwrap();
        assert_eq!(c.uid, 30001);
        assert_eq!(c.gid, 30000);
    }
}
