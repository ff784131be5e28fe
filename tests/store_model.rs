//! Model-based tests of the Volume API on the crash-simulating backend: random sequences of
//! writes, discards, flushes, reads, clean reopens, power cuts at random points (including in
//! the middle of a flush) must always match a plain in-memory model of the disk.

use std::sync::Arc;

use proptest::prelude::*;
use strata::store::backend::{MemDir, StoreFile};
use strata::store::cache::ChunkCache;
use strata::store::delta::Delta;
use strata::store::format::CHUNK;
use strata::store::image::{Image, ImageWriter};
use strata::store::Volume;

const LEN: u64 = 256 << 10; // 64 delta blocks

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: usize,
        byte: u8,
    },
    Discard {
        off: u64,
        len: u64,
    },
    Read {
        off: u64,
        len: usize,
    },
    Flush,
    Reopen,
    /// Cut the power after `after` more mutating file operations, during a flush.
    PowerCut {
        after: i64,
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let off = 0..LEN;
    prop_oneof![
        5 => (off.clone(), 1usize..20_000, any::<u8>()).prop_map(|(o, l, b)| Op::Write {
            off: o,
            len: l.min((LEN - o) as usize).max(1),
            byte: b
        }),
        2 => (off.clone(), 1u64..40_000).prop_map(|(o, l)| Op::Discard { off: o, len: l.min(LEN - o).max(1) }),
        3 => (off, 1usize..70_000).prop_map(|(o, l)| Op::Read { off: o, len: l.min((LEN - o) as usize).max(1) }),
        2 => Just(Op::Flush),
        1 => Just(Op::Reopen),
        1 => (0i64..6, any::<u64>()).prop_map(|(after, seed)| Op::PowerCut { after, seed }),
    ]
}

/// A golden image with data in its first and third quarters and holes elsewhere.
fn base_image(dir: &std::path::Path) -> (Arc<Image>, Vec<u8>) {
    let mut content = vec![0u8; LEN as usize];
    let mut w = ImageWriter::create(dir, LEN, CHUNK).unwrap();
    let quarter = LEN as usize / CHUNK / 4;
    for c in (0..quarter).chain(2 * quarter..3 * quarter) {
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + c * 13 + 1) as u8).collect();
        content[c * CHUNK..(c + 1) * CHUNK].copy_from_slice(&chunk);
        w.put(c as u64, &chunk).unwrap();
    }
    w.finish().unwrap();
    let img = Image::open(dir, "gold", Arc::new(ChunkCache::new(1 << 20, CHUNK))).unwrap();
    (Arc::new(img), content)
}

fn open(dir: &MemDir, base: &Option<Arc<Image>>, create: bool) -> Volume {
    let mut d = if create {
        Delta::create(Arc::new(dir.clone()), "volume \"m\"".into()).unwrap()
    } else {
        Delta::open(Arc::new(dir.clone()), "volume \"m\"".into()).unwrap()
    };
    // Compact whenever the log outgrows twice the snapshot, so both commit paths run.
    d.set_compaction_threshold(0);
    Volume::new("m", LEN, base.clone(), d, false)
}

fn read_all(v: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; LEN as usize];
    v.read_at(&mut buf, 0).unwrap();
    buf
}

