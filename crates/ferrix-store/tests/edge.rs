//! The async edge of the store: NARs stream in and out through pipes, operations run on
//! blocking threads, and a bad stream leaves the store as it was.

mod common;

use std::sync::Arc;

use common::*;
use ferrix_format::nar::NarErrorKind;
use ferrix_format::{Encoding, FileIngestionMethod, Hash, StoreDir};
use ferrix_store::{AsyncStore, StoreError, ValidPathInfo};
use tokio::io::AsyncReadExt;

fn info_for(nar: &[u8], name: &str) -> ValidPathInfo {
    let hash = Hash::sha256(nar);
    let path = StoreDir::default()
        .make_fixed_output_path(name, FileIngestionMethod::Recursive, &hash, [], false)
        .unwrap();
    ValidPathInfo::new(path, hash, nar.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nars_stream_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let store = AsyncStore::new(Arc::new(open(dir.path())));
    // Bigger than a pipe's buffer many times over, and than what is kept in memory.
    let contents: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let nar = file_nar(&contents);
    let info = info_for(&nar, "big");
    assert!(!store.is_valid_path(info.path.clone()).await.unwrap());
    store
        .add_to_store(info.clone(), std::io::Cursor::new(nar.clone()))
        .await
        .unwrap();
    assert!(store.is_valid_path(info.path.clone()).await.unwrap());
    let got = store
        .query_path_info(info.path.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.nar_hash, info.nar_hash);

    let (mut stream, task) = store.nar_from_path(info.path.clone()).unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(back, nar);

    // Adding a valid path again reads the stream and changes nothing.
    store
        .add_to_store(info.clone(), std::io::Cursor::new(nar))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_stream_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = AsyncStore::new(Arc::new(open(dir.path())));
    let nar = file_nar(&vec![7u8; 2_000_000]);
    let info = info_for(&nar, "cut");
    let printed = store.inner().print(&info.path);
    // Cut short: not a whole NAR. The archive ends inside the file's contents, at the cut.
    let cut = nar.len() / 2;
    let err = store
        .add_to_store(info.clone(), std::io::Cursor::new(nar[..cut].to_vec()))
        .await
        .unwrap_err();
    match &err {
        StoreError::Nar { path, source } => {
            assert!(path.contains(&printed), "names {path}, not {printed}");
            assert!(
                matches!(source.kind, NarErrorKind::Truncated),
                "{:?}",
                source.kind
            );
            assert_eq!(source.offset, cut as u64, "{source}");
        }
        e => panic!("a truncated NAR gave {e:?}"),
    }
    assert!(err.to_string().contains(&printed), "{err}");
    // Whole, but not what the info claims.
    let other = file_nar(b"something else");
    let err = store
        .add_to_store(info.clone(), std::io::Cursor::new(other.clone()))
        .await
        .unwrap_err();
    let expected = info.nar_hash.encode_typed(Encoding::Nix32);
    let got = Hash::sha256(&other).encode_typed(Encoding::Nix32);
    match &err {
        StoreError::HashMismatch {
            path,
            expected: e,
            got: g,
        } => {
            assert_eq!(path, &printed);
            assert_eq!(e, &expected);
            assert_eq!(g, &got);
        }
        e => panic!("a NAR of other contents gave {e:?}"),
    }
    let msg = err.to_string();
    for part in [&printed, &expected, &got] {
        assert!(msg.contains(part.as_str()), "{msg:?} does not name {part}");
    }
    assert!(!store.is_valid_path(info.path.clone()).await.unwrap());
    let real = store.inner().real_path(&info.path);
    assert!(!real.exists());
    // A path that is not valid has no NAR: the stream ends empty and the task says why.
    let (mut stream, task) = store.nar_from_path(info.path.clone()).unwrap();
    let mut back = Vec::new();
    let _ = stream.read_to_end(&mut back).await;
    assert!(back.is_empty(), "{} bytes of a NAR", back.len());
    let err = task.await.unwrap().unwrap_err();
    match &err {
        StoreError::NotValid(path) => assert_eq!(path, &printed),
        e => panic!("the NAR of an invalid path gave {e:?}"),
    }
    assert_eq!(err.to_string(), format!("path '{printed}' is not valid"));
}

/// The async edge copies between any two stores behind the trait: queries batched, the
/// closure added at the destination, and nothing the second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closures_copy_between_stores_from_async_code() {
    use ferrix_store::{CopyOptions, Store};
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s1 = Arc::new(open(d1.path()));
    let a = s1.add_text("a", b"a", &Default::default()).unwrap();
    let b = s1.add_text("b", b"b", &[a.clone()].into()).unwrap();
    let from: AsyncStore<dyn Store> = AsyncStore::new(s1.clone() as Arc<dyn Store>);
    let to: AsyncStore<dyn Store> = AsyncStore::new(Arc::new(open(d2.path())) as Arc<dyn Store>);
    let want: std::collections::BTreeSet<_> = [b.clone()].into();
    let infos = from.query_infos(want.clone()).await.unwrap();
    assert_eq!(infos[&b].references, [a.clone()].into());
    let copied = from
        .copy_to(&to, want.clone(), CopyOptions::default())
        .await
        .unwrap();
    assert_eq!(copied, vec![a.clone(), b.clone()]);
    let valid = to
        .query_valid([a.clone(), b.clone()].into(), false)
        .await
        .unwrap();
    assert_eq!(valid.len(), 2);
    let again = from
        .copy_to(&to, want, CopyOptions::default())
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}
