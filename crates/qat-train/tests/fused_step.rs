//! The fast paths of the QAT step against their plain compositions, on contiguous tensors (our
//! one-pass CPU kernels) and on strided ones (libtorch's ops), with one and two libtorch threads:
//! * the activation fused into the output fake quant (`OutputQuantizer::apply_activated`) equals the
//!   activation followed by `OutputQuantizer::apply`: values, gradients and observer state;
//! * the whitepaper conv+BN fold equals its formula `conv(x, FQ(γW/σ))·σ/σ_B + β − γμ_B/σ_B` in value
//!   and gradient, with the batch statistics constants of the backward pass (default, TF's fold) or
//!   differentiated through (`ConvBnConfig::stats_grad`), and moves the moving averages alike.

use qat_autograd::fake_quant_per_channel;
use qat_autograd::testing::{THREADS, batch_norm, rand, set, vecf};
use qat_core::{PerChannelParams, QuantRange};
use qat_train::layers::{
    Activation, BnFoldMode, Conv2dConfig, ConvBnConfig, OutputQuantizer, QatConvBn2d, QatModule,
    QuantConfig, QuantState,
};
use qat_train::observer::ActObserverConfig;
use tch::{Device, Kind, Tensor, nn::VarStore};

/// Largest `|a − b| / (1 + |b|)`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    ((a - b).abs() / (b.abs() + 1.0)).max().double_value(&[])
}

