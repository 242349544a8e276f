"""GATT parsers: exact round trips, precise errors, and fuzzing that never crashes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgetwin.errors import MalformedInput
from edgetwin.sources import gatt as g

# -- strategies -------------------------------------------------------------------

sfloats = st.builds(g.SFloat, st.integers(-2048, 2047), st.integers(-8, 7))
float32s = st.builds(g.Float32, st.integers(-(2**23), 2**23 - 1), st.integers(-128, 127))
date_times = st.builds(
    g.DateTime,
    st.one_of(st.just(0), st.integers(1582, 9999)),
    st.integers(0, 12),
    st.integers(0, 31),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
)
u16 = st.integers(0, 0xFFFF)
u24 = st.integers(0, 0xFFFFFF)


@st.composite
def heart_rates(draw: st.DrawFn) -> g.HeartRateMeasurement:
    wide = draw(st.booleans())
    return g.HeartRateMeasurement(
        bpm=draw(st.integers(0, 0xFFFF if wide else 0xFF)),
        rr_raw=tuple(draw(st.lists(u16, max_size=12))),
        energy_kj=draw(st.none() | u16),
        contact_supported=draw(st.booleans()),
        contact_detected=draw(st.booleans()),
        uint16=wide,
    )


spot_checks = st.builds(
    g.PlxSpotCheck,
    sfloats,
    sfloats,
    st.none() | date_times,
    st.none() | u16,
    st.none() | u24,
    st.none() | sfloats,
    st.booleans(),
)
continuous = st.builds(
    g.PlxContinuous,
    sfloats,
    sfloats,
    st.none() | st.tuples(sfloats, sfloats),
    st.none() | st.tuples(sfloats, sfloats),
    st.none() | u16,
    st.none() | u24,
    st.none() | sfloats,
)
temperatures = st.builds(
    g.TemperatureMeasurement,
    float32s,
    st.booleans(),
    st.none() | date_times,
    st.none() | st.sampled_from(g.TemperatureType),
)

CODECS = [
    (heart_rates(), g.encode_heart_rate, g.decode_heart_rate),
    (spot_checks, g.encode_plx_spot_check, g.decode_plx_spot_check),
    (continuous, g.encode_plx_continuous, g.decode_plx_continuous),
    (temperatures, g.encode_temperature, g.decode_temperature),
    (st.sampled_from(g.BodySensorLocation), g.encode_body_sensor_location,
     g.decode_body_sensor_location),
    (st.integers(0, 100), g.encode_battery_level, g.decode_battery_level),
]
DECODERS = [decode for _, _, decode in CODECS] + [g.decode_temperature_type, g.decode_string]
ENCODERS = {decode: encode for _, encode, decode in CODECS}


def _decode_or_error(decode, payload):
    try:
        return decode(payload), None
    except g.GattMalformed as exc:
        return None, exc


# -- round trips ------------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "encode", "decode"), CODECS,
                         ids=lambda x: getattr(x, "__name__", None))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_decode_inverts_encode(strategy, encode, decode, data) -> None:
    value = data.draw(strategy)
    assert decode(encode(value)) == value


@pytest.mark.parametrize("decode", DECODERS, ids=lambda f: f.__name__)
@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=40))
def test_fuzz_never_crashes_and_accepted_bytes_reencode(decode, payload: bytes) -> None:
    """Arbitrary bytes: a value that re-encodes to the same bytes, or a precise error."""
    value, exc = _decode_or_error(decode, payload)
    if exc is not None:
        assert isinstance(exc, MalformedInput)
        assert 0 <= exc.offset <= len(payload)
        assert exc.field and exc.field in str(exc)
        assert f"byte {exc.offset}" in str(exc)
        return
    encode = ENCODERS.get(decode)
    if encode is not None:
        assert encode(value) == payload


@settings(max_examples=300, deadline=None)
@given(value=heart_rates(), cut=st.integers(1, 30))
def test_truncated_heart_rate_names_the_missing_field(value, cut: int) -> None:
    payload = g.encode_heart_rate(value)
    short = payload[: max(0, len(payload) - cut)]
    if not short:
        with pytest.raises(g.GattMalformed) as err:
            g.decode_heart_rate(short)
        assert err.value.field == "flags"
        return
    got, exc = _decode_or_error(g.decode_heart_rate, short)
    if exc is not None:
        assert exc.offset <= len(short)
    else:
        # Cutting whole RR-intervals off the end leaves a shorter but valid notification.
        assert got.rr_raw == value.rr_raw[: len(got.rr_raw)]
        assert got.rr_raw


# -- heart rate specifics -----------------------------------------------------------


def test_heart_rate_every_flag_bit() -> None:
    # flags 0x1F: uint16 rate, contact supported+detected, energy, two RR-intervals
    payload = bytes([0x1F, 0x2C, 0x01, 0x10, 0x00, 0x00, 0x04, 0x00, 0x02])
    m = g.decode_heart_rate(payload)
    assert m.bpm == 300 and m.uint16
    assert m.sensor_contact is True
    assert m.energy_kj == 16
    assert m.rr_raw == (1024, 512)
    assert m.rr_ms == (1000.0, 500.0)
    assert g.encode_heart_rate(m) == payload


@pytest.mark.parametrize(
    ("flags", "contact"),
    [(0x00, None), (0x02, None), (0x04, False), (0x06, True)],
)
def test_heart_rate_sensor_contact_states(flags: int, contact: bool | None) -> None:
    m = g.decode_heart_rate(bytes([flags, 60]))
    assert m.sensor_contact is contact
    assert g.encode_heart_rate(m) == bytes([flags, 60])


def test_heart_rate_many_rr_intervals() -> None:
    rr = tuple(range(700, 720))
    m = g.HeartRateMeasurement(bpm=80, rr_raw=rr)
    assert g.decode_heart_rate(g.encode_heart_rate(m)).rr_raw == rr


@pytest.mark.parametrize(
    ("payload", "field", "offset"),
    [
        (b"", "flags", 0),
        (bytes([0x01, 0x50]), "heart_rate", 1),  # 16-bit rate cut short
        (bytes([0x08, 0x50, 0x01]), "energy_expended", 2),
        (bytes([0x10, 0x50]), "rr_interval[0]", 2),  # RR flag but no RR: impossible
        (bytes([0x10, 0x50, 0x00, 0x04, 0x01]), "rr_interval[1]", 4),
        (bytes([0x20, 0x50]), "flags", 0),  # reserved bit
        (bytes([0x00, 0x50, 0x00]), "end", 2),  # trailing byte
    ],
)
def test_heart_rate_errors_are_precise(payload: bytes, field: str, offset: int) -> None:
    with pytest.raises(g.GattMalformed) as err:
        g.decode_heart_rate(payload)
    assert (err.value.field, err.value.offset) == (field, offset)
    assert "Heart Rate Measurement (0x2A37)" in str(err.value)
    assert err.value.exit_code == 4


def test_heart_rate_encoder_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="8-bit"):
        g.HeartRateMeasurement(bpm=256)
    assert g.HeartRateMeasurement(bpm=256, uint16=True).bpm == 256


def test_rr_conversion() -> None:
    assert g.rr_ms_to_raw(1000.0) == 1024
    assert g.HeartRateMeasurement(60, (g.rr_ms_to_raw(812.5),)).rr_ms[0] == pytest.approx(
        812.5, abs=0.5
    )


# -- IEEE 11073 numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "special", "value"),
    [
        (0x07FF, g.Special.NAN, math.nan),
        (0x0800, g.Special.NRES, math.nan),
        (0x07FE, g.Special.POS_INF, math.inf),
        (0x0802, g.Special.NEG_INF, -math.inf),
        (0x0801, g.Special.RESERVED, math.nan),
    ],
)
def test_sfloat_special_values(raw: int, special: g.Special, value: float) -> None:
    s = g.SFloat.from_raw(raw)
    assert s.special is special
    assert s.to_raw() == raw
    if math.isnan(value):
        assert math.isnan(s.value)
    else:
        assert s.value == value
    assert g.SFloat.of_special(special).to_raw() == raw


@pytest.mark.parametrize(
    ("raw", "special"),
    [
        (0x007FFFFF, g.Special.NAN),
        (0x00800000, g.Special.NRES),
        (0x007FFFFE, g.Special.POS_INF),
        (0x00800002, g.Special.NEG_INF),
        (0x00800001, g.Special.RESERVED),
    ],
)
def test_float32_special_values(raw: int, special: g.Special) -> None:
    assert g.Float32.from_raw(raw).special is special
    assert g.Float32.of_special(special).to_raw() == raw


def test_sfloat_ordinary_values() -> None:
    # 0xF3D2: exponent -1, mantissa 0x3D2 = 978 -> 97.8
    assert g.SFloat.from_raw(0xF3D2).value == 97.8
    assert g.SFloat.from_raw(0xF3D2) == g.SFloat(978, -1)
    # a negative mantissa, positive exponent: -5 x 10^2
    assert g.SFloat(-5, 2).value == -500.0
    # the special mantissas are ordinary numbers at a non-zero exponent
    assert g.SFloat(2047, 1).special is None
    assert g.SFloat(2047, 1).value == 20470.0


@given(raw=st.integers(0, 0xFFFF))
def test_sfloat_raw_round_trip(raw: int) -> None:
    assert g.SFloat.from_raw(raw).to_raw() == raw


@given(raw=st.integers(0, 0xFFFFFFFF))
def test_float32_raw_round_trip(raw: int) -> None:
    f = g.Float32.from_raw(raw)
    assert f.to_raw() == raw
    assert isinstance(f.value, float)  # huge exponents saturate to +/-inf, never raise


@given(value=st.floats(-2000, 2000, allow_nan=False))
def test_sfloat_from_float_is_close(value: float) -> None:
    s = g.SFloat.from_float(value)
    assert s.special is None
    # the finest exponent that fits is chosen, so the error is half a unit in its last place
    assert abs(s.value - value) <= 0.5 * 10.0**s.exponent * (1 + 1e-9)
    assert s.exponent == -8 or abs(value) * 10 ** (-s.exponent + 1) >= 2046 - 1


def test_from_float_special_and_out_of_range() -> None:
    assert g.SFloat.from_float(math.nan).special is g.Special.NAN
    assert g.SFloat.from_float(-math.inf).special is g.Special.NEG_INF
    assert g.Float32.from_float(36.6, exponent=-1) == g.Float32(366, -1)
    assert g.Float32.from_float(36.6) == g.Float32(3660000, -5)  # the finest that fits
    # exponent 0 would collide with the special values, so another exponent is chosen
    assert g.SFloat.from_float(2047.0, exponent=None).special is None
    with pytest.raises(ValueError, match="cannot be represented"):
        g.SFloat.from_float(1e12)


# -- pulse oximeter -----------------------------------------------------------------


def test_plx_continuous_all_fields() -> None:
    m = g.PlxContinuous(
        spo2=g.SFloat(97, 0),
        pulse_rate=g.SFloat(612, -1),
        fast=(g.SFloat(96, 0), g.SFloat(62, 0)),
        slow=(g.SFloat(98, 0), g.SFloat(60, 0)),
        measurement_status=g.PLX_STATUS_QUESTIONABLE,
        device_sensor_status=0x010203,
        pulse_amplitude_index=g.SFloat(35, -1),
    )
    payload = g.encode_plx_continuous(m)
    assert payload[0] == 0x1F
    assert len(payload) == 1 + 4 + 4 + 4 + 2 + 3 + 2
    assert g.decode_plx_continuous(payload) == m
    assert m.pulse_rate.value == 61.2


def test_plx_spot_check_with_timestamp_and_specials() -> None:
    m = g.PlxSpotCheck(
        spo2=g.SFloat.of_special(g.Special.NRES),
        pulse_rate=g.SFloat.of_special(g.Special.NAN),
        timestamp=g.DateTime(2024, 2, 29, 23, 59, 58),
        clock_not_set=True,
    )
    back = g.decode_plx_spot_check(g.encode_plx_spot_check(m))
    assert back.spo2.special is g.Special.NRES
    assert math.isnan(back.pulse_rate.value)
    assert back.timestamp is not None
    assert back.timestamp.to_datetime() is not None
    assert back.clock_not_set


@pytest.mark.parametrize(
    ("payload", "field", "offset"),
    [
        (bytes([0x00, 0x61]), "spo2", 1),
        (bytes([0x00, 0x61, 0x00, 0x3C]), "pulse_rate", 3),
        (bytes([0x01, 0x61, 0x00, 0x3C, 0x00, 0xE8, 0x07, 13, 1, 0, 0, 0]), "timestamp.month", 7),
        (bytes([0x01, 0x61, 0x00, 0x3C, 0x00, 0x01, 0x00, 1, 1, 0, 0, 0]), "timestamp.year", 5),
        (bytes([0x04, 0x61, 0x00, 0x3C, 0x00, 0x01, 0x02]), "device_sensor_status", 5),
        (bytes([0x40, 0x61, 0x00, 0x3C, 0x00]), "flags", 0),
    ],
)
def test_plx_spot_check_errors(payload: bytes, field: str, offset: int) -> None:
    with pytest.raises(g.GattMalformed) as err:
        g.decode_plx_spot_check(payload)
    assert (err.value.field, err.value.offset) == (field, offset)


def test_plx_continuous_truncated_optional_field() -> None:
    full = g.encode_plx_continuous(
        g.PlxContinuous(g.SFloat(97, 0), g.SFloat(60, 0), slow=(g.SFloat(1, 0), g.SFloat(2, 0)))
    )
    with pytest.raises(g.GattMalformed) as err:
        g.decode_plx_continuous(full[:-1])
    assert (err.value.field, err.value.offset) == ("pulse_rate_slow", 7)


# -- thermometer, battery, strings ----------------------------------------------------


def test_temperature_fahrenheit_is_converted() -> None:
    m = g.TemperatureMeasurement(g.Float32(986, -1), fahrenheit=True,
                                 temperature_type=g.TemperatureType.EAR)
    back = g.decode_temperature(g.encode_temperature(m))
    assert back.celsius == pytest.approx(37.0)
    assert back.temperature_type is g.TemperatureType.EAR
    assert g.TemperatureMeasurement(g.Float32(366, -1)).celsius == pytest.approx(36.6)


@pytest.mark.parametrize(
    ("payload", "field", "offset"),
    [
        (bytes([0x00, 0x6E, 0x01, 0x00]), "temperature", 1),
        (bytes([0x04, 0x6E, 0x01, 0x00, 0xFF, 0x00]), "temperature_type", 5),
        (bytes([0x04, 0x6E, 0x01, 0x00, 0xFF, 10]), "temperature_type", 5),
        (bytes([0x08, 0x6E, 0x01, 0x00, 0xFF]), "flags", 0),
        (bytes([0x02, 0x6E, 0x01, 0x00, 0xFF, 0xE8, 0x07, 1, 1, 24, 0, 0]), "timestamp.hours", 9),
    ],
)
def test_temperature_errors(payload: bytes, field: str, offset: int) -> None:
    with pytest.raises(g.GattMalformed) as err:
        g.decode_temperature(payload)
    assert (err.value.field, err.value.offset) == (field, offset)


def test_battery_and_location_and_strings() -> None:
    assert g.decode_battery_level(b"\x57") == 87
    with pytest.raises(g.GattMalformed, match="above 100"):
        g.decode_battery_level(b"\x65")
    with pytest.raises(g.GattMalformed) as err:
        g.decode_battery_level(b"\x10\x00")
    assert err.value.field == "end"
    with pytest.raises(ValueError, match="battery"):
        g.encode_battery_level(101)
    assert g.decode_body_sensor_location(b"\x01") is g.BodySensorLocation.CHEST
    with pytest.raises(g.GattMalformed, match="reserved location"):
        g.decode_body_sensor_location(b"\x07")
    assert g.decode_temperature_type(b"\x03") is g.TemperatureType.EAR
    info = g.DECODERS[g.uuid16(0x2A29)]
    assert info(b"Polar Electro Oy\x00\x00") == "Polar Electro Oy"
    with pytest.raises(g.GattMalformed) as err:
        info(b"ab\xff")
    assert err.value.offset == 2
    assert "Device Information manufacturer" in str(err.value)
    assert g.encode_string("H10") == b"H10"


def test_date_time_helpers() -> None:
    import datetime as dt

    when = dt.datetime(2025, 3, 1, 8, 30, 5)
    d = g.DateTime.from_datetime(when)
    assert d.to_datetime() == when
    assert g.DateTime(0, 1, 1, 0, 0, 0).to_datetime() is None
    assert g.DateTime(2023, 2, 31, 0, 0, 0).to_datetime() is None


def test_uuid_helpers() -> None:
    assert g.uuid16(0x2A37) == "00002a37-0000-1000-8000-00805f9b34fb"
    assert g.HEART_RATE_MEASUREMENT in g.DECODERS


@given(text=st.text(max_size=40).filter(lambda s: not s.endswith("\x00")))
def test_device_information_string_round_trip(text: str) -> None:
    for decode in (g.DECODERS[u] for u in g.DEVICE_INFORMATION_STRINGS):
        assert decode(g.encode_string(text)) == text
        assert decode(g.encode_string(text) + b"\x00\x00") == text  # NUL padding is dropped
