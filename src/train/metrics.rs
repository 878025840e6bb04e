//! The metrics log of a training run, `OUT/NAME-metrics.jsonl`: one JSON object per line,
//! written by the trainer ([`append`]) and read back here for plots and the dashboard
//! ([`RunMetrics`]). Both sides use [`Line`], so the format lives in one place.
//!
//! Kinds: `train` (every 10 steps: step, epoch, loss, lr, grad_norm, tokens_per_s,
//! elapsed_s) and `eval` (each validation: step, train_loss, val_loss, elapsed_s).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One `train` record: a single window's figures, logged every 10 steps.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainRecord {
    /// Optimizer step.
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// That window's loss (nats/token).
    pub loss: f64,
    /// Learning rate.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Throughput of the run so far.
    pub tokens_per_s: f64,
    /// Training seconds, all runs together.
    pub elapsed_s: f64,
}

/// One `eval` record, written at each validation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRecord {
    /// Optimizer step.
    pub step: u64,
    /// Mean training loss since the previous validation.
    pub train_loss: Option<f64>,
    /// Validation loss (`None` without a validation split).
    pub val_loss: Option<f64>,
    /// Training seconds, all runs together.
    pub elapsed_s: f64,
}

/// The metrics of one training run, in step order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunMetrics {
    /// Name shown in legends (the log's file name without `-metrics.jsonl`).
    pub label: String,
    /// `train` records.
    pub train: Vec<TrainRecord>,
    /// `eval` records.
    pub eval: Vec<EvalRecord>,
}

/// One line of the log as written and read. Numbers that are not finite are written as
/// `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Line {
    /// A training step's figures.
    Train {
        /// Optimizer step.
        step: u64,
        /// Epochs done, fractional.
        #[serde(default)]
        epoch: f64,
        /// That window's loss (nats/token).
        #[serde(serialize_with = "finite_or_null")]
        loss: Option<f64>,
        /// Learning rate.
        #[serde(default)]
        lr: f32,
        /// Gradient norm before clipping.
        #[serde(default)]
        grad_norm: f64,
        /// Throughput of the run so far.
        #[serde(default)]
        tokens_per_s: f64,
        /// Training seconds, all runs together.
        #[serde(default)]
        elapsed_s: f64,
    },
    /// A validation.
    Eval {
        /// Optimizer step.
        step: u64,
        /// Mean training loss since the previous validation.
        #[serde(serialize_with = "finite_or_null")]
        train_loss: Option<f64>,
        /// Validation loss.
        #[serde(serialize_with = "finite_or_null")]
        val_loss: Option<f64>,
        /// Training seconds, all runs together.
        #[serde(default)]
        elapsed_s: f64,
    },
    /// A kind this version does not know (skipped when reading; never written).
    #[serde(other)]
    Other,
}

fn finite_or_null<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) if x.is_finite() => s.serialize_some(x),
        _ => s.serialize_none(),
    }
}

