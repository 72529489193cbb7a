//! The Linux build sandbox: the builder runs in fresh user, mount, pid, ipc, uts and (except
//! for fixed-output derivations) network namespaces, inside a root that holds only its input
//! closure, the build directory at `/build`, a few devices, `/proc` and the `sandbox-paths`.
//!
//! Set-up happens in a helper process of our own binary rather than between `fork` and
//! `exec` of a multi-threaded program (where only async-signal-safe calls are allowed):
//! `__build-child` (stage 1) enters the namespaces, maps the ids and builds the root (a tmpfs,
//! with the store directory, a reused directory on disk, bound on it); it forks stage 2,
//! process 1 of the new pid namespace, which mounts `/proc`, enters the root and becomes the
//! builder. Both die with their parent (`PDEATHSIG`), and when process 1 dies the kernel ends
//! every process of its namespace: nothing outlives a build, even if Ferrix itself is killed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::process::Signal;

/// Where the build directory appears inside the sandbox (Nix's `sandbox-build-dir`).
pub const BUILD_DIR_IN_SANDBOX: &str = "/build";

/// The uid and gid the builder has inside, as in Nix.
const SANDBOX_UID: u32 = 1000;
const SANDBOX_GID: u32 = 100;

/// Everything the helpers need, sent to them on standard input as JSON.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The build directory on the host, bound at `/build`.
    pub build_dir: PathBuf,
    /// The directory where a fresh tmpfs becomes `/`.
    pub root: PathBuf,
    /// The directory that becomes the store directory: inputs are bound on mount points
    /// in it (made when missing, kept afterwards), and outputs are written there.
    pub store: PathBuf,
    /// The logical store directory (inside the sandbox, paths are where their names say).
    pub store_dir: String,
    /// Input paths: (path inside, where it really is).
    pub inputs: Vec<(String, PathBuf)>,
    /// `sandbox-paths`: (path inside, path on the host).
    pub extra: Vec<(String, PathBuf)>,
    /// Keep the host's network (fixed-output derivations).
    pub network: bool,
    /// The host uid and gid the builder's ids map to.
    pub uid: u32,
    pub gid: u32,
}

impl Spec {
    fn to_json(&self) -> String {
        use serde_json::json;
        json!({
            "builder": self.builder, "args": self.args, "env": self.env,
            "build_dir": self.build_dir, "root": self.root, "store": self.store,
            "store_dir": self.store_dir,
            "inputs": self.inputs, "extra": self.extra, "network": self.network,
            "uid": self.uid, "gid": self.gid,
        })
        .to_string()
    }

    fn from_json(text: &str) -> io::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(io::Error::other)?;
        let bad = || io::Error::other("malformed sandbox spec");
        let s = |k: &str| v[k].as_str().map(str::to_owned).ok_or_else(bad);
        let pairs = |k: &str| -> io::Result<Vec<(String, PathBuf)>> {
            v[k].as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|p| {
                    Ok((
                        p[0].as_str().ok_or_else(bad)?.to_owned(),
                        PathBuf::from(p[1].as_str().ok_or_else(bad)?),
                    ))
                })
                .collect()
        };
        Ok(Self {
            builder: s("builder")?,
            args: v["args"]
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|a| a.as_str().map(str::to_owned).ok_or_else(bad))
                .collect::<io::Result<_>>()?,
            env: v["env"]
                .as_object()
                .ok_or_else(bad)?
                .iter()
                .map(|(k, x)| Ok((k.clone(), x.as_str().ok_or_else(bad)?.to_owned())))
                .collect::<io::Result<_>>()?,
            build_dir: PathBuf::from(s("build_dir")?),
            root: PathBuf::from(s("root")?),
            store: PathBuf::from(s("store")?),
            store_dir: s("store_dir")?,
            inputs: pairs("inputs")?,
            extra: pairs("extra")?,
            network: v["network"].as_bool().ok_or_else(bad)?,
            uid: v["uid"].as_u64().ok_or_else(bad)? as u32,
            gid: v["gid"].as_u64().ok_or_else(bad)? as u32,
        })
    }

    /// The command that runs the builder in the sandbox: the helper (stage 1), with the spec
    /// to write to its standard input.
    pub fn command(&self, helper: &Path) -> (tokio::process::Command, String) {
        let mut cmd = tokio::process::Command::new(helper);
        cmd.arg("__build-child").env_clear();
        (cmd, self.to_json())
    }
}

