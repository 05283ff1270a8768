//! `oxmem read` and `oxmem write`: poke any OmniXtend memory by hand.

use anyhow::{Context as _, bail};
use clap::Args;
use oxmem_client::Endpoint;

use crate::client_args::{ClientArgs, parse_number};

#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Address to read from (decimal, 0x hex or a size like 4KiB).
    #[arg(long, value_parser = parse_number)]
    pub addr: u64,
    /// Bytes to read.
    #[arg(long, value_parser = parse_number)]
    pub len: u64,
}

#[derive(Debug, Args)]
pub struct WriteArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Address to write at.
    #[arg(long, value_parser = parse_number)]
    pub addr: u64,
    /// The bytes, in hex (`0011aabb`).
    #[arg(long)]
    pub hex: String,
}

fn connect(client: &ClientArgs) -> anyhow::Result<Endpoint> {
    Endpoint::connect(&client.target, client.options())
        .with_context(|| format!("cannot connect to {}", client.target))
}

pub fn read(args: ReadArgs) -> anyhow::Result<()> {
    let len = usize::try_from(args.len).context("length too large")?;
    if len > 1 << 30 {
        bail!("refusing to read more than 1 GiB to the terminal");
    }
    let ep = connect(&args.client)?;
    let mut buf = vec![0u8; len];
    ep.read(args.addr, &mut buf)
        .with_context(|| format!("read of {len} bytes at {:#x}", args.addr))?;
    println!("{}", hex(&buf));
    Ok(())
}

pub fn write(args: WriteArgs) -> anyhow::Result<()> {
    let data = unhex(&args.hex)?;
    let ep = connect(&args.client)?;
    ep.write(args.addr, &data)
        .with_context(|| format!("write of {} bytes at {:#x}", data.len(), args.addr))?;
    println!("ok");
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    let s = s.trim().trim_start_matches("0x");
    if s.is_empty() || s.len() % 2 != 0 {
        bail!("--hex needs an even, non-zero number of hex digits");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .with_context(|| format!("not hex: {:?}", &s[i..i + 2]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(unhex("00ff10").unwrap(), vec![0, 0xff, 0x10]);
        assert_eq!(hex(&[0, 0xff, 0x10]), "00ff10");
        assert!(unhex("0").is_err());
        assert!(unhex("zz").is_err());
        assert!(unhex("").is_err());
    }
}
