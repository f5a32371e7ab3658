"""The ``calibration/`` folder: ``calibration.json`` (the grid, margins, weights, stats and
the words' model's parts) and ``features.safetensors`` (the arrays); see
:mod:`productvlm.calibration`.

>>> Calibration.load(cal.save(Path("runs/demo/train/calibration")))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Self

import numpy as np

from productvlm.errors import ProductVLMError
from productvlm.wordprice import WordPrice

FILE_JSON, FILE_ARRAYS = "calibration.json", "features.safetensors"


class Stored:
    """:meth:`save` and :meth:`load`, mixed into :class:`~productvlm.calibration.Calibration`
    (they write and read every one of its fields)."""

    def save(self, folder: Path) -> Path:
        """Write ``folder/calibration.json`` and ``folder/features.safetensors``."""
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        meta = {"grid": self.grid, "margins": {f"{k:.2f}": v for k, v in self.margins.items()},
                "categories": self.categories, "temperature": self.temperature,
                "confidence_coef": self.confidence_coef,
                "confidence_intercept": self.confidence_intercept,
                "doubt_weight": self.doubt_weight,
                "given_margins": {f"{k:.2f}": v for k, v in self.given_margins.items()},
                "stats": self.stats}
        arrays = dict(self.arrays)
        if self.words is not None:
            meta["words"], words_arrays = self.words.to_parts()
            arrays.update(words_arrays)
        (folder / FILE_JSON).write_text(json.dumps(meta, indent=1))
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                  str(folder / FILE_ARRAYS))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Self:
        """Read what :meth:`save` wrote; a clear error when it is damaged."""
        from safetensors.numpy import load_file

        try:
            meta = json.loads((folder / FILE_JSON).read_text())
            arrays = load_file(str(folder / FILE_ARRAYS))
            words = WordPrice.from_parts(meta["words"], arrays) if "words" in meta else None
            arrays = {k: v for k, v in arrays.items() if not k.startswith("words_")
                      or k == "words_scores"}
            return cls(grid=[float(x) for x in meta["grid"]],
                       margins={float(k): float(v) for k, v in meta["margins"].items()},
                       categories=list(meta["categories"]),
                       temperature=float(meta["temperature"]),
                       confidence_coef=[float(x) for x in meta["confidence_coef"]],
                       confidence_intercept=float(meta["confidence_intercept"]),
                       arrays={k: v.astype(np.float64) for k, v in arrays.items()},
                       stats=dict(meta.get("stats", {})),
                       doubt_weight=float(meta.get("doubt_weight", 0.0)),
                       given_margins={float(k): float(v)
                                      for k, v in meta.get("given_margins", {}).items()},
                       words=words)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ProductVLMError(f"{folder}: unreadable calibration ({e}); delete the folder "
                                  "and run `productvlm evaluate` to calibrate again") from None

