//! The recovery benchmark: the same workload under several memory modes, compared.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use oxmem_kv::{KvTier, NoTier};
use serde::Serialize;

use crate::LlmError;
use crate::engine::{Backend, Engine};
use crate::model::{Fnv, Model, ModelConfig};
use crate::replay::AcceleratorModel;
use crate::workload::{Driver, Workload, WorkloadConfig};

/// Name of the mode with an unlimited local budget (the ideal).
pub const ALL_LOCAL: &str = "all-local";
/// Name of the mode with a short budget and no tier (evicted blocks are recomputed).
pub const SHORTAGE: &str = "shortage";

/// How model compute happens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Compute {
    /// The real model runs on the CPU.
    Real,
    /// Compute is replaced by an accelerator time model (see [`AcceleratorModel`]).
    Replay(AcceleratorModel),
}

impl Compute {
    /// The label reports carry: `cpu <model shape>` or the accelerator model's label.
    pub fn label(&self, model: &ModelConfig) -> String {
        match self {
            Compute::Real => format!(
                "cpu candle f32 (bf16 KV) dim{} L{} h{}/{} vocab{}",
                model.dim, model.n_layers, model.n_heads, model.n_kv_heads, model.vocab_size
            ),
            Compute::Replay(a) => a.label.clone(),
        }
    }
}

/// Everything that defines a benchmark run except the mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchConfig {
    /// The real model (used by [`Compute::Real`]).
    pub model: ModelConfig,
    /// The workload.
    pub workload: WorkloadConfig,
    /// Tokens per KV block.
    pub block_tokens: usize,
    /// Local budget of the short modes, as a fraction of the working set.
    pub budget_fraction: f64,
    /// Real CPU compute or accelerator replay.
    pub compute: Compute,
}

impl Default for BenchConfig {
    /// The default model and workload, real compute, 32-token blocks, budget 1/4 of the
    /// working set.
    fn default() -> Self {
        BenchConfig {
            model: ModelConfig::default(),
            workload: WorkloadConfig::default(),
            block_tokens: 32,
            budget_fraction: 0.25,
            compute: Compute::Real,
        }
    }
}

impl BenchConfig {
    /// The tiny model and the quick workload: every mode in a second or two (tests, CI).
    pub fn quick() -> Self {
        BenchConfig {
            model: ModelConfig::tiny(),
            workload: WorkloadConfig::quick(),
            block_tokens: 16,
            budget_fraction: 0.25,
            compute: Compute::Real,
        }
    }

    /// Accelerator replay (H100 serving Llama-3-8B) with a workload whose working set is
    /// about 1.6 GiB of real-size blocks (4 MiB each), so in-RAM tiers hold it.
    pub fn replay() -> Self {
        BenchConfig {
            model: ModelConfig::default(),
            workload: WorkloadConfig {
                seed: 42,
                users: 8,
                system_prompt_tokens: 256,
                rounds: 4,
                first_question_tokens: 1024,
                question_tokens: 64,
                answer_tokens: 8,
                documents: 2,
                document_tokens: 1536,
                doc_questions: 16,
                doc_question_tokens: 32,
                doc_answer_tokens: 8,
            },
            block_tokens: 32,
            budget_fraction: 0.25,
            compute: Compute::Replay(AcceleratorModel::h100_llama3_8b()),
        }
    }

    /// [`BenchConfig::replay`] with the quick workload (tests).
    pub fn quick_replay() -> Self {
        BenchConfig {
            workload: WorkloadConfig::quick(),
            block_tokens: 16,
            ..BenchConfig::replay()
        }
    }

    /// The label of this config's compute.
    pub fn compute_label(&self) -> String {
        self.compute.label(&self.model)
    }
}

/// Bytes of one KV block under `cfg` (what every tier of a run must store).
pub fn block_bytes(cfg: &BenchConfig) -> usize {
    match &cfg.compute {
        Compute::Real => cfg.model.block_bytes(cfg.block_tokens),
        Compute::Replay(a) => a.block_bytes(cfg.block_tokens),
    }
}

/// Distinct full blocks the workload of `cfg` produces.
pub fn working_set_blocks(cfg: &BenchConfig) -> u64 {
    cfg.workload.working_set_blocks(cfg.block_tokens)
}

/// Bytes of the working set.
pub fn working_set_bytes(cfg: &BenchConfig) -> u64 {
    working_set_blocks(cfg) * block_bytes(cfg) as u64
}

/// The local budget of the short modes: `budget_fraction` of the working set, rounded up to
/// whole blocks.
pub fn short_budget_bytes(cfg: &BenchConfig) -> u64 {
    let blocks = (working_set_blocks(cfg) as f64 * cfg.budget_fraction).ceil() as u64;
    blocks.max(1) * block_bytes(cfg) as u64
}

/// One mode: a local budget and a tier.
#[derive(Debug, Clone)]
pub struct ModeSpec {
    /// Name in reports (`all-local`, `shortage`, `pool`, ...).
    pub name: String,
    /// Local budget in bytes; `None` is unlimited.
    pub budget_bytes: Option<u64>,
    /// Where evicted blocks go.
    pub tier: Arc<dyn KvTier>,
}

