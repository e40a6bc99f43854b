"""Tests of the tokenization rules: joint encoding, truncation counts, EOS once, chat templates."""
import gzip
import json

import numpy as np
import pytest

from align import config as config_lib
from align.data import pipeline, sources, token_report
from align.data.chat import CHATML, HH, ChatTemplate, get_template
from align.data.tokenizer import Tokenizer


class CharTokenizer:
    """One id per character; pad and eos share id 1; "</s>" is the eos text."""

    pad_id, eos_id, bos_id = 1, 1, 2
    eos_text = "</s>"

    def encode(self, text):
        return [ord(c) for c in text]


class PrefixTokenizer:
    """Like SentencePiece: a dummy space before every text, and "ab" merges into one token."""

    pad_id, eos_id, bos_id = 0, 1, 2
    AB = 500

    def encode(self, text):
        text = text if text.startswith(" ") else " " + text
        ids, i = [], 0
        while i < len(text):
            if text.startswith("ab", i):
                ids.append(self.AB)
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return ids


TOK = CharTokenizer()


def test_eos_is_appended_once_and_trained_on_with_pad_equal_to_eos():
    plain = pipeline.sft_example(0, {"prompt": "ab", "completion": "xy"}, TOK, max_len=8,
                                 max_prompt_len=3)
    for text in ("xy</s>", "xy\x01"):  # the eos as text, and as a character that encodes to eos
        ex = pipeline.sft_example(0, {"prompt": "ab", "completion": text}, TOK, max_len=8,
                                  max_prompt_len=3)
        np.testing.assert_array_equal(ex["tokens"], plain["tokens"])
        assert ex["tokens"].tolist() == [2, 97, 98, 120, 121, 1, 1, 1]
        # The eos (== pad id) is inside the loss mask; the pads after it are not.
        assert ex["loss_mask"].tolist() == [0, 0, 0, 1, 1, 1, 0, 0]
        assert ex["input_mask"].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="record 4: field 'completion' is empty"):
        pipeline.sft_example(4, {"prompt": "ab", "completion": "</s>"}, TOK, max_len=8,
                             max_prompt_len=3)


def test_truncation_keeps_prompt_end_and_completion_start():
    pair = {"prompt": "abcdef", "chosen": "xyz", "rejected": "q"}
    ex = pipeline.pair_example(0, pair, TOK, max_len=6, max_prompt_len=4)
    assert ex["chosen_tokens"].tolist() == [2, 100, 101, 102, 120, 121]  # "def" + "xy", eos cut
    assert ex["chosen_loss_mask"].tolist() == [0, 0, 0, 0, 1, 1]
    assert ex["rejected_tokens"].tolist() == [2, 100, 101, 102, 113, 1]  # "q" + eos fits
    assert ex["rejected_loss_mask"].tolist() == [0, 0, 0, 0, 1, 1]


def test_token_report_counts_truncation_drops_and_eos():
    source = [
        {"prompt": "ab", "chosen": "xy", "rejected": "z"},            # fits
        {"prompt": "abcdefgh", "chosen": "x", "rejected": "y"},       # prompt cut
        {"prompt": "a", "chosen": "xyzxyzxyz", "rejected": "x</s>"},  # chosen cut; eos in text
        {"prompt": "a", "chosen": "", "rejected": "x"},               # dropped: empty
        {"prompt": "abcdefgh", "chosen": "xxxxxxx", "rejected": "xxxxxxxy"},  # same after cuts
        {"prompt": "a", "chosen": "x"},                                # dropped: missing field
    ]
    rep = token_report.token_report(source, TOK, "pairs", max_len=8, max_prompt_len=4)
    assert {k: rep[k] for k in ("records", "dropped", "prompts_truncated", "completions",
                                "completions_truncated", "eos_in_text", "joint_fallbacks",
                                "pairs_identical", "completion_tokens_max")} == {
        "records": 6, "dropped": 2, "prompts_truncated": 2, "completions": 8,
        "completions_truncated": 3, "eos_in_text": 1, "joint_fallbacks": 0,
        "pairs_identical": 1, "completion_tokens_max": 10}
    assert rep["drop_reasons"] == [
        "record 3: field 'chosen' is empty (got '')",
        "record 5: missing field 'rejected' (fields present: ['chosen', 'prompt'])"]
    line = token_report.format_token_report(rep)
    assert line.startswith("pairs: 6 records, 2 dropped, 2 prompts truncated, 3 of 8 completions")
    prompts = token_report.token_report([{"prompt": "abcdef"}, {"prompt": "a"}], TOK, "prompts",
                                    max_len=8, max_prompt_len=4)
    assert (prompts["prompts_truncated"], prompts["dropped"]) == (1, 0)
    lists = token_report.token_report([{"prompt": "a", "completions": ["x", "y", "z"],
                                    "labels": [1, 0, 0]}], TOK, "lists", max_len=8,
                                  max_prompt_len=4, list_size=2)
    assert lists["dropped"] == 1 and "has 3 items; expected 1..2" in lists["drop_reasons"][0]


