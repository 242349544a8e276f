/* Host unit test of etbridge against the shared test vectors (build/vectors.h).
 * Silent on success; prints each failed check and exits 1 otherwise. */
#include <stdio.h>
#include <string.h>

#include "etbridge.h"
#include "vectors.h"

static int failures = 0;

#define CHECK(cond, name)                                                            \
    do {                                                                             \
        if (!(cond)) {                                                               \
            failures++;                                                              \
            fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,     \
                    (name), #cond);                                                  \
        }                                                                            \
    } while (0)

static uint8_t out[4096];
static uint8_t work[4096];

static void test_crc(void)
{
    size_t i;
    CHECK(etb_crc16(0xFFFFu, (const uint8_t *)"123456789", 9) == 0x29B1u, "crc check value");
    for (i = 0; i < N_ELEMS(CRC_CASES); i++) {
        CHECK(etb_crc16(0xFFFFu, CRC_CASES[i].data, CRC_CASES[i].len) == CRC_CASES[i].crc,
              "crc case");
    }
}

static void test_cobs(void)
{
    size_t i;
    for (i = 0; i < N_ELEMS(COBS_CASES); i++) {
        size_t n = etb_cobs_encode(COBS_CASES[i].raw, COBS_CASES[i].raw_len, out, sizeof out);
        int ok = 0;
        CHECK(n == COBS_CASES[i].enc_len, "cobs encode length");
        CHECK(memcmp(out, COBS_CASES[i].enc, COBS_CASES[i].enc_len) == 0, "cobs encode bytes");
        CHECK(memchr(out, 0, n) == NULL, "cobs output has no zero");
        CHECK(etb_cobs_encode(COBS_CASES[i].raw, COBS_CASES[i].raw_len, out, n - 1) == 0,
              "cobs encode refuses a short buffer");
        memcpy(work, COBS_CASES[i].enc, COBS_CASES[i].enc_len);
        n = etb_cobs_decode(work, COBS_CASES[i].enc_len, work, sizeof work, &ok);
        CHECK(ok && n == COBS_CASES[i].raw_len, "cobs decode in place");
        CHECK(memcmp(work, COBS_CASES[i].raw, COBS_CASES[i].raw_len) == 0, "cobs decode bytes");
    }
}

static size_t encode_case(size_t i, uint8_t *buf, size_t cap)
{
    switch (FRAME_CASES[i].kind) {
    case K_DEVICE:
        return etb_encode_device(FRAME_CASES[i].dev, FRAME_CASES[i].streaming, buf, cap);
    case K_CHANNEL:
        return etb_encode_channel(FRAME_CASES[i].dev, FRAME_CASES[i].index, buf, cap);
    case K_SAMPLES:
        return etb_encode_samples(FRAME_CASES[i].dev, FRAME_CASES[i].seq, FRAME_CASES[i].t_us,
                                  FRAME_CASES[i].rows, FRAME_CASES[i].n_rows, buf, cap);
    case K_ACK:
        return etb_encode_ack(FRAME_CASES[i].token, FRAME_CASES[i].command,
                              FRAME_CASES[i].status, buf, cap);
    default:
        return etb_encode_command(FRAME_CASES[i].type, FRAME_CASES[i].token,
                                  FRAME_CASES[i].rate_mhz, buf, cap);
    }
}

static void test_frames(void)
{
    size_t i, k;
    for (i = 0; i < N_ELEMS(FRAME_CASES); i++) {
        const char *name = FRAME_CASES[i].name;
        const size_t wire_len = FRAME_CASES[i].wire_len;
        size_t n = encode_case(i, out, sizeof out);
        etb_reader r;
        size_t raw_len = 0;
        CHECK(n == wire_len, name);
        CHECK(n == wire_len && memcmp(out, FRAME_CASES[i].wire, wire_len) == 0, name);
        /* The documented minimum buffer works; one byte less is refused, never overrun. */
        memset(work, 0xA5, sizeof work);
        n = encode_case(i, work, ETB_WIRE_SIZE(wire_len));
        CHECK(n == wire_len && memcmp(work, FRAME_CASES[i].wire, wire_len) == 0, name);
        n = encode_case(i, work, wire_len - 1);
        CHECK(n == 0, name);

        etb_reader_init(&r, work, sizeof work);
        for (k = 0; k < wire_len; k++) {
            size_t got = etb_reader_push(&r, FRAME_CASES[i].wire[k]);
            if (got) {
                raw_len = got;
            }
        }
        CHECK(r.frames == 1 && r.bad == 0 && raw_len > 2, name);
        CHECK(work[0] == ETB_PROTOCOL_VERSION, name);
        if (FRAME_CASES[i].kind == K_COMMAND) {
            etb_command cmd;
            CHECK(etb_parse_command(work, raw_len, &cmd) == 1, name);
            CHECK(cmd.type == FRAME_CASES[i].type && cmd.token == FRAME_CASES[i].token &&
                      cmd.rate_mhz == FRAME_CASES[i].rate_mhz,
                  name);
        } else {
            etb_command cmd;
            CHECK(etb_parse_command(work, raw_len, &cmd) == 0, name);
        }
    }
}

