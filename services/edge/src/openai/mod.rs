//! The OpenAI chat request, validated field by field so every error names its
//! `param`, and the response shapes the official SDKs parse.

use rungate_proto::inference::v1::{ChatMessage, SamplingParams};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ApiError;

pub mod tools;

/// Request fields passed through to engines that can honour them (the local
/// engine refuses them; upstreams receive them as sent).
const PASS_THROUGH: &[&str] = &[
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
];

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

#[derive(Debug)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub sampling: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub extra: Map<String, Value>,
}

fn wrong_type(param: &str, expected: &str) -> ApiError {
    ApiError::invalid(
        Some(param.to_owned()),
        format!("Invalid type for '{param}': expected {expected}."),
    )
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid(
        Some(param.to_owned()),
        format!("Missing required parameter: '{param}'."),
    )
}

fn number_in(
    body: &Map<String, Value>,
    param: &str,
    min: f64,
    max: f64,
) -> Result<Option<f32>, ApiError> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if (min..=max).contains(&v) {
                Ok(Some(v as f32))
            } else {
                Err(ApiError::invalid(
                    Some(param.to_owned()),
                    format!("Invalid '{param}': {v} is not between {min} and {max}."),
                ))
            }
        }
        Some(_) => Err(wrong_type(param, "a number")),
    }
}

fn integer(body: &Map<String, Value>, param: &str) -> Result<Option<i64>, ApiError> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| wrong_type(param, "an integer")),
        Some(_) => Err(wrong_type(param, "an integer")),
    }
}

fn string(body: &Map<String, Value>, param: &str) -> Result<Option<String>, ApiError> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong_type(param, "a string")),
    }
}

fn boolean(body: &Map<String, Value>, param: &str) -> Result<Option<bool>, ApiError> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(wrong_type(param, "a boolean")),
    }
}

impl ChatRequest {
    /// The pass-through fields as engines receive them (empty when none).
    pub fn extra_json(&self) -> String {
        if self.extra.is_empty() {
            return String::new();
        }
        serde_json::to_string(&self.extra).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let body: Map<String, Value> = match serde_json::from_slice(bytes) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(ApiError::invalid(
                    None,
                    "The request body must be a JSON object.",
                ));
            }
            Err(error) => {
                return Err(ApiError::invalid(
                    None,
                    format!(
                        "We could not parse the JSON body of your request: {error}. \
                         (The OpenAI API expects a JSON payload.)"
                    ),
                ));
            }
        };
        let model = string(&body, "model")?.ok_or_else(|| missing("model"))?;
        if model.is_empty() {
            return Err(ApiError::invalid(
                Some("model".into()),
                "'model' must not be empty.",
            ));
        }
        let messages = messages(body.get("messages"))?;

        let stream = boolean(&body, "stream")?.unwrap_or(false);
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(options)) => {
                if !stream {
                    return Err(ApiError::invalid(
                        Some("stream_options".into()),
                        "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                    ));
                }
                boolean(options, "include_usage")
                    .map_err(|_| wrong_type("stream_options.include_usage", "a boolean"))?
                    .unwrap_or(false)
            }
            Some(_) => return Err(wrong_type("stream_options", "an object")),
        };

        let max_tokens = match (
            integer(&body, "max_completion_tokens")?,
            integer(&body, "max_tokens")?,
        ) {
            (Some(n), _) => Some(("max_completion_tokens", n)),
            (None, Some(n)) => Some(("max_tokens", n)),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            Some((param, n)) if !(1..=i64::from(u32::MAX)).contains(&n) => {
                return Err(ApiError::invalid(
                    Some(param.into()),
                    format!(
                        "Invalid '{param}': integer below minimum value. Expected a value >= 1, but got {n} instead."
                    ),
                ));
            }
            Some((_, n)) => Some(n as u32),
            None => None,
        };
        if let Some(n) = integer(&body, "n")?
            && n != 1
        {
            return Err(ApiError::invalid(
                Some("n".into()),
                format!("Invalid 'n': RunGate returns one choice per call (n must be 1, got {n})."),
            ));
        }
        let seed = match integer(&body, "seed")? {
            Some(seed) if seed < 0 => {
                return Err(ApiError::invalid(
                    Some("seed".into()),
                    "Invalid 'seed': must be >= 0.",
                ));
            }
            seed => seed.map(|s| s as u64),
        };
        let sampling = SamplingParams {
            max_tokens,
            temperature: number_in(&body, "temperature", 0.0, 2.0)?,
            top_p: number_in(&body, "top_p", 0.0, 1.0)?,
            seed,
            stop: stop(body.get("stop"))?,
        };
        tools::validate(&body)?;
        let user = string(&body, "user")?;
        let metadata = match body.get("metadata") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => {
                if map.len() > 16 || map.values().any(|v| !v.is_string()) {
                    return Err(ApiError::invalid(
                        Some("metadata".into()),
                        "Invalid 'metadata': at most 16 key-value pairs with string values.",
                    ));
                }
                Some(map.clone())
            }
            Some(_) => return Err(wrong_type("metadata", "an object")),
        };
        let extra = PASS_THROUGH
            .iter()
            .filter_map(|key| {
                body.get(*key)
                    .filter(|v| !v.is_null())
                    .map(|v| ((*key).to_owned(), v.clone()))
            })
            .collect();
        Ok(Self {
            model,
            messages,
            sampling,
            stream,
            include_usage,
            user,
            metadata,
            extra,
        })
    }
}

