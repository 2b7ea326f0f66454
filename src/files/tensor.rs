//! Reading model updates and writing means: `.npy` (f32/f64, any shape, C order) and
//! `.safetensors` (several named f32/f64 tensors). Values stream through a callback so a
//! caller never needs a second full-size copy of the input.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;

use crate::atomic;
use crate::layout::{Container, DType, Layout, TensorSpec, decode_block, encode_values};

/// Errors reading or writing tensors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither `.npy` nor `.safetensors`.
    #[error("{}: unsupported file type; expected a .npy or .safetensors file", .0.display())]
    UnknownContainer(PathBuf),
    /// I/O failure.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A malformed file.
    #[error("{}: invalid {kind} file: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// npy or safetensors.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An element type other than f32/f64.
    #[error("{}: tensor '{name}' has type {dtype}; secagg accepts f32 and f64", path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Its type.
        dtype: String,
    },
}

type Result<T> = std::result::Result<T, Error>;

/// The container a path names, by extension.
pub fn container_of(path: &Path) -> Result<Container> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => Ok(Container::Npy),
        Some("safetensors") => Ok(Container::Safetensors),
        _ => Err(Error::UnknownContainer(path.to_owned())),
    }
}

/// Reads only the layout (header) of an update.
pub fn read_layout(path: &Path) -> Result<Layout> {
    match container_of(path)? {
        Container::Npy => {
            let npy = open_npy(path)?;
            Ok(npy.1)
        }
        Container::Safetensors => {
            let bytes = read_all(path)?;
            safetensors_layout(path, &bytes)
        }
    }
}

/// Streams every value of an update, in layout order, into `visit`.
pub fn read_values<E>(
    path: &Path,
    visit: impl FnMut(f64) -> std::result::Result<(), E>,
) -> Result<std::result::Result<Layout, E>> {
    read_values_with_layout(path, |_| visit)
}

/// Like [`read_values`], but builds the visitor from the layout first, so a caller can
/// size its buffers without opening the file a second time.
pub fn read_values_with_layout<E, V>(
    path: &Path,
    make_visit: impl FnOnce(&Layout) -> V,
) -> Result<std::result::Result<Layout, E>>
where
    V: FnMut(f64) -> std::result::Result<(), E>,
{
    read_value_blocks(path, |layout| {
        let mut visit = make_visit(layout);
        move |values: &[f64]| values.iter().try_for_each(|v| visit(*v))
    })
}

/// Streams every value of an update, in layout order, as blocks of at most 128 Ki
/// values (the fast path: a caller can process a block in one tight loop).
pub fn read_value_blocks<E, V>(
    path: &Path,
    make_visit: impl FnOnce(&Layout) -> V,
) -> Result<std::result::Result<Layout, E>>
where
    V: FnMut(&[f64]) -> std::result::Result<(), E>,
{
    let mut values: Vec<f64> = Vec::with_capacity(NPY_BLOCK / 8);
    match container_of(path)? {
        Container::Npy => {
            let (file, layout) = open_npy(path)?;
            let mut visit = make_visit(&layout);
            let dtype = layout.tensors[0].dtype;
            // The data section is the values, contiguous and little-endian: read it in
            // blocks rather than value by value.
            let mut left = layout.encoded_len();
            let mut data = file.into_inner();
            let mut block = vec![0u8; (NPY_BLOCK / 8 * dtype.bytes()).min(left as usize)];
            while left > 0 {
                let n = (left as usize).min(block.len());
                data.read_exact(&mut block[..n])
                    .map_err(|e| Error::Invalid {
                        path: path.to_owned(),
                        kind: "npy",
                        reason: if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            "the data is shorter than its header says (truncated file?)".into()
                        } else {
                            e.to_string()
                        },
                    })?;
                values.clear();
                values.extend(decode_block(dtype, &block[..n]));
                if let Err(e) = visit(&values) {
                    return Ok(Err(e));
                }
                left -= n as u64;
            }
            Ok(Ok(layout))
        }
        Container::Safetensors => {
            let bytes = read_all(path)?;
            let layout = safetensors_layout(path, &bytes)?;
            let mut visit = make_visit(&layout);
            let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| st_err(path, e))?;
            for spec in &layout.tensors {
                let view = st.tensor(&spec.name).map_err(|e| st_err(path, e))?;
                let size = spec.dtype.bytes();
                for part in view.data().chunks(NPY_BLOCK / 8 * size) {
                    values.clear();
                    values.extend(decode_block(spec.dtype, part));
                    if let Err(e) = visit(&values) {
                        return Ok(Err(e));
                    }
                }
            }
            Ok(Ok(layout))
        }
    }
}

/// Bytes of `.npy` data read at a time (a multiple of every value size).
const NPY_BLOCK: usize = 1 << 20;

