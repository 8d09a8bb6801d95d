//! One suite of cases, run against every engine: loading, signatures, every data type, several
//! inputs and outputs, dynamic batches, load options, refusals of bad inputs and bad models,
//! the output limit, and concurrent runs. Where the engines differ by design (an operator only
//! one has, what a string tensor can hold), the case says what each must do.
//!
//! The onnxruntime engine's tests need the onnxruntime shared library: `find_library` finds the
//! one `scripts/setup` installs into `.venv`, or takes `ADYTON_ONNXRUNTIME_LIBRARY`. Without it
//! they fail, saying so: they are never skipped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;

use adyton_server::runtime::onnxruntime::{find_library, OnnxRuntimeEngine, LIBRARY_ENV};
use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{
    check_inputs, DataType, Dim, Engine, EngineError, EngineKind, InputError, InputShapeError,
    LoadOptions, LoadedModel, Plan, Signature, Tensor, TensorData, TensorSpec,
};
use half::f16;
use zeroize::Zeroizing;

use crate::onnx;
use crate::support::model;

fn tract() -> Box<dyn Engine> {
    Box::new(TractEngine::new())
}

fn onnxruntime() -> Box<dyn Engine> {
    Box::new(onnxruntime_engine())
}

fn onnxruntime_engine() -> OnnxRuntimeEngine {
    let library = find_library().unwrap_or_else(|| {
        panic!(
            "the onnxruntime shared library was not found: run scripts/setup, which installs the \
             onnxruntime package into .venv, or set {LIBRARY_ENV} to the path of its \
             libonnxruntime.so"
        )
    });
    OnnxRuntimeEngine::new(&library).unwrap_or_else(|e| panic!("{e}"))
}

/// A test per case and engine: `engine_suite!(tract, onnxruntime)` makes `engines::tract::<case>`
/// and `engines::onnxruntime::<case>`.
macro_rules! engine_suite {
    ($($engine:ident => $kind:expr),* $(,)?) => {$(
        mod $engine {
            use adyton_server::runtime::EngineKind;

            const KIND: EngineKind = $kind;

            fn engine() -> Box<dyn adyton_server::runtime::Engine> {
                super::$engine()
            }

            engine_suite!(@cases
                loads_the_test_models_with_their_signatures,
                every_data_type_round_trips_exactly,
                a_string_with_a_nul_byte,
                several_inputs_and_outputs_come_back_in_graph_order,
                a_dynamic_batch_runs_any_batch_size,
                an_unnamed_dimension_needs_no_shape_given,
                input_shapes_fix_a_dimension_and_are_checked,
                ahead_shapes_are_checked_against_the_signature,
                threads_can_be_set,
                wrong_inputs_are_refused_by_name,
                garbage_bytes_are_refused_with_a_clear_error,
                external_data_is_refused,
                constants_over_the_load_budget_are_refused,
                an_operator_tract_lacks,
                outputs_over_the_limit_are_refused,
                eight_threads_run_one_model_at_once,
                a_failed_run_quotes_no_input_values,
                debug_output_shows_no_weights,
            );
        }
    )*};
    (@cases $($case:ident),* $(,)?) => {$(
        #[test]
        fn $case() {
            super::$case(&*engine(), KIND);
        }
    )*};
}

engine_suite!(
    tract => EngineKind::Tract,
    onnxruntime => EngineKind::OnnxRuntime,
);

/// The identity model of every data type, from `scripts/make_test_models.py`.
pub(crate) const IDENTITY_MODELS: [(&str, DataType); 13] = [
    ("identity_bool", DataType::Bool),
    ("identity_uint8", DataType::U8),
    ("identity_uint16", DataType::U16),
    ("identity_uint32", DataType::U32),
    ("identity_uint64", DataType::U64),
    ("identity_int8", DataType::I8),
    ("identity_int16", DataType::I16),
    ("identity_int32", DataType::I32),
    ("identity_int64", DataType::I64),
    ("identity_fp16", DataType::F16),
    ("identity_fp32", DataType::F32),
    ("identity_fp64", DataType::F64),
    ("identity_string", DataType::Bytes),
];

