//! A node's own policy for the rounds it joins: checked against the researcher's
//! announcement before any key is made. The researcher never changes it; the node's
//! config file (`[policy]` in `config.toml`) and its `round join` flags do.

use std::collections::BTreeSet;

use crate::party::Fingerprint;
use crate::round::messages::Announce;
use crate::secagg::quantize::{Plan, QuantParams};

pub use crate::pki::journal::MAX_ROUND_JUMP;

/// What a node accepts. [`Policy::default`] accepts a round with the researcher's own
/// defaults and at least 3 nodes, so a federation works without configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The federation this node serves (the ctx federation string); `None` refuses every
    /// round (the driver always pins one).
    pub federation: Option<String>,
    /// Largest clip bound accepted.
    pub max_clip: f64,
    /// Fewest quantization bits accepted.
    pub min_bits: u32,
    /// Most quantization bits accepted.
    pub max_bits: u32,
    /// Largest max weight accepted.
    pub max_weight: u64,
    /// Fewest invited nodes.
    pub min_nodes: usize,
    /// Smallest threshold; `None` means ⌊2n/3⌋+1.
    pub min_threshold: Option<usize>,
    /// Trusted peers: at least `require_peers_count` of them must be in U3 and among the
    /// signers (protection against a researcher inviting Sybils around this node).
    pub require_peers: BTreeSet<Fingerprint>,
    /// How many of `require_peers` must take part.
    pub require_peers_count: usize,
    /// Always send weight 1, so sample counts cannot be learned across rounds.
    pub fixed_weight: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            federation: None,
            max_clip: 100.0,
            min_bits: 2,
            max_bits: 32,
            max_weight: 1_000_000,
            min_nodes: 3,
            min_threshold: None,
            require_peers: BTreeSet::new(),
            require_peers_count: 0,
            fixed_weight: false,
        }
    }
}

/// Why a node refuses an announced round: the parameter and what is allowed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{parameter} is {got}; this node's policy allows {allowed}")]
pub struct Refusal {
    /// The parameter that is out of policy.
    pub parameter: &'static str,
    /// What the researcher announced.
    pub got: String,
    /// What the policy allows.
    pub allowed: String,
}

fn refuse(parameter: &'static str, got: impl ToString, allowed: impl ToString) -> Refusal {
    Refusal {
        parameter,
        got: got.to_string(),
        allowed: allowed.to_string(),
    }
}

/// The default threshold for n invitees: ⌊2n/3⌋+1.
pub fn default_threshold(n: usize) -> usize {
    2 * n / 3 + 1
}

/// How many colluding nodes (Sybils included) a threshold tolerates: the largest n_C
/// with 2t > n + n_C.
pub fn tolerated_colluders(n: usize, t: usize) -> usize {
    (2 * t).saturating_sub(n + 1)
}

