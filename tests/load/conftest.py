"""tests/load holds Locust files: pytest must never import them (importing locust monkey-patches
the whole process with gevent). test_locust_file.py runs them as operators do, in a subprocess."""

collect_ignore = ["worker_load_test.py"]
