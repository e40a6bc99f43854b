"""Tests of the grain pipelines and the token layout they produce."""
import functools
import json
import types

import numpy as np
import pytest

from align.data import encoding, pipeline, sources, token_report
from align.data.builders import build_reviews
from align.data.tokenizer import Tokenizer
from align.tasks.reviews import ReviewWorld, WorldConfig


class CharTokenizer:
    """One id per character; pad and eos share an id, as in some real vocabularies."""

    pad_id, eos_id, bos_id = 1, 1, 2

    def encode(self, text):
        return [ord(c) for c in text]


TOK = CharTokenizer()


def _sft_rows(n):
    return [{"prompt": f"p{i:03d}", "completion": f"c{i}", "gold_reward": i / 10} for i in range(n)]


def _ids(iterator, n_batches):
    return [next(iterator)["example_id"].tolist() for _ in range(n_batches)]


def test_sft_layout_with_pad_equal_to_eos():
    ex = pipeline.sft_example(5, {"prompt": "ab", "completion": "xyz", "gold_reward": 0.5}, TOK,
                              max_len=10, max_prompt_len=4)
    assert ex["tokens"].tolist() == [2, 97, 98, 120, 121, 122, 1, 1, 1, 1]
    assert ex["input_mask"].tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    # The eos (id 1 == pad id) is a real, trained-on token; the pads after it are not.
    assert ex["loss_mask"].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    assert ex["gold_reward"] == np.float32(0.5) and ex["example_id"] == 5
    assert {k: v.dtype for k, v in ex.items()} == {
        "tokens": np.int32, "input_mask": np.int32, "loss_mask": np.int32,
        "gold_reward": np.float32, "example_id": np.int32}


def test_pad_id_override():
    ex = pipeline.sft_example(0, {"prompt": "a", "completion": "b"}, TOK, max_len=6,
                              max_prompt_len=2, pad_id=9)
    assert ex["tokens"].tolist() == [2, 97, 98, 1, 9, 9]
    assert ex["loss_mask"].tolist() == [0, 0, 1, 1, 0, 0]
    prompt = pipeline.prompt_example(0, {"prompt": "a"}, TOK, max_prompt_len=4, pad_id=9)
    assert prompt["prompt_tokens"].tolist() == [9, 9, 2, 97]


def test_prompt_truncation_keeps_the_end_and_max_len_cuts_the_completion():
    ex = pipeline.sft_example(0, {"prompt": "abcdefgh", "completion": "xyz"}, TOK,
                              max_len=7, max_prompt_len=4)
    # [bos] + last 3 prompt tokens, then the completion until max_len (eos cut off).
    assert ex["tokens"].tolist() == [2, 102, 103, 104, 120, 121, 122]
    assert ex["loss_mask"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert ex["input_mask"].tolist() == [1] * 7
    assert "gold_reward" not in ex


def test_prompt_batches_are_left_padded_and_keep_text():
    rows = [{"prompt": "ab"}, {"prompt": "abcdefgh"}]
    batch = next(pipeline.batches("prompts", rows, TOK, batch_size=2, max_prompt_len=5, seed=0,
                                  shuffle=False, num_epochs=1, process_index=0,
                                  process_count=1))
    assert batch["prompt_tokens"].tolist() == [[1, 1, 2, 97, 98], [2, 101, 102, 103, 104]]
    assert batch["prompt_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["prompt_text"].dtype == object
    assert batch["prompt_text"].tolist() == ["ab", "abcdefgh"]
    assert batch["example_id"].tolist() == [0, 1]


def test_pairs_share_the_prompt():
    row = {"prompt": "abc", "chosen": "xy", "rejected": "qrst", "chosen_gold": 1.0,
           "rejected_gold": -1.0}
    ex = pipeline.pair_example(3, row, TOK, max_len=10, max_prompt_len=6)
    np.testing.assert_array_equal(ex["chosen_tokens"][:4], ex["rejected_tokens"][:4])
    assert ex["chosen_loss_mask"].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert ex["rejected_loss_mask"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 0]
    assert ex["rejected_tokens"][4:9].tolist() == [113, 114, 115, 116, 1]
    assert (ex["chosen_gold"], ex["rejected_gold"]) == (1.0, -1.0)


def test_lists_are_padded_to_list_size():
    row = {"prompt": "a", "completions": [b"x", b"yz"], "labels": [0.25, 0.75], "gold": [0.1, 0.2]}
    batch = next(pipeline.batches("lists", [row] * 3, TOK, batch_size=2, list_size=4, max_len=6,
                                  max_prompt_len=3, seed=0, process_index=0, process_count=1))
    assert batch["tokens"].shape == (2, 4, 6)
    assert batch["list_mask"].tolist() == [[1, 1, 0, 0]] * 2
    np.testing.assert_allclose(batch["labels"][0], [0.25, 0.75, 0, 0])
    np.testing.assert_allclose(batch["gold"][1], [0.1, 0.2, 0, 0], rtol=1e-6)
    assert batch["loss_mask"][0].tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0],
                                              [0] * 6, [0] * 6]
    with pytest.raises(ValueError, match="record 0: field 'completions' has 2 items; expected 1..1"):
        pipeline.list_example(0, row, TOK, max_len=6, max_prompt_len=3, list_size=1)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "ab"}, "record 7: missing field 'completion'"),
    ({"prompt": 3, "completion": "x"}, "record 7: field 'prompt' must be text, got int"),
    ({"prompt": "ab", "completion": ""}, "record 7: field 'completion' is empty"),
    ({"prompt": "ab", "completion": "x", "gold_reward": "high"},
     "record 7: field 'gold_reward' must be a number"),
])
def test_malformed_sft_rows_name_field_and_record(row, message):
    with pytest.raises(ValueError, match=message):
        pipeline.sft_example(7, row, TOK, max_len=8, max_prompt_len=3)


