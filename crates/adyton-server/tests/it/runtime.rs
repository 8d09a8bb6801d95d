//! The tract engine on the test models of `scripts/make_test_models.py`: loading and its
//! fallbacks, signatures, outputs, dynamic batches, input shapes given at load, every data type,
//! input checks, refusals and concurrent runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;

use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{
    check_inputs, DataType, Dim, Engine, EngineError, InputError, InputShapeError, LoadOptions,
    LoadedModel, Plan, PlanCacheOptions, PlanStats, ShapeSet, Signature, Tensor, TensorData,
    TensorSpec,
};
use half::f16;
use zeroize::Zeroizing;

use crate::support::model;

const IDENTITY_MODELS: [(&str, DataType); 13] = [
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

fn load(name: &str) -> Arc<dyn LoadedModel> {
    TractEngine::new()
        .load(&model(name))
        .unwrap_or_else(|e| panic!("{name} does not load: {e}"))
}

fn load_err(bytes: &[u8]) -> String {
    match TractEngine::new().load(bytes) {
        Ok(model) => panic!("loaded {model:?}"),
        Err(e @ EngineError::Load { .. }) => e.to_string(),
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

fn spec(name: &str, datatype: DataType, shape: &[Dim]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype,
        shape: Some(shape.to_vec()),
    }
}

fn fixed(dims: &[usize]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Fixed(d)).collect()
}

fn f32s(shape: &[usize], values: &[f32]) -> Tensor {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_le_bytes(DataType::F32, shape.to_vec(), Zeroizing::new(bytes)).unwrap()
}

fn i64s(shape: &[usize], values: &[i64]) -> Tensor {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_le_bytes(DataType::I64, shape.to_vec(), Zeroizing::new(bytes)).unwrap()
}

fn fixed_bytes(tensor: &Tensor) -> &[u8] {
    match tensor.data() {
        TensorData::Fixed(bytes) => bytes,
        TensorData::Bytes(_) => panic!("{tensor:?} holds strings"),
    }
}

fn f32_values(tensor: &Tensor) -> Vec<f32> {
    assert_eq!(tensor.datatype(), DataType::F32);
    fixed_bytes(tensor)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i64_values(tensor: &Tensor) -> Vec<i64> {
    assert_eq!(tensor.datatype(), DataType::I64);
    fixed_bytes(tensor)
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Checks named inputs against the model's signature and runs it.
fn run(model: &dyn LoadedModel, inputs: Vec<(&str, Tensor)>) -> Vec<Tensor> {
    let named = inputs.into_iter().map(|(n, t)| (n.to_owned(), t)).collect();
    let inputs = check_inputs(model.signature(), named).unwrap();
    model.run(inputs).unwrap()
}

#[test]
fn every_model_loads_with_the_expected_plan() {
    let mut expected = vec![
        ("add", Plan::Optimized),
        ("multi_io", Plan::Optimized),
        ("dynamic_batch", Plan::Optimized),
        ("value_info_conflict", Plan::ValueInfoIgnored),
    ];
    expected.extend(IDENTITY_MODELS.map(|(name, _)| (name, Plan::Optimized)));
    for (name, plan) in expected {
        assert_eq!(load(name).plan(), plan, "{name}");
    }
}

#[test]
fn add_declares_and_computes_the_sum() {
    let model = load("add");
    assert_eq!(
        *model.signature(),
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
    // Inputs given out of order come back in the signature's order.
    let outputs = run(
        &*model,
        vec![("b", f32s(&[1, 3], &b)), ("a", f32s(&[1, 3], &a))],
    );
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].shape(), [1, 3]);
    let expected: Vec<f32> = a.iter().zip(&b).map(|(a, b)| a + b).collect();
    assert_eq!(f32_values(&outputs[0]), expected);
}

#[test]
fn multi_io_returns_every_output_in_graph_order() {
    let model = load("multi_io");
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
    let outputs = run(
        &*model,
        vec![("x", f32s(&[2, 2], &x)), ("y", i64s(&[3], &y))],
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

#[test]
fn dynamic_batch_runs_any_batch_size() {
    let model = load("dynamic_batch");
    let signature = model.signature();
    assert_eq!(
        signature.inputs,
        [spec("x", DataType::F32, &[Dim::Dynamic, Dim::Fixed(4)])]
    );
    assert_eq!(
        signature.outputs,
        [spec("y", DataType::F32, &[Dim::Dynamic, Dim::Fixed(2)])]
    );
    let shape: Vec<i64> = signature.inputs[0]
        .shape
        .as_ref()
        .unwrap()
        .iter()
        .map(|d| d.as_i64())
        .collect();
    assert_eq!(shape, [-1, 4]);

    // y = x @ W + B, with W and B as in scripts/make_test_models.py.
    let weights = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]];
    let bias = [0.5f32, -1.0];
    // One model, batches of different sizes, in turn and back again.
    for batch in [1usize, 2, 5, 1, 5] {
        let x: Vec<f32> = (0..batch * 4).map(|i| i as f32 - 3.0).collect();
        let outputs = run(&*model, vec![("x", f32s(&[batch, 4], &x))]);
        assert_eq!(outputs[0].shape(), [batch, 2]);
        let expected: Vec<f32> = x
            .chunks_exact(4)
            .flat_map(|row| {
                (0..2).map(move |j| {
                    row.iter().zip(&weights).map(|(x, w)| x * w[j]).sum::<f32>() + bias[j]
                })
            })
            .collect();
        assert_eq!(f32_values(&outputs[0]), expected, "batch {batch}");
    }
}

/// Six elements of `datatype`, chosen to include its extremes.
/// Options giving input `x` the shape `dims`.
fn x_shape(dims: &[Dim]) -> LoadOptions {
    LoadOptions {
        input_shapes: BTreeMap::from([("x".to_owned(), dims.to_vec())]),
        ..LoadOptions::default()
    }
}

fn load_with(name: &str, options: &LoadOptions) -> Result<Arc<dyn LoadedModel>, EngineError> {
    TractEngine::new().load_with(&model(name), options)
}

#[test]
fn an_unknown_input_dimension_gets_a_plan_per_shape() {
    // x is [batch, ?, 4] and the graph squeezes axis 1 away: tract can type it only with sizes,
    // so it loads with none, is typed per shape, and reports its dynamic signature.
    let x = [1.0f32, -2.0, 3.5, 0.25, 8.0, -0.5, 0.0, 1e-3];
    let doubled: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
    for options in [LoadOptions::default(), x_shape(&[Dim::Dynamic; 3])] {
        let model = load_with("unknown_dim", &options).unwrap();
        assert_eq!(model.plan(), Plan::PerShape);
        assert_eq!(
            *model.signature(),
            Signature {
                inputs: vec![spec(
                    "x",
                    DataType::F32,
                    &[Dim::Dynamic, Dim::Dynamic, Dim::Fixed(4)]
                )],
                outputs: vec![spec("y", DataType::F32, &[Dim::Dynamic, Dim::Fixed(4)])],
            }
        );
        for batch in [1usize, 2, 1] {
            let outputs = run(&*model, vec![("x", f32s(&[batch, 1, 4], &x[..batch * 4]))]);
            assert_eq!(outputs[0].shape(), [batch, 4]);
            assert_eq!(f32_values(&outputs[0]), doubled[..batch * 4]);
        }
        let stats = model.plan_stats();
        assert_eq!((stats.compiled, stats.hits, stats.cached_plans), (2, 1, 2));
        assert!(stats.cached_bytes > 0);
        assert!(stats.compile_seconds > 0.0);

        // The squeeze cannot take a second dimension of 2: refused by name, and remembered.
        for _ in 0..3 {
            let e = model.run(vec![f32s(&[1, 2, 4], &x)]).unwrap_err();
            assert!(
                matches!(&e, EngineError::Shape { name, shape, .. } if name == "x" && shape == &[1, 2, 4]),
                "{e:?}"
            );
        }
        let stats = model.plan_stats();
        assert_eq!((stats.compiled, stats.refusals), (2, 3), "{stats:?}");
    }

    // Fixing the unknown axis and keeping the symbolic batch: one plan runs any batch.
    let options = x_shape(&[Dim::Dynamic, Dim::Fixed(1), Dim::Dynamic]);
    let model = load_with("unknown_dim", &options).unwrap();
    assert_eq!(model.plan(), Plan::Optimized);
    assert_eq!(
        *model.signature(),
        Signature {
            inputs: vec![spec(
                "x",
                DataType::F32,
                &[Dim::Dynamic, Dim::Fixed(1), Dim::Fixed(4)]
            )],
            outputs: vec![spec("y", DataType::F32, &[Dim::Dynamic, Dim::Fixed(4)])],
        }
    );
    for batch in [1usize, 2] {
        let outputs = run(&*model, vec![("x", f32s(&[batch, 1, 4], &x[..batch * 4]))]);
        assert_eq!(outputs[0].shape(), [batch, 4]);
        assert_eq!(f32_values(&outputs[0]), doubled[..batch * 4]);
    }
    assert_eq!(model.plan_stats(), PlanStats::default());

    // Fixing every axis: the signature shows them all, and another batch is refused by name.
    let model = load_with("unknown_dim", &x_shape(&fixed(&[2, 1, 4]))).unwrap();
    assert_eq!(
        model.signature().inputs,
        [spec("x", DataType::F32, &fixed(&[2, 1, 4]))]
    );
    assert_eq!(
        model.signature().outputs,
        [spec("y", DataType::F32, &fixed(&[2, 4]))]
    );
    let outputs = run(&*model, vec![("x", f32s(&[2, 1, 4], &x))]);
    assert_eq!(f32_values(&outputs[0]), doubled);
    let e = check_inputs(
        model.signature(),
        vec![("x".to_owned(), f32s(&[1, 1, 4], &x[..4]))],
    )
    .unwrap_err();
    assert!(
        matches!(&e, InputError::Dimension { name, axis: 0, expected: 2, .. } if name == "x"),
        "{e:?}"
    );
}

#[test]
fn input_shapes_can_fix_a_symbolic_dimension() {
    let model = load_with("dynamic_batch", &x_shape(&fixed(&[3, 4]))).unwrap();
    assert_eq!(
        model.signature().inputs,
        [spec("x", DataType::F32, &fixed(&[3, 4]))]
    );
    assert_eq!(
        model.signature().outputs,
        [spec("y", DataType::F32, &fixed(&[3, 2]))]
    );
    // Without options, and with empty ones, the batch stays dynamic.
    for model in [
        load("dynamic_batch"),
        load_with("dynamic_batch", &LoadOptions::default()).unwrap(),
    ] {
        assert_eq!(
            model.signature().inputs,
            [spec("x", DataType::F32, &[Dim::Dynamic, Dim::Fixed(4)])]
        );
    }
}

#[test]
fn input_shapes_that_do_not_fit_the_model_are_refused_by_name() {
    let shape_error = |name: &str, options: &LoadOptions| match load_with(name, options) {
        Err(EngineError::InputShape(e)) => e,
        other => panic!("{name}: {other:?}"),
    };

    let mut options = x_shape(&[Dim::Dynamic, Dim::Fixed(1), Dim::Dynamic]);
    options.input_shapes.insert("z".to_owned(), fixed(&[1]));
    let e = shape_error("unknown_dim", &options);
    assert_eq!(
        e,
        InputShapeError::UnknownInput {
            name: "z".into(),
            inputs: "x".into()
        }
    );
    assert!(e.to_string().contains("input 'z'"), "{e}");

    let e = shape_error("unknown_dim", &x_shape(&fixed(&[1, 4])));
    assert_eq!(
        e,
        InputShapeError::Rank {
            name: "x".into(),
            declared: 3,
            given: 2
        }
    );
    assert!(e.to_string().contains("input 'x'"), "{e}");

    // Axis 2 is declared 4.
    let e = shape_error("unknown_dim", &x_shape(&fixed(&[1, 1, 5])));
    assert_eq!(
        e,
        InputShapeError::Dimension {
            name: "x".into(),
            axis: 2,
            declared: 4,
            given: 5
        }
    );
    assert!(e.to_string().contains("input 'x'"), "{e}");

    // Fixed models are checked the same way: add's inputs are [1, 3].
    let options = LoadOptions {
        input_shapes: BTreeMap::from([("b".to_owned(), fixed(&[2, 3]))]),
        ..LoadOptions::default()
    };
    assert_eq!(
        shape_error("add", &options),
        InputShapeError::Dimension {
            name: "b".into(),
            axis: 0,
            declared: 1,
            given: 2
        }
    );
    // Giving a fixed model its own shape changes nothing.
    let options = LoadOptions {
        input_shapes: BTreeMap::from([("a".to_owned(), fixed(&[1, 3]))]),
        ..LoadOptions::default()
    };
    assert_eq!(
        load_with("add", &options).unwrap().signature(),
        load("add").signature()
    );
}

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
                "with\0nul",
                "x".repeat(300).as_str(),
            ]
            .map(|s| Zeroizing::new(s.as_bytes().to_vec()));
            return Tensor::from_strings(vec![2, 3], elements.to_vec()).unwrap();
        }
    };
    Tensor::from_le_bytes(datatype, vec![2, 3], bytes).unwrap()
}

