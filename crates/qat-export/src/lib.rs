//! # qat-export — fold a trained float/QAT graph into an integer-only `Int8Model`
