//! Automatic mixed precision: per-layer weight and activation bit widths chosen from a
//! [`SensitivityTable`] under a cost budget.
//!
//! **Model.** A configuration picks `(b_w[l], b_a[l])` for every layer `l`. Its predicted accuracy
//! drop is additive over the table's cells (the usual first-order assumption of HAWQ and AIMET's
//! AMP): `D = Σ_l (drop_w[l][b_w] + drop_a[l][b_a])`. Its cost is `C = Σ_l cost_l(b_w, b_a)` under a
//! [`CostModel`]: packed weight bytes, bit operations, or a measured per-layer table (latency).
//!
//! **Pareto front.** The configurations no other one beats in both `C` and `D`, sorted by cost
//! ascending (so `D` strictly descending). The best configuration within a budget `B` is the last
//! front point with `C ≤ B`.
//!
//! * [`SearchMethod::Exact`]: dynamic programming over the front. Each layer's own choices are first
//!   reduced to their Pareto front; then, layer by layer, `F_l = front(F_{l−1} ⊕ choices_l)` (every
//!   partial configuration combined with every choice, dominated points dropped). A point dropped at
//!   layer `l` stays dominated whatever the later layers add, so `F_L` is the exact front. Its size
//!   is bounded by [`SearchOptions::max_front`] (else [`AnalysisError::FrontTooLarge`]).
//! * [`SearchMethod::Greedy`]: start with every layer at its lowest-drop choice; repeatedly move the
//!   one layer to the cheaper choice on its own front that adds the least drop per unit of cost
//!   saved, `ΔD/ΔC`, until every layer is at its cheapest. The visited configurations form the
//!   returned front; `O(K²)` steps for `K` choices in all layers.
//!
//! ```
//! use qat_export::analysis::{
//!     search, Baseline, CostModel, LayerInfo, Operand, SearchOptions, SensitivityTable,
//! };
//! let layers = vec![
//!     LayerInfo { name: "a".into(), op: "Conv2d".into(), weights: 800, macs: 800 },
//!     LayerInfo { name: "b".into(), op: "Linear".into(), weights: 80, macs: 80 },
//! ];
//! let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
//! let mut t = SensitivityTable::new("net", Baseline::Float, 90.0, &[8, 4], &names)?;
//! for (l, w4) in [("a", 0.5), ("b", 3.0)] {
//!     t.record(l, Operand::Weights, 8, 90.0)?;
//!     t.record(l, Operand::Weights, 4, 90.0 - w4)?;
//!     t.record(l, Operand::Activations, 8, 90.0)?;
//!     t.record(l, Operand::Activations, 4, 89.0)?;
//! }
//! // packed weights: a at 8 bits is 800 B, at 4 bits 400 B; b 80 B or 40 B
//! let r = search(&t, &layers, &CostModel::WeightBytes, 500.0, &SearchOptions::default())?;
//! let best = r.chosen.as_ref().unwrap();
//! assert_eq!((best.cost, best.predicted_drop), (480.0, 0.5)); // a at 4 bits, b at 8
//! assert_eq!(best.assignment.get("a").unwrap().weight_bits, Some(4));
//! # Ok::<(), qat_export::analysis::AnalysisError>(())
//! ```

use serde::{Deserialize, Serialize};

use super::AnalysisError;
use super::assign::{BitAssignment, LayerBits, LayerInfo};
use super::sensitivity::{Operand, SensitivityTable};

/// The cost of one layer at given bit widths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CostModel {
    /// Packed weight storage `⌈|W_l|·b_w/8⌉` bytes (biases and activations are the same in every
    /// configuration and left out). Activation bits are free under this model.
    WeightBytes,
    /// Bit operations `MACs_l·b_w·b_a` per sample (a hardware-neutral proxy for latency on
    /// sub-byte kernels).
    BitOps,
    /// A measured (or modelled) table, e.g. latency in µs: per layer, the cost of each
    /// `(b_w, b_a)` the search may choose. Pairs missing from a layer's entries are not offered.
    Table(Vec<LayerCostTable>),
}

