//! Reading model updates and writing means: `.npy` (f32/f64, any shape, C order) and
//! `.safetensors` (several named f32/f64 tensors). Values stream through a callback so a
//! caller never needs a second full-size copy of the input.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;
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

impl Layout {
    /// Total number of values.
    pub fn elements(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| t.shape.iter().product::<u64>())
            .sum()
    }
}

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

impl Error {
    /// What to do.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Error::UnknownContainer(_) => {
                "save the update with numpy.save (.npy) or safetensors (.safetensors)".into()
            }
            Error::Io { .. } => "check the path and permissions".into(),
            Error::Invalid { .. } => {
                "re-export the update; Fortran-order arrays need numpy.ascontiguousarray first"
                    .into()
            }
            Error::UnsupportedDtype { .. } => {
                "convert the update to float32 or float64 before masking".into()
            }
        })
    }
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
    match container_of(path)? {
        Container::Npy => {
            let (file, layout) = open_npy(path)?;
            let mut visit = make_visit(&layout);
            let bad = |e: std::io::Error| Error::Invalid {
                path: path.to_owned(),
                kind: "npy",
                reason: e.to_string(),
            };
            macro_rules! stream {
                ($t:ty) => {{
                    let data = file.data::<$t>().map_err(|e| Error::Invalid {
                        path: path.to_owned(),
                        kind: "npy",
                        reason: e.to_string(),
                    })?;
                    for v in data {
                        if let Err(e) = visit(f64::from(v.map_err(bad)?)) {
                            return Ok(Err(e));
                        }
                    }
                }};
            }
            match layout.tensors[0].dtype {
                DType::F32 => stream!(f32),
                DType::F64 => stream!(f64),
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
                match spec.dtype {
                    DType::F32 => {
                        for c in view.data().chunks_exact(4) {
                            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                            if let Err(e) = visit(f64::from(v)) {
                                return Ok(Err(e));
                            }
                        }
                    }
                    DType::F64 => {
                        for c in view.data().chunks_exact(8) {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(c);
                            if let Err(e) = visit(f64::from_le_bytes(a)) {
                                return Ok(Err(e));
                            }
                        }
                    }
                }
            }
            Ok(Ok(layout))
        }
    }
}

/// Writes values in `layout` to `path` (via a temporary file renamed into place).
pub fn write_values(path: &Path, layout: &Layout, values: impl Iterator<Item = f64>) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.partial", path.display()));
    let io = |action, source| Error::Io {
        action,
        path: tmp.clone(),
        source,
    };
    let mut values = values;
    match layout.container {
        Container::Npy => {
            let spec = &layout.tensors[0];
            let file =
                BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(|e| io("create", e))?);
            macro_rules! write {
                ($t:ty) => {{
                    let mut w = npyz::WriteOptions::<$t>::new()
                        .default_dtype()
                        .shape(&spec.shape)
                        .writer(file)
                        .begin_nd()
                        .map_err(|e| io("write", e))?;
                    w.extend(values.by_ref().map(|v| v as $t))
                        .map_err(|e| io("write", e))?;
                    w.finish().map_err(|e| io("write", e))?;
                }};
            }
            match spec.dtype {
                DType::F32 => write!(f32),
                DType::F64 => write!(f64),
            }
        }
        Container::Safetensors => {
            let mut buffers = Vec::with_capacity(layout.tensors.len());
            for spec in &layout.tensors {
                let n = spec.shape.iter().product::<u64>() as usize;
                let mut buf = Vec::with_capacity(n * 8);
                for v in values.by_ref().take(n) {
                    match spec.dtype {
                        DType::F32 => buf.extend_from_slice(&(v as f32).to_le_bytes()),
                        DType::F64 => buf.extend_from_slice(&v.to_le_bytes()),
                    }
                }
                buffers.push(buf);
            }
            let views = layout
                .tensors
                .iter()
                .zip(&buffers)
                .map(|(spec, buf)| {
                    let dtype = match spec.dtype {
                        DType::F32 => safetensors::Dtype::F32,
                        DType::F64 => safetensors::Dtype::F64,
                    };
                    let shape = spec.shape.iter().map(|d| *d as usize).collect();
                    safetensors::tensor::TensorView::new(dtype, shape, buf)
                        .map(|v| (spec.name.clone(), v))
                        .map_err(|e| st_err(path, e))
                })
                .collect::<Result<Vec<_>>>()?;
            safetensors::serialize_to_file(views, None, &tmp).map_err(|e| st_err(path, e))?;
        }
    }
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        action: "move into place",
        path: path.to_owned(),
        source,
    })
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
        }
        assert!(matches!(
            container_of(Path::new("x.csv")),
            Err(Error::UnknownContainer(_))
        ));
    }
}
