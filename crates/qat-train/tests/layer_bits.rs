//! Mixed precision in the model zoo: a [`ModelSpec::layer_bits`] entry sets that layer's weight and
//! output bits (and only that layer's), as the exported graph shows; a name that is not a layer is
//! a build error that names it.

use qat_export::ir::FloatOp;
use qat_train::convert;
use qat_train::models::{self, LayerBitsOverride, ModelSpec};
use tch::Device;

/// `(node, weight bits if it has weights, output bits)` of every node of `spec`'s exported graph.
fn bits(spec: &ModelSpec) -> Vec<(String, Option<u32>, u32)> {
    let net = models::build(spec, Device::Cpu).unwrap();
    let graph = convert::convert_unchecked(&net).unwrap();
    graph
        .nodes
        .iter()
        .map(|n| {
            let w = match &n.op {
                FloatOp::Conv2d(c) => Some(c.weight_quant.bits),
                FloatOp::Linear(l) => Some(l.weight_quant.bits),
                _ => None,
            };
            (n.name.clone(), w, n.act.bits)
        })
        .collect()
}

#[test]
fn an_override_changes_only_its_layer() {
    let base = ModelSpec::mobilenet_v1_mnist();
    let uniform = bits(&base);
    let spec = ModelSpec {
        layer_bits: vec![
            LayerBitsOverride {
                layer: "block2.pw".into(),
                weight_bits: Some(3),
                act_bits: Some(5),
            },
            LayerBitsOverride {
                layer: "fc".into(),
                weight_bits: Some(2),
                act_bits: None,
            },
        ],
        ..base
    };
    let mixed = bits(&spec);
    assert_eq!(uniform.len(), mixed.len());
    let mut changed = 0;
    for (u, m) in uniform.iter().zip(&mixed) {
        assert_eq!(u.0, m.0);
        match m.0.as_str() {
            "block2.pw" => {
                assert_eq!((m.1, m.2), (Some(3), 5));
                changed += 1;
            }
            "fc" => {
                assert_eq!((m.1, m.2), (Some(2), u.2));
                changed += 1;
            }
            _ => assert_eq!(u, m, "node {} changed", u.0),
        }
    }
    assert_eq!(changed, 2, "both layers are in the graph");
    assert!(
        uniform
            .iter()
            .all(|u| u.1.is_none_or(|w| w == 8) && u.2 == 8)
    );
}

#[test]
fn an_unknown_layer_is_a_build_error_naming_it() {
    let spec = ModelSpec {
        layer_bits: vec![LayerBitsOverride {
            layer: "block9.pw".into(),
            weight_bits: Some(4),
            act_bits: None,
        }],
        ..ModelSpec::mobilenet_v1_mnist()
    };
    let e = models::build(&spec, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("block9.pw"), "{e}");
}
