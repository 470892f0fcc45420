//! Per-layer sensitivity: the accuracy a model loses when only one layer's weights, or only its
//! output activations, are quantized to `b` bits, with the rest of the network at the study's
//! [`Baseline`] (float, or 8 bits). Measured on a held-out split by whoever can evaluate the model
//! (the pipeline); this module holds the table, lists the probes to run and renders it.
//!
//! A cell is the **accuracy drop** in percentage points, `baseline_accuracy − accuracy`, so larger is
//! worse; it can be slightly negative (quantization noise that happens to help).
//!
//! ```
//! use qat_export::analysis::{Baseline, Operand, SensitivityTable, SENSITIVITY_BITS};
//! let layers = vec!["conv".to_string(), "fc".to_string()];
//! let mut t = SensitivityTable::new("net", Baseline::Float, 90.0, &SENSITIVITY_BITS, &layers)?;
//! for p in t.probes() {
//!     // evaluate the model with only `p.assignment` quantized; here a made-up accuracy
//!     let acc = 90.0 - (8 - p.bits) as f64 * if p.layer == "conv" { 1.0 } else { 0.1 };
//!     t.record(&p.layer, p.operand, p.bits, acc)?;
//! }
//! assert!(t.is_complete());
//! assert_eq!(t.drop("conv", Operand::Weights, 2)?, 6.0);
//! # Ok::<(), qat_export::analysis::AnalysisError>(())
//! ```

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::AnalysisError;
use super::assign::{BitAssignment, LayerBits, check_bits};

/// The bit widths of the sensitivity study.
pub const SENSITIVITY_BITS: [u32; 5] = [8, 6, 4, 3, 2];

/// Which tensor of a layer a probe quantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operand {
    /// The layer's weights (BN folded).
    Weights,
    /// The layer's output activation.
    Activations,
}

impl Operand {
    /// `weights` or `activations`.
    pub fn name(self) -> &'static str {
        match self {
            Operand::Weights => "weights",
            Operand::Activations => "activations",
        }
    }
}

/// What the rest of the network runs at while one layer is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Baseline {
    /// Everything else in float.
    Float,
    /// Everything else at 8-bit weights and activations.
    Int8,
}

/// One layer's row: drops per entry of [`SensitivityTable::bits`] (`None`: not measured yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSensitivity {
    /// Node name.
    pub layer: String,
    /// Accuracy drop with only the weights at `bits[i]`.
    pub weights: Vec<Option<f64>>,
    /// Accuracy drop with only the output activation at `bits[i]`.
    pub activations: Vec<Option<f64>>,
}

/// One measurement to make: quantize `layer`'s `operand` to `bits`, everything else at the baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The layer.
    pub layer: String,
    /// Weights or activations.
    pub operand: Operand,
    /// The bit width.
    pub bits: u32,
    /// The assignment to evaluate: this layer's operand at `bits`; every other width `None`
    /// (the baseline's).
    pub assignment: BitAssignment,
}

/// Layer × {weights, activations} × bits → accuracy drop (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensitivityTable {
    /// Model name.
    pub model: String,
    /// What the other layers run at.
    pub baseline: Baseline,
    /// Accuracy (percent) of the baseline model on the held-out split.
    pub baseline_accuracy: f64,
    /// The bit widths (columns).
    pub bits: Vec<u32>,
    /// One row per layer, in graph order.
    pub layers: Vec<LayerSensitivity>,
}

impl SensitivityTable {
    /// An empty table.
    ///
    /// Errors: [`AnalysisError::InvalidOption`] (no bits, a width outside 2..=8 or repeated, no
    /// layers), [`AnalysisError::Layer`] (a layer listed twice), [`AnalysisError::BadNumber`]
    /// (non-finite baseline accuracy).
    pub fn new(
        model: impl Into<String>,
        baseline: Baseline,
        baseline_accuracy: f64,
        bits: &[u32],
        layers: &[String],
    ) -> Result<Self, AnalysisError> {
        let invalid = |what, reason: &str| AnalysisError::InvalidOption {
            what,
            reason: reason.to_string(),
        };
        if bits.is_empty() {
            return Err(invalid("bits", "empty"));
        }
        for (i, &b) in bits.iter().enumerate() {
            check_bits(b)?;
            if bits[..i].contains(&b) {
                return Err(invalid("bits", "a width is repeated"));
            }
        }
        if layers.is_empty() {
            return Err(invalid("layers", "empty"));
        }
        for (i, l) in layers.iter().enumerate() {
            if layers[..i].contains(l) {
                return Err(AnalysisError::Layer {
                    layer: l.clone(),
                    reason: "listed twice",
                });
            }
        }
        finite("baseline", "baseline_accuracy", baseline_accuracy)?;
        Ok(Self {
            model: model.into(),
            baseline,
            baseline_accuracy,
            bits: bits.to_vec(),
            layers: layers
                .iter()
                .map(|l| LayerSensitivity {
                    layer: l.clone(),
                    weights: vec![None; bits.len()],
                    activations: vec![None; bits.len()],
                })
                .collect(),
        })
    }

