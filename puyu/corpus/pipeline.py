"""The cleaning run: stages of datatrove pipelines from raw files to deduplicated documents.

Contract: :func:`clean` runs, one after another, datatrove pipelines on a
local executor (``workers`` processes) or on a Ray cluster:

1. ``filter`` (one task per input file): read → language → length → Gopher
   repetition → Gopher quality → C4 → FineWeb → bad words → PII scrubbing →
   ``work/filtered`` (+ exact-dedup signatures);
2. ``exact``: documents whose whitespace-normalised text is identical keep one
   copy (datatrove's exact dedup: signatures, finder, filter);
3. ``minhash``: near duplicates (datatrove's MinHash LSH: signatures of word
   5-gram shingles, 14 bands of 8 hashes, so pairs of Jaccard similarity
   0.8 meet with probability 0.92, 0.9 with 0.9996, 0.5 with 0.05; clusters by
   union-find, one document kept per cluster).

Determinism: the same inputs and options (``seed`` sets the MinHash hash
functions) give byte-identical output, whatever the number of workers or the
executor (tasks are fixed by the inputs: one per file).  A
task that keeps no document still leaves an (empty) shard, so every later
stage's task ``r`` reads exactly stage-1 task ``r``'s documents, which
datatrove's index-based dedup steps require.  ``resume`` skips the tasks a
stopped run completed (datatrove's completion markers).  The output layout is
in :mod:`puyu.corpus`; :mod:`puyu.corpus.report` writes the report.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig

from puyu.corpus.filters import BadWordsFilter, LanguageID, LengthFilter, PIIScrubber, heuristic_filter
from puyu.corpus.readers import TXT_MODES, CorpusReader, find_inputs
from puyu.corpus.text import TOKENIZER
from puyu.errors import ConfigError

log = logging.getLogger(__name__)

# datatrove's default xxhash path passes str to xxhash, which xxhash >= 4 (installed beside puyu[rag]) refuses; sha1
# hashes str itself.  64 bits: collisions stay negligible at billions of documents.
HASH = HashConfig(precision=64, hash_fc="sha1")

FILTER_STEPS = ("language", "length", "gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality", "bad_words", "pii")
DEDUP_MODES = ("minhash", "exact", "none")


@dataclass
class CleanConfig:
    """Options of one cleaning run (the ``puyu data clean`` flags)."""

    inputs: list[str]
    output: str
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])  # empty: keep every language
    language_threshold: float = 0.65
    text_field: str | None = None  # default: "text", else "content"
    txt_mode: str = "paragraph"
    min_chars: int = 50
    max_chars: int = 1_000_000
    skip: list[str] = field(default_factory=list)  # FILTER_STEPS to leave out
    bad_words: str | None = None  # a file, one word or phrase per line
    dedup: str = "minhash"
    ngrams: int = 5
    buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1
    workers: int = 1
    executor: str = "local"
    ray_address: str = "auto"
    limit: int = -1  # documents per input file task (for a quick look)
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self):
        self.output = str(Path(self.output).expanduser().resolve())  # datatrove reads a relative folder as a root one
        unknown = sorted(set(self.skip) - set(FILTER_STEPS))
        checks = [
            (self.dedup in DEDUP_MODES, f"--dedup {self.dedup!r} is not one of {', '.join(DEDUP_MODES)}"),
            (self.executor in ("local", "ray"), f"--executor {self.executor!r} is not local or ray"),
            (self.txt_mode in TXT_MODES, f"--txt-mode {self.txt_mode!r} is not one of {', '.join(TXT_MODES)}"),
            (not unknown, f"--skip {','.join(unknown)}: unknown step (steps: {', '.join(FILTER_STEPS)})"),
            (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
            (0 <= self.language_threshold <= 1, f"--language-threshold must be in [0, 1], got {self.language_threshold}"),
            (0 <= self.min_chars <= self.max_chars, f"--min-chars {self.min_chars}, --max-chars {self.max_chars}: need 0 <= min <= max"),
            (min(self.ngrams, self.buckets, self.hashes_per_bucket) >= 1, "--ngrams, --buckets, --hashes-per-bucket must be >= 1"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.bad_words and not Path(self.bad_words).is_file():
            raise ConfigError(f"--bad-words {self.bad_words}: no such file (one word or phrase per line)")

    @property
    def minhash(self) -> MinhashConfig:
        return MinhashConfig(n_grams=self.ngrams, num_buckets=self.buckets, hashes_per_bucket=self.hashes_per_bucket, seed=self.seed,
                             hash_config=HASH)

    def similarity_threshold(self) -> float:
        """The Jaccard similarity at which a pair meets in some band with probability ~1/2: (1/b)^(1/r)."""
        return (1 / self.buckets) ** (1 / self.hashes_per_bucket)


def normalized_text(doc) -> str:
    """What exact dedup compares: the text with runs of whitespace made one space."""
    return " ".join(doc.text.split())


def _jsonl_writer(folder: Path, compressed: bool = True) -> JsonlWriter:
    """Documents as flat JSON lines (``text``, ``id``, then every metadata field), one file per task."""
    return JsonlWriter(str(folder), output_filename="${rank}.jsonl" + (".gz" if compressed else ""),
                       compression="gzip" if compressed else None, expand_metadata=True)


def _pad_shards(folder: Path, tasks: int) -> list[str]:
    """The shard of every task, writing an empty one where a task kept no document."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{rank:05d}.jsonl.gz" for rank in range(tasks)]
    for path in paths:
        if not path.exists():
            with gzip.open(path, "wb"):
                pass
    return [str(p) for p in paths]


