/* etbridge: edgetwin firmware-bridge protocol v1, device side, C99. See etbridge.h. */
#include "etbridge.h"

#include <string.h>

#define HEADER_LEN 2u
#define CRC_LEN 2u
#define SAMPLES_FIXED 13u /* seq u32, t_us u64, n_rows u8 */
#define CHANNEL_FIXED 14u /* index, format, scale f32, offset f32, wavelength u16, distance u16 */
#define DEVICE_FIXED 9u   /* fw major, minor, patch, flags, rate u32, n_channels */
#define MAX_STR 32u
#define MAX_UNIT 16u

/* A cursor over the raw frame being built; every put is bounds-checked once up front by the
 * caller computing the exact raw length, so these only advance. */
typedef struct {
    uint8_t *p;
} cursor;

static void put_u8(cursor *c, uint8_t v) { *c->p++ = v; }

static void put_u16(cursor *c, uint16_t v)
{
    put_u8(c, (uint8_t)(v & 0xFFu));
    put_u8(c, (uint8_t)(v >> 8));
}

static void put_u32(cursor *c, uint32_t v)
{
    put_u16(c, (uint16_t)(v & 0xFFFFu));
    put_u16(c, (uint16_t)(v >> 16));
}

static void put_u64(cursor *c, uint64_t v)
{
    put_u32(c, (uint32_t)(v & 0xFFFFFFFFu));
    put_u32(c, (uint32_t)(v >> 32));
}

static void put_f32(cursor *c, float f)
{
    uint32_t bits;
    /* IEEE-754 binary32 is assumed (AVR, ARM, RISC-V, x86 all use it). */
    memcpy(&bits, &f, sizeof bits);
    put_u32(c, bits);
}

static void put_str(cursor *c, const char *s, size_t n)
{
    put_u8(c, (uint8_t)n);
    memcpy(c->p, s, n);
    c->p += n;
}

static size_t bounded_strlen(const char *s, size_t max)
{
    size_t n = 0;
    if (s == NULL) {
        return 0;
    }
    while (n <= max && s[n] != '\0') {
        n++;
    }
    return n;
}

uint16_t etb_crc16(uint16_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    int bit;
    /* Bitwise on purpose: no 512-byte table in an AVR's 2 KiB of RAM. */
    for (i = 0; i < len; i++) {
        uint32_t c = (uint32_t)crc ^ ((uint32_t)data[i] << 8);
        for (bit = 0; bit < 8; bit++) {
            c = (c & 0x8000u) ? ((c << 1) ^ 0x1021u) : (c << 1);
        }
        crc = (uint16_t)(c & 0xFFFFu);
    }
    return crc;
}

size_t etb_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
    size_t code_at = 0;
    size_t o = 1;
    size_t i;
    uint8_t code = 1;
    if (cap == 0) {
        return 0;
    }
    for (i = 0; i < len; i++) {
        const uint8_t b = in[i]; /* read before any write: in may sit just after out */
        if (b != 0) {
            if (o >= cap) {
                return 0;
            }
            out[o++] = b;
            code++;
        }
        if (b == 0 || code == 0xFF) {
            out[code_at] = code;
            code = 1;
            code_at = o;
            /* A full block that ends the input needs no empty block after it. */
            if (b == 0 || i + 1 < len) {
                if (o >= cap) {
                    return 0;
                }
                o++;
            }
        }
    }
    if (code_at < o) {
        out[code_at] = code;
    }
    return o;
}

size_t etb_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, int *ok)
{
    size_t i = 0;
    size_t o = 0;
    *ok = 0;
    while (i < len) {
        const uint8_t code = in[i];
        size_t j;
        if (code == 0 || i + code > len) {
            return 0;
        }
        for (j = i + 1; j < i + code; j++) {
            if (in[j] == 0 || o >= cap) {
                return 0;
            }
            out[o++] = in[j];
        }
        i += code;
        if (code != 0xFF && i < len) {
            if (o >= cap) {
                return 0;
            }
            out[o++] = 0;
        }
    }
    *ok = 1;
    return o;
}

/* Reserve a raw frame of raw_len bytes at the tail of out and write its header. */
static int begin(uint8_t type, size_t raw_len, uint8_t *out, size_t cap, cursor *c)
{
    if (raw_len > ETB_MAX_FRAME || cap < ETB_WIRE_SIZE(raw_len)) {
        return 0;
    }
    c->p = out + (cap - raw_len);
    put_u8(c, ETB_PROTOCOL_VERSION);
    put_u8(c, type);
    return 1;
}

