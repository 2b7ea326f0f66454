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

/// A shape whose size does not fit in 64 bits (a hostile or corrupt header).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The element count or byte size of a tensor, or of the whole layout, overflows.
    #[error("tensor '{tensor}' of shape {shape:?} is too large: its size overflows 64 bits")]
    TooLarge {
        /// The tensor's name (empty for `.npy`).
        tensor: String,
        /// Its declared shape.
        shape: Vec<u64>,
    },
}

impl TensorSpec {
    /// The number of values, with checked arithmetic.
    pub fn checked_elements(&self) -> Result<u64, Error> {
        self.shape
            .iter()
            .try_fold(1u64, |a, d| a.checked_mul(*d))
            .ok_or_else(|| self.too_large())
    }

    /// The bytes of the values, with checked arithmetic.
    pub fn checked_bytes(&self) -> Result<u64, Error> {
        self.checked_elements()?
            .checked_mul(self.dtype.bytes() as u64)
            .ok_or_else(|| self.too_large())
    }

    fn too_large(&self) -> Error {
        Error::TooLarge {
            tensor: self.name.clone(),
            shape: self.shape.clone(),
        }
    }
}

impl Layout {
    /// Checks that every size of this layout fits in 64 bits (and in memory indices),
    /// so that [`Layout::elements`] and [`Layout::encoded_len`] are exact. Every parser of
    /// outside bytes calls this before using a layout.
    pub fn check(&self) -> Result<(), Error> {
        self.checked_encoded_len()?;
        self.checked_elements()?;
        Ok(())
    }

    /// Bytes of the values alone, with checked arithmetic.
    pub fn checked_encoded_len(&self) -> Result<u64, Error> {
        self.tensors.iter().try_fold(0u64, |a, t| {
            a.checked_add(t.checked_bytes()?)
                .filter(|n| usize::try_from(*n).is_ok())
                .ok_or_else(|| t.too_large())
        })
    }

    /// Total number of values, with checked arithmetic; the weight word that follows
    /// them in a masked vector is counted as fitting too.
    pub fn checked_elements(&self) -> Result<u64, Error> {
        self.tensors.iter().try_fold(0u64, |a, t| {
            a.checked_add(t.checked_elements()?)
                .filter(|n| n.checked_add(1).is_some())
                .ok_or_else(|| t.too_large())
        })
    }

    /// Bytes of the values alone, each in its tensor's type (see [`encode_values`]).
    /// Saturates at `u64::MAX` for a layout that fails [`Layout::check`].
    pub fn encoded_len(&self) -> u64 {
        self.checked_encoded_len().unwrap_or(u64::MAX)
    }

    /// Total number of values. Saturates at `u64::MAX` for a layout that fails
    /// [`Layout::check`].
    pub fn elements(&self) -> u64 {
        self.checked_elements().unwrap_or(u64::MAX)
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

/// [`decode_block`] appended to `out`, one loop per type (so it vectorises).
pub fn decode_into(dtype: DType, bytes: &[u8], out: &mut Vec<f64>) {
    match dtype {
        DType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        ),
        DType::F64 => out.extend(bytes.chunks_exact(8).map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            f64::from_le_bytes(a)
        })),
    }
}

