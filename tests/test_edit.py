import pytest
import torch
from conftest import MOE_CONFIGS, PROMPTS, make_model

from steer.edit.preview import Edit, preview
from steer.edit.project import orthogonalize, orthonormal_basis, project_out
from steer.model.adapters import resolve
from steer.model.collect import batched_last_logits
from steer.prompts import chat_texts


@pytest.mark.parametrize("k", [1, 3])
def test_projection_is_idempotent_and_orthogonal(k):
    g = torch.Generator().manual_seed(0)
    basis = orthonormal_basis(torch.randn(k, 32, generator=g))
    w_out = torch.randn(32, 20, generator=g)
    w_in = torch.randn(50, 32, generator=g)
    p_out = project_out(w_out, basis, "out")
    p_in = project_out(w_in, basis, "in")
    assert basis.T @ p_out == pytest.approx(torch.zeros(k, 20), abs=1e-5)
    assert p_in @ basis == pytest.approx(torch.zeros(50, k), abs=1e-5)
    torch.testing.assert_close(project_out(p_out, basis, "out"), p_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(project_out(p_in, basis, "in"), p_in, atol=1e-6, rtol=0)
    # the part along the basis is what was removed
    torch.testing.assert_close(w_out - p_out, basis @ (basis.T @ w_out), atol=1e-5, rtol=0)


def test_projection_keeps_dtype_and_handles_bias():
    basis = orthonormal_basis(torch.randn(16))
    bias = torch.randn(16, dtype=torch.bfloat16)
    out = project_out(bias, basis, "out")
    assert out.dtype == torch.bfloat16 and out.shape == (16,)
    assert abs(float(basis[:, 0] @ out.float())) < 0.05


def test_dependent_directions_are_rejected():
    v = torch.randn(8)
    with pytest.raises(ValueError):
        orthonormal_basis(torch.stack([v, 2 * v]))


def test_hook_ablation_equals_weight_edit(arch, tokenizer):
    model = make_model(arch)
    d = model.config.hidden_size
    direction = torch.randn(2, d, generator=torch.Generator().manual_seed(1))
    texts = chat_texts(tokenizer, PROMPTS)
    base = batched_last_logits(model, tokenizer, texts)
    with preview(model, direction):
        hooked = batched_last_logits(model, tokenizer, texts)
    edited = orthogonalize(model, direction)
    assert edited >= 1 + 2 * model.config.num_hidden_layers
    weights = batched_last_logits(model, tokenizer, texts)
    assert (hooked - base).abs().max() > 1e-3  # the ablation does something
    assert (hooked - weights).abs().max() < 1e-4


def test_edit_removes_direction_from_residual_stream(tokenizer):
    """For pre-norm models every residual-stream state is orthogonal to r after the edit."""
    model = make_model("llama")
    r = torch.randn(model.config.hidden_size)
    orthogonalize(model, r)
    ids = tokenizer(chat_texts(tokenizer, PROMPTS[:1]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        hs = model(**ids, output_hidden_states=True).hidden_states
    unit = r / r.norm()
    for h in hs[:-1]:  # the last entry is after the final norm
        assert (h @ unit).abs().max() < 1e-4


def test_post_norm_writers_remove_direction_exactly():
    """Gemma adds RMSNorm(o_proj(x)); the edit must make that norm output orthogonal to r."""
    model = make_model("gemma2")
    r = torch.randn(model.config.hidden_size)
    orthogonalize(model, r)
    layer = resolve(model).layers[0]
    x = torch.randn(3, model.config.intermediate_size)
    y = layer.post_feedforward_layernorm(layer.mlp.down_proj(x))
    assert (y @ (r / r.norm())).abs().max() < 1e-4


def test_tied_embeddings_are_untied_and_readout_kept():
    model = make_model("gemma2")
    res = resolve(model)
    assert res.lm_head.weight is res.embed.weight
    before = res.lm_head.weight.detach().clone()
    orthogonalize(model, torch.randn(model.config.hidden_size))
    res = resolve(model)
    assert res.lm_head.weight.data_ptr() != res.embed.weight.data_ptr()
    assert torch.equal(res.lm_head.weight, before)
    assert model.config.tie_word_embeddings is False


def test_subspace_projection_removes_rank_k_and_is_idempotent():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 12, generator=g)
    basis = orthonormal_basis(torch.randn(3, 32, generator=g))
    out = project_out(w, basis, "out")
    assert (basis.T @ out).abs().max() < 1e-5  # no output in span(B)
    assert torch.allclose(project_out(out, basis, "out"), out, atol=1e-6)
    # The change has rank k = 3 (it lies in span(B)) and everything orthogonal to B is kept.
    assert torch.linalg.matrix_rank(w - out) == 3
    perp = torch.eye(32) - basis @ basis.T
    assert torch.allclose(perp @ out, perp @ w, atol=1e-5)


def test_strength_scales_the_removal():
    g = torch.Generator().manual_seed(3)
    w, basis = torch.randn(16, 5, generator=g), orthonormal_basis(torch.randn(16, generator=g))
    half = project_out(w, basis, "out", strength=0.5)
    assert torch.allclose(basis.T @ half, 0.5 * (basis.T @ w), atol=1e-5)
    assert torch.equal(project_out(w, basis, "out", strength=0.0), w)


@pytest.mark.parametrize("side", ["out", "in"])
def test_norm_preserving_projection_keeps_vector_norms(side):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(24, 10, generator=g) if side == "out" else torch.randn(10, 24, generator=g)
    basis = orthonormal_basis(torch.randn(2, 24, generator=g))
    out = project_out(w, basis, side, preserve_norm=True)
    dim = 0 if side == "out" else 1
    assert torch.allclose(out.norm(dim=dim), w.norm(dim=dim), atol=1e-5)
    resid = basis.T @ out if side == "out" else out @ basis
    assert resid.abs().max() < 1e-5  # still orthogonal to the removed span
    plain = project_out(w, basis, side)
    cos = torch.nn.functional.cosine_similarity(out, plain, dim=dim)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)  # same directions, only rescaled


def test_profile_weights_peak_and_fall_off():
    from steer.edit.project import Profile

    assert Profile().weights(4) == [1.0] * 4
    w = Profile(peak=1.0, center=2.0, width=2.0, floor=0.2).weights(6)
    assert w[2] == 1.0 and w[0] == pytest.approx(0.2) and w[5] == pytest.approx(0.2) and w[3] == pytest.approx(0.6)


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_profiled_hooks_equal_profiled_weight_edit(arch, tokenizer):
    from steer.edit.project import Profile

    model = make_model(arch)
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    profiles = {
        "attn": Profile(peak=1.0, center=1.0, width=0.5, floor=0.0),
        "mlp": Profile(peak=0.7, center=0.0, width=3, floor=0.1),
    }
    texts = chat_texts(tokenizer, PROMPTS)
    with preview(model, Edit(direction, profiles=profiles, embed=0.5)):
        hooked = batched_last_logits(model, tokenizer, texts)
    with preview(model, direction):
        full = batched_last_logits(model, tokenizer, texts)
    orthogonalize(model, direction, profiles=profiles, embed=0.5)
    weights = batched_last_logits(model, tokenizer, texts)
    assert (hooked - weights).abs().max() < 1e-4
    assert (hooked - full).abs().max() > 1e-3  # partial strengths differ from the full edit
    res = resolve(model)  # attention strength 0 at layer 0: that writer is untouched
    assert torch.equal(
        res.writers[0][0].weight, make_model(arch).get_submodule("model.layers.0.self_attn.o_proj").weight
    )


def test_norm_preserving_edit_keeps_writer_column_norms(tokenizer):
    model, ref = make_model("llama"), make_model("llama")
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(6))
    orthogonalize(model, direction, preserve_norm=True)
    for name in ("model.layers.1.mlp.down_proj", "model.layers.2.self_attn.o_proj"):
        w, w0 = model.get_submodule(name).weight, ref.get_submodule(name).weight
        assert torch.allclose(w.norm(dim=0), w0.norm(dim=0), atol=1e-5)
        assert (direction / direction.norm() @ w).abs().max() < 1e-4
    with pytest.raises(ValueError, match="no writer component"):
        orthogonalize(model, direction, profiles={"moe": None})


