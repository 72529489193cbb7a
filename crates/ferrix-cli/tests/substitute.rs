//! Substitution: Ferrix fetching what real Nix 2.8 put in a binary cache, from a directory
//! and over HTTP (a server the test starts on 127.0.0.1), instead of building it; and every
//! way a cache can fail or lie, each with a clear error (or a build, with `--fallback`) and
//! nothing half-written left in the store.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::http::{Fault, Server};
use common::{ok, Links, Nix};

const EXPR: &str = r#"
let
  mk = name: script: derivation { inherit name; system = builtins.currentSystem;
    builder = "/bin/sh"; args = ["-c" script]; };
  a1 = mk "a1" "echo a1 > $out";
  a2 = mk "a2" "echo ${a1} > $out";
  b1 = mk "b1" "echo b1 > $out";
  b2 = mk "b2" "echo ${b1} > $out";
  # Large enough for the blocks of a multi-threaded xz encoder (24 MiB each).
  big = mk "big" "/bin/mkdir $out; /usr/bin/yes ferrix | /usr/bin/head -c 50000000 > $out/yes; /usr/bin/seq 1 3000000 > $out/seq";
in {
  inherit a1 a2 b1 b2 big;
  top = mk "top" "/bin/mkdir $out; echo ${a2} > $out/a; echo ${b2} > $out/b";
}
"#;

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap().trim().to_owned()
}

/// A cache written by real Nix (`nix copy --to file://…`, signed): its directory, public
/// key and the closure it holds.
struct Cache {
    dir: tempfile::TempDir,
    pk: String,
    /// The closure copied into it.
    paths: Vec<String>,
}

