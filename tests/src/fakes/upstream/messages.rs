//! The shapes of the Messages API that real clients parse: a message, its event stream, errors, the
//! model list and token counts. What the fake says is decided here from the request, so a real client
//! can hold a conversation with it, tool calls included:
//!
//! - a last user turn that carries a `tool_result` is answered with text quoting the result;
//! - a last user turn whose text holds `[[use-tool NAME {json input}]]`, in a request that offers a tool
//!   called NAME, is answered with a call of that tool with that input;
//! - anything else gets the configured answer.

use serde_json::{json, Value};

/// Marks a tool call the fake should make: `[[use-tool Read {"file_path":"/tmp/x"}]]`.
pub const USE_TOOL: &str = "[[use-tool ";

/// What the fake answers a Messages request with.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Text(String),
    ToolUse { name: String, input: Value },
}

impl Reply {
    fn stop_reason(&self) -> &'static str {
        match self {
            Reply::Text(_) => "end_turn",
            Reply::ToolUse { .. } => "tool_use",
        }
    }
}

/// The reply to `request` (a Messages request body) by the rules in the module's doc.
pub fn reply_to(request: &Value, answer: &str) -> Reply {
    let Some(turn) =
        request["messages"].as_array().and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
    else {
        return Reply::Text(answer.to_owned());
    };
    let blocks: Vec<&Value> = match &turn["content"] {
        Value::Array(blocks) => blocks.iter().collect(),
        text @ Value::String(_) => vec![text],
        _ => Vec::new(),
    };
    if let Some(result) = blocks.iter().find(|b| b["type"] == "tool_result") {
        return Reply::Text(format!("the tool said: {}", text_of(&result["content"])));
    }
    let offered =
        |name: &str| request["tools"].as_array().is_some_and(|tools| tools.iter().any(|t| t["name"] == name));
    for block in blocks {
        let text = block.as_str().or_else(|| block["text"].as_str()).unwrap_or("");
        if let Some((name, input)) = tool_directive(text) {
            if offered(&name) {
                return Reply::ToolUse { name, input };
            }
        }
    }
    Reply::Text(answer.to_owned())
}

/// The text of a tool result's `content`: a string, or text blocks.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join(""),
        _ => String::new(),
    }
}

fn tool_directive(text: &str) -> Option<(String, Value)> {
    let rest = &text[text.find(USE_TOOL)? + USE_TOOL.len()..];
    let (name, rest) = rest.split_once(' ')?;
    let input = serde_json::Deserializer::from_str(rest).into_iter::<Value>().next()?.ok()?;
    Some((name.to_owned(), input))
}

/// A whole (non-streaming) message.
pub fn message(id: &str, model: &Value, reply: &Reply) -> Value {
    let content = match reply {
        Reply::Text(text) => json!([{"type": "text", "text": text}]),
        Reply::ToolUse { name, input } => {
            json!([{"type": "tool_use", "id": tool_use_id(id), "name": name, "input": input}])
        }
    };
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reply.stop_reason(),
        "stop_sequence": null,
        "usage": usage(output_tokens(reply)),
    })
}

/// The events of a streamed message, in three parts: the opening (`message_start`, `content_block_start`,
/// `ping`), the deltas, and the close (`content_block_stop`, `message_delta`, `message_stop`). A text is
/// spread over `deltas` text deltas (some empty when it is shorter); a tool call's input is one JSON delta.
pub fn stream(id: &str, model: &Value, reply: &Reply, deltas: usize) -> [Vec<String>; 3] {
    let start = json!({
        "type": "message_start",
        "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage(1),
        },
    });
    let (block, pieces) = match reply {
        Reply::Text(text) => {
            let pieces = split(text, deltas.max(1))
                .into_iter()
                .map(|t| json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}))
                .collect();
            (json!({"type": "text", "text": ""}), pieces)
        }
        Reply::ToolUse { name, input } => {
            let delta = json!({"type": "input_json_delta", "partial_json": input.to_string()});
            (
                json!({"type": "tool_use", "id": tool_use_id(id), "name": name, "input": {}}),
                vec![json!({"type": "content_block_delta", "index": 0, "delta": delta})],
            )
        }
    };
    let opening = vec![
        event("message_start", &start),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    let closing = vec![
        event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
        event(
            "message_delta",
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason(), "stop_sequence": null},
                "usage": {"output_tokens": output_tokens(reply)},
            }),
        ),
        event("message_stop", &json!({"type": "message_stop"})),
    ];
    [opening, pieces.iter().map(|d| event("content_block_delta", d)).collect(), closing]
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// `text` in `n` pieces of nearly equal length (in characters), in order.
fn split(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(n).max(1);
    (0..n).map(|i| chars.iter().skip(i * per).take(per).collect()).collect()
}

fn tool_use_id(message_id: &str) -> String {
    format!("toolu_{}", message_id.trim_start_matches("msg_"))
}

fn output_tokens(reply: &Reply) -> u64 {
    match reply {
        Reply::Text(text) => text.split_whitespace().count() as u64 + 1,
        Reply::ToolUse { .. } => 8,
    }
}

fn usage(output_tokens: u64) -> Value {
    json!({
        "input_tokens": 3,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

/// An error body as the API sends it.
pub fn error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// The error type the API gives a status.
pub fn error_kind(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The models the fake offers, first the one the older tests expect.
pub const MODELS: [&str; 2] = ["claude-fake-1", "claude-sonnet-4-5"];

pub fn model(id: &str) -> Value {
    json!({"type": "model", "id": id, "display_name": id, "created_at": "2026-01-01T00:00:00Z"})
}

pub fn model_list() -> Value {
    json!({
        "data": MODELS.iter().map(|id| model(id)).collect::<Vec<_>>(),
        "has_more": false,
        "first_id": MODELS[0],
        "last_id": MODELS[MODELS.len() - 1],
    })
}

/// The fake's token count for a request body: a figure a test can compute too.
pub fn count_tokens(body_len: usize) -> u64 {
    body_len as u64 / 4 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_follow_the_conversation() {
        let tools = json!([{"name": "Read", "input_schema": {}}]);
        let ask = |text: &str, tools: &Value| json!({"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}], "tools": tools});
        assert_eq!(reply_to(&ask("hi", &tools), "hello"), Reply::Text("hello".into()));
        let directive = r#"please [[use-tool Read {"file_path":"/x]]"}]] now"#;
        assert_eq!(
            reply_to(&ask(directive, &tools), "hello"),
            Reply::ToolUse { name: "Read".into(), input: json!({"file_path": "/x]]"}) }
        );
        assert_eq!(
            reply_to(&ask(directive, &json!([])), "hello"),
            Reply::Text("hello".into()),
            "not offered"
        );
        let result = json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "42"}]},
            {"role": "system", "content": "later"},
        ]});
        assert_eq!(reply_to(&result, "hello"), Reply::Text("the tool said: 42".into()));
    }

    #[test]
    fn a_text_spreads_over_the_deltas() {
        assert_eq!(split("hello", 5), ["h", "e", "l", "l", "o"]);
        assert_eq!(split("hello world", 2), ["hello ", "world"]);
        assert_eq!(split("hi", 3), ["h", "i", ""]);
        let [opening, deltas, closing] = stream("msg_1", &json!("m"), &Reply::Text("hello".into()), 5);
        assert_eq!((opening.len(), deltas.len(), closing.len()), (3, 5, 3));
        assert_eq!(closing[2], "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    }
}
