//! Tensors as the Open Inference Protocol's binary tensor extension carries them, and their JSON
//! forms (`docs/server.md`, "Infer").

use std::fmt;

use base64::Engine as _;
use serde_json::Value;
use zeroize::Zeroizing;

/// Why a tensor's bytes or JSON do not make a tensor; the caller names the tensor.
pub(crate) type TensorResult<T> = std::result::Result<T, String>;

/// One named tensor: little-endian, row-major bytes, as the binary tensor extension carries them.
/// `BYTES` tensors hold each element as a 4-byte little-endian length and the bytes.
///
/// The data is zeroized on drop, and `Debug` prints its length only: inputs and outputs are the
/// caller's secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct InferTensor {
    /// The input or output name the model declares.
    pub name: String,
    /// The protocol's data type: `BOOL`, `UINT8` .. `UINT64`, `INT8` .. `INT64`, `FP16`, `FP32`,
    /// `FP64` or `BYTES`.
    pub datatype: String,
    /// The shape; the element count is its product.
    pub shape: Vec<usize>,
    /// The elements' bytes.
    pub data: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for InferTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InferTensor")
            .field("name", &self.name)
            .field("datatype", &self.datatype)
            .field("shape", &self.shape)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

/// The size of one element of a fixed-size data type; `None` for `BYTES` and unknown types.
pub fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" | "FP16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        _ => return None,
    })
}

fn known_datatype(datatype: &str) -> bool {
    element_size(datatype).is_some() || datatype == "BYTES"
}

impl InferTensor {
    /// A tensor from its parts; [`InferTensor::check`] says whether they agree.
    pub fn new(
        name: impl Into<String>,
        datatype: impl Into<String>,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) -> Self {
        Self {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            data: Zeroizing::new(data),
        }
    }

    /// The number of elements (the product of the shape), if it does not overflow.
    pub fn element_count(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |count, dim| count.checked_mul(*dim))
    }

    /// Checks that the data holds exactly the elements the shape says, in the data type's layout.
    pub fn check(&self) -> std::result::Result<(), String> {
        let count = self
            .element_count()
            .ok_or_else(|| format!("the shape {:?} is too large", self.shape))?;
        match element_size(&self.datatype) {
            Some(size) => {
                let expected = count
                    .checked_mul(size)
                    .ok_or_else(|| format!("the shape {:?} is too large", self.shape))?;
                if self.data.len() != expected {
                    return Err(format!(
                        "shape {:?} of {} needs {expected} bytes; the data has {}",
                        self.shape,
                        self.datatype,
                        self.data.len()
                    ));
                }
                Ok(())
            }
            None if self.datatype == "BYTES" => {
                let found = bytes_elements(&self.data)?.len();
                if found != count {
                    return Err(format!(
                        "shape {:?} has {count} elements; the BYTES data holds {found}",
                        self.shape
                    ));
                }
                Ok(())
            }
            None => Err(format!("`{}` is not a data type", self.datatype)),
        }
    }

    /// A tensor from JSON data: a flat array (with `shape`) or a nested, row-major array whose
    /// nesting is the shape (with `shape` `None`). Numbers must fit the data type; floats may be
    /// the strings `"NaN"`, `"Infinity"` and `"-Infinity"`; `BYTES` elements are strings.
    pub fn from_json(
        name: &str,
        datatype: &str,
        shape: Option<Vec<usize>>,
        data: &Value,
    ) -> std::result::Result<Self, String> {
        if !known_datatype(datatype) {
            return Err(format!("`{datatype}` is not a data type"));
        }
        let nested_shape = nested_shape(data)?;
        let mut leaves = Vec::new();
        flatten(data, &mut leaves);
        let shape = match shape {
            Some(shape) => {
                let count = shape
                    .iter()
                    .try_fold(1usize, |count, dim| count.checked_mul(*dim));
                if count != Some(leaves.len()) {
                    return Err(format!(
                        "shape {shape:?} does not match the {} elements of the data",
                        leaves.len()
                    ));
                }
                shape
            }
            None => nested_shape,
        };
        let mut bytes = Zeroizing::new(Vec::with_capacity(
            leaves.len() * element_size(datatype).unwrap_or(8),
        ));
        for (index, leaf) in leaves.iter().enumerate() {
            encode_element(datatype, leaf, &mut bytes)
                .map_err(|reason| format!("element {index}: {reason}"))?;
        }
        Ok(Self {
            name: name.to_owned(),
            datatype: datatype.to_owned(),
            shape,
            data: bytes,
        })
    }

    /// The elements as a flat JSON array: numbers (non-finite floats as `"NaN"`, `"Infinity"`,
    /// `"-Infinity"`), booleans, and strings for `BYTES` (an element that is not UTF-8 becomes
    /// `{"base64": "..."}`).
    pub fn to_json_data(&self) -> std::result::Result<Value, String> {
        self.check()?;
        if self.datatype == "BYTES" {
            let elements = bytes_elements(&self.data)?;
            return Ok(Value::Array(
                elements
                    .into_iter()
                    .map(|element| match std::str::from_utf8(element) {
                        Ok(text) => Value::String(text.to_owned()),
                        Err(_) => serde_json::json!({
                            "base64": base64::engine::general_purpose::STANDARD.encode(element)
                        }),
                    })
                    .collect(),
            ));
        }
        let size = element_size(&self.datatype)
            .ok_or_else(|| format!("`{}` is not a data type", self.datatype))?;
        let values = self
            .data
            .chunks_exact(size)
            .map(|chunk| decode_element(&self.datatype, chunk))
            .collect::<TensorResult<Vec<Value>>>()?;
        Ok(Value::Array(values))
    }

    /// `{"name", "datatype", "shape", "data"}`, with `data` flat as [`InferTensor::to_json_data`].
    pub fn to_json(&self) -> std::result::Result<Value, String> {
        Ok(serde_json::json!({
            "name": self.name,
            "datatype": self.datatype,
            "shape": self.shape,
            "data": self.to_json_data()?,
        }))
    }
}

