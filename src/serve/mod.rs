//! `quill serve`: loaded models over HTTP for other programs, with continuous batching.
//!
//! - [`api`]: the OpenAI-shaped completions API (request checking, response bodies, errors).
//! - [`worker`]: one engine thread per model; every active request of a model advances in
//!   one batched step, requests join at the next step and leave when they end or their client
//!   goes away.
//! - [`metrics`]: Prometheus metrics.
//! - the playground page at `/` (HTML, CSS and JS in `src/serve/playground/`, bundled into
//!   the binary).
//!
//! Routes: `POST /v1/completions`, `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`,
//! `GET /metrics`, `GET /` (playground). Every error is JSON in OpenAI's shape and names the
//! field at fault; nothing a client sends can panic the server.
//!
//! [`start`] binds the address, starts the engine threads and serves on a tokio runtime of
//! its own thread; [`Server::stopper`] stops it: no new connections or requests, queued
//! requests fail (503), running texts get [`Limits::shutdown_grace`] to finish (then they end
//! with a 503 error event), and [`Server::join`] returns once every connection is closed.

pub mod api;
pub mod metrics;
pub mod worker;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::watch;

use crate::checkpoint::LoadedModel;
use crate::error::{Error, Result};
use crate::generate::{Stream, StreamOutput, StreamSpec};
use crate::tokenizer::Tokenizer;

use api::{ApiError, Choice, Completion, RequestLimits, Usage};
use metrics::Metrics;
use worker::{Event, Job, Worker, WorkerConfig};

