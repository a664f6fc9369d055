"""Unit conversion for code the agent runs: ``convert(value, from_unit, to_unit) -> float``.

Units are named in English (``'miles'``, ``'kilograms'``, ``'km/h'``, ``'degC'``: anything pint parses) or in
Chinese (``'英里'``, ``'千克'``, ``'公里每小时'``, ``'平方米'``, ``'摄氏度'``, the market units ``'斤'``, ``'亩'``), so
code can copy the units from the question: ``convert(30.25, '磅', '千克')`` is 13.72116919.  A wrong name or a
conversion between different kinds of quantity raises ``ValueError`` saying which.

Why a helper: the built-in 135M model recalls conversion factors badly (tuned to write ``30.25 * factor`` it
converted 磅 to 千克 and 英里 to 千米 with 1000, misled by the 千) but copies text well.  The units themselves come
from pint (its registry with plurals, SI prefixes and temperature offsets); this module adds the Chinese names.
It imports nothing from puyu, so ``from puyu.sandbox.units import convert`` is cheap inside the sandbox.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

# Chinese unit names -> pint names (compounds with 每 "per" and the prefixes 平方/立方 are built from these).
CHINESE = {
    "米": "meter", "千米": "kilometer", "公里": "kilometer", "厘米": "centimeter", "毫米": "millimeter", "微米": "micrometer",
    "纳米": "nanometer", "分米": "decimeter", "英里": "mile", "英尺": "foot", "英寸": "inch", "码": "yard", "海里": "nautical_mile",
    "光年": "light_year", "千克": "kilogram", "公斤": "kilogram", "克": "gram", "毫克": "milligram", "吨": "metric_ton",
    "公吨": "metric_ton", "磅": "pound", "盎司": "ounce", "斤": "jin", "两": "liang", "升": "liter", "公升": "liter",
    "毫升": "milliliter", "立方厘米": "cubic_centimeter", "加仑": "gallon", "品脱": "pint", "秒": "second", "毫秒": "millisecond",
    "分钟": "minute", "小时": "hour", "天": "day", "日": "day", "周": "week", "星期": "week", "年": "year", "公顷": "hectare",
    "亩": "mu", "英亩": "acre", "里": "shi_li", "尺": "chi", "寸": "cun", "摄氏度": "degC", "华氏度": "degF", "开尔文": "kelvin",
    "焦耳": "joule", "千焦": "kilojoule", "卡路里": "calorie", "卡": "calorie", "千卡": "kilocalorie", "大卡": "kilocalorie",
    "瓦": "watt", "瓦特": "watt", "千瓦": "kilowatt", "千瓦时": "kilowatt_hour", "马力": "horsepower", "帕": "pascal",
    "帕斯卡": "pascal", "千帕": "kilopascal", "标准大气压": "atmosphere", "大气压": "atmosphere", "牛": "newton", "牛顿": "newton",
    "节": "knot", "字节": "byte", "比特": "bit", "千字节": "kilobyte", "兆字节": "megabyte", "吉字节": "gigabyte",
}
# Market units (市制) pint lacks, in SI.
DEFINITIONS = ["jin = 0.5 * kilogram", "liang = 50 * gram", "shi_li = 500 * meter", "chi = meter / 3", "cun = chi / 10",
               "mu = 10000 / 15 * meter ** 2"]
POWERS = {"平方": 2, "立方": 3}


@lru_cache(maxsize=1)
def _registry():
    import pint

    registry = pint.UnitRegistry(cache_folder=None)  # no cache files: the sandbox may not write outside its folder
    for definition in DEFINITIONS:
        registry.define(definition)
    return registry


def _pint_name(unit: str) -> str:
    """The pint expression for ``unit`` (Chinese names translated, full-width forms and ℃ normalised)."""
    text = unicodedata.normalize("NFKC", unit).strip()  # ℃ -> °C, ｋｍ -> km
    if text in CHINESE:
        return CHINESE[text]
    if "每" in text.strip("每"):
        return " / ".join(f"({_pint_name(part)})" for part in text.split("每"))
    for prefix, power in POWERS.items():
        if text.startswith(prefix) and len(text) > len(prefix):
            return f"({_pint_name(text[len(prefix):])}) ** {power}"
    return text


def _unit(unit: str):
    import pint

    if not isinstance(unit, str) or not unit.strip():
        raise ValueError(f"a unit must be a name like 'mile', 'kg' or '千克', got {unit!r}")
    try:
        return _registry().parse_units(_pint_name(unit))
    except (pint.UndefinedUnitError, pint.DefinitionSyntaxError, AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"unknown unit {unit!r}: name it in English ('mile', 'kilogram', 'km/h') or Chinese "
                         f"('英里', '千克', '公里每小时')") from e


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit`` (see the module docstring for the names understood).

    Raises:
        ValueError: an unknown unit, or units of different kinds (a mass into a length).
    """
    import pint

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"convert needs a number to convert, got {value!r}")
    source, target = _unit(from_unit), _unit(to_unit)
    try:
        return float(_registry().Quantity(value, source).to(target).magnitude)
    except pint.DimensionalityError:
        raise ValueError(f"cannot convert {from_unit!r} ({source.dimensionality}) to {to_unit!r} ({target.dimensionality}): "
                         f"they measure different things") from None
