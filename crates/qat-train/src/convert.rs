//! Conversion of a trained model into qat-export's FloatGraph.
