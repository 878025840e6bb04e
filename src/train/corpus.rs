//! Reading a training corpus: validation of the file, UTF-8 decoding, line-ending
//! normalisation, a content fingerprint and the train/validation split.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A corpus loaded into memory as text.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Where it came from.
    pub path: PathBuf,
    /// The text, with CRLF and lone CR normalised to LF.
    pub text: String,
    /// Hex SHA-256 of the file's bytes as read.
    pub fingerprint: String,
}

impl Corpus {
    /// Reads `path`. Invalid UTF-8 is an error naming the byte offset unless `lossy`, which
    /// replaces invalid sequences with U+FFFD. Empty files, directories and missing files get
    /// their own messages.
    pub fn load(path: &Path, lossy: bool) -> Result<Self> {
        let err = |msg: String| Error::Corpus {
            path: path.to_path_buf(),
            msg,
        };
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(err("is a directory, expected a text file".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if bytes.is_empty() {
            return Err(err("file is empty".into()));
        }
        let fingerprint = hex(&Sha256::digest(&bytes));
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) if lossy => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            Err(e) => {
                let off = e.utf8_error().valid_up_to();
                return Err(err(format!(
                    "not valid UTF-8 text (invalid byte at offset {off}); is it a binary file? \
                     Use --lossy to replace invalid sequences"
                )));
            }
        };
        if text.contains('\0') {
            let off = text.find('\0').unwrap_or(0);
            return Err(err(format!(
                "contains a NUL byte at offset {off}; this looks like a binary file"
            )));
        }
        Ok(Corpus {
            path: path.to_path_buf(),
            text: normalize_newlines(text),
            fingerprint,
        })
    }

    /// Splits the text into training and validation parts: the last `val_fraction` of the
    /// characters (moved forward to the next line start, so no line is cut) is validation.
    pub fn split(&self, val_fraction: f32) -> (&str, &str) {
        split_text(&self.text, val_fraction)
    }
}

/// CRLF and lone CR become LF. Borrows nothing twice: reuses the allocation when there is no CR.
pub fn normalize_newlines(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// The train/validation split of [`Corpus::split`] on any text.
pub fn split_text(text: &str, val_fraction: f32) -> (&str, &str) {
    if val_fraction <= 0.0 {
        return (text, "");
    }
    let target = ((text.len() as f64) * (1.0 - val_fraction as f64)) as usize;
    let mut cut = target.min(text.len());
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    if let Some(nl) = text[cut..].find('\n') {
        // Prefer a line start, unless that would leave no validation text.
        if cut + nl + 1 < text.len() {
            cut += nl + 1;
        }
    }
    text.split_at(cut)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn crlf_is_normalised_and_split_is_at_line_start() {
        let f = write(b"one\r\ntwo\r\nthree\rfour\n");
        let c = Corpus::load(f.path(), false).unwrap();
        assert_eq!(c.text, "one\ntwo\nthree\nfour\n");
        let (tr, va) = c.split(0.5);
        assert_eq!(format!("{tr}{va}"), c.text);
        assert!(tr.ends_with('\n'));
        assert!(!va.is_empty());
    }

    #[test]
    fn invalid_utf8_reports_offset_or_is_replaced() {
        let f = write(b"abc\xffdef");
        let e = Corpus::load(f.path(), false).unwrap_err().to_string();
        assert!(e.contains("offset 3"), "{e}");
        let c = Corpus::load(f.path(), true).unwrap();
        assert_eq!(c.text, "abc\u{fffd}def");
    }

    #[test]
    fn empty_dir_and_missing_files_are_errors() {
        let f = write(b"");
        assert!(Corpus::load(f.path(), false)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let d = tempfile::tempdir().unwrap();
        assert!(Corpus::load(d.path(), false)
            .unwrap_err()
            .to_string()
            .contains("directory"));
        let missing = d.path().join("nope.txt");
        assert!(Corpus::load(&missing, false)
            .unwrap_err()
            .to_string()
            .contains("nope.txt"));
    }

    #[test]
    fn split_handles_non_ascii_boundaries() {
        let t = "ééééé\nüüü\n東京東京\n";
        for i in 0..=10 {
            let (a, b) = split_text(t, i as f32 / 10.0);
            assert_eq!(format!("{a}{b}"), t);
        }
    }
}