/// Measured costs of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCostTable {
    /// Node name.
    pub layer: String,
    /// `(b_w, b_a, cost)` entries.
    pub entries: Vec<(u32, u32, f64)>,
}

impl CostModel {
    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            CostModel::WeightBytes => "weight bytes",
            CostModel::BitOps => "bit operations",
            CostModel::Table(_) => "measured cost",
        }
    }

    /// The cost of `layer` at `(b_w, b_a)`; `None` if a [`CostModel::Table`] has no such entry.
    pub fn cost(&self, layer: &LayerInfo, wb: u32, ab: u32) -> Result<Option<f64>, AnalysisError> {
        let c = match self {
            CostModel::WeightBytes => (layer.weights * wb as u64).div_ceil(8) as f64,
            CostModel::BitOps => layer.macs as f64 * wb as f64 * ab as f64,
            CostModel::Table(t) => {
                let row = t.iter().find(|r| r.layer == layer.name).ok_or_else(|| {
                    AnalysisError::Layer {
                        layer: layer.name.clone(),
                        reason: "not in the cost table",
                    }
                })?;
                match row.entries.iter().find(|e| e.0 == wb && e.1 == ab) {
                    Some(&(_, _, c)) => c,
                    None => return Ok(None),
                }
            }
        };
        if !c.is_finite() || c < 0.0 {
            return Err(AnalysisError::BadNumber {
                layer: layer.name.clone(),
                what: "cost",
                value: c,
                nonneg: true,
            });
        }
        Ok(Some(c))
    }
}

/// Exact or greedy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SearchMethod {
    /// Dynamic programming over the Pareto front (exact).
    Exact,
    /// Greedy descent along the per-layer fronts.
    Greedy,
}

/// Options of [`pareto_front`] and [`search`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchOptions {
    /// Weight widths offered (default: the table's bits).
    pub weight_bits: Option<Vec<u32>>,
    /// Activation widths offered (default: the table's bits).
    pub act_bits: Option<Vec<u32>>,
    /// Use the exact search up to this many layers, greedy above (default 32; measured with random
    /// tables over {8, 6, 4, 3, 2}²: 28 layers, bit-operation costs, a front of 2,347 points in
    /// 0.1 s in a release build).
    pub exact_max_layers: usize,
    /// Largest front the exact search keeps before it gives up and the greedy search runs
    /// (default 200,000 points).
    pub max_front: usize,
    /// Force a method (default: exact when allowed, greedy otherwise or if the front outgrows
    /// `max_front`).
    pub method: Option<SearchMethod>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        Self {
            weight_bits: None,
            act_bits: None,
            exact_max_layers: 32,
            max_front: 200_000,
            method: None,
        }
    }
}

/// One configuration on the front.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParetoPoint {
    /// `C`, in the cost model's unit.
    pub cost: f64,
    /// `D`, predicted accuracy drop in points.
    pub predicted_drop: f64,
    /// Every layer's widths.
    pub assignment: BitAssignment,
}

/// The result of [`search`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixedPrecision {
    /// How the front was found.
    pub method: SearchMethod,
    /// [`CostModel::name`].
    pub cost_model: String,
    /// The budget.
    pub budget: f64,
    /// The Pareto front, cost ascending.
    pub front: Vec<ParetoPoint>,
    /// The lowest predicted drop within the budget.
    pub chosen: Option<ParetoPoint>,
}

/// One layer's option.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Choice {
    wb: u32,
    ab: u32,
    cost: f64,
    drop: f64,
}

/// The search problem: per layer, its non-dominated choices, cost ascending.
struct Problem {
    names: Vec<String>,
    choices: Vec<Vec<Choice>>,
}

