//! The zoo's architectures in miniature, as float graphs (no libtorch): LeNet, MobileNet-v1,
//! MobileNet-v2 (inverted residuals with adds) and the CIFAR ResNet (basic blocks, a strided
//! block with a 1×1 projection shortcut), with seeded random weights and batch norm folded in.

use qat_export::FloatGraph;
use qat_export::ir::{Activation, Activation as A, Conv2d, Linear, NodeId, Pool2d};

use crate::common::{StdRng, random_bn, rng, uniform};

/// A conv `k×k`, `cin/groups → cout`, stride `s`, same padding, random weights (fan-in scaled),
/// batch norm with random statistics, and `act`.
fn conv(
    r: &mut StdRng,
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    groups: usize,
    act: Activation,
) -> Conv2d {
    let cig = cin / groups;
    let a = 1.5 / ((cig * k * k) as f32).sqrt();
    let p = (k - 1) / 2;
    let bn = random_bn(r, cout);
    Conv2d::new(uniform(r, cout * k * k * cig, -a, a), [cout, k, k, cig])
        .with_stride([s, s])
        .with_padding([p; 4])
        .with_groups(groups)
        .with_batch_norm(bn)
        .with_activation(act)
}

/// Global average pool and a classifier of `classes` outputs.
fn head(r: &mut StdRng, g: &mut FloatGraph, x: NodeId, c: usize, classes: usize) {
    let gap = g.global_avg_pool("gap", x);
    let a = 1.5 / (c as f32).sqrt();
    let fc = Linear::new(uniform(r, classes * c, -a, a), [classes, c])
        .with_bias(uniform(r, classes, -0.1, 0.1));
    let y = g.linear("fc", gap, fc);
    g.output("logits", y);
}

/// LeNet: conv 5×5 → ReLU → max pool → conv 5×5 → ReLU → max pool → flatten → FC → ReLU → FC,
/// on a 16×16×1 input.
pub fn lenet(seed: u64) -> FloatGraph {
    let r = &mut rng(seed);
    let mut g = FloatGraph::new("lenet");
    let x = g.input("x", &[16, 16, 1]);
    let c1 = g.conv2d("conv1", x, conv(r, 1, 6, 5, 1, 1, Activation::Relu));
    let p1 = g.max_pool("pool1", c1, Pool2d::square(2, 2));
    let c2 = g.conv2d("conv2", p1, conv(r, 6, 12, 5, 1, 1, Activation::Relu));
    let p2 = g.max_pool("pool2", c2, Pool2d::square(2, 2));
    let f = g.flatten("flatten", p2);
    let n = 4 * 4 * 12;
    let a = 1.5 / (n as f32).sqrt();
    let fc1 = Linear::new(uniform(r, 32 * n, -a, a), [32, n])
        .with_bias(uniform(r, 32, -0.1, 0.1))
        .with_activation(Activation::Relu);
    let h = g.linear("fc1", f, fc1);
    let fc2 = Linear::new(uniform(r, 10 * 32, -0.25, 0.25), [10, 32]);
    let y = g.linear("fc2", h, fc2);
    g.output("logits", y);
    g
}

/// `g.conv2d(name, x, conv(r, cin, cout, k, s, groups, act))`, `l = [cin, cout, k, s, groups]`.
fn layer(
    g: &mut FloatGraph,
    r: &mut StdRng,
    name: String,
    x: NodeId,
    [cin, cout, k, s, groups]: [usize; 5],
    act: Activation,
) -> NodeId {
    g.conv2d(name, x, conv(r, cin, cout, k, s, groups, act))
}