fn messages(value: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let list = match value {
        None | Some(Value::Null) => return Err(missing("messages")),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(wrong_type("messages", "an array")),
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            Some("messages".into()),
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, message)| {
            let at = |field: &str| format!("messages[{i}].{field}");
            let Value::Object(message) = message else {
                return Err(wrong_type(&format!("messages[{i}]"), "an object"));
            };
            let role = string(message, "role")
                .map_err(|_| wrong_type(&at("role"), "a string"))?
                .ok_or_else(|| missing(&at("role")))?;
            if !ROLES.contains(&role.as_str()) {
                return Err(ApiError::invalid(
                    Some(at("role")),
                    format!(
                        "Invalid value: '{role}'. Supported values are: {}.",
                        ROLES.join(", ")
                    ),
                ));
            }
            let tool_calls = message.get("tool_calls").filter(|v| !v.is_null());
            let content = content(message.get("content"), &at("content"))?;
            let content = match content {
                Some(text) => text,
                None if role == "assistant" && tool_calls.is_some() => String::new(),
                None => return Err(missing(&at("content"))),
            };
            let name = string(message, "name").map_err(|_| wrong_type(&at("name"), "a string"))?;
            let tool_call_id = string(message, "tool_call_id")
                .map_err(|_| wrong_type(&at("tool_call_id"), "a string"))?;
            if role == "tool" && tool_call_id.is_none() {
                return Err(missing(&at("tool_call_id")));
            }
            Ok(ChatMessage {
                role,
                content,
                name,
                tool_call_id,
                tool_calls_json: tool_calls.map(Value::to_string),
            })
        })
        .collect()
}

/// A string, or an array of `{type: "text", text}` parts joined together.
fn content(value: Option<&Value>, param: &str) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(piece))) => text.push_str(piece),
                    (Some(kind), _) if kind != "text" => {
                        return Err(ApiError::invalid(
                            Some(format!("{param}[{j}].type")),
                            format!(
                                "Content parts of type '{kind}' are not supported; use 'text'."
                            ),
                        ));
                    }
                    _ => {
                        return Err(wrong_type(
                            &format!("{param}[{j}]"),
                            "a text part {\"type\": \"text\", \"text\": \"...\"}",
                        ));
                    }
                }
            }
            Ok(Some(text))
        }
        Some(_) => Err(wrong_type(param, "a string or an array of text parts")),
    }
}

fn stop(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.len() <= 4 => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| wrong_type("stop", "a string or an array of strings"))
            })
            .collect(),
        Some(Value::Array(_)) => Err(ApiError::invalid(
            Some("stop".into()),
            "Invalid 'stop': at most 4 stop sequences.",
        )),
        Some(_) => Err(wrong_type("stop", "a string or an array of strings")),
    }
}

