"""Online objectives: each raises the gold reward from SFT; 1 and 8 devices agree."""

import os

import jax
import numpy as np
import pytest

from align import config as config_lib
from align.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--config.data.num_train=2048", "--config.data.num_test=64",
         "--config.data.num_prompts=256", "--config.eval.num_batches=1",
         "--config.train.progress=False"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A tiny SFT policy that writes reviews: the start of every online run."""
    workdir = str(tmp_path_factory.mktemp("sft"))
    cfg = config_lib.resolve(os.path.join(ROOT, "configs/sft.py:size=tiny,steps=300"),
                             SMALL + ["--config.train.eval_every=0",
                                      "--config.eval.num_samples=0"])
    config_lib.write_config(cfg, workdir)
    setup = loop.build(cfg, workdir, devices=jax.devices()[:1])
    try:
        loop.train(setup)
    finally:
        setup.close()
    return workdir


def _online(name, sft_run, workdir, devices, *overrides):
    cfg = config_lib.resolve(
        os.path.join(ROOT, f"configs/online.py:objective={name},size=tiny,steps=12"),
        SMALL + [f"--config.init.workdir={sft_run}", "--config.init.config=",
                 "--config.data.batch_size=16", "--config.optim.lr=5e-4",
                 "--config.optim.warmup_steps=0", "--config.train.eval_every=0",
                 "--config.train.log_every=1", "--config.eval.num_samples=0",
                 "--config.online.max_new_tokens=24", *overrides])
    setup = loop.build(cfg, str(workdir), devices=devices)
    return setup


REPORTED = {  # what every online step reports, and what each kind adds
    "all": ("train/gold_reward", "train/entropy", "train/sampler_tokens_per_s", "train/loss"),
    "ppo": ("train/reward", "train/rollout_kl", "train/clip_fraction", "train/value_loss",
            "train/rollout_kl_coef"),
    "nash_md": ("train/pref_mean", "train/rollout_kl"),
    "grpo": ("train/reward", "train/rollout_kl", "train/clip_fraction", "train/k3_kl"),
}


@pytest.mark.parametrize("name", ["online_dpo", "online_ipo", "ipo_md", "nash_md", "ppo",
                                  "rloo", "grpo"])
def test_short_online_run_raises_the_gold_reward(name, sft_run, tmp_path):
    # Evaluations at step 0 and at the end, on the same 64 held-out prompts and keys.
    setup = _online(name, sft_run, tmp_path, jax.devices()[:1], "--config.eval.num_samples=64",
                      "--config.train.eval_every=1000")
    try:
        result = loop.train(setup)
    finally:
        setup.close()
    from align.train import metrics as metrics_lib
    start = [r for r in metrics_lib.read_metrics(str(tmp_path))
             if r["step"] == 0 and "eval/sample_gold_reward" in r][0]
    before, after = start["eval/sample_gold_reward"], result["eval"]["sample_gold_reward"]
    rows = [r for r in metrics_lib.read_metrics(str(tmp_path)) if "train/gold_reward" in r]
    assert len(rows) == 12 and all(np.isfinite(r["train/gold_reward"]) for r in rows)
    for key in REPORTED["all"] + REPORTED.get(name, ()):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert after > before + 0.05, (before, after)


# Every online objective on 1 and on 8 devices; two steps where state carries over matters
# most (the mixture sampler, PPO's value and KL state, groups of samples).
@pytest.mark.parametrize("name,steps", [("nash_md", 2), ("ppo", 2), ("grpo", 2),
                                        ("online_dpo", 1), ("online_ipo", 1), ("online_slic", 1),
                                        ("ipo_md", 1), ("rloo", 1)])
def test_one_and_eight_devices_agree(name, steps, sft_run, tmp_path):
    results = []
    for n, mesh in ((1, []), (8, ["--config.mesh.data=4", "--config.mesh.fsdp=2"])):
        setup = _online(name, sft_run, tmp_path / str(n), jax.devices()[:n], *mesh)
        try:
            state, _ = loop.restore_or_init(setup, loop.train_iterator(setup))
            it = loop.train_iterator(setup)
            losses = []
            for step in range(steps):
                state, metrics, _ = loop.advance(setup, state, next(it), step)
                losses.append(float(metrics["loss"]))
            results.append((losses, [np.asarray(x) for x in jax.tree.leaves(state["params"])]))
        finally:
            setup.close()
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-4, atol=1e-6)
    for a, b in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_best_of_n_from_a_finished_run(sft_run, tmp_path, capsys):
    from align.evaluate import best_of_n as bon
    proxy, gold, prompts, texts = bon.sample_and_score(sft_run, samples=4, num_prompts=8)
    assert proxy.shape == gold.shape == texts.shape == (8, 4) and len(prompts) == 8
    np.testing.assert_array_equal(proxy, gold)  # the gold scorer is its own proxy
    # Samples of one prompt differ (each has its own key), and best-of-n can only gain.
    assert all(len(set(row)) > 1 for row in texts)
    rows = bon.table(proxy, gold, [1, 2, 4])
    assert rows[0]["gold"] <= rows[1]["gold"] <= rows[2]["gold"]
    assert rows[2]["gold"] > rows[0]["gold"]
    out = tmp_path / "bon.json"
    assert bon.main(["--workdir", sft_run, "--n", "1,4", "--samples", "4", "--prompts", "8",
                     "--out", str(out)]) == 0
    assert "| 4 | 0.636 |" in capsys.readouterr().out and out.exists()
    assert bon.main(["--workdir", str(tmp_path / "none"), "--n", "1"]) == 2
