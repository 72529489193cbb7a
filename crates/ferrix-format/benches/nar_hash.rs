//! NAR hashing throughput on a ~64 MiB tree of a few hundred files, against the single-core
//! SHA-256 limit (hashing a 64 MiB buffer in memory).
//!
//! The tree is written once to a temporary directory; after that it sits in the page cache,
//! so the benches measure serialisation and hashing, not the disk.

use std::fs;
use std::hint::black_box;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use ferrix_format::nar;
use ferrix_format::{Hash, HashAlgo};

const TOTAL: usize = 64 << 20;
const DIRS: usize = 16;
const FILES_PER_DIR: usize = 20;

/// Deterministic, incompressible-looking bytes (xorshift64*).
fn fill(buf: &mut [u8], mut state: u64) {
    state |= 1;
    for chunk in buf.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// 16 directories × 20 files whose sizes vary (1…13 units) and add up to exactly `TOTAL`
/// bytes, every third file executable, plus a symlink per directory.
fn make_tree(root: &Path) {
    let n = DIRS * FILES_PER_DIR;
    let weights: Vec<usize> = (0..n).map(|i| 1 + (i * 37) % 13).collect();
    let sum: usize = weights.iter().sum();
    let mut sizes: Vec<usize> = weights.iter().map(|w| TOTAL / sum * w).collect();
    let assigned: usize = sizes.iter().sum();
    sizes[n - 1] += TOTAL - assigned;

    fs::create_dir(root).unwrap();
    let mut buf = Vec::new();
    for d in 0..DIRS {
        let dir = root.join(format!("dir-{d:02}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            let i = d * FILES_PER_DIR + f;
            buf.resize(sizes[i], 0);
            fill(&mut buf, i as u64 + 1);
            let path = dir.join(format!("file-{f:02}.bin"));
            fs::write(&path, &buf).unwrap();
            let mode = if i.is_multiple_of(3) { 0o755 } else { 0o644 };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
        symlink("file-00.bin", dir.join("link")).unwrap();
    }
}

fn benches(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    make_tree(&root);
    // Warm the page cache and learn the archive size.
    let (_, nar_size) = nar::hash_path(&root, HashAlgo::Sha256).unwrap();

    let mut g = c.benchmark_group("nar");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    g.throughput(Throughput::Bytes(nar_size));
    g.bench_function("hash_path_sha256_64MiB_tree", |b| {
        b.iter(|| nar::hash_path(black_box(&root), HashAlgo::Sha256).unwrap())
    });
    g.bench_function("dump_path_to_sink_64MiB_tree", |b| {
        b.iter(|| nar::dump_path(black_box(&root), std::io::sink()).unwrap())
    });

    let mut buf = vec![0u8; TOTAL];
    fill(&mut buf, 42);
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.bench_function("sha256_64MiB_buffer", |b| {
        b.iter(|| Hash::of(HashAlgo::Sha256, black_box(&buf)))
    });
    g.finish();
}

criterion_group!(nar_hash, benches);
criterion_main!(nar_hash);
