"""Question and answer writing by a local causal language model (any AutoModelForCausalLM), e.g. a Vicuna.

`LLMWriter(directory).complete(prompt) -> str`: greedy decoding of at most `max_new_tokens` after the prompt, the
first line of the continuation, cleaned by captions.clean_text; "" when nothing usable came back (the instruction
builder then falls back to its templates and counts the fallback). Prompts are built in instructions.py.
"""
from __future__ import annotations

from momentor_jax.datagen.captions import clean_text


class LLMWriter:
    def __init__(self, directory: str, device: str = "cpu", max_new_tokens: int = 40, min_new_tokens: int = 2):
        import transformers  # noqa: PLC0415

        self.directory, self.device = directory, device
        self.max_new_tokens, self.min_new_tokens = max_new_tokens, min_new_tokens
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval().to(device)
        self.calls = 0

    def complete(self, prompt: str) -> str:
        import torch  # noqa: PLC0415

        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                      min_new_tokens=self.min_new_tokens, do_sample=False, pad_token_id=pad)
        self.calls += 1
        text = self.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return clean_text(lines[0], sentence=False) if lines else ""
