/*
 * engine.h - the metastate engine: RWKV-7 ("x070") and Meta-State (MS-v0)
 * inference on the CPU, the RWKV World tokenizer and the sampler.
 *
 * This is the only header of engine/ that other folders include. The engine
 * knows nothing of HTTP or of the OpenAI wire format.
 *
 * Conventions, valid for every function below unless its comment says
 * otherwise:
 *  - Functions that can fail return ms_status (MS_OK == 0) and, when `err` is
 *    not NULL, fill it with a message that names the file/tensor and the
 *    problem, ready to show to a user. Nothing here calls exit() or abort().
 *  - Objects returned by *_new / *_load / *_open are owned by the caller and
 *    released with the matching *_free / *_close (which accept NULL).
 *  - Thread-safety: an ms_model, ms_tokenizer and ms_tensorfile are immutable
 *    after loading and may be shared by any number of threads. An ms_state,
 *    ms_ctx, ms_sampler or ms_detok belongs to one thread at a time.
 *  - Token ids are int32_t. Id 0 is end-of-text.
 */
#ifndef METASTATE_ENGINE_H
#define METASTATE_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================== */
/* Errors                                                                    */
/* ======================================================================== */

typedef enum {
    MS_OK = 0,
    MS_ERR_IO,          /* open/read/write/mmap failed (errno text in msg) */
    MS_ERR_FORMAT,      /* not a file of the expected format, truncated, bad header */
    MS_ERR_MISSING,     /* a required tensor is absent (its name is in msg) */
    MS_ERR_SHAPE,       /* a tensor has the wrong shape (name, expected, found) */
    MS_ERR_DTYPE,       /* unsupported element type */
    MS_ERR_UNSUPPORTED, /* a model variant we do not run (RWKV-6, DeepEmbed...) */
    MS_ERR_NOMEM,
    MS_ERR_INVALID,     /* bad argument (token id out of range, bad size...) */
    MS_ERR_MISMATCH     /* data made for another model (state of other shape...) */
} ms_status;

typedef struct ms_error {
    ms_status code;
    char msg[512];
} ms_error;

/* Static text for a status code ("format error", ...). Never NULL. */
const char *ms_status_str(ms_status s);

/* ======================================================================== */
/* Tensor files: safetensors and PyTorch .pth (zip + pickle)                 */
/* ======================================================================== */

typedef enum { MS_F32 = 0, MS_F16 = 1, MS_BF16 = 2 } ms_dtype;

/* fp32 -> bf16 rounded to nearest even (NaN stays NaN): the one rounding
 * every bf16 the engine or a tool writes goes through. Reentrant. */
uint16_t ms_bf16_from_f32(float f);

#define MS_MAX_DIMS 4

/* A view of one tensor. `data` points into the mapped file (or caller memory
 * when writing); it is little-endian, row-major and may be unaligned. */
typedef struct ms_tensor {
    const char *name;
    ms_dtype dtype;
    int ndim;
    int64_t shape[MS_MAX_DIMS];
    const void *data;
    size_t nbytes;
} ms_tensor;

typedef struct ms_tensorfile ms_tensorfile;

/* Maps `path` read-only and indexes its tensors. The format (safetensors or
 * torch zip) is detected from the content, not from the name. Fails with
 * MS_ERR_FORMAT for truncated files or bad headers, MS_ERR_DTYPE for element
 * types other than F32/F16/BF16. */
ms_status ms_tensorfile_open(const char *path, ms_tensorfile **out, ms_error *err);
void ms_tensorfile_close(ms_tensorfile *tf);

/* The file's path as given to open (owned by tf). */
const char *ms_tensorfile_path(const ms_tensorfile *tf);
/* Tensors in file order; views stay valid until ms_tensorfile_close. */
size_t ms_tensorfile_count(const ms_tensorfile *tf);
const ms_tensor *ms_tensorfile_at(const ms_tensorfile *tf, size_t i);
/* NULL when absent. */
const ms_tensor *ms_tensorfile_find(const ms_tensorfile *tf, const char *name);
/* safetensors "__metadata__" value, or NULL (always NULL for .pth). */
const char *ms_tensorfile_meta(const ms_tensorfile *tf, const char *key);

/* Number of elements of t (product of its shape; 1 for a scalar). */
int64_t ms_tensor_numel(const ms_tensor *t);
/* Converts t's elements to fp32 into dst (ms_tensor_numel(t) floats). */
void ms_tensor_to_f32(const ms_tensor *t, float *dst);

