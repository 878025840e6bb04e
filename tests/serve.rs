//! `quill serve` over real HTTP on 127.0.0.1 (ephemeral ports): the completions API streaming
//! and not, `n`, stop strings, seeds, the same text alone or among a hundred requests, every
//! limit, bad requests, client disconnects, metrics, and SIGTERM/SIGINT on the binary.
//!
//! Servers run in this process (`quill::serve::start`) with the bundled model, except the
//! signal tests, which run the binary. Nothing here waits on the clock: tests wait for
//! responses, events and process exits.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quill::serve::{self, Limits, ServeConfig, ServedModel, Server};
use serde_json::{json, Value};

mod common;
use common::Events;

fn bundled() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("checkpoints/shakespeare-small.safetensors")
}

struct TestServer {
    server: Option<Server>,
    base: String,
}

impl TestServer {
    fn start(limits: Limits) -> Self {
        Self::start_models(limits, &["shakespeare-small"])
    }

    /// One server with the bundled model under each of `names`.
    fn start_models(limits: Limits, names: &[&str]) -> Self {
        let models = names
            .iter()
            .map(|n| ServedModel {
                name: n.to_string(),
                loaded: quill::checkpoint::load_model(&bundled()).unwrap(),
            })
            .collect();
        let server = serve::start(
            models,
            ServeConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                threads: 2,
                http_threads: 2,
                limits,
            },
        )
        .unwrap();
        let base = format!("http://{}", server.addr());
        TestServer {
            server: Some(server),
            base,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stopper().stop();
            let r = s.join();
            if !std::thread::panicking() {
                r.unwrap();
            }
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn post(c: &reqwest::Client, s: &TestServer, body: &Value) -> (u16, Value) {
    let r = c
        .post(s.url("/v1/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn stream(c: &reqwest::Client, s: &TestServer, body: &Value) -> Events {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let resp = c
        .post(s.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    Events::open(resp).await.unwrap()
}

/// Joins streamed pieces per choice index; returns texts and finish reasons.
fn joined(events: &[Value], n: usize) -> (Vec<String>, Vec<Option<String>>) {
    let mut texts = vec![String::new(); n];
    let mut reasons = vec![None; n];
    for e in events {
        for c in e["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            texts[i].push_str(c["text"].as_str().unwrap());
            if let Some(r) = c["finish_reason"].as_str() {
                reasons[i] = Some(r.to_string());
            }
        }
    }
    (texts, reasons)
}

fn texts(v: &Value) -> Vec<String> {
    v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

async fn metrics(c: &reqwest::Client, s: &TestServer) -> String {
    let r = c.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("{line_start} not in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn streaming_and_not_agree_with_each_other_and_with_quill_sample() {
    let s = TestServer::start(Limits::default());
    let c = client();
    rt().block_on(async {
        let body = json!({"prompt": "ROMEO:", "max_tokens": 80, "seed": 3, "temperature": 0.8});
        let (status, v) = post(&c, &s, &body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["model"], "shakespeare-small");
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
        let ch = &v["choices"][0];
        assert_eq!(ch["finish_reason"], "length");
        assert_eq!(ch["index"], 0);
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 6, "completion_tokens": 80, "total_tokens": 86})
        );
        let text = ch["text"].as_str().unwrap().to_string();
        assert_eq!(text.chars().count(), 80, "a char model: one char per token");

        let events = stream(&c, &s, &body).await.all().await;
        assert!(events.len() >= 80, "one event per piece: {}", events.len());
        let (pieces, reasons) = joined(&events, 1);
        assert_eq!(pieces[0], text);
        assert_eq!(reasons[0].as_deref(), Some("length"));
        for e in &events[..events.len() - 1] {
            let p = e["choices"][0]["prob"].as_f64().unwrap();
            assert!(p > 0.0 && p <= 1.0, "{e}");
            assert!(e["usage"].is_null());
        }
        let last = events.last().unwrap();
        assert_eq!(last["usage"]["completion_tokens"], 80);

        // stream_options.include_usage: a last chunk with no choices and the usage.
        let mut with_usage = body.clone();
        with_usage["stream_options"] = json!({"include_usage": true});
        let events = stream(&c, &s, &with_usage).await.all().await;
        let last = events.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 86);

        // The same text as `quill sample` with the same seed and settings.
        let out = Command::new(env!("CARGO_BIN_EXE_quill"))
            .args([
                "sample", "--prime", "ROMEO:", "--length", "80", "--seed", "3",
            ])
            .args(["--temperature", "0.8", "--checkpoint"])
            .arg(bundled())
            .output()
            .unwrap();
        assert!(out.status.success());
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(printed, format!("ROMEO:{text}\n"));
    });
}

#[test]
fn penalties_and_min_p_work_and_agree_with_quill_sample() {
    let s = TestServer::start(Limits::default());
    let c = client();
    rt().block_on(async {
        let base = json!({"prompt": "ROMEO:", "max_tokens": 120, "seed": 5, "temperature": 1.0});
        let (status, plain) = post(&c, &s, &base).await;
        assert_eq!(status, 200, "{plain}");
        let mut body = base.clone();
        body["frequency_penalty"] = json!(1.5);
        body["presence_penalty"] = json!(0.5);
        body["repetition_penalty"] = json!(1.2);
        body["repetition_window"] = json!(16);
        body["min_p"] = json!(0.05);
        let (status, v) = post(&c, &s, &body).await;
        assert_eq!(status, 200, "{v}");
        let text = texts(&v)[0].clone();
        assert_ne!(text, texts(&plain)[0], "the penalties change the text");
        let out = Command::new(env!("CARGO_BIN_EXE_quill"))
            .args([
                "sample", "--prime", "ROMEO:", "--length", "120", "--seed", "5",
            ])
            .args(["--temperature", "1.0", "--frequency-penalty", "1.5"])
            .args(["--presence-penalty", "0.5", "--repetition-penalty", "1.2"])
            .args([
                "--repetition-window",
                "16",
                "--min-p",
                "0.05",
                "--checkpoint",
            ])
            .arg(bundled())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("ROMEO:{text}\n")
        );
        // A strong frequency penalty spreads the text over more distinct characters.
        let distinct = |t: &str| t.chars().collect::<std::collections::HashSet<_>>().len();
        let mut hard = base.clone();
        hard["frequency_penalty"] = json!(2.0);
        hard["presence_penalty"] = json!(2.0);
        hard["n"] = json!(4);
        let (_, h) = post(&c, &s, &hard).await;
        let mut soft = base.clone();
        soft["n"] = json!(4);
        let (_, p) = post(&c, &s, &soft).await;
        let sum = |v: &Value| texts(v).iter().map(|t| distinct(t)).sum::<usize>();
        assert!(sum(&h) > sum(&p), "{} vs {}", sum(&h), sum(&p));
    });
}

#[test]
fn n_choices_prompt_lists_stop_strings_and_seeds() {
    let s = TestServer::start(Limits::default());
    let c = client();
    rt().block_on(async {
        let base = json!({"prompt": "JULIET:", "max_tokens": 40, "seed": 11, "top_k": 20});
        let (_, one) = post(&c, &s, &base).await;
        let mut b = base.clone();
        b["n"] = json!(3);
        let (status, three) = post(&c, &s, &b).await;
        assert_eq!(status, 200, "{three}");
        let t3 = texts(&three);
        assert_eq!(t3.len(), 3);
        // Choice 0 of seed S is the text of n = 1 with seed S; the others differ.
        assert_eq!(t3[0], texts(&one)[0]);
        assert!(t3[0] != t3[1] && t3[1] != t3[2], "{t3:?}");
        assert_eq!(three["usage"]["completion_tokens"], 120);
        assert_eq!(three["usage"]["prompt_tokens"], 7);
        // Streamed, the pieces of each index add up to the same texts.
        let events = stream(&c, &s, &b).await.all().await;
        assert_eq!(joined(&events, 3).0, t3);

        // Same seed, same text; another seed, another text.
        let (_, again) = post(&c, &s, &base).await;
        assert_eq!(texts(&again), texts(&one));
        let mut other = base.clone();
        other["seed"] = json!(12);
        let (_, o) = post(&c, &s, &other).await;
        assert_ne!(texts(&o), texts(&one));

        // Two prompts × n = 2: indexes prompt-major; usage counts each prompt once.
        let (_, two) = post(
            &c,
            &s,
            &json!({"prompt": ["JULIET:", "ROMEO:"], "n": 2, "max_tokens": 40, "seed": 11, "top_k": 20}),
        )
        .await;
        let t = texts(&two);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0..2], t3[0..2]);
        assert_eq!(two["usage"]["prompt_tokens"], 13);
        // A prompt of token ids is the same prompt.
        let tok = quill::checkpoint::load_model(&bundled()).unwrap().tokenizer;
        let mut by_ids = base.clone();
        by_ids["prompt"] = json!(tok.encode("JULIET:").unwrap());
        let (_, v) = post(&c, &s, &by_ids).await;
        assert_eq!(texts(&v), texts(&one));

        // A long prompt (checked off the async workers) is checked all the same.
        let big = format!("{}\u{1F600}", "the ".repeat(20_000));
        let (status, v) = post(&c, &s, &json!({"prompt": big})).await;
        assert_eq!(status, 400);
        assert_eq!(v["error"]["param"], "prompt");

        // Stop strings: the text ends before the first one, finish_reason "stop".
        let long = json!({"prompt": "ROMEO:", "max_tokens": 300, "seed": 4});
        let (_, full) = post(&c, &s, &long).await;
        let full = texts(&full).remove(0);
        let stop = "e";
        let cut = full.find(stop).expect("an 'e' in 300 characters");
        let mut stopped = long.clone();
        stopped["stop"] = json!([stop, "zzz"]);
        let (_, v) = post(&c, &s, &stopped).await;
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["text"], full[..cut]);
        let events = stream(&c, &s, &stopped).await.all().await;
        let (p, r) = joined(&events, 1);
        assert_eq!(p[0], full[..cut]);
        assert_eq!(r[0].as_deref(), Some("stop"));
    });
}

