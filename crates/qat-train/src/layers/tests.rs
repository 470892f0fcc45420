//! Layer tests: BN folding against conv → BN, freezing, gradients, and fake-quant outputs against
//! qat-core's reference. Data comes from a local LCG (no global libtorch RNG).

use ndarray::ArrayD;
use qat_autograd::TensorQParams;
use qat_core::{PerChannelParams, QuantParams, QuantRange, array};
use tch::{Device, Kind, Tensor, nn::VarStore};

use super::*;
use crate::observer::{ActObserverConfig, Observer};

fn lcg(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + ((s >> 40) as f32 / (1u64 << 24) as f32) * (hi - lo)
        })
        .collect()
}

fn rand(seed: u64, shape: &[i64], lo: f32, hi: f32) -> Tensor {
    let n = shape.iter().product::<i64>() as usize;
    Tensor::from_slice(&lcg(seed, n, lo, hi)).view(shape)
}

fn set(t: &Tensor, v: &Tensor) {
    let mut t = t.shallow_clone();
    tch::no_grad(|| t.copy_(v));
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn vecf(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.detach().flatten(0, -1)).unwrap()
}

/// A conv+BN layer with non-trivial γ, β and moving statistics, fake quant off.
fn conv_bn(vs: &VarStore, name: &str, fold: BnFoldMode, act: Activation) -> QatConvBn2d {
    let cfg = ConvBnConfig::new(
        Conv2dConfig::new(3, 5, 3)
            .padding(1)
            .stride(1)
            .activation(act),
    )
    .fold(fold);
    let l = QatConvBn2d::new(&(vs.root() / name), cfg).unwrap();
    set(l.weight(), &rand(1, &[5, 3, 3, 3], -0.5, 0.5));
    set(l.gamma(), &rand(2, &[5], 0.5, 1.5));
    set(l.beta(), &rand(3, &[5], -0.3, 0.3));
    set(l.running_mean(), &rand(4, &[5], -0.2, 0.2));
    set(l.running_var(), &rand(5, &[5], 0.5, 2.0));
    l
}

const FOLDS: [BnFoldMode; 2] = [BnFoldMode::Whitepaper, BnFoldMode::PyTorch];

