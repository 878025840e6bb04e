//! What the integration tests (and the serving benchmark, `benches/serve.rs`) share: running
//! the real `quill` binary, and reading server-sent events from an HTTP response.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quill::nn::model::ModelConfig;
use quill::tokenizer::{Tokenizer, TokenizerKind, TokenizerOptions};
use quill::train::corpus::Corpus;
use quill::train::{Control, TrainConfig, Trainer};
use sha2::Digest;

use serde_json::Value;

/// Runs the `quill` binary built for these tests in `cwd` and waits for it.
pub fn quill(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quill"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run quill")
}

/// A small char model (2 × 24) trained through the library for `steps` steps at learning rate
/// `lr` on a tiny repetitive corpus written to `DIR/corpus.txt` (which the checkpoint
/// records); returns its `latest` checkpoint.
pub fn tiny_model(dir: &Path, steps: u64, lr: f32) -> PathBuf {
    const TEXT: &str = "ROMEO:\nBut soft, what light through yonder window breaks?\n\
JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?\n\n";
    let text = TEXT.repeat(20);
    let path = dir.join("corpus.txt");
    std::fs::write(&path, &text).unwrap();
    let corpus = Corpus {
        path,
        text: text.clone(),
        fingerprint: quill::train::corpus::hex(&sha2::Sha256::digest(text.as_bytes())),
    };
    let opts = TokenizerOptions {
        vocab_size: 10_000,
        min_frequency: 1,
    };
    let tok = Tokenizer::train(TokenizerKind::Char, &text, &opts).unwrap();
    let model = ModelConfig {
        vocab: 0,
        embed: 8,
        hidden: 24,
        layers: 2,
        dropout: 0.0,
        tie_weights: false,
    };
    let cfg = TrainConfig {
        batch: 4,
        seq: 16,
        val_fraction: 0.0,
        eval_every: 0,
        save_every: 0,
        max_steps: Some(steps),
        lr,
        out: dir.to_path_buf(),
        name: "tiny".into(),
        ..TrainConfig::default()
    };
    let mut tr = Trainer::new(&corpus, tok, model, cfg).unwrap();
    tr.run(None, &mut |_| Control::Continue).unwrap().latest
}

/// Output bytes as text (invalid UTF-8 replaced).
pub fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// The data of each event of a response, up to (without) `[DONE]`, parsed as JSON.
pub struct Events {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Events {
    /// Checks that `resp` is a 200 event stream. Errors name the status and the body.
    pub async fn open(resp: reqwest::Response) -> Result<Self, String> {
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            let body = resp.text().await.unwrap_or_default();
            return Err(format!("HTTP {status}: {body}"));
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !ct.starts_with("text/event-stream") {
            return Err(format!("content-type {ct}, not an event stream"));
        }
        Ok(Events {
            resp,
            buf: Vec::new(),
        })
    }

    /// The next event's data; `None` after `[DONE]` or at the end of the body.
    pub async fn try_next(&mut self) -> Result<Option<Value>, String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = std::str::from_utf8(&block).map_err(|e| e.to_string())?;
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                let data = data.join("\n");
                if data == "[DONE]" {
                    return Ok(None);
                }
                return serde_json::from_str(&data)
                    .map(Some)
                    .map_err(|e| format!("event data {data:?}: {e}"));
            }
            match self.resp.chunk().await.map_err(|e| e.to_string())? {
                Some(b) => self.buf.extend_from_slice(&b),
                None => return Ok(None),
            }
        }
    }

    /// [`Events::try_next`], panicking on errors (for tests).
    pub async fn next(&mut self) -> Option<Value> {
        self.try_next().await.unwrap()
    }

    /// Every remaining event (for tests).
    pub async fn all(mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}
