"""fNIRS: raw intensity -> optical density -> HbO/HbR with the modified Beer-Lambert law.

For each source-detector pair measured at wavelengths ``lambda_i``::

    OD_i(t)  = -ln(I_i(t) / I_i,baseline)
    OD_i     = ln(10) * (eps_HbO(lambda_i) dHbO + eps_HbR(lambda_i) dHbR) * d * DPF(lambda_i)

solved for ``(dHbO, dHbR)`` by least squares (the pseudo-inverse, exact for
two wavelengths) - the modified Beer-Lambert law (Delpy et al. 1988, Phys
Med Biol 33:1433; Kocsis et al. 2006, Phys Med Biol 51:N91).

Parameters and their documented defaults:

- ``eps``: molar extinction coefficients of HbO2 and Hb (decadic, cm^-1/M)
  from Scott Prahl's tabulation of Gratzer and Kollias' data
  (omlc.org/spectra/hemoglobin/summary.html), 650-950 nm every 2 nm, linearly
  interpolated; MNE-Python ships the same table.
- ``d``: source-detector distance, default 3.0 cm (a typical adult channel;
  Brigadoi & Cooper 2015, Neurophotonics 2:025005 for short channels < 1.5 cm,
  which are excluded from the brain features).
- ``DPF``: differential pathlength factor from Scholkmann & Wolf 2013
  (J Biomed Opt 18:105004), ``DPF(lambda, age) = 223.3 + 0.05624 age^0.8493
  - 5.723e-7 lambda^3 + 0.001245 lambda^2 - 0.9025 lambda``, with age 30
  years when the stream does not say (about 6.2 at 760 nm, 5.2 at 850 nm).

The baseline intensity is a running mean (exponential, time constant
``BASELINE_TAU_S`` = 600 s) of the per-step mean intensity, started from the
first step, so the features are haemoglobin *changes* relative to the last
~10 minutes, robust to slow coupling drift.

Signal quality is the scalp coupling index (SCI; Pollonini et al. 2014,
Hear Res 309:84): the zero-lag correlation of the two wavelengths'
intensities band-passed to the cardiac band (0.5-2.5 Hz) over the last
``SCI_WINDOW_S`` seconds. A well-coupled optode shows the same heartbeat at
both wavelengths (SCI near 1); a loose one shows uncorrelated noise.
"""

from __future__ import annotations

import math

import numpy as np

from edgetwin.features import dsp
from edgetwin.types import FloatArray

DEFAULT_DISTANCE_CM = 3.0
DEFAULT_AGE_YEARS = 30.0
SHORT_CHANNEL_CM = 1.5
BASELINE_TAU_S = 600.0
SCI_WINDOW_S = 10.0
SCI_BAND_HZ = (0.5, 2.5)

