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
