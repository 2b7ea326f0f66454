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
    let prefix = tmp_prefix(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
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

/// Starts writing `path` in an unnamed file (`O_TMPFILE`, created `0600`) in its
/// directory: it has no path in the directory tree (only this process's descriptor,
/// `/proc/PID/fd`, reaches it), and the kernel frees it when the process ends, however
/// it ends, unless [`Staged::commit`] has given it the final name.
///
/// `Ok(None)`, for the caller to stage another way, unless all of these hold: the
/// system is Linux; the directory is on a local filesystem known to keep an unnamed
/// file's bytes in this kernel ([`LOCAL_FILESYSTEMS`]: a FUSE or network filesystem may
/// support `O_TMPFILE` and still hand every write to a daemon or a server); and an
/// empty unnamed file can be created there and linked and unlinked again under a probe
/// name, so that [`Staged::commit`] will not fail for want of `/proc`, of privilege or
/// of hard links after the caller has made a decision it cannot undo. Errors that
/// would stop any way of writing there (no such directory, no permission, a read-only
/// filesystem, no space) are errors, not `None`.
pub fn stage_unnamed(path: &Path) -> io::Result<Option<Staged>> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{Mode, OFlags};
        use rustix::io::Errno;
        // O_PATH: enough for fstatfs and as openat's base, without read permission.
        let dir = rustix::fs::open(
            parent(path),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // The magic numbers are 32-bit; f_type is a signed word on some targets.
        let kind = rustix::fs::fstatfs(&dir)?.f_type as u32;
        if !LOCAL_FILESYSTEMS.contains(&kind) {
            return Ok(None);
        }
        let unnamed = || {
            let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
            rustix::fs::openat(&dir, ".", flags, Mode::RUSR | Mode::WUSR).map(File::from)
        };
        // The probe: an empty file, under a name no reader of `path`'s temporaries
        // looks for. open(2): EOPNOTSUPP, the filesystem has no O_TMPFILE; EISDIR, the
        // kernel predates it (3.11); EINVAL, it rejects the flag combination.
        let probe = match unnamed() {
            Ok(probe) => probe,
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let name = parent(path).join(format!(".secagg-link-probe.{}.tmp", unique()));
        // The directory takes files (the probe was created): a failed link is the
        // mechanism missing (no /proc and no privilege, no hard links), so stage another
        // way.
        if link_fd(&probe, &name).is_err() {
            return Ok(None);
        }
        std::fs::remove_file(&name)?;
        Ok(Some(Staged {
            tmp: Tmp::Unnamed(unnamed()?),
            path: path.to_owned(),
        }))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        Ok(None)
    }
}

/// `statfs(2)` types (linux/magic.h) of the local filesystems [`stage_unnamed`] uses:
/// ext2/3/4, XFS, Btrfs, tmpfs, F2FS.
#[cfg(target_os = "linux")]
pub const LOCAL_FILESYSTEMS: [u32; 5] =
    [0xEF53, 0x5846_5342, 0x9123_683E, 0x0102_1994, 0xF2F5_2010];

/// A part for a temporary name: this process and a clock reading.
#[cfg(target_os = "linux")]
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos:08x}", std::process::id())
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
    let (dir, prefix, unique) = (parent(path), tmp_prefix(path), unique());
    for attempt in 0..100u32 {
        let tmp = dir.join(format!("{prefix}{unique}-{attempt}.tmp"));
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

/// The start of a temporary name for `path`: `.NAME.` (then something unique, then
/// `.tmp`), so that every temporary of a path is recognisable as such.
fn tmp_prefix(path: &Path) -> String {
    path.file_name()
        .map(|n| format!(".{}.", n.to_string_lossy()))
        .unwrap_or_else(|| ".secagg.".into())
}

/// Whether files can be created in `path`'s directory by this process (write and search
/// permission for the effective user, not a read-only filesystem): for a caller that
/// must learn it before a step it cannot undo.
pub fn check_dir_writable(path: &Path) -> io::Result<()> {
    let dir = parent(path);
    #[cfg(unix)]
    {
        use rustix::fs::{Access, AtFlags, CWD};
        let mode = Access::WRITE_OK | Access::EXEC_OK;
        Ok(rustix::fs::accessat(CWD, dir, mode, AtFlags::EACCESS)?)
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(dir).map(|_| ())
    }
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

    /// `stage_unnamed` in `dir`: `None` exactly where its filesystem is not a local one
    /// (the caller's test then has nothing more to check).
    #[cfg(target_os = "linux")]
    fn unnamed_in(dir: &Path, name: &str) -> Option<Staged> {
        let kind = rustix::fs::statfs(dir).expect("statfs").f_type as u32;
        let s = stage_unnamed(&dir.join(name)).expect("stage");
        assert_eq!(
            s.is_some(),
            LOCAL_FILESYSTEMS.contains(&kind),
            "unnamed files exactly on local filesystems"
        );
        s
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_unnamed_file_has_no_name_until_committed_and_then_replaces_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("m.masked");
        write(&p, b"old", false).expect("write");
        let Some(mut s) = unnamed_in(dir.path(), "m.masked") else {
            return;
        };
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
        let Some(mut s) = unnamed_in(dir.path(), "m.masked") else {
            return;
        };
        s.file().write_all(b"dropped").expect("write");
        drop(s);
        assert!(names_in(dir.path()).is_empty());
        write(&p, b"old", false).expect("write");
        let mut s = unnamed_in(dir.path(), "m.masked").expect("the same directory");
        s.file().write_all(b"new").expect("write");
        let err = s.commit_new().expect_err("the name exists");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        assert_eq!(
            names_in(dir.path()),
            vec![std::ffi::OsString::from("m.masked")]
        );
        let q = dir.path().join("new.masked");
        let mut s = unnamed_in(dir.path(), "new.masked").expect("the same directory");
        s.file().write_all(b"fresh").expect("write");
        s.commit_new().expect("a new name");
        assert_eq!(std::fs::read(&q).expect("read"), b"fresh");
    }

    /// A commit whose rename fails (the final path is a directory that is not empty)
    /// reports it and leaves no temporary name behind.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_unnamed_file_whose_rename_fails_leaves_no_temporary_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("m.masked");
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(p.join("inside"), b"x").expect("write");
        let Some(mut s) = unnamed_in(dir.path(), "m.masked") else {
            return;
        };
        s.file().write_all(b"masked").expect("write");
        assert!(s.commit().is_err());
        assert_eq!(
            names_in(dir.path()),
            vec![std::ffi::OsString::from("m.masked")]
        );
        assert_eq!(names_in(&p), vec![std::ffi::OsString::from("inside")]);
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
