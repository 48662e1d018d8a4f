"""Verify a checkpoint steer wrote: rebuild it from its manifest and compare every tensor.

`verify(folder)` reads folder/steer_manifest.json, finds the input checkpoint (manifest
["input"]["model"]: a folder, a .gguf file, "embedded:<name>" or a hub id; `model` overrides it)
and the recorded edit (a directions file with manifest["direction"]'s layer and position, or the
contrasts file of a --keep-safety run: its subspace, strength profiles, norm preservation and
readout; steer.checkpoint.rebuild.recorded builds it as `steer edit` does), rebuilds the
checkpoint with the streaming editor into a temporary folder beside it
(removed afterwards), and compares the two tensor by tensor, reading both in bounded chunks.
It also checks the weights' and the input's sha256 against the manifest where recorded.

Tolerance. Rebuilding on another CPU, with another projection kernel (native, blocked, Triton),
or with the in-memory route instead of the streaming one (`steer abliterate`) sums in another
order, so a stored value can land on the neighbouring representable number: one rounding step,
one unit in the last place (ulp) of the storage dtype. That step is 2^-7 relative in bfloat16
(0.0078 at 1.0, 0.0156 at 2.0) and 2^-23 in float32 (1.2e-7 at 1.0), so no single absolute
number passes a bfloat16 rounding difference and still fails a real edit difference in a float32
checkpoint: an edit that differs (another direction, layer or strength) changes weight w_ij by
about r_i (r . w_j), which is many float32 steps but can be less than one bfloat16 step of a
large weight, while it is many bfloat16 steps of the small weights around it. The default rule
is therefore per element, in the storage dtype:

    |saved - rebuilt| <= 1 ulp(max(|saved|, |rebuilt|)) + 2^-20 * max|saved tensor|

(the ulp of the coarser dtype when the two differ, e.g. a float32 in-memory edit of a bfloat16
model). The second term covers float32 arithmetic noise where an edit cancels a weight to nearly
zero (there the value's own ulp is tiny, but the error stays relative to the operands; 2^-20 is
8 to 16 float32 steps at the tensor's largest magnitude). A real edit difference leaves many
elements several ulps off, and fails. Pass `atol` to use a plain absolute bound instead: max |saved - rebuilt| <= atol.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from steer.checkpoint.manifest import MANIFEST, machine, versions
from steer.checkpoint.rawio import numel, pread_into, read_header
from steer.checkpoint.rebuild import Recorded, recorded
from steer.checkpoint.save import _prefix, _remove, remove_stale
from steer.checkpoint.stream import edit_checkpoint
from steer.edit.kernels import kernel_name
from steer.edit.preview import Edit
from steer.errors import SteerError
from steer.model import load
from steer.model.load import checkpoint_hash, sha256_file, weight_files

NOISE = 2.0**-20  # float32 arithmetic noise, relative to a tensor's largest magnitude
_MANTISSA = {"F64": 53, "F32": 24, "BF16": 8, "F16": 11}  # significand bits (with the implicit one)
_FLOAT = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_STEP = 2 << 20  # elements compared at a time (float64 working copies of 16 MiB each)
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]  # what steer.model.load fetches


@dataclass
class VerifyResult:
    """What `verify` found. status: "bit-identical" (every tensor equal byte for byte),
    "within-tolerance" (no element outside the tolerance) or "differs" (`worst` names the
    tensor furthest outside)."""

    folder: Path
    status: str
    tensors: int  # tensors compared
    max_abs: dict[str, float]  # per tensor: max |saved - rebuilt| (0.0 where equal)
    max_ulps: dict[str, float]  # per tensor: the same in ulps of its storage dtype (inf for a non-float mismatch)
    outside: list[str]  # tensors with an element outside the tolerance
    worst: str | None  # the tensor outside the tolerance by most (else the one with the largest difference)
    atol: float | None  # None: the per-element ulp rule (module docstring)
    tolerance: str  # the rule, in words
    rebuilt_from: str  # the input checkpoint the rebuild read
    edit: str  # the edit the rebuild applied, and from which file
    output_sha256: str | None = None  # "match", "mismatch", or None when the manifest records none
    input_sha256: str | None = None  # the same for the input checkpoint
    notes: list[str] = field(default_factory=list)  # recorded vs current kernel, CPU, library versions

    @property
    def ok(self) -> bool:
        return self.status != "differs"

    def summary(self) -> str:
        """One paragraph for `steer verify`."""
        changed = sorted((n for n, d in self.max_abs.items() if d != 0), key=lambda n: -self.max_abs[n])
        what = (
            f"{self.folder}: {self.status}. The checkpoint was rebuilt from {self.rebuilt_from} with {self.edit}, "
            f"and its {self.tensors} tensors compared with the saved ones"
        )
        if self.status == "bit-identical":
            text = f"{what}: all equal, bit for bit."
        elif not changed:
            text = f"{what}: equal values, stored in another dtype ({self.tolerance})."
        else:
            worst = self.worst or changed[0]
            text = (
                f"{what}: {len(changed)} {'differs' if len(changed) == 1 else 'differ'}, "
                f"{len(self.outside) or 'none'} outside the tolerance ({self.tolerance}); "
                f"{'worst' if self.outside else 'largest'} {worst}: max abs difference {self.max_abs[worst]:.3g} "
                f"({_ulps(self.max_ulps[worst])})."
            )
        sha = {
            "match": "match the manifest's sha256",
            "mismatch": "do NOT match the manifest's sha256 (changed since steer wrote them)",
            None: "have no sha256 in the manifest",
        }[self.output_sha256]
        text += f" The saved weights {sha}"
        if self.input_sha256 is not None:
            text += f"; the input {'matches' if self.input_sha256 == 'match' else 'does NOT match'} its recorded sha256"
        text += "."
        if self.notes:
            text += " Note: " + "; ".join(self.notes) + "."
        return text


def _ulps(u: float) -> str:
    return "not a float difference" if u == float("inf") else f"{u:.3g} ulp"


def verify(
    folder: Path, *, atol: float | None = None, model: str | Path | None = None, directions: Path | None = None
) -> VerifyResult:
    """Rebuild `folder` from its steer_manifest.json and compare it with what is saved there.

    atol: None for the default per-element tolerance (one ulp of the storage dtype plus float32
    noise; see the module docstring), or a plain bound on max |saved - rebuilt|. model: the input
    checkpoint (folder, .gguf, "embedded" or a hub id) instead of the manifest's. directions: the
    directions or contrasts file instead of the one the manifest names (or the folder holds).
    Missing manifest, input or edit files, and checkpoints that do not match in tensor names or
    shapes, are a SteerError with one line.
    """
    folder = Path(folder)
    if atol is not None and not atol >= 0:
        raise SteerError(f"atol must be 0 or more, got {atol}")
    manifest = _read_manifest(folder)
    src, rebuilt_from = _input(manifest, model)
    basis, options, edit, recorded = _recorded_edit(folder, manifest, directions)
    notes = _notes(manifest, recorded)
    remove_stale(folder)  # a killed verify's rebuild is named like a killed write's temporary folder
    work = _workdir(folder)
    try:
        edit_checkpoint(src, work / "rebuilt", basis, **options)
        result = compare(folder, work / "rebuilt", atol)
    finally:
        _remove(work)
    result.rebuilt_from, result.edit, result.notes = rebuilt_from, edit, notes
    result.output_sha256 = _sha_check(manifest.get("output_sha256"), lambda: _hash(folder))
    result.input_sha256 = _sha_check((manifest.get("input") or {}).get("sha256"), lambda: _hash(src))
    return result


# ------------------------------------------------------------------------------ the manifest


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise SteerError(f"no such checkpoint folder: {folder}")
    if not path.is_file():
        raise SteerError(f"{folder} has no {MANIFEST}: only checkpoints steer wrote can be verified")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SteerError(f"corrupt {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SteerError(f"corrupt {path}: not a JSON object")
    return data


def _input(manifest: dict, model: str | Path | None) -> tuple[Path, str]:
    """The input checkpoint (a folder or .gguf file) and how it was named."""
    spec = str(model) if model is not None else (manifest.get("input") or {}).get("model")
    if not spec:
        raise SteerError("the manifest records no input model; pass the input checkpoint (model=)")
    if load.embedded_model(spec) is not None:
        return load.embedded_checkpoint(spec), spec
    path = Path(spec)
    if path.is_dir() or (path.suffix == ".gguf" and path.is_file()):
        return path, spec
    if path.suffix != ".gguf" and spec.count("/") == 1 and not spec.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec, allow_patterns=_HUB_PATTERNS)), spec
        except Exception as exc:
            raise SteerError(
                f"cannot fetch the input model {spec!r} from the Hugging Face hub: "
                f"{type(exc).__name__}; pass a local copy (model=)"
            ) from None
    how = "given" if model is not None else "recorded in the manifest"
    raise SteerError(f"input checkpoint {spec} ({how}) not found; pass its current location (model=)")


def recorded_edit_of(folder: Path) -> Edit:
    """The edit an output folder of steer abliterate / steer edit records (its manifest and edit file), in memory."""
    folder = Path(folder)
    basis, options, _, _ = _recorded_edit(folder, _read_manifest(folder), None)
    return Recorded(basis, options).edit()


def _recorded_edit(
    folder: Path, manifest: dict, directions: Path | None
) -> tuple[torch.Tensor, dict, str, dict | None]:
    """(basis, edit_checkpoint options, description, the EditParams dict a contrasts file records)
    for the recorded edit, built by steer.checkpoint.rebuild.recorded as `steer edit` builds it."""
    plain = manifest.get("direction")
    source = Path(directions) if directions is not None else _edit_file(folder, manifest, plain)
    if not source.exists():
        raise SteerError(f"the edit's file {source} is missing; pass it (directions=)")
    layer, position = (plain.get("layer"), plain.get("position")) if isinstance(plain, dict) else (None, None)
    rec = recorded(source, layer, position)
    if "direction" in rec.entries:
        d = rec.entries["direction"]
        return (
            rec.basis,
            rec.options,
            f"the direction of {source} at layer {d['layer']}, position {d['position']}",
            None,
        )
    readout = ", with its readout" if rec.options.get("readout") else ""
    what = f"the --keep-safety edit of {rec.entries['contrasts']} (rank {rec.basis.shape[0]}{readout})"
    return rec.basis, rec.options, what, rec.entries.get("edit")


def _edit_file(folder: Path, manifest: dict, plain) -> Path:
    """The directions or contrasts file: the output folder's own copy (steer abliterate), else the
    file `steer edit --directions` named (recorded as given, relative to where it ran)."""
    name = "directions.safetensors" if plain is not None else "contrasts.safetensors"
    if (folder / name).is_file():
        return folder / name
    recorded = (plain or {}).get("file") if plain is not None else manifest.get("contrasts")
    if not recorded:
        raise SteerError(
            f"{folder} has no {name} and the manifest names no "
            f"{'directions' if plain is not None else 'contrasts'} file; pass it (directions=)"
        )
    return Path(recorded)


def _notes(manifest: dict, recorded: dict | None) -> list[str]:
    """Where this rebuild runs differently from the original run (rounding may differ by an ulp)."""
    notes = []
    kernel = manifest.get("kernel") or (manifest.get("edit") or {}).get("kernel")
    if kernel and kernel != kernel_name("cpu"):
        notes.append(f"written with the {kernel} projection kernel, rebuilt with {kernel_name('cpu')}")
    cpu = (manifest.get("machine") or {}).get("cpu")
    if cpu and cpu != machine()["cpu"]:
        notes.append(f"written on {cpu}, rebuilt on {machine()['cpu']}")
    was, now = manifest.get("versions") or {}, versions()
    changed = [
        f"{k} {was[k]} -> {now[k]}"
        for k in ("torch", "transformers", "safetensors")
        if was.get(k) and now.get(k) and was[k] != now[k]
    ]
    if changed:
        notes.append("library versions changed: " + ", ".join(changed))
    edit = manifest.get("edit")
    recorded = json.loads(json.dumps(recorded, default=str)) if recorded is not None else None  # tuples -> lists
    if (
        recorded is not None
        and isinstance(edit, dict)
        and set(recorded) <= set(edit)
        and any(edit[k] != v for k, v in recorded.items())
    ):
        notes.append("the contrasts file records another edit than the manifest (rebuilt from the file)")
    return notes


def _workdir(folder: Path) -> Path:
    """A temporary folder for the rebuild: beside `folder` (its file system had room for the
    checkpoint), named like atomic_dir's so a killed verify's is removed later; else the system's."""
    parent = folder.resolve().parent
    try:
        return Path(tempfile.mkdtemp(prefix=_prefix(folder.resolve(), "tmp"), dir=parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="steer-verify-"))


