//! Reading model updates and writing means: `.npy` (f32/f64, any shape, C order) and
//! `.safetensors` (several named f32/f64 tensors). Values stream through a callback so a
//! caller never needs a second full-size copy of the input.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use npyz::WriterBuilder;

use crate::atomic;
pub use crate::files::npy::MAX_NPY_HEADER;
use crate::files::npy::npy_header;
pub use crate::files::tensor_error::Error;
use crate::files::tensor_error::{check_data_len, invalid};
use crate::layout::{Container, DType, Layout, TensorSpec, encode_values};

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
    read_raw_blocks(path, |layout| {
        let mut visit = make_visit(layout);
        move |values: &[f64], _: &[u8]| visit(values)
    })
}

/// [`read_value_blocks`] over any seekable reader of `len` bytes (a file, or a
/// `Cursor` over bytes in memory). `name` only labels errors.
pub fn value_blocks_from_reader<R, E, V>(
    container: Container,
    name: &Path,
    reader: R,
    len: u64,
    make_visit: impl FnOnce(&Layout) -> V,
) -> Result<std::result::Result<Layout, E>>
where
    R: Read + Seek,
    V: FnMut(&[f64]) -> std::result::Result<(), E>,
{
    blocks_from_reader(container, name, reader, len, true, |layout| {
        let mut visit = make_visit(layout);
        move |values: &[f64], _: DType, _: &[u8]| visit(values)
    })
}

/// [`read_value_blocks`], handing `visit` each block's values together with the bytes
/// of the file they were decoded from: each value little-endian in its tensor's own
/// type (4 bytes for f32, 8 for f64), so `bytes.len()` is `values.len()` times the
/// tensor's value size and a block never straddles two tensors. Over the whole read
/// the bytes are the tensors' data sections in layout order, whatever the container.
pub fn read_raw_blocks<E, V>(
    path: &Path,
    make_visit: impl FnOnce(&Layout) -> V,
) -> Result<std::result::Result<Layout, E>>
where
    V: FnMut(&[f64], &[u8]) -> std::result::Result<(), E>,
{
    file_blocks(path, true, |layout| {
        let mut visit = make_visit(layout);
        move |values: &[f64], _: DType, bytes: &[u8]| visit(values, bytes)
    })
}

/// [`read_raw_blocks`] without decoding: `visit` gets each block's bytes and the type of
/// the tensor they belong to (for a caller that converts the values itself, in its own
/// loop).
pub fn read_data_blocks<E, V>(
    path: &Path,
    make_visit: impl FnOnce(&Layout) -> V,
) -> Result<std::result::Result<Layout, E>>
where
    V: FnMut(DType, &[u8]) -> std::result::Result<(), E>,
{
    file_blocks(path, false, |layout| {
        let mut visit = make_visit(layout);
        move |_: &[f64], dtype: DType, bytes: &[u8]| visit(dtype, bytes)
    })
}

/// [`blocks_from_reader`] over the file at `path`, read 1 MiB at a time.
fn file_blocks<E, V>(
    path: &Path,
    decode: bool,
    make_visit: impl FnOnce(&Layout) -> V,
) -> Result<std::result::Result<Layout, E>>
where
    V: FnMut(&[f64], DType, &[u8]) -> std::result::Result<(), E>,
{
    let container = container_of(path)?;
    let (file, len) = open_sized(path)?;
    let reader = BufReader::with_capacity(1 << 20, file);
    blocks_from_reader(container, path, reader, len, decode, make_visit)
}

/// The reader behind [`read_value_blocks`], [`read_raw_blocks`] and
/// [`read_data_blocks`]; the values are decoded only when `decode` (else `visit` gets
/// none).
fn blocks_from_reader<R, E, V>(
    container: Container,
    name: &Path,
    mut reader: R,
    len: u64,
    decode: bool,
    make_visit: impl FnOnce(&Layout) -> V,
) -> Result<std::result::Result<Layout, E>>
where
    R: Read + Seek,
    V: FnMut(&[f64], DType, &[u8]) -> std::result::Result<(), E>,
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
            // A section is a whole number of values and shorter than the file, so `n` is
            // either all that is left of it or NPY_BLOCK, a multiple of every value size.
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
            if decode {
                crate::layout::decode_into(spec.dtype, &block[..n], &mut values);
                debug_assert_eq!(values.len() * spec.dtype.bytes(), n);
            }
            if let Err(e) = visit(&values, spec.dtype, &block[..n]) {
                return Ok(Err(e));
            }
            left -= n as u64;
        }
    }
    Ok(Ok(layout))
}

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
            // `stage` always names its file.
            let tmp = staged.tmp_path().map(Path::to_owned).ok_or_else(|| {
                io(
                    "create",
                    std::io::Error::other("no temporary name (our bug)"),
                )
            })?;
            safetensors::serialize_to_file(views, None, &tmp).map_err(|e| st_err(path, e))?;
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
