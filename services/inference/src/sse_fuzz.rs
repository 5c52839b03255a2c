//! The upstream SSE re-framer: any byte stream, split anywhere, gives the
//! same events as in one piece, and never panics.

use proptest::prelude::*;

use super::SseDecoder;

fn decode(chunks: &[&[u8]]) -> Vec<String> {
    let mut decoder = SseDecoder::default();
    chunks.iter().flat_map(|c| decoder.push(c)).collect()
}

/// SSE-ish bytes: data lines, comments, blank lines, CRs, and noise.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        "data: [ -~]{0,20}\n".prop_map(String::into_bytes),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b": keep-alive\n".to_vec()),
        Just(b"event: x\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn events_do_not_depend_on_where_the_stream_is_split(bytes in wire(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let whole = decode(&[&bytes]);
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for point in points {
            chunks.push(&bytes[from..point]);
            from = point;
        }
        chunks.push(&bytes[from..]);
        prop_assert_eq!(decode(&chunks), whole);
    }
}
