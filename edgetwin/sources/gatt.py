"""Encoders and decoders for the Bluetooth SIG health characteristics edgetwin reads.

Pure byte handling (no bleak import), so it is cheap to import, easy to fuzz
and shared by the BLE source and the BlueZ emulator used in tests. Every
decoder either returns a frozen value object or raises ``GattMalformed`` (a
``MalformedInput``) naming the characteristic, the field and the byte offset;
no other exception escapes a decoder, whatever the bytes. Encoders are exact
inverses: ``decode(encode(m)) == m`` and, for any payload a decoder accepts,
``encode(decode(b)) == b`` (Device Information strings excepted: trailing NULs
are padding and are dropped).

Strictness, and why: a flag bit that the specification reserves (RFU) may
announce a field this code does not know, so the layout of everything after
it is unknowable; such payloads are rejected instead of guessed at. Reserved
bits inside status bit fields do not move other fields and are kept as sent.

Specifications: Heart Rate Service 1.0 (0x2A37, 0x2A38), Pulse Oximeter
Service 1.0 (0x2A5E, 0x2A5F), Health Thermometer Service 1.0 (0x2A1C), Battery
Service 1.0 (0x2A19), Device Information Service 1.1, and the IEEE 11073-20601
SFLOAT/FLOAT number formats those services use.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NoReturn, Self, TypeVar

from edgetwin.errors import MalformedInput

_E = TypeVar("_E", bound=enum.IntEnum)

Buffer = bytes | bytearray | memoryview


def uuid16(short: int) -> str:
    """The full 128-bit UUID string of a 16-bit SIG-assigned number (lower case, as bleak uses)."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


# Services
HEART_RATE_SERVICE = uuid16(0x180D)
PULSE_OXIMETER_SERVICE = uuid16(0x1822)
HEALTH_THERMOMETER_SERVICE = uuid16(0x1809)
BATTERY_SERVICE = uuid16(0x180F)
DEVICE_INFORMATION_SERVICE = uuid16(0x180A)
ENVIRONMENTAL_SENSING_SERVICE = uuid16(0x181A)

# Characteristics
HEART_RATE_MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
PLX_SPOT_CHECK = uuid16(0x2A5E)
PLX_CONTINUOUS = uuid16(0x2A5F)
TEMPERATURE_MEASUREMENT = uuid16(0x2A1C)
TEMPERATURE_TYPE = uuid16(0x2A1D)
BATTERY_LEVEL = uuid16(0x2A19)
CCCD = uuid16(0x2902)
ESS_PRESSURE = uuid16(0x2A6D)
ESS_TEMPERATURE = uuid16(0x2A6E)
ESS_HUMIDITY = uuid16(0x2A6F)

DEVICE_INFORMATION_STRINGS: dict[str, str] = {
    uuid16(0x2A29): "manufacturer",
    uuid16(0x2A24): "model",
    uuid16(0x2A25): "serial",
    uuid16(0x2A27): "hardware_revision",
    uuid16(0x2A26): "firmware_revision",
    uuid16(0x2A28): "software_revision",
}

CHARACTERISTIC_NAMES: dict[str, str] = {
    HEART_RATE_MEASUREMENT: "Heart Rate Measurement (0x2A37)",
    BODY_SENSOR_LOCATION: "Body Sensor Location (0x2A38)",
    PLX_SPOT_CHECK: "PLX Spot-check Measurement (0x2A5E)",
    PLX_CONTINUOUS: "PLX Continuous Measurement (0x2A5F)",
    TEMPERATURE_MEASUREMENT: "Temperature Measurement (0x2A1C)",
    TEMPERATURE_TYPE: "Temperature Type (0x2A1D)",
    BATTERY_LEVEL: "Battery Level (0x2A19)",
    ESS_PRESSURE: "Pressure (0x2A6D)",
    ESS_TEMPERATURE: "Temperature (0x2A6E)",
    ESS_HUMIDITY: "Humidity (0x2A6F)",
}


