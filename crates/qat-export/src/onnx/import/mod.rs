//! Import of float ONNX CNNs (opset 13–21) into a [`FloatGraph`].
//!
//! ONNX graphs from PyTorch are NCHW; the float graph is NHWC with OHWI conv weights. The importer
//! tracks the layout of every value and converts once, at the constants:
//!
//! | ONNX | float graph |
//! |---|---|
//! | input `[N, C, H, W]` (or `[N, H, W, C]` followed by `Transpose(0, 3, 1, 2)`) | `Input [H, W, C]` ([`InputLayout`] says which) |
//! | `Conv` (groups, dilations, pads, strides, `auto_pad`), weights OIHW | `Conv2d`, weights OHWI |
//! | `BatchNormalization` after a conv with no other consumer | the conv's `batch_norm` (folded at export) |
//! | `BatchNormalization` elsewhere | a depthwise 1×1 conv with weight 1 carrying the batch norm; after a linear layer, folded into its weights |
//! | `Relu`, `Clip(0, 6)`, `Clip(0, ∞)` after a conv, linear or add with no other consumer | its fused activation |
//! | `Add` of two activations / of a constant after `MatMul` or `Conv` | `Add` / the layer's bias |
//! | `Concat` on channels | `Concat` |
//! | `GlobalAveragePool`, `AveragePool` (`count_include_pad` only without padding), `MaxPool` | `GlobalAvgPool`, `AvgPool`, `MaxPool` |
//! | `Gemm` (`alpha`, `beta`, `transB`), `MatMul` with a constant right side | `Linear` (`[out, in]`) |
//! | `Flatten(axis 1)`, `Reshape` to `[N, −1]` | `Flatten`; the next linear layer's columns are permuted from CHW to HWC order |
//! | `Identity`, `Dropout` (inference), `Constant`, initializers | folded away |
//!
//! Graph outputs keep their names; a spatial output is NHWC in the float graph. Every node that
//! cannot be imported is collected, and the import fails with one [`ImportError::Unsupported`] that
//! lists them all ([`UnsupportedNode`]: name, op type, reason), never only the first one.
//!
//! ```
//! use qat_export::ir::{Activation, Conv2d, FloatGraph, Linear};
//! use qat_export::onnx::{float_to_onnx, import_onnx, ImportOptions, InputLayout};
//! let mut g = FloatGraph::new("tiny");
//! let x = g.input("x", &[4, 4, 1]);
//! let c = g.conv2d("conv", x, Conv2d::new(vec![0.25; 2 * 3 * 3], [2, 3, 3, 1])
//!     .with_padding([1, 1, 1, 1]).with_activation(Activation::Relu));
//! let p = g.global_avg_pool("gap", c);
//! let fc = g.linear("fc", p, Linear::new(vec![1.0, -1.0, 0.5, 0.5], [2, 2]));
//! g.output("logits", fc);
//! let file = float_to_onnx(&g)?;
//! let imported = import_onnx(&file.bytes, &ImportOptions::default())?;
//! assert_eq!(imported.input_layout, InputLayout::Nhwc);
//! assert_eq!(imported.graph.validate()?.last(), Some(&vec![2]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod ops;
mod tensor;
mod window;

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use thiserror::Error;

use super::proto::{ModelProto, NodeProto, ValueInfoProto, type_proto};
use crate::error::{GraphError, UnsupportedNode};
use crate::ir::{FloatGraph, NodeId};
use tensor::Const;

/// Opsets of the default (`ai.onnx`) domain that the importer reads.
pub const IMPORT_OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// Bounds of an import (stated, checked before any allocation they bound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Largest `.onnx` file read, in bytes (default 1 GiB).
    pub max_bytes: u64,
    /// Largest constant tensor, in elements (default 2^28).
    pub max_tensor_elements: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            max_tensor_elements: 1 << 28,
        }
    }
}