/// The elements of `BYTES` data: each a 4-byte little-endian length and that many bytes.
pub(crate) fn bytes_elements(data: &[u8]) -> TensorResult<Vec<&[u8]>> {
    let mut elements = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or("the BYTES data ends inside a length prefix")?;
        let len = usize::try_from(u32::from_le_bytes(*len))
            .map_err(|_| "a BYTES element is too long".to_owned())?;
        if tail.len() < len {
            return Err("the BYTES data ends inside an element".into());
        }
        let (element, tail) = tail.split_at(len);
        elements.push(element);
        rest = tail;
    }
    Ok(elements)
}

/// The shape of a nested array, refusing ragged ones; a scalar has shape `[]`.
fn nested_shape(value: &Value) -> TensorResult<Vec<usize>> {
    let Value::Array(items) = value else {
        return Ok(Vec::new());
    };
    let Some(first) = items.first() else {
        return Ok(vec![0]);
    };
    let inner = nested_shape(first)?;
    for item in &items[1..] {
        if nested_shape(item)? != inner {
            return Err("the nested arrays are ragged: rows differ in length or depth".into());
        }
    }
    let mut shape = Vec::with_capacity(inner.len() + 1);
    shape.push(items.len());
    shape.extend(inner);
    Ok(shape)
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        leaf => out.push(leaf),
    }
}

fn integer<T: TryFrom<i64> + TryFrom<u64>>(value: &Value, datatype: &str) -> TensorResult<T> {
    let fits = match (value.as_i64(), value.as_u64()) {
        (_, Some(unsigned)) => T::try_from(unsigned).ok(),
        (Some(signed), None) => T::try_from(signed).ok(),
        (None, None) => return Err(format!("{value} is not an integer")),
    };
    fits.ok_or_else(|| format!("{value} does not fit {datatype}"))
}

fn float(value: &Value) -> TensorResult<f64> {
    match value {
        Value::Number(number) => number
            .as_f64()
            .ok_or_else(|| format!("{value} is not a number")),
        Value::String(text) => match text.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(format!("{value} is not a number")),
        },
        _ => Err(format!("{value} is not a number")),
    }
}

fn encode_element(datatype: &str, value: &Value, out: &mut Vec<u8>) -> TensorResult<()> {
    match datatype {
        "BOOL" => match value {
            Value::Bool(b) => out.push(u8::from(*b)),
            _ => match value.as_u64() {
                Some(bit @ (0 | 1)) => out.push(u8::from(bit == 1)),
                _ => return Err(format!("{value} is not a boolean")),
            },
        },
        "UINT8" => out.push(integer::<u8>(value, datatype)?),
        "UINT16" => out.extend(integer::<u16>(value, datatype)?.to_le_bytes()),
        "UINT32" => out.extend(integer::<u32>(value, datatype)?.to_le_bytes()),
        "UINT64" => out.extend(integer::<u64>(value, datatype)?.to_le_bytes()),
        "INT8" => out.extend(integer::<i8>(value, datatype)?.to_le_bytes()),
        "INT16" => out.extend(integer::<i16>(value, datatype)?.to_le_bytes()),
        "INT32" => out.extend(integer::<i32>(value, datatype)?.to_le_bytes()),
        "INT64" => out.extend(integer::<i64>(value, datatype)?.to_le_bytes()),
        // JSON numbers are rounded to the nearest value of the type, as numpy's casts do.
        #[allow(clippy::cast_possible_truncation)]
        "FP16" => out.extend(half::f16::from_f64(float(value)?).to_le_bytes()),
        #[allow(clippy::cast_possible_truncation)]
        "FP32" => out.extend((float(value)? as f32).to_le_bytes()),
        "FP64" => out.extend(float(value)?.to_le_bytes()),
        "BYTES" => {
            let Value::String(text) = value else {
                return Err(format!("{value} is not a string"));
            };
            let len = u32::try_from(text.len()).map_err(|_| "a string is too long".to_owned())?;
            out.extend(len.to_le_bytes());
            out.extend(text.as_bytes());
        }
        other => return Err(format!("`{other}` is not a data type")),
    }
    Ok(())
}

