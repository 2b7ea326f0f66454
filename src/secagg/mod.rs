//! The arithmetic of secure aggregation: the ring ([`ring`]), the key schedule from
//! certificates to per-use keys ([`keys`]), PRG masks ([`prg`]), fixed-point
//! quantization ([`quantize`]), modular sums ([`sum`]) and the throughput bench
//! ([`bench`]). Nothing here touches files or the network.

pub mod bench;
pub mod keys;
pub mod prg;
pub mod quantize;
pub mod ring;
pub mod sum;
