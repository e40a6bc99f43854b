"""Shared fixtures for objective tests: a tiny language model, batches in the pipeline's
layouts, a float64 NumPy oracle of sequence log-probs, and the train step's call order.

An objective's own test file uses these as fixtures (arguments of the test function):

    def test_my_loss(tiny_lm, pairs_batch, step_batch, np_sequence_logp):
        policy, reference = tiny_lm(0), tiny_lm(1)
        batch, stats = step_batch(objective, policy, reference, pairs_batch(seed=0))
        out = objective.loss(policy, batch, objective.init(), rng=None)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from align.models import transformer as tr

TINY = tr.TransformerConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            d_ff=64, max_len=32, init_std=0.2)


def make_tiny_lm(seed: int, cfg: tr.TransformerConfig = TINY):
    """A tiny Transformer with NumPy-drawn weights (no per-parameter compiles: keeps tests fast)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: tr.Transformer(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    draw = lambda x: (np.ones(x.shape, np.float32) if x.ndim == 1  # norm scales
                      else (cfg.init_std * rng.normal(size=x.shape)).astype(np.float32))
    return nnx.merge(graphdef, jax.tree.map(lambda x: jnp.asarray(draw(x)), state))


def make_sequences(rng, b: int, t: int, vocab: int, prompt_len=None):
    """tokens, input_mask, loss_mask [b, t]: right-padded prompt + completion rows."""
    prompt_len = rng.integers(2, 5, b) if prompt_len is None else prompt_len
    tokens = rng.integers(1, vocab, (b, t)).astype(np.int32)
    length = prompt_len + rng.integers(1, t - 4, b)
    input_mask = (np.arange(t) < length[:, None]).astype(np.int32)
    loss_mask = (input_mask & (np.arange(t) >= prompt_len[:, None])).astype(np.int32)
    return tokens, input_mask, loss_mask


@pytest.fixture(scope="session")
def tiny_lm():
    """seed -> a tiny language model (vocab 64, max_len 32)."""
    return make_tiny_lm


@pytest.fixture(scope="session")
def pairs_batch():
    """(seed, b=8, t=12) -> a "pairs" batch: chosen_* / rejected_* sharing a prompt."""

    def make(seed=0, b=8, t=12):
        rng = np.random.default_rng(seed)
        prompt_len = rng.integers(2, 5, b)
        prompts = rng.integers(1, TINY.vocab_size, (b, t))
        out = {}
        for side in ("chosen", "rejected"):
            tokens, input_mask, loss_mask = make_sequences(rng, b, t, TINY.vocab_size, prompt_len)
            tokens = np.where(np.arange(t) < prompt_len[:, None], prompts, tokens).astype(np.int32)
            out.update({f"{side}_tokens": tokens, f"{side}_input_mask": input_mask,
                        f"{side}_loss_mask": loss_mask})
        out["example_id"] = np.arange(b, dtype=np.int32)
        return out

    return make


@pytest.fixture(scope="session")
def sft_batch():
    """(seed, b=8, t=12) -> an "sft" batch: tokens, input_mask, loss_mask [b, t]."""

    def make(seed=0, b=8, t=12):
        tokens, input_mask, loss_mask = make_sequences(np.random.default_rng(seed), b, t,
                                                       TINY.vocab_size)
        return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask,
                "example_id": np.arange(b, dtype=np.int32)}

    return make


@pytest.fixture(scope="session")
def np_sequence_logp():
    """(model, tokens, input_mask, loss_mask) -> S(y) [B]: the summed completion log-probs from a
    float64 NumPy log-softmax of the model's logits (the oracle for `align.logprobs`)."""

    def oracle(model, tokens, input_mask, loss_mask):
        hidden, _ = model(jnp.asarray(tokens), input_mask_BxT=jnp.asarray(input_mask))
        logits = np.asarray(model.logits(hidden), np.float64)
        top = logits.max(-1, keepdims=True)
        logz = np.log(np.sum(np.exp(logits - top), -1)) + top[..., 0]
        picked = (np.take_along_axis(logits[:, :-1], np.asarray(tokens)[:, 1:, None], -1)[..., 0]
                  - logz[:, :-1])
        return (picked * np.asarray(loss_mask)[:, 1:]).sum(1)

    return oracle


def prepare_as_step(objective, policy, reference, batch, obj_state=None, *, rng=None):
    """(batch, stats) as the train step hands them to `loss`: the reference's fields first (when
    a reference is given; else the batch must carry them, as from the cache), then `prepare`."""
    obj_state = objective.init() if obj_state is None else obj_state
    if reference is not None and objective.reference_fields is not None:
        batch = {**batch, **objective.reference_fields(reference, batch)}
    return objective.prepare(policy, batch, obj_state, rng=rng)


@pytest.fixture(scope="session")
def step_batch():
    """`prepare_as_step`: (objective, policy, reference, batch, obj_state=None, rng=None)."""
    return prepare_as_step
