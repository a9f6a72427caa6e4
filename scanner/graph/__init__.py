"""ONNX graph analysis: canonical form, structural diff, rewrite recognition, probes, single checks.

Public entry points: :func:`scanner.graph.canonical.canonicalize`,
:func:`scanner.graph.diff.diff_graphs`, :func:`scanner.graph.probe.probe_models` and
:func:`scanner.graph.single.check_graph_backdoors`. See docs/graph.md.
"""
