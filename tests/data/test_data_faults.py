"""Damaged and unreadable data files: a truncated or corrupt gzip stream, a file named .gz that
is not gzip, a directory or an unreadable file are one-line errors naming the file and the last
complete line read, under bad_rows=skip too (a damaged file is not a bad row)."""
import errno
import gzip
import json
import os

import pytest

from align import errors
from align.data import hh_rlhf, public, rows
from align.data.chat import HH
from align.data.rows import RowLog

H, A = "\n\nHuman:", "\n\nAssistant:"
ROWS = [{"chosen": f"{H} question {i} {'x' * (i % 37)}{A} yes {i}",
         "rejected": f"{H} question {i} {'x' * (i % 37)}{A} no {i}"} for i in range(300)]
TEXT = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS)
GZ = gzip.compress(TEXT, mtime=0)
DOWNLOAD_AGAIN = "Download it again (check it with `gzip -t "
SKIP_NOTE = "data.bad_rows=skip does not apply: a damaged file is not a bad row"


def _put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _read(path, policy="error"):
    return list(RowLog(policy).lines(path, path))


def _complete_lines(data):
    """How many complete lines a prefix of GZ decompresses to (what the error must report)."""
    d = gzip.zlib.decompressobj(wbits=31)
    return d.decompress(data).count(b"\n")


def _one_line(message):
    assert "\n" not in message and "Traceback" not in message
    return message


def test_the_intact_file_reads(tmp_path):
    assert len(_read(_put(tmp_path / "train.jsonl.gz", GZ))) == 300


@pytest.mark.parametrize("cut", [1, 2, 5, 10, 40, len(GZ) // 3, len(GZ) // 2, len(GZ) - 8,
                                 len(GZ) - 1])
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_truncated_gzip_file_names_the_file_and_last_line(cut, policy, tmp_path):
    path = _put(tmp_path / "train.jsonl.gz", GZ[:cut])
    with pytest.raises(errors.DataError) as e:
        _read(path, policy)
    message = _one_line(str(e.value))
    assert message.startswith(f"{path}: damaged file: ")
    # A one-byte file cannot even hold gzip's two magic bytes: it is not a gzip file.
    assert ("not a gzip file" if cut == 1 else "truncated gzip stream") in message
    n = _complete_lines(GZ[:cut])
    assert (f"after line {n}, the last complete line read" if n
            else "before its first complete line") in message
    assert DOWNLOAD_AGAIN + path + "`)" in message
    assert (SKIP_NOTE in message) == (policy == "skip")
    assert isinstance(e.value.__cause__, (EOFError, gzip.BadGzipFile))


def test_a_plain_text_file_named_gz_is_not_a_gzip_file(tmp_path):
    path = _put(tmp_path / "x.jsonl.gz", TEXT)
    for policy in ("error", "skip"):
        with pytest.raises(errors.DataError) as e:
            _read(path, policy)
        message = _one_line(str(e.value))
        assert message.startswith(f"{path}: damaged file: not a gzip file (its name ends in .gz")
        assert "before its first complete line" in message and DOWNLOAD_AGAIN in message


