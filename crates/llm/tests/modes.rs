//! End-to-end checks of the benchmark with the tiny model: every mode generates the same
//! tokens, shortage recomputes, a tier is really used, fetched blocks equal recomputed ones
//! bit for bit, replay verifies blocks, and the workload is reproducible.

use std::sync::Arc;

use oxmem_kv::{KvTier, NoTier};
use oxmem_llm::workload::{Driver, Step};
use oxmem_llm::{
    BenchConfig, Engine, MemTier, ModeSpec, Model, ModelConfig, Workload, WorkloadConfig,
    block_bytes, compute_blocks, finish_reports, run_mode, working_set_blocks,
};

fn mem_tier(cfg: &BenchConfig) -> Arc<MemTier> {
    Arc::new(MemTier::new(block_bytes(cfg), working_set_blocks(cfg) + 8))
}

#[test]
fn every_mode_generates_the_same_tokens_and_the_tier_replaces_recompute() {
    let cfg = BenchConfig::quick();
    let tier = mem_tier(&cfg);
    let modes = [
        ModeSpec::all_local(&cfg),
        ModeSpec::shortage(&cfg),
        ModeSpec::with_tier("mem", &cfg, tier.clone()),
    ];
    let mut calls = 0;
    let mut reports = Vec::new();
    for m in &modes {
        reports.push(run_mode(&cfg, m, &mut |_| calls += 1).expect("run"));
    }
    assert_eq!(calls, 3 * cfg.workload.requests());
    finish_reports(&mut reports).expect("tokens must match");
    let [local, short, mem] = &reports[..] else {
        unreachable!()
    };
    for r in &reports {
        assert_eq!(r.tokens_match_all_local, Some(true), "{}", r.mode);
        assert_eq!(r.generated.len(), cfg.workload.requests());
        assert_eq!(r.prompt_tokens, local.prompt_tokens);
    }
    // Tokens vary (the random model does not collapse onto one token).
    let mut distinct: Vec<u32> = local.generated.iter().flatten().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > 10,
        "generated tokens barely vary: {distinct:?}"
    );
    // Shortage recomputes what all-local reused, and never touches a tier.
    assert!(short.prefill_tokens_computed > local.prefill_tokens_computed);
    assert_eq!(short.reused_tier_tokens, 0);
    assert_eq!((short.bytes_fetched, short.bytes_written), (0, 0));
    assert!(short.evictions > 0);
    // The tier mode computes exactly what all-local computes: everything evicted comes back.
    assert_eq!(mem.prefill_tokens_computed, local.prefill_tokens_computed);
    assert!(mem.reused_tier_tokens > 0 && mem.bytes_fetched > 0 && mem.bytes_written > 0);
    assert_eq!(
        mem.bytes_fetched,
        (mem.reused_tier_tokens as usize / cfg.block_tokens * block_bytes(&cfg)) as u64
    );
    let st = tier.stats();
    assert!(st.hits > 0 && st.puts > 0);
    assert_eq!(st.bytes_read, mem.bytes_fetched);
    assert_eq!(st.bytes_written, mem.bytes_written);
    assert_eq!(local.evictions, 0);
    assert_eq!(local.fraction_of_ideal, Some(1.0));
    assert_eq!(short.recovery_vs_shortage, Some(1.0));
}

#[test]
fn finish_reports_fails_loudly_when_tokens_differ() {
    let cfg = BenchConfig::quick();
    let a = run_mode(&cfg, &ModeSpec::all_local(&cfg), &mut |_| {}).unwrap();
    let mut b = a.clone();
    b.mode = "broken".into();
    b.generated[3][0] ^= 1;
    let mut reports = vec![a, b];
    let err = finish_reports(&mut reports).unwrap_err();
    assert!(err.to_string().contains("broken"), "{err}");
    assert_eq!(reports[1].tokens_match_all_local, Some(false));
}

