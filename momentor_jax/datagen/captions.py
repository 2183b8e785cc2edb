"""Captions from an image-to-text model through transformers (BLIP-2 or any AutoModelForImageTextToText).

`Captioner(directory).caption(images) -> [str]`: images (uint8 RGB [H, W, 3]) in batches of `batch_size`, greedy
decoding of at most `max_new_tokens` (at least `min_new_tokens`) tokens after an optional text `prompt`; only the
new tokens are decoded. Every caption is passed through `clean_text`, so it can sit inside a raw Moment-10M template
(no braces, one line, a capital first letter, a final full stop); a caption that cleans to nothing is returned as
"" and the caller skips what it would have made. The match scores are computed elsewhere (clip.py).
"""
from __future__ import annotations

import re

import numpy as np


def clean_text(text: str, sentence: bool = True) -> str:
    """One line, no braces (the converter would read them as placeholders), collapsed spaces; with `sentence`,
    a capital first letter and a final full stop."""
    text = re.sub(r"\s+", " ", text.replace("{", " ").replace("}", " ")).strip()
    if not text or not sentence:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


class Captioner:
    def __init__(self, directory: str, device: str = "cpu", prompt: str = "", max_new_tokens: int = 30,
                 min_new_tokens: int = 3, batch_size: int = 8):
        import transformers  # noqa: PLC0415

        self.directory, self.device, self.prompt = directory, device, prompt
        self.max_new_tokens, self.min_new_tokens, self.batch_size = max_new_tokens, min_new_tokens, batch_size
        self.processor = transformers.AutoProcessor.from_pretrained(directory)
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(directory).eval().to(device)
        self.calls = 0

    def caption(self, images: list) -> list:
        import torch  # noqa: PLC0415
        from PIL import Image  # noqa: PLC0415

        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [Image.fromarray(np.asarray(im)) for im in images[i:i + self.batch_size]]
            kwargs = {"text": [self.prompt] * len(batch)} if self.prompt else {}
            inputs = self.processor(images=batch, return_tensors="pt", **kwargs)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.no_grad():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                          min_new_tokens=self.min_new_tokens, do_sample=False)
            start = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
            texts = self.processor.batch_decode(ids[:, start:], skip_special_tokens=True)
            out.extend(clean_text(t) for t in texts)
            self.calls += len(batch)
        return out
