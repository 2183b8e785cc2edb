"""The local web demo (`python -m momentor_jax.serve`; usage and safety defaults in __main__.py).

    media.py      what is accepted as a video (typed paths inside --allowed_dir, size limit, PyAV probe) and the
                  file a browser plays
    annotated.py  ground truth and example questions from grounding annotations
    chat.py       the back end: videos encoded once (cached by content), multi-turn dialogue prompts, answers
    page.py       HTML of the player, the dialogue (times as links that seek the player) and the timelines
    app.py        the Gradio page wiring a chat.Engine to those, and launch's safe settings
Gradio is imported only by app.py (the `serve` extra).
"""
