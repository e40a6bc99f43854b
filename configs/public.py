"""Preference training on a public dataset from a pretrained Hugging Face checkpoint.

    align train --workdir runs/hh \
        --config configs/public.py:dataset=hh_rlhf,checkpoint=/ckpt/Llama-3.2-1B,manual_dir=/data/hh-rlhf

dataset=hh_rlhf (DPO, after SFT on the preferred replies), tldr (DPO, after SFT on the
filtered TL;DR summaries) or ultrafeedback (LiPO-λ on K-lists of graded completions, from
the checkpoint directly: UltraFeedback has no demonstration split). objective=NAME picks any
other offline objective that reads the same kind of data; sft_steps=0 skips the SFT stage;
subsets=a+b picks the dataset's subsets (HH-RLHF: helpful-base+harmless-base by default).
The SFT stage runs first in WORKDIR/sft (skipped once finished). Without manual_dir the
original files are downloaded (see align/data/public.py for the URLs and layouts).
README.md ("Public data and pretrained models") lists the fetch commands and hardware.
"""

from align import config as config_lib
from configs import common

DEFAULTS = {  # dataset -> (objective, SFT steps, subsets)
    "hh_rlhf": ("dpo", 1000, "helpful-base,harmless-base"),
    "tldr": ("dpo", 1000, ""),
    "ultrafeedback": ("lipo_lambda", 0, ""),
}


def get_config(arg=None):
    args = config_lib.parse_config_arg(arg, defaults={
        "dataset": "hh_rlhf", "checkpoint": "", "manual_dir": "", "objective": "",
        "steps": 2000, "sft_steps": -1, "batch": 64, "max_len": 512, "max_prompt_len": 256,
        "list_size": 4, "dtype": "bfloat16", "fsdp": 1, "subsets": "", "stage": ""})
    name = args["dataset"]
    if name not in DEFAULTS:
        raise ValueError(f"dataset must be one of {tuple(DEFAULTS)}, got {name!r}")
    objective, sft_steps, subsets = DEFAULTS[name]
    objective = args["objective"] or objective
    sft_steps = sft_steps if args["sft_steps"] < 0 else args["sft_steps"]
    if args["stage"] not in ("", "sft"):
        raise ValueError(f"stage must be 'sft' (or left out), got {args['stage']!r}")
    sft_stage = args["stage"] == "sft"

    cfg = common.base()
    common.pretrained(cfg, args["checkpoint"])
    cfg.model.update(dtype=args["dtype"], remat="full" if args["max_len"] > 256 else "none")
    common.reviews_data(cfg)
    cfg.data.update(source=name, manual_dir=args["manual_dir"],
                    subsets=args["subsets"].replace("+", ",") or subsets,
                    batch_size=args["batch"], eval_batch_size=args["batch"],
                    max_len=args["max_len"], max_prompt_len=args["max_prompt_len"],
                    list_size=args["list_size"])
    cfg.mesh.update(fsdp=args["fsdp"])
    cfg.logprobs.chunk_size = 128  # never holds [batch, tokens, vocab] logits of a 32k+ vocab
    cfg.eval.update(num_samples=64, max_new_tokens=128, num_batches=4)
    if sft_stage:
        common.objective(cfg, "sft")
        common.schedule(cfg, steps=sft_steps, lr=1e-5, warmup=100)
        return cfg
    # DPO (Rafailov et al.): β 0.1, lr 1e-6 with 150 warmup steps, batch 64.
    common.objective(cfg, objective)
    common.schedule(cfg, steps=args["steps"], lr=1e-6, warmup=150)
    cfg.optim.weight_decay = 0.0
    if sft_steps:
        # The preference stage starts from the SFT stage's run; the checkpoint is its start.
        cfg.init.pretrained = ""
        passthrough = ",".join(f"{k}={v}" for k, v in args.items()
                               if k not in ("stage", "objective", "steps"))
        common.start_from(cfg, "{workdir}/sft", f"configs/public.py:{passthrough},stage=sft")
    return cfg
