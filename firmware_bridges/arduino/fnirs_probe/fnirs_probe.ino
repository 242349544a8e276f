// fnirs_probe: a two-wavelength DIY fNIRS probe speaking the edgetwin bridge protocol v1.
//
// Hardware (any 5 V / 3.3 V Arduino with a USB serial port; tested logic on the host with
// firmware_bridges/c/test/test_sketch.cpp):
//   PIN_LED_760, PIN_LED_850  -> gates of two logic-level MOSFETs (or an LED driver such as a
//                                constant-current sink) switching a 760 nm and an 850 nm LED
//   PIN_PD (A0)               <- photodiode behind a transimpedance amplifier (e.g. OPT101),
//                                30 mm from the LEDs on the skin (set DISTANCE_01MM)
// Each sample: read the dark level, light the 760 nm LED and read, dark again, light the
// 850 nm LED and read. Reported = lit - dark (ambient light and the amplifier's offset
// cancel), summed over OVERSAMPLE ADC reads; scale 1/OVERSAMPLE gives mean ADC counts.
//
// Build: arduino-cli compile --fqbn arduino:avr:leonardo --library ../../c fnirs_probe
// (the --library flag points at firmware_bridges/c, an Arduino library in flat layout).

#include <Arduino.h>
#include <etbridge.h>

#ifndef DEVICE_ID
#define DEVICE_ID "diy-fnirs-0001"  // make this unique per probe (it names the device)
#endif
#ifndef DISTANCE_01MM
#define DISTANCE_01MM 300  // source-detector distance, 0.1 mm units
#endif

static const uint8_t PIN_LED_760 = 5;
static const uint8_t PIN_LED_850 = 6;
static const uint8_t PIN_PD = A0;
static const uint8_t OVERSAMPLE = 16;
static const uint16_t SETTLE_US = 300;        // LED + amplifier settling before reading
static const uint32_t MIN_RATE_MHZ = 100;     // 0.1 Hz
static const uint32_t MAX_RATE_MHZ = 50000;   // 50 Hz: four 16-read bursts take ~8 ms on AVR

static const etb_channel CHANNELS[2] = {
    {"fnirs_s1_d1_760", "a.u.", ETB_I24, 1.0f / OVERSAMPLE, 0.0f, 760, DISTANCE_01MM},
    {"fnirs_s1_d1_850", "a.u.", ETB_I24, 1.0f / OVERSAMPLE, 0.0f, 850, DISTANCE_01MM},
};
static etb_device device = {DEVICE_ID, "diy-fnirs-2wl", 1, 0, 0, 10000UL, 2, CHANNELS};

static uint8_t tx[ETB_WIRE_SIZE(64)];  // largest frame we send: a channel descriptor
static uint8_t rx[32];                 // host commands are at most 9 bytes on the wire
static etb_reader reader;
static bool streaming = true;
static uint32_t seq = 0;               // rows sent since boot; skipped rows advance it too
static uint64_t next_due_us = 0;
static uint32_t last_micros = 0;
static uint64_t micros_high = 0;

// micros() wraps every 71.6 minutes; the protocol wants a 64-bit microsecond clock.
static uint64_t micros64() {
  uint32_t now = micros();
  if (now < last_micros) {
    micros_high += (uint64_t)1 << 32;
  }
  last_micros = now;
  return micros_high | now;
}

static uint64_t period_us() { return 1000000000ULL / device.rate_mhz; }

static void send(size_t n) {
  if (n) {
    Serial.write(tx, n);
  }
}

static void send_descriptor() {
  send(etb_encode_device(&device, streaming, tx, sizeof tx));
  for (uint8_t i = 0; i < device.n_channels; i++) {
    send(etb_encode_channel(&device, i, tx, sizeof tx));
  }
}

static int32_t read_sum() {
  int32_t sum = 0;
  for (uint8_t i = 0; i < OVERSAMPLE; i++) {
    sum += analogRead(PIN_PD);
  }
  return sum;
}

static int32_t lit_minus_dark(uint8_t led_pin) {
  const int32_t dark = read_sum();
  digitalWrite(led_pin, HIGH);
  delayMicroseconds(SETTLE_US);
  const int32_t lit = read_sum();
  digitalWrite(led_pin, LOW);
  return lit - dark;
}

static void handle(const etb_command &cmd) {
  uint8_t status = ETB_ACK_OK;
  switch (cmd.type) {
    case ETB_CMD_START:
      if (!streaming) {
        next_due_us = micros64();
      }
      streaming = true;
      break;
    case ETB_CMD_STOP:
      streaming = false;
      break;
    case ETB_CMD_DESCRIBE:
      break;
    case ETB_CMD_SET_RATE:
      if (cmd.rate_mhz < MIN_RATE_MHZ || cmd.rate_mhz > MAX_RATE_MHZ) {
        status = ETB_ACK_BAD_ARGUMENT;
      } else {
        device.rate_mhz = cmd.rate_mhz;
        next_due_us = micros64();
      }
      break;
    default:
      status = ETB_ACK_UNKNOWN_COMMAND;
  }
  send(etb_encode_ack(cmd.token, cmd.type, status, tx, sizeof tx));
  if (status == ETB_ACK_OK && (cmd.type == ETB_CMD_DESCRIBE || cmd.type == ETB_CMD_SET_RATE)) {
    send_descriptor();
  }
}

void setup() {
  pinMode(PIN_LED_760, OUTPUT);
  pinMode(PIN_LED_850, OUTPUT);
  digitalWrite(PIN_LED_760, LOW);
  digitalWrite(PIN_LED_850, LOW);
  Serial.begin(115200);
  etb_reader_init(&reader, rx, sizeof rx);
  Serial.write((uint8_t)0);  // ends whatever half frame the host holds from before a reset
  send_descriptor();
  next_due_us = micros64();
}

void loop() {
  while (Serial.available() > 0) {
    const size_t n = etb_reader_push(&reader, (uint8_t)Serial.read());
    etb_command cmd;
    if (n && etb_parse_command(rx, n, &cmd)) {
      handle(cmd);
    }
  }
  if (!streaming) {
    return;
  }
  const uint64_t now = micros64();
  if (now < next_due_us) {
    return;
  }
  const uint64_t period = period_us();
  const uint64_t behind = (now - next_due_us) / period;
  if (behind) {
    // We fell behind (e.g. a blocked serial write): skip rows but count them, so the
    // host sees a gap instead of silently stretched time.
    seq += (uint32_t)behind;
    next_due_us += behind * period;
  }
  const uint64_t t = micros64();
  next_due_us += period;
  const int32_t row[2] = {lit_minus_dark(PIN_LED_760), lit_minus_dark(PIN_LED_850)};
  send(etb_encode_samples(&device, seq, t, row, 1, tx, sizeof tx));
  seq++;
}