impl Problem {
    fn new(
        table: &SensitivityTable,
        layers: &[LayerInfo],
        cost: &CostModel,
        opts: &SearchOptions,
    ) -> Result<Self, AnalysisError> {
        let wbits = opts.weight_bits.as_deref().unwrap_or(&table.bits[..]);
        let abits = opts.act_bits.as_deref().unwrap_or(&table.bits[..]);
        if layers.is_empty() || wbits.is_empty() || abits.is_empty() {
            return Err(AnalysisError::InvalidOption {
                what: "search",
                reason: "no layers or no bit widths".into(),
            });
        }
        let mut choices = Vec::with_capacity(layers.len());
        for l in layers {
            let mut cs = Vec::with_capacity(wbits.len() * abits.len());
            for &wb in wbits {
                let dw = table.drop(&l.name, Operand::Weights, wb)?;
                for &ab in abits {
                    let da = table.drop(&l.name, Operand::Activations, ab)?;
                    if let Some(c) = cost.cost(l, wb, ab)? {
                        cs.push(Choice {
                            wb,
                            ab,
                            cost: c,
                            drop: dw + da,
                        });
                    }
                }
            }
            if cs.is_empty() {
                return Err(AnalysisError::Layer {
                    layer: l.name.clone(),
                    reason: "no bit widths with a cost",
                });
            }
            choices.push(front_of(cs, |c| (c.cost, c.drop)));
        }
        Ok(Self {
            names: layers.iter().map(|l| l.name.clone()).collect(),
            choices,
        })
    }

    fn point(&self, picks: &[usize]) -> ParetoPoint {
        let (mut cost, mut drop) = (0.0, 0.0);
        let layers = picks
            .iter()
            .enumerate()
            .map(|(l, &k)| {
                let c = self.choices[l][k];
                cost += c.cost;
                drop += c.drop;
                LayerBits {
                    layer: self.names[l].clone(),
                    weight_bits: Some(c.wb),
                    act_bits: Some(c.ab),
                }
            })
            .collect();
        ParetoPoint {
            cost,
            predicted_drop: drop,
            assignment: BitAssignment { layers },
        }
    }

    /// Exact front by dynamic programming; each point's picks are recovered through back pointers.
    fn exact(&self, max_front: usize) -> Result<Vec<ParetoPoint>, AnalysisError> {
        // (cost, drop) of the front of the layers so far
        let mut front: Vec<(f64, f64)> = vec![(0.0, 0.0)];
        // per layer: (index into the previous front, choice) of every kept point
        let mut links: Vec<Vec<(usize, usize)>> = Vec::with_capacity(self.choices.len());
        for (l, cs) in self.choices.iter().enumerate() {
            let mut cand = Vec::with_capacity(front.len() * cs.len());
            for (p, &(pc, pd)) in front.iter().enumerate() {
                for (k, c) in cs.iter().enumerate() {
                    cand.push((pc + c.cost, pd + c.drop, p, k));
                }
            }
            let kept = front_of(cand, |&(c, d, _, _)| (c, d));
            if kept.len() > max_front {
                return Err(AnalysisError::FrontTooLarge {
                    layer: l + 1,
                    size: kept.len(),
                    bound: max_front,
                });
            }
            links.push(kept.iter().map(|&(_, _, p, k)| (p, k)).collect());
            front = kept.iter().map(|&(c, d, _, _)| (c, d)).collect();
        }
        let n = self.choices.len();
        Ok((0..front.len())
            .map(|i| {
                let mut picks = vec![0; n];
                let mut at = i;
                for l in (0..n).rev() {
                    let (p, k) = links[l][at];
                    picks[l] = k;
                    at = p;
                }
                self.point(&picks)
            })
            .collect())
    }

    /// Greedy descent (see the module docs).
    fn greedy(&self) -> Vec<ParetoPoint> {
        let mut picks: Vec<usize> = self.choices.iter().map(|cs| cs.len() - 1).collect();
        let mut path = vec![self.point(&picks)];
        loop {
            let mut best: Option<(f64, usize, usize)> = None;
            for (l, cs) in self.choices.iter().enumerate() {
                let cur = cs[picks[l]];
                for (k, c) in cs[..picks[l]].iter().enumerate() {
                    let ratio = (c.drop - cur.drop) / (cur.cost - c.cost);
                    if best.is_none_or(|(r, _, _)| ratio < r) {
                        best = Some((ratio, l, k));
                    }
                }
            }
            let Some((_, l, k)) = best else { break };
            picks[l] = k;
            path.push(self.point(&picks));
        }
        path.reverse();
        path
    }
}

