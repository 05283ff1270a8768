//! Executes TileLink TL-UH requests against the arena (TileLink 1.8.0 chapters 6 and 7).

use core::fmt;

use oxmem_wire::tilelink::{MAX_SIZE, MAX_SOURCE};
use oxmem_wire::{
    ArithmeticParam, Channel, FLIT, IntentParam, LogicalParam, Message, Op, Payload, data_beats,
};

use crate::arena::Arena;
use crate::grant::GrantTable;

/// Zero data beats for denied responses: as long as the largest message (2^15 bytes).
static ZEROS: [u8; 1 << MAX_SIZE] = [0; 1 << MAX_SIZE];

/// Largest atomic operand: TileLink allows atomics up to the data bus width (§6.2), which is
/// one 8-byte beat in OmniXtend.
const MAX_ATOMIC_SIZE: u8 = 3;

/// The `toN` cap: the permission a denied Grant reports (TileLink §8.2; ignored when denied).
const CAP_TO_N: u8 = 2;

/// Why a request was answered `denied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// No grant for this peer (nor an open window) covers the whole range.
    NoGrant,
    /// A grant covers the range but allows only reads, and the request writes.
    ReadOnly,
    /// No grant covers the range, and it is not even inside the arena's own addresses (it
    /// may be an address of a grant since revoked: the coordinator's grants use addresses far
    /// above the arena).
    OutOfArena,
    /// The address is not a multiple of the size.
    Unaligned,
    /// An atomic wider than the 8-byte data bus.
    AtomicTooLarge,
    /// A write whose data the sender marked corrupt: the arena cannot record poison, so it
    /// refuses the write rather than store bad bytes as good ones (TileLink §4.5).
    CorruptData,
    /// The message breaks a rule `Message::check` enforces (bad param, wrong payload length,
    /// fields set that channel A does not carry).
    Malformed,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenyReason::NoGrant => "no grant covers the range",
            DenyReason::ReadOnly => "write to a read-only grant",
            DenyReason::OutOfArena => "no grant covers the range, which is outside the arena",
            DenyReason::Unaligned => "address not aligned to the size",
            DenyReason::AtomicTooLarge => "atomic wider than the 8-byte bus",
            DenyReason::CorruptData => "write data marked corrupt",
            DenyReason::Malformed => "malformed request",
        })
    }
}

/// Channel A requests received, per operation (denied ones included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpCounters {
    pub get: u64,
    pub put_full_data: u64,
    pub put_partial_data: u64,
    pub arithmetic_data: u64,
    pub logical_data: u64,
    pub intent: u64,
    pub acquire_block: u64,
    pub acquire_perm: u64,
}

impl OpCounters {
    /// The count for `op`; 0 for operations channel A does not carry.
    pub fn get(&self, op: Op) -> u64 {
        match op {
            Op::Get => self.get,
            Op::PutFullData => self.put_full_data,
            Op::PutPartialData => self.put_partial_data,
            Op::ArithmeticData => self.arithmetic_data,
            Op::LogicalData => self.logical_data,
            Op::Intent => self.intent,
            Op::AcquireBlock => self.acquire_block,
            Op::AcquirePerm => self.acquire_perm,
            _ => 0,
        }
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        [
            self.get,
            self.put_full_data,
            self.put_partial_data,
            self.arithmetic_data,
            self.logical_data,
            self.intent,
            self.acquire_block,
            self.acquire_perm,
        ]
        .into_iter()
        .fold(0, u64::saturating_add)
    }

    fn slot(&mut self, op: Op) -> Option<&mut u64> {
        Some(match op {
            Op::Get => &mut self.get,
            Op::PutFullData => &mut self.put_full_data,
            Op::PutPartialData => &mut self.put_partial_data,
            Op::ArithmeticData => &mut self.arithmetic_data,
            Op::LogicalData => &mut self.logical_data,
            Op::Intent => &mut self.intent,
            Op::AcquireBlock => &mut self.acquire_block,
            Op::AcquirePerm => &mut self.acquire_perm,
            _ => return None,
        })
    }
}