# (nm, HbO2, Hb): Prahl's molar extinction coefficients, cm^-1/M (decadic).
_PRAHL: tuple[tuple[int, float, float], ...] = (
    (650, 368, 3750.12),
    (652, 356.8, 3642.64),
    (654, 345.6, 3535.16),
    (656, 335.2, 3427.68),
    (658, 325.6, 3320.2),
    (660, 319.6, 3226.56),
    (662, 314, 3140.28),
    (664, 308.4, 3053.96),
    (666, 302.8, 2967.68),
    (668, 298, 2881.4),
    (670, 294, 2795.12),
    (672, 290, 2708.84),
    (674, 285.6, 2627.64),
    (676, 282, 2554.4),
    (678, 279.2, 2481.16),
    (680, 277.6, 2407.92),
    (682, 276, 2334.68),
    (684, 274.4, 2261.48),
    (686, 272.8, 2188.24),
    (688, 274.4, 2115),
    (690, 276, 2051.96),
    (692, 277.6, 2000.48),
    (694, 279.2, 1949.04),
    (696, 282, 1897.56),
    (698, 286, 1846.08),
    (700, 290, 1794.28),
    (702, 294, 1741),
    (704, 298, 1687.76),
    (706, 302.8, 1634.48),
    (708, 308.4, 1583.52),
    (710, 314, 1540.48),
    (712, 319.6, 1497.4),
    (714, 325.2, 1454.36),
    (716, 332, 1411.32),
    (718, 340, 1368.28),
    (720, 348, 1325.88),
    (722, 356, 1285.16),
    (724, 364, 1244.44),
    (726, 372.4, 1203.68),
    (728, 381.2, 1152.8),
    (730, 390, 1102.2),
    (732, 398.8, 1102.2),
    (734, 407.6, 1102.2),
    (736, 418.8, 1101.76),
    (738, 432.4, 1100.48),
    (740, 446, 1115.88),
    (742, 459.6, 1161.64),
    (744, 473.2, 1207.4),
    (746, 487.6, 1266.04),
    (748, 502.8, 1333.24),
    (750, 518, 1405.24),
    (752, 533.2, 1515.32),
    (754, 548.4, 1541.76),
    (756, 562, 1560.48),
    (758, 574, 1560.48),
    (760, 586, 1548.52),
    (762, 598, 1508.44),
    (764, 610, 1459.56),
    (766, 622.8, 1410.52),
    (768, 636.4, 1361.32),
    (770, 650, 1311.88),
    (772, 663.6, 1262.44),
    (774, 677.2, 1213),
    (776, 689.2, 1163.56),
    (778, 699.6, 1114.8),
    (780, 710, 1075.44),
    (782, 720.4, 1036.08),
    (784, 730.8, 996.72),
    (786, 740, 957.36),
    (788, 748, 921.8),
    (790, 756, 890.8),
    (792, 764, 859.8),
    (794, 772, 828.8),
    (796, 786.4, 802.96),
    (798, 807.2, 782.36),
    (800, 816, 761.72),
    (802, 828, 743.84),
    (804, 836, 737.08),
    (806, 844, 730.28),
    (808, 856, 723.52),
    (810, 864, 717.08),
    (812, 872, 711.84),
    (814, 880, 706.6),
    (816, 887.2, 701.32),
    (818, 901.6, 696.08),
    (820, 916, 693.76),
    (822, 930.4, 693.6),
    (824, 944.8, 693.48),
    (826, 956.4, 693.32),
    (828, 965.2, 693.2),
    (830, 974, 693.04),
    (832, 982.8, 692.92),
    (834, 991.6, 692.76),
    (836, 1001.2, 692.64),
    (838, 1011.6, 692.48),
    (840, 1022, 692.36),
    (842, 1032.4, 692.2),
    (844, 1042.8, 691.96),
    (846, 1050, 691.76),
    (848, 1054, 691.52),
    (850, 1058, 691.32),
    (852, 1062, 691.08),
    (854, 1066, 690.88),
    (856, 1072.8, 690.64),
    (858, 1082.4, 692.44),
    (860, 1092, 694.32),
    (862, 1101.6, 696.2),
    (864, 1111.2, 698.04),
    (866, 1118.4, 699.92),
    (868, 1123.2, 701.8),
    (870, 1128, 705.84),
    (872, 1132.8, 709.96),
    (874, 1137.6, 714.08),
    (876, 1142.8, 718.2),
    (878, 1148.4, 722.32),
    (880, 1154, 726.44),
    (882, 1159.6, 729.84),
    (884, 1165.2, 733.2),
    (886, 1170, 736.6),
    (888, 1174, 739.96),
    (890, 1178, 743.6),
    (892, 1182, 747.24),
    (894, 1186, 750.88),
    (896, 1190, 754.52),
    (898, 1194, 758.16),
    (900, 1198, 761.84),
    (902, 1202, 765.04),
    (904, 1206, 767.44),
    (906, 1209.2, 769.8),
    (908, 1211.6, 772.16),
    (910, 1214, 774.56),
    (912, 1216.4, 776.92),
    (914, 1218.8, 778.4),
    (916, 1220.8, 778.04),
    (918, 1222.4, 777.72),
    (920, 1224, 777.36),
    (922, 1225.6, 777.04),
    (924, 1227.2, 776.64),
    (926, 1226.8, 772.36),
    (928, 1224.4, 768.08),
    (930, 1222, 763.84),
    (932, 1219.6, 752.28),
    (934, 1217.2, 737.56),
    (936, 1215.6, 722.88),
    (938, 1214.8, 708.16),
    (940, 1214, 693.44),
    (942, 1213.2, 678.72),
    (944, 1212.4, 660.52),
    (946, 1210.4, 641.08),
    (948, 1207.2, 621.64),
    (950, 1204, 602.24),
)
_NM = np.array([r[0] for r in _PRAHL], dtype=np.float64)
_HBO = np.array([r[1] for r in _PRAHL], dtype=np.float64)
_HBR = np.array([r[2] for r in _PRAHL], dtype=np.float64)


