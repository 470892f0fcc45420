//! Observer tests: closed forms, qat-core parameters, freezing, and state round trips.

use ndarray::ArrayD;
use qat_autograd::TensorQParams;
use qat_autograd::testing::symmetric_narrow_per_channel;
use qat_core::{PerChannelParams, QuantParams, QuantRange, array};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::*;

fn t(v: &[f32]) -> Tensor {
    Tensor::from_slice(v)
}

#[test]
fn ema_matches_closed_form() {
    let vs = VarStore::new(Device::Cpu);
    for (k, decay) in [0.9f32, TF_EMA_DECAY, 1.0 - PYTORCH_AVERAGING_CONSTANT]
        .into_iter()
        .enumerate()
    {
        let mut obs = EmaMinMaxObserver::new(&(vs.root() / format!("ema{k}")), 8, decay).unwrap();
        let batches: Vec<(f32, f32)> = (0..12)
            .map(|i| (-(i as f32 % 5.0) - 0.5, 1.0 + (i * 7 % 11) as f32))
            .collect();
        for &(lo, hi) in &batches {
            obs.observe(&t(&[lo, 0.3, hi, 0.0])).unwrap();
        }
        // mₙ = dⁿ⁻¹·b₁ + (1 − d)·Σₜ₌₂ⁿ dⁿ⁻ᵗ·bₜ
        let d = f64::from(decay);
        let n = batches.len();
        let closed = |f: fn(&(f32, f32)) -> f32| {
            let mut m = d.powi(n as i32 - 1) * f64::from(f(&batches[0]));
            for (t, b) in batches.iter().enumerate().skip(1) {
                m += (1.0 - d) * d.powi((n - 1 - t) as i32) * f64::from(f(b));
            }
            m
        };
        let (lo, hi) = obs.range().unwrap();
        let (clo, chi) = (closed(|b| b.0), closed(|b| b.1));
        assert!(
            (f64::from(lo) - clo).abs() < 1e-5 * (1.0 + clo.abs()),
            "{lo} vs {clo}"
        );
        assert!(
            (f64::from(hi) - chi).abs() < 1e-5 * (1.0 + chi.abs()),
            "{hi} vs {chi}"
        );
        assert_eq!(
            obs.qparams().unwrap(),
            TensorQParams::PerTensor(QuantParams::asymmetric(lo, hi, 8).unwrap())
        );
    }
    assert!(EmaMinMaxObserver::new(&(vs.root() / "bad"), 8, 1.0).is_err());
}

#[test]
fn uncalibrated_is_an_error_for_every_observer() {
    let vs = VarStore::new(Device::Cpu);
    let p = vs.root();
    let e = EmaMinMaxObserver::tensorflow(&(&p / "e"), 8).unwrap();
    let m = MinMaxObserver::new(
        &(&p / "m"),
        MinMaxConfig::new(QuantScheme::SymmetricNarrow, 8),
    )
    .unwrap();
    let h = HistogramObserver::new(&(&p / "h"), 8, 64, 99.9).unwrap();
    for r in [e.qparams(), m.qparams(), h.qparams()] {
        assert!(matches!(
            r,
            Err(ObserverError {
                kind: ObserverErrorKind::Uncalibrated,
                ..
            })
        ));
    }
    let err = e.qparams().unwrap_err().to_string();
    assert!(err.contains("'e'") && err.contains("uncalibrated"), "{err}");
}

#[test]
fn freeze_keeps_the_range_and_unfreeze_resumes() {
    let vs = VarStore::new(Device::Cpu);
    let mut obs = EmaMinMaxObserver::new(&(vs.root() / "a"), 8, 0.5).unwrap();
    obs.observe(&t(&[0.0, 1.0])).unwrap();
    obs.freeze();
    assert!(obs.is_frozen());
    obs.observe(&t(&[-5.0, 9.0])).unwrap();
    assert_eq!(obs.range().unwrap(), (0.0, 1.0));
    obs.unfreeze();
    obs.observe(&t(&[0.0, 3.0])).unwrap();
    assert_eq!(obs.range().unwrap(), (0.0, 2.0));
}