/// Denied requests, per [`DenyReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeniedCounters {
    pub no_grant: u64,
    pub read_only: u64,
    pub out_of_arena: u64,
    pub unaligned: u64,
    pub atomic_too_large: u64,
    pub corrupt_data: u64,
    pub malformed: u64,
}

impl DeniedCounters {
    /// The count for one reason.
    pub fn get(&self, reason: DenyReason) -> u64 {
        match reason {
            DenyReason::NoGrant => self.no_grant,
            DenyReason::ReadOnly => self.read_only,
            DenyReason::OutOfArena => self.out_of_arena,
            DenyReason::Unaligned => self.unaligned,
            DenyReason::AtomicTooLarge => self.atomic_too_large,
            DenyReason::CorruptData => self.corrupt_data,
            DenyReason::Malformed => self.malformed,
        }
    }

    /// All denied requests.
    pub fn total(&self) -> u64 {
        [
            self.no_grant,
            self.read_only,
            self.out_of_arena,
            self.unaligned,
            self.atomic_too_large,
            self.corrupt_data,
            self.malformed,
        ]
        .into_iter()
        .fold(0, u64::saturating_add)
    }

    fn slot(&mut self, reason: DenyReason) -> &mut u64 {
        match reason {
            DenyReason::NoGrant => &mut self.no_grant,
            DenyReason::ReadOnly => &mut self.read_only,
            DenyReason::OutOfArena => &mut self.out_of_arena,
            DenyReason::Unaligned => &mut self.unaligned,
            DenyReason::AtomicTooLarge => &mut self.atomic_too_large,
            DenyReason::CorruptData => &mut self.corrupt_data,
            DenyReason::Malformed => &mut self.malformed,
        }
    }
}

/// What an [`Executor`] has done. Counters saturate instead of wrapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Channel A requests, per operation.
    pub requests: OpCounters,
    /// Bytes returned by Get and read by atomics, for granted requests.
    pub bytes_read: u64,
    /// Bytes stored by PutFullData, PutPartialData (enabled bytes only) and atomics.
    pub bytes_written: u64,
    /// Requests answered `denied`, per reason (Acquires are counted in `unsupported`).
    pub denied: DeniedCounters,
    /// TL-C Acquires, answered with a denied Grant or GrantData: this node is TL-UH only.
    pub unsupported: u64,
    /// Messages dropped without a reply: channels B to E (a memory node only serves channel A),
    /// and channel A messages no well-formed response can answer (an operation channel A does
    /// not carry, a size above 2^15 or a source above 26 bits; only hand-built messages have
    /// these, the codec never parses them).
    pub dropped: u64,
}

fn bump(counter: &mut u64, by: u64) {
    *counter = counter.saturating_add(by);
}

/// What to answer, decided while the executor is borrowed mutably; turned into a [`Message`]
/// borrowing the arena afterwards.
enum Reply {
    None,
    AccessAck {
        denied: bool,
    },
    HintAck {
        denied: bool,
    },
    /// AccessAckData whose beats are the arena's bytes at `address` (size of 8 bytes or more).
    ArenaData {
        address: u64,
    },
    /// AccessAckData of the single beat in `Executor::beat`.
    BeatData,
    /// Denied AccessAckData: corrupt, all-zero beats.
    DeniedData,
    /// Denied Grant (AcquirePerm).
    DeniedGrant,
    /// Denied GrantData (AcquireBlock): corrupt, all-zero beats.
    DeniedGrantData,
}

/// The memory node's TileLink slave: executes channel A requests against its [`Arena`] under
/// its [`GrantTable`], and says what to answer on channel D.
///
/// Sans-IO: the I/O engine parses frames, calls [`Executor::execute`] (or
/// [`Executor::respond`]) for each message with the peer it came from, and encodes the reply.
/// The reply's data borrows the arena, so a Get is copied once, into the outgoing frame.
///
/// It never panics, whatever the message: every access is bounds-checked, every sum checked,
/// and a request it cannot serve is answered `denied` (TileLink §4.5) or, when no well-formed
/// reply exists, dropped and counted.
#[derive(Debug)]
pub struct Executor<P> {
    arena: Arena,
    grants: GrantTable<P>,
    counters: Counters,
    /// The one beat of a reply smaller than 8 bytes; only its active lanes are non-zero.
    beat: [u8; FLIT],
}