static void test_bad(void)
{
    size_t i, k;
    for (i = 0; i < N_ELEMS(BAD_CASES); i++) {
        etb_reader r;
        size_t raw_len = 0;
        etb_reader_init(&r, work, VEC_MAX_ENCODED);
        for (k = 0; k < BAD_CASES[i].len; k++) {
            size_t got = etb_reader_push(&r, BAD_CASES[i].wire[k]);
            if (got) {
                raw_len = got;
            }
        }
        if (BAD_CASES[i].frame_layer) {
            CHECK(raw_len == 0 && r.bad == 1 && r.frames == 0, BAD_CASES[i].name);
        } else {
            etb_command cmd;
            CHECK(raw_len > 0 && etb_parse_command(work, raw_len, &cmd) == 0, BAD_CASES[i].name);
        }
    }
}

static void test_stream(void)
{
    etb_reader r;
    size_t k;
    etb_reader_init(&r, work, VEC_MAX_ENCODED);
    for (k = 0; k < STREAM_LEN; k++) {
        (void)etb_reader_push(&r, stream_wire[k]);
    }
    CHECK(r.frames == STREAM_FRAMES, "stream good frames");
    CHECK(r.bad == STREAM_BAD, "stream bad frames");
}

static void test_small_reader_resyncs(void)
{
    uint8_t small[32];
    uint8_t cmd_wire[16];
    etb_reader r;
    etb_command cmd;
    size_t k, n, got = 0;
    etb_reader_init(&r, small, sizeof small);
    for (k = 0; k < 500; k++) {
        CHECK(etb_reader_push(&r, (uint8_t)(1 + k % 250)) == 0, "garbage yields nothing");
    }
    CHECK(r.bad == 1 && r.len == 0, "oversize run counted once");
    n = etb_encode_command(ETB_CMD_STOP, 42, 0, cmd_wire, sizeof cmd_wire);
    CHECK(n > 0, "encode stop");
    CHECK(etb_reader_push(&r, 0) == 0, "delimiter ends the drop");
    for (k = 0; k < n; k++) {
        size_t g = etb_reader_push(&r, cmd_wire[k]);
        if (g) {
            got = g;
        }
    }
    CHECK(got && etb_parse_command(small, got, &cmd) && cmd.type == ETB_CMD_STOP &&
              cmd.token == 42,
          "command after resync");
}

static void test_argument_checks(void)
{
    static const etb_channel ch[1] = {{"ppg", "a.u.", ETB_I16, 1.0f, 0.0f, 0, 0}};
    static const etb_device dev = {"x", "", 1, 0, 0, 1000u, 1, ch};
    static const etb_device no_rate = {"x", "", 1, 0, 0, 0u, 1, ch};
    const int32_t too_big[1] = {40000};
    const int32_t ok[1] = {-32768};
    CHECK(etb_encode_samples(&dev, 0, 0, too_big, 1, out, sizeof out) == 0, "int16 range");
    CHECK(etb_encode_samples(&dev, 0, 0, ok, 1, out, sizeof out) > 0, "int16 min");
    CHECK(etb_encode_samples(&dev, 0, 0, ok, 0, out, sizeof out) == 0, "zero rows");
    CHECK(etb_encode_channel(&dev, 1, out, sizeof out) == 0, "channel index");
    CHECK(etb_encode_device(&no_rate, 1, out, sizeof out) == 0, "zero rate");
    CHECK(etb_encode_command(0x01, 0, 0, out, sizeof out) == 0, "command type needs top bit");
    CHECK(etb_row_bytes(&dev) == 2, "row bytes");
}

int main(void)
{
    CHECK(VEC_PROTOCOL_VERSION == ETB_PROTOCOL_VERSION, "protocol version");
    CHECK(VEC_MAX_FRAME == ETB_MAX_FRAME, "max frame");
    CHECK(VEC_MAX_ENCODED == ETB_MAX_ENCODED, "max encoded");
    test_crc();
    test_cobs();
    test_frames();
    test_bad();
    test_stream();
    test_small_reader_resyncs();
    test_argument_checks();
    if (failures) {
        fprintf(stderr, "etbridge: %d check(s) failed\n", failures);
        return 1;
    }
    return 0;
}
