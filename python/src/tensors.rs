//! numpy arrays to and from the Open Inference Protocol's tensors.
//!
//! An input crosses into Rust once: its elements are copied from the array's own buffer straight
//! into the little-endian bytes of the request tensor (a plain memory copy for a C-contiguous
//! array on a little-endian machine; one pass in row-major order otherwise). There is no
//! intermediate Python `bytes` object and no `numpy.ascontiguousarray` copy.

use adyton_client::{InferTensor, TensorMetadata};
use numpy::{
    Element, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};
use zeroize::Zeroizing;

use crate::errors::{input_error, AdytonError};

/// An element type with a fixed size in the protocol's little-endian encoding.
trait Wire: Element + Copy {
    const DATATYPE: &'static str;
    const SIZE: usize;
    /// Appends the encoding of a contiguous run of values.
    fn put_all(values: &[Self], out: &mut Vec<u8>);
    /// Appends the encoding of one value.
    fn put(self, out: &mut Vec<u8>);
    /// Decodes a whole tensor's elements.
    fn take_all(bytes: &[u8]) -> Vec<Self>;
}

macro_rules! wire_numbers {
    ($($ty:ty => $name:literal),* $(,)?) => {$(
        impl Wire for $ty {
            const DATATYPE: &'static str = $name;
            const SIZE: usize = std::mem::size_of::<$ty>();
            fn put_all(values: &[Self], out: &mut Vec<u8>) {
                if cfg!(target_endian = "little") {
                    out.extend_from_slice(bytemuck::cast_slice(values));
                } else {
                    values.iter().for_each(|v| v.put(out));
                }
            }
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn take_all(bytes: &[u8]) -> Vec<Self> {
                if cfg!(target_endian = "little") {
                    // Copies into an aligned vector whatever the alignment of `bytes`.
                    bytemuck::pod_collect_to_vec(bytes)
                } else {
                    bytes
                        .chunks_exact(Self::SIZE)
                        .map(|c| {
                            let mut le = [0u8; std::mem::size_of::<$ty>()];
                            le.copy_from_slice(c);
                            <$ty>::from_le_bytes(le)
                        })
                        .collect()
                }
            }
        }
    )*};
}

wire_numbers! {
    u8 => "UINT8", u16 => "UINT16", u32 => "UINT32", u64 => "UINT64",
    i8 => "INT8", i16 => "INT16", i32 => "INT32", i64 => "INT64",
    half::f16 => "FP16", f32 => "FP32", f64 => "FP64",
}