impl ModeSpec {
    /// Unlimited local memory ([`ALL_LOCAL`]).
    pub fn all_local(cfg: &BenchConfig) -> Self {
        ModeSpec {
            name: ALL_LOCAL.into(),
            budget_bytes: None,
            tier: Arc::new(NoTier::new(block_bytes(cfg))),
        }
    }

    /// The short budget and no tier ([`SHORTAGE`]).
    pub fn shortage(cfg: &BenchConfig) -> Self {
        ModeSpec {
            name: SHORTAGE.into(),
            budget_bytes: Some(short_budget_bytes(cfg)),
            tier: Arc::new(NoTier::new(block_bytes(cfg))),
        }
    }

    /// The short budget, evicting to `tier`.
    pub fn with_tier(name: impl Into<String>, cfg: &BenchConfig, tier: Arc<dyn KvTier>) -> Self {
        ModeSpec {
            name: name.into(),
            budget_bytes: Some(short_budget_bytes(cfg)),
            tier,
        }
    }
}

/// Progress of a running mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The mode's name.
    pub mode: String,
    /// Requests done.
    pub done: usize,
    /// Requests in the workload.
    pub total: usize,
}

/// The result of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// The mode's name.
    pub mode: String,
    /// The compute label (`cpu ...` or `simulated h100-8b`).
    pub compute: String,
    /// The tier's name.
    pub tier: String,
    /// Local budget in bytes (`None`: unlimited).
    pub budget_bytes: Option<u64>,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Working set in blocks.
    pub working_set_blocks: u64,
    /// Requests served.
    pub requests: usize,
    /// Requests per second of wall time.
    pub requests_per_s: f64,
    /// Generated tokens per second of wall time.
    pub tokens_per_s: f64,
    /// Median time to first token.
    pub ttft_p50_ms: f64,
    /// 99th percentile time to first token.
    pub ttft_p99_ms: f64,
    /// Prompt tokens in all requests.
    pub prompt_tokens: u64,
    /// Prompt tokens whose KV was computed.
    pub prefill_tokens_computed: u64,
    /// Prompt tokens whose KV was reused (local + tier + in flight).
    pub prefill_tokens_reused: u64,
    /// ... of which from the local cache.
    pub reused_local_tokens: u64,
    /// ... of which fetched from the tier.
    pub reused_tier_tokens: u64,
    /// ... of which taken from evicted blocks whose tier write had not completed yet (no tier
    /// read: not in `bytes_fetched`).
    pub reused_inflight_tokens: u64,
    /// Bytes read from the tier.
    pub bytes_fetched: u64,
    /// Bytes written to the tier (every write of the run: the run waits for them).
    pub bytes_written: u64,
    /// Seconds the serving loop waited for tier writes (a full write-back queue, and the
    /// writes still in flight at the end). Part of `elapsed_s`.
    pub write_wait_s: f64,
    /// Blocks evicted from the local budget.
    pub evictions: u64,
    /// Fetched blocks with wrong contents (replay checks every one; must be 0).
    pub block_mismatches: u64,
    /// Wall time of the run.
    pub elapsed_s: f64,
    /// A hash of every generated token, in order.
    pub tokens_digest: String,
    /// Every request's generated tokens, in order (not serialized: compare with the digest).
    #[serde(skip)]
    pub generated: Vec<Vec<u32>>,
    /// Throughput relative to the `shortage` mode (filled by [`finish_reports`]).
    pub recovery_vs_shortage: Option<f64>,
    /// Throughput relative to `all-local` (filled by [`finish_reports`]).
    pub fraction_of_ideal: Option<f64>,
    /// Whether the tokens equal `all-local`'s (filled by [`finish_reports`]).
    pub tokens_match_all_local: Option<bool>,
}

/// The model of `cfg`, built once per process and shared by every mode (the last config's
/// model is kept).
pub fn shared_model(cfg: &ModelConfig) -> Result<Arc<Model>, LlmError> {
    static CACHE: OnceLock<Mutex<Option<Arc<Model>>>> = OnceLock::new();
    let cell = CACHE.get_or_init(|| Mutex::new(None));
    let mut g = cell.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = g.as_ref() {
        if m.config() == cfg {
            return Ok(Arc::clone(m));
        }
    }
    let m = Arc::new(Model::new(cfg)?);
    *g = Some(Arc::clone(&m));
    Ok(m)
}

