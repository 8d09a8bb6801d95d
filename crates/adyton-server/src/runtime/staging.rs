//! What every engine does to an input's data before handing it over: its data type checked
//! against the declared one, `BYTES` elements as UTF-8 strings, and the refusal of data that is
//! not of its type's kind. Shared by every engine.

use zeroize::Zeroizing;

use super::{EngineError, InputError, Tensor, TensorSpec};

/// Refuses, by name, a tensor of another data type than input `spec` declares. The server checks
/// inputs before they reach an engine ([`super::check_inputs`]); an engine checks again what it
/// is handed directly.
pub(crate) fn check_type(spec: &TensorSpec, tensor: &Tensor) -> Result<(), InputError> {
    if tensor.datatype() == spec.datatype {
        return Ok(());
    }
    Err(InputError::DataType {
        name: spec.name.clone(),
        expected: spec.datatype,
        actual: tensor.datatype(),
    })
}

/// The elements of `BYTES` input `spec` as strings, in zeroized memory. The engines' strings are
/// UTF-8 (Rust strings in tract, UTF-8 C strings in ONNX Runtime), so the first element that is
/// not is refused by input and element.
pub(crate) fn utf8_strings(
    spec: &TensorSpec,
    elements: &[Zeroizing<Vec<u8>>],
) -> Result<Zeroizing<Vec<String>>, InputError> {
    elements
        .iter()
        .enumerate()
        .map(|(index, element)| {
            std::str::from_utf8(element)
                .map(str::to_owned)
                .map_err(|_| InputError::NotUtf8 {
                    name: spec.name.clone(),
                    index,
                })
        })
        .collect::<Result<Vec<String>, InputError>>()
        .map(Zeroizing::new)
}

/// The refusal of strings for a fixed-size type, or of fixed-size elements for `BYTES`, which
/// a tensor's constructors never pair with its type.
pub(crate) fn wrong_kind(spec: &TensorSpec) -> EngineError {
    EngineError::Run {
        reason: format!(
            "input '{}': {} does not take this kind of data",
            spec.name, spec.datatype
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::DataType;
    use super::*;

    fn spec() -> TensorSpec {
        TensorSpec {
            name: "text".into(),
            datatype: DataType::Bytes,
            shape: None,
        }
    }

    #[test]
    fn utf8_elements_become_strings_and_the_first_other_is_refused_by_index() {
        let elements = ["", "héllo", "日本語", "with\0nul"]
            .map(|s| Zeroizing::new(s.as_bytes().to_vec()))
            .to_vec();
        assert_eq!(
            *utf8_strings(&spec(), &elements).unwrap(),
            ["", "héllo", "日本語", "with\0nul"]
        );
        let mut elements = elements;
        elements[1] = Zeroizing::new(vec![b'h', 0xc3]);
        elements[3] = Zeroizing::new(vec![0xff]);
        assert_eq!(
            utf8_strings(&spec(), &elements).unwrap_err(),
            InputError::NotUtf8 {
                name: "text".into(),
                index: 1
            }
        );
    }

    #[test]
    fn another_data_type_than_declared_is_refused_by_name() {
        let strings = Tensor::from_strings(vec![1], vec![Zeroizing::new(b"a".to_vec())]).unwrap();
        assert_eq!(check_type(&spec(), &strings), Ok(()));
        let numbers =
            Tensor::from_le_bytes(DataType::I32, vec![1], Zeroizing::new(vec![0; 4])).unwrap();
        assert_eq!(
            check_type(&spec(), &numbers),
            Err(InputError::DataType {
                name: "text".into(),
                expected: DataType::Bytes,
                actual: DataType::I32
            })
        );
    }

    #[test]
    fn the_wrong_kind_of_data_names_the_input_and_its_type() {
        let message = wrong_kind(&spec()).to_string();
        assert!(
            message.contains("input 'text': BYTES does not take this kind of data"),
            "{message}"
        );
    }
}
