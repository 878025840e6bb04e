//! The real `quill tui` in a pseudo-terminal (a detached tmux session): it opens the default
//! checkpoint, the text streams in after a key, temperature keys change the shown value, a
//! tiny window shows a message, and quitting restores the terminal (cooked mode, main screen).
//!
//! Skipped, with a message, where tmux is not installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sha2::Digest;

use quill::nn::model::ModelConfig;
use quill::tokenizer::{Tokenizer, TokenizerKind, TokenizerOptions};
use quill::train::corpus::Corpus;
use quill::train::{Control, TrainConfig, Trainer};

const TEXT: &str = "ROMEO:\nBut soft, what light through yonder window breaks?\n\
JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n";

/// Trains a tiny char model for a few steps; returns its checkpoint in `dir/checkpoints`.
fn tiny_checkpoint(dir: &Path) -> PathBuf {
    let text = TEXT.repeat(10);
    let corpus = Corpus {
        path: PathBuf::from("inline.txt"),
        text: text.clone(),
        fingerprint: quill::train::corpus::hex(&sha2::Sha256::digest(text.as_bytes())),
    };
    let tok = Tokenizer::train(
        TokenizerKind::Char,
        &text,
        &TokenizerOptions::for_kind(TokenizerKind::Char),
    )
    .unwrap();
    let cfg = TrainConfig {
        batch: 2,
        seq: 8,
        val_fraction: 0.0,
        eval_every: 0,
        save_every: 0,
        max_steps: Some(3),
        out: dir.join("checkpoints"),
        name: "tiny".into(),
        ..TrainConfig::default()
    };
    let model = ModelConfig {
        vocab: 0,
        embed: 8,
        hidden: 16,
        layers: 1,
        dropout: 0.0,
        tie_weights: false,
    };
    let mut tr = Trainer::new(&corpus, tok, model, cfg).unwrap();
    tr.run(None, &mut |_| Control::Continue).unwrap().latest
}

/// Whether tmux can drive these tests. Without it they fail (`.ci/run` installs it), unless
/// `QUILL_SKIP_TMUX_TESTS` is set, which skips them with a message.
fn tmux_available() -> bool {
    if Command::new("tmux").arg("-V").output().is_ok() {
        return true;
    }
    if std::env::var_os("QUILL_SKIP_TMUX_TESTS").is_some() {
        eprintln!("SKIPPED: tmux is not installed and QUILL_SKIP_TMUX_TESTS is set");
        return false;
    }
    panic!(
        "tmux is not installed; it drives the TUI in a pseudo-terminal (apt-get install tmux, \
         or set QUILL_SKIP_TMUX_TESTS=1 to skip these tests)"
    );
}