class GattMalformed(MalformedInput):
    """A characteristic value that breaks its SIG format; says which field, at which byte."""

    def __init__(self, characteristic: str, field: str, offset: int, problem: str) -> None:
        super().__init__(
            f"{characteristic}: field {field!r} at byte {offset}: {problem}",
            hint="the payload was dropped; if this repeats, the device firmware is at fault",
        )
        self.characteristic = characteristic
        self.field = field
        self.offset = offset
        self.problem = problem


# -- IEEE 11073-20601 numbers ---------------------------------------------------


class Special(enum.Enum):
    """The reserved values of the IEEE 11073 FLOAT and SFLOAT formats."""

    NAN = "nan"  # not a number (e.g. no valid measurement)
    NRES = "nres"  # not at this resolution
    POS_INF = "+inf"
    NEG_INF = "-inf"
    RESERVED = "reserved"  # reserved for future use by the standard


@dataclass(frozen=True, slots=True)
class _MedicalFloat:
    """``mantissa x 10**exponent``, both signed; special values sit at exponent 0."""

    mantissa: int
    exponent: int

    M_BITS: ClassVar[int] = 12
    E_BITS: ClassVar[int] = 4

    def __post_init__(self) -> None:
        m_lim = 1 << (self.M_BITS - 1)
        e_lim = 1 << (self.E_BITS - 1)
        if not -m_lim <= self.mantissa < m_lim:
            raise ValueError(f"mantissa {self.mantissa} outside {-m_lim}..{m_lim - 1}")
        if not -e_lim <= self.exponent < e_lim:
            raise ValueError(f"exponent {self.exponent} outside {-e_lim}..{e_lim - 1}")

    @classmethod
    def _specials(cls) -> dict[int, Special]:
        top = (1 << (cls.M_BITS - 1)) - 1  # 0x7FF / 0x7FFFFF
        return {
            top: Special.NAN,
            -top - 1: Special.NRES,
            top - 1: Special.POS_INF,
            -top + 1: Special.NEG_INF,
            -top: Special.RESERVED,
        }

    @property
    def special(self) -> Special | None:
        """Which reserved value this is, or None for an ordinary number."""
        if self.exponent != 0:
            return None
        return self._specials().get(self.mantissa)

    @property
    def value(self) -> float:
        """The number as a float: NaN for NaN, NRes and reserved; +/-inf for the infinities."""
        special = self.special
        if special is not None:
            if special is Special.POS_INF:
                return float("inf")
            if special is Special.NEG_INF:
                return float("-inf")
            return float("nan")
        if self.exponent >= 0:
            try:
                return float(self.mantissa * 10**self.exponent)
            except OverflowError:  # only FLOAT's exponent reaches past 1e308
                return float("inf") if self.mantissa > 0 else float("-inf")
        # int / int is correctly rounded in Python, unlike m * 10.0**e
        divisor: int = 10 ** (-self.exponent)
        return self.mantissa / divisor

    def to_raw(self) -> int:
        """The unsigned wire integer (exponent in the top bits)."""
        m_mask = (1 << self.M_BITS) - 1
        e_mask = (1 << self.E_BITS) - 1
        return ((self.exponent & e_mask) << self.M_BITS) | (self.mantissa & m_mask)

    @classmethod
    def from_raw(cls, raw: int) -> Self:
        """Split a wire integer into signed mantissa and exponent."""
        m_bits, e_bits = cls.M_BITS, cls.E_BITS
        mantissa = raw & ((1 << m_bits) - 1)
        if mantissa >= 1 << (m_bits - 1):
            mantissa -= 1 << m_bits
        exponent = (raw >> m_bits) & ((1 << e_bits) - 1)
        if exponent >= 1 << (e_bits - 1):
            exponent -= 1 << e_bits
        return cls(mantissa, exponent)

    @classmethod
    def of_special(cls, special: Special) -> Self:
        """The wire form of a reserved value."""
        for mantissa, kind in cls._specials().items():
            if kind is special:
                return cls(mantissa, 0)
        raise AssertionError(special)  # every Special is in the table

    @classmethod
    def from_float(cls, value: float, exponent: int | None = None) -> Self:
        """The closest representable number; the finest exponent that fits unless given."""
        if math.isnan(value):
            return cls.of_special(Special.NAN)
        if math.isinf(value):
            return cls.of_special(Special.POS_INF if value > 0 else Special.NEG_INF)
        e_lim = 1 << (cls.E_BITS - 1)
        m_lim = 1 << (cls.M_BITS - 1)
        specials = cls._specials()
        candidates = [exponent] if exponent is not None else range(-e_lim, e_lim)
        for exp in candidates:
            mantissa = round(value * 10 ** (-exp)) if exp <= 0 else round(value / 10**exp)
            if -m_lim <= mantissa < m_lim and not (exp == 0 and mantissa in specials):
                return cls(mantissa, exp)
        raise ValueError(f"{value} cannot be represented as {cls.__name__}")


