/*
 * fedtiny on-device trainer: plan -> init -> step.
 *
 *   ft_trainer_plan()   exact arena bytes for a model and config (nothing allocated)
 *   ft_trainer_init()   lays every buffer out in the caller's arena; no malloc anywhere
 *   ft_trainer_step() / ft_trainer_train_epochs() / ft_trainer_evaluate()
 *
 * A step runs the frozen prefix in int8 (CMSIS-NN-compatible kernels), dequantizes the
 * boundary activation, runs the trainable suffix in float32, softmax cross-entropy, backward
 * through the suffix, and SGD (optional momentum and weight decay). Gradients of a batch are
 * accumulated one sample at a time, so the arena does not grow with the batch size.
 *
 * Samples are int8 tensors: either model inputs (config.with_prefix = 1) or cached
 * boundary features, the int8 output of the last frozen layer (with_prefix = 0).
 */
#ifndef FT_TRAINER_H
#define FT_TRAINER_H

#include <stdint.h>

#include "fedtiny/ft_model.h"
#include "fedtiny/ft_status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FT_TRAINER_VERSION "0.1.0"
#define FT_ARENA_ALIGN 8u

typedef enum { FT_UPDATE_NONE = 0, FT_UPDATE_ALL = 1, FT_UPDATE_CHANNELS = 2 } ft_update_kind;

/* How updated weights are held in RAM (biases are always float32, as Lin et al. keep int32 biases).
 *   FT_PRECISION_F32:  float32 copies (4 B per weight).
 *   FT_PRECISION_INT8: int8 with one float scale per updated output channel (1 B per weight),
 *     s = max|w| / 127 over the channel, set when the weights are loaded. The forward and
 *     backward passes read s * q. The step uses quantization-aware scaling (QAS, Lin et al.
 *     2022): the gradient with respect to q, s * dL/dw, is scaled by s^-2, so
 *       q <- clamp(round(q - lr * d / s), -127, 127)
 *     where d is the float SGD direction (gradient / n + weight decay + prox, through momentum).
 *     Gradients, momentum and anchors stay float32 ("float accumulation where needed"). */
typedef enum { FT_PRECISION_F32 = 0, FT_PRECISION_INT8 = 1 } ft_precision;
/* Rounding of int8 steps: stochastic (floor(x) + [u < x - floor(x)], u from a counter-based
 * hash keyed by the training seed; unbiased) or to nearest (halves away from zero). */
typedef enum { FT_ROUND_STOCHASTIC = 0, FT_ROUND_NEAREST = 1 } ft_rounding;

/* What one trainable layer updates. Tensors that are not updated are read from the model
 * (flash on a board) and cost no RAM; backprop stops at the earliest layer that updates. */
typedef struct {
    uint8_t weights;   /* ft_update_kind */
    uint8_t bias;      /* 1: update the bias */
    uint16_t channels; /* FT_UPDATE_CHANNELS: number of output channels, chosen as those with the
                          largest weight L2 norm in the model (ties: lower index) */
} ft_layer_update;

typedef struct {
    float lr;           /* > 0 */
    float momentum;     /* [0, 1); 0 allocates no momentum buffer */
    float weight_decay; /* >= 0, L2 added to every trainable tensor's gradient */
    int32_t batch_size; /* >= 1 */
    int32_t with_prefix; /* 1: samples are model inputs; 0: samples are boundary features */
    float prox_mu;       /* >= 0: FedProx term mu/2 |w - anchor|^2; > 0 allocates the anchors */
    int32_t start_layer; /* 0: int8 samples (see with_prefix); k > 0: float32 samples that enter trainable
                            layer k (activations cached below the deepest layer the update touches);
                            must not exceed the earliest layer the update changes */
    int32_t precision;   /* ft_precision of the updated weights */
    int32_t rounding;    /* ft_rounding of int8 steps */
    int32_t n_updates;   /* 0: every tensor of every trainable layer; else = number of trainable layers */
    ft_layer_update update[FT_MAX_LAYERS]; /* index 0 = first trainable layer */
} ft_train_config;