fn ctx<T>(what: &str, r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("sandbox: {what}: {e}")))
}

fn read_spec() -> io::Result<Spec> {
    let mut text = String::new();
    io::stdin().read_to_string(&mut text)?;
    Spec::from_json(&text)
}

/// Enter new namespaces (the helper is single-threaded, as `CLONE_NEWUSER` requires).
#[allow(unsafe_code)]
fn unshare(network: bool) -> io::Result<()> {
    use rustix::thread::UnshareFlags as F;
    let mut flags = F::NEWUSER | F::NEWNS | F::NEWPID | F::NEWIPC | F::NEWUTS;
    if !network {
        flags |= F::NEWNET;
    }
    // SAFETY: the flags do not include `CLONE_FILES`, the only one that can leave other
    // threads with file descriptors they can no longer use; this process has one thread.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(Into::into)
}

/// Make `target` (a file or directory, like `source`) unless it is there, and bind `source`
/// on it.
fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    let meta = fs::metadata(source)?;
    if fs::symlink_metadata(target).is_err() {
        if meta.is_dir() {
            fs::create_dir_all(target)?;
        } else {
            if let Some(p) = target.parent() {
                fs::create_dir_all(p)?;
            }
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(target)?;
        }
    }
    rustix::mount::mount_bind_recursive(source, target)?;
    if read_only {
        rustix::mount::mount_remount(
            target,
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            "",
        )?;
    }
    Ok(())
}

/// Bind `source` on `target` (made like it when missing), keeping the source mount's flags.
/// Mount points are usually there from an earlier build: try first, make it on `ENOENT`.
fn bind_plain(source: &Path, target: &Path) -> io::Result<()> {
    match rustix::mount::mount_bind(source, target) {
        Err(rustix::io::Errno::NOENT) => {}
        r => return r.map_err(Into::into),
    }
    if fs::metadata(source)?.is_dir() {
        fs::create_dir_all(target)?;
    } else {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)?;
    }
    rustix::mount::mount_bind(source, target).map_err(Into::into)
}

fn inside(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Stage 1 (`ferrix __build-child`): namespaces, id maps, the root; then stage 2, whose
/// exit status becomes ours. Never returns.
pub fn child_main() -> ! {
    let code = match stage1() {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {e}");
            // Distinct from any builder's status: the build failed before the builder ran.
            125
        }
    };
    std::process::exit(code)
}

