//! Writing generated samples: one file per sample plus a manifest, or one JSONL file, each
//! written atomically ([`crate::atomic`]), never overwriting without `force`. Apart from the
//! engine: [`super::batch::generate`] hands finished samples to a sink, and this is the sink
//! `quill sample --out` uses.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::{self, AtomicFile, FailPoint};
use crate::checkpoint::LoadedModel;
use crate::error::{Error, Result};

use super::batch::{SampleOutput, SampleSpec};
use super::stream::StopReason;

/// An I/O error on `path` whose message says which step failed.
fn step_err(path: &Path, step: &str, e: io::Error) -> Error {
    Error::io(path, io::Error::new(e.kind(), format!("{step}: {e}")))
}

/// Output layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One text file per sample (`DIR/0001.txt`, ...) plus `DIR/manifest.jsonl`.
    #[default]
    Files,
    /// One JSONL file: the manifest with each sample's text in it.
    Jsonl,
}

/// Name of the manifest in an output directory.
pub const MANIFEST: &str = "manifest.jsonl";

/// File written for `--format jsonl` when the output path is a directory.
pub const JSONL_DEFAULT_NAME: &str = "samples.jsonl";

/// The checkpoint a run used, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Its path (absolute where it can be resolved).
    pub path: String,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
    /// Whether its tokenizer is byte-level (BPE), where the UTF-8 guard applies.
    pub byte_level: bool,
}

impl CheckpointInfo {
    /// The checkpoint a model was loaded from: its path (absolute where it can be resolved)
    /// and the SHA-256 of the bytes that were loaded.
    pub fn of_model(lm: &LoadedModel) -> Self {
        let shown = fs::canonicalize(&lm.path).unwrap_or_else(|_| lm.path.clone());
        CheckpointInfo {
            path: shown.to_string_lossy().into_owned(),
            sha256: lm.sha256.clone(),
            byte_level: lm.tokenizer.kind() == crate::tokenizer::TokenizerKind::Bpe,
        }
    }
}

/// One manifest line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// Sample id.
    pub id: u64,
    /// The sample's file, relative to the manifest's directory (files format only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Checkpoint path.
    pub checkpoint: String,
    /// SHA-256 of the checkpoint file.
    pub checkpoint_sha256: String,
    /// The prime text.
    pub prime: String,
    /// Temperature.
    pub temperature: f32,
    /// Top-k (`null`: off).
    pub top_k: Option<usize>,
    /// Top-p.
    pub top_p: f32,
    /// Min-p, when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Repetition penalty and its window, when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_window: Option<usize>,
    /// Frequency penalty, when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Presence penalty, when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// `true` when the UTF-8 guard was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_utf8: Option<bool>,
    /// User seed.
    pub seed: u64,
    /// Tokens generated.
    pub tokens: usize,
    /// `"length"`, `"end_of_text"` or `"stop_string"`.
    pub stop_reason: String,
    /// The stop string that ended the sample, if one did.
    pub stop_string: Option<String>,
    /// Mean natural-log probability per generated token (`null` if not finite).
    pub mean_logprob: Option<f64>,
    /// Copy detection (`quill sample --check-copies` or `--max-copy`): the fields of
    /// [`CopyFields`], at the top level of the line.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub copies: Option<CopyFields>,
    /// Prime plus generated text (jsonl format only; the files format has it in `file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// What copy detection found in a sample's generated text (the prime is not counted), as the
/// manifest records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CopyFields {
    /// Characters of the longest span found verbatim in the training corpus.
    pub longest_copy: usize,
    /// The corpus file it occurs in (the first occurrence; `null` when nothing was copied).
    pub longest_copy_file: Option<String>,
    /// The line of that file where it starts (1-based).
    pub longest_copy_line: Option<usize>,
    /// Share of the text's 12-character n-grams found in the corpus (`null` for a text of
    /// fewer than 12 characters).
    pub copied_fraction: Option<f64>,
    /// With `--max-copy`: the tries the sample took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    /// With `--max-copy`: whether the kept (last) try still copies more than the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_copy_exceeded: Option<bool>,
}