/// Appends one line to the metrics log at `path` (created if missing).
pub fn append(path: &Path, line: &Line) -> Result<()> {
    let mut text = serde_json::to_string(line).map_err(|e| Error::Metrics {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    text.push('\n');
    let mut opts = OpenOptions::new();
    opts.create(true).append(true);
    // Never append through a symbolic link planted where the log goes.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW);
    let mut f = opts.open(path).map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

impl RunMetrics {
    /// The legend label for a metrics log path: `runs/shakespeare-metrics.jsonl` →
    /// `shakespeare`.
    pub fn label_for(path: &Path) -> String {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        for suffix in ["-metrics.jsonl", ".jsonl"] {
            if let Some(stem) = name.strip_suffix(suffix) {
                if !stem.is_empty() {
                    return stem.to_string();
                }
            }
        }
        name
    }

    /// Parses the text of a metrics log; `path` names it in errors and gives the label.
    ///
    /// Lines of unknown kinds are skipped, and so is a last line without a newline that does
    /// not parse (a write cut short). Any other malformed line is an error with its number.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut m = RunMetrics {
            label: Self::label_for(path),
            ..Default::default()
        };
        let complete = text.ends_with('\n');
        let n_lines = text.lines().count();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let parsed: Line = match serde_json::from_str(line) {
                Ok(l) => l,
                Err(_) if !complete && i + 1 == n_lines => break,
                Err(e) => {
                    return Err(Error::Metrics {
                        path: path.to_path_buf(),
                        msg: format!("line {}: {e}", i + 1),
                    })
                }
            };
            match parsed {
                Line::Train {
                    step,
                    epoch,
                    loss,
                    lr,
                    grad_norm,
                    tokens_per_s,
                    elapsed_s,
                } => {
                    if m.train.last().is_some_and(|p| p.step >= step) {
                        // A resumed run restarting from an earlier checkpoint replaces what
                        // the interrupted run logged from there on.
                        m.train.retain(|p| p.step < step);
                        m.eval.retain(|p| p.step < step);
                    }
                    if let Some(loss) = loss.filter(|l| l.is_finite()) {
                        m.train.push(TrainRecord {
                            step,
                            epoch,
                            loss,
                            lr: lr.into(),
                            grad_norm,
                            tokens_per_s,
                            elapsed_s,
                        });
                    }
                }
                Line::Eval {
                    step,
                    train_loss,
                    val_loss,
                    elapsed_s,
                } => {
                    if m.eval.last().is_some_and(|p| p.step >= step) {
                        m.eval.retain(|p| p.step < step);
                    }
                    m.eval.push(EvalRecord {
                        step,
                        train_loss: train_loss.filter(|l| l.is_finite()),
                        val_loss: val_loss.filter(|l| l.is_finite()),
                        elapsed_s,
                    });
                }
                Line::Other => {}
            }
        }
        Ok(m)
    }

    /// Reads and parses a metrics log.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Whether there is at least one loss to draw.
    pub fn has_losses(&self) -> bool {
        !self.train.is_empty() || self.eval.iter().any(|e| e.val_loss.is_some())
    }

    /// (step, loss) of every train record.
    pub fn train_points(&self) -> Vec<(f64, f64)> {
        self.train.iter().map(|r| (r.step as f64, r.loss)).collect()
    }

    /// (step, validation loss) of every validation that had one.
    pub fn val_points(&self) -> Vec<(f64, f64)> {
        self.eval
            .iter()
            .filter_map(|r| r.val_loss.map(|v| (r.step as f64, v)))
            .collect()
    }
}