def _hash(path: Path) -> str:
    return sha256_file(path) if path.is_file() else checkpoint_hash(path)


def _sha_check(recorded: str | None, actual) -> str | None:
    if not recorded:
        return None
    return "match" if actual() == recorded else "mismatch"


# ------------------------------------------------------------------------------- comparison


def _tensors(folder: Path) -> dict:
    found = {}
    for f in weight_files(folder):
        for t in read_header(f)[0]:
            found[t.name] = (f, t)
    return found


def compare(saved: Path, rebuilt: Path, atol: float | None = None) -> VerifyResult:
    """Compare the tensors of two checkpoint folders by name (shard layouts may differ): the
    result's status, per-tensor differences and worst tensor; rebuilt_from and edit are left
    empty. Different tensor names or shapes are a SteerError."""
    a, b = _tensors(saved), _tensors(rebuilt)
    if extra := sorted(set(a) - set(b)):
        raise SteerError(f"{saved} has tensor {extra[0]}, which the rebuilt checkpoint does not ({len(extra)} such)")
    if missing := sorted(set(b) - set(a)):
        raise SteerError(f"{saved} lacks tensor {missing[0]}, which the rebuilt checkpoint has ({len(missing)} such)")
    max_abs, max_ulps, outside, badness, identical = {}, {}, [], {}, True
    fds: dict[Path, int] = {}
    try:
        fd = lambda p: fds.setdefault(p, os.open(p, os.O_RDONLY))  # noqa: E731
        for name in sorted(a):
            (fa, ta), (fb, tb) = a[name], b[name]
            if ta.shape != tb.shape:
                raise SteerError(f"tensor {name} has shape {ta.shape} in {saved} but {tb.shape} rebuilt")
            same, d, u, excess, scale = _compare_tensor(fd(fa), ta, fd(fb), tb)
            max_abs[name], max_ulps[name], identical = d, u, identical and same
            limit = atol if atol is not None else NOISE * scale
            over = (d if atol is not None else excess) - limit
            if over > 0:
                outside.append(name)
                badness[name] = over / max(limit, 1e-300) if limit else float("inf")
    finally:
        for f in fds.values():
            os.close(f)
    status = "differs" if outside else "bit-identical" if identical else "within-tolerance"
    worst = max(outside, key=lambda n: (badness[n], max_abs[n])) if outside else None
    rule = (
        f"max abs difference <= {atol:g}"
        if atol is not None
        else "every element within 1 ulp of its storage dtype + 2^-20 of its tensor's largest magnitude"
    )
    return VerifyResult(Path(saved), status, len(a), max_abs, max_ulps, outside, worst, atol, rule, "", "")


