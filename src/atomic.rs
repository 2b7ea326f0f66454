//! Atomic file writes: every file this crate writes (keys, certificates, configs, means,
//! masked files) is written to a temporary file in the target's directory, synced,
//! renamed into place, and the directory synced, so a crash or a failure leaves either
//! the old file or the new one, never a torn one.
//!
//! A file that must not exist under any name before a decision (a masked file, before
//! its release is journaled) can instead be staged unnamed ([`stage_unnamed`], Linux
//! `O_TMPFILE`): it has no name until it is committed, and it disappears when the
//! process ends, however it ends.
//!
//! A leaf module: it knows paths and bytes, nothing of the crate.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file being written next to its final path. Dropping it without [`Staged::commit`]
/// removes the temporary file.
pub struct Staged {
    tmp: Tmp,
    path: PathBuf,
}

/// Where a staged file's bytes are until it is committed.
enum Tmp {
    /// A temporary name in the final path's directory.
    Named(tempfile::NamedTempFile),
    /// An unnamed file in that directory (`O_TMPFILE`).
    Unnamed(File),
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tmp {
            Tmp::Named(t) => write!(
                f,
                "Staged({} -> {})",
                t.path().display(),
                self.path.display()
            ),
            Tmp::Unnamed(_) => write!(f, "Staged(unnamed -> {})", self.path.display()),
        }
    }
}

/// Starts writing `path`: a temporary file in the same directory, created `0600` when
/// `secret` (before any byte is written), else `0644`.
pub fn stage(path: &Path, secret: bool) -> io::Result<Staged> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| format!(".{}.", n.to_string_lossy()))
        .unwrap_or_else(|| ".secagg.".into());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&name).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(if secret {
            0o600
        } else {
            0o644
        }));
    }
    let tmp = builder.tempfile_in(dir)?;
    Ok(Staged {
        tmp: Tmp::Named(tmp),
        path: path.to_owned(),
    })
}

/// Starts writing `path` in an unnamed file (`O_TMPFILE`, `0600`) in its directory: no
/// other process can open it by a name, and the kernel frees it when the process ends,
/// however it ends, unless [`Staged::commit`] has given it the final name. `Ok(None)`
/// where the system or the directory's filesystem has no unnamed files (the caller then
/// stages another way).
pub fn stage_unnamed(path: &Path) -> io::Result<Option<Staged>> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{Mode, OFlags};
        use rustix::io::Errno;
        let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        match rustix::fs::open(parent(path), flags, Mode::RUSR | Mode::WUSR) {
            Ok(fd) => Ok(Some(Staged {
                tmp: Tmp::Unnamed(File::from(fd)),
                path: path.to_owned(),
            })),
            // open(2): EOPNOTSUPP, the filesystem has no O_TMPFILE; EISDIR, the kernel
            // predates it (3.11); EINVAL, it rejects the flag combination.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Ok(None)
    }
}

impl Staged {
    /// The temporary file to write into.
    pub fn file(&mut self) -> &mut File {
        match &mut self.tmp {
            Tmp::Named(t) => t.as_file_mut(),
            Tmp::Unnamed(f) => f,
        }
    }

    /// The temporary file's path (for writers that want a path); `None` when it is
    /// unnamed.
    pub fn tmp_path(&self) -> Option<&Path> {
        match &self.tmp {
            Tmp::Named(t) => Some(t.path()),
            Tmp::Unnamed(_) => None,
        }
    }