/// Runs the whole workload of `cfg` in one mode and reports it. `progress` is called after
/// every request. The clock stops after the tier writes still in flight have completed, and a
/// failed tier write fails the run.
pub fn run_mode(
    cfg: &BenchConfig,
    spec: &ModeSpec,
    progress: &mut dyn FnMut(Progress),
) -> Result<ModeReport, LlmError> {
    let model;
    let backend = match &cfg.compute {
        Compute::Real => {
            model = shared_model(&cfg.model)?;
            Backend::Real(&model)
        }
        Compute::Replay(a) => Backend::Replay(a),
    };
    let workload = Workload::generate(&cfg.workload, backend.vocab_size());
    let mut engine = Engine::new(
        backend,
        spec.budget_bytes,
        Arc::clone(&spec.tier),
        cfg.block_tokens,
    )?;
    let total = workload.steps.len();
    let mut driver = Driver::new(&workload);
    let mut r = ModeReport {
        mode: spec.name.clone(),
        compute: cfg.compute_label(),
        tier: spec.tier.name().to_string(),
        budget_bytes: spec.budget_bytes,
        block_bytes: block_bytes(cfg),
        working_set_blocks: working_set_blocks(cfg),
        requests: 0,
        requests_per_s: 0.0,
        tokens_per_s: 0.0,
        ttft_p50_ms: 0.0,
        ttft_p99_ms: 0.0,
        prompt_tokens: 0,
        prefill_tokens_computed: 0,
        prefill_tokens_reused: 0,
        reused_local_tokens: 0,
        reused_tier_tokens: 0,
        reused_inflight_tokens: 0,
        bytes_fetched: 0,
        bytes_written: 0,
        write_wait_s: 0.0,
        evictions: 0,
        block_mismatches: 0,
        elapsed_s: 0.0,
        tokens_digest: String::new(),
        generated: Vec::with_capacity(total),
        recovery_vs_shortage: None,
        fraction_of_ideal: None,
        tokens_match_all_local: None,
    };
    let mut ttfts = Vec::with_capacity(total);
    let mut generated_tokens = 0u64;
    let t0 = Instant::now();
    while let Some(req) = driver.next_request() {
        let o = engine.serve(&req.prompt, req.max_new)?;
        driver.complete(&o.tokens);
        r.requests += 1;
        r.prompt_tokens += o.prompt_tokens as u64;
        r.prefill_tokens_computed += o.prefill_computed as u64;
        r.reused_local_tokens += o.reused_local as u64;
        r.reused_tier_tokens += o.reused_tier as u64;
        r.reused_inflight_tokens += o.reused_inflight as u64;
        r.bytes_fetched += o.bytes_fetched;
        r.block_mismatches += o.block_mismatches;
        generated_tokens += o.tokens.len() as u64;
        ttfts.push(o.ttft.as_secs_f64() * 1e3);
        r.generated.push(o.tokens);
        progress(Progress {
            mode: spec.name.clone(),
            done: r.requests,
            total,
        });
    }
    // Writes still in flight belong to this mode's time, and a failed one fails the mode.
    engine.finish()?;
    let elapsed = t0.elapsed().as_secs_f64();
    let counters = engine.cache().counters();
    r.bytes_written = counters.bytes_written;
    r.write_wait_s = counters.write_wait.as_secs_f64();
    r.elapsed_s = elapsed;
    r.requests_per_s = r.requests as f64 / elapsed.max(1e-9);
    r.tokens_per_s = generated_tokens as f64 / elapsed.max(1e-9);
    r.prefill_tokens_reused =
        r.reused_local_tokens + r.reused_tier_tokens + r.reused_inflight_tokens;
    r.evictions = counters.evictions;
    ttfts.sort_by(f64::total_cmp);
    r.ttft_p50_ms = percentile(&ttfts, 0.50);
    r.ttft_p99_ms = percentile(&ttfts, 0.99);
    r.tokens_digest = digest(&r.generated);
    if r.block_mismatches > 0 {
        return Err(LlmError::Corrupt(format!(
            "mode {}: {} fetched blocks differ from what was stored",
            r.mode, r.block_mismatches
        )));
    }
    Ok(r)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// A hex hash of every generated token sequence, in order.
pub fn digest(generated: &[Vec<u32>]) -> String {
    let mut h = Fnv::new();
    for seq in generated {
        h.write_u64(seq.len() as u64);
        for &t in seq {
            h.write_u64(t as u64);
        }
    }
    format!("{:016x}", h.finish())
}

/// Fills the comparisons of every report from the `all-local` and `shortage` entries (when
/// present), and fails if any mode generated other tokens than `all-local`.
pub fn finish_reports(reports: &mut [ModeReport]) -> Result<(), LlmError> {
    let ideal = reports
        .iter()
        .find(|r| r.mode == ALL_LOCAL)
        .map(|r| (r.requests_per_s, r.generated.clone()));
    let short = reports
        .iter()
        .find(|r| r.mode == SHORTAGE)
        .map(|r| r.requests_per_s);
    let mut differing = Vec::new();
    for r in reports.iter_mut() {
        if let Some((ideal_rps, ideal_tokens)) = &ideal {
            r.fraction_of_ideal = Some(r.requests_per_s / ideal_rps);
            let same = &r.generated == ideal_tokens;
            r.tokens_match_all_local = Some(same);
            if !same {
                differing.push(r.mode.clone());
            }
        }
        if let Some(s) = short {
            r.recovery_vs_shortage = Some(r.requests_per_s / s);
        }
    }
    if differing.is_empty() {
        Ok(())
    } else {
        Err(LlmError::TokensDiffer(differing.join(", ")))
    }
}