#[test]
fn minmax_per_channel_uses_qat_core() {
    let vs = VarStore::new(Device::Cpu);
    let vals: Vec<f32> = (0..4 * 3 * 2 * 2)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
        .collect();
    let x = Tensor::from_slice(&vals).view([4, 3, 2, 2]);
    let nd = ArrayD::from_shape_vec(ndarray::IxDyn(&[4, 3, 2, 2]), vals.clone()).unwrap();
    for axis in [0usize, 1] {
        let ch = [4, 3][axis];
        let mut obs = MinMaxObserver::new(
            &(vs.root() / format!("w{axis}")),
            MinMaxConfig::new(QuantScheme::SymmetricNarrow, 8).per_channel(axis, ch),
        )
        .unwrap();
        obs.observe(&x).unwrap();
        let (mins, maxs) = array::min_max_per_channel(nd.view(), axis).unwrap();
        let want = symmetric_narrow_per_channel(nd.view(), 8, axis);
        assert_eq!(obs.qparams().unwrap(), TensorQParams::PerChannel(want));
        assert_eq!(obs.range().unwrap(), (mins, maxs));
    }
    let mut asym = MinMaxObserver::new(
        &(vs.root() / "asym"),
        MinMaxConfig::new(QuantScheme::AsymmetricUnsigned, 8).per_channel(0, 4),
    )
    .unwrap();
    asym.observe(&x).unwrap();
    let (mins, maxs) = array::min_max_per_channel(nd.view(), 0).unwrap();
    let want =
        PerChannelParams::from_min_max(&mins, &maxs, QuantRange::unsigned(8).unwrap(), 0).unwrap();
    assert_eq!(asym.qparams().unwrap(), TensorQParams::PerChannel(want));
    let bad = Tensor::zeros([5, 3], (Kind::Float, Device::Cpu));
    assert!(matches!(
        asym.observe(&bad),
        Err(ObserverError {
            kind: ObserverErrorKind::Shape { .. },
            ..
        })
    ));
}

#[test]
fn minmax_replace_versus_accumulate() {
    let vs = VarStore::new(Device::Cpu);
    let mk = |name: &str, acc| {
        MinMaxObserver::new(
            &(vs.root() / name),
            MinMaxConfig::new(QuantScheme::AsymmetricUnsigned, 8).accumulate(acc),
        )
        .unwrap()
    };
    let (mut last, mut run) = (mk("last", false), mk("run", true));
    for b in [[-1.0f32, 2.0], [-0.5, 4.0], [0.0, 1.0]] {
        last.observe(&t(&b)).unwrap();
        run.observe(&t(&b)).unwrap();
    }
    assert_eq!(last.range().unwrap(), (vec![0.0], vec![1.0]));
    assert_eq!(run.range().unwrap(), (vec![-1.0], vec![4.0]));
    run.reset();
    assert!(!run.is_calibrated());
}

#[test]
fn non_finite_batches_are_rejected() {
    let vs = VarStore::new(Device::Cpu);
    let mut obs = EmaMinMaxObserver::tensorflow(&(vs.root() / "a"), 8).unwrap();
    assert!(matches!(
        obs.observe(&t(&[0.0, f32::NAN])),
        Err(ObserverError {
            kind: ObserverErrorKind::NonFinite { .. },
            ..
        })
    ));
    assert!(!obs.is_calibrated());
}

#[test]
fn histogram_percentile_clips_outliers() {
    let vs = VarStore::new(Device::Cpu);
    let mut full = HistogramObserver::new(&(vs.root() / "full"), 8, 1000, 100.0).unwrap();
    let mut clip = HistogramObserver::new(&(vs.root() / "clip"), 8, 1000, 99.0).unwrap();
    // 1000 values in [0, 1) plus one outlier at 100, spread over two batches (range grows).
    let body: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
    for o in [&mut full, &mut clip] {
        o.observe(&t(&body[..500])).unwrap();
        o.observe(&t(&[&body[500..], &[100.0]].concat())).unwrap();
    }
    assert_eq!(full.range().unwrap(), (0.0, 100.0));
    let (lo, hi) = clip.range().unwrap();
    assert_eq!(lo, 0.0);
    assert!(hi > 0.9 && hi < 1.2, "clipped max {hi}");
    let p = clip.qparams().unwrap();
    assert_eq!(
        p,
        TensorQParams::PerTensor(QuantParams::asymmetric(lo, hi, 8).unwrap())
    );
}