    /// Whether the file is unnamed until committed ([`stage_unnamed`]).
    pub fn is_unnamed(&self) -> bool {
        matches!(self.tmp, Tmp::Unnamed(_))
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the data, renames it over the final path and syncs the directory.
    pub fn commit(self) -> io::Result<()> {
        self.finish(true)
    }

    /// Like [`Staged::commit`], but fails if the final path exists (nothing is replaced).
    pub fn commit_new(self) -> io::Result<()> {
        self.finish(false)
    }

    fn finish(mut self, replace: bool) -> io::Result<()> {
        self.file().flush()?;
        self.file().sync_all()?;
        let dir = parent(&self.path).to_owned();
        match self.tmp {
            Tmp::Named(tmp) if replace => {
                tmp.persist(&self.path).map_err(|e| e.error)?;
            }
            Tmp::Named(tmp) => {
                tmp.persist_noclobber(&self.path).map_err(|e| e.error)?;
            }
            Tmp::Unnamed(file) => link_unnamed(&file, &self.path, replace)?,
        }
        sync_dir(&dir)
    }
}

/// Gives the unnamed `file` the name `path`: directly when nothing may be replaced
/// (`link` fails if the name exists), else a fresh temporary name in the same directory
/// renamed over `path`, so the final name always points at a whole file.
#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, path: &Path, replace: bool) -> io::Result<()> {
    if !replace {
        return link_fd(file, path);
    }
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "secagg".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..100u32 {
        let tmp = dir.join(format!(
            ".{name}.{}-{nonce:08x}-{attempt}.tmp",
            std::process::id()
        ));
        match link_fd(file, &tmp) {
            Ok(()) => {
                return std::fs::rename(&tmp, path).inspect_err(|_| {
                    let _ = std::fs::remove_file(&tmp);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name to move the file into place",
    ))
}

#[cfg(not(target_os = "linux"))]
fn link_unnamed(_: &File, _: &Path, _: bool) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// link(2) of an open file to `path`: through `/proc/self/fd` as open(2) documents for
/// `O_TMPFILE` (any user), else with `AT_EMPTY_PATH` (which needs
/// `CAP_DAC_READ_SEARCH` on older kernels) where `/proc` is not mounted.
#[cfg(target_os = "linux")]
fn link_fd(file: &File, path: &Path) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, linkat};
    use std::os::fd::AsRawFd;
    let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    match linkat(CWD, proc.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW) {
        Err(rustix::io::Errno::NOENT) if !Path::new("/proc/self/fd").exists() => {
            Ok(linkat(file, "", CWD, path, AtFlags::EMPTY_PATH)?)
        }
        r => Ok(r?),
    }
}

/// Writes `bytes` to `path` atomically, replacing what was there.
pub fn write(path: &Path, bytes: &[u8], secret: bool) -> io::Result<()> {
    let mut staged = stage(path, secret)?;
    staged.file().write_all(bytes)?;
    staged.commit()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename durable: fsync the directory that holds the new name.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_atomically_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("a.txt");
        write(&p, b"one", false).expect("write");
        write(&p, b"two", false).expect("rewrite");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    }

    #[test]
    fn commit_new_refuses_to_replace_and_dropping_removes_the_temporary() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("k.pem");
        write(&p, b"old", true).expect("write");
        let mut s = stage(&p, true).expect("stage");
        s.file().write_all(b"new").expect("write");
        assert!(s.commit_new().is_err());
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        let staged = stage(&dir.path().join("x"), false).expect("stage");
        let tmp = staged.tmp_path().expect("named").to_owned();
        drop(staged);
        assert!(!tmp.exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    fn names_in(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        names
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_unnamed_file_has_no_name_until_committed_and_then_replaces_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("m.masked");
        write(&p, b"old", false).expect("write");
        let mut s = stage_unnamed(&p)
            .expect("stage")
            .expect("tmpfs and ext4 have O_TMPFILE");
        assert!(s.is_unnamed() && s.tmp_path().is_none());
        s.file().write_all(b"new bytes").expect("write");
        // Written, not committed: the directory holds only the old file.
        assert_eq!(
            names_in(dir.path()),
            vec![std::ffi::OsString::from("m.masked")]
        );
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        s.commit().expect("commit");
        assert_eq!(std::fs::read(&p).expect("read"), b"new bytes");
        assert_eq!(
            names_in(dir.path()),
            vec![std::ffi::OsString::from("m.masked")]
        );
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_unnamed_file_dropped_leaves_nothing_and_commit_new_does_not_replace() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("m.masked");
        let mut s = stage_unnamed(&p).expect("stage").expect("O_TMPFILE");
        s.file().write_all(b"dropped").expect("write");
        drop(s);
        assert!(names_in(dir.path()).is_empty());
        write(&p, b"old", false).expect("write");
        let mut s = stage_unnamed(&p).expect("stage").expect("O_TMPFILE");
        s.file().write_all(b"new").expect("write");
        let err = s.commit_new().expect_err("the name exists");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        assert_eq!(
            names_in(dir.path()),
            vec![std::ffi::OsString::from("m.masked")]
        );
        let q = dir.path().join("new.masked");
        let mut s = stage_unnamed(&q).expect("stage").expect("O_TMPFILE");
        s.file().write_all(b"fresh").expect("write");
        s.commit_new().expect("a new name");
        assert_eq!(std::fs::read(&q).expect("read"), b"fresh");
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("key.pem");
        write(&p, b"k", true).expect("write");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
