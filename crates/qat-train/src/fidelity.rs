//! The libtorch fake-quant model against qat-export's simulation of its export, node by node.
//!
//! qat-export's own fidelity report compares the integer runtime with the export's simulation. This is the
//! other half of "the integer model matches its simulation" (paper §3): the model that was trained (libtorch,
//! eval mode, fake quant on) against the simulation of the model that was exported, in each node's output
//! codes `q = round(x/S) + Z`. Both halves exact on every node means the integer model computes what QAT
//! trained.

use ndarray::{ArrayD, IxDyn};
use qat_autograd::host_read;
use qat_export::QuantPlan;
pub use qat_export::fidelity::NodeMatch;
use tch::{Kind, Tensor};

use crate::models::{ModelError, Net, NodeOp};

/// Errors of [`compare_with_simulation`].
#[derive(Debug, thiserror::Error)]
pub enum FidelityError {
    /// The libtorch forward failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The export's simulation failed.
    #[error("simulation of the export failed: {0}")]
    Simulation(#[from] qat_export::GraphError),
    /// A tensor could not be read.
    #[error("{what}: {source}")]
    Torch {
        /// What was being read.
        what: String,
        /// libtorch's error.
        source: tch::TchError,
    },
    /// The input is not `[N, C, H, W]` f32.
    #[error("input must be an f32 [N, C, H, W] tensor, got {kind:?} {shape:?}")]
    Input {
        /// Its kind.
        kind: Kind,
        /// Its shape.
        shape: Vec<i64>,
    },
}

/// Runs `net` (eval mode, no gradient) and qat-export's simulation of `plan` (the net's export) on the
/// same images `x_nchw` (`f32 [N, C, H, W]`, on any device) and compares every node that both have, in
/// that node's output codes (`plan.act_params`). Flatten nodes (a reordering: NCHW in libtorch, NHWC in the
/// export) and the net's nodes missing from the graph are skipped.
///
/// ```
/// use qat_train::fidelity::compare_with_simulation;
/// use qat_train::{convert, models::{self, ModelSpec}, schedule::{Phase, PhaseControl}};
/// use tch::{Device, Kind, Tensor};
/// let mut net = models::build(&ModelSpec::lenet(), Device::Cpu)?;
/// let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
/// net.apply_flags(Phase::Calibrate.flags())?;        // observers collect, fake quant off
/// let _ = tch::no_grad(|| net.forward_t(&x, true))?;
/// net.apply_flags(Phase::ObserversFrozen.flags())?;  // fake quant on, BN and ranges frozen
/// let graph = convert::convert_unchecked(&net)?;
/// let plan = qat_export::QuantPlan::new(&graph, &convert::export_options())?;
/// let nodes = compare_with_simulation(&mut net, &plan, &x)?;
/// assert!(nodes.iter().all(|n| n.max_abs <= 1), "{nodes:?}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn compare_with_simulation(
    net: &mut Net,
    plan: &QuantPlan,
    x_nchw: &Tensor,
) -> Result<Vec<NodeMatch>, FidelityError> {
    let shape = x_nchw.size();
    let kind = x_nchw.kind();
    if shape.len() != 4 || kind != Kind::Float {
        return Err(FidelityError::Input { kind, shape });
    }
    let torch = |what: &str| {
        let what = what.to_string();
        move |source| FidelityError::Torch { what, source }
    };
    let nhwc = x_nchw
        .f_permute([0, 2, 3, 1])
        .and_then(|t| t.f_to_device(tch::Device::Cpu))
        .and_then(|t| t.f_contiguous())
        .map_err(torch("input"))?;
    let dims: Vec<usize> = nhwc.size().iter().map(|&d| d as usize).collect();
    let data = host_read::vec_f32(&nhwc, "fidelity input").map_err(torch("input"))?;
    let x_nhwc = ArrayD::from_shape_vec(IxDyn(&dims), data).map_err(|_| FidelityError::Input {
        kind,
        shape: shape.clone(),
    })?;
    let torch_values = {
        let _g = tch::no_grad_guard();
        let x = x_nchw.f_to_device(net.device()).map_err(torch("input"))?;
        net.forward_all_t(&x, false)?
    };
    let sim = qat_export::simulate::simulate(plan, x_nhwc.view())?;
    let mut out = Vec::new();
    for (k, node) in net.nodes().iter().enumerate() {
        // A flatten only reorders (NCHW order in libtorch, NHWC in the export); its input is compared.
        if matches!(node.op, NodeOp::Flatten) {
            continue;
        }
        let Some(gi) = plan.graph.nodes.iter().position(|g| g.name == node.name) else {
            continue;
        };
        let (Some(p), Some(s), Some(t)) =
            (plan.act_params.get(gi), sim.get(gi), torch_values.get(k))
        else {
            continue;
        };
        let t = if t.dim() == 4 {
            t.f_permute([0, 2, 3, 1])
        } else {
            Ok(t.shallow_clone())
        }
        .and_then(|t| t.f_to_device(tch::Device::Cpu))
        .and_then(|t| t.f_to_kind(Kind::Float))
        .and_then(|t| t.f_contiguous())
        .map_err(torch(&node.name))?;
        let tv = host_read::vec_f32(&t, "fidelity node output").map_err(torch(&node.name))?;
        if tv.len() != s.len() {
            continue;
        }
        let sv = s.as_standard_layout();
        out.push(NodeMatch::compare(
            &node.name,
            p,
            &tv,
            sv.as_slice().unwrap_or_default(),
        ));
    }
    Ok(out)
}
