//! Errors of the link layer.

/// Why a received frame was not accepted. The connection state is unchanged by such a frame
/// (apart from counters), so the caller may log it and carry on.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Peer or network: the integrity check failed (the frame was corrupted on the way).
    #[error("integrity check failed")]
    Integrity,
    /// Peer: the frame is malformed.
    #[error("malformed frame: {0}")]
    Malformed(#[from] oxmem_wire::Error),
    /// Peer: the frame carries more flits on a channel than the credit the peer was given.
    #[error("peer exceeded its credit on channel {channel:?}")]
    CreditOverrun { channel: oxmem_wire::Channel },
    /// Peer: an open-connection frame with sequence 0 on an accepted connection that has
    /// heard nothing new from the peer for half of `dead_after`: the peer started over (a
    /// restarted process on the same address). A resent open frame cannot look like this: the
    /// peer sends nothing but its opening until the open is acknowledged, and a resent one
    /// arrives within a retransmit timeout. The driver should replace this connection with a
    /// fresh one and hand it the frame again.
    #[error("peer reopened the connection")]
    PeerRestarted,
    /// Peer: a frame of the other header variant, or a connection message the variant lacks.
    #[error("frame does not match the connection's header variant")]
    WrongVariant,
}

/// Why [`send`](crate::Connection::send) refused a message. Nothing was queued.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Caller: the message is not valid TileLink.
    #[error("invalid message: {0}")]
    Invalid(#[from] oxmem_wire::Error),
    /// Caller: the message is larger than one frame can carry.
    #[error("message of {flits} flits exceeds the {max} flits a frame can carry")]
    TooLarge { flits: usize, max: usize },
    /// Transient: the send queue is full; poll transmissions and try again.
    #[error("send queue full")]
    QueueFull,
    /// Caller: the connection is closing or closed.
    #[error("connection closing")]
    Closing,
    /// The connection failed; see the [`Event::Failed`](crate::Event::Failed) it reported.
    #[error("connection failed")]
    Failed,
}

/// Why a connection failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer acknowledged nothing for the configured `dead_after` time.
    #[error("peer unresponsive: no acknowledgement progress")]
    PeerUnresponsive,
}