/* Writes a safetensors file to `f`: header (8-byte aligned) then the tensors
 * in the given order. `meta` is NULL or a NULL-terminated list of key, value
 * strings for "__metadata__". Does not close f. */
ms_status ms_safetensors_write(FILE *f, const ms_tensor *tensors, size_t n,
                               const char *const *meta, ms_error *err);

/* Writes a PyTorch-loadable .pth (torch.save zip format, pickle protocol 2,
 * an OrderedDict name -> tensor) to `path`. Used for fixtures and exports. */
ms_status ms_pth_write(const char *path, const ms_tensor *tensors, size_t n,
                       ms_error *err);

/* ======================================================================== */
/* Model                                                                     */
/* ======================================================================== */

/* Every field is derived from tensor shapes at load (SPEC 1.1). */
typedef struct ms_config {
    int n_layer;    /* L */
    int n_embd;     /* C */
    int n_head;     /* H */
    int head_size;  /* N, C == H * N */
    int vocab_size; /* V (rows of emb.weight) */
    int dim_ffn;    /* F (may differ per layer after expansion: max here) */
    int d_decay, d_aaa, d_mv, d_gate; /* LoRA ranks Dw, Da, Dv, Dg */
    int meta_state; /* 1 when any blocks.{l}.ffn.ms_gamma is present */
    ms_dtype file_dtype; /* dtype of emb.weight in the file */
} ms_config;

typedef struct ms_model ms_model;

/* How the big matrices (projections, FFN, head, embedding) are held. AUTO
 * keeps the file's precision: bf16 files stay bf16 (exact), others fp32.
 * I8: int8 per (row, 64 inputs); Q4: 4-bit symmetric, one fp16 scale per
 * (row, 64 inputs), embedding held as int8. Both quantize the activations
 * to int8 per 64 inputs for their products. LoRA matrices are int8 with
 * I8 and Q4, fp32 with F32, bf16 otherwise. */
typedef enum {
    MS_WEIGHTS_AUTO = 0,
    MS_WEIGHTS_F32,
    MS_WEIGHTS_BF16,
    MS_WEIGHTS_I8,
    MS_WEIGHTS_Q4
} ms_weights;

/* Arithmetic of the products of bf16 weights: F32 (default) widens the
 * weights exactly and multiplies fp32 activations; BF16 rounds the
 * activations to bf16 and uses bf16 dot products (faster, not exact).
 * Ignored for other formats. */
typedef enum { MS_COMPUTE_F32 = 0, MS_COMPUTE_BF16 } ms_compute;

typedef struct ms_load_opts {
    /* threads for loading and products; 0 = one per core (process-wide, first load sets it) */
    int n_threads;
    ms_weights weights; /* in-memory weight format */
    ms_compute compute; /* bf16 weights' product arithmetic */
} ms_load_opts;

/* Parses "auto", "f32", "bf16", "int8", "q4"; -1 when unknown. */
int ms_weights_parse(const char *s);
/* Parses "f32", "bf16"; -1 when unknown. */
int ms_compute_parse(const char *s);
/* Name of the kernel variant in use ("amx", "avx512", "avxvnni", "avx2", "scalar"). */
const char *ms_kernel_isa(void);

/* Loads a checkpoint (.pth or safetensors, BlinkDL tensor names). Weights are
 * converted once to the in-memory format, on the engine's threads (their
 * number gives the same bytes); all arithmetic is fp32. The file is
 * unmapped before returning. opts may be NULL. Errors name the file and,
 * where relevant, the tensor. */
ms_status ms_model_load(const char *path, const ms_load_opts *opts,
                        ms_model **out, ms_error *err);
/* Same, from an already opened tensor file (tf stays owned by the caller and
 * may be closed after this returns). */
ms_status ms_model_from_tensors(const ms_tensorfile *tf, const ms_load_opts *opts,
                                ms_model **out, ms_error *err);
void ms_model_free(ms_model *m);

const ms_config *ms_model_config(const ms_model *m);
/* 32-byte SHA-256 over the weights (sorted names, shapes, fp32 values), so a
 * .pth and a safetensors file of the same weights share a fingerprint. */
