//! Seed inputs: the runtime's golden `.qat8` files and small float graphs built here (every op
//! kind), calibrated on generated data, in JSON and bincode, and exported to `.qat8`; the shipped
//! pipeline configurations; with feature `torch`, a real checkpoint of a small model and small
//! IDX and CIFAR files, raw and gzipped.

use ndarray::ArrayD;
use qat_export::ir::{Activation, Conv2d, FloatGraph, Linear, Pool2d};
use qat_export::{CalibrationMethod, ExportOptions, calibrate, export};

use crate::targets::Target;

/// The runtime's golden files (format versions 1 and 2).
const ZOO: [&[u8]; 2] = [
    include_bytes!("../../qat-int8-runtime/tests/data/zoo_v1.qat8"),
    include_bytes!("../../qat-int8-runtime/tests/data/zoo_v2.qat8"),
];

/// `n` weights `((i·a mod m) − ⌊(m − 1)/2⌋)/(m − 1)`: a fixed pattern in `[−½, ½]`.
fn pattern(n: usize, a: usize, m: usize) -> Vec<f32> {
    let (mid, span) = (((m - 1) / 2) as f32, (m - 1) as f32);
    (0..n).map(|i| ((i * a % m) as f32 - mid) / span).collect()
}

fn conv_net() -> FloatGraph {
    let mut g = FloatGraph::new("seed-conv");
    let x = g.input("x", &[6, 6, 3]);
    let w = |n| pattern(n, 7, 11);
    let c = g.conv2d(
        "conv",
        x,
        Conv2d::new(w(4 * 9 * 3), [4, 3, 3, 3])
            .with_padding([1; 4])
            .with_bias(vec![0.1, -0.1, 0.0, 0.2])
            .with_activation(Activation::Relu),
    );
    let p = g.max_pool("max", c, Pool2d::square(2, 2));
    let d = g.conv2d(
        "dw",
        p,
        Conv2d::new(w(4 * 9), [4, 3, 3, 1])
            .with_padding([1; 4])
            .with_groups(4)
            .with_activation(Activation::Relu6),
    );
    let a = g.avg_pool("avg", p, Pool2d::square(3, 1).with_padding([1; 4]));
    let s = g.add("add", d, a, Activation::None);
    let cat = g.concat("cat", &[s, p]);
    let gap = g.global_avg_pool("gap", cat);
    let fc = g.linear(
        "fc",
        gap,
        Linear::new(w(5 * 8), [5, 8]).with_bias(vec![0.0; 5]),
    );
    g.output("logits", fc);
    g
}

fn mlp() -> FloatGraph {
    let mut g = FloatGraph::new("seed-mlp");
    let x = g.input("x", &[2, 5, 1]);
    let f = g.flatten("flat", x);
    let w = |n| pattern(n, 5, 9);
    let h = g.linear(
        "fc1",
        f,
        Linear::new(w(60), [6, 10]).with_activation(Activation::Relu),
    );
    let y = g.linear("fc2", h, Linear::new(w(18), [3, 6]));
    g.output("y", y);
    g
}

fn calibrated(g: &FloatGraph) -> Option<FloatGraph> {
    let shape = g.validate().ok()?[g.input_id().ok()?.0].clone();
    let mut full = vec![4];
    full.extend_from_slice(&shape);
    let len: usize = full.iter().product();
    let data = (0..len)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0)
        .collect();
    let batch = ArrayD::from_shape_vec(full, data).ok()?;
    calibrate(g, [batch.view()], CalibrationMethod::MinMax).ok()
}

/// Every seed, with its target.
pub fn all() -> Vec<(Target, Vec<u8>)> {
    let mut out: Vec<(Target, Vec<u8>)> = ZOO.iter().map(|b| (Target::Qat8, b.to_vec())).collect();
    out.extend(
        crate::config::SEEDS
            .iter()
            .map(|t| (Target::Config, t.as_bytes().to_vec())),
    );
    #[cfg(feature = "torch")]
    {
        out.extend(
            crate::checkpoint::seeds()
                .into_iter()
                .map(|b| (Target::Checkpoint, b)),
        );
        out.extend(crate::datafile::seeds().into_iter().map(|(cifar, b)| {
            let t = if cifar { Target::Cifar } else { Target::Idx };
            (t, b)
        }));
    }
    for g in [conv_net(), mlp()] {
        let Some(g) = calibrated(&g) else { continue };
        if let Ok(j) = g.to_json() {
            out.push((Target::GraphJson, j.into_bytes()));
        }
        if let Ok(b) = g.to_bincode() {
            out.push((Target::GraphBincode, b));
        }
        if let Some(bytes) = export(&g, &ExportOptions::default())
            .ok()
            .and_then(|m| m.to_bytes().ok())
        {
            out.push((Target::Qat8, bytes));
        }
    }
    out
}
