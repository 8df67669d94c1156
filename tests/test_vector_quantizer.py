"""VectorQuantizer: layouts, straight-through and rotation-trick gradients against
references, the losses, one EMA step by hand, k-means initialisation, dead-code
restart, cosine codebooks, state_dict round trip, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import requires_ext

from genfast.nn import VectorQuantizer
from genfast.nn.vector_quantizer import kmeans, rotate_to
from genfast.ops import nearest_code_reference

pytestmark = requires_ext


def make_vq(num_codes=12, dim=5, seed=0, **kwargs):
    torch.manual_seed(seed)
    return VectorQuantizer(num_codes, dim, **kwargs)


@pytest.mark.parametrize("channels_first", [True, False])
def test_layouts_and_quantised_values(channels_first):
    vq = make_vq(channels_first=channels_first).eval()
    z = torch.randn(3, 5, 4, 6) if channels_first else torch.randn(3, 4, 6, 5)
    out = vq(z)
    flat = z.movedim(1, -1).reshape(-1, 5) if channels_first else z.reshape(-1, 5)
    ref_indices, _ = nearest_code_reference(flat, vq.codebook)
    assert out.indices.shape == (3, 4, 6) and torch.equal(out.indices.flatten(), ref_indices)
    assert out.quantized.shape == z.shape
    expected = vq.codebook[ref_indices]
    got = out.quantized.movedim(1, -1).reshape(-1, 5) if channels_first else out.quantized.reshape(-1, 5)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(vq.codes_to_vectors(out.indices), out.quantized)


def test_straight_through_gradient():
    vq = make_vq().eval()
    z = torch.randn(2, 5, 3, 3, requires_grad=True)
    g = torch.randn(2, 5, 3, 3)
    (grad,) = torch.autograd.grad(vq(z).quantized, z, g)
    assert torch.equal(grad, g)


def rotation_reference(z, q):
    """(|q|/|z|) R with R built in the plane of z and q by Gram-Schmidt: the rotation
    by the angle between them there, the identity orthogonally (float64)."""
    u = z / z.norm()
    v = q / q.norm()
    cos = torch.dot(u, v)
    e2 = v - cos * u
    e2 = e2 / e2.norm()
    sin = torch.dot(v, e2)
    eye = torch.eye(len(z), dtype=z.dtype)
    rot = eye + (cos - 1) * (torch.outer(u, u) + torch.outer(e2, e2)) + sin * (torch.outer(e2, u) - torch.outer(u, e2))
    assert torch.allclose(rot @ u, v, atol=1e-12)
    return q.norm() / z.norm() * rot


def test_rotation_trick_gradient():
    vq = make_vq(rotation_trick=True, dtype=torch.float64).eval()
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(4, 5, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.randn(4, 5, 2, 2, dtype=torch.float64, generator=gen)
    out = vq(z)
    torch.testing.assert_close(out.quantized, vq.codes_to_vectors(out.indices), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.quantized, z, g)
    flat_z = z.detach().movedim(1, -1).reshape(-1, 5)
    flat_g = g.movedim(1, -1).reshape(-1, 5)
    flat_grad = grad.movedim(1, -1).reshape(-1, 5)
    q = vq.codebook[out.indices.flatten()]
    for i in range(flat_z.shape[0]):
        expected = rotation_reference(flat_z[i], q[i]).T @ flat_g[i]
        torch.testing.assert_close(flat_grad[i], expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(grad, g)  # not straight-through


def test_rotation_trick_degenerate_rows():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[1.0, 2.0], [-2.0, 0.0]], dtype=torch.float64)
    out = rotate_to(z, q)
    assert torch.equal(out, q)
    (grad,) = torch.autograd.grad(out, z, torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64))
    assert grad[0].tolist() == [1.0, 1.0]  # zero row: straight through
    assert torch.isfinite(grad).all()
    # Opposite directions: the reflection taking u to -u, scaled by |q|/|z| = 2.
    assert grad[1].tolist() == [-2.0, 2.0]


@pytest.mark.parametrize("ema,legacy", [(True, False), (False, False), (False, True)])
def test_losses(ema, legacy):
    vq = make_vq(ema=ema, legacy_loss=legacy, commitment=0.3).train()
    vq.initialized.fill_(True)
    z = torch.randn(6, 5, requires_grad=True)
    codebook_before = vq.codebook.detach().clone()
    out = vq(z)
    q = codebook_before[out.indices]
    commit = (z.detach() - q).square().mean()
    if ema:
        expected = 0.3 * commit
    elif legacy:
        expected = commit + 0.3 * commit
    else:
        expected = 0.3 * commit + commit
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    beta_commit = 1.0 if legacy else 0.3
    torch.testing.assert_close(z.grad, beta_commit * 2 * (z.detach() - q) / z.numel())
    if not ema:  # the codebook term pulls each used code towards its vectors
        beta_codebook = 0.3 if legacy else 1.0
        expected_grad = torch.zeros_like(codebook_before).index_add_(
            0, out.indices, beta_codebook * 2 * (q - z.detach()) / z.numel())
        torch.testing.assert_close(vq.codebook.grad, expected_grad)


def test_one_ema_step_by_hand():
    vq = VectorQuantizer(3, 2, decay=0.9, eps=0.1, channels_first=False)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
        vq.embed_avg.copy_(vq.codebook)
    vq.initialized.fill_(True)
    z = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [9.0, 1.0]])  # codes 0, 0, 1; code 2 unused
    vq.train()(z)
    # cluster_size = 0.9 * 1 + 0.1 * counts; embed_avg = 0.9 * codes + 0.1 * sums
    cluster = [0.9 + 0.2, 0.9 + 0.1, 0.9]
    embed = [[0.0 + 0.1 * 0.0, 0.0 + 0.1 * 1.0], [9.0 + 0.9, 0.1], [0.0, 9.0]]
    total = sum(cluster)
    smoothed = [(c + 0.1) / (total + 3 * 0.1) * total for c in cluster]
    expected = torch.tensor([[e / s for e in row] for row, s in zip(embed, smoothed)])
    torch.testing.assert_close(vq.cluster_size, torch.tensor(cluster))
    torch.testing.assert_close(vq.embed_avg, torch.tensor(embed))
    torch.testing.assert_close(vq.codebook, expected)


def test_eval_mode_changes_nothing():
    vq = make_vq(kmeans_init=True, dead_code_threshold=2.0).eval()
    state = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(4, 5, 3, 3))
    assert all(torch.equal(v, state[k]) for k, v in vq.state_dict().items())


def clustered_data(num_clusters, dim, per_cluster, seed):
    gen = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(num_clusters, dim, generator=gen)
    data = centres.repeat_interleave(per_cluster, 0) + 0.01 * torch.randn(num_clusters * per_cluster, dim, generator=gen)
    return centres, data[torch.randperm(len(data), generator=gen)]


def test_kmeans_init_finds_the_clusters():
    centres, data = clustered_data(6, 5, 40, seed=2)
    vq = make_vq(num_codes=6, kmeans_init=True, kmeans_iters=10, channels_first=False).train()
    vq(data)
    assert bool(vq.initialized)
    # k-means++ seeds one code per well-separated cluster: each lands within the noise.
    dist = torch.cdist(centres, vq.codebook)
    assert (dist.min(1).values < 0.05).all()
    # The second batch does not initialise again.
    before = vq.codebook.clone()
    vq.decay = 1.0 - 1e-9
    vq(data[:5] + 100)
    torch.testing.assert_close(vq.codebook, before, atol=1e-4, rtol=0)


def test_kmeans_function():
    centres, data = clustered_data(4, 3, 25, seed=3)
    gen = torch.Generator().manual_seed(0)
    found = kmeans(data, 4, 20, generator=gen)
    assert found.shape == (4, 3)
    assert (torch.cdist(centres, found).min(1).values < 0.05).all()
    # Fewer rows than codes: every code is one of the rows, and every row is a code.
    few = kmeans(data[:3], 5, 2, generator=gen)
    assert all((few[i] == data[:3]).all(1).any() for i in range(5))
    assert all((few == data[i]).all(1).any() for i in range(3))


def test_dead_code_restart():
    vq = make_vq(num_codes=8, dim=2, dead_code_threshold=0.5, decay=0.5, channels_first=False).train()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]] + [[1000.0 + i, 1000.0] for i in range(6)]))
        vq.embed_avg.copy_(vq.codebook)
    vq.initialized.fill_(True)
    z = torch.tensor([[0.1, 0.0], [0.9, 0.1], [0.2, 0.1], [1.1, -0.1]])
    vq(z)
    # Codes 2..7 got nothing: cluster 0.5 * 1 = 0.5, not below 0.5 yet.
    assert (vq.codebook[2:, 0] > 900).all()
    vq(z)
    # Now 0.25 < 0.5: restarted from rows of the batch, cluster size = threshold.
    restarted = vq.codebook[2:]
    assert all((row == z).all(1).any() for row in restarted)
    assert torch.equal(vq.cluster_size[2:], torch.full((6,), 0.5))
    torch.testing.assert_close(vq.embed_avg[2:], 0.5 * restarted)
    assert vq.cluster_size[:2].min() > 0.5  # used codes are kept


def test_cosine_codebook():
    vq = make_vq(cosine=True, channels_first=False).train()
    z = 3 * torch.randn(50, 5)
    out = vq(z)
    torch.testing.assert_close(out.quantized.norm(dim=1), torch.ones(50))
    torch.testing.assert_close(vq.codebook.norm(dim=1), torch.ones(12))
    vq.eval()
    out = vq(z)
    similarity = F.normalize(z, dim=1) @ vq.codebook.T
    assert torch.equal(out.indices, similarity.argmax(1))


def test_perplexity_and_usage():
    vq = make_vq(num_codes=4, dim=1, channels_first=False).eval()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    out = vq(torch.tensor([[0.1], [0.2], [1.1], [0.9]]))  # codes 0, 0, 1, 1
    assert out.usage.item() == 0.5
    torch.testing.assert_close(out.perplexity, torch.tensor(2.0))
    out = vq(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    torch.testing.assert_close(out.perplexity, torch.tensor(4.0))


def test_state_dict_round_trip():
    vq = make_vq(kmeans_init=True, dead_code_threshold=0.3, seed=4).train()
    for step in range(3):
        vq(torch.randn(2, 5, 4, 4))
    state = vq.state_dict()
    assert set(state) == {"codebook", "embed_avg", "cluster_size", "initialized"}
    copy = make_vq(kmeans_init=True, dead_code_threshold=0.3, seed=5).train()
    copy.load_state_dict(state)
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in state.items())
    z = torch.randn(2, 5, 4, 4)
    torch.manual_seed(9)
    a = vq(z)
    torch.manual_seed(9)
    b = copy(z)
    assert torch.equal(a.quantized, b.quantized) and torch.equal(a.indices, b.indices)
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in vq.state_dict().items())


def test_learned_codebook_state_dict():
    vq = make_vq(ema=False)
    assert isinstance(vq.codebook, torch.nn.Parameter)
    assert set(vq.state_dict()) == {"codebook", "cluster_size", "initialized"}


def test_half_precision_input():
    vq = make_vq().eval()
    z = torch.randn(2, 5, 3, 3).to(torch.bfloat16)
    out = vq(z)
    assert out.quantized.dtype == torch.bfloat16
    ref, _ = nearest_code_reference(z.float().movedim(1, -1).reshape(-1, 5), vq.codebook)
    assert torch.equal(out.indices.flatten(), ref)


def test_empty_batch_in_training():
    vq = make_vq(dead_code_threshold=0.5).train()
    z = torch.randn(0, 5, 4, 4, requires_grad=True)
    out = vq(z)
    assert out.quantized.shape == z.shape and out.loss.item() == 0.0
    out.loss.backward()
    assert torch.isfinite(vq.codebook).all()


def test_torch_compile_eval_forward():
    torch._dynamo.reset()
    vq = make_vq(impl="ext").eval()
    z = torch.randn(2, 5, 3, 3)
    # One graph through the ops' fake kernels; aot_eager skips inductor's C++ codegen,
    # which tests/test_nearest_code.py already exercises.
    compiled = torch.compile(vq, fullgraph=True, backend="aot_eager")
    got, want = compiled(z), vq(z)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.quantized, want.quantized)
    torch.testing.assert_close(got.perplexity, want.perplexity)


@pytest.mark.parametrize("make,error,match", [
    (lambda vq: vq(torch.randn(2, 4, 3, 3)), ValueError, r"\(B, dim, \.\.\.\) \(channels_first=True\) with dim = 5"),
    (lambda vq: vq(torch.randn(5)), ValueError, "with dim = 5"),
    (lambda vq: vq(torch.ones(2, 5, dtype=torch.long)), TypeError, "floating-point"),
    (lambda vq: vq.codes_to_vectors(torch.zeros(3, dtype=torch.int32)), TypeError, "int64"),
    (lambda vq: VectorQuantizer(0, 5), ValueError, "num_codes must be a positive int"),
    (lambda vq: VectorQuantizer(4, 5, decay=1.0), ValueError, "decay"),
    (lambda vq: VectorQuantizer(4, 5, legacy_loss=True), ValueError, "ema=False"),
    (lambda vq: VectorQuantizer(4, 5, dead_code_threshold=-1), ValueError, "dead_code_threshold"),
])
def test_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        make(make_vq())


def test_training_reduces_quantisation_error():
    # A smoke test of the whole loop: EMA codebook with k-means init and restarts
    # on clustered data ends with every cluster owning a code.
    centres, data = clustered_data(8, 4, 50, seed=6)
    vq = make_vq(num_codes=8, dim=4, kmeans_init=True, kmeans_iters=2, dead_code_threshold=1.0,
                 channels_first=False).train()
    for step in range(30):
        batch = data[torch.randint(len(data), (64,))]
        out = vq(batch)
    assert math.isfinite(out.loss.item())
    assert (torch.cdist(centres, vq.codebook).min(1).values < 1.0).all()