@dataclass(frozen=True, slots=True)
class SFloat(_MedicalFloat):
    """IEEE 11073 16-bit SFLOAT: 4-bit exponent, 12-bit mantissa."""

    M_BITS: ClassVar[int] = 12
    E_BITS: ClassVar[int] = 4


@dataclass(frozen=True, slots=True)
class Float32(_MedicalFloat):
    """IEEE 11073 32-bit FLOAT: 8-bit exponent, 24-bit mantissa."""

    M_BITS: ClassVar[int] = 24
    E_BITS: ClassVar[int] = 8


# -- Date Time (0x2A08), used by the PLX and thermometer timestamps -------------


@dataclass(frozen=True, slots=True)
class DateTime:
    """A SIG Date Time; 0 in year, month or day means "not known"."""

    year: int
    month: int
    day: int
    hours: int
    minutes: int
    seconds: int

    SIZE: ClassVar[int] = 7

    def to_datetime(self) -> dt.datetime | None:
        """A naive datetime (device local time), or None if a date part is unknown or invalid."""
        if not (self.year and self.month and self.day):
            return None
        try:
            # The SIG format carries no time zone: this is the device's local time.
            return dt.datetime(
                self.year, self.month, self.day, self.hours, self.minutes, self.seconds
            )
        except ValueError:  # e.g. 31 February: each field is in range, the date is not
            return None

    @classmethod
    def from_datetime(cls, value: dt.datetime) -> DateTime:
        return cls(value.year, value.month, value.day, value.hour, value.minute, value.second)


_DATE_LIMITS = (
    ("month", 0, 12),
    ("day", 0, 31),
    ("hours", 0, 23),
    ("minutes", 0, 59),
    ("seconds", 0, 59),
)


# -- Heart Rate (0x2A37, 0x2A38) --------------------------------------------------

_HR_UINT16 = 0x01
_HR_CONTACT_DETECTED = 0x02
_HR_CONTACT_SUPPORTED = 0x04
_HR_ENERGY = 0x08
_HR_RR = 0x10
_HR_RESERVED = 0xE0


