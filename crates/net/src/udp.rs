//! UDP transport (being written).
