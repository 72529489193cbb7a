//! The HTTP client binary caches are read through: one pooled client (keep-alive, HTTP/2
//! where the server offers it, redirects), Nix's timeouts, and retries of transient failures
//! with jittered exponential back-off that honours `Retry-After`.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;

use super::CacheError;

/// How caches are reached over HTTP (Nix's settings of the same names).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `http-connections`: connections per host kept open (and NARs fetched at once).
    pub connections: usize,
    /// `connect-timeout`: `None` for the system's.
    pub connect_timeout: Option<Duration>,
    /// `stalled-download-timeout`: a transfer that moves no byte for this long fails.
    pub stalled_timeout: Duration,
    /// `download-attempts`: tries of a request that fails transiently.
    pub attempts: u32,
    /// The first back-off; doubled at each further attempt, with jitter.
    pub base_delay: Duration,
    /// Longest `Retry-After` honoured; a server asking for longer is a failure.
    pub max_retry_after: Duration,
    /// Whom `https://` servers must be certified by.
    pub roots: TlsRoots,
}

/// The certificate authorities `https://` servers are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRoots {
    /// The system's (its verifier, which reads every certificate it has).
    System,
    /// The certificates of one PEM bundle (Nix's `ssl-cert-file`): one file read.
    File(PathBuf),
    /// None: for runs that reach no `https://` server, which then pay nothing for
    /// certificates.
    None,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connections: 25,
            connect_timeout: None,
            stalled_timeout: Duration::from_secs(300),
            attempts: 5,
            base_delay: Duration::from_millis(250),
            max_retry_after: Duration::from_secs(60),
            roots: TlsRoots::System,
        }
    }
}

/// A shared client: cheap to clone, reused by every cache and thread.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: Client,
    settings: HttpSettings,
}

/// A response body being read, with its length when the server gave one.
pub struct Body {
    pub reader: Box<dyn Read + Send>,
    pub len: Option<u64>,
    /// It came over HTTP/2: the connection carries many requests at once.
    pub multiplexed: bool,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("len", &self.len)
            .field("multiplexed", &self.multiplexed)
            .finish()
    }
}

