//! Files written whole or not at all: every file quill writes (checkpoints, samples,
//! manifests, plots) goes through [`AtomicFile`] or [`write`].
//!
//! The data goes to a fresh temporary file `.NAME.tmp-PID-SEQ` in the target's directory,
//! created with `create_new` (it never follows a symbolic link or replaces anything that is
//! already there, so a planted link cannot redirect the write), is fsynced, and is renamed
//! over the target (which replaces a link at the target, never its destination); then the
//! directory is fsynced so the rename survives a crash. On any failure the temporary file is
//! removed and the target is untouched. Every error names the step and the file.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Where a write simulates an I/O failure (tests; production uses `Never`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailPoint {
    /// No simulated failure.
    #[default]
    Never,
    /// As if a write had failed part-way (disk full).
    Write,
    /// As if the rename had failed.
    Rename,
}

/// An I/O error whose message says which step failed, e.g. "cannot write temporary file X".
fn step_err(step: String, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{step}: {e}"))
}

/// The directory a path's file lives in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A file being written atomically to `target`. Write to it, then [`AtomicFile::commit`];
/// dropping it uncommitted removes the temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    fail: FailPoint,
    written: usize,
}

impl AtomicFile {
    /// Creates the temporary file next to `target` (whose directory must exist).
    pub fn create(target: &Path) -> io::Result<Self> {
        let dir = parent_dir(target);
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")
        })?;
        loop {
            let mut tmp = OsString::from(".");
            tmp.push(name);
            tmp.push(format!(
                ".tmp-{}-{}",
                std::process::id(),
                TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let tmp = dir.join(tmp);
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
            {
                Ok(f) => {
                    return Ok(AtomicFile {
                        target: target.to_path_buf(),
                        tmp,
                        file: Some(f),
                        fail: FailPoint::Never,
                        written: 0,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(step_err(
                        format!("cannot create a temporary file in {}", dir.display()),
                        e,
                    ))
                }
            }
        }
    }

    /// Simulates a failure at `fail` (tests).
    pub fn fail_at(mut self, fail: FailPoint) -> Self {
        self.fail = fail;
        self
    }

    /// The temporary file's path.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Fsyncs the data, renames it over the target and fsyncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("not yet committed");
        let res = file
            .sync_all()
            .map_err(|e| step_err(format!("cannot write {}", self.tmp.display()), e))
            .and_then(|()| {
                drop(file);
                let rename_err =
                    |e| step_err(format!("cannot rename {} over it", self.tmp.display()), e);
                if self.fail == FailPoint::Rename {
                    return Err(rename_err(io::Error::other("simulated rename failure")));
                }
                fs::rename(&self.tmp, &self.target).map_err(rename_err)
            });
        if res.is_err() {
            let _ = fs::remove_file(&self.tmp);
            return res;
        }
        let dir = parent_dir(&self.target);
        sync_dir(&dir).map_err(|e| {
            step_err(
                format!("written, but cannot fsync directory {}", dir.display()),
                e,
            )
        })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().expect("not yet committed");
        let res = if self.fail == FailPoint::Write {
            file.write_all(&buf[..buf.len() / 2])
                .and(Err(io::Error::other("simulated: no space left on device")))
        } else {
            file.write(buf)
        };
        match res {
            Ok(n) => {
                self.written += n;
                Ok(n)
            }
            Err(e) => Err(step_err(format!("cannot write {}", self.tmp.display()), e)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Seeking lets a writer patch a header once the data behind it is known (token files).
impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let file = self.file.as_mut().expect("not yet committed");
        file.seek(pos)
            .map_err(|e| step_err(format!("cannot seek in {}", self.tmp.display()), e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            drop(f);
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Temporary files of writes to `target` whose process is gone (it was killed mid-write):
/// `.NAME.tmp-PID-SEQ` next to it, with no process PID running. Only where running processes
/// can be listed (`/proc`); elsewhere none.
pub fn orphaned_temps(target: &Path) -> Vec<PathBuf> {
    let proc_fs = Path::new("/proc/self");
    let (Some(name), true) = (target.file_name(), proc_fs.exists()) else {
        return Vec::new();
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let dir = parent_dir(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let pid = file
                .strip_prefix(&prefix)?
                .split('-')
                .next()?
                .parse::<u32>()
                .ok()?;
            let alive =
                pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists();
            (!alive).then(|| e.path())
        })
        .collect();
    out.sort();
    out
}

/// Writes `bytes` to `path` atomically (see the module docs).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, bytes, FailPoint::Never)
}

/// [`write`] with a simulated failure (tests).
pub fn write_with(path: &Path, bytes: &[u8], fail: FailPoint) -> io::Result<()> {
    let mut f = AtomicFile::create(path)?.fail_at(fail);
    f.write_all(bytes)?;
    f.commit()
}

/// Fsyncs a directory so renames in it are durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::dir_names;

    #[test]
    fn writes_replace_whole_files_and_failures_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write(&p, b"first").unwrap();
        write(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        for fail in [FailPoint::Write, FailPoint::Rename] {
            let e = write_with(&p, b"a longer third version", fail)
                .unwrap_err()
                .to_string();
            assert!(e.contains("simulated") && e.contains(".a.txt.tmp-"), "{e}");
            assert_eq!(fs::read(&p).unwrap(), b"second", "{fail:?}");
            assert_eq!(dir_names(dir.path()), vec!["a.txt"], "{fail:?}");
        }
        // a header patched after the data (seek back, overwrite)
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"....data").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(b"HEAD").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"HEADdata");
        // dropped uncommitted: nothing left, target untouched
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"never").unwrap();
        drop(f);
        assert_eq!(dir_names(dir.path()), vec!["a.txt"]);
        let e = write(&dir.path().join("no/such/dir/x"), b"x").unwrap_err();
        assert!(
            e.to_string().contains("cannot create a temporary file"),
            "{e}"
        );
    }

    #[test]
    fn temporary_files_of_dead_processes_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.tokens");
        // A pid that is not running (pid_max is at most 2^22 on Linux).
        let dead = dir.path().join(".x.tokens.tmp-4194305-0");
        let mine = dir
            .path()
            .join(format!(".x.tokens.tmp-{}-9", std::process::id()));
        let other = dir.path().join(".y.tokens.tmp-4194305-0");
        for p in [&dead, &mine, &other] {
            fs::write(p, b"partial").unwrap();
        }
        let found = orphaned_temps(&target);
        if Path::new("/proc/self").exists() {
            assert_eq!(found, vec![dead]);
        } else {
            assert!(found.is_empty());
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("out.png");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write(&link, b"plot").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&link).unwrap(), b"plot");
    }
}