/// How the imported graph's input relates to the ONNX model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLayout {
    /// The ONNX input is `[N, C, H, W]`: transpose batches to NHWC before running the float graph.
    Nchw,
    /// The ONNX input is already `[N, H, W, C]` (its first consumer transposes it to NCHW).
    Nhwc,
    /// A flat `[N, C]` input.
    Flat,
}

/// The result of an import.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The float graph (NHWC, OHWI weights, batch norms kept for the fold at export).
    pub graph: FloatGraph,
    /// The ONNX input's name.
    pub input_name: String,
    /// The ONNX input's layout.
    pub input_layout: InputLayout,
}

/// Why an import failed.
#[derive(Debug, Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than [`ImportOptions::max_bytes`].
    #[error("{path}: larger than the import limit of {limit} bytes (ImportOptions::max_bytes)")]
    TooLarge {
        /// The file.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not an ONNX `ModelProto`.
    #[error("not an ONNX model: {0}")]
    Decode(String),
    /// The model has no graph, no input or no output.
    #[error("ONNX model: {0}")]
    Structure(String),
    /// Nodes that cannot be imported: all of them, one per line.
    #[error("{} unsupported node(s):\n  {}", .0.len(), UnsupportedNode::list(.0))]
    Unsupported(Vec<UnsupportedNode>),
    /// The imported graph failed validation (for example inconsistent shapes in the file).
    #[error("the imported graph is invalid: {0}")]
    Graph(#[from] GraphError),
}

/// Reads and imports an `.onnx` file, reading at most [`ImportOptions::max_bytes`] + 1 bytes
/// whatever the file's metadata says.
pub fn import_onnx_file(
    path: impl AsRef<Path>,
    opts: &ImportOptions,
) -> Result<Imported, ImportError> {
    use std::io::Read;
    let path = path.as_ref();
    let io = |source| ImportError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(opts.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > opts.max_bytes {
        return Err(ImportError::TooLarge {
            path: path.display().to_string(),
            limit: opts.max_bytes,
        });
    }
    import_onnx(&bytes, opts)
}

/// Imports a float ONNX model (see the [module docs](self)).
pub fn import_onnx(bytes: &[u8], opts: &ImportOptions) -> Result<Imported, ImportError> {
    if bytes.len() as u64 > opts.max_bytes {
        return Err(ImportError::TooLarge {
            path: "<bytes>".into(),
            limit: opts.max_bytes,
        });
    }
    let model = ModelProto::decode(bytes).map_err(|e| ImportError::Decode(e.to_string()))?;
    let mut bad = Vec::new();
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version);
    match opset {
        Some(v) if IMPORT_OPSETS.contains(&v) => {}
        other => bad.push(UnsupportedNode {
            node: "<model>".into(),
            op: "opset_import".into(),
            reason: format!(
                "ai.onnx opset {} (opsets {}–{} are read)",
                other.map_or("missing".into(), |v| v.to_string()),
                IMPORT_OPSETS.start(),
                IMPORT_OPSETS.end()
            ),
        }),
    }
    let graph = model
        .graph
        .ok_or_else(|| ImportError::Structure("no graph".into()))?;
    let mut imp = Importer::new(graph.name.clone().unwrap_or_else(|| "onnx".into()), opts);
    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        match tensor::decode(t, opts.max_tensor_elements) {
            Ok(c) => {
                imp.vals.insert(name, Val::Const(c));
            }
            Err(reason) => imp.bad.push(UnsupportedNode {
                node: name,
                op: "initializer".into(),
                reason,
            }),
        }
    }
    for n in &graph.node {
        for i in &n.input {
            *imp.uses.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *imp.uses
            .entry(o.name.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !imp.vals.contains_key(i.name.as_deref().unwrap_or("")))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(ImportError::Structure(format!(
            "{} graph inputs besides the initializers (exactly one is imported)",
            inputs.len()
        )));
    };
    let input_name = input.name.clone().unwrap_or_default();
    let input_layout = imp.input(input, &graph.node)?;
    for n in &graph.node {
        imp.node(n);
    }
    if graph.output.is_empty() {
        return Err(ImportError::Structure("no graph output".into()));
    }
    for o in &graph.output {
        imp.output(o.name.as_deref().unwrap_or(""));
    }
    bad.append(&mut imp.bad);
    if !bad.is_empty() {
        return Err(ImportError::Unsupported(bad));
    }
    imp.g.validate()?;
    Ok(Imported {
        graph: imp.g,
        input_name,
        input_layout,
    })
}

/// How an ONNX activation value maps to its float-graph node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// ONNX `[N, C, H, W]`, float `[H, W, C]`.
    Nchw,
    /// ONNX `[N, H, W, C]`, float `[H, W, C]` (only a transpose back or an output may read it).
    Nhwc,
    /// ONNX `[N, C]`, float `[C]`.
    Flat,
    /// ONNX `[N, C, 1, 1]` from a global average pool, float `[C]`.
    Pooled,
    /// ONNX `[N, C·H·W]` flattened in CHW order; the float node flattened `[H, W, C]` in HWC order.
    FlatChw([usize; 3]),
}

