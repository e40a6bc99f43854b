"""Tests of the grain pipelines and the token layout they produce."""
import json

import numpy as np
import pytest

from align.data import pipeline
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
    batch = next(pipeline.prompt_batches(rows, TOK, batch_size=2, max_prompt_len=5, seed=0,
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
    batch = next(pipeline.list_batches([row] * 3, TOK, batch_size=2, list_size=4, max_len=6,
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
    it = pipeline.sft_batches(rows, TOK, batch_size=6, max_len=8, max_prompt_len=4, seed=0,
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
        pipeline.sft_batches(_sft_rows(8), TOK, batch_size=2, max_len=4, max_prompt_len=4, seed=0)
    with pytest.raises(ValueError, match="batch_size 8"):
        pipeline.sft_batches(_sft_rows(6), TOK, batch_size=8, max_len=8, max_prompt_len=4, seed=0,
                             num_epochs=1, process_index=0, process_count=1)


def _sft_iter(seed, **kw):
    kw = {"process_index": 0, "process_count": 1, **kw}
    return pipeline.sft_batches(_sft_rows(40), TOK, batch_size=4, max_len=8, max_prompt_len=5,
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
        it = pipeline.sft_batches(rows, TOK, batch_size=4, max_len=8, max_prompt_len=5, seed=0,
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
    single = pipeline.sft_batches(rows, TOK, batch_size=10, max_len=8, max_prompt_len=5, seed=3,
                                  process_index=0, process_count=1)
    parts = [pipeline.sft_batches(rows, TOK, batch_size=5, max_len=8, max_prompt_len=5, seed=3,
                                  process_index=i, process_count=2) for i in range(2)]
    for _ in range(9):  # crosses two epoch boundaries
        whole = next(single)["example_id"].tolist()
        split = sum((next(p)["example_id"].tolist() for p in parts), [])
        assert sorted(split) == sorted(whole)
    for index in range(2):
        it = pipeline.sft_batches(rows, TOK, batch_size=5, max_len=8, max_prompt_len=5, seed=0,
                                  process_index=index, process_count=2)
        batch = next(it)  # the record read is the record named by example_id
        assert batch["tokens"][:, 1:5].tolist() == [[ord(c) for c in f"p{i:03d}"]
                                                    for i in batch["example_id"].tolist()]
    with pytest.raises(ValueError, match="process_index 2"):
        pipeline.sft_batches(rows, TOK, batch_size=4, max_len=8, max_prompt_len=5, seed=0,
                             process_index=2, process_count=2)


def test_single_pass_keeps_the_last_partial_batch():
    batches = list(pipeline.sft_batches(
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
    batch = next(pipeline.sft_batches(src["train"], tok, batch_size=8, max_len=96,
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
