//! The model zoo: every model is a function of a [`ModelSpec`] that drives a [`NetBuilder`].

use tch::Device;

use super::{Architecture, ModelError, ModelErrorKind, ModelSpec, Net, NetBuilder, NodeRef};
use crate::layers::Activation;

/// Builds the model described by `spec` on `device` (initial weights from libtorch's generator: call
/// `tch::manual_seed` first for reproducible runs).
pub fn build(spec: &ModelSpec, device: Device) -> Result<Net, ModelError> {
    let name = spec.name();
    let bad = |what: String| ModelError::new(&name, ModelErrorKind::Build(what));
    if spec.num_classes == 0 || spec.input.contains(&0) {
        return Err(bad(format!(
            "input {:?} / {} classes",
            spec.input, spec.num_classes
        )));
    }
    let mut b = NetBuilder::new(&name, device, spec.input, spec.quant)?
        .fold(spec.bn_fold)
        .stats_grad(spec.bn_stats_grad)
        .layer_bits(spec.layer_bits.clone());
    let out = match spec.arch {
        Architecture::LeNet => lenet(&mut b, spec)?,
        Architecture::MobileNetV1 { width, blocks } => {
            if !(width > 0.0 && (1..=13).contains(&blocks)) {
                return Err(bad(format!(
                    "MobileNet-v1 width {width} / blocks {blocks} (1..=13)"
                )));
            }
            mobilenet_v1(&mut b, spec, width, blocks)?
        }
        Architecture::MobileNetV2 { width, expansion } => {
            if !(width > 0.0 && expansion >= 1) {
                return Err(bad(format!(
                    "MobileNet-v2 width {width} / expansion {expansion}"
                )));
            }
            mobilenet_v2(&mut b, spec, width, expansion)?
        }
        Architecture::ResNet { depth } => {
            if depth < 8 || (depth - 2) % 6 != 0 {
                return Err(bad(format!(
                    "ResNet depth {depth} is not 6n + 2 with n ≥ 1"
                )));
            }
            resnet(&mut b, spec, (depth - 2) / 6)?
        }
    };
    b.finish(out, Some(spec.clone()))
}

/// Channels scaled by the width multiplier α, at least 4.
fn scaled(c: usize, width: f64) -> usize {
    ((c as f64 * width).round() as usize).max(4)
}

/// LeNet-style: conv5×5(6)+BN+act → maxpool2 → conv5×5(16)+BN+act → maxpool2 → flatten → fc(120)+act → fc.
/// "Same" padding keeps it valid for any input ≥ 4×4.
fn lenet(b: &mut NetBuilder, spec: &ModelSpec) -> Result<NodeRef, ModelError> {
    let act = spec.activation;
    let x = b.input();
    let x = b.conv_bn("conv1", x, 6, 5, 1, act)?;
    let x = b.max_pool("pool1", x, 2, 2)?;
    let x = b.conv_bn("conv2", x, 16, 5, 1, act)?;
    let x = b.max_pool("pool2", x, 2, 2)?;
    let x = b.flatten("flatten", x)?;
    let x = b.linear("fc1", x, 120, act)?;
    b.linear("fc2", x, spec.num_classes, Activation::None)
}

/// MobileNet-v1 (Howard et al. 2017, table 1): stem conv3×3(32α), then depthwise-separable blocks
/// (dw3×3+BN+act, pw1×1+BN+act) with output channels/strides 64/1, 128/2, 128/1, 256/2, 256/1, 512/2,
/// 512/1 ×5, 1024/2, 1024/1 (the first `blocks` of them), global average pooling, linear classifier.
/// The stem has stride 2 for inputs ≥ 64 pixels high (ImageNet-like) and stride 1 for small inputs
/// (MNIST/CIFAR), so that small images are not reduced to 1×1.
fn mobilenet_v1(
    b: &mut NetBuilder,
    spec: &ModelSpec,
    width: f64,
    blocks: usize,
) -> Result<NodeRef, ModelError> {
    const BLOCKS: [(usize, i64); 13] = [
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    ];
    let act = spec.activation;
    let stem_stride = if spec.input[1] >= 64 { 2 } else { 1 };
    let mut x = b.conv_bn("stem", b.input(), scaled(32, width), 3, stem_stride, act)?;
    for (i, &(c, s)) in BLOCKS.iter().take(blocks).enumerate() {
        x = b.depthwise_bn(&format!("block{}.dw", i + 1), x, 3, s, act)?;
        x = b.conv_bn(
            &format!("block{}.pw", i + 1),
            x,
            scaled(c, width),
            1,
            1,
            act,
        )?;
    }
    let x = b.global_avg_pool("gap", x)?;
    b.linear("fc", x, spec.num_classes, Activation::None)
}

