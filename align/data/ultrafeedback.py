"""UltraFeedback (Cui et al., arXiv 2310.01377) from its original files: K-lists and binarised pairs.

Dimension letters: K responses per prompt (4 in the public data).

Files: `<source>.jsonl` for the six instruction sources of huggingface.co/datasets/
openbmb/UltraFeedback (evol_instruct, false_qa, flan, sharegpt, truthful_qa, ultrachat; a
manual directory may hold any `<name>.jsonl` named in `subsets`). Each line is
`{"source", "instruction", "models", "completions": [{"model", "response",
"annotations", "fine-grained_score", "overall_score", "critique", ...}, ...], ...}`
(github.com/OpenBMB/UltraFeedback, "Dataset Format"; "fine-grained_score" is the mean of
the four aspect ratings, see their src/data_annotation/fix_overall_score_issue.py).

Scores and labels: score="fine-grained" (default) reads `fine-grained_score`, in [1, 5],
label (s - 1) / 4; score="overall" reads `overall_score`, in [1, 10], label (s - 1) / 9.
A score outside its range (or not a number, or null) makes the whole row bad. Every
completion of a row is checked (text non-empty, score valid), whatever the kind.

Prompt: the chat template applied to the single user turn `instruction` (an empty
instruction is a "missing_field" bad row); completions: `template.reply(response)`.

Records per kind:
  lists    {prompt, completions (all K, file order), labels}; ties keep equal labels (the
           LiPO pair sums run over pairs with different labels only, so a tie adds nothing
           there); a row with fewer than 2 completions is excluded ("too_few_completions").
  pairs    chosen = the first completion with the highest score; rejected = the first with
           the lowest score (rejected="lowest", default) or one drawn uniformly among those
           scoring below the chosen (rejected="random", seeded by the prompt text so builds
           repeat). A row whose scores are all equal has no preference: excluded ("tied").
           Identical chosen and rejected texts are a bad row ("identical_pair").
  sft      {prompt, completion = the pairs' chosen}; a row with no completion is excluded.
  prompts  {prompt}, each distinct prompt of a split once.
Splits: the public data has one split; a row goes to "test" when the first 4 bytes of the
SHA-256 of its instruction, read as a fraction of 2**32, are below TEST_FRACTION (1/32),
else to "train" (stable under reordering; repeated instructions share a split).
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator, Mapping

import numpy as np

from align import errors
from align.data import rows as rows_lib
from align.data.chat import ChatTemplate
from align.data.rows import BadRow

URL = "https://huggingface.co/datasets/openbmb/UltraFeedback/resolve/main/"
SUBSETS = ("evol_instruct", "false_qa", "flan", "sharegpt", "truthful_qa", "ultrachat")
SPLITS = ("train", "test")
TEST_FRACTION = 1 / 32
SCORES = {"fine-grained": ("fine-grained_score", 1.0, 5.0), "overall": ("overall_score", 1.0, 10.0)}
REJECTED = ("lowest", "random")


def files(kind: str, subsets: tuple[str, ...], manual_dir: str | None = None) -> list[str]:
    """Relative paths of the files a kind reads: `<subset>.jsonl`.

    () = the six public files; under a manual directory, every `*.jsonl` in it (and any
    name may be given).
    """
    del kind
    if not subsets:
        subsets = SUBSETS if manual_dir is None else tuple(sorted(
            n[:-len(".jsonl")] for n in os.listdir(manual_dir) if n.endswith(".jsonl")))
        if not subsets:
            raise FileNotFoundError(f"no *.jsonl files in {manual_dir} (expected the files of "
                                    f"{URL}: {', '.join(s + '.jsonl' for s in SUBSETS)})")
    if manual_dir is None:
        unknown = sorted(set(subsets) - set(SUBSETS))
        if unknown:
            raise errors.ConfigError(
                f"unknown UltraFeedback subsets {unknown}; valid: {', '.join(SUBSETS)}",
                key="data.subsets")
    return [f"{subset}.jsonl" for subset in subsets]


def url(rel: str) -> str:
    return URL + rel


def split_of(instruction: str) -> str:
    # surrogatepass: a lone surrogate (a bad row, reported in its split's pass) still hashes.
    digest = hashlib.sha256(instruction.encode("utf-8", "surrogatepass")).digest()
    return "test" if int.from_bytes(digest[:4], "big") < TEST_FRACTION * 2**32 else "train"


def _instruction(row: Mapping) -> str:
    instruction = rows_lib.text(row, "instruction")
    if not instruction.strip():
        raise BadRow("missing_field", "field 'instruction' is empty")
    return instruction


def _row(row: Mapping, template: ChatTemplate, score: str) -> dict:
    """{prompt, completions, scores, labels} of a row, every completion checked."""
    key, lo, hi = SCORES[score]
    prompt = template.prompt([("user", _instruction(row))])
    texts, scores = [], []
    for i, completion in enumerate(rows_lib.items(row, "completions")):
        what = f"completions[{i}]"
        texts.append(template.reply(rows_lib.nonempty(
            rows_lib.text(completion, "response", what), f"{what}.response")))
        scores.append(rows_lib.number(completion, key, lo, hi, what))
    labels = [(s - lo) / (hi - lo) for s in scores]
    return {"prompt": prompt, "completions": texts, "scores": scores, "labels": labels}


def binarise(prompt: str, texts: list[str], scores: list[float],
             rejected: str) -> tuple[int, int] | None:
    """(chosen index, rejected index) by the rule above; None when every score is equal."""
    best = int(np.argmax(scores))  # argmax/argmin return the first of equal values
    below = [i for i, s in enumerate(scores) if s < scores[best]]
    if not below:
        return None
    if rejected == "lowest":
        worst = int(np.argmin(scores))
    else:
        seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
        worst = below[int(np.random.default_rng(seed).integers(len(below)))]
    rows_lib.distinct(texts[best], texts[worst])
    return best, worst


def _pair(row: Mapping, template: ChatTemplate, score: str, rejected: str) -> tuple[dict, tuple | None]:
    parsed = _row(row, template, score)
    if len(parsed["completions"]) < 2:
        return parsed, None
    return parsed, binarise(parsed["prompt"], parsed["completions"], parsed["scores"], rejected)


def records(kind: str, split: str, paths: Mapping[str, str], log: rows_lib.RowLog, *,
            template: ChatTemplate, score: str = "fine-grained", rejected: str = "lowest",
            name_fn=str) -> Iterator[dict]:
    """The records of one split, from the files `paths` maps (relative path -> local path)."""
    if score not in SCORES:
        raise errors.ConfigError(
            f"UltraFeedback score must be one of {tuple(SCORES)}, got {score!r}")
    if rejected not in REJECTED:
        raise errors.ConfigError(
            f"UltraFeedback rejected must be one of {REJECTED}, got {rejected!r}")
    # Every split reads every file; a row is counted in the pass of its own split, and a
    # row with no readable instruction in the train pass.
    owner = split == SPLITS[0]
    seen = set()
    for rel, path in paths.items():
        for where, row in log.lines(name_fn(rel), path, count=owner):
            instruction = row.get("instruction")
            if not isinstance(instruction, str) or not instruction.strip():
                log.parse(where, _instruction, row, count=owner)
                continue
            if split_of(instruction) != split:
                continue
            if kind == "pairs":
                out = log.parse(where, _pair, row, template, score, rejected)
                if out is None:
                    continue
                parsed, chosen_rejected = out
                if len(parsed["completions"]) < 2:
                    log.exclude("too_few_completions")
                elif chosen_rejected is None:
                    log.exclude("tied")
                else:
                    best, worst = chosen_rejected
                    yield {"prompt": parsed["prompt"], "chosen": parsed["completions"][best],
                           "rejected": parsed["completions"][worst]}
                continue
            parsed = log.parse(where, _row, row, template, score)
            if parsed is None:
                continue
            n = len(parsed["completions"])
            if kind == "lists":
                if n < 2:
                    log.exclude("too_few_completions")
                    continue
                yield {"prompt": parsed["prompt"], "completions": parsed["completions"],
                       "labels": parsed["labels"]}
            elif kind == "sft":
                if n == 0:
                    log.exclude("no_completions")
                    continue
                best = int(np.argmax(parsed["scores"]))
                yield {"prompt": parsed["prompt"], "completion": parsed["completions"][best]}
            elif parsed["prompt"] in seen:
                log.exclude("repeated_prompt")
            else:
                seen.add(parsed["prompt"])
                yield {"prompt": parsed["prompt"]}
