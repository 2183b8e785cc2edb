"""Names shared by the data pipeline, the model and the tools.

Vocabulary layout (same order as the public PyTorch code, so its `mm_projector.bin` embedding rows line up):

    ids [0, B)            the LLaMA sentencepiece vocabulary (B = 32000 for LLaMA-7B)
    B + 0 .. B + 4        ADDED_TOKENS below, in that order
    V = B + 5             model vocabulary size: rows of `embed_tokens` and of the LM head
    V + k, k < N          temporal token <TEMP-k>: input row k of the TPM input table, logit column V + k
    V + N                 `<video>`: a text marker expanded to <vid_start> + M x <vid_patch> + <vid_end> before
                          the model sees it, so it never reaches an embedding table
"""

VIDEO_TOKEN = "<video>"
VID_PATCH_TOKEN = "<vid_patch>"
VID_START_TOKEN = "<vid_start>"
VID_END_TOKEN = "<vid_end>"
TEMP_INPUT_TOKEN = "<TEMP-INPUT>"
TEMP_OUTPUT_TOKEN = "<TEMP-OUTPUT>"
TEMPORAL_TOKEN_FORMAT = "<TEMP-{:03d}>"

ADDED_TOKENS = (VID_PATCH_TOKEN, VID_START_TOKEN, VID_END_TOKEN, TEMP_INPUT_TOKEN, TEMP_OUTPUT_TOKEN)
NUM_ADDED_TOKENS = len(ADDED_TOKENS)

IGNORE_INDEX = -100


def special_token_ids(vocab_size: int) -> dict:
    """Ids of the added tokens given the model vocabulary size V (= base vocabulary + 5)."""
    base = vocab_size - NUM_ADDED_TOKENS
    return {
        "vid_patch": base,
        "vid_start": base + 1,
        "vid_end": base + 2,
        "temp_input": base + 3,
        "temp_output": base + 4,
    }


# One training / inference batch. Every array has a fixed shape so a step jits once per configuration.
# B = batch, L = max length, M = frames per video; V = video slots per packed row (data/packing.py).
BATCH_KEYS = {
    "input_ids": "int32 [B, L]: token ids; pads are 0; temporal placeholders are <TEMP-INPUT>/<TEMP-OUTPUT> ids",
    "targets": "int32 [B, L]: next-token id for position i (input_ids[i + 1]); 0 where loss_mask is 0",
    "loss_mask": "float32 [B, L]: 1 where targets[i] is supervised (assistant replies and their </s>)",
    "segment_ids": "int32 [B, L]: k = 1..K for the k-th dialogue of the row (1 unpacked), 0 for padding",
    "positions": "int32 [B, L]: position ids 0, 1, 2, ..., restarting at each dialogue of a packed row",
    "placeholder_times": "float32 [B, L]: normalized time p in [0, 1] at each placeholder position, 0 elsewhere",
    "target_times": "float32 [B, L]: normalized time where targets[i] is <TEMP-OUTPUT>, 0 elsewhere",
    "frames": "uint8 [B, M, H, W, 3] (packed: [B, V, M, H, W, 3]): RGB frames, CLIP geometry, not normalized",
    "features": "float32 [B, M, F] (packed: [B, V, M, F]): cached pooled ViT features instead of frames",
    "durations": "float32 [B] (packed: [B, V], 0 for empty slots): video duration in seconds",
    "num_videos": "int32 [B], packed rows only: real videos in the row, in segment order, the rest zeros",
}
