//! Observers: min/max for weights, EMA of batch min/max for activations, histogram/percentile for PTQ.
