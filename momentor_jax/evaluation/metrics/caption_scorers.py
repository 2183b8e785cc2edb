"""PTB tokenization, METEOR and CIDEr exactly as pycocoevalcap runs them, shared by dense captioning and SODA.

Tokenization and METEOR run the Java jars that pycocoevalcap ships (stanford-corenlp-3.4.1 with `-preserveLines
-lowerCase`, meteor-1.5 with `-stdio -l en -norm`) through the same line protocol as its wrappers; CIDEr is its
Python CIDEr-D. Without a Java runtime none of this can run: callers check `java_available()` first and report the
caption metrics as null with `JAVA_SKIPPED_NOTE`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

JAVA_SKIPPED_NOTE = "skipped: no Java runtime"
# Characters the Java tokenizer may treat as line breaks; one sentence must stay one line.
_LINE_BREAKS = str.maketrans({"\n": " ", "\r": " ", "\x0b": " ", "\x0c": " "})
_SEPARATOR = "x"  # a lowercase line between sentences stops the tokenizer's look-ahead (see ptb_tokenize)


def java_available() -> bool:
    return shutil.which("java") is not None


def remove_nonascii(text: str) -> str:
    """Every non-ASCII character becomes a space (both reference evaluators do this before tokenizing)."""
    return "".join(char if ord(char) < 128 else " " for char in text)


def _jar_dir(module_name: str) -> str:
    import importlib  # noqa: PLC0415

    return os.path.dirname(os.path.abspath(importlib.import_module(module_name).__file__))


def ptb_tokenize(sentences: Sequence[str]) -> List[str]:
    """Lower-cased PTB tokens joined by single spaces with punctuation tokens dropped, one entry per sentence.

    Each sentence is tokenized as if it were alone. The tokenizer's abbreviation rule looks past the line end (a
    final "B." before a line starting "The" loses its period), so in the references, which tokenize their sentences
    in one batch in hash-randomised video order, such a sentence can come out either way; a lowercase line between
    sentences here removes that dependence on the neighbour.
    """
    if not sentences:
        return []
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR  # noqa: PLC0415

    jar = os.path.join(_jar_dir("pycocoevalcap.tokenizer.ptbtokenizer"), STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sentences.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"\n{_SEPARATOR}\n".join(sentence.translate(_LINE_BREAKS) for sentence in sentences))
        command = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path]
        completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"PTB tokenizer failed ({completed.returncode}): {completed.stderr.decode()[-500:]}")
    lines = completed.stdout.decode().split("\n")[::2]  # drop the separator lines
    if len(lines) < len(sentences):
        raise RuntimeError(f"PTB tokenizer returned {len(lines)} lines for {len(sentences)} sentences")
    punctuation = set(PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punctuation) for line in lines[:len(sentences)]]


def cider(pairs: Sequence[Tuple[str, Sequence[str]]]) -> float:
    """Mean CIDEr-D of (tokenized hypothesis, tokenized references) pairs; document frequencies from these pairs."""
    if not pairs:
        return 0.0
    if not any(ref.split() for _, refs in pairs for ref in refs):
        return 0.0  # no reference n-gram at all: every similarity is 0 (pycocoevalcap would fail on max([]))
    from pycocoevalcap.cider.cider import Cider  # noqa: PLC0415

    gts = {i: list(refs) for i, (_, refs) in enumerate(pairs)}
    res = {i: [hypothesis] for i, (hypothesis, _) in enumerate(pairs)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


class Meteor:
    """One running METEOR 1.5 process; `score` is pycocoevalcap's `Meteor.compute_score` for a list of pairs."""

    def __init__(self):
        from pycocoevalcap.meteor.meteor import METEOR_JAR  # noqa: PLC0415

        command = ["java", "-jar", "-Xmx2G", METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
        self._process = subprocess.Popen(command, cwd=_jar_dir("pycocoevalcap.meteor.meteor"),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def _send(self, line: str) -> None:
        self._process.stdin.write((line + "\n").encode())
        self._process.stdin.flush()

    def _receive(self) -> str:
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"METEOR process ended unexpectedly (exit code {self._process.poll()})")
        return line.decode().strip()

    def score(self, pairs: Sequence[Tuple[str, Sequence[str]]]) -> Tuple[float, List[float]]:
        """(corpus METEOR over all pairs, per-pair METEOR) for (hypothesis, references) pairs of tokenized text."""
        if not pairs:
            return 0.0, []
        statistics = []
        for hypothesis, references in pairs:
            hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
            self._send(" ||| ".join(("SCORE", " ||| ".join(references), hypothesis)))
            statistics.append(self._receive())
        self._send("EVAL" + "".join(" ||| " + s for s in statistics))
        per_pair = [float(self._receive()) for _ in pairs]
        return float(self._receive()), per_pair

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.kill()
            self._process.wait()


class CaptionScorers:
    """A PTB token cache and one lazily started METEOR process, shared by every caption metric of one evaluation."""

    def __init__(self):
        self._tokens: Dict[str, str] = {}
        self._meteor: Optional[Meteor] = None

    def tokenize(self, sentences: Sequence[str]) -> List[str]:
        """`ptb_tokenize(remove_nonascii(s))` for each sentence; one Java call for all sentences not seen before."""
        new = list(dict.fromkeys(s for s in sentences if s not in self._tokens))
        for sentence, tokens in zip(new, ptb_tokenize([remove_nonascii(s) for s in new])):
            self._tokens[sentence] = tokens
        return [self._tokens[s] for s in sentences]

    def meteor(self, pairs: Sequence[Tuple[str, Sequence[str]]]) -> Tuple[float, List[float]]:
        if self._meteor is None:
            self._meteor = Meteor()
        return self._meteor.score(pairs)

    @staticmethod
    def cider(pairs: Sequence[Tuple[str, Sequence[str]]]) -> float:
        return cider(pairs)

    def close(self) -> None:
        if self._meteor is not None:
            self._meteor.close()
            self._meteor = None

    def __enter__(self) -> "CaptionScorers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