@dataclass(frozen=True, slots=True)
class HeartRateMeasurement:
    """One Heart Rate Measurement notification.

    ``rr_raw`` are RR-intervals in units of 1/1024 s, oldest first.
    ``contact_detected`` only means something when ``contact_supported``.
    ``uint16`` records whether the rate is sent as 16 bits.
    """

    bpm: int
    rr_raw: tuple[int, ...] = ()
    energy_kj: int | None = None
    contact_supported: bool = False
    contact_detected: bool = False
    uint16: bool = False

    def __post_init__(self) -> None:
        limit = 0xFFFF if self.uint16 else 0xFF
        if not 0 <= self.bpm <= limit:
            width = "16" if self.uint16 else "8"
            raise ValueError(f"bpm {self.bpm} does not fit the {width}-bit format")
        if self.energy_kj is not None and not 0 <= self.energy_kj <= 0xFFFF:
            raise ValueError(f"energy {self.energy_kj} kJ outside 0..65535")
        if any(not 0 <= rr <= 0xFFFF for rr in self.rr_raw):
            raise ValueError("RR-intervals must be 0..65535 (1/1024 s)")

    @property
    def rr_ms(self) -> tuple[float, ...]:
        """RR-intervals in milliseconds."""
        return tuple(rr * 1000.0 / 1024.0 for rr in self.rr_raw)

    @property
    def sensor_contact(self) -> bool | None:
        """True/False when the strap reports skin contact, None when it cannot tell."""
        return self.contact_detected if self.contact_supported else None


def rr_ms_to_raw(ms: float) -> int:
    """An RR-interval in ms as the nearest 1/1024 s count (what a strap would send)."""
    return round(ms * 1024.0 / 1000.0)


def decode_heart_rate(data: Buffer) -> HeartRateMeasurement:
    """Parse a Heart Rate Measurement (0x2A37) notification."""
    r = _Reader(CHARACTERISTIC_NAMES[HEART_RATE_MEASUREMENT], data)
    flags = r.u8("flags")
    if flags & _HR_RESERVED:
        r.fail("flags", 0, f"reserved bits set (0x{flags & _HR_RESERVED:02X}); layout unknown")
    uint16 = bool(flags & _HR_UINT16)
    bpm = r.u16("heart_rate") if uint16 else r.u8("heart_rate")
    energy = r.u16("energy_expended") if flags & _HR_ENERGY else None
    rr: list[int] = []
    if flags & _HR_RR:
        if r.remaining == 0:
            r.fail("rr_interval[0]", r.pos, "flags announce RR-intervals but none follow")
        while r.remaining:
            rr.append(r.u16(f"rr_interval[{len(rr)}]"))
    r.done()
    return HeartRateMeasurement(
        bpm=bpm,
        rr_raw=tuple(rr),
        energy_kj=energy,
        contact_supported=bool(flags & _HR_CONTACT_SUPPORTED),
        contact_detected=bool(flags & _HR_CONTACT_DETECTED),
        uint16=uint16,
    )


def encode_heart_rate(m: HeartRateMeasurement) -> bytes:
    """The wire form of a Heart Rate Measurement."""
    flags = 0
    if m.uint16:
        flags |= _HR_UINT16
    if m.contact_detected:
        flags |= _HR_CONTACT_DETECTED
    if m.contact_supported:
        flags |= _HR_CONTACT_SUPPORTED
    if m.energy_kj is not None:
        flags |= _HR_ENERGY
    if m.rr_raw:
        flags |= _HR_RR
    out = bytearray([flags])
    out += m.bpm.to_bytes(2 if m.uint16 else 1, "little")
    if m.energy_kj is not None:
        out += m.energy_kj.to_bytes(2, "little")
    for rr in m.rr_raw:
        out += rr.to_bytes(2, "little")
    return bytes(out)


class BodySensorLocation(enum.IntEnum):
    OTHER = 0
    CHEST = 1
    WRIST = 2
    FINGER = 3
    HAND = 4
    EAR_LOBE = 5
    FOOT = 6


def decode_body_sensor_location(data: Buffer) -> BodySensorLocation:
    """Parse Body Sensor Location (0x2A38)."""
    return _decode_u8_enum(
        data, BODY_SENSOR_LOCATION, "location", BodySensorLocation, "location (0-6 are defined)"
    )


def encode_body_sensor_location(location: BodySensorLocation) -> bytes:
    return bytes([int(location)])


# -- Pulse oximeter (0x2A5E, 0x2A5F) ----------------------------------------------

