"""Evaluation (`steer eval`, `steer compare`, the before/after of `steer abliterate`). engine (batched
greedy generation with a per-item cache), suites (the named suites: judged refusal and censorship, XSTest,
KL), judge (complete / evasive / denial labels), capability (MMLU, GSM8K, MATH-500, AIME), mmlu (MMLU by
answer-letter log-probability), benchmarks (benchmark data read from a folder), answers (maths answer
extraction and equivalence), stats (confidence intervals and paired tests), compare (suites on one model or
a base and an edited one, written as JSON, JSONL, Markdown and plots), before_after (the before/after
evaluation of `steer abliterate`)."""