/// A small log of two runs' worth of records (tests of this module and of plots).
#[cfg(test)]
pub(crate) const TEST_LOG: &str = r#"{"kind":"train","step":10,"epoch":0.1,"loss":4.0,"lr":0.001,"grad_norm":1.0,"tokens_per_s":100.0,"elapsed_s":1.0}
{"kind":"train","step":20,"epoch":0.2,"loss":3.0,"lr":0.001,"grad_norm":1.0,"tokens_per_s":100.0,"elapsed_s":2.0}
{"kind":"eval","step":20,"train_loss":3.5,"val_loss":3.2,"elapsed_s":2.5}
{"kind":"train","step":30,"epoch":0.3,"loss":2.5,"lr":0.001,"grad_norm":1.0,"tokens_per_s":100.0,"elapsed_s":3.0}
{"kind":"train","step":40,"epoch":0.4,"loss":2.4,"lr":0.001,"grad_norm":1.0,"tokens_per_s":100.0,"elapsed_s":4.0}
{"kind":"eval","step":40,"train_loss":2.45,"val_loss":2.6,"elapsed_s":4.5}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("runs/tiny-metrics.jsonl")
    }

    #[test]
    fn parses_train_and_eval_records() {
        let m = RunMetrics::parse(TEST_LOG, p()).unwrap();
        assert_eq!(m.label, "tiny");
        assert_eq!(m.train.len(), 4);
        assert_eq!(m.eval.len(), 2);
        assert_eq!(m.train[1].step, 20);
        assert_eq!(m.train[1].loss, 3.0);
        assert_eq!(m.val_points(), vec![(20.0, 3.2), (40.0, 2.6)]);
        assert_eq!(m.eval[1].train_loss, Some(2.45));
    }

    #[test]
    fn resumed_run_replaces_records_from_its_restart_step() {
        // The first run logged up to step 40 and validated at 40, but the resume starts from
        // a checkpoint at step 20: steps 30 and 40 are logged again.
        let resumed = format!(
            "{TEST_LOG}{}\n{}\n",
            r#"{"kind":"train","step":30,"epoch":0.3,"loss":2.7,"lr":0.001,"grad_norm":1.0,"tokens_per_s":100.0,"elapsed_s":3.0}"#,
            r#"{"kind":"eval","step":30,"train_loss":2.7,"val_loss":2.9,"elapsed_s":3.5}"#
        );
        let m = RunMetrics::parse(&resumed, p()).unwrap();
        let steps: Vec<u64> = m.train.iter().map(|r| r.step).collect();
        assert_eq!(steps, vec![10, 20, 30]);
        assert_eq!(m.train[2].loss, 2.7);
        assert_eq!(m.val_points(), vec![(20.0, 3.2), (30.0, 2.9)]);
    }

    #[test]
    fn truncated_last_line_is_skipped_but_bad_lines_are_errors() {
        let cut = format!("{TEST_LOG}{{\"kind\":\"train\",\"st");
        let m = RunMetrics::parse(&cut, p()).unwrap();
        assert_eq!(m.train.len(), 4);

        let bad = TEST_LOG.replacen("{\"kind\":\"eval\"", "{\"kind\":\"eval\",", 1);
        let e = RunMetrics::parse(&bad, p()).unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("tiny-metrics.jsonl"), "{e}");
    }

    #[test]
    fn null_losses_and_unknown_kinds_are_skipped() {
        let text = "{\"kind\":\"note\",\"msg\":\"hi\"}\n\
            {\"kind\":\"eval\",\"step\":5,\"train_loss\":null,\"val_loss\":null,\"elapsed_s\":0.1}\n";
        let m = RunMetrics::parse(text, p()).unwrap();
        assert!(m.train.is_empty());
        assert_eq!(m.eval.len(), 1);
        assert!(!m.has_losses());
    }

    #[test]
    fn labels_come_from_the_file_name() {
        assert_eq!(RunMetrics::label_for(Path::new("a/b/x-metrics.jsonl")), "x");
        assert_eq!(RunMetrics::label_for(Path::new("log.jsonl")), "log");
        assert_eq!(RunMetrics::label_for(Path::new("weird")), "weird");
    }

    /// What the trainer writes is what the reader reads; non-finite losses become null.
    #[test]
    fn written_lines_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r-metrics.jsonl");
        let lines = [
            Line::Train {
                step: 10,
                epoch: 0.5,
                loss: Some(2.5),
                lr: 1e-3,
                grad_norm: 0.7,
                tokens_per_s: 900.0,
                elapsed_s: 1.5,
            },
            Line::Train {
                step: 20,
                epoch: 1.0,
                loss: Some(f64::NAN),
                lr: 1e-3,
                grad_norm: 0.7,
                tokens_per_s: 900.0,
                elapsed_s: 3.0,
            },
            Line::Eval {
                step: 20,
                train_loss: Some(2.4),
                val_loss: Some(f64::INFINITY),
                elapsed_s: 3.5,
            },
        ];
        for l in &lines {
            append(&path, l).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().nth(1).unwrap().contains("\"loss\":null"),
            "{text}"
        );
        let m = RunMetrics::read(&path).unwrap();
        assert_eq!(m.label, "r");
        assert_eq!(m.train_points(), vec![(10.0, 2.5)]);
        assert_eq!(m.eval[0].train_loss, Some(2.4));
        assert_eq!(m.eval[0].val_loss, None);
    }

    #[cfg(unix)]
    #[test]
    fn the_log_is_never_appended_through_a_symbolic_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        let path = dir.path().join("r-metrics.jsonl");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let line = Line::Eval {
            step: 1,
            train_loss: None,
            val_loss: None,
            elapsed_s: 0.0,
        };
        assert!(append(&path, &line).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    }
}