/// Writes finished samples: each as its own file (atomically) plus a manifest line, or as a
/// line of one JSONL file. The manifest (or JSONL file) is streamed to a temporary file and
/// renamed into place by [`SampleWriter::finish`]; dropping an unfinished writer removes it
/// ([`AtomicFile`]).
#[derive(Debug)]
pub struct SampleWriter {
    format: OutputFormat,
    dir: PathBuf,
    /// The manifest or the JSONL output.
    target: PathBuf,
    manifest: Option<io::BufWriter<AtomicFile>>,
    width: usize,
    checkpoint: CheckpointInfo,
    primes: Vec<String>,
    samples: Vec<SampleSpec>,
    written: usize,
    fail_after: Option<usize>,
}

impl SampleWriter {
    /// Prepares `out` for the samples of `samples` (prime texts in `primes`).
    ///
    /// [`OutputFormat::Files`]: `out` is a directory, created if missing; sample files are
    /// named by id with at least 4 digits. [`OutputFormat::Jsonl`]: `out` is the JSONL file,
    /// or an existing directory to hold [`JSONL_DEFAULT_NAME`].
    ///
    /// Without `force`, any file the run would write that already exists is an error of
    /// kind [`io::ErrorKind::AlreadyExists`]. Also checks that the directory is writable
    /// (creating and removing a probe file), so a read-only directory fails before any work.
    pub fn create(
        out: &Path,
        format: OutputFormat,
        force: bool,
        checkpoint: CheckpointInfo,
        primes: &[String],
        samples: &[SampleSpec],
    ) -> Result<Self> {
        let (dir, target) = match format {
            OutputFormat::Files => {
                if out.exists() && !out.is_dir() {
                    return Err(Error::io(
                        out,
                        io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "exists and is not a directory",
                        ),
                    ));
                }
                (out.to_path_buf(), out.join(MANIFEST))
            }
            OutputFormat::Jsonl => {
                if out.is_dir() {
                    (out.to_path_buf(), out.join(JSONL_DEFAULT_NAME))
                } else {
                    (atomic::parent_dir(out), out.to_path_buf())
                }
            }
        };
        fs::create_dir_all(&dir)
            .map_err(|e| step_err(&dir, "cannot create the output directory", e))?;
        let max_id = samples.iter().map(|s| s.id).max().unwrap_or(0);
        let width = max_id.to_string().len().max(4);
        let mut w = SampleWriter {
            format,
            dir,
            target,
            manifest: None,
            width,
            checkpoint,
            primes: primes.to_vec(),
            samples: samples.to_vec(),
            written: 0,
            fail_after: None,
        };
        if !force {
            let mut clash: Vec<PathBuf> = Vec::new();
            if w.target.exists() {
                clash.push(w.target.clone());
            }
            if format == OutputFormat::Files {
                clash.extend(
                    samples
                        .iter()
                        .map(|s| w.dir.join(w.file_name(s.id)))
                        .filter(|p| p.symlink_metadata().is_ok()),
                );
            }
            if let Some(first) = clash.first() {
                let more = match clash.len() {
                    1 => String::new(),
                    k => format!(" (and {} more)", k - 1),
                };
                return Err(Error::io(
                    first,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("already exists{more}; not overwriting it"),
                    ),
                ));
            }
        }
        if w.target.is_dir() {
            return Err(Error::io(
                &w.target,
                io::Error::new(io::ErrorKind::AlreadyExists, "is a directory"),
            ));
        }
        // The manifest's temporary file doubles as the writability probe.
        let f = AtomicFile::create(&w.target)
            .map_err(|e| step_err(&w.dir, "cannot write to the output directory", e))?;
        w.manifest = Some(io::BufWriter::new(f));
        Ok(w)
    }

    /// File name of sample `id`: `0001.txt`.
    pub fn file_name(&self, id: u64) -> String {
        format!("{id:0w$}.txt", w = self.width)
    }

    /// The manifest (files) or JSONL output path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Samples written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Writes one finished sample: its file (prime + generated text, atomically) and its
    /// manifest line, or its JSONL line.
    pub fn write(&mut self, out: &SampleOutput) -> Result<()> {
        self.write_with_copies(out, None)
    }

    /// [`SampleWriter::write`], recording what copy detection found in the sample.
    pub fn write_with_copies(
        &mut self,
        out: &SampleOutput,
        copies: Option<CopyFields>,
    ) -> Result<()> {
        let spec = *self.samples.get(out.index).ok_or_else(|| {
            Error::config("sample", format!("index {} is not in the plan", out.index))
        })?;
        let prime = self.primes.get(spec.prime).cloned().unwrap_or_default();
        let content = format!("{prime}{}", out.output.text);
        // The newer controls are recorded only when on, so older manifests read the same.
        let p = spec.params;
        let rep = p.repetition_penalty != 1.0;
        let mut rec = ManifestRecord {
            id: spec.id,
            file: None,
            checkpoint: self.checkpoint.path.clone(),
            checkpoint_sha256: self.checkpoint.sha256.clone(),
            prime,
            temperature: spec.params.temperature,
            top_k: spec.params.top_k,
            top_p: spec.params.top_p,
            min_p: (p.min_p != 0.0).then_some(p.min_p),
            repetition_penalty: rep.then_some(p.repetition_penalty),
            repetition_window: rep.then_some(p.repetition_window),
            frequency_penalty: (p.frequency_penalty != 0.0).then_some(p.frequency_penalty),
            presence_penalty: (p.presence_penalty != 0.0).then_some(p.presence_penalty),
            // Recorded where it changed what could be sampled: byte-level models with it on.
            valid_utf8: (p.valid_utf8 && self.checkpoint.byte_level).then_some(true),
            seed: spec.seed,
            tokens: out.output.tokens,
            stop_reason: out.output.stop.as_str().to_string(),
            stop_string: match &out.output.stop {
                StopReason::StopString(s) => Some(s.clone()),
                _ => None,
            },
            mean_logprob: out.output.mean_logprob(),
            copies,
            text: None,
        };
        let fail = match self.fail_after {
            Some(k) if self.written >= k => FailPoint::Write,
            _ => FailPoint::Never,
        };
        match self.format {
            OutputFormat::Files => {
                let name = self.file_name(spec.id);
                let path = self.dir.join(&name);
                atomic::write_with(&path, content.as_bytes(), fail)
                    .map_err(|e| Error::io(&path, e))?;
                rec.file = Some(name);
            }
            OutputFormat::Jsonl => rec.text = Some(content),
        }
        let target = &self.target;
        let f = self.manifest.as_mut().ok_or_else(|| {
            Error::io(target, io::Error::other("the writer was already finished"))
        })?;
        let mut line = serde_json::to_string(&rec)
            .map_err(|e| Error::io(target, io::Error::other(e.to_string())))?;
        line.push('\n');
        f.write_all(line.as_bytes())
            .map_err(|e| Error::io(target, e))?;
        self.written += 1;
        Ok(())
    }

    /// Flushes and fsyncs the manifest (or JSONL file) and renames it into place; returns
    /// its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let Some(f) = self.manifest.take() else {
            return Ok(self.target.clone());
        };
        let target = self.target.clone();
        f.into_inner()
            .map_err(|e| e.into_error())
            .and_then(AtomicFile::commit)
            .map_err(|e| Error::io(&target, e))?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::batch::{plan, Sweep};
    use crate::generate::stream::StreamOutput;
    use std::ffi::OsString;

    fn output(index: usize, id: u64, text: &str) -> SampleOutput {
        SampleOutput {
            index,
            id,
            output: StreamOutput {
                text: text.into(),
                tokens: 4,
                stop: StopReason::StopString("\n".into()),
                sum_logprob: -2.0,
            },
            tries: 1,
            rejected: false,
        }
    }

    fn ck() -> CheckpointInfo {
        CheckpointInfo {
            path: "/m.safetensors".into(),
            sha256: "ab".repeat(32),
            byte_level: false,
        }
    }

    #[test]
    fn writer_writes_files_and_manifest_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        let primes = vec!["P:".to_string()];
        let specs = plan(
            1,
            &Sweep {
                count: 2,
                ..Sweep::default()
            },
        )
        .unwrap();
        let mut w =
            SampleWriter::create(&out, OutputFormat::Files, false, ck(), &primes, &specs).unwrap();
        w.write(&output(0, 1, "one")).unwrap();
        w.write(&output(1, 2, "two")).unwrap();
        // the manifest appears only when finished
        assert!(!out.join(MANIFEST).exists());
        assert_eq!(w.finish().unwrap(), out.join(MANIFEST));
        assert_eq!(fs::read_to_string(out.join("0001.txt")).unwrap(), "P:one");
        let lines: Vec<ManifestRecord> = fs::read_to_string(out.join(MANIFEST))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].file.as_deref(), Some("0002.txt"));
        assert_eq!(lines[1].stop_reason, "stop_string");
        assert_eq!(lines[1].stop_string.as_deref(), Some("\n"));
        assert_eq!(lines[1].mean_logprob, Some(-0.5));
        assert_eq!(lines[1].temperature, 0.8);
        assert!(lines[1].text.is_none());
        assert!(lines[1].copies.is_none());
        let raw = fs::read_to_string(out.join(MANIFEST)).unwrap();
        assert!(
            !raw.contains("longest_copy") && !raw.contains("tries"),
            "{raw}"
        );
        // only the two samples and the manifest: no temporary files left
        assert_eq!(fs::read_dir(&out).unwrap().count(), 3);

        let again = SampleWriter::create(&out, OutputFormat::Files, false, ck(), &primes, &specs);
        let e = again.unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let mut w =
            SampleWriter::create(&out, OutputFormat::Files, true, ck(), &primes, &specs).unwrap();
        w.write(&output(0, 1, "uno")).unwrap();
        drop(w); // unfinished: the old manifest stays, the temporary one goes
        assert_eq!(fs::read_to_string(out.join("0001.txt")).unwrap(), "P:uno");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 3);

        // jsonl into a directory
        let mut w =
            SampleWriter::create(&out, OutputFormat::Jsonl, false, ck(), &primes, &specs).unwrap();
        w.write(&output(0, 1, "x")).unwrap();
        let p = w.finish().unwrap();
        assert_eq!(p, out.join(JSONL_DEFAULT_NAME));
        let r: ManifestRecord =
            serde_json::from_str(fs::read_to_string(p).unwrap().trim()).unwrap();
        assert_eq!((r.text.as_deref(), r.file), (Some("P:x"), None));
    }

    #[test]
    fn a_failed_write_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let specs = plan(
            1,
            &Sweep {
                count: 2,
                ..Sweep::default()
            },
        )
        .unwrap();
        let mut w = SampleWriter::create(
            dir.path(),
            OutputFormat::Files,
            false,
            ck(),
            &[String::new()],
            &specs,
        )
        .unwrap();
        w.fail_after = Some(1);
        w.write(&output(0, 1, "fine")).unwrap();
        let e = w.write(&output(1, 2, "broken")).unwrap_err().to_string();
        assert!(e.contains("0002.txt") && e.contains("no space"), "{e}");
        drop(w);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("0001.txt")]);
    }

    #[test]
    fn output_below_a_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "x").unwrap();
        let specs = plan(1, &Sweep::default()).unwrap();
        let e = SampleWriter::create(
            &file.join("sub"),
            OutputFormat::Files,
            false,
            ck(),
            &[String::new()],
            &specs,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot create the output directory"), "{e}");
        let e = SampleWriter::create(
            &file,
            OutputFormat::Files,
            true,
            ck(),
            &[String::new()],
            &specs,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn copy_fields_are_top_level_manifest_fields() {
        let dir = tempfile::tempdir().unwrap();
        let specs = plan(
            1,
            &Sweep {
                count: 2,
                ..Sweep::default()
            },
        )
        .unwrap();
        let mut w = SampleWriter::create(
            dir.path(),
            OutputFormat::Jsonl,
            false,
            ck(),
            &[String::new()],
            &specs,
        )
        .unwrap();
        let checked = CopyFields {
            longest_copy: 31,
            longest_copy_file: Some("corpora/shakespeare.txt".into()),
            longest_copy_line: Some(120),
            copied_fraction: Some(0.25),
            tries: Some(3),
            max_copy_exceeded: Some(true),
        };
        w.write_with_copies(&output(0, 1, "a"), Some(checked.clone()))
            .unwrap();
        let short = CopyFields {
            longest_copy: 0,
            longest_copy_file: None,
            longest_copy_line: None,
            copied_fraction: None,
            tries: None,
            max_copy_exceeded: None,
        };
        w.write_with_copies(&output(1, 2, "b"), Some(short.clone()))
            .unwrap();
        let text = fs::read_to_string(w.finish().unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["longest_copy"], 31);
        assert_eq!(v["copied_fraction"], 0.25);
        assert_eq!(v["longest_copy_line"], 120);
        assert_eq!(v["tries"], 3);
        assert_eq!(v["max_copy_exceeded"], true);
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert!(v["copied_fraction"].is_null() && v.get("copied_fraction").is_some());
        assert!(v.get("tries").is_none());
        let back: Vec<ManifestRecord> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back[0].copies, Some(checked));
        assert_eq!(back[1].copies, Some(short));
    }
}
