/* Runs the Arduino fNIRS sketch on the host against a simulated probe and checks its output
 * with the library's own frame reader: descriptor at boot, dark-subtracted samples at the
 * configured rate, commands (SET_RATE, STOP, DESCRIBE, START) and the 64-bit clock across a
 * micros() wrap. Silent on success. */
#include <stdio.h>
#include <string.h>

#include "Arduino.h"
#include "etbridge.h"

/* The sketch under test, compiled as part of this file. */
#include "../../arduino/fnirs_probe/fnirs_probe.ino"

static uint32_t sim_us = 0xFFFFFFFFu - 400000u; /* micros() wraps 0.4 s into the run */
static uint8_t pins[32];
static uint8_t host_in[256];
static size_t host_in_len = 0, host_in_pos = 0;
static uint8_t out[65536];
static size_t out_len = 0;
static int failures = 0;

void pinMode(uint8_t, uint8_t) {}
void digitalWrite(uint8_t pin, uint8_t value) { pins[pin] = value; }
int analogRead(uint8_t) {
    sim_us += 112; /* an AVR conversion */
    /* Dark level (ambient + amplifier offset) plus what each lit LED adds at the detector. */
    return 100 + (pins[5] ? 300 : 0) + (pins[6] ? 500 : 0);
}
unsigned long micros(void) { return sim_us; }
void delayMicroseconds(unsigned int us) { sim_us += us; }
void StubSerial::begin(unsigned long) {}
int StubSerial::available(void) { return (int)(host_in_len - host_in_pos); }
int StubSerial::read(void) { return host_in_pos < host_in_len ? host_in[host_in_pos++] : -1; }
size_t StubSerial::write(uint8_t b) { return write(&b, 1); }
size_t StubSerial::write(const uint8_t *data, size_t len) {
    if (out_len + len <= sizeof out) {
        memcpy(out + out_len, data, len);
        out_len += len;
    }
    return len;
}
StubSerial Serial;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            failures++;                                                              \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

struct Seen {
    unsigned device, channel, samples, acks, bad;
    uint32_t rate_mhz, first_seq, last_seq;
    uint64_t last_t;
    int32_t last_row[2];
    uint8_t last_ack_status;
    bool monotonic;
};

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static int32_t le24s(const uint8_t *p) {
    uint32_t u = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16);
    return (u & 0x800000u) ? (int32_t)(u | 0xFF000000u) : (int32_t)u;
}

/* Decode everything the sketch wrote since the last call. */
static Seen drain(void) {
    static uint8_t buf[ETB_MAX_ENCODED];
    etb_reader r;
    Seen s = {};
    s.monotonic = true;
    s.first_seq = 0xFFFFFFFFu;
    etb_reader_init(&r, buf, sizeof buf);
    for (size_t i = 0; i < out_len; i++) {
        size_t n = etb_reader_push(&r, out[i]);
        if (!n) continue;
        switch (buf[1]) {
        case ETB_T_DEVICE: s.device++; s.rate_mhz = le32(buf + 6); break;
        case ETB_T_CHANNEL: s.channel++; break;
        case ETB_T_ACK: s.acks++; s.last_ack_status = buf[4]; break;
        case ETB_T_SAMPLES: {
            uint32_t seq = le32(buf + 2);
            uint64_t t = (uint64_t)le32(buf + 6) | ((uint64_t)le32(buf + 10) << 32);
            if (s.samples && t <= s.last_t) s.monotonic = false;
            if (seq < s.first_seq) s.first_seq = seq;
            s.last_seq = seq;
            s.last_t = t;
            s.last_row[0] = le24s(buf + 15);
            s.last_row[1] = le24s(buf + 18);
            s.samples++;
            break;
        }
        default: break;
        }
    }
    s.bad = r.bad;
    out_len = 0;
    return s;
}

static void run_for(uint32_t us) {
    const uint32_t start = sim_us;
    while ((uint32_t)(sim_us - start) < us) {
        loop();
        sim_us += 50; /* time passes between loop() calls */
    }
}

static void host_sends(uint8_t type, uint8_t token, uint32_t rate_mhz) {
    host_in_len += etb_encode_command(type, token, rate_mhz, host_in + host_in_len,
                                      sizeof host_in - host_in_len);
}

int main(void) {
    setup();
    run_for(1000000);
    Seen s = drain();
    CHECK(s.bad == 0);
    CHECK(s.device == 1 && s.channel == 2);       /* descriptor at boot */
    CHECK(s.rate_mhz == 10000);
    CHECK(s.samples >= 9 && s.samples <= 11);      /* 10 Hz for one second */
    CHECK(s.first_seq == 0 && s.last_seq == s.samples - 1);
    CHECK(s.monotonic);                            /* across the micros() wrap */
    CHECK(s.last_t > 0xFFFFFFFFull);
    CHECK(s.last_row[0] == 300 * 16 && s.last_row[1] == 500 * 16); /* lit - dark, summed */

    host_sends(ETB_CMD_SET_RATE, 7, 20000);
    run_for(1000000);
    s = drain();
    CHECK(s.acks == 1 && s.last_ack_status == ETB_ACK_OK);
    CHECK(s.device == 1 && s.rate_mhz == 20000);
    CHECK(s.samples >= 19 && s.samples <= 21);

    host_sends(ETB_CMD_SET_RATE, 8, 999999);       /* 1 kHz: too fast for this probe */
    host_sends(ETB_CMD_STOP, 9, 0);
    run_for(500000);
    s = drain();
    CHECK(s.acks == 2 && s.last_ack_status == ETB_ACK_OK);
    CHECK(s.samples <= 1);                         /* STOP ends streaming */

    const uint32_t seq_before = seq;
    host_sends(0x9E, 1, 0);                        /* a command from a newer host */
    host_sends(ETB_CMD_DESCRIBE, 10, 0);
    host_sends(ETB_CMD_START, 11, 0);
    run_for(500000);
    s = drain();
    CHECK(s.acks == 3 && s.device == 1 && s.channel == 2);
    CHECK(s.samples >= 9 && s.samples <= 11);
    CHECK(s.first_seq == seq_before);              /* no gap invented by STOP/START */

    if (failures) {
        fprintf(stderr, "fnirs_probe sketch: %d check(s) failed\n", failures);
        return 1;
    }
    return 0;
}