    /// Every probe, layer by layer, weights before activations, in the order of [`Self::bits`]
    /// (`2·layers·bits` of them).
    pub fn probes(&self) -> Vec<Probe> {
        let mut out = Vec::with_capacity(2 * self.layers.len() * self.bits.len());
        for row in &self.layers {
            for operand in [Operand::Weights, Operand::Activations] {
                for &bits in &self.bits {
                    let (w, a) = match operand {
                        Operand::Weights => (Some(bits), None),
                        Operand::Activations => (None, Some(bits)),
                    };
                    out.push(Probe {
                        layer: row.layer.clone(),
                        operand,
                        bits,
                        assignment: BitAssignment {
                            layers: vec![LayerBits {
                                layer: row.layer.clone(),
                                weight_bits: w,
                                act_bits: a,
                            }],
                        },
                    });
                }
            }
        }
        out
    }

    fn cell(
        &self,
        layer: &str,
        operand: Operand,
        bits: u32,
    ) -> Result<(usize, usize), AnalysisError> {
        let r = self
            .layers
            .iter()
            .position(|l| l.layer == layer)
            .ok_or_else(|| AnalysisError::Layer {
                layer: layer.to_string(),
                reason: "not in the sensitivity table",
            })?;
        let c = self.bits.iter().position(|&b| b == bits).ok_or_else(|| {
            AnalysisError::MissingCell {
                layer: layer.to_string(),
                operand: operand.name(),
                bits,
            }
        })?;
        Ok((r, c))
    }

    /// Records the accuracy (percent) measured for one probe; the cell holds
    /// `baseline_accuracy − accuracy`.
    pub fn record(
        &mut self,
        layer: &str,
        operand: Operand,
        bits: u32,
        accuracy: f64,
    ) -> Result<(), AnalysisError> {
        finite(layer, "accuracy", accuracy)?;
        let (r, c) = self.cell(layer, operand, bits)?;
        let drop = self.baseline_accuracy - accuracy;
        let row = &mut self.layers[r];
        match operand {
            Operand::Weights => row.weights[c] = Some(drop),
            Operand::Activations => row.activations[c] = Some(drop),
        }
        Ok(())
    }

    /// The accuracy drop of one cell; [`AnalysisError::MissingCell`] if it was not recorded.
    pub fn drop(&self, layer: &str, operand: Operand, bits: u32) -> Result<f64, AnalysisError> {
        let (r, c) = self.cell(layer, operand, bits)?;
        let row = &self.layers[r];
        let v = match operand {
            Operand::Weights => row.weights[c],
            Operand::Activations => row.activations[c],
        };
        v.ok_or_else(|| AnalysisError::MissingCell {
            layer: layer.to_string(),
            operand: operand.name(),
            bits,
        })
    }

    /// Whether every cell is recorded.
    pub fn is_complete(&self) -> bool {
        self.layers
            .iter()
            .all(|l| l.weights.iter().chain(&l.activations).all(Option::is_some))
    }

    /// The table as Markdown, one row per layer and operand, one column per bit width (the data of
    /// the heat map); unmeasured cells are `—`.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "Accuracy drop (points) with one layer quantized, the rest {} (baseline {:.2}%)\n\n| layer | operand |",
            match self.baseline {
                Baseline::Float => "float",
                Baseline::Int8 => "at 8 bits",
            },
            self.baseline_accuracy
        );
        for b in &self.bits {
            let _ = write!(s, " {b} bits |");
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---:|".repeat(self.bits.len()));
        for l in &self.layers {
            for (operand, cells) in [("weights", &l.weights), ("activations", &l.activations)] {
                let _ = write!(s, "\n| {} | {operand} |", l.layer);
                for c in cells {
                    match c {
                        Some(d) => {
                            let _ = write!(s, " {d:.2} |");
                        }
                        None => s.push_str(" — |"),
                    }
                }
            }
        }
        s.push('\n');
        s
    }
}

/// `value` must be finite.
pub(crate) fn finite(layer: &str, what: &'static str, value: f64) -> Result<(), AnalysisError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(AnalysisError::BadNumber {
            layer: layer.to_string(),
            what,
            value,
            nonneg: false,
        })
    }
}
