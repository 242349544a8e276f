"""An emulated BlueZ on a private D-Bus, so bleak's real BlueZ backend can be tested.

bleak is used unmodified: it talks D-Bus to whatever owns ``org.bluez`` on the
bus that ``DBUS_SYSTEM_BUS_ADDRESS`` names. This module starts a private
``dbus-daemon`` (``PrivateBus``) and exports, with dbus-fast's service
interfaces, what bluetoothd would: adapter ``/org/bluez/hci0``, devices at
``/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF`` and, once connected, their GATT
services and characteristics at ``.../serviceXXXX/charYYYY`` (bleak derives
handles and device paths from these exact shapes). dbus-fast answers
``GetManagedObjects`` and emits ``InterfacesAdded``/``InterfacesRemoved`` for
exported objects, which is the ObjectManager bleak reads.

Three peripherals are modelled: a chest strap (Heart Rate with RR-intervals),
a pulse oximeter (PLX continuous + spot-check) and a thermometer (Health
Thermometer). Each can misbehave on demand, seeded: drop the link, refuse or
never answer connections, go out of range, send malformed payloads or RR
outliers. A small control interface (``org.edgetwin.Emulator1`` at
``/org/edgetwin/emulator``) offers the same knobs to other processes.

Room climate: an Environmental Sensing (0x181A) sensor over GATT (temperature and
humidity notify, pressure is read-only) and BTHome v2 advertisers (``BTHomeSensor``:
readings in Device1 ``ServiceData``, plain or AES-CCM encrypted with a bind key, a new
packet every ``1 / rate_hz`` s and BlueZ's repeated reports in between via
``PropertiesChanged``). ``vanish``/``appear`` remove and restore a device object,
``set_service_data`` injects any advert (a replay). With ``advertisement_monitor=True``
hci0 also offers ``AdvertisementMonitorManager1`` so bleak can scan passively.

Run it in the test's event loop (``BlueZEmulator``) or as its own process::

    python -m tests.sources.bluez_emulator --bus unix:path=/tmp/x/bus \\
        --device heart_rate:AA:BB:CC:DD:EE:01:Strap --rate 1

It prints ``READY <bus address>`` once ``org.bluez`` is owned.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import datetime as dt
import logging
import math
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from dbus_fast import BusType, DBusError, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusInt16,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
    DBusUInt16,
    DBusUInt32,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from edgetwin.sources import gatt as g

_LOGGER = logging.getLogger(__name__)

StrList = Annotated[list[str], DBusSignature("as")]
Options = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
MfrData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]
FdAndMtu = Annotated[list[Any], DBusSignature("hq")]

ADAPTER_PATH = "/org/bluez/hci0"
CONTROL_PATH = "/org/edgetwin/emulator"
CONTROL_INTERFACE = "org.edgetwin.Emulator1"
READ = PropertyAccess.READ
RW = PropertyAccess.READWRITE

PROFILE_SERVICE = {
    "heart_rate": g.HEART_RATE_SERVICE,
    "pulse_oximeter": g.PULSE_OXIMETER_SERVICE,
    "thermometer": g.HEALTH_THERMOMETER_SERVICE,
    "environmental": g.ENVIRONMENTAL_SENSING_SERVICE,
}
BTHOME_V2_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"


def device_path(address: str) -> str:
    """The BlueZ object path of a device on hci0."""
    return f"{ADAPTER_PATH}/dev_{address.upper().replace(':', '_')}"


# -- the private bus ------------------------------------------------------------------

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


async def release_bleak() -> None:
    """Close the D-Bus connection bleak keeps per event loop (it never closes it itself)."""
    from bleak.backends.bluezdbus import manager as bluez_manager

    mgr = bluez_manager._global_instances.pop(asyncio.get_running_loop(), None)
    if mgr is None:
        return
    # The manager's watcher would report our own disconnect as a lost bus (a WARNING).
    mgr._handle_bus_disconnect = lambda exc: None  # type: ignore[method-assign]
    if mgr._bus is not None:
        mgr._bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(mgr._bus.wait_for_disconnect(), 5)
    if mgr._bus_watcher_task is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(mgr._bus_watcher_task, 5)


def _die_with_parent() -> None:
    """Child-side: get SIGTERM if the test process dies, so no dbus-daemon is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class PrivateBus:
    """A throw-away ``dbus-daemon`` listening on a unix socket in a temp dir."""

    def __init__(self, directory: Path | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgetwin-dbus-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.address = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> str:
        """Launch the daemon; returns its address once it accepts connections."""
        sock = self.directory / "bus"
        config = self.directory / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=sock))
        self._proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError("dbus-daemon did not start")
            chunk = self._proc.stdout.readline()
            line += chunk
        self.address = line.decode().strip()
        return self.address

    def stop(self) -> None:
        """Terminate the daemon (kill after 5 s) and remove the temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> PrivateBus:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- peripheral models ------------------------------------------------------------------


@dataclass
class CharSpec:
    """A characteristic a peripheral offers: UUID, BlueZ flags, how to read it."""

    uuid: str
    flags: list[str]
    read: Callable[[], bytes] | None = None


@dataclass
class Faults:
    """What a peripheral does wrong next; counts go down as faults are delivered."""

    malformed: int = 0
    rr_outliers: int = 0
    refuse: str | None = None  # D-Bus error name Connect answers with
    refuse_message: str = "le-connection-abort-by-remote"
    hang: bool = False  # Connect never answers (until cancelled by Disconnect)
    present: bool = True  # advertising and in range
    flaky_connects: int = 0  # connections that die while services are being resolved


class Peripheral:
    """Base of the emulated sensors: identity, GATT layout, one measurement stream."""

    profile = ""
    model_name = "EMU"

    def __init__(
        self,
        address: str,
        name: str,
        *,
        rate_hz: float = 1.0,
        seed: int = 0,
        model_seconds: float | None = None,
        missing: Iterable[str] = (),
        rssi: int = -60,
    ) -> None:
        self.address = address.upper()
        self.local_name = name
        self.rate_hz = rate_hz
        self.rng = random.Random(seed)
        # model time per notification; None = real elapsed time (physiologically paced)
        self.model_seconds = model_seconds
        self.missing = {m if "-" in m else g.uuid16(int(m, 16)) for m in missing}
        self.rssi = rssi
        self.battery = 87
        self.faults = Faults()
        self.sent: collections.deque[tuple[float, str, bytes]] = collections.deque(maxlen=20000)
        self.stats = collections.Counter[str]()

    # subclasses fill these in
    def measurement_uuids(self) -> list[str]:
        raise NotImplementedError

    def next_payload(self, uuid: str, dt_s: float) -> bytes | None:
        raise NotImplementedError

    def malformed_payload(self, uuid: str) -> bytes:
        """A payload that breaks the format: truncated, reserved flags or trailing bytes."""
        good = self.next_payload(uuid, 0.0) or b"\x00\x00\x00"
        kind = self.rng.randrange(3)
        if kind == 0:
            return good[: self.rng.randrange(0, max(1, len(good) - 1))]
        if kind == 1:
            return bytes([good[0] | 0x80]) + good[1:]
        return good + b"\xee"

    def services(self) -> list[tuple[str, list[CharSpec]]]:
        """The GATT layout, before removing ``missing`` characteristics."""
        return [
            (g.BATTERY_SERVICE, [CharSpec(g.BATTERY_LEVEL, ["read", "notify"], self._battery)]),
            (
                g.DEVICE_INFORMATION_SERVICE,
                [
                    CharSpec(g.uuid16(0x2A29), ["read"], lambda: b"edgetwin emulator\x00"),
                    CharSpec(g.uuid16(0x2A24), ["read"], self.model_name.encode),
                    CharSpec(g.uuid16(0x2A26), ["read"], lambda: b"1.0.0"),
                ],
            ),
        ]

    def advertised_uuids(self) -> list[str]:
        return [PROFILE_SERVICE[self.profile]] if self.profile else []

    def service_data(self) -> dict[str, bytes]:
        """Device1 ``ServiceData`` as BlueZ presents it (none for GATT health sensors)."""
        return {}

    def manufacturer_data(self) -> dict[int, bytes]:
        """Device1 ``ManufacturerData``."""
        return {0xFFFF: b"edgetwin"}

    def _battery(self) -> bytes:
        return g.encode_battery_level(self.battery)


class HeartRateStrap(Peripheral):
    """A chest strap: HR every notification, RR-intervals of the beats since the last one."""

    profile = "heart_rate"
    model_name = "HRM-EMU"

    def __init__(self, address: str, name: str = "EMU Strap", *, bpm: float = 62.0,
                 **kwargs: Any) -> None:
        super().__init__(address, name, **kwargs)
        self.base_bpm = bpm
        self.contact = True
        self._t = 0.0
        self._rr_ms = self._draw_rr()
        self._next_beat = self._rr_ms / 1000.0
        self._bpm = round(bpm)

    def measurement_uuids(self) -> list[str]:
        return [g.HEART_RATE_MEASUREMENT]

    def services(self) -> list[tuple[str, list[CharSpec]]]:
        hr = [
            CharSpec(g.HEART_RATE_MEASUREMENT, ["notify"]),
            CharSpec(g.BODY_SENSOR_LOCATION, ["read"],
                     lambda: g.encode_body_sensor_location(g.BodySensorLocation.CHEST)),
        ]
        return [(g.HEART_RATE_SERVICE, hr), *super().services()]

    def beats(self, dt_s: float) -> list[float]:
        """RR-intervals (ms) of the beats that end within the next ``dt_s`` model seconds."""
        self._t += dt_s
        out: list[float] = []
        while self._next_beat <= self._t:
            out.append(self._rr_ms)
            self._rr_ms = self._draw_rr()
            self._next_beat += self._rr_ms / 1000.0
        return out

    def next_payload(self, uuid: str, dt_s: float) -> bytes | None:
        rr_ms = self.beats(dt_s)
        if self.faults.rr_outliers and rr_ms:
            self.faults.rr_outliers -= 1
            rr_ms[0] = self.rng.choice([120.0, 3100.0])  # ectopic/missed-beat artefacts
        if rr_ms:
            self._bpm = max(25, min(240, round(60000.0 / (sum(rr_ms) / len(rr_ms)))))
        m = g.HeartRateMeasurement(
            bpm=self._bpm,
            rr_raw=tuple(g.rr_ms_to_raw(r) for r in rr_ms),
            contact_supported=True,
            contact_detected=self.contact,
        )
        return g.encode_heart_rate(m)

    def _draw_rr(self) -> float:
        # respiratory sinus arrhythmia (0.25 Hz) plus beat-to-beat noise
        base = 60000.0 / self.base_bpm
        rsa = 0.04 * math.sin(2 * math.pi * 0.25 * self._t)
        return max(320.0, min(1900.0, base * (1 + rsa + self.rng.gauss(0, 0.015))))


class PulseOximeter(Peripheral):
    """A fingertip oximeter: PLX continuous notifications, spot-checks on demand."""

    profile = "pulse_oximeter"
    model_name = "PLX-EMU"

    def __init__(self, address: str, name: str = "EMU Oximeter", **kwargs: Any) -> None:
        super().__init__(address, name, **kwargs)
        self.spo2 = 97.0
        self.pulse = 64.0
        self.status = 0

    def measurement_uuids(self) -> list[str]:
        return [g.PLX_CONTINUOUS, g.PLX_SPOT_CHECK]

    def services(self) -> list[tuple[str, list[CharSpec]]]:
        plx = [CharSpec(g.PLX_CONTINUOUS, ["notify"]), CharSpec(g.PLX_SPOT_CHECK, ["indicate"])]
        return [(g.PULSE_OXIMETER_SERVICE, plx), *super().services()]

    def next_payload(self, uuid: str, dt_s: float) -> bytes | None:
        spo2 = g.SFloat.from_float(self.spo2 + self.rng.gauss(0, 0.4), exponent=-1)
        pulse = g.SFloat.from_float(self.pulse + self.rng.gauss(0, 1.0), exponent=-1)
        if uuid == g.PLX_SPOT_CHECK:
            if dt_s:  # spot-checks are sent by send_spot_check(), not on the clock
                return None
            return g.encode_plx_spot_check(
                g.PlxSpotCheck(
                    spo2, pulse, timestamp=g.DateTime.from_datetime(dt.datetime.now()),
                    measurement_status=self.status,
                )
            )
        return g.encode_plx_continuous(
            g.PlxContinuous(spo2, pulse, measurement_status=self.status,
                            pulse_amplitude_index=g.SFloat(42, -1))
        )


class Thermometer(Peripheral):
    """A Health Thermometer indicating Temperature Measurements, °C or °F."""

    profile = "thermometer"
    model_name = "THERMO-EMU"

    def __init__(self, address: str, name: str = "EMU Thermometer", *, fahrenheit: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(address, name, **kwargs)
        self.fahrenheit = fahrenheit
        self.celsius = 36.8

    def measurement_uuids(self) -> list[str]:
        return [g.TEMPERATURE_MEASUREMENT]

    def services(self) -> list[tuple[str, list[CharSpec]]]:
        ht = [
            CharSpec(g.TEMPERATURE_MEASUREMENT, ["indicate"]),
            CharSpec(g.TEMPERATURE_TYPE, ["read"], lambda: bytes([g.TemperatureType.EAR])),
        ]
        return [(g.HEALTH_THERMOMETER_SERVICE, ht), *super().services()]

    def next_payload(self, uuid: str, dt_s: float) -> bytes | None:
        c = self.celsius + self.rng.gauss(0, 0.05)
        value = c * 9 / 5 + 32 if self.fahrenheit else c
        return g.encode_temperature(
            g.TemperatureMeasurement(
                g.Float32.from_float(value, exponent=-2),
                fahrenheit=self.fahrenheit,
                timestamp=g.DateTime.from_datetime(dt.datetime.now()),
                temperature_type=g.TemperatureType.EAR,
            )
        )


class Tag(Peripheral):
    """A BLE device that is no health sensor: a key finder advertising only a battery."""

    model_name = "TAG-EMU"

    def __init__(self, address: str, name: str = "EMU Tag", **kwargs: Any) -> None:
        super().__init__(address, name, **kwargs)

    def measurement_uuids(self) -> list[str]:
        return []

    def advertised_uuids(self) -> list[str]:
        return [g.BATTERY_SERVICE]


class EnvironmentalSensor(Peripheral):
    """An Environmental Sensing (0x181A) room sensor over GATT.

    Temperature and humidity can notify; pressure is read-only (clients must poll it).
    """

    profile = "environmental"
    model_name = "ESS-EMU"

    def __init__(self, address: str, name: str = "EMU Climate", *, celsius: float = 21.5,
                 humidity: float = 45.0, hpa: float = 1013.2, **kwargs: Any) -> None:
        super().__init__(address, name, **kwargs)
        self.celsius, self.humidity, self.hpa = celsius, humidity, hpa

    def measurement_uuids(self) -> list[str]:
        return [g.ESS_TEMPERATURE, g.ESS_HUMIDITY]

    def services(self) -> list[tuple[str, list[CharSpec]]]:
        ess = [
            CharSpec(g.ESS_TEMPERATURE, ["read", "notify"],
                     lambda: g.encode_ess_temperature(self.celsius)),
            CharSpec(g.ESS_HUMIDITY, ["read", "notify"],
                     lambda: g.encode_ess_humidity(self.humidity)),
            CharSpec(g.ESS_PRESSURE, ["read"], lambda: g.encode_ess_pressure(self.hpa)),
        ]
        return [(g.ENVIRONMENTAL_SENSING_SERVICE, ess), *super().services()]

    def next_payload(self, uuid: str, dt_s: float) -> bytes | None:
        if uuid == g.ESS_TEMPERATURE:
            return g.encode_ess_temperature(self.celsius)
        if uuid == g.ESS_HUMIDITY:
            return g.encode_ess_humidity(self.humidity)
        return None


def encode_bthome_v2(objects: bytes, *, bind_key: bytes | None = None, mac: str = "",
                     counter: int = 0) -> bytes:
    """BTHome v2 service data (UUID 0xFCD2) for a payload of objects, AES-CCM per the spec.

    Encrypted: nonce = MAC (6) + UUID16 (d2 fc) + device info byte + counter (4, LE);
    service data = device info, ciphertext, counter, 4-byte MIC.
    """
    if bind_key is None:
        return bytes([0x40]) + objects
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    info = 0x41
    count = counter.to_bytes(4, "little")
    nonce = bytes.fromhex(mac.replace(":", "")) + b"\xd2\xfc" + bytes([info]) + count
    sealed = AESCCM(bind_key, tag_length=4).encrypt(nonce, objects, None)
    return bytes([info]) + sealed[:-4] + count + sealed[-4:]


def bthome_objects(*, packet_id: int | None = None, battery: int | None = None,
                   celsius: float | None = None, humidity: float | None = None,
                   hpa: float | None = None, co2: int | None = None) -> bytes:
    """BTHome v2 objects in ascending id order (0x00 packet id, 0x01 battery, 0x02 °C x0.01,
    0x03 % x0.01, 0x04 hPa x0.01 uint24, 0x12 CO2 ppm)."""
    out = b""
    if packet_id is not None:
        out += bytes([0x00, packet_id & 0xFF])
    if battery is not None:
        out += bytes([0x01, battery])
    if celsius is not None:
        out += b"\x02" + round(celsius * 100).to_bytes(2, "little", signed=True)
    if humidity is not None:
        out += b"\x03" + round(humidity * 100).to_bytes(2, "little")
    if hpa is not None:
        out += b"\x04" + round(hpa * 100).to_bytes(3, "little")
    if co2 is not None:
        out += b"\x12" + co2.to_bytes(2, "little")
    return out


class BTHomeSensor(Peripheral):
    """A BTHome v2 thermometer: readings in the service data of its adverts, no GATT.

    Each new advert (every ``1 / rate_hz`` s) bumps the packet id and, when encrypted, the
    counter; between them BlueZ reports the same service data again on every RSSI change
    (the duplicates a receiver must drop).
    """

    model_name = "BTHOME-EMU"

    def __init__(self, address: str, name: str = "EMU BTHome", *, celsius: float = 21.5,
                 humidity: float = 45.0, hpa: float | None = None, co2: int | None = None,
                 bind_key: bytes | None = None, packet_id: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(address, name, **kwargs)
        self.celsius, self.humidity, self.hpa, self.co2 = celsius, humidity, hpa, co2
        self.bind_key = bind_key
        self.use_packet_id = packet_id
        self.packet_id = 0
        self.counter = 0
        self.current = b""
        self.adverts: list[bytes] = []  # every service data sent, in order
        self.next_advert_t = 0.0

    def measurement_uuids(self) -> list[str]:
        return []

    def advertised_uuids(self) -> list[str]:
        return []

    def service_data(self) -> dict[str, bytes]:
        if not self.current:
            self.new_advert()
        return {BTHOME_V2_UUID: self.current}

    def manufacturer_data(self) -> dict[int, bytes]:
        return {}

    def new_advert(self) -> bytes:
        """The next advert's service data: new packet id / counter, current readings."""
        self.packet_id = (self.packet_id + 1) % 256
        self.counter += 1
        objects = bthome_objects(
            packet_id=self.packet_id if self.use_packet_id else None, battery=self.battery,
            celsius=self.celsius, humidity=self.humidity, hpa=self.hpa, co2=self.co2,
        )
        self.current = encode_bthome_v2(objects, bind_key=self.bind_key, mac=self.address,
                                        counter=self.counter)
        self.adverts.append(self.current)
        self.stats["adverts"] += 1
        return self.current


