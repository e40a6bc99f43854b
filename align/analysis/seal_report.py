"""SEAL's analyses of one reward model on labelled pairs, as a command and a function.

    python -m align.analysis.seal_report --model RUN [--member P] [--pre RUN [--pre_member P]]
        [--pairs FILE.jsonl] [--features a,b] [--num_pairs N] [--split train] [--out report.md]

The model (and the pre-training model, for the regimes) is a finished reward-model run's
workdir (`--member` for a population) or a Hugging Face sequence-classification checkpoint
directory (align/analysis/pretrained_reward.py).

Pairs come from the model run's own labelled pairs (`--split`, the first `--num_pairs`) or
from a JSON-lines file with one pair per line: "prompt", "chosen", "rejected", and for each
feature f named by `--features` the columns "chosen_f" and "rejected_f" (features as columns,
for text without a feature extractor); optional "chosen_gold" / "rejected_gold" give the gold
regression and split resistance by the label's truth. A bad line is an error naming FILE:LINE.

For runs in the review world, the features default to the world's exact ones, gold is the
world's, and robustness is measured with its gold-invariant rewrites (align/analysis/rewrites.py).
Dimension letters: M pairs, N = 2M texts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Sequence

import numpy as np

from align import atomic
from align import errors
from align.analysis import pretrained_reward, reward_models, rewrites, seal
from align.data import encoding, sources
from align.data import rows as rows_lib
from align.train import runs

WORLD_FEATURES = ("sentiment_sum", "mentions_product", "mentions_aspect", "off_topic",
                  "n_sentences", "n_fillers")


@dataclasses.dataclass
class Pairs:
    """M labelled pairs (chosen ≻ rejected) with features of each text."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    features: dict  # name -> [N] values, chosen texts then rejected texts
    gold: np.ndarray | None  # [N] or None
    world: object = None  # the review world, when the pairs come from it

    @property
    def m(self) -> int:
        return len(self.prompts)


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise rows_lib.BadRow("missing_field", f"no field {key!r}")
    if not isinstance(value, str):
        raise rows_lib.BadRow("wrong_type", f"field {key!r} is a {type(value).__name__}, "
                              "not text")
    if not value.strip() and key != "prompt":
        raise rows_lib.BadRow("empty_completion", f"field {key!r} is empty")
    return value


