/*
 * model.h - the in-memory model, shared by the engine's .c files (internal).
 *
 * Every weight is held as fp32 in one 64-byte aligned arena, in the layout
 * the forward pass reads: nn.Linear weights stay (out, in) row-major, raw
 * LoRA matrices stay (in, out), (1,1,C) vectors are flattened to (C).
 */
#ifndef METASTATE_ENGINE_MODEL_H
#define METASTATE_ENGINE_MODEL_H

#include "internal.h"

typedef struct ms_layer {
    int dim_ffn;                      /* F of this layer (expansion may vary it) */
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b;           /* (C) */
    float *x_r, *x_w, *x_k, *x_v, *x_a, *x_g;       /* (C) token-shift mixes */
    float *w0, *w1, *w2;              /* (C), (C,Dw), (Dw,C) decay LoRA */
    float *a0, *a1, *a2;              /* (C), (C,Da), (Da,C) in-context rate LoRA */
    float *v0, *v1, *v2;              /* (C), (C,Dv), (Dv,C); NULL in layer 0 */
    float *g1, *g2;                   /* (C,Dg), (Dg,C) gate LoRA */
    float *k_k, *k_a, *r_k;           /* (C) */
    float *wr, *wk, *wv, *wo;         /* (C,C) Linear (out, in) */
    float *lnx_w, *lnx_b;             /* (C) GroupNorm affine */
    float *ffn_x_k;                   /* (C) */
    float *ffn_key;                   /* (F,C) Linear */
    float *ffn_value;                 /* (C,F) Linear */
    float *ms_gamma;                  /* (C) Meta-State gains, NULL = none */
    int n_sse;                        /* heads with a non-zero gain (SPEC 3.3 M_l) */
    int *sse_head;                    /* (n_sse) their indices, ascending */
} ms_layer;

struct ms_model {
    ms_config cfg;
    float *emb;        /* (V,C), ln0 already applied to every row */
    float *ln0_w, *ln0_b;       /* (C) already folded into emb; kept for reference */
    float *ln_out_w, *ln_out_b; /* (C) */
    float *head;       /* (V,C) Linear */
    ms_layer *layers;  /* (L) */
    float *arena;      /* owns every float above */
    int *sse_heads;    /* owns every layer's sse_head list (L*H ints) */
    size_t arena_floats;
    size_t bytes_per_token;
    uint8_t fingerprint[32];
    uint8_t (*ancestors)[32]; /* models this one was expanded from (metadata) */
    size_t n_ancestors;
    int n_threads;
};

#endif
