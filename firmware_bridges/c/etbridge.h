/*
 * etbridge: edgetwin firmware-bridge protocol v1 (see ../PROTOCOL.md), device side, C99.
 *
 * Portable to 8-bit AVR, ARM Cortex-M and hosts: no malloc, no global state, no floating
 * point arithmetic (floats are only copied as IEEE-754 bit patterns), no stdio. Every
 * function writes into a buffer the caller owns and returns the number of bytes written,
 * 0 when the buffer is too small or an argument is out of range.
 *
 * Wire format of a frame:  COBS(version | type | body | crc16_le) 0x00
 * CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, unreflected, no final xor) over
 * version..body.
 */
#ifndef ETBRIDGE_H
#define ETBRIDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ETB_PROTOCOL_VERSION 1u
/* Largest raw frame, version byte to CRC inclusive. */
#define ETB_MAX_FRAME 1024u
/* Largest COBS-encoded frame without its 0x00 delimiter. */
#define ETB_MAX_ENCODED (ETB_MAX_FRAME + (ETB_MAX_FRAME + 253u) / 254u)
/* Buffer size that always holds the wire form (COBS + delimiter) of a raw frame of n bytes. */
#define ETB_WIRE_SIZE(n) ((n) + (n) / 254u + 2u)
#define ETB_MAX_CHANNELS 64u

/* Frame types; host-to-device commands have the top bit set. */
enum {
    ETB_T_DEVICE = 0x01,
    ETB_T_CHANNEL = 0x02,
    ETB_T_SAMPLES = 0x03,
    ETB_T_ACK = 0x04,
    ETB_CMD_START = 0x81,
    ETB_CMD_STOP = 0x82,
    ETB_CMD_SET_RATE = 0x83,
    ETB_CMD_DESCRIBE = 0x84
};

/* Sample formats: little-endian two's complement, the value is the width in bytes. */
enum { ETB_I8 = 1, ETB_I16 = 2, ETB_I24 = 3, ETB_I32 = 4 };

/* ACK status codes. */
enum { ETB_ACK_OK = 0, ETB_ACK_UNKNOWN_COMMAND = 1, ETB_ACK_BAD_ARGUMENT = 2, ETB_ACK_NOT_READY = 3 };

/* One channel. physical = raw * scale + offset, in `unit`. Names follow edgetwin's channel
 * naming: ppg, eda, temp, accel_x, fnirs_<source>_<detector>_<nm>, ... ([a-z][a-z0-9_]*). */
typedef struct {
    const char *name;        /* 1..32 bytes */
    const char *unit;        /* 0..16 bytes UTF-8, e.g. "a.u.", "uS", "degC" */
    uint8_t format;          /* ETB_I8 .. ETB_I32 */
    float scale;             /* non-zero */
    float offset;
    uint16_t wavelength_nm;  /* fNIRS: emitter wavelength; else 0 */
    uint16_t distance_01mm;  /* fNIRS: source-detector distance in 0.1 mm; else 0 */
} etb_channel;

/* The device description sent at boot and on DESCRIBE. */
typedef struct {
    const char *device_id;   /* 1..32 ASCII bytes, stable per unit (e.g. the MCU serial) */
    const char *model;       /* 0..32 ASCII bytes */
    uint8_t fw_major, fw_minor, fw_patch;
    uint32_t rate_mhz;       /* sample rate in millihertz, > 0 */
    uint8_t n_channels;      /* 1..64 */
    const etb_channel *channels;
} etb_device;

/* A decoded host command. rate_mhz is set only for ETB_CMD_SET_RATE. */
typedef struct {
    uint8_t type;
    uint8_t token;
    uint32_t rate_mhz;
} etb_command;

/* Byte-at-a-time frame reader over a caller-owned buffer (size it ETB_WIRE_SIZE of the
 * largest frame you accept; 32 bytes is plenty for host commands). Longer runs are dropped
 * up to the next 0x00 and counted in `bad`, like frames that fail COBS, CRC or version. */
typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    uint8_t dropping;
    uint32_t frames;
    uint32_t bad;
} etb_reader;

uint16_t etb_crc16(uint16_t crc, const uint8_t *data, size_t len);

/* COBS-encode len bytes into out (no delimiter). in and out may overlap when
 * out + len / 254 + 2 <= in (the encoders below rely on it). Returns the encoded length. */
size_t etb_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);

/* Decode COBS; out may equal in. Returns 0 and sets *ok = 0 on malformed input. */
size_t etb_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, int *ok);

/* Frame encoders: write the wire bytes (delimiter included) into out; 0 on error. */
size_t etb_encode_device(const etb_device *dev, int streaming, uint8_t *out, size_t cap);
size_t etb_encode_channel(const etb_device *dev, uint8_t index, uint8_t *out, size_t cap);
/* rows: n_rows * n_channels values, row-major; each must fit its channel's format. */
size_t etb_encode_samples(const etb_device *dev, uint32_t seq, uint64_t t_us,
                          const int32_t *rows, uint8_t n_rows, uint8_t *out, size_t cap);
size_t etb_encode_ack(uint8_t token, uint8_t command, uint8_t status, uint8_t *out, size_t cap);
size_t etb_encode_command(uint8_t type, uint8_t token, uint32_t rate_mhz, uint8_t *out,
                          size_t cap);
/* Raw bytes of one SAMPLES row (sum of channel widths). */
size_t etb_row_bytes(const etb_device *dev);

void etb_reader_init(etb_reader *r, uint8_t *buf, size_t cap);
/* Feed one byte. Returns the length of a complete, CRC-checked raw frame (version..body,
 * CRC stripped) now at r->buf, or 0. */
size_t etb_reader_push(etb_reader *r, uint8_t byte);
/* Interpret a raw frame from etb_reader_push as a host command; 1 if it is one. Unknown
 * command types (top bit set) are returned too, so the device can ACK them as unknown. */
int etb_parse_command(const uint8_t *raw, size_t len, etb_command *cmd);

#ifdef __cplusplus
}
#endif

#endif /* ETBRIDGE_H */
