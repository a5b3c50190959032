"""Data shipped with the package: the bundled demo model and calibration / held-out texts.

Calibration texts are the fixture corpora with the held-out documents removed, so that
calibrating on them and measuring perplexity on ``heldout.txt`` never overlap.
"""

from pathlib import Path

ASSETS = Path(__file__).parent
MODELS = ASSETS / "models"
TEXTS = ASSETS / "text"
DEMO_MODEL = MODELS / "tiny-mixtral"
HELDOUT_TEXT = TEXTS / "heldout.txt"
CALIBRATION_TEXTS = tuple(TEXTS / f"{name}.txt.gz" for name in ("shakespeare", "kjv", "fortunes", "python"))
