//! The quantizers: outputs against qat-core's reference, quantization delay, PACT, LSQ, per-tensor
//! and histogram configs, weight ranges and the STE.

use super::*;

#[test]
fn fake_quant_output_equals_qat_core_reference_of_the_float_output() {
    let vs = VarStore::new(Device::Cpu);
    // Plain conv with bias, depthwise conv, linear, frozen conv+BN: eval-mode outputs after calibration.
    let mut conv = QatConv2d::new(
        &(vs.root() / "conv"),
        Conv2dConfig::new(3, 4, 3).activation(Activation::Relu6),
    )
    .unwrap();
    let mut dw = QatConv2d::new(
        &(vs.root() / "dw"),
        Conv2dConfig::depthwise(3, 3).bias(false),
    )
    .unwrap();
    let mut fc = QatLinear::new(
        &(vs.root() / "fc"),
        LinearConfig::new(12, 6).activation(Activation::Relu),
    )
    .unwrap();
    let mut cb = conv_bn(&vs, "cb", BnFoldMode::Whitepaper, Activation::Relu6);
    cb.control(QatControl::FreezeBn(true));
    let x = rand(11, &[2, 3, 6, 6], -2.0, 2.0);
    let xf = rand(12, &[5, 12], -2.0, 2.0);
    for step in 0..3 {
        let xs = &x * (1.0 + 0.1 * step as f64);
        let _ = conv.forward_t(&xs, true).unwrap();
        let _ = dw.forward_t(&xs, true).unwrap();
        let _ = cb.forward_t(&xs, true).unwrap();
        let _ = fc
            .forward_t(&(&xf * (1.0 + 0.1 * step as f64)), true)
            .unwrap();
    }
    let check = |name: &str, got: &Tensor, float: &Tensor, oq: &OutputQuantizer| {
        let (lo, hi) = oq.observer().range().unwrap();
        let p = QuantParams::asymmetric(lo, hi, 8).unwrap();
        let want: Vec<f32> = vecf(float).iter().map(|&v| p.fake_quant(v)).collect();
        assert_eq!(vecf(got), want, "{name}");
        // Outputs are on the grid: S·(q − Z) for integer q.
        assert!(
            vecf(got).iter().all(|&v| p.fake_quant(v) == v),
            "{name} on grid"
        );
    };
    let wq = fq_weights_reference(conv.weight());
    let float = x
        .conv2d(&wq, conv.bias(), [1, 1], [0, 0], [1, 1], 1)
        .clamp(0.0, 6.0);
    let got = conv.forward_t(&x, false).unwrap();
    check("conv", &got, &float, conv.output_quantizer().unwrap());

    let wq = fq_weights_reference(dw.weight());
    let float = x.conv2d(&wq, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 3);
    let got = dw.forward_t(&x, false).unwrap();
    check("depthwise", &got, &float, dw.output_quantizer().unwrap());

    let wq = fq_weights_reference(fc.weight());
    let float = xf.linear(&wq, Some(fc.bias())).relu();
    let got = fc.forward_t(&xf, false).unwrap();
    check("linear", &got, &float, fc.output_quantizer().unwrap());

    let sigma = (cb.running_var() + 1e-5).sqrt();
    let scale = cb.gamma() / &sigma;
    let w = cb.weight() * scale.view([-1, 1, 1, 1]);
    let b = cb.beta() - &scale * cb.running_mean();
    let float = x
        .conv2d(
            &fq_weights_reference(&w),
            Some(&b),
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        )
        .clamp(0.0, 6.0);
    let got = cb.forward_t(&x, false).unwrap();
    check(
        "conv+bn frozen",
        &got,
        &float,
        cb.output_quantizer().unwrap(),
    );

    // Export carries exactly the weight parameters used above.
    if let LayerExport::Conv(e) = dw.export().unwrap() {
        assert_eq!(e.groups, 3);
        assert_eq!(e.weight.shape, vec![3, 1, 3, 3]);
        let p = e.weight_quant.qparams.per_channel().unwrap();
        assert_eq!(p.len(), 3);
        let (lo, hi) = dw.output_quantizer().unwrap().observer().range().unwrap();
        assert_eq!(e.output.range, Some((lo, hi)));
        assert_eq!(
            e.output.qparams,
            Some(QuantParams::asymmetric(lo, hi, 8).unwrap())
        );
    } else {
        panic!("conv export expected");
    }
}

