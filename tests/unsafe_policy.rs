//! The crate denies `unsafe` code (Cargo.toml `[lints.rust]`); exactly three modules
//! are allowed it: the vector code of `secagg::simd`, the VAES keystream-and-fold kernel
//! of `secagg::ctr_fold` and the huge-page advice of `hugepages` (docs/architecture.md,
//! "Unsafe code"). A deny can be overridden by an
//! `allow` anywhere, so this test keeps the exceptions to those modules.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_simd_ctr_fold_and_hugepages_modules_allow_unsafe_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 20, "found the sources");
    let allowing: Vec<String> = files
        .iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).expect("read");
            text.lines()
                .map(|l| l.split("//").next().unwrap_or_default())
                .any(|l| l.contains("unsafe_code") && !l.contains("deny"))
        })
        .map(|p| {
            p.strip_prefix(root)
                .expect("under the root")
                .display()
                .to_string()
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        allowing,
        [
            "src/hugepages.rs",
            "src/secagg/ctr_fold.rs",
            "src/secagg/simd.rs"
        ]
    );
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    assert!(
        manifest.contains("unsafe_code = \"deny\""),
        "the crate-wide lint stays"
    );
}
