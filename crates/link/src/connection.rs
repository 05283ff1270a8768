//! One OmniXtend connection: go-back-N reliability, credit flow control, open and close.

use std::collections::VecDeque;

use oxmem_wire::tloe::SEQ_MASK;
use oxmem_wire::{
    ByteOrder, Channel, CreditGrant, FLIT, FrameBuilder, FrameType, HeaderVariant, MIN_TLOE_LEN,
    Message, TloeFrame, TloeHeaderRepr,
};

use crate::config::{Config, Integrity};
use crate::error::{FrameError, LinkError, SendError};
use crate::seq::{self, Arrival};
use crate::time::Instant;

/// Credits both sides start with in the "1.1" variant.
pub const V1_1_INITIAL_CREDITS: u64 = 128;
/// The largest credit one frame can return: 2^31 flits (5-bit exponent).
const MAX_CREDIT_EXPONENT: u32 = 31;
/// Channels in the order queued messages are framed: responses before requests, so that a
/// peer blocked on requests can still drain responses (TileLink's E > D > C > B > A priority).
const FRAMING_ORDER: [Channel; 5] = [Channel::E, Channel::D, Channel::C, Channel::B, Channel::A];

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Initiator,
    Acceptor,
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the handshake (1.1 open acknowledged) or, when accepting, the peer's first
    /// frame, which also tells the header variant.
    Opening,
    /// Messages flow.
    Open,
    /// [`Connection::close`] was called or the peer closed: draining, then exchanging close.
    Closing,
    /// Closed cleanly.
    Closed,
    /// The peer stopped answering.
    Failed,
}

/// A TileLink message delivered by the peer, in the bytes it had on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Received {
    bytes: Box<[u8]>,
    order: ByteOrder,
}

impl Received {
    /// The message (a view into these bytes).
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes, self.order).expect("validated when the frame was accepted")
    }

    /// The message as encoded on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl core::fmt::Debug for Received {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.message().fmt(f)
    }
}

/// What the connection reports to its driver.
#[derive(Debug)]
pub enum Event {
    /// The connection is usable, in this header variant.
    Connected(HeaderVariant),
    /// A message from the peer, in the order the peer framed it.
    Message(Received),
    /// The close handshake completed (or, in 1.0.3, everything was delivered).
    Closed,
    /// The connection failed; queued and unacknowledged messages are lost.
    Failed(LinkError),
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_sent: u64,
    pub frames_retransmitted: u64,
    pub ack_only_sent: u64,
    pub frames_received: u64,
    pub duplicates_received: u64,
    pub out_of_order_received: u64,
    pub naks_sent: u64,
    pub naks_received: u64,
    pub retransmit_timeouts: u64,
    pub integrity_failures: u64,
    pub malformed_frames: u64,
    pub messages_sent: u64,
    pub messages_delivered: u64,
    /// Times framing stopped because a channel had no credit for its next message.
    pub credit_stalls: u64,
    /// Credit grants found on ack-only frames, which are unreliable and so ignored.
    pub ack_only_credit_ignored: u64,
    /// Flits the peer sent beyond the credit it had been given (those frames were refused).
    pub credit_overruns: u64,
}

/// A sequenced frame kept until acknowledged.
#[derive(Debug)]
struct SentFrame {
    seq: u32,
    frame_type: FrameType,
    /// The whole frame, integrity trailer included, resent unchanged.
    bytes: Vec<u8>,
    /// Carries messages, credit, open or close: something the peer must get. Frames without
    /// content (1.0.3 acknowledgements) are kept for go-back-N but never start the timer.
    content: bool,
}

/// A sans-IO OmniXtend connection, in the style of `quinn-proto`.
///
/// - Input: [`handle_frame`](Self::handle_frame) for every frame from the peer (the TLoE frame:
///   the bytes after the Ethernet header, or a UDP payload), and
///   [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) passes.
/// - Commands: [`send`](Self::send) queues a TileLink message (it never blocks: it queues, or
///   refuses with [`SendError::QueueFull`] when the queue is full; queued messages leave as
///   soon as credits and the window allow), [`close`](Self::close).
/// - Output, after any input or command: call [`poll_transmit`](Self::poll_transmit) until it
///   returns `None`, drain [`poll_event`](Self::poll_event), then re-arm the timer from
///   [`poll_timeout`](Self::poll_timeout).
///
/// Time is always a parameter; the connection never reads a clock, and it does no IO.
#[derive(Debug)]
pub struct Connection {
    config: Config,
    role: Role,
    variant: Option<HeaderVariant>,
    state: State,

