//! Loss plots end to end: `quill plot` and the plot `quill train` leaves next to its
//! checkpoints are real, readable images with curves on them.

mod common;
use common::{quill, text};

use std::path::Path;

use quill::plot::{render_png, PlotOptions};
use quill::train::metrics::RunMetrics;

/// A metrics log like `quill train` writes: a decaying, noisy train loss every 10 steps and a
/// validation every 100.
fn synthetic_log(floor: f64, steps: u64) -> String {
    let mut s = String::new();
    for step in (10..=steps).step_by(10) {
        let clean = floor + (4.2 - floor) * (-(step as f64) / 300.0).exp();
        let noise = ((step * 7919) % 13) as f64 / 13.0 * 0.1 - 0.05;
        s += &format!(
            "{{\"kind\":\"train\",\"step\":{step},\"epoch\":{},\"loss\":{},\"lr\":0.002,\"grad_norm\":1.0,\"tokens_per_s\":20000,\"elapsed_s\":{}}}\n",
            step as f64 / 500.0,
            clean + noise,
            step as f64 / 10.0
        );
        if step % 100 == 0 {
            s += &format!(
                "{{\"kind\":\"eval\",\"step\":{step},\"train_loss\":{clean},\"val_loss\":{},\"elapsed_s\":{}}}\n",
                clean + 0.1,
                step as f64 / 10.0
            );
        }
    }
    s
}

/// Decoded RGB(A) image: (width, height, bytes per pixel, pixels).
fn decode(bytes: &[u8]) -> (u32, u32, usize, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, info.color_type.samples(), buf)
}

/// Pixels close to `rgb` (each channel within 40).
fn count_near(img: &(u32, u32, usize, Vec<u8>), rgb: [u8; 3]) -> usize {
    img.3
        .chunks(img.2)
        .filter(|p| (0..3).all(|i| (p[i] as i32 - rgb[i] as i32).abs() <= 40))
        .count()
}

fn non_white(img: &(u32, u32, usize, Vec<u8>)) -> usize {
    img.3
        .chunks(img.2)
        .filter(|p| p[..3].iter().any(|&c| c < 250))
        .count()
}

const TRAIN_BLUE: [u8; 3] = [31, 119, 180];
const VAL_ORANGE: [u8; 3] = [255, 127, 14];
const RUN2_GREEN: [u8; 3] = [44, 160, 44];

#[test]
fn png_from_the_library_has_both_curves() {
    let m = RunMetrics::parse(&synthetic_log(1.5, 1500), Path::new("a-metrics.jsonl")).unwrap();
    let opts = PlotOptions {
        width: 800,
        height: 500,
        ..PlotOptions::default()
    };
    let img = decode(&render_png(&[m], &opts).unwrap());
    assert_eq!((img.0, img.1), (800, 500));
    let total = (img.0 * img.1) as usize;
    let ink = non_white(&img);
    // Axes, grid, labels and curves, but mostly white background.
    assert!(ink > total / 50 && ink < total / 2, "{ink} of {total}");
    assert!(count_near(&img, TRAIN_BLUE) > 500, "train curve");
    assert!(count_near(&img, VAL_ORANGE) > 300, "validation curve");
    // Labels were rasterised: near-black text pixels exist.
    assert!(count_near(&img, [0, 0, 0]) > 500, "text and axes");
}

#[test]
fn quill_plot_overlays_runs_in_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("small-metrics.jsonl"), synthetic_log(1.9, 1200)).unwrap();
    std::fs::write(d.join("big-metrics.jsonl"), synthetic_log(1.4, 1500)).unwrap();

    let o = quill(
        &[
            "plot",
            "small-metrics.jsonl",
            "big-metrics.jsonl",
            "--out",
            "cmp.png",
            "--width",
            "640",
            "--height",
            "400",
            "--log-x",
        ],
        d,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let img = decode(&std::fs::read(d.join("cmp.png")).unwrap());
    assert_eq!((img.0, img.1), (640, 400));
    assert!(count_near(&img, TRAIN_BLUE) > 200, "first run");
    assert!(count_near(&img, RUN2_GREEN) > 200, "second run");

    // A directory stands for its metrics logs; SVG keeps the legend as text.
    let o = quill(&["plot", ".", "-o", "cmp.svg"], d);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let svg = std::fs::read_to_string(d.join("cmp.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    for want in [
        "big train",
        "big validation",
        "small train",
        "small validation",
    ] {
        assert!(svg.contains(want), "missing {want}");
    }
    assert!(
        svg.matches("<polyline").count() >= 6,
        "raw, smoothed, val x2"
    );
}

#[test]
fn quill_plot_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("x-metrics.jsonl"), synthetic_log(1.5, 100)).unwrap();
    let o = quill(&["plot", "x-metrics.jsonl", "--out", "x.jpg"], d);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(".png or .svg"),
        "{}",
        text(&o.stderr)
    );
    let o = quill(&["plot", "missing-metrics.jsonl"], d);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("missing-metrics.jsonl"));
    std::fs::write(d.join("empty-metrics.jsonl"), "").unwrap();
    let o = quill(&["plot", "empty-metrics.jsonl"], d);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("no losses"), "{}", text(&o.stderr));
    assert!(!d.join("loss.png").exists());
}

#[test]
fn train_writes_the_loss_plot_and_dashboard_falls_back_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let para = "ROMEO:\nBut soft, what light through yonder window breaks?\n\
JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n";
    std::fs::write(d.join("tiny.txt"), para.repeat(30)).unwrap();
    let o = quill(
        &[
            "train",
            "--corpus",
            "tiny.txt",
            "--hidden",
            "32",
            "--embed",
            "8",
            "--batch",
            "4",
            "--seq",
            "16",
            "--max-steps",
            "40",
            "--eval-every",
            "10",
            "--dashboard",
        ],
        d,
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "train failed: {err}");
    // Output is piped here: no dashboard, the progress-bar path instead.
    assert!(err.contains("--dashboard needs a terminal"), "{err}");
    assert!(err.contains("loss plot:"), "{err}");
    let img = decode(&std::fs::read(d.join("checkpoints/tiny-loss.png")).unwrap());
    assert_eq!((img.0, img.1), (1200, 700));
    assert!(count_near(&img, TRAIN_BLUE) > 300);
    assert!(count_near(&img, VAL_ORANGE) > 100);
}