/* Append the CRC, COBS-encode the raw frame (in place, towards the front), add 0x00. */
static size_t finish(uint8_t *out, size_t cap, size_t raw_len, cursor *c)
{
    uint8_t *raw = out + (cap - raw_len);
    size_t n;
    put_u16(c, etb_crc16(0xFFFFu, raw, raw_len - CRC_LEN));
    n = etb_cobs_encode(raw, raw_len, out, cap - 1);
    if (n == 0) {
        return 0;
    }
    out[n] = 0;
    return n + 1;
}

size_t etb_row_bytes(const etb_device *dev)
{
    size_t n = 0;
    uint8_t k;
    for (k = 0; k < dev->n_channels; k++) {
        n += dev->channels[k].format;
    }
    return n;
}

size_t etb_encode_device(const etb_device *dev, int streaming, uint8_t *out, size_t cap)
{
    const size_t id_len = bounded_strlen(dev->device_id, MAX_STR);
    const size_t model_len = bounded_strlen(dev->model, MAX_STR);
    size_t raw_len;
    cursor c;
    if (id_len == 0 || id_len > MAX_STR || model_len > MAX_STR || dev->rate_mhz == 0 ||
        dev->n_channels == 0 || dev->n_channels > ETB_MAX_CHANNELS) {
        return 0;
    }
    raw_len = HEADER_LEN + DEVICE_FIXED + 1 + id_len + 1 + model_len + CRC_LEN;
    if (!begin(ETB_T_DEVICE, raw_len, out, cap, &c)) {
        return 0;
    }
    put_u8(&c, dev->fw_major);
    put_u8(&c, dev->fw_minor);
    put_u8(&c, dev->fw_patch);
    put_u8(&c, streaming ? 0x01u : 0x00u);
    put_u32(&c, dev->rate_mhz);
    put_u8(&c, dev->n_channels);
    put_str(&c, dev->device_id, id_len);
    put_str(&c, dev->model != NULL ? dev->model : "", model_len);
    return finish(out, cap, raw_len, &c);
}

size_t etb_encode_channel(const etb_device *dev, uint8_t index, uint8_t *out, size_t cap)
{
    const etb_channel *ch;
    size_t name_len, unit_len, raw_len;
    cursor c;
    if (index >= dev->n_channels) {
        return 0;
    }
    ch = &dev->channels[index];
    name_len = bounded_strlen(ch->name, MAX_STR);
    unit_len = bounded_strlen(ch->unit, MAX_UNIT);
    if (name_len == 0 || name_len > MAX_STR || unit_len > MAX_UNIT || ch->format < ETB_I8 ||
        ch->format > ETB_I32) {
        return 0;
    }
    raw_len = HEADER_LEN + CHANNEL_FIXED + 1 + name_len + 1 + unit_len + CRC_LEN;
    if (!begin(ETB_T_CHANNEL, raw_len, out, cap, &c)) {
        return 0;
    }
    put_u8(&c, index);
    put_u8(&c, ch->format);
    put_f32(&c, ch->scale);
    put_f32(&c, ch->offset);
    put_u16(&c, ch->wavelength_nm);
    put_u16(&c, ch->distance_01mm);
    put_str(&c, ch->name, name_len);
    put_str(&c, ch->unit != NULL ? ch->unit : "", unit_len);
    return finish(out, cap, raw_len, &c);
}

static int fits(int32_t v, uint8_t format)
{
    switch (format) {
    case ETB_I8:
        return v >= -128 && v <= 127;
    case ETB_I16:
        return v >= -32768L && v <= 32767L;
    case ETB_I24:
        return v >= -8388608L && v <= 8388607L;
    case ETB_I32:
        return 1;
    default:
        return 0;
    }
}

