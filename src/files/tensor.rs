//! Reading model updates and writing means: `.npy` (f32/f64, any shape, C order) and
//! `.safetensors` (several named f32/f64 tensors). Values stream through a callback so a
//! caller never needs a second full-size copy of the input.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
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

/// Reads only the layout (header) of an update. The header is checked against the
/// file's length: a declared size that the file does not hold is refused.
pub fn read_layout(path: &Path) -> Result<Layout> {
    let container = container_of(path)?;
    let (file, len) = open_sized(path)?;
    layout_from_reader(container, path, BufReader::new(file), len).map(|(layout, _)| layout)
}

/// [`read_layout`] of the bytes of a file (the entry point for fuzzing and for callers
/// that hold a file in memory). `name` only labels errors.
pub fn layout_from_bytes(container: Container, name: &Path, bytes: &[u8]) -> Result<Layout> {
    layout_from_reader(
        container,
        name,
        std::io::Cursor::new(bytes),
        bytes.len() as u64,
    )
    .map(|(layout, _)| layout)
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
///
/// The header is parsed and checked against the file's length before anything it
/// declares is allocated; memory is one block whatever the file says.
pub fn read_value_blocks<E, V>(
    path: &Path,
    make_visit: impl FnOnce(&Layout) -> V,
) -> Result<std::result::Result<Layout, E>>
where
    V: FnMut(&[f64]) -> std::result::Result<(), E>,
{
    let container = container_of(path)?;
    let (file, len) = open_sized(path)?;
    value_blocks_from_reader(
        container,
        path,
        BufReader::with_capacity(1 << 20, file),
        len,
        make_visit,
    )
}

/// [`read_value_blocks`] over any seekable reader of `len` bytes (a file, or a
/// `Cursor` over bytes in memory). `name` only labels errors.
pub fn value_blocks_from_reader<R, E, V>(
    container: Container,
    name: &Path,
    mut reader: R,
    len: u64,
    make_visit: impl FnOnce(&Layout) -> V,
) -> Result<std::result::Result<Layout, E>>
where
    R: Read + Seek,
    V: FnMut(&[f64]) -> std::result::Result<(), E>,
{
    let (layout, sections) = layout_from_reader(container, name, &mut reader, len)?;
    let mut visit = make_visit(&layout);
    let mut values: Vec<f64> = Vec::with_capacity(NPY_BLOCK / 8);
    let mut block = vec![0u8; NPY_BLOCK.min(usize::try_from(len).unwrap_or(NPY_BLOCK))];
    for (spec, (offset, bytes)) in layout.tensors.iter().zip(sections) {
        reader
            .seek(SeekFrom::Start(offset))
            .map_err(|e| invalid(name, container, e.to_string()))?;
        let mut left = bytes;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(block.len());
            reader.read_exact(&mut block[..n]).map_err(|e| {
                invalid(
                    name,
                    container,
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        "the data is shorter than its header says (truncated file?)".into()
                    } else {
                        e.to_string()
                    },
                )
            })?;
            values.clear();
            values.extend(decode_block(spec.dtype, &block[..n]));
            if let Err(e) = visit(&values) {
                return Ok(Err(e));
            }
            left -= n as u64;
        }
    }
    Ok(Ok(layout))
}

/// The largest `.npy` header accepted (numpy itself refuses more than 10,000 bytes by
/// default).
pub const MAX_NPY_HEADER: u64 = 1 << 16;
/// The largest `.safetensors` header accepted (the `safetensors` crate's own bound).
pub const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Parses and checks a header: the layout, and each tensor's data section as (offset,
/// length) in layout order. Every size is checked arithmetic, and the data sections must
/// fill the rest of the `len`-byte file exactly.
fn layout_from_reader<R: Read + Seek>(
    container: Container,
    name: &Path,
    reader: R,
    len: u64,
) -> Result<(Layout, Vec<(u64, u64)>)> {
    match container {
        Container::Npy => npy_header(name, reader, len),
        Container::Safetensors => safetensors_header(name, reader, len),
    }
}

