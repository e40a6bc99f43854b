"""What tokenization does to a whole source: truncated prompts and completions, drops, fallbacks.

Dimension letters: none (counts only).

The counts come from the pipeline's own per-record functions (align/data/pipeline.py), so
they describe exactly the examples training will see; a trainer can print or write them
before its first step.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from align.data.pipeline import TokenizerLike, get_kind, kind_example


def token_report(source: Sequence[Any], tokenizer: TokenizerLike, kind: str, max_len: int,
                 max_prompt_len: int, *, list_size: int | None = None,
                 joint: bool | None = None, limit: int | None = None,
                 **kind_settings) -> dict[str, Any]:
    """Counts over a source of what tokenization does to it: truncation, drops, joint fallbacks.

    kind: a data kind of align.data.pipeline.KINDS, its own settings given as keywords
    (lists: list_size, where None counts as not given).

    records: records scanned (the first `limit`, default all); dropped: records the
    pipeline cannot turn into an example (it raises on them), with the first few messages
    in `drop_reasons`; prompts_truncated: records whose prompt lost tokens from its start;
    completions / completions_truncated: completion sequences, and those cut by max_len
    (they lose at least their eos); joint_fallbacks: completions whose joint encoding did
    not start with the prompt's tokens, so they were encoded on their own; eos_in_text:
    completions that already ended with the eos (not added again); pairs_identical: pairs
    whose two sequences are the same after truncation (they carry no preference);
    completion_tokens_max: the longest completion (with eos) before truncation.
    """
    if list_size is not None:
        kind_settings["list_size"] = list_size
    example_fn = kind_example(kind, tokenizer, max_len=max_len, max_prompt_len=max_prompt_len,
                              joint=joint, **kind_settings)
    n = len(source) if limit is None else min(int(limit), len(source))
    stats = {"kind": kind, "records": n, "dropped": 0, "prompts_truncated": 0, "completions": 0,
             "completions_truncated": 0, "joint_fallbacks": 0, "eos_in_text": 0,
             "pairs_identical": 0, "completion_tokens_max": 0, "drop_reasons": []}
    for index in range(n):
        try:
            example_fn(index, source[index], stats=stats)
        except ValueError as e:
            stats["dropped"] += 1
            if len(stats["drop_reasons"]) < 5:
                stats["drop_reasons"].append(str(e))
    return stats


def _has_completions(kind: str) -> bool:
    try:
        return get_kind(kind).needs_max_len
    except ValueError:  # a report of a kind not registered in this process
        return True


def format_token_report(report: Mapping[str, Any]) -> str:
    """A token report as one line (and the first drop reasons, if any)."""
    line = (f"{report['kind']}: {report['records']} records, {report['dropped']} dropped, "
            f"{report['prompts_truncated']} prompts truncated")
    if _has_completions(report["kind"]):
        line += (f", {report['completions_truncated']} of {report['completions']} completions "
                 f"truncated, {report['joint_fallbacks']} joint-encoding fallbacks, "
                 f"{report['eos_in_text']} with eos in text")
    if report["kind"] == "pairs":
        line += f", {report['pairs_identical']} pairs identical after truncation"
    return "\n  ".join([line] + list(report["drop_reasons"]))
