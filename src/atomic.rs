//! Atomic file writes: every file this crate writes (keys, certificates, configs, means,
//! masked files) is written to a temporary file in the target's directory, synced,
//! renamed into place, and the directory synced, so a crash or a failure leaves either
//! the old file or the new one, never a torn one.
//!
//! A leaf module: it knows paths and bytes, nothing of the crate.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file being written next to its final path. Dropping it without [`Staged::commit`]
/// removes the temporary file.
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Staged({} -> {})",
            self.tmp.path().display(),
            self.path.display()
        )
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
        tmp,
        path: path.to_owned(),
    })
}

impl Staged {
    /// The temporary file to write into.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// The temporary file's path (for writers that want a path).
    pub fn tmp_path(&self) -> &Path {
        self.tmp.path()
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
        self.tmp.as_file_mut().flush()?;
        self.tmp.as_file().sync_all()?;
        let dir = parent(&self.path).to_owned();
        if replace {
            self.tmp.persist(&self.path).map_err(|e| e.error)?;
        } else {
            self.tmp
                .persist_noclobber(&self.path)
                .map_err(|e| e.error)?;
        }
        sync_dir(&dir)
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
        let tmp = staged.tmp_path().to_owned();
        drop(staged);
        assert!(!tmp.exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
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
