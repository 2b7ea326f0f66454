//! Writes a random f32 `.npy` update of N elements (for scripts/measure-memory and demos).
//! Usage: cargo run --release --example make_update -- OUT.npy N [SEED]

use secagg::layout::{Container, DType, Layout, TensorSpec};

use secagg::files::tensor::write_values;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(out), Some(n)) = (args.get(1), args.get(2)) else {
        return Err("usage: make_update OUT.npy N [SEED]".into());
    };
    let n: u64 = n.parse()?;
    let mut s: u64 = args.get(3).map_or(Ok(1), |s| s.parse())? | 1;
    let layout = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: vec![n],
            dtype: DType::F32,
        }],
    };
    let values = (0..n).map(move |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 * 1.6 - 0.8
    });
    write_values(std::path::Path::new(out), &layout, values)?;
    Ok(())
}
