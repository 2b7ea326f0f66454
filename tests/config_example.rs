//! `etc/config.example.toml` documents `config.toml`: it parses as written, and with its
//! `[policy]` table uncommented every documented key is understood (unknown keys are
//! refused, so a typo in the example would fail here).

use secagg::pki::identity::Config;

#[test]
fn the_example_config_and_its_policy_table_parse() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/etc/config.example.toml"
    ))
    .expect("example");
    let plain: Config = toml::from_str(&text).expect("as written");
    assert!(plain.policy.is_empty());
    let mut in_policy = false;
    let uncommented: String = text
        .lines()
        .map(|l| {
            if l.trim() == "# [policy]" {
                in_policy = true;
                return "[policy]".to_string();
            }
            match l.strip_prefix("# ") {
                Some(rest) if in_policy && rest.contains(" = ") => {
                    rest.split(" #").next().unwrap_or(rest).to_string()
                }
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let with_policy: Config = toml::from_str(&uncommented).expect("with [policy]");
    let p = with_policy.policy;
    assert_eq!(p.federation.as_deref(), Some("study-42"));
    assert_eq!(p.max_clip, Some(100.0));
    assert_eq!((p.min_bits, p.max_bits), (Some(2), Some(32)));
    assert_eq!(p.max_weight, Some(1_000_000));
    assert_eq!((p.min_nodes, p.min_threshold), (Some(3), Some(7)));
    assert_eq!(p.require_peers.map(|v| v.len()), Some(2));
    assert_eq!(p.require_peers_count, Some(1));
    assert_eq!(p.fixed_weight, Some(false));
}