def _compare_tensor(fa: int, ta, fb: int, tb) -> tuple[bool, float, float, float, float]:
    """(byte-identical, max abs difference, max difference in ulps, max excess over 1 ulp, max
    |saved|) of one tensor, read in chunks of both files. Byte-equal chunks cost a comparison
    only; a non-float tensor that differs counts as an infinite difference."""
    n = numel(ta.shape)
    float_pair = ta.dtype in _FLOAT and tb.dtype in _FLOAT
    if not float_pair and ta.dtype != tb.dtype:
        raise SteerError(f"tensor {ta.name} is {ta.dtype} saved but {tb.dtype} rebuilt")
    if n == 0:
        return ta.dtype == tb.dtype, 0.0, 0.0, 0.0, 0.0
    size_a, size_b = ta.nbytes // n, tb.nbytes // n
    step = _STEP
    p = min(_MANTISSA.get(ta.dtype, 53), _MANTISSA.get(tb.dtype, 53))  # the coarser dtype's step
    d_max = u_max = e_max = scale = 0.0
    identical = ta.dtype == tb.dtype
    buf_a = torch.empty(step * size_a, dtype=torch.uint8)
    buf_b = torch.empty(step * size_b, dtype=torch.uint8)
    for start in range(0, n, step):
        k = min(step, n - start)
        ra, rb = buf_a[: k * size_a], buf_b[: k * size_b]
        pread_into(fa, memoryview(ra.numpy()), ta.offset + start * size_a)
        pread_into(fb, memoryview(rb.numpy()), tb.offset + start * size_b)
        if not float_pair:
            if not torch.equal(ra, rb):
                return False, float("inf"), float("inf"), float("inf"), 0.0
            continue
        x = ra.view(_FLOAT[ta.dtype]).double()
        scale = max(scale, float(torch.nan_to_num(x.abs(), nan=0.0, posinf=0.0).max()))
        if identical and torch.equal(ra, rb):
            continue
        identical = False
        y = rb.view(_FLOAT[tb.dtype]).double()
        same = (x == y) | (x.isnan() & y.isnan())
        diff = torch.where(same, torch.zeros_like(x), (x - y).abs().nan_to_num(nan=float("inf")))
        _, exp = torch.frexp(torch.maximum(x.abs(), y.abs()).nan_to_num(nan=0.0, posinf=0.0))
        ulp = torch.ldexp(torch.ones_like(x), exp.to(torch.int64) - p)
        d_max = max(d_max, float(diff.max()))
        u_max = max(u_max, float((diff / ulp).max()))
        e_max = max(e_max, float((diff - ulp).max()))
    return identical, d_max, u_max, max(e_max, 0.0), scale
