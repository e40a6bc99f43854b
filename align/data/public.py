"""Public preference datasets (HH-RLHF, TL;DR, UltraFeedback) as TFDS builders (array_record).

Dimension letters: K responses per prompt.

Each builder reads the ORIGINAL public files, downloaded from their published URLs by the
TFDS download manager, or from a manual directory laid out like the published tree (for
machines without internet):
    hh_rlhf        <manual_dir>/<subset>/{train,test}.jsonl.gz
    tldr           <manual_dir>/comparisons/*.json, <manual_dir>/tldr_3_filtered/{train,valid,test}.jsonl
    ultrafeedback  <manual_dir>/<subset>.jsonl
and writes records with exactly the features every objective reads (see
align/data/pipeline.py): sft {prompt, completion}, prompts {prompt}, pairs {prompt, chosen,
rejected}, lists {prompt, completions, labels}. How each format becomes records is
documented in its module (align/data/hh_rlhf.py, tldr.py, ultrafeedback.py); bad rows in
align/data/rows.py.

A builder config is named by a hash of everything its records depend on (source, kind,
subsets, template, bad-row policy, options, and for a manual directory the sha256 of each
file's bytes), so a changed setting or file gets a new build. A file's digest is cached in
`<data_dir>/.align-fingerprints.json`, keyed by its absolute path, size, mtime_ns, ctime_ns,
inode and device, so an unchanged file is hashed once, not on every run; any change to those
rehashes it (ctime changes on every write, even one that restores size and mtime). Where
the cache cannot be read or written, every file is hashed each time. The build's row
report (rows read, bad rows by kind with the first of each, excluded rows by reason,
examples per split) is printed at the end of a build and stored in the dataset's
metadata (`metadata.json` beside its records); `report()` reads it back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from align import atomic, errors
from align.data import hh_rlhf, tldr, ultrafeedback
from align.data.builders import _quiet_tfds
from align.data.chat import ChatTemplate, get_template
from align.data.rows import POLICIES, RowLog

# Bump when what the builders write changes (fields, record order, parsing rules).
DATA_FORMAT = 1
KINDS = ("sft", "prompts", "pairs", "lists")
FORMATS = {"hh_rlhf": hh_rlhf, "tldr": tldr, "ultrafeedback": ultrafeedback}
SOURCES = tuple(FORMATS)
# Options beyond template and policy, per source: name -> allowed values.
OPTIONS = {"hh_rlhf": {}, "tldr": {},
           "ultrafeedback": {"score": tuple(ultrafeedback.SCORES), "rejected": ultrafeedback.REJECTED}}


@dataclasses.dataclass(eq=False)
class PublicConfig(tfds.core.BuilderConfig):
    """A builder config carrying the kind and every setting the records depend on."""

    kind: str = ""
    settings: dict = dataclasses.field(default_factory=dict)


def _subsets(subsets: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(subsets, str):
        subsets = subsets.split(",")
    return tuple(s.strip() for s in subsets if s.strip())


def _check(source: str, kind: str, bad_rows: str, options: Mapping[str, Any]) -> None:
    if source not in FORMATS:
        raise errors.ConfigError(f"unknown public data source {source!r}; valid: {', '.join(SOURCES)}",
                                 key="data.source")
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; valid: {', '.join(KINDS)}")
    if bad_rows not in POLICIES:
        raise errors.ConfigError(f"bad_rows must be one of {POLICIES}, got {bad_rows!r}",
                                 key="data.bad_rows")
    for key, value in options.items():
        allowed = OPTIONS[source]
        if key not in allowed:
            raise errors.ConfigError(
                f"unknown option {key!r} for {source}; valid: {sorted(allowed) or 'none'}")
        if value not in allowed[key]:
            raise errors.ConfigError(
                f"{source} option {key!r} must be one of {allowed[key]}, got {value!r}")


def resolve_files(source: str, kind: str, subsets: Sequence[str], manual_dir: str = ""
                  ) -> dict[str, str]:
    """relative path -> local path (manual directory) or URL (download) of the files a kind reads."""
    module = FORMATS[source]
    if not manual_dir:
        return {rel: module.url(rel) for rel in module.files(kind, tuple(subsets))}
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual directory for {source} not found: {manual_dir}")
    rels = module.files(kind, tuple(subsets), manual_dir)
    paths = {rel: os.path.join(manual_dir, rel) for rel in rels}
    missing = [rel for rel, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"{source} {kind}: {len(missing)} of the {len(rels)} files it reads are missing from "
            f"{manual_dir}: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} "
            f"(published at {module.url(missing[0])})")
    return paths


FINGERPRINTS = ".align-fingerprints.json"  # the digest cache in a data_dir (module docstring)
_CHUNK = 1 << 20


def _sha256_file(path: str) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read_cache(cache: str | None) -> dict:
    if not cache:
        return {}
    try:
        with open(cache) as f:
            entries = json.load(f)
    except (OSError, ValueError):
        return {}  # none yet, unreadable or corrupt: hash again
    return entries if isinstance(entries, dict) else {}


def fingerprints(paths: Mapping[str, str], cache: str | None = None) -> dict[str, str]:
    """rel -> "sha256:<hex>" of each file's bytes, reusing `cache` (a JSON file) where the
    file's absolute path, size, mtime_ns, ctime_ns, inode and device are unchanged."""
    entries = _read_cache(cache)
    out, changed = {}, False
    for rel, path in paths.items():
        full = os.path.abspath(path)
        key = _stat_key(full)
        entry = entries.get(full)
        if (isinstance(entry, dict) and entry.get("stat") == key
                and isinstance(entry.get("sha256"), str)):
            out[rel] = "sha256:" + entry["sha256"]
            continue
        digest = _sha256_file(full)
        entries[full] = {"stat": key, "sha256": digest}
        out[rel], changed = "sha256:" + digest, True
    if cache and changed:
        try:
            atomic.write_text(cache, json.dumps(entries, sort_keys=True, indent=1) + "\n")
        except OSError:
            pass  # not writable: no cache, the files are hashed again next time
    return out


