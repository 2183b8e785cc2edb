"""Temporal Perception Module: interpolation, NTP, frame embeddings, soft labels and sub-token decoding."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from momentor_jax.models import tpm

N, D = 5, 4


def _table(seed=0, n=N, d=D):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, d), jnp.float32)


def test_interpolation_hits_tokens_exactly_and_mixes_midpoints():
    table = _table()
    exact = tpm.interpolate(table, jnp.arange(N) / (N - 1))
    np.testing.assert_array_equal(np.asarray(exact), np.asarray(table))

    midpoints = tpm.interpolate(table, (jnp.arange(N - 1) + 0.5) / (N - 1))
    np.testing.assert_allclose(midpoints, (table[:-1] + table[1:]) / 2, rtol=1e-6, atol=1e-6)

    quarter = tpm.interpolate(table, jnp.float32(1.25 / (N - 1)))
    np.testing.assert_allclose(quarter, 0.75 * table[1] + 0.25 * table[2], rtol=1e-6, atol=1e-6)


def test_interpolation_clips_and_keeps_batch_shape():
    table = _table()
    p = jnp.array([[-0.5, 0.0, 1.0], [1.7, 0.5, 0.25]])
    out = tpm.interpolate(table, p)
    assert out.shape == (2, 3, D)
    np.testing.assert_array_equal(out[0, 0], table[0])
    np.testing.assert_array_equal(out[1, 0], table[-1])
    np.testing.assert_array_equal(out[1, 1], table[2])


def test_time_to_position_matches_the_design():
    floor, ceil, ratio = tpm.time_to_position(jnp.array([0.3, 0.5, 1.0]), N)
    np.testing.assert_array_equal(floor, [1, 2, 4])
    np.testing.assert_array_equal(ceil, [2, 2, 4])
    np.testing.assert_allclose(ratio, [0.2, 0.0, 0.0], atol=1e-6)


def test_propagation_matrix_values():
    r = np.asarray(tpm.propagation_matrix(4))
    expected = np.array([[2.0 ** -abs(i - j) for j in range(4)] for i in range(4)], np.float32)
    np.testing.assert_array_equal(r, expected)


def test_neighbor_propagation_forward_is_bitwise_identity():
    table = _table(1, n=7, d=6) * 123.456
    np.testing.assert_array_equal(np.asarray(tpm.neighbor_propagate(table)), np.asarray(table))
    np.testing.assert_array_equal(np.asarray(jax.jit(tpm.neighbor_propagate)(table)), np.asarray(table))


def test_neighbor_propagation_gradient_spreads_to_neighbours():
    table = _table(2, n=6, d=3)
    upstream = jax.random.normal(jax.random.PRNGKey(3), table.shape)
    grad = jax.grad(lambda w: jnp.sum(upstream * tpm.neighbor_propagate(w)))(table)
    # W' = W + RW - sg(RW): identity path plus the propagated path, as in the public `reparam`.
    r = np.array([[2.0 ** -abs(i - j) for j in range(6)] for i in range(6)])
    expected = np.asarray(upstream) + r.T @ np.asarray(upstream)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)

    # A gradient reaching only row 2 reaches row j with weight 2^-|2-j| (plus the identity on row 2).
    onehot = jnp.zeros_like(table).at[2].set(1.0)
    grad = jax.grad(lambda w: jnp.sum(onehot * tpm.neighbor_propagate(w)))(table)
    np.testing.assert_allclose(grad[:, 0], [0.25, 0.5, 2.0, 0.5, 0.25, 0.125], rtol=1e-6)


def test_frame_embeddings_when_frames_equal_tokens():
    e_in, e_out = _table(4), _table(5)
    out = tpm.frame_temporal_embeddings(e_in, e_out, N)
    np.testing.assert_array_equal(np.asarray(out), np.asarray((e_in + e_out) / 2))


def test_frame_embeddings_when_frames_differ_from_tokens():
    e_in, e_out = _table(4), _table(5)
    mean = (e_in + e_out) / 2
    # M = 3 frames over N = 5 tokens: frames at p = 0, 0.5, 1 -> tokens 0, 2, 4.
    np.testing.assert_allclose(tpm.frame_temporal_embeddings(e_in, e_out, 3), mean[::2], rtol=1e-6, atol=1e-6)
    # M = 4: frame 1 at p = 1/3 -> e = 4/3: (2/3) row 1 + (1/3) row 2.
    out = tpm.frame_temporal_embeddings(e_in, e_out, 4)
    assert out.shape == (4, D)
    np.testing.assert_allclose(out[1], (2 / 3) * mean[1] + (1 / 3) * mean[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[3], mean[4], rtol=1e-6, atol=1e-6)


def test_soft_label_cross_entropy_matches_hand_computation():
    targets = tpm.soft_temporal_targets(jnp.array([0.3, 0.5]), N)
    np.testing.assert_allclose(targets, [[0, 0.8, 0.2, 0, 0], [0, 0, 1.0, 0, 0]], atol=1e-6)

    logits = jnp.array([0.0, 1.0, 2.0, 0.0, 0.0])
    loss = -jnp.sum(targets[0] * jax.nn.log_softmax(logits))
    # log Z = log(3 + e + e^2); the target puts 0.8 on logit 1 and 0.2 on logit 2.
    expected = math.log(3 + math.e + math.e ** 2) - (0.8 * 1.0 + 0.2 * 2.0)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_public_on_token_targets_are_all_zero_rows():
    # 0.5 and 1.0 sit on tokens 2 and 4 (as does 0.25 + 1e-6, snapped); 0.3 lies between tokens 1 and 2.
    times = jnp.array([0.3, 0.5, 1.0, 0.25 + 1e-6])
    ours = tpm.soft_temporal_targets(times, N)
    public = tpm.soft_temporal_targets(times, N, on_token="zeros")
    np.testing.assert_array_equal(public[0], ours[0])
    np.testing.assert_array_equal(public[1:], np.zeros((3, N)))
    np.testing.assert_array_equal(ours[1:], np.eye(N)[[2, 4, 1]])


def test_table_initializers_public_and_torch_default():
    key = jax.random.PRNGKey(0)
    shape = (300, 256)
    public_in, public_out = (init(key, shape, jnp.float32) for init in tpm.table_initializers("public"))
    for table in (public_in, public_out):
        assert abs(float(jnp.std(table)) - 0.02) < 0.001 and abs(float(jnp.mean(table))) < 0.001
    wide_in, wide_out = (init(key, shape, jnp.float32) for init in tpm.table_initializers("torch_default"))
    assert abs(float(jnp.std(wide_in)) - 1.0) < 0.02
    assert float(jnp.max(jnp.abs(wide_out))) <= 1 / 16 and abs(float(jnp.std(wide_out)) - 1 / 16 / 3 ** 0.5) < 1e-3
    module = tpm.TemporalPerception(num_tokens=300, embed_dim=256, temporal_init="public")
    params = nn.meta.unbox(module.init(key, jnp.zeros(()))["params"])
    assert abs(float(jnp.std(params["input_embedding"])) - 0.02) < 0.001


def test_decode_time_round_trips_token_to_time():
    for k in range(N):
        logits = jnp.full((N,), -1e4).at[k].set(5.0)
        p = tpm.decode_time(logits)
        np.testing.assert_allclose(p, tpm.token_to_time(k, N), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(tpm.time_to_position(p, N)[0], k)


def test_decode_time_refines_between_tokens():
    tie = jnp.full((N,), -1e4).at[2].set(3.0).at[3].set(3.0)
    np.testing.assert_allclose(tpm.decode_time(tie), 2.5 / (N - 1), rtol=1e-6)

    logits = jnp.array([0.0, 1.0, 3.0, 2.0, -1.0])
    w = np.exp([1.0, 3.0, 2.0])
    expected = (w @ np.array([1.0, 2.0, 3.0]) / w.sum()) / (N - 1)
    np.testing.assert_allclose(tpm.decode_time(logits), expected, rtol=1e-6)

    # At the edge only the neighbour that exists counts; batch shapes are kept.
    edge = jnp.array([[2.0, 2.0, -1e4, -1e4, -1e4], [-1e4, -1e4, -1e4, 0.0, 0.0]])
    np.testing.assert_allclose(tpm.decode_time(edge), [0.5 / (N - 1), 3.5 / (N - 1)], rtol=1e-6)


def test_module_parameters_and_outputs():
    module = tpm.TemporalPerception(num_tokens=16, embed_dim=8)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((2,)))
    params = variables["params"]
    assert set(params) == {"input_embedding", "output_embedding"}
    assert params["input_embedding"].names == tpm.TABLE_AXES
    table = nn.meta.unbox(params)["input_embedding"]
    assert table.shape == (16, 8)
    assert 0.8 < float(jnp.std(table)) < 1.2                                    # E_in ~ N(0, 1)
    output_table = nn.meta.unbox(params)["output_embedding"]
    bound = 1.0 / 8 ** 0.5                                                     # E_out ~ U(+-1/sqrt(D))
    assert float(jnp.abs(output_table).max()) <= bound
    assert float(jnp.std(output_table)) > 0.5 * bound / 3 ** 0.5

    hidden = jnp.ones((2, 3, 8))
    logits = module.apply(variables, hidden, method=module.logits)
    assert logits.shape == (2, 3, 16) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, hidden @ nn.meta.unbox(params)["output_embedding"].T, rtol=1e-5)
    tokens = module.apply(variables, jnp.array([0, 15]), method=module.embed_tokens)
    np.testing.assert_array_equal(tokens, table[jnp.array([0, 15])])
    times = module.apply(variables, jnp.array([0.0, 1.0]), method=module.embed_times)
    np.testing.assert_array_equal(times, tokens)
    frames = module.apply(variables, 16, method=module.frame_embeddings)
    assert frames.shape == (16, 8)


def test_module_without_propagation_has_no_neighbour_gradient():
    module = tpm.TemporalPerception(num_tokens=6, embed_dim=2, neighbor_propagation=False)
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), jnp.zeros(()))["params"])
    grad = jax.grad(lambda p: jnp.sum(module.apply({"params": p}, jnp.array([2]), method=module.embed_tokens)))(params)
    np.testing.assert_array_equal(grad["input_embedding"][:, 0], [0, 0, 1, 0, 0, 0])