def _number(row: dict, key: str) -> float:
    value = row.get(key)
    if value is None:
        raise rows_lib.BadRow("missing_field", f"no field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise rows_lib.BadRow("wrong_type", f"field {key!r} = {value!r} is not a finite number")
    return float(value)


def pairs_from_file(path: str, features: Sequence[str], *, limit: int = 0) -> Pairs:
    """Pairs and their feature columns from a JSON-lines file (module docstring)."""
    log = rows_lib.RowLog("error")
    out = {"prompt": [], "chosen": [], "rejected": []}
    feats = {f: ([], []) for f in features}
    gold: tuple[list, list] | None = None
    for where, row in log.lines(path, path):
        def parse(row=row):
            texts = {k: _text(row, k) for k in out}
            values = {f: (_number(row, f"chosen_{f}"), _number(row, f"rejected_{f}"))
                      for f in features}
            has_gold = "chosen_gold" in row or "rejected_gold" in row
            g = (_number(row, "chosen_gold"), _number(row, "rejected_gold")) if has_gold else None
            return texts, values, g

        texts, values, g = log.parse(where, parse)
        if (g is None) != (gold is None) and out["prompt"]:
            raise errors.DataError(f"{where}: gold columns must be given on every line or none")
        if gold is None and g is not None:
            gold = ([], [])
        for k in out:
            out[k].append(texts[k])
        for f, (a, b) in values.items():
            feats[f][0].append(a)
            feats[f][1].append(b)
        if g is not None:
            gold[0].append(g[0])
            gold[1].append(g[1])
        if limit and len(out["prompt"]) >= limit:
            break
    if not out["prompt"]:
        raise errors.DataError(f"{path}: no pairs")
    return Pairs(out["prompt"], out["chosen"], out["rejected"],
                 {f: np.asarray(a + b, np.float64) for f, (a, b) in feats.items()},
                 None if gold is None else np.asarray(gold[0] + gold[1], np.float64))


def pairs_from_run(workdir: str, *, split: str = "train", limit: int = 1024,
                   features: Sequence[str] = ()) -> Pairs:
    """The first `limit` labelled pairs of a run's data split; the world's features and gold
    when the run is in the review world (its features must then be world features)."""
    run = runs.read_run(os.path.abspath(workdir))
    if run is None:
        raise FileNotFoundError(f"{workdir} holds no run")
    data = sources.prepare(run.cfg, run.workdir, kinds=("pairs",), data_dir=run.data_dir,
                           tokenizer_path=run.tokenizer_path)
    source = data.pairs[split]
    m = min(limit, len(source)) if limit else len(source)
    recs = [source[i] for i in range(m)]
    t = {k: [encoding.text_field(r, k, i) for i, r in enumerate(recs)]
         for k in ("prompt", "chosen", "rejected")}
    if data.world is None:
        raise errors.ConfigError(f"{workdir}: its pairs have no feature extractor; give them as "
                                 "a JSON-lines file with feature columns (--pairs)")
    names = tuple(features) or WORLD_FEATURES
    texts = t["chosen"] + t["rejected"]
    parsed = [data.world.features(p, y) for p, y in zip(t["prompt"] * 2, texts)]
    unknown = sorted(set(names) - set(parsed[0]))
    if unknown:
        raise errors.ConfigError(f"unknown world features {unknown}; valid: {sorted(parsed[0])}")
    feats = {f: np.asarray([x[f] for x in parsed]) for f in names}
    # A feature constant on these pairs (off_topic, in the world's own reviews) says nothing.
    feats = {f: v for f, v in feats.items() if np.ptp(v) > 0}
    gold = np.asarray([x["gold_reward"] for x in parsed])
    return Pairs(t["prompt"], t["chosen"], t["rejected"], feats, gold, data.world)


def load_model(path: str, member: int | None = None, devices=None):
    """A reward-model run's member, or a Hugging Face sequence-classification checkpoint."""
    if os.path.exists(os.path.join(path, "model.json")):
        return reward_models.from_run(path, member=member, devices=devices)
    if os.path.exists(os.path.join(path, "config.json")):
        return pretrained_reward.from_pretrained(path, devices=devices)
    raise FileNotFoundError(f"{path} is neither a run's workdir nor a Hugging Face checkpoint")


@dataclasses.dataclass
class Report:
    imprint: seal.Imprint
    resistance: seal.Resistance
    flips: seal.Flips | None

    def markdown(self, title: str = "SEAL analysis") -> str:
        r = self.resistance
        lines = [f"# {title}", "", f"{r.n} labelled pairs.", "",
                 "## Feature imprint (standardised OLS, pair-clustered 95% intervals)", "",
                 self.imprint.table(), "", "## Agreement and resistance", "",
                 "| measure | share |", "|---|---|"]
        for k, v in r.regimes.items():
            lines.append(f"| {k} | {v:.1%} |")
        if r.regimes:
            lines.append(f"| agreement before | {r.agreement_pre:.1%} |")
        lines += [f"| agreement | {r.agreement_post:.1%} |",
                  f"| resistance (ranks against the label) | {r.resistance:.1%} |"]
        if r.n_gold_agrees or r.n_gold_disagrees:
            lines += [f"| resistance, label agrees with gold ({r.n_gold_agrees} pairs) | "
                      f"{r.resistance_gold_agrees:.1%} |",
                      f"| resistance, label contradicts gold ({r.n_gold_disagrees} pairs) | "
                      f"{r.resistance_gold_disagrees:.1%} |"]
        if self.flips is not None:
            lines += ["", "## Robustness: flips under gold-invariant rewrites", "",
                      "| rewrite | cases | flipped |", "|---|---|---|"]
            for k, n in self.flips.counts.items():
                lines.append(f"| {k} | {n} | {self.flips.rates[k]:.2%} |")
            lines.append(f"| all | {sum(self.flips.counts.values())} | "
                         f"{self.flips.overall:.2%} |")
        return "\n".join(lines) + "\n"


def analyse(model, pairs: Pairs, *, pre=None) -> Report:
    """Imprint, regimes / resistance and (in the review world) robustness of `model`."""
    rewards = lambda rm: rm.rewards(pairs.prompts * 2, pairs.chosen + pairs.rejected)
    r_N = rewards(model)
    m = pairs.m
    clusters = np.concatenate([np.arange(m)] * 2)
    imp = seal.imprint(r_N, pairs.features, clusters, gold_N=pairs.gold)
    pre_margin = None
    if pre is not None:
        p_N = rewards(pre)
        pre_margin = p_N[:m] - p_N[m:]
    gold_margin = None if pairs.gold is None else pairs.gold[:m] - pairs.gold[m:]
    res = seal.resistance(r_N[:m] - r_N[m:], pre_margin, gold_margin_M=gold_margin)
    flips = None
    if pairs.world is not None:
        flips = seal.flip_rates(model.rewards, pairs.prompts, pairs.chosen, pairs.rejected,
                                rewrites.world_rewrites(pairs.world))
    return Report(imp, res, flips)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m align.analysis.seal_report",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help="reward-model run workdir or HF checkpoint")
    p.add_argument("--member", type=int, default=None, help="member of a population run")
    p.add_argument("--pre", default="", help="the model before training on the pairs")
    p.add_argument("--pre_member", type=int, default=None)
    p.add_argument("--pairs", default="", help="JSON-lines pairs with feature columns")
    p.add_argument("--features", default="", help="comma-separated feature names")
    p.add_argument("--num_pairs", type=int, default=1024, help="at most this many pairs")
    p.add_argument("--split", default="train", help="the run's split (without --pairs)")
    p.add_argument("--out", default="", help="also write the report here")
    args = p.parse_args(argv)
    features = tuple(f for f in args.features.split(",") if f)
    try:
        if args.pairs:
            if not features:
                p.error("--pairs needs --features (the columns chosen_<f> / rejected_<f>)")
            pairs = pairs_from_file(args.pairs, features, limit=args.num_pairs)
        else:
            pairs = pairs_from_run(args.model, split=args.split, limit=args.num_pairs,
                                   features=features)
        model = load_model(args.model, args.member)
        pre = load_model(args.pre, args.pre_member) if args.pre else None
        report = analyse(model, pairs, pre=pre).markdown(
            f"SEAL analysis of {os.path.basename(os.path.normpath(args.model))}")
    except (errors.InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        atomic.write_text(args.out, report)
    print(report, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