fn invalid(name: &Path, container: Container, reason: String) -> Error {
    Error::Invalid {
        path: name.to_owned(),
        kind: match container {
            Container::Npy => "npy",
            Container::Safetensors => "safetensors",
        },
        reason,
    }
}

fn open_sized(path: &Path) -> Result<(File, u64)> {
    let io = |action, source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(|e| io("open", e))?;
    let len = file.metadata().map_err(|e| io("read", e))?.len();
    Ok((file, len))
}

/// Checks that data sections declared `declared` bytes long, starting at `offset`,
/// fill the rest of a `len`-byte file.
fn check_data_len(
    name: &Path,
    container: Container,
    offset: u64,
    declared: u64,
    len: u64,
) -> Result<()> {
    let held = len.saturating_sub(offset);
    if declared > held {
        return Err(invalid(
            name,
            container,
            format!(
                "the data is shorter than its header says (truncated file?): the header declares {declared} bytes of values, the file holds {held}"
            ),
        ));
    }
    if declared < held {
        return Err(invalid(
            name,
            container,
            format!("the file holds {held} bytes of data but its header declares {declared}"),
        ));
    }
    Ok(())
}

fn npy_header<R: Read>(name: &Path, mut reader: R, len: u64) -> Result<(Layout, Vec<(u64, u64)>)> {
    let bad = |reason: String| invalid(name, Container::Npy, reason);
    let mut fixed = [0u8; 8];
    reader
        .read_exact(&mut fixed)
        .map_err(|_| bad("too short for a .npy header".into()))?;
    if &fixed[..6] != b"\x93NUMPY" {
        return Err(bad("wrong magic bytes (not a .npy file)".into()));
    }
    let (hlen, offset) = match fixed[6] {
        1 => {
            let mut b = [0u8; 2];
            reader
                .read_exact(&mut b)
                .map_err(|_| bad("truncated header".into()))?;
            (u64::from(u16::from_le_bytes(b)), 10)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            reader
                .read_exact(&mut b)
                .map_err(|_| bad("truncated header".into()))?;
            (u64::from(u32::from_le_bytes(b)), 12)
        }
        v => return Err(bad(format!("format version {v} is not supported"))),
    };
    if hlen > MAX_NPY_HEADER || hlen > len.saturating_sub(offset) {
        return Err(bad(format!(
            "header of {hlen} bytes is too large for a file of {len} bytes"
        )));
    }
    let mut text = vec![0u8; hlen as usize];
    reader
        .read_exact(&mut text)
        .map_err(|_| bad("truncated header".into()))?;
    let header = npy_dict::parse(&text).map_err(bad)?;
    if header.fortran_order {
        return Err(bad("Fortran-order arrays are not supported".into()));
    }
    let dtype = match header.descr.as_str() {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        other => {
            return Err(Error::UnsupportedDtype {
                path: name.to_owned(),
                name: String::new(),
                dtype: other.to_owned(),
            });
        }
    };
    let layout = Layout {
        container: Container::Npy,
        tensors: vec![TensorSpec {
            name: String::new(),
            shape: header.shape,
            dtype,
        }],
    };
    let declared = layout
        .checked_encoded_len()
        .map_err(|e| bad(e.to_string()))?;
    layout.check().map_err(|e| bad(e.to_string()))?;
    let data = offset + hlen;
    check_data_len(name, Container::Npy, data, declared, len)?;
    Ok((layout, vec![(data, declared)]))
}

/// The `.npy` header dictionary, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`: a strict parser of the
/// Python literal numpy writes (strings, booleans, tuples of integers), nothing else.
mod npy_dict {
    pub(super) struct Header {
        pub descr: String,
        pub fortran_order: bool,
        pub shape: Vec<u64>,
    }

    enum Value {
        Str(String),
        Bool(bool),
        Tuple(Vec<u64>),
    }