/// The server's limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Most texts generated at once per model (rows of its batch); a request of more waits.
    pub max_streams: usize,
    /// Most requests waiting per model; beyond, 429 with `Retry-After`.
    pub max_queue: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// Largest request body, bytes; beyond, 413.
    pub max_body: usize,
    /// A request not finished this long after it arrived (queue time included) ends with a
    /// 504 (a streaming one with an error event).
    pub timeout: Duration,
    /// On shutdown, how long running texts may go on before they are ended.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    /// 256 streams, 1024 queued requests, 4096 tokens, 1 MiB bodies, 300 s per request, 10 s
    /// of grace.
    fn default() -> Self {
        Limits {
            max_streams: 256,
            max_queue: 1024,
            max_tokens: 4096,
            max_body: 1 << 20,
            timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Settings of a server.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Where to listen (port 0: any free port; [`Server::addr`] says which).
    pub addr: SocketAddr,
    /// Engine threads per model; 0: all cores.
    pub threads: usize,
    /// Threads answering HTTP (tokio workers); 0: 2.
    pub http_threads: usize,
    /// Limits.
    pub limits: Limits,
}

/// A model to serve under a name.
#[derive(Debug)]
pub struct ServedModel {
    /// Its name in the API (`model`).
    pub name: String,
    /// The model.
    pub loaded: LoadedModel,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: Stopper,
    thread: JoinHandle<Result<()>>,
}

/// Stops a [`Server`] (cheap to clone; any thread may call it, also a signal handler).
#[derive(Clone, Debug)]
pub struct Stopper {
    signal: Arc<watch::Sender<bool>>,
    /// The handlers' "refuse new requests" flag, set here before `stop` returns, so a
    /// request that arrives after it gets a 503 (the listener closes a moment later).
    closing: Arc<AtomicBool>,
}

impl Stopper {
    /// Starts the shutdown (see the module docs); repeated calls do nothing more. New
    /// requests are refused from the moment it returns.
    pub fn stop(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.signal.send_replace(true);
    }
}

impl Server {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops it.
    pub fn stopper(&self) -> Stopper {
        self.stop.clone()
    }

    /// Waits until it has stopped (after [`Stopper::stop`]) and every engine thread ended.
    pub fn join(self) -> Result<()> {
        self.thread
            .join()
            .map_err(|_| Error::Serve("the server thread panicked".into()))?
    }
}

/// One model as the HTTP side sees it.
struct Model {
    name: String,
    tokenizer: Tokenizer,
    card: Value,
    worker: Worker,
    metrics: metrics::ModelMetrics,
}

struct AppState {
    models: Vec<Model>,
    limits: Limits,
    metrics: Metrics,
    closing: Arc<AtomicBool>,
    page_js: String,
}

/// Request bodies longer than this are checked (prompts encoded) off the async workers.
const BIG_BODY: usize = 64 << 10;

/// The playground page.
const PAGE_HTML: &str = include_str!("playground/index.html");
const PAGE_CSS: &str = include_str!("playground/playground.css");
const PAGE_JS: &str = include_str!("playground/playground.js");

/// The page's script with the server's settings filled in (the probability bands of the
/// TUI, its sampling limits, the token limit).
fn page_js(limits: &Limits) -> String {
    // f32 to the shortest decimal that reads back as it (0.8, not 0.800000011920929).
    let num = |x: f32| -> f64 { x.to_string().parse().unwrap_or(f64::from(x)) };
    let bands: Vec<f64> = crate::tui::ui::PROB_BANDS.iter().map(|&b| num(b)).collect();
    let cfg = json!({
        "bands": bands,
        "tempMax": num(crate::tui::limits::TEMP_MAX),
        "tempStep": num(crate::tui::limits::TEMP_STEP),
        "topPStep": num(crate::tui::limits::TOP_P_STEP),
        "maxTokens": limits.max_tokens,
    });
    PAGE_JS.replace("__QUILL_CONFIG__", &cfg.to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn card(name: &str, lm: &LoadedModel) -> Value {
    let created = std::fs::metadata(&lm.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let c = &lm.meta.model;
    json!({
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "quill",
        "quill": {
            "file": lm.path.file_name().map(|f| f.to_string_lossy().into_owned()),
            "tokenizer": lm.tokenizer.kind().name(),
            "vocab": c.vocab,
            "layers": c.layers,
            "hidden": c.hidden,
            "embed": c.embed,
            "params": c.num_params(),
        }
    })
}

/// Binds `cfg.addr`, starts one engine thread per model and serves until stopped. Errors:
/// no model, two models of one name, bad limits, or an address that cannot be bound.
pub fn start(models: Vec<ServedModel>, cfg: ServeConfig) -> Result<Server> {
    let l = &cfg.limits;
    if models.is_empty() {
        return Err(Error::config("checkpoint", "no model to serve"));
    }
    for (i, m) in models.iter().enumerate() {
        if m.name.is_empty() {
            return Err(Error::config(
                "checkpoint",
                "a model name must not be empty",
            ));
        }
        if models[..i].iter().any(|o| o.name == m.name) {
            return Err(Error::config(
                "checkpoint",
                format!("two models named '{}' (name them: NAME=PATH)", m.name),
            ));
        }
    }
    if l.max_queue == 0 {
        return Err(Error::config("max-queue", "must be at least 1"));
    }
    if l.max_tokens == 0 {
        return Err(Error::config("max-tokens", "must be at least 1"));
    }
    if l.max_body == 0 {
        return Err(Error::config("max-body", "must be at least 1"));
    }
    if l.timeout.is_zero() {
        return Err(Error::config("timeout", "must be more than 0"));
    }
    let listener = std::net::TcpListener::bind(cfg.addr)
        .map_err(|e| Error::Serve(format!("cannot listen on {}: {e}", cfg.addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Serve(format!("cannot read the bound address: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Serve(format!("cannot set up the listener: {e}")))?;

    let metrics = Metrics::new()?;
    let mut served = Vec::with_capacity(models.len());
    let mut engines = Vec::with_capacity(models.len());
    for m in models {
        let (worker, thread) = Worker::spawn(
            &m.name,
            Arc::new(m.loaded.model.clone()),
            WorkerConfig {
                threads: cfg.threads,
                max_streams: l.max_streams,
                max_queue: l.max_queue,
                timeout: l.timeout,
            },
            metrics.for_model(&m.name),
        )?;
        engines.push(thread);
        served.push(Model {
            card: card(&m.name, &m.loaded),
            metrics: metrics.for_model(&m.name),
            name: m.name,
            tokenizer: m.loaded.tokenizer,
            worker,
        });
    }
    let state = Arc::new(AppState {
        models: served,
        limits: cfg.limits,
        metrics,
        closing: Arc::new(AtomicBool::new(false)),
        page_js: page_js(&cfg.limits),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(match cfg.http_threads {
            0 => 2,
            t => t,
        })
        .thread_name("quill-http")
        .enable_all()
        .build()
        .map_err(|e| Error::Serve(format!("cannot start the async runtime: {e}")))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let closing = Arc::clone(&state.closing);
    let grace = cfg.limits.shutdown_grace;
    let thread = std::thread::Builder::new()
        .name("quill-serve".into())
        .spawn(move || {
            let served = runtime.block_on(serve(listener, state, stop_rx, grace));
            // Tasks still running (connections past the grace) are dropped with the runtime.
            drop(runtime);
            for e in engines {
                e.join()
                    .map_err(|_| Error::Serve("an engine thread panicked".into()))?;
            }
            served
        })
        .map_err(|e| Error::Serve(format!("cannot start the server thread: {e}")))?;
    Ok(Server {
        addr,
        stop: Stopper {
            signal: Arc::new(stop_tx),
            closing,
        },
        thread,
    })
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::Serve(format!("cannot set up the listener: {e}")))?;
    let app = router(Arc::clone(&state));
    let mut stop2 = stop.clone();
    let on_stop = {
        let state = Arc::clone(&state);
        async move {
            let _ = stop2.wait_for(|&s| s).await;
            state.closing.store(true, Ordering::SeqCst);
            let at = Instant::now() + grace;
            for m in &state.models {
                m.worker.shutdown(at);
            }
        }
    };
    drop(state);
    let server = axum::serve(listener, app).with_graceful_shutdown(on_stop);
    // Connections get the grace and a little more to close; then they are dropped.
    let hard_stop = async move {
        let _ = stop.wait_for(|&s| s).await;
        tokio::time::sleep(grace + Duration::from_secs(2)).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| Error::Serve(format!("serving: {e}"))),
        () = hard_stop => Ok(()),
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/playground.css", get(page_css))
        .route("/playground.js", get(page_js_route))
        .route("/health", get(health))
        .route("/metrics", get(metrics_route))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_card))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), count))
        .layer(DefaultBodyLimit::max(state.limits.max_body))
        .with_state(state)
}

/// Counts every answer by route and status.
async fn count(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |m| m.as_str().to_string());
    let r = next.run(req).await;
    st.metrics.http(&path, r.status().as_u16());
    r
}

async fn page() -> Html<&'static str> {
    Html(PAGE_HTML)
}

async fn page_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        PAGE_CSS,
    )
}

async fn page_js_route(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        st.page_js.clone(),
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.closing.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting down"})),
        )
            .into_response();
    }
    let models: Vec<Value> = st
        .models
        .iter()
        .map(|m| {
            json!({
                "id": m.name,
                "active_streams": m.worker.active_streams(),
                "queued_requests": m.worker.queued(),
            })
        })
        .collect();
    Json(json!({"status": "ok", "models": models})).into_response()
}

