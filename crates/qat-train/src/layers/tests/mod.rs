//! Layer tests: BN folding against conv → BN, freezing, gradients (`conv_bn.rs`); fake-quant outputs
//! against qat-core's reference, the quantizers' switches, PACT, LSQ and STE (`quantizers.rs`); add,
//! concat, pools, errors and the whole-model switches (`merge_pool.rs`). Data comes from the LCG of
//! `qat_autograd::testing` (no global libtorch RNG); the layer helpers are here.

mod conv_bn;
mod merge_pool;
mod quantizers;

use ndarray::ArrayD;
use qat_autograd::TensorQParams;
use qat_autograd::testing::{batch_norm, max_diff, rand, set, symmetric_narrow_per_channel, vecf};
use qat_core::{QuantParams, QuantRange, array};
use tch::{Device, Kind, Tensor, nn::VarStore};

use super::*;
use crate::observer::{ActObserverConfig, Observer};

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
    let p = symmetric_narrow_per_channel(nd.view(), 8, 0);
    Tensor::try_from(array::fake_quant_per_channel(nd.view(), &p).unwrap()).unwrap()
}

const FOLDS: [BnFoldMode; 2] = [BnFoldMode::Whitepaper, BnFoldMode::PyTorch];
