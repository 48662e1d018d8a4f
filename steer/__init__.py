"""steer: remove refusal and censorship directions from language-model weights, and measure that nothing else broke.

The public API, one name per pipeline stage (docs/api.md):

    import steer
    loaded = steer.load()                                   # the embedded model, a folder, a .gguf or a hub id
    dirs = steer.directions(loaded, steer.Settings())       # locate + select: DirectionSet [layer, position, d]
    with steer.preview(loaded.model, dirs.vector()):        # the edit as hooks, weights untouched
        ...
    steer.orthogonalize(loaded.model, dirs.vector())        # the edit written into the weights

Names are imported on first use, so `import steer` (and the CLI) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {  # public name -> (module, attribute)
    "load": ("steer.model.load", "load_model"),
    "Loaded": ("steer.model.load", "Loaded"),
    "collect": ("steer.model.collect", "residual_means"),
    "Settings": ("steer.locate.settings", "Settings"),
    "directions": ("steer.locate.run", "directions"),
    "DirectionSet": ("steer.locate.directions", "DirectionSet"),
    "refusal_score": ("steer.locate.scores", "refusal_score"),
    "first_token_kl": ("steer.locate.scores", "first_token_kl"),
    "refusal_tokens": ("steer.locate.scores", "refusal_tokens"),
    "select": ("steer.locate.select", "select_direction"),
    "project": ("steer.edit.project", "project_out"),
    "orthogonalize": ("steer.edit.project", "orthogonalize"),
    "Edit": ("steer.edit.preview", "Edit"),
    "preview": ("steer.edit.preview", "preview"),
    "abliterate": ("steer.pipeline", "abliterate"),
    "TargetedSettings": ("steer.targeted.settings", "TargetedSettings"),
    "targeted_abliterate": ("steer.targeted.run", "targeted_abliterate"),
    "edit_checkpoint": ("steer.checkpoint.stream", "edit_checkpoint"),
    "verify": ("steer.checkpoint.verify", "verify"),
    "EvalConfig": ("steer.eval.suites", "EvalConfig"),
    "evaluate": ("steer.eval.compare", "evaluate_model"),
    "compare": ("steer.eval.compare", "compare_models"),
    "load_keys": ("steer.eval.keys", "load_keys"),
    "verdict": ("steer.eval.candour", "verdict"),
    "answer_logprobs": ("steer.eval.knowledge", "answer_logprobs"),
    "choice_logprobs": ("steer.eval.knowledge", "choice_logprobs"),
    "SFTSettings": ("steer.sft.settings", "SFTSettings"),
    "train_sft": ("steer.sft.run", "train_sft"),
    "SteerError": ("steer.errors", "SteerError"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'steer' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
