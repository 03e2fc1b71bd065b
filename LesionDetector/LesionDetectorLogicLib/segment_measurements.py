"""An edited nodule segment re-measures its finding: Segment Editor -> library -> table, markups, Lung-RADS.

:class:`SegmentMeasurementSync` observes one run's Segmentation node (``vtkSegmentation``
``SourceRepresentationModified``, which Segment Editor fires on every stroke, and
``SegmentModified``, which a labelmap import fires). Each event only notes the segment's
finding; the re-measurement runs once the edits pause (a trailing debounce of ``delay_ms``
through ``schedule(delay_ms, callback)``, which the widget backs with ``qt.QTimer.singleShot``).
Without a scheduler (scripts, tests) nothing runs until :meth:`flush`.

:meth:`flush` reads each noted segment back (:func:`segmentation_scene.remeasure`, the
library's :func:`~LesionDetectorLib.characterization.remeasure_mask`), then records the new
numbers with :func:`findings_scene.update_characterization` (stored findings, control point
description, table row, patient-level Lung-RADS) and renames / recolours the segment. Its
own renaming fires ``SegmentModified`` again; that is ignored.

It also follows the run's removal: when the run's markups node leaves the scene its
segmentation goes too (no masks of a run that no longer exists); when the segmentation
node is deleted the sync stops.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Set

import vtk

from . import findings_scene, segmentation_scene

DEBOUNCE_MS = 600

Schedule = Callable[[int, Callable[[], None]], Any]


class SegmentMeasurementSync:
    """Keeps one run's measurements in step with its (edited) nodule segments.

    ``on_update(finding_id, characterization, exam_lung_rads)`` is called after each
    re-measured finding (the widget refreshes its panel there).
    """

    def __init__(self, markups, schedule: Optional[Schedule] = None, delay_ms: int = DEBOUNCE_MS,
                 on_update: Optional[Callable[[str, Dict[str, Any], Dict[str, Any]], None]] = None) -> None:
        self.markups = markups
        self.seg_node = markups.GetNodeReference(findings_scene.REF_SEGMENTATION)
        self.volume_node = markups.GetNodeReference(findings_scene.REF_VOLUME)
        if self.seg_node is None or self.volume_node is None:
            raise ValueError(f"'{markups.GetName()}' has no nodule segmentation or no volume to measure on")
        self.schedule = schedule
        self.delay_ms = int(delay_ms)
        self.on_update = on_update
        self.pending: Set[str] = set()
        self._generation = 0
        self._updating = False
        self._volume = None
        self._observations: List[tuple] = []
        segmentation = self.seg_node.GetSegmentation()
        for event in (segmentation.SourceRepresentationModified, segmentation.SegmentModified):
            self._observations.append((segmentation, segmentation.AddObserver(event, self._onSegmentEvent)))
        scene = markups.GetScene()
        self._observations.append((scene, scene.AddObserver(scene.NodeAboutToBeRemovedEvent, self._onNodeRemoved)))

    @property
    def active(self) -> bool:
        return bool(self._observations)

    def stop(self) -> None:
        """Remove every observer; pending edits are dropped."""
        for obj, tag in self._observations:
            obj.RemoveObserver(tag)
        self._observations = []
        self.pending.clear()

    # -- events (VTK hands the call data only to callbacks marked with its type) ---------
    @vtk.calldata_type(vtk.VTK_STRING)
    def _onSegmentEvent(self, caller, event, segment_id=None) -> None:
        if self._updating or not segment_id:
            return     # our own renaming, or an event that names no segment (a labelmap import's first one)
        fid = {v: k for k, v in segmentation_scene.finding_segments(self.seg_node).items()}.get(str(segment_id))
        if fid is None:
            return     # a segment the reader added: not a finding
        self.pending.add(fid)
        self._generation += 1
        if self.schedule is not None:
            generation = self._generation
            self.schedule(self.delay_ms, lambda: self._debounced(generation))

    def _debounced(self, generation: int) -> None:
        if generation == self._generation and self.active:
            self.flush()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeRemoved(self, caller, event, node=None) -> None:
        if node is None:
            return
        if node is self.seg_node:
            self.stop()
        elif node is self.markups:
            seg = self.seg_node
            self.stop()
            scene = caller
            if seg is not None and not scene.IsClosing():
                segmentation_scene.remove_segmentation_node(seg)

    # -- the work ------------------------------------------------------------------
    def flush(self) -> List[str]:
        """Re-measure every finding whose segment changed since the last flush; returns their ids."""
        from .geometry import volume_from_node

        done = []
        if not self.active:
            return done
        if self._volume is None:
            self._volume = volume_from_node(self.volume_node)
        stored = findings_scene.findings_with_review(self.markups)
        chars = {str(c["id"]): c.get("characterization") or {} for c in stored["candidates"]}
        while self.pending:
            fid = self.pending.pop()
            new = segmentation_scene.remeasure(self.seg_node, self.volume_node, self._volume, fid, chars.get(fid, {}))
            self._updating = True
            try:
                exam = findings_scene.update_characterization(self.markups, fid, new)
                segment_id = segmentation_scene.finding_segments(self.seg_node).get(fid)
                if segment_id is not None:
                    segmentation_scene.style_segment(self.seg_node.GetSegmentation().GetSegment(segment_id), fid, new)
            finally:
                self._updating = False
            done.append(fid)
            if self.on_update is not None:
                self.on_update(fid, new, exam)
        return done