/// A tmux server of our own (its own socket), killed on drop.
struct Tmux {
    socket: String,
    /// Session the helpers talk to.
    target: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        let o = self.cmd(&["capture-pane", "-p", "-t", &self.target]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.target];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }

    /// Waits until the screen satisfies `pred` (20 s at most), returns it.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!("timed out waiting for {what}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn format(&self, fmt: &str) -> String {
        let o = self.cmd(&["display-message", "-p", "-t", &self.target, fmt]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn tui_runs_in_a_real_terminal() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ck = tiny_checkpoint(dir.path());
    assert!(ck.starts_with(dir.path().join("checkpoints")));
    let mut tmux = Tmux {
        socket: format!("quill-tui-e2e-{}", std::process::id()),
        target: "e2e".into(),
    };
    let bin = env!("CARGO_BIN_EXE_quill");
    // After quill exits: its exit status and the terminal modes, then keep the pane open.
    let script =
        format!("'{bin}' tui --speed 40 --length 0; echo \"quill exited $?\"; stty -a; sleep 60");
    let dir_s = dir.path().to_str().unwrap();
    let o = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "e2e",
        "-x",
        "100",
        "-y",
        "30",
        "-c",
        dir_s,
        &script,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The default checkpoint opens straight away.
    let s = tmux.wait_for("the idle main screen", |s| s.contains("○ idle"));
    assert!(s.contains(" tiny-latest │ char │"), "{s}");
    assert!(s.contains("temperature 0.80"), "{s}");
    assert_eq!(tmux.format("#{alternate_on}"), "1");

    // Write a prompt, generate: the prompt and then sampled text appear in the text area.
    tmux.keys(&["Tab"]);
    tmux.wait_for("the prompt editor", |s| s.contains("Prompt · editing"));
    tmux.keys(&["-l", "ROMEO"]);
    tmux.keys(&["Escape"]);
    tmux.wait_for("the end of editing", |s| s.contains("Prompt · Tab to edit"));
    tmux.keys(&["Enter"]);
    // The text area (left pane) starts with the prompt and holds at least 5 generated
    // characters, on however many lines the model's newlines make.
    let s = tmux.wait_for("generated text", |s| {
        let text: String = s
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with('│'))
            .map(|l| {
                let t = l.trim_start_matches('│').split('│').next().unwrap_or("");
                t.trim_end().to_string()
            })
            .collect();
        text.starts_with("ROMEO")
            && text.chars().count() >= "ROMEO".len() + 5
            && s.contains("● generating")
    });
    assert!(s.contains("tok/s"), "{s}");

    // Temperature up twice, down once, while it generates.
    tmux.keys(&["T", "T"]);
    tmux.wait_for("temperature 0.90", |s| s.contains("temperature 0.90"));
    tmux.keys(&["t"]);
    let s = tmux.wait_for("temperature 0.85", |s| s.contains("temperature 0.85"));
    assert!(s.contains("Next token · T 0.85"), "{s}");

    // A tiny window gets a message, and the screen comes back after.
    tmux.cmd(&["resize-window", "-t", "e2e", "-x", "40", "-y", "10"]);
    tmux.wait_for("the too-small message", |s| {
        s.contains("Terminal too small")
    });
    tmux.cmd(&["resize-window", "-t", "e2e", "-x", "100", "-y", "30"]);
    tmux.wait_for("the main screen again", |s| s.contains("temperature 0.85"));

    // Quit: exit status 0, main screen back, raw mode off (canonical input and echo on).
    tmux.keys(&["q"]);
    let s = tmux.wait_for("quill to exit", |s| s.contains("quill exited"));
    assert!(s.contains("quill exited 0"), "{s}");
    let s = tmux.wait_for("stty output", |s| s.contains("icanon"));
    let words: Vec<&str> = s.split_whitespace().collect();
    for mode in ["icanon", "echo", "isig"] {
        assert!(words.contains(&mode), "{mode} is off after quitting:\n{s}");
    }
    assert_eq!(tmux.format("#{alternate_on}"), "0");
    assert_eq!(tmux.format("#{cursor_flag}"), "1", "cursor still hidden");

    // Ctrl-C while generating quits just as cleanly.
    let o = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "ctrlc",
        "-x",
        "100",
        "-y",
        "30",
        "-c",
        dir_s,
        &script,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tmux.target = "ctrlc".into();
    tmux.wait_for("the idle main screen", |s| s.contains("○ idle"));
    tmux.keys(&["g"]);
    tmux.wait_for("generating", |s| s.contains("● generating"));
    tmux.keys(&["C-c"]);
    let s = tmux.wait_for("quill to exit", |s| s.contains("quill exited"));
    assert!(s.contains("quill exited 0"), "{s}");
    let s = tmux.wait_for("stty output", |s| s.contains("icanon"));
    let words: Vec<&str> = s.split_whitespace().collect();
    assert!(words.contains(&"icanon") && words.contains(&"echo"), "{s}");
    assert_eq!(tmux.format("#{alternate_on}"), "0");
}

/// A terminal that goes away (a dropped SSH session, a killed tmux) ends `quill tui`: the
/// process exits instead of spinning on a dead terminal.
#[test]
fn quill_tui_exits_when_its_terminal_goes_away() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path());
    let tmux = Tmux {
        socket: format!("quill-tui-gone-{}", std::process::id()),
        target: "gone".into(),
    };
    let bin = env!("CARGO_BIN_EXE_quill");
    let script = format!("exec '{bin}' tui --speed 40 --length 0");
    let o = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "gone",
        "-x",
        "100",
        "-y",
        "30",
        "-c",
        dir.path().to_str().unwrap(),
        &script,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tmux.wait_for("the idle main screen", |s| s.contains("○ idle"));
    let pid: u32 = tmux.format("#{pane_pid}").parse().expect("pane pid");
    tmux.keys(&["g"]);
    tmux.wait_for("generating", |s| s.contains("● generating"));
    drop(tmux); // kills the tmux server: the pane's terminal is gone
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let start = Instant::now();
    while proc_dir.exists() {
        let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
        if stat.split_whitespace().nth(2) == Some("Z") {
            break; // exited; waiting for its parent to reap it
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("quill tui (pid {pid}) still runs 20 s after its terminal went away");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
