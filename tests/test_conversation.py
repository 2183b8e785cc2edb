"""Template momentor_v1 and encode_example / build_prompt: whole-prompt ids, masks, times, truncation."""
import json
import os

import numpy as np
import pytest

from momentor_jax import constants
from momentor_jax.data import conversation, encode, moment10m
from momentor_jax.data import synthetic
from momentor_jax.data import tokenizer as tokenizer_lib

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "moment10m_raw.json")
NUM_FRAMES = 4
DURATION = 60.0
MAX_LENGTH = 512


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("sp") / "sp"
    path = tokenizer_lib.train_sentencepiece(synthetic.tokenizer_texts(), str(prefix), 300)
    return tokenizer_lib.MomentorTokenizer(path, 16)


@pytest.fixture(scope="module")
def reference(tokenizer):
    """transformers 5.x slow (sentencepiece, legacy) tokenizer with the same added special tokens."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
    ref = SentencePieceBackend(vocab_file=str(tokenizer.model_path), bos_token="<s>", eos_token="</s>",
                               unk_token="<unk>", legacy=True)
    ref.add_tokens(tokenizer.added_tokens, special_tokens=True)
    return ref


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    target = tmp_path_factory.mktemp("converted") / "examples.jsonl"
    moment10m.convert_file(FIXTURE, str(target), apply_filter=False, log=lambda message: None)
    with open(target) as f:
        return [json.loads(line) for line in f]


def full_prompt_text(example, num_frames=NUM_FRAMES, system_prompt=conversation.SYSTEM_PROMPT):
    turns = [(t["User"], t["Assistant"]) for t in example["conversations"]]
    turns[0] = ("<video>\n" + turns[0][0], turns[0][1])
    return conversation.expand_video_marker(conversation.get_prompt(turns, system_prompt), num_frames)


def test_system_prompt_is_the_public_one_byte_for_byte():
    assert conversation.SYSTEM_PROMPT == (
        "You are Momentor, a large vision-language assistant. You are able to understand the video content that "
        "the user provides, and assist the user with a variety of tasks with segment-level comprehension and "
        "localization using natural language.Follow the instructions carefully and explain your answers in detail "
        "based on the provided video.")


def test_prompt_is_vicuna_v1_1_style():
    turns = [("<video>\nq1", "a1"), ("q2", "a2")]
    assert conversation.get_prompt(turns, "SYS") == "SYS USER: <video>\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"
    assert (conversation.get_prompt([("q1", "a1"), ("q2", None)], "SYS")
            == "SYS USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:")
    with pytest.raises(ValueError, match="only the last turn"):
        conversation.get_prompt([("q1", None), ("q2", "a2")])
    assert conversation.expand_video_marker("<video>\nq", 2) == "<vid_start><vid_patch><vid_patch><vid_end>\nq"


def test_whole_prompt_ids_equal_transformers_tokenization(examples, tokenizer, reference):
    assert len(examples) == 13
    for example in examples:
        out = encode.encode_example(example, tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
        n = int(out["segment_ids"].sum())
        expected = [tokenizer.bos_id] + reference.encode(full_prompt_text(example), add_special_tokens=False)
        assert out["input_ids"][:n].tolist() == expected, example


def test_whole_prompt_ids_in_strip_mode_equal_the_public_pins_tokenization(examples, tokenizer):
    """added_token_whitespace="strip" (transformers 4.33's stripping around added tokens): the pieces encoded one
    by one still give the whole prompt's ids."""
    from transformers import AddedToken
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
    stripping = tokenizer_lib.MomentorTokenizer(tokenizer.model_path, 16, added_token_whitespace="strip")
    ref = SentencePieceBackend(vocab_file=str(tokenizer.model_path), bos_token="<s>", eos_token="</s>",
                               unk_token="<unk>", legacy=True)
    ref.add_tokens([AddedToken(t, lstrip=True, rstrip=True, special=True, normalized=False)
                    for t in stripping.added_tokens], special_tokens=True)
    differ = 0
    for example in examples:
        out = encode.encode_example(example, stripping, DURATION, NUM_FRAMES, MAX_LENGTH)
        n = int(out["segment_ids"].sum())
        expected = [stripping.bos_id] + ref.encode(full_prompt_text(example), add_special_tokens=False)
        assert out["input_ids"][:n].tolist() == expected, example
        kept = encode.encode_example(example, tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
        differ += kept["input_ids"].tolist() != out["input_ids"].tolist()
    assert differ == len(examples)  # "USER: <vid_start>" is in every prompt


def test_loss_mask_covers_exactly_the_replies(examples, tokenizer):
    for example in examples:
        out = encode.encode_example(example, tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
        supervised = out["targets"][out["loss_mask"] == 1]
        replies = "".join(turn["Assistant"] + "</s>" for turn in example["conversations"])
        assert tokenizer.decode(supervised) == replies
        # targets are the next input ids where supervised, 0 elsewhere
        n = int(out["segment_ids"].sum())
        np.testing.assert_array_equal(out["targets"][:n - 1],
                                      np.where(out["loss_mask"][:n - 1] == 1, out["input_ids"][1:n], 0))
        assert out["loss_mask"][n - 2] == 1 and out["targets"][n - 2] == tokenizer.eos_id
        assert out["loss_mask"][n - 1:].sum() == 0 and out["targets"][n - 1:].sum() == 0


def test_fixed_shapes_padding_and_positions(examples, tokenizer):
    out = encode.encode_example(examples[0], tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
    assert set(out) == set(constants.BATCH_KEYS) - {"frames", "features", "durations", "num_videos"}
    for key, value in out.items():
        assert value.shape == (MAX_LENGTH,), key
    assert out["input_ids"].dtype == np.int32 and out["loss_mask"].dtype == np.float32
    assert out["placeholder_times"].dtype == np.float32 and out["positions"].dtype == np.int32
    n = int(out["segment_ids"].sum())
    np.testing.assert_array_equal(out["segment_ids"], (np.arange(MAX_LENGTH) < n).astype(np.int32))
    np.testing.assert_array_equal(out["positions"][:n], np.arange(n))
    for key in ("input_ids", "positions", "placeholder_times"):
        assert not out[key][n:].any(), key
    ids = out["input_ids"].tolist()
    at = ids.index(tokenizer.special_ids["vid_start"])
    assert ids[at:at + NUM_FRAMES + 2] == encode.video_span_ids(tokenizer, NUM_FRAMES).tolist()
    assert ids.count(tokenizer.special_ids["vid_patch"]) == NUM_FRAMES


def test_placeholder_times_line_up_with_placeholders(tokenizer):
    example = {"id": "v", "conversations": [
        {"User": "From <TEMP-INPUT> to <TEMP-INPUT>, and at <TEMP-INPUT>?",
         "Assistant": "<TEMP-OUTPUT> to <TEMP-OUTPUT>."},
        {"User": "Again?", "Assistant": "Yes, <TEMP-OUTPUT> to <TEMP-OUTPUT>."}],
        "temporal_input_times": [3.0, 6.0, 62.0], "temporal_output_times": [0.0, 15.0, 30.0, 45.0]}
    out = encode.encode_example(example, tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
    ids = out["input_ids"]
    # 2 s past the 60 s end is within the tolerance: clipped (and counted by the loader)
    np.testing.assert_allclose(out["placeholder_times"][ids == tokenizer.temp_input_id], [0.05, 0.1, 1.0])
    assert encode.count_past_end(example, DURATION) == 1
    with pytest.raises(ValueError, match=r"example v: temporal_input_times\[2\] = 90.0 s is past the video's end"):
        encode.encode_example(dict(example, temporal_input_times=[3.0, 6.0, 90.0]), tokenizer, DURATION, NUM_FRAMES,
                              MAX_LENGTH)
    np.testing.assert_allclose(out["placeholder_times"][ids == tokenizer.temp_output_id], [0.0, 0.25, 0.5, 0.75])
    assert not out["placeholder_times"][(ids != tokenizer.temp_input_id) & (ids != tokenizer.temp_output_id)].any()
    is_output_target = out["targets"] == tokenizer.temp_output_id
    assert is_output_target.sum() == 4 and out["loss_mask"][is_output_target].all()
    np.testing.assert_allclose(out["target_times"][is_output_target], [0.0, 0.25, 0.5, 0.75])
    assert not out["target_times"][~is_output_target].any()


def test_truncation_drops_whole_trailing_turns(examples, tokenizer):
    two_turns = next(e for e in examples if len(e["conversations"]) == 2)
    full = encode.encode_example(two_turns, tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
    first_only = dict(two_turns, conversations=two_turns["conversations"][:1], temporal_output_times=[])
    first = encode.encode_example(first_only, tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
    n_full, n_first = int(full["segment_ids"].sum()), int(first["segment_ids"].sum())
    assert n_first < n_full
    for max_length in (n_first, n_full - 1):
        cut = encode.encode_example(two_turns, tokenizer, DURATION, NUM_FRAMES, max_length)
        for key in cut:
            np.testing.assert_array_equal(cut[key], first[key][:max_length], err_msg=key)
    exact = encode.encode_example(two_turns, tokenizer, DURATION, NUM_FRAMES, n_full)
    assert int(exact["segment_ids"].sum()) == n_full
    np.testing.assert_array_equal(exact["placeholder_times"], full["placeholder_times"][:n_full])
    with pytest.raises(ValueError, match=r"example vidB: the first turn needs"):
        encode.encode_example(two_turns, tokenizer, DURATION, NUM_FRAMES, n_first - 1)


def test_placeholder_and_time_counts_must_agree(tokenizer):
    example = {"id": "clip42", "conversations": {"User": "At <TEMP-INPUT>?", "Assistant": "Yes."},
               "temporal_input_times": [1.0, 2.0], "temporal_output_times": []}
    with pytest.raises(ValueError, match=r"example clip42: 1 <TEMP-INPUT> placeholders but 2"):
        encode.encode_example(example, tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
    example = {"id": "clip43", "conversations": [{"User": "<video> twice", "Assistant": "No."}]}
    with pytest.raises(ValueError, match=r"example clip43: turn 0 contains <video>"):
        encode.encode_example(example, tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
    with pytest.raises(ValueError, match=r"example clip44: turn 0 has no 'Assistant'"):
        encode.encode_example({"id": "clip44", "conversations": [{"User": "hi"}]}, tokenizer, DURATION,
                              NUM_FRAMES, MAX_LENGTH)


def test_text_format_examples_use_the_same_path(tmp_path, tokenizer, reference):
    target = tmp_path / "text.jsonl"
    moment10m.convert_file(FIXTURE, str(target), fmt="text", seed=3, log=lambda message: None)
    with open(target) as f:
        text_examples = [json.loads(line) for line in f]
    for example in text_examples:
        out = encode.encode_example(example, tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
        n = int(out["segment_ids"].sum())
        expected = [tokenizer.bos_id] + reference.encode(full_prompt_text(example), add_special_tokens=False)
        assert out["input_ids"][:n].tolist() == expected
        assert not out["placeholder_times"].any() and not out["target_times"].any()


def test_short_system_prompt_for_tiny_models(examples, tokenizer, reference):
    out = encode.encode_example(examples[0], tokenizer, DURATION, NUM_FRAMES, 128, system_prompt="Hi.")
    n = int(out["segment_ids"].sum())
    expected = [tokenizer.bos_id] + reference.encode(full_prompt_text(examples[0], system_prompt="Hi."),
                                                     add_special_tokens=False)
    assert out["input_ids"][:n].tolist() == expected


def test_build_prompt_for_generation(examples, tokenizer, reference):
    two_turns = next(e for e in examples if len(e["conversations"]) == 2)
    prompt = encode.build_prompt(two_turns["conversations"], tokenizer, NUM_FRAMES, for_generation=True,
                                 duration=DURATION, temporal_input_times=two_turns["temporal_input_times"],
                                 temporal_output_times=two_turns["temporal_output_times"])
    turns = [(t["User"], t["Assistant"]) for t in two_turns["conversations"]]
    turns[0] = ("<video>\n" + turns[0][0], turns[0][1])
    turns[-1] = (turns[-1][0], None)
    text = conversation.expand_video_marker(conversation.get_prompt(turns), NUM_FRAMES)
    assert text.endswith("When else does the chef cut onions? ASSISTANT:")
    ids = prompt["input_ids"]
    assert ids.tolist() == [tokenizer.bos_id] + reference.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids).endswith(" ASSISTANT:")
    np.testing.assert_allclose(prompt["placeholder_times"][ids == tokenizer.temp_input_id],
                               np.array(two_turns["temporal_input_times"]) / DURATION, rtol=1e-6)
    assert (ids == tokenizer.temp_output_id).sum() == 0  # the last reply's times are not in the prompt

    full = encode.build_prompt(two_turns["conversations"], tokenizer, NUM_FRAMES, duration=DURATION,
                               temporal_input_times=two_turns["temporal_input_times"],
                               temporal_output_times=two_turns["temporal_output_times"])
    trained = encode.encode_example(two_turns, tokenizer, DURATION, NUM_FRAMES, MAX_LENGTH)
    n = len(full["input_ids"])
    np.testing.assert_array_equal(full["input_ids"], trained["input_ids"][:n])
    np.testing.assert_array_equal(full["placeholder_times"], trained["placeholder_times"][:n])
    # the generation prompt is a prefix of the training sequence
    np.testing.assert_array_equal(ids, trained["input_ids"][:len(ids)])
