# main.py: a two-wavelength DIY fNIRS probe on an RP2040 (Raspberry Pi Pico) running MicroPython,
# speaking the edgetwin bridge protocol v1 over the USB serial port.
#
# Copy etbridge.py and this file to the board (mpremote cp etbridge.py main.py :). Wiring:
#   GP14 -> 760 nm LED driver gate, GP15 -> 850 nm LED driver gate (logic-level MOSFETs or a
#   constant-current sink), GP26/ADC0 <- photodiode transimpedance amplifier (e.g. OPT101).
# Each row: dark, 760 nm lit, dark, 850 nm lit; reported = lit - dark, summed over OVERSAMPLE
# reads of the 12-bit ADC (read_u16 returns it scaled to 16 bits; we shift back).
#
# The USB serial port carries binary frames, so Ctrl-C must not interrupt us: a 0x03 byte in a
# host command would otherwise raise KeyboardInterrupt. To get a REPL back, hold GP22 low at
# boot (SAFE_PIN) and this file returns immediately.

import select
import sys
import time

import machine
import micropython

import etbridge as etb

SAFE_PIN = 22
OVERSAMPLE = 16
SETTLE_US = 200
DISTANCE_01MM = 300
MIN_RATE_MHZ = 100
MAX_RATE_MHZ = 100000


def _device_id():
    return "rp2040-" + "".join("%02x" % b for b in machine.unique_id())


class Clock64:
    """A 64-bit microsecond clock from MicroPython's wrapping ticks_us()."""

    def __init__(self):
        self.last = time.ticks_us()
        self.total = 0

    def now(self):
        t = time.ticks_us()
        self.total += time.ticks_diff(t, self.last)
        self.last = t
        return self.total


class Probe:
    def __init__(self):
        self.led760 = machine.Pin(14, machine.Pin.OUT, value=0)
        self.led850 = machine.Pin(15, machine.Pin.OUT, value=0)
        self.adc = machine.ADC(26)
        scale = 1.0 / OVERSAMPLE
        self.device = etb.Device(
            _device_id(),
            "diy-fnirs-2wl-rp2040",
            (1, 0, 0),
            10000,
            [
                ("fnirs_s1_d1_760", "a.u.", etb.I24, scale, 0.0, 760, DISTANCE_01MM),
                ("fnirs_s1_d1_850", "a.u.", etb.I24, scale, 0.0, 850, DISTANCE_01MM),
            ],
        )
        self.out = sys.stdout.buffer
        self.inp = sys.stdin.buffer
        self.poll = select.poll()
        self.poll.register(sys.stdin, select.POLLIN)
        self.reader = etb.CommandReader()
        self.clock = Clock64()
        self.streaming = True
        self.seq = 0
        self.next_due = 0

    def period_us(self):
        return 1000000000 // self.device.rate_mhz

    def read_sum(self):
        s = 0
        for _ in range(OVERSAMPLE):
            s += self.adc.read_u16() >> 4
        return s

    def lit_minus_dark(self, led):
        dark = self.read_sum()
        led.value(1)
        time.sleep_us(SETTLE_US)
        lit = self.read_sum()
        led.value(0)
        return lit - dark

    def send(self, data):
        self.out.write(data)

    def handle(self, cmd):
        ftype, token, arg = cmd
        status = etb.ACK_OK
        if ftype == etb.CMD_START:
            if not self.streaming:
                self.next_due = self.clock.now()
            self.streaming = True
        elif ftype == etb.CMD_STOP:
            self.streaming = False
        elif ftype == etb.CMD_SET_RATE:
            if MIN_RATE_MHZ <= arg <= MAX_RATE_MHZ:
                self.device.rate_mhz = arg
                self.next_due = self.clock.now()
            else:
                status = etb.ACK_BAD_ARGUMENT
        elif ftype != etb.CMD_DESCRIBE:
            status = etb.ACK_UNKNOWN_COMMAND
        self.send(etb.ack_frame(token, ftype, status))
        if status == etb.ACK_OK and ftype in (etb.CMD_DESCRIBE, etb.CMD_SET_RATE):
            self.send(self.device.descriptor_frames(self.streaming))

    def service_host(self):
        while self.poll.poll(0):
            data = self.inp.read(1)
            if not data:
                return
            for cmd in self.reader.feed(data):
                self.handle(cmd)

    def run(self):
        self.send(b"\x00" + self.device.descriptor_frames(self.streaming))
        self.next_due = self.clock.now()
        while True:
            self.service_host()
            if not self.streaming:
                time.sleep_ms(1)
                continue
            now = self.clock.now()
            if now < self.next_due:
                continue
            period = self.period_us()
            behind = (now - self.next_due) // period
            if behind:
                # Fell behind: skip rows but count them so the host sees the gap.
                self.seq += behind
                self.next_due += behind * period
            t = self.clock.now()
            self.next_due += period
            row = [self.lit_minus_dark(self.led760), self.lit_minus_dark(self.led850)]
            self.send(self.device.samples_frame(self.seq, t, [row]))
            self.seq += 1


def main():
    if machine.Pin(SAFE_PIN, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0:
        return
    micropython.kbd_intr(-1)
    Probe().run()


main()
