"""MomentorTokenizer: id layout, equality with transformers' sentencepiece tokenizer, save/load, test models."""
import os
import pickle

import pytest
import sentencepiece as spm

from momentor_jax import constants
from momentor_jax.data import synthetic
from momentor_jax.data import tokenizer as tokenizer_lib

NUM_TEMPORAL = 16

VARIED_STRINGS = [
    "Hello world",
    " leading space",
    "trailing spaces  ",
    "  ",
    "",
    "a<TEMP-INPUT>b",
    "from <TEMP-INPUT> to <TEMP-INPUT>.",
    "<TEMP-OUTPUT> to <TEMP-OUTPUT>: a man runs <TEMP-OUTPUT> to <TEMP-OUTPUT>: he stops",
    "x\n\ny\n",
    "\t tab <vid_end>  \n",
    "<vid_start><vid_patch><vid_patch><vid_end>\nWhat happens?",
    "<video>\nWhen does it happen?",
    "12.5s to 007.25 seconds, 1999",
    "é ü ß 你好 🙂 naïve café",
    "</s>USER: hi</s>",
    "<s>x<unk>y",
    "<TEMP-000><TEMP-015><TEMP-016><TEMP-3>",
    "<<vid_start>> <notatoken> <TEMP-INPUT",
    "USER: <0.12, 0.46><TEMP-INPUT>? ASSISTANT: A red ball.</s>",
]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def model_path(request, tmp_path_factory):
    prefix = tmp_path_factory.mktemp(f"sp_{request.param}") / "sp"
    return tokenizer_lib.train_sentencepiece(synthetic.tokenizer_texts(), str(prefix), 300, model_type=request.param)


@pytest.fixture(scope="module")
def tokenizer(model_path):
    return tokenizer_lib.MomentorTokenizer(model_path, NUM_TEMPORAL)


def slow_reference(model_path, added_tokens, strip=False):
    """transformers 5.x slow (sentencepiece) tokenizer, legacy=True, the added tokens as special tokens; `strip`:
    as AddedToken(lstrip=True, rstrip=True), which gives the ids of transformers 4.33.3's default stripping (checked
    with 4.33.3 itself on these strings and the converted fixture prompts, README)."""
    from transformers import AddedToken
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
    ref = SentencePieceBackend(vocab_file=str(model_path), bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                               legacy=True)
    if strip:
        added_tokens = [AddedToken(t, lstrip=True, rstrip=True, special=True, normalized=False) for t in added_tokens]
    ref.add_tokens(added_tokens, special_tokens=True)
    return ref


@pytest.fixture(scope="module")
def reference(model_path, tokenizer):
    return slow_reference(model_path, tokenizer.added_tokens)


def test_train_sentencepiece_is_llama_like(model_path):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    assert sp.get_piece_size() == 300
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.id_to_piece(1) == "<s>" and sp.id_to_piece(2) == "</s>"
    assert sp.encode("你", out_type=str) == ["▁", "<0xE4>", "<0xBD>", "<0xA0>"]  # byte fallback
    digit_ids = sp.encode("123456 7890")
    assert all(sum(c.isdigit() for c in sp.decode([i])) <= 1 for i in digit_ids)  # split_digits


def test_id_layout(tokenizer):
    base = 300
    assert tokenizer.base_vocab_size == base
    assert tokenizer.vocab_size == base + constants.NUM_ADDED_TOKENS
    assert tokenizer.total_size == tokenizer.vocab_size + NUM_TEMPORAL + 1
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    for i, token in enumerate(constants.ADDED_TOKENS):
        assert tokenizer.token_to_id(token) == base + i
    assert tokenizer.special_ids == constants.special_token_ids(tokenizer.vocab_size)
    assert tokenizer.temp_input_id == tokenizer.special_ids["temp_input"]
    assert tokenizer.temp_output_id == tokenizer.special_ids["temp_output"]
    for k in (0, 7, NUM_TEMPORAL - 1):
        assert tokenizer.temporal_token_id(k) == tokenizer.vocab_size + k
        assert tokenizer.token_to_id(constants.TEMPORAL_TOKEN_FORMAT.format(k)) == tokenizer.vocab_size + k
        assert tokenizer.id_to_token(tokenizer.vocab_size + k) == constants.TEMPORAL_TOKEN_FORMAT.format(k)
    assert tokenizer.video_token_id == tokenizer.vocab_size + NUM_TEMPORAL
    with pytest.raises(ValueError):
        tokenizer.temporal_token_id(NUM_TEMPORAL)


