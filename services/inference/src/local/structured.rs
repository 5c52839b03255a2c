//! Tools and JSON output on the local engine. Chat templates differ in how
//! (and whether) they describe tools, so every local model uses llama.cpp's
//! "generic" tool format: the tools are described in the system message, the
//! model answers with one JSON object, `{"tool_calls": [...]}` or
//! `{"response": ...}`, and a grammar made from that object's JSON schema (by
//! llama.cpp's own converter) constrains sampling. The answer always parses,
//! and a required or named tool choice cannot fall back to text.

use std::borrow::Cow;

use rungate_proto::inference::v1::ChatMessage;
use serde_json::{Map, Value, json};

use crate::InferenceError;

/// How a call's output is constrained, from its request's fields.
#[derive(Debug, Default)]
pub struct Shape {
    /// GBNF the output must match (root rule `root`).
    pub grammar: Option<String>,
    /// The output is the generic tool JSON: parsed into calls at the end.
    pub tool_calls: bool,
    /// Appended to the system message: the tools and how to answer.
    instructions: Option<String>,
}

/// What a tool-format answer said.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Calls(Vec<Call>),
    Text(String),
}

#[derive(Debug, PartialEq)]
pub struct Call {
    pub name: String,
    /// The arguments object as JSON text, as OpenAI sends them.
    pub arguments: String,
}

enum Choice<'a> {
    None,
    Auto,
    Required,
    Named(&'a str),
}

impl Shape {
    /// Reads `tools`, `tool_choice`, `parallel_tool_calls` and
    /// `response_format`; a shape it cannot constrain is a clear refusal.
    pub fn from_request(extra: &Map<String, Value>) -> Result<Self, InferenceError> {
        let response = response_schema(extra)?;
        let functions = functions(extra)?;
        let choice = choice(extra, functions.is_empty())?;
        if functions.is_empty() || matches!(choice, Choice::None) {
            return Ok(Self {
                grammar: response
                    .map(|schema| grammar(&schema, "response_format"))
                    .transpose()?,
                ..Self::default()
            });
        }
        let functions: Vec<&Map<String, Value>> = match choice {
            Choice::Named(name) => {
                let named: Vec<_> = functions
                    .into_iter()
                    .filter(|f| f["name"] == name)
                    .collect();
                if named.is_empty() {
                    return Err(invalid(
                        "tool_choice.function.name",
                        format!("`{name}` names no function in `tools`"),
                    ));
                }
                named
            }
            _ => functions,
        };
        let parallel = extra
            .get("parallel_tool_calls")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let calls = calls_schema(&functions, parallel);
        let reply = matches!(choice, Choice::Auto).then(|| {
            json!({
                "type": "object",
                "properties": {"response": response.unwrap_or_else(|| json!({"type": "string"}))},
                "required": ["response"],
                "additionalProperties": false,
            })
        });
        let schema = match &reply {
            Some(reply) => json!({"anyOf": [calls, reply]}),
            None => calls,
        };
        Ok(Self {
            grammar: Some(grammar(&schema, "tools")?),
            tool_calls: true,
            instructions: Some(instructions(&functions, &choice)),
        })
    }

    /// The messages as the model reads them: the instructions in the system
    /// message, and earlier tool calls and results written in the format the
    /// model answers in (templates without tool support would drop them).
    pub fn messages<'m>(&self, messages: &'m [ChatMessage]) -> Cow<'m, [ChatMessage]> {
        let has_tools = messages
            .iter()
            .any(|m| m.tool_calls_json.is_some() || m.role == "tool");
        if self.instructions.is_none() && !has_tools {
            return Cow::Borrowed(messages);
        }
        let mut out: Vec<ChatMessage> = messages.iter().map(|m| rewrite(m, messages)).collect();
        if let Some(text) = &self.instructions {
            match out.first_mut() {
                Some(first) if first.role == "system" || first.role == "developer" => {
                    first.content = format!("{}\n\n{text}", first.content);
                }
                _ => out.insert(
                    0,
                    ChatMessage {
                        role: "system".into(),
                        content: text.clone(),
                        ..Default::default()
                    },
                ),
            }
        }
        Cow::Owned(out)
    }
}

/// The answer a grammar-constrained tool-format output gives; `None` when it
/// is not complete JSON (the token limit cut it).
pub fn parse(output: &str) -> Option<Answer> {
    let value: Value = serde_json::from_str(output.trim()).ok()?;
    if let Some(calls) = value.get("tool_calls").and_then(Value::as_array) {
        return calls
            .iter()
            .map(|call| {
                Some(Call {
                    name: call.get("name")?.as_str()?.to_owned(),
                    arguments: match call.get("arguments")? {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    },
                })
            })
            .collect::<Option<_>>()
            .map(Answer::Calls);
    }
    match value.get("response")? {
        Value::String(text) => Some(Answer::Text(text.clone())),
        other => Some(Answer::Text(other.to_string())),
    }
}

