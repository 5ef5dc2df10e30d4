/*
 * Bounded fuzzing of the two parsers that take bytes from outside: the frame receiver
 * (ft_proto_feed, bytes from a serial link) and the model loader (ft_model_load, a model file
 * sent over the link), under ASan + UBSan (FEDTINY_SANITIZE=ON).
 *
 *   ft_fuzz frames|model SECONDS SEED FILE...   seeded mutation campaign from the seed files
 *   (built with -DFEDTINY_LIBFUZZER=ON and clang, LLVMFuzzerTestOneInput is the libFuzzer entry)
 *
 * Mutations: bit flips, byte sets, interesting values (0, 0xFF, 0x7F, 0x80), inserted and
 * deleted runs, splices of two seeds, truncation. For models the header's size and CRC-32 are
 * recomputed after most mutations, so the loader's deeper checks (tables, offsets, shapes,
 * tensor kinds) get exercised rather than the checksum. A model that loads is planned, laid
 * out in an arena and evaluated on one sample: whatever the loader accepts must be safe to run.
 * Every accepted frame is re-checked against its CRC and the length limit.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fedtiny/ft_model.h"
#include "fedtiny/ft_proto.h"
#include "fedtiny/ft_trainer.h"

#define MAX_INPUT (1u << 20)

static uint64_t rng_state;
static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static void put32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}

static unsigned long frames_ok, models_ok, models_run;

static void fuzz_frames(const uint8_t *data, size_t size)
{
    static ft_proto_rx rx;
    ft_proto_rx_init(&rx);
    ft_frame f;
    for (size_t i = 0; i < size; i++) {
        if (ft_proto_feed(&rx, data[i], &f)) {
            /* an accepted frame must be within bounds and carry a valid CRC */
            uint8_t again[FT_PROTO_MAX_FRAME];
            if (f.length > FT_PROTO_MAX_PAYLOAD) {
                abort();
            }
            const uint32_t n = ft_proto_write(again, f.type, f.seq, f.payload, f.length);
            if (n != FT_PROTO_HEADER_BYTES + f.length + 4u) {
                abort();
            }
            frames_ok++;
        }
    }
}

static uint8_t arena[1u << 20] __attribute__((aligned(8)));
static int8_t sample[1u << 16];

static void fuzz_model(const uint8_t *data, size_t size)
{
    static uint8_t copy[MAX_INPUT] __attribute__((aligned(8)));
    memcpy(copy, data, size); /* the loader keeps pointers into the bytes: give it its own, aligned */
    ft_model m;
    if (ft_model_load(&m, copy, (uint32_t)size) != FT_OK) {
        return;
    }
    models_ok++;
    ft_train_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.lr = 0.01f;
    cfg.batch_size = 1;
    cfg.with_prefix = 1;
    ft_plan plan;
    if (ft_trainer_plan(&m, &cfg, &plan) != FT_OK || plan.arena_bytes > sizeof arena ||
        plan.sample_size > (int32_t)sizeof sample) {
        return;
    }
    static ft_trainer tr;
    if (ft_trainer_init(&tr, &m, &cfg, arena, sizeof arena) != FT_OK) {
        return;
    }
    for (int32_t i = 0; i < plan.sample_size; i++) {
        sample[i] = (int8_t)rnd();
    }
    const uint8_t y = 0;
    const ft_dataset d = {sample, &y, 1, plan.sample_size, 0};
    ft_stats s;
    if (m.num_classes >= 1) {
        (void)ft_trainer_evaluate(&tr, &d, 0, &s);
        (void)ft_trainer_step(&tr, &d, 0, 1, &s);
        models_run++;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > MAX_INPUT) {
        return 0;
    }
    if (data[0] & 1u) {
        fuzz_frames(data + 1, size - 1);
    } else {
        fuzz_model(data + 1, size - 1);
    }
    return 0;
}

#ifndef FEDTINY_LIBFUZZER
static uint8_t *read_file(const char *path, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        return NULL;
    }
    uint8_t *buf = malloc(MAX_INPUT);
    *size = fread(buf, 1, MAX_INPUT, fp);
    fclose(fp);
    return buf;
}