const uint8_t *ms_model_fingerprint(const ms_model *m);
/* 1 when a state saved under the model with fingerprint fp is valid for m:
 * fp is m's own, or one of the models m was grown from by `metastate expand`
 * (parameter tokens and SSE heads with zero gain keep states exact, SPEC
 * 3.4), as listed in its "ms_ancestors" metadata. */
int ms_model_state_compatible(const ms_model *m, const uint8_t fp[32]);
/* ---- Expansion (SPEC 3.4): grow a checkpoint keeping its function ---- */

typedef struct ms_sse_head {
    int layer, head;
} ms_sse_head;

typedef struct ms_expand_opts {
    int add_param_tokens;         /* S1: FFN key rows / value columns per layer, 0..2^20 */
    int key_init_random;          /* new key rows random at the existing rows' RMS, else zero */
    uint64_t seed;                /* for key_init_random */
    const ms_sse_head *sse_heads; /* S2: heads joining their layer's SSE with gain 0 */
    size_t n_sse_heads;
} ms_expand_opts;

/* Reads the checkpoint at in, writes it grown as o says to out (safetensors,
 * the same dtypes), with "ms_ancestors" metadata = in's ancestors plus in's
 * own fingerprint, so states made on in stay valid on out. MS_ERR_INVALID
 * for a head or layer the model does not have, or a count out of range. */
ms_status ms_expand(const char *in, const char *out, const ms_expand_opts *o, ms_error *err);

/* Bytes of weights as held in memory, and bytes read per generated token. */
size_t ms_model_weight_bytes(const ms_model *m);
size_t ms_model_bytes_per_token(const ms_model *m);

/* ======================================================================== */
/* Recurrent state                                                           */
/* ======================================================================== */

/* One sequence's whole memory: per layer l, contiguous fp32
 *   att_shift[C] | S[H][N][N] (S[h][i][j]: i = value, j = key) | ffn_shift[C]
 * i.e. L*C*(N+2) floats, whatever the sequence length. */
typedef struct ms_state ms_state;

/* A zeroed state (the start of every sequence) for model m; NULL on OOM.
 * The state does not keep a pointer to m. */
ms_state *ms_state_new(const ms_model *m);
void ms_state_free(ms_state *s);
void ms_state_reset(ms_state *s);
/* dst and src must come from models of the same config. */
void ms_state_copy(ms_state *dst, const ms_state *src);
/* Bytes of one state of model m (L*C*(N+2) floats): what every sequence and
 * every session costs, known before any state is made. */
size_t ms_state_bytes(const ms_model *m);
/* Raw access in the layout above (for serialization). */
size_t ms_state_nfloats(const ms_state *s);
float *ms_state_data(ms_state *s);
const float *ms_state_cdata(const ms_state *s);
float *ms_state_att_shift(ms_state *s, int layer); /* C floats */
float *ms_state_wkv(ms_state *s, int layer);       /* H*N*N floats */
float *ms_state_ffn_shift(ms_state *s, int layer); /* C floats */

/* Loads "<prefix><i>.att_x_prev" (C), "<prefix><i>.att_kv" (H,N,N) and
 * "<prefix><i>.ffn_x_prev" (C) for every layer from tf into s; e.g. prefix
 * "state." or "in.state.". Any dtype; shapes are checked. */
ms_status ms_state_load_tensors(ms_state *s, const ms_tensorfile *tf,
                                const char *prefix, ms_error *err);
/* Loads a state-tuning file (SPEC 4.3) as an initial state: every layer's
 * "blocks.<i>.att.time_state" (H, N, N) as-is (canonical layout, no
 * transpose), "blocks.<i>.att.ts_state" / "blocks.<i>.ffn.ts_state" (C
 * elements) into att_shift / ffn_shift when present, else zero. Other tensors
 * (a model merged in) are ignored. Fails unless time_state is there for
 * exactly the model's L layers with fitting shapes; s is then unchanged. */
ms_status ms_state_load_time_state(ms_state *s, const ms_tensorfile *tf, ms_error *err);
/* Writes a safetensors file: the `extra` tensors first, then the state as
 * "state.<i>.att_x_prev|att_kv|ffn_x_prev", all F32. */
ms_status ms_state_write_safetensors(FILE *f, const ms_state *s,
                                     const ms_tensor *extra, size_t n_extra,
                                     ms_error *err);

/* ======================================================================== */
/* Forward pass                                                              */
/* ======================================================================== */

