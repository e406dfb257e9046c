"""Modalities: the pipeline adapter (:mod:`.base`) and one family file per pipeline family under
``image/``, ``audio/`` and ``video/``. Importing this package imports no diffusers model code;
families register themselves when :func:`~.base.guide` first looks for one."""
