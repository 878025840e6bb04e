//! Serving benchmark: `quill serve` under 1, 16, 64 and 256 concurrent streaming clients on
//! loopback, side by side with `quill sample --count 64` (the same engine without HTTP) on
//! the same model and length.
//!
//! ```sh
//! cargo bench --bench serve -- CHECKPOINT [--tokens 500] [--clients 1,16,64,256] [--rounds 3]
//!                                         [--openai-python /tmp/serve-venv/bin/python]
//! ```
//!
//! Per level of concurrency every client sends streaming requests one after another (no
//! prompt, temperature 0.8, `max_tokens` = `--tokens`, a seed per request) until the level's
//! requests are done: 2 per client, at least 4, 1 per client at 256. Measured at the client:
//! aggregate tokens/s (usage.completion_tokens over the level's wall time), requests/s, time
//! to first token (request sent to first text event), inter-token latency (between text
//! events of one request), errors; and the server's peak RSS (VmHWM) after the level.
//! The 64-client level and the `quill sample --count 64` reference alternate `--rounds`
//! times; medians are reported with their ratio. Everything is bounded: the request counts
//! above and `--deadline` seconds per level.
//!
//! With `--openai-python PY` the script `scripts/serve_openai_demo.py` then runs against the
//! same server with the official `openai` client (install it in a venv outside the repo).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

#[path = "../tests/common/mod.rs"]
mod common;
use common::Events;

#[derive(Debug, Parser)]
struct Args {
    /// Checkpoint to serve (the README's figures: a 2 × 512 char model).
    checkpoint: PathBuf,
    /// Tokens per request (and per `quill sample` text).
    #[arg(long, default_value_t = 500)]
    tokens: usize,
    /// Levels of concurrency.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Alternating rounds of the 64-client level and the `quill sample --count 64` reference.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Longest a level may run, seconds.
    #[arg(long, default_value_t = 180)]
    deadline: u64,
    /// Python with the `openai` package: also run scripts/serve_openai_demo.py.
    #[arg(long)]
    openai_python: Option<PathBuf>,
    /// (cargo bench passes --bench; ignored)
    #[arg(long, hide = true)]
    bench: bool,
}

