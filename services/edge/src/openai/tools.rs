//! Tool calling in OpenAI's shapes: the request's `tools` and `tool_choice`
//! checked before any payment is asked (each error names its `param`), a
//! model's calls assembled for a whole answer, and their streamed chunks.

use rungate_proto::inference::v1::ToolCallDelta;
use serde::Serialize;
use serde_json::{Map, Value};

use super::wrong_type;
use crate::ApiError;

const CHOICES: &[&str] = &["none", "auto", "required"];

/// `tools`, `tool_choice` and `parallel_tool_calls` as OpenAI accepts them.
pub fn validate(body: &Map<String, Value>) -> Result<(), ApiError> {
    let names = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .iter()
            .enumerate()
            .map(|(i, tool)| function_name(i, tool))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(wrong_type("tools", "an array")),
    };
    match body.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(_) if names.is_empty() => {
            return Err(invalid(
                "tool_choice",
                "'tool_choice' is only allowed when 'tools' are specified.",
            ));
        }
        Some(Value::String(choice)) if CHOICES.contains(&choice.as_str()) => {}
        Some(Value::Object(choice))
            if choice.get("type").and_then(Value::as_str) == Some("function") =>
        {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| wrong_type("tool_choice.function.name", "a string"))?;
            if !names.contains(&name) {
                return Err(invalid(
                    "tool_choice.function.name",
                    &format!("Invalid value: '{name}'. It names no function in 'tools'."),
                ));
            }
        }
        Some(_) => {
            return Err(invalid(
                "tool_choice",
                "Invalid 'tool_choice': expected 'none', 'auto', 'required' or \
                 {\"type\": \"function\", \"function\": {\"name\": \"...\"}}.",
            ));
        }
    }
    match body.get("parallel_tool_calls") {
        None | Some(Value::Null | Value::Bool(_)) => Ok(()),
        Some(_) => Err(wrong_type("parallel_tool_calls", "a boolean")),
    }
}

fn invalid(param: &str, message: &str) -> ApiError {
    ApiError::invalid(Some(param.to_owned()), message)
}

/// The name of `tools[i]`, a `{"type": "function", "function": {...}}`.
fn function_name(i: usize, tool: &Value) -> Result<&str, ApiError> {
    let at = |field: &str| format!("tools[{i}].{field}");
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(invalid(
            &at("type"),
            "Invalid value: only 'function' tools are supported.",
        ));
    }
    let function = tool
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| wrong_type(&at("function"), "an object"))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| wrong_type(&at("function.name"), "a string"))?;
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(invalid(
            &at("function.name"),
            &format!(
                "Invalid '{}': '{name}' must match ^[a-zA-Z0-9_-]{{1,64}}$.",
                at("function.name")
            ),
        ));
    }
    match function.get("parameters") {
        None | Some(Value::Null | Value::Object(_)) => Ok(name),
        Some(_) => Err(wrong_type(&at("function.parameters"), "an object")),
    }
}

/// A call in a whole answer's `message.tool_calls`.
#[derive(Serialize, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// A model's calls, assembled from their fragments.
#[derive(Default)]
pub struct ToolCalls(Vec<(u32, ToolCall)>);

impl ToolCalls {
    pub fn push(&mut self, delta: ToolCallDelta) {
        let call = match self.0.iter_mut().find(|(index, _)| *index == delta.index) {
            Some((_, call)) => call,
            None => {
                self.0.push((
                    delta.index,
                    ToolCall {
                        id: String::new(),
                        kind: "function",
                        function: FunctionCall {
                            name: String::new(),
                            arguments: String::new(),
                        },
                    },
                ));
                &mut self.0.last_mut().expect("just pushed").1
            }
        };
        if !delta.id.is_empty() {
            call.id = delta.id;
        }
        if !delta.name.is_empty() {
            call.function.name = delta.name;
        }
        call.function.arguments.push_str(&delta.arguments);
    }

    /// The calls in index order.
    pub fn into_calls(mut self) -> Vec<ToolCall> {
        self.0.sort_by_key(|(index, _)| *index);
        self.0.into_iter().map(|(_, call)| call).collect()
    }
}

/// One fragment in a chunk's `delta.tool_calls`: the first of a call names
/// its id, type and function; later ones carry argument text only.
#[derive(Serialize)]
pub struct ToolCallChunk<'a> {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionChunk<'a>,
}

#[derive(Serialize)]
pub struct FunctionChunk<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

impl<'a> From<&'a ToolCallDelta> for ToolCallChunk<'a> {
    fn from(delta: &'a ToolCallDelta) -> Self {
        let first = !delta.id.is_empty();
        Self {
            index: delta.index,
            id: first.then_some(delta.id.as_str()),
            kind: first.then_some("function"),
            function: FunctionChunk {
                name: (!delta.name.is_empty()).then_some(delta.name.as_str()),
                arguments: &delta.arguments,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value) -> Result<(), Option<String>> {
        let Value::Object(body) = body else { panic!() };
        validate(&body).map_err(|e| e.param)
    }

    #[test]
    fn tool_choices_and_tools_are_checked_with_their_param() {
        let tools =
            json!([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]);
        assert_eq!(check(json!({"tools": tools})), Ok(()));
        for choice in [
            json!("auto"),
            json!("none"),
            json!("required"),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ] {
            assert_eq!(
                check(json!({"tools": tools, "tool_choice": choice})),
                Ok(())
            );
        }
        let refused = [
            (json!({"tools": {}}), "tools"),
            (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
            (
                json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
                "tools[0].function.parameters",
            ),
            (json!({"tool_choice": "auto"}), "tool_choice"),
            (
                json!({"tools": tools, "tool_choice": "always"}),
                "tool_choice",
            ),
            (
                json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "other"}}}),
                "tool_choice.function.name",
            ),
            (
                json!({"tools": tools, "parallel_tool_calls": "yes"}),
                "parallel_tool_calls",
            ),
        ];
        for (body, param) in refused {
            assert_eq!(check(body.clone()), Err(Some(param.to_owned())), "{body}");
        }
    }

    #[test]
    fn fragments_assemble_into_calls_in_index_order() {
        let delta = |index, id: &str, name: &str, arguments: &str| ToolCallDelta {
            index,
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        };
        let mut calls = ToolCalls::default();
        calls.push(delta(1, "call_b", "g", ""));
        calls.push(delta(0, "call_a", "f", "{\"x\""));
        calls.push(delta(1, "", "", "{}"));
        calls.push(delta(0, "", "", ":1}"));
        let call = |id: &str, name: &str, arguments: &str| ToolCall {
            id: id.into(),
            kind: "function",
            function: FunctionCall {
                name: name.into(),
                arguments: arguments.into(),
            },
        };
        assert_eq!(
            calls.into_calls(),
            vec![call("call_a", "f", "{\"x\":1}"), call("call_b", "g", "{}")]
        );
    }

    #[test]
    fn a_first_fragment_names_the_call_and_later_ones_only_add_arguments() {
        let first = ToolCallDelta {
            index: 0,
            id: "call_a".into(),
            name: "f".into(),
            arguments: String::new(),
        };
        let later = ToolCallDelta {
            index: 0,
            arguments: "{}".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(ToolCallChunk::from(&first)).expect("serializes"),
            json!({"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}})
        );
        assert_eq!(
            serde_json::to_value(ToolCallChunk::from(&later)).expect("serializes"),
            json!({"index": 0, "function": {"arguments": "{}"}})
        );
    }
}
