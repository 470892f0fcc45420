//! A TFLite subgraph under construction: tensors, constant buffers, operator codes and
//! operators, serialized with planus into a `TFL3` flatbuffer.
//!
//! Buffer 0 is the empty sentinel every non-constant tensor points at (the schema's rule).
//! Activation tensors carry shape `[1, …per-sample shape]` and `shape_signature`
//! `[−1, …per-sample shape]`: a runtime resizes the batch with `resize_tensor_input`.

use std::collections::HashMap;

use super::schema::{
    Buffer, BuiltinOperator, BuiltinOptions, Model, Operator, OperatorCode, QuantizationParameters,
    SubGraph, Tensor, TensorType,
};
use crate::interchange::Names;

/// The schema version of the written model (`Model.version`).
pub(crate) const SCHEMA_VERSION: u32 = 3;

/// Quantization of an int8 tensor: scales and zero points along `axis` (one entry = per tensor).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Quant {
    pub scales: Vec<f32>,
    pub zero_points: Vec<i64>,
    pub axis: i32,
}

impl Quant {
    /// Per-tensor `(S, Z)`.
    pub fn tensor(scale: f32, zero_point: i32) -> Self {
        Self {
            scales: vec![scale],
            zero_points: vec![zero_point as i64],
            axis: 0,
        }
    }

    /// Symmetric (zero point 0) along `axis`.
    pub fn symmetric(scales: Vec<f32>, axis: i32) -> Self {
        Self {
            zero_points: vec![0; scales.len()],
            scales,
            axis,
        }
    }

    fn to_params(&self) -> QuantizationParameters {
        QuantizationParameters {
            scale: Some(self.scales.clone()),
            zero_point: Some(self.zero_points.clone()),
            quantized_dimension: self.axis,
            ..Default::default()
        }
    }
}

/// The subgraph being built.
#[derive(Debug, Default)]
pub(super) struct Builder {
    tensors: Vec<Tensor>,
    buffers: Vec<Buffer>,
    operators: Vec<Operator>,
    codes: Vec<OperatorCode>,
    code_index: HashMap<(BuiltinOperator, i32), u32>,
    names: Names,
}

fn dims(shape: &[usize]) -> Vec<i32> {
    // Shapes of a validated model are far below i32::MAX (the runtime bounds tensor sizes).
    shape
        .iter()
        .map(|&d| d.min(i32::MAX as usize) as i32)
        .collect()
}

impl Builder {
    pub fn new() -> Self {
        Self {
            buffers: vec![Buffer::default()],
            ..Self::default()
        }
    }

    fn push(&mut self, t: Tensor) -> i32 {
        self.tensors.push(t);
        (self.tensors.len() - 1) as i32
    }

    /// A unique tensor name from `base`.
    pub fn name(&mut self, base: &str) -> String {
        self.names.fresh(base)
    }

    /// An activation tensor `[N, …shape]` (batch dynamic): int8 with `quant`, or f32.
    pub fn activation(&mut self, name: String, shape: &[usize], quant: Option<Quant>) -> i32 {
        let mut full = vec![1];
        full.extend(dims(shape));
        let mut sig = full.clone();
        sig[0] = -1;
        let type_ = if quant.is_some() {
            TensorType::Int8
        } else {
            TensorType::Float32
        };
        self.push(Tensor {
            shape: Some(full),
            shape_signature: Some(sig),
            type_,
            buffer: 0,
            name: Some(name),
            quantization: quant.map(|q| Box::new(q.to_params())),
            ..Default::default()
        })
    }

    fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        type_: TensorType,
        data: Vec<u8>,
        quant: Option<Quant>,
    ) -> i32 {
        self.buffers.push(Buffer {
            data: Some(data),
            ..Default::default()
        });
        let buffer = (self.buffers.len() - 1) as u32;
        let name = self.names.fresh(name);
        self.push(Tensor {
            shape: Some(dims(shape)),
            type_,
            buffer,
            name: Some(name),
            quantization: quant.map(|q| Box::new(q.to_params())),
            ..Default::default()
        })
    }

    /// A constant int8 tensor.
    pub fn const_i8(&mut self, name: &str, shape: &[usize], data: &[i8], quant: Quant) -> i32 {
        let bytes = data.iter().map(|&v| v as u8).collect();
        self.constant(name, shape, TensorType::Int8, bytes, Some(quant))
    }

    /// A constant int32 tensor (biases with their scales; shapes and paddings without).
    pub fn const_i32(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[i32],
        quant: Option<Quant>,
    ) -> i32 {
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(name, shape, TensorType::Int32, bytes, quant)
    }

    /// Appends an operator (operator codes are deduplicated per `(op, version)`).
    pub fn op(
        &mut self,
        op: BuiltinOperator,
        version: i32,
        inputs: &[i32],
        outputs: &[i32],
        options: Option<BuiltinOptions>,
    ) {
        let next = self.codes.len() as u32;
        let opcode_index = *self.code_index.entry((op, version)).or_insert(next);
        if opcode_index == next {
            let code = op as i32;
            self.codes.push(OperatorCode {
                // The int8 field holds codes below 127; larger ones use PLACEHOLDER_FOR_GREATER_OP_CODES.
                deprecated_builtin_code: code.min(127) as i8,
                version,
                builtin_code: op,
                custom_code: None,
            });
        }
        self.operators.push(Operator {
            opcode_index,
            inputs: Some(inputs.to_vec()),
            outputs: Some(outputs.to_vec()),
            builtin_options: options,
            ..Default::default()
        });
    }

    /// `(runtime tensor, TFLite name)` for every mapped runtime tensor.
    pub fn names_of(&self, map: &[Option<i32>]) -> Vec<(usize, String)> {
        map.iter()
            .enumerate()
            .filter_map(|(t, i)| {
                let name = self.tensors[(*i)? as usize]
                    .name
                    .clone()
                    .unwrap_or_default();
                Some((t, name))
            })
            .collect()
    }

    /// Serializes the model with file identifier `TFL3`.
    pub fn finish(self, name: &str, inputs: Vec<i32>, outputs: Vec<i32>) -> Vec<u8> {
        let model = Model {
            version: SCHEMA_VERSION,
            operator_codes: Some(self.codes),
            subgraphs: Some(vec![SubGraph {
                tensors: Some(self.tensors),
                inputs: Some(inputs),
                outputs: Some(outputs),
                operators: Some(self.operators),
                name: Some("main".into()),
                ..Default::default()
            }]),
            description: Some(format!("qat export of {name}")),
            buffers: Some(self.buffers),
            ..Default::default()
        };
        let mut builder = planus::Builder::new();
        with_file_identifier(builder.finish(&model, None), *b"TFL3")
    }
}

/// A finished flatbuffer `[root uoffset][body…]` with a file identifier where FlatBuffers puts
/// it, right after the root offset: `[root uoffset + 16][ident][12 zero bytes][body…]`. The body
/// moves by 16 bytes, which keeps every alignment planus gave it (up to the 16 of `force_align`);
/// offsets inside it are relative and stay valid. (planus 1.3's `finish` with an identifier writes
/// the identifier first and the root offset second, which TFLite's verifier rejects.)
pub(super) fn with_file_identifier(finished: &[u8], ident: [u8; 4]) -> Vec<u8> {
    let root = u32::from_le_bytes([finished[0], finished[1], finished[2], finished[3]]);
    let mut out = Vec::with_capacity(finished.len() + 16);
    out.extend_from_slice(&(root + 16).to_le_bytes());
    out.extend_from_slice(&ident);
    out.extend_from_slice(&[0; 12]);
    out.extend_from_slice(&finished[4..]);
    out
}
