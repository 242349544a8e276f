"""Shapes and choices shared by data generation, training, export and evaluation."""

from __future__ import annotations

from edgetwin.features import schema

STEP_S = 5.0
# 5 minutes of context: long enough to see a trend and the respiratory/vasomotor
# swings in heart rate, short enough that a twin forecasts within minutes of a
# sensor being put on (a partial context is masked, see engine.min_context).
CONTEXT = 60
# 1 minute ahead in 5 s steps.
HORIZON = 12
# The imputer looks at the last 2 minutes: gaps longer than that are not filled.
IMPUTE_WINDOW = 24
# The features the models consume, by name (the runtime selects these columns of the
# current schema). The 13 body features of schema v1: the training data (the real RR
# dataset, the simulator's body) has no room climate, air or location, so the v2
# surroundings are not model inputs (models/MODEL_CARD.md).
FEATURE_SCHEMA_VERSION = 1
FEATURES = schema.LAYOUTS[FEATURE_SCHEMA_VERSION]
N_FEATURES = len(FEATURES)
# Cardiac/autonomic features a wearable provides; EEG and fNIRS are inputs only.
TARGETS: tuple[str, ...] = ("hr", "rmssd", "spo2", "skin_temp", "eda_tonic")
TARGET_INDEX = tuple(FEATURES.index(t) for t in TARGETS)
# 2.5 %, median, 97.5 %: a 95 % band; the median minimises MAE.
QUANTILES: tuple[float, ...] = (0.025, 0.5, 0.975)
# Model inputs are clipped to +-Z_CLIP baseline std: a person far from the
# population prior (real EDA levels, say) must not push inputs out of the
# training range, nor stretch int8 activation ranges.
Z_CLIP = 5.0
# The forecaster's linear skip path sees the last minute (see nets.Forecaster).
SKIP_STEPS = 12
