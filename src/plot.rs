//! Loss curves from the metrics log: reading `NAME-metrics.jsonl` and drawing train and
//! validation loss over steps (one or several runs overlaid) to a PNG or SVG with `plotters`.
//!
//! The log has one JSON object per line: `{"kind":"train","step","epoch","loss","lr",
//! "grad_norm","tokens_per_s","elapsed_s"}` every 10 steps and `{"kind":"eval","step",
//! "train_loss","val_loss","elapsed_s"}` at each validation. A resumed run appends to the same
//! file, possibly from an earlier step than the log reached: records at or after the step a
//! run restarts from replace the older ones.
//!
//! Text is rendered with a bundled ASCII subset of DejaVu Sans (no system fonts needed).

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::train::metrics::RunMetrics;

/// Moving average of the y values over `2 * half + 1` points centred on each point, cut off
/// at the ends (there it leans on the inner side instead of shrinking to the raw value).
pub fn smooth(points: &[(f64, f64)], half: usize) -> Vec<(f64, f64)> {
    if half == 0 || points.len() < 3 {
        return points.to_vec();
    }
    let mut prefix = Vec::with_capacity(points.len() + 1);
    prefix.push(0.0);
    for &(_, y) in points {
        prefix.push(prefix.last().copied().unwrap_or(0.0) + y);
    }
    (0..points.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(points.len()));
            (points[i].0, (prefix[b] - prefix[a]) / (b - a) as f64)
        })
        .collect()
}

/// Output format of a plot, chosen by the file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlotFormat {
    /// Raster image.
    Png,
    /// Vector image.
    Svg,
}

impl PlotFormat {
    /// `.png` or `.svg` (any case); anything else is an error.
    pub fn from_path(path: &Path) -> Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => Ok(PlotFormat::Png),
            Some("svg") => Ok(PlotFormat::Svg),
            _ => Err(Error::config(
                "out",
                format!("{}: the plot file must end in .png or .svg", path.display()),
            )),
        }
    }
}

/// How to draw the plot.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotOptions {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Logarithmic step axis.
    pub log_x: bool,
    /// Title; `None` gives "Loss: LABEL" for one run, "Loss" for several.
    pub title: Option<String>,
}

impl Default for PlotOptions {
    /// 1200 × 700, linear axes, automatic title.
    fn default() -> Self {
        PlotOptions {
            width: 1200,
            height: 700,
            log_x: false,
            title: None,
        }
    }
}

/// Tableau 10: distinct, colour-blind-friendlier hues. Run i uses 2i (train) and 2i+1 (val).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-ascii.ttf");

/// Registers the bundled font as plotters' "sans-serif" (once).
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Plot("the bundled font could not be loaded".into()))
    }
}

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Plot(e.to_string())
}

/// Compact step labels: 950, 1.5k, 20k, 1.2M.
fn fmt_step(v: f64) -> String {
    let a = v.abs();
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e3 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else {
        trim(format!("{v:.1}"))
    }
}

/// The curves of one run, prepared for drawing.
struct Curves {
    label: String,
    raw: Vec<(f64, f64)>,
    train: Vec<(f64, f64)>,
    val: Vec<(f64, f64)>,
}

fn prepare(runs: &[RunMetrics]) -> Vec<Curves> {
    runs.iter()
        .map(|r| {
            let raw = r.train_points();
            // About 1/60 of the curve on either side: smooth enough to read, short enough
            // not to shift the bends.
            let half = (raw.len() / 60).min(50);
            Curves {
                label: r.label.clone(),
                train: smooth(&raw, half),
                raw,
                val: r.val_points(),
            }
        })
        .collect()
}

/// Draws the loss curves of `runs` onto a drawing area.
pub fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[RunMetrics],
    opts: &PlotOptions,
) -> Result<()> {
    ensure_font()?;
    if runs.is_empty() || !runs.iter().any(RunMetrics::has_losses) {
        return Err(Error::Plot(
            "no losses to draw: the metrics log has no train or validation records yet".into(),
        ));
    }
    let curves = prepare(runs);
    let all = || {
        curves
            .iter()
            .flat_map(|c| c.raw.iter().chain(c.val.iter()).copied())
    };
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in all() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let pad = ((y1 - y0) * 0.05).max(0.01);
    let y_range = (y0 - pad).max(0.0)..y1 + pad;
    let title = opts.title.clone().unwrap_or_else(|| match runs {
        [one] => format!("Loss: {}", one.label),
        _ => "Loss".to_string(),
    });
    root.fill(&WHITE).map_err(plot_err)?;
    if opts.log_x {
        let lo = x0.max(1.0);
        let hi = (x1 * 1.05).max(lo * 10.0);
        draw_chart(root, (lo..hi).log_scale(), y_range, &curves, &title)
    } else {
        let hi = if x1 > 0.0 { x1 * 1.02 } else { 1.0 };
        draw_chart(root, 0.0..hi, y_range, &curves, &title)
    }?;
    root.present().map_err(plot_err)
}

