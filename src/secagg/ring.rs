//! The ring masked sums live in: integers modulo 2^(8·w), w in 1..=8 bytes, held in
//! machine words (u32 when w ≤ 4, else u64) with wrapping arithmetic. A word holds a
//! residue in its low w bytes; its high bytes carry no meaning and every reader reduces
//! (2^(8w) divides the word's modulus, so wrapping sums stay correct modulo 2^(8w)).
//! A leaf module shared by quantization, masking, sums and the wire.

use std::fmt;

/// The ring the masked sums live in: 2^(8·w) for a width w of 1 to 8 bytes. A masked
/// element travels and is stored as its residue in exactly w little-endian bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Modulus {
    bytes: u8,
}

/// The machine word a modulus is computed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// u32 (widths 1 to 4).
    U32,
    /// u64 (widths 5 to 8).
    U64,
}

impl Modulus {
    /// 2^32.
    pub const M32: Modulus = Modulus { bytes: 4 };
    /// 2^64.
    pub const M64: Modulus = Modulus { bytes: 8 };

    /// 2^(8·bytes), for `bytes` in 1..=8.
    pub const fn from_bytes(bytes: usize) -> Option<Modulus> {
        if bytes >= 1 && bytes <= 8 {
            Some(Modulus { bytes: bytes as u8 })
        } else {
            None
        }
    }

    /// Bytes per residue (w).
    pub fn word_bytes(self) -> usize {
        usize::from(self.bytes)
    }

    /// log2 of the modulus (8·w).
    pub fn bits(self) -> u32 {
        8 * u32::from(self.bytes)
    }

    /// The machine word sums are computed in.
    pub fn machine(self) -> Machine {
        if self.bytes <= 4 {
            Machine::U32
        } else {
            Machine::U64
        }
    }
}

impl fmt::Display for Modulus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "2^{}", self.bits())
    }
}

impl serde::Serialize for Modulus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Modulus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Modulus, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.strip_prefix("2^")
            .and_then(|b| b.parse::<u32>().ok())
            .filter(|b| b % 8 == 0)
            .and_then(|b| Modulus::from_bytes((b / 8) as usize))
            .ok_or_else(|| {
                serde::de::Error::custom(format!("modulus {s:?}: expected 2^8, 2^16, ..., 2^64"))
            })
    }
}

/// A machine word the masked sum lives in (the modulus is 2^bits of the word).
pub trait Word: Copy + Default + Send + Sync + Eq + std::fmt::Debug + 'static {
    /// Bytes per word.
    const BYTES: usize;
    /// Wrapping add.
    fn add(self, o: Self) -> Self;
    /// Wrapping sub.
    fn sub(self, o: Self) -> Self;
    /// From little-endian bytes (exactly `BYTES` long).
    fn from_le(b: &[u8]) -> Self;
    /// Appends little-endian bytes.
    fn put_le(self, out: &mut Vec<u8>);
    /// From the low `b.len()` (at most `BYTES`) little-endian bytes, zero-extended.
    fn from_le_narrow(b: &[u8]) -> Self;
    /// Writes the low `out.len()` (at most `BYTES`) little-endian bytes: the word
    /// reduced modulo 2^(8·out.len()).
    fn write_le_narrow(self, out: &mut [u8]);
    /// The little-endian bytes, zero-extended to 8.
    fn le8(self) -> [u8; 8];
    /// From a signed integer, reduced modulo 2^bits.
    fn from_i64(v: i64) -> Self;
    /// From an unsigned integer, reduced modulo 2^bits.
    fn from_u64(v: u64) -> Self;
    /// As a signed integer (two's complement).
    fn to_i64(self) -> i64;
    /// As an unsigned integer.
    fn to_u64(self) -> u64;
    /// The slice as the concrete word type it is (lets `simd` pick its vector lanes
    /// without a cast).
    fn words_mut(words: &mut [Self]) -> WordsMut<'_>;
    /// [`Word::words_mut`] for a shared slice.
    fn words(words: &[Self]) -> Words<'_>;
}

/// A shared slice of words as the concrete machine word it is (see [`Word::words`]).
pub enum Words<'a> {
    /// u32 words (widths 1 to 4).
    U32(&'a [u32]),
    /// u64 words (widths 5 to 8).
    U64(&'a [u64]),
}

/// A slice of words as the concrete machine word it is (see [`Word::words_mut`]).
pub enum WordsMut<'a> {
    /// u32 words (widths 1 to 4).
    U32(&'a mut [u32]),
    /// u64 words (widths 5 to 8).
    U64(&'a mut [u64]),
}

macro_rules! word {
    ($t:ty, $s:ty, $v:ident) => {
        impl Word for $t {
            const BYTES: usize = std::mem::size_of::<$t>();
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn from_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            #[inline(always)]
            fn from_le_narrow(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a[..b.len()].copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            #[inline(always)]
            fn write_le_narrow(self, out: &mut [u8]) {
                let n = out.len();
                out.copy_from_slice(&self.to_le_bytes()[..n]);
            }
            #[inline(always)]
            fn le8(self) -> [u8; 8] {
                (self as u64).to_le_bytes()
            }
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn from_u64(v: u64) -> Self {
                v as $t
            }
            fn to_i64(self) -> i64 {
                self as $s as i64
            }
            fn to_u64(self) -> u64 {
                self as u64
            }
            fn words_mut(words: &mut [Self]) -> WordsMut<'_> {
                WordsMut::$v(words)
            }
            fn words(words: &[Self]) -> Words<'_> {
                Words::$v(words)
            }
        }
    };
}
word!(u32, i32, U32);
word!(u64, i64, U64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_serialises_as_a_power_of_two() {
        for w in 1..=8 {
            let m = Modulus::from_bytes(w).expect("width");
            let json = serde_json::to_string(&m).expect("ser");
            assert_eq!(json, format!("\"2^{}\"", 8 * w));
            assert_eq!(serde_json::from_str::<Modulus>(&json).expect("de"), m);
        }
        for bad in ["\"2^0\"", "\"2^12\"", "\"2^72\"", "\"3^8\"", "\"2^\"", "40"] {
            assert!(serde_json::from_str::<Modulus>(bad).is_err(), "{bad}");
        }
        assert_eq!(Modulus::from_bytes(0), None);
        assert_eq!(Modulus::from_bytes(9), None);
        assert_eq!(
            Modulus::from_bytes(4).map(Modulus::machine),
            Some(Machine::U32)
        );
        assert_eq!(
            Modulus::from_bytes(5).map(Modulus::machine),
            Some(Machine::U64)
        );
    }
}
