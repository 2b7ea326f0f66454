//! secagg: out-of-band certificate exchange and secure aggregation for federated learning.
//!
//! The library is split by domain artifact:
//! - [`identity`]: party ids, roles, the home directory and this party's own key;
//! - [`certificate`]: self-signed P-256 certificates, their fingerprints and their checks;
//! - [`registry`]: the SQLite registry of peers and the mask-reuse journal;
//! - [`keys`]: the key schedule from certificates to per-use mask keys;
//! - [`quantize`]: fixed-point encoding, weights and the modulus;
//! - [`mask`]: keystream expansion folded into a vector;
//! - [`tensor`]: `.npy` and `.safetensors` updates.
//!
//! The library never prints, prompts or reads the environment; [`cli`] does that.

pub mod aggregate;
pub mod bench;
pub mod certificate;
pub mod cli;
pub mod identity;
pub mod keys;
pub mod mask;
pub mod masked;
pub mod quantize;
pub mod registry;
pub mod round;
pub mod secagg;
pub mod tensor;
pub mod transport;
pub mod wire;