fn stage1() -> io::Result<i32> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    let spec = ctx("reading the spec", read_spec())?;
    ctx(
        "creating namespaces (are user namespaces enabled? set 'sandbox = false' otherwise)",
        unshare(spec.network),
    )?;
    ctx(
        "writing setgroups",
        fs::write("/proc/self/setgroups", "deny"),
    )?;
    ctx(
        "mapping the user id",
        fs::write(
            "/proc/self/uid_map",
            format!("{SANDBOX_UID} {} 1", spec.uid),
        ),
    )?;
    ctx(
        "mapping the group id",
        fs::write(
            "/proc/self/gid_map",
            format!("{SANDBOX_GID} {} 1", spec.gid),
        ),
    )?;
    // Nothing mounted from here on is seen outside.
    ctx(
        "making mounts private",
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )
        .map_err(Into::into),
    )?;
    let root = &spec.root;
    // The skeleton lives in memory: a tmpfs as the root, the store directory bound on it.
    ctx(
        "mounting the root",
        rustix::mount::mount(
            "none",
            root,
            "tmpfs",
            MountFlags::empty(),
            Some(c"mode=0755"),
        )
        .map_err(Into::into),
    )?;
    let store_at = inside(root, &spec.store_dir);
    fs::create_dir_all(&store_at)?;
    ctx(
        "binding the store directory",
        rustix::mount::mount_bind(&spec.store, &store_at).map_err(Into::into),
    )?;
    ctx(
        "binding the build directory",
        bind(&spec.build_dir, &inside(root, BUILD_DIR_IN_SANDBOX), false),
    )?;
    // Inputs are bound from one read-only view of the store they live in: each bind then
    // inherits its flags, one `mount` call per input instead of two.
    let ro_store = inside(root, "/.inputs");
    let mut ro_store_used = false;
    for (at, real) in &spec.inputs {
        let target = inside(root, at);
        let via = match (real.parent(), real.file_name()) {
            (Some(dir), Some(name)) => {
                if !ro_store_used {
                    fs::create_dir_all(&ro_store)?;
                    ctx("viewing the store", bind(dir, &ro_store, true))?;
                    ro_store_used = true;
                }
                ro_store.join(name)
            }
            _ => real.clone(),
        };
        ctx(&format!("binding input '{at}'"), bind_plain(&via, &target))?;
    }
    if ro_store_used {
        ctx(
            "hiding the store view",
            rustix::mount::unmount(&ro_store, rustix::mount::UnmountFlags::DETACH)
                .map_err(Into::into),
        )?;
        fs::remove_dir(&ro_store)?;
    }
    for (at, real) in &spec.extra {
        let target = inside(root, at);
        match fs::symlink_metadata(real) {
            // A symlink (as /bin is on merged-/usr systems) is recreated as is.
            Ok(m) if m.file_type().is_symlink() => {
                if let Some(p) = target.parent() {
                    fs::create_dir_all(p)?;
                }
                let to = fs::read_link(real)?;
                if fs::symlink_metadata(&target).is_err() {
                    ctx(&format!("linking '{at}'"), symlink(to, &target))?;
                }
            }
            Ok(_) => ctx(&format!("binding '{at}'"), bind(real, &target, true))?,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("sandbox: sandbox path '{}': {e}", real.display()),
                ))
            }
        }
    }
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = Path::new("/dev").join(dev);
        if host.exists() {
            ctx(
                &format!("binding /dev/{dev}"),
                bind(&host, &inside(root, &format!("/dev/{dev}")), false),
            )?;
        }
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = symlink(to, inside(root, &format!("/dev/{name}")));
    }
    // Nix mounts a private /dev/shm and /dev/pts; best effort, as there.
    let shm = inside(root, "/dev/shm");
    fs::create_dir_all(&shm)?;
    if Path::new("/dev/shm").exists() {
        ctx(
            "mounting /dev/shm",
            rustix::mount::mount(
                "none",
                &shm,
                "tmpfs",
                MountFlags::empty(),
                Some(c"size=50%"),
            )
            .map_err(Into::into),
        )?;
    }
    let pts = inside(root, "/dev/pts");
    fs::create_dir_all(&pts)?;
    if Path::new("/dev/pts/ptmx").exists()
        && rustix::mount::mount(
            "none",
            &pts,
            "devpts",
            MountFlags::empty(),
            Some(c"newinstance,mode=0620"),
        )
        .is_ok()
    {
        let _ = symlink("/dev/pts/ptmx", inside(root, "/dev/ptmx"));
    }
    // A writable /tmp, as many builders expect one whatever TMPDIR says.
    let tmp = inside(root, "/tmp");
    fs::create_dir_all(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    if !spec.network {
        // The namespace's own loopback: builders that test servers on localhost work, and
        // nothing on the host's loopback is reachable.
        ctx("bringing up the loopback interface", loopback_up())?;
    }

    let etc = inside(root, "/etc");
    fs::create_dir_all(&etc)?;
    if spec.network {
        // Fixed-output builds fetch things: they get the host's name resolution.
        fs::write(
            etc.join("nsswitch.conf"),
            "hosts: files dns\nservices: files\n",
        )?;
        for f in ["/etc/resolv.conf", "/etc/services"] {
            if Path::new(f).exists() {
                ctx(
                    &format!("binding {f}"),
                    bind(Path::new(f), &inside(root, f), true),
                )?;
            }
        }
    }
    fs::write(
        etc.join("passwd"),
        format!(
            "root:x:0:0:Nix build user:{b}:/noshell\nnixbld:x:{SANDBOX_UID}:{SANDBOX_GID}:Nix build user:{b}:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell\n",
            b = BUILD_DIR_IN_SANDBOX
        ),
    )?;
    fs::write(
        etc.join("group"),
        format!("root:x:0:\nnixbld:!:{SANDBOX_GID}:\nnogroup:x:65534:\n"),
    )?;
    fs::write(etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
    fs::create_dir_all(inside(root, "/proc"))?;
    ctx(
        "setting the host name",
        rustix::system::sethostname(b"localhost").map_err(Into::into),
    )?;
    let _ = rustix::system::setdomainname(b"(none)");

    // Stage 2 becomes process 1 of the new pid namespace: a fork of this single-threaded
    // process, which keeps the capabilities it needs to mount `/proc` and enter the root
    // (the builder, started by `exec` as an unprivileged user, has none).
    let pid = fork()?;
    if pid == 0 {
        let err = match stage2(&spec) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let _ = writeln!(io::stderr(), "error: {err}");
        exit_now(125);
    }
    wait_for(pid)
}

/// `ip link set lo up`, by `SIOCSIFFLAGS` on a socket.
#[allow(unsafe_code)]
fn loopback_up() -> io::Result<()> {
    use rustix::net::{socket, AddressFamily, SocketType};
    /// `struct ifreq` as far as `SIOCSIFFLAGS` reads it: the name, then the flags.
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: i16,
        _rest: [u8; 22],
    }
    const SIOCSIFFLAGS: rustix::ioctl::Opcode = 0x8914;
    const IFF_UP: i16 = 0x1;
    const IFF_LOOPBACK: i16 = 0x8;
    const IFF_RUNNING: i16 = 0x40;
    let sock = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    let mut name = [0u8; 16];
    name[..2].copy_from_slice(b"lo");
    let req = IfReq {
        name,
        flags: IFF_UP | IFF_LOOPBACK | IFF_RUNNING,
        _rest: [0; 22],
    };
    // SAFETY: SIOCSIFFLAGS reads a `struct ifreq` (40 bytes on Linux: a 16-byte name and a
    // 24-byte union whose first member, a short, holds the flags), which `IfReq` lays out.
    unsafe {
        rustix::ioctl::ioctl(
            &sock,
            rustix::ioctl::Setter::<SIOCSIFFLAGS, IfReq>::new(req),
        )
    }
    .map_err(Into::into)
}