#[test]
fn a_fetched_block_equals_a_recomputed_block_bit_for_bit() {
    let mcfg = ModelConfig::tiny();
    let model = Model::new(&mcfg).unwrap();
    let b = 16;
    let bb = mcfg.block_bytes(b);
    let tier = Arc::new(MemTier::new(bb, 1024));
    // A budget of 4 blocks: serving a second long prompt evicts the first one's blocks.
    let mut engine = Engine::new(
        oxmem_llm::Backend::Real(&model),
        Some(4 * bb as u64),
        tier.clone(),
        b,
    )
    .unwrap();
    let p1: Vec<u32> = (0..100u32).map(|i| (i * 37 + 5) % 512).collect();
    let p2: Vec<u32> = (0..100u32).map(|i| (i * 91 + 11) % 512).collect();
    let first = engine.serve(&p1, 5).unwrap();
    assert_eq!(first.prefill_computed, 100);
    engine.serve(&p2, 5).unwrap();
    // Once the background writes are done, p1's 6 full blocks are in the tier; compare each
    // with a fresh recomputation.
    engine.finish().unwrap();
    let keys = engine.block_keys(&p1);
    assert_eq!(keys.len(), 6);
    assert_eq!(tier.contains_prefix(&keys).unwrap(), 6);
    let fresh = compute_blocks(&model, &p1, b).unwrap();
    for (i, key) in keys.iter().enumerate() {
        let mut buf = vec![0u8; bb];
        assert!(tier.get(*key, &mut buf).unwrap());
        assert!(buf == fresh[i], "block {i} differs from its recomputation");
    }
    // Serving p1 again fetches those blocks and gives the same answer as the first time.
    let again = engine.serve(&p1, 5).unwrap();
    assert_eq!(again.tokens, first.tokens);
    assert_eq!(again.reused_tier, 96);
    assert_eq!(again.prefill_computed, 4);
    // And an engine with no memory at all recomputes it to the same answer.
    let mut cold = Engine::new(
        oxmem_llm::Backend::Real(&model),
        Some(0),
        Arc::new(NoTier::new(bb)),
        b,
    )
    .unwrap();
    let third = cold.serve(&p1, 5).unwrap();
    assert_eq!(third.tokens, first.tokens);
    assert_eq!(third.prefill_computed, 100);
}

#[test]
fn a_prompt_ending_on_a_block_boundary_still_computes_its_last_block() {
    let mcfg = ModelConfig::tiny();
    let model = Model::new(&mcfg).unwrap();
    let b = 16;
    let bb = mcfg.block_bytes(b);
    let mut engine = Engine::new(
        oxmem_llm::Backend::Real(&model),
        None,
        Arc::new(NoTier::new(bb)),
        b,
    )
    .unwrap();
    let p: Vec<u32> = (0..64u32).collect();
    let a = engine.serve(&p, 3).unwrap();
    let again = engine.serve(&p, 3).unwrap();
    assert_eq!(again.reused_local, 48);
    assert_eq!(again.prefill_computed, 16);
    assert_eq!(a.tokens, again.tokens);
}

#[test]
fn a_budget_smaller_than_one_request_overflows_temporarily_and_still_answers() {
    let mcfg = ModelConfig::tiny();
    let model = Model::new(&mcfg).unwrap();
    let b = 16;
    let bb = mcfg.block_bytes(b);
    let tier = Arc::new(MemTier::new(bb, 64));
    let mut engine = Engine::new(
        oxmem_llm::Backend::Real(&model),
        Some(2 * bb as u64),
        tier.clone(),
        b,
    )
    .unwrap();
    let p: Vec<u32> = (0..120u32).map(|i| i * 3 % 512).collect();
    let a = engine.serve(&p, 4).unwrap();
    // All 7 blocks were pinned at once (over budget), then shrunk back to 2.
    assert_eq!(engine.cache().counters().peak_bytes, 7 * bb as u64);
    assert_eq!(engine.cache().used_bytes(), 2 * bb as u64);
    let again = engine.serve(&p, 4).unwrap();
    assert_eq!(again.tokens, a.tokens);
    // The evicted blocks come back from the tier or, if their write is still running, from the
    // write-back queue.
    assert_eq!(
        again.reused_tier + again.reused_inflight + again.reused_local,
        112
    );
}