/// Network `name` on a 12×12×3 input: a 3×3 stem conv to 8 channels (stride and activation
/// `stem`), then one block per `(C_out, stride)` of `blocks`, built by
/// `block(r, g, i, x, C_in, C_out, stride)`, then GAP + FC to 10 classes.
fn stem_blocks_head(
    seed: u64,
    (name, stem, blocks): (&str, (usize, Activation), [(usize, usize); 3]),
    mut block: impl FnMut(&mut StdRng, &mut FloatGraph, usize, NodeId, usize, usize, usize) -> NodeId,
) -> FloatGraph {
    let r = &mut rng(seed);
    let mut g = FloatGraph::new(name);
    let x = g.input("x", &[12, 12, 3]);
    let mut cur = g.conv2d("stem", x, conv(r, 3, 8, 3, stem.0, 1, stem.1));
    let mut c = 8;
    for (i, (cout, s)) in blocks.into_iter().enumerate() {
        cur = block(r, &mut g, i, cur, c, cout, s);
        c = cout;
    }
    head(r, &mut g, cur, c, 10);
    g
}

/// MobileNet-v1: a 3×3 stem, then depthwise-separable blocks (depthwise 3×3 + ReLU6, pointwise
/// 1×1 + ReLU6), one strided; GAP + FC. 12×12×3 input.
pub fn mobilenet_v1(seed: u64) -> FloatGraph {
    let net = ("mobilenet-v1", (2, A::Relu6), [(16, 1), (24, 2), (24, 1)]);
    stem_blocks_head(seed, net, |r, g, i, x, c, cout, s| {
        let dw = layer(g, r, format!("b{i}_dw"), x, [c, c, 3, s, c], A::Relu6);
        layer(g, r, format!("b{i}_pw"), dw, [c, cout, 1, 1, 1], A::Relu6)
    })
}

/// MobileNet-v2: a stem, then inverted residuals (expand 1×1 + ReLU6, depthwise 3×3 + ReLU6,
/// linear project 1×1) with a residual add where shape allows; GAP + FC. 12×12×3 input.
pub fn mobilenet_v2(seed: u64) -> FloatGraph {
    let net = ("mobilenet-v2", (2, A::Relu6), [(8, 1), (12, 2), (12, 1)]);
    stem_blocks_head(seed, net, |r, g, i, x, c, cout, s| {
        let e = 4 * c;
        let ex = layer(g, r, format!("b{i}_expand"), x, [c, e, 1, 1, 1], A::Relu6);
        let dw = layer(g, r, format!("b{i}_dw"), ex, [e, e, 3, s, e], A::Relu6);
        let pj = layer(
            g,
            r,
            format!("b{i}_project"),
            dw,
            [e, cout, 1, 1, 1],
            A::None,
        );
        if s == 1 && cout == c {
            g.add(format!("b{i}_add"), x, pj, A::None)
        } else {
            pj
        }
    })
}

/// The CIFAR ResNet: a 3×3 stem, basic blocks (conv-BN-ReLU, conv-BN, add, ReLU), the second
/// strided with a 1×1 projection shortcut; GAP + FC. 12×12×3 input.
pub fn resnet(seed: u64) -> FloatGraph {
    let net = ("resnet", (1, A::Relu), [(8, 1), (16, 2), (16, 1)]);
    stem_blocks_head(seed, net, |r, g, i, x, c, cout, s| {
        let a = layer(g, r, format!("b{i}_conv1"), x, [c, cout, 3, s, 1], A::Relu);
        let b = layer(
            g,
            r,
            format!("b{i}_conv2"),
            a,
            [cout, cout, 3, 1, 1],
            A::None,
        );
        let short = if s == 1 && cout == c {
            x
        } else {
            layer(
                g,
                r,
                format!("b{i}_shortcut"),
                x,
                [c, cout, 1, s, 1],
                A::None,
            )
        };
        g.add(format!("b{i}_add"), short, b, A::Relu)
    })
}

/// Every zoo graph for `seed`.
pub fn all(seed: u64) -> Vec<FloatGraph> {
    vec![
        lenet(seed),
        mobilenet_v1(seed),
        mobilenet_v2(seed),
        resnet(seed),
    ]
}
