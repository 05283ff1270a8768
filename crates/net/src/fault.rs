//! Fault injection (being written).