#[test]
fn fused_activation_and_fake_quant_equal_the_composition() {
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let before = tch::get_num_threads();
    let observers = [
        ActObserverConfig::Ema { decay: 0.9 },
        ActObserverConfig::MinMax,
        ActObserverConfig::Histogram {
            bins: 256,
            percentile: 99.9,
        },
    ];
    for (threads, strided) in [(1, false), (2, false), (1, true)] {
        tch::set_num_threads(threads);
        for (k, obs) in observers.into_iter().enumerate() {
            for act in [Activation::Relu, Activation::Relu6] {
                let what = format!("{threads} thread(s), strided {strided}, {obs:?}, {act:?}");
                let cfg = QuantConfig {
                    act_observer: obs,
                    ..QuantConfig::default()
                };
                let (vs1, vs2) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
                let mut fused = OutputQuantizer::new(&(vs1.root() / "q"), &cfg).unwrap();
                let mut plain = OutputQuantizer::new(&(vs2.root() / "q"), &cfg).unwrap();
                let state = QuantState::default();
                for step in 0..3u64 {
                    let seed = 100 * k as u64 + 10 * step;
                    let z = rand(seed, &[4, 3, 5, 5], -3.0, 8.0);
                    // A channels-last copy viewed as NCHW: same values, not contiguous.
                    let z1 = if strided {
                        z.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
                    } else {
                        z.copy()
                    };
                    assert_eq!(z1.is_contiguous(), !strided);
                    let z1 = z1.set_requires_grad(true);
                    let z2 = z.copy().set_requires_grad(true);
                    let y1 = fused.apply_activated(z1.shallow_clone(), act, true, &state);
                    let y1 = y1.unwrap();
                    let a2 = match act {
                        Activation::Relu => z2.relu(),
                        _ => z2.relu6(),
                    };
                    let y2 = plain.apply(&a2, true, &state).unwrap();
                    let bits = |t: &Tensor| vecf(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert!(bits(&y1) == bits(&y2), "{what}, step {step}: values");
                    assert_eq!(
                        fused.observer().range().unwrap(),
                        plain.observer().range().unwrap(),
                        "{what}, step {step}: observer range"
                    );
                    let w = rand(seed + 1, &[4, 3, 5, 5], -1.0, 1.0);
                    (&y1 * &w).sum(Kind::Float).backward();
                    (&y2 * &w).sum(Kind::Float).backward();
                    // Equal as numbers (masked entries may be +0 on one path, −0 on the other).
                    assert!(
                        vecf(&z1.grad()) == vecf(&z2.grad()),
                        "{what}, step {step}: gradients"
                    );
                }
            }
        }
    }
    tch::set_num_threads(before);
}

/// A whitepaper conv+BN layer (3→5 channels, 3×3, output fake quant off so that the output is the
/// fold itself) with non-trivial γ, β and moving statistics.
fn layer(vs: &VarStore, stats_grad: bool) -> QatConvBn2d {
    layer_with(vs, BnFoldMode::Whitepaper, stats_grad)
}

/// The same for any fold.
fn layer_with(vs: &VarStore, fold: BnFoldMode, stats_grad: bool) -> QatConvBn2d {
    let quant = QuantConfig {
        quantize_output: false,
        ..QuantConfig::default()
    };
    let mut cfg = ConvBnConfig::new(Conv2dConfig::new(3, 5, 3).padding(1).quant(quant)).fold(fold);
    cfg.stats_grad = stats_grad;
    let l = QatConvBn2d::new(&(vs.root() / "cb"), cfg).unwrap();
    set(l.weight(), &rand(1, &[5, 3, 3, 3], -0.5, 0.5));
    set(l.gamma(), &rand(2, &[5], 0.5, 1.5));
    set(l.beta(), &rand(3, &[5], -0.3, 0.3));
    set(l.running_mean(), &rand(4, &[5], -0.2, 0.2));
    set(l.running_var(), &rand(5, &[5], 0.5, 2.0));
    l
}

/// Reference leaves for a layer test: copies of the layer's weight, γ, β (with gradients) and moving
/// statistics, and the input twice (`x1` for the layer, `x2` for the reference formula).
struct Refs {
    w: Tensor,
    gamma: Tensor,
    beta: Tensor,
    rm: Tensor,
    rv: Tensor,
    x1: Tensor,
    x2: Tensor,
}

fn refs(l: &QatConvBn2d) -> Refs {
    let leaf = |t: &Tensor| t.detach().copy().set_requires_grad(true);
    let x = rand(6, &[4, 3, 6, 6], -2.0, 2.0);
    Refs {
        w: leaf(l.weight()),
        gamma: leaf(l.gamma()),
        beta: leaf(l.beta()),
        rm: l.running_mean().copy(),
        rv: l.running_var().copy(),
        x1: leaf(&x),
        x2: leaf(&x),
    }
}

/// Per-channel symmetric narrow 8-bit fake quant (clipped STE) of the conv weights `w` from their own
/// range along axis 0: every weight is within the grid's range, so the clipped STE is the identity.
fn fake_quant_own_range(w: &Tensor) -> Tensor {
    let max_abs = vecf(&w.abs().amax([1i64, 2, 3].as_slice(), false));
    let p =
        PerChannelParams::symmetric(&max_abs, QuantRange::signed_narrow(8).unwrap(), 0).unwrap();
    fake_quant_per_channel(w, &p, qat_autograd::Ste::Clipped).unwrap()
}

/// Backpropagates the same random weighting of the layer's output `y` and of the reference `want`, then
/// compares the gradients of the layer's weight, γ, β (reference leaves `refs`) and of the two inputs.
fn assert_same_gradients(
    what: &str,
    y: &Tensor,
    want: &Tensor,
    l: &QatConvBn2d,
    refs: [&Tensor; 3],
    inputs: [&Tensor; 2],
) {
    let r = rand(7, &y.size(), -1.0, 1.0);
    (y * &r).sum(Kind::Float).backward();
    (want * &r).sum(Kind::Float).backward();
    for (name, got, want) in [
        ("weight", l.weight().grad(), refs[0].grad()),
        ("gamma", l.gamma().grad(), refs[1].grad()),
        ("beta", l.beta().grad(), refs[2].grad()),
        ("input", inputs[0].grad(), inputs[1].grad()),
    ] {
        let d = rel_diff(&got, &want);
        assert!(d < 1e-4, "{what}: gradient of {name} differs by {d}");
    }
}

#[test]
fn whitepaper_fold_value_gradient_and_moving_averages_match_the_formula() {
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let before = tch::get_num_threads();
    for threads in [1, 2] {
        tch::set_num_threads(threads);
        for stats_grad in [false, true] {
            let what = format!("{threads} thread(s), stats_grad {stats_grad}");
            let vs = VarStore::new(Device::Cpu);
            let mut l = layer(&vs, stats_grad);
            let Refs {
                w,
                gamma,
                beta,
                rm,
                rv,
                x1,
                x2,
            } = refs(&l);

            let y = l.forward_t(&x1, true).unwrap();

            let conv =
                |x: &Tensor, w: &Tensor| x.conv2d(w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
            let sigma = (&rv + 1e-5).sqrt();
            let w_fold = &w * (&gamma / &sigma).view([-1, 1, 1, 1]);
            let wq = fake_quant_own_range(&w_fold);
            let y_float = conv(&x2, &w);
            let y_float = if stats_grad {
                y_float
            } else {
                y_float.detach()
            };
            let (var_b, mean_b) =
                y_float.var_mean_correction(Some([0i64, 2, 3].as_slice()), 0, false);
            let sigma_b = (&var_b + 1e-5).sqrt();
            let want = conv(&x2, &wq) * (&sigma / &sigma_b).view([1, -1, 1, 1])
                + (&beta - &gamma * &mean_b / &sigma_b).view([1, -1, 1, 1]);
            assert!(
                rel_diff(&y, &want) < 1e-5,
                "{what}: value {}",
                rel_diff(&y, &want)
            );

            // Moving averages: momentum 0.1, unbiased batch variance (n = 4·6·6 per channel).
            let n = 4.0 * 36.0;
            let want_rm = &rm * 0.9 + mean_b.detach() * 0.1;
            let want_rv = &rv * 0.9 + var_b.detach() * (n / (n - 1.0)) * 0.1;
            assert!(
                rel_diff(l.running_mean(), &want_rm) < 1e-6,
                "{what}: moving mean"
            );
            assert!(
                rel_diff(l.running_var(), &want_rv) < 1e-6,
                "{what}: moving variance"
            );

            assert_same_gradients(&what, &y, &want, &l, [&w, &gamma, &beta], [&x1, &x2]);
        }
    }
    tch::set_num_threads(before);
}

/// The two gradient modes differ (the test above would not notice a mode switch that did nothing):
/// with the statistics differentiated, ∂L/∂W gets BN's centering terms.
#[test]
fn whitepaper_stats_gradient_modes_differ() {
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let grads: Vec<Tensor> = [false, true]
        .into_iter()
        .map(|stats_grad| {
            let vs = VarStore::new(Device::Cpu);
            let mut l = layer(&vs, stats_grad);
            let x = rand(6, &[4, 3, 6, 6], -2.0, 2.0);
            let y = l.forward_t(&x, true).unwrap();
            (&y * rand(7, &y.size(), -1.0, 1.0))
                .sum(Kind::Float)
                .backward();
            l.weight().grad().copy()
        })
        .collect();
    assert!(rel_diff(&grads[0], &grads[1]) > 1e-3);
}

/// PyTorch's fold, `BN(conv(x, FQ(W·s)) / s)` with `s = γ/σ` and a training-mode BN (batch statistics,
/// gradient through them), computed by the layer as one conv with `FQ(W·s)/s`: value, gradients and
/// moving averages against the formula as PyTorch's `conv_fused.py` writes it.
#[test]
fn pytorch_fold_value_gradient_and_moving_averages_match_conv_fused() {
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let vs = VarStore::new(Device::Cpu);
    let mut l = layer_with(&vs, BnFoldMode::PyTorch, false);
    let r = refs(&l);
    let y = l.forward_t(&r.x1, true).unwrap();
    let (w, gamma, beta, rm, rv) = (&r.w, &r.gamma, &r.beta, &r.rm, &r.rv);

    let s = gamma / (rv + 1e-5).sqrt();
    let w_scaled = w * s.view([-1, 1, 1, 1]);
    let wq = fake_quant_own_range(&w_scaled);
    let conv = r.x2.conv2d(&wq, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1) / s.view([1, -1, 1, 1]);
    let (rm2, rv2) = (rm.copy(), rv.copy());
    let want = batch_norm(&conv, gamma, beta, &rm2, &rv2, true);
    assert!(rel_diff(&y, &want) < 1e-5, "value {}", rel_diff(&y, &want));
    assert!(rel_diff(l.running_mean(), &rm2) < 1e-6, "moving mean");
    assert!(rel_diff(l.running_var(), &rv2) < 1e-6, "moving variance");
    assert_same_gradients(
        "PyTorch fold",
        &y,
        &want,
        &l,
        [w, gamma, beta],
        [&r.x1, &r.x2],
    );
}
