//! A GGUF header check that runs before llama.cpp ever sees the file: a
//! malformed GGUF makes llama.cpp abort the whole process, so every length,
//! count and tensor extent is checked against the file first.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Malformed(String),
}

/// What the engine needs from the header.
#[derive(Debug, Default)]
pub struct GgufSummary {
    pub architecture: String,
    pub chat_template: Option<String>,
    pub context_length: Option<u64>,
    pub tensors: u64,
}

const MAX_STRING: u64 = 64 << 20;
const MAX_ARRAY: u64 = 1 << 28;
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KV: u64 = 1 << 20;

struct Reader<R> {
    inner: R,
    offset: u64,
    len: u64,
}

fn malformed(message: impl Into<String>) -> GgufError {
    GgufError::Malformed(message.into())
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, GgufError> {
        if n > self.len.saturating_sub(self.offset) {
            return Err(malformed(format!(
                "truncated: needs {n} bytes at offset {} of {}",
                self.offset, self.len
            )));
        }
        let mut buf = vec![0; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| malformed(format!("read failed at offset {}: {e}", self.offset)))?;
        self.offset += n;
        Ok(buf)
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        if n > self.len.saturating_sub(self.offset) {
            return Err(malformed(format!("truncated at offset {}", self.offset)));
        }
        std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| malformed(format!("read failed: {e}")))?;
        self.offset += n;
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        let b = self.bytes(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(malformed(format!("string of {len} bytes")));
        }
        String::from_utf8(self.bytes(len)?).map_err(|_| malformed("string is not UTF-8"))
    }
}

/// A metadata value, kept only when it is one we read.
enum Value {
    Str(String),
    Int(u64),
    Other,
}

