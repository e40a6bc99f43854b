"""Online preference training from a finished SFT run: online_dpo, online_ipo, ipo_md, nash_md.

python -m align.main --config configs/online.py:objective=nash_md --workdir runs/nash
Each step samples two completions per prompt (from the policy, or its geometric mixture with
the reference), asks the scorer (online.scorer: the world's labeler by default, or a trained
preference / reward model) which is better, and updates on that rollout.
"""

from align import config as config_lib
from configs import common

NAMES = ("online_dpo", "online_ipo", "ipo_md", "nash_md")


def get_config(arg=None):
    args = config_lib.parse_config_arg(
        arg, defaults={"objective": "nash_md", "size": "small", "steps": 100, "sft_steps": 600})
    if args["objective"] not in NAMES:
        raise ValueError(f"objective must be one of {NAMES}, got {args['objective']!r}")
    cfg = common.base()
    common.model(cfg, args["size"], max_len=64)
    common.reviews_data(cfg, batch_size=32)
    common.objective(cfg, args["objective"])
    common.schedule(cfg, steps=args["steps"], lr=2e-4, warmup=10)
    common.start_from(cfg, "sft", f"configs/sft.py:size={args['size']},steps={args['sft_steps']}")
    cfg.online.update(max_new_tokens=48, temperature=1.0)
    cfg.eval.update(num_samples=256, max_new_tokens=48, temperature=1.0)
    return cfg