/// An isolated store (real Nix's layout) where Ferrix substitutes, with the derivations
/// of `EXPR` instantiated by real Nix.
struct Consumer {
    nix: Nix,
    links: Links,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Consumer {
    fn new() -> Self {
        let nix = Nix::new().expect("real Nix is installed");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.nix");
        fs::write(&file, EXPR).unwrap();
        Self {
            nix,
            links: Links::new(),
            file,
            _dir: dir,
        }
    }

    fn drv(&self, attr: &str) -> String {
        text(ok(self
            .nix
            .cmd("nix-instantiate")
            .arg(&self.file)
            .args(["-A", attr])))
    }

    fn out_path(&self, drv: &str) -> String {
        text(ok(self.nix.cmd("nix-store").args(["-q", "--outputs", drv])))
    }

    /// Ferrix under one of its names (`ferrix` itself, `nix-store`, …).
    fn ferrix(&self, name: &str) -> Command {
        let mut c = if name == "ferrix" {
            Command::new(common::ferrix_exe())
        } else {
            self.links.cmd(name)
        };
        self.nix.isolate(&mut c);
        c
    }

    fn valid(&self, p: &str) -> bool {
        self.nix
            .cmd("nix-store")
            .args(["--check-validity", p])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// Every entry of the store is a valid path or a lock: nothing half-written.
    fn assert_clean(&self) {
        let dir = self.nix.store_dir();
        let mut entries = Vec::new();
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".lock") || name == ".links" {
                continue;
            }
            entries.push(format!("{dir}/{name}"));
        }
        let out = self
            .nix
            .cmd("nix-store")
            .arg("--check-validity")
            .args(&entries)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "left in the store: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Caches are for one store directory; the consumer must have the producer's. Both are
/// isolated real-Nix roots with different directories, so the consumer's cache is made
/// by its own real Nix: build, copy to the cache, then delete the outputs again.
fn cache_in(c: &Consumer, attr: &str, compression: &str) -> Cache {
    let dir = tempfile::tempdir().unwrap();
    let out = text(ok(c.nix.cmd("nix-build").arg(&c.file).args([
        "-A",
        attr,
        "--no-out-link",
    ])));
    let paths: Vec<String> = text(ok(c.nix.cmd("nix-store").args(["-qR", &out])))
        .lines()
        .map(str::to_owned)
        .collect();
    ok(c.nix
        .cmd("nix-store")
        .arg("--generate-binary-cache-key")
        .arg("test-cache-1")
        .arg(dir.path().join("sk"))
        .arg(dir.path().join("pk")));
    ok(c.nix
        .cmd("nix")
        .args(["copy", "--to"])
        .arg(format!(
            "file://{}?compression={compression}&secret-key={}",
            dir.path().join("cache").display(),
            dir.path().join("sk").display()
        ))
        .arg(&out));
    ok(c.nix.cmd("nix-store").arg("--delete").args(&paths));
    let pk = fs::read_to_string(dir.path().join("pk"))
        .unwrap()
        .trim()
        .to_owned();
    Cache { dir, pk, paths }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn realise(c: &Consumer, what: &str, url: &str, pk: &str, extra: &[&str]) -> Output {
    c.ferrix("nix-store")
        .args(["-r", what])
        .args(["--option", "substituters", url])
        .args(["--option", "trusted-public-keys", pk])
        .args(["--option", "download-attempts", "2"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_closure_nix_wrote_is_substituted_from_a_directory_and_over_http() {
    for compression in ["xz", "zstd"] {
        for http in [false, true] {
            let c = Consumer::new();
            let cache = cache_in(&c, "a2", compression);
            let server = Server::start(cache.dir.path().join("cache"));
            let url = if http {
                server.url()
            } else {
                format!("file://{}", cache.dir.path().join("cache").display())
            };
            let drv = c.drv("a2");
            let out = realise(&c, &drv, &url, &cache.pk, &[]);
            let err = stderr(&out);
            assert!(out.status.success(), "{compression} {http}: {err}");
            assert!(err.contains("copying path"), "{err}");
            assert!(!err.contains("building"), "{err}");
            assert!(err.contains("these 2 paths will be fetched"), "{err}");
            for p in &cache.paths {
                assert!(c.valid(p), "{p}");
            }
            // Real Nix finds the contents to be what the database says.
            ok(c.nix
                .cmd("nix-store")
                .args(["--verify", "--check-contents"]));
            let a2 = c.out_path(&drv);
            let a1 = fs::read_to_string(&a2).unwrap();
            assert_eq!(fs::read_to_string(a1.trim()).unwrap(), "a1\n");
            // The signature came along.
            let info = text(ok(c.nix.cmd("nix").args(["path-info", "--sigs", &a2])));
            assert!(info.contains("test-cache-1:"), "{info}");
            if http {
                assert!(server.hits_of("/nix-cache-info") >= 1);
            }
        }
    }
}

/// The number of blocks the index of the `.xz` file `f` lists (one stream).
fn xz_blocks(f: &Path) -> u64 {
    let z = fs::read(f).unwrap();
    let footer = &z[z.len() - 12..];
    assert_eq!(&footer[10..], b"YZ", "{}", f.display());
    let backward = u32::from_le_bytes(footer[4..8].try_into().unwrap()) as usize;
    let index = &z[z.len() - 12 - (backward + 1) * 4..];
    assert_eq!(index[0], 0, "index indicator");
    // The number of records, a little-endian base-128 number.
    let (mut n, mut shift) = (0u64, 0);
    for b in &index[1..] {
        n |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    n
}

#[test]
fn an_xz_nar_in_blocks_from_parallel_compression_is_substituted() {
    let c = Consumer::new();
    let cache = cache_in(&c, "big", "xz&parallel-compression=true");
    let nars: Vec<_> = fs::read_dir(cache.dir.path().join("cache/nar"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(nars.len(), 1, "{nars:?}");
    assert!(xz_blocks(&nars[0]) >= 3, "{}", xz_blocks(&nars[0]));
    let big = c.out_path(&c.drv("big"));
    let url = format!("file://{}", cache.dir.path().join("cache").display());
    let out = realise(&c, &big, &url, &cache.pk, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(c.valid(&big));
    ok(c.nix
        .cmd("nix-store")
        .args(["--verify", "--check-contents"]));
    let seq = fs::read_to_string(format!("{big}/seq")).unwrap();
    assert_eq!(seq.lines().last(), Some("3000000"));
    assert_eq!(
        fs::metadata(format!("{big}/yes")).unwrap().len(),
        50_000_000
    );
    // A block damaged in the middle: refused, and nothing is left in the store.
    ok(c.nix.cmd("nix-store").args(["--delete", &big]));
    let mut z = fs::read(&nars[0]).unwrap();
    let mid = z.len() / 2;
    z[mid] ^= 0x40;
    fs::write(&nars[0], &z).unwrap();
    let out = realise(&c, &big, &url, &cache.pk, &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&big), "{err}");
    assert!(!c.valid(&big));
    c.assert_clean();
}

#[test]
fn an_output_path_is_substituted_by_nix_store_r() {
    let c = Consumer::new();
    let cache = cache_in(&c, "a2", "zstd");
    let server = Server::start(cache.dir.path().join("cache"));
    let a2 = c.out_path(&c.drv("a2"));
    let out = realise(&c, &a2, &server.url(), &cache.pk, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), a2);
    assert!(c.valid(&a2));
    // Not in any cache: a clear error.
    let b2 = c.out_path(&c.drv("b2"));
    let out = realise(&c, &b2, &server.url(), &cache.pk, &[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&b2) && err.contains("no substituter can fetch it"),
        "{err}"
    );
}

#[test]
fn half_the_graph_in_a_cache_fetches_that_half_and_builds_the_rest() {
    let c = Consumer::new();
    let cache = cache_in(&c, "a2", "zstd");
    let server = Server::start(cache.dir.path().join("cache"));
    let top = c.drv("top");
    let out = c
        .ferrix("ferrix")
        .args(["build", &top, "--no-link", "--print-out-paths"])
        .args(["--option", "substituters", &server.url()])
        .args(["--option", "trusted-public-keys", &cache.pk])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    for (name, fetched) in [("a1", true), ("a2", true), ("b1", false), ("b2", false)] {
        let drv = c.drv(name);
        let built = err.contains(&format!("building '{drv}'"));
        let copied = err.contains(&format!("copying path '{}'", c.out_path(&drv)));
        assert_eq!((copied, built), (fetched, !fetched), "{name}: {err}");
    }
    assert!(err.contains(&format!("building '{top}'")), "{err}");
    ok(c.nix
        .cmd("nix-store")
        .args(["--verify", "--check-contents"]));
}

/// The narinfo and NAR URLs of `path` in a cache directory.
fn urls_of(cache: &Path, path: &str) -> (String, String, String) {
    let hash = Path::new(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('-')
        .next()
        .unwrap()
        .to_owned();
    let narinfo = fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    (format!("/{hash}.narinfo"), format!("/{url}"), narinfo)
}

#[test]
fn a_failing_or_lying_cache_is_named_and_leaves_the_store_clean() {
    let c = Consumer::new();
    let cache = cache_in(&c, "a2", "zstd");
    let dir = cache.dir.path().join("cache");
    let server = Server::start(dir.clone());
    let drv = c.drv("a2");
    let a2 = c.out_path(&drv);
    let (narinfo_url, nar_url, narinfo) = urls_of(&dir, &a2);
    let field = |k: &str, v: &str| -> Vec<u8> {
        narinfo
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{k}: ")) {
                    format!("{k}: {v}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect::<String>()
            .into_bytes()
    };
    let other_hash = "sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0";
    let no_sig = |require: bool| -> Vec<&'static str> {
        if require {
            vec![]
        } else {
            vec!["--option", "require-sigs", "false"]
        }
    };
    // (what, url, fault, require-sigs, what the error must say)
    let cases: Vec<(&str, String, Fault, bool, &str)> = vec![
        ("corrupt NAR", nar_url.clone(), Fault::Corrupt, true, ""),
        (
            "truncated NAR",
            nar_url.clone(),
            Fault::Truncate(100),
            true,
            "",
        ),
        (
            "NAR 404",
            nar_url.clone(),
            Fault::Status(404),
            true,
            "missing",
        ),
        ("NAR 500", nar_url.clone(), Fault::Status(500), true, "500"),
        (
            "stalled NAR",
            nar_url.clone(),
            Fault::Stall(Duration::from_secs(4)),
            true,
            "",
        ),
        (
            "wrong NarHash",
            narinfo_url.clone(),
            Fault::Body(field("NarHash", other_hash)),
            false,
            "hash mismatch",
        ),
        (
            "wrong NarSize",
            narinfo_url.clone(),
            Fault::Body(field("NarSize", "12345")),
            false,
            "size",
        ),
    ];
    for (what, url, fault, require, says) in cases {
        server.clear_faults();
        server.fault(&url, fault.clone());
        let mut extra = no_sig(require);
        extra.extend(["--option", "stalled-download-timeout", "1"]);
        let out = realise(&c, &drv, &server.url(), &cache.pk, &extra);
        let err = stderr(&out);
        assert!(!out.status.success(), "{what}: {err}");
        assert!(
            err.contains(&a2) && err.contains(&server.url()) && err.contains(says),
            "{what}: {err}"
        );
        assert!(err.contains("--fallback"), "{what}: {err}");
        assert!(!c.valid(&a2), "{what}");
        c.assert_clean();
        // With --fallback, it is built instead.
        extra.push("--fallback");
        let out = realise(&c, &drv, &server.url(), &cache.pk, &extra);
        let err = stderr(&out);
        assert!(out.status.success(), "{what} --fallback: {err}");
        assert!(err.contains(&format!("building '{drv}'")), "{what}: {err}");
        // In the same run: the Engine planned the build when the fetch failed, so nothing
        // was planned or announced a second time.
        assert_eq!(
            err.matches("building it instead").count(),
            1,
            "{what}: {err}"
        );
        assert_eq!(err.matches("will be fetched").count(), 1, "{what}: {err}");
        assert!(!err.contains("will be built"), "{what}: {err}");
        assert!(c.valid(&a2));
        ok(c.nix.cmd("nix-store").args(["--delete", &a2]));
    }

    // A narinfo that is not signed by a trusted key, or not at all: the cache is not
    // believed, and the path is built (no cache claimed it).
    let sig_line = narinfo.lines().find(|l| l.starts_with("Sig: ")).unwrap();
    // Another signature of the right length: one base64 digit changed.
    let mut bad_sig = sig_line.to_owned().into_bytes();
    let at = bad_sig.len() - 10;
    bad_sig[at] = if bad_sig[at] == b'A' { b'B' } else { b'A' };
    let bad_sig = String::from_utf8(bad_sig).unwrap();
    for (what, body) in [
        (
            "bad signature",
            narinfo.replace(sig_line, &bad_sig).into_bytes(),
        ),
        (
            "no signature",
            narinfo.replace(&format!("{sig_line}\n"), "").into_bytes(),
        ),
    ] {
        server.clear_faults();
        server.fault(&narinfo_url, Fault::Body(body));
        let out = realise(&c, &drv, &server.url(), &cache.pk, &[]);
        let err = stderr(&out);
        assert!(out.status.success(), "{what}: {err}");
        assert!(
            err.contains("not signed by any of the keys"),
            "{what}: {err}"
        );
        assert!(err.contains(&format!("building '{drv}'")), "{what}: {err}");
        ok(c.nix.cmd("nix-store").args(["--delete", &a2]));
    }

    // Asked to come back later (twice), it is fetched once the server serves it.
    server.clear_faults();
    server.fault(&nar_url, Fault::RetryAfter { times: 2, secs: 1 });
    let before = server.hits_of(&nar_url);
    let out = realise(
        &c,
        &drv,
        &server.url(),
        &cache.pk,
        &["--option", "download-attempts", "3"],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "429: {err}");
    assert!(err.contains("copying path"), "{err}");
    assert_eq!(server.hits_of(&nar_url) - before, 3);
    assert!(c.valid(&a2));
    c.assert_clean();
}

#[test]
fn narinfos_are_remembered_between_runs_in_the_disk_cache_nix_shares() {
    let c = Consumer::new();
    let cache = cache_in(&c, "a2", "zstd");
    let dir = cache.dir.path().join("cache");
    let server = Server::start(dir.clone());
    let (a2_drv, b1_drv) = (c.drv("a2"), c.drv("b1"));
    let (a1, a2) = (c.out_path(&c.drv("a1")), c.out_path(&a2_drv));
    let b1 = c.out_path(&b1_drv);
    let (a1_info, a1_nar, _) = urls_of(&dir, &a1);
    let (a2_info, _, _) = urls_of(&dir, &a2);
    let b1_info = format!(
        "/{}.narinfo",
        b1[b1.rfind('/').unwrap() + 1..].split('-').next().unwrap()
    );
    let hits = |p: &str| server.hits_of(p);

    // The first run asks the cache about itself and about each path.
    let out = realise(&c, &a2_drv, &server.url(), &cache.pk, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = realise(&c, &b1_drv, &server.url(), &cache.pk, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(hits("/nix-cache-info"), 1);
    assert_eq!((hits(&a1_info), hits(&a2_info), hits(&b1_info)), (1, 1, 1));
    let db = c.nix.home().join(".cache/nix/binary-cache-v6.sqlite");
    assert!(db.is_file(), "{}", db.display());

    // The next runs ask nothing the disk cache knows, what the cache has or lacks; only
    // the NARs are fetched again.
    ok(c.nix.cmd("nix-store").args(["--delete", &a2, &a1, &b1]));
    let out = realise(&c, &a2_drv, &server.url(), &cache.pk, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = realise(&c, &b1_drv, &server.url(), &cache.pk, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(hits("/nix-cache-info"), 1);
    assert_eq!((hits(&a1_info), hits(&a2_info), hits(&b1_info)), (1, 1, 1));
    assert_eq!(hits(&a1_nar), 2);

    // With a TTL of zero, the cache is asked again.
    ok(c.nix.cmd("nix-store").args(["--delete", &b1]));
    let zero = [
        "--option",
        "narinfo-cache-negative-ttl",
        "0",
        "--option",
        "narinfo-cache-positive-ttl",
        "0",
    ];
    let out = realise(&c, &b1_drv, &server.url(), &cache.pk, &zero);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(hits(&b1_info), 2);

    // `ferrix build --refresh` too, and about the cache itself.
    ok(c.nix.cmd("nix-store").args(["--delete", &b1]));
    let out = c
        .ferrix("ferrix")
        .args(["build", "--no-link", "--refresh", &b1_drv])
        .args(["--option", "substituters", &server.url()])
        .args(["--option", "trusted-public-keys", &cache.pk])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(hits(&b1_info), 3);
    assert_eq!(hits("/nix-cache-info"), 2);

    // Real Nix 2.8 reads what Ferrix remembered: with the narinfo now failing, it still
    // knows the path, without asking.
    server.fault(&a2_info, Fault::Status(500));
    let json = text(ok(c.nix.cmd("nix").args([
        "path-info",
        "--json",
        "--store",
        &server.url(),
        &a2,
    ])));
    assert!(json.contains("\"narHash\""), "{json}");
    assert_eq!(hits(&a2_info), 1);
    server.clear_faults();

    // And Ferrix reads what real Nix remembered: a path only Nix asked about is fetched
    // while its narinfo fails. (A cache of its own, under another URL.)
    let cache2 = cache_in(&c, "b2", "xz");
    let dir2 = cache2.dir.path().join("cache");
    let server2 = Server::start(dir2.clone());
    let b2 = c.out_path(&c.drv("b2"));
    let (b2_info, _, _) = urls_of(&dir2, &b2);
    ok(c.nix
        .cmd("nix")
        .args(["path-info", "--store", &server2.url(), &b2]));
    // (Nix 2.8 asks with HEAD, then GET.)
    let asked = server2.hits_of(&b2_info);
    assert!(asked >= 1);
    server2.fault(&b2_info, Fault::Status(500));
    let out = realise(&c, &b2, &server2.url(), &cache2.pk, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(c.valid(&b2));
    assert_eq!(server2.hits_of(&b2_info), asked);
    // What the cache said of itself was taken from Nix's row too.
    assert_eq!(server2.hits_of("/nix-cache-info"), 1);
}

#[test]
fn a_terminal_shows_fetches_with_their_bytes() {
    let c = Consumer::new();
    let cache = cache_in(&c, "a2", "zstd");
    let drv = c.drv("a2");
    let url = format!("file://{}", cache.dir.path().join("cache").display());
    let mut cmd = Command::new("script");
    c.nix.isolate(&mut cmd);
    let out = cmd
        .env("TERM", "xterm")
        .args(["-qec"])
        .arg(format!(
            "{} build --no-link {drv} --option substituters {url} --option trusted-public-keys {}; echo exit=$?",
            common::ferrix_exe().display(),
            cache.pk
        ))
        .arg("/dev/null")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("exit=0"), "{text:?}");
    // Nothing is built; both paths are counted as copied, with their NAR bytes.
    assert!(
        text.contains("[0/0 built, 0/2 copied (0.0/0.0 MiB"),
        "{text:?}"
    );
    assert!(text.contains("[0/0 built, 2/2 copied ("), "{text:?}");
    assert!(text.contains("copying path '"), "{text:?}");
}

#[test]
fn an_unreachable_cache_is_skipped_with_a_warning() {
    let c = Consumer::new();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let drv = c.drv("b1");
    let out = realise(
        &c,
        &drv,
        &format!("http://127.0.0.1:{port}"),
        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
        &[],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("ignoring substituter"), "{err}");
    assert!(err.contains(&format!("building '{drv}'")), "{err}");
}

/// `ferrix serve-cache` in the background, killed (by its pid) when dropped.
struct ServeCache {
    child: std::process::Child,
    url: String,
}

impl ServeCache {
    /// `ferrix --store STORE serve-cache`, signing with `key`.
    fn start(c: &Consumer, store: &str, key: &Path, extra: &[&str]) -> Self {
        let mut cmd = c.ferrix("ferrix");
        cmd.args(["--store", store, "serve-cache", "--secret-key-file"])
            .arg(key)
            .args(extra);
        Self::spawn(cmd)
    }

    /// `ferrix serve-cache --dir DIR`: a cache directory served as it is.
    fn dir(c: &Consumer, dir: &Path) -> Self {
        let mut cmd = c.ferrix("ferrix");
        cmd.args(["serve-cache", "--dir"]).arg(dir);
        Self::spawn(cmd)
    }

    /// Start `cmd` on a free port of 127.0.0.1; its URL is the end of its first line.
    fn spawn(mut cmd: Command) -> Self {
        use std::io::BufRead;
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        Self { child, url }
    }
}

impl Drop for ServeCache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 request: the status line, the headers and the body.
fn http_get(url: &str, path: &str, extra: &str) -> (String, String, Vec<u8>) {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap();
    (
        status.to_owned(),
        headers.to_lowercase(),
        all[end + 4..].to_vec(),
    )
}

/// What the `serve-cache` tests serve: a2's closure in a store of its own (with the same
/// store directory, its files under another root, so that the consumer's can lose it), and
/// a signing key.
struct Served {
    a2: String,
    keys: tempfile::TempDir,
    pk: String,
    store: String,
    _root: tempfile::TempDir,
}

fn served(c: &Consumer) -> Served {
    let keys = tempfile::tempdir().unwrap();
    ok(c.nix
        .cmd("nix-store")
        .arg("--generate-binary-cache-key")
        .arg("served-1")
        .arg(keys.path().join("sk"))
        .arg(keys.path().join("pk")));
    let pk = fs::read_to_string(keys.path().join("pk"))
        .unwrap()
        .trim()
        .to_owned();
    let a2 = text(ok(c.nix.cmd("nix-build").arg(&c.file).args([
        "-A",
        "a2",
        "--no-out-link",
    ])));
    // The server serves a copy of the closure kept in a store of its own with the same
    // store directory (its files under another root), so that this one can lose it.
    let served = tempfile::tempdir().unwrap();
    let served_store = format!("local?root={}", served.path().display());
    let closure: Vec<String> = text(ok(c.nix.cmd("nix-store").args(["-qR", &a2])))
        .lines()
        .map(str::to_owned)
        .collect();
    let export = ok(c.nix.cmd("nix-store").arg("--export").args(&closure));
    let out = common::piped(
        {
            let mut i = c.ferrix("nix-store");
            i.args(["--store", &served_store, "--import"]);
            i
        },
        &export,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    Served {
        a2,
        keys,
        pk,
        store: served_store,
        _root: served,
    }
}

#[test]
fn real_nix_and_ferrix_substitute_from_ferrix_serve_cache() {
    let c = Consumer::new();
    let Served {
        a2,
        keys,
        pk,
        store: served_store,
        _root,
    } = served(&c);
    let server = ServeCache::start(&c, &served_store, &keys.path().join("sk"), &[]);

    // The narinfo, signed as it is served; the NAR whole and in part, as the store dumps it.
    let hash = Path::new(&a2).file_name().unwrap().to_string_lossy()[..32].to_owned();
    let (status, _, body) = http_get(&server.url, &format!("/{hash}.narinfo"), "");
    assert!(status.contains("200"), "{status}");
    let narinfo = String::from_utf8(body).unwrap();
    assert!(narinfo.contains("Sig: served-1:"), "{narinfo}");
    let nar_url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    let nar = ok(c.nix.cmd("nix-store").args(["--dump", &a2]));
    let (status, _, body) = http_get(&server.url, &format!("/{nar_url}"), "");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, nar);
    let (status, headers, body) =
        http_get(&server.url, &format!("/{nar_url}"), "Range: bytes=5-14\r\n");
    assert!(status.contains("206"), "{status}");
    assert!(
        headers.contains(&format!("content-range: bytes 5-14/{}", nar.len())),
        "{headers}"
    );
    assert_eq!(body, &nar[5..15]);
    let (status, _, _) = http_get(&server.url, "/0000000000000000000000000000000a.narinfo", "");
    assert!(status.contains("404"), "{status}");

    // Real Nix, then Ferrix, substitute the closure into their store from it.
    let closure: Vec<String> = text(ok(c.nix.cmd("nix-store").args(["-qR", &a2])))
        .lines()
        .map(str::to_owned)
        .collect();
    for who in ["nix", "ferrix"] {
        ok(c.nix.cmd("nix-store").arg("--delete").args(&closure));
        let mut cmd = if who == "nix" {
            c.nix.cmd("nix-store")
        } else {
            c.ferrix("nix-store")
        };
        let out = cmd
            .args(["-r", &a2])
            .args(["--option", "substituters", &server.url])
            .args(["--option", "trusted-public-keys", &pk])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(out.status.success(), "{who}: {err}");
        assert!(err.contains("copying path"), "{who}: {err}");
        ok(c.nix.cmd("nix-store").arg("--verify-path").args(&closure));
        let info = text(ok(c.nix.cmd("nix").args(["path-info", "--sigs", &a2])));
        assert!(info.contains("served-1:"), "{who}: {info}");
    }
}

#[test]
fn a_cache_directory_is_served_as_it_is() {
    let c = Consumer::new();
    let cache = cache_in(&c, "a2", "xz");
    let dir = cache.dir.path().join("cache");
    let server = ServeCache::dir(&c, &dir);
    let a2 = c.out_path(&c.drv("a2"));
    let (_, nar_url, narinfo) = urls_of(&dir, &a2);
    let hash = &a2[a2.rfind('/').unwrap() + 1..][..32];
    // Byte for byte what the directory holds.
    let (status, _, body) = http_get(&server.url, &format!("/{hash}.narinfo"), "");
    assert!(status.contains("200"), "{status}");
    assert_eq!(String::from_utf8(body).unwrap(), narinfo);
    let (status, _, body) = http_get(&server.url, &nar_url, "");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, fs::read(dir.join(&nar_url[1..])).unwrap());
    // Nothing outside it.
    for p in ["/nar/../nix-cache-info", "/nar/.hidden", "/../sk.narinfo"] {
        let (status, _, _) = http_get(&server.url, p, "");
        assert!(status.contains("404"), "{p}: {status}");
    }
    // Real Nix and Ferrix substitute from it, with the cache's signature.
    let out = realise(&c, &a2, &server.url, &cache.pk, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info = text(ok(c.nix.cmd("nix").args(["path-info", "--sigs", &a2])));
    assert!(info.contains("test-cache-1:"), "{info}");
    ok(c.nix.cmd("nix-store").args(["--delete", &a2]));
    ok(c.nix.cmd("nix-store").args([
        "-r",
        &a2,
        "--option",
        "substituters",
        &server.url,
        "--option",
        "trusted-public-keys",
        &cache.pk,
    ]));
    assert!(c.valid(&a2));
}

#[test]
fn serve_cache_compresses_each_nar_once_and_sends_it_as_a_file() {
    let c = Consumer::new();
    let s = served(&c);
    let kept = tempfile::tempdir().unwrap();
    let cache_dir = kept.path().to_str().unwrap();
    let server = ServeCache::start(
        &c,
        &s.store,
        &s.keys.path().join("sk"),
        &["--compression", "zstd", "--cache-dir", cache_dir],
    );
    let hash = Path::new(&s.a2).file_name().unwrap().to_string_lossy()[..32].to_owned();
    let (status, _, body) = http_get(&server.url, &format!("/{hash}.narinfo"), "");
    assert!(status.contains("200"), "{status}");
    let narinfo = String::from_utf8(body).unwrap();
    assert!(narinfo.contains("Compression: zstd\n"), "{narinfo}");
    assert!(narinfo.contains("Sig: served-1:"), "{narinfo}");
    let nar_url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    // Compressed once, kept, and sent as the file it is (ranges and all).
    let kept_nar = kept.path().join(&nar_url);
    let on_disk = fs::read(&kept_nar).unwrap();
    let made = fs::metadata(&kept_nar).unwrap().modified().unwrap();
    let (status, _, body) = http_get(&server.url, &format!("/{nar_url}"), "");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, on_disk);
    let (status, _, body) = http_get(&server.url, &format!("/{nar_url}"), "Range: bytes=2-9\r\n");
    assert!(status.contains("206"), "{status}");
    assert_eq!(body, &on_disk[2..10]);
    let (_, _, again) = http_get(&server.url, &format!("/{hash}.narinfo"), "");
    assert_eq!(String::from_utf8(again).unwrap(), narinfo);
    assert_eq!(fs::metadata(&kept_nar).unwrap().modified().unwrap(), made);

    // Real Nix, then Ferrix, substitute the closure from it.
    let closure: Vec<String> = text(ok(c.nix.cmd("nix-store").args(["-qR", &s.a2])))
        .lines()
        .map(str::to_owned)
        .collect();
    for who in ["nix", "ferrix"] {
        ok(c.nix.cmd("nix-store").arg("--delete").args(&closure));
        let mut cmd = if who == "nix" {
            c.nix.cmd("nix-store")
        } else {
            c.ferrix("nix-store")
        };
        let out = cmd
            .args(["-r", &s.a2])
            .args(["--option", "substituters", &server.url])
            .args(["--option", "trusted-public-keys", &s.pk])
            .output()
            .unwrap();
        assert!(out.status.success(), "{who}: {}", stderr(&out));
        for p in &closure {
            assert!(c.valid(p), "{who}: {p}");
        }
    }
    ok(c.nix
        .cmd("nix-store")
        .args(["--verify", "--check-contents"]));
}

#[test]
fn path_info_reads_a_binary_cache_as_nix_does() {
    let c = Consumer::new();
    let cache = cache_in(&c, "a2", "xz");
    let dir = cache.dir.path().join("cache");
    let server = Server::start(dir.clone());
    let a2 = c.out_path(&c.drv("a2"));
    let a1 = c.out_path(&c.drv("a1"));
    for url in [format!("file://{}", dir.display()), server.url()] {
        // Text, with the closure and sizes, as real Nix prints it.
        let args = |extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = vec!["path-info".into(), "--store".into(), url.clone()];
            v.extend(extra.iter().map(|s| s.to_string()));
            v.push(a2.clone());
            v
        };
        for extra in [&["-r"][..], &["-r", "-s"], &["--json"], &["-S"]] {
            let ours = text(ok(c.ferrix("ferrix").args(args(extra))));
            let nix = text(ok(c.nix.cmd("nix").args(args(extra))));
            if extra == ["--json"] {
                // The same fields (real Nix adds its own, e.g. "valid").
                for key in [
                    "\"narHash\"",
                    "\"narSize\"",
                    "\"references\"",
                    "\"url\"",
                    "\"signatures\"",
                ] {
                    assert!(
                        ours.contains(key) && nix.contains(key),
                        "{key}: {ours} / {nix}"
                    );
                }
                assert!(ours.contains(&a1), "{ours}");
            } else {
                assert_eq!(ours, nix, "{url} {extra:?}");
            }
        }
        // Not in the cache: an error naming the path.
        let b2 = c.out_path(&c.drv("b2"));
        let out = c
            .ferrix("ferrix")
            .args(["path-info", "--store", &url, &b2])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains(&format!("path '{b2}' is not valid")),
            "{}",
            stderr(&out)
        );
    }
    // Other commands refuse a cache as their store, clearly.
    let out = c
        .ferrix("ferrix")
        .args(["build", "--store", &server.url(), &a2])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is a binary cache"),
        "{}",
        stderr(&out)
    );
}
