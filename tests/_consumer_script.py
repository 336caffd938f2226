"""A consumer process for tests/test_reader_crash.py: follows one table on a permanent slot and
appends one line per batch — its high-water mark and the ids — in a single write."""

import json
import os
import sys

from cdc_notebook.stream.cdc_stream import CDCStream


def main() -> None:
    conninfo, table, slot, log_path = json.loads(sys.argv[1])
    high_water = (0, 0)
    if os.path.exists(log_path):
        with open(log_path) as fh:
            for line in fh:
                if line.endswith("\n"):  # a torn last line never happened
                    end, ordinal, _ids = line.split(" ", 2)
                    high_water = (int(end), int(ordinal))
    stream = CDCStream(conninfo, table, slot_name=slot)
    reader = stream[table]
    reader.resume_after(*high_water)
    print("STARTED", flush=True)
    with open(log_path, "a") as log:
        for batch in reader.batches(follow=True):
            ids = ",".join(str(i) for i in batch.column("id").to_pylist())
            end, ordinal = reader.high_water
            log.write(f"{end} {ordinal} {ids}\n")
            log.flush()


if __name__ == "__main__":
    main()