def test_malformed_row_raises_through_the_iterator():
    rows = _sft_rows(6)
    rows[4] = {"prompt": "ab", "completion": None}
    it = pipeline.batches("sft", rows, TOK, batch_size=6, max_len=8, max_prompt_len=4, seed=0,
                          process_index=0, process_count=1)
    with pytest.raises(ValueError, match="record 4: field 'completion' must be text"):
        next(it)


def test_malformed_list_rows():
    base = {"prompt": "a", "completions": ["x", "y"], "labels": [0.1, 0.2]}
    with pytest.raises(ValueError, match="record 2: field 'labels' has 1 items"):
        pipeline.list_example(2, {**base, "labels": [0.1]}, TOK, max_len=6, max_prompt_len=3,
                              list_size=2)
    with pytest.raises(ValueError, match=r"record 2: field 'completions\[1\]' is empty"):
        pipeline.list_example(2, {**base, "completions": ["x", ""]}, TOK, max_len=6,
                              max_prompt_len=3, list_size=2)


def test_bad_lengths_are_rejected():
    with pytest.raises(ValueError, match="max_len"):
        pipeline.batches("sft", _sft_rows(8), TOK, batch_size=2, max_len=4, max_prompt_len=4,
                         seed=0)
    with pytest.raises(ValueError, match="batch_size 8"):
        pipeline.batches("sft", _sft_rows(6), TOK, batch_size=8, max_len=8, max_prompt_len=4,
                         seed=0, num_epochs=1, process_index=0, process_count=1)


def _kind_rows(kind, n=11):
    if kind == "sft":
        return _sft_rows(n)
    if kind == "prompts":
        return [{"prompt": f"p{i}" * (i % 4 + 1)} for i in range(n)]
    if kind == "pairs":
        return [{"prompt": f"q{i}" * (i % 3 + 1), "chosen": "c" * (i % 5 + 1), "rejected": f"r{i}",
                 "chosen_gold": i / 4, "rejected_gold": -i / 4} for i in range(n)]
    return [{"prompt": f"l{i}", "completions": [f"x{j}" * (j + 1) for j in range(i % 3 + 1)],
             "labels": [float(j) for j in range(i % 3 + 1)]} for i in range(n)]


_OLD_PATH = {  # the example function and settings each kind's wrapper used to bind
    "sft": (pipeline.sft_example, {"max_len": 9, "joint": None}),
    "prompts": (pipeline.prompt_example, {}),
    "pairs": (pipeline.pair_example, {"max_len": 9, "joint": None}),
    "lists": (pipeline.list_example, {"max_len": 9, "joint": None, "list_size": 3}),
}


