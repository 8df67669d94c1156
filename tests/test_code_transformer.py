"""genfast.models.CodeTransformer: the likelihood, causality, cached == naive sampling
(float64, same generator, top-k / top-p included), teacher-forced cached logits, the
top-k / top-p draw rule, the cache's memory, training with genfast.train, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import HAS_EXT

import genfast.training.autoregressive as gtrain
from genfast.data import ImageData
from genfast.models import CodeTransformer, load_model
from genfast.ops._draw import filtered_draw, inverse_cdf

IMPLS = ["reference"] + (["ext"] if HAS_EXT else [])
# (num_classes, prefix_length, prefix_levels)
CONDITIONS = [(None, 0, None), (3, 0, None), (None, 5, 4), (3, 6, 9)]
DRAWS = [dict(), dict(top_k=3), dict(top_p=0.6), dict(top_k=5, top_p=0.8, temperature=0.7),
         dict(top_k=1), dict(temperature=1.9)]


def random_model(seed, *, num_classes=None, prefix_length=0, prefix_levels=None, dtype=torch.float64,
                 levels=11, image_size=(3, 4), width=16, heads=4, layers=2, mlp=24, scale=0.4):
    """A small CodeTransformer with every parameter random (LayerNorm scales and biases
    included), in dtype."""
    torch.manual_seed(seed)
    model = CodeTransformer(levels=levels, image_size=image_size, hidden_channels=width, num_layers=layers,
                            num_heads=heads, mlp_channels=mlp, num_classes=num_classes,
                            prefix_length=prefix_length, prefix_levels=prefix_levels).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
        for block in model.blocks:  # LayerNorm scales around 1
            block.ln1.weight.add_(1)
            block.ln2.weight.add_(1)
        model.final_ln.weight.add_(1)
    return model.eval()


def conditioning(model, n, seed):
    g = torch.Generator().manual_seed(seed + 100)
    labels = None if model.num_classes is None else torch.randint(0, model.num_classes, (n,), generator=g)
    prefix = None if not model.prefix_length else torch.randint(0, model.prefix_levels, (n, model.prefix_length),
                                                                generator=g)
    return labels, prefix


def random_codes(model, n, seed):
    g = torch.Generator().manual_seed(seed + 200)
    return torch.randint(0, model.levels, (n, 1, *model.image_size), generator=g)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("draw", DRAWS)
@pytest.mark.parametrize("condition", CONDITIONS)
def test_cached_equals_naive_float64(condition, draw, impl):
    num_classes, prefix_length, prefix_levels = condition
    model = random_model(1, num_classes=num_classes, prefix_length=prefix_length, prefix_levels=prefix_levels)
    labels, prefix = conditioning(model, 5, 1)
    cached = model.sample(5, labels=labels, prefix=prefix, generator=torch.Generator().manual_seed(7),
                          impl=impl, **draw)
    naive = model.sample(5, labels=labels, prefix=prefix, generator=torch.Generator().manual_seed(7),
                         method="naive", **draw)
    assert cached.shape == (5, 1, 3, 4) and cached.dtype == torch.long
    assert torch.equal(cached, naive)
    if draw != dict(top_k=1):  # greedy decoding may well repeat one code
        assert len(cached.unique()) > 1  # not a degenerate draw


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("condition", CONDITIONS)
def test_teacher_forced_cached_logits_float32(condition, impl):
    num_classes, prefix_length, prefix_levels = condition
    model = random_model(2, num_classes=num_classes, prefix_length=prefix_length, prefix_levels=prefix_levels,
                         dtype=torch.float32, image_size=(4, 5), width=32, heads=4, layers=3, mlp=64)
    labels, prefix = conditioning(model, 4, 2)
    x = random_codes(model, 4, 2)
    with torch.no_grad():
        full = model(x, labels, prefix)
    cached = model.cached_logits(x, labels, prefix, impl=impl)
    assert cached.shape == full.shape == (4, model.levels, 1, 4, 5)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-4)
    assert full.std() > 0.1


def test_causal_mask_by_perturbation():
    """Code i's logits never depend on codes >= i; they do depend on earlier codes, the
    label and the prefix."""
    model = random_model(3, num_classes=3, prefix_length=4, prefix_levels=5)
    labels, prefix = conditioning(model, 2, 3)
    x = random_codes(model, 2, 3)
    with torch.no_grad():
        base = model(x, labels, prefix).flatten(2)  # (n, levels, H*W)
        for j in range(model.sequence_length):
            y = x.clone().view(2, -1)
            y[:, j] = (y[:, j] + 1) % model.levels
            out = model(y.view_as(x), labels, prefix).flatten(2)
            assert torch.equal(out[..., :j + 1], base[..., :j + 1]), f"code {j} leaks into earlier logits"
            if j + 1 < model.sequence_length:
                assert not torch.allclose(out[..., j + 1:], base[..., j + 1:])
        other_prefix = (prefix + 1) % model.prefix_levels
        assert not torch.allclose(model(x, labels, other_prefix).flatten(2)[..., 0], base[..., 0])
        assert not torch.allclose(model(x, (labels + 1) % 3, prefix).flatten(2)[..., 0], base[..., 0])


def test_loss_and_bits_per_code():
    model = random_model(4, num_classes=3)
    labels, _ = conditioning(model, 3, 4)
    x = random_codes(model, 3, 4)
    loss = model.loss(x, labels)
    want = F.cross_entropy(model(x, labels), x)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.bits_per_code(x, labels), want / math.log(2), rtol=1e-12, atol=1e-12)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# -- the top-k / top-p draw rule -------------------------------------------------------
def brute_force_draw(logits, u, temperature, top_k, top_p):
    """The documented rule, one row at a time in Python floats."""
    z = [v / temperature for v in logits]
    w = [math.exp(v - max(z)) for v in z]
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    kept = order[:top_k] if top_k else order
    if top_p < 1:
        total = sum(w[i] for i in kept)
        running, chosen = 0.0, []
        for i in kept:
            if chosen and running >= top_p * total:
                break
            chosen.append(i)
            running += w[i]
        kept = chosen
    kept = set(kept)
    cdf, s = [], 0.0
    for i in range(len(z)):
        s += w[i] if i in kept else 0.0
        cdf.append(s)
    count = sum(1 for c in cdf if c <= u * s)
    return count if count < len(z) else max(kept)


@pytest.mark.parametrize("top_k,top_p,temperature", [(0, 1.0, 1.0), (3, 1.0, 1.0), (0, 0.5, 1.0), (4, 0.7, 0.8),
                                                     (1, 1.0, 1.0), (0, 0.05, 1.3), (20, 1.0, 1.0)])
def test_filtered_draw_follows_the_rule(top_k, top_p, temperature):
    g = torch.Generator().manual_seed(top_k * 31 + int(top_p * 100))
    logits = torch.randn(300, 9, generator=g, dtype=torch.float64) * 2
    logits[:40, 3] = logits[:40, 5]  # ties
    u = torch.rand(300, generator=g, dtype=torch.float64)
    got = filtered_draw(logits, u, temperature, top_k, top_p)
    want = [brute_force_draw(row.tolist(), float(ui), temperature, top_k, top_p) for row, ui in zip(logits, u)]
    assert got.tolist() == want
    if top_k == 0 and top_p == 1.0:
        assert torch.equal(got, inverse_cdf(logits, u, temperature))


def test_filtered_draw_ties_and_edges():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]], dtype=torch.float64)
    for u in (0.0, 0.5, 1.0 - 1e-16, 1.0):
        # top-1 of a tie: the lower level
        assert filtered_draw(logits, torch.tensor([u], dtype=torch.float64), 1.0, 1, 1.0).item() == 1
        # top-2 of the tie: both, never anything else; u -> 1 gives the last kept level
        assert filtered_draw(logits, torch.tensor([u], dtype=torch.float64), 1.0, 2, 1.0).item() in (1, 2)
    assert filtered_draw(logits, torch.tensor([1.0], dtype=torch.float64), 1.0, 2, 1.0).item() == 2
    bad = torch.tensor([[0.0, float("nan"), 1.0]], dtype=torch.float64)
    assert filtered_draw(bad, torch.tensor([0.5], dtype=torch.float64), 1.0, 2, 0.5).item() == -1


def test_top_k_draws_only_the_k_most_likely():
    model = random_model(5)
    codes = model.sample(64, top_k=2, generator=torch.Generator().manual_seed(0))
    x = codes
    with torch.no_grad():
        logits = model(x).flatten(2).transpose(1, 2)  # (n, H*W, levels)
    top2 = logits.topk(2, dim=-1).indices
    assert (top2 == x.view(64, -1, 1)).any(-1).all()


# -- cache memory -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cache_memory(dtype):
    model = CodeTransformer(levels=16, image_size=(4, 4), hidden_channels=64, num_layers=3, num_heads=8,
                            prefix_length=5)
    assert model.cache_bytes_per_token_per_layer(dtype) == 2 * 64 * (4 if dtype == torch.float32 else 8)
    keys, values = model.new_cache(7, dtype, "cpu")
    assert keys.shape == values.shape == (7, 3, 8, 5 + 16, 8)
    total = keys.numel() * keys.element_size() + values.numel() * values.element_size()
    assert total == model.cache_bytes(7, dtype) == 7 * 3 * 21 * model.cache_bytes_per_token_per_layer(dtype)
    # The documented figure (docs/code-transformer.md): width 256, float32 -> 2 KiB per token per layer.
    assert CodeTransformer(levels=2, image_size=1).cache_bytes_per_token_per_layer() == 2048


# -- training ---------------------------------------------------------------------------
def test_trains_with_genfast_train_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = CodeTransformer(levels=6, image_size=(3, 3), hidden_channels=16, num_layers=2, num_heads=2,
                            num_classes=2, prefix_length=4, prefix_levels=3)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (64,), generator=g)
    prefix = torch.randint(0, 3, (64, 1, 2, 2), generator=g)
    images = ((prefix.view(64, -1)[:, :1] + labels[:, None] + torch.arange(9)) % 6).view(64, 1, 3, 3)
    data = ImageData(images, labels, 6, 2, prefix)
    path = str(tmp_path / "prior.pt")
    history = gtrain.train(model, data, val_data=data, steps=40, batch_size=16, lr=3e-3, val_every=20,
                           checkpoint=path, progress=False)
    assert history[-1]["val_bpd"] < history[0]["train_bpd"]
    loaded = load_model(path)
    assert isinstance(loaded, CodeTransformer) and loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(images[:4], labels[:4], prefix[:4]), model.eval()(images[:4], labels[:4],
                                                                                              prefix[:4]))
    sampled = loaded.sample(4, labels=labels[:4], prefix=prefix[:4], generator=torch.Generator().manual_seed(1))
    assert sampled.shape == (4, 1, 3, 3)


# -- bad input -----------------------------------------------------------------------------
def test_bad_arguments():
    model = random_model(6, num_classes=3, prefix_length=2, prefix_levels=4)
    labels, prefix = conditioning(model, 2, 6)
    with pytest.raises(ValueError, match="labels are required"):
        model.sample(2, prefix=prefix)
    with pytest.raises(TypeError, match="prefix must be an integer tensor"):
        model.sample(2, labels=labels)
    with pytest.raises(ValueError, match="prefix codes must lie in"):
        model.sample(2, labels=labels, prefix=prefix + 4)
    with pytest.raises(ValueError, match="2 codes per sample"):
        model.sample(2, labels=labels, prefix=prefix[:, :1])
    for kwargs, match in [(dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                          (dict(temperature=0), "temperature"), (dict(method="fast"), "method"),
                          (dict(impl="cuda"), "impl")]:
        with pytest.raises(ValueError, match=match):
            model.sample(2, labels=labels, prefix=prefix, **kwargs)
    with pytest.raises(ValueError, match="must be shaped"):
        model(torch.zeros(2, 1, 3, 5, dtype=torch.long), labels, prefix)
    with pytest.raises(ValueError, match="must lie in"):
        model(torch.full((2, 1, 3, 4), 11), labels, prefix)
    with pytest.raises(ValueError, match="num_heads"):
        CodeTransformer(levels=4, image_size=2, hidden_channels=10, num_heads=4)
    with pytest.raises(ValueError, match="prefix given"):
        random_model(6)(random_codes(model, 2, 0), None, prefix)
