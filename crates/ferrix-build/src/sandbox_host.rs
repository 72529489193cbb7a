//! Sandbox hosts: one long-lived helper per sandbox place that keeps what its builds share
//! (namespaces, id maps, loopback, the root's skeleton) and starts each build in fresh
//! namespaces of its own, so that a build pays for neither a helper's `exec` nor a network
//! namespace. This module holds both ends: [`SandboxHost`], the executor's handle, and
//! [`host_main`], the helper (`__sandbox-host`).
//!
//! The helper's standard input is a Unix stream socket. Requests are frames (a 32-bit
//! little-endian length, then that much JSON): the place first, then builds, each with the
//! file descriptor its output goes to attached to the frame, and kills. Replies are lines
//! of JSON: ready (or an error) once, then each build's exit status.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};

use crate::sandbox::{BuildSpec, PlaceSpec};

/// Frames larger than this are refused (a build's environment is never near it).
const MAX_FRAME: u32 = 256 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Request {
    Place(PlaceSpec),
    Build(BuildSpec),
    Kill,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply {
    Ready,
    Error(String),
    /// The build's exit status: the builder's, 128 + the signal that ended it, or
    /// [`crate::sandbox::SETUP_FAILED`].
    Exit(i32),
}

/// The executor's handle on a running host. Dropping it kills the host, which ends any
/// build it runs.
#[derive(Debug)]
pub struct SandboxHost {
    child: tokio::process::Child,
    sock: tokio::net::UnixStream,
    /// Reply bytes read but not yet used.
    buf: Vec<u8>,
}

fn frame(req: &Request) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(req).map_err(io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or_else(|| io::Error::other("sandbox request too large"))?;
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

impl SandboxHost {
    /// Start a host for `place` (`helper __sandbox-host`) and wait until it is ready; its
    /// set-up errors come back as this call's error.
    pub async fn spawn(helper: &Path, place: &PlaceSpec) -> io::Result<Self> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let child = tokio::process::Command::new(helper)
            .arg("__sandbox-host")
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group: Ctrl-C is Ferrix's to handle.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        ours.set_nonblocking(true)?;
        let mut host = Self {
            child,
            sock: tokio::net::UnixStream::from_std(ours)?,
            buf: Vec::new(),
        };
        host.sock
            .write_all(&frame(&Request::Place(place.clone()))?)
            .await?;
        match host.reply().await? {
            Reply::Ready => Ok(host),
            Reply::Error(e) => Err(io::Error::other(e)),
            Reply::Exit(_) => Err(io::Error::other("sandbox host: unexpected reply")),
        }
    }

    /// Start a build; its standard output and error go to `out`.
    pub async fn start(&mut self, build: &BuildSpec, out: OwnedFd) -> io::Result<()> {
        let bytes = frame(&Request::Build(build.clone()))?;
        let (head, body) = bytes.split_at(4);
        // The descriptor travels with the frame's length, in one message.
        let sock = &self.sock;
        let sent = sock
            .async_io(Interest::WRITABLE, || {
                let fds = [out.as_fd()];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                control.push(SendAncillaryMessage::ScmRights(&fds));
                rustix::net::sendmsg(
                    sock,
                    &[IoSlice::new(head)],
                    &mut control,
                    SendFlags::empty(),
                )
                .map_err(io::Error::from)
            })
            .await?;
        if sent != head.len() {
            // A stream socket takes a 4-byte write whole or not at all, short of errors.
            return Err(io::Error::other("sandbox host: short write"));
        }
        self.sock.write_all(body).await
    }

    /// Wait for the running build's exit status. Cancel-safe: nothing read is lost if the
    /// future is dropped.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self.reply().await? {
            Reply::Exit(code) => Ok(ExitStatus::from_raw((code & 0xff) << 8)),
            Reply::Error(e) => Err(io::Error::other(e)),
            Reply::Ready => Err(io::Error::other("sandbox host: unexpected reply")),
        }
    }

    /// Ask the host to kill the running build; its status still comes through [`wait`].
    ///
    /// [`wait`]: SandboxHost::wait
    pub async fn kill(&mut self) -> io::Result<()> {
        self.sock.write_all(&frame(&Request::Kill)?).await
    }

    async fn reply(&mut self) -> io::Result<Reply> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line)
                    .map_err(|e| io::Error::other(format!("sandbox host: malformed reply: {e}")));
            }
            let mut chunk = [0u8; 512];
            let n = self.sock.read(&mut chunk).await?;
            if n == 0 {
                let status = self.child.try_wait().ok().flatten();
                return Err(io::Error::other(match status {
                    Some(st) => format!("sandbox host ended unexpectedly ({st})"),
                    None => "sandbox host closed its socket".to_owned(),
                }));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `ferrix __sandbox-host`: serve one sandbox place until the socket on standard input
/// closes. Never returns.
pub fn host_main() -> ! {
    let stdin = io::stdin();
    let sock = stdin.as_fd();
    let code = match serve(sock) {
        Ok(()) => 0,
        Err(e) => {
            let _ = reply(sock, &Reply::Error(e.to_string()));
            1
        }
    };
    std::process::exit(code)
}

fn reply(sock: BorrowedFd<'_>, r: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::File::from(sock.try_clone_to_owned()?);
    f.write_all(&line)
}

/// The next request and the descriptors sent with it; `None` at the end of the stream.
fn receive(sock: BorrowedFd<'_>) -> io::Result<Option<(Request, Vec<OwnedFd>)>> {
    let mut head = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut head)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => break r.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if got == 0 {
        return Ok(None);
    }
    let mut f = std::fs::File::from(sock.try_clone_to_owned()?);
    f.read_exact(&mut head[got..])?;
    let len = u32::from_le_bytes(head);
    if len > MAX_FRAME {
        return Err(io::Error::other("sandbox host: request too large"));
    }
    let mut body = vec![0u8; len as usize];
    f.read_exact(&mut body)?;
    let req = serde_json::from_slice(&body)
        .map_err(|e| io::Error::other(format!("sandbox host: malformed request: {e}")))?;
    Ok(Some((req, fds)))
}

