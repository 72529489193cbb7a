//! Writing binary caches: the vectors' cache written by real Nix 2.8 is reproduced byte for
//! byte from the same paths (uncompressed), and the compressed caches hold the same NARs
//! under the same metadata.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use ferrix_format::signature::SecretKey;
use ferrix_format::{NarInfo, StoreDir, StorePath};
use ferrix_store::binary_cache::{
    BinaryCache, CacheSource, Compression, FileCache, Substituters, Trust,
};
use ferrix_store::path_info::ValidPathInfo;
use ferrix_store::{copy_paths, CopyError, CopyOptions, LocalStore, LocalStoreConfig};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/narinfo")
}

/// A store holding every path of the vectors' caches, imported from `cache-none` with the
/// metadata of their narinfos; the narinfos by path.
fn store_from_vectors(root: &Path) -> (LocalStore, BTreeMap<StorePath, NarInfo>) {
    let sd = StoreDir::default();
    let store = LocalStore::open(LocalStoreConfig::with_root(root, sd.clone())).unwrap();
    let mut infos = BTreeMap::new();
    for e in fs::read_dir(vectors().join("cache-none"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".narinfo") {
            let ni = NarInfo::parse(&sd, &fs::read_to_string(e.path()).unwrap()).unwrap();
            infos.insert(ni.store_path.clone(), ni);
        }
    }
    assert!(infos.len() >= 10, "{}", infos.len());
    // References first.
    let mut left: Vec<&NarInfo> = infos.values().collect();
    while !left.is_empty() {
        let (ready, rest): (Vec<&NarInfo>, Vec<&NarInfo>) = left.into_iter().partition(|ni| {
            ni.references
                .iter()
                .all(|r| *r == ni.store_path || store.is_valid_path(r).unwrap())
        });
        assert!(!ready.is_empty(), "a cycle in the vectors");
        for ni in ready {
            let mut info = ValidPathInfo::new(ni.store_path.clone(), ni.nar_hash, ni.nar_size);
            info.references = ni.references.clone();
            info.deriver = ni.deriver.clone();
            info.ca = ni.ca;
            info.sigs = ni.sigs.iter().map(|s| s.to_string()).collect();
            let nar = fs::read(vectors().join("cache-none").join(&ni.url)).unwrap();
            store.add_nar(&info, &nar[..]).unwrap();
        }
        left = rest;
    }
    (store, infos)
}

/// Copy the closure of `paths` from the store into a cache, through the one copy routine.
fn copy_to_cache(
    store: &LocalStore,
    cache: FileCache,
    paths: &[StorePath],
) -> Result<Vec<StorePath>, CopyError> {
    let uri = format!("file://{}", cache.dir.display());
    let dest = BinaryCache::new(uri, store.store_dir().clone(), None, Some(cache));
    let paths = paths.iter().cloned().collect();
    copy_paths(store, &dest, &paths, &CopyOptions::default())
}

/// Copy the closure of `paths` from a cache into the store.
fn copy_from_cache(
    store: &LocalStore,
    subs: Substituters,
    paths: &std::collections::BTreeSet<StorePath>,
) -> Result<Vec<StorePath>, CopyError> {
    let uri = subs.caches()[0].name.clone();
    let src = BinaryCache::new(uri, store.store_dir().clone(), Some(subs), None);
    copy_paths(&src, store, paths, &CopyOptions::default())
}

