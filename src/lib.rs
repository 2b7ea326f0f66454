//! secagg: out-of-band certificate exchange and secure aggregation for federated learning.
//!
//! The library is split into folders by domain, lowest first (see docs/architecture.md):
//! - leaf modules shared by everyone: [`party`] (party ids, roles, hosts, fingerprints),
//!   [`clock`] (time formatting), [`layout`] (tensor shapes), [`atomic`] (atomic writes),
//!   [`text`] (printing words that came from a peer or a file), [`hugepages`] (large
//!   buffers on transparent huge pages);
//! - [`pki`]: this party's identity, certificates, the peer registry and the journal;
//! - [`secagg`]: the key schedule, PRG masks, quantization, ring words and sums;
//! - [`files`]: `.npy` / `.safetensors` tensors, the masked-file format, and file mode;
//! - [`net`]: frames, pinned mutual TLS and framed channels;
//! - [`round`]: secure rounds over the network.
//!
//! The library never prints, prompts or reads the environment; the `secagg` binary
//! (`src/main.rs`, `src/cli/`, behind the default `cli` feature) does that.

pub mod atomic;
pub mod clock;
pub mod hugepages;
pub mod layout;
pub mod party;
pub mod text;

pub mod files;
pub mod net;
pub mod pki;
pub mod round;
pub mod secagg;