#[test]
fn every_data_type_round_trips_exactly_through_identity() {
    for (name, datatype) in IDENTITY_MODELS {
        let model = load(name);
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
}

#[test]
fn every_data_type_has_an_identity_model() {
    let covered: Vec<DataType> = IDENTITY_MODELS.iter().map(|&(_, d)| d).collect();
    assert_eq!(covered, DataType::ALL);
}

#[test]
fn bytes_that_are_not_utf8_are_refused_for_a_string_input() {
    let model = load("identity_string");
    let mut elements: Vec<_> = (0..6).map(|_| Zeroizing::new(b"ok".to_vec())).collect();
    elements[4] = Zeroizing::new(vec![0xff, 0xfe]);
    let input = Tensor::from_strings(vec![2, 3], elements).unwrap();
    let inputs = check_inputs(model.signature(), vec![("x".into(), input)]).unwrap();
    match model.run(inputs) {
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

#[test]
fn inputs_that_do_not_match_the_signature_are_refused_by_name() {
    let model = load("multi_io");
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
    let dynamic = load("dynamic_batch");
    let named = vec![("x".to_owned(), f32s(&[3, 4], &[0.0; 12]))];
    assert!(check_inputs(dynamic.signature(), named).is_ok());
    let named = vec![("x".to_owned(), f32s(&[3, 2], &[0.0; 6]))];
    let e = check_inputs(dynamic.signature(), named).unwrap_err();
    assert!(matches!(&e, InputError::Dimension { name, axis: 1, expected: 4, .. } if name == "x"));
}

#[test]
fn run_refuses_a_wrong_data_type_even_unchecked() {
    let model = load("add");
    let e = model
        .run(vec![i64s(&[1, 3], &[1, 2, 3]), f32s(&[1, 3], &[1.0; 3])])
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::Input(InputError::DataType { name, .. }) if name == "a"),
        "{e:?}"
    );
    let e = model.run(vec![f32s(&[1, 3], &[1.0; 3])]).unwrap_err();
    assert!(matches!(e, EngineError::Run { .. }), "{e:?}");
}

#[test]
fn bytes_that_are_not_onnx_are_refused_with_tracts_reason() {
    let reason = load_err(b"this is certainly not an ONNX model");
    assert!(reason.contains("not an ONNX model"), "{reason}");
    // prost's decoding error, as tract passes it on.
    assert!(reason.contains("decod"), "{reason}");

    // No bytes at all decode as an empty protobuf message: a model without a graph.
    let reason = load_err(b"");
    assert!(reason.contains("graph"), "{reason}");
}

#[test]
fn a_model_with_an_operator_tract_lacks_is_refused_with_tracts_reason() {
    let reason = load_err(&model("unsupported_op"));
    assert!(
        reason.starts_with("the model cannot be loaded: tract "),
        "{reason}"
    );
    assert!(reason.contains("Det"), "{reason}");
}

#[test]
fn a_model_with_external_data_is_refused_without_reading_files() {
    let reason = load_err(&model("external_data"));
    assert!(reason.contains("external data"), "{reason}");
}

#[test]
fn truncated_models_are_refused_without_panicking() {
    let bytes = model("dynamic_batch");
    for len in (0..bytes.len()).step_by(7) {
        let _ = TractEngine::new().load(&bytes[..len]);
    }
}

#[test]
fn contradictory_value_info_is_ignored_and_the_model_runs() {
    let model = load("value_info_conflict");
    assert_eq!(model.plan(), Plan::ValueInfoIgnored);
    assert_eq!(
        model.signature().outputs,
        [spec("y", DataType::F32, &fixed(&[2, 3]))]
    );
    let x = [-2.0, -0.5, 0.0, 0.5, 2.0, 3.0];
    let outputs = run(&*model, vec![("x", f32s(&[2, 3], &x))]);
    let expected: Vec<f32> = x.iter().map(|v| -v.max(0.0)).collect();
    assert_eq!(f32_values(&outputs[0]), expected);
}

#[test]
fn a_model_loads_from_a_reader() {
    let bytes = model("add");
    let model = TractEngine::new()
        .load_from_reader(&mut bytes.as_slice())
        .unwrap();
    assert_eq!(model.signature().inputs.len(), 2);
}

#[test]
fn debug_output_shows_no_weights_or_tensor_values() {
    let model = load("dynamic_batch");
    let debug = format!("{model:?}");
    assert!(debug.contains("Optimized"), "{debug}");
    // The bias 0.5 appears in no form.
    assert!(!debug.contains("0.5"), "{debug}");
    let tensor = f32s(&[1, 2], &[123.25, 6.5]);
    let debug = format!("{tensor:?}");
    assert!(!debug.contains("123.25"), "{debug}");
}

#[test]
fn one_model_runs_on_many_threads_at_once() {
    let model = load("dynamic_batch");
    thread::scope(|scope| {
        for worker in 0..4usize {
            let model = Arc::clone(&model);
            scope.spawn(move || {
                for round in 0..50usize {
                    let batch = 1 + (worker + round) % 5;
                    let offset = (worker * 1000 + round) as f32;
                    let x: Vec<f32> = (0..batch * 4).map(|i| offset + i as f32).collect();
                    let outputs = run(&*model, vec![("x", f32s(&[batch, 4], &x))]);
                    let y = f32_values(&outputs[0]);
                    assert_eq!(y.len(), batch * 2);
                    for (row, out) in x.chunks_exact(4).zip(y.chunks_exact(2)) {
                        assert_eq!(out[0], row[0] + row[2] + 2.0 * row[3] + 0.5);
                        assert_eq!(out[1], row[1] + row[2] - row[3] - 1.0);
                    }
                }
            });
        }
    });
}

/// Options with these plan cache bounds.
fn plan_cache(max_plans: usize, max_bytes: u64, max_compiles_per_minute: u32) -> LoadOptions {
    LoadOptions {
        plan_cache: PlanCacheOptions {
            max_plans,
            max_bytes,
            max_compiles_per_minute,
        },
        ..LoadOptions::default()
    }
}

/// `[batch, 1, 4]` inputs of `unknown_dim`, and its doubled outputs.
fn run_unknown_dim(model: &dyn LoadedModel, batch: usize) -> Result<Vec<Tensor>, EngineError> {
    let x: Vec<f32> = (0..batch * 4).map(|i| i as f32).collect();
    let outputs = model.run(vec![f32s(&[batch, 1, 4], &x)])?;
    let doubled: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
    assert_eq!(f32_values(&outputs[0]), doubled);
    Ok(outputs)
}

#[test]
fn random_shapes_stay_within_the_plan_cache_bounds() {
    // A plan of batch b holds about 3 * 16 * b bytes of values: 2 KiB holds a few.
    let model = load_with("unknown_dim", &plan_cache(3, 2048, u32::MAX)).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..60 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let batch = 1 + usize::try_from(state % 12).unwrap();
        run_unknown_dim(&*model, batch).unwrap();
        let stats = model.plan_stats();
        assert!(stats.cached_plans <= 3, "{stats:?}");
        assert!(stats.cached_bytes <= 2048, "{stats:?}");
    }
    let stats = model.plan_stats();
    assert!(stats.evictions > 0 && stats.hits > 0, "{stats:?}");
    assert_eq!(stats.compiled, stats.evictions + stats.cached_plans);

    // One plan over the bound is refused, by name, and not compiled again.
    for _ in 0..2 {
        let e = run_unknown_dim(&*model, 100).unwrap_err();
        assert!(
            matches!(&e, EngineError::Shape { name, reason, .. } if name == "x" && reason.contains("max_plan_bytes")),
            "{e:?}"
        );
    }
    let after = model.plan_stats();
    assert_eq!(after.compiled, stats.compiled);
    assert_eq!(after.refusals, stats.refusals + 2);
}