/// `fork(2)`: 0 in the child, its pid in the parent.
#[allow(unsafe_code)]
fn fork() -> io::Result<i32> {
    // SAFETY: stage 1 is a process of its own with a single thread (it starts no others),
    // so the child is a complete copy: no lock can be held by a thread that does not exist
    // there. The child only makes system calls and then replaces itself with `exec`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// `_exit(2)`: the forked child must not run the parent's exit handlers.
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` ends the process at once; nothing is used afterwards.
    unsafe { libc::_exit(code) }
}

/// Wait for process `pid`: its exit code, or 128 + the signal that ended it.
fn wait_for(pid: i32) -> io::Result<i32> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or_else(|| io::Error::other("bad pid"))?;
    loop {
        match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty()) {
            Ok(Some((_, st))) => {
                return Ok(match (st.exit_status(), st.terminating_signal()) {
                    (Some(c), _) => c,
                    (None, Some(s)) => 128 + s,
                    _ => 1,
                })
            }
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Stage 2, in the forked child: `/proc`, the root, then the builder. Never returns.
fn stage2(spec: &Spec) -> io::Result<std::convert::Infallible> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
    let root = &spec.root;
    ctx(
        "mounting /proc",
        rustix::mount::mount(
            "none",
            inside(root, "/proc"),
            "proc",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )
        .map_err(Into::into),
    )?;
    ctx(
        "entering the root",
        rustix::process::chroot(root).map_err(Into::into),
    )?;
    // The builder gets no capabilities.
    ctx(
        "dropping capabilities",
        rustix::thread::clear_ambient_capability_set().map_err(Into::into),
    )?;
    ctx(
        "entering /build",
        std::env::set_current_dir(BUILD_DIR_IN_SANDBOX),
    )?;
    let err = Command::new(&spec.builder)
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::null())
        .exec();
    Err(io::Error::new(
        err.kind(),
        format!("executing builder '{}': {err}", spec.builder),
    ))
}
