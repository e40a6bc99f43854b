"""Tests of the public-dataset builders on small files written in the exact public formats."""
import gzip
import hashlib
import json
import os

import numpy as np
import pytest

from align.data import hh_rlhf, public, tldr, ultrafeedback
from align.data.chat import CHATML, HH
from align.data.rows import BAD_KINDS, BadRowError, RowLog

H, A = "\n\nHuman:", "\n\nAssistant:"


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _records(src):
    out = []
    for i in range(len(src)):
        rec = src[i]
        out.append({k: ([_text(x) for x in v] if k == "completions" else
                        [float(x) for x in v] if k == "labels" else _text(v))
                    for k, v in rec.items()})
    return out


def _write(path, lines, gz=False):
    """Writes lines (dicts become JSON, bytes are written as they are) as a JSON-lines file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    raw = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
                   for line in lines)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(raw)
    return path


# ---------------------------------------------------------------- HH-RLHF

HH_SINGLE = {"chosen": f"{H} What is 2+2?{A} It is 4.", "rejected": f"{H} What is 2+2?{A} No idea."}
HH_MULTI = {"chosen": f"{H} Hi{A} Hello!{H} Tell me a joke{A} Why did the hen cross?",
            "rejected": f"{H} Hi{A} Hello!{H} Tell me a joke{A} No."}
# The replies share their first characters: the split is still at the last shared marker.
HH_SHARED_START = {"chosen": f"{H} Help?{A} Sure, here it is.", "rejected": f"{H} Help?{A} Sure."}
HH_REPEAT = {"chosen": f"{H} What is 2+2?{A} Four.", "rejected": f"{H} What is 2+2?{A} Five."}
HH_TEST = {"chosen": f"{H} Bye{A} Goodbye!", "rejected": f"{H} Bye{A} Whatever."}


@pytest.fixture(scope="module")
def hh_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hh")
    _write(str(root / "helpful-base/train.jsonl.gz"),
           [HH_SINGLE, HH_MULTI, HH_SHARED_START, HH_REPEAT], gz=True)
    _write(str(root / "helpful-base/test.jsonl.gz"), [HH_TEST], gz=True)
    _write(str(root / "harmless-base/train.jsonl.gz"), [HH_TEST], gz=True)
    _write(str(root / "harmless-base/test.jsonl.gz"), [HH_SINGLE], gz=True)
    return str(root)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_hh_pairs_split_at_the_last_shared_assistant_turn(hh_dir, tfds_dir):
    src = public.build_public("hh_rlhf", "pairs", tfds_dir, manual_dir=hh_dir,
                              subsets="helpful-base", verbose=False)
    assert _records(src["train"]) == [
        {"prompt": f"{H} What is 2+2?{A}", "chosen": " It is 4.", "rejected": " No idea."},
        {"prompt": f"{H} Hi{A} Hello!{H} Tell me a joke{A}", "chosen": " Why did the hen cross?",
         "rejected": " No."},
        {"prompt": f"{H} Help?{A}", "chosen": " Sure, here it is.", "rejected": " Sure."},
        {"prompt": f"{H} What is 2+2?{A}", "chosen": " Four.", "rejected": " Five."}]
    # With the hh template, prompt + reply is the original conversation.
    rec = _records(src["train"])[1]
    assert rec["prompt"] + rec["chosen"] == HH_MULTI["chosen"]
    assert _records(src["test"]) == [{"prompt": f"{H} Bye{A}", "chosen": " Goodbye!",
                                      "rejected": " Whatever."}]


def test_hh_other_kinds_subsets_and_template(hh_dir, tfds_dir):
    both = public.build_public("hh_rlhf", "sft", tfds_dir, manual_dir=hh_dir,
                               subsets="harmless-base,helpful-base", verbose=False)
    assert [r["completion"] for r in _records(both["train"])] == [
        " Goodbye!", " It is 4.", " Why did the hen cross?", " Sure, here it is.", " Four."]
    lists = public.build_public("hh_rlhf", "lists", tfds_dir, manual_dir=hh_dir,
                                subsets="helpful-base", verbose=False)
    assert _records(lists["test"]) == [{"prompt": f"{H} Bye{A}", "completions": [
        " Goodbye!", " Whatever."], "labels": [1.0, 0.0]}]
    prompts = public.build_public("hh_rlhf", "prompts", tfds_dir, manual_dir=hh_dir,
                                  subsets="helpful-base", verbose=False)
    # The repeated prompt appears once, and is counted as excluded.
    assert [r["prompt"] for r in _records(prompts["train"])] == [
        f"{H} What is 2+2?{A}", f"{H} Hi{A} Hello!{H} Tell me a joke{A}", f"{H} Help?{A}"]
    builder = public.public_builder("hh_rlhf", "prompts", tfds_dir, manual_dir=hh_dir,
                                    subsets="helpful-base")
    assert public.report(builder)["train"]["excluded"] == {"repeated_prompt": 1}
    chatml = public.build_public("hh_rlhf", "pairs", tfds_dir, manual_dir=hh_dir,
                                 subsets="helpful-base", template="chatml", verbose=False)
    assert _records(chatml["train"])[1] == {
        "prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                  "<|im_start|>user\nTell me a joke<|im_end|>\n<|im_start|>assistant\n",
        "chosen": "Why did the hen cross?", "rejected": "No."}
    with pytest.raises(ValueError, match="unknown HH-RLHF subsets"):
        public.build_public("hh_rlhf", "pairs", tfds_dir, manual_dir=hh_dir, subsets="nope")
    with pytest.raises(FileNotFoundError, match="helpful-online/train.jsonl.gz"):
        public.build_public("hh_rlhf", "pairs", tfds_dir, manual_dir=hh_dir)


BAD_HH = {  # kind -> the bad line (a dict, or raw bytes)
    "not_json": b'{"chosen": "\\n\\nHuman: x", ',
    "invalid_utf8": b'{"chosen": "\xff\xfe", "rejected": "x"}',
    "missing_field": {"chosen": f"{H} hi{A} yes"},
    "wrong_type": {"chosen": f"{H} hi{A} yes", "rejected": 3},
    "empty_completion": {"chosen": f"{H} hi{A} yes", "rejected": f"{H} hi{A}   "},
    "identical_pair": {"chosen": f"{H} hi{A} yes", "rejected": f"{H} hi{A} yes"},
    "unsplittable_dialogue": {"chosen": f"{H} hi{A} yes{H} more{A} ok",
                              "rejected": f"{H} hi{A} no{H} more{A} ok"},
}


@pytest.mark.parametrize("kind", sorted(BAD_HH))
def test_hh_bad_rows_name_file_line_and_kind(kind, tmp_path):
    path = _write(str(tmp_path / "helpful-base/train.jsonl.gz"), [HH_SINGLE, BAD_HH[kind]], gz=True)
    with pytest.raises(BadRowError) as info:
        list(hh_rlhf.records("pairs", "train", {"helpful-base/train.jsonl.gz": path},
                             RowLog("error"), template=HH, name_fn=lambda rel: path))
    assert str(info.value).startswith(f"{path}:2: bad row ({kind}): ")
    assert "data.bad_rows=skip" in str(info.value)


def test_hh_unsplittable_rules():
    assert hh_rlhf.split_pair(HH_MULTI["chosen"], HH_MULTI["rejected"])[0] == (
        f"{H} Hi{A} Hello!{H} Tell me a joke{A}")
    with pytest.raises(Exception, match="before any shared"):
        hh_rlhf.split_pair(f"{H} a{A} b", f"{H} c{A} b")
    # A reply that goes on for more turns than the other one.
    with pytest.raises(Exception, match="rejected goes on for more turns"):
        hh_rlhf.split_pair(f"{H} a{A} b", f"{H} a{A} b{H} more{A} c")


def test_skip_counts_every_bad_kind_and_reports_it(tmp_path, capsys):
    manual = tmp_path / "hh"
    bad = [BAD_HH[k] for k in sorted(BAD_HH)]
    path = _write(str(manual / "helpful-base/train.jsonl.gz"),
                  [HH_SINGLE] + bad + [b"", HH_MULTI], gz=True)
    _write(str(manual / "helpful-base/test.jsonl.gz"), [HH_TEST], gz=True)
    data_dir = str(tmp_path / "tfds")
    # The default policy stops at the first bad row, naming it; nothing is built.
    with pytest.raises(BadRowError, match=f"{path}:2: bad row "):
        public.build_public("hh_rlhf", "pairs", data_dir, manual_dir=str(manual),
                            subsets="helpful-base")
    src = public.build_public("hh_rlhf", "pairs", data_dir, manual_dir=str(manual),
                              subsets="helpful-base", bad_rows="skip")
    assert [r["chosen"] for r in _records(src["train"])] == [" It is 4.", " Why did the hen cross?"]
    printed = capsys.readouterr().out
    assert "hh_rlhf pairs: built train 2 examples from 9 rows, test 1 examples from 1 rows" in printed
    assert f"not_json 1 (first: {path}:{2 + sorted(BAD_HH).index('not_json')}" in printed
    rep = public.report(public.public_builder("hh_rlhf", "pairs", data_dir, manual_dir=str(manual),
                                              subsets="helpful-base", bad_rows="skip"))
    assert rep["train"]["bad_rows"] == {k: 1 for k in BAD_HH}
    assert rep["train"]["excluded"] == {"blank_line": 1}
    assert (rep["train"]["rows"], rep["train"]["examples"]) == (9, 2)
    assert rep["test"]["bad_rows"] == {} and rep["test"]["examples"] == 1
    assert set(BAD_HH) | {"out_of_range"} == set(BAD_KINDS)


# ---------------------------------------------------------------- TL;DR


def _comparison(post, summaries, choice, split, batch="batch3"):
    return {"info": {"id": "t3_x", "post": post, "title": f"title of {post}", "subreddit": "tifu"},
            "summaries": [{"text": s, "policy": "ref", "note": None} for s in summaries],
            "choice": choice, "worker": "w", "batch": batch, "split": split,
            "extra": {"confidence": 7}}


def _prompt(post, subreddit="tifu"):
    return f"SUBREDDIT: r/{subreddit}\n\nTITLE: title of {post}\n\nPOST: {post}\n\nTL;DR:"


@pytest.fixture(scope="module")
def tldr_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tldr")
    _write(str(root / "comparisons/batch3.json"), [
        _comparison("post one", [" first summary", " second summary"], 1, "train"),
        _comparison("post two", [" kept", " lost"], 0, "valid1"),
        {"info": {"id": "x", "article": "news", "title": "t", "site": "dailymail"},
         "summaries": [{"text": " a"}, {"text": " b"}], "choice": 0, "batch": "cnndm0",
         "split": "valid2"}])
    _write(str(root / "comparisons/batch4.json"), [
        _comparison("post three", ["no leading space", " other"], 0, "valid2")])
    for split, name in (("train", "train"), ("validation", "valid"), ("test", "test")):
        _write(str(root / f"tldr_3_filtered/{name}.jsonl"), [
            {"id": f"t3_{split}", "subreddit": "AskReddit", "title": f"title of {split} post",
             "post": f"{split} post", "summary": f"the {split} summary\n"}])
    return str(root)


def test_tldr_pairs_lists_and_sft(tldr_dir, tfds_dir):
    pairs = public.build_public("tldr", "pairs", tfds_dir, manual_dir=tldr_dir, verbose=False)
    assert _records(pairs["train"]) == [{"prompt": _prompt("post one"),
                                         "chosen": " second summary", "rejected": " first summary"}]
    assert _records(pairs["validation"]) == [{"prompt": _prompt("post two"), "chosen": " kept",
                                              "rejected": " lost"}]
    assert _records(pairs["test"]) == [{"prompt": _prompt("post three"),
                                        "chosen": " no leading space", "rejected": " other"}]
    builder = public.public_builder("tldr", "pairs", tfds_dir, manual_dir=tldr_dir)
    assert public.report(builder)["test"]["excluded"] == {"cnndm": 1}
    lists = public.build_public("tldr", "lists", tfds_dir, manual_dir=tldr_dir, verbose=False)
    assert _records(lists["validation"]) == [{"prompt": _prompt("post two"),
                                              "completions": [" kept", " lost"],
                                              "labels": [1.0, 0.0]}]
    sft = public.build_public("tldr", "sft", tfds_dir, manual_dir=tldr_dir, verbose=False)
    assert _records(sft["validation"]) == [{
        "prompt": "SUBREDDIT: r/AskReddit\n\nTITLE: title of validation post\n\n"
                  "POST: validation post\n\nTL;DR:", "completion": " the validation summary"}]
    prompts = public.build_public("tldr", "prompts", tfds_dir, manual_dir=tldr_dir, verbose=False)
    assert _records(prompts["test"]) == [{"prompt": _records(sft["test"])[0]["prompt"]}]


def test_tldr_bad_rows_are_counted_once_in_their_split(tmp_path):
    root = tmp_path / "tldr"
    path = _write(str(root / "comparisons/batch5.json"), [
        _comparison("ok", [" a", " b"], 0, "train"),
        _comparison("bad choice", [" a", " b"], 2, "valid2"),
        _comparison("same", [" a", "a "], 1, "valid1"),
        b"not json at all",
        _comparison("no split", [" a", " b"], 0, "valid9")])
    with pytest.raises(BadRowError, match=f"{path}:4: bad row \\(not_json\\)"):
        public.build_public("tldr", "pairs", str(tmp_path / "tfds"), manual_dir=str(root))
    with pytest.raises(ValueError, match="split 'validation' has no examples; its row report"):
        public.build_public("tldr", "pairs", str(tmp_path / "tfds"), manual_dir=str(root),
                            bad_rows="skip")
    _write(str(root / "comparisons/batch6.json"), [_comparison("v1", [" a", " b"], 0, "valid1"),
                                                   _comparison("v2", [" a", " b"], 1, "valid2")])
    public.build_public("tldr", "pairs", str(tmp_path / "tfds"), manual_dir=str(root),
                        bad_rows="skip", verbose=False)
    rep = public.report(public.public_builder("tldr", "pairs", str(tmp_path / "tfds"),
                                              manual_dir=str(root), bad_rows="skip"))
    assert rep["train"]["bad_rows"] == {"not_json": 1, "out_of_range": 1}
    assert rep["validation"]["bad_rows"] == {"identical_pair": 1}
    assert rep["test"]["bad_rows"] == {"out_of_range": 1}
    assert [rep[s]["examples"] for s in ("train", "validation", "test")] == [1, 1, 1]
    assert "'choice' must be 0 or 1, got 2" in rep["test"]["first_bad"]["out_of_range"]


# ---------------------------------------------------------------- UltraFeedback


def _instruction(split, start=0):
    i = start
    while ultrafeedback.split_of(f"question {i}") != split:
        i += 1
    return f"question {i}"


def _uf(instruction, scores, responses=None, key="fine-grained_score"):
    responses = responses or [f"answer {i} to {instruction}" for i in range(len(scores))]
    return {"source": "flan", "instruction": instruction, "models": ["m"] * len(scores),
            "completions": [{"model": "m", "principle": "helpfulness", "response": r,
                             "annotations": {}, key: s, "overall_score": 5.0, "critique": "c"}
                            for r, s in zip(responses, scores)]}


Q_TRAIN, Q_TIED, Q_TEST = _instruction("train"), _instruction("train", 1000), _instruction("test")


@pytest.fixture(scope="module")
def uf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("uf")
    _write(str(root / "flan.jsonl"), [_uf(Q_TRAIN, [3.5, 4.75, 2.0, 4.75]),
                                      _uf(Q_TIED, [3.0, 3.0]), _uf(Q_TEST, [1.0, 5.0])])
    return str(root)


def _hh_prompt(text):
    return f"{H} {text}{A}"


def test_ultrafeedback_lists_keep_ties_and_pairs_binarise(uf_dir, tfds_dir):
    lists = public.build_public("ultrafeedback", "lists", tfds_dir, manual_dir=uf_dir, verbose=False)
    recs = _records(lists["train"])
    assert [r["prompt"] for r in recs] == [_hh_prompt(Q_TRAIN), _hh_prompt(Q_TIED)]
    assert recs[0]["completions"] == [f" answer {i} to {Q_TRAIN}" for i in range(4)]
    np.testing.assert_allclose(recs[0]["labels"], [0.625, 0.9375, 0.25, 0.9375])
    np.testing.assert_allclose(recs[1]["labels"], [0.5, 0.5])  # a tie keeps equal labels
    assert [r["prompt"] for r in _records(lists["test"])] == [_hh_prompt(Q_TEST)]

    pairs = public.build_public("ultrafeedback", "pairs", tfds_dir, manual_dir=uf_dir, verbose=False)
    # Chosen: the first of the two best (4.75); rejected: the lowest (2.0). The tied row is out.
    assert _records(pairs["train"]) == [{"prompt": _hh_prompt(Q_TRAIN),
                                         "chosen": f" answer 1 to {Q_TRAIN}",
                                         "rejected": f" answer 2 to {Q_TRAIN}"}]
    rep = public.report(public.public_builder("ultrafeedback", "pairs", tfds_dir, manual_dir=uf_dir))
    assert rep["train"]["excluded"] == {"tied": 1} and rep["test"]["examples"] == 1
    sft = public.build_public("ultrafeedback", "sft", tfds_dir, manual_dir=uf_dir, verbose=False)
    assert _records(sft["test"]) == [{"prompt": _hh_prompt(Q_TEST),
                                      "completion": f" answer 1 to {Q_TEST}"}]


def test_ultrafeedback_options(uf_dir, tfds_dir):
    overall = public.build_public("ultrafeedback", "lists", tfds_dir, manual_dir=uf_dir,
                                  options={"score": "overall"}, verbose=False)
    np.testing.assert_allclose(_records(overall["test"])[0]["labels"], [4 / 9, 4 / 9])
    scores = [5.0, 1.0, 2.0, 3.0]
    texts = [f"t{i}" for i in range(4)]
    picks = {ultrafeedback.binarise(f"p{j}", texts, scores, "random") for j in range(40)}
    assert {c for c, _ in picks} == {0} and {r for _, r in picks} == {1, 2, 3}
    assert ultrafeedback.binarise("p", texts, scores, "random") == \
        ultrafeedback.binarise("p", texts, scores, "random")
    with pytest.raises(ValueError, match="option 'rejected' must be one of"):
        public.build_public("ultrafeedback", "pairs", tfds_dir, manual_dir=uf_dir,
                            options={"rejected": "best"})


@pytest.mark.parametrize("row, kind", [
    (_uf(Q_TRAIN, [3.0, 7.0]), "out_of_range"),
    (_uf(Q_TRAIN, [3.0, None]), "missing_field"),
    (_uf(Q_TRAIN, [3.0, 4.0], responses=["fine", "  "]), "empty_completion"),
    (_uf(Q_TRAIN, [3.0, 4.0], responses=["same", "same"]), "identical_pair"),
    ({"instruction": Q_TRAIN}, "missing_field"),
    ({"instruction": "\ud800 lone surrogate", "completions": []}, "invalid_utf8"),
])
def test_ultrafeedback_bad_rows(row, kind, tmp_path):
    path = _write(str(tmp_path / "flan.jsonl"), [_uf(Q_TIED, [2.0, 3.0]), row])
    with pytest.raises(BadRowError) as info:
        list(ultrafeedback.records("pairs", "train", {"flan.jsonl": path}, RowLog("error"),
                                   template=HH, name_fn=lambda rel: path))
    assert str(info.value).startswith(f"{path}:2: bad row ({kind}): ")
    log = RowLog("skip")
    out = list(ultrafeedback.records("pairs", "train", {"flan.jsonl": path}, log, template=CHATML))
    assert len(out) == 1 and log.summary()["bad_rows"] == {kind: 1}


def test_download_path_names_the_published_files(tmp_path, hh_dir):
    """Without a manual directory the builder asks the download manager for the public URLs."""
    files = public.resolve_files("hh_rlhf", "pairs", ["helpful-base"])
    assert files == {f"helpful-base/{s}.jsonl.gz": f"{hh_rlhf.URL}helpful-base/{s}.jsonl.gz"
                     for s in ("train", "test")}
    assert tldr.url("comparisons/batch3.json") == (
        "https://openaipublic.blob.core.windows.net/summarize-from-feedback/dataset/comparisons/"
        "batch3.json")
    assert tldr.url(tldr.SFT_FILES["test"]).endswith("/datasets/tldr_3_filtered/test.jsonl")
    assert public.resolve_files("ultrafeedback", "lists", ["sharegpt"]) == {
        "sharegpt.jsonl": "https://huggingface.co/datasets/openbmb/UltraFeedback/resolve/main/"
                          "sharegpt.jsonl"}

    class FakeDownloads:
        def download(self, urls):
            self.urls = list(urls)
            return [os.path.join(hh_dir, url[len(hh_rlhf.URL):]) for url in urls]

    builder = public.public_builder("hh_rlhf", "pairs", str(tmp_path), subsets="helpful-base")
    dl = FakeDownloads()
    splits = builder._split_generators(dl)
    assert dl.urls == list(files.values())
    assert [r["chosen"] for _, r in splits["test"]] == [" Goodbye!"]


def test_dpo_trains_on_public_pairs(tmp_path):
    """An unchanged objective runs on public records: DPO starts at log 2 (policy = reference)."""
    from align import config as config_lib
    from align.train import loop

    words = "the a kettle lamp is good bad fine very not it works".split()
    for split, n in (("train", 32), ("test", 8)):
        _write(str(tmp_path / f"hh/helpful-base/{split}.jsonl.gz"), [
            {"chosen": f"{H} review {words[i % 12]} please{A} it is {words[(i + 3) % 12]} .",
             "rejected": f"{H} review {words[i % 12]} please{A} {words[(i + 5) % 12]} no ."}
            for i in range(n)], gz=True)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = config_lib.resolve(os.path.join(root, "configs/preference.py:objective=dpo,size=tiny"), [
        "--config.data.source=hh_rlhf", f"--config.data.manual_dir={tmp_path / 'hh'}",
        "--config.data.subsets=helpful-base", "--config.data.vocab_size=32",
        "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
        "--config.data.max_len=40", "--config.data.max_prompt_len=20",
        "--config.eval.max_new_tokens=20",
        "--config.init.workdir=", "--config.init.config=", "--config.train.progress=False"])
    setup = loop.build(cfg, str(tmp_path / "run"))
    assert setup.data.tokenizer.joint and setup.data.world is None
    batch = next(loop.train_iterator(setup))
    state, metrics = loop.advance(setup, setup.spec.init_fn(), batch, 0)[:2]
    setup.close()
    np.testing.assert_allclose(float(metrics["loss"]), np.log(2), rtol=1e-6)


@pytest.mark.parametrize("choice, kind", [
    ("1", "wrong_type"), ("0", "wrong_type"), (True, "wrong_type"), (False, "wrong_type"),
    (1.0, "wrong_type"), ([1], "wrong_type"), (2, "out_of_range"), (-1, "out_of_range")])
def test_tldr_choice_must_be_the_integer_0_or_1(choice, kind, tmp_path):
    path = _write(str(tmp_path / "comparisons/batch3.json"), [
        _comparison("ok", [" a", " b"], 1, "train"),
        _comparison("bad", [" a", " b"], choice, "train")])
    with pytest.raises(BadRowError) as info:
        list(tldr.records("pairs", "train", {"comparisons/batch3.json": path}, RowLog("error"),
                          name_fn=lambda rel: path))
    assert str(info.value).startswith(f"{path}:2: bad row ({kind}): field 'choice' must be ")
    log = RowLog("skip")
    out = list(tldr.records("pairs", "train", {"comparisons/batch3.json": path}, log))
    assert [r["chosen"] for r in out] == [" b"] and log.summary()["bad_rows"] == {kind: 1}


# ---------------------------------------------------------------- manual-file fingerprints


def _same_size_and_mtime(a, b, mtime_ns=1_600_000_000_123_456_789):
    for path in (a, b):
        os.utime(path, ns=(mtime_ns, mtime_ns))
    assert os.stat(a).st_size == os.stat(b).st_size
    assert os.stat(a).st_mtime_ns == os.stat(b).st_mtime_ns == mtime_ns


def _config(path, cache=None):
    return public.make_config("ultrafeedback", "lists", files={"flan.jsonl": path}, manual=True,
                              fingerprint_cache=cache)


def test_fingerprints_are_of_the_bytes_not_size_and_mtime(tmp_path):
    one = _write(str(tmp_path / "one/flan.jsonl"), [_uf(Q_TRAIN, [1.0, 2.0])])
    two = _write(str(tmp_path / "two/flan.jsonl"), [_uf(Q_TRAIN, [2.0, 1.0])])
    _same_size_and_mtime(one, two)
    assert _config(one).name != _config(two).name
    assert _config(one).name == _config(one).name
    # The same file rewritten in place with other bytes, its size and mtime put back.
    cache = str(tmp_path / "cache.json")
    before = _config(one, cache).name
    with open(one, "r+b") as f:
        f.write(b'{"source": "flax"')
    _same_size_and_mtime(one, two)
    assert _config(one, cache).name != before
    assert _config(one, cache).settings["files"]["flan.jsonl"] == (
        "sha256:" + hashlib.sha256(open(one, "rb").read()).hexdigest())


def test_an_unchanged_file_is_hashed_once(tmp_path, monkeypatch):
    path = _write(str(tmp_path / "uf/flan.jsonl"), [_uf(Q_TRAIN, [1.0, 2.0])])
    calls = []
    real = public._sha256_file
    monkeypatch.setattr(public, "_sha256_file", lambda p: calls.append(p) or real(p))
    cache = str(tmp_path / "tfds" / public.FINGERPRINTS)
    os.makedirs(os.path.dirname(cache))
    names = {_config(path, cache).name for _ in range(3)}
    assert len(names) == 1 and calls == [path]
    # Without a cache every call hashes the file.
    _config(path)
    assert len(calls) == 2
    entry = json.load(open(cache))[path]
    assert entry["stat"][:2] == [os.stat(path).st_size, os.stat(path).st_mtime_ns]
    # A new mtime, or the same bytes in a new file (a new inode), is hashed again.
    os.utime(path, ns=(5, 5))
    assert _config(path, cache).name in names and len(calls) == 3
    copy = path + ".new"
    with open(copy, "wb") as f:
        f.write(open(path, "rb").read())
    os.utime(copy, ns=(5, 5))
    os.replace(copy, path)
    assert _config(path, cache).name in names and len(calls) == 4
    _config(path, cache)
    assert len(calls) == 4


def test_the_fingerprint_cache_lives_in_the_data_dir_and_is_optional(tmp_path, monkeypatch, uf_dir):
    calls = []
    real = public._sha256_file
    monkeypatch.setattr(public, "_sha256_file", lambda p: calls.append(p) or real(p))
    data_dir = tmp_path / "tfds"
    first = public.public_builder("ultrafeedback", "lists", str(data_dir), manual_dir=uf_dir)
    again = public.public_builder("ultrafeedback", "lists", str(data_dir), manual_dir=uf_dir)
    assert first.builder_config.name == again.builder_config.name and len(calls) == 1
    assert list(json.load(open(data_dir / public.FINGERPRINTS))) == [
        os.path.join(uf_dir, "flan.jsonl")]
    # A corrupt cache is hashed past and rewritten; an unwritable one means no cache.
    (data_dir / public.FINGERPRINTS).write_text("{not json")
    assert _config(os.path.join(uf_dir, "flan.jsonl"), str(data_dir / public.FINGERPRINTS)).name
    assert len(calls) == 2 and json.load(open(data_dir / public.FINGERPRINTS))
    missing = str(tmp_path / "no-such-dir" / public.FINGERPRINTS)
    for _ in range(2):
        _config(os.path.join(uf_dir, "flan.jsonl"), missing)
    assert len(calls) == 4 and not os.path.exists(missing)
    # Downloaded files are named by URL: nothing is hashed.
    public.public_builder("hh_rlhf", "pairs", str(data_dir), subsets="helpful-base")
    assert len(calls) == 4
