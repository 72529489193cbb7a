//! The Linux build sandbox: the builder runs in fresh user, mount, pid, ipc, uts and (except
//! for fixed-output derivations) network namespaces, inside a root that holds only its input
//! closure, the build directory at `/build`, a few devices, `/proc` and the `sandbox-paths`.
//!
//! Set-up happens in helper processes of our own binary rather than between `fork` and
//! `exec` of a multi-threaded program (where only async-signal-safe calls are allowed).
//! The part every build of a sandbox place shares is made once: a *host* (`__sandbox-host`,
//! one per place, see [`crate::sandbox_host`]) enters the user, network and uts namespaces,
//! maps the ids, brings up the loopback and mounts the read-only skeleton of the root (a
//! tmpfs with `/dev`, `/etc`, the `sandbox-paths` and the place's store directory). For each
//! build it forks a child that enters fresh mount, pid and ipc namespaces, binds the build
//! directory and the inputs, mounts a fresh `/tmp` and `/dev/shm`, and forks process 1 of
//! the new pid namespace, which mounts `/proc`, enters the root and becomes the builder.
//! Fixed-output derivations, which keep the host's network, get a helper of their own for
//! one build (`__build-child`), made of the same parts.
//!
//! Nothing outlives a build: the build child dies with the host, process 1 with the build
//! child (`PDEATHSIG`), and when process 1 dies the kernel ends every process of its
//! namespace. A host ends its builds and itself when its control socket closes, so when
//! Ferrix is killed too.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::process::Signal;
use serde::{Deserialize, Serialize};

/// Where the build directory appears inside the sandbox (Nix's `sandbox-build-dir`).
pub const BUILD_DIR_IN_SANDBOX: &str = "/build";

/// The uid and gid the builder has inside, as in Nix.
const SANDBOX_UID: u32 = 1000;
const SANDBOX_GID: u32 = 100;

/// What every build of one sandbox place shares.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlaceSpec {
    /// The directory where a fresh tmpfs becomes `/`.
    pub root: PathBuf,
    /// The directory that becomes the store directory: inputs are bound on mount points
    /// in it (made when missing, kept afterwards), and outputs are written there.
    pub store: PathBuf,
    /// An empty directory (outside `root`) where the real store is seen read-only, the
    /// source of every input's bind.
    pub view: PathBuf,
    /// Where the store's files really are.
    pub real_store: PathBuf,
    /// The logical store directory (inside the sandbox, paths are where their names say).
    pub store_dir: String,
    /// `sandbox-paths`: (path inside, path on the host).
    pub extra: Vec<(String, PathBuf)>,
    /// Keep the host's network (fixed-output derivations).
    pub network: bool,
    /// The host uid and gid the builder's ids map to.
    pub uid: u32,
    pub gid: u32,
}

/// What one build needs beyond its place.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildSpec {
    pub builder: String,
    pub args: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    /// The build directory on the host, bound at `/build`.
    pub build_dir: PathBuf,
    /// The input paths' names (entries of the store directory).
    pub inputs: Vec<String>,
}

/// A build with a helper of its own (`__build-child`): both parts, on its standard input.
#[derive(Debug, Serialize, Deserialize)]
struct OneShot {
    place: PlaceSpec,
    build: BuildSpec,
}

/// The command that runs one build in a sandbox of its own (the helper, `__build-child`),
/// with what to write to its standard input.
pub fn one_shot_command(
    helper: &Path,
    place: &PlaceSpec,
    build: &BuildSpec,
) -> io::Result<(tokio::process::Command, Vec<u8>)> {
    let mut cmd = tokio::process::Command::new(helper);
    cmd.arg("__build-child").env_clear();
    let spec = OneShot {
        place: place.clone(),
        build: build.clone(),
    };
    Ok((cmd, serde_json::to_vec(&spec).map_err(io::Error::other)?))
}

fn ctx<T>(what: &str, r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("sandbox: {what}: {e}")))
}

