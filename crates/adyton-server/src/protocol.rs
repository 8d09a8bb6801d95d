//! The Open Inference Protocol's infer request and response bodies: JSON tensors (flat or
//! nested) and the binary tensor extension (`Inference-Header-Content-Length`).
//!
//! No HTTP here: bytes in, typed request out; typed outputs in, bytes out.

use serde::Deserialize;
use serde_json::{Map, Value};
use zeroize::{Zeroize as _, Zeroizing};

use crate::runtime::{element_count, DataType, Tensor, TensorData, TensorError};

/// Limits on what a request may ask for.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Elements per tensor.
    pub max_elements: usize,
    /// Elements over all the request's tensors.
    pub max_total_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_elements: 16 << 20,
            max_total_elements: 64 << 20,
        }
    }
}

/// A request that does not follow the protocol; the message says what is wrong (never with tensor
/// values in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

fn err(message: impl Into<String>) -> ProtocolError {
    ProtocolError(message.into())
}

/// An output the client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedOutput {
    /// Its name.
    pub name: String,
    /// Whether to return it in binary; `None` follows the request's default.
    pub binary: Option<bool>,
}

/// A parsed infer request.
#[derive(Debug)]
pub struct InferRequest {
    /// The request id, echoed back.
    pub id: Option<String>,
    /// The named inputs, in request order.
    pub inputs: Vec<(String, Tensor)>,
    /// The outputs asked for; empty means all.
    pub outputs: Vec<RequestedOutput>,
    /// The request-wide `binary_data_output` parameter.
    pub binary_output: bool,
}

#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

fn bool_parameter(
    parameters: &Option<Map<String, Value>>,
    key: &str,
    what: &str,
) -> Result<Option<bool>, ProtocolError> {
    match parameters.as_ref().and_then(|p| p.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(err(format!(
            "{what}: parameter '{key}' must be true or false"
        ))),
    }
}

/// Parses an infer request body. `header_length` is the `Inference-Header-Content-Length` header:
/// the JSON part's length, with the binary tensor data after it.
pub fn parse_request(
    body: &[u8],
    header_length: Option<usize>,
    limits: &Limits,
) -> Result<InferRequest, ProtocolError> {
    let (json, binary) = match header_length {
        None => (body, &body[body.len()..]),
        Some(n) if n > body.len() => return Err(short_header(n, body.len())),
        Some(n) => body.split_at(n),
    };
    build_request(parse_header(json)?, BinaryData::Body(binary), limits)
}

fn short_header(header_length: usize, body_length: usize) -> ProtocolError {
    err(format!(
        "Inference-Header-Content-Length is {header_length} but the body has only {body_length} bytes"
    ))
}

fn parse_header(json: &[u8]) -> Result<RequestJson, ProtocolError> {
    serde_json::from_slice(json)
        .map_err(|e| err(format!("the request is not a valid infer request: {e}")))
}

fn binary_left(name: &str, size: usize, left: usize) -> ProtocolError {
    err(format!(
        "input '{name}': binary_data_size is {size} but only {left} bytes of binary data are left"
    ))
}

/// Where the binary inputs are: the body after its JSON part, or buffers already cut per input,
/// in the order of the inputs that claim binary data, with the count of the bytes that followed
/// them (kept only as a count: no input has them).
enum BinaryData<'b> {
    Body(&'b [u8]),
    Cut {
        buffers: std::collections::VecDeque<Zeroizing<Vec<u8>>>,
        after: usize,
    },
}

/// One input's binary data: borrowed from the body, or its own buffer already.
enum BinaryInput<'b> {
    Borrowed(&'b [u8]),
    Owned(Zeroizing<Vec<u8>>),
}

impl BinaryInput<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            BinaryInput::Borrowed(bytes) => bytes,
            BinaryInput::Owned(bytes) => bytes,
        }
    }

    /// The bytes in a zeroized buffer of their own: copied once from the body, or as they are.
    fn into_buffer(self) -> Zeroizing<Vec<u8>> {
        match self {
            BinaryInput::Borrowed(bytes) => Zeroizing::new(bytes.to_vec()),
            BinaryInput::Owned(bytes) => bytes,
        }
    }
}

impl<'b> BinaryData<'b> {
    fn left(&self) -> usize {
        match self {
            BinaryData::Body(bytes) => bytes.len(),
            BinaryData::Cut { buffers, after } => buffers
                .iter()
                .map(|b| b.len())
                .fold(*after, usize::saturating_add),
        }
    }

    /// The next `size` bytes, or `None` when fewer are left.
    fn take(&mut self, size: usize) -> Option<BinaryInput<'b>> {
        match self {
            BinaryData::Body(bytes) => {
                let (taken, rest) = bytes.split_at_checked(size)?;
                *bytes = rest;
                Some(BinaryInput::Borrowed(taken))
            }
            BinaryData::Cut { buffers, .. } => {
                // The reader cut the claimed sizes, in order; a buffer is shorter when the body
                // ended inside it, and there is none for a claim the body could not hold.
                if buffers.front()?.len() != size {
                    return None;
                }
                buffers.pop_front().map(BinaryInput::Owned)
            }
        }
    }
}

/// The `binary_data_size` an input claims, if any.
fn binary_size_of(input: &InputJson) -> Result<Option<usize>, ProtocolError> {
    match input
        .parameters
        .as_ref()
        .and_then(|p| p.get("binary_data_size"))
    {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                err(format!(
                    "input '{}': binary_data_size must be a byte count",
                    input.name
                ))
            }),
    }
}

/// An infer request body read as it arrives, in chunks. With the binary tensor extension, the JSON
/// part is parsed as soon as it is complete, and each binary input is then copied from the
/// arriving chunks straight into a zeroized buffer of its own, which becomes its tensor: one copy,
/// and no buffer of the whole body. A JSON body is gathered in one zeroized buffer and parsed at
/// the end. Errors are kept until [`RequestReader::finish`], so that the caller reads the body to
/// its end (and the client reads the answer, not a reset connection), and they are the errors
/// [`parse_request`] gives for the same body read whole, however it was cut into chunks.
pub struct RequestReader {
    limits: Limits,
    header_length: Option<usize>,
    body_length: Option<usize>,
    received: usize,
    head: Zeroizing<Vec<u8>>,
    binary: Option<Result<Receiving, ProtocolError>>,
}

impl std::fmt::Debug for RequestReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestReader")
            .field("header_length", &self.header_length)
            .field("body_length", &self.body_length)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// What a buffer starts with when the body's length is unknown: all the buffers together, so that
