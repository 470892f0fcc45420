//! # qat-autograd — differentiable fake quantization for tch tensors
