//! Unit tests of `tensor`.
use super::*;
use crate::layout::decode_values;

#[test]
fn a_truncated_npy_is_refused_with_a_clear_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("t.npy");
    let layout = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![3_000_000],
            dtype: DType::F32,
        }],
    };
    write_values(&path, &layout, (0..3_000_000).map(f64::from)).expect("write");
    let full = std::fs::read(&path).expect("read");
    std::fs::write(&path, &full[..full.len() - 10]).expect("truncate");
    let mut seen = 0u64;
    let err = read_values(&path, |_| {
        seen += 1;
        Ok::<(), ()>(())
    })
    .expect_err("truncated");
    assert!(
        err.to_string().contains("shorter than its header says"),
        "{err}"
    );
    // The header is compared with the file's length before any value is read.
    assert_eq!(seen, 0);
}

#[test]
fn npy_and_safetensors_round_trip() {
    let dir = tempfile::tempdir().expect("tmp");
    for (name, layout) in [
        (
            "a.npy",
            Layout {
                container: Container::Npy,
                tensors: vec![TensorSpec {
                    name: String::new(),
                    shape: vec![2, 3],
                    dtype: DType::F32,
                }],
            },
        ),
        (
            "b.npy",
            Layout {
                container: Container::Npy,
                tensors: vec![TensorSpec {
                    name: String::new(),
                    shape: vec![5],
                    dtype: DType::F64,
                }],
            },
        ),
        (
            "c.safetensors",
            Layout {
                container: Container::Safetensors,
                tensors: vec![
                    TensorSpec {
                        name: "bias".into(),
                        shape: vec![2],
                        dtype: DType::F64,
                    },
                    TensorSpec {
                        name: "weight".into(),
                        shape: vec![2, 2],
                        dtype: DType::F32,
                    },
                ],
            },
        ),
    ] {
        let path = dir.path().join(name);
        let n = layout.elements() as usize;
        let vals: Vec<f64> = (0..n).map(|i| i as f64 * 0.5 - 1.0).collect();
        write_values(&path, &layout, vals.iter().copied()).expect("write");
        assert_eq!(read_layout(&path).expect("layout"), layout);
        let mut got = Vec::new();
        let back = read_values(&path, |v| {
            got.push(v);
            Ok::<(), ()>(())
        })
        .expect("read")
        .expect("visit");
        assert_eq!(back, layout);
        assert_eq!(got, vals);
        // The encoded form is the data section: it decodes to the same values, and
        // writing it gives the same file byte for byte.
        let bytes = encode_values(&layout, vals.iter().copied());
        assert_eq!(bytes.len() as u64, layout.encoded_len());
        assert_eq!(decode_values(&layout, &bytes).collect::<Vec<_>>(), vals);
        let again = dir.path().join(format!("again-{name}"));
        write_encoded(&again, &layout, &bytes).expect("write encoded");
        assert_eq!(
            std::fs::read(&again).expect("read"),
            std::fs::read(&path).expect("read")
        );
        // A wrong length is refused and leaves nothing behind.
        let bad = dir.path().join(format!("bad-{name}"));
        assert!(write_encoded(&bad, &layout, &bytes[1..]).is_err());
        assert!(!bad.exists());
    }
    assert!(matches!(
        container_of(Path::new("x.csv")),
        Err(Error::UnknownContainer(_))
    ));
}
