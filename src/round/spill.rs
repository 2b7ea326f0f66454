//! The researcher's running sum with O(d) memory: every chunk is added to one
//! accumulator as it arrives and appended to its sender's spill file, so a stream that
//! breaks off can be subtracted again from its spill (its prefix must not stay in the
//! sum: without its self mask removed it is noise, and the masks of the survivors'
//! pairs with it are corrected from the rebuilt mask key, not from the prefix).
//!
//! Spills live in a private (0700) directory; files are 0600; a complete stream's spill
//! is deleted at once; stale spills of an earlier crash are purged when a store opens
//! the directory; everything is deleted when the store is dropped, whatever happened.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::layout::Layout;
use crate::party::Fingerprint;
use crate::secagg::prg::PeerMask;
use crate::secagg::quantize::Plan;
use crate::secagg::sum::{self, AnyAccumulator};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A spill file or the directory.
    #[error("spill file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Not enough free disk for the spills.
    #[error(
        "the spill directory {} has {free} bytes free; this round may need {need}",
        dir.display()
    )]
    Disk {
        /// The directory.
        dir: PathBuf,
        /// Bytes free.
        free: u64,
        /// Bytes the spills may take.
        need: u64,
    },
    /// Decoding the sum.
    #[error(transparent)]
    Sum(#[from] sum::Error),
}

type Result<T> = std::result::Result<T, Error>;

struct Spill {
    path: PathBuf,
    out: BufWriter<File>,
}

/// The accumulator and the open spills of one round.
pub struct Store {
    acc: AnyAccumulator,
    width: usize,
    dir: PathBuf,
    spills: HashMap<Fingerprint, Spill>,
    threads: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Store({}, {} open spills)",
            self.dir.display(),
            self.spills.len()
        )
    }
}