impl Wire for bool {
    const DATATYPE: &'static str = "BOOL";
    const SIZE: usize = 1;
    fn put_all(values: &[Self], out: &mut Vec<u8>) {
        out.extend(values.iter().map(|&v| u8::from(v)));
    }
    fn put(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn take_all(bytes: &[u8]) -> Vec<Self> {
        bytes.iter().map(|&b| b != 0).collect()
    }
}

/// The protocol tensor for the numpy array `value`, named `name`.
pub fn encode(name: &str, value: &Bound<'_, PyAny>) -> PyResult<InferTensor> {
    let Ok(array) = value.cast::<PyUntypedArray>() else {
        return Err(input_error(format!(
            "input `{name}` must be a numpy array, not {}; numpy.asarray(value, dtype=...) \
             makes one with an explicit dtype",
            type_name(value)
        )));
    };
    macro_rules! try_types {
        ($($ty:ty),*) => {$(
            if let Ok(typed) = value.cast::<PyArrayDyn<$ty>>() {
                return encode_typed(name, typed);
            }
        )*};
    }
    try_types!(
        f32,
        f64,
        half::f16,
        i64,
        i32,
        i16,
        i8,
        u8,
        u16,
        u32,
        u64,
        bool
    );
    let dtype = array.dtype();
    match dtype.kind() {
        b'O' | b'S' | b'U' => encode_bytes(name, array),
        _ => {
            let text = dtype
                .str()
                .map(|s| s.to_string())
                .unwrap_or_else(|_| "?".into());
            Err(input_error(format!(
                "input `{name}` has dtype {text}, which the protocol cannot carry; use bool, \
                 (u)int8 to (u)int64 or float16/32/64 in native byte order"
            )))
        }
    }
}

fn encode_typed<T: Wire>(name: &str, array: &Bound<'_, PyArrayDyn<T>>) -> PyResult<InferTensor> {
    let readonly = array.try_readonly().map_err(|_| {
        input_error(format!(
            "input `{name}` is being written by other code; pass a copy"
        ))
    })?;
    let shape = readonly.shape().to_vec();
    let len = readonly.len();
    let mut data = Zeroizing::new(Vec::with_capacity(len.saturating_mul(T::SIZE)));
    // `as_slice` also accepts Fortran-ordered memory, whose order is not the protocol's
    // row-major order, so C order is checked first.
    match readonly.as_slice() {
        Ok(slice) if readonly.is_c_contiguous() => T::put_all(slice, &mut data),
        _ => readonly.as_array().iter().for_each(|v| v.put(&mut data)),
    }
    Ok(InferTensor {
        name: name.to_owned(),
        datatype: T::DATATYPE.to_owned(),
        shape,
        data,
    })
}

/// A `BYTES` tensor from an array of `bytes` or `str` (UTF-8 encoded): each element a 4-byte
/// little-endian length and its bytes, in row-major order.
fn encode_bytes(name: &str, array: &Bound<'_, PyUntypedArray>) -> PyResult<InferTensor> {
    let shape = array.shape().to_vec();
    let flat = array
        .call_method1("ravel", ("C",))?
        .call_method0("tolist")?;
    let mut data = Zeroizing::new(Vec::new());
    for item in flat.try_iter()? {
        let item = item?;
        let bytes: Vec<u8> = if let Ok(b) = item.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(s) = item.cast::<PyString>() {
            s.to_cow()?.as_bytes().to_vec()
        } else {
            return Err(input_error(format!(
                "input `{name}` holds a {}; a BYTES tensor holds bytes or str",
                type_name(&item)
            )));
        };
        let len = u32::try_from(bytes.len())
            .map_err(|_| input_error(format!("input `{name}` has an element over 4 GiB")))?;
        data.extend_from_slice(&len.to_le_bytes());
        data.extend_from_slice(&bytes);
    }
    Ok(InferTensor {
        name: name.to_owned(),
        datatype: "BYTES".to_owned(),
        shape,
        data,
    })
}

/// The numpy array for an output tensor of the server's answer.
pub fn decode<'py>(py: Python<'py>, tensor: &InferTensor) -> PyResult<Bound<'py, PyAny>> {
    match tensor.datatype.as_str() {
        "BOOL" => decode_typed::<bool>(py, tensor),
        "UINT8" => decode_typed::<u8>(py, tensor),
        "UINT16" => decode_typed::<u16>(py, tensor),
        "UINT32" => decode_typed::<u32>(py, tensor),
        "UINT64" => decode_typed::<u64>(py, tensor),
        "INT8" => decode_typed::<i8>(py, tensor),
        "INT16" => decode_typed::<i16>(py, tensor),
        "INT32" => decode_typed::<i32>(py, tensor),
        "INT64" => decode_typed::<i64>(py, tensor),
        "FP16" => decode_typed::<half::f16>(py, tensor),
        "FP32" => decode_typed::<f32>(py, tensor),
        "FP64" => decode_typed::<f64>(py, tensor),
        "BYTES" => decode_bytes(py, tensor),
        other => Err(AdytonError::new_err(format!(
            "output `{}` has the data type {other}, which this SDK does not know",
            tensor.name
        ))),
    }
}

fn element_count(tensor: &InferTensor) -> PyResult<usize> {
    tensor
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            AdytonError::new_err(format!(
                "output `{}` has an impossible shape {:?}",
                tensor.name, tensor.shape
            ))
        })
}

