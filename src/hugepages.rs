//! Large buffers backed by transparent huge pages where Linux offers them.
//!
//! A node masking 10^7 values holds its 50 MB of masked residues in memory until the
//! release is journaled (docs/protocol.md, "Mask-reuse journal"). Touching a fresh
//! buffer page by page costs one page fault per 4 KiB: 12,000 faults, about 15% of the
//! whole `secagg mask` process (docs/performance.md). Where transparent huge pages are
//! in `madvise` mode (the common default), asking for them on the buffer makes that 25
//! faults of 2 MiB. Elsewhere (other systems, THP `never` or `always`) the buffer is a
//! plain `Vec`.
//!
//! A leaf module, and one of the three modules allowed `unsafe` code (the crate
//! denies it everywhere else; docs/architecture.md, "Unsafe code"): one call to
//! madvise(2), which advises the kernel about memory this process owns and changes
//! none of its bytes.
// An exception to the crate's `unsafe_code = "deny"` (see the module docs above).
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

/// The huge page size the advice is aligned to (x86-64 and the common arm64 kernels).
const HUGE: usize = 2 << 20;

/// Below this the buffer is not worth advising (glibc serves it from its heap).
const THRESHOLD: usize = 4 * HUGE;

/// An empty `Vec<u8>` with room for `capacity` bytes, its whole 2 MiB-aligned pages
/// advised for transparent huge pages when it is large. Failing advice is ignored: the
/// buffer is then an ordinary one.
pub fn vec_with_capacity(capacity: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(capacity);
    if v.capacity() >= THRESHOLD {
        // An error only means no advice was taken.
        let _ = advise(&mut v);
    }
    v
}

/// The offset of the first and the end of the last whole `HUGE`-aligned block inside
/// `len` bytes at address `addr`, if there is one.
fn aligned_inside(addr: usize, len: usize) -> Option<(usize, usize)> {
    let start = addr.checked_next_multiple_of(HUGE)? - addr;
    let end = (addr.checked_add(len)? / HUGE * HUGE).checked_sub(addr)?;
    (start < end).then_some((start, end))
}

/// Advises the whole 2 MiB blocks of `v`'s spare capacity (none: `Ok`).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn advise(v: &mut Vec<u8>) -> std::io::Result<()> {
    let spare = v.spare_capacity_mut();
    let base = spare.as_mut_ptr();
    let Some((start, end)) = aligned_inside(base.addr(), spare.len()) else {
        return Ok(());
    };
    // SAFETY: [start, end) lies inside `spare`, memory this Vec owns exclusively (we hold
    // `&mut`), and both ends are multiples of 2 MiB from address 0, so page-aligned as
    // madvise(2) requires. MADV_HUGEPAGE only changes how the kernel backs those pages:
    // it reads and writes none of their bytes and frees nothing, so no Rust reference
    // or value is affected. An error only means no advice was taken.
    unsafe {
        rustix::mm::madvise(
            base.wrapping_add(start).cast(),
            end - start,
            rustix::mm::Advice::LinuxHugepage,
        )
    }
    .map_err(std::io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn advise(_: &mut Vec<u8>) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advised_range_is_inside_and_aligned() {
        assert_eq!(aligned_inside(0, 4 * HUGE), Some((0, 4 * HUGE)));
        assert_eq!(
            aligned_inside(16, 4 * HUGE),
            Some((HUGE - 16, 4 * HUGE - 16))
        );
        assert_eq!(aligned_inside(HUGE + 1, HUGE), None);
        assert_eq!(aligned_inside(16, HUGE), None);
        assert_eq!(aligned_inside(usize::MAX - 10, 100), None);
        for (addr, len) in [(4096, 9 * HUGE + 5), (3 * HUGE - 1, 5 * HUGE)] {
            let (s, e) = aligned_inside(addr, len).expect("a whole block");
            assert!(s < e && e <= len);
            assert_eq!((addr + s) % HUGE, 0);
            assert_eq!((addr + e) % HUGE, 0);
        }
    }

    #[test]
    fn the_buffer_is_an_ordinary_vec() {
        let mut v = vec_with_capacity(10 * HUGE);
        assert!(v.is_empty() && v.capacity() >= 10 * HUGE);
        v.resize(10 * HUGE, 7);
        assert!(v.iter().all(|b| *b == 7));
        let small = vec_with_capacity(100);
        assert!(small.capacity() >= 100);
    }

    /// The advice itself is accepted where the kernel has transparent huge pages (a
    /// wrong range or alignment would be EINVAL, which `vec_with_capacity` ignores).
    #[test]
    #[cfg(target_os = "linux")]
    fn the_kernel_takes_the_advice() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return;
        }
        for (capacity, skip) in [(10 * HUGE, 0), (10 * HUGE + 12_345, 7)] {
            let mut v: Vec<u8> = Vec::with_capacity(capacity + skip);
            v.resize(skip, 1);
            assert!(advise(&mut v).is_ok());
        }
    }
}
