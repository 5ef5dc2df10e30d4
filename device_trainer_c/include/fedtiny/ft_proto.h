/*
 * fedtiny serial protocol, version 1: framed binary messages between a host and a board.
 *
 *   frame = 0xA5 0x5A | u8 type | u8 seq | u16 length (LE) | payload (length bytes) | u32 CRC-32 (LE)
 *
 * The CRC (ft_crc32, IEEE) covers type, seq, length and payload. length <= FT_PROTO_MAX_PAYLOAD.
 * A reply carries the request's seq and type | 0x80. The receiver is a byte-at-a-time state
 * machine: after a bad length or CRC it rescans the bytes it had buffered (after the first sync
 * byte) for the next frame start, so garbage, truncated and corrupted frames cost only the
 * frames they hit (resynchronisation).
 *
 * Inter-byte timeout: a sender writes a frame in one go, so a line that stays idle for
 * FT_PROTO_BYTE_TIMEOUT_MS while part of a frame is buffered holds no frame that will complete
 * (a host that died mid-write, a board reset mid-frame, stray bytes announcing a long payload).
 * The receiver then calls ft_proto_expire, which drops the stale start and rescans the rest: a
 * whole frame that had been swallowed as the stale frame's payload is found and returned.
 */
#ifndef FT_PROTO_H
#define FT_PROTO_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FT_PROTO_SYNC0 0xA5u
#define FT_PROTO_SYNC1 0x5Au
#define FT_PROTO_HEADER_BYTES 6u
#define FT_PROTO_MAX_PAYLOAD 1024u
#define FT_PROTO_MAX_FRAME (FT_PROTO_HEADER_BYTES + FT_PROTO_MAX_PAYLOAD + 4u)
#define FT_PROTO_REPLY 0x80u
#define FT_PROTO_BYTE_TIMEOUT_MS 50u /* idle line with a partial frame buffered: expire it */

typedef enum {
    FT_MSG_HELLO = 1,    /* -> board, trainer version, SRAM, model hash */
    FT_MSG_LOAD = 2,     /* model bytes in chunks: u32 offset, u32 total, bytes */
    FT_MSG_TRAIN = 3,    /* epochs, lr, seed, scheme, clip, bits */
    FT_MSG_UPDATE = 4,   /* fetch the encoded update in chunks */
    FT_MSG_EVALUATE = 5, /* loss and accuracy on local data */
    FT_MSG_RESET = 6,    /* forget the model and the trainer */
    FT_MSG_PARAMS = 7,   /* the global model's trainable values: u32 offset, f32 values */
    FT_MSG_STATS = 8,    /* profile of the last TRAIN/PROFILE, RAM figures */
    FT_MSG_PROFILE = 9,  /* one profiled forward pass of the whole model (int8 prefix included) */
    FT_MSG_SPIN = 10,    /* counter ticks of a loop of known length (calibration) */
    FT_MSG_CANCEL = 11,  /* stop a running TRAIN (it replies ERROR CANCELLED); replies u32 status */
    /* 12 is a bridge's own request (its counters); a board answers UNSUPPORTED */
    FT_MSG_DEPLOY = 13,        /* a model update: u32 version, u32 total, u32 CRC-32 -> u32 status, u32 slot */
    FT_MSG_DEPLOY_DATA = 14,   /* u32 offset, bytes (in order) -> u32 status, u32 bytes received */
    FT_MSG_DEPLOY_COMMIT = 15, /* verify, load, evaluate, activate (or roll back) -> status, version, CRC, eval */
    FT_MSG_ACK = 0x7E,   /* sent at once for TRAIN, PROFILE and SPIN (same seq, empty): working on it */
    FT_MSG_ERROR = 0x7F  /* reply: u32 ft_status, text */
} ft_msg_type;

typedef struct {
    uint8_t type, seq;
    uint16_t length;
    const uint8_t *payload; /* points into the receiver's buffer; valid until the next feed */
} ft_frame;

typedef struct {
    uint8_t buf[FT_PROTO_MAX_FRAME];
    uint32_t pos;      /* bytes buffered, sync bytes included */
    uint32_t need;     /* total frame bytes once the length is known (0: not yet) */
    uint32_t frames;   /* good frames received */
    uint32_t dropped;  /* frames dropped (bad length or CRC) */
    uint32_t skipped;  /* bytes skipped while searching for a frame start */
    uint32_t expired;  /* partial frames dropped by ft_proto_expire (inter-byte timeout) */
} ft_proto_rx;

void ft_proto_rx_init(ft_proto_rx *rx);

/* Feed one byte; returns 1 when a whole valid frame is ready in *frame (its payload points into
 * rx->buf, valid until the next call), else 0. */
int ft_proto_feed(ft_proto_rx *rx, uint8_t byte, ft_frame *frame);

/* Bytes buffered that are not part of a frame already returned: a partial frame (or whole
 * frames behind one) waiting for more bytes. The inter-byte timeout applies when nonzero. */
uint32_t ft_proto_pending(const ft_proto_rx *rx);

/* The line has been idle for FT_PROTO_BYTE_TIMEOUT_MS: drop the stale frame start and rescan
 * what follows it; returns 1 with a frame found there (call again: more may follow), else 0
 * with the buffer empty. */
int ft_proto_expire(ft_proto_rx *rx, ft_frame *frame);

/* Write a frame into out (>= FT_PROTO_HEADER_BYTES + length + 4 bytes); returns its size, or 0
 * if length exceeds FT_PROTO_MAX_PAYLOAD. */
uint32_t ft_proto_write(uint8_t *out, uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t length);

#ifdef __cplusplus
}
#endif

#endif /* FT_PROTO_H */
