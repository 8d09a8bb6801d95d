//! Tensors between the protocol's layout and tract's.
//!
//! The protocol's fixed-size tensors are little-endian bytes, which is also how tract holds them
//! on a little-endian host: there, an input is copied once into the tensor tract runs on, and an
//! output once into our zeroized buffer. A big-endian host converts element by element.

use std::borrow::Cow;

use tract_onnx::prelude::{
    f16, tract_ndarray, Datum, DatumType, TValue, Tensor as TractTensor, TractError, TractResult,
};
use zeroize::Zeroizing;

use super::super::staging::{check_type, utf8_strings, wrong_kind};
use super::super::{DataType, EngineError, Tensor, TensorData, TensorSpec};
use super::{served_type, tract_reason};

/// Our tensor as tract's, checked against the input's declared type.
pub(super) fn to_tract(spec: &TensorSpec, tensor: &Tensor) -> Result<TractTensor, EngineError> {
    check_type(spec, tensor)?;
    let shape = tensor.shape();
    let converted = match tensor.data() {
        // The protocol's layout is tract's own on a little-endian host: one copy. `BOOL` bytes
        // are 0 or 1 (checked when the tensor was built), which is how tract stores `bool`.
        TensorData::Fixed(bytes) if cfg!(target_endian = "little") => {
            match tract_type(tensor.datatype()) {
                Some(datum_type) => copied(datum_type, shape, bytes),
                None => return Err(wrong_kind(spec)),
            }
        }
        TensorData::Fixed(bytes) => match tensor.datatype() {
            DataType::Bool => from_le::<bool, 1>(shape, bytes, |[b]| b != 0),
            DataType::U8 => from_le(shape, bytes, u8::from_le_bytes),
            DataType::U16 => from_le(shape, bytes, u16::from_le_bytes),
            DataType::U32 => from_le(shape, bytes, u32::from_le_bytes),
            DataType::U64 => from_le(shape, bytes, u64::from_le_bytes),
            DataType::I8 => from_le(shape, bytes, i8::from_le_bytes),
            DataType::I16 => from_le(shape, bytes, i16::from_le_bytes),
            DataType::I32 => from_le(shape, bytes, i32::from_le_bytes),
            DataType::I64 => from_le(shape, bytes, i64::from_le_bytes),
            DataType::F16 => from_le(shape, bytes, f16::from_le_bytes),
            DataType::F32 => from_le(shape, bytes, f32::from_le_bytes),
            DataType::F64 => from_le(shape, bytes, f64::from_le_bytes),
            DataType::Bytes => return Err(wrong_kind(spec)),
        },
        TensorData::Bytes(elements) => {
            if tensor.datatype() != DataType::Bytes {
                return Err(wrong_kind(spec));
            }
            // The strings move into tract's tensor, which tract frees without zeroizing, as it
            // does its other copies (docs/server.md, "Tensor memory").
            let strings = std::mem::take(&mut *utf8_strings(spec, elements)?);
            tract_ndarray::ArrayD::from_shape_vec(shape, strings)
                .map(TractTensor::from)
                .map_err(TractError::from)
        }
    };
    converted.map_err(|e| EngineError::Run {
        reason: format!("input '{}': {}", spec.name, tract_reason(&e)),
    })
}

/// tract's type for a fixed-size protocol type.
fn tract_type(datatype: DataType) -> Option<DatumType> {
    Some(match datatype {
        DataType::Bool => DatumType::Bool,
        DataType::U8 => DatumType::U8,
        DataType::U16 => DatumType::U16,
        DataType::U32 => DatumType::U32,
        DataType::U64 => DatumType::U64,
        DataType::I8 => DatumType::I8,
        DataType::I16 => DatumType::I16,
        DataType::I32 => DatumType::I32,
        DataType::I64 => DatumType::I64,
        DataType::F16 => DatumType::F16,
        DataType::F32 => DatumType::F32,
        DataType::F64 => DatumType::F64,
        DataType::Bytes => return None,
    })
}

/// A tract tensor holding a copy of `bytes`, which are its elements in the host's layout.
fn copied(datum_type: DatumType, shape: &[usize], bytes: &[u8]) -> TractResult<TractTensor> {
    // Zeroed memory of this size comes from the allocator already zeroed (fresh pages), so the
    // copy below is the one pass over the data.
    let mut tensor = TractTensor::zero_dt(datum_type, shape)?;
    let mut view = tensor.try_as_plain_ram_mut()?;
    let target = view.as_bytes_mut();
    if target.len() != bytes.len() {
        return Err(TractError::msg(format!(
            "{} bytes do not fill a tensor of {} bytes",
            bytes.len(),
            target.len()
        )));
    }
    target.copy_from_slice(bytes);
    Ok(tensor)
}

