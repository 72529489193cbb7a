//! The wire encoding over async readers and writers (tokio's): the primitives, framed streams,
//! and every message of both protocols, which [`MessageReader`] decodes with the same code as
//! the sync codecs once enough of its bytes have arrived, so the two agree on every message
//! (within the bound on what one message may buffer).
//!
//! A server on an event loop reads a request with [`MessageReader::read`], never blocking a
//! thread on a slow peer, and streams what follows it (a NAR, a framed stream) through the
//! same reader.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::wire::{Limits, Result, WireError};

/// One u64.
pub async fn read_u64<R: AsyncRead + Unpin + ?Sized>(r: &mut R, what: &'static str) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)
        .await
        .map_err(|e| WireError::io(what, e))?;
    Ok(u64::from_le_bytes(b))
}

/// One byte string, its length checked against `limits` before anything is allocated.
pub async fn read_bytes<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    limits: &Limits,
    what: &'static str,
) -> Result<Vec<u8>> {
    let len = read_u64(r, what).await?;
    if len > limits.max_string {
        return Err(WireError::TooLong {
            what,
            len,
            limit: limits.max_string,
        });
    }
    let mut out = Vec::new();
    // Grows only as the bytes arrive.
    let got = (&mut *r)
        .take(len)
        .read_to_end(&mut out)
        .await
        .map_err(|e| WireError::io(what, e))?;
    if (got as u64) < len {
        return Err(WireError::io(
            what,
            io::Error::new(io::ErrorKind::UnexpectedEof, "the string is cut short"),
        ));
    }
    let mut pad = [0u8; 8];
    let p = crate::wire::padding(len);
    r.read_exact(&mut pad[..p])
        .await
        .map_err(|e| WireError::io(what, e))?;
    if pad[..p].iter().any(|b| *b != 0) {
        return Err(WireError::BadPadding { what });
    }
    Ok(out)
}

/// One UTF-8 string.
pub async fn read_string<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    limits: &Limits,
    what: &'static str,
) -> Result<String> {
    String::from_utf8(read_bytes(r, limits, what).await?).map_err(|_| WireError::BadUtf8 { what })
}

pub async fn write_u64<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, v: u64) -> io::Result<()> {
    w.write_all(&v.to_le_bytes()).await
}

pub async fn write_bytes<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, b: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(b.len() + 16);
    crate::wire::push_bytes(&mut buf, b);
    w.write_all(&buf).await
}

/// Write one message as its sync encoder writes it, in one go.
pub async fn write_message<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    encode: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = Vec::new();
    encode(&mut buf)?;
    w.write_all(&buf).await
}

/// Reads whole messages from an async stream: bytes are gathered until a sync decoder accepts
/// them (a decoder that runs out of bytes is tried again once what the peer has sent so far
/// has come), at most `limits.max_string` plus what one list of `limits.max_items` counts
/// takes for one message: unlike the sync codec, which streams, this one buffers a message
/// whole, so a message larger than that (a list of many long strings) is refused. Bytes past
/// a message stay buffered, and the reader itself yields them first, so a stream that follows
/// a message (a NAR) is read through it. Dropping a [`MessageReader::read`] future (a timeout)
/// loses nothing: what arrived stays buffered for the next call.
#[derive(Debug)]
pub struct MessageReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    start: usize,
    max: usize,
}

/// Bytes read from the peer at a time.
const CHUNK: usize = 64 << 10;

impl<R: AsyncRead + Unpin> MessageReader<R> {
    pub fn new(inner: R, limits: &Limits) -> Self {
        let max = limits
            .max_string
            .saturating_add(limits.max_items.saturating_mul(8))
            .saturating_add(4096);
        Self {
            inner,
            buf: Vec::new(),
            start: 0,
            max: usize::try_from(max).unwrap_or(usize::MAX),
        }
    }

