"""puyu.sandbox.units: conversions with English and Chinese unit names, on the host and inside the sandbox."""

import pytest

from puyu.sandbox import PythonSandbox
from puyu.sandbox.units import convert


@pytest.mark.parametrize("value, source, target, expected", [
    (30.25, "磅", "千克", 30.25 * 0.45359237),
    (51, "英里", "千米", 51 * 1.609344),
    (3, "miles", "kilometers", 3 * 1.609344),
    (2.5, "hours", "minutes", 150),
    (12, "inches", "厘米", 30.48),
    (100, "℃", "华氏度", 212),  # an offset unit; ℃ is normalised to °C
    (2, "斤", "克", 1000),  # market units pint lacks
    (3, "亩", "平方米", 2000),
    (1, "平方公里", "公顷", 100),
    (36, "公里每小时", "米每秒", 10),
    (1, "ｋｍ", "m", 1000),  # full-width letters
    (10, "kg", "lbs", 10 / 0.45359237),
])
def test_converts_english_chinese_and_compound_units(value, source, target, expected):
    assert convert(value, source, target) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("args, message", [
    ((1, "磅", "千米"), r"cannot convert '磅' \(\[mass\]\) to '千米' \(\[length\]\)"),
    ((1, "furlongz", "m"), "unknown unit 'furlongz'"),
    ((1, "", "m"), "a unit must be a name"),
    (("3", "m", "km"), "needs a number"),
])
def test_bad_units_and_values_say_what_was_wrong(args, message):
    with pytest.raises(ValueError, match=message):
        convert(*args)


def test_the_helper_imports_and_converts_inside_the_sandbox():
    with PythonSandbox() as sandbox:
        result = sandbox.run("from puyu.sandbox.units import convert\nprint(round(convert(30.25, '磅', '千克'), 4))")
        assert result.ok, result
        assert result.stdout.strip() == "13.7212"
        failed = sandbox.run("convert(1, '磅', '米')")
        assert failed.error.startswith("ValueError: cannot convert")
