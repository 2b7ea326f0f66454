//! The shape of an update: its container, tensor names, shapes and element types, and
//! the encoding of its values as the little-endian bytes of a file's data sections.
//!
//! A leaf module: sums, tensor files, wire messages and rounds all describe vectors
//! with it.

use serde::{Deserialize, Serialize};

/// File kinds we read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    /// NumPy `.npy`.
    Npy,
    /// Hugging Face `.safetensors`.
    Safetensors,
}

/// Element types we accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
}

/// One tensor's name, shape and type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Name (empty for `.npy`).
    pub name: String,
    /// Shape, C order.
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: DType,
}

/// The structure of an update: container and tensors, in the order values stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// File kind.
    pub container: Container,
    /// Tensors (sorted by name for safetensors).
    pub tensors: Vec<TensorSpec>,
}

impl DType {
    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }
}

impl Layout {
    /// Bytes of the values alone, each in its tensor's type (see [`encode_values`]).
    pub fn encoded_len(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.shape.iter().product::<u64>() * t.dtype.bytes() as u64)
            .sum()
    }

    /// Total number of values.
    pub fn elements(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.shape.iter().product::<u64>())
            .sum()
    }
}

/// The values of little-endian `bytes` of one type.
pub fn decode_block(dtype: DType, bytes: &[u8]) -> impl Iterator<Item = f64> + '_ {
    bytes.chunks_exact(dtype.bytes()).map(move |c| match dtype {
        DType::F32 => f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        DType::F64 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            f64::from_le_bytes(a)
        }
    })
}

/// Encodes values in `layout` order, each little-endian in its tensor's type: the bytes
/// of the data sections of the file [`write_values`] would write. A missing value is
/// written as 0 (callers pass exactly `layout.elements()` values).
pub fn encode_values(layout: &Layout, values: impl Iterator<Item = f64>) -> Vec<u8> {
    let mut out = vec![0u8; layout.encoded_len() as usize];
    let mut values = values;
    let mut at = 0;
    for spec in &layout.tensors {
        let n = spec.shape.iter().product::<u64>() as usize;
        let size = n * spec.dtype.bytes();
        let dst = &mut out[at..at + size];
        match spec.dtype {
            DType::F32 => dst
                .chunks_exact_mut(4)
                .zip(values.by_ref().take(n))
                .for_each(|(d, v)| d.copy_from_slice(&(v as f32).to_le_bytes())),
            DType::F64 => dst
                .chunks_exact_mut(8)
                .zip(values.by_ref().take(n))
                .for_each(|(d, v)| d.copy_from_slice(&v.to_le_bytes())),
        }
        at += size;
    }
    out
}

/// The values of bytes from [`encode_values`], in layout order. `bytes` must be
/// `layout.encoded_len()` long (a shorter one yields fewer values).
pub fn decode_values<'a>(layout: &'a Layout, bytes: &'a [u8]) -> impl Iterator<Item = f64> + 'a {
    let mut at = 0;
    layout.tensors.iter().flat_map(move |spec| {
        let size = spec.shape.iter().product::<u64>() as usize * spec.dtype.bytes();
        let part = bytes.get(at..at + size).unwrap_or(&[]);
        at += size;
        decode_block(spec.dtype, part)
    })
}