/// A hundred requests at once, each the same text as alone.
#[test]
fn a_request_gives_the_same_text_alone_and_among_a_hundred() {
    let s = TestServer::start(Limits::default());
    let c = client();
    rt().block_on(async {
        let bodies: Vec<Value> = (0..100u64)
            .map(|i| {
                let prompt = ["", "ROMEO:", "First Citizen:\nWe", "O"][i as usize % 4];
                let temperature = [0.5, 0.8, 1.0, 1.3][i as usize % 4];
                let mut b = json!({
                    "prompt": prompt,
                    "max_tokens": 20 + (i % 7) * 5,
                    "seed": i / 3,
                    "temperature": temperature,
                });
                if i % 5 == 0 {
                    b["top_k"] = json!(10);
                }
                if i % 3 == 0 {
                    b["top_p"] = json!(0.9);
                }
                if i % 11 == 0 {
                    b["stop"] = json!("\n");
                }
                b
            })
            .collect();
        // Together: all streaming at once, each read to its end.
        let together = futures_util::future::join_all(bodies.iter().map(|b| {
            let c = c.clone();
            let s = &s;
            async move { joined(&stream(&c, s, b).await.all().await, 1).0.remove(0) }
        }))
        .await;
        let m = metrics(&c, &s).await;
        assert_eq!(
            metric(
                &m,
                "quill_streams_ended_total{model=\"shakespeare-small\",reason=\"length\"}"
            ) + metric(
                &m,
                "quill_streams_ended_total{model=\"shakespeare-small\",reason=\"stop\"}"
            ),
            100.0
        );
        // Alone: one after another.
        for (b, t) in bodies.iter().zip(&together) {
            let (_, v) = post(&c, &s, b).await;
            assert_eq!(&texts(&v)[0], t, "request {b}");
        }
    });
}

