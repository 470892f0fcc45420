//! [`FloatGraph`]'s JSON and bincode forms (the bincode decoder itself is `crate::ir_bincode`).

use super::FloatGraph;
use crate::error::GraphError;

impl FloatGraph {
    /// Serializes to pretty JSON.
    pub fn to_json(&self) -> Result<String, GraphError> {
        // JSON has no ±∞ or NaN: serde_json would write `null`, which cannot be read back.
        for node in &self.nodes {
            if let Some((what, i)) = crate::validate::first_non_finite(node) {
                return Err(GraphError::Param {
                    node: node.name.clone(),
                    what,
                    reason: format!("element {i} is not finite and has no JSON form"),
                });
            }
        }
        serde_json::to_string_pretty(self).map_err(|e| GraphError::Serde {
            format: "json",
            message: e.to_string(),
        })
    }

    /// Parses JSON (does not validate; call [`Self::validate`]).
    pub fn from_json(s: &str) -> Result<Self, GraphError> {
        serde_json::from_str(s).map_err(|e| GraphError::Serde {
            format: "json",
            message: e.to_string(),
        })
    }

    /// Serializes to bincode (standard config).
    pub fn to_bincode(&self) -> Result<Vec<u8>, GraphError> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).map_err(|e| {
            GraphError::Serde {
                format: "bincode",
                message: e.to_string(),
            }
        })
    }

    /// Parses bincode written by [`Self::to_bincode`] (does not validate). Memory is bounded by
    /// the input: names are borrowed from `bytes` (a length prefix beyond the input is an error,
    /// not an allocation) and every sequence reserves at most what serde's cautious size hint
    /// allows, growing only with elements actually decoded. An error names the section (`name`,
    /// `nodes[i]`) and the byte offset where it starts.
    pub fn from_bincode(bytes: &[u8]) -> Result<Self, GraphError> {
        crate::ir_bincode::decode(bytes)
    }
}