async fn metrics_route(State(st): State<Arc<AppState>>) -> Response {
    for m in &st.models {
        // The engine threads set these after every step; an idle one is not stepping.
        m.metrics.active.set(m.worker.active_streams() as i64);
        m.metrics.queued.set(m.worker.queued() as i64);
    }
    match st.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string())
            .into_response(),
    }
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<&Value> = st.models.iter().map(|m| &m.card).collect();
    Json(json!({"object": "list", "data": data}))
}

async fn model_card(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.model(Some(&id)) {
        Ok(m) => Json(m.card.clone()).into_response(),
        Err(e) => e.into_response(),
    }
}

impl AppState {
    /// The model `name` (the first loaded when `None`).
    fn model(&self, name: Option<&str>) -> std::result::Result<&Model, ApiError> {
        let Some(name) = name else {
            return Ok(&self.models[0]);
        };
        self.models.iter().find(|m| m.name == name).ok_or_else(|| {
            let loaded: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            ApiError {
                param: Some("model".into()),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    "model_not_found",
                    format!(
                        "model: '{name}' is not loaded here (loaded: {})",
                        loaded.join(", ")
                    ),
                )
            }
        })
    }
}

/// What every chunk or response of one request shares.
struct Meta {
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    choices: usize,
}

impl Meta {
    fn body<'a>(&'a self, choices: Vec<Choice<'a>>, usage: Option<Usage>) -> Completion<'a> {
        Completion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        }
    }

    fn usage(&self, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens + completion_tokens,
        }
    }
}

async fn completions(
    State(st): State<Arc<AppState>>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    match completions_inner(&st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(
    st: &AppState,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Response, ApiError> {
    let arrived = Instant::now();
    if st.closing.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
        .retry_after(1));
    }
    let body = body.map_err(|r| {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "body: larger than this server's limit of {} bytes (--max-body)",
                st.limits.max_body
            )
        } else {
            format!("body: {}", r.body_text())
        };
        ApiError {
            status,
            message,
            param: Some("body".into()),
            code: None,
            retry_after: None,
        }
    })?;
    let req = api::parse_request(&body)?;
    let m = st.model(req.model.as_deref())?;
    let limits = RequestLimits {
        max_tokens: st.limits.max_tokens,
        max_choices: st.limits.max_streams,
    };
    // Encoding a long prompt (up to --max-body) takes a while: off the async workers then.
    let c = if body.len() > BIG_BODY {
        tokio::task::block_in_place(|| req.check(&m.tokenizer, &limits))
    } else {
        req.check(&m.tokenizer, &limits)
    }?;
    let seed = c.seed.unwrap_or_else(rand::random);
    let mut streams = Vec::with_capacity(c.prompts.len() * c.n);
    for p in &c.prompts {
        for j in 0..c.n {
            let spec = StreamSpec {
                prompt: p.clone(),
                params: c.params,
                seed,
                id: j as u64 + 1,
                attempt: 0,
                max_tokens: Some(c.max_tokens),
                stop: c.stop.clone(),
            };
            streams.push(
                Stream::new(&spec, &m.tokenizer).map_err(|e| api::from_library(&e, "prompt"))?,
            );
        }
    }
    let meta = Meta {
        id: format!("cmpl-{:016x}", rand::random::<u64>()),
        created: unix_now(),
        model: m.name.clone(),
        prompt_tokens: c.prompts.iter().map(Vec::len).sum(),
        choices: streams.len(),
    };
    let (tx, rx) = unbounded_channel();
    m.worker.submit(Job {
        streams,
        tx,
        pieces: c.stream,
        arrived,
        deadline: arrived + st.limits.timeout,
    })?;
    if c.stream {
        Ok(sse(rx, meta, c.include_usage))
    } else {
        collect(rx, meta).await
    }
}

