"""The memory arithmetic against an independent float64 reference, and the snapshot format."""

import pytest
import torch

from infini_reader.engine import Memory, SnapshotError
from infini_reader.engine.memory import memory_delta, memory_retrieve, sigma

from .conftest import tiny_engine


def ref_sigma(x):
    return torch.where(x > 0, x + 1, torch.exp(x))  # ELU(x) + 1, written out


def ref_retrieve(q, M, z):
    """Loop over query heads; head h reads kv head h // (H / Hkv). q is *pre-σ* here."""
    B, H, T, D = q.shape
    Hkv = M.shape[1]
    out = torch.empty(B, H, T, M.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            j = h // (H // Hkv)
            sq = ref_sigma(q[b, h].double())
            out[b, h] = (sq @ M[b, j].double()) / (sq @ z[b, j].double())[:, None]
    return out


def ref_update(k, v, M, z, rule):
    B, Hkv, T, D = k.shape
    M_new, z_new = M.double().clone(), z.double().clone()
    for b in range(B):
        for j in range(Hkv):
            sk = ref_sigma(k[b, j].double())
            vv = v[b, j].double()
            if rule == "delta" and z[b, j].abs().sum() > 0:
                vv = vv - (sk @ M[b, j].double()) / (sk @ z[b, j].double())[:, None]
            M_new[b, j] += sk.T @ vv
            z_new[b, j] += sk.sum(0)
    return M_new, z_new


def random_memory(g, B=2, Hkv=2, D=8, Dv=8, tokens=20):
    k = torch.randn(B, Hkv, tokens, D, generator=g)
    v = torch.randn(B, Hkv, tokens, Dv, generator=g)
    sk = ref_sigma(k)
    return (sk.transpose(-1, -2) @ v).float(), sk.sum(-2).float()


def test_retrieve_matches_reference_with_gqa_mapping(rng):
    M, z = random_memory(rng, Hkv=2)
    M[:, 1] *= -3.0  # kv heads must differ for the mapping to be tested
    q = torch.randn(2, 6, 5, 8, generator=rng)
    got = memory_retrieve(sigma(q), M, z)
    torch.testing.assert_close(got.double(), ref_retrieve(q, M, z), rtol=1e-5, atol=1e-5)
    # The test can tell the right mapping (h // G) from a tiled one (h % Hkv).
    tiled = torch.cat([ref_retrieve(q[:, [h]], M[:, [h % 2]], z[:, [h % 2]]) for h in range(6)], 1)
    assert not torch.allclose(got.double(), tiled, atol=1e-3)


@pytest.mark.parametrize("rule", ["linear", "delta"])
def test_update_matches_reference(rng, rule):
    M, z = random_memory(rng)
    k = torch.randn(2, 2, 7, 8, generator=rng)
    v = torch.randn(2, 2, 7, 8, generator=rng)
    dM, dz = memory_delta(sigma(k), v, M, z, rule)
    M_ref, z_ref = ref_update(k, v, M, z, rule)
    torch.testing.assert_close((M + dM).double(), M_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close((z + dz).double(), z_ref, rtol=1e-5, atol=1e-4)


def test_empty_memory_delta_equals_linear_and_no_nan(rng):
    k = torch.randn(1, 2, 9, 8, generator=rng)
    v = torch.randn(1, 2, 9, 8, generator=rng)
    lin = memory_delta(sigma(k), v, None, None, "linear")
    dlt = memory_delta(sigma(k), v, None, None, "delta")
    torch.testing.assert_close(lin, dlt)
    M_ref, z_ref = ref_update(k, v, torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8), "delta")
    torch.testing.assert_close(lin[0].double(), M_ref, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(lin[0]).all()


def test_delta_rule_writes_a_known_segment_almost_not_at_all(rng):
    # Keys whose σ-features barely overlap (σ(-20) ≈ 2e-9): the memory recalls each value exactly,
    # so writing the same segment again adds (almost) nothing under the delta rule.
    T = D = 8
    k = torch.full((1, 1, T, D), -20.0)
    k[0, 0, torch.arange(T), torch.arange(T)] = 5.0
    v = torch.randn(1, 1, T, D, generator=rng)
    M1, z1 = memory_delta(sigma(k), v, None, None, "delta")
    dM2, dz2 = memory_delta(sigma(k), v, M1, z1, "delta")
    assert dM2.norm() / M1.norm() < 1e-6
    torch.testing.assert_close(dz2, z1)  # z still counts the keys
    dM_lin, _ = memory_delta(sigma(k), v, M1, z1, "linear")
    torch.testing.assert_close(M1 + dM_lin, 2 * M1)  # the linear rule doubles the contribution
    # one token of any key: recall is exact, so the second delta write is zero
    k1, v1 = torch.randn(1, 1, 1, D, generator=rng), torch.randn(1, 1, 1, D, generator=rng)
    M1, z1 = memory_delta(sigma(k1), v1, None, None, "delta")
    dM2, _ = memory_delta(sigma(k1), v1, M1, z1, "delta")
    assert dM2.abs().max() < 1e-5 * M1.abs().max()


def test_memory_size_is_fixed_by_the_model():
    e = tiny_engine()
    c = e.config
    short = e.ingest(list(range(5)), e.new_memory())
    long = e.ingest(list(range(90)) * 3, e.new_memory())
    expected = c.num_hidden_layers * c.num_key_value_heads * c.head_dim * (c.head_dim + 1) * 4
    assert short.nbytes() == long.nbytes() == expected == c.memory_floats() * 4
    assert long.tokens == 270


def test_snapshot_round_trip_is_bit_exact():
    e = tiny_engine()
    mem = e.ingest(list(range(40)), e.new_memory())
    mem.extra["source"] = "book.epub"
    back = Memory.from_bytes(mem.to_bytes(), expected_fingerprint=e.fingerprint)
    assert (back.fingerprint, back.update_rule, back.segment_length, back.tokens) == (
        e.fingerprint, "linear", 16, 40)
    assert back.extra == {"source": "book.epub"}
    for a, b in zip(mem.M + mem.z, back.M + back.z):
        assert a.dtype == b.dtype == torch.float32
        assert torch.equal(a, b)


def test_broken_snapshots_raise_clear_errors():
    e = tiny_engine()
    data = e.ingest(list(range(40)), e.new_memory()).to_bytes()
    with pytest.raises(SnapshotError, match="corrupted or truncated"):
        Memory.from_bytes(data[: len(data) // 2])
    with pytest.raises(SnapshotError, match="corrupted or truncated"):
        Memory.from_bytes(b"")
    flipped = bytearray(data)
    flipped[-3] ^= 0x40  # inside the tensor data
    with pytest.raises(SnapshotError, match="checksum"):
        Memory.from_bytes(bytes(flipped))
    other = tiny_engine(seed=1)
    with pytest.raises(SnapshotError, match="different model"):
        Memory.from_bytes(data, expected_fingerprint=other.fingerprint)
    with pytest.raises(SnapshotError, match="different model"):
        other.logits([1, 2, 3], Memory.from_bytes(data))
    from safetensors.torch import save

    with pytest.raises(SnapshotError, match="not an Infini Reader memory"):
        Memory.from_bytes(save({"x": torch.zeros(2)}))


def test_the_same_memory_always_gives_the_same_bytes():
    e = tiny_engine()
    mem = e.ingest(list(range(40)), e.new_memory())
    mem.extra = {"b": 1, "a": 2}
    assert mem.to_bytes() == mem.clone().to_bytes() == Memory.from_bytes(mem.to_bytes()).to_bytes()