@pytest.mark.parametrize("kind", ["sft", "prompts", "pairs", "lists"])
def test_batches_equal_make_batches_over_the_kinds_example_function(kind):
    rows = _kind_rows(kind)
    order = dict(batch_size=4, seed=3, shuffle=True, num_epochs=2, drop_remainder=False,
                 process_index=0, process_count=1)
    example_fn, settings = _OLD_PATH[kind]
    want = list(pipeline.make_batches(rows, functools.partial(
        example_fn, tokenizer=TOK, max_prompt_len=5, pad_id=7, **settings), **order))
    extra = {"list_size": 3} if kind == "lists" else {}
    # max_len (and joint) go to every kind; prompts, which have no completion, ignore them.
    got = list(pipeline.batches(kind, rows, TOK, max_len=9, max_prompt_len=5, pad_id=7,
                                **order, **extra))
    assert len(got) == len(want) == 6
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in w:
            assert g[key].dtype == w[key].dtype
            np.testing.assert_array_equal(g[key], w[key])


def test_pipeline_re_exports_the_token_layout_of_encoding():
    # Example functions outside align/data (docs/examples/kto.py) use them as pipeline.X.
    for name in ("TokenizerLike", "Completion", "text_field", "float_field", "check_lengths",
                 "cut_prompt", "prompt_ids", "encode_completion", "completion_ids",
                 "pack_sequence", "left_pad", "encode_record", "tally"):
        assert getattr(pipeline, name) is getattr(encoding, name)
        assert name in pipeline.__all__
    for name in ("sft_batches", "prompt_batches", "pair_batches", "list_batches"):
        assert not hasattr(pipeline, name)  # removed: pipeline.batches(kind, ...)


def unpaired_example(index, record, tokenizer, *, max_len, max_prompt_len, pad_id=None,
                     joint=None, stats=None, undesirable_weight=1.0):
    """A KTO-style record: prompt, one completion, a binary label (desirable or not)."""
    label = record.get("label") if isinstance(record, dict) else None
    if label not in (0, 1):  # True and False included
        raise ValueError(f"record {index}: field 'label' must be 0 or 1, got {label!r}")
    prefix, (completion,), cut = pipeline.encode_record(
        tokenizer, index, pipeline.text_field(record, "prompt", index),
        [("completion", record.get("completion"))], max_prompt_len=max_prompt_len, joint=joint)
    out = pipeline.pack_sequence(prefix, completion.ids, max_len=max_len,
                                 pad_id=tokenizer.pad_id if pad_id is None else pad_id)
    out["label"] = np.int32(label)
    out["weight"] = np.float32(1.0 if label else undesirable_weight)
    out["example_id"] = np.int32(index)
    pipeline.tally(stats, prefix, [completion], cut, max_len)
    return out


@pytest.fixture
def unpaired():
    # Another module (docs/examples/kto.py, imported by its tests) may have registered the
    # name: this test registers its own and puts the table back as it found it.
    saved = pipeline.KINDS.pop("unpaired", None)
    kind = pipeline.register_kind("unpaired", unpaired_example, settings=("undesirable_weight",),
                                  fields="tokens/input_mask/loss_mask [B,T], label/weight [B]")
    yield kind
    del pipeline.KINDS["unpaired"]
    if saved is not None:
        pipeline.KINDS["unpaired"] = saved