/// a small header that claims much cannot make the reader allocate much before bytes arrive.
const UNKNOWN_LENGTH_CAPACITY: usize = 1 << 20;

/// The binary inputs being received: their claimed sizes and buffers, in order, up to the first
/// claim that cannot be honoured, and the count of the bytes that follow them.
struct Receiving {
    request: RequestJson,
    buffers: Vec<(usize, Zeroizing<Vec<u8>>)>,
    current: usize,
    after: usize,
}

impl RequestReader {
    /// A reader for a body of `body_length` bytes (the `Content-Length`, when known) whose JSON
    /// part is `header_length` bytes (`Inference-Header-Content-Length`), or all of it.
    pub fn new(
        header_length: Option<usize>,
        body_length: Option<usize>,
        limits: Limits,
    ) -> RequestReader {
        // The header lengths come from the client: without a body length to bound them, the
        // buffer starts small and grows with what arrives.
        let capacity = match header_length {
            Some(n) => n.min(body_length.unwrap_or(UNKNOWN_LENGTH_CAPACITY)),
            None => body_length.unwrap_or(0),
        };
        let mut reader = RequestReader {
            limits,
            header_length,
            body_length,
            received: 0,
            head: Zeroizing::new(Vec::with_capacity(capacity)),
            binary: None,
        };
        reader.start_binary_when_ready();
        reader
    }

    /// Takes the next chunk of the body.
    pub fn push(&mut self, mut chunk: &[u8]) {
        self.received = self.received.saturating_add(chunk.len());
        if self.binary.is_none() {
            let wanted = match self.header_length {
                Some(n) => n.saturating_sub(self.head.len()).min(chunk.len()),
                None => chunk.len(),
            };
            extend_zeroizing(&mut self.head, &chunk[..wanted]);
            chunk = &chunk[wanted..];
            self.start_binary_when_ready();
        }
        if let Some(Ok(receiving)) = &mut self.binary {
            receiving.push(chunk);
        }
    }

    /// Once the JSON part of a binary body is complete: parses it and makes a buffer per binary
    /// input. The claimed sizes must fit in the body's length when it is known, so that a buffer
    /// is never larger than what the client sends: no buffer is made for the first claim that
    /// does not fit or does not parse, nor for those after it, and the request fails at
    /// [`RequestReader::finish`], where [`build_request`] sees the inputs in order and gives the
    /// error the whole body gives (an earlier input's, or this claim's).
    fn start_binary_when_ready(&mut self) {
        if self.binary.is_some() || self.header_length != Some(self.head.len()) {
            return;
        }
        let available = self.body_length.map(|n| n.saturating_sub(self.head.len()));
        self.binary = Some(parse_header(&self.head).map(|request| {
            let mut left = available;
            let mut unknown_length_capacity = UNKNOWN_LENGTH_CAPACITY;
            let mut buffers = Vec::new();
            for input in &request.inputs {
                let size = match (binary_size_of(input), left) {
                    (Ok(None), _) => continue,
                    (Ok(Some(size)), None) => size,
                    (Ok(Some(size)), Some(l)) if size <= l => size,
                    _ => break,
                };
                left = left.map(|l| l - size);
                let capacity = match available {
                    Some(_) => size,
                    None => {
                        let capacity = size.min(unknown_length_capacity);
                        unknown_length_capacity -= capacity;
                        capacity
                    }
                };
                buffers.push((size, Zeroizing::new(Vec::with_capacity(capacity))));
            }
            Receiving {
                request,
                buffers,
                current: 0,
                after: 0,
            }
        }));
        // The JSON part is parsed; its buffer is no longer needed.
        zeroize_in_bulk(&mut self.head);
    }

    /// The request, once the whole body is read.
    pub fn finish(self) -> Result<InferRequest, ProtocolError> {
        let limits = self.limits;
        match self.binary {
            None => match self.header_length {
                Some(n) => Err(short_header(n, self.received)),
                None => build_request(parse_header(&self.head)?, BinaryData::Body(&[]), &limits),
            },
            Some(Err(e)) => Err(e),
            Some(Ok(receiving)) => receiving.finish(&limits),
        }
    }
}

impl Receiving {
    fn push(&mut self, mut chunk: &[u8]) {
        loop {
            while self
                .buffers
                .get(self.current)
                .is_some_and(|(size, buffer)| buffer.len() == *size)
            {
                self.current += 1;
            }
            if chunk.is_empty() {
                return;
            }
            let Some((size, buffer)) = self.buffers.get_mut(self.current) else {
                self.after = self.after.saturating_add(chunk.len());
                return;
            };
            let wanted = (*size - buffer.len()).min(chunk.len());
            extend_zeroizing(buffer, &chunk[..wanted]);
            chunk = &chunk[wanted..];
        }
    }

    /// The request, checked by [`build_request`] as the whole body is: a buffer the body ended
    /// in, a claim without a buffer and bytes after the buffers are refused there, in the order
    /// of the inputs.
    fn finish(self, limits: &Limits) -> Result<InferRequest, ProtocolError> {
        let buffers = self.buffers.into_iter().map(|(_, b)| b).collect();
        let binary = BinaryData::Cut {
            buffers,
            after: self.after,
        };
        build_request(self.request, binary, limits)
    }
}

fn unclaimed(bytes: usize) -> ProtocolError {
    err(format!(
        "{bytes} bytes of binary data follow the inputs that no input claims"
    ))
}

fn build_request(
    request: RequestJson,
    mut binary: BinaryData<'_>,
    limits: &Limits,
) -> Result<InferRequest, ProtocolError> {
    let id = match request.id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(err("'id' must be a string")),
    };
    let binary_output =
        bool_parameter(&request.parameters, "binary_data_output", "request")?.unwrap_or(false);
    if request.inputs.is_empty() {
        return Err(err("the request has no inputs"));
    }
    let mut total = 0usize;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let name = input.name.clone();
        let tensor = parse_input(input, &mut binary, limits)?;
        total = total.saturating_add(tensor.len());
        if total > limits.max_total_elements {
            return Err(err(format!(
                "the request has more than {} elements in all",
                limits.max_total_elements
            )));
        }
        inputs.push((name, tensor));
    }
    if binary.left() > 0 {
        return Err(unclaimed(binary.left()));
    }
    let outputs = request
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let binary = bool_parameter(
                &o.parameters,
                "binary_data",
                &format!("output '{}'", o.name),
            )?;
            Ok(RequestedOutput {
                name: o.name,
                binary,
            })
        })
        .collect::<Result<Vec<_>, ProtocolError>>()?;
    Ok(InferRequest {
        id,
        inputs,
        outputs,
        binary_output,
    })
}

