"""Online training from a finished SFT run: every online objective on the synthetic world.

align train --config configs/online.py:objective=nash_md --workdir runs/nash
Preference-scored (two completions per prompt, P(a ≻ b) from online.scorer: the world's
labeler by default, or a trained preference / reward model): online_dpo, online_ipo, online_slic,
ipo_md,
nash_md. Reward-scored (online.scorer: the world's gold reward by default, or a trained reward
model): ppo (one completion per prompt, a value head, several epochs of minibatches per
rollout), rloo and grpo (objective.samples completions per prompt).
"""

from align import config as config_lib
from configs import common

PREFERENCE = ("online_dpo", "online_ipo", "online_slic", "ipo_md", "nash_md")
REWARD = ("ppo", "rloo", "grpo")
NAMES = PREFERENCE + REWARD


def get_config(arg=None):
    args = config_lib.parse_config_arg(
        arg, defaults={"objective": "nash_md", "size": "small", "steps": 100, "sft_steps": 600})
    name = args["objective"]
    if name not in NAMES:
        raise ValueError(f"objective must be one of {NAMES}, got {name!r}")
    cfg = common.base()
    common.model(cfg, args["size"], max_len=64)
    common.reviews_data(cfg, batch_size=32)
    common.objective(cfg, name)
    common.schedule(cfg, steps=args["steps"], lr=2e-4, warmup=10)
    common.start_from(cfg, "{workdir}/sft",
                      f"configs/sft.py:size={args['size']},steps={args['sft_steps']}")
    cfg.online.update(max_new_tokens=48, temperature=1.0)
    cfg.eval.update(num_samples=256, max_new_tokens=48, temperature=1.0)
    if name == "ppo":
        # Two epochs of two minibatches per rollout, and a fixed KL coefficient: at this
        # scale the adaptive controller (horizon 10000 samples) would barely move it.
        cfg.online.update(epochs=2, minibatches=2)
        cfg.objective.update(kl_coef=0.05, kl_target=0.0)
    return cfg
