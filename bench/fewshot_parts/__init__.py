"""The parts of ``bench/fewshot.py`` (the script keeps the command line and the summary).

``common`` holds the shared tensor helpers; ``throughput`` is part (a), ``store`` part (b) and
``memory`` part (c), each with its ``bench_*`` and ``print_*``::

    from bench.fewshot_parts.throughput import bench_setting, make_setting
    row = bench_setting(make_setting(False, args, seed=0), args)  # args as bench/fewshot.py parses them
"""