    // Sender (spec §4.1).
    next_tx_seq: u32,
    acked_seq: u32,
    unacked: VecDeque<SentFrame>,
    /// Index in `unacked` of the next frame to resend, while resending.
    resend_cursor: Option<usize>,
    last_retransmit: Option<Instant>,
    rto_deadline: Option<Instant>,
    last_progress: Instant,

    // Receiver.
    next_rx_seq: u32,
    /// `false` after a gap was seen: the header carries a NAK.
    rx_in_order: bool,
    /// An acknowledgement is owed; `ack_deadline` says by when it must leave on its own.
    ack_owed: bool,
    ack_deadline: Option<Instant>,
    /// The expected sequence number for which a NAK already went out.
    nak_sent_for: Option<u32>,
    /// When the last in-order frame arrived (or the connection was created).
    last_in_order: Instant,

    // Credits (spec §5), per channel A..E.
    tx_credits: [u64; 5],
    /// Credit freed by delivered messages and not yet returned to the peer.
    credit_to_return: [u64; 5],
    /// Flits of delivered messages still waiting in the event queue.
    undelivered: [u64; 5],
    /// Credit the peer holds towards us: granted and not yet used.
    peer_credit: [u64; 5],
    credit_deadline: Option<Instant>,
    /// The receive buffers are still being handed out for the first time: no waiting.
    initial_grant: bool,

    // Application queues.
    send_queues: [VecDeque<Box<[u8]>>; 5],
    queued_bytes: usize,
    events: VecDeque<Event>,
    /// Buffers of acknowledged frames, reused for new ones.
    spare: Vec<Vec<u8>>,

    /// Sequenced frames holding content among `unacked`.
    content_unacked: usize,

    // Connection messages (1.1).
    open_seq: Option<u32>,
    /// The handshake is done (always, in 1.0.3 and when accepting): messages may be framed.
    open_acked: bool,
    connected_reported: bool,
    /// When a close handshake whose close frame the peer acknowledged gives up waiting for
    /// the peer's own close.
    close_deadline: Option<Instant>,
    close_requested: bool,
    close_seq: Option<u32>,
    close_acked: bool,
    close_received: bool,
    /// Our close went out in answer to the peer's: the handshake is complete without waiting
    /// for its acknowledgement (some peers, ETRI's endpoint among them, never send one).
    close_answered: bool,

    stats: Stats,
}

impl Connection {
    /// Opens a connection to a peer in the given header variant. In 1.1 the first frame is an
    /// open-connection frame; in 1.0.3 there is no handshake and credits start at zero.
    pub fn connect(config: Config, variant: HeaderVariant, now: Instant) -> Self {
        let mut conn = Self::new(config, Role::Initiator, now);
        conn.start(variant);
        conn
    }

    /// Waits for a peer's first frame; the connection answers in the variant that frame uses
    /// (an open frame means 1.1, a normal frame 1.0.3).
    pub fn accept(config: Config, now: Instant) -> Self {
        Self::new(config, Role::Acceptor, now)
    }

    fn new(config: Config, role: Role, now: Instant) -> Self {
        Connection {
            config,
            role,
            variant: None,
            state: State::Opening,
            next_tx_seq: 0,
            acked_seq: SEQ_MASK,
            unacked: VecDeque::new(),
            resend_cursor: None,
            last_retransmit: None,
            rto_deadline: None,
            last_progress: now,
            next_rx_seq: 0,
            rx_in_order: true,
            ack_owed: false,
            ack_deadline: None,
            nak_sent_for: None,
            last_in_order: now,
            tx_credits: [0; 5],
            credit_to_return: [0; 5],
            undelivered: [0; 5],
            peer_credit: [0; 5],
            credit_deadline: None,
            initial_grant: false,
            send_queues: Default::default(),
            queued_bytes: 0,
            events: VecDeque::new(),
            spare: Vec::new(),
            content_unacked: 0,
            open_seq: None,
            open_acked: false,
            connected_reported: false,
            close_deadline: None,
            close_requested: false,
            close_seq: None,
            close_acked: false,
            close_received: false,
            close_answered: false,
            stats: Stats::default(),
        }
    }

