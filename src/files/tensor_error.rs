//! The errors of reading and writing tensor files, and the checks both parsers share.

use std::path::{Path, PathBuf};

use crate::layout::Container;

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

/// A malformed file of `container`'s kind.
pub(crate) fn invalid(name: &Path, container: Container, reason: String) -> Error {
    Error::Invalid {
        path: name.to_owned(),
        kind: match container {
            Container::Npy => "npy",
            Container::Safetensors => "safetensors",
        },
        reason,
    }
}

/// Checks that data sections declared `declared` bytes long, starting at `offset`,
/// fill the rest of a `len`-byte file.
pub(crate) fn check_data_len(
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