/// A value of the ONNX graph.
#[derive(Debug, Clone)]
enum Val {
    /// A constant.
    Const(Const),
    /// An activation: its float-graph node, layout and per-sample float shape.
    Act {
        id: NodeId,
        form: Form,
        shape: Vec<usize>,
    },
    /// The output of a node that could not be imported (its consumers are not reported again).
    Poisoned,
}

/// Import state.
struct Importer<'o> {
    pub g: FloatGraph,
    pub vals: HashMap<String, Val>,
    pub uses: HashMap<String, usize>,
    pub bad: Vec<UnsupportedNode>,
    pub opts: &'o ImportOptions,
}

impl<'o> Importer<'o> {
    fn new(name: String, opts: &'o ImportOptions) -> Self {
        Self {
            g: FloatGraph::new(name),
            vals: HashMap::new(),
            uses: HashMap::new(),
            bad: Vec::new(),
            opts,
        }
    }

    /// A node name for the float graph, unique.
    pub fn fresh(&self, base: &str) -> String {
        let base = if base.is_empty() { "node" } else { base };
        if self.g.find(base).is_none() {
            return base.to_string();
        }
        (1..)
            .map(|k| format!("{base}_{k}"))
            .find(|n| self.g.find(n).is_none())
            .unwrap_or_else(|| base.to_string())
    }