    /// Sets the variant and the initial credits.
    fn start(&mut self, variant: HeaderVariant) {
        self.variant = Some(variant);
        let initial = match variant {
            HeaderVariant::V1_1 => V1_1_INITIAL_CREDITS,
            HeaderVariant::V1_0_3 => 0,
        };
        for ch in 0..5 {
            self.tx_credits[ch] = initial;
            let buffer = u64::from(self.config.rx_buffer_flits[ch]);
            // In 1.1 the peer starts with 128 whatever our buffer says: a buffer smaller than
            // that is in effect 128 flits.
            self.peer_credit[ch] = initial;
            self.credit_to_return[ch] = buffer.saturating_sub(initial);
        }
        self.initial_grant = true;
        match (variant, self.role) {
            (HeaderVariant::V1_1, Role::Initiator) => {} // open frame first; Open once acked
            (HeaderVariant::V1_0_3, Role::Initiator) => {
                self.open_acked = true;
                if self.state == State::Opening {
                    self.state = State::Open;
                }
            }
            (_, Role::Acceptor) => {
                self.open_acked = true;
                if self.state == State::Opening {
                    self.state = State::Open;
                }
                self.connected_reported = true;
                self.events.push_back(Event::Connected(variant));
            }
        }
    }

    /// Starts sequence numbers elsewhere than 0, on both sides of a pair, before any traffic:
    /// lets tests cross the 2^22 wrap quickly. Not for production use.
    #[doc(hidden)]
    pub fn set_sequence_start(&mut self, tx: u32, rx_expected: u32) {
        self.next_tx_seq = tx & SEQ_MASK;
        self.acked_seq = seq::add(tx, SEQ_MASK);
        self.next_rx_seq = rx_expected & SEQ_MASK;
    }

    // ----- getters -----

    /// The header variant, once known.
    pub fn variant(&self) -> Option<HeaderVariant> {
        self.variant
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Flits this side may still send on `channel`.
    pub fn tx_credits(&self, channel: Channel) -> u64 {
        self.tx_credits[channel.index()]
    }

    /// Credit freed on `channel` that has not yet been returned to the peer.
    pub fn credit_to_return(&self, channel: Channel) -> u64 {
        self.credit_to_return[channel.index()]
    }

    /// Flits of messages on `channel` delivered but not yet taken with `poll_event`: never more
    /// than the receive buffer, since the peer may send only what it has credit for.
    pub fn undelivered_flits(&self, channel: Channel) -> u64 {
        self.undelivered[channel.index()]
    }

    /// Sequenced frames sent and not yet acknowledged.
    pub fn unacked_frames(&self) -> usize {
        self.unacked.len()
    }

    /// Messages queued by `send` and not yet framed.
    pub fn queued_messages(&self) -> usize {
        self.send_queues.iter().map(VecDeque::len).sum()
    }

    /// Time since the peer last sent an in-order frame (or since the connection was made).
    pub fn idle_for(&self, now: Instant) -> core::time::Duration {
        now - self.last_in_order
    }

    /// Bytes [`send`](Self::send) will still take before it refuses with `QueueFull`.
    pub fn send_queue_room(&self) -> usize {
        self.config
            .send_queue_bytes
            .saturating_sub(self.queued_bytes)
    }

    /// Nothing queued, nothing unacknowledged, no events pending.
    pub fn is_idle(&self) -> bool {
        self.queued_bytes == 0 && self.content_unacked == 0 && self.events.is_empty()
    }

    /// Most flits one message may take: a frame less its header and mask.
    pub fn max_message_flits(&self) -> usize {
        (self.config.max_frame / FLIT).saturating_sub(MIN_TLOE_LEN / FLIT)
    }

    // ----- commands -----

    /// Queues a message; it leaves when its channel has credit and the window has room.
    ///
    /// # Errors
    /// [`SendError`] says why nothing was queued.
    pub fn send(&mut self, msg: &Message<'_>) -> Result<(), SendError> {
        match self.state {
            State::Failed => return Err(SendError::Failed),
            State::Closing | State::Closed => return Err(SendError::Closing),
            State::Opening | State::Open => {}
        }
        msg.check()?;
        let flits = msg.flits();
        if flits > self.max_message_flits() {
            return Err(SendError::TooLarge {
                flits,
                max: self.max_message_flits(),
            });
        }
        let len = flits * FLIT;
        if self.queued_bytes + len > self.config.send_queue_bytes {
            return Err(SendError::QueueFull);
        }
        let mut bytes = vec![0u8; len].into_boxed_slice();
        msg.emit(&mut bytes, self.config.byte_order)?;
        self.send_queues[msg.channel.index()].push_back(bytes);
        self.queued_bytes += len;
        Ok(())
    }

    /// Closes once everything queued has been delivered. In 1.1 this sends a close frame and
    /// waits for the peer's; in 1.0.3 the connection simply ends once drained.
    pub fn close(&mut self) {
        match self.state {
            // Accepting and nobody came: nothing to tell anyone.
            State::Opening if self.variant.is_none() => {
                self.state = State::Closed;
                self.events.push_back(Event::Closed);
            }
            State::Open | State::Opening => {
                self.close_requested = true;
                self.state = State::Closing;
                self.check_closed();
            }
            State::Closing | State::Closed | State::Failed => {}
        }
    }

    // ----- input -----

    /// Processes one frame from the peer: the TLoE frame, followed by the integrity trailer
    /// when one is configured.
    ///
    /// # Errors
    /// [`FrameError`] when the frame is dropped as corrupt or malformed; the connection is
    /// unaffected apart from its counters.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) -> Result<(), FrameError> {
        self.stats.frames_received += 1;
        let bytes = match self.check_integrity(bytes) {
            Ok(b) => b,
            Err(e) => {
                self.stats.integrity_failures += 1;
                return Err(e);
            }
        };
        let result = self.handle_checked_frame(now, bytes);
        if let Err(
            FrameError::Malformed(_) | FrameError::WrongVariant | FrameError::CreditOverrun { .. },
        ) = result
        {
            self.stats.malformed_frames += 1;
        }
        result
    }