def test_joint_encoding_splits_at_the_prompt_when_it_is_a_prefix():
    tok = PrefixTokenizer()
    prompt_ids = tok.encode("xa")  # [" ", "x", "a"]
    # Holds: "xa" + "b c" would merge "ab", but "xa" + " b" does not: the completion's
    # tokens are the rest of the joint encoding (no dummy space of its own).
    held = pipeline.encode_completion(tok, " b", "completion", 0, prompt="xa", joint=True)
    assert (held.ids, held.joint, held.fallback) == ([32, 98, 1], True, False)
    separate = pipeline.encode_completion(tok, " b", "completion", 0, prompt="xa", joint=False)
    assert separate.ids == [32, 98, 1]
    held2 = pipeline.encode_completion(tok, "c", "completion", 0, prompt="xa", joint=True)
    assert held2.ids == [99, 1]  # separately it would be [" ", "c"]
    assert pipeline.completion_ids(tok, "c", "completion", 0) == [32, 99, 1]
    # Fails: the joint text "xab" tokenizes as " ", "x", "ab", so the prompt's own tokens
    # are not a prefix; the completion falls back to its own encoding and is counted.
    failed = pipeline.encode_completion(tok, "b", "completion", 0, prompt="xa", joint=True)
    assert (failed.ids, failed.joint, failed.fallback) == ([32, 98, 1], False, True)
    ex = pipeline.sft_example(0, {"prompt": "xa", "completion": "b"}, tok, max_len=8,
                              max_prompt_len=4, joint=True)
    assert ex["tokens"].tolist()[:4] == [2] + prompt_ids  # the prompt keeps its own tokens
    rep = token_report.token_report([{"prompt": "xa", "chosen": "b", "rejected": "c"}], tok, "pairs",
                                max_len=8, max_prompt_len=4, joint=True)
    assert rep["joint_fallbacks"] == 1 and rep["completions"] == 2


def test_joint_comes_from_the_tokenizer_when_not_given(tmp_path):
    lines = [f"review the {w} : it is {v} ." for w in ("lamp", "kettle", "fan", "mug")
             for v in ("good", "bad", "fine")] * 5
    tok = Tokenizer.train(lines, str(tmp_path / "spm"), vocab_size=28)
    assert tok.eos_text == "</s>" and not tok.joint
    joint_tok = Tokenizer.load(str(tmp_path / "spm.model"), joint=True)
    record = {"prompt": "review the lamp :", "completion": "it is good .</s>"}
    separate = pipeline.sft_example(0, record, tok, max_len=40, max_prompt_len=20)
    joint = pipeline.sft_example(0, record, joint_tok, max_len=40, max_prompt_len=20)
    # Without a space before the completion the joint text reads ":it", which changes the
    # completion's tokens; the eos text is dropped and one eos id is appended either way.
    n = int(joint["input_mask"].sum())
    assert joint["tokens"][n - 1] == tok.eos_id and separate["tokens"][n - 1] == tok.eos_id
    assert (joint["tokens"] != separate["tokens"]).any()
    spaced = pipeline.sft_example(0, {**record, "completion": " " + record["completion"]},
                                  joint_tok, max_len=40, max_prompt_len=20)
    np.testing.assert_array_equal(spaced["tokens"], separate["tokens"])


