//! Forward + backward time of one MobileNet-style block (3×3 depthwise conv + BN + ReLU6 → 1×1 conv +
//! BN + ReLU6) with and without fake quantization, plus the fake-quant op alone.
//!
//! ```text
//! cargo run --release -p qat-train --example bench_block -- [batch] [channels] [size] [rounds]
//! ```
//! Defaults: batch 64, 64 channels, 28×28, 15 rounds. All variants are built first and then timed
//! round-robin (one step of each per round, after 2 warm-up rounds), so a machine whose load
//! fluctuates hits every variant alike; the report gives the minimum (least disturbed) and the
//! median ms/step. Threads: libtorch's default; `QAT_BENCH_THREADS` overrides.

use std::time::Instant;

use qat_autograd::Ste;
use qat_train::layers::{
    Activation, BnFoldMode, Conv2dConfig, ConvBnConfig, QatControl, QatConvBn2d, QatLayer,
    QatModule,
};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

type Res<T> = Result<T, Box<dyn std::error::Error>>;
type Step = Box<dyn FnMut() -> Res<()>>;

fn arg(i: usize, default: i64) -> Res<i64> {
    match std::env::args().nth(i) {
        Some(s) => Ok(s.parse()?),
        None => Ok(default),
    }
}

/// A float block from tch's own `nn` layers: the baseline.
fn float_block(c: i64, x: Tensor) -> Res<Step> {
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root();
    let bn_cfg = nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.0),
        ..Default::default()
    };
    let dw_cfg = nn::ConvConfig {
        padding: 1,
        groups: c,
        bias: false,
        ..Default::default()
    };
    let pw_cfg = nn::ConvConfig {
        bias: false,
        ..Default::default()
    };
    let dw = nn::conv2d(&p / "dw", c, c, 3, dw_cfg);
    let bn1 = nn::batch_norm2d(&p / "bn1", c, bn_cfg);
    let pw = nn::conv2d(&p / "pw", c, c, 1, pw_cfg);
    let bn2 = nn::batch_norm2d(&p / "bn2", c, bn_cfg);
    let mut opt = nn::Sgd::default().build(&vs, 0.0)?;
    Ok(Box::new(move || {
        opt.zero_grad();
        let y = x.apply(&dw).apply_t(&bn1, true).clamp(0.0, 6.0);
        let y = y.apply(&pw).apply_t(&bn2, true).clamp(0.0, 6.0);
        y.mean(Kind::Float).backward();
        let _ = &vs;
        Ok(())
    }))
}

/// The same block from QAT layers.
fn qat_block(c: i64, x: Tensor, fold: BnFoldMode, fq: bool, frozen: bool) -> Res<Step> {
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root();
    let dw_cfg =
        ConvBnConfig::new(Conv2dConfig::depthwise(c, 3).activation(Activation::Relu6)).fold(fold);
    let pw_cfg =
        ConvBnConfig::new(Conv2dConfig::new(c, c, 1).activation(Activation::Relu6)).fold(fold);
    let mut dw = QatConvBn2d::new(&(&p / "dw"), dw_cfg)?;
    let mut pw = QatConvBn2d::new(&(&p / "pw"), pw_cfg)?;
    for l in [&mut dw, &mut pw] {
        l.control(QatControl::fake_quant(fq));
        l.control(QatControl::FreezeBn(frozen));
    }
    let mut opt = nn::Sgd::default().build(&vs, 0.0)?;
    Ok(Box::new(move || {
        opt.zero_grad();
        let y = dw.forward_t(&x, true)?;
        pw.forward_t(&y, true)?.mean(Kind::Float).backward();
        Ok(())
    }))
}

/// The fake-quant op alone on one activation tensor of the block.
fn fq_alone(x: &Tensor, ste: Option<Ste>) -> Res<Step> {
    let p = qat_core::QuantParams::asymmetric(0.0, 6.0, 8)?;
    let xa = x.clamp(0.0, 6.0).set_requires_grad(true);
    Ok(Box::new(move || {
        let _ = xa.grad().f_zero_();
        let y = match ste {
            Some(ste) => qat_autograd::fake_quant_per_tensor(&xa, &p, ste)?,
            None => xa.clamp(0.0, 6.0),
        };
        y.sum(Kind::Float).backward();
        Ok(())
    }))
}

fn main() -> Res<()> {
    let (n, c, hw, rounds) = (arg(1, 64)?, arg(2, 64)?, arg(3, 28)?, arg(4, 15)?);
    if let Ok(t) = std::env::var("QAT_BENCH_THREADS") {
        tch::set_num_threads(t.parse()?);
    }
    tch::manual_seed(0);
    let x = Tensor::randn([n, c, hw, hw], (Kind::Float, Device::Cpu));
    println!(
        "MobileNet block: dw3x3+BN+ReLU6 -> pw1x1+BN+ReLU6, fwd+bwd, batch {n}, {c} ch, {hw}x{hw}, \
         threads {}, {rounds} rounds",
        tch::get_num_threads()
    );
    let wp = BnFoldMode::Whitepaper;
    let pt = BnFoldMode::PyTorch;
    let mut variants: Vec<(&str, Step)> = vec![
        (
            "float conv->BN (tch nn, baseline)",
            float_block(c, x.shallow_clone())?,
        ),
        (
            "QAT layers, whitepaper fold, FQ off",
            qat_block(c, x.shallow_clone(), wp, false, false)?,
        ),
        (
            "QAT layers, whitepaper fold, FQ on",
            qat_block(c, x.shallow_clone(), wp, true, false)?,
        ),
        (
            "QAT layers, PyTorch fold, FQ off",
            qat_block(c, x.shallow_clone(), pt, false, false)?,
        ),
        (
            "QAT layers, PyTorch fold, FQ on",
            qat_block(c, x.shallow_clone(), pt, true, false)?,
        ),
        (
            "QAT layers, BN frozen, FQ on",
            qat_block(c, x.shallow_clone(), wp, true, true)?,
        ),
        ("op alone: clamp (reference)", fq_alone(&x, None)?),
        (
            "op alone: fake quant, clipped STE (fused)",
            fq_alone(&x, Some(Ste::Clipped))?,
        ),
        (
            "op alone: fake quant, plain STE (composed)",
            fq_alone(&x, Some(Ste::Plain))?,
        ),
    ];
    let mut times = vec![Vec::new(); variants.len()];
    for r in 0..rounds + 2 {
        for (i, (_, step)) in variants.iter_mut().enumerate() {
            let t = Instant::now();
            step()?;
            if r >= 2 {
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for ((label, _), mut ms) in variants.iter().zip(times) {
        ms.sort_by(f64::total_cmp);
        let (min, med) = (ms[0], ms[ms.len() / 2]);
        println!("{label:<44} min {min:8.2} ms/step  median {med:8.2}");
    }
    Ok(())
}
