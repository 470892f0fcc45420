//! The training schedule as a typed state machine.
