//! Infer request bodies read as they arrive (`RequestReader`), against the same body read whole
//! (`parse_request`): whatever the split into chunks, the reader gives the same request or the
//! same error, and never panics.
//!
//! The input is `flags | [u64le header length] | split count | u16le chunk lengths | body`:
//! - flags bit 0: the binary tensor extension (`Inference-Header-Content-Length`, the u64 that
//!   follows); bit 1: the body's length is known (`Content-Length`); bit 2: a `Content-Length`
//!   that disagrees with the body by the u16 in the next two bytes (bit 3 says shorter or
//!   longer), which HTTP never delivers, so only "never panics" is asserted then.
//! - The chunk lengths are taken in turn, again and again while one of them is not zero; a zero
//!   pushes an empty chunk. Without a non-zero one, the rest of the body is one chunk.
#![no_main]

use adyton_server::protocol::{parse_request, InferRequest, Limits, ProtocolError, RequestReader};
use libfuzzer_sys::fuzz_target;

/// Small limits, so that the fuzzer reaches them and each run stays quick.
const LIMITS: Limits = Limits {
    max_elements: 4096,
    max_total_elements: 8192,
};

/// At most this many chunk lengths, so that the split stays cheap to decode.
const MAX_SPLITS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::decode(data) else {
        return;
    };
    let chunked = read_in_chunks(&input);
    if input
        .body_length
        .is_some_and(|length| length != input.body.len())
    {
        // A Content-Length the body does not have: anything but a panic will do.
        return;
    }
    let whole = parse_request(input.body, input.header_length, &LIMITS);
    match (&chunked, &whole) {
        (Ok(chunked), Ok(whole)) => {
            assert_eq!(chunked.id, whole.id);
            assert_eq!(chunked.inputs, whole.inputs);
            assert_eq!(chunked.outputs, whole.outputs);
            assert_eq!(chunked.binary_output, whole.binary_output);
        }
        (Err(chunked), Err(whole)) => assert_eq!(chunked, whole),
        _ => panic!(
            "read in chunks: {}; read whole: {}",
            outcome(&chunked),
            outcome(&whole)
        ),
    }
});

/// One fuzz input, decoded.
struct Input<'a> {
    header_length: Option<usize>,
    /// The `Content-Length` given to the reader, right or wrong.
    body_length: Option<usize>,
    splits: Vec<usize>,
    body: &'a [u8],
}

impl<'a> Input<'a> {
    fn decode(data: &'a [u8]) -> Option<Input<'a>> {
        let (&flags, mut rest) = data.split_first()?;
        let header_length = if flags & 1 != 0 {
            let (length, after) = rest.split_first_chunk::<8>()?;
            rest = after;
            // Beyond usize, the server refuses the header before any reader exists.
            Some(usize::try_from(u64::from_le_bytes(*length)).ok()?)
        } else {
            None
        };
        let wrong_by = if flags & 4 != 0 {
            let (by, after) = rest.split_first_chunk::<2>()?;
            rest = after;
            Some(usize::from(u16::from_le_bytes(*by)))
        } else {
            None
        };
        let (&count, mut rest) = rest.split_first()?;
        let mut splits = Vec::new();
        for _ in 0..usize::from(count).min(MAX_SPLITS) {
            let (length, after) = rest.split_first_chunk::<2>()?;
            rest = after;
            splits.push(usize::from(u16::from_le_bytes(*length)));
        }
        let body = rest;
        let body_length = match (flags & 2 != 0, wrong_by) {
            (false, _) => None,
            (true, None) => Some(body.len()),
            (true, Some(by)) if flags & 8 != 0 => Some(body.len().saturating_sub(by)),
            (true, Some(by)) => Some(body.len().saturating_add(by)),
        };
        Some(Input {
            header_length,
            body_length,
            splits,
            body,
        })
    }
}

/// The body pushed into a reader in the chunks the input says.
fn read_in_chunks(input: &Input<'_>) -> Result<InferRequest, ProtocolError> {
    let mut reader = RequestReader::new(input.header_length, input.body_length, LIMITS);
    let mut body = input.body;
    let progresses = input.splits.iter().any(|&n| n > 0);
    let mut lengths = input.splits.iter().copied();
    while !body.is_empty() {
        let length = match lengths.next() {
            Some(length) => length,
            None if progresses => {
                lengths = input.splits.iter().copied();
                continue;
            }
            None => body.len(),
        };
        let (chunk, rest) = body.split_at(length.min(body.len()));
        reader.push(chunk);
        body = rest;
    }
    // The chunk lengths left over push empty chunks, as a stream may end with one.
    for _ in lengths.filter(|&n| n == 0) {
        reader.push(&[]);
    }
    reader.finish()
}

fn outcome(result: &Result<InferRequest, ProtocolError>) -> String {
    match result {
        Ok(request) => format!("a request with {} inputs", request.inputs.len()),
        Err(e) => format!("error '{e}'"),
    }
}