@pytest.mark.parametrize("text", VARIED_STRINGS)
def test_ids_equal_transformers_slow_tokenizer(tokenizer, reference, text):
    expected = [reference.bos_token_id] + reference.encode(text, add_special_tokens=False)
    assert tokenizer.encode(text) == expected
    assert tokenizer.encode(text, add_bos=False) == expected[1:]


def test_added_tokens_are_never_split(tokenizer):
    ids = tokenizer.encode("<TEMP-INPUT><TEMP-OUTPUT><vid_patch><TEMP-003><video></s>", add_bos=False)
    assert ids == [tokenizer.temp_input_id, tokenizer.temp_output_id, tokenizer.special_ids["vid_patch"],
                   tokenizer.temporal_token_id(3), tokenizer.video_token_id, tokenizer.eos_id]


@pytest.mark.parametrize("text", [s for s in VARIED_STRINGS if "<unk>" not in s and "<s>" not in s])
def test_decode_inverts_encode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_bos=False)) == text
    assert tokenizer.decode(tokenizer.encode(text)) == "<s>" + text


def test_decode_skip_special_tokens(tokenizer):
    ids = tokenizer.encode("a man<TEMP-OUTPUT> runs</s>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a man runs"
    with pytest.raises(ValueError, match="outside"):
        tokenizer.decode([tokenizer.total_size])


@pytest.mark.parametrize("head,tail", [("USER: what? ASSISTANT:", " A man runs."),
                                       ("ASSISTANT:", " <TEMP-OUTPUT> to <TEMP-OUTPUT>."),
                                       ("ASSISTANT:", "  two spaces"),
                                       ("x:", " \n newline")])
def test_continued_text_encodes_like_the_whole(tokenizer, head, tail):
    whole = tokenizer.encode(head + tail, add_bos=False)
    assert tokenizer.encode(head, add_bos=False) + tokenizer.encode(tail, add_bos=False, continues_text=True) == whole


def test_save_and_load(tokenizer, model_path, tmp_path):
    tokenizer.save(tmp_path / "tok")
    saved_model = tmp_path / "tok" / tokenizer_lib.MODEL_FILENAME
    assert saved_model.read_bytes() == open(model_path, "rb").read()
    loaded = tokenizer_lib.MomentorTokenizer.load(tmp_path / "tok")
    assert loaded.num_temporal_tokens == NUM_TEMPORAL and loaded.vocab_size == tokenizer.vocab_size
    for text in VARIED_STRINGS:
        assert loaded.encode(text) == tokenizer.encode(text)
    (tmp_path / "tok" / tokenizer_lib.ADDED_TOKENS_FILENAME).write_text("{}")
    with pytest.raises(ValueError, match="added-token file"):
        tokenizer_lib.MomentorTokenizer.load(tmp_path / "tok")


def test_pickles_for_loader_workers(tokenizer):
    clone = pickle.loads(pickle.dumps(tokenizer))
    for text in VARIED_STRINGS:
        assert clone.encode(text) == tokenizer.encode(text)


# The public tokenizer pin (transformers 4.33) differs from ours first at "USER: <vid_start>", then at the spaces
# around <TEMP-*> and the newline after <vid_end>.
STRIP_STRINGS = VARIED_STRINGS + [
    "USER: <vid_start>",
    "USER: <vid_start><vid_patch><vid_end>\nWhat happens? ASSISTANT:",
    " <TEMP-OUTPUT> to <TEMP-OUTPUT>: a man runs</s>",
    "a man  <TEMP-OUTPUT>  \n to\t<TEMP-OUTPUT>",
    "<vid_end>\n\nthe dog",
    "ASSISTANT: a man runs </s>USER: next",
]


@pytest.fixture(scope="module")
def stripping(model_path):
    return tokenizer_lib.MomentorTokenizer(model_path, NUM_TEMPORAL, added_token_whitespace="strip")


@pytest.mark.parametrize("text", STRIP_STRINGS)
def test_strip_mode_equals_the_public_pins_tokenization(stripping, model_path, text):
    reference = slow_reference(model_path, stripping.added_tokens, strip=True)
    assert stripping.encode(text) == [reference.bos_token_id] + reference.encode(text, add_special_tokens=False)


def test_strip_mode_drops_the_whitespace_next_to_added_tokens_only(stripping, tokenizer):
    special = stripping.special_ids
    assert stripping.encode("USER: <vid_start>") == tokenizer.encode("USER:") + [special["vid_start"]]
    assert tokenizer.encode("USER: <vid_start>") != stripping.encode("USER: <vid_start>")
    assert (stripping.encode("<vid_end>\nWhat", add_bos=False)
            == [special["vid_end"]] + tokenizer.encode("What", add_bos=False))
    temp_output = stripping.temp_output_id
    assert (stripping.encode(" <TEMP-OUTPUT> to <TEMP-OUTPUT>: x", add_bos=False)
            == [temp_output] + tokenizer.encode("to", add_bos=False) + [temp_output]
            + tokenizer.encode(": x", add_bos=False))
    # </s> and <s> keep their neighbours' whitespace, as in 4.33 (AddedTokens with lstrip = rstrip = False).
    assert stripping.encode("x </s> y") == tokenizer.encode("x </s> y")
    assert stripping.decode(stripping.encode("a <TEMP-INPUT> b", add_bos=False)) == "a<TEMP-INPUT>b"


def test_strip_mode_survives_pickling_and_load(stripping, tmp_path):
    clone = pickle.loads(pickle.dumps(stripping))
    stripping.save(tmp_path / "tok")
    loaded = tokenizer_lib.MomentorTokenizer.load(tmp_path / "tok", added_token_whitespace="strip")
    for other in (clone, loaded):
        assert other.added_token_whitespace == "strip"
        assert other.encode("USER: <vid_start>") == stripping.encode("USER: <vid_start>")
    with pytest.raises(ValueError, match="added_token_whitespace"):
        tokenizer_lib.MomentorTokenizer(stripping.model_path, NUM_TEMPORAL, added_token_whitespace="trim")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sentencepiece model not found"):
        tokenizer_lib.MomentorTokenizer(tmp_path / "nope.model", NUM_TEMPORAL)


def test_make_tokenizer_writes_the_directory_training_reads(model_path, tmp_path, capsys):
    import data_scripts
    from momentor_jax.models.config import LlamaConfig, MomentorConfig
    from momentor_jax.training.trainer import load_tokenizer

    make = data_scripts.load("make_tokenizer")
    out = str(tmp_path / "data" / "tokenizer")
    assert make.main(["--sentencepiece", model_path, "--out", out, "--num_temporal_tokens", "32"]) == 0
    made = tokenizer_lib.MomentorTokenizer.load(out)
    assert open(os.path.join(out, tokenizer_lib.MODEL_FILENAME), "rb").read() == open(model_path, "rb").read()
    config = MomentorConfig(llm=LlamaConfig(vocab_size=made.vocab_size), num_temporal_tokens=32)
    assert load_tokenizer(out, config).encode("a dog runs") == made.encode("a dog runs")
    assert make.main(["--sentencepiece", model_path, "--out", out, "--num_temporal_tokens", "32"]) == 0  # rerun
    capsys.readouterr()
    assert make.main(["--sentencepiece", model_path, "--out", out, "--num_temporal_tokens", "64"]) == 2
    assert "already holds a different tokenizer" in capsys.readouterr().err
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    assert make.main(["--sentencepiece", str(not_a_model), "--out", str(tmp_path / "t2")]) == 2
    assert "not a sentencepiece model" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "t2")
