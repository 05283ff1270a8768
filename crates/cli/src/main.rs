//! The `oxmem` command. Thin: it parses arguments and hands the work to its modules.

mod bench;
mod capture;
mod client_args;
mod coord;
mod decode;
mod demo;
mod node;
mod rw;
mod status;

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::capture::CaptureReader;
use crate::client_args::Order;
use crate::decode::{Options, RunError};

/// Memory pooling over Ethernet with OmniXtend.
#[derive(Debug, Parser)]
#[command(name = "oxmem", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode OmniXtend frames in a pcap or pcapng capture.
    ///
    /// Prints one line per frame (TLoE header) and one indented line per TileLink message.
    /// Frames of other EtherTypes and malformed frames are shown with the reason, never
    /// skipped. Exits with 0 once the file is read, however malformed its frames.
    Decode(DecodeArgs),
    /// Run a memory node: export DRAM to OmniXtend hosts over UDP or raw Ethernet.
    Node(node::NodeArgs),
    /// Read bytes from a node and print them in hex.
    Read(rw::ReadArgs),
    /// Write bytes (given in hex) to a node; prints `ok`.
    Write(rw::WriteArgs),
    /// Measure latency, bandwidth and atomics against a node, with baselines.
    Bench(bench::BenchArgs),
    /// A UDP echo for the bench's ping-pong baseline on another host.
    #[command(hide = true)]
    BenchEcho(bench::baselines::EchoArgs),
    /// Show the pool: nodes, tenants, regions, degraded stripes.
    Status(status::StatusArgs),
    /// Run the coordinator: nodes, tenants, regions, grants and leases over HTTP/JSON.
    Coord(coord::CoordArgs),
    /// Start a whole pool on this machine: a coordinator and N memory nodes on loopback.
    Up(coord::UpArgs),
    /// Compare reading a region striped over all nodes with one on a single node.
    BenchPool(bench::pool::PoolBenchArgs),
    /// The LLM demo: a KV cache that does not fit, recomputed, or spilled to disk, Redis or
    /// the pool; prints a table and writes a chart.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Args)]
struct DecodeArgs {
    /// The capture file (pcap or pcapng; recognised by content, not by name).
    file: PathBuf,
    /// One JSON object per frame instead of text.
    #[arg(long)]
    json: bool,
    /// The EtherType of OmniXtend frames, hex (0xAAAA) or decimal.
    #[arg(long, default_value = "0xAAAA", value_parser = decode::parse_ethertype)]
    ethertype: u16,
    /// How data bytes sit in flits: `spec` (SiFive hardware) or `memory` (Western Digital's
    /// host library).
    #[arg(long, value_enum, default_value_t = Order::Spec)]
    byte_order: Order,
    /// Hex-dump message data, in memory order.
    #[arg(long)]
    data: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A reader that stops early (`| head`) is not a failure.
            let closed = e.downcast_ref::<RunError>().is_some_and(
                |e| matches!(e, RunError::Output(io) if io.kind() == io::ErrorKind::BrokenPipe),
            );
            if closed {
                return ExitCode::SUCCESS;
            }
            eprintln!("oxmem: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Decode(args) => decode_command(args),
        Command::Node(args) => node::run(args),
        Command::Read(args) => rw::read(args),
        Command::Write(args) => rw::write(args),
        Command::Bench(args) => bench::run(args),
        Command::Status(args) => status::run(args),
        Command::Coord(args) => coord::coord(args),
        Command::Up(args) => coord::up(args),
        Command::BenchPool(args) => bench::pool::run(args),
        Command::Demo(args) => demo::run(args),
        Command::BenchEcho(args) => bench::baselines::run_echo(&args),
    }
}

fn decode_command(args: DecodeArgs) -> anyhow::Result<()> {
    let path = args.file.display();
    let file = File::open(&args.file).with_context(|| format!("cannot open {path}"))?;
    let mut capture =
        CaptureReader::new(BufReader::new(file)).with_context(|| format!("{path}"))?;
    let opts = Options {
        ethertype: args.ethertype,
        order: args.byte_order.into(),
        data: args.data,
        json: args.json,
    };
    let stdout = io::stdout().lock();
    let mut out = io::BufWriter::new(stdout);
    decode::run(&mut capture, &opts, &mut out).map_err(anyhow::Error::new)?;
    out.flush()
        .map_err(|e| anyhow::Error::new(RunError::Output(e)))
}