impl HttpClient {
    /// Must be called off any async runtime's worker threads (as every use of it is).
    pub fn new(settings: HttpSettings) -> Result<Self, CacheError> {
        let mut b = Client::builder()
            .user_agent(concat!("ferrix/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(settings.connections.max(1))
            .timeout(settings.stalled_timeout)
            .redirect(reqwest::redirect::Policy::limited(10));
        if let Some(t) = settings.connect_timeout {
            b = b.connect_timeout(t);
        }
        match &settings.roots {
            TlsRoots::System => {}
            TlsRoots::File(f) => {
                let pem = std::fs::read(f).map_err(|source| CacheError::Io {
                    what: "read the certificates in",
                    path: f.clone(),
                    source,
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .ok()
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| CacheError::Certificates { file: f.clone() })?;
                b = b.tls_certs_only(certs);
            }
            TlsRoots::None => b = b.tls_certs_only([]),
        }
        let client = b
            .build()
            .map_err(|source| CacheError::HttpClient { source })?;
        Ok(Self { client, settings })
    }

    /// A client for `urls` alone, made on a thread of its own (it must not start on an
    /// async runtime's threads): without an `https://` URL among them, no certificates are
    /// read.
    pub fn for_urls(settings: &HttpSettings, urls: &[&str]) -> Result<Self, CacheError> {
        let mut settings = settings.clone();
        if !urls.iter().any(|u| u.starts_with("https://")) {
            settings.roots = TlsRoots::None;
        }
        std::thread::spawn(move || Self::new(settings))
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// GET `url`: `None` when the server says it has no such file (404, 403 or 410, as
    /// Nix reads them). Connection failures, timeouts, 429 and 5xx are tried again.
    pub fn get(&self, url: &str) -> Result<Option<Body>, CacheError> {
        self.get_tries(url, self.settings.attempts)
    }

    /// [`Self::get`] with at most `tries` attempts.
    pub fn get_tries(&self, url: &str, tries: u32) -> Result<Option<Body>, CacheError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= tries.max(1);
            let res = self.client.get(url).send();
            let wait = match res {
                Ok(r) => match r.status() {
                    s if s.is_success() => {
                        let len = r.content_length();
                        let multiplexed = r.version() == reqwest::Version::HTTP_2;
                        return Ok(Some(Body {
                            multiplexed,
                            reader: Box::new(Reading {
                                inner: r,
                                url: url.to_owned(),
                            }),
                            len,
                        }));
                    }
                    StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE => {
                        return Ok(None)
                    }
                    s if transient(s) && !last => match retry_after(&r) {
                        Some(d) if d > self.settings.max_retry_after => {
                            return Err(CacheError::HttpStatus {
                                url: url.to_owned(),
                                status: s.as_u16(),
                                why: format!("it asks to wait {} s", d.as_secs()),
                            })
                        }
                        Some(d) => d,
                        None => self.backoff(attempt),
                    },
                    s => {
                        return Err(CacheError::HttpStatus {
                            url: url.to_owned(),
                            status: s.as_u16(),
                            why: if transient(s) {
                                format!("after {attempt} attempts")
                            } else {
                                "not a transient failure".to_owned()
                            },
                        })
                    }
                },
                Err(source) if !last && (source.is_connect() || source.is_timeout()) => {
                    self.backoff(attempt)
                }
                Err(source) => {
                    return Err(CacheError::Http {
                        url: url.to_owned(),
                        source,
                    })
                }
            };
            std::thread::sleep(wait);
        }
    }

    /// `base · 2^(attempt-1)`, scaled by a random factor in [0.5, 1.5) so that many clients
    /// refused at once do not come back at once.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.base_delay * 2u32.saturating_pow(attempt.saturating_sub(1));
        base.mul_f64(0.5 + jitter())
    }
}

fn transient(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

/// `Retry-After` in seconds (the HTTP-date form is read as "soon": the back-off decides).
fn retry_after(r: &Response) -> Option<Duration> {
    let v = r
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A number in [0, 1) that differs between calls and processes; no cryptographic quality
/// is needed to spread retries.
fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ seed;
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, thiserror::Error)]
#[error("reading '{url}': {source}")]
struct BodyError {
    url: String,
    #[source]
    source: std::io::Error,
}

/// A body whose read errors name the URL (a stall, a dropped connection).
struct Reading {
    inner: Response,
    url: String,
}

impl Read for Reading {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|source| {
            std::io::Error::new(
                source.kind(),
                BodyError {
                    url: self.url.clone(),
                    source,
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_file_that_is_missing_or_holds_none_is_named() {
        let d = tempfile::tempdir().unwrap();
        let with = |roots| HttpSettings {
            roots,
            ..HttpSettings::default()
        };
        let missing = d.path().join("missing.pem");
        match HttpClient::new(with(TlsRoots::File(missing.clone()))) {
            Err(CacheError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        let junk = d.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        match HttpClient::new(with(TlsRoots::File(junk.clone()))) {
            Err(e @ CacheError::Certificates { .. }) => {
                assert!(e.to_string().contains(&*junk.to_string_lossy()), "{e}")
            }
            other => panic!("{other:?}"),
        }
        // No roots at all is a client still, for plain HTTP.
        HttpClient::new(with(TlsRoots::None)).unwrap();
    }

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let xs: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let distinct: std::collections::BTreeSet<u64> = xs.iter().map(|x| x.to_bits()).collect();
        assert!(distinct.len() > 990);
    }

    #[test]
    fn backoff_doubles_within_jitter() {
        let c = HttpClient::new(HttpSettings::default()).unwrap();
        for attempt in 1..=4 {
            let d = c.backoff(attempt).as_secs_f64();
            let base = 0.25 * f64::from(1u32 << (attempt - 1));
            assert!(d >= base * 0.5 && d < base * 1.5, "attempt {attempt}: {d}");
        }
    }
}
