"""The pre-training corpus pipeline (``puyu data clean``): read, filter, scrub, deduplicate, report.

Built on Hugging Face ``datatrove`` (readers, quality filters, exact and MinHash
dedup, local and Ray executors); what it lacks or would download is written
here (see each module).  Nothing is downloaded at run time.

Output layout of a run in ``OUT`` (what the tokenizer trainer and the shard
writer read):

- ``OUT/data/NNNNN.jsonl`` — the kept documents, one JSON object per line,
  one file per task (task = input file; a task that kept nothing writes no
  file).  Fields: ``text`` (cleaned, PII scrubbed), ``id`` (the source's
  ``id`` field, else ``<source path>/<index>``), every other field of the
  source record unchanged (e.g. WanJuan's ``title``), and what the run added:
  ``language``, ``language_score``, ``duplicate_count`` (exact copies removed),
  ``minhash_cluster_id`` / ``minhash_cluster_size`` (-1 / 1 outside clusters).
  Read them in file-name order for a deterministic stream.
- ``OUT/removed/<step>/NNNNN.jsonl.gz`` — the documents each step dropped,
  same fields plus ``filter_reason``; ``removed/minhash_dedup`` holds the
  near duplicates with their cluster ids (``puyu data clusters OUT``).
- ``OUT/report.json`` and ``OUT/report.md`` — documents in/out per step,
  reasons, examples, duplicate clusters, seconds per stage
  (:mod:`puyu.corpus.report`).
- ``OUT/work/`` — intermediate shards, signatures and datatrove's logs and
  stats per stage (``work/logs/<stage>/``), kept for ``--resume``.
"""

from puyu.corpus.pipeline import CleanConfig, clean

__all__ = ["CleanConfig", "clean"]