fn run(ops: Vec<Op>, with_base: bool) {
    let t = tempfile::tempdir().unwrap();
    let (base, initial) = if with_base {
        let (i, c) = base_image(t.path());
        (Some(i), c)
    } else {
        (None, vec![0u8; LEN as usize])
    };
    let mut dir = MemDir::new();
    let mut vol = open(&dir, &base, true);
    let mut live = initial.clone();
    let mut durable = initial;
    for op in ops {
        match op {
            Op::Write { off, len, byte } => {
                let data = vec![byte; len];
                vol.write_at(&data, off).unwrap();
                live[off as usize..off as usize + len].copy_from_slice(&data);
            }
            Op::Discard { off, len } => {
                vol.discard(off, len).unwrap();
                live[off as usize..(off + len) as usize].fill(0);
            }
            Op::Read { off, len } => {
                let mut buf = vec![0u8; len];
                vol.read_at(&mut buf, off).unwrap();
                assert_eq!(
                    buf,
                    live[off as usize..off as usize + len],
                    "read at {off}+{len}"
                );
            }
            Op::Flush => {
                vol.flush().unwrap();
                durable = live.clone();
            }
            Op::Reopen => {
                drop(vol); // closing flushes
                durable = live.clone();
                vol = open(&dir, &base, false);
                assert!(read_all(&vol) == live, "state after clean reopen");
            }
            Op::PowerCut { after, seed } => {
                dir.cut_power_after(after);
                let flushed = vol.flush().is_ok();
                let crashed = dir.crash(seed);
                std::mem::forget(vol); // its files are dead; closing would only log errors
                dir = crashed;
                vol = open(&dir, &base, false);
                let now = read_all(&vol);
                if flushed {
                    assert!(now == live, "a completed flush must survive a power cut");
                } else {
                    // The flush was cut: the volume is at the previous flush or at this one,
                    // never in between.
                    assert!(
                        now == durable || now == live,
                        "torn or mixed state after power cut"
                    );
                }
                live = now;
                durable = live.clone();
            }
        }
    }
    assert!(read_all(&vol) == live);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn clone_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, true);
    }

    #[test]
    fn empty_volume_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, false);
    }
}

/// Many flushes force log compaction into the other map file; power cuts at every point of
/// that sequence must still open to the last flush or the one in progress.
#[test]
fn power_cut_at_every_point_of_a_compacting_flush_sequence() {
    let mut compacted = 0;
    for cut in 0..40 {
        let dir = MemDir::new();
        let vol = open(&dir, &None, true);
        let mut expect = vec![0u8; LEN as usize];
        // Enough entries per flush that the log outgrows the compaction threshold quickly.
        for round in 0..(cut / 2 + 1) {
            for b in 0..64u64 {
                let data = vec![(round * 64 + b) as u8 | 1; 4096];
                vol.write_at(&data, b * 4096).unwrap();
                expect[(b * 4096) as usize..((b + 1) * 4096) as usize].copy_from_slice(&data);
            }
            vol.flush().unwrap();
            // Vary which blocks change so the log grows past the snapshot.
            vol.write_at(&[round as u8; 4096], (round % 64) * 4096)
                .unwrap();
            expect[((round % 64) * 4096) as usize..((round % 64 + 1) * 4096) as usize]
                .fill(round as u8);
            vol.flush().unwrap();
        }
        if dir.file("map.1").is_some_and(|f| f.len().unwrap() > 0) {
            compacted += 1;
        }
        let before = expect.clone();
        vol.write_at(&vec![0xEE; 8192], 0).unwrap();
        expect[..8192].fill(0xEE);
        dir.cut_power_after((cut % 4) as i64);
        let ok = vol.flush().is_ok();
        let after = dir.crash(cut);
        std::mem::forget(vol);
        let v2 = open(&after, &None, false);
        let now = read_all(&v2);
        if ok {
            assert!(now == expect);
        } else {
            assert!(now == before || now == expect, "cut {cut}: mixed state");
        }
    }
    assert!(
        compacted > 10,
        "the sequence must exercise compaction ({compacted})"
    );
}

/// Space superseded by a commit is not reused until that commit is durable: overwriting a
/// flushed block and cutting the power before the next flush keeps the old data intact.
#[test]
fn superseded_space_is_not_reused_before_commit() {
    let dir = MemDir::new();
    let vol = open(&dir, &None, true);
    vol.write_at(&[1u8; 4096], 0).unwrap();
    vol.flush().unwrap();
    // Overwrite, discard and write again many times without flushing: none may land on the
    // slot that the durable map points at.
    for i in 0..50u8 {
        vol.write_at(&[i | 0x80; 4096], 0).unwrap();
        vol.discard(0, 4096).unwrap();
        vol.write_at(&[i; 4096], 4096).unwrap();
    }
    let after = dir.crash(3);
    std::mem::forget(vol);
    let v2 = open(&after, &None, false);
    let mut buf = vec![0u8; 4096];
    v2.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 1));
}