# Measurement Status (uint16) bits the source acts on.
PLX_STATUS_MEASUREMENT_UNAVAILABLE = 1 << 13
PLX_STATUS_QUESTIONABLE = 1 << 14
PLX_STATUS_INVALID = 1 << 15

_SPOT_TIMESTAMP = 0x01
_SPOT_STATUS = 0x02
_SPOT_SENSOR_STATUS = 0x04
_SPOT_PAI = 0x08
_SPOT_CLOCK_NOT_SET = 0x10
_SPOT_RESERVED = 0xE0

_CONT_FAST = 0x01
_CONT_SLOW = 0x02
_CONT_STATUS = 0x04
_CONT_SENSOR_STATUS = 0x08
_CONT_PAI = 0x10
_CONT_RESERVED = 0xE0


@dataclass(frozen=True, slots=True)
class PlxSpotCheck:
    """One PLX Spot-check Measurement: SpO2 (%) and pulse rate (bpm) with optional fields."""

    spo2: SFloat
    pulse_rate: SFloat
    timestamp: DateTime | None = None
    measurement_status: int | None = None  # uint16 bit field
    device_sensor_status: int | None = None  # uint24 bit field
    pulse_amplitude_index: SFloat | None = None  # %
    clock_not_set: bool = False


@dataclass(frozen=True, slots=True)
class PlxContinuous:
    """One PLX Continuous Measurement: the normal SpO2/PR pair and the optional ones."""

    spo2: SFloat
    pulse_rate: SFloat
    fast: tuple[SFloat, SFloat] | None = None  # (spo2, pulse rate), fast-responding average
    slow: tuple[SFloat, SFloat] | None = None  # (spo2, pulse rate), slow-responding average
    measurement_status: int | None = None
    device_sensor_status: int | None = None
    pulse_amplitude_index: SFloat | None = None


def decode_plx_spot_check(data: Buffer) -> PlxSpotCheck:
    """Parse a PLX Spot-check Measurement (0x2A5E) indication."""
    r = _Reader(CHARACTERISTIC_NAMES[PLX_SPOT_CHECK], data)
    flags = r.u8("flags")
    if flags & _SPOT_RESERVED:
        r.fail("flags", 0, f"reserved bits set (0x{flags & _SPOT_RESERVED:02X}); layout unknown")
    spo2 = r.sfloat("spo2")
    pulse = r.sfloat("pulse_rate")
    timestamp = r.date_time("timestamp") if flags & _SPOT_TIMESTAMP else None
    status = r.u16("measurement_status") if flags & _SPOT_STATUS else None
    sensor = r.u24("device_sensor_status") if flags & _SPOT_SENSOR_STATUS else None
    pai = r.sfloat("pulse_amplitude_index") if flags & _SPOT_PAI else None
    r.done()
    return PlxSpotCheck(
        spo2, pulse, timestamp, status, sensor, pai, bool(flags & _SPOT_CLOCK_NOT_SET)
    )


def encode_plx_spot_check(m: PlxSpotCheck) -> bytes:
    flags = 0
    if m.timestamp is not None:
        flags |= _SPOT_TIMESTAMP
    if m.measurement_status is not None:
        flags |= _SPOT_STATUS
    if m.device_sensor_status is not None:
        flags |= _SPOT_SENSOR_STATUS
    if m.pulse_amplitude_index is not None:
        flags |= _SPOT_PAI
    if m.clock_not_set:
        flags |= _SPOT_CLOCK_NOT_SET
    out = bytearray([flags])
    out += _sfloat_bytes(m.spo2) + _sfloat_bytes(m.pulse_rate)
    if m.timestamp is not None:
        out += _date_time_bytes(m.timestamp)
    if m.measurement_status is not None:
        out += m.measurement_status.to_bytes(2, "little")
    if m.device_sensor_status is not None:
        out += m.device_sensor_status.to_bytes(3, "little")
    if m.pulse_amplitude_index is not None:
        out += _sfloat_bytes(m.pulse_amplitude_index)
    return bytes(out)