fn draw_chart<DB, XS>(
    root: &DrawingArea<DB, Shift>,
    x_spec: XS,
    y_range: Range<f64>,
    curves: &[Curves],
    title: &str,
) -> Result<()>
where
    DB: DrawingBackend,
    XS: AsRangedCoord<Value = f64>,
    XS::CoordDescType: ValueFormatter<f64>,
{
    let (w, h) = root.dim_in_pixel();
    let scale = (w.min(h * 2) as f64 / 1200.0).clamp(0.4, 4.0);
    let px = |v: f64| (v * scale).round().max(1.0) as u32;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", px(28.0)))
        .margin(px(18.0))
        .x_label_area_size(px(55.0))
        .y_label_area_size(px(70.0))
        .build_cartesian_2d(x_spec, y_range)
        .map_err(plot_err)?;
    let label_font = ("sans-serif", px(18.0));
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss (nats/token)")
        .x_label_formatter(&|v| fmt_step(*v))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style(label_font)
        .axis_desc_style(("sans-serif", px(20.0)))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()
        .map_err(plot_err)?;
    let thin = px(1.0);
    let thick = px(2.5);
    for (i, c) in curves.iter().enumerate() {
        let tc = PALETTE[(2 * i) % PALETTE.len()];
        let vc = PALETTE[(2 * i + 1) % PALETTE.len()];
        let name = |what: &str| {
            if curves.len() == 1 {
                what.to_string()
            } else {
                format!("{} {what}", c.label)
            }
        };
        if !c.raw.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    c.raw.iter().copied(),
                    tc.mix(0.25).stroke_width(thin),
                ))
                .map_err(plot_err)?;
            chart
                .draw_series(LineSeries::new(
                    c.train.iter().copied(),
                    tc.stroke_width(thick),
                ))
                .map_err(plot_err)?
                .label(name("train"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], tc.stroke_width(thick))
                });
        }
        if !c.val.is_empty() {
            let marker = px(4.0);
            chart
                .draw_series(
                    LineSeries::new(c.val.iter().copied(), vc.stroke_width(thick))
                        .point_size(marker),
                )
                .map_err(plot_err)?
                .label(name("validation"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], vc.stroke_width(thick))
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(label_font)
        .margin(px(12.0))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// Renders the plot as an SVG document.
pub fn render_svg(runs: &[RunMetrics], opts: &PlotOptions) -> Result<String> {
    check_size(opts)?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (opts.width, opts.height)).into_drawing_area();
        draw(&root, runs, opts)?;
    }
    Ok(svg)
}

/// Renders the plot as a PNG file's bytes (8-bit RGB).
pub fn render_png(runs: &[RunMetrics], opts: &PlotOptions) -> Result<Vec<u8>> {
    check_size(opts)?;
    let (w, h) = (opts.width, opts.height);
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(&root, runs, opts)?;
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(plot_err)?;
        writer.write_image_data(&rgb).map_err(plot_err)?;
    }
    Ok(out)
}

fn check_size(opts: &PlotOptions) -> Result<()> {
    let ok = |v: u32| (100..=10_000).contains(&v);
    if ok(opts.width) && ok(opts.height) {
        Ok(())
    } else {
        Err(Error::config(
            "size",
            format!(
                "{}x{} pixels: width and height must be in 100..=10000",
                opts.width, opts.height
            ),
        ))
    }
}

/// Draws the plot to `path`, PNG or SVG by its extension. The file is written whole or not at
/// all (temporary file, then rename).
pub fn write_plot(path: &Path, runs: &[RunMetrics], opts: &PlotOptions) -> Result<()> {
    let bytes = match PlotFormat::from_path(path)? {
        PlotFormat::Png => render_png(runs, opts)?,
        PlotFormat::Svg => render_svg(runs, opts)?.into_bytes(),
    };
    crate::atomic::write(path, &bytes).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::metrics::TEST_LOG as LOG;

    fn p() -> &'static Path {
        Path::new("runs/tiny-metrics.jsonl")
    }

    #[test]
    fn smoothing_averages_neighbours_and_keeps_ends() {
        let pts: Vec<(f64, f64)> = (0..5)
            .map(|i| (i as f64, [0., 3., 0., 3., 0.][i]))
            .collect();
        let s = smooth(&pts, 1);
        assert_eq!(s[0], (0.0, 1.5));
        assert_eq!(s[1], (1.0, 1.0));
        assert_eq!(s[2], (2.0, 2.0));
        assert_eq!(s[4], (4.0, 1.5));
        assert_eq!(smooth(&pts, 0), pts);
    }

    #[test]
    fn step_labels_are_compact() {
        assert_eq!(fmt_step(950.0), "950");
        assert_eq!(fmt_step(1500.0), "1.5k");
        assert_eq!(fmt_step(20_000.0), "20k");
        assert_eq!(fmt_step(1_250_000.0), "1.25M");
        assert_eq!(fmt_step(2.5), "2.5");
    }

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(
            PlotFormat::from_path(Path::new("a.PNG")).unwrap(),
            PlotFormat::Png
        );
        assert_eq!(
            PlotFormat::from_path(Path::new("a.svg")).unwrap(),
            PlotFormat::Svg
        );
        assert!(PlotFormat::from_path(Path::new("a.jpg")).is_err());
        assert!(PlotFormat::from_path(Path::new("a")).is_err());
    }

    #[test]
    fn svg_has_curves_and_labels() {
        let m = RunMetrics::parse(LOG, p()).unwrap();
        let svg = render_svg(&[m], &PlotOptions::default()).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..50]);
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("validation"));
        assert!(svg.contains("loss (nats/token)"));
    }

    #[test]
    fn nothing_to_draw_is_an_error_not_a_blank_image() {
        let empty = RunMetrics::default();
        assert!(render_png(&[empty], &PlotOptions::default()).is_err());
        assert!(render_svg(&[], &PlotOptions::default()).is_err());
        let m = RunMetrics::parse(LOG, p()).unwrap();
        let tiny = PlotOptions {
            width: 10,
            ..PlotOptions::default()
        };
        assert!(render_png(&[m], &tiny).is_err());
    }
}
