//! Concat and average pools whose output is on a below-8-bit grid `[0, 2^b − 1]` and whose inputs
//! are on other grids: the runtime rescales into the output's own `[qmin, qmax]`, so export
//! accepts them and the integer model computes what the simulation computes, code for code.

mod common;

use common::{assert_exact, rng, uniform};
use ndarray::ArrayD;
use qat_export::ir::{Conv2d, Pool2d};
use qat_export::{ExportOptions, FloatGraph, QuantPlan, fidelity_report};
use qat_int8_runtime::{Executor, TensorValue};

/// `n` samples of shape `[4, 4, 2]`, uniform in `[−1.5, 1.5)` (beyond every range below, so the
/// clamps are exercised), seeded.
fn batch(n: usize, seed: u64) -> ArrayD<f32> {
    let v = uniform(&mut rng(seed), n * 32, -1.5, 1.5);
    ArrayD::from_shape_vec(vec![n, 4, 4, 2], v).unwrap()
}

/// The int8 model's codes of tensor `name` on `x`: all must lie on the `bits`-bit grid.
fn assert_codes_on_grid(plan: &QuantPlan, x: &ArrayD<f32>, name: &str, bits: u32) -> Vec<u8> {
    let model = plan.to_int8_model().unwrap();
    let t = model
        .tensors
        .iter()
        .position(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    let q = model.tensors[t].quant.unwrap();
    assert_eq!((q.qmin(), q.qmax()), (0, (1 << bits) - 1), "{name}");
    let all = Executor::new(&model).unwrap().run_all(x.view()).unwrap();
    let TensorValue::U8(codes) = &all[t] else {
        panic!("{name} is U8")
    };
    let codes: Vec<u8> = codes.iter().copied().collect();
    assert!(
        codes.iter().all(|&c| c as i32 <= q.qmax()),
        "{name}: codes above {}",
        q.qmax()
    );
    codes
}

#[test]
fn low_bit_concat_with_rescaled_inputs_equals_the_simulation() {
    for bits in [2, 3, 4, 6] {
        let mut g = FloatGraph::new("concat_low_bit");
        let x = g.input("x", &[4, 4, 2]);
        // 1×1 conv mixing the two channels, into a narrower range than the input's
        let c = g.conv2d(
            "conv",
            x,
            Conv2d::new(vec![0.4, -0.3, 0.2, 0.5], [2, 1, 1, 2]),
        );
        let cat = g.concat("cat", &[x, c]);
        g.output("y", cat);
        g.set_all_activation_bits(bits);
        g.set_range(x, -1.0, 1.0).unwrap();
        g.set_range(c, -0.5, 0.5).unwrap();
        // narrower than x's range: codes of x beyond ±0.6 clamp at the output grid's ends
        g.set_range(cat, -0.6, 0.6).unwrap();
        let plan = QuantPlan::new(&g, &ExportOptions::default()).expect("accepted");
        // both inputs are on other grids than the output: both are rescaled
        assert_ne!(plan.act_params[x.0], plan.act_params[cat.0]);
        assert_ne!(plan.act_params[c.0], plan.act_params[cat.0]);
        let data = batch(16, bits as u64);
        let rep = fidelity_report(&plan, [data.view()]).unwrap();
        assert_exact(&rep, &format!("{bits}-bit concat"));
        let codes = assert_codes_on_grid(&plan, &data, "cat", bits);
        // the clamp is reached (inputs up to ±1.5 against a ±0.6 output range)
        assert!(codes.contains(&((1u8 << bits) - 1)) && codes.contains(&0));
    }
}

#[test]
fn low_bit_average_pools_with_their_own_params_equal_the_simulation() {
    let own = ExportOptions {
        avg_pool_own_params: true,
        ..ExportOptions::default()
    };
    for bits in [2, 4, 5] {
        let mut g = FloatGraph::new("pools_low_bit");
        let x = g.input("x", &[4, 4, 2]);
        let mut pool = Pool2d::square(3, 2);
        pool.padding = [1, 1, 1, 1]; // windows of 4, 6 and 9 cells
        let p = g.avg_pool("pool", x, pool);
        let gap = g.global_avg_pool("gap", p);
        g.output("y", gap);
        g.set_all_activation_bits(bits);
        g.set_range(x, -1.0, 1.0).unwrap();
        g.set_range(p, -0.4, 0.7).unwrap();
        g.set_range(gap, -0.2, 0.3).unwrap();
        let plan = QuantPlan::new(&g, &own).expect("accepted");
        assert_ne!(plan.act_params[p.0], plan.act_params[x.0]);
        assert_ne!(plan.act_params[gap.0], plan.act_params[p.0]);
        let data = batch(16, 100 + bits as u64);
        let rep = fidelity_report(&plan, [data.view()]).unwrap();
        assert_exact(&rep, &format!("{bits}-bit pools"));
        assert_codes_on_grid(&plan, &data, "pool", bits);
        assert_codes_on_grid(&plan, &data, "gap", bits);
        // by default the pools inherit the input's grid and nothing is rescaled
        let plan = QuantPlan::new(&g, &ExportOptions::default()).unwrap();
        assert_eq!(plan.act_params[p.0], plan.act_params[x.0]);
        assert_eq!(plan.act_params[gap.0], plan.act_params[x.0]);
    }
}