fn load(engine: &dyn Engine, name: &str) -> Arc<dyn LoadedModel> {
    engine
        .load(&model(name))
        .unwrap_or_else(|e| panic!("{name} does not load: {e}"))
}

fn load_error(engine: &dyn Engine, bytes: &[u8]) -> EngineError {
    match engine.load(bytes) {
        Ok(model) => panic!("loaded {model:?}"),
        Err(e) => e,
    }
}

pub(crate) fn spec(name: &str, datatype: DataType, shape: &[Dim]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: Some(shape.to_vec()),
    }
}

pub(crate) fn fixed(dims: &[usize]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Fixed(d)).collect()
}

pub(crate) fn f32s(shape: &[usize], values: &[f32]) -> Tensor {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_le_bytes(DataType::F32, shape.to_vec(), Zeroizing::new(bytes)).unwrap()
}

pub(crate) fn i64s(shape: &[usize], values: &[i64]) -> Tensor {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_le_bytes(DataType::I64, shape.to_vec(), Zeroizing::new(bytes)).unwrap()
}

fn fixed_bytes(tensor: &Tensor) -> &[u8] {
    match tensor.data() {
        TensorData::Fixed(bytes) => bytes,
        TensorData::Bytes(_) => panic!("{tensor:?} holds strings"),
    }
}

pub(crate) fn f32_values(tensor: &Tensor) -> Vec<f32> {
    assert_eq!(tensor.datatype(), DataType::F32);
    fixed_bytes(tensor)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub(crate) fn i64_values(tensor: &Tensor) -> Vec<i64> {
    assert_eq!(tensor.datatype(), DataType::I64);
    fixed_bytes(tensor)
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Checks named inputs against the model's signature and runs it.
pub(crate) fn run(model: &dyn LoadedModel, inputs: Vec<(&str, Tensor)>) -> Vec<Tensor> {
    let named = inputs.into_iter().map(|(n, t)| (n.to_owned(), t)).collect();
    let inputs = check_inputs(model.signature(), named).unwrap();
    model.run(inputs).unwrap()
}

/// `dynamic_batch`'s output for `x`: `x @ W + B`, as in scripts/make_test_models.py.
pub(crate) fn dynamic_batch_expected(x: &[f32]) -> Vec<f32> {
    let weights = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]];
    let bias = [0.5f32, -1.0];
    x.chunks_exact(4)
        .flat_map(|row| {
            (0..2).map(move |j| {
                row.iter().zip(&weights).map(|(x, w)| x * w[j]).sum::<f32>() + bias[j]
            })
        })
        .collect()
}

fn loads_the_test_models_with_their_signatures(engine: &dyn Engine, kind: EngineKind) {
    for name in ["add", "multi_io", "dynamic_batch"] {
        let model = load(engine, name);
        assert_eq!(model.engine(), kind, "{name}");
        match kind {
            EngineKind::OnnxRuntime => assert_eq!(model.plan(), Plan::OnnxRuntime, "{name}"),
            EngineKind::Tract => assert_ne!(model.plan(), Plan::OnnxRuntime, "{name}"),
        }
    }
    assert_eq!(
        *load(engine, "add").signature(),
        Signature {
            inputs: vec![
                spec("a", DataType::F32, &fixed(&[1, 3])),
                spec("b", DataType::F32, &fixed(&[1, 3])),
            ],
            outputs: vec![spec("sum", DataType::F32, &fixed(&[1, 3]))],
        }
    );
    let a = [1.5, -2.0, 1e10];
    let b = [0.25, 7.0, -3.0];
    let outputs = run(
        &*load(engine, "add"),
        vec![("b", f32s(&[1, 3], &b)), ("a", f32s(&[1, 3], &a))],
    );
    let sum: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
    assert_eq!(outputs.len(), 1);
    assert_eq!(f32_values(&outputs[0]), sum);
    // A model loads from a reader as from bytes.
    let bytes = model("add");
    let model = engine.load_from_reader(&mut bytes.as_slice()).unwrap();
    assert_eq!(model.signature().inputs.len(), 2);
}

