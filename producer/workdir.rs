//! The producer's work directory: where its scratch files live (blobs
//! spooled while they are written, the record arenas of its state).
//!
//! Every scratch file is unlinked the moment it is created: the producer
//! holds it by its descriptor alone, so a crash, a kill or a full disk
//! never leaves one behind, and two producers sharing a directory cannot
//! see each other's. The kernel frees the space when the descriptor (and
//! any map of it) is closed.
//!
//! Pages of a scratch file are the page cache's, not the producer's heap:
//! the kernel can write them back and drop them under pressure, which is
//! what keeps the producer's anonymous memory bounded while its state and
//! blobs are as large as the dataset. That holds on a disk file system; on
//! `tmpfs` the pages are shared memory that only swap can evict, so
//! [`WorkDir::new`] warns when the directory is on one.

use crate::error::Error;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory for unlinked scratch files.
#[derive(Debug)]
pub(crate) struct WorkDir {
    dir: PathBuf,
    /// Scratch files released by dropped record arenas, for the next ones
    /// to reuse (see `producer/arena.rs`).
    pub(super) spares: super::arena::Spares,
}

/// Distinguishes the scratch files of one process.
static NEXT: AtomicU64 = AtomicU64::new(0);

impl WorkDir {
    /// `dir`, or the system's temporary directory when `None`, checked by
    /// creating (and dropping) one scratch file.
    pub fn new(dir: Option<PathBuf>) -> Result<Self, Error> {
        let dir = dir.unwrap_or_else(std::env::temp_dir);
        let shown = dir.display().to_string();
        let config = |reason: String| Error::Config {
            what: "work_dir".into(),
            reason: format!("{shown}: {reason}"),
        };
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(config("is not a directory".into())),
            Err(e) => return Err(config(e.to_string())),
        }
        let work = WorkDir {
            dir,
            spares: Default::default(),
        };
        work.scratch("probe")
            .map_err(|e| config(format!("cannot create a scratch file: {e}")))?;
        if on_tmpfs(&work.dir) {
            tracing::warn!(
                dir = %work.dir.display(),
                "the producer's work directory is on tmpfs: its scratch files (spooled blobs, \
                 the state's record arenas) are then held in memory; give \
                 ProducerBuilder::work_dir a directory on disk"
            );
        }
        Ok(work)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A new, empty scratch file opened for reading and writing, already
    /// unlinked (`what` names it while it briefly has a name, for an
    /// operator listing the directory at that instant).
    pub fn scratch(&self, what: &str) -> std::io::Result<File> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!(".burrow-{what}-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(file)
    }
}

/// Whether `dir` is on a tmpfs (Linux only; elsewhere `false`).
#[cfg(target_os = "linux")]
fn on_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path, `stat` a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == TMPFS_MAGIC
}

#[cfg(not(target_os = "linux"))]
fn on_tmpfs(_: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn scratch_files_leave_no_name_behind() {
        let dir = tempfile::tempdir().unwrap();
        let work = WorkDir::new(Some(dir.path().to_path_buf())).unwrap();
        let mut f = work.scratch("blob").unwrap();
        f.write_all(b"spooled").unwrap();
        f.rewind().unwrap();
        let mut back = String::new();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "spooled");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_or_plain_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = WorkDir::new(Some(missing.clone())).unwrap_err().to_string();
        assert!(err.contains("work_dir") && err.contains("nope"), "{err}");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = WorkDir::new(Some(file)).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}