#[test]
fn concurrent_first_requests_for_one_shape_compile_it_once() {
    let model = load("unknown_dim");
    let barrier = std::sync::Barrier::new(8);
    thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                barrier.wait();
                run_unknown_dim(&*model, 5).unwrap();
            });
        }
    });
    let stats = model.plan_stats();
    assert_eq!((stats.compiled, stats.hits), (1, 7), "{stats:?}");
}

#[test]
fn compilations_beyond_the_cap_are_busy_and_cached_plans_still_serve() {
    let model = load_with("unknown_dim", &plan_cache(8, 1 << 20, 1)).unwrap();
    run_unknown_dim(&*model, 1).unwrap();
    let e = run_unknown_dim(&*model, 2).unwrap_err();
    assert!(
        matches!(&e, EngineError::Busy { retry_after_secs, reason } if (1..=60).contains(retry_after_secs) && reason.contains("max_compiles_per_minute")),
        "{e:?}"
    );
    run_unknown_dim(&*model, 1).unwrap();
    let stats = model.plan_stats();
    assert_eq!((stats.compiled, stats.rate_limited, stats.hits), (1, 1, 1));

    // A model with one plan for every shape is never busy.
    let one_plan = TractEngine::new()
        .load_with(
            &crate::support::model("dynamic_batch"),
            &plan_cache(8, 1 << 20, 0),
        )
        .unwrap();
    for batch in 1..4 {
        run(
            &*one_plan,
            vec![("x", f32s(&[batch, 4], &vec![1.0; batch * 4]))],
        );
    }
}

