import pytest

from steer.eval.answers import boxed, equivalent, last_number


@pytest.mark.parametrize(
    "text,expected",
    [
        ("So she pays 3 * 4 = 12 dollars. The answer is 1,234.", "1234"),
        ("#### 72", "72"),
        ("It costs $18.50.", "18.50"),
        ("The temperature drops to -7 degrees.", "-7"),
        ("no digits here", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"first \boxed{3} then \boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}"),
        (r"\fbox{42}", "42"),
        (r"\boxed{unclosed", None),
        ("nothing", None),
    ],
)
def test_boxed(text, expected):
    assert boxed(text) == expected


@pytest.mark.parametrize(
    "pred,gold",
    [
        (r"\dfrac{1}{2}", r"\frac12"),
        ("0.5", r"\frac{1}{2}"),
        (r"\frac{-3}{4}", r"-\frac{3}{4}"),
        (r"2\sqrt{3}", r"\sqrt{12}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"[-2, 5)", r"[-2,5)"),
        (r"10\text{ cm}", "10"),
        (r"90^\circ", "90"),
        ("1,000", "1000"),
        ("x = 7", "7"),
        (r"\$5.00", "5"),
        ("3, -2", "-2, 3"),
    ],
)
def test_equivalent(pred, gold):
    assert equivalent(pred, gold)


@pytest.mark.parametrize(
    "pred,gold",
    [
        ("[-2, 5]", "[-2, 5)"),  # closed vs half-open interval
        (r"\frac{1}{3}", "0.33"),
        (r"\sqrt{2}", "2"),
        ("(1, 2)", "(2, 1)"),  # ordered pair
        (None, "3"),
        ("", "3"),
    ],
)
def test_not_equivalent(pred, gold):
    assert not equivalent(pred, gold)
