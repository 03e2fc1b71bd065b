"""MRML-side helpers of the Lesion Detector Slicer module.

Everything here runs with slicer-core alone (real MRML, no Qt, no Slicer
application), so the module's logic is tested in plain pytest. The module never
detects anything itself: it converts MRML <-> LesionDetectorLib types, runs the
library's ``detect`` command in a background process and turns its findings
into markups, a table and subject-hierarchy items.

Submodules:
    geometry         IJK-to-RAS matrix <-> ITK/LPS geometry, RAS <-> LPS points, volume node -> Volume
    detection_job    background ``detect`` process: start / poll / cancel, jsonl progress stream
    findings_scene   findings JSON -> markups fiducial node + table node + subject hierarchy, review state
    comparison_scene comparison.json -> pairs table node; two slice views centred on a pair; DICOM priors
    comparison_job   prior + current node -> background ``compare`` -> both findings + pairs table, Cancel
    dependencies     torch / LesionDetectorLib installation inside Slicer, InstallError
"""