/// The server process, stopped (SIGTERM) when dropped.
struct ServerProc {
    child: Child,
    base: String,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn start_server(quill: &str, checkpoint: &PathBuf, tokens: usize) -> ServerProc {
    let mut child = Command::new(quill)
        .arg("serve")
        .arg(checkpoint)
        .args(["--addr", "127.0.0.1:0", "--max-streams", "256"])
        .args(["--max-queue", "4096", "--shutdown-grace", "0"])
        .args(["--max-tokens", &tokens.max(4096).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start quill serve");
    let mut err = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        if err.read_line(&mut line).expect("read quill serve") == 0 {
            panic!("quill serve ended before listening");
        }
        eprint!("  server: {line}");
        if let Some(rest) = line.strip_prefix("listening on http://") {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    ServerProc {
        child,
        base: format!("http://{addr}"),
    }
}

/// The server's peak resident memory so far, MB.
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[derive(Debug, Default)]
struct Level {
    clients: usize,
    requests: usize,
    errors: usize,
    tokens: usize,
    secs: f64,
    ttft: Vec<f64>,
    itl: Vec<f64>,
    rss_mb: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

impl Level {
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.secs
    }

    fn row(&mut self) -> String {
        self.ttft.sort_by(f64::total_cmp);
        self.itl.sort_by(f64::total_cmp);
        format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            self.clients,
            self.requests,
            self.errors,
            self.tokens_per_s(),
            self.requests as f64 / self.secs,
            pct(&self.ttft, 0.5) * 1e3,
            pct(&self.ttft, 0.99) * 1e3,
            pct(&self.itl, 0.5) * 1e3,
            pct(&self.itl, 0.99) * 1e3,
            self.rss_mb,
        )
    }
}

/// One streaming request; its tokens, time to first text, gaps between texts.
async fn one(
    client: &reqwest::Client,
    url: &str,
    tokens: usize,
    seed: usize,
) -> Result<(usize, f64, Vec<f64>), String> {
    let body = json!({
        "prompt": "", "max_tokens": tokens, "temperature": 0.8, "seed": seed, "stream": true
    });
    let sent = Instant::now();
    let resp = client
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let mut events = Events::open(resp).await?;
    let mut last: Option<Instant> = None;
    let mut ttft = f64::NAN;
    let mut gaps = Vec::with_capacity(tokens);
    let mut used = None;
    while let Some(e) = events.try_next().await? {
        if let Some(err) = e.get("error") {
            return Err(err.to_string());
        }
        if let Some(u) = e["usage"]["completion_tokens"].as_u64() {
            used = Some(u as usize);
        }
        let has_text = e["choices"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["text"].as_str().is_some_and(|t| !t.is_empty()))
        });
        if has_text {
            let now = Instant::now();
            match last {
                None => ttft = now.duration_since(sent).as_secs_f64(),
                Some(t) => gaps.push(now.duration_since(t).as_secs_f64()),
            }
            last = Some(now);
        }
    }
    let used = used.ok_or("no usage in the last chunk")?;
    Ok((used, ttft, gaps))
}

async fn level(
    base: &str,
    clients: usize,
    tokens: usize,
    deadline: Duration,
    seed0: usize,
) -> Level {
    let requests = if clients >= 256 {
        clients
    } else {
        (2 * clients).max(4)
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("http client");
    let url = format!("{base}/v1/completions");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let runs = (0..clients).map(|_| {
        let client = client.clone();
        let url = url.clone();
        let next = Arc::clone(&next);
        async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= requests || started.elapsed() > deadline {
                    return out;
                }
                out.push(one(&client, &url, tokens, seed0 + i).await);
            }
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let mut lv = Level {
        clients,
        secs: started.elapsed().as_secs_f64(),
        ..Level::default()
    };
    for r in results.into_iter().flatten() {
        match r {
            Ok((t, ttft, gaps)) => {
                lv.requests += 1;
                lv.tokens += t;
                lv.ttft.push(ttft);
                lv.itl.extend(gaps);
            }
            Err(e) => {
                if lv.errors == 0 {
                    eprintln!("  first error at {clients} clients: {e}");
                }
                lv.errors += 1;
            }
        }
    }
    lv
}

/// `quill sample --count 64` with the same model and length: its own tokens/s figure.
fn reference(quill: &str, checkpoint: &PathBuf, tokens: usize, out: &std::path::Path) -> f64 {
    let o = Command::new(quill)
        .args(["sample", "--count", "64", "--length", &tokens.to_string()])
        .arg("--checkpoint")
        .arg(checkpoint)
        .arg("--out")
        .arg(out)
        .args(["--format", "jsonl", "--force"])
        .output()
        .expect("run quill sample");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "quill sample failed: {err}");
    // "... in 2.5 s: 12800 tokens/s"
    let line = err
        .lines()
        .find(|l| l.contains("tokens/s"))
        .expect("summary");
    let fig = line
        .rsplit(": ")
        .next()
        .and_then(|t| t.trim_end_matches(" tokens/s").parse::<f64>().ok())
        .expect("tokens/s figure");
    eprintln!("  quill sample --count 64: {line}");
    fig
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = Args::parse();
    let quill = env!("CARGO_BIN_EXE_quill");
    let tmp = std::env::temp_dir().join(format!("quill-serve-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let ref_out = tmp.join("ref.jsonl");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let deadline = Duration::from_secs(a.deadline);

    eprintln!("starting quill serve {}", a.checkpoint.display());
    let server = start_server(quill, &a.checkpoint, a.tokens);
    let pid = server.child.id();
    // Warm-up: one short request.
    rt.block_on(level(&server.base, 1, 20, deadline, 1_000_000));

    let header = "| clients | requests | errors | tokens/s | requests/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|";
    let mut rows = Vec::new();
    let mut seed = 0;
    for &c in &a.clients {
        if c == 64 {
            continue;
        }
        eprintln!("{c} clients ...");
        let mut lv = rt.block_on(level(&server.base, c, a.tokens, deadline, seed));
        seed += lv.requests + lv.errors;
        lv.rss_mb = peak_rss_mb(pid);
        rows.push((c, lv.row()));
    }
    let mut served = Vec::new();
    let mut sampled = Vec::new();
    if a.clients.contains(&64) {
        let mut best_row = None;
        for round in 0..a.rounds.max(1) {
            eprintln!(
                "round {}: quill sample --count 64, then 64 clients ...",
                round + 1
            );
            sampled.push(reference(quill, &a.checkpoint, a.tokens, &ref_out));
            let mut lv = rt.block_on(level(&server.base, 64, a.tokens, deadline, seed));
            seed += lv.requests + lv.errors;
            lv.rss_mb = peak_rss_mb(pid);
            eprintln!("  64 clients: {:.0} tokens/s", lv.tokens_per_s());
            served.push(lv.tokens_per_s());
            best_row = Some(lv.row());
        }
        rows.push((64, best_row.expect("a round ran")));
    }
    rows.sort_by_key(|r| r.0);

    println!(
        "\nquill serve, {} tokens per request, streaming clients on 127.0.0.1:\n",
        a.tokens
    );
    println!("{header}");
    for (_, r) in &rows {
        println!("{r}");
    }
    if !served.is_empty() {
        let (s, q) = (median(served.clone()), median(sampled.clone()));
        println!(
            "\n64 clients vs quill sample --count 64 --length {} ({} alternating rounds, medians): \
             {s:.0} vs {q:.0} tokens/s = {:.0}% (rounds: serve {:?}, sample {:?}; the table's \
             64-client row is the last round)",
            a.tokens,
            served.len(),
            100.0 * s / q,
            served.iter().map(|x| x.round()).collect::<Vec<_>>(),
            sampled.iter().map(|x| x.round()).collect::<Vec<_>>(),
        );
    }

    if let Some(py) = &a.openai_python {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/serve_openai_demo.py");
        println!("\nofficial openai client ({}):\n", py.display());
        let st = Command::new(py)
            .arg(script)
            .args(["--base-url", &format!("{}/v1", server.base)])
            .status()
            .expect("run the openai demo");
        assert!(st.success(), "the openai demo failed");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&tmp);
}