/// The non-dominated items of `items` by `(cost, drop)`, cost ascending and drop strictly
/// descending; of equal points the first is kept.
fn front_of<T>(mut items: Vec<T>, key: impl Fn(&T) -> (f64, f64)) -> Vec<T> {
    items.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
    });
    let mut best = f64::INFINITY;
    items.retain(|t| {
        let d = key(t).1;
        let keep = d < best;
        if keep {
            best = d;
        }
        keep
    });
    items
}

/// The Pareto front of predicted accuracy drop against cost (see the [module docs](self)).
///
/// Errors: [`AnalysisError::MissingCell`] (a table cell the search needs), [`AnalysisError::Layer`]
/// (a layer missing from the table or the cost table), [`AnalysisError::BadNumber`] (a non-finite
/// or negative cost), [`AnalysisError::FrontTooLarge`] (only when [`SearchOptions::method`] forces
/// the exact search), [`AnalysisError::InvalidOption`].
pub fn pareto_front(
    table: &SensitivityTable,
    layers: &[LayerInfo],
    cost: &CostModel,
    opts: &SearchOptions,
) -> Result<(SearchMethod, Vec<ParetoPoint>), AnalysisError> {
    let p = Problem::new(table, layers, cost, opts)?;
    let exact = || p.exact(opts.max_front).map(|f| (SearchMethod::Exact, f));
    match opts.method {
        Some(SearchMethod::Exact) => exact(),
        Some(SearchMethod::Greedy) => Ok((SearchMethod::Greedy, p.greedy())),
        None if layers.len() <= opts.exact_max_layers => match exact() {
            Err(AnalysisError::FrontTooLarge { .. }) => Ok((SearchMethod::Greedy, p.greedy())),
            r => r,
        },
        None => Ok((SearchMethod::Greedy, p.greedy())),
    }
}

/// The Pareto front and the configuration with the lowest predicted drop whose cost is at most
/// `budget`.
///
/// Errors: those of [`pareto_front`]; [`AnalysisError::Infeasible`] when even the cheapest
/// configuration costs more than `budget`.
pub fn search(
    table: &SensitivityTable,
    layers: &[LayerInfo],
    cost: &CostModel,
    budget: f64,
    opts: &SearchOptions,
) -> Result<MixedPrecision, AnalysisError> {
    let (method, front) = pareto_front(table, layers, cost, opts)?;
    let chosen = front.iter().rev().find(|p| p.cost <= budget).cloned();
    if chosen.is_none() {
        return Err(AnalysisError::Infeasible {
            budget,
            cheapest: front.first().map_or(f64::NAN, |p| p.cost),
        });
    }
    Ok(MixedPrecision {
        method,
        cost_model: cost.name().to_string(),
        budget,
        front,
        chosen,
    })
}

/// The cost and predicted drop of a given configuration (e.g. uniform W4A4, for the plot); every
/// layer of `layers` must have both widths in `assignment`.
pub fn evaluate(
    table: &SensitivityTable,
    layers: &[LayerInfo],
    cost: &CostModel,
    assignment: &BitAssignment,
) -> Result<ParetoPoint, AnalysisError> {
    let (mut c, mut d) = (0.0, 0.0);
    for l in layers {
        let lb = assignment.get(&l.name);
        let (Some(wb), Some(ab)) = (lb.and_then(|b| b.weight_bits), lb.and_then(|b| b.act_bits))
        else {
            return Err(AnalysisError::Layer {
                layer: l.name.clone(),
                reason: "the assignment has no weight or activation bits for it",
            });
        };
        c += cost.cost(l, wb, ab)?.ok_or(AnalysisError::Layer {
            layer: l.name.clone(),
            reason: "the cost table has no entry for these bits",
        })?;
        d += table.drop(&l.name, Operand::Weights, wb)?
            + table.drop(&l.name, Operand::Activations, ab)?;
    }
    Ok(ParetoPoint {
        cost: c,
        predicted_drop: d,
        assignment: assignment.clone(),
    })
}
