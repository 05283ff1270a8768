//! The seeded benchmark workload: multi-round conversations sharing a system prompt, and
//! questions about long documents.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The shape of the workload. Every token id is drawn from a ChaCha8 stream seeded by
/// [`seed`](WorkloadConfig::seed): the same config gives the same prompts in every process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadConfig {
    /// Seed of every random token.
    pub seed: u64,
    /// Conversations (users) served round-robin.
    pub users: usize,
    /// Tokens of the system prompt every conversation and document question starts with.
    pub system_prompt_tokens: usize,
    /// Rounds per conversation.
    pub rounds: usize,
    /// Tokens of the first question of each conversation (its long opening context, e.g. a
    /// pasted file).
    pub first_question_tokens: usize,
    /// Tokens of each later question.
    pub question_tokens: usize,
    /// Tokens generated per conversation round (appended to the history).
    pub answer_tokens: usize,
    /// Documents for the long-document questions.
    pub documents: usize,
    /// Tokens per document.
    pub document_tokens: usize,
    /// Questions about documents (each about a random document), interleaved evenly with the
    /// conversation rounds.
    pub doc_questions: usize,
    /// Tokens per document question.
    pub doc_question_tokens: usize,
    /// Tokens generated per document question.
    pub doc_answer_tokens: usize,
}

impl Default for WorkloadConfig {
    /// The workload for the default model on two CPU cores (see the crate docs for timings).
    fn default() -> Self {
        WorkloadConfig {
            seed: 42,
            users: 8,
            system_prompt_tokens: 256,
            rounds: 5,
            first_question_tokens: 512,
            question_tokens: 32,
            answer_tokens: 8,
            documents: 4,
            document_tokens: 768,
            doc_questions: 16,
            doc_question_tokens: 32,
            doc_answer_tokens: 8,
        }
    }
}

impl WorkloadConfig {
    /// A small workload for tests and CI (with [`crate::ModelConfig::tiny`]).
    pub fn quick() -> Self {
        WorkloadConfig {
            seed: 7,
            users: 4,
            system_prompt_tokens: 32,
            rounds: 3,
            first_question_tokens: 64,
            question_tokens: 12,
            answer_tokens: 4,
            documents: 2,
            document_tokens: 96,
            doc_questions: 4,
            doc_question_tokens: 8,
            doc_answer_tokens: 3,
        }
    }

    /// Number of requests.
    pub fn requests(&self) -> usize {
        self.users * self.rounds + self.doc_questions
    }

    /// The longest prompt plus its answer (the largest KV one request holds).
    pub fn max_sequence_tokens(&self) -> usize {
        let chat = self.chat_prompt_len(self.rounds.saturating_sub(1)) + self.answer_tokens;
        let doc = self.system_prompt_tokens
            + self.document_tokens
            + self.doc_question_tokens
            + self.doc_answer_tokens;
        if self.doc_questions > 0 {
            chat.max(doc)
        } else {
            chat
        }
    }

    /// Prompt length of a conversation's round `r` (0-based).
    fn chat_prompt_len(&self, r: usize) -> usize {
        if r == 0 {
            self.system_prompt_tokens + self.first_question_tokens
        } else {
            self.chat_prompt_len(r - 1) + self.answer_tokens + self.question_tokens
        }
    }

    /// Distinct full KV blocks of `block_tokens` the workload produces (its working set): the
    /// system prompt's blocks once, each conversation's blocks up to its last prompt, each
    /// document's blocks and the blocks its questions complete. Blocks never hold decode
    /// tokens, so this is a function of the config alone.
    pub fn working_set_blocks(&self, block_tokens: usize) -> u64 {
        let b = block_tokens.max(1);
        let sys = self.system_prompt_tokens / b;
        let mut total = sys;
        if self.users > 0 && self.rounds > 0 {
            total += self.users * (self.chat_prompt_len(self.rounds - 1) / b - sys);
        }
        if self.doc_questions > 0 {
            let docs_used = self.documents.min(self.doc_questions);
            let doc_end = self.system_prompt_tokens + self.document_tokens;
            total += docs_used * (doc_end / b - sys);
            total += self.doc_questions * ((doc_end + self.doc_question_tokens) / b - doc_end / b);
        }
        total as u64
    }
}

/// One request of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Conversation `user`'s round `round`: append `question` to its history, answer, append
    /// the answer.
    Chat {
        /// The conversation.
        user: usize,
        /// Its round (0-based).
        round: usize,
        /// The new question's tokens.
        question: Vec<u32>,
    },
    /// A question about document `doc`: prompt = system prompt + document + question.
    Doc {
        /// The document.
        doc: usize,
        /// The question's tokens.
        question: Vec<u32>,
    },
}

