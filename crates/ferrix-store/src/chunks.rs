//! A byte stream from one thread to another in large chunks that are handed over, not
//! copied through the kernel as a pipe would, and recycled once read.

use std::io::{self, Read, Write};
use std::sync::mpsc;

/// The writing end: fills a chunk at a time (or takes whole chunks), sends it when full.
pub(crate) struct ChunkSender {
    tx: mpsc::SyncSender<io::Result<Vec<u8>>>,
    spent: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    size: usize,
}

/// The reading end. The stream ends when every sender is gone; an error sent is returned
/// in its place.
pub(crate) struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    give_back: mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    size: usize,
}

/// A stream of chunks of `size` bytes, at most `ahead` of them in flight.
pub(crate) fn channel(size: usize, ahead: usize) -> (ChunkSender, ChunkReader) {
    let (tx, rx) = mpsc::sync_channel(ahead);
    let (give_back, spent) = mpsc::channel();
    (
        ChunkSender {
            tx,
            spent,
            cur: Vec::new(),
            size,
        },
        ChunkReader {
            rx,
            give_back,
            cur: Vec::new(),
            pos: 0,
            size,
        },
    )
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the reading side stopped")
}

impl ChunkSender {
    /// An empty buffer of the chunk size: one the reader is done with if there is one.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        match self.spent.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => Vec::with_capacity(self.size),
        }
    }

    /// A buffer of `len` bytes to read into: one the reader is done with, its old bytes
    /// left in place rather than zeroed again (they are overwritten before they are sent).
    pub(crate) fn buffer_of(&self, len: usize) -> Vec<u8> {
        match self.spent.try_recv() {
            Ok(mut b) => {
                b.resize(len, 0);
                b
            }
            Err(_) => vec![0; len],
        }
    }

    /// Send a whole chunk (after what was written and not yet sent).
    pub(crate) fn send(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.flush()?;
        if chunk.is_empty() {
            return Ok(());
        }
        self.tx.send(Ok(chunk)).map_err(|_| gone())
    }

    /// Make the reader fail with `e` where the stream is now.
    pub(crate) fn fail(mut self, e: io::Error) {
        let _ = self.flush();
        let _ = self.tx.send(Err(e));
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cur.capacity() == 0 {
            self.cur = self.buffer();
        }
        let n = buf.len().min(self.size - self.cur.len());
        self.cur.extend_from_slice(&buf[..n]);
        if self.cur.len() == self.size {
            let full = std::mem::take(&mut self.cur);
            self.tx.send(Ok(full)).map_err(|_| gone())?;
        }
        Ok(n)
    }

    /// Sends what is written so far.
    fn flush(&mut self) -> io::Result<()> {
        if self.cur.is_empty() {
            return Ok(());
        }
        let part = std::mem::take(&mut self.cur);
        self.tx.send(Ok(part)).map_err(|_| gone())
    }
}

impl Drop for ChunkSender {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    let spent = std::mem::replace(&mut self.cur, chunk?);
                    if spent.capacity() == self.size {
                        let _ = self.give_back.send(spent);
                    }
                    self.pos = 0;
                }
                // Every sender is gone: the stream is over.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_whatever_the_write_sizes() {
        let (mut tx, mut rx) = channel(1000, 2);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let d2 = data.clone();
        let t = std::thread::spawn(move || {
            let mut at = 0;
            let mut step = 1;
            while at < d2.len() {
                let end = (at + step).min(d2.len());
                tx.write_all(&d2[at..end]).unwrap();
                at = end;
                step = step * 3 % 4099 + 1;
                if step % 5 == 0 {
                    let mut b = tx.buffer();
                    b.extend_from_slice(b"");
                    tx.send(b).unwrap();
                }
            }
        });
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn an_error_reaches_the_reader_after_what_came_before() {
        let (mut tx, mut rx) = channel(16, 2);
        let t = std::thread::spawn(move || {
            tx.write_all(b"abc").unwrap();
            tx.fail(io::Error::other("bad input"));
        });
        let mut got = Vec::new();
        let e = rx.read_to_end(&mut got).unwrap_err();
        t.join().unwrap();
        assert_eq!(got, b"abc");
        assert_eq!(e.to_string(), "bad input");
    }

    #[test]
    fn a_reader_that_stops_makes_writes_fail() {
        let (mut tx, rx) = channel(4, 1);
        drop(rx);
        let e = tx.write_all(&[0; 64]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