    /// Decode the next message with `decode`, a sync decoder reading from a byte slice.
    /// The decoder sees only bytes that have arrived, so it must treat running out of them
    /// as [`WireError::is_eof`]; it is called once the peer has sent something (or is gone),
    /// so one that takes a clean end before a message as "no more messages" still can.
    pub async fn read<T>(&mut self, mut decode: impl FnMut(&mut &[u8]) -> Result<T>) -> Result<T> {
        if self.start == self.buf.len() {
            self.fill()
                .await
                .map_err(|e| WireError::io("a message", e))?;
        }
        loop {
            let mut rest = &self.buf[self.start..];
            let before = rest.len();
            match decode(&mut rest) {
                Ok(v) => {
                    self.start += before - rest.len();
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(v);
                }
                Err(e) if e.is_eof() => {
                    if before >= self.max {
                        return Err(WireError::TooLong {
                            what: "one message",
                            len: before as u64,
                            limit: self.max as u64,
                        });
                    }
                    if self
                        .fill()
                        .await
                        .map_err(|e| WireError::io("a message", e))?
                        == 0
                    {
                        // The peer is gone: the decoder's own error says where it stopped.
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Read more from the peer into the buffer: at least one read, then whatever else has
    /// already arrived (so a peer sending a message in many small pieces does not make the
    /// decoder start over for each). How much came (0 at its end).
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut chunk = vec![0u8; CHUNK];
        // Read into a buffer of our own: a future dropped at this await leaves `buf` whole.
        let n = self.inner.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        let mut total = n;
        while n > 0 && total < CHUNK * 16 {
            let more = std::future::poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut chunk);
                match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                    // Nothing more now: decode what there is.
                    Poll::Pending => Poll::Ready(Ok(0)),
                    Poll::Ready(r) => Poll::Ready(r.map(|()| rb.filled().len())),
                }
            })
            .await?;
            if more == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..more]);
            total += more;
        }
        Ok(total)
    }

    /// The bytes read but not yet taken, and the reader.
    pub fn into_parts(mut self) -> (Vec<u8>, R) {
        self.buf.drain(..self.start);
        (self.buf, self.inner)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for MessageReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.start < this.buf.len() {
            let n = (this.buf.len() - this.start).min(out.remaining());
            out.put_slice(&this.buf[this.start..this.start + n]);
            this.start += n;
            if this.start == this.buf.len() {
                this.buf.clear();
                this.start = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

/// The reading side of a framed stream, async: the payload of the frames, then end of file at
/// the terminating empty frame, the underlying reader left just after it. Streamed, never
/// buffered, so no length limit is needed.
#[derive(Debug)]
pub struct FramedReader<R> {
    inner: R,
    /// Bytes of the next frame's length read so far.
    header: [u8; 8],
    got: usize,
    /// Bytes left in the current frame.
    left: u64,
    done: bool,
}

impl<R: AsyncRead + Unpin> FramedReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            header: [0; 8],
            got: 0,
            left: 0,
            done: false,
        }
    }

    /// Whether the terminating frame has been read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

fn eof(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, msg)
}

impl<R: AsyncRead + Unpin> AsyncRead for FramedReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.done || out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        while this.left == 0 {
            let mut hb = ReadBuf::new(&mut this.header[this.got..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut hb))?;
            let n = hb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(eof(
                    "the framed stream ends without its terminating frame",
                )));
            }
            this.got += n;
            if this.got < 8 {
                continue;
            }
            this.got = 0;
            this.left = u64::from_le_bytes(this.header);
            if this.left == 0 {
                this.done = true;
                return Poll::Ready(Ok(()));
            }
        }
        let want = this.left.min(out.remaining() as u64) as usize;
        let mut part = ReadBuf::new(out.initialize_unfilled_to(want));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        if n == 0 {
            return Poll::Ready(Err(eof("the framed stream ends inside a frame")));
        }
        out.advance(n);
        this.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Send all of `src` as a framed stream of frames up to `frame` bytes, then the terminating
