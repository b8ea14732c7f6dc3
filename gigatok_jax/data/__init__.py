"""Data: embedded demo photos, our ArrayRecord image format, dataset preparation, grain pipelines.

Modules: `demo` (photos shipped in scikit-image / scikit-learn), `records` (record format, writer,
reader), `prepare` (image folder / ImageNet tars -> ArrayRecord), `transforms` (ADM crops, flips),
`folder` (reading plain image folders), `pipeline` (sources, config validation, train/eval iterators).
Import the submodules directly; this package file imports nothing so that it stays cheap.
"""
