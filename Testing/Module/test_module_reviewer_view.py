"""scripts/render_reviewer_view.py draws the reviewer's view from a volume + findings JSON."""
import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "render_reviewer_view.py"


def test_render_writes_a_png_with_markers_for_the_findings(tmp_path, findings_doc):
    from LesionDetectorLib.volume import Volume

    spec = importlib.util.spec_from_file_location("render_reviewer_view", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    v = findings_doc["volume"]
    array = np.full(v["shape_zyx"], -850.0, dtype=np.float32)
    volume = Volume(array, v["spacing"], v["origin"], np.reshape(v["direction"], (3, 3)))
    findings_doc["candidates"][1]["review"] = "accepted"
    out = script.render(volume, findings_doc, tmp_path / "view.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.shape[0] > 600 and img.shape[1] > 1200
    # the flag banner of a positive scan is red: some strongly red pixels exist
    red = (img[..., 0] > 0.7) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)
    assert red.sum() > 500