impl Store {
    /// A store for `words` words (d values plus the weight) of `plan`'s ring arriving as
    /// `width`-byte residues from up to `nodes` streams, spilling into `dir` (created
    /// 0700; stale spills in it are removed). Checks up front that the disk can hold
    /// every stream's spill at once (`nodes · words · width` bytes).
    pub fn new(
        dir: &Path,
        plan: &Plan,
        words: usize,
        width: usize,
        nodes: usize,
        threads: usize,
    ) -> Result<Store> {
        let io = |source| Error::Io {
            path: dir.to_owned(),
            source,
        };
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir).map_err(io)?;
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().ends_with(".spill") {
                let _ = fs::remove_file(entry.path());
            }
        }
        let need = (nodes as u64)
            .saturating_mul(words as u64)
            .saturating_mul(width as u64);
        if let Some(free) = free_bytes(dir)
            && free < need
        {
            return Err(Error::Disk {
                dir: dir.to_owned(),
                free,
                need,
            });
        }
        Ok(Store {
            acc: AnyAccumulator::with_width(plan.modulus, words, width),
            width,
            dir: dir.to_owned(),
            spills: HashMap::new(),
            threads,
        })
    }

    fn spill(&mut self, from: &Fingerprint) -> Result<&mut Spill> {
        if !self.spills.contains_key(from) {
            let hex: String = from.as_bytes()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let path = self.dir.join(format!("{hex}.spill"));
            let mut o = OpenOptions::new();
            o.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.mode(0o600);
            }
            let file = o.open(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            self.spills.insert(
                *from,
                Spill {
                    path,
                    out: BufWriter::with_capacity(1 << 20, file),
                },
            );
        }
        self.spills.get_mut(from).ok_or_else(|| Error::Io {
            path: self.dir.clone(),
            source: io::Error::other("spill vanished"),
        })
    }

    /// Adds a chunk (whole `width`-byte words starting at word `offset`) to the sum and
    /// appends it to the sender's spill. Offsets are checked sequential by the caller.
    pub fn absorb(&mut self, from: &Fingerprint, offset: u64, data: &[u8]) -> Result<()> {
        let spill = self.spill(from)?;
        spill.out.write_all(data).map_err(|source| Error::Io {
            path: spill.path.clone(),
            source,
        })?;
        self.acc.absorb(offset, data);
        Ok(())
    }

    /// The stream arrived whole: its words stay in the sum; its spill goes.
    pub fn complete(&mut self, from: &Fingerprint) {
        if let Some(s) = self.spills.remove(from) {
            drop(s.out);
            let _ = fs::remove_file(&s.path);
        }
    }

    /// The stream broke off: subtract what it added (read back from its spill), then
    /// delete the spill.
    pub fn discard(&mut self, from: &Fingerprint) -> Result<()> {
        let Some(s) = self.spills.remove(from) else {
            return Ok(());
        };
        let path = s.path.clone();
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let file = s.out.into_inner().map_err(|e| io(e.into_error()))?;
        drop(file);
        let mut r = BufReader::with_capacity(1 << 20, File::open(&path).map_err(io)?);
        let per = (1 << 20) / self.width * self.width;
        let mut buf = vec![0u8; per];
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut r, &mut buf).map_err(io)?;
            let whole = n / self.width * self.width;
            if whole == 0 {
                break;
            }
            self.acc.retract(offset, &buf[..whole]);
            offset += (whole / self.width) as u64;
            if n < buf.len() {
                break;
            }
        }
        let _ = fs::remove_file(&path);
        Ok(())
    }

    /// Applies the unmasking corrections (self masks out, dropped nodes' pairwise masks
    /// cancelled), then decodes the mean into `layout`'s encoding after the range check.
    /// Returns the total weight and the encoded mean.
    pub fn unmask(
        mut self,
        corrections: &[PeerMask],
        plan: &Plan,
        layout: &Layout,
    ) -> Result<(u64, Vec<u8>)> {
        self.acc.apply_masks(corrections, self.threads);
        let acc = std::mem::replace(
            &mut self.acc,
            AnyAccumulator::with_width(plan.modulus, 0, self.width),
        );
        Ok(acc.finish_checked(plan, layout)?)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for (_, s) in self.spills.drain() {
            drop(s.out);
            let _ = fs::remove_file(&s.path);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Free bytes on the file system holding `dir`, if the platform tells.
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let st = rustix::fs::statvfs(dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Container, DType, TensorSpec};
    use crate::secagg::quantize::QuantParams;

    #[test]
    fn a_discarded_stream_leaves_no_trace_in_the_sum_or_on_disk() {
        let dir = tempfile::tempdir().expect("tmp");
        let spills = dir.path().join("spills");
        let plan = Plan::new(QuantParams::default(), 3).expect("plan");
        let width = plan.wire_bytes();
        let layout = Layout {
            container: Container::Npy,
            tensors: vec![TensorSpec {
                name: String::new(),
                shape: vec![3],
                dtype: DType::F64,
            }],
        };
        let words = |vals: &[u64]| -> Vec<u8> {
            vals.iter()
                .flat_map(|v| v.to_le_bytes()[..width].to_vec())
                .collect()
        };
        let (a, b) = (Fingerprint::of_der(b"a"), Fingerprint::of_der(b"b"));
        let mut with_b = Store::new(&spills, &plan, 4, width, 2, 1).expect("store");
        with_b.absorb(&a, 0, &words(&[10, 20, 30, 1])).expect("a");
        with_b.complete(&a);
        with_b.absorb(&b, 0, &words(&[5, 5])).expect("b prefix");
        with_b.discard(&b).expect("discard");
        assert_eq!(fs::read_dir(&spills).expect("ls").count(), 0);
        let (w, mean) = with_b.unmask(&[], &plan, &layout).expect("decode");
        let mut alone = Store::new(&dir.path().join("x"), &plan, 4, width, 1, 1).expect("store");
        alone.absorb(&a, 0, &words(&[10, 20, 30, 1])).expect("a");
        assert_eq!(
            (w, mean),
            alone.unmask(&[], &plan, &layout).expect("decode")
        );
    }

    #[test]
    fn out_of_range_sums_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let plan = Plan::new(QuantParams::default(), 3).expect("plan");
        let width = plan.wire_bytes();
        let layout = Layout {
            container: Container::Npy,
            tensors: vec![TensorSpec {
                name: String::new(),
                shape: vec![1],
                dtype: DType::F32,
            }],
        };
        let mut s = Store::new(dir.path(), &plan, 2, width, 1, 1).expect("store");
        let big = (1u64 << 35).to_le_bytes()[..width].to_vec();
        let one = 1u64.to_le_bytes()[..width].to_vec();
        s.absorb(&Fingerprint::of_der(b"a"), 0, &[big, one].concat())
            .expect("absorb");
        assert!(matches!(
            s.unmask(&[], &plan, &layout),
            Err(Error::Sum(sum::Error::OutOfRange(0)))
        ));
    }
}
