"""Runs one consumer in its own process: ``python -m bench.worker JOB.json``.

The harness measures this process from the outside (peak RSS, CPU); the consumer measures its
own interval (:class:`bench.consumers.Window`) so that interpreter start-up and imports are not
counted as streaming time. The result (or the error) goes to the job's ``result_path``.
"""

from __future__ import annotations

import json
import sys
import traceback

from .consumers import Job, load_all


def peak_rss_kb() -> int | None:
    """This process's peak resident set (VmHWM).

    Not getrusage's ru_maxrss: a child forked from a big parent inherits the parent's peak
    there, so the harness could not tell a small consumer from the harness itself.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main(argv: list[str]) -> int:
    with open(argv[1]) as fh:
        job = Job.from_json(fh.read())
    consumer = load_all()[job.consumer]
    try:
        result = consumer.run(job)
        code = 0
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=8)}
        code = 1
    # a consumer that measures something after its window (e.g. the live mirror's size)
    # reports the peak it reached in the window itself
    result.setdefault("peak_rss_kb", peak_rss_kb())
    with open(job.result_path, "w") as fh:
        json.dump(result, fh)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
