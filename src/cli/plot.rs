//! `quill plot`: loss curves from metrics logs to a PNG or SVG.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use quill::plot::{write_plot, PlotFormat, PlotOptions};
use quill::train::metrics::RunMetrics;

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Metrics logs (NAME-metrics.jsonl, written by `quill train`); several are overlaid.
    /// A directory stands for every *-metrics.jsonl in it.
    #[arg(required = true, value_name = "METRICS")]
    metrics: Vec<PathBuf>,
    /// Output image; .png or .svg.
    #[arg(long, short, default_value = "loss.png")]
    out: PathBuf,
    /// Logarithmic step axis.
    #[arg(long)]
    log_x: bool,
    /// Image width in pixels.
    #[arg(long, default_value_t = 1200)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 700)]
    height: u32,
    /// Title [default: "Loss: NAME" for one run, "Loss" for several].
    #[arg(long)]
    title: Option<String>,
}

/// The metrics logs named on the command line, directories expanded (sorted by name).
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with("-metrics.jsonl"))
                })
                .collect();
            if found.is_empty() {
                anyhow::bail!(
                    "{}: no *-metrics.jsonl files in this directory",
                    p.display()
                );
            }
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Reads the logs and labels each run; labels that clash get their directory added.
pub fn read_runs(paths: &[PathBuf]) -> anyhow::Result<Vec<RunMetrics>> {
    let mut runs = paths
        .iter()
        .map(|p| RunMetrics::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    for i in 0..runs.len() {
        if runs.iter().filter(|r| r.label == runs[i].label).count() > 1 {
            let dir = paths[i]
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            runs[i].label = format!("{}/{}", dir.display(), runs[i].label);
        }
    }
    Ok(runs)
}

pub fn run(a: PlotArgs) -> anyhow::Result<ExitCode> {
    PlotFormat::from_path(&a.out)?;
    let paths = expand(&a.metrics)?;
    let runs = read_runs(&paths)?;
    for (r, p) in runs.iter().zip(&paths) {
        if !r.has_losses() {
            eprintln!("warning: {}: no losses logged yet", p.display());
        }
    }
    let opts = PlotOptions {
        width: a.width,
        height: a.height,
        log_x: a.log_x,
        title: a.title,
    };
    write_plot(&a.out, &runs, &opts)?;
    eprintln!("wrote {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}