fn key() -> SecretKey {
    fs::read_to_string(vectors().join("keys/test-1.secret"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn cache(dir: &Path, compression: Compression) -> FileCache {
    FileCache {
        dir: dir.to_owned(),
        compression,
        level: None,
        keys: vec![key()],
        threads: 3,
    }
}

#[test]
fn an_uncompressed_cache_is_the_one_nix_writes() {
    let root = tempfile::tempdir().unwrap();
    let (store, infos) = store_from_vectors(root.path());
    let out = tempfile::tempdir().unwrap();
    let paths: Vec<StorePath> = infos.keys().cloned().collect();
    let written = copy_to_cache(&store, cache(out.path(), Compression::None), &paths).unwrap();
    assert_eq!(written.len(), infos.len());
    let want = vectors().join("cache-none");
    for p in infos.keys() {
        let name = format!("{}.narinfo", p.hash_part());
        assert_eq!(
            fs::read_to_string(out.path().join(&name)).unwrap(),
            fs::read_to_string(want.join(&name)).unwrap(),
            "{name}"
        );
        let url = &infos[p].url;
        assert_eq!(
            fs::read(out.path().join(url)).unwrap(),
            fs::read(want.join(url)).unwrap()
        );
    }
    assert_eq!(
        fs::read_to_string(out.path().join("nix-cache-info")).unwrap(),
        fs::read_to_string(want.join("nix-cache-info")).unwrap()
    );
    // A second copy has nothing left to write.
    let again = copy_to_cache(&store, cache(out.path(), Compression::None), &paths).unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn compressed_caches_hold_the_same_nars_and_metadata() {
    let root = tempfile::tempdir().unwrap();
    let (store, infos) = store_from_vectors(root.path());
    let paths: Vec<StorePath> = infos.keys().cloned().collect();
    let sd = StoreDir::default();
    for c in [
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Brotli,
    ] {
        let out = tempfile::tempdir().unwrap();
        copy_to_cache(&store, cache(out.path(), c), &paths).unwrap();
        for (p, want) in &infos {
            let text =
                fs::read_to_string(out.path().join(format!("{}.narinfo", p.hash_part()))).unwrap();
            let got = NarInfo::parse(&sd, &text).unwrap();
            assert_eq!(got.compression, c.name());
            assert!(got.url.ends_with(c.extension()), "{}", got.url);
            // Everything but the file is as Nix wrote it, signature included.
            assert_eq!(
                (
                    &got.nar_hash,
                    got.nar_size,
                    &got.references,
                    &got.deriver,
                    &got.ca
                ),
                (
                    &want.nar_hash,
                    want.nar_size,
                    &want.references,
                    &want.deriver,
                    &want.ca
                )
            );
            assert_eq!(got.sigs, want.sigs, "{}", c.name());
            let file = fs::read(out.path().join(&got.url)).unwrap();
            assert_eq!(Some(file.len() as u64), got.file_size);
            assert_eq!(got.file_hash, Some(ferrix_format::Hash::sha256(&file)));
            let mut nar = Vec::new();
            match c {
                Compression::Xz => liblzma_read(&file, &mut nar),
                Compression::Zstd => {
                    zstd_read(&file, &mut nar);
                }
                Compression::Bzip2 => {
                    bzip2::read::BzDecoder::new(&file[..])
                        .read_to_end(&mut nar)
                        .unwrap();
                }
                Compression::Brotli => {
                    brotli::Decompressor::new(&file[..], 4096)
                        .read_to_end(&mut nar)
                        .unwrap();
                }
                Compression::None => unreachable!(),
            }
            assert_eq!(
                nar,
                fs::read(vectors().join("cache-none").join(&want.url)).unwrap()
            );
        }
    }
}

fn liblzma_read(file: &[u8], out: &mut Vec<u8>) {
    liblzma::read::XzDecoder::new(file)
        .read_to_end(out)
        .unwrap();
}

fn zstd_read(file: &[u8], out: &mut Vec<u8>) {
    zstd::stream::read::Decoder::new(file)
        .unwrap()
        .read_to_end(out)
        .unwrap();
}

/// A path whose files changed after it was registered is not published.
#[test]
fn a_modified_path_is_refused_and_nothing_is_left() {
    let root = tempfile::tempdir().unwrap();
    let (store, infos) = store_from_vectors(root.path());
    let p = infos
        .keys()
        .find(|p| p.to_string().ends_with("vec-ni-hello"))
        .unwrap()
        .clone();
    let real = store.real_path(&p);
    let mut perm = fs::metadata(&real).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&real, perm).unwrap();
    fs::write(&real, "tampered\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = copy_to_cache(
        &store,
        cache(out.path(), Compression::Zstd),
        std::slice::from_ref(&p),
    )
    .unwrap_err();
    let err = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(
        err.contains("vec-ni-hello") && err.contains("was it modified?"),
        "{err}"
    );
    assert!(!out
        .path()
        .join(format!("{}.narinfo", p.hash_part()))
        .exists());
    let left: Vec<_> = fs::read_dir(out.path().join("nar"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A copy that fails on its last path removes the NARs it wrote before, and writes no
/// narinfo: the cache holds nothing that no narinfo names.
#[test]
fn a_failed_copy_leaves_no_nar_behind() {
    let root = tempfile::tempdir().unwrap();
    let (store, infos) = store_from_vectors(root.path());
    let all: std::collections::BTreeSet<StorePath> = infos.keys().cloned().collect();
    let order = store.topo_sort(&all).unwrap();
    let last = order.last().unwrap();
    let real = store.real_path(last);
    let file = if real.is_dir() {
        fs::read_dir(&real)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.is_file())
            .expect("a file to modify")
    } else {
        real.clone()
    };
    let mut perm = fs::metadata(&file).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&file, perm).unwrap();
    fs::write(&file, "tampered\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut c = cache(out.path(), Compression::Zstd);
    // One NAR at a time, in order: every other one is written before the last fails.
    c.threads = 1;
    let err = copy_to_cache(&store, c, &order).unwrap_err();
    assert!(err.to_string().contains(last.name()), "{err}");
    let left: Vec<_> = fs::read_dir(out.path().join("nar"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let narinfos: Vec<_> = fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".narinfo"))
        .collect();
    assert!(narinfos.is_empty(), "{narinfos:?}");
}

fn trusted() -> Vec<ferrix_format::signature::PublicKey> {
    vec![fs::read_to_string(vectors().join("keys/test-1.public"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()]
}

fn source(dir: &Path) -> Substituters {
    let trust = Trust {
        keys: trusted(),
        require_sigs: true,
    };
    let uri = format!("file://{}", dir.display());
    let cache = CacheSource::open(&uri, &StoreDir::default(), trust, None, None).unwrap();
    Substituters::new(vec![cache], 4)
}

fn fresh_store(root: &Path) -> LocalStore {
    LocalStore::open(LocalStoreConfig::with_root(root, StoreDir::default())).unwrap()
}

/// The caches real Nix wrote (xz, zstd, none) are read whole into an empty store, with
/// the metadata and signatures they carry.
#[test]
fn the_caches_nix_wrote_are_read_back() {
    let sd = StoreDir::default();
    for c in ["cache-none", "cache-xz", "cache-zstd"] {
        let root = tempfile::tempdir().unwrap();
        let store = fresh_store(root.path());
        let dir = vectors().join(c);
        let mut wanted = std::collections::BTreeSet::new();
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".narinfo") {
                let ni = NarInfo::parse(&sd, &fs::read_to_string(e.path()).unwrap()).unwrap();
                wanted.insert(ni.store_path);
            }
        }
        let got = copy_from_cache(&store, source(&dir), &wanted).unwrap();
        assert_eq!(got.len(), wanted.len(), "{c}");
        for p in &wanted {
            let info = store.path_info(p).unwrap();
            assert!(!info.ultimate);
            assert!(
                info.sigs.iter().any(|s| s.starts_with("test-1:")),
                "{c}: {p}"
            );
            // What is in the store hashes to what the cache said.
            let mut nar = Vec::new();
            store.nar_from_path(p, &mut nar).unwrap();
            assert_eq!(ferrix_format::Hash::sha256(&nar), info.nar_hash);
        }
        // Nothing is left to copy.
        assert!(copy_from_cache(&store, source(&dir), &wanted)
            .unwrap()
            .is_empty());
    }
}

/// A cache that lies (a signature that does not verify, an untrusted key, a NarHash or
/// NarSize that is not the NAR's) is refused, naming the cache and the path, and the
/// path does not enter the store.
#[test]
fn lying_narinfos_are_refused() {
    let cases: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(vectors().join("cases.json")).unwrap()).unwrap();
    let sd = StoreDir::default();
    for case in cases["invalid"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let p: StorePath = sd.parse_path(case["store_path"].as_str().unwrap()).unwrap();
        // The uncompressed cache with this one narinfo replaced.
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&vectors().join("cache-none"), dir.path());
        fs::copy(
            vectors().join(case["file"].as_str().unwrap()),
            dir.path().join(format!("{}.narinfo", p.hash_part())),
        )
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        let store = fresh_store(root.path());
        let err = copy_from_cache(&store, source(dir.path()), &[p.clone()].into()).expect_err(name);
        let msg = format!(
            "{err}: {:?}",
            std::error::Error::source(&err).map(|s| s.to_string())
        );
        assert!(
            msg.contains(&sd.display(&p)) && msg.contains("file://"),
            "{name}: {msg}"
        );
        match name {
            "wrong-narhash-validly-signed" => assert!(msg.contains("hash mismatch"), "{msg}"),
            _ => assert!(
                msg.contains("not signed by any of the keys"),
                "{name}: {msg}"
            ),
        }
        assert!(!store.is_valid_path(&p).unwrap(), "{name}");
        // Nothing staged is left behind either.
        let left: Vec<String> = fs::read_dir(root.path().join("nix/store"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("staging"))
            .collect();
        assert!(left.is_empty(), "{name}: {left:?}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// What Ferrix writes, Ferrix reads back, in every compression.
#[test]
fn written_caches_read_back_in_every_compression() {
    let root = tempfile::tempdir().unwrap();
    let (store, infos) = store_from_vectors(root.path());
    let paths: Vec<StorePath> = infos.keys().cloned().collect();
    for c in [
        Compression::None,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Brotli,
    ] {
        let out = tempfile::tempdir().unwrap();
        copy_to_cache(&store, cache(out.path(), c), &paths).unwrap();
        let other = tempfile::tempdir().unwrap();
        let fresh = fresh_store(other.path());
        let wanted = paths.iter().cloned().collect();
        let got = copy_from_cache(&fresh, source(out.path()), &wanted).unwrap();
        assert_eq!(got.len(), paths.len(), "{}", c.name());
    }
}

/// A reference the destination has already is never asked of the cache: a cache that lacks
/// it (or would not be trusted for it) still gives the rest.
#[test]
fn references_the_destination_has_are_not_asked_of_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let (store, infos) = store_from_vectors(root.path());
    let (top, reference) = infos
        .values()
        .find_map(|ni| {
            ni.references
                .iter()
                .find(|r| **r != ni.store_path)
                .map(|r| (ni.store_path.clone(), r.clone()))
        })
        .expect("a path with a reference in the vectors");
    let out = tempfile::tempdir().unwrap();
    copy_to_cache(
        &store,
        cache(out.path(), Compression::Zstd),
        std::slice::from_ref(&top),
    )
    .unwrap();
    // The cache loses the reference; the destination has it already.
    fs::remove_file(
        out.path()
            .join(format!("{}.narinfo", reference.hash_part())),
    )
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    let fresh = fresh_store(other.path());
    let dest_has: std::collections::BTreeSet<StorePath> = [reference.clone()].into();
    let before = copy_paths(&store, &fresh, &dest_has, &CopyOptions::default()).unwrap();
    assert!(before.contains(&reference));
    let got = copy_from_cache(&fresh, source(out.path()), &[top.clone()].into()).unwrap();
    assert!(got.contains(&top), "{got:?}");
    assert!(!got.contains(&reference), "{got:?}");
    assert!(fresh.is_valid_path(&top).unwrap());
    // Without the reference at the destination, its absence from the cache is the error.
    let third = tempfile::tempdir().unwrap();
    let empty = fresh_store(third.path());
    let err = copy_from_cache(&empty, source(out.path()), &[top].into()).unwrap_err();
    assert!(err.to_string().contains(&reference.to_string()), "{err}");
}

/// With a trust given, the local store takes only paths signed by one of its keys (or
/// content-addressed ones that check out), checked before anything is added.
#[test]
fn a_local_destination_checks_signatures_when_asked() {
    let root = tempfile::tempdir().unwrap();
    let (store, infos) = store_from_vectors(root.path());
    let all: std::collections::BTreeSet<StorePath> = infos.keys().cloned().collect();
    let opts = |keys| CopyOptions {
        add: ferrix_store::AddOptions {
            check_sigs: true,
            trust: Some(Trust {
                keys,
                require_sigs: true,
            }),
        },
        ..CopyOptions::default()
    };
    // The vectors are signed by test-1.
    let other = tempfile::tempdir().unwrap();
    let fresh = fresh_store(other.path());
    let got = copy_paths(&store, &fresh, &all, &opts(trusted())).unwrap();
    assert_eq!(got.len(), all.len());
    // Another key: refused, naming a path, and nothing added.
    let other_key: ferrix_format::signature::PublicKey =
        "other-1:Yv/SzA4wc1nMpPa3j/5yYNt4Px8zx4ID8ZKnWVITb7c="
            .parse()
            .unwrap();
    let third = tempfile::tempdir().unwrap();
    let empty = fresh_store(third.path());
    let err = copy_paths(&store, &empty, &all, &opts(vec![other_key])).unwrap_err();
    assert!(
        matches!(&err, CopyError::Unsigned { path, .. } if all.iter().any(|p| path.ends_with(p.name()))),
        "{err}"
    );
    assert!(err.to_string().contains("lacks a valid signature"), "{err}");
    assert!(all.iter().all(|p| !empty.is_valid_path(p).unwrap()));
}
