//! Checkpoints: VarStore safetensors plus observer and schedule state.
