"""The sample catalog's assortment: what a product can be, what it is called, what it costs.

A product is an :class:`Item` (the category3 code, drawn as one silhouette) plus a
:class:`Finish` (material or pattern, drawn as a texture), a :class:`Variant` (a size drawn as
how much of the frame the product fills, or a silhouette variant such as a long or short
trench coat) and a colour. Every title word comes from one of these four visible choices,
and so does the price:

    title  = item.template filled with {variant} {colour} {finish} {noun}
             e.g. "Medium Black Quilted Leather Lola Bag", "Long Beige Gabardine Trench Coat",
             "Her Eau de Parfum 100ml" (fragrance lines are named after the bottle colour)
    price  = price_point(item.base x finish.mult x variant.mult x lognormal noise, sd 0.07)
             rounded like a retail price list (38, 590, 1,290, 57,500), clamped to 32..70,000

Colour never moves the price; category1 (WOMAN / MAN / KIDS) and category2 (one of 26
merchandising groups, some of them not visible at all, like NEW ARRIVALS) are drawn at
random per item and are not meant to be learnable. category3 is the item's code, which is
what the Burberry recipe's answer carries, and it follows from the silhouette alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Colour name -> RGB. Far apart on purpose: a tiny model must name them at 112 px.
COLOURS: dict[str, tuple[int, int, int]] = {
    "Black": (36, 34, 34),
    "Beige": (205, 180, 140),
    "Camel": (168, 118, 68),
    "Navy": (34, 44, 80),
    "Red": (150, 28, 36),
    "Green": (44, 82, 58),
    "Pink": (222, 150, 165),
    "Grey": (128, 128, 130),
}
ALL_COLOURS = tuple(COLOURS)

#: Merchandising groups any product may be filed under (category2), as on a real site.
MERCH_CATEGORY2 = ("NEW ARRIVALS", "GIFTS", "BESTSELLERS", "ICONS")
KIDS_CATEGORY2 = "BABY"


@dataclass(frozen=True)
class Finish:
    """A material or pattern: title words, the texture that draws it, a price multiplier."""

    words: str
    texture: str
    mult: float
    weight: float = 1.0
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Variant:
    """A size or silhouette variant. ``scale``: share of the frame filled (None: default)."""

    words: str
    mult: float
    scale: float | None = None
    shape: str | None = None
    noun: str | None = None
    weight: float = 1.0


PLAIN = (Variant("", 1.0),)
BAG_SIZES = (
    Variant("Mini", 0.55, 0.34), Variant("Small", 0.78, 0.48),
    Variant("Medium", 1.0, 0.63), Variant("Large", 1.28, 0.8),
)
LEATHER = Finish("Leather", "leather", 1.0, 1.4)
CHECK = Finish("Check", "check", 0.8, 1.4)
MONOGRAM = Finish("Monogram", "monogram", 1.05)


@dataclass(frozen=True)
class Item:
    """One kind of product: its category3 code, noun, silhouette and base price (USD)."""

    category3: str
    noun: str
    shape: str
    base: float
    finishes: tuple[Finish, ...]
    category1: tuple[tuple[str, float], ...]
    category2: tuple[str, ...]
    variants: tuple[Variant, ...] = PLAIN
    colours: tuple[str, ...] = ALL_COLOURS
    colour_words: tuple[tuple[str, str], ...] = ()
    template: str = "{variant} {colour} {finish} {noun}"
    weight: float = 1.0

    def title(self, variant: Variant, colour: str, finish: Finish) -> str:
        """The product title, e.g. ``"Small Navy Check Crossbody Bag"``."""
        words = dict(self.colour_words)
        text = self.template.format(
            variant=variant.words, colour=words.get(colour, colour), finish=finish.words,
            noun=variant.noun or self.noun,
        )
        return " ".join(text.split())

    def shape_for(self, variant: Variant) -> str:
        return variant.shape or self.shape


W, M, K = "WOMAN", "MAN", "KIDS"

ITEMS: tuple[Item, ...] = (
    Item("TOTE BAGS", "Tote", "tote", 1890, (LEATHER, CHECK, MONOGRAM),
         ((W, 0.65), (M, 0.35)), ("BAGS",), BAG_SIZES),
    Item("SHOULDER BAGS", "Lola Bag", "lola", 2290,
         (Finish("Quilted Leather", "quilted", 1.0, 1.5), CHECK,
          Finish("Alligator", "alligator", 19.0, 0.12)),
         ((W, 0.9), (M, 0.1)), ("BAGS",), BAG_SIZES),
    Item("CROSSBODY BAGS", "Crossbody Bag", "crossbody", 1290, (LEATHER, CHECK, MONOGRAM),
         ((W, 0.6), (M, 0.3), (K, 0.1)), ("BAGS",), BAG_SIZES[:3]),
    Item("BACKPACKS", "Backpack", "backpack", 1990,
         (Finish("Nylon", "nylon", 0.7, 1.4), CHECK, MONOGRAM),
         ((M, 0.5), (W, 0.3), (K, 0.2)), ("BAGS",)),
    Item("WALLETS & CARD CASES", "Wallet", "wallet", 390, (LEATHER, CHECK, MONOGRAM),
         ((M, 0.5), (W, 0.5)), ("SMALL LEATHER GOODS", "ACCESSORIES"),
         (Variant("", 1.0, 0.5, "card_case", "Card Case"),
          Variant("", 1.8, 0.72, "wallet", "Continental Wallet")),
         template="{colour} {finish} {noun}"),
    Item("SNEAKERS", "Sneakers", "sneakers", 790, (LEATHER, CHECK),
         ((W, 0.4), (M, 0.4), (K, 0.2)), ("SHOES",)),
    Item("BOOTS", "Boots", "boots", 1390, (LEATHER, CHECK),
         ((W, 0.5), (M, 0.35), (K, 0.15)), ("SHOES",)),
    Item("SUNGLASSES", "Sunglasses", "sunglasses_square", 390, (Finish("", "plain", 1.0),),
         ((W, 0.55), (M, 0.45)), ("EYEWEAR", "ACCESSORIES"),
         (Variant("Cat-eye Frame", 1.05, shape="sunglasses_cateye"),
          Variant("Square Frame", 0.95, shape="sunglasses_square"),
          Variant("Round Frame", 1.0, shape="sunglasses_round")),
         template="{colour} {variant} {noun}"),
    Item("BELTS", "Belt", "belt", 550, (LEATHER, CHECK),
         ((M, 0.6), (W, 0.4)), ("BELTS", "ACCESSORIES")),
    Item("CAPS", "Baseball Cap", "cap", 450,
         (Finish("Cotton", "plain", 1.0), CHECK, MONOGRAM),
         ((M, 0.5), (W, 0.3), (K, 0.2)), ("HATS & GLOVES", "ACCESSORIES")),
    Item("SCARVES", "Scarf", "scarf", 690,
         (Finish("Cashmere", "knit", 1.0, flags=("fringe",)),
          Finish("Check Cashmere", "check", 1.15, 1.5, ("fringe",)),
          Finish("Silk", "silk", 0.7)),
         ((W, 0.45), (M, 0.45), (K, 0.1)), ("SCARVES", "CASHMERE SCARVES", "ACCESSORIES")),
    Item("TRENCH COATS", "Trench Coat", "trench_long", 2590,
         (Finish("Gabardine", "plain", 1.0, 1.5), Finish("Check", "check", 1.15)),
         ((W, 0.5), (M, 0.35), (K, 0.15)), ("TRENCH COATS", "OUTERWEAR"),
         (Variant("Long", 1.1, shape="trench_long"), Variant("Short", 0.85, shape="trench_short"))),
    Item("PUFFER JACKETS", "Puffer Jacket", "puffer", 1890,
         (Finish("Nylon", "nylon", 1.0, 1.5), Finish("Check", "check", 1.15)),
         ((W, 0.4), (M, 0.4), (K, 0.2)), ("JACKETS", "OUTERWEAR")),
    Item("T-SHIRTS", "T-shirt", "tshirt", 450,
         (Finish("Cotton", "plain", 1.0, 1.5), Finish("Check Cotton", "check", 1.25),
          Finish("Monogram Cotton", "monogram", 1.15)),
         ((M, 0.45), (W, 0.35), (K, 0.2)), ("T-SHIRTS & POLOS", "CLOTHING")),
    Item("SHIRTS", "Shirt", "shirt", 890,
         (Finish("Cotton", "plain", 1.0), Finish("Check Cotton", "check", 1.1, 1.5),
          Finish("Striped Cotton", "stripe", 1.05)),
         ((M, 0.55), (W, 0.35), (K, 0.1)), ("SHIRTS", "CLOTHING")),
    Item("KNITWEAR", "Sweater", "sweater", 1290,
         (Finish("Cashmere", "knit", 1.0, 1.5), Finish("Check Cashmere", "check", 1.1),
          Finish("Argyle Wool", "argyle", 0.8)),
         ((W, 0.45), (M, 0.45), (K, 0.1)), ("KNITWEAR", "CLOTHING")),
    Item("DRESSES", "Dress", "dress", 1990,
         (Finish("Silk", "silk", 1.0), Finish("Check Cotton", "check", 0.8)),
         ((W, 0.85), (K, 0.15)), ("DRESSES", "CLOTHING")),
    Item("SKIRTS", "Pleated Skirt", "skirt", 1090,
         (Finish("Wool", "plain", 1.0), Finish("Check Wool", "check", 1.1, 1.5)),
         ((W, 0.85), (K, 0.15)), ("SKIRTS", "CLOTHING")),
    Item("FRAGRANCES", "Eau de Parfum", "fragrance", 165, (Finish("", "glass", 1.0),),
         ((W, 0.7), (M, 0.3)), ("FRAGRANCE", "BEAUTY"),
         (Variant("30ml", 0.55, 0.42), Variant("50ml", 0.78, 0.58), Variant("100ml", 1.0, 0.76)),
         colours=("Pink", "Beige", "Black", "Navy"),
         colour_words=(("Pink", "Her"), ("Beige", "Goddess"), ("Black", "Hero"),
                       ("Navy", "Brit")),
         template="{colour} {noun} {variant}"),
    Item("LIPSTICKS", "Lipstick", "lipstick", 38,
         (Finish("Kisses Matte", "plain", 1.0),  # black case; the sheer one comes in gold
          Finish("Kisses Sheer", "silk", 1.05, flags=("gold_case",))),
         ((W, 1.0),), ("MAKE-UP", "BEAUTY"), colours=("Red", "Pink", "Beige"),
         template="{colour} {finish} {noun}"),
)

#: Every category2 value the generator can write (26, like the real catalog).
CATEGORY2_VALUES: tuple[str, ...] = tuple(dict.fromkeys(
    [c for it in ITEMS for c in it.category2] + [*MERCH_CATEGORY2, KIDS_CATEGORY2]
))

MIN_PRICE, MAX_PRICE = 32.0, 70_000.0


def price_point(x: float) -> float:
    """Round like a luxury price list: 38, 590, 650, 1,290, 2,290, 57,500; within 32..70,000.

    >>> [price_point(v) for v in (37.6, 611.0, 1333.0, 57_300.0, 99_000.0)]
    [38.0, 590.0, 1290.0, 57500.0, 70000.0]
    """
    if not math.isfinite(x):
        raise ValueError(f"price {x!r} is not a finite number")
    if x < 100:
        p = round(x)
    elif x < 1000:
        p = round(x / 50) * 50
        p = p - 10 if p % 100 == 0 else p
    elif x < 10_000:
        p = round(x / 100) * 100 - 10
    else:
        p = round(x / 500) * 500
    return float(min(MAX_PRICE, max(MIN_PRICE, p)))
