//! Model zoo built from the QAT layers.
