"""What the passes share and that is not a pass itself.

- :mod:`~optc.passes.support.calibration`: a pass's calibration data (the
  ``CalibrationOptions`` option mixin, the pipeline task's batches, vocabulary checks) and the
  activation range observers of static int8;
- :mod:`~optc.passes.support.importance`: head and neuron scores (magnitude, Taylor) and layer
  similarity;
- :mod:`~optc.passes.support.selection`: which heads, neurons or layers a pruning pass removes,
  and the option checks prune-heads and prune-neurons share;
- :mod:`~optc.passes.support.reference`: the ``TakesReference`` mixin of the passes that learn
  from or compare with a reference model.
- :mod:`~optc.passes.support.qat`: quantization-aware training, for ``quantize{mode=qat}``.

The edits themselves (removing heads and neurons, bypassing a block) are IR-level and live in
:mod:`optc.ir.surgery`. The registry imports the modules of :mod:`optc.passes`, not its
sub-packages, when it looks for passes, so nothing here is registered as one.
"""
