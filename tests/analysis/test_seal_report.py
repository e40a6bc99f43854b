"""The SEAL report on pairs given as a JSON-lines file with feature columns, and its errors."""

import json

import numpy as np
import pytest

from align import errors
from align.analysis import reward_models, seal_report


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = rng.integers(0, 5, size=2), rng.normal(size=2)
        out.append({"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}",
                    "chosen_len": int(a[0]), "rejected_len": int(a[1]),
                    "chosen_value": float(b[0]), "rejected_value": float(b[1]),
                    "chosen_gold": float(b[0]), "rejected_gold": float(b[1])})
    return out


def test_a_file_of_pairs_with_feature_columns(tmp_path):
    rows = _rows()
    path = _write(tmp_path / "pairs.jsonl", rows)
    pairs = seal_report.pairs_from_file(path, ["len", "value"])
    assert pairs.m == 40 and pairs.features["len"].shape == (80,)
    assert pairs.features["len"][0] == rows[0]["chosen_len"]
    assert pairs.features["len"][40] == rows[0]["rejected_len"]
    # A reward model that reads the features back: 2·value + 0.5·len.
    table = {}
    for r in rows:
        for side in ("chosen", "rejected"):
            table[r[side]] = 2 * r[f"{side}_value"] + 0.5 * r[f"{side}_len"]
    model = reward_models.from_function(
        lambda prompts, texts: np.array([table[t] for t in texts]), "readback")
    report = seal_report.analyse(model, pairs)
    sd = np.std(np.concatenate([[table[r["chosen"]] for r in rows],
                                [table[r["rejected"]] for r in rows]]), ddof=1)
    assert report.imprint.model["len"] == pytest.approx(0.5 / sd)
    assert report.imprint.gold["len"] == pytest.approx(0.0, abs=1e-12)
    margins = np.array([table[r["chosen"]] - table[r["rejected"]] for r in rows])
    assert report.resistance.resistance == pytest.approx(np.mean(margins <= 0))
    assert report.flips is None
    md = report.markdown()
    assert "| len |" in md and "label contradicts gold" in md
    assert seal_report.pairs_from_file(path, ["len"], limit=5).m == 5


@pytest.mark.parametrize("edit, kind", [
    (lambda r: r.pop("chosen_len"), "missing_field"),
    (lambda r: r.update(chosen_len="three"), "wrong_type"),
    (lambda r: r.update(rejected=" "), "empty_completion"),
])
def test_a_bad_line_is_named(tmp_path, edit, kind):
    rows = _rows(5)
    edit(rows[3])
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(errors.DataError, match=rf"bad.jsonl:4: bad row \({kind}\)"):
        seal_report.pairs_from_file(path, ["len"])


def test_gold_on_some_lines_only_is_refused(tmp_path):
    rows = _rows(3)
    del rows[2]["chosen_gold"], rows[2]["rejected_gold"]
    with pytest.raises(errors.DataError, match="bad.jsonl:3: gold columns"):
        seal_report.pairs_from_file(_write(tmp_path / "bad.jsonl", rows), ["len"])


def test_the_command_names_a_missing_model(tmp_path, capsys):
    path = _write(tmp_path / "pairs.jsonl", _rows(3))
    assert seal_report.main(["--model", str(tmp_path / "nothing"), "--pairs", path,
                             "--features", "len"]) == 2
    assert "neither a run's workdir nor a Hugging Face checkpoint" in capsys.readouterr().err