/// Six elements of `datatype`, chosen to include its extremes.
fn sample(datatype: DataType) -> Tensor {
    fn le<T, const N: usize>(values: [T; 6], encode: fn(T) -> [u8; N]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(values.into_iter().flat_map(encode).collect())
    }
    let bytes = match datatype {
        DataType::Bool => Zeroizing::new(vec![1, 0, 0, 1, 1, 0]),
        DataType::U8 => le([0u8, 1, 127, 128, 254, u8::MAX], u8::to_le_bytes),
        DataType::U16 => le(
            [0u16, 1, 0x1234, 0x8000, 0xfffe, u16::MAX],
            u16::to_le_bytes,
        ),
        DataType::U32 => le(
            [0u32, 1, 0x1234_5678, 1 << 31, 7, u32::MAX],
            u32::to_le_bytes,
        ),
        DataType::U64 => le(
            [0u64, 1, 0x0123_4567_89ab_cdef, 1 << 63, 7, u64::MAX],
            u64::to_le_bytes,
        ),
        DataType::I8 => le([i8::MIN, -1, 0, 1, 42, i8::MAX], i8::to_le_bytes),
        DataType::I16 => le([i16::MIN, -1, 0, 1, 4242, i16::MAX], i16::to_le_bytes),
        DataType::I32 => le([i32::MIN, -1, 0, 1, 424_242, i32::MAX], i32::to_le_bytes),
        DataType::I64 => le([i64::MIN, -1, 0, 1, 1 << 40, i64::MAX], i64::to_le_bytes),
        DataType::F16 => le(
            [
                f16::MIN,
                f16::from_f32(-0.0),
                f16::from_f32(1.5),
                f16::MIN_POSITIVE_SUBNORMAL,
                f16::INFINITY,
                f16::MAX,
            ],
            f16::to_le_bytes,
        ),
        DataType::F32 => le(
            [
                f32::MIN,
                -0.0,
                1.5,
                f32::MIN_POSITIVE,
                f32::NEG_INFINITY,
                f32::MAX,
            ],
            f32::to_le_bytes,
        ),
        DataType::F64 => le(
            [f64::MIN, -0.0, 1.5, 5e-324, f64::INFINITY, f64::MAX],
            f64::to_le_bytes,
        ),
        DataType::Bytes => {
            let elements = [
                "",
                "a",
                "héllo",
                "日本語",
                "tab\there",
                "x".repeat(300).as_str(),
            ]
            .map(|s| Zeroizing::new(s.as_bytes().to_vec()));
            return Tensor::from_strings(vec![2, 3], elements.to_vec()).unwrap();
        }
    };
    Tensor::from_le_bytes(datatype, vec![2, 3], bytes).unwrap()
}

