//! Server-Sent Events framing for the OpenAI streaming format.

use bytes::Bytes;
use serde::Serialize;

/// `data: <json>\n\n`
pub fn data_event(value: &impl Serialize) -> Bytes {
    let mut frame = Vec::with_capacity(256);
    frame.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut frame, value).is_err() {
        frame.extend_from_slice(b"{}");
    }
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

pub fn raw_event(json: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(json.len() + 8);
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(json);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

pub const DONE: &[u8] = b"data: [DONE]\n\n";
