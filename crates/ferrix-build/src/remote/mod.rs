//! Remote machines: the machines specification, and (next) the executor that builds on them.

pub mod machines;
