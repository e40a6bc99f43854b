"""A Bradley–Terry reward model (or, with :objective=preference_model, a pairwise preference
model) on the synthetic world's labelled pairs, starting from a finished SFT run.

align train --config configs/reward_model.py --workdir runs/rm
align train --config configs/reward_model.py:objective=preference_model --workdir runs/pm
Labeler settings (noise temperature, spoiler biases, intransitivity) are in the `task` section.
"""

from align import config as config_lib
from configs import common


def get_config(arg=None):
    args = config_lib.parse_config_arg(
        arg, defaults={"objective": "reward_model", "size": "small", "steps": 300,
                       "sft_steps": 600})
    if args["objective"] not in ("reward_model", "preference_model"):
        raise ValueError("objective must be reward_model or preference_model, "
                         f"got {args['objective']!r}")
    cfg = common.base()
    common.model(cfg, args["size"], max_len=64)
    common.reviews_data(cfg, num_train=8192)
    common.objective(cfg, args["objective"])
    common.schedule(cfg, steps=args["steps"], lr=3e-4, warmup=20)
    common.start_from(cfg, "{workdir}/sft",
                      f"configs/sft.py:size={args['size']},steps={args['sft_steps']}")
    cfg.eval.num_batches = 8
    return cfg
