//! `quill score`: the loss of every line, paragraph or document of text files under one or
//! two models, as a table, JSONL or a per-character heat map.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use crossterm::style::Stylize;
use quill::checkpoint::LoadedModel;
use quill::score::{score_text, TextScore, Unit, UnitScore};
use quill::train::corpus::Corpus;
use quill::tui::ui::{self, prob_band, prob_colour, PROB_BANDS};

use super::common::load_model;
use super::eval::streams_note;

/// `--by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// Each line.
    Line,
    /// Each paragraph (lines up to a blank line).
    Paragraph,
    /// Each file as a whole.
    Doc,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Checkpoint to score with; give it twice (-c A -c B) to compare two models side by side
    /// [default: as for `sample`].
    #[arg(long, short)]
    checkpoint: Vec<PathBuf>,
    /// Text files to score.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// What each score covers.
    #[arg(long, value_enum, default_value_t = By::Line)]
    by: By,
    /// Sort by bits per character, highest (oddest) first; with two checkpoints by how much
    /// worse the second does than the first [default: file order].
    #[arg(long)]
    sort: bool,
    /// Only the N oddest units (sorted as --sort).
    #[arg(long, value_name = "N")]
    worst: Option<usize>,
    /// One JSON object per unit instead of a table.
    #[arg(long, conflicts_with = "heatmap")]
    jsonl: bool,
    /// Print the text with each character coloured by the probability the model gave its
    /// token, in the TUI's colours (char and BPE models).
    #[arg(long)]
    heatmap: bool,
    /// Parallel streams each file is split into, each from a zero state (so the loss is
    /// slightly above the sequential one); 1 gives the exact sequential loss.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Window length of the evaluation.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Replace invalid UTF-8 in the files instead of failing.
    #[arg(long)]
    lossy: bool,
}

/// One unit of one file under every checkpoint.
struct Row<'a> {
    file: usize,
    /// One score per checkpoint.
    scores: Vec<&'a UnitScore>,
}

impl Row<'_> {
    /// Sort key: bits per character, or the second checkpoint's minus the first's; `None`
    /// (no score) sorts last.
    fn key(&self) -> Option<f64> {
        match &self.scores[..] {
            [a] => a.bits_per_char(),
            [a, b] => Some(b.bits_per_char()? - a.bits_per_char()?),
            _ => None,
        }
    }
}