fn response_schema(extra: &Map<String, Value>) -> Result<Option<Value>, InferenceError> {
    let Some(format) = extra.get("response_format").filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => {
            let spec = format
                .get("json_schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    invalid(
                        "response_format.json_schema",
                        "`json_schema` must be an object with the `schema`".into(),
                    )
                })?;
            Ok(Some(
                spec.get("schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            ))
        }
        _ => Err(invalid(
            "response_format",
            "`response_format.type` must be `text`, `json_object` or `json_schema`".into(),
        )),
    }
}

/// The `function` objects of `tools`, each with a string `name`.
fn functions(extra: &Map<String, Value>) -> Result<Vec<&Map<String, Value>>, InferenceError> {
    let Some(tools) = extra.get("tools").filter(|t| !t.is_null()) else {
        return Ok(Vec::new());
    };
    let tools = tools
        .as_array()
        .ok_or_else(|| invalid("tools", "`tools` must be an array".into()))?;
    tools
        .iter()
        .map(|tool| {
            tool.get("function")
                .and_then(Value::as_object)
                .filter(|f| {
                    tool["type"] == "function" && f.get("name").is_some_and(Value::is_string)
                })
                .ok_or_else(|| {
                    invalid(
                        "tools",
                        "each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}"
                            .into(),
                    )
                })
        })
        .collect()
}

fn choice(extra: &Map<String, Value>, no_tools: bool) -> Result<Choice<'_>, InferenceError> {
    let choice = match extra.get("tool_choice") {
        None | Some(Value::Null) => return Ok(if no_tools { Choice::None } else { Choice::Auto }),
        Some(Value::String(choice)) => match choice.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            _ => return Err(unknown_choice()),
        },
        Some(Value::Object(choice)) if choice.get("type") == Some(&json!("function")) => choice
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(Choice::Named)
            .ok_or_else(unknown_choice)?,
        Some(_) => return Err(unknown_choice()),
    };
    if no_tools && !matches!(choice, Choice::None) {
        return Err(invalid(
            "tool_choice",
            "`tool_choice` is only allowed when `tools` are given".into(),
        ));
    }
    Ok(choice)
}

fn unknown_choice() -> InferenceError {
    invalid(
        "tool_choice",
        "`tool_choice` must be `none`, `auto`, `required` or {\"type\": \"function\", \"function\": {\"name\": ...}}".into(),
    )
}

