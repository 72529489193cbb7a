//! A store served as an HTTP binary cache (`ferrix serve-cache`): `nix-cache-info`,
//! `<hash>.narinfo` and `nar/…` for GET and HEAD, with single byte ranges, over HTTP/1.1
//! keep-alive. What it serves comes from a [`CacheBackend`]; NARs are produced on a
//! blocking thread and streamed, never held whole in memory.

use std::convert::Infallible;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Writes a NAR into the given writer.
pub type NarWriter = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + Send>;

/// A NAR the cache offers: its exact length, and how to produce it.
pub struct Nar {
    pub len: u64,
    pub write: NarWriter,
}

impl std::fmt::Debug for Nar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nar").field("len", &self.len).finish()
    }
}

/// What the server serves. Calls may block (they run on blocking threads).
pub trait CacheBackend: Send + Sync + 'static {
    /// The text of `nix-cache-info`.
    fn cache_info(&self) -> String;
    /// The narinfo text of the path whose hash part is `hash_part`, if valid.
    fn narinfo(&self, hash_part: &str) -> Option<String>;
    /// The NAR at `nar/<file>` (as a narinfo's `URL` names it), if it is still what the
    /// narinfo said.
    fn nar(&self, file: &str) -> Option<Nar>;
}

type Body = BoxBody<Bytes, io::Error>;

/// Serve `backend` on `listener` until the process ends.
pub async fn serve<B: CacheBackend>(listener: TcpListener, backend: Arc<B>) -> io::Result<()> {
    loop {
        let (stream, _peer): (_, SocketAddr) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let backend = backend.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(backend.clone(), req));
            // A client that goes away mid-response is its own business.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

fn text(body: String, content_type: &'static str, head: bool) -> Response<Body> {
    let len = body.len();
    let mut r = if head {
        empty(StatusCode::OK)
    } else {
        Response::new(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
    };
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(CONTENT_LENGTH, len.into());
    r
}

/// `bytes=A-B`, `bytes=A-` or `bytes=-N` of a body of `len` bytes: the inclusive range,
/// `Err` when it cannot be satisfied, `None` for a form not understood (served whole).
fn range(h: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let r = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 || len == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len - 1)
        }
        (a, "") => (a.parse().ok()?, len.saturating_sub(1)),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(len.saturating_sub(1)),
        ),
    };
    Some(if r.0 > r.1 || r.0 >= len {
        Err(())
    } else {
        Ok(r)
    })
}

async fn handle<B: CacheBackend>(
    backend: Arc<B>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return Ok(empty(StatusCode::METHOD_NOT_ALLOWED));
    }
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let range_h = req
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let b = backend.clone();
    let found = tokio::task::spawn_blocking(move || {
        if path == "nix-cache-info" {
            Found::Text(b.cache_info(), "text/x-nix-cache-info")
        } else if let Some(hash) = path.strip_suffix(".narinfo") {
            match b.narinfo(hash) {
                Some(t) => Found::Text(t, "text/x-nix-narinfo"),
                None => Found::None,
            }
        } else if let Some(file) = path.strip_prefix("nar/") {
            match b.nar(file) {
                Some(n) => Found::Nar(n),
                None => Found::None,
            }
        } else {
            Found::None
        }
    })
    .await
    .unwrap_or(Found::None);
    Ok(match found {
        Found::None => empty(StatusCode::NOT_FOUND),
        Found::Text(t, ct) => text(t, ct, head),
        Found::Nar(nar) => nar_response(nar, range_h.as_deref(), head),
    })
}

enum Found {
    None,
    Text(String, &'static str),
    Nar(Nar),
}

fn nar_response(nar: Nar, range_h: Option<&str>, head: bool) -> Response<Body> {
    let len = nar.len;
    let (status, start, end) = match range_h.and_then(|h| range(h, len)) {
        Some(Err(())) => {
            let mut r = empty(StatusCode::RANGE_NOT_SATISFIABLE);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(CONTENT_RANGE, v);
            }
            return r;
        }
        Some(Ok((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b + 1),
        None => (StatusCode::OK, 0, len),
    };
    let mut r = if head {
        empty(status)
    } else {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(8);
        tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter {
                tx,
                skip: start,
                left: end - start,
                buf: Vec::with_capacity(CHUNK),
            };
            let res = (nar.write)(&mut w);
            match res {
                Ok(()) => {
                    let _ = w.flush();
                }
                // The client is gone: nothing to tell anyone.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                Err(e) => {
                    let _ = w.tx.blocking_send(Err(e));
                }
            }
        });
        let stream = tokio_stream(rx);
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        *r.status_mut() = status;
        r
    };
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-nix-nar"),
    );
    h.insert(CONTENT_LENGTH, (end - start).into());
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
            h.insert(CONTENT_RANGE, v);
        }
    }
    r
}

/// Frames from a channel, as a stream.
fn tokio_stream(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

const CHUNK: usize = 256 << 10;

/// The blocking end of a body: cuts the NAR to the range asked, in large frames.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Frame<Bytes>, io::Error>>,
    skip: u64,
    left: u64,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        if self.skip > 0 {
            let s = (self.skip as usize).min(data.len());
            self.skip -= s as u64;
            data = &data[s..];
        }
        let take = (self.left as usize).min(data.len());
        self.left -= take as u64;
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(Frame::data(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(range("bytes=95-200", 100), Some(Ok((95, 99))));
        assert_eq!(range("bytes=100-", 100), Some(Err(())));
        assert_eq!(range("bytes=5-4", 100), Some(Err(())));
        assert_eq!(range("bytes=0-1,5-6", 100), None);
        assert_eq!(range("items=0-1", 100), None);
    }

    #[test]
    fn the_writer_cuts_the_range() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut w = ChannelWriter {
            tx,
            skip: 3,
            left: 4,
            buf: Vec::new(),
        };
        w.write_all(b"ab").unwrap();
        w.write_all(b"cdefghij").unwrap();
        w.flush().unwrap();
        drop(w);
        let mut got = Vec::new();
        while let Ok(Ok(f)) = rx.try_recv() {
            got.extend_from_slice(&f.into_data().unwrap());
        }
        assert_eq!(got, b"defg");
    }
}
