//! Reading payloads: a cursor that names the message in its errors, and the checks
//! and writers the encoders share.

use p256::Scalar;
use p256::ecdsa::Signature;

use crate::party::Fingerprint;
use crate::round::schedule::{
    self, Advert, FP_LEN, MAX_INVITEES, SEALED_LEN, SIG_LEN, fp_from_bytes, is_set, put_set,
    sig_from_bytes,
};
use crate::secagg::shamir::{self, SCALAR_LEN};

use super::{Error, Result};

/// A cursor over one payload, naming the message in its errors.
pub(super) struct Reader<'a> {
    message: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(message: &'static str, buf: &'a [u8]) -> Self {
        Reader { message, buf }
    }

    pub(super) fn truncated(&self, field: &'static str) -> Error {
        Error::Truncated {
            message: self.message,
            field,
        }
    }

    pub(super) fn invalid(&self, field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            message: self.message,
            field,
            reason: reason.into(),
        }
    }

    pub(super) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.truncated(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(super) fn u64(&mut self, field: &'static str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    pub(super) fn fp(&mut self, field: &'static str) -> Result<Fingerprint> {
        Ok(fp_from_bytes(&self.array(field)?))
    }

    /// A `u32be` count in `min..=max` whose entries (each at least `entry` bytes) fit in
    /// what remains: checked before the caller allocates.
    pub(super) fn count(
        &mut self,
        field: &'static str,
        min: usize,
        max: usize,
        entry: usize,
    ) -> Result<usize> {
        let count = self.u32(field)? as usize;
        if count < min || count > max {
            return Err(Error::Count {
                message: self.message,
                field,
                count: count as u64,
                min: min as u64,
                max: max as u64,
            });
        }
        if count.saturating_mul(entry) > self.buf.len() {
            return Err(self.truncated(field));
        }
        Ok(count)
    }

    pub(super) fn str(&mut self, field: &'static str, min: usize, max: usize) -> Result<String> {
        let len = self.count(field, min, max, 1)?;
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.invalid(field, "not UTF-8"))
    }

    pub(super) fn set(&mut self, field: &'static str, min: usize) -> Result<Vec<Fingerprint>> {
        let n = self.count(field, min, MAX_INVITEES, FP_LEN)?;
        let fps = (0..n).map(|_| self.fp(field)).collect::<Result<Vec<_>>>()?;
        self.ordered(field, &fps)?;
        Ok(fps)
    }

    pub(super) fn ordered(&self, field: &'static str, fps: &[Fingerprint]) -> Result<()> {
        if is_set(fps) {
            Ok(())
        } else {
            Err(Error::Order {
                message: self.message,
                field,
            })
        }
    }

    pub(super) fn sig(&mut self, field: &'static str) -> Result<Signature> {
        let bytes = self.take(SIG_LEN, field)?;
        sig_from_bytes(bytes).ok_or_else(|| self.invalid(field, "r or s is not in 1..n"))
    }

    pub(super) fn scalar(&mut self, field: &'static str) -> Result<Scalar> {
        let bytes = self.take(SCALAR_LEN, field)?;
        shamir::scalar_from_bytes(bytes)
            .ok_or_else(|| self.invalid(field, "not below the group order"))
    }

    pub(super) fn sealed(&mut self, field: &'static str) -> Result<[u8; SEALED_LEN]> {
        self.array(field)
    }

    pub(super) fn advert(&mut self) -> Result<Advert> {
        let (advert, rest) = Advert::decode_prefix(self.buf).map_err(|e| match e {
            schedule::Error::Truncated(_) | schedule::Error::Shamir(shamir::Error::Truncated) => {
                self.truncated("advert")
            }
            e => self.invalid("advert", e.to_string()),
        })?;
        self.buf = rest;
        Ok(advert)
    }

    pub(super) fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Trailing {
                message: self.message,
                extra: self.buf.len(),
            })
        }
    }
}

pub(super) fn check_order(
    message: &'static str,
    field: &'static str,
    fps: &[Fingerprint],
) -> Result<()> {
    if is_set(fps) {
        Ok(())
    } else {
        Err(Error::Order { message, field })
    }
}

pub(super) fn put_u32_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

pub(super) fn put_set_checked(
    out: &mut Vec<u8>,
    message: &'static str,
    field: &'static str,
    fps: &[Fingerprint],
) -> Result<()> {
    if fps.len() > MAX_INVITEES {
        return Err(Error::Count {
            message,
            field,
            count: fps.len() as u64,
            min: 0,
            max: MAX_INVITEES as u64,
        });
    }
    put_set(out, field, fps).map_err(|_| Error::Order { message, field })
}

pub(super) fn check_list_len(message: &'static str, field: &'static str, n: usize) -> Result<()> {
    if n > MAX_INVITEES {
        return Err(Error::Count {
            message,
            field,
            count: n as u64,
            min: 0,
            max: MAX_INVITEES as u64,
        });
    }
    Ok(())
}