#[test]
fn quant_delay_observes_without_quantizing_and_eval_refuses_uncalibrated() {
    let vs = VarStore::new(Device::Cpu);
    let mut fc = QatLinear::new(&(vs.root() / "fc"), LinearConfig::new(4, 3)).unwrap();
    let x = rand(13, &[6, 4], -1.0, 1.0);
    // Eval with fake quant on before any data: error, no silent default.
    let err = fc.forward_t(&x, false).unwrap_err();
    assert!(err.to_string().contains("uncalibrated"), "{err}");
    fc.control(QatControl::fake_quant(false));
    let y = fc.forward_t(&x, true).unwrap();
    let float = x.linear(fc.weight(), Some(fc.bias()));
    assert_eq!(vecf(&y), vecf(&float), "float mode during the delay");
    assert!(
        fc.output_quantizer().unwrap().observer().is_calibrated(),
        "EMA collects during the delay"
    );
    fc.control(QatControl::fake_quant(true));
    let y = fc.forward_t(&x, false).unwrap();
    let p = fc
        .output_quantizer()
        .unwrap()
        .observer()
        .per_tensor_qparams()
        .unwrap();
    assert!(vecf(&y).iter().all(|&v| p.fake_quant(v) == v));
    assert_ne!(vecf(&y), vecf(&float));
    // Frozen observers stop collecting.
    fc.control(QatControl::FreezeObservers(true));
    let before = fc.output_quantizer().unwrap().observer().range().unwrap();
    let _ = fc.forward_t(&(&x * 10.0), true).unwrap();
    assert_eq!(
        fc.output_quantizer().unwrap().observer().range().unwrap(),
        before
    );
    // Calibrate mode lets observers collect in eval.
    fc.control(QatControl::FreezeObservers(false));
    fc.control(QatControl::Calibrate(true));
    let _ = fc.forward_t(&(&x * 10.0), false).unwrap();
    assert_ne!(
        fc.output_quantizer().unwrap().observer().range().unwrap(),
        before
    );
}

#[test]
fn pact_alpha_learns_and_exports_its_range() {
    let vs = VarStore::new(Device::Cpu);
    let q = QuantConfig {
        act_range: ActRange::Pact { init_alpha: 1.0 },
        ..QuantConfig::default()
    };
    let cfg = LinearConfig::new(4, 8).activation(Activation::Relu);
    let mut fc = QatLinear::new(&(vs.root() / "fc"), cfg.quant(q)).unwrap();
    let x = rand(17, &[16, 4], -3.0, 3.0);
    let y = fc.forward_t(&x, true).unwrap();
    assert!(vecf(&y).iter().all(|&v| (0.0..=1.0).contains(&v)));
    y.sum(Kind::Float).backward();
    let alpha = fc.output_quantizer().unwrap().pact_alpha().unwrap();
    assert!(alpha.grad().double_value(&[0]) > 0.0);
    let LayerExport::Linear(e) = fc.export().unwrap() else {
        panic!("linear")
    };
    assert!(e.output.learned);
    assert_eq!(
        e.output.qparams,
        Some(QuantParams::asymmetric(0.0, 1.0, 8).unwrap())
    );
    assert!(
        QatLinear::new(
            &(vs.root() / "bad"),
            cfg.quant(QuantConfig {
                act_range: ActRange::Pact { init_alpha: 0.0 },
                ..QuantConfig::default()
            })
        )
        .is_err()
    );
}

#[test]
fn per_tensor_and_histogram_configs() {
    let vs = VarStore::new(Device::Cpu);
    let q = QuantConfig {
        weight_granularity: WeightGranularity::PerTensor,
        weight_bits: 4,
        act_bits: 6,
        act_observer: ActObserverConfig::Histogram {
            bins: 256,
            percentile: 100.0,
        },
        ..QuantConfig::default()
    };
    let mut conv = QatConv2d::new(&(vs.root() / "c"), Conv2dConfig::new(2, 3, 1).quant(q)).unwrap();
    let x = rand(18, &[2, 2, 3, 3], -1.0, 1.0);
    let y = conv.forward_t(&x, true).unwrap();
    let LayerExport::Conv(e) = conv.export().unwrap() else {
        panic!("conv")
    };
    let TensorQParams::PerTensor(wp) = e.weight_quant.qparams else {
        panic!("per tensor")
    };
    assert_eq!(wp.range(), QuantRange::signed_narrow(4).unwrap());
    let op = e.output.qparams.unwrap();
    assert_eq!(op.qmax(), 63);
    assert!(vecf(&y).iter().all(|&v| op.fake_quant(v) == v));
}

