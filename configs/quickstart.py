"""The main job: SFT of a small policy on the synthetic review world, in minutes on a CPU.

python -m align.main --config configs/quickstart.py --workdir runs/quickstart
Structural variants: configs/quickstart.py:size=tiny,steps=50
"""

from align import config as config_lib
from configs import common


def get_config(arg=None):
    args = config_lib.parse_config_arg(arg, defaults={"size": "small", "steps": 600})
    cfg = common.base()
    common.model(cfg, args["size"], max_len=64)
    common.reviews_data(cfg, max_len=64, max_prompt_len=16, batch_size=32, vocab_size=128,
                        num_train=20000, num_test=512, num_prompts=512)
    common.objective(cfg, "sft")
    cfg.train.steps = args["steps"]
    cfg.train.eval_every = max(args["steps"] // 2, 1)
    cfg.train.checkpoint_every = max(args["steps"] // 4, 1)
    cfg.optim.update(lr=3e-3, warmup_steps=min(50, args["steps"] // 5), weight_decay=0.01)
    cfg.eval.update(num_samples=256, max_new_tokens=48, temperature=1.0)
    return cfg