/// Encodes values in `layout` order, each little-endian in its tensor's type: the bytes
/// of the data sections of the file [`write_values`] would write. A missing value is
/// written as 0 (callers pass exactly `layout.elements()` values).
pub fn encode_values(layout: &Layout, values: impl Iterator<Item = f64>) -> Vec<u8> {
    // A layout that fails `Layout::check` encodes to nothing (callers check first).
    let mut out = vec![0u8; layout.checked_encoded_len().unwrap_or(0) as usize];
    let mut values = values;
    let mut at = 0usize;
    for spec in &layout.tensors {
        // `out` holds `encoded_len` bytes, so every checked size below fits in it.
        let n = spec.checked_elements().unwrap_or(0) as usize;
        let size = spec.checked_bytes().unwrap_or(0) as usize;
        let Some(dst) = out.get_mut(at..at.saturating_add(size)) else {
            break;
        };
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

/// The index (in layout order) of the first value of `bytes` (as [`encode_values`]
/// writes them) for which `bad` holds, if any. One branch-free pass per tensor (it
/// vectorises); the index is looked up only when something was found.
pub fn find_value(layout: &Layout, bytes: &[u8], bad: impl Fn(f64) -> bool) -> Option<u64> {
    let (mut at, mut index) = (0usize, 0u64);
    for spec in &layout.tensors {
        let size = spec.checked_bytes().unwrap_or(0) as usize;
        let part = bytes.get(at..at.saturating_add(size)).unwrap_or(&[]);
        let f32s = || {
            part.chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        };
        let f64s = || {
            part.chunks_exact(8).map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a)
            })
        };
        let found = match spec.dtype {
            DType::F32 => f32s()
                .fold(false, |b, v| b | bad(v))
                .then(|| f32s().position(&bad)),
            DType::F64 => f64s()
                .fold(false, |b, v| b | bad(v))
                .then(|| f64s().position(&bad)),
        };
        if let Some(Some(i)) = found {
            return Some(index + i as u64);
        }
        index += spec.checked_elements().unwrap_or(0);
        at = at.saturating_add(size);
    }
    None
}

/// The values of bytes from [`encode_values`], in layout order. `bytes` must be
/// `layout.encoded_len()` long (a shorter one yields fewer values).
pub fn decode_values<'a>(layout: &'a Layout, bytes: &'a [u8]) -> impl Iterator<Item = f64> + 'a {
    let mut at = 0usize;
    layout.tensors.iter().flat_map(move |spec| {
        let size = spec.checked_bytes().unwrap_or(0) as usize;
        let part = bytes.get(at..at.saturating_add(size)).unwrap_or(&[]);
        at = at.saturating_add(size);
        decode_block(spec.dtype, part)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_value_finds_the_first_in_layout_order() {
        let layout = Layout {
            container: Container::Safetensors,
            tensors: vec![
                TensorSpec {
                    name: "a".into(),
                    shape: vec![3],
                    dtype: DType::F32,
                },
                TensorSpec {
                    name: "b".into(),
                    shape: vec![4],
                    dtype: DType::F64,
                },
            ],
        };
        let vals = [0.5, -0.25, 0.0, 1.0, 9.0, -9.0, f64::NAN];
        let bytes = encode_values(&layout, vals.into_iter());
        let big = |v: f64| v.is_nan() || v.abs() > 2.0;
        assert_eq!(find_value(&layout, &bytes, big), Some(4));
        assert_eq!(find_value(&layout, &bytes, f64::is_nan), Some(6));
        assert_eq!(find_value(&layout, &bytes, |v| v < -0.2), Some(1));
        assert_eq!(find_value(&layout, &bytes, |v| v > 100.0), None);
        // The same answers as a scan of the decoded values.
        for bad in [big, |v: f64| v == 1.0, |v: f64| v < 0.0] {
            let want = decode_values(&layout, &bytes)
                .position(bad)
                .map(|i| i as u64);
            assert_eq!(find_value(&layout, &bytes, bad), want);
        }
    }

    fn npy(shape: Vec<u64>) -> Layout {
        Layout {
            container: Container::Npy,
            tensors: vec![TensorSpec {
                name: String::new(),
                shape,
                dtype: DType::F64,
            }],
        }
    }

    #[test]
    fn sizes_are_checked_arithmetic() {
        assert_eq!(npy(vec![2, 3]).checked_encoded_len(), Ok(48));
        assert_eq!(npy(vec![]).checked_elements(), Ok(1));
        for shape in [vec![1 << 62, 4], vec![u64::MAX, 2], vec![1 << 61, 1]] {
            let l = npy(shape.clone());
            assert!(
                matches!(l.check(), Err(Error::TooLarge { .. })),
                "{shape:?}"
            );
            // The unchecked forms saturate instead of wrapping or panicking.
            assert_eq!(l.encoded_len(), u64::MAX);
        }
        assert!(encode_values(&npy(vec![1 << 62, 4]), std::iter::empty()).is_empty());
    }
}
