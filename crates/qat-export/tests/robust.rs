//! Hostile graphs: overflowing products, limits checked at validation (before the interpreter
//! allocates), and bounded bincode decoding.

use qat_export::ir::{Conv2d, FloatGraph, Linear, NodeId, Pool2d};
use qat_export::limits::MAX_SPATIAL;
use qat_export::{GraphError, limits::GraphLimits, validate::infer_shapes_with};

/// The graph `x (shape) → node → y`, the node added by `add(g, x)`.
fn graph(shape: &[usize], add: impl FnOnce(&mut FloatGraph, NodeId) -> NodeId) -> FloatGraph {
    let mut g = FloatGraph::new("g");
    let x = g.input("x", shape);
    let n = add(&mut g, x);
    g.output("y", n);
    g
}

/// The graph `x (shape) → conv "conv" → y`.
fn conv_graph(shape: &[usize], conv: Conv2d) -> FloatGraph {
    graph(shape, |g, x| g.conv2d("conv", x, conv))
}

/// The node and the parameter that a `Param` error names.
fn param<T: std::fmt::Debug>(r: Result<T, GraphError>) -> (String, &'static str) {
    match r {
        Err(GraphError::Param { node, what, .. }) => (node, what),
        other => panic!("expected a parameter error, got {other:?}"),
    }
}

#[test]
fn conv_weight_shape_product_overflow_is_a_typed_error() {
    let big = 1usize << (usize::BITS / 2);
    // o·kh·kw·ig = 2^64: wraps to 0 = weight.len() in a wrapping build.
    let g = conv_graph(&[2, 2, 1], Conv2d::new(vec![], [big, big, 1, 1]));
    assert_eq!(param(g.validate()), ("conv".into(), "weight_shape"));
}

#[test]
fn linear_weight_shape_product_overflow_is_a_typed_error() {
    let big = 1usize << (usize::BITS / 2);
    let g = graph(&[4], |g, x| {
        g.linear("fc", x, Linear::new(vec![], [big, big]))
    });
    assert_eq!(param(g.validate()), ("fc".into(), "weight_shape"));
}

#[test]
fn huge_conv_padding_is_refused_at_validation_naming_the_node() {
    // Padding 2^20 would ask the interpreter for terabytes.
    let one = || Conv2d::new(vec![1.0], [1, 1, 1, 1]);
    let g = conv_graph(&[1, 1, 1], one().with_padding([1 << 20; 4]));
    assert_eq!(param(g.validate()), ("conv".into(), "padding"));
    // Within the spatial limit the output size is what is refused: (2^17)² elements.
    let g = conv_graph(&[1, 1, 1], one().with_padding([MAX_SPATIAL; 4]));
    assert!(matches!(g.validate(), Err(GraphError::Limit { node, .. }) if node == "conv"));
}

#[test]
fn stride_beyond_the_runtime_limit_is_a_graph_error_not_an_export_bug() {
    let conv = Conv2d::new(vec![1.0], [1, 1, 1, 1]).with_stride([MAX_SPATIAL + 1, 1]);
    let g = conv_graph(&[4, 4, 1], conv);
    assert_eq!(param(g.validate()), ("conv".into(), "stride"));
}

#[test]
fn pool_work_is_limited_and_raisable() {
    let g = graph(&[64, 64, 4], |g, x| {
        g.max_pool("pool", x, Pool2d::square(32, 1))
    });
    let work = 33u64 * 33 * 4 * 32 * 32;
    let at = |max_pool_work| {
        infer_shapes_with(
            &g,
            &GraphLimits {
                max_pool_work,
                ..GraphLimits::default()
            },
        )
    };
    assert!(at(work).is_ok());
    match at(work - 1) {
        Err(GraphError::Limit { node, needed, .. }) => {
            assert_eq!((node.as_str(), needed), ("pool", work))
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn bincode_name_length_beyond_the_input_is_an_error_not_an_allocation() {
    // name: varint 0xFC + u64 length 2^40, no bytes: a 9-byte input.
    let mut bytes = vec![0xFC];
    bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        FloatGraph::from_bincode(&bytes),
        Err(GraphError::Serde {
            format: "bincode",
            ..
        })
    ));
}

#[test]
fn negative_batch_norm_variance_and_non_finite_weights_are_refused() {
    use qat_export::ir::BatchNorm;
    let bn = |var: f32| BatchNorm {
        gamma: vec![1.0],
        beta: vec![0.0],
        mean: vec![0.0],
        var: vec![var],
        eps: 1e-5,
    };
    let bn_conv = Conv2d::new(vec![1.0], [1, 1, 1, 1]).with_batch_norm(bn(-1.0));
    let g = conv_graph(&[2, 2, 1], bn_conv);
    assert_eq!(param(g.validate()), ("conv".into(), "batch_norm.var"));
    let g = conv_graph(&[2, 2, 1], Conv2d::new(vec![f32::INFINITY], [1, 1, 1, 1]));
    // JSON cannot hold ∞: to_json refuses instead of writing a `null` it cannot read back.
    assert_eq!(param(g.to_json()), ("conv".into(), "weight"));
}

#[test]
fn bincode_errors_name_the_node_and_offset() {
    let g = graph(&[4], |g, x| {
        g.linear("fc", x, Linear::new(vec![1.0; 8], [2, 4]))
    });
    let bytes = g.to_bincode().unwrap();
    assert_eq!(FloatGraph::from_bincode(&bytes).unwrap(), g);
    // Cut inside the linear node's weights: the error names `nodes[1]` and where it starts.
    let cut = &bytes[..bytes.len() - 20];
    match FloatGraph::from_bincode(cut) {
        Err(GraphError::Serde { message, .. }) => {
            assert!(message.contains("`nodes[1]` (starts at byte"), "{message}")
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        FloatGraph::from_bincode(&trailing),
        Err(GraphError::Serde { message, .. }) if message.contains("1 trailing bytes")
    ));
}
