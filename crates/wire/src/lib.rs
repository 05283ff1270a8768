//! `oxmem-wire`: the OmniXtend 1.0.3 wire format.
//!
//! Two levels, as in smoltcp: zero-copy views over byte buffers whose `new_checked` constructor
//! is the only entry for untrusted input ([`EthernetFrame`], [`TloeHeader`], [`TloeFrame`],
//! [`MessageHeader`]), and parsed `Repr` types with `parse`, `emit` and `buffer_len`
//! ([`EthernetRepr`], [`TloeHeaderRepr`], [`Message`], [`FrameRepr`]). [`FrameBuilder`] packs
//! messages into a frame without allocating; [`TloeFrame::messages`] walks them the same way.
//!
//! No IO, no clock, no unsafe. Malformed input yields a typed [`Error`], never a panic.

#![forbid(unsafe_code)]

pub mod error;
pub mod ethernet;
pub mod frame;
pub mod fuzz;
pub mod tilelink;
pub mod tloe;

pub use error::{Error, Result};
pub use ethernet::{ETHERTYPE_OMNIXTEND, EthernetAddress, EthernetFrame, EthernetRepr};
pub use frame::{
    FrameBuilder, FrameMask, FrameRepr, MAX_MESSAGES, MIN_ETHERNET_PAYLOAD, MIN_TLOE_LEN, Messages,
    PushError, TloeFrame, parse_ethernet,
};
pub use tilelink::{
    ArithmeticParam, ByteOrder, Channel, Data, FLIT, IntentParam, LogicalParam, MaskedData,
    Message, MessageHeader, Op, Payload, data_beats, mask_flits, message_flits,
};
pub use tloe::{CreditGrant, FrameType, HeaderVariant, TloeHeader, TloeHeaderRepr};