fn parse_input(
    input: InputJson,
    binary: &mut BinaryData<'_>,
    limits: &Limits,
) -> Result<Tensor, ProtocolError> {
    let name = &input.name;
    let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
        err(format!(
            "input '{name}': unknown datatype '{}' (BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)",
            input.datatype
        ))
    })?;
    let shape = input
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| {
            err(format!(
                "input '{name}': shape {:?} has a negative dimension",
                input.shape
            ))
        })?;
    let count = element_count(&shape)
        .filter(|&n| n <= limits.max_elements)
        .ok_or_else(|| {
            err(format!(
                "input '{name}': shape {shape:?} has more than {} elements",
                limits.max_elements
            ))
        })?;
    let binary_size = binary_size_of(&input)?;
    let tensor_error = |e: TensorError| err(format!("input '{name}': {e}"));
    match (binary_size, input.data) {
        (Some(_), Some(_)) => Err(err(format!(
            "input '{name}' has both 'data' and 'binary_data_size'"
        ))),
        (None, None) => Err(err(format!("input '{name}' has no 'data'"))),
        (Some(size), None) => {
            let left = binary.left();
            let bytes = binary
                .take(size)
                .ok_or_else(|| binary_left(name, size, left))?;
            if datatype == DataType::Bytes {
                let elements = split_length_prefixed(bytes.bytes()).ok_or_else(|| {
                    err(format!(
                        "input '{name}': BYTES data is not length-prefixed elements"
                    ))
                })?;
                Tensor::from_strings(shape, elements).map_err(tensor_error)
            } else {
                Tensor::from_le_bytes(datatype, shape, bytes.into_buffer()).map_err(tensor_error)
            }
        }
        (None, Some(data)) => {
            let mut flat = Vec::with_capacity(count.min(1 << 20));
            flatten(data, &mut flat, count).map_err(|e| err(format!("input '{name}': {e}")))?;
            if flat.len() != count {
                return Err(err(format!(
                    "input '{name}': shape {shape:?} needs {count} elements, 'data' has {}",
                    flat.len()
                )));
            }
            json_tensor(datatype, shape, &flat).map_err(|e| err(format!("input '{name}': {e}")))
        }
    }
}

/// Flattens nested arrays, row-major, refusing more than `max` elements.
fn flatten(value: Value, out: &mut Vec<Value>, max: usize) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            for item in items {
                flatten(item, out, max)?;
            }
            Ok(())
        }
        Value::Object(_) => Err("'data' must hold arrays of values, not objects".into()),
        scalar => {
            if out.len() == max {
                return Err(format!("'data' has more than the shape's {max} elements"));
            }
            out.push(scalar);
            Ok(())
        }
    }
}

fn split_length_prefixed(mut bytes: &[u8]) -> Option<Vec<Zeroizing<Vec<u8>>>> {
    let mut elements = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        if len > rest.len() {
            return None;
        }
        let (element, rest) = rest.split_at(len);
        elements.push(Zeroizing::new(element.to_vec()));
        bytes = rest;
    }
    Some(elements)
}

fn json_tensor(datatype: DataType, shape: Vec<usize>, values: &[Value]) -> Result<Tensor, String> {
    if datatype == DataType::Bytes {
        let elements = values
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(Zeroizing::new(s.as_bytes().to_vec())),
                _ => Err("BYTES elements must be strings".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Tensor::from_strings(shape, elements).map_err(|e| e.to_string());
    }
    let size = datatype.element_size().unwrap_or(1);
    let mut bytes = Zeroizing::new(Vec::with_capacity(values.len() * size));
    for value in values {
        push_le(datatype, value, &mut bytes)?;
    }
    Tensor::from_le_bytes(datatype, shape, bytes).map_err(|e| e.to_string())
}

fn push_le(datatype: DataType, value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    let out_of_range = || format!("a {datatype} element is not a number in its range");
    macro_rules! int {
        ($t:ty, $get:ident) => {{
            let v = value.$get().ok_or_else(out_of_range)?;
            let v = <$t>::try_from(v).map_err(|_| out_of_range())?;
            out.extend_from_slice(&v.to_le_bytes());
        }};
    }
    match datatype {
        DataType::Bool => {
            let b = match value {
                Value::Bool(b) => *b,
                Value::Number(n) if n.as_u64() == Some(0) => false,
                Value::Number(n) if n.as_u64() == Some(1) => true,
                _ => return Err("BOOL elements must be true or false".into()),
            };
            out.push(u8::from(b));
        }
        DataType::U8 => int!(u8, as_u64),
        DataType::U16 => int!(u16, as_u64),
        DataType::U32 => int!(u32, as_u64),
        DataType::U64 => int!(u64, as_u64),
        DataType::I8 => int!(i8, as_i64),
        DataType::I16 => int!(i16, as_i64),
        DataType::I32 => int!(i32, as_i64),
        DataType::I64 => int!(i64, as_i64),
        DataType::F16 => {
            let v = float(value).ok_or_else(out_of_range)?;
            out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes());
        }
        DataType::F32 => {
            let v = float(value).ok_or_else(out_of_range)?;
            // Narrowing to the tensor's precision is what the client asked for.
            #[allow(clippy::cast_possible_truncation)]
            out.extend_from_slice(&(v as f32).to_le_bytes());
        }
        DataType::F64 => {
            let v = float(value).ok_or_else(out_of_range)?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        DataType::Bytes => return Err("BYTES elements must be strings".into()),
    }
    Ok(())
}

/// A JSON number, or one of the strings "NaN", "Infinity", "-Infinity" (which JSON cannot carry).
fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" | "nan" => Some(f64::NAN),
            "Infinity" | "inf" => Some(f64::INFINITY),
            "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// An output to encode: its name, tensor, and whether it goes in binary.
#[derive(Debug)]
pub struct Output<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its value.
    pub tensor: &'a Tensor,
    /// Binary tensor extension, or JSON `data`.
    pub binary: bool,
}

/// An encoded infer response.
#[derive(Debug)]
pub struct EncodedResponse {
    /// The body: JSON, then the binary outputs in order.
    pub body: ZeroizedBytes,
    /// The JSON part's length, for `Inference-Header-Content-Length`, when any output is binary.
    pub header_length: Option<usize>,
}

