"""Corpus pipeline throughput: documents/s through the filters + exact + MinHash dedup of `puyu data clean`.

The C4 sample (300 documents) is cut into ``--shards`` files (work splits by
file) and repeated ``--repeat`` times (the copies go through every filter and
then exact dedup, so they cost what new documents cost up to there).  The same
run is timed on the local executor with 1 and 2 workers and on a local Ray
cluster of 2 CPUs (started here with ``ray start --head`` unless one is running;
stopped again if started here; ``pip install 'puyu[ray]'`` first), and the kept
documents of every run are checked to be byte-identical.

    python bench/corpus.py [--repeat 4] [--shards 4] [--no-ray]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
C4 = ROOT.parent / "shared" / "datasets" / "pretrain" / "llamafactory_text" / "c4_demo.jsonl"


def make_inputs(folder: Path, repeat: int, shards: int) -> int:
    lines = C4.read_text().splitlines() * repeat
    folder.mkdir(parents=True)
    for shard in range(shards):
        (folder / f"c4_{shard:02d}.jsonl").write_text("\n".join(lines[shard::shards]) + "\n")
    return len(lines)


def timed(inputs: Path, out: Path, **options) -> tuple[float, dict]:
    from puyu.corpus import CleanConfig, clean

    start = time.perf_counter()
    report = clean(CleanConfig(inputs=[str(inputs)], output=str(out), overwrite=True, **options))
    return time.perf_counter() - start, report


# The `ray` command of this interpreter's environment (a virtual environment's bin/ need not be on PATH).
RAY = str(Path(sys.executable).with_name("ray"))


def output_digest(out: Path) -> str:
    """SHA-256 over the kept documents' shards (``OUT/data``), in name order: equal for runs that kept the same bytes."""
    digest = hashlib.sha256()
    for shard in sorted((out / "data").iterdir()):
        digest.update(shard.read_bytes())
    return digest.hexdigest()[:16]


def ray_cluster() -> bool:
    """Start a 2-CPU local Ray head unless one is up; True when started here."""
    if subprocess.run([RAY, "status"], capture_output=True).returncode == 0:
        return False
    subprocess.run([RAY, "start", "--head", "--num-cpus", "2", "--include-dashboard=false", "--object-store-memory", str(500 << 20)],
                   check=True, capture_output=True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    from puyu.hardware import describe_machine

    print(describe_machine())
    tmp = Path(tempfile.mkdtemp(prefix="puyu-bench-corpus-"))
    try:
        documents = make_inputs(tmp / "in", args.repeat, args.shards)
        print(f"input: C4 sample x{args.repeat} = {documents} documents in {args.shards} files")
        runs = [("local, 1 worker", {"workers": 1}), ("local, 2 workers", {"workers": 2})]
        started = False
        if not args.no_ray:
            try:
                import ray  # noqa: F401

                started = ray_cluster()
                runs.append(("ray, 2 workers", {"workers": 2, "executor": "ray"}))
            except (ImportError, subprocess.CalledProcessError, FileNotFoundError) as exc:
                print(f"ray: not measured ({exc})")
        results = {}
        try:
            for name, options in runs:
                out = tmp / name.replace(" ", "").replace(",", "_")
                seconds, report = timed(tmp / "in", out, **options)
                stages = ", ".join(f"{k} {v:.1f}" for k, v in report["seconds"].items())
                results[name] = {"seconds": round(seconds, 2), "documents_per_second": round(documents / seconds, 1),
                                 "documents_out": report["documents_out"], "stages": report["seconds"],
                                 "output_sha256": output_digest(out)}
                print(f"{name:<18} {seconds:7.1f} s  {documents / seconds:8.1f} documents/s  "
                      f"({report['documents_out']} kept)  stages: {stages}")
        finally:
            if "ray" in sys.modules:
                sys.modules["ray"].shutdown()  # disconnect before the cluster goes
            if started:
                subprocess.run([RAY, "stop", "--force"], capture_output=True)
        base = results["local, 1 worker"]["documents_per_second"]
        for name, result in results.items():
            print(f"{name:<18} x{result['documents_per_second'] / base:.2f} vs local, 1 worker")
        same = len({result["output_sha256"] for result in results.values()}) == 1
        print("kept documents byte-identical across executors and workers:", "yes" if same else "NO")
        print(json.dumps(results))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