/// `{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}`, each call
/// one of `functions` with arguments matching its parameters.
fn calls_schema(functions: &[&Map<String, Value>], parallel: bool) -> Value {
    let mut calls: Vec<Value> = functions
        .iter()
        .map(|f| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": f["name"]},
                    "arguments": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let call = if calls.len() == 1 {
        calls.remove(0)
    } else {
        json!({"anyOf": calls})
    };
    let mut list = json!({"type": "array", "items": call, "minItems": 1});
    if !parallel {
        list["maxItems"] = json!(1);
    }
    json!({
        "type": "object",
        "properties": {"tool_calls": list},
        "required": ["tool_calls"],
        "additionalProperties": false,
    })
}

fn instructions(functions: &[&Map<String, Value>], choice: &Choice<'_>) -> String {
    let mut text = String::from(
        "You can call these functions (each one's arguments follow its JSON Schema):\n",
    );
    for f in functions {
        let mut line = json!({"name": f["name"]});
        for field in ["description", "parameters"] {
            if let Some(value) = f.get(field) {
                line[field] = value.clone();
            }
        }
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let call = r#"{"tool_calls": [{"name": "<function name>", "arguments": {...}}]}"#;
    match choice {
        Choice::Auto => text.push_str(&format!(
            "\nAnswer in JSON: {call} to call functions, or {{\"response\": \"<your reply>\"}} to reply to the user."
        )),
        Choice::Named(name) => {
            text.push_str(&format!("\nCall the function `{name}`. Answer in JSON: {call}"))
        }
        Choice::Required | Choice::None => {
            text.push_str(&format!("\nCall one or more functions. Answer in JSON: {call}"))
        }
    }
    text
}

/// A message from an earlier turn, in the generic format: an assistant's
/// calls as the JSON it would answer with, a tool result as a user message.
fn rewrite(message: &ChatMessage, all: &[ChatMessage]) -> ChatMessage {
    if let Some(calls) = &message.tool_calls_json {
        let calls: Vec<Value> = serde_json::from_str::<Vec<Value>>(calls)
            .unwrap_or_default()
            .iter()
            .map(|call| {
                let function = &call["function"];
                let arguments = function["arguments"]
                    .as_str()
                    .and_then(|a| serde_json::from_str(a).ok())
                    .unwrap_or_else(|| function["arguments"].clone());
                json!({"name": function["name"], "arguments": arguments})
            })
            .collect();
        return ChatMessage {
            role: message.role.clone(),
            content: json!({"tool_calls": calls}).to_string(),
            ..Default::default()
        };
    }
    if message.role == "tool" {
        let name = message
            .tool_call_id
            .as_deref()
            .and_then(|id| called(all, id));
        return ChatMessage {
            role: "user".into(),
            content: json!({"tool_response": {"name": name, "content": message.content}})
                .to_string(),
            ..Default::default()
        };
    }
    message.clone()
}

/// The function an earlier assistant message called with this call id.
fn called(messages: &[ChatMessage], id: &str) -> Option<String> {
    messages
        .iter()
        .filter_map(|m| m.tool_calls_json.as_deref())
        .filter_map(|calls| serde_json::from_str::<Vec<Value>>(calls).ok())
        .flatten()
        .find(|call| call["id"] == id)
        .and_then(|call| call["function"]["name"].as_str().map(str::to_owned))
}

/// GBNF for `schema` by llama.cpp's converter; one it cannot convert is
/// refused (never unconstrained output). Between JSON tokens it allows at
/// most one space, not the converter's newlines and 20 tabs: whitespace
/// says nothing, costs tokens, and is where small models loop until the
/// token limit cuts the JSON.
fn grammar(schema: &Value, param: &'static str) -> Result<String, InferenceError> {
    let grammar = llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|error| {
        invalid(
            param,
            format!("the JSON schema in `{param}` cannot be turned into a grammar: {error}"),
        )
    })?;
    Ok(grammar
        .lines()
        .map(|rule| {
            if rule.starts_with("space ::=") {
                COMPACT_SPACE
            } else {
                rule
            }
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

const COMPACT_SPACE: &str = r#"space ::= | " ""#;

fn invalid(param: &'static str, message: String) -> InferenceError {
    InferenceError::InvalidArgument { param, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extra(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("object")
    }

    const WEATHER: &str = r#"{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}"#;

    fn weather() -> Value {
        serde_json::from_str(WEATHER).expect("JSON")
    }

    #[test]
    fn tool_answers_parse_into_calls_or_text() {
        assert_eq!(
            parse(
                r#" {"tool_calls": [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]}"#
            ),
            Some(Answer::Calls(vec![
                Call {
                    name: "f".into(),
                    arguments: r#"{"a":1}"#.into()
                },
                Call {
                    name: "g".into(),
                    arguments: "{}".into()
                },
            ]))
        );
        assert_eq!(
            parse(r#"{"response": "Hi"}"#),
            Some(Answer::Text("Hi".into()))
        );
        assert_eq!(
            parse(r#"{"response": {"ok": true}}"#),
            Some(Answer::Text(r#"{"ok":true}"#.into()))
        );
        assert_eq!(parse(r#"{"tool_calls": [{"name": "f", "argu"#), None);
    }

    #[test]
    fn every_choice_gets_its_grammar_and_none_gets_none() {
        for choice in [
            json!("auto"),
            json!("required"),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ] {
            let shape =
                Shape::from_request(&extra(json!({"tools": [weather()], "tool_choice": choice})))
                    .expect("a shape");
            assert!(shape.tool_calls);
            let grammar = shape.grammar.expect("a grammar");
            assert!(grammar.contains("get_weather"), "{grammar}");
            assert_eq!(
                grammar.contains("response"),
                choice == json!("auto"),
                "{choice}"
            );
        }
        let none =
            Shape::from_request(&extra(json!({"tools": [weather()], "tool_choice": "none"})))
                .expect("a shape");
        assert!(!none.tool_calls && none.grammar.is_none());
    }

    #[test]
    fn unknown_choices_and_formats_are_refused_with_their_param() {
        for (request, param) in [
            (
                json!({"tools": [weather()], "tool_choice": "always"}),
                "tool_choice",
            ),
            (
                json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "other"}}}),
                "tool_choice.function.name",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"tools": [{"type": "retrieval"}]}), "tools"),
            (
                json!({"response_format": {"type": "yaml"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nowhere"}}}}),
                "response_format",
            ),
        ] {
            match Shape::from_request(&extra(request.clone())) {
                Err(InferenceError::InvalidArgument { param: got, .. }) => {
                    assert_eq!(got, param, "{request}")
                }
                other => panic!("{request}: {other:?}"),
            }
        }
    }

    #[test]
    fn earlier_calls_and_results_are_written_in_the_answer_format() {
        let calls = r#"[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]"#;
        let messages = vec![
            ChatMessage {
                role: "user".into(),
                content: "Weather?".into(),
                ..Default::default()
            },
            ChatMessage {
                role: "assistant".into(),
                tool_calls_json: Some(calls.into()),
                ..Default::default()
            },
            ChatMessage {
                role: "tool".into(),
                content: "sunny".into(),
                tool_call_id: Some("call_1".into()),
                ..Default::default()
            },
        ];
        let shape = Shape::from_request(&extra(json!({"tools": [weather()]}))).expect("a shape");
        let seen = shape.messages(&messages);
        assert_eq!(seen[0].role, "system");
        assert!(seen[0].content.contains("get_weather"));
        assert_eq!(
            seen[2].content,
            r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#
        );
        assert_eq!(
            (seen[3].role.as_str(), seen[3].content.as_str()),
            (
                "user",
                r#"{"tool_response":{"name":"get_weather","content":"sunny"}}"#
            )
        );
        // Plain messages without tools are not copied.
        assert!(matches!(
            Shape::default().messages(&messages[..1]),
            Cow::Borrowed(_)
        ));
    }
}