    /// Declares the graph input.
    fn input(
        &mut self,
        v: &ValueInfoProto,
        nodes: &[NodeProto],
    ) -> Result<InputLayout, ImportError> {
        let name = v.name.clone().unwrap_or_default();
        let bad = |why: String| ImportError::Structure(format!("input {name:?}: {why}"));
        let Some(type_proto::Value::TensorType(t)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(bad("not a tensor".into()));
        };
        if t.elem_type != Some(super::proto::tensor_proto::DataType::Float as i32) {
            return Err(bad("element type is not float".into()));
        }
        let dims: Vec<Option<usize>> = t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(super::proto::tensor_shape_proto::dimension::Value::DimValue(x)) => {
                            usize::try_from(x).ok().filter(|&x| x > 0)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let fixed = |k: usize| {
            dims.get(k).copied().flatten().ok_or_else(|| {
                bad(format!(
                    "dimension {k} is not a fixed positive size ({dims:?})"
                ))
            })
        };
        let consumers: Vec<&NodeProto> = nodes.iter().filter(|n| n.input.contains(&name)).collect();
        let nhwc = consumers.len() == 1
            && consumers[0].op_type.as_deref() == Some("Transpose")
            && tensor::Attrs::of(consumers[0]).ints("perm") == Some(&[0, 3, 1, 2]);
        let (shape, layout, form) = match dims.len() {
            4 if nhwc => (
                vec![fixed(1)?, fixed(2)?, fixed(3)?],
                InputLayout::Nhwc,
                Form::Nhwc,
            ),
            4 => (
                vec![fixed(2)?, fixed(3)?, fixed(1)?],
                InputLayout::Nchw,
                Form::Nchw,
            ),
            2 => (vec![fixed(1)?], InputLayout::Flat, Form::Flat),
            n => {
                return Err(bad(format!(
                    "rank {n} (4-D images or 2-D features are imported)"
                )));
            }
        };
        let id = self.g.input(self.fresh(&name), &shape);
        self.vals.insert(name, Val::Act { id, form, shape });
        Ok(layout)
    }

    /// Declares a graph output.
    fn output(&mut self, name: &str) {
        match self.vals.get(name).cloned() {
            Some(Val::Act { id, form, .. }) => {
                if let Form::FlatChw(_) = form {
                    self.bad.push(UnsupportedNode {
                        node: name.into(),
                        op: "graph output".into(),
                        reason: "a CHW-flattened tensor as a graph output (the float graph flattens in HWC order)"
                            .into(),
                    });
                    return;
                }
                let out = self.fresh(&format!("{name}/output"));
                self.g.output(out, id);
            }
            Some(Val::Poisoned) => {}
            Some(Val::Const(_)) => self.bad.push(UnsupportedNode {
                node: name.into(),
                op: "graph output".into(),
                reason: "a constant graph output".into(),
            }),
            None => self.bad.push(UnsupportedNode {
                node: name.into(),
                op: "graph output".into(),
                reason: "not produced by any node".into(),
            }),
        }
    }

    /// Imports one node; on failure records it and poisons its outputs.
    fn node(&mut self, n: &NodeProto) {
        let op = n.op_type.clone().unwrap_or_default();
        let domain = n.domain.clone().unwrap_or_default();
        let label = n
            .name
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| n.output.first().cloned())
            .unwrap_or_default();
        // A node fed by a node that failed is not reported again.
        if n.input
            .iter()
            .any(|i| matches!(self.vals.get(i), Some(Val::Poisoned)))
        {
            self.poison(n);
            return;
        }
        let res = if domain.is_empty() || domain == "ai.onnx" {
            ops::lower(self, n, &op, &label)
        } else {
            Err(format!("custom domain {domain:?}"))
        };
        if let Err(reason) = res {
            self.bad.push(UnsupportedNode {
                node: label,
                op: if domain.is_empty() {
                    op
                } else {
                    format!("{domain}.{op}")
                },
                reason,
            });
            self.poison(n);
        }
    }

    fn poison(&mut self, n: &NodeProto) {
        for o in &n.output {
            self.vals.insert(o.clone(), Val::Poisoned);
        }
    }

    /// The value named `name`.
    pub fn val(&self, name: &str) -> Result<&Val, String> {
        self.vals
            .get(name)
            .ok_or_else(|| format!("input {name:?} is not defined before the node"))
    }

    /// The constant named `name`.
    pub fn constant(&self, name: &str) -> Result<&Const, String> {
        match self.val(name)? {
            Val::Const(c) => Ok(c),
            _ => Err(format!(
                "input {name:?} must be a constant (an initializer)"
            )),
        }
    }

    /// The activation named `name`: node, form, float shape.
    pub fn act(&self, name: &str) -> Result<(NodeId, Form, Vec<usize>), String> {
        match self.val(name)? {
            Val::Act { id, form, shape } => Ok((*id, *form, shape.clone())),
            _ => Err(format!(
                "input {name:?} must be an activation, not a constant"
            )),
        }
    }

    /// The activation `name`, which must be NCHW (a `[H, W, C]` tensor): its node and shape.
    pub fn nchw_act(&self, name: &str) -> Result<(NodeId, Vec<usize>), String> {
        let (id, form, shape) = self.act(name)?;
        if form != Form::Nchw {
            return Err(format!("input layout {form:?} (NCHW expected)"));
        }
        Ok((id, shape))
    }

    /// Whether `name` has exactly one consumer and is not a graph output (so that a following
    /// op may be fused into its producer).
    pub fn single_use(&self, name: &str) -> bool {
        self.uses.get(name).copied() == Some(1)
    }
}