/// Enter new namespaces (the caller is single-threaded, as `CLONE_NEWUSER` requires).
#[allow(unsafe_code)]
fn unshare(flags: rustix::thread::UnshareFlags) -> io::Result<()> {
    // SAFETY: the flags never include `CLONE_FILES`, the only one that can leave other
    // threads with file descriptors they can no longer use; the helpers have one thread.
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

/// `ferrix __build-child`: one build in a sandbox of its own (the place and the build spec
/// on standard input); its exit status is the builder's. Never returns.
pub fn child_main() -> ! {
    let run = || -> io::Result<i32> {
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        let mut text = Vec::new();
        ctx("reading the spec", io::stdin().read_to_end(&mut text))?;
        let spec: OneShot = serde_json::from_slice(&text)
            .map_err(|e| io::Error::other(format!("sandbox: malformed spec: {e}")))?;
        enter_place(&spec.place)?;
        run_build(&spec.place, &spec.build)
    };
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {e}");
            SETUP_FAILED
        }
    };
    std::process::exit(code)
}

/// The exit status of a build whose sandbox could not be set up: distinct from any
/// builder's, which did not run.
pub const SETUP_FAILED: i32 = 125;

/// Enter the namespaces a place keeps for all its builds (user, mount, uts and, unless it
/// keeps the host's, network), map the ids and make the root's read-only skeleton.
pub fn enter_place(place: &PlaceSpec) -> io::Result<()> {
    use rustix::thread::UnshareFlags as F;
    if rustix::process::geteuid().is_root() && place.uid != 0 {
        // Root building for a build user: become that user first, so the namespace is the
        // user's and maps the user's ids (root may not map others' from inside). This
        // process has one thread: the per-thread calls are the process's.
        let (uid, gid) = (
            rustix::process::Uid::from_raw(place.uid),
            rustix::process::Gid::from_raw(place.gid),
        );
        ctx(
            "dropping supplementary groups",
            rustix::thread::set_thread_groups(&[]).map_err(Into::into),
        )?;
        ctx(
            "becoming the build user's group",
            rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(Into::into),
        )?;
        ctx(
            "becoming the build user",
            rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(Into::into),
        )?;
        // A change of user makes the process undumpable, which gives its `/proc/self`
        // files to root: the user could not write its own id maps.
        ctx(
            "keeping /proc/self the build user's",
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable)
                .map_err(Into::into),
        )?;
    }
    let mut flags = F::NEWUSER | F::NEWNS | F::NEWUTS;
    if !place.network {
        flags |= F::NEWNET;
    }
    ctx(
        "creating namespaces (are user namespaces enabled? set 'sandbox = false' otherwise)",
        unshare(flags),
    )?;
    ctx(
        "writing setgroups",
        fs::write("/proc/self/setgroups", "deny"),
    )?;
    ctx(
        "mapping the user id",
        fs::write(
            "/proc/self/uid_map",
            format!("{SANDBOX_UID} {} 1", place.uid),
        ),
    )?;
    ctx(
        "mapping the group id",
        fs::write(
            "/proc/self/gid_map",
            format!("{SANDBOX_GID} {} 1", place.gid),
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
    if !place.network {
        // The namespace's own loopback: builders that test servers on localhost work, and
        // nothing on the host's loopback is reachable.
        ctx("bringing up the loopback interface", loopback_up())?;
    }
    ctx(
        "setting the host name",
        rustix::system::sethostname(b"localhost").map_err(Into::into),
    )?;
    let _ = rustix::system::setdomainname(b"(none)");
    skeleton(place)
}

/// The root every build of the place shares: a tmpfs (it costs no disk inodes) with the
/// store directory, devices, `/etc`, the `sandbox-paths` and mount points for what each
/// build brings, made read-only: a builder leaves nothing there for the next one. The
/// store is also seen read-only at `view`, outside the root, for the inputs' binds.
fn skeleton(place: &PlaceSpec) -> io::Result<()> {
    let root = &place.root;
    // The view first, and without what is mounted below the store (such as the root).
    fs::create_dir_all(&place.view)?;
    ctx(
        "viewing the store",
        rustix::mount::mount_bind(&place.real_store, &place.view)
            .and_then(|()| {
                rustix::mount::mount_remount(
                    &place.view,
                    MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
                    "",
                )
            })
            .map_err(Into::into),
    )?;
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
    if !below_fresh(&place.store_dir) {
        bind_store(place)?;
    }
    for (at, real) in &place.extra {
        if !below_fresh(at) {
            add_extra(root, at, real)?;
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
    // Nix mounts a private /dev/pts; best effort, as there. (`/dev/shm`, like `/tmp`, is
    // a fresh tmpfs for each build.)
    fs::create_dir_all(inside(root, "/dev/shm"))?;
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
    for dir in ["/tmp", BUILD_DIR_IN_SANDBOX, "/proc"] {
        fs::create_dir_all(inside(root, dir))?;
    }

    let etc = inside(root, "/etc");
    fs::create_dir_all(&etc)?;
    if place.network {
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
    ctx(
        "making the root read-only",
        rustix::mount::mount_remount(root, MountFlags::BIND | MountFlags::RDONLY, "")
            .map_err(Into::into),
    )
}

/// Directories that are fresh for each build: what lies below them is not in the skeleton.
fn below_fresh(at: &str) -> bool {
    ["/tmp", "/dev/shm"]
        .iter()
        .any(|d| Path::new(at).starts_with(d))
}

/// The place's store directory, at its logical path in the root.
fn bind_store(place: &PlaceSpec) -> io::Result<()> {
    let store_at = inside(&place.root, &place.store_dir);
    fs::create_dir_all(&store_at)?;
    ctx(
        "binding the store directory",
        rustix::mount::mount_bind(&place.store, &store_at).map_err(Into::into),
    )
}

/// A `sandbox-paths` entry, read-only at `at` in the root.
fn add_extra(root: &Path, at: &str, real: &Path) -> io::Result<()> {
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
            Ok(())
        }
        Ok(_) => ctx(&format!("binding '{at}'"), bind(real, &target, true)),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("sandbox: sandbox path '{}': {e}", real.display()),
        )),
    }
}

