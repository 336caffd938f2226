"""The benchmark harness: the kit beside PostgreSQL's own paths and the baselines, in one run.

``python -m bench --help`` (see ``bench/README.md``). The workload is
``bench-workload.md``'s standard workload; every consumer is one module in
``bench/consumers/`` and is measured in its own subprocess.
"""
