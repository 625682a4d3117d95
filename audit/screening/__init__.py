"""Request screening: a bank of calibrated probes that allow, flag or block each request.

from audit.screening import fit_screens, save_bank, load_bank
bank = fit_screens(backbone, store, train=train, calibration=calibration)
decisions = bank.score(pooled)   # pooled[(hook, pooling)] from the serving forward
results = Screener(backbone, bank).screen(texts)   # whole texts, in windows, with top tokens
"""

from audit.screening.calibration import (
    CalibrationReport,
    Calibrator,
    choose_calibrator,
    expected_calibration_error,
)
from audit.screening.catalog import (
    default_specs,
    fit_default_bank,
    latest_bank,
    list_banks,
    load_or_fit_bank,
)
from audit.screening.screener import Screener, ScreenResult, TextTooLongError
from audit.screening.screens import (
    DEFAULT_SPECS,
    SCREEN_KINDS,
    Screen,
    ScreenBank,
    ScreenDecision,
    ScreenSpec,
    TrainingInfo,
    describe,
    fit_screens,
)
from audit.screening.storage import BANK_SCHEMA_VERSION, load_bank, save_bank
from audit.screening.thresholds import Threshold, clopper_pearson, threshold_for_fpr

__all__ = [
    "BANK_SCHEMA_VERSION",
    "DEFAULT_SPECS",
    "SCREEN_KINDS",
    "CalibrationReport",
    "Calibrator",
    "Screen",
    "ScreenBank",
    "ScreenDecision",
    "ScreenResult",
    "Screener",
    "ScreenSpec",
    "TextTooLongError",
    "Threshold",
    "TrainingInfo",
    "choose_calibrator",
    "clopper_pearson",
    "default_specs",
    "describe",
    "expected_calibration_error",
    "fit_default_bank",
    "fit_screens",
    "latest_bank",
    "list_banks",
    "load_bank",
    "load_or_fit_bank",
    "save_bank",
    "threshold_for_fpr",
]
