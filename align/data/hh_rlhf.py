"""Anthropic HH-RLHF (Bai et al., arXiv 2204.05862) from its original files.

Dimension letters: K responses per prompt (2 here).

Files: `<subset>/{train,test}.jsonl.gz` (github.com/anthropics/hh-rlhf, mirrored at
huggingface.co/datasets/Anthropic/hh-rlhf); each line is
`{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}`: two whole
conversations that share their beginning.

Splitting a pair (the rule):
  1. identical chosen and rejected texts are a bad row ("identical_pair");
  2. n = the length of their longest common prefix (in characters); the prompt is the
     text up to and including the LAST "\\n\\nAssistant:" that lies wholly inside that
     common prefix, and each reply is the rest of its conversation (verbatim, so it
     usually starts with a space and prompt + chosen == the original chosen text);
  3. no such marker (the conversations differ before any assistant turn), or a reply that
     still holds a "\\n\\nHuman:" or "\\n\\nAssistant:" marker (they differ before their
     last assistant turn: more than one turn differs) is a bad row
     ("unsplittable_dialogue"); we never guess which turns the preference was about;
  4. a reply that is empty or only whitespace is a bad row ("empty_completion").

With the "hh" template (the default) prompts and replies are kept verbatim. Any other
template re-renders the prompt from its parsed turns (texts stripped; text before the
first "\\n\\nHuman:" is a bad row) and each reply as `template.reply(text)`.

Records per kind: pairs = {prompt, chosen, rejected}; sft = {prompt, completion=chosen};
lists = {prompt, completions=[chosen, rejected], labels=[1, 0]}; prompts = {prompt}, each
distinct prompt of a split once, in file order.
"""

from __future__ import annotations

import re
from typing import Iterator, Mapping

from align import errors
from align.data import rows as rows_lib
from align.data.chat import ChatTemplate
from align.data.rows import BadRow

URL = "https://huggingface.co/datasets/Anthropic/hh-rlhf/resolve/main/"
SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
SPLITS = ("train", "test")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


def files(kind: str, subsets: tuple[str, ...], manual_dir: str | None = None) -> list[str]:
    """Relative paths of the files a kind reads (the same under a manual directory); () = all subsets."""
    del kind, manual_dir
    subsets = subsets or SUBSETS
    unknown = sorted(set(subsets) - set(SUBSETS))
    if unknown:
        raise errors.ConfigError(f"unknown HH-RLHF subsets {unknown}; valid: {', '.join(SUBSETS)}",
                                 key="data.subsets")
    return [f"{subset}/{split}.jsonl.gz" for subset in subsets for split in SPLITS]


def url(rel: str) -> str:
    return URL + rel


def split_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen reply, rejected reply) of two conversations, by the rule above."""
    rows_lib.distinct(chosen, rejected)
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    cut = chosen.rfind(ASSISTANT, 0, n)
    if cut < 0:
        raise BadRow("unsplittable_dialogue", f"the conversations differ at character {n}, "
                     f"before any shared {ASSISTANT!r} turn")
    end = cut + len(ASSISTANT)
    prompt, replies = chosen[:end], (chosen[end:], rejected[end:])
    for side, reply in zip(("chosen", "rejected"), replies):
        if HUMAN in reply or ASSISTANT in reply:
            raise BadRow("unsplittable_dialogue",
                         f"the conversations differ at character {n}, before their last "
                         f"assistant turn ({side} goes on for more turns)")
        rows_lib.nonempty(reply, f"the {side} reply")
    return prompt, replies[0], replies[1]


def parse_turns(prompt: str) -> list[tuple[str, str]]:
    """(role, text) turns of an HH prompt ending in "\\n\\nAssistant:" (that empty turn dropped)."""
    parts = _TURN.split(prompt)
    if parts[0].strip():
        raise BadRow("unsplittable_dialogue", f"text before the first turn: {parts[0][:40]!r}")
    turns = [("user" if role == "Human" else "assistant", body)
             for role, body in zip(parts[1::2], parts[2::2])]
    if not turns or turns[-1] != ("assistant", ""):
        raise BadRow("unsplittable_dialogue", "the prompt does not end with an empty assistant turn")
    return turns[:-1]


def _pair(row: Mapping, template: ChatTemplate) -> dict:
    prompt, chosen, rejected = split_pair(rows_lib.text(row, "chosen"), rows_lib.text(row, "rejected"))
    if template.name != "hh":
        prompt = template.prompt(parse_turns(prompt))
        chosen, rejected = template.reply(chosen), template.reply(rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def records(kind: str, split: str, paths: Mapping[str, str], log: rows_lib.RowLog, *,
            template: ChatTemplate, name_fn=str) -> Iterator[dict]:
    """The records of one split, from the files `paths` maps (relative path -> local path)."""
    seen = set()
    for rel, path in paths.items():
        if not rel.endswith(f"/{split}.jsonl.gz"):
            continue
        for where, row in log.lines(name_fn(rel), path):
            pair = log.parse(where, _pair, row, template)
            if pair is None:
                continue
            if kind == "pairs":
                yield pair
            elif kind == "sft":
                yield {"prompt": pair["prompt"], "completion": pair["chosen"]}
            elif kind == "lists":
                yield {"prompt": pair["prompt"], "completions": [pair["chosen"], pair["rejected"]],
                       "labels": [1.0, 0.0]}
            elif pair["prompt"] in seen:
                log.exclude("repeated_prompt")
            else:
                seen.add(pair["prompt"])
                yield {"prompt": pair["prompt"]}