#[test]
fn state_round_trips_through_serde_and_the_varstore() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("obs.safetensors");
    let build = |vs: &VarStore| {
        (
            EmaMinMaxObserver::new(&(vs.root() / "ema"), 8, 0.9).unwrap(),
            HistogramObserver::new(&(vs.root() / "hist"), 8, 32, 99.0).unwrap(),
            MinMaxObserver::new(
                &(vs.root() / "w"),
                MinMaxConfig::new(QuantScheme::SymmetricNarrow, 4).per_channel(0, 2),
            )
            .unwrap(),
        )
    };
    let vs = VarStore::new(Device::Cpu);
    let (mut e, mut h, mut w) = build(&vs);
    for b in [[-1.0f32, 0.5, 2.0, 3.0], [0.0, 0.2, 5.0, -2.0]] {
        e.observe(&t(&b)).unwrap();
        h.observe(&t(&b)).unwrap();
        w.observe(&t(&b).view([2, 2])).unwrap();
    }
    e.freeze();
    vs.save(&file).unwrap();
    let mut vs2 = VarStore::new(Device::Cpu);
    let (e2, h2, w2) = build(&vs2);
    assert!(!e2.is_calibrated());
    vs2.load(&file).unwrap();
    assert_eq!(e2.state().unwrap(), e.state().unwrap());
    assert!(e2.is_frozen());
    assert_eq!(h2.qparams().unwrap(), h.qparams().unwrap());
    assert_eq!(w2.qparams().unwrap(), w.qparams().unwrap());
    // serde state
    let json = serde_json::to_string(&h.state().unwrap()).unwrap();
    let vs3 = VarStore::new(Device::Cpu);
    let (_, mut h3, _) = build(&vs3);
    h3.load_state(&serde_json::from_str(&json).unwrap())
        .unwrap();
    assert_eq!(h3.state().unwrap(), h.state().unwrap());
    let mut wrong = h.state().unwrap();
    wrong.histogram.pop();
    assert!(matches!(
        h3.load_state(&wrong),
        Err(ObserverError {
            kind: ObserverErrorKind::State(_),
            ..
        })
    ));
}

/// Ranges on which the device computation of the parameters must equal qat-core's: ordinary,
/// all-negative, all-positive, degenerate (0, 0), tiny, huge, and ties of the zero point.
fn awkward_ranges() -> Vec<(f32, f32)> {
    let mut v = vec![
        (-1.0, 3.0),
        (0.0, 6.0),
        (-2.0, -0.5),
        (0.3, 0.9),
        (0.0, 0.0),
        (-1e-30, 1e-30),
        (-3.0e30, 1.0e30),
        (-0.5, 127.0),
        (-1.0, 254.0),
        (-0.37, 0.91),
        (-1.5, 1.5),
    ];
    let mut s = 12345u64;
    for _ in 0..400 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let a = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 20.0;
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let b = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 20.0;
        v.push((a.min(b), a.max(b)));
    }
    v
}

#[test]
fn device_parameters_equal_qat_core_bit_for_bit() {
    use super::range::{device_qparams, to_qparams};
    let ranges = awkward_ranges();
    let lo: Vec<f32> = ranges.iter().map(|r| r.0).collect();
    let hi: Vec<f32> = ranges.iter().map(|r| r.1).collect();
    for scheme in [
        QuantScheme::SymmetricNarrow,
        QuantScheme::AsymmetricUnsigned,
    ] {
        for bits in [2, 4, 8] {
            // Per channel, all ranges at once.
            let dev = device_qparams("t", scheme, bits, Some(0), &t(&lo), &t(&hi))
                .unwrap()
                .to_host()
                .unwrap();
            let host = to_qparams("t", scheme, bits, Some(0), &lo, &hi).unwrap();
            assert_eq!(dev, host, "{scheme:?} {bits} bits per channel");
            // Per tensor, each range.
            for &(a, b) in &ranges {
                let dev = device_qparams("t", scheme, bits, None, &t(&[a]), &t(&[b]))
                    .unwrap()
                    .to_host()
                    .unwrap();
                let host = to_qparams("t", scheme, bits, None, &[a], &[b]).unwrap();
                assert_eq!(dev, host, "{scheme:?} {bits} bits [{a}, {b}]");
            }
        }
    }
}

/// The training step's observer updates (`observe_device`, `device_qparams`) against the checked
/// host path, in both forms on the CPU: the host fast path (`qat_autograd::cpu`, on by default)
/// and the device form (the same libtorch ops as on a GPU). Same states, same parameters, no host
/// read.
#[test]
fn device_updates_equal_the_host_path_and_read_nothing() {
    for fast in [true, false] {
        qat_autograd::cpu::with_fast_paths(fast, || device_updates_equal_the_host_path(fast));
    }
}

