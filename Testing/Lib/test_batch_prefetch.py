"""The batch runner reads the next scan while the model runs on the current one, keeps the scan
order, and a scan that fails to read does not stop the others."""
import threading

from LesionDetectorLib.batch import BatchOptions, ScanBatchRunner


def test_next_scan_is_read_while_this_one_is_detected(tmp_path, monkeypatch):
    inputs = []
    for name in ("a", "b", "c"):
        p = tmp_path / f"{name}.mha"
        p.write_bytes(b"x")
        inputs.append(str(p))
    read_started = {name: threading.Event() for name in ("a", "b", "c")}
    order, read_ahead = [], {}

    def read(self, scan):
        name = scan.path.stem
        read_started[name].set()
        if name == "b":
            raise ValueError("b is unreadable")
        return name

    def detect(self, scan, folder, volume, read_s):
        order.append(volume)
        nxt = {"a": "b", "b": "c"}.get(volume)
        # has the next scan's read begun before this detection returns? (sequential reading: no)
        read_ahead[volume] = nxt is None or read_started[nxt].wait(5)
        raise RuntimeError("stop here")   # reported as a failed scan; the batch goes on

    monkeypatch.setattr(ScanBatchRunner, "read", read)
    monkeypatch.setattr(ScanBatchRunner, "detect", detect)
    runner = ScanBatchRunner(tmp_path / "out", BatchOptions(), detector_factory=lambda: object())
    code = runner.run(inputs)
    assert order == ["a", "c"]                    # b failed to read, c still ran, in order
    assert read_ahead == {"a": True, "c": True}
    assert code == 1 and all(e.is_set() for e in read_started.values())


def test_each_scan_is_preprocessed_in_the_background_with_the_cards_preprocessing(tmp_path):
    """With a preprocessing factory the runner preprocesses a scan as soon as it is read and checked
    (while the model loads), and the Detector uses that input: the same findings as preprocessing
    it itself."""
    import json

    import numpy as np

    from LesionDetectorLib.data.synthetic import generate_scan
    from LesionDetectorLib.inference import Detector
    from LesionDetectorLib.io import write_volume
    from LesionDetectorLib.cli.detect import load_preprocessing
    from LesionDetectorLib.preprocess import Prepared

    scan = generate_scan(2, 0, size="small", confusers=False)
    path = tmp_path / "scan.mha"
    write_volume(scan.to_volume(), path)
    seen = {}

    class Recording(Detector):
        def __call__(self, volume, *args, prepared=None, **kwargs):
            seen.setdefault("prepared", []).append(prepared)
            return super().__call__(volume, *args, prepared=prepared, **kwargs)

    def factory():
        det = Detector.from_pretrained("luna16-synthetic", device="cpu", precision="fp32")
        return Recording(det.model, det.card, device="cpu", precision="fp32")

    outs = {}
    for name, prep in (("prefetched", lambda: load_preprocessing("luna16-synthetic")), ("inline", None)):
        runner = ScanBatchRunner(tmp_path / name, BatchOptions(formats=("json",)), detector_factory=factory,
                                 preprocessing_factory=prep)
        assert runner.run([str(path)]) == 0
        outs[name] = json.loads(next((tmp_path / name).glob("*/findings.json")).read_text())
    first, second = seen["prepared"]
    assert isinstance(first, Prepared) and first.preprocessing == load_preprocessing("luna16-synthetic") and second is None
    assert outs["prefetched"]["provenance"]["preprocess_prefetched"] is True
    assert outs["inline"]["provenance"]["preprocess_prefetched"] is False
    marks = {k: np.array([c["center_lps"] + [c["score"]] for c in v["candidates"]]) for k, v in outs.items()}
    assert marks["prefetched"].shape == marks["inline"].shape and len(marks["inline"])
    assert np.allclose(marks["prefetched"], marks["inline"])


def test_a_card_that_cannot_be_read_means_no_prefetch(tmp_path):
    from LesionDetectorLib.cli.detect import load_preprocessing

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    assert load_preprocessing(str(tmp_path / "bad")) is None and load_preprocessing(str(tmp_path / "empty")) is None
    assert load_preprocessing(str(tmp_path / "missing")) is None
