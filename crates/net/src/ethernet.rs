//! Raw Ethernet transport (being written).