/// A non-streaming answer: waits for every choice.
async fn collect(
    mut rx: UnboundedReceiver<Event>,
    meta: Meta,
) -> std::result::Result<Response, ApiError> {
    let mut outs: Vec<Option<StreamOutput>> = vec![None; meta.choices];
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Piece { .. } => {}
            Event::Done { choice, output } => outs[choice] = Some(output),
            Event::Failed(e) => return Err(e),
        }
    }
    let outs: Vec<StreamOutput> = outs.into_iter().collect::<Option<_>>().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "engine_error",
            "the engine ended a request without finishing it",
        )
    })?;
    let tokens = outs.iter().map(|o| o.tokens).sum();
    let choices = outs
        .iter()
        .enumerate()
        .map(|(i, o)| Choice {
            text: &o.text,
            index: i,
            logprobs: None,
            finish_reason: Some(api::finish_reason(&o.stop)),
            prob: None,
        })
        .collect();
    Ok(Json(meta.body(choices, Some(meta.usage(tokens)))).into_response())
}

/// The state of one server-sent-event answer.
struct SseState {
    rx: UnboundedReceiver<Event>,
    meta: Meta,
    include_usage: bool,
    left: usize,
    tokens: usize,
    queued: Vec<String>,
    done: bool,
}

impl SseState {
    fn chunk(&self, choice: Choice<'_>, usage: Option<Usage>) -> String {
        serde_json::to_string(&self.meta.body(vec![choice], usage)).expect("a chunk serialises")
    }

    /// The data lines for one event, in order.
    fn on_event(&mut self, ev: Option<Event>) -> Vec<String> {
        match ev {
            Some(Event::Piece { choice, text, prob }) => vec![self.chunk(
                Choice {
                    text: &text,
                    index: choice,
                    logprobs: None,
                    finish_reason: None,
                    prob,
                },
                None,
            )],
            Some(Event::Done { choice, output }) => {
                self.left -= 1;
                self.tokens += output.tokens;
                let last = self.left == 0;
                let usage = (last && !self.include_usage).then(|| self.meta.usage(self.tokens));
                let mut out = vec![self.chunk(
                    Choice {
                        text: "",
                        index: choice,
                        logprobs: None,
                        finish_reason: Some(api::finish_reason(&output.stop)),
                        prob: None,
                    },
                    usage,
                )];
                if last && self.include_usage {
                    let u = self.meta.usage(self.tokens);
                    out.push(
                        serde_json::to_string(&self.meta.body(Vec::new(), Some(u)))
                            .expect("a chunk serialises"),
                    );
                }
                out
            }
            Some(Event::Failed(e)) => {
                self.done = true;
                vec![e.body().to_string(), "[DONE]".to_string()]
            }
            None => {
                self.done = true;
                if self.left > 0 {
                    let e = ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "engine_error",
                        "the engine ended a request without finishing it",
                    );
                    vec![e.body().to_string(), "[DONE]".to_string()]
                } else {
                    vec!["[DONE]".to_string()]
                }
            }
        }
    }
}

/// A streaming answer: one event per piece of text, one per ended choice, then `[DONE]`.
fn sse(rx: UnboundedReceiver<Event>, meta: Meta, include_usage: bool) -> Response {
    let state = SseState {
        rx,
        left: meta.choices,
        meta,
        include_usage,
        tokens: 0,
        queued: Vec::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.queued.is_empty() {
            if s.done {
                return None;
            }
            let ev = s.rx.recv().await;
            let mut lines = s.on_event(ev);
            lines.reverse();
            s.queued = lines;
        }
        let data = s.queued.pop()?;
        Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
