//! Incremental Server-Sent Events decoding: bytes in, `data:` payloads out.
//! Events may be split across network chunks at any byte.

#[derive(Default)]
pub struct SseDecoder {
    buffer: Vec<u8>,
    data: String,
}

impl SseDecoder {
    /// Feeds bytes; returns each complete event's data (multi-line data joined by `\n`).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(std::mem::take(&mut self.data));
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
            // Comments (`:`), `event:`, `id:` and `retry:` lines carry nothing we use.
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events_split_anywhere() {
        let wire = b"data: {\"a\":1}\n\n: keep-alive\n\ndata: [DONE]\r\n\r\n";
        for split in 0..wire.len() {
            let mut decoder = SseDecoder::default();
            let mut events = decoder.push(&wire[..split]);
            events.extend(decoder.push(&wire[split..]));
            assert_eq!(
                events,
                vec!["{\"a\":1}".to_owned(), "[DONE]".to_owned()],
                "split at {split}"
            );
        }
    }
}

#[cfg(test)]
#[path = "sse_fuzz.rs"]
mod fuzz;
