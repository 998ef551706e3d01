"""The data layer: sources, decoding and preprocessing, tokenizers and grain pipelines.

* :mod:`.sources`: ``get_source(spec, ...)`` turns a spec string such as
  ``"generated:shapes:test"``, ``"csv:/data/train.csv"``, ``"wds:/data/{000..099}.tar"``
  or ``"tfds:NAME:SPLIT"`` into a random-access source with ``classnames`` /
  ``templates`` metadata; formats register under a prefix; ``DataOptions`` holds the
  ``data.*`` options of sources; ``parse_mixture`` reads ``[(spec, weight), ...]``.
* :mod:`.shapes`, :mod:`.csv_source`, :mod:`.wds_source`, :mod:`.tfds_source`: formats.
* :mod:`.fields`: ``FieldRequest``: what the pipeline asks a source for, per modality.
* :mod:`.modalities`: one ``Processor`` per modality (image, depth, text, audio, vector)
  from ``config.model.towers`` and ``config.data`` (``make_processors``).
* :mod:`.audio`: audio decoding (soundfile), resampling (soxr), cropping, log-mel.
* :mod:`.shapes_audio`: the synthesised clips of ``generated:shapes``.
* :mod:`.records`: bad-record errors, image decoding, caption checks, skip logging.
* :mod:`.preprocess`: image ops from config strings (``data.pp_train`` / ``pp_eval``).
* :mod:`.naflex`: NaFlex (SigLIP 2) inputs: patch-budget sizes, antialiased resize,
  padded patch sequences with masks.
* :mod:`.naflex_pp`: NaFlex training/eval inputs (``model.towers.<m>.naflex_max_patches``):
  images at their aspect ratio -> fixed-shape patch dicts.
* :mod:`.rows`: slicing, padding, concatenating inputs that are arrays or dicts of them.
* :mod:`.tokenizers`: ``get_tokenizer(spec, max_len)``; texts -> right-padded int32 rows
  (bytes, SentencePiece, HuggingFace tokenizer.json).
* :mod:`.pipeline`: ``make_train_loader`` (shuffled, sharded, mixed, checkpointable
  grain loader that skips and counts bad examples) and ``make_eval_batches``
  (ordered, finite pass); one batch format for both.
"""