def test_a_registered_kind_works_end_to_end(unpaired):
    rows = [{"prompt": f"p{i}", "completion": "abcdefgh"[:i % 8 + 1], "label": i % 2}
            for i in range(8)]
    assert pipeline.KINDS["unpaired"] is unpaired and pipeline.get_kind("unpaired") is unpaired
    batch = next(pipeline.batches("unpaired", rows, TOK, batch_size=8, max_len=8,
                                  max_prompt_len=3, seed=0, shuffle=False, process_index=0,
                                  process_count=1, undesirable_weight=0.5))
    assert batch["tokens"].shape == (8, 8)
    assert batch["label"].tolist() == [0, 1] * 4
    np.testing.assert_allclose(batch["weight"], [0.5, 1.0] * 4)
    # [bos] + the prompt's last 2 tokens, then the completion and eos: row 1 is "p1" + "ab".
    assert batch["tokens"][1].tolist() == [2, ord("p"), ord("1"), 97, 98, 1, 1, 1]
    assert batch["loss_mask"][1].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
    # The token report and the run's data serve it like a built-in kind.
    report = token_report.token_report(rows + [{"prompt": "p", "completion": "x", "label": 2}],
                                       TOK, "unpaired", max_len=8, max_prompt_len=3)
    assert (report["records"], report["dropped"], report["completions"]) == (9, 1, 8)
    assert report["completions_truncated"] == 4  # 3 prompt tokens + 5 to 8 characters + eos > 8
    assert "field 'label' must be 0 or 1" in report["drop_reasons"][0]
    assert "unpaired: 9 records, 1 dropped" in token_report.format_token_report(report)
    data = sources.RunData(TOK, None, {"unpaired": {"train": rows}})
    assert data.unpaired["train"] is rows and data.sft == {}
    # The synthetic world builds only the built-in kinds; a prepared TFDS dataset serves it.
    cfg = types.SimpleNamespace(data=types.SimpleNamespace(
        source="reviews", data_dir="/nonexistent", tokenizer_path=""))
    with pytest.raises(ValueError, match=r"builds the data kinds .* not \['unpaired'\]"):
        sources.prepare(cfg, "/nonexistent", kinds=("sft", "unpaired"))
    with pytest.raises(ValueError, match="data kind 'unpaired' takes no setting.*'list_size'"):
        pipeline.batches("unpaired", rows, TOK, batch_size=2, max_len=8, max_prompt_len=3,
                         seed=0, list_size=2)
    with pytest.raises(ValueError, match="'unpaired' is already registered"):
        pipeline.register_kind("unpaired", unpaired_example)


def test_unknown_kinds_and_bad_settings_are_named():
    common = dict(batch_size=2, max_len=8, max_prompt_len=3, seed=0)
    with pytest.raises(ValueError, match="unknown data kind 'triples'; valid: sft, prompts, "
                                         "pairs, lists"):
        pipeline.batches("triples", _sft_rows(4), TOK, **common)
    with pytest.raises(ValueError, match="unknown data kind 'triples'; valid: sft, prompts"):
        token_report.token_report(_sft_rows(4), TOK, "triples", 8, 3)
    with pytest.raises(ValueError, match=r"'lists' needs the setting\(s\) \['list_size'\]"):
        pipeline.batches("lists", _kind_rows("lists"), TOK, **common)
    with pytest.raises(ValueError, match="list_size must be >= 1, got 0"):
        pipeline.batches("lists", _kind_rows("lists"), TOK, list_size=0, **common)
    with pytest.raises(ValueError, match="data kind 'sft' takes no setting"):
        pipeline.batches("sft", _sft_rows(4), TOK, list_size=2, **common)
    with pytest.raises(ValueError, match="data kind 'pairs' needs max_len"):
        pipeline.batches("pairs", _kind_rows("pairs"), TOK, batch_size=2, max_prompt_len=3, seed=0)
    with pytest.raises(ValueError, match="takes no keyword.*'stats'"):
        pipeline.register_kind("bare", lambda index, record, tokenizer, *, max_len,
                               max_prompt_len, pad_id, joint: {})
    with pytest.raises(ValueError, match=r"must take \(index, record, tokenizer\)"):
        pipeline.register_kind("bare", lambda record, tokenizer, **kw: {})
    assert "bare" not in pipeline.KINDS


def _sft_iter(seed, **kw):
    kw = {"process_index": 0, "process_count": 1, **kw}
    return pipeline.batches("sft", _sft_rows(40), TOK, batch_size=4, max_len=8, max_prompt_len=5,
                            seed=seed, **kw)


def test_order_is_deterministic_per_seed_and_reshuffled_per_epoch():
    first = _ids(_sft_iter(0), 20)
    assert first == _ids(_sft_iter(0), 20)
    assert first != _ids(_sft_iter(1), 20)
    epoch1, epoch2 = sum(first[:10], []), sum(first[10:], [])
    assert sorted(epoch1) == sorted(epoch2) == list(range(40))
    assert epoch1 != epoch2 and epoch1 != list(range(40))
    assert sum(_ids(_sft_iter(0, shuffle=False), 10), []) == list(range(40))