/// Why an inference's outputs are not sent. Every message names the output or the limit, and the
/// setting that raises it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputLimitError {
    /// One output has more elements than an input may have.
    #[error(
        "output '{name}' has {elements} elements, over the limit of {limit} elements per tensor \
         (max_tensor_elements)"
    )]
    Elements {
        /// The output.
        name: String,
        /// Its element count.
        elements: usize,
        /// The limit.
        limit: usize,
    },
    /// The outputs together have more elements than a request's inputs may have.
    #[error("the outputs have {elements} elements in all, over the limit of {limit}")]
    TotalElements {
        /// Their element count.
        elements: usize,
        /// The limit.
        limit: usize,
    },
    /// The outputs together take more bytes than a request body may.
    #[error(
        "the outputs take {bytes} bytes (output '{largest}' the largest), over the limit of \
         {limit} bytes (max_request_bytes)"
    )]
    Bytes {
        /// The largest output.
        largest: String,
        /// Their size in bytes, as binary tensor data.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The response as JSON could be larger than the JSON limit.
    #[error(
        "the response as JSON could take up to {estimate} bytes, over the limit of {limit} bytes \
         (max_json_response_bytes); ask for binary outputs, the compact encoding: \
         \"parameters\": {{\"binary_data_output\": true}} on the request, or \
         \"parameters\": {{\"binary_data\": true}} on an output"
    )]
    JsonTooLarge {
        /// The upper bound of the JSON's size.
        estimate: usize,
        /// The limit.
        limit: usize,
    },
}

/// Checks the outputs about to be encoded against the limits inputs have (elements per tensor and
/// in all, `max_bytes` of tensor data), and bounds the JSON part of the response by
/// `max_json_bytes` before it is built. The JSON size is an upper bound computed from element
/// counts ([`json_size_bound`]), so a response that passes never builds a larger string.
pub fn check_outputs(
    outputs: &[Output<'_>],
    limits: &Limits,
    max_bytes: usize,
    max_json_bytes: usize,
    overhead: usize,
) -> Result<(), OutputLimitError> {
    let mut elements = 0usize;
    let mut bytes = 0usize;
    let mut largest: Option<(&str, usize)> = None;
    let mut json = overhead;
    for output in outputs {
        let count = output.tensor.len();
        if count > limits.max_elements {
            return Err(OutputLimitError::Elements {
                name: output.name.to_owned(),
                elements: count,
                limit: limits.max_elements,
            });
        }
        elements = elements.saturating_add(count);
        let size = binary_size(output.tensor);
        bytes = bytes.saturating_add(size);
        if largest.is_none_or(|(_, n)| size > n) {
            largest = Some((output.name, size));
        }
        json = json.saturating_add(json_size_bound(output));
    }
    if elements > limits.max_total_elements {
        return Err(OutputLimitError::TotalElements {
            elements,
            limit: limits.max_total_elements,
        });
    }
    if bytes > max_bytes {
        return Err(OutputLimitError::Bytes {
            largest: largest.map_or_else(String::new, |(name, _)| name.to_owned()),
            bytes,
            limit: max_bytes,
        });
    }
    if json > max_json_bytes {
        return Err(OutputLimitError::JsonTooLarge {
            estimate: json,
            limit: max_json_bytes,
        });
    }
    Ok(())
}

/// A tensor's size as binary tensor data: its bytes, and for `BYTES` a 4-byte length per element.
fn binary_size(tensor: &Tensor) -> usize {
    match tensor.data() {
        TensorData::Fixed(bytes) => bytes.len(),
        TensorData::Bytes(elements) => elements
            .iter()
            .fold(0usize, |n, e| n.saturating_add(e.len()).saturating_add(4)),
    }
}

/// The most bytes an element of `datatype` takes in JSON, with its separating comma. Floats are
/// written by serde_json's shortest round-trip form: an f64 takes at most 24 characters
/// (`-2.2250738585072014e-308`), an FP32 value (at most 9 significant digits, see [`JsonData`])
/// at most 19 (`-1234567900000000.0`), an FP16 value at most 15 (`-0.000061035156`); the strings
/// for non-finite values are shorter (`"-Infinity"`).
fn json_element_bound(datatype: DataType) -> usize {
    match datatype {
        DataType::Bool => 6,
        DataType::U8 => 4,
        DataType::I8 => 5,
        DataType::U16 => 6,
        DataType::I16 => 7,
        DataType::U32 => 11,
        DataType::I32 => 12,
        DataType::U64 | DataType::I64 => 21,
        DataType::F16 => 16,
        DataType::F32 => 20,
        DataType::F64 => 25,
        // Counted per byte by the caller.
        DataType::Bytes => 3,
    }
}

/// Room for one output's name, data type and shape, and for the response's own fields, beyond
/// what names and shapes add.
const JSON_OUTPUT_OVERHEAD: usize = 96;

/// An upper bound of the bytes one output adds to the response's JSON, from its element count
/// (and for `BYTES`, its element lengths), without encoding it.
pub fn json_size_bound(output: &Output<'_>) -> usize {
    // A name is escaped at most 6 bytes per byte (`\u001f`); a dimension is at most 20 digits.
    let tensor = output.tensor;
    let fixed = JSON_OUTPUT_OVERHEAD
        .saturating_add(output.name.len().saturating_mul(6))
        .saturating_add(tensor.shape().len().saturating_mul(21));
    if output.binary {
        // `"parameters":{"binary_data_size":N}` instead of the data.
        return fixed.saturating_add(64);
    }
    let data = match tensor.data() {
        // Quotes and comma, then each byte escaped (`\u0000`) or replaced (U+FFFD, 3 bytes) in
        // at most 6 bytes.
        TensorData::Bytes(elements) => elements.iter().fold(0usize, |n, e| {
            n.saturating_add(json_element_bound(DataType::Bytes))
                .saturating_add(e.len().saturating_mul(6))
        }),
        TensorData::Fixed(_) => tensor
            .len()
            .saturating_mul(json_element_bound(tensor.datatype())),
    };
    fixed.saturating_add(data)
}

/// An upper bound of the bytes the response's own fields take in JSON: the model's name and
/// version and the request id, each escaped at most 6 bytes per byte.
pub fn json_response_overhead(model_name: &str, model_version: &str, id: Option<&str>) -> usize {
    let text = model_name.len() + model_version.len() + id.map_or(0, str::len);
    JSON_OUTPUT_OVERHEAD.saturating_add(text.saturating_mul(6))
}

/// Encodes an infer response into one zeroized buffer: the JSON part written in place (no value
/// tree of the outputs), then each binary output copied once, after it. The buffer is sized before
/// anything is written; if the JSON outgrows its estimate, every buffer it leaves is zeroized
/// ([`reserve_zeroizing`]).
pub fn encode_response(
    model_name: &str,
    model_version: &str,
    id: Option<&str>,
    outputs: &[Output<'_>],
) -> EncodedResponse {
    let binary_bytes = outputs
        .iter()
        .filter(|o| o.binary)
        .fold(0usize, |n, o| n.saturating_add(binary_size(o.tensor)));
    let json_estimate = outputs.iter().fold(
        json_response_overhead(model_name, model_version, id),
        |n, o| n.saturating_add(json_size_estimate(o)),
    );
    let mut body = Zeroizing::new(Vec::with_capacity(
        json_estimate.saturating_add(binary_bytes),
    ));
    let response = ResponseJson {
        id,
        model_name,
        model_version,
        outputs: outputs
            .iter()
            .map(|o| OutputJsonOut {
                name: o.name,
                datatype: o.tensor.datatype().as_str(),
                shape: o.tensor.shape(),
                parameters: o.binary.then(|| BinaryParameters {
                    binary_data_size: binary_size(o.tensor),
                }),
                data: (!o.binary).then_some(JsonData(o.tensor)),
            })
            .collect(),
    };
    // Writing into memory fails only where serialising does, which these types never do.
    let _ = serde_json::to_writer(ZeroizingWriter(&mut body), &response);
    let any_binary = outputs.iter().any(|o| o.binary);
    let header_length = any_binary.then_some(body.len());
    reserve_zeroizing(&mut body, binary_bytes);
    for output in outputs.iter().filter(|o| o.binary) {
        match output.tensor.data() {
            TensorData::Fixed(bytes) => body.extend_from_slice(bytes),
            TensorData::Bytes(elements) => {
                for e in elements {
                    let len = u32::try_from(e.len()).unwrap_or(u32::MAX);
                    body.extend_from_slice(&len.to_le_bytes());
                    body.extend_from_slice(e);
                }
            }
        }
    }
    EncodedResponse {
        body: ZeroizedBytes::new(body),
        header_length,
    }
}

/// Bytes zeroized in bulk when dropped: request and response bodies. A `Zeroizing<Vec<u8>>`
/// alone zeroizes a vector's bytes one volatile write at a time, about a millisecond for 4 MiB;
/// this zeroizes them as a slice, one `memset` behind an optimisation barrier (`zeroize`'s
/// implementation for `[u8]`), and the spare capacity the same way.
pub struct ZeroizedBytes(Zeroizing<Vec<u8>>);

impl ZeroizedBytes {
    /// Takes a zeroized buffer.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> ZeroizedBytes {
        ZeroizedBytes(bytes)
    }
}

impl std::ops::Deref for ZeroizedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for ZeroizedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ZeroizedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ZeroizedBytes(<{} bytes>)", self.0.len())
    }
}