fn device_updates_equal_the_host_path(fast: bool) {
    let vs = VarStore::new(Device::Cpu);
    let p = vs.root();
    let mut host = EmaMinMaxObserver::new(&(&p / "h"), 8, 0.9).unwrap();
    let mut dev = EmaMinMaxObserver::new(&(&p / "d"), 8, 0.9).unwrap();
    let minmax = |acc| {
        MinMaxConfig::new(QuantScheme::AsymmetricUnsigned, 8)
            .per_channel(0, 2)
            .accumulate(acc)
    };
    let sym = MinMaxConfig::new(QuantScheme::SymmetricNarrow, 4).per_channel(0, 2);
    let mut pairs = [minmax(true), minmax(false), sym].map(|cfg| {
        (
            MinMaxObserver::new(&(&p / "mh"), cfg).unwrap(),
            MinMaxObserver::new(&(&p / "md"), cfg).unwrap(),
        )
    });
    let batches = [
        vec![-1.0f32, 2.0, 0.5, 7.0],
        vec![-0.25, 3.5, -4.0, f32::INFINITY],
        vec![0.0, f32::NAN, 1.0, 2.0],
        vec![-0.7, 0.1, 0.2, 9.5],
        vec![0.0, -0.0, 1e-30, -3e38],
        vec![5.0, f32::NEG_INFINITY, 0.25, 0.5],
    ];
    // The one read of each observer's frozen flag (then kept on the host).
    assert!(!dev.is_frozen() && pairs.iter().all(|(_, d)| !d.is_frozen()));
    for (i, b) in batches.iter().enumerate() {
        let x = t(b).view([2, 2]);
        // A fused ReLU6 clamps the infinity of batch 1 to a finite range.
        let clamp = if i == 1 { Some((0.0, 6.0)) } else { None };
        let finite = match clamp {
            Some(_) => b.iter().all(|v| !v.is_nan()),
            None => b.iter().all(|v| v.is_finite()),
        };
        let what = format!("fast paths {fast}, batch {i}");
        assert_eq!(host.observe_clamped(&x, clamp).is_ok(), finite, "{what}");
        for (h, _) in &mut pairs {
            assert_eq!(h.observe_clamped(&x, clamp).is_ok(), finite, "{what}");
        }
        let reads = qat_autograd::host_read::count();
        dev.observe_device(&x, clamp).unwrap();
        for (_, d) in &mut pairs {
            d.observe_device(&x, clamp).unwrap();
        }
        assert_eq!(qat_autograd::host_read::count(), reads, "{what}");
        assert_eq!(dev.state().unwrap(), host.state().unwrap(), "{what}");
        let reads = qat_autograd::host_read::count();
        let dp = dev.device_qparams().unwrap();
        let pair_params: Vec<_> = pairs
            .iter()
            .map(|(_, d)| d.device_qparams().unwrap())
            .collect();
        // The device form reads each count once, after the first batch, to learn that the
        // observer is calibrated; then it keeps that on the host.
        let allowed = if fast || i > 0 { 0 } else { 4 };
        assert_eq!(qat_autograd::host_read::count(), reads + allowed, "{what}");
        assert_eq!(dp.to_host().unwrap(), host.qparams().unwrap(), "{what}");
        for ((h, d), dp) in pairs.iter().zip(pair_params) {
            assert_eq!(d.state().unwrap(), h.state().unwrap(), "{what}");
            assert_eq!(dp.to_host().unwrap(), h.qparams().unwrap(), "{what}");
        }
    }
}

/// The weight quantizer's step (`observe_params_device`: record the weights' range, return its
/// parameters) gives the same parameters and state in the host form and the device form, also
/// frozen, and reads nothing back.
#[test]
fn weight_step_forms_agree() {
    let cfg = MinMaxConfig::new(QuantScheme::SymmetricNarrow, 8).per_channel(0, 3);
    let weights = [
        vec![0.5f32, -1.25, 0.0, 2.0, 3.0, -0.75],
        vec![-4.0, 0.125, 1e-30, -0.0, 0.25, 7.5],
    ];
    let run = |fast: bool| {
        qat_autograd::cpu::with_fast_paths(fast, || {
            let vs = VarStore::new(Device::Cpu);
            let mut obs = MinMaxObserver::new(&(vs.root() / "w"), cfg).unwrap();
            // The one read of the frozen flag (then kept on the host).
            assert!(!obs.is_frozen());
            let mut out = Vec::new();
            for (i, w) in weights.iter().enumerate() {
                if i == 1 {
                    obs.freeze();
                }
                let reads = qat_autograd::host_read::count();
                let p = obs.observe_params_device(&t(w).view([3, 2])).unwrap();
                assert_eq!(qat_autograd::host_read::count(), reads, "fast paths {fast}");
                out.push((p.to_host().unwrap(), obs.state().unwrap()));
            }
            out
        })
    };
    let (host, device) = (run(true), run(false));
    assert_eq!(host, device);
    // The parameters are those of each batch's own range, through qat-core.
    let expect = obs_params(&weights[1], cfg);
    assert_eq!(host[1].0, expect);
}

fn obs_params(w: &[f32], cfg: MinMaxConfig) -> TensorQParams {
    let vs = VarStore::new(Device::Cpu);
    let obs = MinMaxObserver::new(&(vs.root() / "ref"), cfg).unwrap();
    obs.qparams_of(&t(w).view([3, 2])).unwrap()
}
