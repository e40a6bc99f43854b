"""The main job: SFT a small policy on the synthetic review world, then DPO it, in minutes on a CPU.

python -m align.main --config configs/quickstart.py --workdir runs/quickstart
SFT runs in WORKDIR/sft first (skipped once finished), then DPO in WORKDIR.
Structural variants: configs/quickstart.py:size=tiny,steps=50,sft_steps=100 (stage=sft: only SFT).
"""

from align import config as config_lib
from configs import preference, sft


def get_config(arg=None):
    args = config_lib.parse_config_arg(
        arg, defaults={"size": "small", "steps": 300, "sft_steps": 600, "stage": "dpo"})
    if args["stage"] == "sft":
        return sft.get_config(f"size={args['size']},steps={args['sft_steps']}")
    if args["stage"] != "dpo":
        raise ValueError(f"stage must be 'sft' or 'dpo', got {args['stage']!r}")
    return preference.get_config(
        f"objective=dpo,size={args['size']},steps={args['steps']},sft_steps={args['sft_steps']}")
