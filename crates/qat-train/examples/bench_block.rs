//! Forward + backward time of one MobileNet-style block (3×3 depthwise conv + BN + ReLU6 → 1×1 conv +
//! BN + ReLU6) with and without fake quantization.
//!
//! ```text
//! cargo run --release -p qat-train --example bench_block -- [batch] [channels] [size] [steps]
//! ```
//! defaults: batch 64, 64 channels, 28×28, 20 timed steps (after 3 warm-up steps). Prints the median
//! and mean ms/step of each variant. Threads: libtorch's default (`tch::get_num_threads()`); set
//! `QAT_BENCH_THREADS` to override.

use std::time::Instant;

use qat_autograd::Ste;
use qat_train::layers::{
    Activation, BnFoldMode, Conv2dConfig, ConvBnConfig, QatControl, QatConvBn2d, QatLayer,
    QatModule,
};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn arg(i: usize, default: i64) -> Res<i64> {
    match std::env::args().nth(i) {
        Some(s) => Ok(s.parse()?),
        None => Ok(default),
    }
}

struct Block {
    dw: QatConvBn2d,
    pw: QatConvBn2d,
}

impl Block {
    fn new(p: &nn::Path<'_>, c: i64, fold: BnFoldMode) -> Res<Self> {
        let dw = ConvBnConfig::new(Conv2dConfig::depthwise(c, 3).activation(Activation::Relu6))
            .fold(fold);
        let pw =
            ConvBnConfig::new(Conv2dConfig::new(c, c, 1).activation(Activation::Relu6)).fold(fold);
        Ok(Self {
            dw: QatConvBn2d::new(&(p / "dw"), dw)?,
            pw: QatConvBn2d::new(&(p / "pw"), pw)?,
        })
    }

    fn control(&mut self, c: QatControl) {
        self.dw.control(c);
        self.pw.control(c);
    }

    fn forward(&mut self, x: &Tensor) -> Res<Tensor> {
        let y = self.dw.forward_t(x, true)?;
        Ok(self.pw.forward_t(&y, true)?)
    }
}

fn time(steps: i64, mut step: impl FnMut() -> Res<()>) -> Res<(f64, f64)> {
    for _ in 0..3 {
        step()?;
    }
    let mut ms = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        step()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], mean))
}

fn main() -> Res<()> {
    let (n, c, hw, steps) = (arg(1, 64)?, arg(2, 64)?, arg(3, 28)?, arg(4, 20)?);
    if let Ok(t) = std::env::var("QAT_BENCH_THREADS") {
        tch::set_num_threads(t.parse()?);
    }
    tch::manual_seed(0);
    let x = Tensor::randn([n, c, hw, hw], (Kind::Float, Device::Cpu));
    println!(
        "MobileNet block: dw3x3+BN+ReLU6 -> pw1x1+BN+ReLU6, batch {n}, {c} ch, {hw}x{hw}, threads {}, {steps} steps",
        tch::get_num_threads()
    );

    // Baseline: plain tch conv -> batch_norm -> relu6, no QAT machinery.
    {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let bn_cfg = nn::BatchNormConfig {
            ws_init: nn::Init::Const(1.0),
            ..Default::default()
        };
        let dw = nn::conv2d(
            &p / "dw",
            c,
            c,
            3,
            nn::ConvConfig {
                padding: 1,
                groups: c,
                bias: false,
                ..Default::default()
            },
        );
        let bn1 = nn::batch_norm2d(&p / "bn1", c, bn_cfg);
        let pw = nn::conv2d(
            &p / "pw",
            c,
            c,
            1,
            nn::ConvConfig {
                bias: false,
                ..Default::default()
            },
        );
        let bn2 = nn::batch_norm2d(&p / "bn2", c, bn_cfg);
        let mut opt = nn::Sgd::default().build(&vs, 0.0)?;
        let (med, mean) = time(steps, || {
            opt.zero_grad();
            let y = x.apply(&dw).apply_t(&bn1, true).clamp(0.0, 6.0);
            let y = y.apply(&pw).apply_t(&bn2, true).clamp(0.0, 6.0);
            y.mean(Kind::Float).backward();
            Ok(())
        })?;
        println!(
            "{:<44} median {med:8.2} ms/step  mean {mean:8.2}",
            "float conv->BN (tch nn, baseline)"
        );
    }

    let variants: [(&str, BnFoldMode, bool, bool); 5] = [
        (
            "QAT layers, whitepaper fold, fake quant off",
            BnFoldMode::Whitepaper,
            false,
            false,
        ),
        (
            "QAT layers, whitepaper fold, fake quant on",
            BnFoldMode::Whitepaper,
            true,
            false,
        ),
        (
            "QAT layers, PyTorch fold, fake quant off",
            BnFoldMode::PyTorch,
            false,
            false,
        ),
        (
            "QAT layers, PyTorch fold, fake quant on",
            BnFoldMode::PyTorch,
            true,
            false,
        ),
        (
            "QAT layers, BN frozen, fake quant on",
            BnFoldMode::Whitepaper,
            true,
            true,
        ),
    ];
    for (label, fold, fq, frozen) in variants {
        let vs = nn::VarStore::new(Device::Cpu);
        let mut block = Block::new(&vs.root(), c, fold)?;
        block.control(QatControl::FakeQuant(fq));
        block.control(QatControl::FreezeBn(frozen));
        let mut opt = nn::Sgd::default().build(&vs, 0.0)?;
        let (med, mean) = time(steps, || {
            opt.zero_grad();
            block.forward(&x)?.mean(Kind::Float).backward();
            Ok(())
        })?;
        println!("{label:<44} median {med:8.2} ms/step  mean {mean:8.2}");
    }

    // The fake-quant op alone on one activation tensor of the block, forward + backward.
    let p = qat_core::QuantParams::asymmetric(0.0, 6.0, 8)?;
    let xa = x.clamp(0.0, 6.0).set_requires_grad(true);
    for (label, ste) in [
        ("fake_quant_per_tensor alone, clipped (fused)", Ste::Clipped),
        ("fake_quant_per_tensor alone, plain (STE comp.)", Ste::Plain),
    ] {
        let (med, mean) = time(steps, || {
            let _ = xa.grad().f_zero_();
            qat_autograd::fake_quant_per_tensor(&xa, &p, ste)?
                .sum(Kind::Float)
                .backward();
            Ok(())
        })?;
        println!("{label:<44} median {med:8.2} ms/step  mean {mean:8.2}");
    }
    let (med, mean) = time(steps, || {
        let _ = xa.grad().f_zero_();
        xa.clamp(0.0, 6.0).sum(Kind::Float).backward();
        Ok(())
    })?;
    println!(
        "{:<44} median {med:8.2} ms/step  mean {mean:8.2}",
        "reference: clamp alone (same tensor)"
    );
    Ok(())
}
