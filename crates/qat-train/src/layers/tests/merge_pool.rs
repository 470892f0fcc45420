//! Add, concat and pools, input errors, and the whole-model switches.

use super::*;

#[test]
fn add_concat_and_pools_have_their_own_ranges() {
    let vs = VarStore::new(Device::Cpu);
    let q = QuantConfig::default();
    let mut add = QatAdd::new(&(vs.root() / "add"), Activation::Relu, q).unwrap();
    let mut cat = QatConcat::new(&(vs.root() / "cat"), 2, q).unwrap();
    let mut gap = QatGlobalAvgPool::new(&(vs.root() / "gap"), q).unwrap();
    let mut avg = QatAvgPool2d::new(&(vs.root() / "avg"), Pool2dConfig::new(2, 2), q).unwrap();
    let mut max = QatMaxPool2d::new(&(vs.root() / "max"), Pool2dConfig::new(2, 2)).unwrap();
    let a = rand(14, &[2, 3, 4, 4], -1.0, 1.0);
    let b = rand(15, &[2, 3, 4, 4], -1.0, 3.0);
    let fq = |oq: &OutputQuantizer, t: &Tensor| -> Vec<f32> {
        let p = oq.observer().per_tensor_qparams().unwrap();
        vecf(t).iter().map(|&v| p.fake_quant(v)).collect()
    };
    let y = add.forward_t(&a, &b, true).unwrap();
    assert_eq!(
        vecf(&y),
        fq(add.output_quantizer().unwrap(), &(&a + &b).relu())
    );
    let y = cat.forward_t(&[&a, &b], true).unwrap();
    assert_eq!(y.size(), vec![2, 6, 4, 4]);
    assert_eq!(
        vecf(&y),
        fq(cat.output_quantizer().unwrap(), &Tensor::cat(&[&a, &b], 1))
    );
    let y = gap.forward_t(&b, true).unwrap();
    assert_eq!(y.size(), vec![2, 3]);
    let (lo, hi) = gap
        .export()
        .map(|e| match e {
            LayerExport::Pool(p) => p.output.unwrap().range.unwrap(),
            _ => panic!("pool"),
        })
        .unwrap();
    let m = b.mean_dim(Some([2i64, 3].as_slice()), false, None);
    assert_eq!(
        (lo, hi),
        (
            vecf(&m).iter().cloned().fold(f32::MAX, f32::min),
            vecf(&m).iter().cloned().fold(f32::MIN, f32::max)
        )
    );
    let y = avg.forward_t(&b, true).unwrap();
    assert_eq!(y.size(), vec![2, 3, 2, 2]);
    let y = max.forward_t(&a, true).unwrap();
    assert_eq!(
        vecf(&y),
        vecf(&a.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false))
    );
    assert!(matches!(
        max.export().unwrap(),
        LayerExport::Pool(PoolExport {
            output: None,
            kind: PoolKind::Max,
            ..
        })
    ));
    assert!(
        add.forward_t(&a, &rand(1, &[2, 3], 0.0, 1.0), true)
            .is_err()
    );
    assert!(cat.forward_t(&[&a], true).is_err());
}

#[test]
fn bad_inputs_are_errors_naming_the_layer() {
    let vs = VarStore::new(Device::Cpu);
    let mut l = conv_bn(&vs, "block3", BnFoldMode::Whitepaper, Activation::None);
    let err = l
        .forward_t(&rand(1, &[2, 4, 5, 5], 0.0, 1.0), true)
        .unwrap_err();
    assert!(matches!(err.kind, LayerErrorKind::Shape { .. }));
    assert!(err.to_string().contains("block3"), "{err}");
    // A single value per channel cannot give batch statistics.
    assert!(
        l.forward_t(&rand(1, &[1, 3, 1, 1], 0.0, 1.0), true)
            .is_err()
    );
    assert!(
        QatConv2d::new(
            &(vs.root() / "g"),
            Conv2dConfig {
                groups: 2,
                ..Conv2dConfig::new(3, 4, 3)
            }
        )
        .is_err()
    );
}

#[test]
fn whole_model_switches_reach_every_layer() {
    use crate::models::NetBuilder;
    use crate::schedule::{Phase, PhaseControl};
    let mut b = NetBuilder::new("tiny", Device::Cpu, [1, 6, 6], QuantConfig::default()).unwrap();
    let c1 = b
        .conv_bn("c1", b.input(), 2, 3, 1, Activation::Relu)
        .unwrap();
    let mp = b.max_pool("mp", c1, 2, 2).unwrap();
    let gap = b.global_avg_pool("gap", mp).unwrap();
    let fc = b.linear("fc", gap, 3, Activation::None).unwrap();
    let mut net = b.finish(fc, None).unwrap();
    let x = rand(21, &[4, 1, 6, 6], -1.0, 1.0);
    // Observers collect, fake quant off.
    net.apply_flags(Phase::Calibrate.flags()).unwrap();
    let y_float = net.forward_t(&x, true).unwrap();
    assert_eq!(y_float.size(), vec![4, 3]);
    net.apply_flags(Phase::ObserversFrozen.flags()).unwrap();
    for node in net.nodes() {
        let layer = node.op.layer().unwrap();
        let state = layer.harness().state();
        assert!(state.fake_quant_weights && state.fake_quant_activations && !state.calibrate);
    }
    let ex: Vec<LayerExport> = net.export_layers().unwrap().into_iter().flatten().collect();
    assert_eq!(ex.len(), 5);
    for (e, node) in ex.iter().zip(net.nodes()) {
        if let Some(o) = node.op.layer().unwrap().output_export().unwrap() {
            assert!(o.observer_frozen && o.range.is_some(), "{}", o.name);
        }
        if let LayerExport::Conv(c) = e {
            assert!(c.bn.as_ref().unwrap().frozen);
        }
    }
    // Eval in QAT mode is deterministic and every quantized output is on its grid.
    let a = net.forward_t(&x, false).unwrap();
    let b = net.forward_t(&x, false).unwrap();
    assert_eq!(vecf(&a), vecf(&b));
    let LayerExport::Linear(fc) = &ex[4] else {
        panic!("linear")
    };
    let q = fc.output.qparams.unwrap();
    assert!(vecf(&a).iter().all(|&v| q.fake_quant(v) == v));
}
