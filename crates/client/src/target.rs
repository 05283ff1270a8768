//! Where an endpoint connects: `udp://HOST:PORT` or `eth://IFACE/PEER_MAC`.

use core::fmt;
use core::str::FromStr;
use std::net::{SocketAddr, ToSocketAddrs};

use oxmem_net::EthernetAddress;

/// A memory node's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The node's UDP address.
    Udp(SocketAddr),
    /// Raw Ethernet: the local interface and the node's MAC address.
    Ethernet {
        interface: String,
        peer: EthernetAddress,
    },
}

/// Why a target string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad target {input:?}: {reason} (expected udp://HOST:PORT or eth://IFACE/PEER_MAC)")]
pub struct TargetError {
    input: String,
    reason: &'static str,
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| TargetError {
            input: s.to_string(),
            reason,
        };
        if let Some(rest) = s.strip_prefix("udp://") {
            let addr = rest
                .to_socket_addrs()
                .map_err(|_| err("not a HOST:PORT"))?
                .next()
                .ok_or_else(|| err("host has no address"))?;
            return Ok(Target::Udp(addr));
        }
        if let Some(rest) = s.strip_prefix("eth://") {
            let (interface, mac) = rest
                .split_once('/')
                .ok_or_else(|| err("missing /PEER_MAC"))?;
            if interface.is_empty() {
                return Err(err("missing interface"));
            }
            let peer = EthernetAddress::parse(mac).ok_or_else(|| err("not a MAC address"))?;
            return Ok(Target::Ethernet {
                interface: interface.to_string(),
                peer,
            });
        }
        Err(err("unknown scheme"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Udp(a) => write!(f, "udp://{a}"),
            Target::Ethernet { interface, peer } => write!(f, "eth://{interface}/{peer}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_round_trips() {
        let t: Target = "udp://127.0.0.1:7447".parse().unwrap();
        assert_eq!(t, Target::Udp("127.0.0.1:7447".parse().unwrap()));
        assert_eq!(t.to_string(), "udp://127.0.0.1:7447");
        let t: Target = "eth://veth0/02:00:00:00:00:01".parse().unwrap();
        assert_eq!(t.to_string(), "eth://veth0/02:00:00:00:00:01");
    }

    #[test]
    fn refuses_malformed_targets_with_a_reason() {
        for bad in [
            "tcp://x:1",
            "udp://nope",
            "eth://veth0",
            "eth:///02:00:00:00:00:01",
            "eth://v/zz",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }
}