/// One build in a place entered with [`enter_place`]: fresh mount, pid and ipc namespaces
/// (this process's children are in the new pid namespace), the build directory at
/// `/build`, the inputs, a fresh `/tmp` and `/dev/shm`; then process 1, the builder, whose
/// exit status (128 + the signal, if one ended it) is returned.
pub fn run_build(place: &PlaceSpec, build: &BuildSpec) -> io::Result<i32> {
    use rustix::thread::UnshareFlags as F;
    ctx(
        "creating the build's namespaces",
        unshare(F::NEWNS | F::NEWPID | F::NEWIPC),
    )?;
    let root = &place.root;
    ctx(
        "binding the build directory",
        rustix::mount::mount_bind(&build.build_dir, inside(root, BUILD_DIR_IN_SANDBOX))
            .map_err(Into::into),
    )?;
    for (dir, opts) in [("/tmp", c"mode=1777"), ("/dev/shm", c"size=50%")] {
        ctx(
            &format!("mounting {dir}"),
            rustix::mount::mount(
                "none",
                inside(root, dir),
                "tmpfs",
                MountFlags::empty(),
                Some(opts),
            )
            .map_err(Into::into),
        )?;
    }
    // What lies below those (as it may in tests) was covered: it comes again.
    if below_fresh(&place.store_dir) {
        bind_store(place)?;
    }
    for (at, real) in &place.extra {
        if below_fresh(at) {
            add_extra(root, at, real)?;
        }
    }
    let store_at = inside(root, &place.store_dir);
    // Each input is bound from the read-only view: it inherits its flags, one `mount`
    // call per input. Its mount point, in the place's store directory on disk, is usually
    // there from an earlier build.
    for name in &build.inputs {
        if name.contains('/') || name.starts_with('.') {
            return Err(io::Error::other(format!(
                "sandbox: bad input name '{name}'"
            )));
        }
        ctx(
            &format!("binding input '{}/{name}'", place.store_dir),
            bind_plain(&place.view.join(name), &store_at.join(name)),
        )?;
    }
    // Process 1 of the new pid namespace: a fork of this single-threaded process, which
    // keeps the capabilities it needs to mount `/proc` and enter the root (the builder,
    // started by `exec` as an unprivileged user, has none).
    let pid = fork()?;
    if pid == 0 {
        let err = match stage2(root, build) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let _ = writeln!(io::stderr(), "error: {err}");
        exit_now(SETUP_FAILED);
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
pub(crate) fn fork() -> io::Result<i32> {
    // SAFETY: only the helpers fork, processes of their own with a single thread (they
    // start no others), so the child is a complete copy: no lock can be held by a thread
    // that does not exist there.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// `_exit(2)`: the forked child must not run the parent's exit handlers.
#[allow(unsafe_code)]
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` ends the process at once; nothing is used afterwards.
    unsafe { libc::_exit(code) }
}

/// Wait for process `pid`: its exit code, or 128 + the signal that ended it.
pub(crate) fn wait_for(pid: i32) -> io::Result<i32> {
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

/// Process 1, in the forked child: `/proc`, the root, then the builder. Never returns.
fn stage2(root: &Path, spec: &BuildSpec) -> io::Result<std::convert::Infallible> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
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
