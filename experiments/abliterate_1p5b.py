"""Produce results/abliterate-1p5b/: the default `steer abliterate` on the embedded Qwen2.5-Coder-1.5B-Instruct.

    python experiments/abliterate_1p5b.py                      # the test split, as the README's main command
    python experiments/abliterate_1p5b.py --eval-split val     # while choosing settings

The same script as abliterate_embedded.py (the CLI as a user runs it, into runs/; report, directions, plot, manifest
and run.json copied to results/), with MODEL = embedded-1.5b. report.json holds the time and peak RSS per stage.
"""

from abliterate_embedded import main

if __name__ == "__main__":
    main("abliterate-1p5b", ["embedded-1.5b"])