def decode_plx_continuous(data: Buffer) -> PlxContinuous:
    """Parse a PLX Continuous Measurement (0x2A5F) notification."""
    r = _Reader(CHARACTERISTIC_NAMES[PLX_CONTINUOUS], data)
    flags = r.u8("flags")
    if flags & _CONT_RESERVED:
        r.fail("flags", 0, f"reserved bits set (0x{flags & _CONT_RESERVED:02X}); layout unknown")
    spo2 = r.sfloat("spo2")
    pulse = r.sfloat("pulse_rate")
    fast = (r.sfloat("spo2_fast"), r.sfloat("pulse_rate_fast")) if flags & _CONT_FAST else None
    slow = (r.sfloat("spo2_slow"), r.sfloat("pulse_rate_slow")) if flags & _CONT_SLOW else None
    status = r.u16("measurement_status") if flags & _CONT_STATUS else None
    sensor = r.u24("device_sensor_status") if flags & _CONT_SENSOR_STATUS else None
    pai = r.sfloat("pulse_amplitude_index") if flags & _CONT_PAI else None
    r.done()
    return PlxContinuous(spo2, pulse, fast, slow, status, sensor, pai)


def encode_plx_continuous(m: PlxContinuous) -> bytes:
    flags = 0
    if m.fast is not None:
        flags |= _CONT_FAST
    if m.slow is not None:
        flags |= _CONT_SLOW
    if m.measurement_status is not None:
        flags |= _CONT_STATUS
    if m.device_sensor_status is not None:
        flags |= _CONT_SENSOR_STATUS
    if m.pulse_amplitude_index is not None:
        flags |= _CONT_PAI
    out = bytearray([flags])
    out += _sfloat_bytes(m.spo2) + _sfloat_bytes(m.pulse_rate)
    for pair in (m.fast, m.slow):
        if pair is not None:
            out += _sfloat_bytes(pair[0]) + _sfloat_bytes(pair[1])
    if m.measurement_status is not None:
        out += m.measurement_status.to_bytes(2, "little")
    if m.device_sensor_status is not None:
        out += m.device_sensor_status.to_bytes(3, "little")
    if m.pulse_amplitude_index is not None:
        out += _sfloat_bytes(m.pulse_amplitude_index)
    return bytes(out)


# -- Health Thermometer (0x2A1C) ---------------------------------------------------

_TEMP_FAHRENHEIT = 0x01
_TEMP_TIMESTAMP = 0x02
_TEMP_TYPE = 0x04
_TEMP_RESERVED = 0xF8


class TemperatureType(enum.IntEnum):
    ARMPIT = 1
    BODY = 2
    EAR = 3
    FINGER = 4
    GI_TRACT = 5
    MOUTH = 6
    RECTUM = 7
    TOE = 8
    TYMPANUM = 9


@dataclass(frozen=True, slots=True)
class TemperatureMeasurement:
    """One Temperature Measurement; ``value`` is in °F when ``fahrenheit`` else °C."""

    value: Float32
    fahrenheit: bool = False
    timestamp: DateTime | None = None
    temperature_type: TemperatureType | None = None

    @property
    def celsius(self) -> float:
        """The temperature in °C (NaN for the special values NaN/NRes)."""
        v = self.value.value
        return (v - 32.0) * 5.0 / 9.0 if self.fahrenheit else v


