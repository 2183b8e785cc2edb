"""KV-cache generation equals greedy decoding by full forwards, on a tiny random Momentor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentor_jax import constants
from momentor_jax.inference import generate
from momentor_jax.models import config as model_configs
from momentor_jax.models import tpm as tpm_lib
from momentor_jax.models.momentor import Momentor, example_batch

MAX_NEW = 10


@pytest.fixture(scope="module")
def tiny_model():
    config = model_configs.tiny(use_cached_features=True)
    params = Momentor(config).init(jax.random.PRNGKey(0), example_batch(config, 1, 16))["params"]
    params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                          is_leaf=lambda x: hasattr(x, "unbox"))
    return config, params


def _prompts(config):
    """Two right-padded prompts of different lengths, each holding the video span and a <TEMP-INPUT>."""
    special = constants.special_token_ids(config.llm.vocab_size)
    rng = np.random.default_rng(0)
    span = [special["vid_start"]] + [special["vid_patch"]] * config.num_frames + [special["vid_end"]]
    rows = []
    for text_len in (5, 11):
        ids = [1] + span + list(rng.integers(3, 290, text_len)) + [special["temp_input"], 7]
        rows.append(ids)
    width = max(map(len, rows)) + 3
    input_ids = np.zeros((2, width), np.int32)
    placeholder_times = np.zeros((2, width), np.float32)
    for r, ids in enumerate(rows):
        input_ids[r, :len(ids)] = ids
        placeholder_times[r, len(ids) - 2] = 0.25 + 0.5 * r
    lengths = np.array([len(r) for r in rows], np.int32)
    features = rng.normal(size=(2, config.num_frames, config.vision_feature_dim)).astype(np.float32)
    return input_ids, placeholder_times, lengths, features


def _reference(config, params, input_ids, placeholder_times, length, features, eos_id):
    """Greedy decoding of one row with a full forward over prompt + generated tokens at every step (no cache).

    The sequence is right-padded to a fixed width so the forward compiles once; causal attention keeps the last
    real position independent of the padding.
    """
    model = Momentor(config)
    vocab = config.llm.vocab_size
    width = length + MAX_NEW
    banned = np.asarray(generate._banned_ids(config))

    @jax.jit
    def last_logits(params, tokens, times, count):
        v = {"params": params}
        video = model.apply(v, features[None], method=Momentor.encode_video)
        prompt = model.apply(v, input_ids[None, :length], placeholder_times[None, :length], video,
                             method=Momentor.embed_inputs)
        fed = model.apply(v, tokens[None], times[None], method=Momentor.embed_generated)
        embeds = jnp.concatenate([prompt, fed], axis=1)
        segment_ids = (jnp.arange(width) < length + count).astype(jnp.int32)[None]
        logits, _ = model.apply(v, embeds, jnp.arange(width)[None], segment_ids, method=Momentor.forward_embeds)
        return logits[0, length + count - 1]

    tokens, times = np.zeros(MAX_NEW, np.int32), np.zeros(MAX_NEW, np.float32)
    for step in range(MAX_NEW):
        last = np.asarray(last_logits(params, tokens, times, step)).copy()
        last[banned] = -np.inf
        token = int(np.argmax(last))
        tokens[step] = token
        times[step] = float(tpm_lib.decode_time(jnp.asarray(last[vocab:]))) if token >= vocab else 0.0
        if token == eos_id:
            return list(tokens[:step + 1]), list(times[:step + 1])
    return list(tokens), list(times)


@pytest.mark.parametrize("temporal_boost", [1.0, 40.0])
def test_cached_generation_matches_full_forwards(tiny_model, temporal_boost):
    config, params = tiny_model
    # A larger E_out makes the random model write temporal tokens, so their refined feed-back is exercised too.
    params = dict(params, tpm=dict(params["tpm"], output_embedding=params["tpm"]["output_embedding"] * temporal_boost))
    input_ids, placeholder_times, lengths, features = _prompts(config)
    eos_id = 2
    out = generate.generate_tokens(params, input_ids, placeholder_times, lengths, features, jax.random.PRNGKey(0),
                                   config=config, sampling=generate.SamplingConfig(max_new_tokens=MAX_NEW),
                                   eos_id=eos_id)
    tokens, times = np.asarray(out["tokens"]), np.asarray(out["times"])
    saw_temporal = False
    for row in range(2):
        ref_tokens, ref_times = _reference(config, params, input_ids[row], placeholder_times[row], lengths[row],
                                           features[row], eos_id)
        n = len(ref_tokens)
        np.testing.assert_array_equal(tokens[row, :n], ref_tokens)
        np.testing.assert_allclose(times[row, :n], ref_times, atol=1e-5)
        assert int(out["num_tokens"][row]) == n
        saw_temporal |= any(t >= config.llm.vocab_size for t in ref_tokens)
    if temporal_boost > 1:
        assert saw_temporal, "the boosted model should write temporal tokens"


def test_decoding_layout_unrolls_the_llm_only_and_decodes_the_same_tokens(tiny_model):
    config, params = tiny_model
    host = jax.tree.map(np.asarray, params)
    unrolled, decode_config = generate.decoding_layout(host, config)
    assert not decode_config.llm.scan_layers and decode_config.vision == config.vision
    assert "layers" not in unrolled["llm"] and "layers_1" in unrolled["llm"]
    kernel = unrolled["llm"]["layers_1"]["mlp"]["up_proj"]["kernel"]
    assert np.shares_memory(kernel, host["llm"]["layers"]["mlp"]["up_proj"]["kernel"])  # a view, no copy
    assert generate.decoding_layout(unrolled, decode_config) == (unrolled, decode_config)
    input_ids, placeholder_times, lengths, features = _prompts(config)
    outs = [generate.generate_tokens(p, input_ids, placeholder_times, lengths, features, jax.random.PRNGKey(0),
                                     config=c,
                                     sampling=generate.SamplingConfig(max_new_tokens=MAX_NEW), eos_id=2)
            for p, c in ((params, config), (unrolled, decode_config))]
    jax.tree.map(np.testing.assert_array_equal, *outs)


def test_sampling_stays_in_vocabulary_and_avoids_placeholders(tiny_model):
    config, params = tiny_model
    input_ids, placeholder_times, lengths, features = _prompts(config)
    sampling = generate.SamplingConfig(max_new_tokens=MAX_NEW, temperature=1.0, top_p=0.9)
    out = generate.generate_tokens(params, input_ids, placeholder_times, lengths, features, jax.random.PRNGKey(1),
                                   config=config, sampling=sampling, eos_id=2)
    tokens = np.asarray(out["tokens"])
    assert tokens.min() >= 0 and tokens.max() < config.llm.vocab_size + config.num_temporal_tokens
    assert not np.isin(tokens, generate._banned_ids(config)).any()
    times = np.asarray(out["times"])
    assert np.all((times >= 0) & (times <= 1))


def test_top_p_keeps_only_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.6, 0.3, 0.05, 0.05]]))
    sampling = generate.SamplingConfig(temperature=1.0, top_p=0.8)
    picks = {int(generate._pick_tokens(logits, jax.random.PRNGKey(i), sampling)[0]) for i in range(40)}
    assert picks == {0, 1}


def test_render_answer_writes_seconds_and_windows():
    class FakeTokenizer:
        vocab_size, eos_id = 100, 2

        def decode(self, ids, skip_special_tokens=True):
            return {(10,): " to ", (11, 12): ": a red circle", (13,): "from"}[tuple(ids)]

    vocab = 100
    answer = generate.render_answer([13, vocab + 3, 10, vocab + 9, 11, 12, 2, 50], [0, 0.2, 0, 0.6, 0, 0, 0, 0],
                                    20.0, FakeTokenizer())
    assert answer.text == "from 4.0s to 12.0s: a red circle"
    assert answer.times == [4.0, 12.0]
    assert answer.windows == [(4.0, 12.0)]
