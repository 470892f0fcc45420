//! Per-layer bit widths end to end: a graph whose layers have different weight and activation widths
//! (2–8 bits, written by `BitAssignment::apply`) exports to one `Int8Model` whose every layer keeps
//! its own grid, runs on the int8 kernels (reference and optimized paths alike), and gives the
//! fake-quant simulation's codes.

mod common;

use common::{assert_exact, batch, random_bn, rng, uniform};
use qat_export::analysis::{BitAssignment, LayerBits};
use qat_export::ir::{Activation, Conv2d, Linear};
use qat_export::{
    CalibrationMethod, ExportOptions, FidelityReport, FloatGraph, QuantPlan, calibrate,
};
use qat_int8_runtime::{Executor, KernelPath, Op, TensorValue, Weights};

/// (layer, weight bits, activation bits)
const BITS: [(&str, u32, u32); 4] = [("conv", 4, 6), ("dw", 2, 3), ("pw", 8, 4), ("fc", 3, 8)];

fn graph() -> FloatGraph {
    let r = &mut rng(17);
    let mut g = FloatGraph::new("mixed");
    let x = g.input("x", &[6, 6, 2]);
    let conv = Conv2d::new(uniform(r, 4 * 3 * 3 * 2, -0.5, 0.5), [4, 3, 3, 2])
        .with_padding([1, 1, 1, 1])
        .with_batch_norm(random_bn(r, 4))
        .with_activation(Activation::Relu6);
    let c = g.conv2d("conv", x, conv);
    let dw = Conv2d::new(uniform(r, 4 * 3 * 3, -0.6, 0.6), [4, 3, 3, 1])
        .with_padding([1, 1, 1, 1])
        .with_stride([2, 2])
        .with_groups(4)
        .with_batch_norm(random_bn(r, 4))
        .with_activation(Activation::Relu6);
    let d = g.conv2d("dw", c, dw);
    let pw = Conv2d::new(uniform(r, 6 * 4, -0.7, 0.7), [6, 1, 1, 4])
        .with_batch_norm(random_bn(r, 6))
        .with_activation(Activation::Relu);
    let p = g.conv2d("pw", d, pw);
    // flatten keeps pw's grid exactly (an average pool that inherits its input's grid rounds the
    // average in the runtime but not in the simulation; see `FloatOp::inherits_params`)
    let f = g.flatten("flat", p);
    let fc = g.linear(
        "fc",
        f,
        Linear::new(uniform(r, 3 * 54, -0.3, 0.3), [3, 54]).with_bias(uniform(r, 3, -0.1, 0.1)),
    );
    g.output("logits", fc);
    let a = BitAssignment {
        layers: BITS
            .iter()
            .map(|&(l, w, a)| LayerBits {
                layer: l.into(),
                weight_bits: Some(w),
                act_bits: Some(a),
            })
            .collect(),
    };
    a.apply(&mut g).unwrap();
    g
}

#[test]
fn mixed_per_layer_bits_export_and_run_like_the_simulation() {
    let g = graph();
    let r = &mut rng(5);
    let shape = [6, 6, 2];
    let cal: Vec<_> = (0..4).map(|_| batch(r, 16, &shape)).collect();
    let g = calibrate(&g, cal.iter().map(|b| b.view()), CalibrationMethod::MinMax).unwrap();
    let plan = QuantPlan::new(&g, &ExportOptions::default()).unwrap();
    let model = plan.to_int8_model().unwrap();
    model.validate().unwrap();
    // the .qat8 file carries every grid (activation [qmin, qmax] in the tensors' params, weight
    // codes as int8); a reloaded model is the same model
    let model = qat_int8_runtime::Int8Model::from_bytes(&model.to_bytes().unwrap()).unwrap();
    assert_eq!(model, plan.to_int8_model().unwrap());

    // every layer keeps its own grids: weight codes within ±(2^(b−1) − 1), activations [0, 2^b − 1]
    for (name, wb, ab) in BITS {
        let t = model.tensors.iter().position(|t| t.name == name).unwrap();
        let q = model.tensors[t].quant.unwrap();
        assert_eq!((q.qmin(), q.qmax()), (0, (1 << ab) - 1), "{name}");
        let w = model
            .ops
            .iter()
            .find_map(|op| match op {
                Op::Conv2d(c) if c.output == t => Some(&c.weights),
                Op::FullyConnected(f) if f.output == t => Some(&f.weights),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no op writes {name}"));
        let Weights::Int8 { data, .. } = w else {
            panic!("{name}: symmetric weights are int8")
        };
        let m = (1i32 << (wb - 1)) - 1;
        let codes: Vec<i32> = data.iter().map(|&c| c as i32).collect();
        assert!(codes.iter().all(|c| (-m..=m).contains(c)), "{name}");
        // the grid is used, not collapsed: an end of the weight grid occurs
        assert!(codes.contains(&m) || codes.contains(&-m), "{name}");
    }

    // The reference kernels agree with the fake-quant simulation layer by layer…
    let test = batch(r, 32, &shape);
    let mut reference = Executor::with_path(&model, KernelPath::Reference).unwrap();
    let rep = FidelityReport::measure(&plan, &mut reference, [test.view()]).unwrap();
    // (on this fixed data every code is equal, in isolation and end to end)
    assert_exact(&rep, "mixed bits");
    for o in &rep.outputs {
        assert_eq!(o.argmax_vs_simulation, 1.0, "{}", rep.to_table());
    }

    // …and the optimized int8 kernels of this machine give the same codes for every tensor.
    let best = Executor::new(&model).unwrap().run_all(test.view()).unwrap();
    let refr = reference.run_all(test.view()).unwrap();
    for (i, (a, b)) in best.iter().zip(&refr).enumerate() {
        match (a, b) {
            (TensorValue::U8(a), TensorValue::U8(b)) => {
                assert_eq!(a, b, "tensor {}", model.tensors[i].name)
            }
            (TensorValue::F32(a), TensorValue::F32(b)) => {
                assert_eq!(a, b, "tensor {}", model.tensors[i].name)
            }
            _ => panic!("tensor {}: types differ", model.tensors[i].name),
        }
    }
}
