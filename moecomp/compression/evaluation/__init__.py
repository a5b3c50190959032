"""Evaluation of a compressed checkpoint against its original, loaded from disk as a user would.

Entry points (the worker and the CLI call these):
  run.evaluate(candidate_dir, baseline_dir, spec, *, device, ctx, cache_dir, manifest) -> report dict
  report.write_report(report, out_dir) -> [report.json, report.html]
  gate.check_gate(report, spec.gate) -> failure messages ([] = pass)
Pieces: spec (what to measure), loading (from_pretrained rules, identity), texts (held-out windows),
perplexity, fidelity (KL, top-1 agreement), tasks + local_tasks (lm-eval, offline tasks), speed,
footprint (size, parameters, FLOPs), cache (the original's results), compare (% of original),
schema ("moecomp.report/1"), charts (inline SVG), measure (one model's measurements).
"""