KINDS: dict[str, type[Peripheral]] = {
    "heart_rate": HeartRateStrap,
    "pulse_oximeter": PulseOximeter,
    "thermometer": Thermometer,
    "tag": Tag,
    "environmental": EnvironmentalSensor,
    "bthome": BTHomeSensor,
}


# -- D-Bus interfaces ---------------------------------------------------------------------
# dbus-fast reads annotations as D-Bus signatures, so methods that return nothing carry no
# return annotation, and no interface has an attribute called ``name`` (it is the interface's
# D-Bus name).


class Adapter1(ServiceInterface):
    """``org.bluez.Adapter1`` of hci0."""

    def __init__(self, emulator: BlueZEmulator) -> None:
        super().__init__("org.bluez.Adapter1")
        self._emu = emulator
        self._powered = True
        self.discovering = False
        self.sessions: set[str | None] = set()
        self.filter: dict[str, Any] = {}

    @dbus_method()
    def SetDiscoveryFilter(self, properties: Options):
        allowed = {"UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable",
                   "Pattern"}
        for key, value in properties.items():
            if key not in allowed:
                raise DBusError("org.bluez.Error.InvalidArguments", f"unknown filter {key}")
            if key == "Transport" and value.value not in ("le", "bredr", "auto"):
                raise DBusError("org.bluez.Error.InvalidArguments", "Transport")
        self.filter = {k: v.value for k, v in properties.items()}

    @dbus_method()
    def StartDiscovery(self):
        if not self._powered:
            raise DBusError("org.bluez.Error.NotReady", "Resource Not Ready")
        # bluetoothd keeps one discovery session per D-Bus client: a second start from the
        # same connection is refused, which is why bleak users must not scan concurrently.
        sender = self._emu.current_sender
        if sender in self.sessions:
            raise DBusError("org.bluez.Error.InProgress", "Operation already in progress")
        self.sessions.add(sender)
        self._emu.stats["start_discovery"] += 1
        self._update_discovering()

    @dbus_method()
    def StopDiscovery(self):
        sender = self._emu.current_sender
        if sender not in self.sessions:
            raise DBusError("org.bluez.Error.Failed", "No discovery started")
        self.sessions.discard(sender)
        self._update_discovering()

    def client_gone(self, sender: str) -> None:
        """A D-Bus client disconnected: its discovery session ends, as in bluetoothd."""
        if sender in self.sessions:
            self.sessions.discard(sender)
            self._update_discovering()

    def _update_discovering(self) -> None:
        active = bool(self.sessions)
        if active != self.discovering:
            self.discovering = active
            self.emit_properties_changed({"Discovering": active})
            if active:
                self._emu.discovery_started()
            else:
                self._emu.discovery_stopped()

    @dbus_method()
    def RemoveDevice(self, device: DBusObjectPath):
        if not self._emu.remove_device_object(device):
            raise DBusError("org.bluez.Error.DoesNotExist", "Does Not Exist")

    @dbus_method()
    def GetDiscoveryFilters(self) -> StrList:
        return ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable",
                "Pattern"]

    @dbus_property(access=READ)
    def Address(self) -> DBusStr:
        return self._emu.adapter_address

    @dbus_property(access=READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=READ)
    def Name(self) -> DBusStr:
        return "edgetwin-emu"

    @dbus_property(access=READ)
    def Alias(self) -> DBusStr:
        return "edgetwin-emu"

    @dbus_property(access=READ)
    def Class(self) -> DBusUInt32:
        return 0x6C010C

    @dbus_property(access=RW)
    def Powered(self) -> DBusBool:
        return self._powered

    @Powered.setter
    def Powered(self, value: DBusBool) -> None:
        self._powered = value
        self.emit_properties_changed({"Powered": value})

    @dbus_property(access=READ)
    def Discoverable(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def Pairable(self) -> DBusBool:
        return True

    @dbus_property(access=READ)
    def Discovering(self) -> DBusBool:
        return self.discovering

    @dbus_property(access=READ)
    def UUIDs(self) -> StrList:
        return []

    @dbus_property(access=READ)
    def Modalias(self) -> DBusStr:
        return "usb:v1D6Bp0246d054F"

    @dbus_property(access=READ)
    def Roles(self) -> StrList:
        return ["central", "peripheral"]


class Device1(ServiceInterface):
    """``org.bluez.Device1`` of one emulated peripheral."""

    def __init__(self, emulator: BlueZEmulator, peripheral: Peripheral) -> None:
        super().__init__("org.bluez.Device1")
        self._emu = emulator
        self.p = peripheral
        self.path = device_path(peripheral.address)
        self.connected = False
        self.services_resolved = False
        self.paired = False
        self.trusted = False
        self._cancel_connect: asyncio.Event | None = None

    @dbus_method()
    async def Connect(self):
        p = self.p
        p.stats["connect_calls"] += 1
        if self.connected:
            return
        if p.faults.refuse:
            p.stats["refused"] += 1
            raise DBusError(p.faults.refuse, p.faults.refuse_message)
        if p.faults.hang or not p.faults.present:
            # Never answers: like an LE create-connection to a silent device, it waits until
            # the client gives up and calls Disconnect, which cancels it.
            p.stats["hung"] += 1
            self._cancel_connect = cancel = asyncio.Event()
            await cancel.wait()
            raise DBusError("org.bluez.Error.Failed", "Operation was cancelled")
        self.connected = True
        p.stats["connects"] += 1
        self.emit_properties_changed({"Connected": True})
        # bluetoothd answers Connect first and resolves services afterwards
        self._emu.spawn(self._resolve_services(), f"resolve {p.address}")

    @dbus_method()
    async def Disconnect(self):
        if self._cancel_connect is not None:
            self._cancel_connect.set()
            self._cancel_connect = None
        if self.connected:
            self.p.stats["disconnects"] += 1
            self._emu.tear_down_link(self)

    @dbus_method()
    def Pair(self):
        if self.p.faults.refuse:
            raise DBusError("org.bluez.Error.AuthenticationRejected", "Authentication Rejected")
        self.paired = True
        self.emit_properties_changed({"Paired": True, "Bonded": True})

    @dbus_method()
    def CancelPairing(self):
        return

    async def _resolve_services(self) -> None:
        await asyncio.sleep(0.005)
        if not self.connected:
            return
        if self.p.faults.flaky_connects:
            self.p.faults.flaky_connects -= 1
            self.p.stats["flaky"] += 1
            self._emu.tear_down_link(self)  # e.g. a supervision timeout mid-discovery
            return
        self._emu.export_gatt(self)
        self.services_resolved = True
        self.emit_properties_changed({"ServicesResolved": True})

    @dbus_property(access=READ)
    def Address(self) -> DBusStr:
        return self.p.address

    @dbus_property(access=READ)
    def AddressType(self) -> DBusStr:
        return "random"

    @dbus_property(access=READ)
    def Name(self) -> DBusStr:
        return self.p.local_name

    @dbus_property(access=READ)
    def Alias(self) -> DBusStr:
        return self.p.local_name

    @dbus_property(access=READ)
    def Appearance(self) -> DBusUInt16:
        return {"heart_rate": 0x0341, "pulse_oximeter": 0x0C41, "thermometer": 0x0301}.get(
            self.p.profile, 0
        )

    @dbus_property(access=READ)
    def Adapter(self) -> DBusObjectPath:
        return ADAPTER_PATH

    @dbus_property(access=READ)
    def Paired(self) -> DBusBool:
        return self.paired

    @dbus_property(access=READ)
    def Bonded(self) -> DBusBool:
        return self.paired

    @dbus_property(access=RW)
    def Trusted(self) -> DBusBool:
        return self.trusted

    @Trusted.setter
    def Trusted(self, value: DBusBool) -> None:
        self.trusted = value

    @dbus_property(access=READ)
    def Blocked(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(access=READ)
    def Connected(self) -> DBusBool:
        return self.connected

    @dbus_property(access=READ)
    def ServicesResolved(self) -> DBusBool:
        return self.services_resolved

    @dbus_property(access=READ)
    def UUIDs(self) -> StrList:
        return self.p.advertised_uuids()

    @dbus_property(access=READ)
    def RSSI(self) -> DBusInt16:
        return self.p.rssi

    @dbus_property(access=READ)
    def TxPower(self) -> DBusInt16:
        return 0

    @dbus_property(access=READ)
    def ManufacturerData(self) -> MfrData:
        return {k: Variant("ay", v) for k, v in self.p.manufacturer_data().items()}

    @dbus_property(access=READ)
    def ServiceData(self) -> DBusDict:
        return {k: Variant("ay", v) for k, v in self.p.service_data().items()}


class GattService1(ServiceInterface):
    def __init__(self, uuid: str, device: str) -> None:
        super().__init__("org.bluez.GattService1")
        self._uuid = uuid
        self._device = device

    @dbus_property(access=READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=READ)
    def Primary(self) -> DBusBool:
        return True

    @dbus_property(access=READ)
    def Device(self) -> DBusObjectPath:
        return self._device

    @dbus_property(access=READ)
    def Includes(self) -> Annotated[list[str], DBusSignature("ao")]:
        return []


class GattCharacteristic1(ServiceInterface):
    """A readable characteristic (no notifications)."""

    def __init__(self, emulator: BlueZEmulator, dev: Device1, spec: CharSpec, path: str,
                 service: str) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self._emu = emulator
        self.dev = dev
        self.spec = spec
        self.path = path
        self._service = service
        self.value = b""

    @dbus_method()
    def ReadValue(self, options: Options) -> DBusBytes:
        if self.spec.read is None or "read" not in self.spec.flags:
            raise DBusError("org.bluez.Error.NotPermitted", "Read not permitted")
        if not self.dev.connected:
            raise DBusError("org.bluez.Error.Failed", "Not connected")
        self.value = self.spec.read()
        # bluetoothd updates Value on a read too, so watchers see it as a change
        self.emit_properties_changed({"Value": self.value})
        return self.value

    @dbus_method()
    def WriteValue(self, value: DBusBytes, options: Options):
        raise DBusError("org.bluez.Error.NotPermitted", "Write not permitted")

    @dbus_property(access=READ)
    def UUID(self) -> DBusStr:
        return self.spec.uuid

    @dbus_property(access=READ)
    def Service(self) -> DBusObjectPath:
        return self._service

    @dbus_property(access=READ)
    def Value(self) -> DBusBytes:
        return self.value

    @dbus_property(access=READ)
    def Flags(self) -> StrList:
        return list(self.spec.flags)

    @dbus_property(access=READ)
    def MTU(self) -> DBusUInt16:
        return self._emu.mtu


class NotifyCharacteristic1(GattCharacteristic1):
    """A characteristic with notify or indicate: StartNotify/StopNotify and AcquireNotify."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.notifying = False
        self._acquired: socket.socket | None = None
        self._handed_out: socket.socket | None = None

    @property
    def active(self) -> bool:
        return self.notifying or self._acquired is not None

    @dbus_method()
    def StartNotify(self):
        if self._acquired is not None:
            raise DBusError("org.bluez.Error.NotPermitted", "Notify acquired")
        if not self.dev.connected:
            raise DBusError("org.bluez.Error.Failed", "Not connected")
        if not self.notifying:
            self.notifying = True
            self.emit_properties_changed({"Notifying": True})
            self._emu.notifications_changed(self.dev)

    @dbus_method()
    def StopNotify(self):
        if not self.notifying:
            raise DBusError("org.bluez.Error.Failed", "No notify session started")
        self.notifying = False
        self.emit_properties_changed({"Notifying": False})

    @dbus_method()
    def AcquireNotify(self, options: Options) -> FdAndMtu:
        if self.notifying or self._acquired is not None:
            raise DBusError("org.bluez.Error.NotPermitted", "Notify acquired")
        if not self.dev.connected:
            raise DBusError("org.bluez.Error.Failed", "Not connected")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._acquired = ours
        self._handed_out = theirs
        self.emit_properties_changed({"NotifyAcquired": True})
        self._emu.notifications_changed(self.dev)
        # dbus-fast copies the fd into the reply when it writes it; close ours after that
        asyncio.get_running_loop().call_later(1.0, self._close_handed_out)
        return [theirs.fileno(), self._emu.mtu]

    def _close_handed_out(self) -> None:
        if self._handed_out is not None:
            self._handed_out.close()
            self._handed_out = None

    def send(self, payload: bytes) -> bool:
        """Deliver one notification to whoever subscribed; False if nobody took it."""
        self.value = payload
        sent = False
        if self.notifying:
            self.emit_properties_changed({"Value": payload})
            sent = True
        if self._acquired is not None:
            try:
                self._acquired.send(payload)
                sent = True
            except BlockingIOError:
                self.dev.p.stats["acquired_overflow"] += 1
            except OSError:  # the client closed its end: bluetoothd ends the session
                self.release()
        return sent

    def release(self) -> None:
        """End every notification session (link teardown or client gone)."""
        self._close_handed_out()
        if self._acquired is not None:
            self._acquired.close()
            self._acquired = None
            with contextlib.suppress(Exception):
                self.emit_properties_changed({"NotifyAcquired": False})
        if self.notifying:
            self.notifying = False
            with contextlib.suppress(Exception):
                self.emit_properties_changed({"Notifying": False})

    @dbus_property(access=READ)
    def Notifying(self) -> DBusBool:
        return self.notifying

    @dbus_property(access=READ)
    def NotifyAcquired(self) -> DBusBool:
        return self._acquired is not None


class GattDescriptor1(ServiceInterface):
    """The Client Characteristic Configuration descriptor of a notifying characteristic."""

    def __init__(self, char: NotifyCharacteristic1) -> None:
        super().__init__("org.bluez.GattDescriptor1")
        self._char = char

    @dbus_method()
    def ReadValue(self, options: Options) -> DBusBytes:
        return b"\x01\x00" if self._char.active else b"\x00\x00"

    @dbus_property(access=READ)
    def UUID(self) -> DBusStr:
        return g.CCCD

    @dbus_property(access=READ)
    def Characteristic(self) -> DBusObjectPath:
        return self._char.path

    @dbus_property(access=READ)
    def Value(self) -> DBusBytes:
        return b""

    @dbus_property(access=READ)
    def Flags(self) -> StrList:
        return ["read", "write"]


class AdvertisementMonitorManager1(ServiceInterface):
    """``org.bluez.AdvertisementMonitorManager1`` of hci0 (BlueZ >= 5.56, --experimental).

    Exported only when the emulator is built with ``advertisement_monitor=True``; without
    it a RegisterMonitor call gets UnknownMethod, as from a BlueZ that cannot scan passively.
    A registered monitor makes the adapter listen without scan requests (``Discovering``
    stays false) and devices' adverts flow as they do during discovery.
    """

    def __init__(self, emulator: BlueZEmulator) -> None:
        super().__init__("org.bluez.AdvertisementMonitorManager1")
        self._emu = emulator
        self.monitors: set[tuple[str | None, str]] = set()

    @dbus_method()
    def RegisterMonitor(self, application: DBusObjectPath):
        key = (self._emu.current_sender, application)
        if key in self.monitors:
            raise DBusError("org.bluez.Error.AlreadyExists", "Already Exists")
        self.monitors.add(key)
        self._emu.stats["register_monitor"] += 1
        self._emu.listening_changed()

    @dbus_method()
    def UnregisterMonitor(self, application: DBusObjectPath):
        key = (self._emu.current_sender, application)
        if key not in self.monitors:
            raise DBusError("org.bluez.Error.DoesNotExist", "Does Not Exist")
        self.monitors.discard(key)
        self._emu.listening_changed()

    def client_gone(self, sender: str) -> None:
        before = len(self.monitors)
        self.monitors = {m for m in self.monitors if m[0] != sender}
        if len(self.monitors) != before:
            self._emu.listening_changed()

    @dbus_property(access=READ)
    def SupportedMonitorTypes(self) -> StrList:
        return ["or_patterns"]

    @dbus_property(access=READ)
    def SupportedFeatures(self) -> StrList:
        return []


class Control1(ServiceInterface):
    """``org.edgetwin.Emulator1``: fault knobs for tests in another process."""

    def __init__(self, emulator: BlueZEmulator) -> None:
        super().__init__(CONTROL_INTERFACE)
        self._emu = emulator

    @dbus_method()
    def DropLink(self, address: DBusStr):
        self._emu.drop_link(address)

    @dbus_method()
    def SetPresent(self, address: DBusStr, present: DBusBool):
        self._emu.peripheral(address).faults.present = present

    @dbus_method()
    def Refuse(self, address: DBusStr, error_name: DBusStr):
        self._emu.peripheral(address).faults.refuse = error_name or None

    @dbus_method()
    def Hang(self, address: DBusStr, hang: DBusBool):
        self._emu.peripheral(address).faults.hang = hang

    @dbus_method()
    def InjectMalformed(self, address: DBusStr, count: DBusUInt32):
        self._emu.peripheral(address).faults.malformed += count

    @dbus_method()
    def FlakyConnects(self, address: DBusStr, count: DBusUInt32):
        self._emu.peripheral(address).faults.flaky_connects += count

    @dbus_method()
    def InjectRrOutliers(self, address: DBusStr, count: DBusUInt32):
        self._emu.peripheral(address).faults.rr_outliers += count

    @dbus_method()
    def Stats(self, address: DBusStr) -> Annotated[dict[str, int], DBusSignature("a{si}")]:
        return {k: int(v) for k, v in self._emu.peripheral(address).stats.items()}


# -- the emulator -----------------------------------------------------------------------------


@dataclass
class _Link:
    """GATT objects and the notification task of one connected device."""

    paths: list[str] = field(default_factory=list)
    chars: dict[str, GattCharacteristic1] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class BlueZEmulator:
    """Owns ``org.bluez`` on a bus and emulates hci0 with a set of peripherals."""

    def __init__(self, bus_address: str, *, adapter_address: str = "00:1A:7D:DA:71:13",
                 mtu: int = 247, advert_interval: float = 0.2,
                 advertisement_monitor: bool = False) -> None:
        self.bus_address = bus_address
        self.adapter_address = adapter_address
        self.mtu = mtu
        self.advert_interval = advert_interval
        self.bus: MessageBus | None = None
        self.adapter = Adapter1(self)
        self.monitor_manager = AdvertisementMonitorManager1(self) if advertisement_monitor else None
        self.devices: dict[str, Device1] = {}
        self.exported: set[str] = set()
        self.stats = collections.Counter[str]()
        self._links: dict[str, _Link] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._advert_task: asyncio.Task[None] | None = None
        self.current_sender: str | None = None

    async def start(self) -> BlueZEmulator:
        """Connect, own ``org.bluez`` and export the adapter and control objects."""
        self.bus = MessageBus(bus_address=self.bus_address, bus_type=BusType.SYSTEM,
                              negotiate_unix_fd=True)
        await self.bus.connect()
        self.bus.add_message_handler(self._observe)
        await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="AddMatch", signature="s",
            body=["type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"],
        ))
        self.bus.export(ADAPTER_PATH, self.adapter)
        if self.monitor_manager is not None:
            self.bus.export(ADAPTER_PATH, self.monitor_manager)
        self.bus.export(CONTROL_PATH, Control1(self))
        await self.bus.request_name("org.bluez")
        return self

    async def stop(self) -> None:
        """Tear down links and tasks, release the bus."""
        for dev in list(self.devices.values()):
            if dev.connected:
                self.tear_down_link(dev)
        for task in [*self._tasks, *([self._advert_task] if self._advert_task else [])]:
            task.cancel()
        for task in [*self._tasks, *([self._advert_task] if self._advert_task else [])]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._advert_task = None
        if self.bus is not None:
            self.bus.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bus.wait_for_disconnect(), 5)
            self.bus = None

    async def __aenter__(self) -> BlueZEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- peripherals -------------------------------------------------------------------

    def add(self, peripheral: Peripheral, *, known: bool = False) -> Peripheral:
        """Register a peripheral; ``known`` exports it at once (as a bonded device would be)."""
        dev = Device1(self, peripheral)
        self.devices[peripheral.address] = dev
        if known or self.listening:
            self._export_device(dev)
        return peripheral

    def peripheral(self, address: str) -> Peripheral:
        try:
            return self.devices[address.upper()].p
        except KeyError:
            raise DBusError("org.bluez.Error.DoesNotExist", f"no device {address}") from None

    def drop_link(self, address: str) -> None:
        """The remote end goes away: the link drops as a supervision timeout would."""
        dev = self.devices[address.upper()]
        if dev.connected:
            dev.p.stats["drops"] += 1
            self.tear_down_link(dev)

    def send_spot_check(self, address: str) -> None:
        """Make an oximeter indicate one spot-check measurement."""
        dev = self.devices[address.upper()]
        link = self._links.get(dev.path)
        char = link.chars.get(g.PLX_SPOT_CHECK) if link else None
        if isinstance(char, NotifyCharacteristic1) and char.active:
            payload = dev.p.next_payload(g.PLX_SPOT_CHECK, 0.0)
            assert payload is not None
            self._deliver(dev, char, payload)

    def set_battery(self, address: str, level: int) -> None:
        dev = self.devices[address.upper()]
        dev.p.battery = level
        link = self._links.get(dev.path)
        char = link.chars.get(g.BATTERY_LEVEL) if link else None
        if isinstance(char, NotifyCharacteristic1) and char.active:
            self._deliver(dev, char, g.encode_battery_level(level))

    def vanish(self, address: str) -> None:
        """The device stops advertising and bluetoothd drops its object (InterfacesRemoved)."""
        dev = self.devices[address.upper()]
        dev.p.faults.present = False
        self.remove_device_object(dev.path)

    def appear(self, address: str) -> None:
        """The device advertises again; it is exported on the next advert while discovering."""
        self.devices[address.upper()].p.faults.present = True

    def set_service_data(self, address: str, data: dict[str, bytes]) -> None:
        """Make a device advertise this service data now (e.g. a replayed old packet)."""
        dev = self.devices[address.upper()]
        if isinstance(dev.p, BTHomeSensor):
            dev.p.current = data.get(BTHOME_V2_UUID, dev.p.current)
        if dev.path in self.exported:
            dev.emit_properties_changed(
                {"ServiceData": {k: Variant("ay", v) for k, v in data.items()},
                 "RSSI": dev.p.rssi})

    # -- called by the interfaces ------------------------------------------------------

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"bluez-emu {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def discovery_started(self) -> None:
        for dev in self.devices.values():
            if dev.p.faults.present and self._passes_filter(dev):
                self._export_device(dev)
        if self._advert_task is None:
            self._advert_task = asyncio.get_running_loop().create_task(
                self._advertise(), name="bluez-emu adverts"
            )

    @property
    def listening(self) -> bool:
        """Adverts are being received: a discovery session or a passive monitor is active."""
        return self.adapter.discovering or bool(
            self.monitor_manager is not None and self.monitor_manager.monitors)

    def listening_changed(self) -> None:
        """A passive monitor came or went: start or stop adverts unless discovery runs."""
        if self.listening:
            self.discovery_started()
        else:
            self.discovery_stopped()

    def discovery_stopped(self) -> None:
        if self.listening:  # a passive monitor still listens
            return
        if self._advert_task is not None:
            self._advert_task.cancel()
            self._advert_task = None

    def remove_device_object(self, path: str) -> bool:
        for dev in self.devices.values():
            if dev.path == path and path in self.exported:
                if dev.connected:
                    self.tear_down_link(dev)
                assert self.bus is not None
                self.bus.unexport(path, dev)
                self.exported.discard(path)
                return True
        return False

    def export_gatt(self, dev: Device1) -> None:
        """Export the services and characteristics of a connected device, BlueZ paths."""
        assert self.bus is not None
        link = _Link()
        handle = 0x000A
        for service_uuid, chars in dev.p.services():
            present = [c for c in chars if c.uuid not in dev.p.missing]
            if not present:
                continue
            spath = f"{dev.path}/service{handle:04x}"
            self.bus.export(spath, GattService1(service_uuid, dev.path))
            link.paths.append(spath)
            handle += 1
            for spec in present:
                cpath = f"{spath}/char{handle:04x}"
                notifies = "notify" in spec.flags or "indicate" in spec.flags
                cls = NotifyCharacteristic1 if notifies else GattCharacteristic1
                char = cls(self, dev, spec, cpath, spath)
                self.bus.export(cpath, char)
                link.paths.append(cpath)
                link.chars[spec.uuid] = char
                handle += 2
                if isinstance(char, NotifyCharacteristic1):
                    dpath = f"{cpath}/desc{handle:04x}"
                    self.bus.export(dpath, GattDescriptor1(char))
                    link.paths.append(dpath)
                    handle += 1
        self._links[dev.path] = link

    def notifications_changed(self, dev: Device1) -> None:
        link = self._links.get(dev.path)
        if link is not None and link.task is None:
            link.task = asyncio.get_running_loop().create_task(
                self._notify_loop(dev, link), name=f"bluez-emu notify {dev.p.address}"
            )

    def tear_down_link(self, dev: Device1) -> None:
        """End a connection: notifications stop, services go, Connected turns false."""
        link = self._links.pop(dev.path, None)
        if link is not None:
            if link.task is not None:
                link.task.cancel()
            for char in link.chars.values():
                if isinstance(char, NotifyCharacteristic1):
                    char.release()
        dev.services_resolved = False
        dev.connected = False
        dev.emit_properties_changed({"ServicesResolved": False})
        dev.emit_properties_changed({"Connected": False})
        if link is not None and self.bus is not None:
            for path in reversed(link.paths):
                self.bus.unexport(path)

    # -- private ---------------------------------------------------------------------------

    def _observe(self, msg: Message) -> None:
        """Sees every incoming message first: who calls, and who leaves the bus."""
        if msg.message_type is MessageType.METHOD_CALL:
            self.current_sender = msg.sender
        elif msg.member == "NameOwnerChanged" and msg.body and not msg.body[2]:
            self.adapter.client_gone(msg.body[0])
            if self.monitor_manager is not None:
                self.monitor_manager.client_gone(msg.body[0])

    def _export_device(self, dev: Device1) -> None:
        if dev.path not in self.exported:
            assert self.bus is not None
            self.bus.export(dev.path, dev)
            self.exported.add(dev.path)

    def _passes_filter(self, dev: Device1) -> bool:
        uuids = self.adapter.filter.get("UUIDs")
        return not uuids or bool(set(uuids) & set(dev.p.advertised_uuids()))

    async def _advertise(self) -> None:
        """While discovering, each present device re-advertises (RSSI changes)."""
        while True:
            await asyncio.sleep(self.advert_interval)
            for dev in self.devices.values():
                if dev.p.faults.present and self._passes_filter(dev):
                    if dev.path not in self.exported:
                        self._export_device(dev)
                    dev.p.rssi = max(-95, min(-35, dev.p.rssi + dev.p.rng.choice((-1, 1))))
                    p = dev.p
                    now = time.monotonic()
                    if isinstance(p, BTHomeSensor) and now >= p.next_advert_t:
                        late = p.next_advert_t < now - 1.0  # first advert, or a stalled loop
                        p.next_advert_t = (now if late else p.next_advert_t) + 1.0 / p.rate_hz
                        fresh = p.new_advert()
                        dev.emit_properties_changed({
                            "ServiceData": {BTHOME_V2_UUID: Variant("ay", fresh)},
                            "RSSI": p.rssi,
                        })
                        continue
                    dev.emit_properties_changed({"RSSI": dev.p.rssi})

    async def _notify_loop(self, dev: Device1, link: _Link) -> None:
        p = dev.p
        period = 1.0 / p.rate_hz
        loop = asyncio.get_running_loop()
        last = next_t = loop.time()
        while dev.connected:
            next_t += period
            delay = next_t - loop.time()
            if delay < -1.0:  # far behind (a stalled loop or a saturating rate): skip ahead
                next_t = loop.time()
            # always yield, so D-Bus writes flush and method calls are served at any rate
            await asyncio.sleep(max(0.0, delay))
            await self._until_writable()
            now = loop.time()
            dt_s = p.model_seconds if p.model_seconds is not None else now - last
            last = now
            for uuid in p.measurement_uuids():
                char = link.chars.get(uuid)
                if not isinstance(char, NotifyCharacteristic1) or not char.active:
                    continue
                if p.faults.malformed:
                    p.faults.malformed -= 1
                    p.stats["malformed_sent"] += 1
                    payload: bytes | None = p.malformed_payload(uuid)
                else:
                    payload = p.next_payload(uuid, dt_s)
                if payload is not None:
                    self._deliver(dev, char, payload)

    async def _until_writable(self) -> None:
        """Wait while our D-Bus socket is full.

        dbus-fast treats EAGAIN on its socket as fatal and drops the connection, so a
        peripheral notifying faster than dbus-daemon reads must hold back here.
        """
        bus = self.bus
        if bus is None or bus._sock is None:
            return
        while bus._writer.messages or bus._writer.buf is not None or not select.select(
            [], [bus._sock], [], 0
        )[1]:
            await asyncio.sleep(0.0005)

    def _deliver(self, dev: Device1, char: NotifyCharacteristic1, payload: bytes) -> None:
        if char.send(payload):
            dev.p.stats["notifications"] += 1
            dev.p.sent.append((time.time(), char.spec.uuid, payload))


class EmulatorProcess:
    """The emulator in a child process on a given bus (for daemon and benchmark runs)."""

    def __init__(self, bus_address: str, devices: list[str], *, rate_hz: float = 1.0,
                 model_seconds: float | None = None, seed: int = 0,
                 bpm: float | None = None, bthome_keys: dict[str, str] | None = None,
                 advert_interval: float | None = None) -> None:
        self.bus_address = bus_address
        self.args = [sys.executable, "-m", "tests.sources.bluez_emulator", "--bus", bus_address,
                     "--rate", str(rate_hz), "--seed", str(seed)]
        if bpm is not None:
            self.args += ["--bpm", str(bpm)]
        if model_seconds is not None:
            self.args += ["--model-seconds", str(model_seconds)]
        for spec in devices:
            self.args += ["--device", spec]
        for address, key_hex in (bthome_keys or {}).items():
            self.args += ["--bthome-key", f"{address}={key_hex}"]
        if advert_interval is not None:
            self.args += ["--advert-interval", str(advert_interval)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> EmulatorProcess:
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(self.args, cwd=root, stdout=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)  # noqa: PLW1509 - prctl only
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(b"READY"):
                return self
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("BlueZ emulator process did not become ready")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def control(bus_address: str, method: str, *args: Any) -> Any:
    """Call an ``org.edgetwin.Emulator1`` knob of an emulator on ``bus_address``."""
    signature = "".join({str: "s", bool: "b", int: "u"}[type(a)] for a in args)
    bus = await MessageBus(bus_address=bus_address).connect()
    try:
        reply = await bus.call(Message(destination="org.bluez", path=CONTROL_PATH,
                                       interface=CONTROL_INTERFACE, member=method,
                                       signature=signature, body=list(args)))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{reply.error_name}: {reply.body}")
        return reply.body[0] if reply.body else None
    finally:
        bus.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bus.wait_for_disconnect(), 5)


def parse_device(
    spec: str, *, rate_hz: float, seed: int, model_seconds: float | None,
    bpm: float | None = None, bthome_keys: dict[str, bytes] | None = None,
) -> Peripheral:
    """``KIND:AA:BB:CC:DD:EE:FF[:NAME]`` -> a peripheral."""
    kind, _, rest = spec.partition(":")
    parts = rest.split(":")
    address, name = ":".join(parts[:6]), ":".join(parts[6:])
    cls = KINDS[kind]
    kwargs: dict[str, Any] = {"rate_hz": rate_hz, "seed": seed, "model_seconds": model_seconds}
    if bpm is not None and cls is HeartRateStrap:
        kwargs["bpm"] = bpm
    if cls is BTHomeSensor and bthome_keys and address.upper() in bthome_keys:
        kwargs["bind_key"] = bthome_keys[address.upper()]
    return cls(address, name, **kwargs) if name else cls(address, **kwargs)


async def _main(args: argparse.Namespace) -> None:
    bus: PrivateBus | None = None
    address = args.bus
    if address is None:
        bus = PrivateBus()
        address = bus.start()
    try:
        emu = await BlueZEmulator(address, advert_interval=args.advert_interval).start()
        keys = {a.upper(): bytes.fromhex(k) for a, _, k in
                (item.partition("=") for item in args.bthome_key)}
        for i, spec in enumerate(args.device):
            emu.add(parse_device(spec, rate_hz=args.rate, seed=args.seed + i,
                                 model_seconds=args.model_seconds, bpm=args.bpm,
                                 bthome_keys=keys),
                    known=args.known)
        print(f"READY {address}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await emu.stop()
    finally:
        if bus is not None:
            bus.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bus", help="D-Bus address to serve on (default: start a private bus)")
    parser.add_argument("--device", action="append", default=[],
                        help="KIND:ADDRESS[:NAME], KIND one of " + ", ".join(KINDS))
    parser.add_argument("--rate", type=float, default=1.0, help="notifications per second")
    parser.add_argument("--model-seconds", type=float, default=None,
                        help="model time per notification (default: real time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bpm", type=float, default=None, help="heart rate of the straps")
    parser.add_argument("--bthome-key", action="append", default=[], metavar="ADDRESS=HEX",
                        help="encrypt this bthome device's adverts with this bind key")
    parser.add_argument("--advert-interval", type=float, default=0.2,
                        help="seconds between adverts (RSSI updates) of each device")
    parser.add_argument("--known", action="store_true",
                        help="export devices at once, as bluetoothd does for bonded devices")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
