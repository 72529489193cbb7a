//! Ctrl-C and SIGTERM while the store is being written: the first asks the work to stop
//! cleanly (it removes what it staged and fails with "interrupted by the user"), a second
//! one ends the process at once, as the signal's default would.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ferrix_store::LocalStore;
use signal_hook::consts::{SIGINT, SIGTERM};

/// Catch SIGINT and SIGTERM from now on and let `store` watch for them. Also when the
/// signals came ignored from the parent (a background job of a script): an addition is
/// stopped the way Nix stops it, by its signal handler.
pub fn watch(store: &LocalStore) -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so that it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_default(sig, flag.clone())
            .context("installing a signal handler")?;
        signal_hook::flag::register(sig, flag.clone()).context("installing a signal handler")?;
    }
    store.set_interrupt(flag.clone());
    Ok(flag)
}

/// Standard input, read on a thread of its own, so that a stalled stream (a pipe that sends
/// nothing more) does not keep the first Ctrl-C waiting: the handlers restart blocked reads,
/// but this reader gives up on them once `flag` is set.
pub fn stdin(flag: Arc<AtomicBool>) -> impl Read {
    let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        let mut input = io::stdin().lock();
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            let got = match input.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    Ok(buf)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let end = !matches!(&got, Ok(b) if !b.is_empty());
            if tx.send(got).is_err() || end {
                return;
            }
        }
    });
    ChannelReader {
        rx,
        flag,
        chunk: Vec::new(),
        at: 0,
    }
}

struct ChannelReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    flag: Arc<AtomicBool>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.flag.load(Ordering::Relaxed) {
                return Err(io::Error::other("interrupted by the user"));
            }
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(chunk)) if chunk.is_empty() => return Ok(0),
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