/// A boot storm: many clones of one image read it all at once from many threads; every
/// image chunk is loaded from the image's files once, the rest come from the shared cache.
#[test]
fn boot_storm_loads_each_image_chunk_once() {
    use strata::store::{RepoOptions, Repository, SourceFormat};
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("gold.raw");
    let size = 8u64 << 20;
    let data: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&raw, &data).unwrap();
    let repo = Repository::open(
        t.path().join("repo"),
        RepoOptions {
            cache_bytes: 64 << 20,
        },
    )
    .unwrap();
    repo.import_image("gold", &raw, SourceFormat::Raw, &|_, _| {})
        .unwrap();
    let vols: Vec<_> = (0..32)
        .map(|i| {
            let n = format!("node-{i}");
            repo.create_volume(&n, Some("gold"), None).unwrap();
            repo.open_volume(&n, false).unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for (i, v) in vols.iter().enumerate() {
            let data = &data;
            s.spawn(move || {
                let mut buf = vec![0u8; 16 << 10];
                // Each node walks the image in its own order, as booting servers do.
                for k in 0..(size / buf.len() as u64) {
                    let off =
                        ((k * 7 + i as u64 * 13) % (size / buf.len() as u64)) * buf.len() as u64;
                    v.read_at(&mut buf, off).unwrap();
                    assert!(buf[..] == data[off as usize..off as usize + buf.len()]);
                }
            });
        }
    });
    let (hits, misses) = repo.cache().stats();
    assert_eq!(misses, size / CHUNK as u64, "each chunk loaded once");
    assert!(
        hits > misses * 20,
        "the other readers are served from memory ({hits} hits)"
    );
}

/// Writes and discards that land while a commit is on its way to disk (the volume lock is
/// not held then) must not reuse any slot the commit references: a power cut right after
/// that commit opens exactly at the cut.
#[test]
fn writes_during_a_commit_leave_the_committed_blocks_alone() {
    for seed in 0..20u64 {
        let dir = MemDir::new();
        let mut d = Delta::create(Arc::new(dir.clone()), "volume \"c\"".into()).unwrap();
        let block = |v: u8| vec![v; 4096];
        for b in 0..32u64 {
            d.write(b, &block(b as u8 + 1)).unwrap();
        }
        d.flush().unwrap();
        for b in 0..32u64 {
            d.write(b, &block(b as u8 + 100)).unwrap();
        }
        let cut = d.begin_commit().unwrap().unwrap();
        // Between the cut and its sync: rewrite everything, discard some, rewrite again.
        for round in 0..3u8 {
            for b in 0..32u64 {
                if (b + seed) % 5 == 0 {
                    d.discard(b, 1, |_| false);
                }
                d.write(b, &block(200 + round)).unwrap();
            }
        }
        let r = cut.write();
        d.finish_commit(cut, r).unwrap();
        let after = dir.crash(seed);
        let d2 = Delta::open(Arc::new(after), "volume \"c\"".into()).unwrap();
        let mut buf = vec![0u8; 32 * 4096];
        let mut below = Vec::new();
        d2.read(0, &mut buf, &mut below, strata::store::Wait::Yes)
            .unwrap();
        assert!(below.is_empty());
        for b in 0..32usize {
            assert!(
                buf[b * 4096..(b + 1) * 4096]
                    .iter()
                    .all(|&x| x == b as u8 + 100),
                "seed {seed}: block {b} is not what the commit cut"
            );
        }
    }
}

/// Readers, writers and flushers on one volume at once: every read sees whole writes, and
/// after all threads end, a power cut keeps everything the last flush covered.
#[test]
fn concurrent_reads_writes_and_flushes() {
    let dir = MemDir::new();
    let vol = Arc::new(open(&dir, &None, true));
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let vol = vol.clone();
            s.spawn(move || {
                for i in 0..400u64 {
                    let b = (i * 7 + t * 21) % 64;
                    let v = ((t << 6) | (i % 64)) as u8 | 1;
                    vol.write_at(&[v; 4096], b * 4096).unwrap();
                    if i % 50 == 0 {
                        vol.flush().unwrap();
                    }
                }
            });
        }
        for _ in 0..2 {
            let vol = vol.clone();
            s.spawn(move || {
                let mut buf = vec![0u8; 4096];
                for i in 0..2000u64 {
                    vol.read_at(&mut buf, (i % 64) * 4096).unwrap();
                    assert!(buf.iter().all(|&x| x == buf[0]), "a read saw a torn block");
                }
            });
        }
    });
    vol.flush().unwrap();
    let expect = read_all(&vol);
    let after = dir.crash(9);
    let v2 = open(&after, &None, false);
    assert!(read_all(&v2) == expect);
}