def _cache_path(data_dir: str) -> str | None:
    """Where a local data_dir keeps the digest cache; None for a remote one (gs://...)."""
    data_dir = os.fspath(data_dir)
    if "://" in data_dir:
        return None
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError:
        return None
    return os.path.join(data_dir, FINGERPRINTS)


def make_config(source: str, kind: str, *, files: Mapping[str, str], manual: bool,
                template: str = "hh", bad_rows: str = "error",
                options: Mapping[str, Any] | None = None,
                fingerprint_cache: str | None = None) -> PublicConfig:
    """The config of one dataset; its name is a hash of the settings its records depend on.

    Manual files count by the sha256 of their bytes (`fingerprints`, cached in
    `fingerprint_cache` when given); downloaded ones by their URL.
    """
    options = dict(options or {})
    _check(source, kind, bad_rows, options)
    if manual:
        fingerprint = fingerprints(files, fingerprint_cache)
    else:
        fingerprint = dict(files)
    settings = {"format": DATA_FORMAT, "source": source, "kind": kind, "files": fingerprint,
                # TL;DR prompts have their own format: the chat template does not apply.
                "template": None if source == "tldr" else get_template(template).spec(),
                "bad_rows": bad_rows,
                "options": options}
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return PublicConfig(name=f"cfg_{digest}", description=f"{source} {kind} ({len(files)} files)",
                        kind=kind, settings=settings)


def _text():
    return tfds.features.Text()


FEATURES = {
    "sft": lambda: {"prompt": _text(), "completion": _text()},
    "prompts": lambda: {"prompt": _text()},
    "pairs": lambda: {"prompt": _text(), "chosen": _text(), "rejected": _text()},
    "lists": lambda: {"prompt": _text(), "completions": tfds.features.Sequence(_text()),
                      "labels": tfds.features.Sequence(tfds.features.Scalar(np.float32))},
}


