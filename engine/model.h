/*
 * model.h - the in-memory model, shared by the engine's .c files (internal).
 *
 * Vectors ((1,1,C) flattened to (C)) are fp32 in one aligned arena. Every
 * matrix is a k_wmat in nn.Linear orientation (out, in), so one product
 * kernel serves all: the big projections, the head and the embedding in the
 * chosen weight format; the LoRA matrices, stored (in, out) in checkpoints,
 * are transposed at load and kept fp32 (they are small, and the decay is
 * sensitive to them).
 */
#ifndef METASTATE_ENGINE_MODEL_H
#define METASTATE_ENGINE_MODEL_H

#include "internal.h"
#include "kernels.h"

/* A fixed count, not the thread count: the sums' order, and with it every
 * output bit, must not depend on how many threads run them. */
#define FFN_PARTS 2

typedef struct ms_layer {
    int dim_ffn;                      /* F of this layer (expansion may vary it) */
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b;           /* (C) */
    float *x_r, *x_w, *x_k, *x_v, *x_a, *x_g;       /* (C) token-shift mixes */
    float *w0, *a0, *v0;              /* (C) LoRA biases; v0 NULL in layer 0 */
    k_wmat w1, w2;                    /* (Dw,C), (C,Dw) decay LoRA, transposed, f32 */
    k_wmat a1, a2;                    /* (Da,C), (C,Da) in-context rate LoRA */
    k_wmat v1, v2;                    /* (Dv,C), (C,Dv) value residual; empty in layer 0 */
    k_wmat g1, g2;                    /* (Dg,C), (C,Dg) gate LoRA */
    float *k_k, *k_a, *r_k;           /* (C) */
    k_wmat wr, wk, wv, wo;            /* (C,C) */
    float *lnx_w, *lnx_b;             /* (C) GroupNorm affine */
    float *ffn_x_k;                   /* (C) */
    /* The FFN's hidden units in up to FFN_PARTS parts of ffn_unit each
     * (the last may be smaller): part p's rows of the key matrix and its
     * columns of the value matrix, held as matrices of their own. A part's
     * hidden units need nothing of another part's, so one thread can take a
     * part from xk to its share of the output in one go (forward.c
     * channel_mix). The output sums the parts' products in part order. */
    k_wmat ffn_key[FFN_PARTS];        /* (units of part p, C) */
    k_wmat ffn_value[FFN_PARTS];      /* (C, units of part p) */
    int ffn_parts, ffn_unit;
    float *ms_gamma;                  /* (C) Meta-State gains, NULL = none */
    int n_sse;                        /* heads with a non-zero gain (SPEC 3.3 M_l) */
    int *sse_head;                    /* (n_sse) their indices, ascending */
} ms_layer;

struct ms_model {
    ms_config cfg;
    k_wmat emb;        /* (V,C); ln0 is applied per looked-up row (exact for bf16) */
    float *ln0_w, *ln0_b;       /* (C) */
    float *ln_out_w, *ln_out_b; /* (C) */
    k_wmat head;       /* (V,C) */
    ms_layer *layers;  /* (L) */
    float *arena;      /* owns every float vector above */
    k_arena *mats;     /* owns the packed matrices' memory (not the embedding's) */
    k_wfmt wfmt;       /* format of the big matrices */
    int *sse_heads;    /* owns every layer's sse_head list (L*H ints) */
    size_t weight_bytes;
    size_t bytes_per_token;
    uint8_t fingerprint[32];
    uint8_t (*ancestors)[32]; /* models this one was expanded from (metadata) */
    size_t n_ancestors;
    int n_threads;
};

#endif
