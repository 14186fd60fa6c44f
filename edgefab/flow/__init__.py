"""Rectified flows and SlimFlow: small one-step image generators (``edgefab flow``).

Layer: beside ``factory`` and ``search``; imports torch, ``data``, ``targets`` and ``runtime`` (the
atomic folder writer and PNG grids), and only ``pipeline`` and the CLI import it.

- :mod:`~edgefab.flow.unet`: the velocity UNet (width multiplier, time embedding);
- :mod:`~edgefab.flow.rectified`: interpolation, velocity regression, optimisation, Euler and RK45;
- :mod:`~edgefab.flow.reflow`: reflow pairs and Annealing Reflow;
- :mod:`~edgefab.flow.distill`: Flow-Guided Distillation (pseudo-Huber or LPIPS-style distance);
- :mod:`~edgefab.flow.perceptual`: the LPIPS-style distance on a network edgefab trains itself;
- :mod:`~edgefab.flow.frechet` / :mod:`~edgefab.flow.evaluate`: Frechet distance on edgefab's own
  digit features, sample grids;
- :mod:`~edgefab.flow.checkpoint`: ``flow.json`` + safetensors, kinds ``rectified-flow`` / ``slimflow``;
- :mod:`~edgefab.flow.teacher` / :mod:`~edgefab.flow.slim`: the ``flow train`` and ``flow slim`` jobs.
"""