fn ahead(shapes: &[(&str, &[usize])]) -> LoadOptions {
    let set: ShapeSet = shapes
        .iter()
        .map(|(name, shape)| ((*name).to_owned(), shape.to_vec()))
        .collect();
    LoadOptions {
        ahead_shapes: vec![set],
        ..LoadOptions::default()
    }
}

#[test]
fn ahead_shapes_are_compiled_at_load_and_bad_ones_refused() {
    let mut options = ahead(&[("x", &[3, 1, 4])]);
    options
        .ahead_shapes
        .extend(ahead(&[("x", &[1, 1, 4])]).ahead_shapes);
    // Ahead shapes are not capped per minute.
    options.plan_cache.max_compiles_per_minute = 0;
    let model = load_with("unknown_dim", &options).unwrap();
    let stats = model.plan_stats();
    assert_eq!((stats.compiled, stats.cached_plans), (2, 2));
    run_unknown_dim(&*model, 3).unwrap();
    run_unknown_dim(&*model, 1).unwrap();
    assert_eq!(model.plan_stats().hits, 2);

    let e = load_with("unknown_dim", &ahead(&[("x", &[1, 2, 4])])).unwrap_err();
    assert!(
        matches!(&e, EngineError::Shape { name, shape, .. } if name == "x" && shape == &[1, 2, 4]),
        "{e:?}"
    );
    let e = load_with("unknown_dim", &ahead(&[("x", &[1, 4])])).unwrap_err();
    assert!(
        matches!(&e, EngineError::InputShape(InputShapeError::Rank { name, declared: 3, given: 2 }) if name == "x"),
        "{e:?}"
    );
    let e = load_with("unknown_dim", &ahead(&[("x", &[1, 1, 5])])).unwrap_err();
    assert!(
        matches!(&e, EngineError::InputShape(InputShapeError::Dimension { name, axis: 2, declared: 4, given: 5 }) if name == "x"),
        "{e:?}"
    );
    let e = load_with("unknown_dim", &ahead(&[("x", &[1, 1, 4]), ("z", &[1])])).unwrap_err();
    assert!(
        matches!(&e, EngineError::InputShape(InputShapeError::UnknownInput { name, .. }) if name == "z"),
        "{e:?}"
    );
    let e = load_with("unknown_dim", &ahead(&[])).unwrap_err();
    assert!(
        matches!(&e, EngineError::Shape { name, .. } if name == "x"),
        "{e:?}"
    );
    // A model with one plan checks them against its signature.
    load_with("dynamic_batch", &ahead(&[("x", &[7, 4])])).unwrap();
    let e = load_with("dynamic_batch", &ahead(&[("x", &[7, 5])])).unwrap_err();
    assert!(
        matches!(&e, EngineError::InputShape(InputShapeError::Dimension { name, .. }) if name == "x"),
        "{e:?}"
    );
}