impl<P: PartialEq> Executor<P> {
    /// An executor over `arena` with no grants: every access is denied until grants are added
    /// through [`Executor::grants_mut`].
    pub fn new(arena: Arena) -> Self {
        let grants = GrantTable::new(arena.capacity());
        Executor {
            arena,
            grants,
            counters: Counters::default(),
            beat: [0; FLIT],
        }
    }

    /// The arena.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// The arena, to zero freed memory or prepare contents.
    pub fn arena_mut(&mut self) -> &mut Arena {
        &mut self.arena
    }

    /// The grants.
    pub fn grants(&self) -> &GrantTable<P> {
        &self.grants
    }

    /// The grants, to add and revoke.
    pub fn grants_mut(&mut self) -> &mut GrantTable<P> {
        &mut self.grants
    }

    /// What has been executed and denied so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Executes `request` from `peer` and passes the response, if there is one, to `reply`
    /// (which typically encodes it into a frame). See [`Executor::respond`].
    pub fn execute(&mut self, peer: &P, request: &Message<'_>, reply: &mut dyn FnMut(Message<'_>)) {
        if let Some(response) = self.respond(peer, request) {
            reply(response);
        }
    }

    /// Executes `request` from `peer` and returns the channel D response, or `None` when the
    /// message is dropped (it is not a channel A request).
    ///
    /// - Get → AccessAckData; PutFullData, PutPartialData → AccessAck; ArithmeticData,
    ///   LogicalData → AccessAckData with the old value; Intent → HintAck.
    /// - AcquireBlock / AcquirePerm → denied GrantData / Grant (this node is TL-UH only).
    /// - The response repeats the request's `source` and `size`; its param is 0.
    /// - A reply smaller than 8 bytes carries its bytes in the lanes `address % 8` of one beat
    ///   and zeros in every other lane (TileLink §4.6).
    /// - Denied data responses are also `corrupt` and carry only zeros (TileLink §4.5).
    #[must_use = "the response must be sent to the peer"]
    pub fn respond(&mut self, peer: &P, request: &Message<'_>) -> Option<Message<'_>> {
        let reply = self.run(peer, request);
        let (source, size) = (request.source, request.size);
        // `run` answers only sizes up to MAX_SIZE, so the zero beats always suffice.
        let zeros = ZEROS.get(..data_beats(size).checked_mul(FLIT)?)?;
        Some(match reply {
            Reply::None => return None,
            Reply::AccessAck { denied } => Message::access_ack(source, size, denied),
            Reply::HintAck { denied } => Message::hint_ack(source, size, denied),
            Reply::ArenaData { address } => match self.arena.get(address, zeros.len() as u64) {
                Some(data) => Message::access_ack_data(source, size, false, data),
                None => denied_data(source, size, zeros),
            },
            Reply::BeatData => Message::access_ack_data(source, size, false, &self.beat),
            Reply::DeniedData => denied_data(source, size, zeros),
            Reply::DeniedGrant => Message {
                op: Op::Grant,
                param: CAP_TO_N,
                sink: 0,
                ..Message::access_ack(source, size, true)
            },
            Reply::DeniedGrantData => Message {
                op: Op::GrantData,
                param: CAP_TO_N,
                sink: 0,
                corrupt: true,
                ..Message::access_ack_data(source, size, true, zeros)
            },
        })
    }

    fn run(&mut self, peer: &P, req: &Message<'_>) -> Reply {
        if req.channel != Channel::A
            || !req.op.valid_on(Channel::A)
            || req.size > MAX_SIZE
            || req.source > MAX_SOURCE
        {
            bump(&mut self.counters.dropped, 1);
            return Reply::None;
        }
        if let Some(count) = self.counters.requests.slot(req.op) {
            bump(count, 1);
        }
        match req.op {
            Op::AcquireBlock => {
                bump(&mut self.counters.unsupported, 1);
                return Reply::DeniedGrantData;
            }
            Op::AcquirePerm => {
                bump(&mut self.counters.unsupported, 1);
                return Reply::DeniedGrant;
            }
            _ => {}
        }
        // Performed at the arena address the grant maps the request's address to.
        let outcome = self.authorize(peer, req).and_then(|address| {
            let at = Message { address, ..*req };
            self.perform(&at)
        });
        match outcome {
            Ok(reply) => reply,
            Err(reason) => {
                bump(self.counters.denied.slot(reason), 1);
                match req.op {
                    Op::PutFullData | Op::PutPartialData => Reply::AccessAck { denied: true },
                    Op::Intent => Reply::HintAck { denied: true },
                    _ => Reply::DeniedData,
                }
            }
        }
    }

    /// Everything that can deny a request, checked before any byte is touched. Returns the
    /// arena address the request's address stands for under the grant that allows it.
    fn authorize(&self, peer: &P, req: &Message<'_>) -> Result<u64, DenyReason> {
        if let Err(e) = req.check() {
            return Err(match e {
                oxmem_wire::Error::UnalignedAddress { .. } => DenyReason::Unaligned,
                _ => DenyReason::Malformed,
            });
        }
        let len = 1u64 << req.size;
        // `check` has tested this already; a memory node tests it again for itself.
        if req.address % len != 0 {
            return Err(DenyReason::Unaligned);
        }
        let atomic = matches!(req.op, Op::ArithmeticData | Op::LogicalData);
        if atomic && req.size > MAX_ATOMIC_SIZE {
            return Err(DenyReason::AtomicTooLarge);
        }
        if req.corrupt && req.op.has_data() {
            return Err(DenyReason::CorruptData);
        }
        let write = match req.op {
            Op::Get => false,
            Op::Intent => req.param == IntentParam::PrefetchWrite as u8,
            _ => true,
        };
        match self.grants.resolve(peer, req.address, len) {
            None if !self.arena.contains(req.address, len) => Err(DenyReason::OutOfArena),
            None => Err(DenyReason::NoGrant),
            Some((access, _)) if write && !access.allows_write() => Err(DenyReason::ReadOnly),
            // Grants fit the arena when added; checked again all the same.
            Some((_, at)) if !self.arena.contains(at, len) => Err(DenyReason::OutOfArena),
            Some((_, at)) => Ok(at),
        }
    }

    /// Performs an authorized request. An error here means `check` let through something the
    /// operation cannot use; it is reported as malformed, never a panic.
    fn perform(&mut self, req: &Message<'_>) -> Result<Reply, DenyReason> {
        let size = req.size;
        let n = 1usize << size;
        let len = n as u64;
        // Bytes of a sub-beat message sit in the lanes `address % 8` (TileLink §4.6).
        let lane = if size < 3 {
            (req.address % FLIT as u64) as usize
        } else {
            0
        };
        let payload_fits =
            |payload_len: usize| lane.checked_add(n).is_some_and(|end| end <= payload_len);
        match (req.op, req.payload) {
            (Op::Get, Payload::None) => {
                bump(&mut self.counters.bytes_read, len);
                if size >= 3 {
                    return Ok(Reply::ArenaData {
                        address: req.address,
                    });
                }
                let src = self
                    .arena
                    .get(req.address, len)
                    .ok_or(DenyReason::OutOfArena)?;
                self.beat = [0; FLIT];
                self.beat[lane..lane + n].copy_from_slice(src);
                Ok(Reply::BeatData)
            }
            (Op::Intent, Payload::None) => Ok(Reply::HintAck { denied: false }),
            (Op::PutFullData, Payload::Data(data)) => {
                if !payload_fits(data.len()) {
                    return Err(DenyReason::Malformed);
                }
                let dst = self
                    .arena
                    .get_mut(req.address, len)
                    .ok_or(DenyReason::OutOfArena)?;
                if lane == 0 && data.len() == n {
                    data.copy_to(dst);
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = data.byte(lane + j);
                    }
                }
                bump(&mut self.counters.bytes_written, len);
                Ok(Reply::AccessAck { denied: false })
            }
            (Op::PutPartialData, Payload::Masked(masked)) => {
                let mask_bits = masked.mask_len().saturating_mul(8);
                if !payload_fits(masked.len()) || !payload_fits(mask_bits) {
                    return Err(DenyReason::Malformed);
                }
                let dst = self
                    .arena
                    .get_mut(req.address, len)
                    .ok_or(DenyReason::OutOfArena)?;
                let mut written = 0u64;
                // Mask bits of inactive lanes are ignored: they must be LOW (TileLink §4.6),
                // and honouring them would write outside the addressed bytes.
                for (j, d) in dst.iter_mut().enumerate() {
                    let i = lane + j;
                    if masked.enabled(i) {
                        *d = masked.byte(i);
                        written += 1;
                    }
                }
                bump(&mut self.counters.bytes_written, written);
                Ok(Reply::AccessAck { denied: false })
            }
            (Op::ArithmeticData | Op::LogicalData, Payload::Data(data)) => {
                if !payload_fits(data.len()) || n > FLIT {
                    return Err(DenyReason::Malformed);
                }
                let atomic = Atomic::decode(req.op, req.param).ok_or(DenyReason::Malformed)?;
                let mut operand = [0u8; FLIT];
                for (j, o) in operand[..n].iter_mut().enumerate() {
                    *o = data.byte(lane + j);
                }
                let operand = u64::from_le_bytes(operand);
                let dst = self
                    .arena
                    .get_mut(req.address, len)
                    .ok_or(DenyReason::OutOfArena)?;
                let mut old = [0u8; FLIT];
                old[..n].copy_from_slice(dst);
                let new = atomic.apply(u64::from_le_bytes(old), operand, n);
                dst.copy_from_slice(&new.to_le_bytes()[..n]);
                self.beat = [0; FLIT];
                self.beat[lane..lane + n].copy_from_slice(&old[..n]);
                bump(&mut self.counters.bytes_read, len);
                bump(&mut self.counters.bytes_written, len);
                Ok(Reply::BeatData)
            }
            _ => Err(DenyReason::Malformed),
        }
    }
}