/// frame; the payload's size.
pub async fn write_framed<R, W>(src: &mut R, w: &mut W, frame: usize) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; frame.max(1) + 8];
    let mut total = 0u64;
    loop {
        let n = src.read(&mut buf[8..]).await?;
        buf[..8].copy_from_slice(&(n as u64).to_le_bytes());
        w.write_all(&buf[..8 + n]).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use ferrix_format::StoreDir;
    use proptest::prelude::*;

    use super::*;
    use crate::serve::tests::{arb_request, arb_version};

    /// A peer that sends `step` bytes at a time, and is not ready every other time it is asked.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        wait: bool,
    }

    impl Trickle {
        fn new(data: Vec<u8>, step: usize) -> Self {
            Self {
                data,
                pos: 0,
                step: step.max(1),
                wait: false,
            }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.wait = !self.wait;
            if self.wait {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = self
                .step
                .min(out.remaining())
                .min(self.data.len() - self.pos);
            let pos = self.pos;
            out.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    use std::future::Future;

    proptest! {
        /// Any serve request, arriving a few bytes at a time, is what the sync codec reads
        /// from the same bytes; what follows the requests is read through the reader.
        #[test]
        fn messages_arrive_as_the_sync_codec_reads_them(
            reqs in prop::collection::vec(arb_request(), 1..4),
            version in arb_version(),
            step in 1usize..300,
            tail in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let sd = StoreDir::default();
            let limits = Limits::DEFAULT;
            let mut bytes = Vec::new();
            for r in &reqs {
                crate::serve::write_request(&mut bytes, version, &sd, r).unwrap();
            }
            let mut sync = &bytes[..];
            let mut want = Vec::new();
            for _ in &reqs {
                want.push(crate::serve::read_request(&mut sync, version, &sd, &limits));
            }
            bytes.extend_from_slice(&tail);
            let (got, rest) = run(async {
                let mut m = MessageReader::new(Trickle::new(bytes, step), &limits);
                let mut got = Vec::new();
                for _ in &reqs {
                    got.push(
                        m.read(|b| crate::serve::read_request(b, version, &sd, &limits))
                            .await,
                    );
                }
                let mut rest = Vec::new();
                m.read_to_end(&mut rest).await.unwrap();
                (got, rest)
            });
            for (g, w) in got.iter().zip(&want) {
                match (g, w) {
                    (Ok(g), Ok(w)) => prop_assert_eq!(g, w),
                    (Err(g), Err(w)) => prop_assert_eq!(g.to_string(), w.to_string()),
                    _ => prop_assert!(false, "async {g:?}, sync {w:?}"),
                }
            }
            if want.iter().all(|w| w.is_ok()) {
                prop_assert_eq!(rest, tail);
            }
        }

        /// Frames of any sizes give back the payload; what `write_framed` sends, the sync
        /// reader reads.
        #[test]
        fn framed_streams_round_trip(
            frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..50), 0..8),
            step in 1usize..20,
            frame in 1usize..40,
        ) {
            let mut bytes = Vec::new();
            for f in &frames {
                bytes.extend_from_slice(&(f.len() as u64).to_le_bytes());
                bytes.extend_from_slice(f);
            }
            bytes.extend_from_slice(&0u64.to_le_bytes());
            bytes.extend_from_slice(b"after");
            let payload: Vec<u8> = frames.concat();
            let (got, after, sent) = run(async {
                let mut r = FramedReader::new(Trickle::new(bytes, step));
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                assert!(r.is_done());
                let mut after = Vec::new();
                r.into_inner().read_to_end(&mut after).await.unwrap();
                let mut sent = Vec::new();
                write_framed(&mut &payload[..], &mut sent, frame).await.unwrap();
                (got, after, sent)
            });
            prop_assert_eq!(&got, &payload);
            prop_assert_eq!(after, b"after".to_vec());
            let mut back = Vec::new();
            crate::wire::FramedReader::new(&sent[..]).read_to_end(&mut back).unwrap();
            prop_assert_eq!(back, payload);
        }

        /// Primitives read as the sync ones do.
        #[test]
        fn primitives_match_the_sync_ones(
            n in any::<u64>(),
            s in "\\PC{0,40}",
            step in 1usize..10,
        ) {
            let mut bytes = Vec::new();
            crate::wire::write_u64(&mut bytes, n).unwrap();
            crate::wire::write_str(&mut bytes, &s).unwrap();
            let mut also = Vec::new();
            run(async {
                write_u64(&mut also, n).await.unwrap();
                write_bytes(&mut also, s.as_bytes()).await.unwrap();
            });
            prop_assert_eq!(&also, &bytes);
            let (m, t) = run(async {
                let mut r = Trickle::new(bytes, step);
                let m = read_u64(&mut r, "n").await.unwrap();
                let t = read_string(&mut r, &Limits::DEFAULT, "s").await.unwrap();
                (m, t)
            });
            prop_assert_eq!(m, n);
            prop_assert_eq!(t, s);
        }
    }

    /// A read given up half way (a timeout) loses nothing: the next one gets the message.
    #[test]
    fn a_dropped_read_loses_nothing() {
        let sd = StoreDir::default();
        let limits = Limits::DEFAULT;
        let v = crate::Version::new(2, 7);
        let req = crate::serve::Request::QueryValidPaths(crate::serve::QueryValidPaths {
            lock: false,
            substitute: true,
            paths: [sd
                .parse_path("/nix/store/00000000000000000000000000000000-x")
                .unwrap()]
            .into(),
        });
        let mut bytes = Vec::new();
        crate::serve::write_request(&mut bytes, v, &sd, &req).unwrap();
        let mut m = MessageReader::new(Trickle::new(bytes, 3), &limits);
        let mut given_up = 0;
        // Each attempt is polled once and dropped unless it finished.
        let got = loop {
            let mut attempt =
                std::pin::pin!(m.read(|b| crate::serve::read_request(b, v, &sd, &limits)));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match attempt.as_mut().poll(&mut cx) {
                Poll::Ready(r) => break r.unwrap(),
                Poll::Pending => given_up += 1,
            }
            assert!(given_up < 1000, "it never finished");
        };
        assert!(given_up > 0, "it finished at the first poll");
        assert_eq!(got, Some(req));
    }

    #[test]
    fn a_hostile_length_is_refused_before_anything_is_read() {
        let limits = Limits {
            max_string: 1000,
            max_items: 10,
        };
        let mut bytes = Vec::new();
        crate::wire::write_u64(&mut bytes, 1 << 40).unwrap();
        let err =
            run(async { read_bytes(&mut Trickle::new(bytes.clone(), 3), &limits, "a name").await })
                .unwrap_err();
        assert!(
            matches!(err, WireError::TooLong { what: "a name", len, limit: 1000 } if len == 1 << 40),
            "{err:?}"
        );
        // A message that never ends stops at the bound instead of buffering on.
        let endless = vec![0xffu8; 1 << 20];
        let err = run(async {
            let mut m = MessageReader::new(Trickle::new(endless, 4096), &limits);
            m.read(|b| {
                let mut v = vec![0u8; b.len() + 1];
                Read::read_exact(b, &mut v).map_err(|e| WireError::io("all", e))?;
                Ok(v)
            })
            .await
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                WireError::TooLong {
                    what: "one message",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_peer_that_stops_mid_message_is_the_decoders_error() {
        let sd = StoreDir::default();
        let limits = Limits::DEFAULT;
        let mut bytes = Vec::new();
        let req = crate::serve::Request::DumpStorePath(crate::serve::DumpStorePath {
            path: sd
                .parse_path("/nix/store/00000000000000000000000000000000-x")
                .unwrap(),
        });
        let v = crate::Version::new(2, 7);
        crate::serve::write_request(&mut bytes, v, &sd, &req).unwrap();
        bytes.truncate(bytes.len() - 5);
        let sync = crate::serve::read_request(&mut &bytes[..], v, &sd, &limits).unwrap_err();
        let err = run(async {
            let mut m = MessageReader::new(Trickle::new(bytes, 7), &limits);
            m.read(|b| crate::serve::read_request(b, v, &sd, &limits))
                .await
        })
        .unwrap_err();
        assert!(err.is_eof(), "{err:?}");
        assert_eq!(err.to_string(), sync.to_string());
        // Nothing at all: the sync codec's "no more requests".
        let none = run(async {
            let mut m = MessageReader::new(Trickle::new(Vec::new(), 1), &limits);
            m.read(|b| crate::serve::read_request(b, v, &sd, &limits))
                .await
        })
        .unwrap();
        assert!(none.is_none());
    }
}
