//! The playground in a real browser: headless Chromium, driven over the DevTools protocol,
//! loads the page from a test server, picks a model, enters a prompt and settings, starts a
//! generation and reads the streamed, coloured text back from the page; then stops a long
//! generation with the Stop button and checks that the server freed the row.
//!
//! Needs `chromium` (`.ci/run` installs it). Without one the test fails, unless
//! `QUILL_SKIP_BROWSER_TEST=1` is set, when it says so and passes.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quill::serve::{self, Limits, ServeConfig, ServedModel};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const BROWSERS: &[&str] = &["chromium", "chromium-browser", "google-chrome"];

fn find_browser() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QUILL_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    BROWSERS.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Chromium, killed when dropped.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol connection: commands with ids, events kept until asked for.
struct Cdp {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: VecDeque<Value>,
}

impl Cdp {
    fn read(&mut self) -> Value {
        loop {
            match self.ws.read().expect("DevTools connection") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(_) => panic!("DevTools connection closed"),
                _ => {}
            }
        }
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.read();
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            if m.get("method").is_some() {
                self.events.push_back(m);
            }
        }
    }

    fn wait_event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i).unwrap();
        }
        loop {
            let m = self.read();
            if m["method"] == method {
                return m;
            }
            if m.get("method").is_some() {
                self.events.push_back(m);
            }
        }
    }

    /// Evaluates an async expression in the page and returns its value.
    fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "page script failed: {r}"
        );
        r["result"]["value"].clone()
    }
}

fn launch(browser: &PathBuf) -> (Browser, Cdp) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1100,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let browser = Browser {
        child,
        _profile: profile,
    };
    // Chromium says where its DevTools endpoint is on stderr.
    let mut line = String::new();
    let ws_url = loop {
        line.clear();
        let n = err.read_line(&mut line).unwrap();
        assert!(n > 0, "chromium exited before opening DevTools");
        if let Some(i) = line.find("ws://") {
            break line[i..].trim().to_string();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let (ws, _) = tungstenite::connect(ws_url.as_str()).expect("DevTools websocket");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        // A safety net so that a broken page fails the test instead of hanging it.
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    }
    (
        browser,
        Cdp {
            ws,
            next_id: 0,
            events: VecDeque::new(),
        },
    )
}

/// Fills the form like a user, clicks Generate, waits for the page's end-of-generation
/// event and reports what the page shows.
const RUN: &str = r##"(async () => {
  await window.quillReady;
  const set = (id, v) => {
    const e = document.getElementById(id);
    e.value = v;
    e.dispatchEvent(new Event("input", { bubbles: true }));
    e.dispatchEvent(new Event("change", { bubbles: true }));
  };
  const models = [...document.querySelectorAll("#model option")].map((o) => o.value);
  set("model", "second");
  set("prompt", "ROMEO:");
  set("temperature", "0.8");
  set("top-k", "30");
  set("top-p", "0.95");
  set("max-tokens", "150");
  set("seed", "7");
  const done = new Promise((r) =>
    document.addEventListener("quill:done", (e) => r(e.detail), { once: true }));
  document.getElementById("generate").click();
  const d = await done;
  const spans = [...document.querySelectorAll("#output-text span")];
  return {
    models,
    info: document.getElementById("model-info").textContent,
    state: document.getElementById("output").dataset.state,
    detail: d,
    prompt: document.getElementById("output-prompt").textContent,
    text: document.getElementById("output-text").textContent,
    spans: spans.length,
    classes: [...new Set(spans.map((s) => s.className))].sort(),
    colours: [...new Set(spans.map((s) => getComputedStyle(s).color))].length,
    legend: document.querySelectorAll("#legend span").length,
    status: document.getElementById("status").textContent,
  };
})()"##;

/// Starts a long generation, clicks Stop once text has arrived.
const STOP: &str = r##"(async () => {
  const set = (id, v) => { document.getElementById(id).value = v; };
  set("prompt", "");
  set("max-tokens", "100000");
  set("seed", "");
  const out = document.getElementById("output-text");
  const seen = new Promise((r) => {
    const o = new MutationObserver(() => { if (out.childNodes.length > 0) { o.disconnect(); r(); } });
    o.observe(out, { childList: true });
  });
  const done = new Promise((r) =>
    document.addEventListener("quill:done", (e) => r(e.detail), { once: true }));
  document.getElementById("generate").click();
  await seen;
  document.getElementById("stop-button").click();
  const d = await done;
  return { state: d.state, status: document.getElementById("status").textContent };
})()"##;