#[test]
fn lsq_weights_learn_their_scale_and_export_it() {
    let vs = VarStore::new(Device::Cpu);
    let q = QuantConfig {
        weight_range: WeightRange::Lsq,
        ..QuantConfig::default()
    };
    let mut conv = QatConv2d::new(&(vs.root() / "c"), Conv2dConfig::new(2, 3, 3).quant(q)).unwrap();
    set(conv.weight(), &rand(19, &[3, 2, 3, 3], -0.5, 0.5));
    let x = rand(20, &[2, 2, 5, 5], -1.0, 1.0);
    let y = conv.forward_t(&x, true).unwrap();
    let scale = conv
        .harness()
        .weight_quantizer()
        .unwrap()
        .lsq_scale()
        .unwrap();
    // Initialised to 2·mean|W_c|/√127 per channel.
    let w = conv.weight().detach();
    let want = w
        .abs()
        .flatten(1, -1)
        .mean_dim(Some([1i64].as_slice()), false, None)
        * (2.0 / 127f64.sqrt());
    assert!(max_diff(&scale.detach(), &want) < 1e-7);
    y.sum(Kind::Float).backward();
    assert!(
        scale.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0,
        "LSQ scale gets a gradient"
    );
    let LayerExport::Conv(e) = conv.export().unwrap() else {
        panic!("conv")
    };
    let p = e.weight_quant.qparams.per_channel().unwrap().clone();
    assert_eq!(p.scales(), vecf(scale).as_slice());
    // Forward weights are qat-core's fake quant with the learned scales.
    let nd: ArrayD<f32> = (&w).try_into().unwrap();
    let wq = Tensor::try_from(array::fake_quant_per_channel(nd.view(), &p).unwrap()).unwrap();
    let float = x.conv2d(&wq, conv.bias(), [1, 1], [0, 0], [1, 1], 1);
    let op = conv
        .output_quantizer()
        .unwrap()
        .observer()
        .per_tensor_qparams()
        .unwrap();
    let got = conv.forward_t(&x, false).unwrap();
    let want: Vec<f32> = vecf(&float).iter().map(|&v| op.fake_quant(v)).collect();
    assert_eq!(vecf(&got), want);
    let bad = QuantConfig {
        weight_range: WeightRange::Lsq,
        weight_scheme: crate::observer::QuantScheme::AsymmetricUnsigned,
        ..QuantConfig::default()
    };
    assert!(QatConv2d::new(&(vs.root() / "bad"), Conv2dConfig::new(2, 3, 3).quant(bad)).is_err());
}

#[test]
fn weight_ranges_follow_the_weights_after_the_observer_freeze() {
    // Paper §3 / TF: weight ranges are min/max of the current weights in every phase, so what QAT
    // quantizes is what export (which recomputes min/max of the final weights) quantizes.
    let x = rand(22, &[8, 4], -1.0, 1.0);
    let vs = VarStore::new(Device::Cpu);
    let q = QuantConfig {
        quantize_output: false,
        ..QuantConfig::default()
    };
    let mut fc = QatLinear::new(&(vs.root() / "fc"), LinearConfig::new(4, 3).quant(q)).unwrap();
    fc.control(QatControl::fake_quant(true));
    let _ = fc.forward_t(&x, true).unwrap();
    fc.control(QatControl::FreezeObservers(true));
    set(fc.weight(), &(fc.weight() * 2.0));
    let y = fc.forward_t(&x, true).unwrap();
    let LayerExport::Linear(e) = fc.export().unwrap() else {
        panic!("linear")
    };
    let p = e.weight_quant.qparams.per_channel().unwrap().clone();
    let w = vecf(fc.weight());
    for c in 0..3 {
        let max_abs = w[c * 4..c * 4 + 4].iter().fold(0f32, |m, v| m.max(v.abs()));
        let want = QuantParams::symmetric(max_abs, QuantRange::signed_narrow(8).unwrap()).unwrap();
        assert_eq!(
            p.channel(c).unwrap(),
            want,
            "channel {c}: range of the doubled weights"
        );
    }
    // The forward used those parameters: y = x · FQ(W)ᵀ + b with nothing clamped.
    let fq: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, &v)| p.channel(i / 4).unwrap().fake_quant(v))
        .collect();
    let want = x.linear(&Tensor::from_slice(&fq).view([3, 4]), Some(fc.bias()));
    assert!(max_diff(&y, &want) < 1e-6);
}

#[test]
fn ste_choice_reaches_the_input_gradient() {
    // Freeze an activation range, then feed values beyond it: they are clamped. The clipped STE
    // gives them no gradient, the plain STE passes the upstream gradient through.
    for ste in [qat_autograd::Ste::Clipped, qat_autograd::Ste::Plain] {
        let vs = VarStore::new(Device::Cpu);
        let q = QuantConfig {
            ste,
            ..QuantConfig::default()
        };
        let mut oq = QatQuantize::new(&(vs.root() / "q"), &q).unwrap();
        oq.control(QatControl::fake_quant(true));
        let _ = oq.forward_t(&rand(30, &[64], -1.0, 1.0), true).unwrap(); // range ≈ [−1, 1]
        oq.control(QatControl::FreezeObservers(true));
        let x = rand(31, &[64], -2.0, 2.0).set_requires_grad(true);
        let g = rand(32, &[64], -1.0, 1.0);
        let y = oq.forward_t(&x, true).unwrap();
        (y * &g).sum(Kind::Float).backward();
        let grad = vecf(&x.grad());
        let p = oq
            .output_quantizer()
            .unwrap()
            .observer()
            .per_tensor_qparams()
            .unwrap();
        let mut clamped = 0;
        for ((&xi, &gi), &ui) in vecf(&x).iter().zip(&grad).zip(&vecf(&g)) {
            let code = (xi * (1.0 / p.scale())).round_ties_even() + p.zero_point() as f32;
            let inside = code >= p.qmin() as f32 && code <= p.qmax() as f32;
            clamped += usize::from(!inside);
            let want = if inside || ste == qat_autograd::Ste::Plain {
                ui
            } else {
                0.0
            };
            assert!(
                (gi - want).abs() < 1e-6,
                "{ste:?} x = {xi}: grad {gi}, want {want}"
            );
        }
        assert!(clamped > 0, "the test must clamp some inputs");
    }
}
