def test_tiny_run_has_run_files(tiny_run):
    for name in ("best.pt", "last.pt", "labels.txt", "preprocess.json", "metrics.csv", "summary.json", "split.json"):
        assert (tiny_run / name).is_file(), name