#[test]
fn the_playground_streams_coloured_text_in_a_real_browser() {
    let Some(browser) = find_browser() else {
        if std::env::var("QUILL_SKIP_BROWSER_TEST").as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED: no chromium found (tried {BROWSERS:?} and $QUILL_CHROMIUM) and \
                 QUILL_SKIP_BROWSER_TEST=1"
            );
            return;
        }
        panic!(
            "no chromium found (tried {BROWSERS:?} and $QUILL_CHROMIUM): install it \
             (apt-get install chromium) or set QUILL_SKIP_BROWSER_TEST=1 to skip this test"
        );
    };
    let checkpoint =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("checkpoints/shakespeare-small.safetensors");
    let models = ["shakespeare-small", "second"]
        .iter()
        .map(|n| ServedModel {
            name: n.to_string(),
            loaded: quill::checkpoint::load_model(&checkpoint).unwrap(),
        })
        .collect();
    let server = serve::start(
        models,
        ServeConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            threads: 2,
            http_threads: 2,
            limits: Limits {
                max_tokens: 100_000,
                ..Limits::default()
            },
        },
    )
    .unwrap();
    let base = format!("http://{}", server.addr());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str| -> Value {
        rt.block_on(async {
            let r = client.get(format!("{base}{path}")).send().await.unwrap();
            r.json().await.unwrap()
        })
    };

    // What the API gives for the same request.
    let body = json!({
        "model": "second", "prompt": "ROMEO:", "temperature": 0.8, "top_k": 30,
        "top_p": 0.95, "max_tokens": 150, "seed": 7
    });
    let want: Value = rt.block_on(async {
        let r = client
            .post(format!("{base}/v1/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    });
    let want = want["choices"][0]["text"].as_str().unwrap().to_string();

    let (_browser, mut cdp) = launch(&browser);
    let target = cdp.call(None, "Target.createTarget", json!({"url": "about:blank"}));
    let attached = cdp.call(
        None,
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    let session = attached["sessionId"].as_str().unwrap().to_string();
    cdp.call(Some(&session), "Page.enable", json!({}));
    cdp.call(
        Some(&session),
        "Page.navigate",
        json!({"url": format!("{base}/")}),
    );
    cdp.wait_event("Page.loadEventFired");

    let got = cdp.eval(&session, RUN);
    assert_eq!(
        got["models"],
        json!(["shakespeare-small", "second"]),
        "{got}"
    );
    assert!(got["info"].as_str().unwrap().contains("char"), "{got}");
    assert_eq!(got["state"], "done", "{got}");
    assert_eq!(got["prompt"], "ROMEO:");
    assert_eq!(
        got["text"].as_str().unwrap(),
        want,
        "the page shows the API's text"
    );
    assert_eq!(got["detail"]["finish_reason"], "length");
    assert!(got["spans"].as_u64().unwrap() >= 100, "{got}");
    let classes: Vec<&str> = got["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        classes.len() >= 2
            && classes
                .iter()
                .all(|c| ["p0", "p1", "p2", "p3", "p4"].contains(c)),
        "pieces coloured by probability band: {classes:?}"
    );
    assert!(got["colours"].as_u64().unwrap() >= 2, "{got}");
    assert_eq!(got["legend"], 5);
    assert!(
        got["status"].as_str().unwrap().contains("150 tokens"),
        "{got}"
    );
    // Stop: the page ends the request, and the server frees the row.
    let stopped = cdp.eval(&session, STOP);
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    // The server learns of the closed connection at its next step; its metrics then count
    // one text ended by a disconnect (checked by waiting for the engine to be empty).
    let mut polls = 0;
    loop {
        let h = get("/health");
        if h["models"][1]["active_streams"] == 0 {
            break;
        }
        polls += 1;
        assert!(
            polls < 100_000,
            "the stopped text never left the engine: {h}"
        );
    }
    let _ = cdp.call(None, "Browser.close", json!({}));
    server.stopper().stop();
    server.join().unwrap();
}