fn denied_data<'a>(source: u32, size: u8, zeros: &'a [u8]) -> Message<'a> {
    Message {
        corrupt: true,
        ..Message::access_ack_data(source, size, true, zeros)
    }
}

/// An ArithmeticData or LogicalData operation (TileLink §6.2).
#[derive(Debug, Clone, Copy)]
enum Atomic {
    Arithmetic(ArithmeticParam),
    Logical(LogicalParam),
}

impl Atomic {
    fn decode(op: Op, param: u8) -> Option<Self> {
        match op {
            Op::ArithmeticData => ArithmeticParam::from_u8(param).map(Atomic::Arithmetic),
            Op::LogicalData => LogicalParam::from_u8(param).map(Atomic::Logical),
            _ => None,
        }
    }

    /// The new memory value for `old` and `operand`, both `n`-byte little-endian values
    /// (1 <= n <= 8) zero-extended to 64 bits. The result is truncated to `n` bytes.
    fn apply(self, old: u64, operand: u64, n: usize) -> u64 {
        let unused = 64 - 8 * (n.clamp(1, FLIT) as u32);
        let signed = |x: u64| ((x << unused) as i64) >> unused;
        let new = match self {
            Atomic::Arithmetic(ArithmeticParam::Min) => {
                if signed(operand) < signed(old) {
                    operand
                } else {
                    old
                }
            }
            Atomic::Arithmetic(ArithmeticParam::Max) => {
                if signed(operand) > signed(old) {
                    operand
                } else {
                    old
                }
            }
            Atomic::Arithmetic(ArithmeticParam::MinU) => old.min(operand),
            Atomic::Arithmetic(ArithmeticParam::MaxU) => old.max(operand),
            Atomic::Arithmetic(ArithmeticParam::Add) => old.wrapping_add(operand),
            Atomic::Logical(LogicalParam::Xor) => old ^ operand,
            Atomic::Logical(LogicalParam::Or) => old | operand,
            Atomic::Logical(LogicalParam::And) => old & operand,
            Atomic::Logical(LogicalParam::Swap) => operand,
        };
        (new << unused) >> unused
    }
}