    struct P<'a> {
        s: &'a [u8],
        at: usize,
    }

    impl P<'_> {
        fn ws(&mut self) {
            while self.s.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
                self.at += 1;
            }
        }
        fn peek(&self) -> Option<u8> {
            self.s.get(self.at).copied()
        }
        fn eat(&mut self, c: u8) -> bool {
            self.ws();
            if self.peek() == Some(c) {
                self.at += 1;
                true
            } else {
                false
            }
        }
        fn expect(&mut self, c: u8) -> Result<(), String> {
            if self.eat(c) {
                Ok(())
            } else {
                Err(format!(
                    "header: expected '{}' at byte {}",
                    c as char, self.at
                ))
            }
        }
        fn string(&mut self) -> Result<String, String> {
            self.ws();
            let q = match self.peek() {
                Some(q @ (b'\'' | b'"')) => q,
                _ => return Err(format!("header: expected a string at byte {}", self.at)),
            };
            self.at += 1;
            let start = self.at;
            while let Some(c) = self.peek() {
                if c == q {
                    let out = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
                    self.at += 1;
                    return Ok(out);
                }
                if c == b'\\' || !(0x20..0x7f).contains(&c) {
                    return Err("header: unsupported character in a string".into());
                }
                self.at += 1;
            }
            Err("header: unterminated string".into())
        }
        fn int(&mut self) -> Result<u64, String> {
            self.ws();
            let start = self.at;
            let mut n: u64 = 0;
            while let Some(c @ b'0'..=b'9') = self.peek() {
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(c - b'0')))
                    .ok_or("header: a dimension does not fit in 64 bits")?;
                self.at += 1;
            }
            if self.at == start {
                return Err(format!("header: expected a dimension at byte {}", self.at));
            }
            // Python 2 wrote long integers with an L suffix.
            if self.peek() == Some(b'L') {
                self.at += 1;
            }
            Ok(n)
        }
        fn value(&mut self) -> Result<Value, String> {
            self.ws();
            let rest = &self.s[self.at..];
            if rest.starts_with(b"True") {
                self.at += 4;
                return Ok(Value::Bool(true));
            }
            if rest.starts_with(b"False") {
                self.at += 5;
                return Ok(Value::Bool(false));
            }
            if self.eat(b'(') {
                let mut dims = Vec::new();
                loop {
                    if self.eat(b')') {
                        break;
                    }
                    if dims.len() >= 64 {
                        return Err("header: more than 64 dimensions".into());
                    }
                    dims.push(self.int()?);
                    if !self.eat(b',') {
                        self.expect(b')')?;
                        break;
                    }
                }
                return Ok(Value::Tuple(dims));
            }
            self.string().map(Value::Str)
        }
    }

    pub(super) fn parse(text: &[u8]) -> Result<Header, String> {
        let mut p = P { s: text, at: 0 };
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        p.expect(b'{')?;
        loop {
            if p.eat(b'}') {
                break;
            }
            let key = p.string()?;
            p.expect(b':')?;
            let value = p.value()?;
            let slot_taken = match (key.as_str(), value) {
                ("descr", Value::Str(v)) => descr.replace(v).is_some(),
                ("fortran_order", Value::Bool(v)) => fortran.replace(v).is_some(),
                ("shape", Value::Tuple(v)) => shape.replace(v).is_some(),
                ("descr" | "fortran_order" | "shape", _) => {
                    return Err(format!("header: '{key}' has the wrong type"));
                }
                _ => return Err(format!("header: unexpected key '{key}'")),
            };
            if slot_taken {
                return Err(format!("header: '{key}' appears twice"));
            }
            if !p.eat(b',') {
                p.expect(b'}')?;
                break;
            }
        }
        p.ws();
        if p.at != text.len() {
            return Err("header: unexpected bytes after the dictionary".into());
        }
        Ok(Header {
            descr: descr.ok_or("header: no 'descr'")?,
            fortran_order: fortran.ok_or("header: no 'fortran_order'")?,
            shape: shape.ok_or("header: no 'shape'")?,
        })
    }
}

