"""The sample catalog generator behind `productvlm synth` (and the demo's data).

``generate`` writes a catalog in the Burberry dataset's schema with drawn product photos and
deliberate faults; ``assortment`` decides what products exist and what they cost, ``render``,
``shapes`` and ``pen`` draw them, ``faults`` breaks rows the way real catalogs are broken.
It shares nothing with ingestion (``productvlm.catalog``) but the schema it imitates.
"""