#[test]
fn bad_requests_get_a_4xx_naming_the_field() {
    let limits = Limits {
        max_tokens: 500,
        max_body: 4096,
        max_streams: 8,
        ..Limits::default()
    };
    let s = TestServer::start_models(limits, &["a", "b"]);
    let c = client();
    rt().block_on(async {
        let raw = |body: &'static str| {
            let c = c.clone();
            let url = s.url("/v1/completions");
            async move {
                let r = c.post(url).body(body).send().await.unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                (status, v)
            }
        };
        for (body, param) in [
            ("{\"prompt\": \"x\",", "body"),
            ("not json", "body"),
            ("[]", "body"),
            ("{\"max_tokens\": 501}", "max_tokens"),
            ("{\"max_tokens\": 0}", "max_tokens"),
            ("{\"temperature\": \"warm\"}", "temperature"),
            ("{\"temperature\": -0.5}", "temperature"),
            ("{\"top_p\": 1.5}", "top_p"),
            ("{\"top_k\": 0}", "top_k"),
            ("{\"n\": 9}", "n"),
            ("{\"stop\": \"\"}", "stop"),
            ("{\"seed\": -1}", "seed"),
            ("{\"prompt\": {\"a\": 1}}", "prompt"),
            ("{\"prompt\": \"caf\u{e9} \u{1F600}\"}", "prompt"),
            ("{\"prompt\": [70000]}", "prompt"),
            ("{\"stream\": \"yes\"}", "stream"),
            ("{\"echo\": true}", "echo"),
            ("{\"wibble\": 1}", "wibble"),
        ] {
            let (status, v) = raw(body).await;
            assert_eq!(status, 400, "{body}: {v}");
            assert_eq!(v["error"]["param"], param, "{body}: {v}");
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert!(
                v["error"]["message"].as_str().unwrap().starts_with(param),
                "{v}"
            );
        }
        // Unknown model: 404 naming it; both loaded models answer.
        let (status, v) = raw("{\"model\": \"c\"}").await;
        assert_eq!(status, 404);
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("a, b"));
        for m in ["a", "b"] {
            let (status, v) = post(&c, &s, &json!({"model": m, "max_tokens": 3})).await;
            assert_eq!(status, 200);
            assert_eq!(v["model"], m);
        }
        let list: Value = c
            .get(s.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(list["data"][0]["quill"]["tokenizer"], "char");
        let r = c.get(s.url("/v1/models/zz")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
        // Too big a body: 413 naming the body and the limit.
        let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(5000));
        let r = c
            .post(s.url("/v1/completions"))
            .body(big)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 413);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["param"], "body");
        assert!(v["error"]["message"].as_str().unwrap().contains("4096"));
        // Unknown routes and methods.
        let r = c.get(s.url("/v2/nothing")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404);
        let r = c.get(s.url("/v1/completions")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405);
        // The server is still fine and counted all of it.
        let h: Value = c
            .get(s.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(h["status"], "ok");
        let m = metrics(&c, &s).await;
        assert!(
            metric(
                &m,
                "quill_http_requests_total{path=\"/v1/completions\",status=\"400\"}"
            ) >= 18.0
        );
        assert_eq!(
            metric(
                &m,
                "quill_http_requests_total{path=\"/v1/completions\",status=\"413\"}"
            ),
            1.0
        );
    });
}