size_t etb_encode_samples(const etb_device *dev, uint32_t seq, uint64_t t_us,
                          const int32_t *rows, uint8_t n_rows, uint8_t *out, size_t cap)
{
    const size_t row_bytes = etb_row_bytes(dev);
    size_t raw_len, r;
    cursor c;
    if (n_rows == 0 || dev->n_channels == 0) {
        return 0;
    }
    raw_len = HEADER_LEN + SAMPLES_FIXED + (size_t)n_rows * row_bytes + CRC_LEN;
    for (r = 0; r < (size_t)n_rows * dev->n_channels; r++) {
        if (!fits(rows[r], dev->channels[r % dev->n_channels].format)) {
            return 0;
        }
    }
    if (!begin(ETB_T_SAMPLES, raw_len, out, cap, &c)) {
        return 0;
    }
    put_u32(&c, seq);
    put_u64(&c, t_us);
    put_u8(&c, n_rows);
    for (r = 0; r < (size_t)n_rows * dev->n_channels; r++) {
        /* Two's complement bytes, little-endian, as wide as the channel's format. */
        uint32_t u = (uint32_t)rows[r];
        uint8_t w;
        for (w = 0; w < dev->channels[r % dev->n_channels].format; w++) {
            put_u8(&c, (uint8_t)(u & 0xFFu));
            u >>= 8;
        }
    }
    return finish(out, cap, raw_len, &c);
}

size_t etb_encode_ack(uint8_t token, uint8_t command, uint8_t status, uint8_t *out, size_t cap)
{
    const size_t raw_len = HEADER_LEN + 3 + CRC_LEN;
    cursor c;
    if (!begin(ETB_T_ACK, raw_len, out, cap, &c)) {
        return 0;
    }
    put_u8(&c, token);
    put_u8(&c, command);
    put_u8(&c, status);
    return finish(out, cap, raw_len, &c);
}

size_t etb_encode_command(uint8_t type, uint8_t token, uint32_t rate_mhz, uint8_t *out,
                          size_t cap)
{
    const size_t raw_len = HEADER_LEN + 1 + (type == ETB_CMD_SET_RATE ? 4u : 0u) + CRC_LEN;
    cursor c;
    if ((type & 0x80u) == 0 || !begin(type, raw_len, out, cap, &c)) {
        return 0;
    }
    put_u8(&c, token);
    if (type == ETB_CMD_SET_RATE) {
        put_u32(&c, rate_mhz);
    }
    return finish(out, cap, raw_len, &c);
}

void etb_reader_init(etb_reader *r, uint8_t *buf, size_t cap)
{
    r->buf = buf;
    r->cap = cap;
    r->len = 0;
    r->dropping = 0;
    r->frames = 0;
    r->bad = 0;
}

size_t etb_reader_push(etb_reader *r, uint8_t byte)
{
    size_t n;
    int ok;
    if (byte != 0) {
        if (r->dropping) {
            return 0;
        }
        if (r->len >= r->cap) {
            /* Longer than any frame we accept: count once, skip to the next delimiter. */
            r->dropping = 1;
            r->len = 0;
            r->bad++;
            return 0;
        }
        r->buf[r->len++] = byte;
        return 0;
    }
    if (r->dropping) {
        r->dropping = 0;
        return 0;
    }
    if (r->len == 0) {
        return 0; /* an empty chunk: senders flush with extra zeros */
    }
    n = etb_cobs_decode(r->buf, r->len, r->buf, r->cap, &ok);
    r->len = 0;
    if (!ok || n < HEADER_LEN + CRC_LEN || n > ETB_MAX_FRAME ||
        etb_crc16(0xFFFFu, r->buf, n - CRC_LEN) !=
            (uint16_t)(r->buf[n - 2] | ((uint16_t)r->buf[n - 1] << 8)) ||
        r->buf[0] != ETB_PROTOCOL_VERSION) {
        r->bad++;
        return 0;
    }
    r->frames++;
    return n - CRC_LEN;
}

int etb_parse_command(const uint8_t *raw, size_t len, etb_command *cmd)
{
    if (len < HEADER_LEN + 1 || (raw[1] & 0x80u) == 0) {
        return 0;
    }
    cmd->type = raw[1];
    cmd->token = raw[2];
    cmd->rate_mhz = 0;
    switch (raw[1]) {
    case ETB_CMD_START:
    case ETB_CMD_STOP:
    case ETB_CMD_DESCRIBE:
        return len == HEADER_LEN + 1;
    case ETB_CMD_SET_RATE:
        if (len != HEADER_LEN + 5) {
            return 0;
        }
        cmd->rate_mhz = (uint32_t)raw[3] | ((uint32_t)raw[4] << 8) | ((uint32_t)raw[5] << 16) |
                        ((uint32_t)raw[6] << 24);
        return 1;
    default:
        return 1; /* unknown command: the caller ACKs it with ETB_ACK_UNKNOWN_COMMAND */
    }
}
