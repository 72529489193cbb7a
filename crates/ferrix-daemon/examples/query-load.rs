//! A load client for the daemon benchmark (`bench/daemon.sh`): `N` validity queries of one
//! path over `C` connections at once, each a plain worker-protocol session that waits for
//! every answer, as Nix's clients do. Prints the queries per second.
//!
//! `cargo run --release -p ferrix-daemon --example query-load -- SOCKET PATH N C`

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

const MAGIC_1: u64 = 0x6E69_7863;
const MAGIC_2: u64 = 0x6478_696F;
const STDERR_LAST: u64 = 0x616C_7473;
/// What Nix 2.8 speaks.
const VERSION: u64 = (1 << 8) | 34;
const IS_VALID_PATH: u64 = 1;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Session {
    r: BufReader<UnixStream>,
    w: BufWriter<UnixStream>,
}

impl Session {
    fn open(socket: &str) -> Result<Self> {
        let s = UnixStream::connect(socket)?;
        let mut c = Session {
            r: BufReader::new(s.try_clone()?),
            w: BufWriter::new(s),
        };
        c.put(MAGIC_1)?;
        c.w.flush()?;
        if c.get()? != MAGIC_2 {
            return Err("not a worker-protocol daemon".into());
        }
        let server = c.get()?;
        let v = (server & 0xFFFF).min(VERSION);
        c.put(VERSION)?;
        c.put(0)?; // no CPU affinity
        c.put(0)?; // reserveSpace
        c.w.flush()?;
        if v >= (1 << 8) | 33 {
            c.string()?; // the daemon's version
        }
        if v >= (1 << 8) | 35 {
            c.get()?; // trust
        }
        c.messages()?;
        Ok(c)
    }

    fn put(&mut self, n: u64) -> Result<()> {
        Ok(self.w.write_all(&n.to_le_bytes())?)
    }

    fn get(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self) -> Result<Vec<u8>> {
        let n = usize::try_from(self.get()?)?;
        if n > 1 << 20 {
            return Err("string too long".into());
        }
        let mut b = vec![0u8; n.div_ceil(8) * 8];
        self.r.read_exact(&mut b)?;
        b.truncate(n);
        Ok(b)
    }

    /// Until the daemon's last message before a reply.
    fn messages(&mut self) -> Result<()> {
        match self.get()? {
            STDERR_LAST => Ok(()),
            m => Err(format!("unexpected message {m:#x} from the daemon").into()),
        }
    }

    fn is_valid(&mut self, request: &[u8]) -> Result<bool> {
        self.w.write_all(request)?;
        self.w.flush()?;
        self.messages()?;
        Ok(self.get()? != 0)
    }
}

/// One IsValidPath request, framed once.
fn request(path: &str) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&IS_VALID_PATH.to_le_bytes());
    r.extend_from_slice(&(path.len() as u64).to_le_bytes());
    r.extend_from_slice(path.as_bytes());
    r.resize(r.len().div_ceil(8) * 8, 0);
    r
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, path, n, conns] = &args[..] else {
        return Err("usage: query-load SOCKET PATH QUERIES CONNECTIONS".into());
    };
    let (n, conns): (u64, u64) = (n.parse()?, conns.parse()?);
    let per = n / conns;
    let req = request(path);
    // Connected first, so that only the queries are timed.
    let sessions = (0..conns)
        .map(|_| Session::open(socket))
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let threads: Vec<_> = sessions
        .into_iter()
        .map(|mut s| {
            let req = req.clone();
            std::thread::spawn(move || -> Result<()> {
                for _ in 0..per {
                    if !s.is_valid(&req)? {
                        return Err("the path is not valid".into());
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a client thread panicked")??;
    }
    let secs = start.elapsed().as_secs_f64();
    writeln!(std::io::stdout(), "{:.0}", (per * conns) as f64 / secs)?;
    Ok(())
}
