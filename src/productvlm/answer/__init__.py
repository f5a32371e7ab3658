"""The answer schema: which fields the model says about a photo, and the one place that
writes them as a target and reads them back from an answer.

An :class:`AnswerSchema` is a list of :class:`AnswerField` declarations (name, kind, the
catalog column it comes from, its words in the seed format, its JSON key). Everything that
handles an answer's fields derives from it: the target text (:meth:`AnswerSchema.format`),
the parser (:meth:`AnswerSchema.parse`), the constrained grammar
(:func:`productvlm.constrained.answer_template`), the price scoring, the
:class:`~productvlm.inference.record.Prediction` record, the API model, predict's table, the
metrics per field and the report.

The default schema is the Phi-3 cookbook's three fields, in two formats:

* ``seed`` (default): ``Product: Medium Lola Bag, Category: BAGS, Full Price: 2,290.00``
* ``json``: ``{"title": "Medium Lola Bag", "category": "BAGS", "price": 2290.0}``

A catalog's extra fields (colour, material, ...) come after these three, in the order
declared: ``..., Full Price: 2,290.00, Colour: Beige, Material: Cotton``.

>>> s = DEFAULT_SCHEMA.with_extras([known_field("colour")])
>>> s.format(ProductFields("Lola Bag", "BAGS", 2290.0, {"colour": "Beige"}))
'Product: Lola Bag, Category: BAGS, Full Price: 2,290.00, Colour: Beige'
>>> s.parse("Product: Lola Bag, Category: BAGS, Full Price: 2,290.00, Colour: Beige").extra
{'colour': 'Beige'}
"""

from productvlm.answer.fields import (
    CATEGORY,
    CORE,
    FIELD_KINDS,
    KNOWN_FIELDS,
    PRICE,
    TITLE,
    AnswerField,
    FieldDomain,
    FieldKind,
    TargetFormat,
    declare_field,
    known_field,
)
from productvlm.answer.schema import (
    DEFAULT_SCHEMA,
    ENDS,
    AnswerSchema,
    ParsedAnswer,
    ProductFields,
    format_answer,
    format_price,
    parse_answer,
    parse_price,
    strip_end,
)

__all__ = ["CATEGORY", "CORE", "DEFAULT_SCHEMA", "ENDS", "FIELD_KINDS", "KNOWN_FIELDS", "PRICE",
           "TITLE", "AnswerField", "AnswerSchema", "FieldDomain", "FieldKind", "ParsedAnswer",
           "ProductFields", "TargetFormat", "declare_field", "format_answer", "format_price",
           "known_field", "parse_answer", "parse_price", "strip_end"]
