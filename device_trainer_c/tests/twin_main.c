/*
 * Digital-twin firmware: trains with the C trainer on a job placed in PSRAM by QEMU
 * (-device loader,file=job.bin,addr=0x21000000) and prints the resulting parameters as the
 * bit patterns of their float32 values, so a host test can compare them bit for bit.
 *
 * Job layout (little-endian u32/f32): magic "FTTW", version 3, model offset, model length,
 * x offset, y offset, count, sample size, epochs, seed, lr, momentum, weight decay,
 * batch size, with_prefix, prox_mu, start_layer, n_updates, precision, rounding, then
 * FT_MAX_LAYERS update words
 * (weights kind | bias << 8 | channels << 16); then the referenced data (offsets from the job
 * start). Samples are int8, or float32 when start_layer > 0.
 */
#include <stdint.h>
#include <string.h>

#include "fedtiny/ft_model.h"
#include "fedtiny/ft_trainer.h"
#include "semihost.h"

#define FT_JOB_ADDR 0x21000000u
#define FT_TWIN_ARENA (160u * 1024u)

static uint8_t arena[FT_TWIN_ARENA] __attribute__((aligned(8)));
static ft_model model;
static ft_trainer trainer;
static char line[96];
static float params[8192];

static void put_hex(char *out, uint32_t v)
{
    for (int i = 7; i >= 0; i--) {
        out[7 - i] = "0123456789abcdef"[(v >> (4 * i)) & 0xFu];
    }
}

static void say(const char *tag, uint32_t value)
{
    size_t n = strlen(tag);
    memcpy(line, tag, n);
    line[n] = ' ';
    put_hex(line + n + 1, value);
    line[n + 9] = '\n';
    line[n + 10] = 0;
    ft_semihost_write(line);
}

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

int main(void)
{
    const uint32_t *job = (const uint32_t *)FT_JOB_ADDR;
    if (job[0] != 0x57545446u || job[1] != 3u) {
        ft_semihost_write("ERROR bad job\n");
        return 2;
    }
    const uint8_t *base = (const uint8_t *)FT_JOB_ADDR;
    ft_train_config cfg;
    memset(&cfg, 0, sizeof cfg); /* n_updates = 0: update every trainable tensor */
    memcpy(&cfg.lr, &job[10], 4);
    memcpy(&cfg.momentum, &job[11], 4);
    memcpy(&cfg.weight_decay, &job[12], 4);
    cfg.batch_size = (int32_t)job[13];
    cfg.with_prefix = (int32_t)job[14];
    memcpy(&cfg.prox_mu, &job[15], 4);
    cfg.start_layer = (int32_t)job[16];
    cfg.n_updates = (int32_t)job[17];
    cfg.precision = (int32_t)job[18];
    cfg.rounding = (int32_t)job[19];
    for (int32_t k = 0; k < FT_MAX_LAYERS; k++) {
        const uint32_t u = job[20 + k];
        cfg.update[k] = (ft_layer_update){(uint8_t)(u & 0xFFu), (uint8_t)((u >> 8) & 0xFFu), (uint16_t)(u >> 16)};
    }
    ft_status st = ft_model_load(&model, base + job[2], job[3]);
    if (st == FT_OK) {
        st = ft_trainer_init(&trainer, &model, &cfg, arena, sizeof arena);
    }
    if (st != FT_OK) {
        say("STATUS", (uint32_t)st);
        return 3;
    }
    const int floats = cfg.start_layer > 0;
    const ft_dataset data = {floats ? NULL : (const int8_t *)(base + job[4]), base + job[5], (int32_t)job[6],
                             (int32_t)job[7], floats ? (const float *)(base + job[4]) : NULL};
    ft_stats stats;
    st = ft_trainer_train_epochs(&trainer, &data, (int32_t)job[8], job[9], &stats);
    if (st == FT_OK) {
        st = ft_trainer_evaluate(&trainer, &data, 0, &stats);
    }
    say("STATUS", (uint32_t)st);
    say("HWM", ft_trainer_arena_hwm(&trainer));
    say("LOSS", bits(stats.loss));
    say("PARAMS", (uint32_t)trainer.plan.param_count);
    for (int32_t k = 0; k < model.num_layers - model.first_trainable; k++) {
        const ft_layer *l = &model.layers[model.first_trainable + k];
        if (l->weight_count + l->bias_count > (int32_t)(sizeof params / sizeof params[0])) {
            ft_semihost_write("ERROR layer too large for the twin\n");
            return 4;
        }
        ft_trainer_layer_params(&trainer, k, params, params + l->weight_count);
        for (int32_t i = 0; i < l->weight_count + l->bias_count; i++) {
            say("P", bits(params[i]));
        }
    }
    ft_semihost_write("END\n");
    return 0;
}
