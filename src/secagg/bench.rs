//! `secagg bench`: what a round costs on this machine, measured against the machine's
//! own raw limits in the same run (like `openssl speed`). The ratios, not the absolute
//! numbers, are how the project judges its speed.

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;

use crate::secagg::keys::{MaskKey, Sign};
use crate::secagg::prg::{self as mask, PeerMask};
use crate::secagg::quantize::{Plan, QuantParams};
use crate::secagg::ring::Modulus;
use crate::secagg::ring::Word;
use crate::secagg::sum::Accumulator;

/// One run's measurements.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Worker threads used for masking.
    pub threads: usize,
    /// Nodes simulated (n); masking uses n-1 peers.
    pub nodes: usize,
    /// Vector length d.
    pub len: usize,
    /// Bits of the modulus (word size) under the default parameters for n nodes.
    pub modulus_bits: u32,
    /// Raw AES-128-CTR keystream, one thread, bytes per second.
    pub prg_bytes_per_sec: f64,
    /// `acc[i] += x[i]` over d words, one thread, bytes of x per second.
    pub add_bytes_per_sec: f64,
    /// Masking: vector elements per second with n-1 peers on all threads.
    pub mask_elems_per_sec: f64,
    /// Masking keystream rate / (raw PRG rate x threads), for the same mask words.
    pub mask_ratio: f64,
    /// Aggregation: input elements per second absorbed (n inputs of d words).
    pub aggregate_elems_per_sec: f64,
    /// Aggregation byte rate / add bandwidth.
    pub aggregate_ratio: f64,
    /// Seconds for one node to mask d elements (best run).
    pub mask_seconds: f64,
    /// Seconds to aggregate n inputs of d elements (best run).
    pub aggregate_seconds: f64,
}

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn key(i: u8) -> MaskKey {
    MaskKey([i; 16])
}

/// Runs every measurement. `progress` receives a line per finished stage.
pub fn run(nodes: usize, len: usize, threads: usize, mut progress: impl FnMut(&str)) -> Report {
    let modulus = Plan::new(QuantParams::default(), nodes.max(2))
        .map(|p| p.modulus)
        .unwrap_or(Modulus::M64);
    match modulus {
        Modulus::M32 => run_words::<u32>(nodes, len, threads, modulus, &mut progress),
        Modulus::M64 => run_words::<u64>(nodes, len, threads, modulus, &mut progress),
    }
}

fn run_words<W: Word>(
    nodes: usize,
    len: usize,
    threads: usize,
    modulus: Modulus,
    progress: &mut dyn FnMut(&str),
) -> Report {
    let nodes = nodes.max(2);
    let len = len.max(1);
    let prg_rate = raw_prg_rate::<W>(len);
    progress(&format!(
        "raw PRG: {:.0} MiB/s per thread",
        prg_rate / 1048576.0
    ));
    let x: Vec<W> = (0..len)
        .map(|i| W::from_u64(i as u64 * 2_654_435_761))
        .collect();
    let add_rate = add_rate(&x);
    progress(&format!("memory add: {:.0} MiB/s", add_rate / 1048576.0));
    let (v, mask_secs) = masking(x, nodes, threads);
    let mask_elems = len as f64 / mask_secs;
    let mask_ks_rate = (len * W::BYTES * (nodes - 1)) as f64 / mask_secs;
    let mask_ratio = mask_ks_rate / (prg_rate * threads as f64);
    progress(&format!(
        "masking: {:.1} M elements/s with {} peers ({:.0}% of raw PRG x {threads} threads)",
        mask_elems / 1e6,
        nodes - 1,
        mask_ratio * 100.0
    ));
    let agg_secs = aggregation(v, nodes);
    let agg_elems = (nodes * len) as f64 / agg_secs;
    let aggregate_ratio = agg_elems * W::BYTES as f64 / add_rate;
    progress(&format!(
        "aggregation: {:.1} M elements/s ({:.0}% of memory add)",
        agg_elems / 1e6,
        aggregate_ratio * 100.0
    ));
    Report {
        threads,
        nodes,
        len,
        modulus_bits: modulus.bits(),
        prg_bytes_per_sec: prg_rate,
        add_bytes_per_sec: add_rate,
        mask_elems_per_sec: mask_elems,
        mask_ratio,
        aggregate_elems_per_sec: agg_elems,
        aggregate_ratio,
        mask_seconds: mask_secs,
        aggregate_seconds: agg_secs,
    }
}

/// How many times each measurement runs (the best is kept).
const RUNS: usize = 3;

/// Raw PRG bytes per second on one thread: a 16 KiB reused buffer, as much keystream as
/// one node needs per peer.
fn raw_prg_rate<W: Word>(len: usize) -> f64 {
    let prg_bytes = (len * W::BYTES).max(1 << 24);
    let mut buf = vec![0u8; 16 * 1024];
    let prg_secs = best_of(RUNS, || {
        let mut p = mask::prg_at(&key(1), 0);
        let mut left = prg_bytes;
        while left > 0 {
            let n = left.min(buf.len());
            ctr::cipher::StreamCipher::write_keystream(&mut p, &mut buf[..n]);
            left -= n;
        }
        black_box(&buf);
    });
    prg_bytes as f64 / prg_secs
}

/// Memory add bandwidth in bytes per second: one thread, d words.
fn add_rate<W: Word>(x: &[W]) -> f64 {
    let mut acc = vec![W::default(); x.len()];
    let add_secs = best_of(RUNS, || {
        acc.iter_mut().zip(x).for_each(|(a, b)| *a = a.add(*b));
        black_box(&acc);
    });
    std::mem::size_of_val(x) as f64 / add_secs
}

/// Masking with n-1 peers over d words on all threads; the masked vector and the time.
fn masking<W: Word>(x: Vec<W>, nodes: usize, threads: usize) -> (Vec<W>, f64) {
    let peers: Vec<PeerMask> = (0..nodes - 1)
        .map(|i| PeerMask {
            key: key(i as u8 + 2),
            sign: if i % 2 == 0 { Sign::Add } else { Sign::Sub },
        })
        .collect();
    let mut v = x;
    let mask_secs = best_of(RUNS, || {
        mask::apply_masks(&mut v, &peers, threads);
        black_box(&v);
    });
    (v, mask_secs)
}

/// Aggregation time: n inputs of d words streamed as 1 MiB chunks into one accumulator.
fn aggregation<W: Word>(v: Vec<W>, nodes: usize) -> f64 {
    let len = v.len();
    let mut bytes = Vec::with_capacity(len * W::BYTES);
    v.iter().for_each(|w| w.put_le(&mut bytes));
    drop(v);
    let chunk = (1 << 20) - (1 << 20) % W::BYTES;
    best_of(RUNS, || {
        let mut a = Accumulator::<W>::new(len);
        for _ in 0..nodes {
            for (i, c) in bytes.chunks(chunk).enumerate() {
                a.absorb((i * chunk / W::BYTES) as u64, c);
            }
        }
        black_box(&a);
    })
}
