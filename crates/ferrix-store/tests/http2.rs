//! Narinfo queries over HTTPS: a server that speaks HTTP/2 gets many requests at once on
//! one connection, beyond `http-connections`; one that speaks only HTTP/1.1 gets at most
//! `http-connections` at a time. The server is started here on 127.0.0.1 with a
//! certificate made for the test, and counts connections and requests in flight.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrix_format::{Hash, NarInfo, StoreDir, StorePath};
use ferrix_store::binary_cache::{
    CacheSource, HttpClient, HttpSettings, Substituters, TlsRoots, Trust,
};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How long the server takes over each narinfo: long enough that requests overlap.
const DELAY: Duration = Duration::from_millis(150);

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    narinfos: AtomicUsize,
}

/// A binary cache over HTTPS on 127.0.0.1, offering HTTP/2 only or HTTP/1.1 only. Its
/// runtime, and so the server, stops when it is dropped.
struct Server {
    port: u16,
    counts: Arc<Counts>,
    _runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(http2: bool, narinfos: HashMap<String, String>, cert: &Cert) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], cert.key.clone_key())
        .unwrap();
        config.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        let narinfos = Arc::new(narinfos);
        let c = counts.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                c.connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, c, narinfos) = (acceptor.clone(), c.clone(), narinfos.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, c.clone(), narinfos.clone())
                    });
                    let io = TokioIo::new(tls);
                    if http2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .max_concurrent_streams(200)
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
        Self {
            port,
            counts,
            _runtime: runtime,
        }
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    c: Arc<Counts>,
    narinfos: Arc<HashMap<String, String>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    if path == "nix-cache-info" {
        return Ok(Response::new(Full::from("StoreDir: /nix/store\n")));
    }
    let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    c.most_in_flight.fetch_max(now, Ordering::SeqCst);
    c.narinfos.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(DELAY).await;
    c.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(match narinfos.get(&path) {
        Some(text) => Response::new(Full::from(text.clone())),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::default())
            .unwrap(),
    })
}

/// A self-signed certificate for 127.0.0.1, and where its PEM is for the client to trust.
struct Cert {
    der: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    pem: PathBuf,
}

fn cert(dir: &Path) -> Cert {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let pem = dir.join("cert.pem");
    std::fs::write(&pem, made.cert.pem()).unwrap();
    Cert {
        der: made.cert.der().clone(),
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into()),
        pem,
    }
}

/// `n` made-up paths, and a narinfo for each, by the file name it is asked for.
fn paths(n: usize) -> (Vec<StorePath>, HashMap<String, String>) {
    let sd = StoreDir::default();
    let mut narinfos = HashMap::new();
    let paths: Vec<StorePath> = (0..n)
        .map(|i| {
            let mut digest = [0u8; 20];
            digest.copy_from_slice(&Hash::sha256(format!("path {i}").as_bytes()).digest()[..20]);
            let p = StorePath::from_digest(&digest, &format!("p{i}")).unwrap();
            let info = NarInfo {
                store_path: p.clone(),
                url: format!("nar/{i}.nar"),
                compression: "none".into(),
                file_hash: None,
                file_size: None,
                nar_hash: Hash::sha256(format!("nar {i}").as_bytes()),
                nar_size: 100,
                references: Default::default(),
                deriver: None,
                system: None,
                sigs: vec![],
                ca: None,
            };
            narinfos.insert(format!("{}.narinfo", p.hash_part()), info.to_text(&sd));
            p
        })
        .collect();
    (paths, narinfos)
}

/// Ask a server offering HTTP/2 (or only HTTP/1.1) about 48 paths with
/// `http-connections = 2`: what it counted, and how long it took.
fn ask(http2: bool) -> (Arc<Counts>, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let cert = cert(dir.path());
    let (paths, narinfos) = paths(48);
    let server = Server::start(http2, narinfos, &cert);
    let client = HttpClient::new(HttpSettings {
        connections: 2,
        roots: TlsRoots::File(cert.pem.clone()),
        ..HttpSettings::default()
    })
    .unwrap();
    let trust = Trust {
        keys: vec![],
        require_sigs: false,
    };
    let uri = format!("https://127.0.0.1:{}", server.port);
    let cache = CacheSource::open(&uri, &StoreDir::default(), trust, Some(&client), None).unwrap();
    let subs = Substituters::new(vec![cache], 2);
    let started = Instant::now();
    let q = subs.query(&StoreDir::default(), &paths);
    let took = started.elapsed();
    assert!(q.problems.is_empty(), "{:?}", q.problems);
    assert_eq!(q.found.len(), paths.len());
    for p in &paths {
        assert_eq!(q.found[p].info.store_path, *p);
    }
    (server.counts.clone(), took)
}

#[test]
fn narinfo_queries_share_one_http2_connection_beyond_http_connections() {
    let (c, took) = ask(true);
    assert_eq!(c.narinfos.load(Ordering::SeqCst), 48);
    // One connection carried every request (the client's pool shares it)...
    assert_eq!(c.connections.load(Ordering::SeqCst), 1);
    // ...and far more than two were answered at once.
    let most = c.most_in_flight.load(Ordering::SeqCst);
    assert!(most >= 16, "at most {most} requests in flight");
    // Two at a time would take 24 delays; all but the first two waves overlap.
    assert!(took < DELAY * 8, "took {took:?}");
}

#[test]
fn over_http1_no_more_than_http_connections_are_in_flight() {
    let (c, took) = ask(false);
    assert_eq!(c.narinfos.load(Ordering::SeqCst), 48);
    let most = c.most_in_flight.load(Ordering::SeqCst);
    assert!(
        most <= 2,
        "{most} requests in flight with http-connections = 2"
    );
    assert!(c.connections.load(Ordering::SeqCst) <= 3);
    assert!(took >= DELAY * 24, "took {took:?}");
}
