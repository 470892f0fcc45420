//! Conv + BN: folding against conv → BN, freezing, gradients, the VarStore round trip.

use super::*;

/// The [`conv_bn`] layer `cb` with fake quant off, and its store.
fn float_conv_bn(fold: BnFoldMode, act: Activation) -> (VarStore, QatConvBn2d) {
    let vs = VarStore::new(Device::Cpu);
    let mut l = conv_bn(&vs, "cb", fold, act);
    l.control(QatControl::fake_quant(false));
    (vs, l)
}

#[test]
fn conv_bn_without_fake_quant_equals_conv_then_bn() {
    for fold in FOLDS {
        let (_vs, mut l) = float_conv_bn(fold, Activation::None);
        let x = rand(6, &[4, 3, 7, 7], -2.0, 2.0);
        // Reference: conv → BN with copies of the statistics.
        let rm = l.running_mean().copy();
        let rv = l.running_var().copy();
        let conv = x.conv2d(l.weight(), None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
        // Train: batch statistics, the moving ones updated as the reference's; eval: the moving
        // statistics, left as they are.
        for train in [true, false] {
            let want = batch_norm(&conv, l.gamma(), l.beta(), &rm, &rv, train);
            let got = l.forward_t(&x, train).unwrap();
            let what = format!("{fold:?} train={train}");
            assert!(
                max_diff(&got, &want) < 1e-5,
                "{what}: {}",
                max_diff(&got, &want)
            );
            assert!(
                max_diff(l.running_mean(), &rm) < 1e-6,
                "{what}: running mean"
            );
            assert!(max_diff(l.running_var(), &rv) < 1e-5, "{what}: running var");
        }
    }
}

#[test]
fn frozen_conv_bn_is_the_folded_conv_with_moving_statistics() {
    for fold in FOLDS {
        let (_vs, mut l) = float_conv_bn(fold, Activation::Relu6);
        let x = rand(7, &[2, 3, 6, 6], -2.0, 2.0);
        let _ = l.forward_t(&x, true).unwrap(); // one step of statistics
        l.control(QatControl::FreezeBn(true));
        assert!(l.bn_frozen());
        let (rm, rv) = (l.running_mean().copy(), l.running_var().copy());
        let sigma = (&rv + 1e-5).sqrt();
        let w = l.weight() * (l.gamma() / &sigma).view([-1, 1, 1, 1]);
        let b = l.beta() - l.gamma() * &rm / &sigma;
        let want = x
            .conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1)
            .clamp(0.0, 6.0);
        for train in [true, false] {
            let got = l.forward_t(&x, train).unwrap();
            assert!(
                max_diff(&got, &want) < 1e-5,
                "{fold:?} train={train}: {}",
                max_diff(&got, &want)
            );
        }
        assert_eq!(
            vecf(l.running_mean()),
            vecf(&rm),
            "frozen statistics are not updated"
        );
        assert_eq!(vecf(l.running_var()), vecf(&rv));
        if let LayerExport::Conv(e) = l.export().unwrap() {
            // The layer's fold is qat-export's, bit for bit (f64, ε rounded to f32 as the IR stores it).
            let shape: [usize; 4] = e.weight.shape.clone().try_into().unwrap();
            let bn_ex = e.bn.clone().unwrap();
            let (w_ohwi, ohwi) = qat_export::ir::ohwi_from_oihw(&e.weight.data, shape);
            let conv = qat_export::ir::Conv2d::new(w_ohwi, ohwi).with_batch_norm(
                qat_export::ir::BatchNorm {
                    gamma: bn_ex.gamma.clone(),
                    beta: bn_ex.beta.clone(),
                    mean: bn_ex.mean.clone(),
                    var: bn_ex.var.clone(),
                    eps: bn_ex.eps as f32,
                },
            );
            let folded = qat_export::passes::bn_fold::fold_batch_norm(&conv);
            let (want_w, _) = qat_export::ir::ohwi_from_oihw(&e.folded_weight.data, shape);
            assert_eq!(folded.weight, want_w, "{fold:?}: folded weights");
            assert_eq!(folded.bias.as_deref(), Some(e.folded_bias.as_slice()));
            // … and the f32 formula up to rounding.
            assert!(
                max_diff(
                    &Tensor::from_slice(&e.folded_weight.data),
                    &w.flatten(0, -1)
                ) < 1e-6
            );
            assert!(max_diff(&Tensor::from_slice(&e.folded_bias), &b) < 1e-6);
            let bn = e.bn.unwrap();
            assert!(bn.frozen && bn.eps == 1e-5 && bn.fold_mode == fold);
            assert_eq!(bn.var, vecf(&rv));
            assert_eq!(e.activation, Activation::Relu6);
        } else {
            panic!("conv export expected");
        }
    }
}