def decode_temperature(data: Buffer) -> TemperatureMeasurement:
    """Parse a Temperature Measurement (0x2A1C) indication."""
    r = _Reader(CHARACTERISTIC_NAMES[TEMPERATURE_MEASUREMENT], data)
    flags = r.u8("flags")
    if flags & _TEMP_RESERVED:
        r.fail("flags", 0, f"reserved bits set (0x{flags & _TEMP_RESERVED:02X}); layout unknown")
    value = r.float32("temperature")
    timestamp = r.date_time("timestamp") if flags & _TEMP_TIMESTAMP else None
    ttype: TemperatureType | None = None
    if flags & _TEMP_TYPE:
        pos = r.pos
        raw = r.u8("temperature_type")
        try:
            ttype = TemperatureType(raw)
        except ValueError:
            r.fail("temperature_type", pos, f"{raw} is a reserved type (1-9 are defined)")
    r.done()
    return TemperatureMeasurement(value, bool(flags & _TEMP_FAHRENHEIT), timestamp, ttype)


def encode_temperature(m: TemperatureMeasurement) -> bytes:
    flags = 0
    if m.fahrenheit:
        flags |= _TEMP_FAHRENHEIT
    if m.timestamp is not None:
        flags |= _TEMP_TIMESTAMP
    if m.temperature_type is not None:
        flags |= _TEMP_TYPE
    out = bytearray([flags])
    out += m.value.to_raw().to_bytes(4, "little")
    if m.timestamp is not None:
        out += _date_time_bytes(m.timestamp)
    if m.temperature_type is not None:
        out.append(int(m.temperature_type))
    return bytes(out)


def decode_temperature_type(data: Buffer) -> TemperatureType:
    """Parse Temperature Type (0x2A1D), the fixed site of a thermometer."""
    return _decode_u8_enum(
        data, TEMPERATURE_TYPE, "temperature_type", TemperatureType, "type (1-9 are defined)"
    )


def _decode_u8_enum(
    data: Buffer, uuid: str, field: str, kind: type[_E], defined: str
) -> _E:
    """A one-byte enumerated characteristic; reserved values are malformed."""
    r = _Reader(CHARACTERISTIC_NAMES[uuid], data)
    raw = r.u8(field)
    r.done()
    try:
        return kind(raw)
    except ValueError:
        r.fail(field, 0, f"{raw} is a reserved {defined}")


# -- Battery (0x2A19) and Device Information strings -------------------------------


def decode_battery_level(data: Buffer) -> int:
    """Parse Battery Level (0x2A19): percent, 0-100."""
    r = _Reader(CHARACTERISTIC_NAMES[BATTERY_LEVEL], data)
    level = r.u8("level")
    r.done()
    if level > 100:
        r.fail("level", 0, f"{level} % is above 100 %")
    return level


def encode_battery_level(level: int) -> bytes:
    if not 0 <= level <= 100:
        raise ValueError(f"battery level {level} outside 0..100 %")
    return bytes([level])


def decode_string(data: Buffer, characteristic: str = "Device Information string") -> str:
    """Parse a UTF-8 string characteristic; trailing NUL padding is dropped."""
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GattMalformed(characteristic, "value", exc.start, "not valid UTF-8") from None
    return text.rstrip("\x00")


def encode_string(text: str) -> bytes:
    return text.encode("utf-8")


# -- Environmental Sensing (0x181A) ----------------------------------------------
# Temperature sint16 in 0.01 °C, Humidity uint16 in 0.01 %, Pressure uint32 in 0.1 Pa.
# 0x8000 / 0xFFFF mean "value is not known" (GSS); they decode to None.


def decode_ess_temperature(data: Buffer) -> float | None:
    """Parse ESS Temperature (0x2A6E): °C, None when the sensor says unknown."""
    r = _Reader(CHARACTERISTIC_NAMES[ESS_TEMPERATURE], data)
    raw = int.from_bytes(r.take(2, "temperature"), "little", signed=True)
    r.done()
    return None if raw == -0x8000 else raw / 100.0


def encode_ess_temperature(celsius: float) -> bytes:
    return round(celsius * 100).to_bytes(2, "little", signed=True)


