//! `oxmem-link`: a sans-IO OmniXtend connection.
//!
//! [`Connection`] implements the reliability and flow control of OmniXtend 1.0.3 (spec §4 and
//! §5) and of the "1.1" header variant that public implementations use: go-back-N with 22-bit
//! sequence numbers, piggybacked and delayed acknowledgements, retransmission of every
//! unacknowledged frame on a NAK or a timeout, per-channel credits, and open and close. It
//! does no IO and reads no clock: the driver hands it frames and the current [`Instant`], and
//! polls it for frames to send, timers and events — the `quinn-proto` pattern.
//!
//! [`sim`] is a deterministic network simulator (seeded loss, duplication, reordering,
//! corruption, delay and bandwidth) that drives two connections against each other.

#![forbid(unsafe_code)]

pub mod config;
pub mod connection;
pub mod error;
pub mod fuzz;
pub mod seq;
pub mod sim;
pub mod time;

pub use config::{Config, Integrity};
pub use connection::{Connection, Event, Received, State, Stats, V1_1_INITIAL_CREDITS};
pub use error::{FrameError, LinkError, SendError};
pub use oxmem_wire::HeaderVariant;
pub use time::Instant;
