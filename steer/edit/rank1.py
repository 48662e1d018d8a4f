"""Rank-1 updates along an edit direction: W' = W + r a^T for each residual writer (a learned readout).

A readout maps "<layer>.<component>" (e.g. "12.attn") to a vector a [d_in]: that writer then also
writes r (a^T x) for its input x. `readout_hooks` applies it to the outputs, `bake` to the
weights (the same update, up to float rounding). steer.targeted.readout learns the vectors.
"""

from __future__ import annotations

import torch

from steer.errors import SteerError
from steer.model.adapters import resolve

Readout = dict[str, torch.Tensor]  # "<layer>.<component>" -> a [d_in] (float32)


@torch.no_grad()
def add_rank1(w: torch.Tensor, r: torch.Tensor, a: torch.Tensor) -> None:
    """w [d_model, d_in] <- w + r a^T, in place, float32 maths rounded once to w's dtype (r: [d_model],
    a: [d_in]); in memory and in the streaming editor alike, after the projection."""
    w.copy_((w.float() + torch.outer(r.float(), a.float())).to(w.dtype))


def writers(model, components: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """The plain linear writers of these components, by "<layer>.<component>". Writers whose output
    goes through a norm before the residual add (Gemma), or fused experts, are refused: there the
    update would not stay along r."""
    res = resolve(model)
    out = {}
    for i, layer in enumerate(res.writers):
        for b in layer:
            if b.writer.component not in components:
                continue
            if b.norm is not None or b.writer.fused or not isinstance(b.module, torch.nn.Linear):
                raise SteerError(
                    f"a learned readout needs plain linear writers added straight to the residual stream; "
                    f"{type(model).__name__} layer {i} {b.writer.module} is not"
                )
            out[f"{i}.{b.writer.component}"] = b.module
    return out


def zeros(model, components: tuple[str, ...] = ("attn", "mlp")) -> Readout:
    """The readout that changes nothing (a = 0 for every writer of these components)."""
    return {k: torch.zeros(m.in_features) for k, m in writers(model, components).items()}


def scaled(readout: Readout, t: float) -> Readout:
    """t a for every writer."""
    return {k: a * t for k, a in readout.items()}


def readout_hooks(model, r: torch.Tensor, readout: Readout) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks adding r (a^T x) to each writer's output (x: its input [..., d_in]; r: [d_model]).
    The caller removes the handles (steer.edit.preview does)."""
    mods = writers(model, tuple({k.split(".")[1] for k in readout}))
    handles = []
    for key, a in readout.items():

        def hook(module, args, output, a=a):
            coef = args[0] @ a.to(args[0].dtype)  # [...]: what this writer now writes along r
            return output + coef.unsqueeze(-1) * r.to(output.dtype)

        handles.append(mods[key].register_forward_hook(hook))
    return handles


@torch.no_grad()
def bake(model, r: torch.Tensor, readout: Readout) -> int:
    """W <- W + r a^T for every writer in readout, in place; returns how many. A readout that does
    not fit the model (a writer it lacks, a vector of the wrong size) is refused before any write."""
    mods = writers(model, tuple({k.split(".")[1] for k in readout if "." in k}))
    for key, a in readout.items():
        if key not in mods or a.shape != (mods[key].in_features,):
            have = f"input size {mods[key].in_features}" if key in mods else "no such writer"
            raise SteerError(
                f"the readout vector for {key} (shape {list(a.shape)}) does not fit {type(model).__name__}: {have}"
            )
    for key, a in readout.items():
        add_rank1(mods[key].weight, r, a)
    return len(readout)