/* Scratch buffers for running one sequence at a time: every activation
 * buffer, sized for `max_chunk` tokens per internal step, allocated once. */
typedef struct ms_ctx ms_ctx;

/* max_chunk = 0 picks a default (128). NULL on OOM. The ctx keeps a pointer to
 * m: free the ctx before the model. */
ms_ctx *ms_ctx_new(const ms_model *m, int max_chunk);
void ms_ctx_free(ms_ctx *c);

/* Runs tokens[0..n) from state s (updated in place), as prefill: projections
 * as GEMMs over chunks of up to max_chunk tokens (chunks of up to 16 tokens
 * use the matrix-vector kernels), the WKV recurrence per token. logits: NULL (none wanted), V floats (after the last token), or n*V
 * floats when all_logits (row t = after token t). Fails with MS_ERR_INVALID
 * for an id >= V; s is then unchanged. */
ms_status ms_forward(ms_ctx *c, ms_state *s, const int32_t *tokens, size_t n,
                     float *logits, int all_logits, ms_error *err);

/* One token, RNN mode (matrix-vector products). logits: NULL or V floats. */
ms_status ms_step(ms_ctx *c, ms_state *s, int32_t token, float *logits,
                  ms_error *err);

/* One token for each of n independent sequences at once (decoding for many
 * sessions): every weight matrix is read once for the whole batch, so n
 * sequences cost far less than n calls of ms_step. states[i] advances by
 * tokens[i]; logits[i] is NULL or V floats. The states must be distinct.
 * Results are bit for bit those of ms_step on each sequence alone. */
ms_status ms_step_batch(ms_ctx *c, ms_state *const *states, const int32_t *tokens, size_t n,
                        float *const *logits, ms_error *err);
/* A prompt chunk for ms_forward_mixed: n tokens of the sequence in state;
 * logits NULL or V floats for its last token; ckpt NULL or a state of the
 * same model (not in the call otherwise) that receives the sequence's
 * state before the last token: a session's checkpoint, with no pass of its
 * own (bit for bit ms_forward's one token short, but where sgemm runs the
 * chunk: the portable kernels' f32 / exact bf16 chunks of over 16 tokens). */
typedef struct {
    ms_state *state;
    const int32_t *tokens;
    size_t n;
    float *logits;
    ms_state *ckpt;
} ms_chunk;
#define MS_MAX_CHUNKS 16 /* chunks per ms_forward_mixed call */

/* ms_step_batch plus n_chunks prompt chunks of other sequences in the same
 * pass over the weights: prompts being read ride along with the sequences
 * being decoded, and with each other. Every state gets, bit for bit, what
 * ms_step_batch and ms_forward would give it. All states must be distinct
 * (a chunk's state is checked: MS_ERR_INVALID), n_chunks <= MS_MAX_CHUNKS,
 * and the chunks' tokens + min(n, 16) must fit the context's max_chunk
 * rows. */
ms_status ms_forward_mixed(ms_ctx *c, ms_state *const *states, const int32_t *tokens, size_t n,
                           float *const *logits, const ms_chunk *chunks, size_t n_chunks,
                           ms_error *err);

/* ======================================================================== */
/* Tokenizer (RWKV World vocabulary, greedy longest match)                   */
/* ======================================================================== */

typedef struct ms_tokenizer ms_tokenizer;

/* Parses a vocabulary in the rwkv_vocab_v20230424.txt format
 * ("<id> <python str or bytes literal> <byte length>" per line). */
ms_status ms_tokenizer_load(const char *path, ms_tokenizer **out, ms_error *err);
/* A byte-level vocabulary: id b+1 is byte b (0..255), id 0 end-of-text. */
ms_tokenizer *ms_tokenizer_new_bytes(void);
void ms_tokenizer_free(ms_tokenizer *t);

/* 1 + the largest id in the vocabulary. */
int32_t ms_tokenizer_n_ids(const ms_tokenizer *t);
/* Encodes len bytes; writes at most cap ids and returns how many the whole
 * text needs (call again with a larger buffer when that exceeds cap). */
size_t ms_tokenize(const ms_tokenizer *t, const char *text, size_t len,
                   int32_t *ids, size_t cap);
/* The bytes of one id (not NUL-terminated), or NULL for id 0 and unknown
 * ids. Valid as long as t. */
const char *ms_token_bytes(const ms_tokenizer *t, int32_t id, size_t *len);

