"""Expert Slimming: pruning and quantization of every expert of a layer at once, streamed layer by layer.

- :mod:`.run`: the streamed pass (the layer-streaming engine with a :class:`.observer.SlimmingObserver`);
- one module per method (:mod:`.gptq`, :mod:`.rtn`, :mod:`.sparsegpt`, :mod:`.wanda`, :mod:`.magnitude`), each a
  ``slim`` over fused [B, out, in] weights, which the stage's config names (``slimmer()``, with its traits:
  ``uses_data``, ``quantizes``, ``smooths``); :mod:`.awq` smooths a whole layer (its pairs' scales searched with
  every expert at once), then RTN quantizes it;
- :mod:`.statistics` (per-expert input statistics from routed tokens), :mod:`.qparams` (scales and packing),
  :mod:`.checkpoint` (names, shards, ``quantization_config``), :mod:`.verify` (the streamed reload check);
- :mod:`.llmcompressor_pass`: the same stages through plain llm-compressor (``backend: llmcompressor``), the
  reference the tests and benchmarks compare against, and the runner of AWQ and FP8.
"""
