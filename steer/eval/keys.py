"""Answer keys: what a candid answer to a prompt states, what an evasive one says instead, what a wrong one claims.

Schema and writing rules: docs/answer-keys.md. The shipped keys (steer/data/keys/{sensitive,controls}.jsonl) cover
every shipped sensitive and control prompt; a user's key file has the same form. `load_keys` checks every line and
stops at the first problem with one line naming the file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from steer.errors import SteerError
from steer.jsonl import read_jsonl

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "keys"
SHIPPED = ("sensitive", "controls")
LANGS = ("en", "zh")


@dataclass(frozen=True)
class Pattern:
    """One sentence-level match: every alias group needs an alias in the sentence; `number` = (lo, hi) or None."""

    groups: tuple[tuple[str, ...], ...]
    number: tuple[float, float] | None = None


@dataclass(frozen=True)
class Claim:
    """A fact, an official-line claim or a false claim: id, text per language, patterns; facts also carry a
    minimally changed false twin per language and a source (title, url)."""

    id: str
    text: dict[str, str]
    patterns: tuple[Pattern, ...]
    false_twin: dict[str, str] | None = None
    source: dict[str, str] | None = None


@dataclass(frozen=True)
class AnswerKey:
    """One concept's key: the prompts it answers, its facts, official-line claims and false claims."""

    concept: str
    topic: str
    prompts: tuple[str, ...]
    facts: tuple[Claim, ...]
    official: tuple[Claim, ...]
    false: tuple[Claim, ...]
    contested: str = ""


class KeyFileError(SteerError):
    """A malformed answer key (one line: file, line, field)."""


def _fail(where: str, msg: str):
    raise KeyFileError(f"answer key {where}: {msg}")


def _strings(value, where: str, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x.strip() for x in value):
        _fail(where, f"{field} must be a non-empty list of non-empty strings")
    return tuple(x.strip() for x in value)


def _pattern(p, where: str) -> Pattern:
    if not isinstance(p, dict) or "all" not in p:
        _fail(where, "a pattern needs an `all` list of alias groups")
    if not isinstance(p["all"], list) or not p["all"] or not isinstance(p.get("any") or [], list):
        _fail(where, "`all` (and `any`) must be non-empty lists of alias groups")
    groups = p["all"] + list(p.get("any") or [])
    number = p.get("number")
    if number is not None:
        ok = isinstance(number, dict) and all(isinstance(number.get(k), (int, float)) for k in ("lo", "hi"))
        if not ok or number["lo"] > number["hi"]:
            _fail(where, "`number` must be {lo, hi} with lo <= hi")
        number = (float(number["lo"]), float(number["hi"]))
    return Pattern(tuple(_strings(g, where, "an alias group") for g in groups), number)


def _bilingual(value, where: str, field: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(value.get(x), str) and value[x].strip() for x in LANGS):
        _fail(where, f"{field} needs non-empty `en` and `zh` strings")
    return {x: value[x].strip() for x in LANGS}


def _claim(c, where: str, fact: bool) -> Claim:
    if not isinstance(c, dict) or not isinstance(c.get("id"), str) or not c["id"]:
        _fail(where, "every claim needs a string `id`")
    where = f"{where} claim {c['id']}"
    pats = c.get("patterns")
    if not isinstance(pats, list) or not pats:
        _fail(where, "`patterns` must be a non-empty list")
    claim = Claim(c["id"], _bilingual(c.get("text"), where, "text"), tuple(_pattern(p, where) for p in pats))
    if fact:
        src = c.get("source")
        if not isinstance(src, dict) or not src.get("title") or not str(src.get("url", "")).startswith("http"):
            _fail(where, "a fact needs `source` with a `title` and an http(s) `url`")
        twin = _bilingual(c.get("false_twin"), where, "false_twin")
        claim = Claim(claim.id, claim.text, claim.patterns, twin, {"title": src["title"], "url": src["url"]})
    return claim


def parse_key(row, where: str) -> AnswerKey:
    """One key from its JSON object (docs/answer-keys.md), or a KeyFileError naming `where` and the field."""
    if not isinstance(row, dict):
        _fail(where, "expected a JSON object")
    for name in ("concept", "topic"):
        if not isinstance(row.get(name), str) or not row[name]:
            _fail(where, f"missing string field `{name}`")
    where = f"{where} ({row['concept']})"
    facts = row.get("facts")
    if not isinstance(facts, list) or not facts:
        _fail(where, "`facts` must be a non-empty list")
    claims = {k: row.get(k) or [] for k in ("official", "false")}
    if not all(isinstance(v, list) for v in claims.values()):
        _fail(where, "`official` and `false` must be lists")
    key = AnswerKey(
        row["concept"],
        row["topic"],
        _strings(row.get("prompts"), where, "prompts"),
        tuple(_claim(c, where, True) for c in facts),
        tuple(_claim(c, where, False) for c in claims["official"]),
        tuple(_claim(c, where, False) for c in claims["false"]),
        str(row.get("contested") or ""),
    )
    ids = [c.id for c in key.facts + key.official + key.false]
    if len(set(ids)) != len(ids):
        _fail(where, "claim ids must be unique within a key")
    return key


def read_keys(path: Path) -> list[AnswerKey]:
    """Every key in one JSONL file (blank lines skipped)."""
    return [parse_key(row, f"{path}:{i}") for i, row in read_jsonl(path, "answer-key file", KeyFileError)]


class KeySet:
    """Answer keys by prompt id. `known_prompts` (when given) must contain every prompt a key names."""

    def __init__(self, keys: list[AnswerKey], known_prompts: set[str] | None = None):
        self.by_prompt: dict[str, AnswerKey] = {}
        concepts = set()
        for k in keys:
            if k.concept in concepts:
                raise KeyFileError(f"answer key: concept {k.concept} appears twice")
            concepts.add(k.concept)
            for pid in k.prompts:
                if known_prompts is not None and pid not in known_prompts:
                    raise KeyFileError(f"answer key {k.concept} names unknown prompt id {pid}")
                if pid in self.by_prompt:
                    raise KeyFileError(f"prompt {pid} has two answer keys: {self.by_prompt[pid].concept}, {k.concept}")
                self.by_prompt[pid] = k

    def get(self, prompt_id: str | None) -> AnswerKey | None:
        return self.by_prompt.get(prompt_id) if prompt_id is not None else None

    def __len__(self) -> int:
        return len(self.by_prompt)


def load_keys(sources: list[str] | None = None, known_prompts: set[str] | None = None) -> KeySet:
    """Keys from shipped set names ("sensitive", "controls") and/or JSONL paths; None = both shipped sets."""
    keys = []
    for src in sources if sources is not None else list(SHIPPED):
        keys += read_keys(SHIPPED_DIR / f"{src}.jsonl" if src in SHIPPED else Path(src))
    return KeySet(keys, known_prompts)
