"""Detection on several volumes, one after the other, with one progress and one Cancel.

Each volume runs as an ordinary detection of the Logic (background process, results added
only when that volume's run succeeds). A failed volume is recorded and the batch goes on
with the next; Cancel stops the running one and drops the rest, keeping what finished.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple


def ct_volumes(scene) -> List[Any]:
    """Every scalar (CT) volume node of ``scene`` in scene order; label maps are not CTs."""
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    out = []
    for i in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(i)
        if not node.IsA("vtkMRMLLabelMapVolumeNode"):
            out.append(node)
    return out


@dataclass
class BatchDetection:
    """Drives ``logic`` (a ``LesionDetectorLogic``) over ``volumes``; call :meth:`poll` from a timer.

    ``results`` are the ``findings_scene.ResultNodes`` of the volumes done, ``errors``
    ``(volume name, cause)`` of those that failed or could not start.
    """

    logic: Any
    volumes: Sequence[Any]
    start_kwargs: dict = field(default_factory=dict)
    log: Optional[Callable[[str], None]] = None
    results: List[Any] = field(default_factory=list)
    errors: List[Tuple[str, str]] = field(default_factory=list)
    index: int = -1
    done: bool = False
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.volumes = list(self.volumes)
        if not self.volumes:
            raise ValueError("the scene holds no CT volume to detect on")

    @property
    def total(self) -> int:
        return len(self.volumes)

    @property
    def current_name(self) -> str:
        return self.volumes[self.index].GetName() if 0 <= self.index < self.total else ""

    def start(self) -> "BatchDetection":
        self._next()
        return self

    def _say(self, message: str) -> None:
        if self.log:
            self.log(message)

    def _next(self) -> None:
        """Start the next volume that starts; ``done`` when none is left."""
        while self.index + 1 < self.total:
            self.index += 1
            volume = self.volumes[self.index]
            self._say(f"Volume {self.index + 1} of {self.total}: {volume.GetName()}")
            try:
                self.logic.startDetection(volume, **self.start_kwargs)
                return
            except Exception as exc:  # noqa: BLE001 - a refused volume must not stop the batch
                self.errors.append((volume.GetName(), str(exc)))
                self._say(f"{volume.GetName()}: not started ({exc})")
        self.done = True

    def poll(self) -> bool:
        """Advance without blocking; True once every volume is done or failed, or after Cancel."""
        if self.done:
            return True
        try:
            result = self.logic.pollDetection()
        except Exception as exc:  # noqa: BLE001 - this volume's DetectionError: record it, go on
            self.errors.append((self.current_name, str(exc)))
            self._say(f"{self.current_name}: failed ({exc})")
            result = None
        if result is not None:
            self.results.append(result)
        if self.logic.job is not None:  # the current volume is still running
            return False
        self._next()
        return self.done

    def cancel(self) -> None:
        """Stop the running volume (nothing of it is added) and skip the rest."""
        self.logic.cancelDetection()
        self.cancelled = self.done = True
