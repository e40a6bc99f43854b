"""SFT of a policy on the synthetic review world.

align train --config configs/sft.py:size=small,steps=600 --workdir runs/sft
"""

from align import config as config_lib
from configs import common


def get_config(arg=None):
    args = config_lib.parse_config_arg(arg, defaults={"size": "small", "steps": 600})
    cfg = common.base()
    common.model(cfg, args["size"], max_len=64)
    common.reviews_data(cfg)
    common.objective(cfg, "sft")
    common.schedule(cfg, steps=args["steps"], lr=3e-3)
    cfg.eval.update(num_samples=256, max_new_tokens=48, temperature=1.0)
    return cfg
