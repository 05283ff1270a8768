//! `oxmem-llm`: a small Llama-style model on candle, a paged KV cache whose evicted blocks go
//! to a [`oxmem_kv::KvTier`], a seeded multi-turn workload, and the recovery benchmark behind
//! `oxmem demo`.
//!
//! - [`model`]: the model (seeded random weights, CPU, f32 compute, K and V kept in bf16) and
//!   its KV state.
//! - [`cache`]: the local cache under a byte budget (LRU, pinning, eviction to the tier
//!   through a background write-back thread, read-through of blocks still in flight).
//! - [`engine`]: serving one request: reuse local blocks, fetch from the tier, compute the
//!   rest canonically, decode greedily.
//! - [`workload`]: multi-round conversations and long-document questions.
//! - [`replay`]: the accelerator time model (H100 serving Llama-3-8B) for
//!   [`Compute::Replay`].
//! - [`bench`]: [`run_mode`], [`ModeReport`], [`finish_reports`].
//! - [`testing`]: [`MemTier`], an in-memory tier.
//!
//! **Determinism.** Every mode generates exactly the same tokens; see [`Engine`] for how (block
//! aligned canonical chunks, only full prefill blocks cached, greedy argmax with ties to the
//! lowest id). All modes of one run share one process, so candle's thread count is the same
//! in each; it does not matter anyway: `examples/model_speed.rs` prints a digest of 32 blocks
//! of KV, identical with `RAYON_NUM_THREADS=1` and `=2` (gemm splits rows and columns across
//! threads, never the reduction).
//!
//! **Measured.** The benchmark's numbers, with every tier (disk, Redis, the pool), are in
//! `docs/BENCHMARKS.md` ("The LLM demo"), from `oxmem demo`. The in-process example
//! (`cargo run --release -p oxmem-llm --example bench_modes`, `MemTier` standing in for remote
//! memory) measured, with f32 KV blocks of 1 MiB before K and V were kept in bf16: all-local
//! 26.9 s, shortage 71.5 s, `MemTier` 25.1 s (2.85× shortage) on two shared cores. Writing
//! evicted blocks in the background made no difference visible through the noise for
//! `MemTier` (a write is a memcpy); it is for slow tiers that writes leave the serving loop.
//!
//! Model alone (`--example model_speed`): prefill about 560–680 tokens/s in 32-token chunks,
//! decode 8–12 ms/token at context 1024.

#![forbid(unsafe_code)]

pub mod bench;
pub mod cache;
pub mod engine;
pub mod model;
pub mod replay;
pub mod testing;
pub mod workload;

pub use bench::{
    ALL_LOCAL, BenchConfig, Compute, ModeReport, ModeSpec, Progress, SHORTAGE, block_bytes,
    finish_reports, run_mode, short_budget_bytes, working_set_blocks, working_set_bytes,
};
pub use engine::{Backend, Engine, RequestOutcome, compute_blocks};
pub use model::{KvState, Model, ModelConfig, argmax};
pub use replay::AcceleratorModel;
pub use testing::MemTier;
pub use workload::{Workload, WorkloadConfig};

/// Why a model, cache or benchmark operation failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// Caller: an inconsistent config or argument (model shape, sizes, lengths).
    #[error("config: {0}")]
    Config(String),
    /// The tensor library failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The tier failed (transient IO or its own error).
    #[error("tier: {0}")]
    Tier(#[from] oxmem_kv::KvError),
    /// A block read back is not what was stored.
    #[error("corrupt block: {0}")]
    Corrupt(String),
    /// Modes generated different tokens (they must not): the modes that differ from
    /// `all-local`.
    #[error("generated tokens differ from all-local in: {0}")]
    TokensDiffer(String),
    /// A thread (the cache's write-back thread) could not be started.
    #[error("thread: {0}")]
    Thread(std::io::Error),
    /// A bug in this crate (an invariant broke).
    #[error("internal: {0}")]
    Internal(String),
}
