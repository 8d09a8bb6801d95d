//! What only the tract engine does, on the test models of `scripts/make_test_models.py`: the plan
//! each model gets and its fallbacks, plans per input shape and their cache's bounds, input shapes
//! given at load, shapes compiled ahead, thread settings, and tract's own reasons for refusing a
//! model. What every engine does (signatures, data types, input checks, refusals, concurrent
//! runs) is the shared suite's, in `engines.rs`, which runs on tract too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;

use adyton_server::runtime::tract::TractEngine;
use adyton_server::runtime::{
    check_inputs, DataType, Dim, Engine, EngineError, InputError, InputShapeError, LoadOptions,
    LoadedModel, Plan, PlanCacheOptions, PlanStats, ShapeSet, Signature, Tensor,
};

use crate::engines::{dynamic_batch_expected, f32_values, f32s, fixed, run, spec, IDENTITY_MODELS};
use crate::support::model;

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
        assert_eq!(f32_values(&outputs[0]), dynamic_batch_expected(&x));
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
        assert_eq!(f32_values(&outputs[0]), dynamic_batch_expected(&x));
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