def decode_ess_humidity(data: Buffer) -> float | None:
    """Parse ESS Humidity (0x2A6F): %, None when unknown; above 100 % is malformed."""
    r = _Reader(CHARACTERISTIC_NAMES[ESS_HUMIDITY], data)
    raw = r.u16("humidity")
    r.done()
    if raw == 0xFFFF:
        return None
    if raw > 10000:
        r.fail("humidity", 0, f"{raw / 100:g} % is above 100 %")
    return raw / 100.0


def encode_ess_humidity(percent: float) -> bytes:
    return round(percent * 100).to_bytes(2, "little")


def decode_ess_pressure(data: Buffer) -> float:
    """Parse ESS Pressure (0x2A6D): returned in hPa (the unit the twin stores)."""
    r = _Reader(CHARACTERISTIC_NAMES[ESS_PRESSURE], data)
    raw = int.from_bytes(r.take(4, "pressure"), "little")
    r.done()
    return raw / 1000.0  # 0.1 Pa units -> hPa


def encode_ess_pressure(hpa: float) -> bytes:
    return round(hpa * 1000).to_bytes(4, "little")


# -- dispatch ---------------------------------------------------------------------

DECODERS: dict[str, Callable[[Buffer], object]] = {
    HEART_RATE_MEASUREMENT: decode_heart_rate,
    BODY_SENSOR_LOCATION: decode_body_sensor_location,
    PLX_SPOT_CHECK: decode_plx_spot_check,
    PLX_CONTINUOUS: decode_plx_continuous,
    TEMPERATURE_MEASUREMENT: decode_temperature,
    TEMPERATURE_TYPE: decode_temperature_type,
    BATTERY_LEVEL: decode_battery_level,
    ESS_TEMPERATURE: decode_ess_temperature,
    ESS_HUMIDITY: decode_ess_humidity,
    ESS_PRESSURE: decode_ess_pressure,
    **{
        uuid: functools.partial(decode_string, characteristic=f"Device Information {name}")
        for uuid, name in DEVICE_INFORMATION_STRINGS.items()
    },
}


# -- private helpers ----------------------------------------------------------------


class _Reader:
    """A cursor over a payload that raises ``GattMalformed`` with the field and offset."""

    __slots__ = ("char", "data", "pos")

    def __init__(self, char: str, data: Buffer) -> None:
        self.char = char
        self.data = bytes(data)
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def fail(self, field: str, offset: int, problem: str) -> NoReturn:
        raise GattMalformed(self.char, field, offset, problem)

    def take(self, n: int, field: str) -> bytes:
        if self.remaining < n:
            self.fail(
                field, self.pos,
                f"needs {n} byte{'s' if n > 1 else ''}, {self.remaining} left (truncated payload)",
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u24(self, field: str) -> int:
        return int.from_bytes(self.take(3, field), "little")

    def sfloat(self, field: str) -> SFloat:
        return SFloat.from_raw(self.u16(field))

    def float32(self, field: str) -> Float32:
        return Float32.from_raw(int.from_bytes(self.take(4, field), "little"))

    def date_time(self, field: str) -> DateTime:
        start = self.pos
        year = self.u16(f"{field}.year")
        rest = self.take(5, f"{field}.month..seconds")
        if year != 0 and not 1582 <= year <= 9999:
            self.fail(f"{field}.year", start, f"{year} outside 1582-9999 (0 = unknown)")
        for i, (name, lo, hi) in enumerate(_DATE_LIMITS):
            if not lo <= rest[i] <= hi:
                self.fail(f"{field}.{name}", start + 2 + i, f"{rest[i]} outside {lo}-{hi}")
        return DateTime(year, *rest)

    def done(self) -> None:
        if self.remaining:
            self.fail(
                "end", self.pos, f"{self.remaining} unexpected byte(s) after the last field"
            )


def _sfloat_bytes(value: SFloat) -> bytes:
    return value.to_raw().to_bytes(2, "little")


def _date_time_bytes(value: DateTime) -> bytes:
    return value.year.to_bytes(2, "little") + bytes(
        [value.month, value.day, value.hours, value.minutes, value.seconds]
    )