class _PublicBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Reads a public dataset's files (paths or URLs given at construction) into one kind of records."""

    SOURCE = ""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    # No checksum or metadata files live beside this code (see builders._ReviewsBuilder).
    code_path = None

    def __init__(self, *, files: Mapping[str, str] | None = None, manual: bool = False, **kwargs):
        self._files = dict(files or {})
        self._manual = manual
        super().__init__(**kwargs)

    @property
    def _module(self):
        return FORMATS[self.SOURCE]

    # From files already on disk nothing is downloaded: say so instead of TFDS's banner.
    def _log_download_bytes(self) -> None:
        if not self._manual or not self._files:
            super()._log_download_bytes()
            return
        print(f"building {self.SOURCE} ({self.builder_config.kind}) from "
              f"{os.path.commonpath(list(self._files.values()))} in {self.data_dir}", flush=True)

    def _log_download_done(self) -> None:
        if not self._manual:
            super()._log_download_done()

    def _info(self) -> tfds.core.DatasetInfo:
        # Shuffling off: records keep file order, so runs can name examples by index.
        return tfds.core.DatasetInfo(
            builder=self, description=self.builder_config.description,
            features=tfds.features.FeaturesDict(FEATURES[self.builder_config.kind]()),
            disable_shuffling=True, metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        if not self._files:
            raise ValueError(f"{self.SOURCE}: the builder was made without files; use build_public()")
        if self._manual:
            paths = dict(self._files)
        else:
            paths = dict(zip(self._files, (os.fspath(p) for p in dl_manager.download(
                list(self._files.values())))))
        return {split: self._generate_examples(split, paths) for split in self._module.SPLITS}

    def _generate_examples(self, split: str, paths: Mapping[str, str]) -> Iterator[tuple[int, dict]]:
        settings = self.builder_config.settings
        kwargs = dict(settings["options"])
        if settings["template"] is not None:
            kwargs["template"] = ChatTemplate(**settings["template"])
        names = self._files  # messages name the manual path or the URL, not the download cache
        log = RowLog(settings["bad_rows"])
        n = 0
        for n, record in enumerate(self._module.records(
                self.builder_config.kind, split, paths, log, name_fn=names.__getitem__, **kwargs),
                start=1):
            if "labels" in record:
                record = {**record, "labels": np.asarray(record["labels"], np.float32)}
            yield n - 1, record
        summary = {**log.summary(), "examples": n}
        if n == 0:
            # TFDS cannot write an empty split; say why it is empty instead of its assertion.
            raise errors.DataError(f"{self.SOURCE} {self.builder_config.kind}: split {split!r} has "
                                   f"no examples; its row report: {json.dumps(summary)}")
        self.info.metadata.setdefault("report", {})[split] = summary


class HhRlhf(_PublicBuilder):
    """Anthropic HH-RLHF (see align/data/hh_rlhf.py)."""

    SOURCE = "hh_rlhf"


class Tldr(_PublicBuilder):
    """OpenAI TL;DR comparisons and SFT data (see align/data/tldr.py)."""

    SOURCE = "tldr"


class Ultrafeedback(_PublicBuilder):
    """UltraFeedback lists and binarised pairs (see align/data/ultrafeedback.py)."""

    SOURCE = "ultrafeedback"


_BUILDERS = {cls.SOURCE: cls for cls in (HhRlhf, Tldr, Ultrafeedback)}


def public_builder(source: str, kind: str, data_dir: str, *, manual_dir: str = "",
                   subsets: str | Sequence[str] = (), template: str = "hh",
                   bad_rows: str = "error", options: Mapping[str, Any] | None = None
                   ) -> _PublicBuilder:
    """The (possibly unprepared) builder of one public dataset."""
    if source not in FORMATS:
        raise errors.ConfigError(f"unknown public data source {source!r}; valid: {', '.join(SOURCES)}",
                                 key="data.source")
    files = resolve_files(source, kind, _subsets(subsets), manual_dir)
    config = make_config(source, kind, files=files, manual=bool(manual_dir), template=template,
                         bad_rows=bad_rows, options=options,
                         fingerprint_cache=_cache_path(data_dir) if manual_dir else None)
    with _quiet_tfds():
        return _BUILDERS[source](data_dir=os.fspath(data_dir), file_format="array_record",
                                 config=config, files=files, manual=bool(manual_dir))


def report(builder: _PublicBuilder) -> dict:
    """The row report stored with a prepared dataset: split -> counts (see rows.RowLog.summary)."""
    return dict(builder.info.metadata.get("report", {}))


def format_report(source: str, kind: str, rep: Mapping[str, Mapping]) -> str:
    """The row report as a few human-readable lines."""
    lines = [f"{source} {kind}: built " + ", ".join(
        f"{split} {r['examples']} examples from {r['rows']} rows" for split, r in rep.items())]
    for split, r in rep.items():
        if r["bad_rows"]:
            lines.append(f"  {split}: skipped bad rows " + ", ".join(
                f"{kind_} {n} (first: {r['first_bad'][kind_]})" for kind_, n in r["bad_rows"].items()))
        if r["excluded"]:
            lines.append(f"  {split}: excluded by rule " + ", ".join(
                f"{reason} {n}" for reason, n in r["excluded"].items()))
    return "\n".join(lines)


def build_public(source: str, kind: str, data_dir: str, *, manual_dir: str = "",
                 subsets: str | Sequence[str] = (), template: str = "hh",
                 bad_rows: str = "error", options: Mapping[str, Any] | None = None,
                 verbose: bool = True) -> dict[str, Any]:
    """Builds a public dataset if needed (printing its row report); returns {split: source}."""
    def make():
        return public_builder(source, kind, data_dir, manual_dir=manual_dir, subsets=subsets,
                              template=template, bad_rows=bad_rows, options=options)

    builder = make()
    with _quiet_tfds():
        if not builder.is_prepared():
            download_config = tfds.download.DownloadConfig(try_download_gcs=False)
            try:
                builder.download_and_prepare(file_format="array_record",
                                             download_config=download_config)
            except OSError:
                # Another process sharing data_dir may have finished the same build first.
                builder = make()
                if not builder.is_prepared():
                    raise
            else:
                if verbose:
                    print(format_report(source, kind, report(builder)), flush=True)
        sources = builder.as_data_source()
    return {split: sources[split] for split in FORMATS[source].SPLITS}
