"""Tiny random Hugging Face models (the golden references of the parity and conversion tests)."""
import numpy as np
import torch
import transformers

VOCAB = 300


def perturb_(model, seed: int) -> None:
    """Adds noise to every parameter so that norm scales and biases are not the trivial ones/zeros."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def tiny_llama(num_kv_heads=2, tie=False, rope_theta=10000.0, head_dim=None, vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=num_kv_heads, head_dim=head_dim or 16, rope_theta=rope_theta,
        max_position_embeddings=128, tie_word_embeddings=tie, rms_norm_eps=1e-6, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(config).eval()
    perturb_(model, seed)
    return model


def tiny_clip_vision(seed=0):
    torch.manual_seed(seed)
    config = transformers.CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        attn_implementation="eager")
    model = transformers.CLIPVisionModel(config).eval()
    perturb_(model, seed)
    return model


def state_dict_numpy(model) -> dict:
    return {k: v.detach().to(torch.float32).numpy().copy() for k, v in model.state_dict().items()}


def hf_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray = None) -> np.ndarray:
    with torch.no_grad():
        mask = None if attention_mask is None else torch.from_numpy(attention_mask)
        return model(input_ids=torch.from_numpy(input_ids).long(), attention_mask=mask).logits.numpy()


def hf_pooled(model, pixels_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        pixel_values = torch.from_numpy(np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2)))
        return model(pixel_values=pixel_values).pooler_output.numpy()