fn every_data_type_round_trips_exactly(engine: &dyn Engine, _kind: EngineKind) {
    let covered: Vec<DataType> = IDENTITY_MODELS.iter().map(|&(_, d)| d).collect();
    assert_eq!(covered, DataType::ALL);
    for (name, datatype) in IDENTITY_MODELS {
        let model = load(engine, name);
        assert_eq!(
            *model.signature(),
            Signature {
                inputs: vec![spec("x", datatype, &fixed(&[2, 3]))],
                outputs: vec![spec("y", datatype, &fixed(&[2, 3]))],
            },
            "{name}"
        );
        let input = sample(datatype);
        let outputs = run(&*model, vec![("x", input.clone())]);
        assert_eq!(outputs, [input], "{name}");
    }

    // Bytes that are not UTF-8 are refused for a string input, by name and element.
    let model = load(engine, "identity_string");
    let mut elements: Vec<_> = (0..6).map(|_| Zeroizing::new(b"ok".to_vec())).collect();
    elements[4] = Zeroizing::new(vec![0xff, 0xfe]);
    let input = Tensor::from_strings(vec![2, 3], elements).unwrap();
    match model.run(vec![input]) {
        Err(EngineError::Input(e)) => {
            assert_eq!(
                e,
                InputError::NotUtf8 {
                    name: "x".into(),
                    index: 4
                }
            );
            assert!(e.to_string().contains("'x'"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// tract's strings hold any UTF-8; onnxruntime's are C strings, so it refuses a NUL byte by
/// input and element.
fn a_string_with_a_nul_byte(engine: &dyn Engine, kind: EngineKind) {
    let model = load(engine, "identity_string");
    let mut elements: Vec<_> = (0..6).map(|_| Zeroizing::new(b"ok".to_vec())).collect();
    elements[3] = Zeroizing::new(b"with\0nul".to_vec());
    let input = Tensor::from_strings(vec![2, 3], elements).unwrap();
    match kind {
        EngineKind::Tract => assert_eq!(model.run(vec![input.clone()]).unwrap(), [input]),
        EngineKind::OnnxRuntime => {
            let e = model.run(vec![input]).unwrap_err();
            let message = e.to_string();
            assert!(
                matches!(e, EngineError::Input(InputError::NulByte { index: 3, .. })),
                "{e:?}"
            );
            assert!(
                message.contains("input 'x' element 3 holds a NUL byte"),
                "{message}"
            );
        }
    }
}

fn several_inputs_and_outputs_come_back_in_graph_order(engine: &dyn Engine, _kind: EngineKind) {
    let model = load(engine, "multi_io");
    assert_eq!(
        *model.signature(),
        Signature {
            inputs: vec![
                spec("x", DataType::F32, &fixed(&[2, 2])),
                spec("y", DataType::I64, &fixed(&[3])),
            ],
            outputs: vec![
                spec("x_times_2", DataType::F32, &fixed(&[2, 2])),
                spec("y_plus_1", DataType::I64, &fixed(&[3])),
                spec("x_total", DataType::F32, &[]),
            ],
        }
    );
    let x = [1.0, -2.5, 3.25, 4.0];
    let y = [i64::MIN + 1, -1, 41];
    // Inputs given out of order come back in the signature's order.
    let outputs = run(
        &*model,
        vec![("y", i64s(&[3], &y)), ("x", f32s(&[2, 2], &x))],
    );
    assert_eq!(outputs.len(), 3);
    assert_eq!(outputs[0].shape(), [2, 2]);
    assert_eq!(
        f32_values(&outputs[0]),
        x.iter().map(|v| v * 2.0).collect::<Vec<_>>()
    );
    assert_eq!(outputs[1].shape(), [3]);
    assert_eq!(i64_values(&outputs[1]), [i64::MIN + 2, 0, 42]);
    assert_eq!(outputs[2].shape(), [] as [usize; 0]);
    assert_eq!(f32_values(&outputs[2]), [x.iter().sum::<f32>()]);
}

fn a_dynamic_batch_runs_any_batch_size(engine: &dyn Engine, _kind: EngineKind) {
    let model = load(engine, "dynamic_batch");
    assert_eq!(
        model.signature().inputs,
        [spec("x", DataType::F32, &[Dim::Dynamic, Dim::Fixed(4)])]
    );
    assert_eq!(
        model.signature().outputs,
        [spec("y", DataType::F32, &[Dim::Dynamic, Dim::Fixed(2)])]
    );
    let declared: Vec<i64> = model.signature().inputs[0]
        .shape
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| d.as_i64())
        .collect();
    assert_eq!(declared, [-1, 4]);
    // One model, batches of different sizes, in turn and back again.
    for batch in [1usize, 2, 5, 1, 5] {
        let x: Vec<f32> = (0..batch * 4).map(|i| i as f32 - 3.0).collect();
        let outputs = run(&*model, vec![("x", f32s(&[batch, 4], &x))]);
        assert_eq!(outputs[0].shape(), [batch, 2]);
        assert_eq!(
            f32_values(&outputs[0]),
            dynamic_batch_expected(&x),
            "batch {batch}"
        );
    }
}

/// `unknown_dim`'s input is `[batch, ?, 4]` and its graph squeezes axis 1 away: it loads with no
/// shape given, and runs on the shapes that fit.
fn an_unnamed_dimension_needs_no_shape_given(engine: &dyn Engine, _kind: EngineKind) {
    let model = load(engine, "unknown_dim");
    assert_eq!(
        model.signature().inputs,
        [spec(
            "x",
            DataType::F32,
            &[Dim::Dynamic, Dim::Dynamic, Dim::Fixed(4)]
        )]
    );
    let x = [1.0f32, -2.0, 3.5, 0.25, 8.0, -0.5, 0.0, 1e-3];
    for batch in [1usize, 2] {
        let outputs = run(&*model, vec![("x", f32s(&[batch, 1, 4], &x[..batch * 4]))]);
        assert_eq!(outputs[0].shape(), [batch, 4]);
        let doubled: Vec<f32> = x[..batch * 4].iter().map(|v| v * 2.0).collect();
        assert_eq!(f32_values(&outputs[0]), doubled);
    }
}

fn input_shapes_fix_a_dimension_and_are_checked(engine: &dyn Engine, _kind: EngineKind) {
    let bytes = model("dynamic_batch");
    let options = |name: &str, dims: Vec<Dim>| LoadOptions {
        input_shapes: BTreeMap::from([(name.to_owned(), dims)]),
        ..LoadOptions::default()
    };
    let model = engine
        .load_with(&bytes, &options("x", fixed(&[3, 4])))
        .unwrap();
    assert_eq!(
        model.signature().inputs,
        [spec("x", DataType::F32, &fixed(&[3, 4]))]
    );
    let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let outputs = run(&*model, vec![("x", f32s(&[3, 4], &x))]);
    assert_eq!(f32_values(&outputs[0]), dynamic_batch_expected(&x));
    // Another batch is now refused before it reaches the engine.
    let e = check_inputs(
        model.signature(),
        vec![("x".to_owned(), f32s(&[1, 4], &x[..4]))],
    )
    .unwrap_err();
    assert!(
        matches!(&e, InputError::Dimension { name, axis: 0, expected: 3, .. } if name == "x"),
        "{e:?}"
    );

    let shape_error = |options: &LoadOptions| match engine.load_with(&bytes, options) {
        Err(EngineError::InputShape(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        shape_error(&options("z", fixed(&[1, 4]))),
        InputShapeError::UnknownInput {
            name: "z".into(),
            inputs: "x".into()
        }
    );
    assert_eq!(
        shape_error(&options("x", fixed(&[4]))),
        InputShapeError::Rank {
            name: "x".into(),
            declared: 2,
            given: 1
        }
    );
    assert_eq!(
        shape_error(&options("x", fixed(&[2, 5]))),
        InputShapeError::Dimension {
            name: "x".into(),
            axis: 1,
            declared: 4,
            given: 5
        }
    );
}

fn ahead_shapes_are_checked_against_the_signature(engine: &dyn Engine, _kind: EngineKind) {
    let bytes = model("dynamic_batch");
    let ahead = |name: &str, shape: &[usize]| LoadOptions {
        ahead_shapes: vec![BTreeMap::from([(name.to_owned(), shape.to_vec())])],
        ..LoadOptions::default()
    };
    let model = engine.load_with(&bytes, &ahead("x", &[8, 4])).unwrap();
    // The signature stays dynamic: other batches still run.
    assert_eq!(
        model.signature().inputs,
        [spec("x", DataType::F32, &[Dim::Dynamic, Dim::Fixed(4)])]
    );
    let x = [1.0, 2.0, 3.0, 4.0];
    let outputs = run(&*model, vec![("x", f32s(&[1, 4], &x))]);
    assert_eq!(f32_values(&outputs[0]), dynamic_batch_expected(&x));

    for (options, expected) in [
        (
            ahead("z", &[1, 4]),
            InputShapeError::UnknownInput {
                name: "z".into(),
                inputs: "x".into(),
            },
        ),
        (
            ahead("x", &[4]),
            InputShapeError::Rank {
                name: "x".into(),
                declared: 2,
                given: 1,
            },
        ),
        (
            ahead("x", &[2, 5]),
            InputShapeError::Dimension {
                name: "x".into(),
                axis: 1,
                declared: 4,
                given: 5,
            },
        ),
    ] {
        match engine.load_with(&bytes, &options) {
            Err(EngineError::InputShape(e)) => assert_eq!(e, expected),
            other => panic!("{options:?}: {other:?}"),
        }
    }
}

fn threads_can_be_set(engine: &dyn Engine, _kind: EngineKind) {
    for threads in [1, 2] {
        let options = LoadOptions {
            threads: Some(threads),
            ..LoadOptions::default()
        };
        let model = engine.load_with(&model("dynamic_batch"), &options).unwrap();
        let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.5).collect();
        let outputs = run(&*model, vec![("x", f32s(&[2, 4], &x))]);
        assert_eq!(f32_values(&outputs[0]), dynamic_batch_expected(&x));
    }
}

fn wrong_inputs_are_refused_by_name(engine: &dyn Engine, _kind: EngineKind) {
    let model = load(engine, "multi_io");
    let signature = model.signature();
    let x = || f32s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let y = || i64s(&[3], &[1, 2, 3]);
    let check = |inputs: Vec<(&str, Tensor)>| {
        let named = inputs.into_iter().map(|(n, t)| (n.to_owned(), t)).collect();
        check_inputs(signature, named).unwrap_err()
    };
    let e = check(vec![("x", x()), ("y", f32s(&[3], &[1.0, 2.0, 3.0]))]);
    assert!(
        matches!(&e, InputError::DataType { name, expected: DataType::I64, actual: DataType::F32 } if name == "y")
    );
    let e = check(vec![("x", f32s(&[4], &[1.0, 2.0, 3.0, 4.0])), ("y", y())]);
    assert!(matches!(&e, InputError::Rank { name, expected: 2, .. } if name == "x"));
    let e = check(vec![
        ("x", f32s(&[1, 4], &[1.0, 2.0, 3.0, 4.0])),
        ("y", y()),
    ]);
    assert!(matches!(&e, InputError::Dimension { name, axis: 0, expected: 2, .. } if name == "x"));
    let e = check(vec![("x", x())]);
    assert!(matches!(&e, InputError::Missing { name } if name == "y"));
    let e = check(vec![("x", x()), ("y", y()), ("z", y())]);
    assert!(matches!(&e, InputError::Unknown { name, .. } if name == "z"));
    assert!(e.to_string().contains("x, y"), "{e}");
    let e = check(vec![("x", x()), ("y", y()), ("x", x())]);
    assert!(matches!(&e, InputError::Duplicate { name } if name == "x"));

    // A dynamic dimension takes any size; a fixed one beside it is still checked.
    let dynamic = load(engine, "dynamic_batch");
    let named = vec![("x".to_owned(), f32s(&[3, 4], &[0.0; 12]))];
    assert!(check_inputs(dynamic.signature(), named).is_ok());
    let named = vec![("x".to_owned(), f32s(&[3, 2], &[0.0; 6]))];
    let e = check_inputs(dynamic.signature(), named).unwrap_err();
    assert!(matches!(&e, InputError::Dimension { name, axis: 1, expected: 4, .. } if name == "x"));

    // The engine checks what reaches it unchecked too: the data type by name, and the count.
    let e = model
        .run(vec![i64s(&[2, 2], &[1, 2, 3, 4]), y()])
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::Input(InputError::DataType { name, .. }) if name == "x"),
        "{e:?}"
    );
    let e = model.run(vec![x()]).unwrap_err();
    assert!(matches!(e, EngineError::Run { .. }), "{e:?}");
}

fn garbage_bytes_are_refused_with_a_clear_error(engine: &dyn Engine, _kind: EngineKind) {
    let e = load_error(engine, b"this is certainly not an ONNX model");
    assert!(matches!(e, EngineError::Load { .. }), "{e:?}");
    assert!(e.to_string().contains("not an ONNX model"), "{e}");
    // No bytes at all decode as a model without a graph.
    let e = load_error(engine, b"");
    assert!(matches!(e, EngineError::Load { .. }), "{e:?}");
    // A model cut anywhere is refused without a panic.
    let bytes = model("dynamic_batch");
    for len in (0..bytes.len()).step_by(7) {
        let _ = engine.load(&bytes[..len]);
    }
}

fn external_data_is_refused(engine: &dyn Engine, _kind: EngineKind) {
    let e = load_error(engine, &model("external_data"));
    assert!(matches!(e, EngineError::Load { .. }), "{e:?}");
    assert!(e.to_string().contains("external data"), "{e}");
}

fn constants_over_the_load_budget_are_refused(engine: &dyn Engine, kind: EngineKind) {
    // 1 GiB of FP32 from a model of under 200 bytes, refused before the engine folds it.
    let bytes = onnx::constant_of_shape(16384);
    let e = match kind {
        EngineKind::Tract => TractEngine::new().with_load_budget(64 << 20).load(&bytes),
        EngineKind::OnnxRuntime => onnxruntime_engine().with_load_budget(64 << 20).load(&bytes),
    }
    .unwrap_err();
    assert!(matches!(e, EngineError::OverBudget { .. }), "{e:?}");
    // A small one is within the budget.
    let model = engine.load(&onnx::constant_of_shape(4)).unwrap();
    let outputs = model.run(Vec::new()).unwrap();
    assert_eq!(outputs[0].shape(), [4, 4]);
}

/// `Det` is a standard operator that onnxruntime implements and tract does not.
fn an_operator_tract_lacks(engine: &dyn Engine, kind: EngineKind) {
    match kind {
        EngineKind::Tract => {
            let e = load_error(engine, &model("unsupported_op"));
            assert!(e.to_string().contains("Det"), "{e}");
        }
        EngineKind::OnnxRuntime => {
            let model = load(engine, "unsupported_op");
            let x = [1.0, 2.0, 3.0, 4.0, 2.0, 0.0, 0.0, 0.5];
            let outputs = run(&*model, vec![("x", f32s(&[2, 2, 2], &x))]);
            let det = f32_values(&outputs[0]);
            assert!((det[0] + 2.0).abs() < 1e-5, "{det:?}");
            assert!((det[1] - 1.0).abs() < 1e-5, "{det:?}");
        }
    }
}

fn outputs_over_the_limit_are_refused(engine: &dyn Engine, _kind: EngineKind) {
    let model = engine.load(&onnx::outer_sum()).unwrap();
    let inputs = || vec![f32s(&[100, 1], &[1.0; 100]), f32s(&[1, 100], &[2.0; 100])];
    let e = model.run_bounded(inputs(), 9999).unwrap_err();
    assert!(
        matches!(&e, EngineError::OutputTooLarge { name, elements: 10_000, limit: 9999 } if name == "y"),
        "{e:?}"
    );
    let outputs = model.run_bounded(inputs(), 10_000).unwrap();
    assert_eq!(outputs[0].shape(), [100, 100]);
    assert!(f32_values(&outputs[0]).iter().all(|&v| v == 3.0));
}

fn eight_threads_run_one_model_at_once(engine: &dyn Engine, _kind: EngineKind) {
    let model = load(engine, "dynamic_batch");
    thread::scope(|scope| {
        for worker in 0..8usize {
            let model = Arc::clone(&model);
            scope.spawn(move || {
                for round in 0..40usize {
                    let batch = 1 + (worker + round) % 5;
                    let offset = (worker * 1000 + round) as f32;
                    let x: Vec<f32> = (0..batch * 4).map(|i| offset + i as f32).collect();
                    let outputs = run(&*model, vec![("x", f32s(&[batch, 4], &x))]);
                    assert_eq!(outputs[0].shape(), [batch, 2]);
                    assert_eq!(f32_values(&outputs[0]), dynamic_batch_expected(&x));
                }
            });
        }
    });
}

/// An index out of range fails the run; the error names no value of the request.
fn a_failed_run_quotes_no_input_values(engine: &dyn Engine, kind: EngineKind) {
    let gather = onnx::model(
        &[onnx::node("Gather", &["data", "indices"], &["y"])],
        &[onnx::int64_tensor("data", &[3], &[10, 20, 30])],
        &[onnx::value_info("indices", onnx::INT64, &[1])],
        &[onnx::value_info("y", onnx::INT64, &[1])],
    );
    let model = engine.load(&gather).unwrap();
    assert_eq!(
        i64_values(&model.run(vec![i64s(&[1], &[2])]).unwrap()[0]),
        [30]
    );
    let e = model.run(vec![i64s(&[1], &[40_961])]).unwrap_err();
    let message = e.to_string();
    // ONNX Runtime says the index is the input's fault (a 400); tract does not tell.
    match kind {
        EngineKind::OnnxRuntime => assert!(matches!(e, EngineError::InputRejected { .. }), "{e:?}"),
        EngineKind::Tract => assert!(matches!(e, EngineError::Run { .. }), "{e:?}"),
    }
    assert!(!message.contains("40961"), "{message}");
}

fn debug_output_shows_no_weights(engine: &dyn Engine, kind: EngineKind) {
    let model = load(engine, "dynamic_batch");
    let debug = format!("{model:?} {engine:?}");
    // The bias 0.5 appears in no form.
    assert!(!debug.contains("0.5"), "{debug}");
    // The plan that runs does.
    if kind == EngineKind::Tract {
        assert!(debug.contains("Optimized"), "{debug}");
    }
    // Nor do a tensor's values.
    let debug = format!("{:?}", f32s(&[1, 2], &[123.25, 6.5]));
    assert!(!debug.contains("123.25"), "{debug}");
}

/// The onnxruntime engine's own refusals: the library's.
#[test]
fn a_missing_onnxruntime_library_is_refused_with_how_to_get_it() {
    let e = OnnxRuntimeEngine::new("/nonexistent/libonnxruntime.so".as_ref()).unwrap_err();
    let message = e.to_string();
    for expected in [
        "/nonexistent/libonnxruntime.so",
        "pip install onnxruntime",
        "onnxruntime/capi/libonnxruntime.so",
        "onnxruntime_library",
        LIBRARY_ENV,
    ] {
        assert!(message.contains(expected), "{expected}: {message}");
    }
}

#[test]
fn a_second_onnxruntime_library_is_refused_naming_both() {
    let loaded = onnxruntime_engine();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("libonnxruntime.so");
    std::fs::write(&other, b"not a shared library").unwrap();
    let message = OnnxRuntimeEngine::new(&other).unwrap_err().to_string();
    assert!(message.contains(&other.display().to_string()), "{message}");
    assert!(
        message.contains(&loaded.library().display().to_string()),
        "{message}"
    );
    // The same library again is fine.
    OnnxRuntimeEngine::new(loaded.library()).unwrap();
}