static size_t mutate(uint8_t *b, size_t n, const uint8_t *other, size_t other_n)
{
    const uint32_t rounds = 1u + rnd() % 8u;
    for (uint32_t r = 0; r < rounds; r++) {
        const uint32_t kind = rnd() % 8u;
        const size_t at = n ? rnd() % n : 0;
        if (kind == 0 && n) {
            b[at] ^= (uint8_t)(1u << (rnd() % 8u));
        } else if (kind == 1 && n) {
            b[at] = (uint8_t)rnd();
        } else if (kind == 2 && n) {
            static const uint8_t special[] = {0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE};
            b[at] = special[rnd() % sizeof special];
        } else if (kind == 3 && n + 64 < MAX_INPUT) { /* insert a run */
            const size_t len = 1 + rnd() % 64;
            memmove(b + at + len, b + at, n - at);
            for (size_t i = 0; i < len; i++) {
                b[at + i] = (uint8_t)rnd();
            }
            n += len;
        } else if (kind == 4 && n > 1) { /* delete a run */
            const size_t len = 1 + rnd() % (n - at < 64 ? n - at : 64);
            memmove(b + at, b + at + len, n - at - len);
            n -= len;
        } else if (kind == 5 && other_n) { /* splice in a piece of another seed */
            const size_t from = rnd() % other_n, len = 1 + rnd() % (other_n - from);
            if (at + len < MAX_INPUT) {
                memcpy(b + at, other + from, len);
                n = at + len > n ? at + len : n;
            }
        } else if (kind == 6 && n) { /* truncate */
            n = at;
        } else if (kind == 7 && n >= 4) { /* a 16/32-bit field set to an extreme */
            const uint32_t v = (uint32_t[]){0u, 0xFFFFu, 0x8000u, 0xFFFFFFFFu, 0x7FFFFFFFu, 1u}[rnd() % 6u];
            const size_t p = rnd() % (n - 3);
            memcpy(b + p, &v, (rnd() & 1u) ? 2 : 4);
        }
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 5 || (strcmp(argv[1], "frames") != 0 && strcmp(argv[1], "model") != 0)) {
        fprintf(stderr, "usage: ft_fuzz frames|model SECONDS SEED FILE...\n");
        return 2;
    }
    const int frames = strcmp(argv[1], "frames") == 0;
    const double seconds = atof(argv[2]);
    rng_state = strtoull(argv[3], NULL, 10) * 0x9E3779B97F4A7C15ull + 1u;
    const int n_seeds = argc - 4;
    uint8_t **seeds = calloc((size_t)n_seeds, sizeof *seeds);
    size_t *sizes = calloc((size_t)n_seeds, sizeof *sizes);
    for (int i = 0; i < n_seeds; i++) {
        seeds[i] = read_file(argv[4 + i], &sizes[i]);
        if (seeds[i] == NULL) {
            fprintf(stderr, "ft_fuzz: cannot read %s\n", argv[4 + i]);
            return 2;
        }
    }
    uint8_t *buf = malloc(MAX_INPUT + 1);
    const clock_t start = clock();
    unsigned long runs = 0;
    while ((double)(clock() - start) / CLOCKS_PER_SEC < seconds) {
        for (int batch = 0; batch < 64; batch++, runs++) {
            const int a = (int)(rnd() % (uint32_t)n_seeds), b = (int)(rnd() % (uint32_t)n_seeds);
            memcpy(buf + 1, seeds[a], sizes[a]);
            size_t n = mutate(buf + 1, sizes[a], seeds[b], sizes[b]);
            if (!frames && n >= 16 && rnd() % 10u != 0u) { /* most model mutants get a valid size and CRC */
                put32(buf + 1 + 8, (uint32_t)n);
                put32(buf + 1 + 12, ft_crc32(buf + 1 + 16, (uint32_t)(n - 16)));
            }
            buf[0] = (uint8_t)frames;
            LLVMFuzzerTestOneInput(buf, n + 1);
        }
    }
    printf("ft_fuzz %s: %lu inputs in %.0f s, %lu frames accepted, %lu models loaded, %lu run; no crash\n",
           argv[1], runs, seconds, frames_ok, models_ok, models_run);
    for (int i = 0; i < n_seeds; i++) {
        free(seeds[i]);
    }
    free(seeds);
    free(sizes);
    free(buf);
    return 0;
}
#endif
