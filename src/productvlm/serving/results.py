"""The API's answer for a photo, derived from the one answer record and the answer schema.

:class:`~productvlm.inference.record.Prediction` declares the fields (and their
descriptions) once; :func:`api_models` turns them into the pydantic models that FastAPI
validates and documents, with the served model's extra answer fields (colour, ...) after the
price. The record's ``error`` (why the answer did not parse) is ``parse_error`` here, since
``error`` with ``limit`` and ``status`` says why a photo was refused.

>>> Result, Response = api_models(DEFAULT_SCHEMA)
>>> list(Result.model_fields)[:6]
['index', 'filename', 'ok', 'title', 'category', 'price']
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any, get_type_hints

from pydantic import BaseModel, Field, create_model

from productvlm.answer import AnswerSchema
from productvlm.inference import Prediction

#: the record's fields the API leaves out (internal; ``extra`` is written field by field)
#: or names otherwise
_LEFT_OUT = {"signals", "extra"}
_RENAMED = {"error": "parse_error"}
_KIND_TYPES: dict[str, Any] = {"text": str | None, "label": str | None, "number": float | None}


class ErrorBody(BaseModel):
    error: str
    limit: str | None = None
    status: int


@cache
def api_models(schema: AnswerSchema) -> tuple[type[BaseModel], type[BaseModel]]:
    """(ImageResult, PredictResponse) for a model that answers with ``schema``'s fields."""
    hints = get_type_hints(Prediction)
    fields: dict[str, Any] = {"index": (int, ...), "filename": (str | None, None),
                              "ok": (bool, ...)}
    for f in dataclasses.fields(Prediction):
        if f.name in _LEFT_OUT:
            continue
        if f.name in _RENAMED:
            continue  # written after raw, as the API always had it
        fields[f.name] = (hints[f.name], Field(None, description=f.metadata.get("description")))
        if f.name == "price":
            for extra in schema.extras:
                fields[extra.name] = (_KIND_TYPES[extra.kind],
                                      Field(None, description=f"answer field ({extra.kind})"))
        if f.name == "raw":
            fields["parse_error"] = (str | None, Field(None, description="why the answer did "
                                                       "not parse (see raw)"))
    fields |= {"error": (str | None, Field(None, description="why the photo was refused")),
               "limit": (str | None, Field(None, description="the server limit it broke")),
               "status": (int, 200)}
    result = create_model("ImageResult", __doc__=(
        "One photo's answer; ``ok`` False means it was refused (``error``, ``limit``, "
        "``status``) or the model's answer did not parse (``parse_error``, with ``raw``). With "
        "a calibrated model it also says how far to trust the answer (else those fields are "
        "null)."), **fields)
    response = create_model("PredictResponse", model=(str, ...),
                            results=(list[result], ...), elapsed_ms=(float, ...))
    return result, response


def result_of(model: type[BaseModel], index: int, name: str | None,
              pred: Prediction) -> BaseModel:
    """The Predictor's answer record as the API's JSON (its parse error as ``parse_error``).

    >>> result_of(api_models(DEFAULT_SCHEMA)[0], 0, "a.jpg", Prediction("Lola", "BAGS", 1.0)).ok
    True
    """
    fields = pred.to_dict()
    fields["parse_error"] = fields.pop("error")
    return model(index=index, filename=name, **fields)


def refused(model: type[BaseModel], index: int, name: str | None, error: str,
            limit: str | None, status: int) -> BaseModel:
    """A photo the server refused (too big, not an image, ...), in its slot of the answer."""
    return model(index=index, filename=name, ok=False, error=error, limit=limit,
                 status=status)
