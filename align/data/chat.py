"""Chat templates: how a conversation's turns become prompt text, and how a reply follows it.

Dimension letters: none (text only).

A template has one format per role, each holding "{text}" once, a `generation` text that
ends the prompt and asks for the assistant's reply, and a `reply_prefix` put before every
(stripped) reply so that prompt + reply reads as the template's own text. Presets:

    hh      "\\n\\nHuman: {text}" / "\\n\\nAssistant: {text}" / "\\n\\nAssistant:" / reply " ..."
            (Anthropic HH-RLHF's own layout)
    chatml  "<|im_start|>user\\n{text}<|im_end|>\\n" / same for assistant /
            "<|im_start|>assistant\\n" / reply with no prefix

A custom template is a JSON object with the keys user, assistant, generation and
optionally reply_prefix (default ""), e.g. for `data.template`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from align import errors

ROLES = ("user", "assistant")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """Per-role formats with a "{text}" slot, the text that asks for a reply, and the reply prefix."""

    name: str
    user: str
    assistant: str
    generation: str
    reply_prefix: str = ""

    def __post_init__(self):
        for role in ROLES:
            fmt = getattr(self, role)
            if not isinstance(fmt, str) or fmt.count("{text}") != 1:
                raise errors.ConfigError(
                    f"chat template {self.name!r}: the {role!r} format must hold "
                    f"'{{text}}' exactly once, got {fmt!r}")
        for key in ("generation", "reply_prefix"):
            if not isinstance(getattr(self, key), str):
                raise errors.ConfigError(f"chat template {self.name!r}: {key!r} must be text")

    def prompt(self, turns: Sequence[tuple[str, str]]) -> str:
        """The prompt for the next assistant reply after `turns` ((role, text) pairs, texts stripped)."""
        if not turns:
            raise errors.DataError("a chat prompt needs at least one turn")
        parts = []
        for role, text in turns:
            if role not in ROLES:
                raise ValueError(f"unknown chat role {role!r}; valid: {ROLES}")
            # replace, not str.format: the text (and the format) may hold braces.
            parts.append(getattr(self, role).replace("{text}", text.strip()))
        return "".join(parts) + self.generation

    def reply(self, text: str) -> str:
        """A reply as it follows this template's prompt."""
        return self.reply_prefix + text.strip()

    def spec(self) -> dict:
        """The fields as a plain dict (what a dataset built with this template depends on)."""
        return dataclasses.asdict(self)


HH = ChatTemplate("hh", user="\n\nHuman: {text}", assistant="\n\nAssistant: {text}",
                  generation="\n\nAssistant:", reply_prefix=" ")
CHATML = ChatTemplate("chatml", user="<|im_start|>user\n{text}<|im_end|>\n",
                      assistant="<|im_start|>assistant\n{text}<|im_end|>\n",
                      generation="<|im_start|>assistant\n", reply_prefix="")
TEMPLATES = {t.name: t for t in (HH, CHATML)}


def get_template(spec: str | ChatTemplate) -> ChatTemplate:
    """A preset by name ("hh", "chatml"), or a custom template from a JSON object string."""
    if isinstance(spec, ChatTemplate):
        return spec
    if not isinstance(spec, str):
        raise errors.ConfigError(
            f"a chat template is a preset name or a JSON object, got {type(spec).__name__}")
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if not spec.lstrip().startswith("{"):
        raise errors.ConfigError(
            f"unknown chat template {spec!r}; presets: {', '.join(TEMPLATES)}, or a "
            'JSON object {"user": ..., "assistant": ..., "generation": ..., '
            '"reply_prefix": ...} whose role formats hold "{text}"')
    try:
        fields = json.loads(spec)
    except json.JSONDecodeError as e:
        raise errors.ConfigError(f"custom chat template is not valid JSON ({e}): {spec!r}") from e
    keys = {"user", "assistant", "generation", "reply_prefix"}
    if not isinstance(fields, dict) or not {"user", "assistant", "generation"} <= set(fields) \
            or set(fields) - keys:
        raise errors.ConfigError(f"custom chat template needs the keys user, assistant, "
                                 f"generation (and may hold reply_prefix); got {spec!r}")
    return ChatTemplate("custom", **fields)
