"""Answer extraction and equivalence for maths benchmarks (GSM8K, MATH-500, AIME).

- `last_number`: the final number in a chain-of-thought answer (GSM8K, AIME).
- `boxed`: the content of the last \\boxed{...} (nested braces handled).
- `equivalent`: are two final answers the same? Normalizes LaTeX spacing, \\left/\\right,
  \\dfrac/\\tfrac, units and degree signs, thousands separators, "x =" prefixes; compares
  tuples and intervals element-wise; falls back to sympy for fractions and radicals.
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_UNITS = (
    r"(?:units?|cm|m|km|inches|inch|feet|foot|ft|degrees?|dollars?|cents?|hours?|minutes?|seconds?|days?|"
    r"meters?|miles?|sq|square)"
)


def last_number(text: str) -> str | None:
    """The last number in text, without thousands separators ("1,234.50" -> "1234.50")."""
    found = _NUMBER.findall(text.replace("$", ""))
    return found[-1].replace(",", "").rstrip(".") if found else None


def boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, with nested braces."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None


def normalize(ans: str) -> str:
    """A final answer as canonical text: \\text/\\mathrm wrappers, \\left/\\right, thin spaces, dollar, percent and
    degree signs, an "x =" prefix, trailing units, spaces and thousands separators removed; \\dfrac/\\tfrac
    -> \\frac, \\frac12 -> \\frac{1}{2}, \\sqrt2 -> \\sqrt{2}."""
    s = ans.strip()
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:mathrm|textbf|mbox)\{([^}]*)\}", r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "").replace("\\ ", "")
    s = (
        s.replace("\\dfrac", "\\frac")
        .replace("\\tfrac", "\\frac")
        .replace("^\\circ", "")
        .replace("^{\\circ}", "")
        .replace("°", "")
    )
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5" -> "5"
    s = re.sub(rf"\s*{_UNITS}(?:\^?\{{?\d\}}?)?\s*$", "", s)
    s = s.replace(" ", "").rstrip(".")
    s = re.sub(r"(\d),(\d{3})(?!\d)", r"\1\2", s)  # thousands separators
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac12
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    return s


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _value(s: str):
    """A number or sympy expression for s, or None."""
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        pass
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if m and int(m.group(3)) != 0:
        return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
    try:
        from sympy.parsing.sympy_parser import implicit_multiplication_application, parse_expr, standard_transformations

        expr = s.replace("\\sqrt", "sqrt").replace("\\pi", "pi").replace("^", "**").replace("{", "(").replace("}", ")")
        expr = re.sub(r"\\frac\(([^()]*)\)\(([^()]*)\)", r"((\1)/(\2))", expr)
        if "\\" in expr or not re.fullmatch(r"[\w\s+\-*/().]*", expr):
            return None
        return parse_expr(expr, transformations=standard_transformations + (implicit_multiplication_application,))
    except Exception:
        return None


def _same_value(a: str, b: str) -> bool:
    if a == b:
        return True
    va, vb = _value(a), _value(b)
    if va is None or vb is None:
        return False
    if isinstance(va, Fraction) and isinstance(vb, Fraction):
        return va == vb
    try:
        import sympy

        return bool(sympy.simplify(sympy.nsimplify(va) - sympy.nsimplify(vb)) == 0)
    except Exception:
        return False


def equivalent(pred: str | None, gold: str) -> bool:
    """True if the predicted final answer equals the gold one (see module docstring)."""
    if pred is None:
        return False
    p, g = normalize(pred), normalize(gold)
    if p == g:
        return True
    # intervals and tuples: same brackets, same elements
    if len(p) > 1 and len(g) > 1 and p[0] in "([" and g[0] in "([" and p[-1] in ")]" and g[-1] in ")]":
        if (p[0], p[-1]) != (g[0], g[-1]):
            return False
        pa, ga = _split_top(p[1:-1]), _split_top(g[1:-1])
        return len(pa) == len(ga) and all(_same_value(x, y) for x, y in zip(pa, ga))
    if "," in g and "," in p:  # unordered lists of solutions "2, -3"
        pa, ga = sorted(_split_top(p)), sorted(_split_top(g))
        return len(pa) == len(ga) and all(any(_same_value(x, y) for y in ga) for x in pa)
    return _same_value(p, g)