/// A tract tensor of `T` from little-endian elements of `N` bytes.
fn from_le<T: Datum + Copy, const N: usize>(
    shape: &[usize],
    bytes: &[u8],
    decode: fn([u8; N]) -> T,
) -> TractResult<TractTensor> {
    let elements: Vec<T> = bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut element = [0u8; N];
            element.copy_from_slice(chunk);
            decode(element)
        })
        .collect();
    TractTensor::from_shape(shape, &elements)
}

/// tract's tensor as ours: fixed-size elements as little-endian bytes (`BOOL` as 0 or 1),
/// strings as `BYTES`.
pub(super) fn from_tract(spec: &TensorSpec, value: &TValue) -> Result<Tensor, EngineError> {
    let run_error = |reason: String| EngineError::Run {
        reason: format!("output '{}': {reason}", spec.name),
    };
    let shape = value.shape().to_vec();
    let value: Cow<'_, TractTensor> = if value.datum_type() == DatumType::TDim {
        value
            .cast_to::<i64>()
            .map_err(|e| run_error(tract_reason(&e)))?
    } else {
        Cow::Borrowed(&**value)
    };
    if served_type(value.datum_type()) != Some(spec.datatype) {
        return Err(run_error(format!(
            "tract returned data type {:?}, the model declares {}",
            value.datum_type(),
            spec.datatype
        )));
    }
    let bytes = match value.datum_type() {
        // tract's layout is the protocol's on a little-endian host (`bool` is one byte, 0 or 1):
        // one copy, into memory that is zeroized when the response is done with it.
        DatumType::Bool
        | DatumType::U8
        | DatumType::U16
        | DatumType::U32
        | DatumType::U64
        | DatumType::I8
        | DatumType::I16
        | DatumType::I32
        | DatumType::I64
        | DatumType::F16
        | DatumType::F32
        | DatumType::F64
            if cfg!(target_endian = "little") =>
        {
            value
                .try_as_plain_ram()
                .map(|view| Zeroizing::new(view.as_bytes().to_vec()))
        }
        DatumType::Bool => to_le::<bool, 1>(&value, |b| [u8::from(b)]),
        DatumType::U8 => to_le(&value, u8::to_le_bytes),
        DatumType::U16 => to_le(&value, u16::to_le_bytes),
        DatumType::U32 => to_le(&value, u32::to_le_bytes),
        DatumType::U64 => to_le(&value, u64::to_le_bytes),
        DatumType::I8 => to_le(&value, i8::to_le_bytes),
        DatumType::I16 => to_le(&value, i16::to_le_bytes),
        DatumType::I32 => to_le(&value, i32::to_le_bytes),
        DatumType::I64 => to_le(&value, i64::to_le_bytes),
        DatumType::F16 => to_le(&value, f16::to_le_bytes),
        DatumType::F32 => to_le(&value, f32::to_le_bytes),
        DatumType::F64 => to_le(&value, f64::to_le_bytes),
        DatumType::String => {
            let elements = value
                .to_plain_array_view::<String>()
                .map_err(|e| run_error(tract_reason(&e)))?
                .iter()
                .map(|s| Zeroizing::new(s.as_bytes().to_vec()))
                .collect();
            return Tensor::from_strings(shape, elements).map_err(|e| run_error(e.to_string()));
        }
        other => return Err(run_error(format!("tract returned data type {other:?}"))),
    }
    .map_err(|e| run_error(tract_reason(&e)))?;
    Tensor::from_le_bytes(spec.datatype, shape, bytes).map_err(|e| run_error(e.to_string()))
}

/// The elements of a tract tensor of `T`, row-major, each encoded by `encode`.
fn to_le<T: Datum + Copy, const N: usize>(
    tensor: &TractTensor,
    encode: fn(T) -> [u8; N],
) -> TractResult<Zeroizing<Vec<u8>>> {
    let view = tensor.to_plain_array_view::<T>()?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(view.len().saturating_mul(N)));
    for &element in view.iter() {
        bytes.extend_from_slice(&encode(element));
    }
    Ok(bytes)
}
