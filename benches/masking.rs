//! Developer benches: raw PRG, masking with n-1 peers, and streaming aggregation.
//! `cargo bench`; `secagg bench` reports the same quantities with their ratios.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use secagg::secagg::keys::{MaskContext, MaskKey, PairwiseSecret, Sign};
use secagg::secagg::prg::{self as mask, PeerMask};
use secagg::secagg::sum::Accumulator;

const LEN: usize = 1 << 20;

fn key(i: u8) -> MaskKey {
    let fp = secagg::party::Fingerprint::of_der(&[i]);
    let pw = PairwiseSecret::from_shared(&[i; 32], &fp, &fp);
    MaskKey::derive(
        &pw,
        &MaskContext {
            federation: "bench".into(),
            round: 1,
            researcher: fp,
            participants: vec![],
            label: "update".into(),
        },
    )
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("secagg");
    g.throughput(Throughput::Bytes((LEN * 8) as u64));
    let mut buf = vec![0u8; LEN * 8];
    g.bench_function("prg_keystream_8MiB", |b| {
        b.iter(|| mask::keystream(&key(1), 0, &mut buf))
    });
    // The VAES kernel masking runs where the CPU has it (skipped elsewhere): its raw
    // keystream, then in L1 (one 2048-word block, 9 peers, w = 5) folding against
    // writing the same keystream (docs/performance.md, "Masking since the VAES kernel").
    if let Some(rk) = secagg::secagg::ctr_fold::RoundKeys::expand(&key(1)) {
        g.bench_function("prg_keystream_vaes_8MiB", |b| {
            b.iter(|| secagg::secagg::ctr_fold::keystream(&rk, 0, &mut buf))
        });
        let rks: Vec<_> = (0..9u8)
            .filter_map(|i| secagg::secagg::ctr_fold::RoundKeys::expand(&key(i)))
            .collect();
        g.throughput(Throughput::Elements(2048 * 9));
        let mut block = vec![0u64; 2048];
        g.bench_function("vaes_fold_l1_w5_9_peers", |b| {
            b.iter(|| {
                for k in &rks {
                    secagg::secagg::ctr_fold::fold(&mut block, 0, k, 5, Sign::Add);
                }
            })
        });
        let mut ks = vec![0u8; 2048 * 5];
        g.bench_function("vaes_keystream_l1_w5_9_peers", |b| {
            b.iter(|| {
                for k in &rks {
                    secagg::secagg::ctr_fold::keystream(k, 0, &mut ks);
                }
            })
        });
        g.throughput(Throughput::Bytes((LEN * 8) as u64));
    }
    for peers in [1usize, 9] {
        let masks: Vec<PeerMask> = (0..peers)
            .map(|i| PeerMask {
                key: key(i as u8),
                sign: if i % 2 == 0 { Sign::Add } else { Sign::Sub },
            })
            .collect();
        let mut v = vec![0u64; LEN];
        g.throughput(Throughput::Elements(LEN as u64));
        for width in [5usize, 8] {
            g.bench_function(format!("mask_w{width}_{peers}_peers"), |b| {
                b.iter(|| mask::apply_masks(&mut v, &masks, width, mask::default_threads()))
            });
        }
    }
    for width in [5usize, 8] {
        let bytes = vec![7u8; LEN * width];
        g.throughput(Throughput::Bytes((LEN * width) as u64));
        let mut acc = Accumulator::<u64>::with_width(LEN, width);
        g.bench_function(format!("aggregate_absorb_w{width}"), |b| {
            b.iter(|| acc.absorb(0, &bytes))
        });
        let payloads = vec![bytes.clone()];
        g.bench_function(format!("aggregate_sum_hashed_w{width}"), |b| {
            b.iter(|| {
                secagg::secagg::sum::sum_hashed::<u64>(
                    &payloads,
                    width,
                    LEN as u64,
                    mask::default_threads(),
                    |_, s| {
                        std::hint::black_box(s);
                    },
                )
            })
        });
    }
    g.finish();
}

criterion_group!(all, benches);
criterion_main!(all);