/* Itemised arena plan. Offsets are from the arena start; sizes in bytes. */
typedef struct {
    uint32_t arena_bytes;  /* end of the highest buffer: what the arena must hold */
    uint32_t params_bytes;   /* float32 RAM copies of the updated tensors */
    uint32_t qparams_bytes;  /* int8 updated weights (precision int8) */
    uint32_t qscale_bytes;   /* their per-channel float scales */
    uint32_t momentum_bytes, grads_bytes, anchor_bytes; /* per updated scalar */
    uint32_t index_bytes;    /* channel maps of channel-subset updates */
    uint32_t prefix_bytes;  /* int8 ping-pong buffers of the frozen prefix */
    uint32_t scratch_bytes; /* kernel context buffer (max *_get_buffer_size()) */
    uint32_t acts_bytes;    /* float activations kept for backward */
    uint32_t grad_acts_bytes;
    int32_t param_count;  /* floats held in RAM as parameter copies */
    int32_t update_count; /* scalars the update changes (gradient entries) */
    int32_t first_backward; /* earliest trainable layer (0-based in the suffix) backprop reaches */
    int32_t sample_size;  /* elements per sample (int8, or float32 with start_layer > 0) */
    int32_t feature_size; /* elements of the boundary activation */
} ft_plan;

/* Run-time state of one trainable layer (pointers into the arena, or NULL). */
typedef struct {
    float *w, *b;      /* float RAM copies of updated tensors; NULL: the model's values are used */
    int8_t *q;         /* int8 updated weights (gradient layout), NULL unless precision int8 */
    float *qs;         /* their scales, one per gradient row */
    float *gw, *gb;    /* gradients (gw compact [slot][row] for channel subsets) */
    float *mw, *mb;    /* momentum, laid out as the gradients */
    float *aw, *ab;    /* FedProx anchors, laid out as the gradients */
    int16_t *slot;     /* channel subsets: per output channel, its gradient row or -1 */
    int32_t w_kind, b_on, row, nsel;
} ft_layer_state;

/* Profiling probe (optional): called after each piece of work with the event and the layer
 * (absolute model index for FT_PROBE_PREFIX, trainable index for FORWARD/BACKWARD, -1 else).
 * A board reads its cycle or instruction counter here; NULL (the default) costs one test. */
typedef enum {
    FT_PROBE_BEGIN = 0,    /* a sample's forward pass starts */
    FT_PROBE_PREFIX = 1,   /* frozen int8 layer done */
    FT_PROBE_INPUT = 2,    /* boundary activation dequantized */
    FT_PROBE_FORWARD = 3,  /* trainable layer forward done */
    FT_PROBE_LOSS = 4,     /* softmax cross-entropy and its gradient done */
    FT_PROBE_BACKWARD = 5, /* trainable layer backward done */
    FT_PROBE_APPLY = 6,    /* SGD step over all updated tensors done */
    FT_PROBE_BEGIN_APPLY = 7
} ft_probe_event;
typedef void (*ft_probe_fn)(void *ctx, int32_t event, int32_t layer);
/* Cancellation (optional): polled after every SGD step; a nonzero return stops training with
 * FT_ERR_CANCELLED (a board checks its link for a CANCEL request here). */
typedef int (*ft_abort_fn)(void *ctx);

/* Bounds every configuration must respect (checked by ft_trainer_plan / ft_trainer_train_epochs;
 * fedtiny's config validation refuses the same values before a run). */
#define FT_MAX_EPOCHS 1000
#define FT_MAX_BATCH 4096
#define FT_MAX_LR 100.0f
#define FT_MAX_WEIGHT_DECAY 1.0f
#define FT_MAX_PROX_MU 1000.0f

typedef struct {
    const ft_model *model;
    ft_train_config cfg;
    ft_plan plan;
    uint8_t *arena;
    uint32_t arena_size;
    uint32_t hwm; /* highest arena byte handed out + 1 */
    float *grads; /* start of the gradient region (grads_bytes) */
    ft_layer_state ls[FT_MAX_LAYERS];
    int8_t *prefix[2];
    void *scratch;
    float *acts[FT_MAX_LAYERS + 1]; /* acts[k]: input of trainable layer k; acts[L]: logits */
    float *grad_acts[2];
    uint32_t rng_key, rng_ctr; /* stochastic rounding: u_i = hash(key ^ hash(ctr++)) */
    int32_t initialized;
    ft_probe_fn probe; /* set after ft_trainer_init (which clears it); NULL: no profiling */
    void *probe_ctx;
    ft_abort_fn abort; /* set after ft_trainer_init (which clears it); NULL: runs to the end */
    void *abort_ctx;
} ft_trainer;

