//! Criterion benchmarks of the store's inner loops: reads through a clone (image chunks from
//! the shared cache, and the clone's own delta blocks), 4 KiB writes into a fresh clone, and
//! clone creation.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use strata::store::{RepoOptions, Repository, SourceFormat};

const IMAGE: u64 = 64 << 20;

fn repo_with_image() -> (tempfile::TempDir, Arc<Repository>) {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("gold.raw");
    let data: Vec<u8> = (0..IMAGE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 | 1)
        .collect();
    std::fs::write(&raw, data).unwrap();
    let repo = Arc::new(Repository::open(t.path().join("repo"), RepoOptions::default()).unwrap());
    repo.import_image("gold", &raw, SourceFormat::Raw, &|_, _| {})
        .unwrap();
    (t, repo)
}

/// Scattered 4 KiB offsets, the same walk for every run.
fn offsets(n: usize, span: u64) -> Vec<u64> {
    (0..n as u64).map(|i| (i * 7919 * 4096) % span).collect()
}

fn reads(c: &mut Criterion) {
    let (_t, repo) = repo_with_image();
    repo.create_volume("v", Some("gold"), None).unwrap();
    let v = repo.open_volume("v", false).unwrap();
    let offs = offsets(4096, IMAGE);
    let mut buf = vec![0u8; 4096];
    // Warm the shared cache once, as a boot storm's first reader would.
    for &o in &offs {
        v.read_at(&mut buf, o).unwrap();
    }
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Bytes(4096));
    let mut i = 0;
    g.bench_function("4k_image_cached", |b| {
        b.iter(|| {
            i = (i + 1) % offs.len();
            v.read_at(&mut buf, offs[i]).unwrap()
        })
    });
    for &o in &offs[..1024] {
        v.write_at(&[3u8; 4096], o).unwrap();
    }
    v.flush().unwrap();
    g.bench_function("4k_delta", |b| {
        b.iter(|| {
            i = (i + 1) % 1024;
            v.read_at(&mut buf, offs[i]).unwrap()
        })
    });
    let mut big = vec![0u8; 1 << 20];
    g.throughput(Throughput::Bytes(1 << 20));
    let mut j = 0u64;
    g.bench_function("1m_sequential_image", |b| {
        b.iter(|| {
            j = (j + (1 << 20)) % IMAGE;
            v.read_at(&mut big, j).unwrap()
        })
    });
    g.finish();
}

fn writes(c: &mut Criterion) {
    let (_t, repo) = repo_with_image();
    let mut g = c.benchmark_group("write");
    g.throughput(Throughput::Bytes(256 * 4096));
    let offs = offsets(4096, IMAGE);
    let mut n = 0;
    g.bench_function("256x4k_fresh_clone", |b| {
        b.iter_batched(
            || {
                n += 1;
                let name = format!("w{n}");
                repo.create_volume(&name, Some("gold"), None).unwrap();
                repo.open_volume(&name, false).unwrap()
            },
            |v| {
                for &o in &offs[..256] {
                    v.write_at(&[5u8; 4096], o).unwrap();
                }
                v // dropped (and flushed) outside the timing
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn clones(c: &mut Criterion) {
    let (_t, repo) = repo_with_image();
    let mut n = 0;
    c.bench_function("clone", |b| {
        b.iter(|| {
            n += 1;
            repo.create_volume(&format!("c{n}"), Some("gold"), None)
                .unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = reads, writes, clones
}
criterion_main!(benches);