def extinction(wavelength_nm: float) -> tuple[float, float]:
    """``(eps_HbO2, eps_Hb)`` in cm^-1/M at ``wavelength_nm``; ValueError outside 650-950 nm."""
    if not _NM[0] <= wavelength_nm <= _NM[-1]:
        raise ValueError(
            f"wavelength {wavelength_nm} nm is outside the tabulated {_NM[0]:.0f}-{_NM[-1]:.0f} nm"
        )
    return (
        float(np.interp(wavelength_nm, _NM, _HBO)),
        float(np.interp(wavelength_nm, _NM, _HBR)),
    )


def scholkmann_dpf(wavelength_nm: float, age_years: float = DEFAULT_AGE_YEARS) -> float:
    """Differential pathlength factor of the adult head (Scholkmann & Wolf 2013)."""
    lam = float(wavelength_nm)
    return float(
        223.3
        + 0.05624 * float(age_years) ** 0.8493
        - 5.723e-7 * lam**3
        + 0.001245 * lam**2
        - 0.9025 * lam
    )


def optical_density(intensity: FloatArray, baseline: FloatArray) -> FloatArray:
    """``-ln(I / I_baseline)``; rows are samples, columns channels."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(-np.log(intensity / baseline), dtype=np.float64)


def mbll_matrix(
    wavelengths_nm: tuple[float, ...], distance_cm: float, dpf: tuple[float, ...]
) -> FloatArray:
    """The pseudo-inverse mapping OD (one row per wavelength) to (dHbO, dHbR) in µM."""
    e = np.array([extinction(nm) for nm in wavelengths_nm])  # (n_wl, 2)
    el = math.log(10.0) * e * distance_cm * np.asarray(dpf)[:, None]
    return np.asarray(np.linalg.pinv(el) * 1e6, dtype=np.float64)


def mbll(
    od: FloatArray,
    wavelengths_nm: tuple[float, ...],
    distance_cm: float = DEFAULT_DISTANCE_CM,
    dpf: tuple[float, ...] | None = None,
    age_years: float = DEFAULT_AGE_YEARS,
) -> tuple[FloatArray, FloatArray]:
    """(dHbO, dHbR) in µM from optical densities ``od`` of shape (n_wavelengths, n_samples)."""
    if dpf is None:
        dpf = tuple(scholkmann_dpf(nm, age_years) for nm in wavelengths_nm)
    conc = mbll_matrix(wavelengths_nm, distance_cm, dpf) @ od
    return conc[0], conc[1]


def scalp_coupling_index(a: FloatArray, b: FloatArray, fs: float) -> float | None:
    """SCI of two wavelengths' finite intensity traces; None when it cannot be measured."""
    rate = round(fs)
    if rate < 2 * SCI_BAND_HZ[1] + 1 or a.size < 4 * fs:
        return None
    out = [dsp.bandpassed(x, fs, *SCI_BAND_HZ) for x in (a, b)]
    sa, sb = float(np.std(out[0])), float(np.std(out[1]))
    if sa == 0 or sb == 0:
        return 0.0
    return float(np.mean((out[0] - out[0].mean()) * (out[1] - out[1].mean())) / (sa * sb))


def parse_channel(name: str) -> tuple[str, float] | None:
    """``fnirs_s1_d1_760`` -> ``("s1_d1", 760.0)``; None when the name does not parse."""
    parts = name.split("_")
    if len(parts) != 4 or parts[0] != "fnirs":
        return None
    try:
        nm = float(parts[3])
    except ValueError:
        return None
    return f"{parts[1]}_{parts[2]}", nm