/// MobileNet-v2-style (Sandler et al. 2018) for small inputs: stem conv3×3(32α, stride 1), inverted
/// residual stages `(t, c, n, s)` = (1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 2, 2), (t, 64, 2, 2), (t, 96, 1, 1),
/// then a 1×1 conv to 4× the last width, global average pooling and a linear classifier.
/// Block: [expand 1×1+BN+act if t > 1] → dw3×3+BN+act (stride s) → project 1×1+BN (linear) → quantized
/// add with the input when stride is 1 and the channel counts match.
fn mobilenet_v2(
    b: &mut NetBuilder,
    spec: &ModelSpec,
    width: f64,
    t: usize,
) -> Result<NodeRef, ModelError> {
    let act = spec.activation;
    let stages = [
        (1, 16, 1, 1),
        (t, 24, 2, 1),
        (t, 32, 2, 2),
        (t, 64, 2, 2),
        (t, 96, 1, 1),
    ];
    let mut x = b.conv_bn("stem", b.input(), scaled(32, width), 3, 1, act)?;
    let mut k = 0;
    for (t, c, n, s) in stages {
        for j in 0..n {
            k += 1;
            let stride = if j == 0 { s } else { 1 };
            let cin = b.shape(x)[0];
            let cout = scaled(c, width);
            let p = format!("ir{k}");
            let mut y = x;
            if t > 1 {
                y = b.conv_bn(&format!("{p}.expand"), y, cin * t, 1, 1, act)?;
            }
            y = b.depthwise_bn(&format!("{p}.dw"), y, 3, stride, act)?;
            y = b.conv_bn(&format!("{p}.project"), y, cout, 1, 1, Activation::None)?;
            x = if stride == 1 && cin == cout {
                b.add(&format!("{p}.add"), x, y, Activation::None)?
            } else {
                y
            };
        }
    }
    let last = 4 * b.shape(x)[0];
    let x = b.conv_bn("head", x, last, 1, 1, act)?;
    let x = b.global_avg_pool("gap", x)?;
    b.linear("fc", x, spec.num_classes, Activation::None)
}

/// CIFAR ResNet (He et al. 2016, §4.2): conv3×3(16)+BN+act, three stages of `n` basic blocks with 16, 32, 64
/// channels (stride 2 at the start of stages 2 and 3), global average pooling, linear classifier: `6n + 2`
/// weighted layers. Basic block: conv3×3+BN+act → conv3×3+BN → add(shortcut) + act, the shortcut being the
/// identity or, when the shape changes, a 1×1 conv+BN projection (option B).
fn resnet(b: &mut NetBuilder, spec: &ModelSpec, n: usize) -> Result<NodeRef, ModelError> {
    let act = spec.activation;
    let mut x = b.conv_bn("stem", b.input(), 16, 3, 1, act)?;
    for (stage, c) in [16usize, 32, 64].into_iter().enumerate() {
        for j in 0..n {
            let s = if stage > 0 && j == 0 { 2 } else { 1 };
            let p = format!("stage{}.block{}", stage + 1, j + 1);
            let cin = b.shape(x)[0];
            let y = b.conv_bn(&format!("{p}.conv1"), x, c, 3, s, act)?;
            let y = b.conv_bn(&format!("{p}.conv2"), y, c, 3, 1, Activation::None)?;
            let shortcut = if s != 1 || cin != c {
                b.conv_bn(&format!("{p}.proj"), x, c, 1, s, Activation::None)?
            } else {
                x
            };
            x = b.add(&format!("{p}.add"), shortcut, y, act)?;
        }
    }
    let x = b.global_avg_pool("gap", x)?;
    b.linear("fc", x, spec.num_classes, Activation::None)
}