/* Streaming decoder: holds back bytes until they form complete UTF-8, so a
 * character is never split between two pieces of output. */
typedef struct ms_detok {
    char pending[256];
    size_t n_pending;
} ms_detok;

void ms_detok_init(ms_detok *d);
/* Appends id's bytes and moves to out every byte that is ready: the pending
 * bytes when they are valid UTF-8, all of them (invalid ones replaced by
 * U+FFFD) when they can no longer become valid or exceed the buffer. Returns
 * the number of bytes written; out must hold at least 512 bytes. */
size_t ms_detok_push(ms_detok *d, const ms_tokenizer *t, int32_t id, char *out);
/* Flushes what is still held (invalid bytes as U+FFFD) at end of output. */
size_t ms_detok_flush(ms_detok *d, char *out);

/* ======================================================================== */
/* Sampler (SPEC 2.4)                                                        */
/* ======================================================================== */

typedef struct ms_sampler_params {
    float temperature;       /* 0 = greedy */
    float top_p;             /* nucleus on untempered probabilities; 0 = greedy */
    int top_k;               /* 0 = off */
    float presence_penalty;
    float frequency_penalty;
    float penalty_decay;     /* occurrence *= decay after every token */
    uint64_t seed;
} ms_sampler_params;

/* The SPEC 2.4 defaults: T 1.0, top_p 0.3, top_k 0, presence 0.5,
 * frequency 0.5, decay 0.996, seed 0. */
ms_sampler_params ms_sampler_defaults(void);

typedef struct ms_sampler ms_sampler;

/* Per-sequence sampler over n_vocab logits (buffers allocated here, once). */
ms_sampler *ms_sampler_new(int32_t n_vocab, const ms_sampler_params *p);
void ms_sampler_free(ms_sampler *s);
/* Forgets penalties and re-seeds, for a new reply. */
void ms_sampler_reset(ms_sampler *s, const ms_sampler_params *p);
/* Adds bias to id's logit before every draw (-INFINITY bans it). */
void ms_sampler_set_bias(ms_sampler *s, int32_t id, float bias);
/* Marks id as exempt from penalty growth: drawing it adds 0, not 1, to its
 * occurrence count (the pip PIPELINE does so for spaces, tabs and digits). */
void ms_sampler_set_exempt(ms_sampler *s, int32_t id);
/* Applies bias and penalties to logits (modified in place), draws a token,
 * and records it in the penalty table. */
int32_t ms_sampler_sample(ms_sampler *s, float *logits);
/* out[i] = ms_sampler_sample(s[i], logits[i]) for i < n, the draws spread
 * over the engine's threads; the same tokens as n sequential calls. The n
 * samplers and logits buffers must be distinct. */
void ms_sampler_sample_batch(ms_sampler *const *s, float *const *logits, size_t n, int32_t *out);


/* Log-probabilities under the model's own distribution: the log-softmax of
 * raw logits (before bias, penalties, temperature, masks), in double
 * precision. Returns token's log-probability; when k > 0 also writes the k
 * (<= n) most likely ids, highest first (ties: lower id), and theirs to
 * top_ids/top_lp. Allocates nothing; k is meant to be small (<= 20). */
float ms_logprobs(const float *logits, int32_t n, int32_t token, int k, int32_t *top_ids,
                  float *top_lp);

/* ======================================================================== */
/* Constrained decoding (constraint.c)                                       */
/* ======================================================================== */

/* A byte-level grammar for a JSON document (or text-or-prefix for tool calls),
 * built node by node; node ids are int32_t, -1 reports a failed step (bad
 * argument or out of memory), and a failed step makes ms_grammar_finish
 * fail. Immutable after ms_grammar_finish: then shareable by threads. No
 * whitespace is produced outside strings. */
typedef struct ms_grammar ms_grammar;

ms_grammar *ms_grammar_new(void);
void ms_grammar_free(ms_grammar *g);
/* One of n byte strings (each 1..4096 bytes), e.g. a JSON enum's texts. */
int32_t ms_grammar_literals(ms_grammar *g, const char *const *lits, const size_t *lens, size_t n);
int32_t ms_grammar_literal(ms_grammar *g, const char *s, size_t len);
/* A JSON string of min_len..max_len code points (max_len -1: no bound). */
int32_t ms_grammar_string(ms_grammar *g, int32_t min_len, int32_t max_len);
/* A JSON number (integer: no fraction), inclusive bounds when has_*; at most
 * 15 integral and 6 fraction digits, no exponent. */
