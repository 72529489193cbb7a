//! The floor for the daemon benchmark (`bench/daemon.sh`): a worker-protocol server that
//! does no work at all. It answers the handshake as Nix 2.8 does and every IsValidPath
//! with "valid" at once, a thread per connection. No daemon can answer faster on the same
//! machine; what it reaches is what the kernel's socket round trips allow.
//!
//! `cargo run --release -p ferrix-daemon --example null-daemon -- SOCKET`

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

const MAGIC_2: u64 = 0x6478_696F;
const STDERR_LAST: u64 = 0x616C_7473;
const VERSION: u64 = (1 << 8) | 34;

fn get(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn serve(s: UnixStream) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = BufWriter::new(s);
    get(&mut r)?; // the client's magic
    w.write_all(&MAGIC_2.to_le_bytes())?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.flush()?;
    for _ in 0..3 {
        get(&mut r)?; // version, affinity, reserveSpace
    }
    w.write_all(&5u64.to_le_bytes())?;
    w.write_all(b"2.8.0\0\0\0")?;
    w.write_all(&STDERR_LAST.to_le_bytes())?;
    w.flush()?;
    loop {
        let op = get(&mut r)?;
        let len = get(&mut r)?;
        if op != 1 || len > 4096 {
            return Ok(());
        }
        let mut path = vec![0u8; (len as usize).div_ceil(8) * 8];
        r.read_exact(&mut path)?;
        w.write_all(&STDERR_LAST.to_le_bytes())?;
        w.write_all(&1u64.to_le_bytes())?;
        w.flush()?;
    }
}

fn main() -> std::io::Result<()> {
    let socket = std::env::args()
        .nth(1)
        .ok_or_else(|| std::io::Error::other("usage: null-daemon SOCKET"))?;
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    for s in listener.incoming() {
        let s = s?;
        std::thread::spawn(move || serve(s));
    }
    Ok(())
}