impl Drop for ZeroizedBytes {
    fn drop(&mut self) {
        zeroize_in_bulk(&mut self.0);
    }
}

/// Zeroizes a buffer in bulk ([`ZeroizedBytes`]), its bytes and its spare capacity, each byte
/// once, and frees it: the buffer is left empty, without an allocation.
pub fn zeroize_in_bulk(buffer: &mut Zeroizing<Vec<u8>>) {
    let mut bytes = std::mem::take(&mut **buffer);
    bytes.spare_capacity_mut().zeroize();
    bytes.as_mut_slice().zeroize();
}

/// Makes room for `additional` more bytes in a zeroized buffer. A `Vec` that grows by itself
/// frees its old allocation as it is, with the data in it; this one copies into a larger buffer
/// and zeroizes the old one.
pub fn reserve_zeroizing(buffer: &mut Zeroizing<Vec<u8>>, additional: usize) {
    let needed = buffer.len().saturating_add(additional);
    if needed <= buffer.capacity() {
        return;
    }
    let capacity = needed.max(buffer.capacity().saturating_mul(2));
    let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
    grown.extend_from_slice(buffer);
    std::mem::swap(buffer, &mut grown);
    // `grown` is now the old buffer.
    zeroize_in_bulk(&mut grown);
}

/// Appends `bytes` to a zeroized buffer, growing it as [`reserve_zeroizing`] does.
pub fn extend_zeroizing(buffer: &mut Zeroizing<Vec<u8>>, bytes: &[u8]) {
    reserve_zeroizing(buffer, bytes.len());
    buffer.extend_from_slice(bytes);
}

/// `io::Write` into a zeroized buffer that grows as [`reserve_zeroizing`] does.
struct ZeroizingWriter<'a>(&'a mut Zeroizing<Vec<u8>>);

impl std::io::Write for ZeroizingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        extend_zeroizing(self.0, bytes);
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        extend_zeroizing(self.0, bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A likely size of one output's JSON, to size the response's buffer: the bound for binary
/// outputs and `BYTES`, and for numbers a typical width rather than the widest (a float is
/// usually 10 to 12 characters, not 20), so that a large JSON output does not reserve twice its
/// size. A response that is larger grows its buffer once or twice.
fn json_size_estimate(output: &Output<'_>) -> usize {
    if output.binary || output.tensor.datatype() == DataType::Bytes {
        return json_size_bound(output);
    }
    let per_element = json_element_bound(output.tensor.datatype()).min(12);
    JSON_OUTPUT_OVERHEAD
        .saturating_add(output.name.len())
        .saturating_add(output.tensor.shape().len().saturating_mul(4))
        .saturating_add(output.tensor.len().saturating_mul(per_element))
}

#[derive(serde::Serialize)]
struct ResponseJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    model_name: &'a str,
    model_version: &'a str,
    outputs: Vec<OutputJsonOut<'a>>,
}

#[derive(serde::Serialize)]
struct OutputJsonOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(serde::Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

/// A tensor's elements as a flat JSON array, written straight from its bytes. Floats take their
/// shortest round-trip form in their own precision (0.1f32 is `0.1`, not `0.10000000149011612`,
/// as clients expect of FP32 and FP16 outputs); non-finite ones are the strings `"NaN"`,
/// `"Infinity"` and `"-Infinity"`, which JSON numbers cannot carry.
struct JsonData<'a>(&'a Tensor);

