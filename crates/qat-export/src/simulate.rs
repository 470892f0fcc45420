//! The simulation twin (paper §3): the float graph with fake-quantized folded weights and
//! fake-quantized activations, run by the float interpreter ([`crate::interp`]) — exactly the
//! training rules: weights fake-quantized after BN folding with the layer's scheme, activations
//! fake-quantized after the activation function and after add/concat/pool with their nudged
//! parameters, biases on their int32 grid `S_in·S_w` (what qat-train's QAT layers simulate once
//! activation ranges are frozen, and what the integer model adds).
//!
//! Its codes (`params.quantize(value)` of each fake-quantized tensor) are what the `Int8Model`
//! should produce; the fidelity report measures how close the integer model comes.

use ndarray::{ArrayD, ArrayViewD};

use crate::error::GraphError;
use crate::interp;
use crate::plan::QuantPlan;

/// Every node's fake-quantized output for a batch `[N, …]` (index = node id).
///
/// ```
/// use ndarray::ArrayD;
/// use qat_export::{FloatGraph, ExportOptions, QuantPlan, simulate::simulate, ir::Linear};
/// let mut g = FloatGraph::new("fc");
/// let x = g.input("x", &[2]);
/// let y = g.linear("fc", x, Linear::new(vec![1.0, 0.5], [1, 2]));
/// g.output("y", y);
/// g.set_range(x, 0.0, 2.55)?;
/// g.set_range(y, 0.0, 5.1)?;
/// let plan = QuantPlan::new(&g, &ExportOptions::default())?;
/// let input = ArrayD::from_shape_vec(vec![1, 2], vec![1.004, 2.0])?;
/// let sim = simulate(&plan, input.view())?;
/// // x → 1.0 (fake quant, S = 0.01); 1.0 + 0.5·2.0 = 2.0, on the output grid S = 0.02
/// assert!((sim[y.0][[0, 0]] - 2.0).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn simulate(
    plan: &QuantPlan,
    input: ArrayViewD<'_, f32>,
) -> Result<Vec<ArrayD<f32>>, GraphError> {
    let g = plan.simulation_graph();
    interp::run(&g, input, Some(&plan.fake_quant_points()))
}

/// The simulation's integer codes per node: `act_params[i].quantize(value)` (values are on the
/// grid, so this is exact).
pub fn simulated_codes(plan: &QuantPlan, sim: &[ArrayD<f32>]) -> Vec<ArrayD<i32>> {
    sim.iter()
        .zip(&plan.act_params)
        .map(|(v, p)| v.mapv(|x| p.quantize(x)))
        .collect()
}
