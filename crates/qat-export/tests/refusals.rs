//! Every refusal gives its typed error, and one error lists every offending node.

use qat_export::ir::{Activation, BatchNorm, Conv2d, Linear};
use qat_export::{ExportError, ExportOptions, FloatGraph, GraphError, NodeId, QuantPlan, Refusal};

fn bn(c: usize) -> BatchNorm {
    BatchNorm {
        gamma: vec![1.0; c],
        beta: vec![0.0; c],
        mean: vec![0.0; c],
        var: vec![1.0; c],
        eps: 1e-5,
    }
}

/// x[4,4,2] → conv (BN) → flatten → fc → output, all ranges set.
fn base() -> (FloatGraph, [NodeId; 4]) {
    let mut g = FloatGraph::new("refuse");
    let x = g.input("x", &[4, 4, 2]);
    let c = g.conv2d(
        "conv",
        x,
        Conv2d::new(vec![0.1; 3 * 2], [3, 1, 1, 2])
            .with_batch_norm(bn(3))
            .with_activation(Activation::Relu),
    );
    let f = g.flatten("flat", c);
    let l = g.linear("fc", f, Linear::new(vec![0.01; 2 * 48], [2, 48]));
    g.output("y", l);
    for id in [x, c, f, l] {
        g.set_range(id, -1.0, 1.0).unwrap();
    }
    (g, [x, c, f, l])
}