/// The generated workload: shared texts and the ordered requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The shared system prompt.
    pub system_prompt: Vec<u32>,
    /// The documents.
    pub documents: Vec<Vec<u32>>,
    /// Requests in the order they are served.
    pub steps: Vec<Step>,
    /// Tokens generated per conversation round.
    pub answer_tokens: usize,
    /// Tokens generated per document question.
    pub doc_answer_tokens: usize,
}

impl Workload {
    /// Generates the workload of `cfg` with token ids in `0..vocab`.
    ///
    /// Conversations are interleaved round-robin (every user's round 0, then every user's
    /// round 1, ...), so a user's history has gone cold by its next turn; document questions
    /// are spread evenly between the conversation requests.
    pub fn generate(cfg: &WorkloadConfig, vocab: usize) -> Workload {
        let vocab = vocab.max(1) as u32;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let toks = |n: usize, rng: &mut ChaCha8Rng| -> Vec<u32> {
            (0..n).map(|_| rng.random_range(0..vocab)).collect()
        };
        let system_prompt = toks(cfg.system_prompt_tokens, &mut rng);
        let documents: Vec<Vec<u32>> = (0..cfg.documents)
            .map(|_| toks(cfg.document_tokens, &mut rng))
            .collect();
        let mut chat = Vec::with_capacity(cfg.users * cfg.rounds);
        for round in 0..cfg.rounds {
            for user in 0..cfg.users {
                let n = if round == 0 {
                    cfg.first_question_tokens
                } else {
                    cfg.question_tokens
                };
                chat.push(Step::Chat {
                    user,
                    round,
                    question: toks(n, &mut rng),
                });
            }
        }
        let mut docs = Vec::with_capacity(cfg.doc_questions);
        if cfg.documents > 0 {
            for i in 0..cfg.doc_questions {
                // Every document is asked about at least once, then at random.
                let doc = if i < cfg.documents {
                    i
                } else {
                    rng.random_range(0..cfg.documents)
                };
                docs.push(Step::Doc {
                    doc,
                    question: toks(cfg.doc_question_tokens, &mut rng),
                });
            }
        }
        // Merge evenly: after chat request i, emit doc questions up to i * docs / chats.
        let mut steps = Vec::with_capacity(chat.len() + docs.len());
        let (nc, nd) = (chat.len(), docs.len());
        let mut docs = docs.into_iter();
        let mut emitted = 0;
        for (i, c) in chat.into_iter().enumerate() {
            steps.push(c);
            // i < nc here, so nc > 0.
            let due = (i + 1) * nd / nc;
            while emitted < due {
                if let Some(d) = docs.next() {
                    steps.push(d);
                }
                emitted += 1;
            }
        }
        steps.extend(docs);
        Workload {
            system_prompt,
            documents,
            steps,
            answer_tokens: cfg.answer_tokens,
            doc_answer_tokens: cfg.doc_answer_tokens,
        }
    }
}

/// Replays a [`Workload`]: builds each request's prompt from the conversation histories and
/// appends the answers the caller generated.
#[derive(Debug)]
pub struct Driver<'w> {
    workload: &'w Workload,
    histories: Vec<Vec<u32>>,
    next: usize,
}

/// One request to serve: its prompt and how many tokens to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Index in [`Workload::steps`].
    pub index: usize,
    /// The whole prompt.
    pub prompt: Vec<u32>,
    /// Tokens to generate.
    pub max_new: usize,
}

impl<'w> Driver<'w> {
    /// A driver at the first request.
    pub fn new(workload: &'w Workload) -> Self {
        Driver {
            workload,
            histories: Vec::new(),
            next: 0,
        }
    }

    /// The next request, or `None` when the workload is done.
    pub fn next_request(&mut self) -> Option<Request> {
        let step = self.workload.steps.get(self.next)?;
        let index = self.next;
        match step {
            Step::Chat { user, question, .. } => {
                if self.histories.len() <= *user {
                    self.histories.resize(*user + 1, Vec::new());
                }
                let h = &mut self.histories[*user];
                if h.is_empty() {
                    h.extend_from_slice(&self.workload.system_prompt);
                }
                h.extend_from_slice(question);
                Some(Request {
                    index,
                    prompt: h.clone(),
                    max_new: self.workload.answer_tokens,
                })
            }
            Step::Doc { doc, question } => {
                let mut p = self.workload.system_prompt.clone();
                p.extend_from_slice(&self.workload.documents[*doc]);
                p.extend_from_slice(question);
                Some(Request {
                    index,
                    prompt: p,
                    max_new: self.workload.doc_answer_tokens,
                })
            }
        }
    }

    /// Records the answer to the request [`next_request`](Driver::next_request) returned last
    /// (a conversation appends it to its history) and moves on.
    pub fn complete(&mut self, answer: &[u32]) {
        if let Some(Step::Chat { user, .. }) = self.workload.steps.get(self.next) {
            self.histories[*user].extend_from_slice(answer);
        }
        self.next += 1;
    }
}
