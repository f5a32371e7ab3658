"""The column names and Arrow types of the reference catalog that `productvlm synth` imitates.

The Hugging Face dataset ``DBQ/Burberry.Product.prices.United.States`` (3,040 rows); ingestion
reads it through the ``burberry`` column preset of ``productvlm.catalog.schema``.
"""

from __future__ import annotations

import pyarrow as pa

#: Column names and types of the Burberry catalog, in its order.
BURBERRY_SCHEMA = pa.schema(
    [
        ("website_name", pa.string()),
        ("competence_date", pa.string()),
        ("country_code", pa.string()),
        ("currency_code", pa.string()),
        ("brand", pa.string()),
        ("category1_code", pa.string()),
        ("category2_code", pa.string()),
        ("category3_code", pa.string()),
        ("product_code", pa.int64()),
        ("title", pa.string()),
        ("itemurl", pa.string()),
        ("imageurl", pa.string()),
        ("full_price", pa.float64()),
        ("price", pa.float64()),
        ("full_price_eur", pa.float64()),
        ("price_eur", pa.float64()),
        ("flg_discount", pa.int64()),
    ]
)
