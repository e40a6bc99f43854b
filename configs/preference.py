"""Preference training (any pairwise or listwise objective) from a finished SFT run.

align train --config configs/preference.py:objective=ipo --workdir runs/ipo
The SFT run lives in WORKDIR/sft and is trained first if it has not finished (or point
--config.init.workdir at another run). Listwise objectives read K-lists of data.list_size.
An objective of your own is named package.module:name (docs/objectives.md), e.g.
PYTHONPATH=docs/examples align train --config configs/preference.py:objective=kto:kto ...
"""

from align import config as config_lib
from align import objectives
from configs import common

# Settings of the synthetic world that suit each objective family; anything else keeps the
# objective's registered defaults (the papers' values).
TUNED = {
    "dpo": {"beta": 0.1}, "cdpo": {"beta": 0.1}, "robust_dpo": {"beta": 0.1},
    "ipo": {"tau": 0.1}, "slic_norm": {"beta": 0.1},
}


def get_config(arg=None):
    args = config_lib.parse_config_arg(
        arg, defaults={"objective": "dpo", "size": "small", "steps": 300, "sft_steps": 600})
    if args["objective"] not in names() and ":" not in args["objective"]:
        raise ValueError(f"configs/preference.py trains {', '.join(names())}, or "
                         f"package.module:name (an objective of your own); got "
                         f"{args['objective']!r}")
    cfg = common.base()
    common.model(cfg, args["size"], max_len=64)
    common.reviews_data(cfg, num_train=8192, list_size=4)
    common.objective(cfg, args["objective"], **TUNED.get(args["objective"], {}))
    common.schedule(cfg, steps=args["steps"], lr=2e-4, warmup=20)
    common.start_from(cfg, "{workdir}/sft",
                      f"configs/sft.py:size={args['size']},steps={args['sft_steps']}")
    cfg.eval.update(num_samples=256, max_new_tokens=48, temperature=1.0)
    return cfg


def names() -> list[str]:
    """The objectives this config can train (the offline preference ones)."""
    from configs import online
    return [n for n in objectives.names()
            if n not in ("sft", "reward_model", "preference_model") + online.NAMES]