/// Random bodies built from awkward values: every answer is a 200 or a 4xx with an error
/// object, never a 5xx, and the server stays healthy.
#[test]
fn random_bodies_never_get_a_server_error() {
    use rand::{Rng, SeedableRng};
    let s = TestServer::start(Limits {
        max_tokens: 3,
        max_streams: 8,
        ..Limits::default()
    });
    let c = client();
    let fields = [
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "n",
        "stream",
        "stream_options",
        "user",
        "unknown",
        "echo",
        "logprobs",
        "best_of",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "repetition_window",
        "min_p",
        "valid_utf8",
        "logit_bias",
        "suffix",
        "bogus",
    ];
    let values = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(1),
        json!(3),
        json!(0.5),
        json!(1.5),
        json!(1e300),
        json!(4294967296u64),
        json!(""),
        json!("a"),
        json!("shakespeare-small"),
        json!("skip"),
        json!([]),
        json!([1]),
        json!([[1], [2]]),
        json!(["a", ""]),
        json!({}),
        json!({"include_usage": true}),
        json!("\u{0}\u{1F600}"),
    ];
    let mut rng = rand_pcg::Pcg64::seed_from_u64(17);
    rt().block_on(async {
        for _ in 0..300 {
            let mut body = serde_json::Map::new();
            for _ in 0..rng.random_range(0..6) {
                let f = fields[rng.random_range(0..fields.len())];
                body.insert(f.into(), values[rng.random_range(0..values.len())].clone());
            }
            let r = c
                .post(s.url("/v1/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            if ct.starts_with("text/event-stream") {
                assert_eq!(status, 200);
                Events::open(r).await.unwrap().all().await;
                continue;
            }
            let v: Value = r.json().await.unwrap();
            match status {
                200 => assert_eq!(v["object"], "text_completion", "{v}"),
                400..=499 => assert!(v["error"]["message"].is_string(), "{v}"),
                _ => panic!("{status} for {}: {v}", Value::Object(body)),
            }
        }
        let h = c.get(s.url("/health")).send().await.unwrap();
        assert_eq!(h.status().as_u16(), 200);
    });
}