#[test]
fn conv_bn_without_fake_quant_equals_conv_then_bn() {
    for fold in FOLDS {
        let vs = VarStore::new(Device::Cpu);
        let mut l = conv_bn(&vs, "cb", fold, Activation::None);
        l.control(QatControl::FakeQuant(false));
        let x = rand(6, &[4, 3, 7, 7], -2.0, 2.0);
        // Reference: conv → BN with copies of the statistics.
        let rm = l.running_mean().copy();
        let rv = l.running_var().copy();
        let conv = x.conv2d(l.weight(), None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let want = conv.batch_norm(
            Some(l.gamma()),
            Some(l.beta()),
            Some(&rm),
            Some(&rv),
            true,
            0.1,
            1e-5,
            false,
        );
        let got = l.forward_t(&x, true).unwrap();
        assert!(
            max_diff(&got, &want) < 1e-5,
            "{fold:?} train: {}",
            max_diff(&got, &want)
        );
        assert!(
            max_diff(l.running_mean(), &rm) < 1e-6,
            "{fold:?} running mean"
        );
        assert!(
            max_diff(l.running_var(), &rv) < 1e-5,
            "{fold:?} running var"
        );
        // Eval: moving statistics.
        let want = conv.batch_norm(
            Some(l.gamma()),
            Some(l.beta()),
            Some(&rm),
            Some(&rv),
            false,
            0.1,
            1e-5,
            false,
        );
        let got = l.forward_t(&x, false).unwrap();
        assert!(
            max_diff(&got, &want) < 1e-5,
            "{fold:?} eval: {}",
            max_diff(&got, &want)
        );
        assert!(
            max_diff(l.running_mean(), &rm) < 1e-6,
            "eval must not update statistics"
        );
    }
}

#[test]
fn frozen_conv_bn_is_the_folded_conv_with_moving_statistics() {
    for fold in FOLDS {
        let vs = VarStore::new(Device::Cpu);
        let mut l = conv_bn(&vs, "cb", fold, Activation::Relu6);
        l.control(QatControl::FakeQuant(false));
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
    let (lo, hi) = l.output_quantizer().observer().range().unwrap();
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

/// qat-core per-channel symmetric narrow 8-bit fake quant of a weight tensor (axis 0).
fn fq_weights_reference(w: &Tensor) -> Tensor {
    let nd: ArrayD<f32> = (&w.detach()).try_into().unwrap();
    let (mins, maxs) = array::min_max_per_channel(nd.view(), 0).unwrap();
    let max_abs: Vec<f32> = mins
        .iter()
        .zip(&maxs)
        .map(|(a, b)| a.abs().max(b.abs()))
        .collect();
    let p =
        PerChannelParams::symmetric(&max_abs, QuantRange::signed_narrow(8).unwrap(), 0).unwrap();
    Tensor::try_from(array::fake_quant_per_channel(nd.view(), &p).unwrap()).unwrap()
}

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
        12,
        6,
        Activation::Relu,
        QuantConfig::default(),
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
    check(
        "conv",
        &conv.forward_t(&x, false).unwrap(),
        &float,
        conv.output_quantizer(),
    );

    let wq = fq_weights_reference(dw.weight());
    let float = x.conv2d(&wq, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 3);
    check(
        "depthwise",
        &dw.forward_t(&x, false).unwrap(),
        &float,
        dw.output_quantizer(),
    );

    let wq = fq_weights_reference(fc.weight());
    let float = xf.linear(&wq, Some(fc.bias())).relu();
    check(
        "linear",
        &fc.forward_t(&xf, false).unwrap(),
        &float,
        fc.output_quantizer(),
    );

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
    check(
        "conv+bn frozen",
        &cb.forward_t(&x, false).unwrap(),
        &float,
        cb.output_quantizer(),
    );

    // Export carries exactly the weight parameters used above.
    if let LayerExport::Conv(e) = dw.export().unwrap() {
        assert_eq!(e.groups, 3);
        assert_eq!(e.weight.shape, vec![3, 1, 3, 3]);
        let p = e.weight_qparams.per_channel().unwrap();
        assert_eq!(p.len(), 3);
        let (lo, hi) = dw.output_quantizer().observer().range().unwrap();
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
    let mut fc = QatLinear::new(
        &(vs.root() / "fc"),
        4,
        3,
        Activation::None,
        QuantConfig::default(),
    )
    .unwrap();
    let x = rand(13, &[6, 4], -1.0, 1.0);
    // Eval with fake quant on before any data: error, no silent default.
    let err = fc.forward_t(&x, false).unwrap_err();
    assert!(err.to_string().contains("uncalibrated"), "{err}");
    fc.control(QatControl::FakeQuant(false));
    let y = fc.forward_t(&x, true).unwrap();
    let float = x.linear(fc.weight(), Some(fc.bias()));
    assert_eq!(vecf(&y), vecf(&float), "float mode during the delay");
    assert!(
        fc.output_quantizer().observer().is_calibrated(),
        "EMA collects during the delay"
    );
    fc.control(QatControl::FakeQuant(true));
    let y = fc.forward_t(&x, false).unwrap();
    let p = fc
        .output_quantizer()
        .observer()
        .per_tensor_qparams()
        .unwrap();
    assert!(vecf(&y).iter().all(|&v| p.fake_quant(v) == v));
    assert_ne!(vecf(&y), vecf(&float));
    // Frozen observers stop collecting.
    fc.control(QatControl::FreezeObservers(true));
    let before = fc.output_quantizer().observer().range().unwrap();
    let _ = fc.forward_t(&(&x * 10.0), true).unwrap();
    assert_eq!(fc.output_quantizer().observer().range().unwrap(), before);
    // Calibrate mode lets observers collect in eval.
    fc.control(QatControl::FreezeObservers(false));
    fc.control(QatControl::Calibrate(true));
    let _ = fc.forward_t(&(&x * 10.0), false).unwrap();
    assert_ne!(fc.output_quantizer().observer().range().unwrap(), before);
}

#[test]
fn add_concat_and_pools_have_their_own_ranges() {
    let vs = VarStore::new(Device::Cpu);
    let q = QuantConfig::default();
    let mut add = QatAdd::new(&(vs.root() / "add"), Activation::Relu, q).unwrap();
    let mut cat = QatConcat::new(&(vs.root() / "cat"), 2, q).unwrap();
    let mut gap = QatGlobalAvgPool::new(&(vs.root() / "gap"), q).unwrap();
    let mut avg = QatAvgPool2d::new(&(vs.root() / "avg"), 2, 2, 0, q).unwrap();
    let mut max = QatMaxPool2d::new(&(vs.root() / "max"), 2, 2, 0).unwrap();
    let a = rand(14, &[2, 3, 4, 4], -1.0, 1.0);
    let b = rand(15, &[2, 3, 4, 4], -1.0, 3.0);
    let fq = |oq: &OutputQuantizer, t: &Tensor| -> Vec<f32> {
        let p = oq.observer().per_tensor_qparams().unwrap();
        vecf(t).iter().map(|&v| p.fake_quant(v)).collect()
    };
    let y = add.forward_t(&a, &b, true).unwrap();
    assert_eq!(vecf(&y), fq(add.output_quantizer(), &(&a + &b).relu()));
    let y = cat.forward_t(&[&a, &b], true).unwrap();
    assert_eq!(y.size(), vec![2, 6, 4, 4]);
    assert_eq!(
        vecf(&y),
        fq(cat.output_quantizer(), &Tensor::cat(&[&a, &b], 1))
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
    assert!(l2.output_quantizer().observer().is_frozen());
    assert_eq!(vecf(&l2.forward_t(&x, false).unwrap()), vecf(&want));
    assert_eq!(l2.export().unwrap(), l.export().unwrap());
}

#[test]
fn pact_alpha_learns_and_exports_its_range() {
    let vs = VarStore::new(Device::Cpu);
    let q = QuantConfig {
        act_range: ActRange::Pact { init_alpha: 1.0 },
        ..QuantConfig::default()
    };
    let mut fc = QatLinear::new(&(vs.root() / "fc"), 4, 8, Activation::Relu, q).unwrap();
    let x = rand(17, &[16, 4], -3.0, 3.0);
    let y = fc.forward_t(&x, true).unwrap();
    assert!(vecf(&y).iter().all(|&v| (0.0..=1.0).contains(&v)));
    y.sum(Kind::Float).backward();
    let alpha = fc.output_quantizer().pact_alpha().unwrap();
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
            4,
            8,
            Activation::Relu,
            QuantConfig {
                act_range: ActRange::Pact { init_alpha: 0.0 },
                ..QuantConfig::default()
            }
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
    let TensorQParams::PerTensor(wp) = e.weight_qparams else {
        panic!("per tensor")
    };
    assert_eq!(wp.range(), QuantRange::signed_narrow(4).unwrap());
    let op = e.output.qparams.unwrap();
    assert_eq!(op.qmax(), 63);
    assert!(vecf(&y).iter().all(|&v| op.fake_quant(v) == v));
}

#[test]
fn bad_inputs_are_errors_naming_the_layer() {
    let vs = VarStore::new(Device::Cpu);
    let mut l = conv_bn(&vs, "block3", BnFoldMode::Whitepaper, Activation::None);
    let err = l
        .forward_t(&rand(1, &[2, 4, 5, 5], 0.0, 1.0), true)
        .unwrap_err();
    assert!(matches!(err, LayerError::Shape { .. }));
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
    let scale = conv.weight_quantizer().lsq_scale().unwrap();
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
    let p = e.weight_qparams.per_channel().unwrap().clone();
    assert_eq!(p.scales(), vecf(scale).as_slice());
    // Forward weights are qat-core's fake quant with the learned scales.
    let nd: ArrayD<f32> = (&w).try_into().unwrap();
    let wq = Tensor::try_from(array::fake_quant_per_channel(nd.view(), &p).unwrap()).unwrap();
    let float = x.conv2d(&wq, conv.bias(), [1, 1], [0, 0], [1, 1], 1);
    let op = conv
        .output_quantizer()
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
fn whole_model_switches_reach_every_layer() {
    let vs = VarStore::new(Device::Cpu);
    let p = vs.root();
    let cfg = ConvBnConfig::new(
        Conv2dConfig::new(1, 2, 3)
            .padding(1)
            .activation(Activation::Relu),
    );
    let mut net = QatSequential::new()
        .push(OutputQuantizer::new(&(&p / "input_q"), &QuantConfig::default()).unwrap())
        .push(QatConvBn2d::new(&(&p / "c1"), cfg).unwrap())
        .push(QatMaxPool2d::new(&(&p / "mp"), 2, 2, 0).unwrap())
        .push(QatGlobalAvgPool::new(&(&p / "gap"), QuantConfig::default()).unwrap())
        .push(
            QatLinear::new(&(&p / "fc"), 2, 3, Activation::None, QuantConfig::default()).unwrap(),
        );
    let x = rand(21, &[4, 1, 6, 6], -1.0, 1.0);
    net.set_fake_quant(false);
    let y_float = net.forward_t(&x, true).unwrap();
    assert_eq!(y_float.size(), vec![4, 3]);
    net.set_fake_quant(true);
    net.freeze_bn(true);
    net.freeze_observers(true);
    let outputs = |e: &LayerExport| match e {
        LayerExport::Conv(c) => Some(c.output.clone()),
        LayerExport::Linear(l) => Some(l.output.clone()),
        LayerExport::Pool(p) => p.output.clone(),
        LayerExport::Quantize(o) => Some(o.clone()),
        LayerExport::Add(m) | LayerExport::Concat(m) => Some(m.output.clone()),
    };
    let ex = net.exports().unwrap();
    assert_eq!(ex.len(), 5);
    for e in &ex {
        if let Some(o) = outputs(e) {
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
    let mut fc = QatLinear::new(&(vs.root() / "fc"), 4, 3, Activation::None, q).unwrap();
    fc.control(QatControl::FakeQuant(true));
    let _ = fc.forward_t(&x, true).unwrap();
    fc.control(QatControl::FreezeObservers(true));
    set(fc.weight(), &(fc.weight() * 2.0));
    let y = fc.forward_t(&x, true).unwrap();
    let LayerExport::Linear(e) = fc.export().unwrap() else {
        panic!("linear")
    };
    let p = e.weight_qparams.per_channel().unwrap().clone();
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
        let mut oq = OutputQuantizer::new(&(vs.root() / "q"), &q).unwrap();
        oq.control(QatControl::FakeQuant(true));
        let _ = oq.forward_t(&rand(30, &[64], -1.0, 1.0), true).unwrap(); // range ≈ [−1, 1]
        oq.control(QatControl::FreezeObservers(true));
        let x = rand(31, &[64], -2.0, 2.0).set_requires_grad(true);
        let g = rand(32, &[64], -1.0, 1.0);
        let y = oq.forward_t(&x, true).unwrap();
        (y * &g).sum(Kind::Float).backward();
        let grad = vecf(&x.grad());
        let p = oq.observer().per_tensor_qparams().unwrap();
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
