"""Tiny random Hugging Face models and tokenizers for the data generation engine, saved as local directories:
CLIPModel, OWLv2, Grounding DINO, BLIP-2 (OPT) and LLaMA. Tokenizers are built in code (a byte-level CLIP
vocabulary without merges, a BERT word-piece vocabulary, a word-level fast tokenizer), so nothing is downloaded."""
import json
import os

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers.convert_slow_tokenizer import bytes_to_unicode

from hf_tiny_models import perturb_

WORDS = ("a an the red blue green yellow circle square star shape object person dog cat car is on in and with "
         "moves appears video scene what where when . , ? :").split()


def clip_tokenizer(directory: str) -> transformers.CLIPTokenizer:
    """Byte-level, no merges: every character is a token (514 ids)."""
    os.makedirs(directory, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return transformers.CLIPTokenizer(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"))


def word_tokenizer(extra_special=()) -> transformers.PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    out = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                               pad_token="<pad>", unk_token="<unk>")
    if extra_special:
        out.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return out


def _clip_like(directory: str, seed: int, layers: int, text_positions: int, image_size: int, patch_size: int,
               pad_token_id):
    """(byte-level CLIP tokenizer, text_config, vision_config) with 32-wide towers (OWLv2 reuses CLIP's)."""
    tok = clip_tokenizer(os.path.join(directory, "_tok"))
    torch.manual_seed(seed)
    n = len(tok)
    text = dict(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                max_position_embeddings=text_positions, bos_token_id=n - 2, eos_token_id=n - 1,
                pad_token_id=n - 1 if pad_token_id is None else pad_token_id)
    vision = dict(image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=layers, num_attention_heads=4)
    return tok, text, vision


def save_clip(directory: str, seed: int = 0) -> str:
    tok, text, vision = _clip_like(directory, seed, 2, 64, 32, 8, None)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                           projection_dim=16)).eval()
    perturb_(model, seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def save_owlv2(directory: str, seed: int = 0) -> str:
    """The class head needs projection_dim == the text width."""
    tok, text, vision = _clip_like(directory, seed, 1, 16, 64, 16, 0)
    config = transformers.Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    transformers.Owlv2ForObjectDetection(config).eval().save_pretrained(directory)
    processor = transformers.Owlv2Processor(transformers.Owlv2ImageProcessor(size={"height": 64, "width": 64}), tok)
    processor.save_pretrained(directory)
    return directory


def save_grounding_dino(directory: str, seed: int = 0) -> str:
    os.makedirs(directory, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    vocab_path = os.path.join(directory, "vocab.txt")
    with open(vocab_path, "w") as f:
        f.write("\n".join(words) + "\n")
    tok = transformers.BertTokenizer(vocab_path)
    config = transformers.GroundingDinoConfig(
        backbone_config=transformers.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1],
                                                num_heads=[1, 2], window_size=4, out_features=["stage1", "stage2"]),
        text_config=transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_feature_levels=2,
        encoder_n_points=2, decoder_n_points=2, max_text_len=32, use_timm_backbone=False,
        use_pretrained_backbone=False)
    torch.manual_seed(seed)
    transformers.GroundingDinoForObjectDetection(config).eval().save_pretrained(directory)
    image_processor = transformers.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    transformers.GroundingDinoProcessor(image_processor, tok).save_pretrained(directory)
    return directory


def save_blip2(directory: str, seed: int = 1) -> str:
    tok = word_tokenizer(extra_special=("<image>",))
    tok.image_token = "<image>"
    text = transformers.OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                                  num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    config = transformers.Blip2Config(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        qformer_config=dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=32),
        text_config=text, num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    model = transformers.Blip2ForConditionalGeneration(config).eval()
    perturb_(model, seed)
    model.save_pretrained(directory)
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    transformers.Blip2Processor(image_processor, tok, num_query_tokens=4).save_pretrained(directory)
    return directory


def save_llama(directory: str, seed: int = 2) -> str:
    tok = word_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    perturb_(model, seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