fn refusals(g: &FloatGraph, opts: ExportOptions) -> Vec<Refusal> {
    match QuantPlan::new(g, &opts) {
        Err(ExportError::Refused { refusals }) => refusals,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn base_graph_exports() {
    let (g, _) = base();
    let model = qat_export::export(&g, &ExportOptions::default()).unwrap();
    model.validate().unwrap();
}

#[test]
fn uncalibrated_ranges_are_refused_all_at_once() {
    let (mut g, [x, c, _, l]) = base();
    for id in [x, c, l] {
        g.nodes[id.0].act.range = None;
    }
    let r = refusals(&g, ExportOptions::default());
    assert_eq!(
        r,
        vec![
            Refusal::Uncalibrated { node: "x".into() },
            Refusal::Uncalibrated {
                node: "conv".into()
            },
            Refusal::Uncalibrated { node: "fc".into() },
        ]
    );
    // the flatten inherits its input's params: its range is not required
    let mut g2 = base().0;
    g2.nodes[2].act.range = None;
    assert!(QuantPlan::new(&g2, &ExportOptions::default()).is_ok());
    // the message names every node
    let msg = ExportError::Refused { refusals: r }.to_string();
    for n in ["\"x\"", "\"conv\"", "\"fc\""] {
        assert!(msg.contains(n), "{msg}");
    }
}

#[test]
fn unfolded_batch_norm_is_refused_when_folding_is_off() {
    let (g, _) = base();
    let r = refusals(
        &g,
        ExportOptions {
            fold_batch_norm: false,
            ..ExportOptions::default()
        },
    );
    assert_eq!(
        r,
        vec![Refusal::UnfoldedBatchNorm {
            node: "conv".into()
        }]
    );
}

#[test]
fn linear_on_a_spatial_input_is_unsupported() {
    let mut g = FloatGraph::new("fc-on-hwc");
    let x = g.input("x", &[2, 2, 3]);
    let l = g.linear("fc", x, Linear::new(vec![0.1; 12], [1, 12]));
    g.output("y", l);
    g.set_range(x, -1.0, 1.0).unwrap();
    g.set_range(l, -1.0, 1.0).unwrap();
    let r = refusals(&g, ExportOptions::default());
    assert!(
        matches!(&r[..], [Refusal::Unsupported { node, op: "Linear", .. }] if node == "fc"),
        "{r:?}"
    );
}

#[test]
fn non_finite_parameters_are_refused() {
    let (mut g, [_, c, _, l]) = base();
    if let qat_export::ir::FloatOp::Conv2d(conv) = &mut g.nodes[c.0].op {
        conv.weight[0] = f32::NAN;
        conv.batch_norm.as_mut().unwrap().var[1] = f32::INFINITY;
    }
    if let qat_export::ir::FloatOp::Linear(fc) = &mut g.nodes[l.0].op {
        fc.bias = Some(vec![0.0, f32::NEG_INFINITY]);
    }
    let r = refusals(&g, ExportOptions::default());
    assert_eq!(
        r,
        vec![
            Refusal::NonFinite {
                node: "conv".into(),
                what: "weight"
            },
            Refusal::NonFinite {
                node: "conv".into(),
                what: "batch_norm"
            },
            Refusal::NonFinite {
                node: "fc".into(),
                what: "bias"
            },
        ]
    );
}

#[test]
fn mixed_problems_are_listed_together_in_node_order() {
    let (mut g, [x, _, _, l]) = base();
    g.nodes[x.0].act.range = None;
    if let qat_export::ir::FloatOp::Linear(fc) = &mut g.nodes[l.0].op {
        fc.weight[3] = f32::NAN;
    }
    let r = refusals(
        &g,
        ExportOptions {
            fold_batch_norm: false,
            ..ExportOptions::default()
        },
    );
    let nodes: Vec<&str> = r.iter().map(|r| r.node()).collect();
    assert_eq!(nodes, vec!["x", "conv", "fc"]);
}

#[test]
fn structural_errors_are_typed_and_name_the_node() {
    let (mut g, [_, c, ..]) = base();
    if let qat_export::ir::FloatOp::Conv2d(conv) = &mut g.nodes[c.0].op {
        conv.weight.pop();
    }
    assert!(matches!(
        QuantPlan::new(&g, &ExportOptions::default()),
        Err(ExportError::Graph(GraphError::Length { node, what: "weight", .. })) if node == "conv"
    ));

    let (mut g, [x, ..]) = base();
    g.set_range(x, 2.0, 1.0).unwrap();
    assert!(matches!(g.validate(), Err(GraphError::BadRange { node, .. }) if node == "x"));

    let (mut g, [x, ..]) = base();
    g.set_activation_bits(x, 9).unwrap();
    assert!(matches!(
        g.validate(),
        Err(GraphError::Bits { node, what: "activation", bits: 9 }) if node == "x"
    ));

    let (mut g, _) = base();
    g.nodes[1].inputs = vec![NodeId(3)];
    assert!(matches!(g.validate(), Err(GraphError::BadInput { node, input: 3 }) if node == "conv"));

    let (mut g, _) = base();
    g.nodes[2].name = "conv".into();
    assert!(matches!(g.validate(), Err(GraphError::DuplicateName { node }) if node == "conv"));

    let (mut g, _) = base();
    let y = g.find("y").unwrap();
    let z = g.output("z", y);
    assert!(
        matches!(g.validate(), Err(GraphError::Shape { node, op: "Output", .. }) if node == "z")
    );
    assert!(z.0 > y.0);

    let mut g = FloatGraph::new("no-output");
    g.input("x", &[3]);
    assert_eq!(g.validate(), Err(GraphError::NoOutput));

    let mut g = FloatGraph::new("groups");
    let x = g.input("x", &[3, 3, 3]);
    let c = g.conv2d(
        "dw",
        x,
        Conv2d::new(vec![0.1; 2], [2, 1, 1, 1]).with_groups(2),
    );
    g.output("y", c);
    assert!(
        matches!(g.validate(), Err(GraphError::Param { node, what: "groups", .. }) if node == "dw")
    );

    let mut g = FloatGraph::new("add");
    let x = g.input("x", &[2, 2, 1]);
    let p = g.max_pool("pool", x, qat_export::ir::Pool2d::square(2, 1));
    let a = g.add("add", x, p, Activation::None);
    g.output("y", a);
    assert!(
        matches!(g.validate(), Err(GraphError::Shape { node, op: "Add", .. }) if node == "add")
    );
}

#[test]
fn average_pool_with_its_own_params_needs_a_range() {
    let mut g = FloatGraph::new("gap_own");
    let x = g.input("x", &[2, 2, 1]);
    let p = g.global_avg_pool("gap", x);
    g.output("y", p);
    g.set_range(x, -1.0, 1.0).unwrap();
    let own = ExportOptions {
        avg_pool_own_params: true,
        ..ExportOptions::default()
    };
    assert_eq!(
        refusals(&g, own),
        vec![Refusal::Uncalibrated { node: "gap".into() }]
    );
    // inheriting the input's params needs none
    assert!(QuantPlan::new(&g, &ExportOptions::default()).is_ok());
    g.set_range(p, -0.5, 0.5).unwrap();
    let plan = QuantPlan::new(&g, &own).unwrap();
    assert_ne!(plan.act_params[p.0], plan.act_params[x.0]);
    assert!(plan.fake_quant_points()[p.0].is_some());
}