    fn check_integrity<'b>(&self, bytes: &'b [u8]) -> Result<&'b [u8], FrameError> {
        match self.config.integrity {
            Integrity::None => Ok(bytes),
            Integrity::Crc32 => {
                let split = bytes.len().checked_sub(4).ok_or(FrameError::Integrity)?;
                let (frame, trailer) = bytes.split_at(split);
                let crc = u32::from_be_bytes(trailer.try_into().expect("4 bytes"));
                if crc32fast::hash(frame) == crc {
                    Ok(frame)
                } else {
                    Err(FrameError::Integrity)
                }
            }
        }
    }

    fn handle_checked_frame(&mut self, now: Instant, bytes: &[u8]) -> Result<(), FrameError> {
        let frame = TloeFrame::new_checked(bytes)?;
        let header = TloeHeaderRepr::parse(&frame.header())?;
        // Validate every message before acting on anything in the frame, its acknowledgement
        // included: a frame is taken whole or not at all.
        for msg in frame.messages(self.config.byte_order) {
            msg?;
        }
        if self.state == State::Failed || (self.state == State::Closed && self.variant.is_none()) {
            return Ok(());
        }
        let variant = match self.variant {
            Some(v) => v,
            None => {
                // Accepting: only the peer's first frame (sequence 0) tells the variant.
                if header.seq != 0 {
                    return Ok(());
                }
                let v = match header.frame_type {
                    FrameType::Open => HeaderVariant::V1_1,
                    FrameType::Normal => HeaderVariant::V1_0_3,
                    FrameType::AckOnly | FrameType::Close => return Ok(()),
                };
                self.start(v);
                v
            }
        };
        if variant == HeaderVariant::V1_0_3 && header.frame_type != FrameType::Normal {
            return Err(FrameError::WrongVariant);
        }

        if header.frame_type == FrameType::Open
            && header.seq == 0
            && self.role == Role::Acceptor
            && self.next_rx_seq != 0
            && now - self.last_in_order >= self.config.dead_after / 2
        {
            return Err(FrameError::PeerRestarted);
        }

        let arrival = seq::classify(header.seq, self.next_rx_seq);
        if header.frame_type != FrameType::AckOnly && arrival == Arrival::InOrder {
            // The peer may send only what it has credit for: a frame beyond that has no buffer
            // to land in, so it is refused whole, acknowledgement included.
            let mut need = [0u64; 5];
            for msg in frame.messages(self.config.byte_order).flatten() {
                need[msg.channel.index()] += msg.flits() as u64;
            }
            if let Some(ch) = (0..5).find(|&ch| need[ch] > self.peer_credit[ch]) {
                self.stats.credit_overruns += need[ch] - self.peer_credit[ch];
                return Err(FrameError::CreditOverrun {
                    channel: Channel::ALL[ch],
                });
            }
        }

        self.on_ack(now, header.seq_ack, header.ack);

        if header.frame_type == FrameType::AckOnly {
            // Ack-only frames are not sequenced, so the network may duplicate them unnoticed:
            // credit on one could be counted twice. oxmem never puts credit there.
            if header.credit.is_some() {
                self.stats.ack_only_credit_ignored += 1;
            }
            return Ok(());
        }

        match arrival {
            Arrival::InOrder => self.accept_in_order(now, &frame, &header, variant),
            Arrival::Duplicate => {
                self.stats.duplicates_received += 1;
                self.owe_ack(now, true);
                Ok(())
            }
            Arrival::Ahead => {
                self.stats.out_of_order_received += 1;
                self.rx_in_order = false;
                if self.nak_sent_for != Some(self.next_rx_seq) {
                    self.owe_ack(now, true);
                }
                Ok(())
            }
        }
    }

    fn accept_in_order(
        &mut self,
        now: Instant,
        frame: &TloeFrame<&[u8]>,
        header: &TloeHeaderRepr,
        variant: HeaderVariant,
    ) -> Result<(), FrameError> {
        let mut count = 0usize;
        for (flit, msg) in frame
            .mask()
            .starts()
            .zip(frame.messages(self.config.byte_order))
        {
            let msg = msg.expect("validated above");
            let ch = msg.channel.index();
            self.peer_credit[ch] -= msg.flits() as u64;
            self.undelivered[ch] += msg.flits() as u64;
            let start = flit * FLIT;
            let bytes = frame.as_bytes()[start..start + msg.buffer_len()].into();
            self.events.push_back(Event::Message(Received {
                bytes,
                order: self.config.byte_order,
            }));
            count += 1;
        }
        self.stats.messages_delivered += count as u64;
        if let Some(grant) = header.credit {
            self.add_tx_credit(grant);
        }
        self.next_rx_seq = seq::add(self.next_rx_seq, 1);
        self.last_in_order = now;
        self.rx_in_order = true;
        self.nak_sent_for = None;

        match header.frame_type {
            FrameType::Close => {
                self.close_received = true;
                if !self.close_requested {
                    self.close_requested = true;
                    self.state = State::Closing;
                }
            }
            FrameType::Open | FrameType::Normal | FrameType::AckOnly => {}
        }
        if self.role == Role::Initiator
            && variant == HeaderVariant::V1_0_3
            && !self.connected_reported
        {
            self.connected_reported = true;
            self.events.push_back(Event::Connected(variant));
        }
        let content =
            count > 0 || header.credit.is_some() || header.frame_type != FrameType::Normal;
        if content || variant == HeaderVariant::V1_1 {
            // A close is acknowledged at once: the peer may stop driving us once it is closed.
            self.owe_ack(now, header.frame_type == FrameType::Close);
        } else {
            // An empty 1.0.3 frame is acknowledged only on a frame that goes anyway; answering
            // it with another sequenced frame would never end. (In 1.1 the answer is an
            // unsequenced ack-only frame, so it ends there.)
            self.ack_owed = true;
        }
        self.check_closed();
        Ok(())
    }

    fn owe_ack(&mut self, now: Instant, immediately: bool) {
        self.ack_owed = true;
        let by = if immediately {
            now
        } else {
            now + self.config.ack_delay
        };
        self.ack_deadline = Some(self.ack_deadline.map_or(by, |d| d.min(by)));
    }

    fn add_tx_credit(&mut self, grant: CreditGrant) {
        let ch = grant.channel.index();
        self.tx_credits[ch] = self.tx_credits[ch].saturating_add(grant.flits());
    }

    /// Processes the acknowledgement in a peer's header.
    fn on_ack(&mut self, now: Instant, seq_ack: u32, ack: bool) {
        let outstanding = seq::diff(self.next_tx_seq, self.acked_seq).wrapping_sub(1) & SEQ_MASK;
        let advance = seq::diff(seq_ack, self.acked_seq);
        let mut progress = false;
        if advance >= 1 && advance <= outstanding {
            for _ in 0..advance {
                let frame = self
                    .unacked
                    .pop_front()
                    .expect("outstanding frames are buffered");
                if frame.frame_type == FrameType::Open {
                    self.on_open_acked();
                }
                if Some(frame.seq) == self.close_seq {
                    self.close_acked = true;
                    if !self.close_received {
                        self.close_deadline = Some(now + self.config.dead_after);
                    }
                }
                if frame.content {
                    self.content_unacked -= 1;
                }
                self.spare.push(frame.bytes);
            }
            self.acked_seq = seq_ack;
            self.resend_cursor = self
                .resend_cursor
                .map(|c| c.saturating_sub(advance as usize))
                .filter(|&c| c < self.unacked.len());
            self.last_progress = now;
            self.rto_deadline =
                (self.content_unacked > 0).then(|| now + self.config.retransmit_timeout);
            progress = true;
            self.check_closed();
        }
        // A NAK behind what is already acknowledged is stale (resent frames keep their old
        // headers): acting on it would resend the window for nothing.
        if !ack && advance <= outstanding && !self.unacked.is_empty() {
            self.stats.naks_received += 1;
            let holdoff = self.config.retransmit_timeout / 4;
            let recent = self.last_retransmit.is_some_and(|t| now < t + holdoff);
            if progress || !recent {
                self.resend_cursor = Some(0);
                self.last_retransmit = Some(now);
            }
        }
    }

    fn on_open_acked(&mut self) {
        self.open_acked = true;
        if self.state == State::Opening {
            self.state = State::Open;
        }
        if !self.connected_reported {
            self.connected_reported = true;
            self.events.push_back(Event::Connected(HeaderVariant::V1_1));
        }
    }

    fn check_closed(&mut self) {
        if self.state != State::Closing {
            return;
        }
        let done = match self.variant {
            Some(HeaderVariant::V1_1) => {
                self.close_received && (self.close_acked || self.close_answered)
            }
            _ => self.queued_bytes == 0 && self.content_unacked == 0,
        };
        if done {
            self.enter_closed();
        }
    }

    fn enter_closed(&mut self) {
        self.state = State::Closed;
        self.credit_deadline = None;
        self.close_deadline = None;
        // Nothing is resent after the close: only the close itself can be outstanding here.
        self.rto_deadline = None;
        self.resend_cursor = None;
        self.events.push_back(Event::Closed);
    }

    /// Handles the timer: retransmission, or declaring the peer dead.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.close_deadline.is_some_and(|d| now >= d) && self.state == State::Closing {
            // The peer acknowledged our close but never sent its own: it is gone.
            self.enter_closed();
            return;
        }
        if let Some(deadline) = self.rto_deadline {
            if now >= deadline {
                if now - self.last_progress >= self.config.dead_after {
                    self.fail(LinkError::PeerUnresponsive);
                    return;
                }
                self.stats.retransmit_timeouts += 1;
                self.resend_cursor = (!self.unacked.is_empty()).then_some(0);
                self.last_retransmit = Some(now);
                self.rto_deadline = Some(now + self.config.retransmit_timeout);
            }
        }
    }

    fn fail(&mut self, error: LinkError) {
        self.state = State::Failed;
        self.rto_deadline = None;
        self.ack_deadline = None;
        self.credit_deadline = None;
        self.resend_cursor = None;
        for q in &mut self.send_queues {
            q.clear();
        }
        self.queued_bytes = 0;
        self.events.push_back(Event::Failed(error));
    }

    // ----- output -----

    /// The next event, if any. Taking a message frees its receive buffer: its credit will be
    /// returned to the peer on a following frame.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        if let Event::Message(m) = &event {
            let ch = m.message().channel.index();
            let flits = (m.bytes.len() / FLIT) as u64;
            self.undelivered[ch] -= flits;
            self.credit_to_return[ch] += flits;
        }
        Some(event)
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called, if at all. Call
    /// [`poll_transmit`](Self::poll_transmit) until it returns `None` first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // A deadline for a frame that the window would not let out anyway is no reason to
        // wake: the acknowledgement that reopens the window brings the driver back.
        let sequenced_ack = self.variant == Some(HeaderVariant::V1_0_3);
        let ack = match self.ack_deadline {
            Some(d) if self.ack_owed && (!sequenced_ack || self.window_open(false)) => Some(d),
            _ => None,
        };
        let credit = self
            .credit_deadline
            .filter(|_| matches!(self.state, State::Opening | State::Open | State::Closing))
            .filter(|_| self.window_open(true));
        let close = self.close_deadline.filter(|_| self.state == State::Closing);
        [self.rto_deadline, ack, credit, close]
            .into_iter()
            .flatten()
            .min()
    }

    /// Writes the next frame to send into `buf` and returns its length, or `None` when there is
    /// nothing to send now. `buf` should hold `max_frame` plus the integrity trailer.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let variant = self.variant?;
        if self.state == State::Failed {
            return None;
        }
        if let Some(len) = self.poll_retransmit(now, buf) {
            return Some(len);
        }
        if let Some(len) = self.poll_new_frame(now, buf, variant) {
            return Some(len);
        }
        self.poll_ack_only(now, buf, variant)
    }

    fn poll_retransmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let cursor = self.resend_cursor?;
        let Some(frame) = self.unacked.get(cursor) else {
            self.resend_cursor = None;
            return None;
        };
        let len = frame.bytes.len();
        buf.get_mut(..len)?.copy_from_slice(&frame.bytes);
        let content = frame.content;
        self.resend_cursor = (cursor + 1 < self.unacked.len()).then_some(cursor + 1);
        self.stats.frames_retransmitted += 1;
        if content && self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.config.retransmit_timeout);
        }
        Some(len)
    }

    /// Whether another sequenced frame may be sent (window and retransmit buffer).
    /// Whether another sequenced frame may be sent: within the 2^21 window, at most
    /// `max_in_flight` frames with content, and (for 1.0.3 acknowledgements, which are
    /// sequenced too) at most twice that in all, so a peer that never acknowledges cannot make
    /// the retransmit buffer grow without bound, while acknowledgements still get out when the
    /// window is full of content.
    fn window_open(&self, content: bool) -> bool {
        let in_flight = seq::diff(self.next_tx_seq, self.acked_seq).wrapping_sub(1) & SEQ_MASK;
        in_flight + 1 < seq::WINDOW
            && self.unacked.len() < 2 * self.config.max_in_flight.max(1)
            && (!content || self.content_unacked < self.config.max_in_flight)
    }

    fn header(
        &self,
        frame_type: FrameType,
        seq: u32,
        credit: Option<CreditGrant>,
    ) -> TloeHeaderRepr {
        TloeHeaderRepr {
            vc: 0,
            frame_type,
            seq,
            seq_ack: seq::add(self.next_rx_seq, SEQ_MASK),
            ack: self.rx_in_order,
            credit,
        }
    }

    /// Picks the credit to return on the next frame: the largest power of two not above what
    /// is pending, on the channel with the most pending.
    fn pick_credit(&self) -> Option<CreditGrant> {
        let (ch, &pending) = self
            .credit_to_return
            .iter()
            .enumerate()
            .max_by_key(|&(i, &p)| (p, core::cmp::Reverse(i)))?;
        if pending == 0 {
            return None;
        }
        let exponent = (63 - pending.leading_zeros()).min(MAX_CREDIT_EXPONENT) as u8;
        Some(CreditGrant {
            channel: Channel::ALL[ch],
            exponent,
        })
    }

    /// Whether pending credit is worth a frame of its own now.
    fn credit_urgent(&mut self, now: Instant) -> bool {
        if self.initial_grant {
            return self.credit_to_return.iter().any(|&p| p > 0);
        }
        let mut any = false;
        for ch in 0..5 {
            let pending = self.credit_to_return[ch];
            if pending == 0 {
                continue;
            }
            any = true;
            let buffer = u64::from(self.config.rx_buffer_flits[ch]);
            // A quarter of the buffer freed (or the peer left with less than it needs for a
            // large message) goes back at once; smaller amounts wait for a ride.
            if pending >= (buffer / 4).max(1) || self.peer_credit[ch] < buffer / 2 {
                return true;
            }
        }
        if !any {
            self.credit_deadline = None;
            return false;
        }
        let deadline = *self
            .credit_deadline
            .get_or_insert(now + self.config.ack_delay);
        now >= deadline
    }

    fn poll_new_frame(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        variant: HeaderVariant,
    ) -> Option<usize> {
        if self.state == State::Closed || !self.window_open(true) {
            return None;
        }
        let trailer = self.config.integrity.trailer_len();
        let limit = self.config.max_frame.min(buf.len().saturating_sub(trailer));
        if limit < self.config.min_frame.max(MIN_TLOE_LEN) {
            return None; // no frame fits this buffer: take nothing off the queues
        }
        let seq = self.next_tx_seq;

        // Connection messages first.
        let frame_type = if variant == HeaderVariant::V1_1
            && self.role == Role::Initiator
            && self.open_seq.is_none()
        {
            FrameType::Open
        } else if variant == HeaderVariant::V1_1
            && self.close_requested
            && self.close_seq.is_none()
            && self.open_acked
            && self.queued_bytes == 0
            && self.content_unacked == 0
        {
            FrameType::Close
        } else {
            FrameType::Normal
        };

        let mut spare = self.spare.pop().unwrap_or_default();
        spare.clear();
        let mut builder =
            FrameBuilder::new(&mut buf[..limit], limit, self.config.byte_order).ok()?;
        let mut stalled = false;
        if frame_type == FrameType::Normal && self.open_acked {
            'channels: for ch in FRAMING_ORDER {
                let i = ch.index();
                while let Some(msg) = self.send_queues[i].front() {
                    let flits = (msg.len() / FLIT) as u64;
                    if flits > self.tx_credits[i] {
                        stalled = true;
                        break;
                    }
                    match builder.push_encoded(msg) {
                        Ok(()) => {}
                        Err(_) => break 'channels,
                    }
                    self.tx_credits[i] -= flits;
                    self.queued_bytes -= msg.len();
                    self.send_queues[i].pop_front();
                }
            }
        }
        if stalled {
            self.stats.credit_stalls += 1;
        }
        let messages = builder.len();
        let credit = if messages > 0 || frame_type != FrameType::Normal || self.credit_urgent(now) {
            self.pick_credit()
        } else {
            None
        };
        let content = messages > 0 || credit.is_some() || frame_type != FrameType::Normal;
        if !content {
            self.spare.push(spare);
            return None;
        }
        if let Some(grant) = credit {
            let ch = grant.channel.index();
            self.credit_to_return[ch] -= grant.flits();
            self.peer_credit[ch] += grant.flits();
            if self.credit_to_return.iter().all(|&p| p == 0) {
                self.credit_deadline = None;
                self.initial_grant = false;
            }
        }
        let header = self.header(frame_type, seq, credit);
        let len = builder.finish(&header, self.config.min_frame).ok()?;
        let len = self.seal(buf, len);
        match frame_type {
            FrameType::Open => self.open_seq = Some(seq),
            FrameType::Close => {
                self.close_seq = Some(seq);
                if self.close_received {
                    self.close_answered = true;
                }
            }
            FrameType::Normal | FrameType::AckOnly => {}
        }
        self.stats.messages_sent += messages as u64;
        self.push_sent(now, seq, frame_type, &buf[..len], true, spare);
        if self.close_answered {
            self.check_closed();
        }
        Some(len)
    }

    fn poll_ack_only(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        variant: HeaderVariant,
    ) -> Option<usize> {
        if !self.ack_owed || self.ack_deadline.is_none_or(|d| now < d) {
            return None;
        }
        let trailer = self.config.integrity.trailer_len();
        let limit = self.config.max_frame.min(buf.len().saturating_sub(trailer));
        let (frame_type, seq) = match variant {
            // 1.1: an ack-only frame carries our next sequence number without consuming it.
            HeaderVariant::V1_1 => (FrameType::AckOnly, self.next_tx_seq),
            // 1.0.3 has no ack-only frames: an empty frame takes a sequence number.
            HeaderVariant::V1_0_3 => {
                if !self.window_open(false) {
                    return None;
                }
                (FrameType::Normal, self.next_tx_seq)
            }
        };
        let header = self.header(frame_type, seq, None);
        let builder = FrameBuilder::new(&mut buf[..limit], limit, self.config.byte_order).ok()?;
        let len = builder.finish(&header, self.config.min_frame).ok()?;
        let len = self.seal(buf, len);
        if frame_type == FrameType::AckOnly {
            self.stats.ack_only_sent += 1;
            self.mark_ack_sent();
            self.stats.frames_sent += 1;
        } else {
            let spare = self.spare.pop().unwrap_or_default();
            self.push_sent(now, seq, frame_type, &buf[..len], false, spare);
        }
        Some(len)
    }

    /// Appends the integrity trailer; returns the new length.
    fn seal(&self, buf: &mut [u8], len: usize) -> usize {
        match self.config.integrity {
            Integrity::None => len,
            Integrity::Crc32 => {
                let crc = crc32fast::hash(&buf[..len]);
                buf[len..len + 4].copy_from_slice(&crc.to_be_bytes());
                len + 4
            }
        }
    }

    fn mark_ack_sent(&mut self) {
        if !self.rx_in_order {
            self.stats.naks_sent += 1;
            self.nak_sent_for = Some(self.next_rx_seq);
        }
        self.ack_owed = false;
        self.ack_deadline = None;
    }

    fn push_sent(
        &mut self,
        now: Instant,
        seq: u32,
        frame_type: FrameType,
        bytes: &[u8],
        content: bool,
        mut storage: Vec<u8>,
    ) {
        storage.clear();
        storage.extend_from_slice(bytes);
        if content {
            if self.content_unacked == 0 {
                self.last_progress = now;
            }
            self.content_unacked += 1;
        }
        self.unacked.push_back(SentFrame {
            seq,
            frame_type,
            bytes: storage,
            content,
        });
        self.next_tx_seq = seq::add(seq, 1);
        if content && self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.config.retransmit_timeout);
        }
        self.stats.frames_sent += 1;
        self.mark_ack_sent();
    }
}