#[derive(Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// Of the prompt tokens, those the engine had cached (still counted above).
#[derive(Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl From<&rungate_proto::inference::v1::Finished> for Usage {
    fn from(finished: &rungate_proto::inference::v1::Finished) -> Self {
        let u = finished.usage.unwrap_or_default();
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: finished.cached_prompt_tokens,
            },
        }
    }
}

#[derive(Serialize)]
pub struct Completion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [CompletionChoice<'a>; 1],
    pub usage: Usage,
}

#[derive(Serialize)]
pub struct CompletionChoice<'a> {
    pub index: u32,
    pub message: AssistantMessage<'a>,
    pub logprobs: Option<Logprobs>,
    pub finish_reason: &'static str,
}

#[derive(Serialize)]
pub struct AssistantMessage<'a> {
    pub role: &'static str,
    /// `null` when the model answered with tool calls or a refusal only.
    pub content: Option<&'a str>,
    pub refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<tools::ToolCall>,
}

#[derive(Serialize)]
pub struct Chunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice<'a>>,
    /// `null` on every chunk but the last when usage was asked for; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    pub logprobs: Option<Logprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A choice's `logprobs`: the engine's entries, passed through as it sent
/// them (only upstreams give them; the local engine refuses `logprobs`).
#[derive(Serialize)]
pub struct Logprobs {
    pub content: Vec<Value>,
    pub refusal: Option<()>,
}

impl Logprobs {
    /// Appends a delta's entries (`logprobs_json`, empty when it has none).
    pub fn extend(found: &mut Option<Self>, logprobs_json: &str) {
        if logprobs_json.is_empty() {
            return;
        }
        if let Ok(entries) = serde_json::from_str::<Vec<Value>>(logprobs_json) {
            found
                .get_or_insert_with(|| Logprobs {
                    content: Vec::new(),
                    refusal: None,
                })
                .content
                .extend(entries);
        }
    }
}

#[derive(Serialize, Default)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<[tools::ToolCallChunk<'a>; 1]>,
}

pub fn finish_reason(reason: i32) -> &'static str {
    use rungate_proto::inference::v1::FinishReason;
    match FinishReason::try_from(reason).unwrap_or(FinishReason::Stop) {
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Stop | FinishReason::Unspecified => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(body: &str) -> ApiError {
        match ChatRequest::parse(body.as_bytes()) {
            Ok(request) => panic!("accepted {body}: {request:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn names_the_offending_field() {
        assert_eq!(error("{").param, None);
        assert_eq!(error("[]").param, None);
        assert_eq!(error(r#"{"messages":[]}"#).param.as_deref(), Some("model"));
        assert_eq!(error(r#"{"model":"m"}"#).param.as_deref(), Some("messages"));
        assert_eq!(
            error(r#"{"model":1,"messages":[]}"#).param.as_deref(),
            Some("model")
        );
        assert_eq!(
            error(r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#)
                .param
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            error(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#)
                .param
                .as_deref(),
            Some("temperature")
        );
        assert_eq!(
            error(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#)
                .param
                .as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            error(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#)
                .param
                .as_deref(),
            Some("n")
        );
        assert_eq!(
            error(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#)
                .param
                .as_deref(),
            Some("messages[0].tool_call_id")
        );
    }

    #[test]
    fn accepts_the_full_request_shape() {
        let request = ChatRequest::parse(
            br#"{"model":"m","messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}],"name":"ann"}],
              "stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":5,
              "temperature":0.5,"top_p":0.9,"seed":7,"stop":["x","y"],"n":1,"user":"u",
              "metadata":{"k":"v"},"tools":[],"unknown_field":1}"#,
        )
        .expect("valid request");
        assert_eq!(request.messages[1].content, "ab");
        assert_eq!(request.sampling.max_tokens, Some(5));
        assert_eq!(request.sampling.stop, vec!["x", "y"]);
        assert!(request.stream && request.include_usage);
        assert!(request.extra.contains_key("tools"));
        assert!(!request.extra.contains_key("unknown_field"));
    }
}

#[cfg(test)]
mod fuzz;