fn scalar_size(kind: u32) -> Option<u64> {
    Some(match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

fn value<R: Read>(r: &mut Reader<R>, kind: u32, depth: u8) -> Result<Value, GgufError> {
    match kind {
        8 => Ok(Value::Str(r.string()?)),
        9 => {
            if depth > 2 {
                return Err(malformed("arrays nested too deep"));
            }
            let item = r.u32()?;
            let count = r.u64()?;
            if count > MAX_ARRAY {
                return Err(malformed(format!("array of {count} items")));
            }
            match scalar_size(item) {
                Some(size) => r.skip(size * count)?,
                None => {
                    for _ in 0..count {
                        value(r, item, depth + 1)?;
                    }
                }
            }
            Ok(Value::Other)
        }
        4 => Ok(Value::Int(u64::from(r.u32()?))),
        10 => Ok(Value::Int(r.u64()?)),
        _ => {
            let size =
                scalar_size(kind).ok_or_else(|| malformed(format!("unknown value type {kind}")))?;
            r.skip(size)?;
            Ok(Value::Other)
        }
    }
}

/// (elements per block, bytes per block) of the ggml tensor types.
fn block(kind: u32) -> Option<(u64, u64)> {
    Some(match kind {
        0 => (1, 4),       // F32
        1 | 30 => (1, 2),  // F16, BF16
        2 => (32, 18),     // Q4_0
        3 => (32, 20),     // Q4_1
        6 => (32, 22),     // Q5_0
        7 => (32, 24),     // Q5_1
        8 => (32, 34),     // Q8_0
        9 => (32, 36),     // Q8_1
        10 => (256, 84),   // Q2_K
        11 => (256, 110),  // Q3_K
        12 => (256, 144),  // Q4_K
        13 => (256, 176),  // Q5_K
        14 => (256, 210),  // Q6_K
        15 => (256, 292),  // Q8_K
        24 => (1, 1),      // I8
        25 => (1, 2),      // I16
        26 => (1, 4),      // I32
        27 | 28 => (1, 8), // I64, F64
        _ => return None,
    })
}

/// Checks the whole header and every tensor's extent; returns what the engine reads.
pub fn inspect(path: &Path) -> Result<GgufSummary, GgufError> {
    let io = |source| GgufError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 16, file),
        offset: 0,
        len,
    };
    if r.bytes(4)? != b"GGUF" {
        return Err(malformed("not a GGUF file (bad magic)"));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(malformed(format!("unsupported GGUF version {version}")));
    }
    let tensors = r.u64()?;
    let kvs = r.u64()?;
    if tensors > MAX_TENSORS || kvs > MAX_KV {
        return Err(malformed(format!("{tensors} tensors, {kvs} metadata keys")));
    }
    let mut meta: HashMap<String, Value> = HashMap::new();
    for _ in 0..kvs {
        let key = r.string()?;
        let kind = r.u32()?;
        let v = value(&mut r, kind, 0)?;
        meta.insert(key, v);
    }
    let mut extents = Vec::with_capacity(tensors as usize);
    for _ in 0..tensors {
        let name = r.string()?;
        let dims = r.u32()?;
        if dims == 0 || dims > 4 {
            return Err(malformed(format!("tensor {name} has {dims} dimensions")));
        }
        let mut elements: u64 = 1;
        let mut first = 0;
        for i in 0..dims {
            let d = r.u64()?;
            if i == 0 {
                first = d;
            }
            elements = elements
                .checked_mul(d)
                .ok_or_else(|| malformed(format!("tensor {name} is too large")))?;
        }
        let kind = r.u32()?;
        let offset = r.u64()?;
        let size = match block(kind) {
            Some((per_block, bytes)) => {
                if first % per_block != 0 {
                    return Err(malformed(format!(
                        "tensor {name}: row not a whole number of blocks"
                    )));
                }
                Some(elements / per_block * bytes)
            }
            None => None,
        };
        extents.push((name, offset, size));
    }
    let alignment = match meta.get("general.alignment") {
        Some(Value::Int(a)) if *a > 0 && a.is_power_of_two() => *a,
        Some(_) => return Err(malformed("general.alignment is not a power of two")),
        None => 32,
    };
    let data_start = r.offset.div_ceil(alignment) * alignment;
    let data_len = len.saturating_sub(data_start);
    for (name, offset, size) in extents {
        let end = offset.checked_add(size.unwrap_or(0));
        if offset % alignment != 0 || end.is_none_or(|end| end > data_len) || offset >= data_len {
            return Err(malformed(format!(
                "tensor {name} lies outside the file (offset {offset}, {} bytes of data)",
                data_len
            )));
        }
    }
    let text = |key: &str| match meta.get(key) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let architecture =
        text("general.architecture").ok_or_else(|| malformed("no general.architecture"))?;
    let context_length = match meta.get(&format!("{architecture}.context_length")) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    Ok(GgufSummary {
        chat_template: text("tokenizer.chat_template"),
        context_length,
        architecture,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf(tensor_offset: u64, data: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(b"GGUF");
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&1u64.to_le_bytes()); // tensors
        f.extend_from_slice(&1u64.to_le_bytes()); // kvs
        let key = b"general.architecture";
        f.extend_from_slice(&(key.len() as u64).to_le_bytes());
        f.extend_from_slice(key);
        f.extend_from_slice(&8u32.to_le_bytes());
        f.extend_from_slice(&5u64.to_le_bytes());
        f.extend_from_slice(b"llama");
        let name = b"t";
        f.extend_from_slice(&(name.len() as u64).to_le_bytes());
        f.extend_from_slice(name);
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&8u64.to_le_bytes()); // 8 f32
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&tensor_offset.to_le_bytes());
        while f.len() % 32 != 0 {
            f.push(0);
        }
        f.extend(std::iter::repeat_n(0u8, data));
        f
    }

    fn check(bytes: &[u8]) -> Result<GgufSummary, GgufError> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("gguf-test-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).map_err(|source| GgufError::Io {
            path: String::new(),
            source,
        })?;
        let result = inspect(&path);
        let _ = std::fs::remove_file(path);
        result
    }

    #[test]
    fn accepts_a_well_formed_file() {
        let summary = check(&gguf(0, 32)).expect("valid");
        assert_eq!(summary.architecture, "llama");
        assert_eq!(summary.tensors, 1);
    }

    #[test]
    fn refuses_truncation_anywhere() {
        let whole = gguf(0, 32);
        for cut in [0, 3, 10, 30, 60, whole.len() - 1] {
            assert!(check(&whole[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn refuses_bad_magic_and_tensors_past_the_end() {
        let mut bad = gguf(0, 32);
        bad[0] = b'X';
        assert!(check(&bad).is_err());
        assert!(check(&gguf(64, 32)).is_err());
        assert!(check(&gguf(0, 16)).is_err());
    }
}

#[cfg(test)]
#[path = "gguf_fuzz.rs"]
mod fuzz;
