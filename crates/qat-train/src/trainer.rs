//! The trainer: steps, evaluation, progress, NaN guard.
