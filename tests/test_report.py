"""Report tables: what a reader sees for each metric."""

from steer.report.tables import before_after_table, write_report


def _m(value, n):
    return {"value": value, "ci": [value, value], "n": n}


def test_before_after_table_shows_both_counts_when_they_differ():
    before = {"censorship": {"metrics": {"censorship/zh": _m(0.191, 47), "censorship_without_loops/zh": _m(0.136, 44)}}}
    after = {
        "censorship": {"metrics": {"censorship/zh": _m(0.085, 47), "censorship_without_loops/zh": _m(0.023, 47)}},
        "kl": {"metrics": {"kl/first_token": _m(0.05, 80)}},
    }
    rows = before_after_table(before, after).splitlines()
    assert rows[2] == "| censorship | censorship/zh | 47 | 19.1% | 8.5% |"
    assert rows[3] == "| censorship | censorship_without_loops/zh | 44 / 47 | 13.6% | 2.3% |"
    assert rows[4].startswith("| kl | kl/first_token | 80 | 0 | 0.0500 [")


def test_report_names_the_split_its_table_read(tmp_path):
    before = {"censorship": {"metrics": {"censorship/en": _m(0.5, 4)}, "items": []}}
    after = {"censorship": {"metrics": {"censorship/en": _m(0.0, 4)}, "items": []}}
    for split in ("val", "test"):
        report = {"model": "m", "before": before, "after": after, "settings": {"max_new_tokens": 8, "seed": 0}}
        report["settings"]["eval_split"] = split
        md = write_report(tmp_path, report)
        assert f"Prompts of the {split} split." in md and f"## Examples ({split} split)" in md
        assert split == "test" or "test split" not in md


def test_optimize_summary_names_each_own_direction_with_its_first_and_last_step():
    from steer.report.tables import optimize_summary

    step = lambda t, k: {"target_score": t, "keep_score": k, "keep_base": 0.5, "kl": 0.01}  # noqa: E731
    meta = {"history": [step(0.5, 0.9), step(-2.0, 0.4)], "init": {"contrast": "censorship/projected", "layer": 3}}
    assert optimize_summary(None) == "" and "Own direction" not in optimize_summary(meta)
    line = optimize_summary(meta)
    assert line.startswith("Optimized direction from censorship/projected at layer 3: 2 steps;")
    assert "0.50 -> -2.00" in line
    meta["own"] = {"critique": {"prompts": 55, "layer": 3, "history": [step(0.2, 1.0), step(-3.7, 0.7)]}}
    own = optimize_summary(meta)
    assert own.startswith(line) and "Own direction for critique (55 train prompts" in own
    assert "refusal score on critique prompts 0.20 -> -3.70" in own
