//! Files the TUI reads and writes: saved samples (timestamped names) and the checkpoint
//! picker's listing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// A UTC calendar time, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc {
    /// Year, month (1-12), day (1-31).
    pub ymd: (i64, u32, u32),
    /// Hour, minute, second.
    pub hms: (u32, u32, u32),
}

impl Utc {
    /// The calendar time of `t` (times before 1970 count as 1970-01-01).
    pub fn from(t: SystemTime) -> Self {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Howard Hinnant's days-to-civil.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        let rem = rem as u32;
        Utc {
            ymd: (y, m, d),
            hms: (rem / 3600, rem / 60 % 60, rem % 60),
        }
    }

    /// `20250131-153012`, for file names.
    pub fn stamp(&self) -> String {
        let ((y, mo, d), (h, mi, s)) = (self.ymd, self.hms);
        format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
    }

    /// `15:30:12`.
    pub fn clock(&self) -> String {
        let (h, m, s) = self.hms;
        format!("{h:02}:{m:02}:{s:02}")
    }

    /// `2025-01-31 15:30`.
    pub fn date_minute(&self) -> String {
        let ((y, mo, d), (h, mi, _)) = (self.ymd, self.hms);
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
    }
}

/// `dir/MODEL-STAMP.txt`, with `-2`, `-3`, ... added when that file exists.
pub fn sample_path(dir: &Path, model: &str, now: SystemTime) -> PathBuf {
    let base = format!("{model}-{}", Utc::from(now).stamp());
    let mut p = dir.join(format!("{base}.txt"));
    let mut k = 2;
    while p.exists() {
        p = dir.join(format!("{base}-{k}.txt"));
        k += 1;
    }
    p
}

/// Writes `text` (with a final newline) to a new file at `path`, creating its directory.
/// An existing file is not overwritten.
pub fn save_text(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let mut body = text.to_string();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    f.write_all(body.as_bytes())
        .and_then(|_| f.flush())
        .map_err(|e| Error::io(path, e))
}

/// A checkpoint the picker offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointEntry {
    /// The file.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
}

/// The `*.safetensors` files in `dirs` (missing directories are skipped, duplicates listed
/// once), newest first.
pub fn list_checkpoints(dirs: &[&Path]) -> Vec<CheckpointEntry> {
    let mut out: Vec<CheckpointEntry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("safetensors") {
                continue;
            }
            let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if !seen.insert(key) {
                continue;
            }
            let meta = entry.metadata().ok();
            out.push(CheckpointEntry {
                path,
                size: meta.as_ref().map_or(0, |m| m.len()),
                modified: meta.and_then(|m| m.modified().ok()).unwrap_or(UNIX_EPOCH),
            });
        }
    }
    out.sort_by(|a, b| b.modified.cmp(&a.modified).then(a.path.cmp(&b.path)));
    out
}

/// Human-readable size: 950 B, 12.3 KB, 4.5 MB.
pub fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_calendar() {
        let at = |s: u64| Utc::from(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0).stamp(), "19700101-000000");
        // 2000-02-29 (leap day) 12:34:56.
        assert_eq!(at(951_827_696).stamp(), "20000229-123456");
        assert_eq!(at(951_827_696).clock(), "12:34:56");
        // 2024-12-31 23:59:59 and one second later.
        assert_eq!(at(1_735_689_599).date_minute(), "2024-12-31 23:59");
        assert_eq!(at(1_735_689_600).stamp(), "20250101-000000");
    }

    #[test]
    fn sample_names_are_unique_and_saving_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let samples = dir.path().join("samples");
        let now = UNIX_EPOCH + Duration::from_secs(951_827_696);
        let p = sample_path(&samples, "m", now);
        assert_eq!(p, samples.join("m-20000229-123456.txt"));
        save_text(&p, "hello").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "hello\n");
        let q = sample_path(&samples, "m", now);
        assert_eq!(q, samples.join("m-20000229-123456-2.txt"));
        assert!(save_text(&p, "again").is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "hello\n");
    }

    #[test]
    fn lists_checkpoints_newest_first_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.safetensors"), b"x").unwrap();
        std::fs::write(d.join("notes.txt"), b"x").unwrap();
        let old = SystemTime::now() - Duration::from_secs(100);
        std::fs::write(d.join("b.safetensors"), b"xyz").unwrap();
        std::fs::File::options()
            .write(true)
            .open(d.join("b.safetensors"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let got = list_checkpoints(&[d, d, &d.join("missing")]);
        let names: Vec<_> = got
            .iter()
            .map(|e| e.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.safetensors", "b.safetensors"]);
        assert_eq!(got[1].size, 3);
        assert_eq!(human_size(1536), "1.5 KB");
    }
}
