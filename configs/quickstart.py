"""The main job: SFT a small policy on the synthetic review world, then DPO it, in minutes on a CPU.

align train --config configs/quickstart.py --workdir runs/quickstart
SFT runs in WORKDIR/sft first (skipped once finished), then DPO in WORKDIR.
Variants: configs/quickstart.py:size=tiny,steps=50,sft_steps=100; stage=sft (only SFT);
objective=ppo or objective=nash_md (or online_dpo, online_ipo, ipo_md, rloo, grpo: online
training on the world's gold reward or labeler instead of DPO); objective=ipo (or any offline
preference objective).
"""

from align import config as config_lib
from configs import online, preference, sft


def get_config(arg=None):
    args = config_lib.parse_config_arg(
        arg, defaults={"size": "small", "steps": 0, "sft_steps": 600, "stage": "",
                       "objective": "dpo"})
    if args["stage"] == "sft":
        return sft.get_config(f"size={args['size']},steps={args['sft_steps']}")
    if args["stage"]:
        raise ValueError(f"stage must be 'sft' (or left out), got {args['stage']!r}")
    name = args["objective"]
    common = f"size={args['size']},sft_steps={args['sft_steps']}"
    if name in online.NAMES:
        return online.get_config(f"objective={name},steps={args['steps'] or 100},{common}")
    return preference.get_config(f"objective={name},steps={args['steps'] or 300},{common}")