@pytest.mark.parametrize("arch", list(MOE_CONFIGS))
def test_moe_edit_covers_every_expert_and_equals_hooks(arch, tokenizer):
    """Mixtures of experts: fused [E, d_model, d_ff] experts, shared experts and dense layers alike;
    afterwards every residual-stream state is orthogonal to r (all writers were edited)."""
    model = make_model(arch)
    r = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(7))
    texts = chat_texts(tokenizer, PROMPTS)
    with preview(model, r):
        hooked = batched_last_logits(model, tokenizer, texts)
    n = orthogonalize(model, r)
    assert n == 1 + sum(1 + (w.bias is not None) for layer in resolve(model).writers for w in layer)
    assert (hooked - batched_last_logits(model, tokenizer, texts)).abs().max() < 1e-4
    ids = tokenizer(texts[:2], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        hs = model(**ids, output_hidden_states=True).hidden_states
    for h in hs[:-1]:
        assert (h @ (r / r.norm())).abs().max() < 1e-4


def _loose_tensor_bytes(model) -> int:
    """Bytes of the live CPU tensors that share no storage with the model's parameters."""
    import gc
    import warnings

    owned = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, total = set(), 0
    with warnings.catch_warnings():  # isinstance on torch's deprecated module attributes warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in tensors:
        if obj.device.type == "cpu":
            ptr = obj.untyped_storage().data_ptr()
            if ptr not in owned and ptr not in seen:
                seen.add(ptr)
                total += obj.untyped_storage().nbytes()
    return total


@pytest.mark.parametrize("arch,dtype", [("qwen2", torch.float32), ("gemma2", torch.bfloat16)])
def test_in_weights_preview_restores_exactly_without_a_ram_copy(arch, dtype, tokenizer):
    model = make_model(arch).to(dtype)
    res = resolve(model)
    written = sum(w.weight.nbytes for layer in res.writers for w in layer) + res.embed.weight.nbytes
    state = {k: v.clone() for k, v in model.state_dict().items()}
    writer = res.writers[1][0].weight
    original = writer.detach().clone()
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    before = _loose_tensor_bytes(model)
    with preview(model, Edit(direction, embed=0.5), in_weights=True):
        assert not torch.equal(writer, original)  # the edit is in the weights
        held = _loose_tensor_bytes(model) - before
        untied = res.embed.weight.nbytes if model.config.tie_word_embeddings else 0  # the edit unties the head
        assert held <= untied + written // 4  # the originals wait on disk, not beside the weights
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert res.lm_head.weight is res.embed.weight or not model.config.tie_word_embeddings