def test_no_bos_tokenizer_starts_the_prompt_bare():
    class NoBos(CharTokenizer):
        bos_id = -1

    ex = pipeline.sft_example(0, {"prompt": "abcdef", "completion": "x"}, NoBos(), max_len=6,
                              max_prompt_len=3)
    assert ex["tokens"].tolist() == [100, 101, 102, 120, 1, 1]
    assert ex["loss_mask"].tolist() == [0, 0, 0, 1, 1, 0]
    with pytest.raises(ValueError, match="prompt is empty and the tokenizer has no bos"):
        pipeline.sft_example(0, {"prompt": "", "completion": "x"}, NoBos(), max_len=6,
                             max_prompt_len=3)


def test_chat_templates():
    turns = [("user", "Hi {there}"), ("assistant", " Hello! "), ("user", "Joke?")]
    assert HH.prompt(turns) == "\n\nHuman: Hi {there}\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant:"
    assert HH.reply("  Sure.\n") == " Sure."
    assert CHATML.prompt(turns[:1]) == "<|im_start|>user\nHi {there}<|im_end|>\n<|im_start|>assistant\n"
    custom = get_template(json.dumps({"user": "Q: {text}\n", "assistant": "A: {text}\n",
                                      "generation": "A:", "reply_prefix": " "}))
    assert custom.prompt(turns) == "Q: Hi {there}\nA: Hello!\nQ: Joke?\nA:"
    assert get_template("hh") is HH
    with pytest.raises(ValueError, match="unknown chat template 'llama'"):
        get_template("llama")
    with pytest.raises(ValueError, match="must hold '\\{text\\}' exactly once"):
        ChatTemplate("bad", user="no slot", assistant="{text}", generation="")
    with pytest.raises(ValueError, match="needs the keys user, assistant, generation"):
        get_template('{"user": "{text}"}')


def test_public_source_through_prepare(tmp_path):
    H, A = "\n\nHuman:", "\n\nAssistant:"
    manual = tmp_path / "hh" / "helpful-base"
    manual.mkdir(parents=True)
    words = "the a kettle lamp is good bad fine very not it works".split()
    for split, n in (("train", 24), ("test", 4)):
        rows = [{"chosen": f"{H} review {words[i % 12]} please{A} it is {words[(i + 3) % 12]} .",
                 "rejected": f"{H} review {words[i % 12]} please{A} {words[(i + 5) % 12]} no ."}
                for i in range(n)]
        with gzip.open(manual / f"{split}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = config_lib.default_config()
    cfg.data.update(source="hh_rlhf", manual_dir=str(tmp_path / "hh"), subsets="helpful-base",
                    vocab_size=32)
    cfg = config_lib.validate(cfg)
    assert sources.joint_encoding(cfg)
    data = sources.prepare(cfg, str(tmp_path / "run"), kinds=("sft", "pairs", "prompts"))
    assert data.world is None and data.tokenizer.joint
    assert len(data.pairs["train"]) == 24 and len(data.sft["test"]) == 4
    batch = next(pipeline.batches("pairs", data.pairs["train"], data.tokenizer, batch_size=4,
                                  max_len=32, max_prompt_len=12, seed=0, process_index=0,
                                  process_count=1))
    assert batch["chosen_tokens"].shape == (4, 32)
    rep = token_report.token_report(data.pairs["train"], data.tokenizer, "pairs", max_len=32,
                                max_prompt_len=12)
    assert rep["dropped"] == 0 and rep["records"] == 24
    reviews = config_lib.validate(config_lib.default_config())
    assert not sources.joint_encoding(reviews)
