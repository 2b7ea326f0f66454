//! The `.npy` header, read by secagg's own strict parser of the dictionary numpy writes:
//! every size is checked arithmetic, and the data the header declares must be exactly
//! what the file holds before anything is read or allocated.

use std::io::Read;
use std::path::Path;

use crate::files::tensor_error::{Error, check_data_len, invalid};
use crate::layout::{Container, DType, Layout, TensorSpec};

type Result<T> = std::result::Result<T, Error>;

/// The largest `.npy` header accepted (numpy itself refuses more than 10,000 bytes by
/// default).
pub const MAX_NPY_HEADER: u64 = 1 << 16;

pub(crate) fn npy_header<R: Read>(
    name: &Path,
    mut reader: R,
    len: u64,
) -> Result<(Layout, Vec<(u64, u64)>)> {
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
