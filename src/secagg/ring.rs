//! The ring masked sums live in: 2^32 or 2^64, as machine words with wrapping
//! arithmetic. A leaf module shared by quantization, masking, sums and the wire.

/// The ring the masked sums live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Modulus {
    /// 2^32, 4-byte words.
    #[serde(rename = "2^32")]
    M32,
    /// 2^64, 8-byte words.
    #[serde(rename = "2^64")]
    M64,
}

impl Modulus {
    /// Bytes per word.
    pub fn word_bytes(self) -> usize {
        match self {
            Modulus::M32 => 4,
            Modulus::M64 => 8,
        }
    }

    /// log2 of the modulus.
    pub fn bits(self) -> u32 {
        (self.word_bytes() * 8) as u32
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
    /// From a signed integer, reduced modulo 2^bits.
    fn from_i64(v: i64) -> Self;
    /// From an unsigned integer, reduced modulo 2^bits.
    fn from_u64(v: u64) -> Self;
    /// As a signed integer (two's complement).
    fn to_i64(self) -> i64;
    /// As an unsigned integer.
    fn to_u64(self) -> u64;
}

macro_rules! word {
    ($t:ty, $s:ty) => {
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
        }
    };
}
word!(u32, i32);
word!(u64, i64);
