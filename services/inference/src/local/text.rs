//! Turning token bytes into text deltas: multi-byte characters are never
//! split across deltas, and stop sequences are cut out even when they span
//! several tokens (text that might begin one is held back until it can't).

/// Incremental UTF-8: bytes in, only complete characters out.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    // Safe: from_utf8 vouched for the first `valid` bytes.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match error.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never be valid: replace them, go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// What is left when generation ends (an incomplete character is replaced).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// Holds back text that could be the start of a stop sequence.
pub struct StopScanner {
    stops: Vec<String>,
    held: String,
}

pub enum Scan {
    /// Text safe to send now.
    Emit(String),
    /// A stop sequence appeared: send this text (before it), then finish.
    Stopped(String),
}

impl StopScanner {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Scan {
        self.held.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let before = self.held[..at].to_owned();
            self.held.clear();
            return Scan::Stopped(before);
        }
        // Keep the longest tail that is a proper prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n))
                    .find(|&n| self.held.ends_with(&stop[..n]))
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Scan::Emit(emit)
    }

    /// Held text, released when generation ends without a stop.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_splits_a_character() {
        let mut s = Utf8Stream::default();
        let bytes = "é€😀".as_bytes();
        let mut out = String::new();
        for b in bytes {
            let piece = s.push(&[*b]);
            assert!(piece.chars().all(|c| c != char::REPLACEMENT_CHARACTER));
            out.push_str(&piece);
        }
        assert_eq!(out, "é€😀");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn replaces_invalid_bytes_and_goes_on() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
        assert_eq!(s.push(&[0xe2, 0x82]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut scanner = StopScanner::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            match scanner.push(piece) {
                Scan::Emit(text) => out.push_str(&text),
                Scan::Stopped(text) => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&scanner.finish());
        (out, false)
    }

    #[test]
    fn cuts_stop_sequences_spanning_tokens() {
        assert_eq!(
            run(&["END"], &["Hello E", "N", "D more"]),
            ("Hello ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
        assert_eq!(run(&["xyz"], &["ab", "x", "c"]), ("abxc".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["b", "ab"], &["zab"]), ("z".into(), true));
    }
}
