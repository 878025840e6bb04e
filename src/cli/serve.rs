//! `quill serve`: models over HTTP (OpenAI-shaped completions API, continuous batching,
//! playground page). SIGINT/SIGTERM stop it gracefully; a second one exits at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use quill::generate::batch::default_threads;
use quill::serve::{self, Limits, ServeConfig, ServedModel};

use super::common::{human_count, load_model};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Checkpoints to serve, as PATH or NAME=PATH; a request's `model` picks one by name (the
    /// file name without .safetensors unless given), the first is the default [default: the
    /// newest *-best in checkpoints/, else the newest checkpoint there].
    checkpoints: Vec<String>,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Most texts generated at once per model (rows of its batch); more wait in the queue.
    #[arg(long, default_value_t = Limits::default().max_streams)]
    max_streams: usize,
    /// Most requests waiting per model; beyond, 429 with Retry-After.
    #[arg(long, default_value_t = Limits::default().max_queue)]
    max_queue: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = Limits::default().max_tokens)]
    max_tokens: usize,
    /// Largest request body in bytes; beyond, 413.
    #[arg(long, default_value_t = Limits::default().max_body)]
    max_body: usize,
    /// Seconds a request may take, queue time included; then 504 (or an error event).
    #[arg(long, default_value_t = Limits::default().timeout.as_secs_f64())]
    timeout: f64,
    /// On SIGINT/SIGTERM, seconds running texts may go on before they are ended.
    #[arg(long, default_value_t = Limits::default().shutdown_grace.as_secs_f64())]
    shutdown_grace: f64,
    /// Engine threads per model [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Threads answering HTTP.
    #[arg(long, default_value_t = 2)]
    http_threads: usize,
}

fn seconds(name: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| anyhow::anyhow!("invalid {name}: {s} (must be a number of seconds >= 0)"))
}

/// `NAME=PATH` or `PATH` (named after the file).
fn parse_checkpoint(arg: &str) -> (Option<String>, PathBuf) {
    match arg.split_once('=') {
        Some((name, path)) if !name.is_empty() && !name.contains(['/', '\\']) => {
            (Some(name.to_string()), PathBuf::from(path))
        }
        _ => (None, PathBuf::from(arg)),
    }
}

pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let limits = Limits {
        max_streams: a.max_streams,
        max_queue: a.max_queue,
        max_tokens: a.max_tokens,
        max_body: a.max_body,
        timeout: seconds("timeout", a.timeout)?,
        shutdown_grace: seconds("shutdown-grace", a.shutdown_grace)?,
    };
    let threads = a.threads.unwrap_or(0);
    // Every model's engine splits its rows into shards on all cores; the matrix library's
    // own threads would only compete with them (as in `quill sample --out`). Set before any
    // matrix product and before this process starts a thread.
    let shards = match threads {
        0 => default_threads(),
        t => t,
    };
    if shards > 1 && std::env::var_os("MATMUL_NUM_THREADS").is_none() {
        std::env::set_var("MATMUL_NUM_THREADS", "1");
    }

    let mut models = Vec::new();
    let args = if a.checkpoints.is_empty() {
        vec![None]
    } else {
        a.checkpoints
            .iter()
            .map(|c| Some(parse_checkpoint(c)))
            .collect()
    };
    for arg in args {
        let (name, path) = match arg {
            Some((n, p)) => (n, Some(p)),
            None => (None, None),
        };
        let loaded = load_model(path.as_deref())?;
        let name = name.unwrap_or_else(|| {
            loaded
                .path
                .file_stem()
                .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
        });
        let c = &loaded.meta.model;
        eprintln!(
            "model {name}: {}, {} × {}, {} parameters ({})",
            loaded.tokenizer.kind().name(),
            c.layers,
            c.hidden,
            human_count(c.num_params()),
            loaded.path.display()
        );
        models.push(ServedModel { name, loaded });
    }

    let server = serve::start(
        models,
        ServeConfig {
            addr: a.addr,
            threads,
            http_threads: a.http_threads,
            limits,
        },
    )?;
    let addr = server.addr();
    eprintln!(
        "listening on http://{addr} (playground: http://{addr}/, API: POST http://{addr}/v1/completions); Ctrl-C stops"
    );

    // The first SIGINT/SIGTERM stops gracefully, a second exits at once.
    let signals = Arc::new(AtomicUsize::new(0));
    let stopper = server.stopper();
    let grace = limits.shutdown_grace.as_secs_f64();
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) >= 1 {
            std::process::exit(130);
        }
        // Refuse new requests first, so the message below is already true when it appears.
        stopper.stop();
        eprintln!(
            "stopping: no new requests; running texts get {grace} s to finish (again to exit now)"
        );
    })?;
    server.join()?;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_arguments() {
        assert_eq!(
            parse_checkpoint("big=runs/a-best.safetensors"),
            (Some("big".into()), PathBuf::from("runs/a-best.safetensors"))
        );
        assert_eq!(
            parse_checkpoint("runs/x=y.safetensors"),
            (None, PathBuf::from("runs/x=y.safetensors"))
        );
        assert_eq!(
            parse_checkpoint("a.safetensors"),
            (None, PathBuf::from("a.safetensors"))
        );
    }
}
