//! A byte stream from one thread to another in large chunks that are handed over, not
//! copied through the kernel as a pipe would, and recycled once read; and the spare
//! buffers every such stream of the process shares.

use std::io::{self, BufRead, Read, Write};
use std::sync::{mpsc, Mutex};

/// Buffers of finished streams, for the next ones. A stream per path (a substitution, an
/// import) would otherwise take fresh memory for its buffers each time, and the kernel
/// zeroes every page of it on first touch: a tenth of the time of substituting a closure.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// At most this many bytes wait in [`SPARE`]: enough for the chunks and read buffers of
/// 16 substitutions at once, little for a long-running daemon to keep.
const SPARE_BYTES: usize = 48 << 20;

fn take_spare(capacity: usize) -> Option<Vec<u8>> {
    let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
    spare
        .iter()
        .position(|b| b.capacity() >= capacity)
        .map(|i| spare.swap_remove(i))
}

/// A buffer of `len` bytes whose contents are unspecified (a spare one if there is one;
/// its old bytes are left in place, to be overwritten).
pub(crate) fn spare_buffer(len: usize) -> Vec<u8> {
    match take_spare(len) {
        Some(mut b) => {
            if b.len() < len {
                b.resize(len, 0);
            }
            b.truncate(len);
            b
        }
        None => vec![0; len],
    }
}

/// Keep `b` for a later [`spare_buffer`], if there is room.
pub(crate) fn recycle(b: Vec<u8>) {
    if b.capacity() == 0 {
        return;
    }
    let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
    let held: usize = spare.iter().map(Vec::capacity).sum();
    if held + b.capacity() <= SPARE_BYTES {
        spare.push(b);
    }
}

/// A file read through a spare buffer: a [`std::io::BufReader`] whose buffer comes from,
/// and goes back to, the spare ones.
pub(crate) struct SpareBufReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl<R: Read> SpareBufReader<R> {
    pub(crate) fn new(inner: R, size: usize) -> Self {
        Self {
            inner,
            buf: spare_buffer(size),
            pos: 0,
            len: 0,
        }
    }
}

impl<R: Read> Read for SpareBufReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // A large read with nothing buffered goes straight through, as BufReader does.
        if self.pos == self.len && out.len() >= self.buf.len() {
            return self.inner.read(out);
        }
        let n = {
            let have = self.fill_buf()?;
            let n = have.len().min(out.len());
            out[..n].copy_from_slice(&have[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for SpareBufReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.len {
            self.len = loop {
                match self.inner.read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r?,
                }
            };
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.len])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.len);
    }
}

impl<R> Drop for SpareBufReader<R> {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.buf));
    }
}

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
        let mut b = match self.spent.try_recv() {
            Ok(b) => b,
            Err(_) => take_spare(self.size).unwrap_or_else(|| Vec::with_capacity(self.size)),
        };
        b.clear();
        b
    }

    /// A buffer of `len` bytes to read into: one the reader is done with, its old bytes
    /// left in place rather than zeroed again (they are overwritten before they are sent).
    pub(crate) fn buffer_of(&self, len: usize) -> Vec<u8> {
        match self.spent.try_recv() {
            Ok(mut b) => {
                b.resize(len, 0);
                b
            }
            Err(_) => spare_buffer(len),
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
        while let Ok(b) = self.spent.try_recv() {
            recycle(b);
        }
    }
}

impl Drop for ChunkReader {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.cur));
        // What is still on its way is the sender's to drop.
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    let spent = std::mem::replace(&mut self.cur, chunk?);
                    if spent.capacity() == self.size {
                        // The sender may be gone: then it is kept for another stream.
                        if let Err(mpsc::SendError(b)) = self.give_back.send(spent) {
                            recycle(b);
                        }
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

    #[test]
    fn a_spare_buffered_reader_reads_what_it_wraps_and_gives_its_buffer_back() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 256) as u8).collect();
        for size in [1, 7, 4096, 100_000] {
            let mut r = SpareBufReader::new(&data[..], size);
            let mut got = Vec::new();
            let mut step = 1;
            loop {
                if step % 3 == 0 {
                    let have = r.fill_buf().unwrap().len().min(step);
                    if have == 0 {
                        break;
                    }
                    got.extend_from_slice(&r.fill_buf().unwrap()[..have]);
                    r.consume(have);
                } else {
                    let mut b = vec![0u8; step];
                    match r.read(&mut b).unwrap() {
                        0 => break,
                        n => got.extend_from_slice(&b[..n]),
                    }
                }
                step = step * 5 % 9001 + 1;
            }
            assert_eq!(got, data, "buffer of {size}");
        }
        // A buffer kept is handed out again with the length asked for.
        recycle(vec![1u8; 3 << 20]);
        let b = spare_buffer(3 << 20);
        assert_eq!(b.len(), 3 << 20);
    }
}