#[test]
fn replay_moves_real_size_blocks_through_the_tier_and_verifies_them() {
    let cfg = BenchConfig::quick_replay();
    assert_eq!(block_bytes(&cfg), 16 * 131_072);
    let tier = mem_tier(&cfg);
    let modes = [
        ModeSpec::all_local(&cfg),
        ModeSpec::shortage(&cfg),
        ModeSpec::with_tier("mem", &cfg, tier.clone()),
    ];
    let mut reports: Vec<_> = modes
        .iter()
        .map(|m| run_mode(&cfg, m, &mut |_| {}).unwrap())
        .collect();
    finish_reports(&mut reports).unwrap();
    for r in &reports {
        assert_eq!(r.compute, "simulated h100-8b");
        assert_eq!(r.block_mismatches, 0);
    }
    assert!(reports[1].prefill_tokens_computed > reports[0].prefill_tokens_computed);
    assert!(reports[2].bytes_fetched > 0);
    assert_eq!(
        reports[2].prefill_tokens_computed,
        reports[0].prefill_tokens_computed
    );
    // Modelled decode steps take time (6 ms each): the run cannot be faster than that.
    let decode_steps = (cfg.workload.users * cfg.workload.rounds * (cfg.workload.answer_tokens - 1)
        + cfg.workload.doc_questions * (cfg.workload.doc_answer_tokens - 1))
        as f64;
    for r in &reports {
        assert!(
            r.elapsed_s > decode_steps * 0.0059,
            "{}: {}s",
            r.mode,
            r.elapsed_s
        );
    }
}

/// A tier that corrupts one byte of every block it returns.
#[derive(Debug)]
struct Corrupting(MemTier);

impl KvTier for Corrupting {
    fn name(&self) -> &str {
        "corrupting"
    }
    fn block_bytes(&self) -> usize {
        self.0.block_bytes()
    }
    fn put_many(&self, blocks: &[(oxmem_kv::BlockKey, &[u8])]) -> Result<(), oxmem_kv::KvError> {
        self.0.put_many(blocks)
    }
    fn get_many(
        &self,
        keys: &[oxmem_kv::BlockKey],
        out: &mut [&mut [u8]],
    ) -> Result<Vec<bool>, oxmem_kv::KvError> {
        let found = self.0.get_many(keys, out)?;
        for b in out.iter_mut() {
            b[100] ^= 0x40;
        }
        Ok(found)
    }
    fn contains_prefix(&self, keys: &[oxmem_kv::BlockKey]) -> Result<usize, oxmem_kv::KvError> {
        self.0.contains_prefix(keys)
    }
    fn stats(&self) -> oxmem_kv::KvStats {
        self.0.stats()
    }
}

#[test]
fn replay_fails_loudly_on_a_corrupted_block() {
    let cfg = BenchConfig::quick_replay();
    let tier = Arc::new(Corrupting(MemTier::new(block_bytes(&cfg), 1024)));
    let err = run_mode(&cfg, &ModeSpec::with_tier("bad", &cfg, tier), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("differ"), "{err}");
}

#[test]
fn the_workload_is_reproducible_from_its_seed() {
    let cfg = WorkloadConfig::quick();
    let a = Workload::generate(&cfg, 512);
    let b = Workload::generate(&cfg, 512);
    assert_eq!(a, b);
    let c = Workload::generate(
        &WorkloadConfig {
            seed: cfg.seed + 1,
            ..cfg.clone()
        },
        512,
    );
    assert_ne!(a.system_prompt, c.system_prompt);
    assert_ne!(a.steps, c.steps);
    assert_eq!(a.steps.len(), cfg.requests());
    // Round-robin: user u's round r is request r * users + u (doc questions in between).
    let chats: Vec<(usize, usize)> = a
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Chat { user, round, .. } => Some((*round, *user)),
            Step::Doc { .. } => None,
        })
        .collect();
    let mut sorted = chats.clone();
    sorted.sort();
    assert_eq!(chats, sorted);
    // Histories grow: a user's next prompt extends its previous prompt and answer.
    let mut d = Driver::new(&a);
    let mut last: Vec<Option<Vec<u32>>> = vec![None; cfg.users];
    while let Some(req) = d.next_request() {
        let answer: Vec<u32> = vec![1; req.max_new];
        if let Step::Chat { user, .. } = &a.steps[req.index] {
            if let Some(prev) = &last[*user] {
                assert!(req.prompt.starts_with(prev));
            }
            let mut full = req.prompt.clone();
            full.extend_from_slice(&answer);
            last[*user] = Some(full);
        }
        d.complete(&answer);
    }
}