/// A float as JSON: its shortest decimal form for its own precision (0.1f32 prints as 0.1),
/// non-finite values as the protocol's strings.
fn float_value(value: f64, shortest: String) -> Value {
    if value.is_nan() {
        Value::from("NaN")
    } else if value.is_infinite() {
        Value::from(if value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        shortest
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number)
    }
}

fn decode_element(datatype: &str, chunk: &[u8]) -> TensorResult<Value> {
    fn array<const N: usize>(chunk: &[u8]) -> TensorResult<[u8; N]> {
        chunk
            .try_into()
            .map_err(|_| "an element has the wrong size".to_owned())
    }
    Ok(match datatype {
        "BOOL" => Value::Bool(chunk.first().is_some_and(|b| *b != 0)),
        "UINT8" => Value::from(u8::from_le_bytes(array(chunk)?)),
        "UINT16" => Value::from(u16::from_le_bytes(array(chunk)?)),
        "UINT32" => Value::from(u32::from_le_bytes(array(chunk)?)),
        "UINT64" => Value::from(u64::from_le_bytes(array(chunk)?)),
        "INT8" => Value::from(i8::from_le_bytes(array(chunk)?)),
        "INT16" => Value::from(i16::from_le_bytes(array(chunk)?)),
        "INT32" => Value::from(i32::from_le_bytes(array(chunk)?)),
        "INT64" => Value::from(i64::from_le_bytes(array(chunk)?)),
        "FP16" => {
            let value = half::f16::from_le_bytes(array(chunk)?);
            float_value(value.to_f64(), value.to_string())
        }
        "FP32" => {
            let value = f32::from_le_bytes(array(chunk)?);
            float_value(f64::from(value), value.to_string())
        }
        "FP64" => {
            let value = f64::from_le_bytes(array(chunk)?);
            float_value(value, value.to_string())
        }
        other => return Err(format!("`{other}` is not a data type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_json_gives_shape_and_little_endian_bytes() {
        let t = InferTensor::from_json("x", "FP32", None, &json!([[1, 2.5], [-3, "NaN"]])).unwrap();
        assert_eq!(t.shape, vec![2, 2]);
        assert_eq!(&t.data[..4], &1.0f32.to_le_bytes());
        assert_eq!(t.to_json_data().unwrap(), json!([1.0, 2.5, -3.0, "NaN"]));
        let small = InferTensor::from_json("x", "FP32", Some(vec![1]), &json!([0.1])).unwrap();
        assert_eq!(small.to_json_data().unwrap().to_string(), "[0.1]");
    }

    #[test]
    fn integers_are_range_checked() {
        assert!(InferTensor::from_json("y", "INT8", None, &json!([128])).is_err());
        assert!(InferTensor::from_json("y", "UINT8", None, &json!([-1])).is_err());
        assert!(InferTensor::from_json("y", "INT64", None, &json!([1.5])).is_err());
        let t = InferTensor::from_json("y", "INT64", None, &json!([-1, 2])).unwrap();
        assert_eq!(t.to_json_data().unwrap(), json!([-1, 2]));
        let u = InferTensor::from_json("y", "UINT64", None, &json!([u64::MAX])).unwrap();
        assert_eq!(u.to_json_data().unwrap(), json!([u64::MAX]));
    }

    #[test]
    fn ragged_and_mismatched_shapes_are_refused() {
        assert!(InferTensor::from_json("x", "FP32", None, &json!([[1, 2], [3]])).is_err());
        assert!(InferTensor::from_json("x", "FP32", Some(vec![3]), &json!([1, 2])).is_err());
        assert!(InferTensor::from_json("x", "FLOAT", None, &json!([1])).is_err());
    }

    #[test]
    fn bytes_and_fp16_round_trip() {
        let t = InferTensor::from_json("s", "BYTES", None, &json!(["ab", ""])).unwrap();
        assert_eq!(t.data.as_slice(), b"\x02\0\0\0ab\0\0\0\0");
        t.check().unwrap();
        assert_eq!(t.to_json_data().unwrap(), json!(["ab", ""]));
        let h = InferTensor::from_json("h", "FP16", None, &json!([1.5, "-Infinity"])).unwrap();
        assert_eq!(h.data.len(), 4);
        assert_eq!(h.to_json_data().unwrap(), json!([1.5, "-Infinity"]));
        let bad = InferTensor::new("s", "BYTES", vec![1], b"\x05\0\0\0ab".to_vec());
        assert!(bad.check().is_err());
    }

    #[test]
    fn debug_hides_the_data() {
        let t = InferTensor::new("x", "UINT8", vec![3], vec![7, 7, 7]);
        let printed = format!("{t:?}");
        assert!(printed.contains("<3 bytes>"), "{printed}");
        assert!(!printed.contains('7'), "{printed}");
    }
}
