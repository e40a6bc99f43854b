"""OpenAI's TL;DR summarisation data (Stiennon et al., arXiv 2009.01325) from its original files.

Dimension letters: K responses per prompt (2 here).

Files (github.com/openai/summarize-from-feedback, README "Human feedback data"; blobs under
https://openaipublic.blob.core.windows.net/summarize-from-feedback/):
  comparisons/<batch>.json      JSON lines {"info": {"id", "post", "title", "subreddit"},
                                "summaries": [{"text", "policy", "note"}, x2], "choice": 0|1,
                                "split": "train"|"valid1"|"valid2", "batch", "worker", ...}
  tldr_3_filtered/{train,valid,test}.jsonl   the SFT data: JSON lines
                                {"id", "subreddit", "title", "post", "summary"} (read by
                                summarize_from_feedback/datasets/tldr.py)

Prompt: OpenAI's `tldr_task` query format (summarize_from_feedback/utils/experiment_helpers.py)
    "SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:"
with the fields as they are (no truncation here: the pipeline keeps the prompt's end).
Completion: " " + summary.strip(), the same leading space as their " {reference}" format
(comparison summaries already start with one).

Splits: comparisons train / valid1 / valid2 -> train / validation / test (OpenAI: valid1
chose models, valid2 is for final evaluation); SFT files train / valid / test likewise.
Comparisons of CNN/DM articles (batches batch0_cnndm, cnndm0, cnndm2, or an `info` with
an article and no post) are not TL;DR: they are excluded and counted ("cnndm").

Records per kind: pairs (comparisons) = {prompt, chosen = summaries[choice], rejected};
lists (comparisons) = {prompt, completions = [chosen, rejected], labels = [1, 0]};
sft (SFT files) = {prompt, completion}; prompts (SFT files) = {prompt}, each distinct
prompt of a split once.
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping

from align import errors
from align.data import rows as rows_lib
from align.data.rows import BadRow

URL = "https://openaipublic.blob.core.windows.net/summarize-from-feedback/"
FORMAT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
SPLITS = ("train", "validation", "test")
COMPARISON_SPLITS = {"train": "train", "valid1": "validation", "valid2": "test"}
SFT_FILES = {"train": "tldr_3_filtered/train.jsonl", "validation": "tldr_3_filtered/valid.jsonl",
             "test": "tldr_3_filtered/test.jsonl"}
CNNDM_BATCHES = ("batch0_cnndm", "cnndm0", "cnndm2")
# The Reddit batches of the public release (batch21 was never published).
TLDR_BATCHES = tuple(f"batch{i}" for i in range(3, 21)) + ("batch22", "edit_b2_eval_test")


def files(kind: str, subsets: tuple[str, ...], manual_dir: str | None = None) -> list[str]:
    """Relative paths of the files a kind reads; under a manual directory, every comparisons/*.json."""
    if subsets:
        raise errors.ConfigError(f"the TL;DR data has no subsets, got {list(subsets)}",
                                 key="data.subsets")
    if kind in ("sft", "prompts"):
        return list(SFT_FILES.values())
    if manual_dir is None:
        return [f"comparisons/{batch}.json" for batch in TLDR_BATCHES]
    folder = os.path.join(manual_dir, "comparisons")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".json")) if os.path.isdir(folder) else []
    if not names:
        raise FileNotFoundError(f"no comparisons/*.json files in {manual_dir} (expected the "
                                f"files of {URL}dataset/comparisons/)")
    return [f"comparisons/{n}" for n in names]


def url(rel: str) -> str:
    """Where a relative path is published (comparisons under dataset/, SFT files under datasets/)."""
    return URL + ("dataset/" if rel.startswith("comparisons/") else "datasets/") + rel


def prompt_text(info: Mapping, what: str = "info") -> str:
    """The TL;DR prompt of a post (FORMAT)."""
    out = FORMAT
    for key in ("subreddit", "title", "post"):
        out = out.replace("{" + key + "}", rows_lib.text(info, key, what))
    return out


def summary_text(text: str, name: str) -> str:
    return " " + rows_lib.nonempty(text, name).strip()


def _is_cnndm(row: Mapping) -> bool:
    info = row.get("info")
    return row.get("batch") in CNNDM_BATCHES or (
        isinstance(info, Mapping) and "article" in info and "post" not in info)


def _comparison(row: Mapping) -> dict:
    info = rows_lib.field(row, "info")
    prompt = prompt_text(info)
    summaries = rows_lib.items(row, "summaries")
    if len(summaries) != 2:
        raise BadRow("wrong_type", f"field 'summaries' must hold 2 summaries, got {len(summaries)}")
    texts = [summary_text(rows_lib.text(s, "text", f"summaries[{i}]"), f"summaries[{i}].text")
             for i, s in enumerate(summaries)]
    choice = rows_lib.field(row, "choice")
    if isinstance(choice, bool) or not isinstance(choice, int):
        raise BadRow("wrong_type", f"field 'choice' must be the integer 0 or 1, got "
                     f"{type(choice).__name__} {choice!r}")
    if choice not in (0, 1):
        raise BadRow("out_of_range", f"field 'choice' must be 0 or 1, got {choice!r}")
    rows_lib.distinct(texts[choice], texts[1 - choice])
    return {"prompt": prompt, "chosen": texts[choice], "rejected": texts[1 - choice]}


def _row_split(row: Mapping) -> str | None:
    value = row.get("split")
    return COMPARISON_SPLITS.get(value) if isinstance(value, str) else None


def _sft(row: Mapping) -> dict:
    return {"prompt": prompt_text(row, "row"),
            "completion": summary_text(rows_lib.text(row, "summary"), "summary")}


def records(kind: str, split: str, paths: Mapping[str, str], log: rows_lib.RowLog, *,
            name_fn=str) -> Iterator[dict]:
    """The records of one split, from the files `paths` maps (relative path -> local path)."""
    if kind in ("sft", "prompts"):
        seen = set()
        rel = SFT_FILES[split]
        for where, row in log.lines(name_fn(rel), paths[rel]):
            rec = log.parse(where, _sft, row)
            if rec is None:
                continue
            if kind == "sft":
                yield rec
            elif rec["prompt"] in seen:
                log.exclude("repeated_prompt")
            else:
                seen.add(rec["prompt"])
                yield {"prompt": rec["prompt"]}
        return
    # Every split reads every comparisons file; a row is counted (and reported) only in
    # the pass of its own split, and a row with no readable split in the train pass.
    owner = split == SPLITS[0]
    for rel, path in paths.items():
        for where, row in log.lines(name_fn(rel), path, count=owner):
            row_split = _row_split(row)
            if row_split is None:
                if _is_cnndm(row):
                    log.exclude("cnndm", count=owner)
                else:
                    log.parse(where, _bad_split, row, count=owner)
                continue
            if row_split != split:
                continue
            if _is_cnndm(row):
                log.exclude("cnndm")
                continue
            pair = log.parse(where, _comparison, row)
            if pair is None:
                continue
            if kind == "pairs":
                yield pair
            else:
                yield {"prompt": pair["prompt"], "completions": [pair["chosen"], pair["rejected"]],
                       "labels": [1.0, 0.0]}


def _bad_split(row: Mapping) -> None:
    value = rows_lib.field(row, "split")
    raise BadRow("out_of_range", f"field 'split' is {value!r}, not one of "
                 f"{', '.join(COMPARISON_SPLITS)}")
