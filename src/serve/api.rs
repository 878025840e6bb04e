//! The HTTP API in the shape of OpenAI's completions: the request as parsed and checked, the
//! response and stream-chunk bodies, and errors as JSON that name the field at fault.
//!
//! Request fields: `model`, `prompt` (a string, a list of strings, a list of token ids or a
//! list of such lists), `max_tokens`, `temperature`, `top_p`, `seed`, `stop` (a string or a
//! list), `n`, `stream`, `stream_options.include_usage`, `user`, `presence_penalty` and
//! `frequency_penalty` (OpenAI semantics, -2 to 2, over the generated tokens); extensions:
//! `top_k`, `min_p`, `repetition_penalty` and `repetition_window` (over the last tokens of
//! prompt and text), `valid_utf8` (byte-level BPE models never produce U+FFFD), and `unknown`
//! (`"error"` or `"skip"`: what to do with prompt characters a char model has never seen).
//! `echo`, `logprobs`, `best_of`, `logit_bias` and `suffix` are accepted at their defaults
//! only; any other field is an error.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::generate::{SamplingParams, StopReason};
use crate::tokenizer::{Tokenizer, UnknownPolicy};

/// `max_tokens` when a request does not say (OpenAI's default).
pub const DEFAULT_MAX_TOKENS: usize = 16;
/// `temperature` when a request does not say (OpenAI's default).
pub const DEFAULT_TEMPERATURE: f32 = 1.0;
/// Most stop strings per request.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// An error answer: an HTTP status and OpenAI's error object
/// (`{"error": {"message", "type", "param", "code"}}`).
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, naming the field and the value.
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A short machine-readable code (`model_not_found`, `queue_full`, `timeout`, ...).
    pub code: Option<&'static str>,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("{param}: {}", message.into()),
            param: Some(param),
            code: None,
            retry_after: None,
        }
    }

    /// An error with `status` and `code`, about no one field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code: Some(code),
            retry_after: None,
        }
    }

    /// With a `Retry-After` of `secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// OpenAI's `type` for this status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind(),
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// A library error about a request value, as a 400 naming the request's field.
pub fn from_library(e: &Error, default_param: &str) -> ApiError {
    match e {
        Error::InvalidConfig { name, msg } => {
            let param = match *name {
                "prime" => "prompt",
                "top-k" => "top_k",
                "top-p" => "top_p",
                "min-p" => "min_p",
                "repetition-penalty" => "repetition_penalty",
                "repetition-window" => "repetition_window",
                "frequency-penalty" => "frequency_penalty",
                "presence-penalty" => "presence_penalty",
                other => other,
            };
            ApiError::invalid(param, msg.clone())
        }
        other => ApiError::invalid(default_param, other.to_string()),
    }
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    /// Send a last chunk with no choices and the request's usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// What to do with prompt characters the model has never seen.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unknown {
    /// Refuse the request (400 naming the characters).
    #[default]
    Error,
    /// Leave them out.
    Skip,
}

/// The body of `POST /v1/completions`, as sent.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Value>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub repetition_window: Option<u64>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub valid_utf8: Option<bool>,
    pub seed: Option<u64>,
    pub stop: Option<Value>,
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    pub unknown: Option<Unknown>,
    // Accepted at their defaults only.
    pub echo: Option<bool>,
    pub logprobs: Option<Value>,
    pub best_of: Option<u64>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    pub suffix: Option<String>,
}

/// Parses a request body. Malformed JSON and fields of the wrong type or unknown name give a
/// 400 naming the field (its path, e.g. `stream_options.include_usage`).
pub fn parse_request(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(e) => ApiError::invalid("body", format!("not valid JSON: {e}")),
                Ok(_) => ApiError::invalid("body", "must be a JSON object"),
            },
        );
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let req: CompletionRequest = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid("body", format!("not valid JSON: {inner}"));
        }
        let msg = inner.to_string();
        if msg.starts_with("unknown field `") {
            // The path ends with the unknown field itself.
            return ApiError::invalid(path, "unknown field (not supported by this server)");
        }
        if path == "." {
            ApiError::invalid("body", msg)
        } else {
            ApiError::invalid(path, msg)
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid("body", format!("not valid JSON: {e}")))?;
    Ok(req)
}

/// Server-side limits a request is checked against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RequestLimits {
    /// Largest `max_tokens`.
    pub max_tokens: usize,
    /// Most streams (prompts × `n`) in one request.
    pub max_choices: usize,
}

