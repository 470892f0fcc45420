//! An ONNX graph under construction: nodes, initializers (constants as little-endian
//! `raw_data`), graph inputs and outputs with their types, unique value names.

use prost::Message;

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};
use crate::interchange::Names;

/// The default opset of the `ai.onnx` domain written (per-axis `QuantizeLinear` /
/// `DequantizeLinear` need 13).
pub const OPSET: i64 = 13;
/// The IR version that goes with opset 13.
pub const IR_VERSION: i64 = 7;

/// An attribute value.
pub(super) enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// The graph being built.
#[derive(Default)]
pub(super) struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    names: Names,
}

/// A tensor type `[N, dims…]` (batch symbolic) of `elem`.
fn value_info(name: &str, elem: DataType, dims: &[usize]) -> ValueInfoProto {
    let dims: Vec<Option<i64>> = std::iter::once(None)
        .chain(dims.iter().map(|&d| Some(d as i64)))
        .collect();
    tensor_value_info(name, elem, &dims)
}

/// The ONNX type of tensor `name`: `elem` elements with dimensions `dims`, `None` for the
/// symbolic batch dimension `N`.
///
/// ```
/// use qat_export::onnx::{proto::tensor_proto::DataType, tensor_value_info};
/// let v = tensor_value_info("x", DataType::Float, &[None, Some(3)]);
/// assert_eq!(v.name.as_deref(), Some("x"));
/// ```
pub fn tensor_value_info(name: &str, elem: DataType, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(match d {
                None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
                Some(d) => tensor_shape_proto::dimension::Value::DimValue(d),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Graph {
    /// A fresh value name from `base`.
    pub fn name(&mut self, base: &str) -> String {
        self.names.fresh(base)
    }

    /// Declares a graph input `[N, dims…]`.
    pub fn input(&mut self, name: &str, elem: DataType, dims: &[usize]) {
        self.inputs.push(value_info(name, elem, dims));
    }

    /// Declares a graph output `[N, dims…]`.
    pub fn output(&mut self, name: &str, elem: DataType, dims: &[usize]) {
        self.outputs.push(value_info(name, elem, dims));
    }

    fn constant(&mut self, base: &str, elem: DataType, dims: &[usize], raw: Vec<u8>) -> String {
        let name = self.names.fresh(base);
        self.initializers.push(TensorProto {
            name: Some(name.clone()),
            data_type: Some(elem as i32),
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// A float constant.
    pub fn f32s(&mut self, base: &str, dims: &[usize], v: &[f32]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.constant(base, DataType::Float, dims, raw)
    }

    /// An int8 constant.
    pub fn i8s(&mut self, base: &str, dims: &[usize], v: &[i8]) -> String {
        self.constant(
            base,
            DataType::Int8,
            dims,
            v.iter().map(|&x| x as u8).collect(),
        )
    }

    /// A uint8 constant.
    pub fn u8s(&mut self, base: &str, dims: &[usize], v: &[u8]) -> String {
        self.constant(base, DataType::Uint8, dims, v.to_vec())
    }

    /// An int32 constant.
    pub fn i32s(&mut self, base: &str, dims: &[usize], v: &[i32]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.constant(base, DataType::Int32, dims, raw)
    }

    /// An int64 constant.
    pub fn i64s(&mut self, base: &str, dims: &[usize], v: &[i64]) -> String {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.constant(base, DataType::Int64, dims, raw)
    }

    /// Appends a node `op(inputs) → output` (one output, named `output`).
    pub fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, Attr)>) {
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = AttributeProto {
                    name: Some(name.into()),
                    ..Default::default()
                };
                match a {
                    Attr::Int(i) => {
                        p.i = Some(i);
                        p.r#type = Some(AttributeType::Int as i32);
                    }
                    Attr::Ints(v) => {
                        p.ints = v;
                        p.r#type = Some(AttributeType::Ints as i32);
                    }
                    Attr::Float(f) => {
                        p.f = Some(f);
                        p.r#type = Some(AttributeType::Float as i32);
                    }
                }
                p
            })
            .collect();
        let name = self.names.fresh(&format!("{output}/{op}"));
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: Some(name),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        });
    }

    /// `op(inputs)` into a fresh value named from `base`; returns its name.
    pub fn apply(
        &mut self,
        op: &str,
        inputs: &[&str],
        base: &str,
        attrs: Vec<(&str, Attr)>,
    ) -> String {
        let out = self.names.fresh(base);
        self.node(op, inputs, &out, attrs);
        out
    }

    /// `Transpose(x, perm)` into `dst`.
    pub fn transpose_into(&mut self, x: &str, dst: &str, perm: [i64; 4]) {
        self.node(
            "Transpose",
            &[x],
            dst,
            vec![("perm", Attr::Ints(perm.to_vec()))],
        );
    }

    /// `Transpose(x, perm)` into a fresh value named from `base`.
    pub fn transpose(&mut self, x: &str, base: &str, perm: [i64; 4]) -> String {
        let out = self.names.fresh(base);
        self.transpose_into(x, &out, perm);
        out
    }

    /// Serializes the model (opset [`OPSET`], IR [`IR_VERSION`]).
    pub fn finish(self, name: &str, doc: &str) -> Vec<u8> {
        let model = ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            producer_name: Some("qat".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            doc_string: Some(doc.into()),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(name.into()),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

/// NHWC → NCHW permutation of a per-sample `[H, W, C]` tensor (with the batch axis).
pub const TO_NCHW: [i64; 4] = [0, 3, 1, 2];
/// NCHW → NHWC.
pub const TO_NHWC: [i64; 4] = [0, 2, 3, 1];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_round_trips_through_prost() {
        let mut g = Graph::default();
        g.input("x", DataType::Float, &[2]);
        let c = g.f32s("c", &[2], &[1.0, 2.0]);
        g.node("Add", &["x", &c], "y", vec![]);
        g.output("y", DataType::Float, &[2]);
        let bytes = g.finish("m", "");
        let m = ModelProto::decode(bytes.as_slice()).unwrap();
        let graph = m.graph.unwrap();
        assert_eq!(graph.node[0].op_type.as_deref(), Some("Add"));
        assert_eq!(
            graph.initializer[0].raw_data.as_deref(),
            Some(&[0, 0, 128, 63, 0, 0, 0, 64][..])
        );
        assert_eq!(m.opset_import[0].version, Some(OPSET));
    }
}