int32_t ms_grammar_number(ms_grammar *g, int integer, int has_min, double min, int has_max,
                          double max);
/* items[0], then items[1], ... (n >= 1). */
int32_t ms_grammar_seq(ms_grammar *g, const int32_t *items, size_t n);
/* "[" item ("," item)* "]" with min..max items (max -1: no bound). */
int32_t ms_grammar_array(ms_grammar *g, int32_t item, int32_t min_items, int32_t max_items);
/* A generic object: any string keys, values of node `value`. */
int32_t ms_grammar_object(ms_grammar *g, int32_t value);
/* One of the alternatives, chosen by the first byte: their first bytes must
 * be disjoint (checked by ms_grammar_finish, MS_ERR_UNSUPPORTED otherwise). */
int32_t ms_grammar_alt(ms_grammar *g, const int32_t *alts, size_t n);
/* One of n literals (none a prefix of another), then the node paired with
 * it: e.g. a tool's quoted name, then its arguments. */
int32_t ms_grammar_switch(ms_grammar *g, const char *const *lits, const size_t *lens,
                          const int32_t *next, size_t n);
/* Free text, unless the text starts with prefix: then child follows. */
int32_t ms_grammar_text_or(ms_grammar *g, const char *prefix, size_t len, int32_t child);
/* Any JSON value (objects, arrays, strings, numbers, true/false/null). */
int32_t ms_grammar_any(ms_grammar *g);
/* A placeholder for recursion, later bound with ms_grammar_define. */
int32_t ms_grammar_ref(ms_grammar *g);
int ms_grammar_define(ms_grammar *g, int32_t ref, int32_t target);
/* Resolves references, checks the grammar (every part can be completed,
 * alternatives are distinguishable), and makes root the document. */
ms_status ms_grammar_finish(ms_grammar *g, int32_t root, ms_error *err);

/* The vocabulary as byte tries for the allowed-token walk, built once per
 * tokenizer (n_vocab = model rows, the mask size); immutable, shareable.
 * Keeps pointers into tok: free it before the tokenizer. NULL on OOM. */
typedef struct ms_vocab_index ms_vocab_index;
ms_vocab_index *ms_vocab_index_new(const ms_tokenizer *tok, int32_t n_vocab);
void ms_vocab_index_free(ms_vocab_index *vi);
int32_t ms_vocab_index_size(const ms_vocab_index *vi);

/* Per-sequence matcher of one finished grammar (both must outlive it);
 * scratch allocated here once, so masks and advances allocate nothing. */
typedef struct ms_gmatch ms_gmatch;
ms_gmatch *ms_gmatch_new(const ms_grammar *g, const ms_vocab_index *vi);
void ms_gmatch_free(ms_gmatch *m);
/* Back to the start of the document. */
void ms_gmatch_reset(ms_gmatch *m);
/* Allowed tokens for the next step as a bitmap of ms_vocab_index_size bits
 * (caller's buffer of (size+63)/64 words): every token whose bytes keep the
 * text a valid prefix and after which the document can still be closed in
 * tokens_left - 1 tokens (-1: no limit); id 0 (end-of-text) when the text
 * may end here. Returns how many are allowed (0: none; the document is
 * complete or cannot be closed in time). */
int32_t ms_gmatch_mask(ms_gmatch *m, int32_t tokens_left, uint64_t *mask);
/* Follows len generated bytes; -1 (state unchanged) when they do not fit. */
int ms_gmatch_advance(ms_gmatch *m, const char *bytes, size_t len);
/* 1 when the document is complete (nothing more may follow). */
int ms_gmatch_done(const ms_gmatch *m);
/* 1 when end-of-text is allowed now. */
int ms_gmatch_can_end(const ms_gmatch *m);
/* 1 in the free-text branch of ms_grammar_text_or. */
int ms_gmatch_free_text(const ms_gmatch *m);
/* Fewest tokens that complete the document from here. */
int32_t ms_gmatch_min_tokens(const ms_gmatch *m);
/* Sets logits[i] = -inf for every id not in mask (n ids). */
void ms_mask_apply(float *logits, const uint64_t *mask, int32_t n);

#ifdef __cplusplus
}
#endif
#endif /* METASTATE_ENGINE_H */