/// A checked request, ready to become streams.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    /// The model's name, if the request gave one.
    pub model: Option<String>,
    /// Each prompt, as token ids.
    pub prompts: Vec<Vec<u32>>,
    /// Prompt pieces left out under `unknown: "skip"` (or words mapped to `<unk>`).
    pub unknown: Vec<String>,
    /// Choices per prompt.
    pub n: usize,
    /// Tokens per choice at most.
    pub max_tokens: usize,
    /// Sampling parameters of every choice.
    pub params: SamplingParams,
    /// The user seed; choice j of a prompt samples with id j + 1.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Send a usage chunk at the end of a stream.
    pub include_usage: bool,
}

/// A prompt as sent, before encoding.
enum PromptIn {
    Text(String),
    Tokens(Vec<u32>),
}

fn token_list(v: &[Value]) -> Option<Vec<u32>> {
    v.iter()
        .map(|x| x.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

const PROMPT_SHAPE: &str =
    "must be a string, a list of strings, a list of token ids or a list of lists of token ids";

fn prompts_of(v: Option<&Value>) -> Result<Vec<PromptIn>, ApiError> {
    let bad = || ApiError::invalid("prompt", PROMPT_SHAPE);
    let v = match v {
        None | Some(Value::Null) => return Ok(vec![PromptIn::Text(String::new())]),
        Some(v) => v,
    };
    match v {
        Value::String(s) => Ok(vec![PromptIn::Text(s.clone())]),
        Value::Array(items) if items.is_empty() => {
            Err(ApiError::invalid("prompt", "an empty list has no prompt"))
        }
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|x| x.as_str().map(|s| PromptIn::Text(s.to_string())))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad),
            Value::Number(_) => Ok(vec![PromptIn::Tokens(token_list(items).ok_or_else(bad)?)]),
            Value::Array(_) => items
                .iter()
                .map(|x| {
                    x.as_array()
                        .and_then(|a| token_list(a))
                        .map(PromptIn::Tokens)
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

fn stops_of(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stops = match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("stop", "must be a string or a list of strings"))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "must be a string or a list of strings",
            ))
        }
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!("{} strings (at most {MAX_STOP_STRINGS})", stops.len()),
        ));
    }
    for s in &stops {
        if s.is_empty() {
            return Err(ApiError::invalid("stop", "a stop string must not be empty"));
        }
        if s.len() > MAX_STOP_BYTES {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "a stop string of {} bytes (at most {MAX_STOP_BYTES})",
                    s.len()
                ),
            ));
        }
    }
    Ok(stops)
}

/// Refuses a field that is set to anything but its default.
fn only_default<T: PartialEq + std::fmt::Debug>(
    name: &str,
    v: &Option<T>,
    ok: impl Fn(&T) -> bool,
) -> Result<(), ApiError> {
    match v {
        Some(x) if !ok(x) => Err(ApiError::invalid(
            name,
            format!("{x:?} is not supported by this server (leave it unset)"),
        )),
        _ => Ok(()),
    }
}