#[test]
fn every_thread_setting_gives_the_same_outputs() {
    for threads in [None, Some(1), Some(2), Some(3)] {
        let options = LoadOptions {
            threads,
            ..LoadOptions::default()
        };
        let model = load_with("dynamic_batch", &options).unwrap();
        let x: Vec<f32> = (0..64 * 4).map(|i| i as f32).collect();
        let outputs = run(&*model, vec![("x", f32s(&[64, 4], &x))]);
        let y = f32_values(&outputs[0]);
        for (row, out) in x.chunks_exact(4).zip(y.chunks_exact(2)) {
            assert_eq!(out[0], row[0] + row[2] + 2.0 * row[3] + 0.5);
            assert_eq!(out[1], row[1] + row[2] - row[3] - 1.0);
        }
    }
}

#[test]
fn a_symbolic_plan_serves_every_shape_and_ahead_shapes_get_plans_of_their_own() {
    let model = load_with("dynamic_batch", &ahead(&[("x", &[3, 4])])).unwrap();
    assert_eq!(model.plan(), Plan::Optimized);
    assert_eq!(model.plan_stats().compiled, 1);
    let check = |batch: usize| {
        let x: Vec<f32> = (0..batch * 4).map(|i| i as f32).collect();
        let outputs = run(&*model, vec![("x", f32s(&[batch, 4], &x))]);
        let y = f32_values(&outputs[0]);
        for (row, out) in x.chunks_exact(4).zip(y.chunks_exact(2)) {
            assert_eq!(out[0], row[0] + row[2] + 2.0 * row[3] + 0.5);
            assert_eq!(out[1], row[1] + row[2] - row[3] - 1.0);
        }
    };
    check(3);
    assert_eq!(model.plan_stats().hits, 1);
    // Other shapes run on the symbolic plan: nothing is compiled for a request.
    for batch in [1, 2, 5, 3] {
        check(batch);
    }
    let stats = model.plan_stats();
    assert_eq!((stats.compiled, stats.hits, stats.cached_plans), (1, 2, 1));
}
