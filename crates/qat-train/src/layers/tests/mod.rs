//! Layer tests: BN folding against conv → BN, freezing, gradients (`conv_bn.rs`); fake-quant outputs
//! against qat-core's reference, the quantizers' switches, PACT, LSQ and STE (`quantizers.rs`); add,
//! concat, pools, errors and the whole-model switches (`merge_pool.rs`). Data comes from a local LCG
//! (no global libtorch RNG); the helpers are here.

mod conv_bn;
mod merge_pool;
mod quantizers;

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

const FOLDS: [BnFoldMode; 2] = [BnFoldMode::Whitepaper, BnFoldMode::PyTorch];