impl CompletionRequest {
    /// Checks every field against `limits` and encodes the prompts with `tok`.
    pub fn check(&self, tok: &Tokenizer, limits: &RequestLimits) -> Result<Checked, ApiError> {
        only_default("echo", &self.echo, |&e| !e)?;
        only_default("logprobs", &self.logprobs, Value::is_null)?;
        only_default("logit_bias", &self.logit_bias, |m| m.is_empty())?;
        only_default("suffix", &self.suffix, String::is_empty)?;

        let max_tokens = match self.max_tokens {
            None => DEFAULT_MAX_TOKENS.min(limits.max_tokens),
            Some(0) => return Err(ApiError::invalid("max_tokens", "must be at least 1")),
            Some(m) if m > limits.max_tokens as u64 => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!(
                        "{m} is above this server's limit of {} (--max-tokens)",
                        limits.max_tokens
                    ),
                ))
            }
            Some(m) => m as usize,
        };
        let n = match self.n {
            None => 1,
            Some(0) => return Err(ApiError::invalid("n", "must be at least 1")),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        only_default("best_of", &self.best_of, |&b| b as usize == n)?;
        let d = SamplingParams::default();
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            top_k: self.top_k.map(|k| usize::try_from(k).unwrap_or(usize::MAX)),
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            repetition_window: self.repetition_window.map_or(d.repetition_window, |w| {
                usize::try_from(w).unwrap_or(usize::MAX)
            }),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            valid_utf8: self.valid_utf8.unwrap_or(d.valid_utf8),
        };
        params.validate().map_err(|e| from_library(&e, "body"))?;
        let stop = stops_of(self.stop.as_ref())?;

        let raw = prompts_of(self.prompt.as_ref())?;
        let choices = raw.len().saturating_mul(n);
        if choices > limits.max_choices {
            let param = if n > 1 { "n" } else { "prompt" };
            return Err(ApiError::invalid(
                param,
                format!(
                    "{} prompt(s) × n = {n} asks for {choices} texts; this server runs at most {} \
                     at once (--max-streams)",
                    raw.len(),
                    limits.max_choices
                ),
            ));
        }
        let policy = match self.unknown.unwrap_or_default() {
            Unknown::Error => UnknownPolicy::Error,
            Unknown::Skip => UnknownPolicy::Skip,
        };
        let v = tok.vocab_size();
        let mut prompts = Vec::with_capacity(raw.len());
        let mut unknown = Vec::new();
        for p in raw {
            match p {
                PromptIn::Text(s) => {
                    let (ids, unk) = tok
                        .encode_prime(&s, policy)
                        .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
                    unknown.extend(unk);
                    prompts.push(ids);
                }
                PromptIn::Tokens(ids) => {
                    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= v) {
                        return Err(ApiError::invalid(
                            "prompt",
                            format!("token id {bad} is outside the model's vocabulary of {v}"),
                        ));
                    }
                    prompts.push(ids);
                }
            }
        }
        unknown.sort();
        unknown.dedup();
        Ok(Checked {
            model: self.model.clone(),
            prompts,
            unknown,
            n,
            max_tokens,
            params,
            seed: self.seed,
            stop,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

/// OpenAI's `finish_reason` for a stop reason: `stop` (a stop string or end-of-text) or
/// `length`.
pub fn finish_reason(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::Length => "length",
        _ => "stop",
    }
}

/// Token counts of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompts (each prompt once, whatever `n`).
    pub prompt_tokens: usize,
    /// Tokens sampled, every choice together (an end-of-text token counts).
    pub completion_tokens: usize,
    /// The sum.
    pub total_tokens: usize,
}

/// One choice of a response or a stream chunk.
#[derive(Clone, Debug, Serialize)]
pub struct Choice<'a> {
    /// The text (a chunk: the piece that became final).
    pub text: &'a str,
    /// Index: prompt × n + choice.
    pub index: usize,
    /// Always null (log-probabilities are not offered).
    pub logprobs: Option<()>,
    /// `stop` or `length` once the choice ended.
    pub finish_reason: Option<&'static str>,
    /// Extension, stream chunks only: the probability the token that ended this piece was
    /// sampled with (after temperature, top-k and top-p), which the playground colours by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prob: Option<f32>,
}