/// Writes values in `layout` to `path` (via a temporary file renamed into place).
pub fn write_values(path: &Path, layout: &Layout, values: impl Iterator<Item = f64>) -> Result<()> {
    write_encoded(path, layout, &encode_values(layout, values))
}

/// Writes `bytes` from [`encode_values`] as the file `layout` describes, via a temporary
/// file renamed into place, so a failure never leaves a partial file at `path`.
pub fn write_encoded(path: &Path, layout: &Layout, bytes: &[u8]) -> Result<()> {
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if bytes.len() as u64 != layout.encoded_len() {
        return Err(Error::Invalid {
            path: path.to_owned(),
            kind: "values",
            reason: format!(
                "{} bytes for a layout of {} bytes (our bug)",
                bytes.len(),
                layout.encoded_len()
            ),
        });
    }
    let mut staged = atomic::stage(path, false).map_err(|e| io("create", e))?;
    match layout.container {
        Container::Npy => {
            let spec = &layout.tensors[0];
            let mut file = BufWriter::with_capacity(1 << 16, staged.file());
            let header = match spec.dtype {
                DType::F32 => npyz::WriteOptions::<f32>::new()
                    .default_dtype()
                    .shape(&spec.shape)
                    .writer(&mut file)
                    .write_header_only()
                    .map(|_| ()),
                DType::F64 => npyz::WriteOptions::<f64>::new()
                    .default_dtype()
                    .shape(&spec.shape)
                    .writer(&mut file)
                    .write_header_only()
                    .map(|_| ()),
            };
            header.map_err(|e| io("write", e))?;
            file.write_all(bytes).map_err(|e| io("write", e))?;
            file.flush().map_err(|e| io("write", e))?;
        }
        Container::Safetensors => {
            let mut at = 0;
            let views = layout
                .tensors
                .iter()
                .map(|spec| {
                    let dtype = match spec.dtype {
                        DType::F32 => safetensors::Dtype::F32,
                        DType::F64 => safetensors::Dtype::F64,
                    };
                    let shape: Vec<usize> = spec.shape.iter().map(|d| *d as usize).collect();
                    let size = shape.iter().product::<usize>() * spec.dtype.bytes();
                    let view =
                        safetensors::tensor::TensorView::new(dtype, shape, &bytes[at..at + size])
                            .map(|v| (spec.name.clone(), v))
                            .map_err(|e| st_err(path, e));
                    at += size;
                    view
                })
                .collect::<Result<Vec<_>>>()?;
            safetensors::serialize_to_file(views, None, staged.tmp_path())
                .map_err(|e| st_err(path, e))?;
        }
    }
    staged.commit().map_err(|e| io("move into place", e))
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn open_npy(path: &Path) -> Result<(npyz::NpyFile<BufReader<File>>, Layout)> {
    let file = File::open(path).map_err(|source| Error::Io {
        action: "open",
        path: path.to_owned(),
        source,
    })?;
    let invalid = |reason: String| Error::Invalid {
        path: path.to_owned(),
        kind: "npy",
        reason,
    };
    let npy = npyz::NpyFile::new(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| invalid(e.to_string()))?;
    if npy.order() != npyz::Order::C {
        return Err(invalid("Fortran-order arrays are not supported".into()));
    }
    let descr = npy.dtype().descr();
    let dtype = match descr.as_str() {
        "'<f4'" | "<f4" => DType::F32,
        "'<f8'" | "<f8" => DType::F64,
        other => {
            return Err(Error::UnsupportedDtype {
                path: path.to_owned(),
                name: String::new(),
                dtype: other.trim_matches('\'').to_owned(),
            });
        }
    };
    let layout = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: npy.shape().to_vec(),
            dtype,
        }],
    };
    Ok((npy, layout))
}

fn safetensors_layout(path: &Path, bytes: &[u8]) -> Result<Layout> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| st_err(path, e))?;
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    if names.is_empty() {
        return Err(Error::Invalid {
            path: path.to_owned(),
            kind: "safetensors",
            reason: "no tensors".into(),
        });
    }
    let tensors = names
        .into_iter()
        .map(|name| {
            let view = st.tensor(name).map_err(|e| st_err(path, e))?;
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F64 => DType::F64,
                other => {
                    return Err(Error::UnsupportedDtype {
                        path: path.to_owned(),
                        name: name.to_owned(),
                        dtype: format!("{other:?}"),
                    });
                }
            };
            Ok(TensorSpec {
                name: name.to_owned(),
                shape: view.shape().iter().map(|d| *d as u64).collect(),
                dtype,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Layout {
        container: Container::Safetensors,
        tensors,
    })
}

fn st_err(path: &Path, e: safetensors::SafeTensorError) -> Error {
    Error::Invalid {
        path: path.to_owned(),
        kind: "safetensors",
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
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
        // The whole blocks before the short one were visited, nothing after.
        assert_eq!(seen, 12_000_000 / NPY_BLOCK as u64 * (NPY_BLOCK as u64 / 4));
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
}