def _warnings_only() -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")


def _quiet(executor_class: type) -> type:
    """``executor_class`` whose tasks log to their files only (datatrove prints a task's log when its local rank is 0, and
    resets the console logger after each task) and whose summary stays in ``stats.json``: warnings still show."""

    class Quiet(executor_class):
        def run(self):
            from datatrove.utils.logging import setup_default_logger

            _warnings_only()
            try:
                return super().run()
            finally:
                setup_default_logger()

        def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
            try:
                return super()._run_for_rank(rank, 1, node_rank)
            finally:
                _warnings_only()

    Quiet.__name__ = Quiet.__qualname__ = f"Quiet{executor_class.__name__}"
    return Quiet


class Runner:
    """Runs the stages of one :class:`CleanConfig` and records each stage's wall time."""

    def __init__(self, config: CleanConfig, on_stage: Callable[[str, float], None] | None = None, show_progress: bool = False,
                 quiet: bool = False):
        self.config, self.on_stage, self.show_progress, self.quiet = config, on_stage, show_progress, quiet
        self.out = Path(config.output)
        self.work = self.out / "work"
        self.seconds: dict[str, float] = {}

    def removed(self, step: str) -> JsonlWriter:
        return _jsonl_writer(self.out / "removed" / step)

    def stage(self, name: str, pipeline: list, tasks: int) -> None:
        config = self.config
        workers = min(config.workers, tasks)
        start = time.perf_counter()
        if config.executor == "ray":
            try:
                import ray
            except ImportError as exc:
                raise ConfigError("--executor ray needs Ray: pip install 'puyu[ray]' (or ray)") from exc
            from datatrove.executor import RayPipelineExecutor

            if not ray.is_initialized():
                try:
                    ray.init(address=config.ray_address, log_to_driver=False)
                except ConnectionError as exc:
                    raise ConfigError(f"no Ray cluster at {config.ray_address!r} ({exc}): start one with `ray start --head` "
                                      "or pass --ray-address") from exc
            executor = _quiet(RayPipelineExecutor) if self.quiet else RayPipelineExecutor
            executor(pipeline, tasks=tasks, workers=workers, logging_dir=str(self.work / "logs" / name), mem_per_cpu_gb=0.5).run()
        else:
            from datatrove.executor import LocalPipelineExecutor

            executor = _quiet(LocalPipelineExecutor) if self.quiet else LocalPipelineExecutor
            executor(pipeline, tasks=tasks, workers=workers, logging_dir=str(self.work / "logs" / name)).run()
        self.seconds[name] = time.perf_counter() - start
        if self.on_stage:
            self.on_stage(name, self.seconds[name])

    def filter_steps(self) -> list:
        config, skip = self.config, set(self.config.skip)
        steps = []
        if "language" not in skip:
            steps.append(LanguageID(config.languages, config.language_threshold, exclusion_writer=self.removed("language")))
        if "length" not in skip:
            steps.append(LengthFilter(config.min_chars, config.max_chars, exclusion_writer=self.removed("length")))
        for kind in ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"):
            if kind not in skip:
                steps.append(heuristic_filter(kind, config.languages, exclusion_writer=self.removed(kind)))
        if config.bad_words and "bad_words" not in skip:
            words = Path(config.bad_words).read_text(encoding="utf-8").splitlines()
            steps.append(BadWordsFilter(words, exclusion_writer=self.removed("bad_words")))
        if "pii" not in skip:
            steps.append(PIIScrubber())
        return steps

    def run(self) -> dict[str, float]:
        config = self.config
        files = find_inputs(config.inputs)
        tasks = len(files)
        exact = ExactDedupConfig(content_getter=normalized_text, hash_config=HASH)
        data = self.out / "data"
        reader = CorpusReader(files, config.text_field, config.txt_mode, config.limit, doc_progress=self.show_progress)
        if config.dedup == "none":
            self.stage("filter", [reader, *self.filter_steps(), _jsonl_writer(data, compressed=False)], tasks)
            return self.seconds
        self.stage("filter", [reader, *self.filter_steps(), _jsonl_writer(self.work / "filtered"),
                              ExactDedupSignature(str(self.work / "exact" / "sigs"), exact)], tasks)
        filtered = CorpusReader(_pad_shards(self.work / "filtered", tasks), "text")
        self.stage("exact_find", [ExactFindDedups(str(self.work / "exact" / "sigs"), str(self.work / "exact" / "dups"), exact)], 1)
        exact_filter = ExactDedupFilter(str(self.work / "exact" / "dups"), exact, exclusion_writer=self.removed("exact_dedup"))
        if config.dedup == "exact":
            self.stage("exact_filter", [filtered, exact_filter, _jsonl_writer(data, compressed=False)], tasks)
            return self.seconds
        minhash, sigs = config.minhash, str(self.work / "minhash" / "sigs")
        self.stage("exact_filter", [filtered, exact_filter, _jsonl_writer(self.work / "unique"),
                                    MinhashDedupSignature(sigs, minhash, language=TOKENIZER)], tasks)
        unique = CorpusReader(_pad_shards(self.work / "unique", tasks), "text")
        buckets, clusters = str(self.work / "minhash" / "buckets"), str(self.work / "minhash" / "clusters")
        self.stage("minhash_buckets", [MinhashDedupBuckets(sigs, buckets, config=minhash)], config.buckets)
        cluster = MinhashDedupCluster(buckets, clusters, config=minhash, save_cluster_id=True, save_cluster_size=True)
        self.stage("minhash_cluster", [cluster], 1)
        Path(clusters).mkdir(parents=True, exist_ok=True)  # absent when no document had a duplicate
        for rank, suffix in itertools.product(range(tasks), ("remove", "clusters", "sizes")):
            (Path(clusters) / f"{rank:06d}.{suffix}").touch()  # datatrove's filter skips (or fails) a task missing one
        self.stage("minhash_filter", [unique, MinhashDedupFilter(clusters, exclusion_writer=self.removed("minhash_dedup"),
                                                                 load_cluster_ids=True, load_cluster_sizes=True),
                                      _jsonl_writer(data, compressed=False)], tasks)
        return self.seconds


def prepare_output(config: CleanConfig) -> None:
    """Refuse to mix runs: an output folder holding a run needs --resume (continue it) or --overwrite (start again)."""
    out = Path(config.output)
    if out.exists() and any(out.iterdir()):
        if config.overwrite:
            shutil.rmtree(out)
        elif not config.resume:
            raise ConfigError(f"{out} is not empty: pass --resume to continue the run there or --overwrite to start again")
    out.mkdir(parents=True, exist_ok=True)


def clean(config: CleanConfig, on_stage: Callable[[str, float], None] | None = None, show_progress: bool = False,
          quiet: bool = False) -> dict:
    """Run the pipeline of ``config`` and write its report; returns the report (see :func:`puyu.corpus.report.build`).

    ``on_stage(name, seconds)`` is called after each stage; ``show_progress`` shows a bar of documents read (one
    worker); ``quiet`` keeps datatrove's task logs in ``work/logs/<stage>/logs`` instead of also on stderr.
    """
    from puyu.corpus.report import build, write

    prepare_output(config)
    runner = Runner(config, on_stage, show_progress, quiet)
    seconds = runner.run()
    report = build(config, seconds)
    write(report, Path(config.output))
    return report