/// A response (`object: "text_completion"`); also each stream chunk, where `usage` is null
/// except on the chunk that ends the request.
#[derive(Clone, Debug, Serialize)]
pub struct Completion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<Choice<'a>>,
    pub usage: Option<Usage>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{TokenizerKind, TokenizerOptions};

    fn tok() -> Tokenizer {
        Tokenizer::train(
            TokenizerKind::Char,
            "the cat sat on the mat.\n",
            &TokenizerOptions::for_kind(TokenizerKind::Char),
        )
        .unwrap()
    }

    const LIMITS: RequestLimits = RequestLimits {
        max_tokens: 100,
        max_choices: 8,
    };

    fn check(body: &str) -> Result<Checked, ApiError> {
        parse_request(body.as_bytes())?.check(&tok(), &LIMITS)
    }

    fn param_of(body: &str) -> String {
        let e = check(body).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
        e.param.unwrap_or_default()
    }

    #[test]
    fn defaults_and_shapes() {
        let c = check("{}").unwrap();
        assert_eq!(c.prompts, vec![Vec::<u32>::new()]);
        assert_eq!(
            (c.n, c.max_tokens, c.stream),
            (1, DEFAULT_MAX_TOKENS, false)
        );
        assert_eq!(c.params.temperature, 1.0);
        let c = check(r#"{"prompt": ["the", "cat"], "n": 2, "stop": "at", "top_k": 3}"#).unwrap();
        assert_eq!(c.prompts.len(), 2);
        assert_eq!(c.stop, vec!["at".to_string()]);
        assert_eq!(c.params.top_k, Some(3));
        let c = check(r#"{"prompt": [[1, 2], [3]], "stop": ["a", "b"]}"#).unwrap();
        assert_eq!(c.prompts, vec![vec![1, 2], vec![3]]);
        let c = check(
            r#"{"prompt": [1, 2, 3], "stream": true, "stream_options": {"include_usage": true}}"#,
        )
        .unwrap();
        assert_eq!(c.prompts, vec![vec![1, 2, 3]]);
        assert!(c.stream && c.include_usage);
        let c = check(r#"{"prompt": "thé", "unknown": "skip", "echo": false, "logprobs": null}"#)
            .unwrap();
        assert_eq!(c.unknown, vec!["é".to_string()]);
        let c = check(
            r#"{"presence_penalty": 0.5, "frequency_penalty": -1.5, "repetition_penalty": 1.2,
                "repetition_window": 16, "min_p": 0.05, "valid_utf8": true}"#,
        )
        .unwrap();
        let p = c.params;
        assert_eq!(
            (
                p.presence_penalty,
                p.frequency_penalty,
                p.repetition_penalty
            ),
            (0.5, -1.5, 1.2)
        );
        assert_eq!(
            (p.repetition_window, p.min_p, p.valid_utf8),
            (16, 0.05, true)
        );
        let d = check("{}").unwrap().params;
        assert_eq!(
            SamplingParams {
                temperature: 0.8,
                ..d
            },
            SamplingParams::default()
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(param_of("{"), "body");
        assert_eq!(param_of("{} x"), "body");
        assert_eq!(param_of("[1]"), "body");
        assert_eq!(param_of(r#"{"temperature": "hot"}"#), "temperature");
        assert_eq!(param_of(r#"{"temperature": -1}"#), "temperature");
        assert_eq!(param_of(r#"{"top_p": 0}"#), "top_p");
        assert_eq!(param_of(r#"{"top_k": 0}"#), "top_k");
        assert_eq!(param_of(r#"{"max_tokens": 0}"#), "max_tokens");
        assert_eq!(param_of(r#"{"max_tokens": 101}"#), "max_tokens");
        assert_eq!(param_of(r#"{"max_tokens": -5}"#), "max_tokens");
        assert_eq!(param_of(r#"{"n": 9}"#), "n");
        assert_eq!(param_of(r#"{"prompt": ["a","b","c"], "n": 3}"#), "n");
        assert_eq!(param_of(r#"{"prompt": 5}"#), "prompt");
        assert_eq!(param_of(r#"{"prompt": []}"#), "prompt");
        assert_eq!(param_of(r#"{"prompt": ["a", 1]}"#), "prompt");
        assert_eq!(param_of(r#"{"prompt": [999]}"#), "prompt");
        assert_eq!(param_of(r#"{"prompt": "thé"}"#), "prompt");
        assert_eq!(param_of(r#"{"stop": ""}"#), "stop");
        assert_eq!(param_of(r#"{"stop": [1]}"#), "stop");
        assert_eq!(param_of(r#"{"seed": "x"}"#), "seed");
        assert_eq!(param_of(r#"{"echo": true}"#), "echo");
        assert_eq!(param_of(r#"{"logprobs": 2}"#), "logprobs");
        assert_eq!(param_of(r#"{"best_of": 3}"#), "best_of");
        assert_eq!(param_of(r#"{"presence_penalty": 2.5}"#), "presence_penalty");
        assert_eq!(
            param_of(r#"{"frequency_penalty": -3}"#),
            "frequency_penalty"
        );
        assert_eq!(
            param_of(r#"{"repetition_penalty": 0}"#),
            "repetition_penalty"
        );
        assert_eq!(param_of(r#"{"repetition_window": 0}"#), "repetition_window");
        assert_eq!(param_of(r#"{"min_p": 1.5}"#), "min_p");
        assert_eq!(param_of(r#"{"valid_utf8": 1}"#), "valid_utf8");
        assert_eq!(param_of(r#"{"frobnicate": 1}"#), "frobnicate");
        assert_eq!(
            param_of(r#"{"stream_options": {"x": 1}}"#),
            "stream_options.x"
        );
        assert_eq!(param_of(r#"{"unknown": "maybe"}"#), "unknown");
        let e = check(r#"{"max_tokens": 101}"#).unwrap_err();
        assert!(e.message.contains("100"), "{}", e.message);
        assert_eq!(e.body()["error"]["param"], "max_tokens");
    }
}