fn decode_typed<'py, T: Wire>(
    py: Python<'py>,
    tensor: &InferTensor,
) -> PyResult<Bound<'py, PyAny>> {
    let expected = element_count(tensor)?.checked_mul(T::SIZE);
    if expected != Some(tensor.data.len()) {
        return Err(AdytonError::new_err(format!(
            "output `{}` has {} bytes for the shape {:?} of {}",
            tensor.name,
            tensor.data.len(),
            tensor.shape,
            tensor.datatype
        )));
    }
    let flat = PyArray1::from_vec(py, T::take_all(&tensor.data));
    Ok(flat.reshape(tensor.shape.clone())?.into_any())
}

fn decode_bytes<'py>(py: Python<'py>, tensor: &InferTensor) -> PyResult<Bound<'py, PyAny>> {
    let malformed = || {
        AdytonError::new_err(format!(
            "output `{}` is not a valid BYTES tensor of shape {:?}",
            tensor.name, tensor.shape
        ))
    };
    let count = element_count(tensor)?;
    let items = PyList::empty(py);
    let mut rest: &[u8] = &tensor.data;
    for _ in 0..count {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(malformed)?;
        let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| malformed())?;
        if tail.len() < len {
            return Err(malformed());
        }
        let (element, tail) = tail.split_at(len);
        items.append(PyBytes::new(py, element))?;
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(malformed());
    }
    let numpy = py.import("numpy")?;
    let object = numpy.getattr("object_")?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("dtype", object)?;
    let flat = numpy.call_method("array", (items,), Some(&kwargs))?;
    flat.call_method1("reshape", (tensor.shape.clone(),))
}

/// Checks the inputs against the model's declared inputs, as the server will, so that a mistake
/// is named before anything is sent: unknown, missing or repeated names, the data type, the rank
/// and the fixed dimensions (-1 is dynamic). Returns the tensors in the model's order.
pub fn check_against(
    model: &str,
    declared: &[TensorMetadata],
    mut tensors: Vec<InferTensor>,
) -> PyResult<Vec<InferTensor>> {
    let names = || {
        declared
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(unknown) = tensors
        .iter()
        .find(|t| !declared.iter().any(|d| d.name == t.name))
    {
        return Err(input_error(format!(
            "model `{model}` has no input `{}`; its inputs are: {}",
            unknown.name,
            names()
        )));
    }
    let mut ordered = Vec::with_capacity(declared.len());
    for spec in declared {
        let Some(at) = tensors.iter().position(|t| t.name == spec.name) else {
            return Err(input_error(format!(
                "missing input `{}` of model `{model}`; its inputs are: {}",
                spec.name,
                names()
            )));
        };
        let tensor = tensors.swap_remove(at);
        if tensor.datatype != spec.datatype {
            return Err(input_error(format!(
                "input `{}` of model `{model}` must be {} ({}), not {} ({})",
                spec.name,
                spec.datatype,
                numpy_name(&spec.datatype),
                tensor.datatype,
                numpy_name(&tensor.datatype)
            )));
        }
        let fits = tensor.shape.len() == spec.shape.len()
            && tensor
                .shape
                .iter()
                .zip(&spec.shape)
                .all(|(&got, &want)| want < 0 || i64::try_from(got).is_ok_and(|g| g == want));
        if !fits {
            return Err(input_error(format!(
                "input `{}` of model `{model}` has the shape {:?}; the model takes {:?} \
                 (-1 is any size)",
                spec.name, tensor.shape, spec.shape
            )));
        }
        ordered.push(tensor);
    }
    Ok(ordered)
}

/// The numpy dtype of a protocol data type, for messages.
fn numpy_name(datatype: &str) -> &'static str {
    match datatype {
        "BOOL" => "numpy.bool_",
        "UINT8" => "numpy.uint8",
        "UINT16" => "numpy.uint16",
        "UINT32" => "numpy.uint32",
        "UINT64" => "numpy.uint64",
        "INT8" => "numpy.int8",
        "INT16" => "numpy.int16",
        "INT32" => "numpy.int32",
        "INT64" => "numpy.int64",
        "FP16" => "numpy.float16",
        "FP32" => "numpy.float32",
        "FP64" => "numpy.float64",
        "BYTES" => "bytes or str",
        _ => "unknown",
    }
}

pub fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}