/// One entry of a `.safetensors` header.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

fn safetensors_header<R: Read>(
    name: &Path,
    mut reader: R,
    len: u64,
) -> Result<(Layout, Vec<(u64, u64)>)> {
    let bad = |reason: String| invalid(name, Container::Safetensors, reason);
    let mut n = [0u8; 8];
    reader
        .read_exact(&mut n)
        .map_err(|_| bad("too short for a .safetensors header".into()))?;
    let hlen = u64::from_le_bytes(n);
    if hlen > MAX_SAFETENSORS_HEADER || hlen > len.saturating_sub(8) {
        return Err(bad(format!(
            "header of {hlen} bytes is too large for a file of {len} bytes"
        )));
    }
    let mut json = vec![0u8; hlen as usize];
    reader
        .read_exact(&mut json)
        .map_err(|_| bad("truncated header".into()))?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|e| bad(format!("header: {e}")))?;
    let mut entries: Vec<(String, StEntry)> = Vec::with_capacity(map.len().min(1 << 16));
    for (key, value) in map {
        if key == "__metadata__" {
            if !value.is_object() {
                return Err(bad("header: '__metadata__' is not an object".into()));
            }
            continue;
        }
        let entry: StEntry = serde_json::from_value(value)
            .map_err(|e| bad(format!("header: tensor '{key}': {e}")))?;
        entries.push((key, entry));
    }
    if entries.is_empty() {
        return Err(bad("no tensors".into()));
    }
    let mut specs = Vec::with_capacity(entries.len());
    for (key, e) in &entries {
        let dtype = match e.dtype.as_str() {
            "F32" => DType::F32,
            "F64" => DType::F64,
            other => {
                return Err(Error::UnsupportedDtype {
                    path: name.to_owned(),
                    name: key.clone(),
                    dtype: other.to_owned(),
                });
            }
        };
        let spec = TensorSpec {
            name: key.clone(),
            shape: e.shape.clone(),
            dtype,
        };
        let bytes = spec.checked_bytes().map_err(|e| bad(e.to_string()))?;
        let [start, end] = e.data_offsets;
        if end < start || end - start != bytes {
            return Err(bad(format!(
                "tensor '{key}': data offsets [{start}, {end}] do not match its shape and type ({bytes} bytes)"
            )));
        }
        specs.push((start, end, spec));
    }
    // The data sections must tile the data region: contiguous, in offset order, from 0.
    specs.sort_by_key(|(start, end, _)| (*start, *end));
    let mut at = 0u64;
    for (start, end, spec) in &specs {
        if *start != at {
            return Err(bad(format!(
                "tensor '{}': data offsets overlap or leave a gap",
                spec.name
            )));
        }
        at = *end;
    }
    let data = 8 + hlen;
    check_data_len(name, Container::Safetensors, data, at, len)?;
    specs.sort_by(|a, b| a.2.name.cmp(&b.2.name));
    let sections = specs
        .iter()
        .map(|(start, end, _)| (data + start, end - start))
        .collect();
    let layout = Layout {
        container: Container::Safetensors,
        tensors: specs.into_iter().map(|(_, _, spec)| spec).collect(),
    };
    layout.check().map_err(|e| bad(e.to_string()))?;
    Ok((layout, sections))
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
    layout.check().map_err(|e| Error::Invalid {
        path: path.to_owned(),
        kind: "values",
        reason: e.to_string(),
    })?;
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
                    // Checked by `layout.check()` above, and `bytes` is exactly that long.
                    let size = spec.checked_bytes().unwrap_or(0) as usize;
                    let data = bytes.get(at..at + size).unwrap_or(&[]);
                    let view = safetensors::tensor::TensorView::new(dtype, shape, data)
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

fn st_err(path: &Path, e: safetensors::SafeTensorError) -> Error {
    Error::Invalid {
        path: path.to_owned(),
        kind: "safetensors",
        reason: e.to_string(),
    }
}

#[cfg(test)]
#[path = "tensor_tests.rs"]
mod tests;
