//! The arithmetic of secure aggregation: the ring ([`ring`]), the key schedule from
//! certificates to per-use keys ([`keys`]), PRG masks ([`prg`]; on CPUs with VAES and
//! AVX-512 VBMI their keystream is generated and folded in one loop, [`ctr_fold`]),
//! fixed-point quantization ([`quantize`]), modular sums ([`sum`]), vector code chosen
//! at run time (the SIMD inner loop both masking and summing run, adding packed w-byte
//! residues into words, and quantization's loop compiled for AVX-512 or AVX2: [`simd`]),
//! t-of-n secret sharing with Feldman commitments
//! ([`shamir`], protocol 2's dropout recovery) and the throughput bench ([`bench`]).
//! Nothing here touches files or the network. [`simd`] and [`ctr_fold`] are two of the
//! three modules allowed `unsafe` (docs/architecture.md, "Unsafe code").

pub mod bench;
pub mod ctr_fold;
pub mod keys;
pub mod prg;
pub mod quantize;
pub mod ring;
pub mod shamir;
pub mod simd;
pub mod sum;

#[cfg(test)]
pub(crate) mod test_rng {
    //! A deterministic RNG for tests: SHA-256 in counter mode over a seed. Never used
    //! outside tests; it only has to be reproducible.

    use std::convert::Infallible;

    use p256::elliptic_curve::rand_core::{TryCryptoRng, TryRng};
    use sha2::{Digest, Sha256};

    /// SHA-256(seed ‖ u64be(counter)) blocks.
    pub(crate) struct TestRng {
        seed: u64,
        counter: u64,
    }

    impl TestRng {
        /// A generator for `seed`.
        pub(crate) fn new(seed: u64) -> TestRng {
            TestRng { seed, counter: 0 }
        }
    }

    impl TryRng for TestRng {
        type Error = Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            let mut b = [0u8; 4];
            self.try_fill_bytes(&mut b)?;
            Ok(u32::from_le_bytes(b))
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            let mut b = [0u8; 8];
            self.try_fill_bytes(&mut b)?;
            Ok(u64::from_le_bytes(b))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
            for chunk in dst.chunks_mut(32) {
                let mut h = Sha256::new();
                h.update(self.seed.to_be_bytes());
                h.update(self.counter.to_be_bytes());
                self.counter += 1;
                chunk.copy_from_slice(&h.finalize()[..chunk.len()]);
            }
            Ok(())
        }
    }

    impl TryCryptoRng for TestRng {}
}