fn serve(sock: BorrowedFd<'_>) -> io::Result<()> {
    let place = match receive(sock)? {
        Some((Request::Place(p), _)) => p,
        None => return Ok(()),
        Some(_) => return Err(io::Error::other("sandbox host: expected the place first")),
    };
    crate::sandbox::enter_place(&place)?;
    reply(sock, &Reply::Ready)?;
    loop {
        let (build, out) = match receive(sock)? {
            None => return Ok(()),
            Some((Request::Build(b), fds)) => match fds.into_iter().next() {
                Some(out) => (b, out),
                None => return Err(io::Error::other("sandbox host: a build without output")),
            },
            // A kill that crossed the end of its build: nothing runs.
            Some((Request::Kill, _)) => continue,
            Some((Request::Place(_), _)) => {
                return Err(io::Error::other("sandbox host: a second place"))
            }
        };
        let pid = crate::sandbox::fork()?;
        if pid == 0 {
            build_child(&place, &build, out);
        }
        drop(out);
        match supervise(sock, pid)? {
            Some(code) => reply(sock, &Reply::Exit(code))?,
            None => return Ok(()),
        }
    }
}

/// In the forked child: output to `out`, no standard input, then the build. Never returns.
fn build_child(place: &PlaceSpec, build: &BuildSpec, out: OwnedFd) -> ! {
    let run = || -> io::Result<i32> {
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
        rustix::stdio::dup2_stdout(&out)?;
        rustix::stdio::dup2_stderr(&out)?;
        drop(out);
        // Also lets go of the control socket.
        rustix::stdio::dup2_stdin(std::fs::File::open("/dev/null")?)?;
        crate::sandbox::run_build(place, build)
    };
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {e}");
            crate::sandbox::SETUP_FAILED
        }
    };
    crate::sandbox::exit_now(code)
}

/// Wait for build child `pid` while serving kills; `None` when the socket closed (the child
/// is killed then).
fn supervise(sock: BorrowedFd<'_>, pid: i32) -> io::Result<Option<i32>> {
    use rustix::event::{poll, PollFd, PollFlags};
    let raw = rustix::process::Pid::from_raw(pid).ok_or_else(|| io::Error::other("bad pid"))?;
    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())?;
    let kill = || {
        let _ = rustix::process::kill_process(raw, rustix::process::Signal::KILL);
    };
    loop {
        let mut fds = [
            PollFd::new(&sock, PollFlags::IN),
            PollFd::new(&pidfd, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                kill();
                return Err(e.into());
            }
        }
        if !fds[1].revents().is_empty() {
            return crate::sandbox::wait_for(pid).map(Some);
        }
        if !fds[0].revents().is_empty() {
            match receive(sock) {
                Ok(Some((Request::Kill, _))) => kill(),
                Ok(None) => {
                    kill();
                    let _ = crate::sandbox::wait_for(pid);
                    return Ok(None);
                }
                Ok(Some(_)) => {
                    kill();
                    let _ = crate::sandbox::wait_for(pid);
                    return Err(io::Error::other("sandbox host: a request during a build"));
                }
                Err(e) => {
                    kill();
                    let _ = crate::sandbox::wait_for(pid);
                    return Err(e);
                }
            }
        }
    }
}