impl Policy {
    /// Checks an announcement against this policy. `last_round` is the last round this
    /// node advertised keys for in the announced federation (0 if none), `weight` the
    /// weight it will send, `model` the digest of the model it trained from, if given.
    /// The checks that need the registry (every invitee registered as a node) and the
    /// input (layout) are the state machine's.
    pub fn check(
        &self,
        a: &Announce,
        last_round: u64,
        weight: u64,
        model: Option<&[u8; 32]>,
    ) -> Result<Plan, Refusal> {
        match &self.federation {
            Some(f) if *f == a.federation => {}
            Some(f) => return Err(refuse("federation", &a.federation, f)),
            None => return Err(refuse("federation", &a.federation, "none (none pinned)")),
        }
        let max_round = last_round.saturating_add(MAX_ROUND_JUMP);
        if a.round <= last_round || a.round > max_round {
            return Err(refuse(
                "round",
                a.round,
                format!(
                    "{}..={max_round} (above the last round advertised here)",
                    last_round + 1
                ),
            ));
        }
        let n = a.invitees.len();
        if n < self.min_nodes {
            return Err(refuse(
                "the number of invited nodes",
                n,
                format!("at least {}", self.min_nodes),
            ));
        }
        let t = a.threshold as usize;
        if t > n || 2 * t <= n {
            return Err(refuse(
                "threshold",
                t,
                format!(
                    "{}..={n} (more than half of {n}, whatever the policy says)",
                    n / 2 + 1
                ),
            ));
        }
        let min_t = self
            .min_threshold
            .unwrap_or_else(|| default_threshold(n))
            .max(n / 2 + 1);
        if t < min_t {
            return Err(refuse("threshold", t, format!("{min_t}..={n}")));
        }
        if !(a.clip.is_finite() && a.clip > 0.0 && a.clip <= self.max_clip) {
            return Err(refuse("clip", a.clip, format!("(0, {}]", self.max_clip)));
        }
        if a.bits < self.min_bits || a.bits > self.max_bits {
            return Err(refuse(
                "bits",
                a.bits,
                format!("{}..={}", self.min_bits, self.max_bits),
            ));
        }
        if a.max_weight == 0 || a.max_weight > self.max_weight {
            return Err(refuse(
                "max weight",
                a.max_weight,
                format!("1..={}", self.max_weight),
            ));
        }
        if weight == 0 || weight > a.max_weight {
            return Err(refuse(
                "this node's weight",
                weight,
                format!("1..={} (the announced max weight)", a.max_weight),
            ));
        }
        if self.fixed_weight && weight != 1 {
            return Err(refuse(
                "this node's weight",
                weight,
                "1 (fixed-weight policy)",
            ));
        }
        match (model, &a.model_digest) {
            (Some(mine), Some(theirs)) if mine != theirs => {
                return Err(refuse(
                    "model digest",
                    hex(theirs),
                    format!("{} (the model this node trained from)", hex(mine)),
                ));
            }
            (Some(mine), None) => {
                return Err(refuse(
                    "model digest",
                    "none",
                    format!("{} (the model this node trained from)", hex(mine)),
                ));
            }
            _ => {}
        }
        if a.label != crate::round::LABEL {
            return Err(refuse("label", &a.label, crate::round::LABEL));
        }
        let present = a
            .invitees
            .iter()
            .filter(|fp| self.require_peers.contains(fp))
            .count();
        if present < self.require_peers_count {
            return Err(refuse(
                "trusted peers invited",
                present,
                format!("at least {} (require-peers)", self.require_peers_count),
            ));
        }
        let plan = Plan::new(
            QuantParams {
                clip: a.clip,
                bits: a.bits,
                max_weight: a.max_weight,
            },
            n,
        )
        .map_err(|e| refuse("quantization parameters", e, "a sum that fits 2^64"))?;
        if plan.modulus.bits() != a.modulus_bits {
            return Err(refuse("modulus bits", a.modulus_bits, plan.modulus.bits()));
        }
        if plan.wire_bytes() as u32 != a.word_bytes {
            return Err(refuse("wire bytes", a.word_bytes, plan.wire_bytes()));
        }
        Ok(plan)
    }
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Container, DType, Layout, TensorSpec};

    fn fp(i: u8) -> Fingerprint {
        Fingerprint::of_der(&[i])
    }

    fn announce(n: usize) -> Announce {
        let mut invitees: Vec<Fingerprint> = (0..n as u8).map(fp).collect();
        invitees.sort();
        let plan = Plan::new(QuantParams::default(), n).expect("plan");
        Announce {
            federation: "f".into(),
            round: 1,
            researcher: fp(200),
            invitees,
            clip: 1.0,
            bits: 16,
            modulus_bits: plan.modulus.bits(),
            word_bytes: plan.wire_bytes() as u32,
            max_weight: 1_000_000,
            threshold: default_threshold(n) as u32,
            layout: Layout {
                container: Container::Npy,
                tensors: vec![TensorSpec {
                    name: String::new(),
                    shape: vec![4],
                    dtype: DType::F32,
                }],
            },
            model_digest: None,
            label: "update".into(),
            deadline_secs: 60,
        }
    }

    fn policy() -> Policy {
        Policy {
            federation: Some("f".into()),
            ..Policy::default()
        }
    }

    #[test]
    fn defaults_accept_the_researchers_defaults() {
        assert!(policy().check(&announce(3), 0, 5, None).is_ok());
        assert!(policy().check(&announce(10), 0, 5, None).is_ok());
        assert_eq!(default_threshold(10), 7);
        assert_eq!(tolerated_colluders(10, 7), 3);
    }

    #[test]
    fn each_parameter_out_of_policy_is_named() {
        let p = policy();
        let cases: Vec<(Announce, u64, &str)> = vec![
            (
                Announce {
                    federation: "g".into(),
                    ..announce(3)
                },
                0,
                "federation",
            ),
            (
                Announce {
                    round: 5,
                    ..announce(3)
                },
                5,
                "round",
            ),
            (
                Announce {
                    round: 4,
                    ..announce(3)
                },
                5,
                "round",
            ),
            (
                Announce {
                    round: 1_000_002,
                    ..announce(3)
                },
                1,
                "round",
            ),
            (announce(2), 0, "the number of invited nodes"),
            (
                Announce {
                    threshold: 2,
                    ..announce(4)
                },
                0,
                "threshold",
            ),
            (
                Announce {
                    threshold: 5,
                    ..announce(4)
                },
                0,
                "threshold",
            ),
            (
                Announce {
                    clip: 1e3,
                    ..announce(3)
                },
                0,
                "clip",
            ),
            (
                Announce {
                    clip: f64::NAN,
                    ..announce(3)
                },
                0,
                "clip",
            ),
            (
                Announce {
                    bits: 40,
                    ..announce(3)
                },
                0,
                "bits",
            ),
            (
                Announce {
                    max_weight: 2_000_000,
                    ..announce(3)
                },
                0,
                "max weight",
            ),
            (
                Announce {
                    max_weight: 3,
                    ..announce(3)
                },
                0,
                "this node's weight",
            ),
            (
                Announce {
                    word_bytes: 8,
                    ..announce(3)
                },
                0,
                "wire bytes",
            ),
            (
                Announce {
                    label: "x".into(),
                    ..announce(3)
                },
                0,
                "label",
            ),
        ];
        for (a, last, param) in cases {
            let e = p.check(&a, last, 5, None).expect_err(param);
            assert_eq!(e.parameter, param, "{e}");
        }
    }

    #[test]
    fn half_or_less_is_refused_whatever_the_policy() {
        let lax = Policy {
            min_threshold: Some(1),
            ..policy()
        };
        let e = lax
            .check(
                &Announce {
                    threshold: 2,
                    ..announce(4)
                },
                0,
                1,
                None,
            )
            .expect_err("2t <= n");
        assert_eq!(e.parameter, "threshold");
        assert!(
            lax.check(
                &Announce {
                    threshold: 3,
                    ..announce(4)
                },
                0,
                1,
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn model_binding_and_fixed_weight_and_trusted_peers() {
        let p = policy();
        let mine = [7u8; 32];
        let e = p.check(&announce(3), 0, 1, Some(&mine)).expect_err("none");
        assert_eq!(e.parameter, "model digest");
        let other = Announce {
            model_digest: Some([8u8; 32]),
            ..announce(3)
        };
        assert!(p.check(&other, 0, 1, Some(&mine)).is_err());
        let same = Announce {
            model_digest: Some(mine),
            ..announce(3)
        };
        assert!(p.check(&same, 0, 1, Some(&mine)).is_ok());
        let fixed = Policy {
            fixed_weight: true,
            ..policy()
        };
        assert!(fixed.check(&announce(3), 0, 2, None).is_err());
        assert!(fixed.check(&announce(3), 0, 1, None).is_ok());
        let trusting = Policy {
            require_peers: [fp(250)].into_iter().collect(),
            require_peers_count: 1,
            ..policy()
        };
        let e = trusting
            .check(&announce(3), 0, 1, None)
            .expect_err("absent");
        assert_eq!(e.parameter, "trusted peers invited");
    }
}