def test_iterator_state_restores_exactly():
    it = _sft_iter(3)
    _ids(it, 7)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(6)]  # crosses the epoch boundary at batch 10
    resumed = _sft_iter(3)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_process_shards_are_disjoint_and_equal():
    rows = _sft_rows(41)  # one record left over: dropped so both processes get 20
    shards = []
    for index in range(2):
        it = pipeline.batches("sft", rows, TOK, batch_size=4, max_len=8, max_prompt_len=5, seed=0,
                              num_epochs=1, drop_remainder=False, process_index=index,
                              process_count=2)
        shards.append(sum((b["example_id"].tolist() for b in it), []))
    assert len(shards[0]) == len(shards[1]) == 20
    assert not set(shards[0]) & set(shards[1])
    assert len(set(shards[0]) | set(shards[1])) == 40
    assert set(shards[0]) | set(shards[1]) <= set(range(41))


def test_global_batches_do_not_depend_on_the_process_count():
    """Global batch k holds the same records whether 1 or 2 processes read it (epochs included)."""
    rows = _sft_rows(41)
    single = pipeline.batches("sft", rows, TOK, batch_size=10, max_len=8, max_prompt_len=5, seed=3,
                              process_index=0, process_count=1)
    parts = [pipeline.batches("sft", rows, TOK, batch_size=5, max_len=8, max_prompt_len=5, seed=3,
                              process_index=i, process_count=2) for i in range(2)]
    for _ in range(9):  # crosses two epoch boundaries
        whole = next(single)["example_id"].tolist()
        split = sum((next(p)["example_id"].tolist() for p in parts), [])
        assert sorted(split) == sorted(whole)
    for index in range(2):
        it = pipeline.batches("sft", rows, TOK, batch_size=5, max_len=8, max_prompt_len=5, seed=0,
                              process_index=index, process_count=2)
        batch = next(it)  # the record read is the record named by example_id
        assert batch["tokens"][:, 1:5].tolist() == [[ord(c) for c in f"p{i:03d}"]
                                                    for i in batch["example_id"].tolist()]
    with pytest.raises(ValueError, match="process_index 2"):
        pipeline.batches("sft", rows, TOK, batch_size=4, max_len=8, max_prompt_len=5, seed=0,
                         process_index=2, process_count=2)


def test_single_pass_keeps_the_last_partial_batch():
    batches = list(pipeline.batches("sft",
        _sft_rows(10), TOK, batch_size=4, max_len=8, max_prompt_len=5, seed=0, shuffle=False,
        num_epochs=1, drop_remainder=False, process_index=0, process_count=1))
    assert [len(b["example_id"]) for b in batches] == [4, 4, 2]
    np.testing.assert_allclose(batches[2]["gold_reward"], [0.8, 0.9], rtol=1e-6)


def test_end_to_end_with_sentencepiece_and_tfds(tmp_path):
    world = {"seed": 0, "max_sentences": 2}
    tok = Tokenizer.train(ReviewWorld(WorldConfig(**world)).corpus(200), str(tmp_path / "spm"),
                          vocab_size=100)
    src = build_reviews("sft", str(tmp_path / "tfds"), world=world, labeler={},
                        sizes={"train": 16, "test": 4})
    # pad_id overridden to the eos id: masks must not change.
    batch = next(pipeline.batches("sft", src["train"], tok, batch_size=8, max_len=96,
                                  max_prompt_len=16, seed=0, pad_id=tok.eos_id,
                                  process_index=0, process_count=1))
    assert batch["tokens"].shape == (8, 96) and batch["gold_reward"].shape == (8,)
    for row in range(8):
        i = int(batch["example_id"][row])
        record = src["train"][i]
        n = int(batch["input_mask"][row].sum())
        completion = batch["tokens"][row][batch["loss_mask"][row] == 1].tolist()
        assert batch["tokens"][row][0] == tok.bos_id
        assert completion[-1] == tok.eos_id
        assert (batch["tokens"][row][n:] == tok.eos_id).all()
        assert tok.decode(completion[:-1]) == record["completion"].decode()
        assert batch["loss_mask"][row][:n].sum() == len(completion)
        np.testing.assert_allclose(batch["gold_reward"][row], record["gold_reward"])