impl serde::Serialize for JsonData<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq as _;
        let tensor = self.0;
        let mut seq = serializer.serialize_seq(Some(tensor.len()))?;
        let bytes = match tensor.data() {
            TensorData::Bytes(elements) => {
                for e in elements {
                    seq.serialize_element(&String::from_utf8_lossy(e))?;
                }
                return seq.end();
            }
            TensorData::Fixed(bytes) => bytes,
        };
        macro_rules! each {
            ($n:literal, $f:expr) => {
                for c in bytes.chunks_exact($n) {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    $f(&mut seq, a)?;
                }
            };
        }
        fn float<Q: serde::ser::SerializeSeq>(seq: &mut Q, v: f32) -> Result<(), Q::Error> {
            match non_finite(f64::from(v)) {
                Some(name) => seq.serialize_element(name),
                None => seq.serialize_element(&v),
            }
        }
        match tensor.datatype() {
            DataType::Bool => each!(1, |s: &mut S::SerializeSeq, a: [u8; 1]| s
                .serialize_element(&(a[0] != 0))),
            DataType::U8 => each!(1, |s: &mut S::SerializeSeq, a| s
                .serialize_element(&u8::from_le_bytes(a))),
            DataType::I8 => each!(1, |s: &mut S::SerializeSeq, a| s
                .serialize_element(&i8::from_le_bytes(a))),
            DataType::U16 => each!(2, |s: &mut S::SerializeSeq, a| s
                .serialize_element(&u16::from_le_bytes(a))),
            DataType::I16 => each!(2, |s: &mut S::SerializeSeq, a| s
                .serialize_element(&i16::from_le_bytes(a))),
            DataType::F16 => each!(2, |s: &mut S::SerializeSeq, a| float(
                s,
                half::f16::from_le_bytes(a).to_f32()
            )),
            DataType::U32 => each!(4, |s: &mut S::SerializeSeq, a| s
                .serialize_element(&u32::from_le_bytes(a))),
            DataType::I32 => each!(4, |s: &mut S::SerializeSeq, a| s
                .serialize_element(&i32::from_le_bytes(a))),
            DataType::F32 => each!(4, |s: &mut S::SerializeSeq, a| float(
                s,
                f32::from_le_bytes(a)
            )),
            DataType::U64 => each!(8, |s: &mut S::SerializeSeq, a| s
                .serialize_element(&u64::from_le_bytes(a))),
            DataType::I64 => each!(8, |s: &mut S::SerializeSeq, a| s
                .serialize_element(&i64::from_le_bytes(a))),
            DataType::F64 => each!(8, |s: &mut S::SerializeSeq, a| {
                let v = f64::from_le_bytes(a);
                match non_finite(v) {
                    Some(name) => s.serialize_element(name),
                    None => s.serialize_element(&v),
                }
            }),
            DataType::Bytes => {}
        }
        seq.end()
    }
}