typedef struct {
    const int8_t *x;      /* count * sample_size int8 values, sample-major (start_layer == 0) */
    const uint8_t *y;     /* count labels in [0, num_classes) */
    int32_t count;
    int32_t sample_size;  /* must equal plan.sample_size */
    const float *xf;      /* count * sample_size float32 values (start_layer > 0), else NULL */
} ft_dataset;

typedef struct {
    float loss;     /* mean cross-entropy */
    int32_t correct;
    int32_t count;
    int32_t steps;  /* optimizer steps taken (training only) */
} ft_stats;

ft_status ft_trainer_plan(const ft_model *model, const ft_train_config *cfg, ft_plan *plan);
ft_status ft_trainer_init(ft_trainer *tr, const ft_model *model, const ft_train_config *cfg, void *arena,
                          uint32_t arena_size);
uint32_t ft_trainer_arena_hwm(const ft_trainer *tr);

/* Zero the gradients, then add the gradients of the summed loss over samples idx[0..n) (or
 * 0..n-1 when idx is NULL). Returns the summed loss and correct count in *stats. */
ft_status ft_trainer_accumulate(ft_trainer *tr, const ft_dataset *data, const uint32_t *idx, int32_t n,
                                ft_stats *stats);
/* Copy the current parameters into the FedProx anchor (no-op when prox_mu == 0). Call it after
 * loading the global model at the start of a round. */
ft_status ft_trainer_set_anchor(ft_trainer *tr);
/* Apply SGD with the accumulated gradients divided by n (the batch size used):
 * g = grad / n + weight_decay * w + prox_mu * (w - anchor). */
ft_status ft_trainer_apply(ft_trainer *tr, int32_t n);
/* One SGD step on samples idx[0..n) (0..n-1 when idx is NULL): accumulate, then apply. */
ft_status ft_trainer_step(ft_trainer *tr, const ft_dataset *data, const uint32_t *idx, int32_t n, ft_stats *stats);
/* Epoch loop: each epoch visits the samples in the order ft_permute(i, count, key(seed, epoch))
 * in batches of cfg.batch_size (the last batch may be smaller). Stats are of the last epoch.
 * Stochastic rounding restarts from key ft_rounding_key(seed), counter 0. */
ft_status ft_trainer_train_epochs(ft_trainer *tr, const ft_dataset *data, int32_t epochs, uint32_t seed,
                                  ft_stats *stats);
/* Loss and accuracy over the data; logits (count * num_classes floats) may be NULL. */
ft_status ft_trainer_evaluate(ft_trainer *tr, const ft_dataset *data, float *logits, ft_stats *stats);

/* Copy the current weights and bias of trainable layer k (int8 weights as s * q) into w and b
 * (weight_count and bias_count floats; either may be NULL). */
ft_status ft_trainer_layer_params(const ft_trainer *tr, int32_t k, float *w, float *b);
/* Overwrite trainable layer k's tensors. A tensor (or, for channel subsets, a channel) the update
 * does not change lives in the model and must be passed unchanged (bit for bit), else
 * FT_ERR_BAD_CONFIG. Int8 weights are requantized with new per-channel scales. */
ft_status ft_trainer_set_layer_params(ft_trainer *tr, int32_t k, const float *w, const float *b);
/* Full-shaped accumulated gradients of layer k (zeros where not updated). */
ft_status ft_trainer_layer_grads(const ft_trainer *tr, int32_t k, float *gw, float *gb);

/* Shuffling key for (seed, epoch). */
uint32_t ft_epoch_key(uint32_t seed, uint32_t epoch);
/* Stochastic-rounding key for a training seed (draws: ft_uniform(key, ctr), see ft_math.h). */
uint32_t ft_rounding_key(uint32_t seed);

#ifdef __cplusplus
}
#endif

#endif /* FT_TRAINER_H */
