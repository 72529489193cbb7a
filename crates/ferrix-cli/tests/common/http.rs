//! A small HTTP/1.1 server on 127.0.0.1 for tests: serves a directory as a binary cache,
//! and misbehaves on request for chosen files (statuses, truncated or corrupted bodies,
//! stalls, `Retry-After`). Stopped when dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How a file is served wrongly.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Announce the full length but send only this many bytes, then close.
    Truncate(usize),
    /// Flip a byte in the middle of the body.
    Corrupt,
    /// Send the headers, then nothing for this long.
    Stall(Duration),
    /// Answer 429 with `Retry-After: secs` this many times, then serve normally.
    RetryAfter { times: usize, secs: u64 },
    /// Replace the body with these bytes.
    Body(Vec<u8>),
}

pub struct Server {
    pub port: u16,
    stop: Arc<AtomicBool>,
    faults: Arc<Mutex<HashMap<String, Fault>>>,
    /// Requests served, by path.
    pub hits: Arc<Mutex<Vec<String>>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Serve `root` on a free port of 127.0.0.1.
    pub fn start(root: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let faults: Arc<Mutex<HashMap<String, Fault>>> = Arc::default();
        let hits: Arc<Mutex<Vec<String>>> = Arc::default();
        let (s, f, h) = (stop.clone(), faults.clone(), hits.clone());
        let handle = thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (root, f, h, s) = (root.clone(), f.clone(), h.clone(), s.clone());
                thread::spawn(move || serve(conn, &root, &f, &h, &s));
            }
        });
        Self {
            port,
            stop,
            faults,
            hits,
            handle: Some(handle),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Misbehave on `path` (e.g. `/nar/….nar.xz`) from now on.
    pub fn fault(&self, path: &str, f: Fault) {
        self.faults.lock().unwrap().insert(path.to_owned(), f);
    }

    pub fn clear_faults(&self) {
        self.faults.lock().unwrap().clear();
    }

    pub fn hits_of(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| *h == path)
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

static CONNS: AtomicUsize = AtomicUsize::new(0);

fn serve(
    conn: TcpStream,
    root: &std::path::Path,
    faults: &Mutex<HashMap<String, Fault>>,
    hits: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    CONNS.fetch_add(1, Ordering::Relaxed);
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || stop.load(Ordering::SeqCst) {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts.next().unwrap_or("/").to_owned();
        // Headers, ignored.
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        hits.lock().unwrap().push(path.clone());
        let fault = {
            let mut f = faults.lock().unwrap();
            match f.get_mut(&path) {
                Some(Fault::RetryAfter { times, secs }) if *times > 0 => {
                    *times -= 1;
                    Some(Fault::RetryAfter {
                        times: 1,
                        secs: *secs,
                    })
                }
                Some(Fault::RetryAfter { .. }) => None,
                other => other.cloned(),
            }
        };
        let file = root.join(path.trim_start_matches('/'));
        let body = std::fs::read(&file).ok();
        let head = method == "HEAD";
        let res = match (fault, body) {
            (Some(Fault::Status(s)), _) => respond(&mut out, s, &[], &[], head),
            (Some(Fault::RetryAfter { secs, .. }), _) => respond(
                &mut out,
                429,
                &[("Retry-After", secs.to_string())],
                &[],
                head,
            ),
            (_, None) => respond(&mut out, 404, &[], b"not found", head),
            (Some(Fault::Body(b)), Some(_)) => respond(&mut out, 200, &[], &b, head),
            (Some(Fault::Corrupt), Some(mut b)) => {
                let mid = b.len() / 2;
                b[mid] ^= 0x55;
                respond(&mut out, 200, &[], &b, head)
            }
            (Some(Fault::Truncate(n)), Some(b)) => {
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                );
                let _ = out.write_all(&b[..n.min(b.len())]);
                let _ = out.flush();
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
            (Some(Fault::Stall(d)), Some(b)) => {
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                );
                let _ = out.flush();
                thread::sleep(d);
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
            (None, Some(b)) => respond(&mut out, 200, &[], &b, head),
        };
        if res.is_err() {
            return;
        }
    }
}

fn respond(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut h = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        h += &format!("{k}: {v}\r\n");
    }
    h += "\r\n";
    out.write_all(h.as_bytes())?;
    if !head {
        out.write_all(body)?;
    }
    out.flush()
}

/// Read what is left of a stream (for tests that talk to the server by hand).
pub fn read_all(mut s: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}
