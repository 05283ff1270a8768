//! The raw Ethernet transport: TLoE frames as the payload of Ethernet II frames of EtherType
//! 0xAAAA (configurable) on one interface, through an AF_PACKET socket.
//!
//! Needs root or CAP_NET_RAW. The transport builds the 14-byte Ethernet header itself
//! (destination, this interface's MAC, EtherType) and hands it and the TLoE frame to the
//! kernel as two pieces, so the frame is not copied in user space. The link layer pads frames
//! to [`oxmem_wire::MIN_ETHERNET_PAYLOAD`] (46) bytes and adds no CRC: the NIC's FCS covers
//! the frame.
//!
//! On receive it keeps only frames of its EtherType addressed to its MAC or to broadcast, and
//! never its own transmissions.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use oxmem_link::Integrity;
use oxmem_wire::{ETHERTYPE_OMNIXTEND, EthernetAddress, MIN_ETHERNET_PAYLOAD};

use crate::sys::{self, PacketRecvMeta, PacketSocket};
use crate::{LinkParams, PeerAddr, RecvBatch, Transport, Waker};

/// Length of the Ethernet II header in front of every TLoE frame.
pub const HEADER_LEN: usize = 14;

/// How an [`EthernetTransport`] is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetConfig {
    /// EtherType to send and receive. Default 0xAAAA, OmniXtend's.
    pub ethertype: u16,
    /// Skip the kernel's traffic-control layer on transmit (PACKET_QDISC_BYPASS). Saves a
    /// little per frame, but frames then bypass qdiscs and packet taps (tcpdump does not see
    /// what we send), and a full device queue drops instead of queueing. Default off.
    pub qdisc_bypass: bool,
    /// Socket receive and send buffer to ask for, in bytes. Default 8 MiB.
    pub socket_buffer: usize,
}

impl Default for EthernetConfig {
    fn default() -> Self {
        EthernetConfig {
            ethertype: ETHERTYPE_OMNIXTEND,
            qdisc_bypass: false,
            socket_buffer: 8 << 20,
        }
    }
}

/// TLoE frames in raw Ethernet frames on one interface.
#[derive(Debug)]
pub struct EthernetTransport {
    socket: PacketSocket,
    interface: String,
    mac: EthernetAddress,
    config: EthernetConfig,
}

impl EthernetTransport {
    /// Opens interface `interface` with the default [`EthernetConfig`].
    ///
    /// # Errors
    /// As [`EthernetTransport::open_with`].
    pub fn open(interface: &str) -> io::Result<Self> {
        Self::open_with(interface, EthernetConfig::default())
    }

    /// Opens a raw socket on `interface` for `config.ethertype` and learns the interface's MAC
    /// address and MTU.
    ///
    /// # Errors
    /// `PermissionDenied` (saying how to grant CAP_NET_RAW) without the privilege; `NotFound`
    /// naming the interface when it does not exist; `InvalidInput` when it is not an Ethernet
    /// interface or its MTU is below 46 + 14; other socket errors.
    pub fn open_with(interface: &str, config: EthernetConfig) -> io::Result<Self> {
        let socket = sys::open_packet_socket(interface, config.ethertype, config.qdisc_bypass)?;
        if socket.mtu < MIN_ETHERNET_PAYLOAD + HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "interface {interface:?} has MTU {}, too small for OmniXtend",
                    socket.mtu
                ),
            ));
        }
        sys::grow_socket_buffers(socket.fd.as_raw_fd(), config.socket_buffer);
        Ok(EthernetTransport {
            mac: EthernetAddress(socket.mac),
            socket,
            interface: interface.to_owned(),
            config,
        })
    }

    /// This interface's MAC address, the source of every frame sent.
    pub fn mac(&self) -> EthernetAddress {
        self.mac
    }

    /// The interface's MTU when opened: the largest Ethernet payload, so the largest TLoE frame.
    pub fn mtu(&self) -> usize {
        self.socket.mtu
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's index.
    pub fn ifindex(&self) -> u32 {
        self.socket.ifindex
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &EthernetConfig {
        &self.config
    }

    /// Whether a received frame (`pkttype`, whole-frame bytes) is for us.
    fn accept(&self, meta: &PacketRecvMeta, frame: &[u8]) -> Option<EthernetAddress> {
        if meta.truncated || meta.pkttype == sys::PACKET_OUTGOING || frame.len() < HEADER_LEN {
            return None;
        }
        let dst = EthernetAddress(frame[0..6].try_into().ok()?);
        let src = EthernetAddress(frame[6..12].try_into().ok()?);
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let for_us = dst == self.mac || dst == EthernetAddress::BROADCAST;
        (ethertype == self.config.ethertype && for_us && src != self.mac).then_some(src)
    }
}

impl Transport for EthernetTransport {
    fn link_params(&self) -> LinkParams {
        LinkParams {
            max_frame: self.socket.mtu,
            min_frame: MIN_ETHERNET_PAYLOAD,
            integrity: Integrity::None,
        }
    }

    fn local_addr(&self) -> PeerAddr {
        PeerAddr::Ethernet(self.mac)
    }

    /// Sends each TLoE frame in an Ethernet frame to its peer's MAC. Stops early at a full
    /// socket or device queue, and before a frame the kernel refuses (EMSGSIZE above the MTU)
    /// or whose peer is not a MAC address; the next call starting at that frame reports its
    /// error, so an `Err` always concerns `frames[0]`.
    fn send(&mut self, frames: &[(PeerAddr, &[u8])]) -> io::Result<usize> {
        sys::sendmmsg_packet(
            self.socket.fd.as_raw_fd(),
            self.mac.0,
            self.config.ethertype,
            frames,
        )
    }

    /// Each frame's range starts after the 14-byte Ethernet header; buffers should hold
    /// `mtu() + 14` bytes. Frames longer than the buffer are skipped.
    fn recv(&mut self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.clear();
        let fd = self.socket.fd.as_raw_fd();
        let mut meta = [PacketRecvMeta::default(); sys::MMSG_BATCH];
        // Bounded so that a flood of frames for others cannot keep us here forever.
        for _ in 0..4 {
            let filled = batch.len();
            let room = batch.buffers_mut().len() - filled;
            if room == 0 {
                break;
            }
            let n = sys::recvmmsg_packet(fd, &mut batch.buffers_mut()[filled..], &mut meta)?;
            let mut kept = filled;
            for (i, m) in meta[..n].iter().enumerate() {
                let Some(src) = self.accept(m, &batch.buffers_mut()[filled + i][..m.len]) else {
                    continue;
                };
                // Keep buffer index == frame index, as RecvBatch::push requires.
                batch.buffers_mut().swap(kept, filled + i);
                batch.push(PeerAddr::Ethernet(src), HEADER_LEN..m.len);
                kept += 1;
            }
            if n < sys::MMSG_BATCH.min(room) {
                break; // drained the socket
            }
        }
        Ok(batch.len())
    }

    fn wait(&mut self, waker: &Waker, timeout: Option<Duration>) -> io::Result<()> {
        sys::wait_readable(self.socket.fd.as_raw_fd(), waker, timeout)
    }
}