/// The string JSON carries a non-finite float as, or `None` for a finite one.
fn non_finite(v: f64) -> Option<&'static str> {
    if v.is_finite() {
        None
    } else if v.is_nan() {
        Some("NaN")
    } else if v > 0.0 {
        Some("Infinity")
    } else {
        Some("-Infinity")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn nested_and_flat_json_give_the_same_tensor() {
        let flat = br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#;
        let nested = br#"{"id":"r1","extra":1,"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]}"#;
        let a = parse_request(flat, None, &limits()).unwrap();
        let b = parse_request(nested, None, &limits()).unwrap();
        assert_eq!(a.inputs[0].1, b.inputs[0].1);
        assert_eq!(b.id.as_deref(), Some("r1"));
    }

    #[test]
    fn binary_inputs_are_read_after_the_header() {
        let header = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&7i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        let r = parse_request(&body, Some(header.len()), &limits()).unwrap();
        let TensorData::Fixed(bytes) = r.inputs[0].1.data() else {
            panic!()
        };
        assert_eq!(&bytes[..4], &7i32.to_le_bytes());
    }

    #[test]
    fn binary_length_disagreeing_with_the_header_is_refused() {
        let header = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[0u8; 4]);
        let e = parse_request(&body, Some(header.len()), &limits()).unwrap_err();
        assert!(e.0.contains("binary_data_size is 8"), "{e}");
        body.extend_from_slice(&[0u8; 8]);
        let e = parse_request(&body, Some(header.len()), &limits()).unwrap_err();
        assert!(e.0.contains("no input claims"), "{e}");
        let e = parse_request(&body, Some(body.len() + 1), &limits()).unwrap_err();
        assert!(e.0.contains("Inference-Header-Content-Length"), "{e}");
    }

    /// A body read by [`RequestReader`] in chunks of `chunk` bytes.
    fn read_in_chunks(
        body: &[u8],
        header_length: Option<usize>,
        body_length: Option<usize>,
        chunk: usize,
    ) -> Result<InferRequest, ProtocolError> {
        let mut reader = RequestReader::new(header_length, body_length, limits());
        for piece in body.chunks(chunk) {
            reader.push(piece);
        }
        reader.finish()
    }

    #[test]
    fn a_body_read_in_chunks_gives_what_the_whole_body_gives() {
        let header = br#"{"id":"r","inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"j","shape":[1],"datatype":"FP32","data":[0.5]},{"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":11}},{"name":"e","shape":[0],"datatype":"FP32","parameters":{"binary_data_size":0}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&7i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(b"hi");
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(b"!");
        let whole = parse_request(&body, Some(header.len()), &limits()).unwrap();
        let json =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]}"#;
        let whole_json = parse_request(json, None, &limits()).unwrap();
        for chunk in [1, 3, 7, 64, body.len()] {
            for length in [Some(body.len()), None] {
                let read = read_in_chunks(&body, Some(header.len()), length, chunk).unwrap();
                assert_eq!(read.inputs, whole.inputs, "chunks of {chunk}");
                assert_eq!(read.id, whole.id);
                assert_eq!(read.outputs, whole.outputs);
                let read = read_in_chunks(json, None, length.map(|_| json.len()), chunk).unwrap();
                assert_eq!(read.inputs, whole_json.inputs);
            }
        }
    }

    #[test]
    fn a_body_read_in_chunks_is_refused_as_the_whole_body_is() {
        let header = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]}"#;
        let short = [header.as_slice(), &[0u8; 4]].concat();
        let long = [header.as_slice(), &[0u8; 12]].concat();
        for chunk in [1, 5, 4096] {
            // Shorter than claimed: known from the body's length as soon as the header is read,
            // or at the end.
            for length in [Some(short.len()), None] {
                let e = read_in_chunks(&short, Some(header.len()), length, chunk).unwrap_err();
                assert!(
                    e.0.contains("input 'x': binary_data_size is 8 but only 4 bytes"),
                    "{e}"
                );
            }
            let e = read_in_chunks(&long, Some(header.len()), None, chunk).unwrap_err();
            assert!(e.0.contains("4 bytes of binary data follow"), "{e}");
            let e = read_in_chunks(&short, Some(short.len() + 1), None, chunk).unwrap_err();
            assert!(e.0.contains("Inference-Header-Content-Length"), "{e}");
            let e = read_in_chunks(b"{\"inputs\":", None, None, chunk).unwrap_err();
            assert!(e.0.contains("not a valid infer request"), "{e}");
        }
        // A claim larger than the body is refused before anything is allocated for it.
        let huge = br#"{"inputs":[{"name":"x","shape":[16777216],"datatype":"FP64","parameters":{"binary_data_size":134217728}}]}"#;
        let mut reader = RequestReader::new(Some(huge.len()), Some(huge.len() + 8), limits());
        reader.push(huge);
        reader.push(&[0u8; 8]);
        let e = reader.finish().unwrap_err();
        assert!(
            e.0.contains("binary_data_size is 134217728 but only 8 bytes"),
            "{e}"
        );
        // Errors in the inputs themselves are the whole body's.
        let bad = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"BF16","parameters":{"binary_data_size":4}}]}"#;
        let body = [bad.as_slice(), &[0u8; 4]].concat();
        let e = read_in_chunks(&body, Some(bad.len()), Some(body.len()), 3).unwrap_err();
        assert_eq!(
            e,
            parse_request(&body, Some(bad.len()), &limits()).unwrap_err()
        );
    }

    /// Errors found while reading in chunks (bytes no input claims, a claim larger than the
    /// body, a claim that is not a byte count) come after the errors of the inputs before them,
    /// as when the body is read whole. The first body is what the fuzz target `infer_chunked`
    /// found: an input whose `parameters` key is misspelt, so that its bytes are unclaimed.
    #[test]
    fn a_body_read_in_chunks_gives_the_error_the_whole_body_gives_first() {
        let misspelt = br#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","rpaameters":{"binary_data_size":16}}]}"#;
        let too_large = br#"{"id":7,"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":80}}]}"#;
        let after_bad_type = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"BF16","parameters":{"binary_data_size":4}},{"name":"b","shape":[1],"datatype":"INT32","parameters":{"binary_data_size":"four"}}]}"#;
        let after_bad_bytes = br#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":4}},{"name":"b","shape":[1],"datatype":"INT32","parameters":{"binary_data_size":400}}]}"#;
        for (header, expected) in [
            (misspelt.as_slice(), "input 'x' has no 'data'"),
            (too_large, "'id' must be a string"),
            (after_bad_type, "input 'a': unknown datatype 'BF16'"),
            (
                after_bad_bytes,
                "input 's': BYTES data is not length-prefixed elements",
            ),
        ] {
            let body = [header, &[9u8; 16]].concat();
            let whole = parse_request(&body, Some(header.len()), &limits()).unwrap_err();
            assert!(whole.0.starts_with(expected), "{whole}");
            for chunk in [1, 7, body.len()] {
                for length in [Some(body.len()), None] {
                    let e = read_in_chunks(&body, Some(header.len()), length, chunk).unwrap_err();
                    assert_eq!(e, whole, "chunks of {chunk}, length {length:?}");
                }
            }
        }
    }

    /// The header lengths are the client's: without a body length, the reader's first buffer
    /// does not take the size they claim.
    #[test]
    fn a_huge_header_length_without_a_body_length_is_refused_without_allocating_it() {
        for header_length in [usize::MAX, 1 << 40] {
            let mut reader = RequestReader::new(Some(header_length), None, limits());
            reader.push(b"{\"inputs\":[]}");
            let e = reader.finish().unwrap_err();
            assert!(
                e.0.contains(&format!(
                    "Inference-Header-Content-Length is {header_length} but the body has only 13 bytes"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn wrong_counts_types_and_ranges_name_the_input() {
        for (body, needle) in [
            (
                r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
                "needs 3",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#,
                "more than",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[256]}]}"#,
                "range",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BF16","data":[1]}]}"#,
                "unknown datatype",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
                "negative",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":[2]}]}"#,
                "true or false",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
                "no 'data'",
            ),
        ] {
            let e = parse_request(body.as_bytes(), None, &limits()).unwrap_err();
            assert!(e.0.contains("'x'") && e.0.contains(needle), "{body}: {e}");
        }
        let huge =
            r#"{"inputs":[{"name":"x","shape":[100000,100000],"datatype":"FP32","data":[]}]}"#;
        assert!(parse_request(huge.as_bytes(), None, &limits()).is_err());
        assert!(parse_request(b"{\"inputs\":", None, &limits()).is_err());
        assert!(parse_request(b"{\"inputs\":[]}", None, &limits()).is_err());
    }

    /// The widest values of each type: the JSON bound must hold for them.
    // The literals are the decimals whose JSON length is tested, not the nearest floats.
    #[allow(clippy::excessive_precision)]
    fn widest(datatype: DataType) -> Tensor {
        let bytes: Vec<u8> = match datatype {
            DataType::Bool => vec![0, 1],
            DataType::U8 => vec![255],
            DataType::I8 => (-128i8).to_le_bytes().to_vec(),
            DataType::U16 => u16::MAX.to_le_bytes().to_vec(),
            DataType::I16 => i16::MIN.to_le_bytes().to_vec(),
            DataType::U32 => u32::MAX.to_le_bytes().to_vec(),
            DataType::I32 => i32::MIN.to_le_bytes().to_vec(),
            DataType::U64 => u64::MAX.to_le_bytes().to_vec(),
            DataType::I64 => i64::MIN.to_le_bytes().to_vec(),
            DataType::F16 => [-6.1035156e-5f32, -65504.0, -5.9604645e-8, f32::NEG_INFINITY]
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            DataType::F32 => [
                -1.234_567_9e15f32,
                -1.234_567_9e-5,
                -1.175_494_4e-38,
                -1.401e-45,
                f32::MIN,
                f32::NAN,
            ]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
            DataType::F64 => [
                -2.225_073_858_507_201_4e-308f64,
                -1.234_567_890_123_456_7e-5,
                f64::MIN,
            ]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
            DataType::Bytes => {
                let elements = vec![Zeroizing::new(vec![0u8, 0x1f, 0xff, b'"'])];
                return Tensor::from_strings(vec![1], elements).unwrap();
            }
        };
        let n = bytes.len() / datatype.element_size().unwrap();
        Tensor::from_le_bytes(datatype, vec![n], Zeroizing::new(bytes)).unwrap()
    }

    #[test]
    fn the_json_bound_holds_for_the_widest_values_of_every_type() {
        for datatype in DataType::ALL {
            let tensor = widest(datatype);
            let output = Output {
                name: "y\u{1}",
                tensor: &tensor,
                binary: false,
            };
            let encoded = encode_response("m\"", "1", Some("r"), std::slice::from_ref(&output));
            let bound = json_size_bound(&output) + json_response_overhead("m\"", "1", Some("r"));
            assert!(
                encoded.body.len() <= bound,
                "{datatype}: {} bytes, bound {bound}",
                encoded.body.len()
            );
            let data = serde_json::to_vec(&JsonData(&tensor)).unwrap();
            assert!(
                data.len() <= tensor.len() * json_element_bound(datatype) + 6 * tensor.byte_len(),
                "{datatype}: {}",
                String::from_utf8_lossy(&data)
            );
        }
    }

    #[test]
    fn outputs_are_checked_against_every_limit() {
        let t = Tensor::from_le_bytes(DataType::F32, vec![2, 50], Zeroizing::new(vec![0; 400]))
            .unwrap();
        let output = |binary| Output {
            name: "y",
            tensor: &t,
            binary,
        };
        let limits = |max_elements, max_total_elements| Limits {
            max_elements,
            max_total_elements,
        };
        let check = |outputs: &[Output<'_>], l: Limits, bytes, json| {
            check_outputs(outputs, &l, bytes, json, 0)
        };
        assert_eq!(check(&[output(false)], limits(100, 100), 400, 2200), Ok(()));
        assert!(matches!(
            check(&[output(false)], limits(99, 1000), 400, 1 << 20),
            Err(OutputLimitError::Elements {
                elements: 100,
                limit: 99,
                ..
            })
        ));
        assert!(matches!(
            check(
                &[output(true), output(true)],
                limits(100, 150),
                1 << 20,
                1 << 20
            ),
            Err(OutputLimitError::TotalElements {
                elements: 200,
                limit: 150
            })
        ));
        assert!(matches!(
            check(&[output(true)], limits(100, 100), 399, 1 << 20),
            Err(OutputLimitError::Bytes {
                bytes: 400,
                limit: 399,
                ..
            })
        ));
        let e = check(&[output(false)], limits(100, 100), 400, 1000).unwrap_err();
        assert!(matches!(
            e,
            OutputLimitError::JsonTooLarge { limit: 1000, .. }
        ));
        assert!(e.to_string().contains("binary_data_output"), "{e}");
        // In binary, the same output passes the JSON bound.
        assert_eq!(check(&[output(true)], limits(100, 100), 400, 1000), Ok(()));
    }

    #[test]
    fn json_floats_take_their_shortest_form_and_non_finite_ones_are_strings() {
        let f32s = Tensor::from_le_bytes(
            DataType::F32,
            vec![4],
            Zeroizing::new(
                [0.1f32, 1e-7, f32::NAN, f32::NEG_INFINITY]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
        )
        .unwrap();
        let f16s = Tensor::from_le_bytes(
            DataType::F16,
            vec![2],
            Zeroizing::new(
                [half::f16::from_f32(0.5), half::f16::INFINITY]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
        )
        .unwrap();
        let outputs = [
            Output {
                name: "a",
                tensor: &f32s,
                binary: false,
            },
            Output {
                name: "b",
                tensor: &f16s,
                binary: false,
            },
        ];
        let encoded = encode_response("m", "1", None, &outputs);
        let text = String::from_utf8(encoded.body.to_vec()).unwrap();
        assert!(
            text.contains(r#""data":[0.1,1e-7,"NaN","-Infinity"]"#),
            "{text}"
        );
        assert!(text.contains(r#""data":[0.5,"Infinity"]"#), "{text}");
        assert_eq!(encoded.header_length, None);
    }

    #[test]
    fn a_response_larger_than_its_estimate_is_whole() {
        // The widest f64 values take twice the estimate's width per element: the buffer grows.
        let values: Vec<f64> = (0..1000)
            .map(|i| -1.234_567_890_123_456_7e-300 * f64::from(i))
            .collect();
        let t = Tensor::from_le_bytes(
            DataType::F64,
            vec![1000],
            Zeroizing::new(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        )
        .unwrap();
        let binary =
            Tensor::from_le_bytes(DataType::U8, vec![3], Zeroizing::new(vec![1, 2, 3])).unwrap();
        let encoded = encode_response(
            "m",
            "1",
            None,
            &[
                Output {
                    name: "json",
                    tensor: &t,
                    binary: false,
                },
                Output {
                    name: "bin",
                    tensor: &binary,
                    binary: true,
                },
            ],
        );
        let n = encoded.header_length.unwrap();
        let v: Value = serde_json::from_slice(&encoded.body[..n]).unwrap();
        let data: Vec<f64> = v["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        // serde_json reads floats back to within an ulp, not always exactly.
        assert_eq!(data.len(), values.len());
        assert!(data
            .iter()
            .zip(&values)
            .all(|(a, b)| (a - b).abs() <= b.abs() * 1e-15));
        assert_eq!(&encoded.body[n..], &[1, 2, 3]);
    }

    #[test]
    fn zeroizing_buffers_grow_with_their_contents() {
        let mut buffer = Zeroizing::new(Vec::with_capacity(2));
        extend_zeroizing(&mut buffer, b"ab");
        let capacity = buffer.capacity();
        extend_zeroizing(&mut buffer, b"cde");
        assert_eq!(&buffer[..], b"abcde");
        assert!(buffer.capacity() >= 5 && buffer.capacity() > capacity);
        reserve_zeroizing(&mut buffer, 100);
        assert!(buffer.capacity() >= 105);
        assert_eq!(&buffer[..], b"abcde");
        zeroize_in_bulk(&mut buffer);
        assert!(buffer.is_empty());
        let bytes = ZeroizedBytes::new(Zeroizing::new(b"secret".to_vec()));
        assert_eq!(&*bytes, b"secret");
        assert_eq!(format!("{bytes:?}"), "ZeroizedBytes(<6 bytes>)");
    }

    #[test]
    fn responses_carry_json_and_binary_outputs() {
        let t = Tensor::from_le_bytes(
            DataType::F32,
            vec![2],
            Zeroizing::new([1.5f32.to_le_bytes(), f32::NAN.to_le_bytes()].concat()),
        )
        .unwrap();
        let json = encode_response(
            "m",
            "1",
            Some("id7"),
            &[Output {
                name: "y",
                tensor: &t,
                binary: false,
            }],
        );
        assert_eq!(json.header_length, None);
        let v: Value = serde_json::from_slice(&json.body).unwrap();
        assert_eq!(v["id"], "id7");
        assert_eq!(v["outputs"][0]["data"], serde_json::json!([1.5, "NaN"]));
        let bin = encode_response(
            "m",
            "1",
            None,
            &[Output {
                name: "y",
                tensor: &t,
                binary: true,
            }],
        );
        let n = bin.header_length.unwrap();
        assert_eq!(bin.body.len(), n + 8);
        let v: Value = serde_json::from_slice(&bin.body[..n]).unwrap();
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
    }
}