/// One row and one queue place: a second request waits, a third is refused with 429 and
/// Retry-After; a client that goes away mid-stream frees the row for the waiting one.
#[test]
fn streams_queue_and_back_pressure_and_disconnects() {
    let limits = Limits {
        max_streams: 1,
        max_queue: 1,
        max_tokens: 100_000,
        ..Limits::default()
    };
    let s = TestServer::start(limits);
    let c = client();
    rt().block_on(async {
        // A: a long text holding the only row; its first event means it runs.
        let mut a = stream(&c, &s, &json!({"max_tokens": 100_000, "seed": 1})).await;
        assert!(a.next().await.is_some());
        // B: queued (streaming answers start at once, so its headers mean it is queued).
        let b = stream(&c, &s, &json!({"max_tokens": 30, "seed": 2})).await;
        let m = metrics(&c, &s).await;
        assert_eq!(
            metric(&m, "quill_active_streams{model=\"shakespeare-small\"}"),
            1.0
        );
        assert_eq!(
            metric(&m, "quill_queued_requests{model=\"shakespeare-small\"}"),
            1.0
        );
        let h: Value = c
            .get(s.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(h["models"][0]["queued_requests"], 1);
        // C: no room in the queue.
        let r = c
            .post(s.url("/v1/completions"))
            .json(&json!({"max_tokens": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "queue_full");
        // A's client goes away: B gets the row and runs to its end.
        drop(a);
        let events = b.all().await;
        let (t, r) = joined(&events, 1);
        assert_eq!(r[0].as_deref(), Some("length"));
        assert_eq!(t[0].chars().count(), 30);
        let m = metrics(&c, &s).await;
        assert_eq!(
            metric(
                &m,
                "quill_streams_ended_total{model=\"shakespeare-small\",reason=\"disconnect\"}"
            ),
            1.0
        );
        // A non-streaming client that goes away frees its row too. D would run for seconds;
        // once it holds the row it is aborted (its connection closed), and E, queued behind
        // it, runs.
        let d = tokio::spawn({
            let c = c.clone();
            let url = s.url("/v1/completions");
            async move {
                c.post(url)
                    .json(&json!({"max_tokens": 100_000}))
                    .send()
                    .await
            }
        });
        let mut polls = 0;
        loop {
            let h: Value = c
                .get(s.url("/health"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if h["models"][0]["active_streams"] == 1 {
                break;
            }
            polls += 1;
            assert!(polls < 100_000, "D never started");
        }
        let e = stream(&c, &s, &json!({"max_tokens": 10, "seed": 3})).await;
        d.abort();
        let (t, _) = joined(&e.all().await, 1);
        assert_eq!(t[0].chars().count(), 10);
        let m = metrics(&c, &s).await;
        assert_eq!(
            metric(
                &m,
                "quill_streams_ended_total{model=\"shakespeare-small\",reason=\"disconnect\"}"
            ),
            2.0
        );
    });
}

#[test]
fn timeouts_end_requests_with_an_error() {
    let limits = Limits {
        timeout: Duration::from_millis(1),
        max_tokens: 100_000,
        ..Limits::default()
    };
    let s = TestServer::start(limits);
    let c = client();
    rt().block_on(async {
        // 100,000 tokens cannot be generated in a millisecond.
        let body = json!({"max_tokens": 100_000});
        let (status, v) = post(&c, &s, &body).await;
        assert_eq!(status, 504, "{v}");
        assert_eq!(v["error"]["code"], "timeout");
        let mut events = stream(&c, &s, &body).await;
        let mut last = None;
        while let Some(e) = events.next().await {
            last = Some(e);
        }
        let last = last.unwrap();
        assert_eq!(last["error"]["code"], "timeout", "{last}");
        // The stream's last event can reach the client before the server has counted the
        // stream as ended: wait for the count, not for the clock.
        let key = "quill_streams_ended_total{model=\"shakespeare-small\",reason=\"timeout\"}";
        let mut polls = 0;
        while metric(&metrics(&c, &s).await, key) < 2.0 {
            polls += 1;
            assert!(polls < 100_000, "the second timeout was never counted");
        }
        assert_eq!(metric(&metrics(&c, &s).await, key), 2.0);
    });
}

#[test]
fn metrics_health_and_the_playground_are_served() {
    let s = TestServer::start(Limits::default());
    let c = client();
    rt().block_on(async {
        let (status, _) = post(&c, &s, &json!({"max_tokens": 12, "n": 2})).await;
        assert_eq!(status, 200);
        let m = metrics(&c, &s).await;
        assert_eq!(
            metric(
                &m,
                "quill_tokens_generated_total{model=\"shakespeare-small\"}"
            ),
            24.0
        );
        assert_eq!(
            metric(
                &m,
                "quill_time_to_first_token_seconds_count{model=\"shakespeare-small\"}"
            ),
            1.0
        );
        assert_eq!(
            metric(
                &m,
                "quill_inter_token_latency_seconds_count{model=\"shakespeare-small\"}"
            ),
            22.0
        );
        assert_eq!(
            metric(
                &m,
                "quill_http_requests_total{path=\"/v1/completions\",status=\"200\"}"
            ),
            1.0
        );
        assert!(m.contains("# TYPE quill_inter_token_latency_seconds histogram"));
        let page = c.get(s.url("/")).send().await.unwrap();
        assert!(page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let html = page.text().await.unwrap();
        for id in [
            "prompt",
            "temperature",
            "top-k",
            "top-p",
            "model",
            "generate",
            "output",
        ] {
            assert!(html.contains(&format!("id=\"{id}\"")), "#{id}");
        }
        let js = c
            .get(s.url("/playground.js"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!js.contains("__QUILL_CONFIG__"));
        assert!(
            js.contains("\"bands\":[0.8,0.5,0.25,0.1]"),
            "the TUI's bands"
        );
        let css = c.get(s.url("/playground.css")).send().await.unwrap();
        assert_eq!(css.status().as_u16(), 200);
    });
}

/// The binary with `args`; its address (read from its first lines) and the rest of its
/// stderr, line by line.
fn spawn_binary(args: &[&str]) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quill"))
        .arg("serve")
        .arg(bundled())
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "quill serve ended");
        if let Some(rest) = line.strip_prefix("listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep reading stderr so the server never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in err.lines() {
            let Ok(l) = l else { return };
            let _ = tx.send(l);
        }
    });
    (child, format!("http://{addr}"), rx)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// SIGTERM with grace: no new requests are taken, the running text finishes normally, then
/// the process exits 0 and no longer accepts connections. SIGINT without grace: a running
/// text ends at the next step with an error event and `[DONE]`.
#[test]
fn signals_stop_accepting_and_end_streams_cleanly() {
    let rt = rt();
    for (sig, grace) in [("-TERM", "60"), ("-INT", "0")] {
        let c = client();
        let (mut child, base, stderr) =
            spawn_binary(&["--shutdown-grace", grace, "--max-tokens", "100000"]);
        let s = TestServer {
            server: None,
            base: base.clone(),
        };
        let max_tokens = if grace == "0" { 100_000 } else { 5_000 };
        rt.block_on(async {
            let mut events = stream(&c, &s, &json!({"max_tokens": max_tokens, "seed": 9})).await;
            assert!(events.next().await.is_some());
            signal(&child, sig);
            let said = stderr.recv().unwrap();
            assert!(said.starts_with("stopping"), "{said}");
            // A new request is refused: no connection, or a 503 on a connection accepted just
            // before the listener closed.
            let late = client()
                .post(s.url("/v1/completions"))
                .json(&json!({"max_tokens": 5}))
                .send()
                .await;
            if let Ok(r) = late {
                assert_eq!(r.status().as_u16(), 503, "a request during shutdown");
                assert!(r.headers().contains_key("retry-after"));
            }
            let mut last = None;
            while let Some(e) = events.next().await {
                last = Some(e);
            }
            let last = last.unwrap();
            if grace == "0" {
                assert_eq!(last["error"]["code"], "shutting_down", "{last}");
            } else {
                assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");
                assert_eq!(last["usage"]["completion_tokens"], 5_000);
            }
        });
        let status = child.wait().unwrap();
        assert!(status.success(), "{sig}: {status:?}");
        let refused = rt.block_on(client().get(format!("{base}/health")).send());
        assert!(refused.is_err(), "still accepting after {sig}");
    }
}
