/* Serial protocol framing and a resynchronising receiver. See include/fedtiny/ft_proto.h. */
#include "fedtiny/ft_proto.h"

#include <string.h>

#include "fedtiny/ft_model.h"

void ft_proto_rx_init(ft_proto_rx *rx) { memset(rx, 0, sizeof *rx); }

static void ft_drop(ft_proto_rx *rx, uint32_t n)
{
    memmove(rx->buf, rx->buf + n, rx->pos - n);
    rx->pos -= n;
}

static uint32_t ft_le32(const uint8_t *b)
{
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}

/* Look for a whole valid frame at the start of the buffer, dropping what cannot start one. */
static int ft_scan(ft_proto_rx *rx, ft_frame *frame)
{
    for (;;) {
        if (rx->pos >= 1 && rx->buf[0] != FT_PROTO_SYNC0) {
            ft_drop(rx, 1);
            rx->skipped++;
            continue;
        }
        if (rx->pos >= 2 && rx->buf[1] != FT_PROTO_SYNC1) {
            ft_drop(rx, 1);
            rx->skipped++;
            continue;
        }
        if (rx->pos < FT_PROTO_HEADER_BYTES) {
            return 0;
        }
        const uint32_t length = (uint32_t)rx->buf[4] | ((uint32_t)rx->buf[5] << 8);
        if (length > FT_PROTO_MAX_PAYLOAD) {
            rx->dropped++;
            ft_drop(rx, 1); /* rescan from the next byte */
            continue;
        }
        const uint32_t total = FT_PROTO_HEADER_BYTES + length + 4u;
        if (rx->pos < total) {
            return 0;
        }
        if (ft_crc32(rx->buf + 2, 4u + length) != ft_le32(rx->buf + FT_PROTO_HEADER_BYTES + length)) {
            rx->dropped++;
            ft_drop(rx, 1);
            continue;
        }
        frame->type = rx->buf[2];
        frame->seq = rx->buf[3];
        frame->length = (uint16_t)length;
        frame->payload = rx->buf + FT_PROTO_HEADER_BYTES;
        rx->need = total;
        rx->frames++;
        return 1;
    }
}

/* The frame returned last is consumed when the receiver is next used. */
static void ft_consume(ft_proto_rx *rx)
{
    if (rx->need != 0) {
        ft_drop(rx, rx->need);
        rx->need = 0;
    }
}

int ft_proto_feed(ft_proto_rx *rx, uint8_t byte, ft_frame *frame)
{
    ft_consume(rx);
    if (rx->pos >= FT_PROTO_MAX_FRAME) { /* cannot happen with the checks in ft_scan; stay safe */
        rx->pos = 0;
    }
    rx->buf[rx->pos++] = byte;
    return ft_scan(rx, frame);
}

uint32_t ft_proto_pending(const ft_proto_rx *rx) { return rx->pos - rx->need; }

int ft_proto_expire(ft_proto_rx *rx, ft_frame *frame)
{
    ft_consume(rx);
    if (rx->pos == 0) {
        return 0;
    }
    rx->expired++;
    /* buffered frames behind the returned one were complete: offer them before dropping */
    if (ft_scan(rx, frame)) {
        return 1;
    }
    while (rx->pos > 0) { /* the candidate at the start will never complete: drop it, rescan */
        ft_drop(rx, 1);
        rx->dropped++;
        if (ft_scan(rx, frame)) {
            return 1;
        }
    }
    return 0;
}

uint32_t ft_proto_write(uint8_t *out, uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t length)
{
    if (out == NULL || length > FT_PROTO_MAX_PAYLOAD || (length > 0 && payload == NULL)) {
        return 0;
    }
    out[0] = FT_PROTO_SYNC0;
    out[1] = FT_PROTO_SYNC1;
    out[2] = type;
    out[3] = seq;
    out[4] = (uint8_t)length;
    out[5] = (uint8_t)(length >> 8);
    if (length > 0) {
        memcpy(out + FT_PROTO_HEADER_BYTES, payload, length);
    }
    const uint32_t crc = ft_crc32(out + 2, 4u + length);
    uint8_t *c = out + FT_PROTO_HEADER_BYTES + length;
    c[0] = (uint8_t)crc;
    c[1] = (uint8_t)(crc >> 8);
    c[2] = (uint8_t)(crc >> 16);
    c[3] = (uint8_t)(crc >> 24);
    return FT_PROTO_HEADER_BYTES + length + 4u;
}