# Offsets where the garbage breaks the deflate data (20, 500), the CRC (the middle) or the
# length check (6 before the end). Garbage that hides the end-of-stream marker instead reads
# as a truncated stream: zlib cannot tell the two apart.
@pytest.mark.parametrize("where", [20, 500, len(GZ) // 2, len(GZ) - 6])
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_garbage_inside_a_gzip_file_is_corrupt_data(where, policy, tmp_path):
    data = bytearray(GZ)
    data[where:where + 4] = b"\xde\xad\xbe\xef"
    path = _put(tmp_path / "train.jsonl.gz", bytes(data))
    with pytest.raises(errors.DataError) as e:
        _read(path, policy)
    message = _one_line(str(e.value))
    assert message.startswith(f"{path}: damaged file: corrupt gzip data (")
    assert DOWNLOAD_AGAIN in message and (SKIP_NOTE in message) == (policy == "skip")
    # Never reported as a bad row, even when the garbage decompressed into unreadable lines.
    assert not isinstance(e.value, rows.BadRowError)


def test_garbage_decompressed_into_lines_is_reported_as_the_damage(tmp_path):
    data = bytearray(GZ)
    data[len(GZ) // 2:len(GZ) // 2 + 4] = b"\xde\xad\xbe\xef"
    path = _put(tmp_path / "train.jsonl.gz", bytes(data))
    log = RowLog("skip")
    with pytest.raises(errors.DataError, match="corrupt gzip data \\(CRC check failed"):
        list(log.lines(path, path))
    assert log.bad_counts  # this corruption reaches the reader as garbage lines first ...
    with pytest.raises(errors.DataError) as e:
        _read(path, "error")
    # ... so under "error" the first of them is named as a symptom of the damage.
    assert "(its first bad row, " + path + ":" in str(e.value)
    assert "is likely garbage from the damage" in str(e.value)
    assert isinstance(e.value.__cause__, rows.BadRowError)


def test_a_bad_row_in_an_intact_gzip_file_is_still_a_bad_row(tmp_path):
    path = _put(tmp_path / "train.jsonl.gz", gzip.compress(TEXT + b"not json\n" + TEXT))
    with pytest.raises(rows.BadRowError, match=f"{path}:301: bad row \\(not_json\\)"):
        _read(path)
    bad = dict(ROWS[0], rejected=3)
    path = _put(tmp_path / "b.jsonl.gz", gzip.compress(TEXT + json.dumps(bad).encode() + b"\n"))
    with pytest.raises(rows.BadRowError, match=f"{path}:301: bad row \\(wrong_type\\)"):
        list(hh_rlhf.records("pairs", "train", {"helpful-base/train.jsonl.gz": path},
                             RowLog("error"), template=HH,
                             name_fn=lambda rel: path))


def test_trailing_bytes_after_the_gzip_stream_are_corrupt_data(tmp_path):
    path = _put(tmp_path / "train.jsonl.gz", GZ + b"hello")
    with pytest.raises(errors.DataError, match="corrupt gzip data \\(bytes after the end of the "
                                               "gzip stream are not gzip.*after line 300, "):
        _read(path)


def test_a_corrupt_row_in_a_row_parser_is_the_damage_too(tmp_path):
    """A bad row found by a format's parser (not the line reader) also checks the rest."""
    bad = json.dumps(dict(ROWS[0], rejected=3)).encode() + b"\n"
    data = gzip.compress(bad + TEXT)
    path = _put(tmp_path / "train.jsonl.gz", data[:len(data) // 2])
    with pytest.raises(errors.DataError) as e:
        list(hh_rlhf.records("pairs", "train", {"helpful-base/train.jsonl.gz": path},
                             RowLog("error"), template=HH,
                             name_fn=lambda rel: path))
    assert "truncated gzip stream" in str(e.value)
    assert f"(its first bad row, {path}:1 (wrong_type)" in str(e.value)


def test_unopenable_files_name_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "train.jsonl.gz"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=f"cannot open {folder}: Is a directory"):
        _read(str(folder))
    with pytest.raises(IsADirectoryError, match="cannot open the-name.jsonl \\("):
        list(RowLog().lines("the-name.jsonl", str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="cannot open .*nope.jsonl: No such file"):
        _read(str(tmp_path / "nope.jsonl"))

    def denied(path, mode="rb"):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(rows.gzip, "open", denied)
    path = _put(tmp_path / "locked.jsonl.gz", GZ)
    with pytest.raises(PermissionError, match=f"cannot open {path}: Permission denied"):
        _read(path)
    assert issubclass(PermissionError, errors.INPUT_ERRORS)


class _FailingFile:
    """A file whose reads fail with an I/O error after two lines."""

    def __init__(self, *args, **kwargs):
        self.lines = iter([b'{"a": 1}\n', b'{"a": 2}\n'])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __iter__(self):
        return self

    def __next__(self):
        line = next(self.lines, None)
        if line is None:
            raise OSError(errno.EIO, "Input/output error")
        return line


@pytest.mark.parametrize("name", ["flaky.jsonl", "flaky.jsonl.gz"])
def test_a_failed_read_names_the_file_and_line(name, tmp_path, monkeypatch):
    monkeypatch.setattr(rows.gzip, "open", _FailingFile)
    monkeypatch.setattr(rows, "open", _FailingFile, raising=False)
    with pytest.raises(errors.DataError,
                       match=f"^{name}: read failed after line 2, the last complete line read: "
                             "Input/output error$"):
        list(RowLog("skip").lines(name, str(tmp_path / name)))


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_damaged_file_stops_a_dataset_build(policy, tmp_path):
    manual = tmp_path / "hh"
    path = _put(manual / "helpful-base/train.jsonl.gz", GZ[:len(GZ) // 2])
    _put(manual / "helpful-base/test.jsonl.gz", gzip.compress(TEXT[:1000].rsplit(b"\n", 1)[0]))
    with pytest.raises(errors.DataError) as e:
        public.build_public("hh_rlhf", "pairs", str(tmp_path / "tfds"), manual_dir=str(manual),
                            subsets="helpful-base", bad_rows=policy, verbose=False)
    message = str(e.value).splitlines()[0]
    assert message.startswith(f"{path}: damaged file: truncated gzip stream (")
    assert f"after line {_complete_lines(GZ[:len(GZ) // 2])}, the last complete line" in message
    assert (SKIP_NOTE in message) == (policy == "skip")
    # Nothing was built: a second try reads the file again and fails the same way.
    builder = public.public_builder("hh_rlhf", "pairs", str(tmp_path / "tfds"),
                                    manual_dir=str(manual), subsets="helpful-base",
                                    bad_rows=policy)
    assert not builder.is_prepared()
