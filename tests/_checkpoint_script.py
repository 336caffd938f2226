"""A notebook-like process for tests/test_checkpoint_resume.py: a LiveReader with a Parquet
checkpoint on a permanent slot, printing each checkpoint's LSN until it is killed."""

import json
import sys
import time

from cdc_notebook import CDCStream, LiveReader


def main() -> None:
    conninfo, pattern, slot, plugin, directory = json.loads(sys.argv[1])
    stream = CDCStream(conninfo, pattern, slot_name=slot, plugin=plugin)
    reader = LiveReader(stream, checkpoint=directory, checkpoint_interval=0.3).start()
    print("STARTED", flush=True)
    seen = 0
    while True:
        if reader.error is not None:
            print(f"FAILED {reader.error!r}", flush=True)
            return
        if reader.checkpoints > seen:
            seen = reader.checkpoints
            print(f"CHECKPOINT {seen} {reader.checkpoint_lsn}", flush=True)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
