"""The pgoutput-decoder (PyPI) client, run by the Python >= 3.12 virtual environment.

Standalone on purpose: that environment has only the standard library and pgoutput-decoder.
``python _pgoutput_decoder_client.py JOB.json`` writes its result JSON to the job's result_path.
"""

import asyncio
import json
import os
import resource
import sys
import time


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def consume(job: dict) -> dict:
    import pgoutput_decoder

    latency = job["mode"] == "latency"
    limit = job["expected_events"]
    if job.get("event_cap") and not latency:
        limit = min(limit, job["event_cap"])
    info = job["conninfo"]
    t0, c0 = time.perf_counter(), cpu()
    reader = pgoutput_decoder.LogicalReplicationReader(
        publication_name=job["publication"], slot_name=job["slot"], host=info["host"],
        database=info["dbname"], port=int(info["port"]), user=info["user"],
        password=os.environ.get("PGPASSWORD", ""))
    events = 0
    lat: list[int] = []
    stopped = False
    error = None
    iterator = reader.__aiter__()
    try:
        while True:
            try:
                message = await asyncio.wait_for(iterator.__anext__(), timeout=60)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                error = f"no message for 60 s after {events} events"
                break
            arrival = time.time_ns() // 1000
            events += 1
            after = message.after
            before = message.before  # materialize both images, as a user would
            del before
            if latency and after:
                note = after.get("note")
                if note == "lat:stop":
                    stopped = True
                    break
                if isinstance(note, str) and note.startswith("lat:"):
                    lat.append(arrival - int(note[4:]))
            elif not latency and events >= limit:
                break
    finally:
        t1, c1 = time.perf_counter(), cpu()
        try:
            await asyncio.wait_for(reader.stop(), timeout=10)
        except Exception:
            pass
    if error:
        return {"error": error, "events": events}
    if latency:
        return {"events": len(lat), "latencies_us": lat, "stopped": stopped}
    return {"events": events, "seconds": t1 - t0, "cpu_window_s": c1 - c0,
            "capped": events < job["expected_events"]}


def main() -> int:
    with open(sys.argv[1]) as fh:
        job = json.load(fh)
    try:
        result = asyncio.run(consume(job))
        code = 0 if "error" not in result else 1
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
        code = 1
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    result["peak_rss_kb"] = int(line.split()[1])
    except OSError:
        pass
    with open(job["result_path"], "w") as fh:
        json.dump(result, fh)
    sys.stdout.flush()
    # the reader's runtime threads may linger after stop(): do not wait for them
    os._exit(code)


if __name__ == "__main__":
    main()
