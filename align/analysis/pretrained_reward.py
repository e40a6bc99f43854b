"""Hugging Face reward models (`...ForSequenceClassification`, one label) as text scorers.

Dimension letters: N sequences, B batch, T tokens.

`from_pretrained(path)` loads a checkpoint directory (config.json, model.safetensors or a
sharded index, and tokenizer.json or tokenizer.model) and scores (prompt, completion) pairs.

- Encoding: by default a pair is laid out as align's data pipeline lays out one sequence,
  `[bos] + encode(prompt) + encode(completion) + [eos]` (`encoding.prompt_ids` without its
  cut, then `encoding.completion_ids`: eos appended once; the completion's ids are split from
  the joint encoding of prompt + completion, as the pipeline does for public data with
  data.tokenize="joint", or encoded alone where the prompt's ids are not a prefix of that).
  `format_fn(prompt, completion) -> str` replaces that with the encoding of its text (a chat
  template, say): special-token strings in it become their ids and nothing is added.
- Length: a sequence longer than `max_len` (default the model's) is an error naming its row;
  nothing is cut.
- Reward: transformers' rule. The score layer gives r_t = w · h_t + b at every token, and a
  sequence's reward is r_t at its last token whose id is not config.json's pad_token_id (its
  last token when config.json sets none; position 0 when every token is the pad id). So when
  the pad id equals the eos id, the eos that the default encoding appends is not the scored
  token, exactly as in transformers on the same ids.
- Batches: rows are right-padded to the longest in the batch rounded up to a power of two
  (at most max_len) and a last short batch is filled to `batch_size` rows, so few shapes
  compile. Under causal attention right padding leaves every real token's hidden state as is.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from align import config as config_lib
from align import errors
from align import mesh as mesh_lib
from align.data import encoding, hf_tokenizer
from align.models import hf_checkpoint, specs
from align.models.heads import last_token_value


def last_non_pad_value(values_BxT, tokens_BxT, input_mask_BxT, pad_token_id: int | None):
    """transformers' pooled score: each row's value at its last real token that is not pad.

    Real tokens are those in input_mask_BxT; with pad_token_id None every real token counts.
    A row with no such token gets its value at position 0, as transformers' argmax gives.
    """
    scored_BxT = jnp.asarray(input_mask_BxT) > 0
    if pad_token_id is not None:
        scored_BxT = scored_BxT & (jnp.asarray(tokens_BxT) != pad_token_id)
    value_B = last_token_value(values_BxT, scored_BxT)
    return jnp.where(jnp.any(scored_BxT, axis=1), value_B, values_BxT[:, 0].astype(jnp.float32))


class PretrainedRewardModel:
    """A loaded sequence-classification reward model; see the module docstring for its rules."""

    def __init__(self, path: str, *, devices=None, batch_size: int = 32,
                 max_len: int | None = None,
                 format_fn: Callable[[str, str], str] | None = None, dtype: str | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"from_pretrained: batch_size must be a positive int, got "
                             f"{batch_size!r}")
        self.path = os.path.abspath(path)
        self.name = os.path.basename(os.path.normpath(self.path))
        self.batch_size, self.format_fn = batch_size, format_fn
        self.mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1},
                                       list(devices or jax.devices())[:1])
        self.rules = mesh_lib.logical_rules(config_lib.default_config().mesh.rules)
        # Arguments, config and tokenizer are checked before any weight is read.
        _, file_cfg = hf_checkpoint.read_hf_config(path)
        self.max_len = file_cfg.max_len if max_len is None else max_len
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or not (
                1 <= self.max_len <= file_cfg.max_len):
            raise ValueError(f"from_pretrained: max_len must be an int in [1, "
                             f"{file_cfg.max_len}] (the model's), got {max_len!r}")
        self.tokenizer = hf_tokenizer.load_tokenizer(path)
        overrides = {} if dtype is None else {"dtype": dtype}  # compute dtype = param dtype
        self.cfg, self.params, self.pad_token_id = hf_checkpoint.load_reward_model(
            path, self.mesh, self.rules, dtype=dtype, overrides=overrides)
        # Padding ids sit past every row's end and are never scored; any valid id would do.
        self._fill_id = self.tokenizer.pad_id if self.pad_token_id is None else self.pad_token_id
        model_def = specs.describe(specs.scalar_model().make_fn(self.cfg))
        pad_token_id = self.pad_token_id

        def score(params, batch):
            model = specs.bind(model_def, params)
            values_BxT = model(batch["tokens"], input_mask_BxT=batch["input_mask"])
            return last_non_pad_value(values_BxT, batch["tokens"], batch["input_mask"],
                                      pad_token_id)

        self._score = jax.jit(mesh_lib.traced_under(score, self.mesh, self.rules))

    def __repr__(self) -> str:
        return (f"PretrainedRewardModel(name={self.name!r}, max_len={self.max_len}, "
                f"pad_token_id={self.pad_token_id})")

    def _ids(self, index: int, prompt: str, completion: str) -> list[int]:
        tok = self.tokenizer
        if self.format_fn is not None:
            text = self.format_fn(prompt, completion)
            if not isinstance(text, str):
                raise TypeError(f"row {index}: format_fn must return text, got "
                                f"{type(text).__name__}")
            return list(tok.encode(text))
        prefix = encoding.bos_ids(tok) + list(tok.encode(prompt))  # prompt_ids, never cut
        return prefix + encoding.completion_ids(tok, completion, "completion", index,
                                                prompt=prompt, joint=True)

    def token_ids(self, prompts: Sequence[str], completions: Sequence[str]) -> list[list[int]]:
        """Each pair's token ids as scored; a row too long, empty or out of vocab is an error."""
        if len(prompts) != len(completions):
            raise ValueError(f"{self.name}: {len(prompts)} prompts but {len(completions)} "
                             "completions")
        rows = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            ids = self._ids(i, prompt, completion)
            if not ids:
                raise errors.DataError(f"row {i}: the sequence has no tokens")
            if len(ids) > self.max_len:
                raise errors.DataError(f"row {i}: {len(ids)} tokens exceed max_len "
                                       f"{self.max_len} of reward model {self.name}")
            bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
            if bad:
                raise errors.DataError(f"row {i}: token id {bad[0]} is outside the reward "
                                       f"model's vocabulary [0, {self.cfg.vocab_size})")
            rows.append(ids)
        return rows

    def rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """r(prompt, completion) for each pair, float64 [N]."""
        rows = self.token_ids(prompts, completions)
        out_N = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            t = min(self.max_len, 1 << (max(map(len, chunk)) - 1).bit_length())
            tokens_BxT = np.full((self.batch_size, t), self._fill_id, np.int32)
            mask_BxT = np.zeros((self.batch_size, t), np.int32)
            for b, ids in enumerate(chunk):
                tokens_BxT[b, :len(ids)] = ids
                mask_BxT[b, :len(ids)] = 1
            batch = mesh_lib.to_global({"tokens": tokens_BxT, "input_mask": mask_BxT},
                                       self.mesh, self.rules)
            reward_B = mesh_lib.to_host(self._score(self.params, batch))
            out_N.append(np.asarray(reward_B, np.float64)[:len(chunk)])
        return np.concatenate(out_N) if out_N else np.zeros((0,), np.float64)


def from_pretrained(path: str, *, devices=None, batch_size: int = 32, max_len: int | None = None,
                    format_fn: Callable[[str, str], str] | None = None,
                    dtype: str | None = None) -> PretrainedRewardModel:
    """A Hugging Face sequence-classification reward model at `path`, on one device.

    devices: the first is used (default jax.devices()). dtype: "float32" (None) or
    "bfloat16", for the backbone's parameters and its compute; the score head stays fp32.
    """
    return PretrainedRewardModel(path, devices=devices, batch_size=batch_size,
                                 max_len=max_len, format_fn=format_fn, dtype=dtype)