pub fn run(a: ScoreArgs) -> anyhow::Result<ExitCode> {
    if a.checkpoint.len() > 2 {
        anyhow::bail!(
            "invalid checkpoint: {} given; score takes one, or two to compare",
            a.checkpoint.len()
        );
    }
    if a.streams == 0 || a.seq == 0 {
        anyhow::bail!("invalid streams/seq: must be at least 1");
    }
    if a.worst == Some(0) {
        anyhow::bail!("invalid worst: must be at least 1");
    }
    let unit = match a.by {
        By::Line => Unit::Line,
        By::Paragraph => Unit::Paragraph,
        By::Doc => Unit::Doc,
    };
    // Everything is read and checked before any scoring.
    let models: Vec<LoadedModel> = if a.checkpoint.is_empty() {
        vec![load_model(None)?]
    } else {
        a.checkpoint
            .iter()
            .map(|c| load_model(Some(c)))
            .collect::<anyhow::Result<_>>()?
    };
    if a.heatmap {
        if let Some(m) = models
            .iter()
            .find(|m| m.tokenizer.token_byte_lens(&[]).is_none())
        {
            anyhow::bail!(
                "--heatmap needs a char or BPE model: {} is a {} model, whose tokens do not map \
                 back to exact characters",
                m.path.display(),
                m.tokenizer.kind()
            );
        }
    }
    let texts: Vec<Corpus> = a
        .files
        .iter()
        .map(|f| Corpus::load(f, a.lossy).map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<anyhow::Result<_>>()?;

    // scores[m][f]: model m on file f.
    let mut scores: Vec<Vec<TextScore>> = Vec::new();
    for m in &models {
        let mut per_file = Vec::new();
        for (f, c) in texts.iter().enumerate() {
            let s = score_text(&m.model, &m.tokenizer, &c.text, unit, a.streams, a.seq)
                .map_err(|e| anyhow::anyhow!("{}: {e}", a.files[f].display()))?;
            per_file.push(s);
        }
        scores.push(per_file);
    }

    let mut rows: Vec<Row> = Vec::new();
    for f in 0..texts.len() {
        for u in 0..scores[0][f].units.len() {
            rows.push(Row {
                file: f,
                scores: scores.iter().map(|s| &s[f].units[u]).collect(),
            });
        }
    }
    if a.sort || a.worst.is_some() {
        rows.sort_by(|x, y| match (x.key(), y.key()) {
            (Some(p), Some(q)) => q.total_cmp(&p),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    }
    if let Some(n) = a.worst {
        rows.truncate(n);
    }

    let mut out = std::io::stdout().lock();
    // The summary: on stderr for JSONL (stdout is only records), else at the top.
    let mut summary = Vec::new();
    for (m, model) in models.iter().enumerate() {
        summary.push(format!("checkpoint {}", model.path.display()));
        for (f, s) in scores[m].iter().enumerate() {
            summary.push(format!(
                "  {}: {} tokens, streams {}; total {} nats/token, {} bits/char over {} scored \
                 tokens",
                a.files[f].display(),
                s.tokens,
                streams_note(s.streams),
                fmt(s.total.loss_per_token()),
                fmt(s.total.bits_per_char()),
                s.total.tokens
            ));
        }
    }
    if a.jsonl {
        for line in &summary {
            eprintln!("{line}");
        }
    } else {
        for line in &summary {
            writeln!(out, "# {line}")?;
        }
    }

    let name = |r: &Row| {
        let s = r.scores[0];
        format!("{}:{}", a.files[r.file].display(), s.line)
    };
    if a.jsonl {
        for r in &rows {
            let s0 = r.scores[0];
            let rec = serde_json::json!({
                "file": a.files[r.file],
                "unit": unit.as_str(),
                "index": s0.index,
                "line": s0.line,
                "text": &texts[r.file].text[s0.range.clone()],
                "scores": r.scores.iter().zip(&models).map(|(s, m)| serde_json::json!({
                    "checkpoint": m.path,
                    "tokens": s.tokens,
                    "chars": s.chars,
                    "nats": s.nats,
                    "loss_per_token": s.loss_per_token(),
                    "bits_per_char": s.bits_per_char(),
                })).collect::<Vec<_>>(),
            });
            writeln!(out, "{rec}")?;
        }
    } else if a.heatmap {
        let mut legend = String::from("# colours: probability of the token ");
        for (p, label) in band_samples() {
            legend.push_str(&format!("{} ", format!("■{label}").with(colour(p))));
        }
        writeln!(out, "{legend}")?;
        for r in &rows {
            let s0 = r.scores[0];
            let figures: Vec<String> = r
                .scores
                .iter()
                .map(|s| format!("{} bits/char", fmt(s.bits_per_char())))
                .collect();
            writeln!(out, "── {} · {}", name(r), figures.join(" · "))?;
            for (m, per_file) in scores.iter().enumerate() {
                if scores.len() > 1 {
                    writeln!(out, "[{}]", ["A", "B"][m])?;
                }
                let text = &texts[r.file].text;
                heat(&mut out, text, s0.range.clone(), &per_file[r.file])?;
            }
        }
    } else {
        let two = models.len() == 2;
        let w = rows.iter().map(|r| name(r).len()).max().unwrap_or(5).max(5);
        if two {
            writeln!(
                out,
                "{:<w$}  {:>8} {:>9}  {:>8} {:>9}  {:>9}  text",
                "where", "A nats/t", "A bits/c", "B nats/t", "B bits/c", "B-A bits"
            )?;
        } else {
            writeln!(
                out,
                "{:<w$}  {:>6}  {:>10}  {:>9}  text",
                "where", "tokens", "nats/token", "bits/char"
            )?;
        }
        for r in &rows {
            let s0 = r.scores[0];
            let preview = preview(&texts[r.file].text[s0.range.clone()], 60);
            if two {
                let s1 = r.scores[1];
                writeln!(
                    out,
                    "{:<w$}  {:>8} {:>9}  {:>8} {:>9}  {:>9}  {preview}",
                    name(r),
                    fmt(s0.loss_per_token()),
                    fmt(s0.bits_per_char()),
                    fmt(s1.loss_per_token()),
                    fmt(s1.bits_per_char()),
                    r.key().map_or("-".to_string(), |d| format!("{d:+.4}")),
                )?;
            } else {
                writeln!(
                    out,
                    "{:<w$}  {:>6}  {:>10}  {:>9}  {preview}",
                    name(r),
                    s0.tokens,
                    fmt(s0.loss_per_token()),
                    fmt(s0.bits_per_char()),
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A figure with 4 decimals, or `-` when there is none.
fn fmt(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |v| format!("{v:.4}"))
}

/// The first line of a unit, control characters made visible, at most `max` chars.
fn preview(text: &str, max: usize) -> String {
    let line = text.trim_end_matches('\n');
    let mut out = String::new();
    for (i, c) in line.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push('⏎'),
            '\t' => out.push('⇥'),
            c if c.is_control() => out.push('�'),
            c => out.push(c),
        }
    }
    out
}

/// A probability inside each band of the TUI's scale, with the band's label.
fn band_samples() -> Vec<(f32, String)> {
    let mut v: Vec<(f32, String)> = PROB_BANDS.iter().map(|&b| (b, format!("≥{b}"))).collect();
    v.push((0.0, format!("<{}", PROB_BANDS[PROB_BANDS.len() - 1])));
    v
}

/// The TUI's colour of probability `p`, for the terminal.
fn colour(p: f32) -> crossterm::style::Color {
    prob_colour(p).into()
}

/// The TUI's colour of probability band `b` (see [`prob_band`]), for the terminal.
fn band_colour(b: usize) -> crossterm::style::Color {
    ui::band_colour(b).into()
}

/// Writes `text[range]` with each character in the colour of its token's probability
/// (`exp(-loss)`); characters of tokens that were not scored are left plain.
fn heat(
    out: &mut impl Write,
    text: &str,
    range: std::ops::Range<usize>,
    s: &TextScore,
) -> std::io::Result<()> {
    // The token of each byte: token spans tile the text in order.
    let toks = &s.token_losses;
    let mut t = toks.partition_point(|(r, _)| r.end <= range.start);
    // Runs of characters of one colour (`None`: not scored) are written together.
    let mut run = String::new();
    let mut run_band: Option<Option<usize>> = None;
    let flush = |out: &mut dyn Write, run: &mut String, band: Option<Option<usize>>| {
        if run.is_empty() {
            return Ok(());
        }
        let r = match band.flatten() {
            Some(b) => write!(out, "{}", run.as_str().with(band_colour(b))),
            None => write!(out, "{run}"),
        };
        run.clear();
        r
    };
    for (i, c) in text[range.clone()].char_indices() {
        let at = range.start + i;
        while t + 1 < toks.len() && toks[t].0.end <= at {
            t += 1;
        }
        let band = toks
            .get(t)
            .and_then(|x| x.1)
            .map(|loss| prob_band((-loss).exp()));
        if c == '\n' {
            flush(out, &mut run, run_band)?;
            run_band = None;
            writeln!(out)?;
            continue;
        }
        if run_band != Some(band) {
            flush(out, &mut run, run_band)?;
            run_band = Some(band);
        }
        run.push(c);
    }
    flush(out, &mut run, run_band)?;
    if !text[range].ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}
