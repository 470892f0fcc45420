//! The IR round-trips through JSON and bincode unchanged; corrupt input is a typed error.

mod common;

use common::{GenOptions, random_cnn};
use qat_export::ir::{BnTraining, WeightQuant, WeightScheme};
use qat_export::{FloatGraph, GraphError};

#[test]
fn json_and_bincode_round_trip() {
    for seed in 0..10 {
        let mut g = random_cnn(seed, &GenOptions::default());
        // exercise every optional field
        g.set_all_weight_quant(WeightQuant {
            scheme: WeightScheme::AsymmetricPerTensor,
            bits: 6,
        });
        g.set_range(qat_export::NodeId(0), -1.0, 1.0).unwrap();
        g.set_activation_bits(qat_export::NodeId(0), 7).unwrap();
        if let Some(qat_export::ir::FloatOp::Conv2d(c)) = g.nodes.get_mut(1).map(|n| &mut n.op) {
            c.bn_training = BnTraining::FoldedWithCorrection;
        }
        let json = g.to_json().unwrap();
        assert_eq!(FloatGraph::from_json(&json).unwrap(), g);
        let bin = g.to_bincode().unwrap();
        assert_eq!(FloatGraph::from_bincode(&bin).unwrap(), g);
    }
}

#[test]
fn corrupt_input_is_a_typed_error() {
    let g = random_cnn(1, &GenOptions::default());
    let bin = g.to_bincode().unwrap();
    assert!(matches!(
        FloatGraph::from_bincode(&bin[..bin.len() / 2]),
        Err(GraphError::Serde {
            format: "bincode",
            ..
        })
    ));
    let mut extra = bin.clone();
    extra.push(0);
    assert!(matches!(
        FloatGraph::from_bincode(&extra),
        Err(GraphError::Serde {
            format: "bincode",
            ..
        })
    ));
    assert!(matches!(
        FloatGraph::from_json("{\"name\": 3}"),
        Err(GraphError::Serde { format: "json", .. })
    ));
}