#[test]
fn gradients_reach_gamma_beta_and_weights() {
    for fold in FOLDS {
        for freeze in [false, true] {
            let vs = VarStore::new(Device::Cpu);
            let mut l = conv_bn(&vs, "cb", fold, Activation::Relu);
            l.control(QatControl::FreezeBn(freeze));
            let x = rand(8, &[2, 3, 5, 5], -2.0, 2.0);
            let r = rand(9, &[2, 5, 5, 5], -1.0, 1.0);
            let y = l.forward_t(&x, true).unwrap();
            (y * r).sum(Kind::Float).backward();
            for (what, t) in [
                ("weight", l.weight()),
                ("gamma", l.gamma()),
                ("beta", l.beta()),
            ] {
                let g = t.grad();
                assert!(
                    g.defined(),
                    "{fold:?} freeze={freeze}: no gradient for {what}"
                );
                let n = g.abs().sum(Kind::Float).double_value(&[]);
                assert!(
                    n.is_finite() && n > 0.0,
                    "{fold:?} freeze={freeze}: {what} grad {n}"
                );
            }
        }
    }
}

/// Whitepaper folding with fake quant on, before the freeze: `conv(x, FQ(γW/σ))·σ/σ_B + β − γμ_B/σ_B`,
/// with `FQ` computed by qat-core.
#[test]
fn conv_bn_fake_quant_train_matches_reference_formula() {
    let vs = VarStore::new(Device::Cpu);
    let mut l = conv_bn(&vs, "cb", BnFoldMode::Whitepaper, Activation::None);
    let x = rand(10, &[3, 3, 6, 6], -2.0, 2.0);
    let sigma = (l.running_var() + 1e-5).sqrt();
    let w_fold = l.weight() * (l.gamma() / &sigma).view([-1, 1, 1, 1]);
    let wq = fq_weights_reference(&w_fold);
    let conv = x.conv2d(l.weight(), None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
    let (var_b, mean_b) = conv.var_mean_correction(Some([0i64, 2, 3].as_slice()), 0, false);
    let sigma_b = (&var_b + 1e-5).sqrt();
    let y = x.conv2d(&wq, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1)
        * (&sigma / &sigma_b).view([1, -1, 1, 1])
        + (l.beta() - l.gamma() * &mean_b / &sigma_b).view([1, -1, 1, 1]);
    let (rm, rv) = (l.running_mean().copy(), l.running_var().copy());
    let got = l.forward_t(&x, true).unwrap();
    // Moving averages: momentum 0.1, unbiased batch variance (n = 3·6·6 values per channel).
    let n = 3.0 * 6.0 * 6.0;
    let want_rm = &rm * 0.9 + &mean_b * 0.1;
    let want_rv = &rv * 0.9 + &var_b * (n / (n - 1.0)) * 0.1;
    assert!(max_diff(l.running_mean(), &want_rm) < 1e-6);
    assert!(max_diff(l.running_var(), &want_rv) < 1e-6);
    // The layer's output quantizer saw exactly this batch (first observation sets the range).
    let (lo, hi) = l.output_quantizer().unwrap().observer().range().unwrap();
    let p = QuantParams::asymmetric(lo, hi, 8).unwrap();
    let want: Vec<f32> = vecf(&y).iter().map(|&v| p.fake_quant(v)).collect();
    let got = vecf(&got);
    let step = p.scale();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // Float reassociation in the reference may move a value across a rounding boundary: at most one step.
    assert!(worst <= step * 1.001, "worst {worst} step {step}");
    let exact = got.iter().zip(&want).filter(|(a, b)| a == b).count();
    assert!(
        exact as f64 >= 0.99 * got.len() as f64,
        "{exact}/{}",
        got.len()
    );
}

#[test]
fn varstore_round_trip_restores_bn_observers_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer.safetensors");
    let vs = VarStore::new(Device::Cpu);
    let mut l = conv_bn(&vs, "cb", BnFoldMode::Whitepaper, Activation::Relu6);
    let x = rand(16, &[2, 3, 5, 5], -1.0, 1.0);
    for _ in 0..3 {
        let _ = l.forward_t(&x, true).unwrap();
    }
    l.control(QatControl::FreezeBn(true));
    l.control(QatControl::FreezeObservers(true));
    let want = l.forward_t(&x, false).unwrap();
    vs.save(&file).unwrap();

    let mut vs2 = VarStore::new(Device::Cpu);
    let cfg = ConvBnConfig::new(
        Conv2dConfig::new(3, 5, 3)
            .padding(1)
            .activation(Activation::Relu6),
    );
    let mut l2 = QatConvBn2d::new(&(vs2.root() / "cb"), cfg).unwrap();
    vs2.load(&file).unwrap();
    assert!(l2.bn_frozen());
    assert!(l2.output_quantizer().unwrap().observer().is_frozen());
    assert_eq!(vecf(&l2.forward_t(&x, false).unwrap()), vecf(&want));
    assert_eq!(l2.export().unwrap(), l.export().unwrap());
}
